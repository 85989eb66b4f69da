// Skipping `restore_alarms`: auth cannot be restored before the alarms.
use snapply_core::collections::Profile;
use snapply_core::pipeline::BackendSwapped;
use snapply_core::ports::SnapshotStore;

fn skip<'n, P: Profile, S: SnapshotStore>(state: BackendSwapped<'n, P, S>) {
    let _ = state.restore_auth();
}

fn main() {}
