// Skipping `restore_cluster`: peers cannot be updated before the membership is restored.
use snapply_core::collections::Profile;
use snapply_core::pipeline::V2Restored;
use snapply_core::ports::{Observer, SnapshotStore, Transport};

fn skip<'n, P: Profile, S: SnapshotStore, T: Transport, O: Observer>(state: V2Restored<'n, P, S, T, O>) {
    let _ = state.update_peers();
}

fn main() {}
