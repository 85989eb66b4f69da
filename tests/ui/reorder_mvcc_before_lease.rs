// Reordering `restore_mvcc` before `restore_lease`: keys must find their leases when they are
// reattached ("always recover lessor before kv", etcd PR #6098).
use snapply_core::ApplyError;
use snapply_core::collections::Profile;
use snapply_core::pipeline::IndexBound;
use snapply_core::ports::SnapshotStore;

fn reorder<'n, P: Profile, S: SnapshotStore>(
    state: IndexBound<'n, P, S>,
) -> Result<(), ApplyError> {
    let _ = state.restore_mvcc()?.restore_lease()?.swap_backend();
    Ok(())
}

fn main() {}
