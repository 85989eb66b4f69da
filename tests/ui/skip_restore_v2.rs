// Skipping `restore_v2`: membership cannot be restored before the v2 store.
use snapply_core::collections::Profile;
use snapply_core::pipeline::AuthRestored;
use snapply_core::ports::{Observer, SnapshotStore, Transport};

fn skip<'n, P: Profile, S: SnapshotStore, T: Transport, O: Observer>(state: AuthRestored<'n, P, S, T, O>) {
    let _ = state.restore_cluster();
}

fn main() {}
