//! Helpers of the flash tests: nodes on mock flash, a leader, stores loaded back from flash and
//! compared store by store.

// Test scaffolding: a failure here is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, clippy::unreachable)]
#![allow(dead_code)]

use std::cell::RefCell;
use std::ops::Range;

use embedded_storage::nor_flash::NorFlash;
use snapply_core::NoObserver;
use snapply_core::backend::{Backend, Bucket, OwnedRecord, dump};
use snapply_core::collections::Fixed;
use snapply_core::image::BASE_BUFFER;
use snapply_core::mem::MemBackend;
use snapply_core::memports::PeerTable;
use snapply_core::pipeline::Validated;
use snapply_core::ports::Ports;
use snapply_core::{ApplyError, Node, Snapshot, SnapshotMetadata, Stores, apply_snapshot};
use snapply_flash::{BootError, Booted, FlashBackend, FlashSnapshotStore, Indexes, mount};
use snapply_tests::Op;

/// The stores' capacities in these tests.
pub type Small = Fixed<64, 64>;
/// Live records a flash backend holds.
pub const RECORDS: usize = 256;
/// Largest record (key + value) a flash backend holds.
pub const RECORD: usize = 512;
/// A node on flash.
pub type FlashNode<'f, F> = Node<FlashBackend<'f, F, RECORDS, RECORD>, Small>;
/// The leader: in memory.
pub type Leader = Node<MemBackend<512, 32, 256>, Small>;

pub const LEADER: u64 = 1;
pub const FOLLOWER: u64 = 2;

/// A leader holding `keys` keys of 24-byte values, leases, members, users and roles.
pub fn leader(keys: u8) -> Leader {
    let mut node = Leader::new(snapply_tests::config(LEADER), MemBackend::default());
    let mut ops = vec![Op::Grant { lease: 0, ttl: 30 }, Op::Grant { lease: 1, ttl: 60 }];
    for id in 0..3 {
        // Voters only: the tests add a learner after the restore, and etcd allows one.
        ops.push(Op::MemberAdd { id, learner: false });
    }
    for user in 0..2 {
        ops.push(Op::UserAdd { user });
        ops.push(Op::RoleAdd { role: user });
        ops.push(Op::RolePermit { role: user, key: user, write: user == 0 });
        ops.push(Op::UserRole { user, role: user });
    }
    snapply_tests::run(&mut node, &ops, 100, 2);
    // `run` names keys k00..k11; longer, distinct keys come straight from requests.
    let mut index = 200;
    for k in 0..keys {
        let key = format!("device/sensor-{k:03}");
        let value = [b'a' + (k % 26); 24];
        let lease = if k % 5 == 0 { 1 + i64::from(k % 2) } else { 0 };
        index += 1;
        node.apply(index, 2, &snapply_core::Request::Put { key: key.as_bytes(), value: &value, lease }).unwrap();
    }
    snapply_tests::run(
        &mut node,
        // No alarm stays active: under one, etcd refuses the puts the tests write after the
        // restore. An alarm raised and cleared still leaves its writes in the image.
        &[
            Op::Alarm { member: 0, corrupt: false, on: true },
            Op::Alarm { member: 0, corrupt: false, on: false },
            // 3.6: lease checkpoints are persisted (etcd's `shouldPersistCheckpoints`), as the tests
            // expect them to survive a reboot.
            Op::Version { minor: 6 },
        ],
        index,
        2,
    );
    node
}

/// The follower's own history before the snapshot.
pub fn follower_ops() -> Vec<Op> {
    vec![
        Op::Grant { lease: 2, ttl: 10 },
        Op::Put { key: 1, value: b"old value 1".to_vec(), lease: Some(2) },
        Op::Put { key: 2, value: b"old value 2".to_vec(), lease: None },
        Op::MemberAdd { id: 4, learner: false },
        Op::UserAdd { user: 2 },
    ]
}

/// A node on the mounted flash, after `ops` (entries 1..).
pub fn follower<'f, F: NorFlash>(
    chip: &'f RefCell<F>,
    indexes: &'f Indexes<RECORDS>,
    range: Range<u32>,
    ops: &[Op],
) -> FlashNode<'f, F> {
    let mounted = mount::<F, RECORDS, RECORD>(chip, indexes, range.clone()).unwrap();
    assert!(mounted.pending.is_none());
    drop(mounted);
    let mut node = boot(chip, indexes, range).unwrap().node;
    let first = node.progress().applied_index;
    snapply_tests::run(&mut node, ops, first, 1);
    node
}

/// Boots a node from the flash: mount, open, and complete a pending restore first (or refuse
/// it).
pub fn boot<'f, F: NorFlash>(
    chip: &'f RefCell<F>,
    indexes: &'f Indexes<RECORDS>,
    range: Range<u32>,
) -> Result<Booted<'f, F, RECORDS, RECORD, Small>, BootError<F::Error>> {
    let mounted = mount::<F, RECORDS, RECORD>(chip, indexes, range.clone()).map_err(BootError::Flash)?;
    let mut buf = vec![0u8; BASE_BUFFER];
    let mut storage =
        FlashSnapshotStore::<F, RECORDS, RECORD>::new(chip, indexes, range, &mut buf).map_err(BootError::Flash)?;
    let mut transport = PeerTable::<Small>::default();
    mounted.open_node(snapply_tests::config(FOLLOWER), &mut storage, &mut transport, &mut NoObserver)
}

/// Applies `(metadata, image)` to `node` through the pipeline with a flash snapshot store.
pub fn apply<'f, F: NorFlash>(
    chip: &'f RefCell<F>,
    indexes: &'f Indexes<RECORDS>,
    range: Range<u32>,
    node: &mut FlashNode<'f, F>,
    metadata: &SnapshotMetadata,
    image: &[u8],
) -> Result<(), ApplyError> {
    let mut buf = vec![0u8; BASE_BUFFER];
    let mut storage = FlashSnapshotStore::<F, RECORDS, RECORD>::new(chip, indexes, range, &mut buf).unwrap();
    let mut transport = PeerTable::<Small>::default();
    let mut observer = NoObserver;
    let ports = Ports { storage: &mut storage, transport: &mut transport, observer: &mut observer };
    apply_snapshot(node, ports, Snapshot::from_bytes(metadata, image)).map(|_| ())
}

/// A snapshot's image as [`persist_only`] hands it to the pipeline.
pub enum Image<'a> {
    /// The image's bytes.
    Bytes(&'a [u8]),
    /// A snapshot already persisted, named by its image's digest.
    Persisted([u8; 32]),
}

/// Runs the pipeline on `node` up to `Persisted` and ends it there (the state dropped): the
/// snapshot is persisted in the area that is not committed and pending, as a power cut after
/// the persist phase leaves it. The node stays on its old state.
pub fn persist_only<'f, F: NorFlash>(
    chip: &'f RefCell<F>,
    indexes: &'f Indexes<RECORDS>,
    range: Range<u32>,
    node: &mut FlashNode<'f, F>,
    metadata: &SnapshotMetadata,
    image: Image<'_>,
) -> Result<(), ApplyError> {
    let mut buf = vec![0u8; BASE_BUFFER];
    let mut storage = FlashSnapshotStore::<F, RECORDS, RECORD>::new(chip, indexes, range, &mut buf).unwrap();
    let mut transport = PeerTable::<Small>::default();
    let mut observer = NoObserver;
    let ports = Ports { storage: &mut storage, transport: &mut transport, observer: &mut observer };
    let snapshot = match image {
        Image::Bytes(bytes) => Snapshot::from_bytes(metadata, bytes),
        Image::Persisted(sha256) => Snapshot::persisted(metadata, sha256),
    };
    let validated = Validated::new(node, ports, snapshot)?.expect("a snapshot that is not empty");
    drop(validated.persist()?);
    Ok(())
}

/// Every record of a backend.
pub fn records<B: Backend>(b: &B) -> Vec<OwnedRecord> {
    dump(&b.read().unwrap()).unwrap()
}

/// The records of one bucket.
pub fn bucket(records: &[OwnedRecord], bucket: Bucket) -> Vec<OwnedRecord> {
    records.iter().filter(|r| r.0 == bucket).cloned().collect()
}

/// What a node rebooted from these flash contents holds, before any recovery: its records, its
/// stores as [`Node::open`] reads them from the committed area (v2 from the area's snapshot
/// data), and the snapshot pending, if any. Works on a copy, so nothing is written to the flash
/// under test.
pub fn reboot_state<F: NorFlash + Clone>(
    chip: &RefCell<F>,
    range: Range<u32>,
) -> (Vec<OwnedRecord>, Stores<Small>, Option<SnapshotMetadata>) {
    let copy = RefCell::new(chip.borrow().clone());
    let indexes = Indexes::new();
    let mounted = mount::<F, RECORDS, RECORD>(&copy, &indexes, range).expect("mount after a power cut");
    let pending = mounted.pending.map(|p| p.metadata);
    let backend = mounted.backend;
    let recs = records(&backend);
    let mut v2buf = vec![0u8; BASE_BUFFER];
    let v2data = backend.v2_data(&mut v2buf).unwrap().to_vec();
    let node = FlashNode::<F>::open(snapply_tests::config(FOLLOWER), backend, &v2data).unwrap();
    (recs, node.stores().clone(), pending)
}

/// The names of the stores where `a` and `b` differ (v2 only when `with_v2`).
pub fn differing(a: &Stores<Small>, b: &Stores<Small>, with_v2: bool) -> Vec<&'static str> {
    let mut out = Vec::new();
    if a.cindex != b.cindex {
        out.push("cindex");
    }
    if a.lessor != b.lessor {
        out.push("lessor");
    }
    if a.kv != b.kv {
        out.push("kv");
    }
    if a.alarms != b.alarms {
        out.push("alarms");
    }
    if a.auth != b.auth {
        out.push("auth");
    }
    if a.membership != b.membership {
        out.push("membership");
    }
    if with_v2 && a.v2 != b.v2 {
        out.push("v2");
    }
    out
}

/// Runs `f` on a thread with room for fixed-capacity nodes on its stack (a leader, a follower
/// and the staged stores of a restore), and re-raises its panic.
pub fn on_big_stack(f: impl FnOnce() + Send + 'static) {
    let worker = std::thread::Builder::new().stack_size(256 << 20).spawn(f).expect("spawning the test thread");
    if let Err(panic) = worker.join() {
        std::panic::resume_unwind(panic);
    }
}
