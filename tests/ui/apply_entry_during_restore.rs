// Touching the node during a restore: the pipeline borrows it exclusively from validation to the
// end, so nothing (an entry, a defragmentation) can race the backend swap (etcd #20271).
use snapply_core::collections::Profile;
use snapply_core::pipeline::Validated;
use snapply_core::ports::{Ports, SnapshotStore};
use snapply_core::{Node, Request, Snapshot};

fn race<'n, P: Profile, S: SnapshotStore>(
    node: &'n mut Node<S::Backend, P>,
    ports: Ports<'n, S>,
    snapshot: Snapshot<'n>,
) {
    let validated = Validated::new(node, ports, snapshot);
    let _ = node.apply(9, 2, &Request::Compact { revision: 1 });
    if let Ok(Some(validated)) = validated {
        let _ = validated.persist();
    }
}

fn main() {}
