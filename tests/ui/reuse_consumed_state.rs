// Reusing a consumed state: after `persist`, the `Validated` it came from cannot even be read
// (borrow of moved value).
use snapply_core::collections::Profile;
use snapply_core::pipeline::Validated;
use snapply_core::ports::SnapshotStore;

fn reuse<'n, P: Profile, S: SnapshotStore>(state: Validated<'n, P, S>) {
    let _persisted = state.persist();
    let _ = format!("{state:?}");
}

fn main() {}
