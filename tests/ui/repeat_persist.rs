// Repeating `persist`: a persisted state has no `persist`.
use snapply_core::collections::Profile;
use snapply_core::pipeline::Persisted;
use snapply_core::ports::SnapshotStore;

fn repeat<'n, P: Profile, S: SnapshotStore>(state: Persisted<'n, P, S>) {
    let _ = state.persist();
}

fn main() {}
