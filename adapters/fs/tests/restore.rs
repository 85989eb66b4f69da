//! Whole restores on a data directory: the pipeline with `FsSnapshotStore` and a node on
//! `member/db`, compared store by store with the leader; pinning of back-to-back snapshots;
//! boot-time recovery; corrupt `.snap` files; bad images; a full disk at every persist step.

// Test scaffolding: a failure here is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, clippy::unreachable)]

mod common;

use common::{DiskNode, FOLLOWER, apply, assert_same, boot, leader, more_ops, rich_ops, snap_files};
use proptest::prelude::*;
use snapply_core::Node;
use snapply_core::Phase;
use snapply_core::ports::PortErrorKind;
use snapply_fs::{DataDir, FsSnapshotStore, SnapName};
use snapply_tests::{config, records, run, workload};

/// A follower on a fresh data directory with `ops` applied to its live backend.
fn follower(root: &std::path::Path, ops: &[snapply_tests::Op]) -> (DiskNode, FsSnapshotStore) {
    let dir = DataDir::open(root).unwrap();
    let boot = dir.boot().unwrap();
    assert!(boot.pending.is_none());
    let mut node = Node::new(config(FOLLOWER), boot.backend);
    run(&mut node, ops, 0, 1);
    (node, FsSnapshotStore::new(dir))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    /// A generated leader, applied to a follower on disk with unrelated prior state, streamed or
    /// in memory: the follower equals the leader, `member/db` is the snapshot's backend, the old
    /// backend handed back still reads the follower's prior state (its file was renamed over),
    /// and a restart finds the new state with nothing pending.
    #[test]
    fn follower_on_disk_equals_leader(leader_ops in workload(64), follower_ops in workload(32), streamed: bool) {
        let (leader, metadata, image) = leader(&[common::rich_ops(), leader_ops]);
        let root = tempfile::tempdir().unwrap();
        let (mut node, mut store) = follower(root.path(), &follower_ops);
        let before = records(node.backend());

        let outcome = common::apply_with(&mut node, &mut store, &metadata, &image, streamed).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let outcome = outcome.ok_or_else(|| TestCaseError::fail("treated as empty"))?;
        assert_same(&leader, &node, &metadata);
        prop_assert_eq!(records(&outcome.old_backend), before);
        // The snapshot's backend became member/db; its .snap stays as the record of the last
        // applied snapshot.
        let name = SnapName { index: metadata.index, term: metadata.term };
        prop_assert_eq!(snap_files(root.path()), vec![format!("{:016x}-{:016x}.snap", name.term, name.index)]);

        drop((outcome, node, store));
        let (reopened, _, recovered) = boot(root.path());
        prop_assert!(!recovered, "nothing is pending after a completed restore");
        prop_assert_eq!(records(reopened.backend()), records(leader.backend()));
    }
}

/// A snapshot received whole in memory (as raft-rs hands one over) applies on the caller's
/// thread with the stores built while persisting: a damaged copy is refused and changes
/// nothing; the intact one makes the follower equal the leader, the old backend handed back
/// still reads the follower's prior state, and the same snapshot again is refused as not newer,
/// leaving the state as it is.
#[test]
fn a_received_snapshot_applies_with_the_stores_built_while_persisting() {
    let (leader, metadata, image) = leader(&[rich_ops(), more_ops()]);
    let root = tempfile::tempdir().unwrap();
    let (mut node, mut store) = follower(root.path(), &rich_ops());
    let before = records(node.backend());
    let mut transport = snapply_core::memports::PeerTable::<snapply_core::collections::Growable>::default();
    let mut observer = snapply_core::NoObserver;
    // A damaged image is refused in the persist phase and leaves the follower as it was.
    let state = (node.stores().clone(), node.progress().clone());
    for at in [12, image.len() / 2, image.len() - 3] {
        let mut bad = image.clone();
        bad[at] ^= 0x10;
        let err = snapply_fs::apply_received(&mut node, &mut store, &mut transport, &mut observer, &metadata, &bad)
            .unwrap_err();
        assert!(matches!(&err, snapply_fs::FsError::Apply(e) if e.phase() == Phase::Persist), "byte {at}: {err}");
        assert!(snap_files(root.path()).is_empty(), "byte {at}: {:?}", snap_files(root.path()));
        assert_eq!(records(node.backend()), before);
        assert_eq!((node.stores().clone(), node.progress().clone()), state);
    }
    let (progress, old) =
        snapply_fs::apply_received(&mut node, &mut store, &mut transport, &mut observer, &metadata, &image)
            .unwrap()
            .expect("not an empty snapshot");
    assert_eq!(progress.applied_index, metadata.index);
    assert_same(&leader, &node, &metadata);
    assert_eq!(records(&old), before);
    drop(old);

    let again = snapply_fs::apply_received(&mut node, &mut store, &mut transport, &mut observer, &metadata, &image);
    assert!(again.is_err(), "a snapshot not newer than the applied index is refused");
    assert_same(&leader, &node, &metadata);
}

/// Two snapshots persisted back to back, before either is applied: applying the first deletes
/// nothing the second needs (etcd #18055, #20133), and the second then applies too.
#[test]
fn back_to_back_snapshots_keep_the_one_waiting() {
    let (_, first_meta, first_image) = leader(&[rich_ops()]);
    let (second_leader, second_meta, second_image) = leader(&[rich_ops(), more_ops()]);
    assert!(first_meta.index < second_meta.index);
    let root = tempfile::tempdir().unwrap();
    let (mut node, mut store) = follower(root.path(), &[]);

    store.persist_image(&first_meta, snapply_core::ImageData::Bytes(&first_image)).unwrap();
    store.persist_image(&second_meta, snapply_core::ImageData::Bytes(&second_image)).unwrap();
    assert_eq!(snap_files(root.path()).len(), 4, "two .snap and two .snap.db");

    // The first is applied (its persist is the one already done: the image is not read again).
    apply(&mut node, &mut store, &first_meta, &[]).unwrap();
    let second = SnapName { index: second_meta.index, term: second_meta.term };
    let dir = store.dir().clone();
    assert!(dir.snap_path(second).exists() && dir.snap_db_path(second.index).exists());

    apply(&mut node, &mut store, &second_meta, &[]).unwrap();
    assert_same(&second_leader, &node, &second_meta);
    // The first is released now that a newer one is applied.
    assert_eq!(snap_files(root.path()), vec![format!("{:016x}-{:016x}.snap", second.term, second.index)]);
}

/// A snapshot persisted but not applied when the node stopped is applied at boot, before the
/// node serves (etcd's `RecoverSnapshotBackend`).
#[test]
fn boot_applies_a_pending_snapshot() {
    let (leader, metadata, image) = leader(&[rich_ops(), more_ops()]);
    let root = tempfile::tempdir().unwrap();
    let (node, mut store) = follower(root.path(), &rich_ops()[..4]);
    store.persist_image(&metadata, snapply_core::ImageData::Bytes(&image)).unwrap();
    drop((node, store));

    let (node, _, recovered) = boot(root.path());
    assert!(recovered);
    assert_same(&leader, &node, &metadata);
}

/// A `.snap` that fails its checksum is set aside as `.broken` and the next newest is applied.
#[test]
fn corrupt_snap_is_set_aside_and_the_next_newest_applied() {
    let (first_leader, first_meta, first_image) = leader(&[rich_ops()]);
    let (_, second_meta, second_image) = leader(&[rich_ops(), more_ops()]);
    let root = tempfile::tempdir().unwrap();
    let (node, mut store) = follower(root.path(), &[]);
    store.persist_image(&first_meta, snapply_core::ImageData::Bytes(&first_image)).unwrap();
    store.persist_image(&second_meta, snapply_core::ImageData::Bytes(&second_image)).unwrap();
    let second = store.dir().snap_path(SnapName { index: second_meta.index, term: second_meta.term });
    drop((node, store));

    let mut bytes = std::fs::read(&second).unwrap();
    bytes[20] ^= 0x01;
    std::fs::write(&second, &bytes).unwrap();

    let (node, _, recovered) = boot(root.path());
    assert!(recovered);
    assert_same(&first_leader, &node, &first_meta);
    let mut broken = second.into_os_string();
    broken.push(".broken");
    assert!(std::path::Path::new(&broken).exists());
}

/// A damaged image is refused while persisting: nothing is left in `member/snap/`, the node and
/// `member/db` are as they were.
#[test]
fn bad_image_is_refused_and_leaves_nothing() {
    let (_, metadata, image) = leader(&[rich_ops()]);
    let root = tempfile::tempdir().unwrap();
    let (mut node, mut store) = follower(root.path(), &more_ops());
    let before = (records(node.backend()), node.stores().clone(), node.progress().clone());
    for at in [12, image.len() / 2, image.len() - 3] {
        let mut bad = image.clone();
        bad[at] ^= 0x10;
        let err = apply(&mut node, &mut store, &metadata, &bad).unwrap_err();
        assert_eq!(err.phase(), Phase::Persist);
        assert!(matches!(err.kind(), snapply_core::ApplyErrorKind::Port(p) if p.kind == PortErrorKind::Corrupt));
        assert!(snap_files(root.path()).is_empty(), "byte {at}: {:?}", snap_files(root.path()));
        assert_eq!((records(node.backend()), node.stores().clone(), node.progress().clone()), before);
    }
}

/// An image whose every frame is valid but whose trailer's SHA-256 is wrong (the frame CRCs
/// cannot see it, only the digest check can): refused while persisting, streamed or in memory,
/// and nothing changes; the intact image then applies.
#[test]
fn an_image_with_valid_frames_and_a_wrong_digest_is_refused_and_changes_nothing() {
    let (leader, metadata, image) = leader(&[rich_ops()]);
    let forged = snapply_tests::forge::with_wrong_digest(&image);
    let root = tempfile::tempdir().unwrap();
    let (mut node, mut store) = follower(root.path(), &more_ops());
    let before = (records(node.backend()), node.stores().clone(), node.progress().clone());
    for streamed in [false, true] {
        let err = common::apply_with(&mut node, &mut store, &metadata, &forged, streamed).unwrap_err();
        assert_eq!(err.phase(), Phase::Persist);
        assert!(
            matches!(err.kind(), snapply_core::ApplyErrorKind::Port(p) if p.kind == PortErrorKind::Corrupt),
            "{err}"
        );
        assert!(snap_files(root.path()).is_empty(), "{:?}", snap_files(root.path()));
        assert_eq!((records(node.backend()), node.stores().clone(), node.progress().clone()), before);
    }
    // Straight through the store: the digest is what is named.
    let err = store.persist_image(&metadata, snapply_core::ImageData::Bytes(&forged)).unwrap_err();
    assert!(
        matches!(err, snapply_fs::FsError::Image { what: snapply_core::image::Corruption::DigestMismatch, .. }),
        "{err}"
    );
    assert!(snap_files(root.path()).is_empty());
    apply(&mut node, &mut store, &metadata, &image).unwrap();
    assert_same(&leader, &node, &metadata);
}

/// A snapshot already persisted, sent again under the same metadata with another image: an
/// honest one (its own digest) and a forged one (valid frames, claiming the persisted image's
/// digest) are both refused, and the persisted snapshot is left as it was; the same image
/// again is accepted as the retry it is.
#[test]
fn a_retry_of_a_persisted_snapshot_with_another_image_is_refused() {
    use snapply_core::backend::{Backend, Bucket, WriteTxn};
    let (leader, metadata, image) = leader(&[rich_ops()]);
    // Another image under the same metadata: the leader's backend with one more key.
    let mut other_backend = leader.backend().clone();
    let mut txn = other_backend.write().unwrap();
    txn.put(Bucket::Key, b"not-in-the-snapshot", b"x").unwrap();
    txn.commit().unwrap();
    let mut v2 = Vec::new();
    leader.v2_snapshot_data(&mut v2).unwrap();
    let mut other = Vec::new();
    snapply_core::image::encode(&metadata, &other_backend.read().unwrap(), &v2, &mut other).unwrap();
    assert_ne!(snapply_tests::forge::trailer_digest(&other), snapply_tests::forge::trailer_digest(&image));
    let forged = snapply_tests::forge::with_trailer_digest(&other, snapply_tests::forge::trailer_digest(&image));

    let root = tempfile::tempdir().unwrap();
    let dir = DataDir::open(root.path()).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let info = snapply_fs::persist(&dir, &mut buf, &metadata, snapply_core::ImageData::Bytes(&image)).unwrap();
    let name = SnapName { index: metadata.index, term: metadata.term };
    let persisted =
        || (std::fs::read(dir.snap_path(name)).unwrap(), std::fs::read(dir.snap_db_path(name.index)).unwrap());
    let before = persisted();
    // Its own digest differs from the persisted one: not this snapshot.
    let err = snapply_fs::persist(&dir, &mut buf, &metadata, snapply_core::ImageData::Bytes(&other)).unwrap_err();
    assert!(matches!(err, snapply_fs::FsError::MetadataMismatch { .. }), "{err}");
    assert!(persisted() == before, "the persisted snapshot is unchanged");
    // It claims the persisted digest, which its bytes do not have: the digest check refuses it.
    let err = snapply_fs::persist(&dir, &mut buf, &metadata, snapply_core::ImageData::Bytes(&forged)).unwrap_err();
    assert!(
        matches!(err, snapply_fs::FsError::Image { what: snapply_core::image::Corruption::DigestMismatch, .. }),
        "{err}"
    );
    assert!(persisted() == before, "the persisted snapshot is unchanged");
    let again = snapply_fs::persist(&dir, &mut buf, &metadata, snapply_core::ImageData::Bytes(&image)).unwrap();
    assert_eq!(again, info);
}

/// A value past the core's 64 KiB default buffer but within etcd's request limit (a 300 KB
/// value, as etcd's interop workload writes) restores; a record longer than the buffer for
/// [`snapply_fs::MAX_VALUE_LEN`] and the longest key is refused naming the record, and the follower keeps its old state with nothing left behind.
#[test]
fn large_values_restore_up_to_the_limit_and_past_it_are_refused() {
    let big = |len: usize| snapply_tests::Op::Put { key: 7, value: vec![0xa5; len], lease: None };

    let (leader_node, metadata, image) = leader(&[vec![big(300 * 1024)], rich_ops()]);
    let tmp = tempfile::tempdir().unwrap();
    let (mut node, mut store) = follower(tmp.path(), &more_ops());
    apply(&mut node, &mut store, &metadata, &image).expect("a 300 KB value restores");
    assert_same(&leader_node, &node, &metadata);

    let (_, metadata, image) =
        leader(&[vec![big(snapply_fs::MAX_VALUE_LEN + snapply_core::image::MAX_KEY_LEN + 64)], rich_ops()]);
    let tmp = tempfile::tempdir().unwrap();
    let (mut node, mut store) = follower(tmp.path(), &more_ops());
    let before = records(node.backend());
    let files = snap_files(tmp.path());
    let err = apply(&mut node, &mut store, &metadata, &image).expect_err("a value past the limit is refused");
    assert_eq!(err.phase(), Phase::Persist, "refused while persisting: {err}");
    let message = err.to_string();
    assert!(message.contains("longer than this node accepts"), "the error names the oversized record: {message}");
    assert_eq!(records(node.backend()), before, "the old state is intact");
    assert_eq!(snap_files(tmp.path()), files, "nothing is left in member/snap");
}

/// A snapshot larger than the writer's non-durable chunks (16 MiB) is written in several redb
/// transactions and committed durably once: the follower ends with every record, as the leader.
#[test]
fn a_snapshot_larger_than_a_write_chunk_restores_whole() {
    let big = |key: u8| snapply_tests::Op::Put { key, value: vec![key; 7 << 20], lease: None };
    let (leader_node, metadata, image) = leader(&[vec![big(7), big(8), big(9)], rich_ops()]);
    assert!(image.len() > 20 << 20, "the image spans more than one chunk: {} bytes", image.len());
    let tmp = tempfile::tempdir().unwrap();
    let (mut node, mut store) = follower(tmp.path(), &more_ops());
    apply(&mut node, &mut store, &metadata, &image).expect("a snapshot of several chunks restores");
    assert_same(&leader_node, &node, &metadata);
}

/// A store whose releases go to another data directory's store.
struct ReleasesInto<'v> {
    own: FsSnapshotStore,
    victim: &'v mut FsSnapshotStore,
}

impl snapply_core::ports::SnapshotStore for ReleasesInto<'_> {
    type Backend = snapply_fs::RedbBackend;
    fn persist<'r>(
        &mut self,
        image: snapply_core::ImageData<'_>,
        ticket: snapply_core::ports::PersistTicket<'r>,
    ) -> Result<snapply_core::ports::Durable<'r>, snapply_core::ports::PortError> {
        self.own.persist(image, ticket)
    }
    fn open_backend(
        &mut self,
        snapshot: &snapply_core::ports::Durable<'_>,
    ) -> Result<Self::Backend, snapply_core::ports::PortError> {
        self.own.open_backend(snapshot)
    }
    fn v2_data(
        &mut self,
        snapshot: &snapply_core::ports::Durable<'_>,
    ) -> Result<&[u8], snapply_core::ports::PortError> {
        self.own.v2_data(snapshot)
    }
    fn release_before(
        &mut self,
        applied: snapply_core::ports::ReleaseTicket<'_>,
    ) -> Result<(), snapply_core::ports::PortError> {
        self.victim.release_before(applied)
    }
}

/// A release ticket deletes snapshots only in the data directory that holds the snapshot it
/// names: handed by another directory's run to a store whose snapshot waits to be applied, it
/// is refused and the waiting snapshot stays, and applies.
#[test]
fn a_release_ticket_of_another_directory_does_not_delete_a_waiting_snapshot() {
    let (first_leader, first_meta, first_image) = leader(&[rich_ops()]);
    let (_, second_meta, second_image) = leader(&[rich_ops(), more_ops()]);
    let victim_root = tempfile::tempdir().unwrap();
    let (mut victim_node, mut victim) = follower(victim_root.path(), &[]);
    victim.persist_image(&first_meta, snapply_core::ImageData::Bytes(&first_image)).unwrap();
    let waiting = snap_files(victim_root.path());
    assert_eq!(waiting.len(), 2, "a .snap and its .snap.db");

    let other_root = tempfile::tempdir().unwrap();
    let (mut other_node, own) = follower(other_root.path(), &[]);
    let mut storage = ReleasesInto { own, victim: &mut victim };
    let mut transport = snapply_core::memports::PeerTable::<snapply_core::collections::Growable>::default();
    let mut observer = snapply_core::NoObserver;
    let ports =
        snapply_core::ports::Ports { storage: &mut storage, transport: &mut transport, observer: &mut observer };
    let err = snapply_core::apply_snapshot(
        &mut other_node,
        ports,
        snapply_core::Snapshot::from_bytes(&second_meta, &second_image),
    )
    .unwrap_err();
    assert_eq!(err.phase(), Phase::Finish);
    assert_eq!(snap_files(victim_root.path()), waiting, "the waiting snapshot stays");
    apply(&mut victim_node, &mut victim, &first_meta, &[]).unwrap();
    assert_same(&first_leader, &victim_node, &first_meta);
}
