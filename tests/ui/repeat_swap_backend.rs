// Repeating `swap_backend`: a swapped state cannot swap the backend again.
use snapply_core::collections::Profile;
use snapply_core::pipeline::BackendSwapped;
use snapply_core::ports::{Observer, SnapshotStore, Transport};

fn repeat<'n, P: Profile, S: SnapshotStore, T: Transport, O: Observer>(state: BackendSwapped<'n, P, S, T, O>) {
    let _ = state.swap_backend();
}

fn main() {}
