// Skipping `restore_v2`: membership cannot be restored before the v2 store.
use snapply_core::collections::Profile;
use snapply_core::pipeline::AuthRestored;
use snapply_core::ports::SnapshotStore;

fn skip<'n, P: Profile, S: SnapshotStore>(state: AuthRestored<'n, P, S>) {
    let _ = state.restore_cluster();
}

fn main() {}
