// Skipping `open_backend`: the consistent index cannot be bound before the new backend is open.
use snapply_core::collections::Profile;
use snapply_core::pipeline::Persisted;
use snapply_core::ports::{Observer, SnapshotStore, Transport};

fn skip<'n, P: Profile, S: SnapshotStore, T: Transport, O: Observer>(state: Persisted<'n, P, S, T, O>) {
    let _ = state.bind_index();
}

fn main() {}
