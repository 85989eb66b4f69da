//! Failpoint-driven tests, in their own test binary: failpoints are process-global, so no
//! other test may run beside them.

// Test scaffolding: a failure here is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, clippy::unreachable)]

mod common;

use common::{DiskNode, FOLLOWER, apply, assert_same, leader, more_ops, rich_ops, snap_files};
use snapply_core::Node;
use snapply_core::Phase;
use snapply_core::ports::PortErrorKind;
use snapply_fs::{DataDir, FsSnapshotStore};
use snapply_tests::{config, records, run};

fn follower(root: &std::path::Path, ops: &[snapply_tests::Op]) -> (DiskNode, FsSnapshotStore) {
    let dir = DataDir::open(root).unwrap();
    let boot = dir.boot().unwrap();
    let mut node = Node::new(config(FOLLOWER), boot.backend);
    run(&mut node, ops, 0, 1);
    (node, FsSnapshotStore::new(dir))
}

/// A full disk at any step of persisting is a typed error (`Full`); the directory, `member/db`
/// and the node are left as they were, and the same snapshot applies once space is back. The
/// full disk is injected by failpoints returning ENOSPC (a small filesystem would need a mount).
#[test]
fn disk_full_at_every_persist_step_leaves_the_old_state() {
    let (leader, metadata, image) = leader(&[rich_ops(), more_ops()]);
    let persist_steps: Vec<&str> = snapply_fs::FAILPOINTS
        .iter()
        .copied()
        .filter(|n| n.starts_with("fs::persist") || n.starts_with("fs::durable"))
        .collect();
    assert_eq!(persist_steps.len(), 13);
    let scenario = fail::FailScenario::setup();
    for step in persist_steps {
        let root = tempfile::tempdir().unwrap();
        let (mut node, mut store) = follower(root.path(), &rich_ops()[..6]);
        let before = (records(node.backend()), node.stores().clone(), node.progress().clone());
        fail::cfg(step, "return(enospc)").unwrap();
        let err = apply(&mut node, &mut store, &metadata, &image).unwrap_err();
        fail::remove(step);
        assert_eq!(err.phase(), Phase::Persist, "{step}");
        assert!(matches!(err.kind(), snapply_core::ApplyErrorKind::Port(p) if p.kind == PortErrorKind::Full), "{step}");
        assert!(snap_files(root.path()).is_empty(), "{step}: {:?}", snap_files(root.path()));
        assert_eq!((records(node.backend()), node.stores().clone(), node.progress().clone()), before, "{step}");
        apply(&mut node, &mut store, &metadata, &image).unwrap();
        assert_same(&leader, &node, &metadata);
    }
    scenario.teardown();
}
