// Reordering `restore_lease` before `bind_index`: with the consistent-index holder still on the
// old backend, the old index would overwrite the snapshot's (etcd #13922).
use snapply_core::ApplyError;
use snapply_core::collections::Profile;
use snapply_core::pipeline::BackendOpened;
use snapply_core::ports::SnapshotStore;

fn reorder<'n, P: Profile, S: SnapshotStore>(
    state: BackendOpened<'n, P, S>,
) -> Result<(), ApplyError> {
    let _ = state.restore_lease()?.bind_index()?.restore_mvcc()?;
    Ok(())
}

fn main() {}
