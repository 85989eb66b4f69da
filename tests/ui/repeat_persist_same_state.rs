// Repeating `persist` on the same state: the first call consumed it (use of moved value).
use snapply_core::collections::Profile;
use snapply_core::pipeline::Validated;
use snapply_core::ports::SnapshotStore;

fn repeat<'n, P: Profile, S: SnapshotStore>(state: Validated<'n, P, S>) {
    let _first = state.persist();
    let _second = state.persist();
}

fn main() {}
