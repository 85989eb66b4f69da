// Reordering `restore_auth` before `restore_alarms`: auth is restored after the alarms, in
// etcd's order.
use snapply_core::ApplyError;
use snapply_core::collections::Profile;
use snapply_core::pipeline::BackendSwapped;
use snapply_core::ports::SnapshotStore;

fn reorder<'n, P: Profile, S: SnapshotStore>(
    state: BackendSwapped<'n, P, S>,
) -> Result<(), ApplyError> {
    let _ = state.restore_auth()?.restore_alarms()?.restore_v2()?;
    Ok(())
}

fn main() {}
