// Skipping `restore_cluster`: peers cannot be updated before the membership is restored.
use snapply_core::collections::Profile;
use snapply_core::pipeline::V2Restored;
use snapply_core::ports::SnapshotStore;

fn skip<'n, P: Profile, S: SnapshotStore>(state: V2Restored<'n, P, S>) {
    let _ = state.update_peers();
}

fn main() {}
