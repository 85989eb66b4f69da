// The right order compiles: every phase once, in etcd's order, each state consumed by the next.
use snapply_core::collections::Profile;
use snapply_core::pipeline::Validated;
use snapply_core::ports::{Ports, SnapshotStore};
use snapply_core::{ApplyError, Node, Progress, Snapshot};

/// The restore, generic over profile and ports: type- and borrow-checked without any adapter.
/// `pub` so that the compiler sees it as used without instantiating it.
pub fn restore<'n, P: Profile, S: SnapshotStore>(
    node: &'n mut Node<S::Backend, P>,
    ports: Ports<'n, S>,
    snapshot: Snapshot<'n>,
) -> Result<Option<(Progress, S::Backend)>, ApplyError> {
    let Some(validated) = Validated::new(node, ports, snapshot)? else {
        return Ok(None);
    };
    let persisted = validated.persist()?;
    let opened = persisted.open_backend()?;
    let bound = opened.bind_index()?;
    let leases = bound.restore_lease()?;
    let mvcc = leases.restore_mvcc()?;
    let (swapped, old_backend) = mvcc.swap_backend();
    let alarms = swapped.restore_alarms();
    let auth = alarms.restore_auth();
    let v2 = auth.restore_v2();
    let cluster = v2.restore_cluster();
    let peers = cluster.update_peers()?;
    let applied = peers.finish()?;
    let _ = applied.progress();
    Ok(Some((applied.into_progress(), old_backend)))
}

fn main() {}
