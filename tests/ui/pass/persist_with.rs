// An async driver's order compiles: the persist phase awaits the proof the closure hands back,
// confirmed from its own ticket, and the lessor and key index are installed pre-built, lessor
// first.
use snapply_core::collections::Profile;
use snapply_core::pipeline::{Prebuilt, Validated};
use snapply_core::ports::SnapshotStore;
use snapply_core::{ApplyError, Progress};

/// `pub` so that the compiler sees it as used without instantiating it.
pub async fn restore<'n, P: Profile, S: SnapshotStore>(
    validated: Validated<'n, P, S>,
    durable_elsewhere: impl Future<Output = [u8; 32]>,
    prebuilt: Prebuilt<P>,
) -> Result<(Progress, S::Backend), ApplyError> {
    let persisted = validated
        .persist_with(async |_image, ticket| {
            let sha256 = durable_elsewhere.await;
            Ok(ticket.confirm(sha256))
        })
        .await?;
    let bound = persisted.open_backend()?.bind_index()?;
    let (leases, index) = bound.restore_lease_prebuilt(prebuilt)?;
    let mvcc = match index {
        Some(index) => leases.restore_mvcc_prebuilt(index)?,
        None => leases.restore_mvcc()?,
    };
    let (swapped, old_backend) = mvcc.swap_backend();
    let applied =
        swapped.restore_alarms().restore_auth().restore_v2().restore_cluster().update_peers()?.finish()?;
    Ok((applied.into_progress(), old_backend))
}

fn main() {}
