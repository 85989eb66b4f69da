// Repeating `persist`: a persisted state has no `persist`.
use snapply_core::collections::Profile;
use snapply_core::pipeline::Persisted;
use snapply_core::ports::{Observer, SnapshotStore, Transport};

fn repeat<'n, P: Profile, S: SnapshotStore, T: Transport, O: Observer>(state: Persisted<'n, P, S, T, O>) {
    let _ = state.persist();
}

fn main() {}
