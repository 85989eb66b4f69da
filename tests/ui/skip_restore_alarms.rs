// Skipping `restore_alarms`: auth cannot be restored before the alarms.
use snapply_core::collections::Profile;
use snapply_core::pipeline::BackendSwapped;
use snapply_core::ports::{Observer, SnapshotStore, Transport};

fn skip<'n, P: Profile, S: SnapshotStore, T: Transport, O: Observer>(state: BackendSwapped<'n, P, S, T, O>) {
    let _ = state.restore_auth();
}

fn main() {}
