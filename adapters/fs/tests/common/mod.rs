//! Helpers shared by the adapter's integration tests: a node on a data directory, restores
//! through the whole pipeline, a deterministic leader.

// Test scaffolding: a failure here is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, clippy::unreachable)]
#![allow(dead_code)]

use snapply_core::backend::Bucket;
use snapply_core::collections::Growable;
use snapply_core::image::Chunked;
use snapply_core::memports::PeerTable;
use snapply_core::ports::{ImageStream, Ports};
use snapply_core::{Node, Snapshot, SnapshotMetadata};
use snapply_fs::{DataDir, FsSnapshotStore, RedbBackend};
use snapply_tests::{Op, Recorder, config, node, run, snapshot};

/// The follower's member id.
pub const FOLLOWER: u64 = 2;

/// A node whose live backend is a data directory's `member/db`.
pub type DiskNode = Node<RedbBackend, Growable>;

/// The result of a restore on a disk node.
pub type DiskResult = snapply_tests::ApplyResult<RedbBackend>;

/// Restores the snapshot (`metadata`, `image`) on `node` through every phase, with `store` and
/// a fresh peer table; `streamed` hands the image over as a stream read in odd-sized pieces.
pub fn apply_with(
    node: &mut DiskNode,
    store: &mut FsSnapshotStore,
    metadata: &SnapshotMetadata,
    image: &[u8],
    streamed: bool,
) -> DiskResult {
    let mut transport = PeerTable::<Growable>::default();
    let mut observer = Recorder::default();
    let mut source = ImageStream::new(Chunked::new(image, 4093));
    let result = {
        // An empty image names the snapshot already persisted under this metadata, by the
        // digest its `.snap` records.
        let persisted = store
            .dir()
            .read_snap(snapply_fs::SnapName { index: metadata.index, term: metadata.term })
            .ok()
            .filter(|_| image.is_empty())
            .map(|info| info.image_sha256);
        let snapshot = match persisted {
            Some(sha256) => Snapshot::persisted(metadata, sha256),
            None if streamed => Snapshot::streamed(metadata, &mut source),
            None => Snapshot::from_bytes(metadata, image),
        };
        let ports = Ports { storage: store, transport: &mut transport, observer: &mut observer };
        snapply_core::apply_snapshot(node, ports, snapshot)
    };
    assert_eq!(observer.gauge, 0, "the in-progress gauge is back to zero whatever the outcome");
    result
}

/// [`apply_with`], the image in memory.
pub fn apply(
    node: &mut DiskNode,
    store: &mut FsSnapshotStore,
    metadata: &SnapshotMetadata,
    image: &[u8],
) -> DiskResult {
    apply_with(node, store, metadata, image, false)
}

/// Steps that give a leader something in every store.
pub fn rich_ops() -> Vec<Op> {
    vec![
        Op::Grant { lease: 0, ttl: 30 },
        Op::Put { key: 0, value: b"zero".to_vec(), lease: Some(0) },
        Op::Put { key: 1, value: b"one".to_vec(), lease: None },
        Op::Put { key: 2, value: b"two".to_vec(), lease: None },
        Op::MemberAdd { id: 0, learner: false },
        Op::MemberAdd { id: 2, learner: true },
        Op::UserAdd { user: 0 },
        Op::RoleAdd { role: 0 },
        Op::RolePermit { role: 0, key: 1, write: true },
        Op::UserRole { user: 0, role: 0 },
        Op::Alarm { member: 0, corrupt: false, on: true },
        Op::Version { minor: 5 },
        Op::Put { key: 1, value: b"one again".to_vec(), lease: None },
        Op::Delete { key: 2, range: false },
        Op::Compact { back: 1 },
    ]
}

/// More steps, applied after [`rich_ops`] to move the leader on.
pub fn more_ops() -> Vec<Op> {
    vec![
        Op::Put { key: 5, value: b"five".to_vec(), lease: Some(0) },
        Op::Grant { lease: 1, ttl: 60 },
        Op::MemberRemove { id: 2 },
        Op::MemberAdd { id: 3, learner: false },
        Op::Auth(false),
        Op::Alarm { member: 0, corrupt: false, on: false },
        Op::Alarm { member: 1, corrupt: true, on: true },
        Op::Delete { key: 0, range: true },
    ]
}

/// A leader built by `stages` of steps, one after the other, each stage's entries numbered
/// from `100 * (stage + 1)`; and its snapshot after the last stage.
pub fn leader(stages: &[Vec<Op>]) -> (snapply_tests::HostNode, SnapshotMetadata, Vec<u8>) {
    let mut leader = node(1);
    for (i, ops) in stages.iter().enumerate() {
        run(&mut leader, ops, 100 * (i as u64 + 1), 2);
    }
    let (metadata, image) = snapshot(&leader);
    (leader, metadata, image)
}

/// A fresh node on the data directory at `root`, booted as a restarting node boots: if a
/// persisted snapshot is pending, it is applied before the node is returned.
pub fn boot(root: &std::path::Path) -> (DiskNode, FsSnapshotStore, bool) {
    let dir = DataDir::open(root).expect("opening the data directory");
    let boot = dir.boot().expect("booting the data directory");
    let mut node = Node::new(config(FOLLOWER), boot.backend);
    let mut store = FsSnapshotStore::new(dir);
    let recovered = match &boot.pending {
        Some(pending) => {
            // Already persisted: the pipeline's persist confirms it without an image.
            apply(&mut node, &mut store, pending.metadata(), &[]).expect("applying the pending snapshot");
            true
        }
        None => false,
    };
    (node, store, recovered)
}

/// Records of one bucket.
pub fn bucket(records: &[snapply_core::backend::OwnedRecord], b: Bucket) -> Vec<(Vec<u8>, Vec<u8>)> {
    records.iter().filter(|(rb, _, _)| *rb == b).map(|(_, k, v)| (k.clone(), v.clone())).collect()
}

/// Names in `member/snap/`, sorted.
pub fn snap_files(root: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(root.join("member/snap"))
        .expect("listing member/snap")
        .map(|e| e.expect("a directory entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Store by store, `node` holds what `leader` holds, and its progress is the snapshot's.
pub fn assert_same(leader: &snapply_tests::HostNode, node: &DiskNode, metadata: &SnapshotMetadata) {
    let (l, f) = (leader.stores(), node.stores());
    assert_eq!(snapply_tests::records(leader.backend()), snapply_tests::records(node.backend()), "records");
    assert_eq!(l.cindex, f.cindex, "consistent index");
    // A lease checkpoint below cluster version 3.6 stays in the leader's memory (etcd's
    // `shouldPersistCheckpoints`), so the follower's lessor is the one the leader's backend holds.
    let mut v2 = Vec::new();
    leader.v2_snapshot_data(&mut v2).expect("the leader's v2 data");
    let reopened = Node::open(*leader.config(), leader.backend().clone(), &v2).expect("reopening the leader");
    assert_eq!(reopened.stores().lessor, f.lessor, "lessor");
    assert_eq!(l.kv, f.kv, "key-value store");
    assert_eq!(l.alarms, f.alarms, "alarms");
    assert_eq!(l.auth, f.auth, "auth");
    assert_eq!(l.membership, f.membership, "membership");
    assert_eq!(l.v2, f.v2, "v2 store");
    assert_eq!(node.progress(), &snapply_core::Progress::at_snapshot(metadata), "progress");
}
