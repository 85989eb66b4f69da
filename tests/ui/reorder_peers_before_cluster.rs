// Reordering `update_peers` before `restore_cluster`: the peers come from the restored
// membership, so they cannot be updated from the old one.
use snapply_core::ApplyError;
use snapply_core::collections::Profile;
use snapply_core::pipeline::V2Restored;
use snapply_core::ports::SnapshotStore;

fn reorder<'n, P: Profile, S: SnapshotStore>(
    state: V2Restored<'n, P, S>,
) -> Result<(), ApplyError> {
    let _ = state.update_peers()?.restore_cluster()?.finish()?;
    Ok(())
}

fn main() {}
