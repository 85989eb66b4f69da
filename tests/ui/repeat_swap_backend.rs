// Repeating `swap_backend`: a swapped state cannot swap the backend again.
use snapply_core::collections::Profile;
use snapply_core::pipeline::BackendSwapped;
use snapply_core::ports::SnapshotStore;

fn repeat<'n, P: Profile, S: SnapshotStore>(state: BackendSwapped<'n, P, S>) {
    let _ = state.swap_backend();
}

fn main() {}
