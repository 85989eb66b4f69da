// Reordering `open_backend` before `persist`: the backend must never be opened before the
// snapshot is durable, or a crash loses the only copy (etcd PR #7876).
use snapply_core::ApplyError;
use snapply_core::collections::Profile;
use snapply_core::pipeline::Validated;
use snapply_core::ports::SnapshotStore;

fn reorder<'n, P: Profile, S: SnapshotStore>(
    state: Validated<'n, P, S>,
) -> Result<(), ApplyError> {
    let _ = state.open_backend()?.persist()?.bind_index()?;
    Ok(())
}

fn main() {}
