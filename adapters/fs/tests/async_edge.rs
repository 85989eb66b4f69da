//! The async edge: a snapshot persisted on a blocking task as it arrives; the pipeline then only
//! confirms it, and the old backend is closed on a blocking task.

mod common;

use common::{FOLLOWER, apply, assert_same, leader, more_ops, rich_ops};
use snapply_core::Node;
use snapply_fs::{DataDir, FsSnapshotStore, SnapName, close_async, persist_async};
use snapply_tests::{config, records, run};

#[tokio::test]
async fn persisted_on_a_blocking_task_then_applied_without_the_image() {
    let (leader, metadata, image) = leader(&[rich_ops(), more_ops()]);
    let root = tempfile::tempdir().unwrap();
    let dir = DataDir::open(root.path()).unwrap();
    let boot = dir.boot().unwrap();
    let mut node = Node::new(config(FOLLOWER), boot.backend);
    run(&mut node, &rich_ops()[..3], 0, 1);
    let before = records(node.backend());

    let info = persist_async(dir.clone(), metadata.clone(), image).await.unwrap();
    assert_eq!(info.metadata, metadata);
    let name = SnapName { index: metadata.index, term: metadata.term };
    assert!(dir.snap_path(name).exists() && dir.snap_db_path(name.index).exists());

    // The pipeline gets no image: the persisted snapshot is confirmed from the directory.
    let mut store = FsSnapshotStore::new(dir);
    let outcome = apply(&mut node, &mut store, &metadata, &[]).unwrap().unwrap();
    assert_same(&leader, &node, &metadata);
    assert_eq!(records(&outcome.old_backend), before);
    close_async(outcome.old_backend).await.unwrap();
}

#[tokio::test]
async fn a_bad_image_fails_on_the_blocking_task_and_leaves_nothing() {
    let (_, metadata, mut image) = leader(&[rich_ops()]);
    let root = tempfile::tempdir().unwrap();
    let dir = DataDir::open(root.path()).unwrap();
    let last = image.len() - 1;
    image[last] ^= 1;
    let err = persist_async(dir.clone(), metadata, image).await.unwrap_err();
    assert!(matches!(err, snapply_fs::FsError::Image { .. }), "{err}");
    assert!(common::snap_files(root.path()).is_empty());
}
