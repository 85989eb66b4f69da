// Reordering `swap_backend` before `restore_mvcc`: readers would see the new backend with a
// half-built key index.
use snapply_core::ApplyError;
use snapply_core::collections::Profile;
use snapply_core::pipeline::LeaseRestored;
use snapply_core::ports::SnapshotStore;

fn reorder<'n, P: Profile, S: SnapshotStore>(
    state: LeaseRestored<'n, P, S>,
) -> Result<(), ApplyError> {
    let (swapped, _old) = state.swap_backend();
    let _ = swapped.restore_mvcc()?.restore_alarms()?;
    Ok(())
}

fn main() {}
