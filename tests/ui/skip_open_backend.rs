// Skipping `open_backend`: the consistent index cannot be bound before the new backend is open.
use snapply_core::collections::Profile;
use snapply_core::pipeline::Persisted;
use snapply_core::ports::SnapshotStore;

fn skip<'n, P: Profile, S: SnapshotStore>(state: Persisted<'n, P, S>) {
    let _ = state.bind_index();
}

fn main() {}
