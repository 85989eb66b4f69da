//! Failure injection: whatever fails before `BackendSwapped` leaves the follower exactly as it
//! was; what fails after it is reported as fatal; the gauge is back to zero on every path.

use snapply_core::backend::{Backend, Bucket, WriteTxn};
use snapply_core::collections::{Fixed, Growable};
use snapply_core::image::{self, MIN_BUFFER};
use snapply_core::mem::{MemBackend, VecBackend};
use snapply_core::memports::{MemSnapshotStore, PeerTable};
use snapply_core::ports::{PortErrorKind, Ports};
use snapply_core::store::{META_CONSISTENT_INDEX, StoreError, V2Deprecation, V2Store};
use snapply_core::{ApplyError, ApplyErrorKind, Config, Node, Request, Snapshot, SnapshotMetadata, apply_snapshot};
use snapply_core::{Event, Phase};
use std::panic::{AssertUnwindSafe, catch_unwind};

use snapply_tests::{
    Faulty, Op, Recorder, arm_faults, arm_one_fault, arm_one_panic, node, records, run, snapshot, state,
};

use snapply_tests::{sample_follower as follower, sample_leader as leader};

fn apply<B: Backend + Default + Clone>(
    node: &mut Node<B, Growable>,
    metadata: &SnapshotMetadata,
    image: &[u8],
    observer: &mut Recorder,
) -> snapply_tests::ApplyResult<B> {
    snapply_tests::apply_in_memory::<B, Growable, Vec<u8>>(node, metadata, image, observer).0
}

#[test]
fn empty_snapshot_changes_nothing_and_logs_nothing() {
    let mut f = follower(VecBackend::new());
    let before = state(&f);
    let mut obs = Recorder::default();
    let empty = SnapshotMetadata::default();
    let out = apply(&mut f, &empty, &[], &mut obs).expect("an empty snapshot is not an error");
    assert!(out.is_none());
    assert_eq!(state(&f), before);
    assert!(obs.events.is_empty());
    assert_eq!((obs.gauge, obs.gauge_peak), (0, 0));
}

#[test]
fn outdated_and_equal_index_snapshots_are_refused_without_change() {
    let l = leader();
    let (metadata, image) = snapshot(&l);
    // A follower that already applied the leader's index, then one ahead of it.
    for extra in [0u64, 5] {
        let mut f = follower(VecBackend::new());
        let ops = vec![Op::Put { key: 7, value: b"x".to_vec(), lease: None }; 1];
        run(&mut f, &ops, metadata.index - 1 + extra, 1);
        assert_eq!(f.progress().applied_index, metadata.index + extra);
        let before = state(&f);
        let mut obs = Recorder::default();
        let err = apply(&mut f, &metadata, &image, &mut obs).expect_err("an outdated snapshot must be refused");
        assert_eq!(err.phase(), Phase::Validate);
        assert_eq!(
            *err.kind(),
            ApplyErrorKind::Outdated { incoming_index: metadata.index, applied_index: metadata.index + extra }
        );
        assert!(!err.is_fatal());
        assert_eq!(state(&f), before);
        assert_eq!(obs.gauge, 0);
        assert_eq!(obs.gauge_peak, 1);
        let messages: Vec<&str> = obs.events.iter().map(Event::message).collect();
        assert_eq!(
            messages,
            [
                "applying snapshot",
                "unexpected leader snapshot from outdated index",
                "failed to apply snapshot",
                "applied snapshot"
            ]
        );
    }
}

#[test]
fn successful_apply_logs_etcds_messages_in_order() {
    let l = leader();
    let (metadata, image) = snapshot(&l);
    let mut f = follower(VecBackend::new());
    let mut obs = Recorder::default();
    apply(&mut f, &metadata, &image, &mut obs).expect("apply").expect("not empty");
    let messages: Vec<&str> = obs.events.iter().map(Event::message).collect();
    assert_eq!(
        messages,
        [
            "applying snapshot",
            "restoring lease store",
            "restored lease store",
            "restoring mvcc store",
            "restored mvcc store",
            "restoring alarm store",
            "restored alarm store",
            "restoring auth store",
            "restored auth store",
            "restoring v2 store",
            "restored v2 store",
            "restoring cluster configuration",
            "restored cluster configuration",
            "removing old peers from network",
            "removed old peers from network",
            "adding peers from new cluster configuration",
            "added peers from new cluster configuration",
            "applied snapshot",
        ]
    );
    assert!(obs.events.contains(&Event::RestoredMvccStore { consistent_index: metadata.index }));
    assert_eq!(obs.gauge, 0);
}

/// Fails the N-th backend operation of an apply, for every N, and checks what each failure
/// leaves. The sweep ends when an apply succeeds with the budget it had.
#[test]
fn a_fault_at_every_backend_operation_keeps_the_follower_whole() {
    let l = leader();
    let (metadata, image) = snapshot(&l);
    let mut phases_hit = std::collections::BTreeSet::new();
    for n in 0.. {
        arm_faults(None);
        let mut f = follower(Faulty::<VecBackend>::default());
        let before = state(&f);
        let mut obs = Recorder::default();
        arm_faults(Some(n));
        let result = apply(&mut f, &metadata, &image, &mut obs);
        arm_faults(None);
        assert_eq!(obs.gauge, 0, "gauge after a fault at operation {n}");
        match result {
            Ok(out) => {
                assert!(out.is_some());
                assert_eq!(records(f.backend()), records(l.backend()));
                assert_eq!(f.stores(), l.stores());
                break;
            }
            Err(e) => {
                phases_hit.insert(e.phase());
                // After the swap nothing reads a backend: every backend fault is found before
                // it, while the old state is live.
                assert!(e.phase() < Phase::SwapBackend && !e.is_fatal(), "fault at operation {n}: {e}");
                if let Some(u) = f.unfinished() {
                    // The medium died while the run was rebuilding the lessor and key index in
                    // place: the old state could not be read back. The old backend is untouched
                    // and live, the node refuses entries, and `resume` reads the old state back
                    // once the medium works.
                    assert!(!u.swapped(), "fault at operation {n}");
                    assert_eq!(records(f.backend()), before.0, "fault at operation {n}");
                    assert!(matches!(
                        f.apply(1_000_000, 9, &Request::Put { key: b"x", value: b"y", lease: 0 }),
                        Err(StoreError::RestoreUnfinished { .. })
                    ));
                    let mut buf = vec![0u8; image::MIN_BUFFER];
                    let mut storage = MemSnapshotStore::<Faulty<VecBackend>, Vec<u8>>::new(&mut buf);
                    let mut transport = PeerTable::<Growable>::default();
                    let ports = Ports { storage: &mut storage, transport: &mut transport, observer: &mut obs };
                    assert!(matches!(snapply_core::resume(&mut f, ports), Ok(None)), "fault at operation {n}");
                    assert_eq!(obs.gauge, 0);
                }
                assert_eq!(state(&f), before, "fault at operation {n} in {:?} changed the follower", e.phase());
            }
        }
        assert!(n < 10_000, "the sweep does not end");
    }
    // The sweep reached every phase that touches a backend.
    for phase in [Phase::Persist, Phase::OpenBackend, Phase::BindIndex, Phase::RestoreLease, Phase::RestoreMvcc] {
        assert!(phases_hit.contains(&phase), "no fault landed in {phase:?}: {phases_hit:?}");
    }
}

/// Encodes an image of `backend` under `metadata` with v2 data `v2`.
fn image_of<B: Backend>(metadata: &SnapshotMetadata, backend: &B, v2: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    image::encode(metadata, &backend.read().expect("read"), v2, &mut out).expect("encode");
    out
}

/// The leader's backend with one record replaced.
fn tampered(l: &Node<VecBackend, Growable>, bucket: Bucket, key: &[u8], value: &[u8]) -> VecBackend {
    let mut b = l.backend().clone();
    let mut txn = b.write().expect("write");
    txn.put(bucket, key, value).expect("put");
    txn.commit().expect("commit");
    b
}

fn assert_refused_before_swap(metadata: &SnapshotMetadata, image: &[u8], phase: Phase) -> ApplyError {
    let mut f = follower(VecBackend::new());
    let before = state(&f);
    let mut obs = Recorder::default();
    let err = apply(&mut f, metadata, image, &mut obs).expect_err("a bad snapshot must be refused");
    assert_eq!(err.phase(), phase, "{err}");
    assert!(!err.is_fatal());
    assert_eq!(state(&f), before);
    assert_eq!(obs.gauge, 0);
    err
}

#[test]
fn backend_whose_consistent_index_differs_from_the_snapshot_is_refused() {
    let l = leader();
    let (metadata, _) = snapshot(&l);
    let b = tampered(&l, Bucket::Meta, META_CONSISTENT_INDEX, &(metadata.index - 1).to_be_bytes());
    let err = assert_refused_before_swap(&metadata, &image_of(&metadata, &b, &[]), Phase::OpenBackend);
    assert_eq!(
        *err.kind(),
        ApplyErrorKind::IndexMismatch { backend_index: metadata.index - 1, snapshot_index: metadata.index }
    );
}

#[test]
fn corrupt_lease_record_fails_lease_restore_without_change() {
    let l = leader();
    let (metadata, _) = snapshot(&l);
    let b = tampered(&l, Bucket::Lease, &7i64.to_be_bytes(), &[0xff; 3]);
    let err = assert_refused_before_swap(&metadata, &image_of(&metadata, &b, &[]), Phase::RestoreLease);
    assert!(matches!(err.kind(), ApplyErrorKind::Store(StoreError::Corrupt { bucket: Bucket::Lease, .. })));
}

#[test]
fn corrupt_key_record_fails_mvcc_restore_without_change() {
    let l = leader();
    let (metadata, _) = snapshot(&l);
    let b = tampered(&l, Bucket::Key, b"not a revision", b"x");
    let err = assert_refused_before_swap(&metadata, &image_of(&metadata, &b, &[]), Phase::RestoreMvcc);
    assert!(matches!(err.kind(), ApplyErrorKind::Store(StoreError::Corrupt { bucket: Bucket::Key, .. })));
}

/// A corrupt record of a store etcd restores after the swap (alarms, auth, membership) is found
/// when the backend is opened, while the old state is still live: the node is never left with
/// the new key space and its old auth or membership.
#[test]
fn corrupt_records_of_late_stores_are_refused_before_the_swap() {
    let l = leader();
    let (metadata, _) = snapshot(&l);
    for (bucket, key) in [
        (Bucket::Alarm, &b"not an alarm"[..]),
        (Bucket::AuthUsers, b"mallory"),
        (Bucket::AuthRoles, b"intruder"),
        (Bucket::Members, b"00000000000000ff"),
        (Bucket::MembersRemoved, b"not hex"),
        (Bucket::Cluster, snapply_core::store::CLUSTER_VERSION_KEY),
    ] {
        let b = tampered(&l, bucket, key, &[0xff, 0xff, 0xff]);
        let err = assert_refused_before_swap(&metadata, &image_of(&metadata, &b, &[]), Phase::OpenBackend);
        assert!(
            matches!(err.kind(), ApplyErrorKind::Store(StoreError::Corrupt { bucket: b, .. }) if *b == bucket),
            "{bucket:?}: {err}"
        );
    }
}

#[test]
fn every_truncation_and_bit_flip_of_an_image_is_refused_without_change() {
    let mut l = leader();
    // The sample leader's NOSPACE alarm refuses puts (etcd's capped applier): disarm it first.
    let disarm = Op::Alarm { member: 1, corrupt: false, on: false };
    let values: Vec<Op> = std::iter::once(disarm)
        .chain((0..24).map(|k| Op::Put { key: k % 12, value: vec![k; 96], lease: None }))
        .collect();
    run(&mut l, &values, 200, 3);
    let (metadata, image) = snapshot(&l);
    assert!(image.len() > 3 * 1024, "the sample image is {} bytes", image.len());
    let mut f = follower(VecBackend::new());
    let before = state(&f);
    let mut obs = Recorder::default();
    let mut refuse = |bad: &[u8], what: &str| {
        let err = apply(&mut f, &metadata, bad, &mut obs).expect_err(what);
        assert_eq!(err.phase(), Phase::Persist, "{what}: {err}");
        assert!(matches!(err.kind(), ApplyErrorKind::Port(p) if p.kind == PortErrorKind::Corrupt), "{what}: {err}");
    };
    for len in 0..image.len() {
        refuse(&image[..len], &format!("truncated to {len} bytes"));
    }
    let mut bad = image.clone();
    for bit in 0..image.len() * 8 {
        bad[bit / 8] ^= 1 << (bit % 8);
        refuse(&bad, &format!("bit {bit} flipped"));
        bad[bit / 8] ^= 1 << (bit % 8);
    }
    assert_eq!(state(&f), before);
    assert_eq!(obs.gauge, 0);
}

#[test]
fn v2_content_beyond_membership_is_refused_before_the_swap_under_write_only_and_accepted_under_not_yet() {
    let l = leader();
    let (metadata, _) = snapshot(&l);
    let mut v2 = V2Store::<Growable>::default();
    v2.set(b"/1/legacy-key", b"v2 value").expect("set");
    let mut data = Vec::new();
    v2.save(&mut data).expect("save");
    let image = image_of(&metadata, l.backend(), &data);

    let err = assert_refused_before_swap(&metadata, &image, Phase::OpenBackend);
    assert_eq!(*err.kind(), ApplyErrorKind::Store(StoreError::V2ContentDisallowed));

    let mut f = Node::<VecBackend, Growable>::new(
        Config { v2_deprecation: V2Deprecation::NotYet, ..snapply_tests::config(2) },
        VecBackend::new(),
    );
    apply(&mut f, &metadata, &image, &mut Recorder::default()).expect("not-yet allows v2 content");
    assert_eq!(f.stores().v2, v2);
}

#[test]
fn full_fixed_capacity_is_an_error_and_changes_nothing() {
    let mut l = node(1);
    let keys: Vec<Op> = (0..5).map(|k| Op::Put { key: k, value: vec![k; 8], lease: None }).collect();
    run(&mut l, &keys, 100, 3);
    let (metadata, image) = snapshot(&l);
    // Room for the follower's own state, not for the leader's key index.
    type Small = Fixed<2, 64>;
    type SmallBackend = MemBackend<64, 32, 256>;
    let mut f = Node::<SmallBackend, Small>::new(snapply_tests::config(2), SmallBackend::default());
    let put = snapply_core::Request::Put { key: b"a", value: b"1", lease: 0 };
    f.apply(1, 1, &put).expect("one key fits");
    let before = state(&f);
    let mut buf = vec![0u8; MIN_BUFFER];
    let mut storage = MemSnapshotStore::<SmallBackend, heapless::Vec<u8, 1024>>::new(&mut buf);
    let mut transport = PeerTable::<Small>::default();
    let mut obs = Recorder::default();
    let ports = Ports { storage: &mut storage, transport: &mut transport, observer: &mut obs };
    let err = apply_snapshot(&mut f, ports, Snapshot::from_bytes(&metadata, &image))
        .expect_err("the leader's state does not fit");
    assert!(err.phase() < Phase::SwapBackend, "{err}");
    assert!(matches!(err.kind(), ApplyErrorKind::Store(StoreError::Capacity(_))), "{err}");
    assert_eq!(state(&f), before);
    assert_eq!(obs.gauge, 0);
}

#[test]
fn a_second_snapshot_does_not_evict_the_first_while_it_waits() {
    let mut l = leader();
    let (m1, i1) = snapshot(&l);
    run(&mut l, &[Op::Put { key: 5, value: b"five".to_vec(), lease: None }], 300, 3);
    let (m2, i2) = snapshot(&l);
    run(&mut l, &[Op::Put { key: 6, value: b"six".to_vec(), lease: None }], 400, 3);
    let (m3, i3) = snapshot(&l);

    let mut buf = vec![0u8; MIN_BUFFER];
    let mut storage = MemSnapshotStore::<VecBackend, Vec<u8>, 2>::new(&mut buf);
    let mut f = follower(VecBackend::new());
    let mut transport = PeerTable::<Growable>::default();
    // Persists a snapshot for `node` and abandons the restore right after, as a follower whose
    // apply loop has not reached the snapshot yet.
    fn persist_only(
        node: &mut Node<VecBackend, Growable>,
        storage: &mut MemSnapshotStore<'_, VecBackend, Vec<u8>, 2>,
        transport: &mut PeerTable<Growable>,
        metadata: &SnapshotMetadata,
        image: &[u8],
    ) {
        let mut obs = Recorder::default();
        let ports = Ports { storage, transport, observer: &mut obs };
        let v = snapply_core::pipeline::Validated::new(node, ports, Snapshot::from_bytes(metadata, image))
            .expect("valid")
            .expect("not empty");
        drop(v.persist().expect("persist"));
        assert_eq!(obs.gauge, 0);
    }
    // Snapshot 1 is persisted, then snapshot 2 arrives before 1 is applied: both stay.
    persist_only(&mut f, &mut storage, &mut transport, &m1, &i1);
    let mut f2 = follower(VecBackend::new());
    persist_only(&mut f2, &mut storage, &mut transport, &m2, &i2);
    assert_eq!(storage.pinned().collect::<Vec<_>>(), [m1.index, m2.index]);
    // A third cannot evict either while both wait.
    let mut f3 = follower(VecBackend::new());
    let mut obs3 = Recorder::default();
    let err = apply_snapshot(
        &mut f3,
        Ports { storage: &mut storage, transport: &mut transport, observer: &mut obs3 },
        Snapshot::from_bytes(&m3, &i3),
    )
    .expect_err("no slot may be freed");
    assert_eq!(err.phase(), Phase::Persist);
    assert!(matches!(err.kind(), ApplyErrorKind::Port(p) if p.kind == PortErrorKind::Full));
    // Applying snapshot 2 releases snapshot 1; now snapshot 3 fits.
    apply_snapshot(
        &mut f2,
        Ports { storage: &mut storage, transport: &mut transport, observer: &mut Recorder::default() },
        Snapshot::from_bytes(&m2, &i2),
    )
    .expect("apply 2");
    assert_eq!(storage.pinned().collect::<Vec<_>>(), [m2.index]);
    // Abandoning a restore after persisting left that follower as it was.
    assert_eq!(state(&f), state(&follower(VecBackend::new())));
}

/// A request that fails anywhere inside the node's transaction leaves the node as it was, and
/// the node keeps working.
#[test]
fn a_transient_fault_in_any_request_leaves_the_node_as_it_was() {
    let requests = [
        Op::Put { key: 1, value: b"v".to_vec(), lease: Some(0) },
        Op::Delete { key: 0, range: true },
        Op::Revoke { lease: 0 },
        Op::Compact { back: 0 },
        Op::MemberAdd { id: 3, learner: true },
        Op::MemberRemove { id: 0 },
        Op::RolePermit { role: 0, key: 2, write: false },
        Op::Auth(false),
    ];
    for (i, op) in requests.iter().enumerate() {
        for (faults, n) in (0usize..).enumerate() {
            arm_faults(None);
            let mut f = Node::<Faulty<VecBackend>, Growable>::new(snapply_tests::config(1), Faulty::default());
            let setup = [
                Op::Grant { lease: 0, ttl: 30 },
                Op::Put { key: 0, value: b"a".to_vec(), lease: Some(0) },
                Op::Put { key: 1, value: b"b".to_vec(), lease: Some(0) },
                Op::MemberAdd { id: 0, learner: false },
                Op::RoleAdd { role: 0 },
                Op::RootSetup,
                Op::Auth(true),
            ];
            run(&mut f, &setup, 0, 1);
            let before = state(&f);
            let index = f.progress().applied_index;
            arm_one_fault(n);
            let applied = run(&mut f, std::slice::from_ref(op), index, 1);
            let fault_hit = snapply_tests::fault_pending().is_none();
            arm_faults(None);
            if applied == 1 {
                // The fault came too late to matter: the sweep over this request is complete.
                assert!(faults > 0, "request {i} never met a fault");
                break;
            }
            assert!(fault_hit, "request {i} was refused without a fault");
            assert_eq!(state(&f), before, "request {i} with a fault at operation {n} changed the node");
            // The node still applies the request once the medium recovers.
            assert_eq!(run(&mut f, std::slice::from_ref(op), index, 1), 1, "request {i} after a fault");
        }
    }
}

/// A backend that panics anywhere inside a request (the panic caught by the caller) leaves a
/// node that refuses entries, snapshots of itself and restores until it is reopened from its
/// backend: its stores may hold effects the backend never committed (a revision, a role), and a
/// retried request must not be answered from them. Reopened, the node is its backend's and the
/// request applies.
#[test]
fn a_backend_panic_inside_a_request_leaves_a_node_that_refuses_work_until_reopened() {
    let requests = [
        Op::RoleAdd { role: 1 },
        Op::Put { key: 1, value: b"v".to_vec(), lease: Some(0) },
        Op::Revoke { lease: 0 },
        Op::MemberAdd { id: 3, learner: true },
    ];
    let (md, image) = snapshot(&leader());
    for (i, op) in requests.iter().enumerate() {
        for (panics, n) in (0usize..).enumerate() {
            arm_faults(None);
            let mut f = Node::<Faulty<VecBackend>, Growable>::new(snapply_tests::config(1), Faulty::default());
            let setup = [
                Op::Grant { lease: 0, ttl: 30 },
                Op::Put { key: 0, value: b"a".to_vec(), lease: Some(0) },
                Op::MemberAdd { id: 0, learner: false },
            ];
            run(&mut f, &setup, 0, 1);
            let mut v2 = Vec::new();
            f.v2_snapshot_data(&mut v2).expect("v2 data");
            let (records_before, stores_before, _) = state(&f);
            let index = f.progress().applied_index;
            arm_one_panic(n);
            let unwound = catch_unwind(AssertUnwindSafe(|| run(&mut f, std::slice::from_ref(op), index, 1)));
            arm_faults(None);
            match unwound {
                Ok(applied) => {
                    // The panic came too late to matter: the sweep over this request is complete.
                    assert_eq!(applied, 1, "request {i}");
                    assert!(panics > 0, "request {i} never met a panic");
                    assert!(!f.interrupted());
                    break;
                }
                Err(_) => assert!(f.interrupted(), "request {i}, panic at operation {n}"),
            }
            assert_eq!(
                f.apply(index + 1, 1, &Request::RoleAdd { name: b"r1" }),
                Err(StoreError::ApplyInterrupted),
                "request {i}, panic at operation {n}"
            );
            assert_eq!(f.snapshot_metadata(), Err(StoreError::ApplyInterrupted));
            let err = apply(&mut f, &md, &image, &mut Recorder::default()).expect_err("a restore is refused");
            assert_eq!(*err.kind(), ApplyErrorKind::Store(StoreError::ApplyInterrupted));
            assert_eq!(records(f.backend()), records_before, "the backend committed nothing");
            Node::open_in_place(&mut f, &v2).expect("reopen");
            assert!(!f.interrupted());
            assert_eq!(f.stores(), &stores_before, "request {i}, panic at operation {n}, reopened");
            assert_eq!(run(&mut f, std::slice::from_ref(op), index, 1), 1, "request {i} after reopening");
        }
    }
}

/// A leader that crashed between scheduling and finishing a compaction ships a backend with
/// `scheduledCompactRev > finishedCompactRev`; the restore finishes the compaction on the new
/// backend, committing with the snapshot's consistent index, not the follower's old one.
#[test]
fn an_unfinished_compaction_in_the_snapshot_is_resumed_with_the_bound_index() {
    use snapply_core::store::{ConsistentIndex, META_SCHEDULED_COMPACT};
    let mut l = node(1);
    let ops: Vec<Op> = (0..6).map(|i| Op::Put { key: i % 2, value: vec![i; 4], lease: None }).collect();
    run(&mut l, &ops, 100, 3);
    let (metadata, _) = snapshot(&l);
    let scheduled = l.stores().kv.current_revision() - 1;
    let b = tampered(&l, Bucket::Meta, META_SCHEDULED_COMPACT, &scheduled.to_be_bytes());
    let image = image_of(&metadata, &b, &[]);

    let mut f = follower(VecBackend::new());
    apply(&mut f, &metadata, &image, &mut Recorder::default()).expect("apply");
    assert_eq!(f.stores().kv.compact_revision(), scheduled);
    // Revisions 2..=7 alternate between two keys; compacting at 6 keeps each key's latest
    // revision at or below 6, and what came after.
    let revs: Vec<i64> = f.stores().kv.entries().map(|(_, rev, _)| rev.main).collect();
    assert_eq!(revs, [6, 5, 7]);
    let read = f.backend().read().expect("read");
    assert_eq!(ConsistentIndex::load(&read).expect("load").index(), metadata.index);
    let key_records = records(f.backend()).iter().filter(|r| r.0 == Bucket::Key).count();
    assert_eq!(key_records, 3);
}

/// An image read from a stream in small pieces applies exactly like the same bytes in memory;
/// a stream that breaks or ends early is refused before anything changes.
#[test]
fn a_streamed_image_applies_like_bytes_and_a_broken_stream_changes_nothing() {
    use snapply_core::image::{Chunked, Source};
    use snapply_core::ports::{ImageStream, PortError};

    let l = leader();
    let (metadata, image) = snapshot(&l);
    let mut f = follower(VecBackend::new());
    let mut buf = vec![0u8; MIN_BUFFER];
    let mut storage = MemSnapshotStore::<VecBackend, Vec<u8>>::new(&mut buf);
    let mut transport = PeerTable::<Growable>::default();
    let mut obs = Recorder::default();
    let mut stream = ImageStream::new(Chunked::new(image.as_slice(), 7));
    let ports = Ports { storage: &mut storage, transport: &mut transport, observer: &mut obs };
    apply_snapshot(&mut f, ports, Snapshot::streamed(&metadata, &mut stream)).expect("streamed apply");
    assert_eq!(records(f.backend()), records(l.backend()));
    assert_eq!(f.stores(), l.stores());

    /// A connection that drops after `left` bytes.
    struct Dropping<'a>(&'a [u8], usize);
    impl Source for Dropping<'_> {
        type Error = PortError;
        fn read(&mut self, buf: &mut [u8]) -> Result<usize, PortError> {
            if self.1 == 0 {
                return Err(PortError::new(PortErrorKind::Io, "connection reset"));
            }
            let n = buf.len().min(self.1).min(self.0.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            self.1 -= n;
            Ok(n)
        }
    }
    for cut in [0, 11, image.len() / 2, image.len() - 1] {
        let mut f = follower(VecBackend::new());
        let before = state(&f);
        let mut buf = vec![0u8; MIN_BUFFER];
        let mut storage = MemSnapshotStore::<VecBackend, Vec<u8>>::new(&mut buf);
        let mut obs = Recorder::default();
        let mut dropping = Dropping(&image, cut);
        let ports = Ports { storage: &mut storage, transport: &mut transport, observer: &mut obs };
        let err = apply_snapshot(&mut f, ports, Snapshot::streamed(&metadata, &mut dropping))
            .expect_err("a broken stream must be refused");
        assert_eq!(err.phase(), Phase::Persist);
        assert_eq!(*err.kind(), ApplyErrorKind::Port(PortError::new(PortErrorKind::Io, "connection reset")));
        assert_eq!(state(&f), before);
        assert_eq!(obs.gauge, 0);
        assert_eq!(storage.pinned().count(), 0, "nothing of a broken stream is pinned");
    }
}

/// A member with more peer URLs than the transport port takes (8) is refused when the new
/// backend is opened, before the swap: the follower keeps its old state and its old peers,
/// rather than being handed a member cut short after the swap.
#[test]
fn a_member_with_more_peer_urls_than_the_transport_takes_is_refused_before_the_swap() {
    let urls: Vec<Vec<u8>> = (0..9).map(|i| format!("http://10.0.0.{i}:2380").into_bytes()).collect();
    let url_refs: Vec<&[u8]> = urls.iter().map(Vec::as_slice).collect();
    let mut leader = node(1);
    leader
        .apply(
            100,
            2,
            &Request::MemberAdd(snapply_core::store::NewMember {
                id: 7,
                name: b"many-urls",
                peer_urls: &url_refs[..8],
                client_urls: &[],
                is_learner: false,
            }),
        )
        .expect("eight peer URLs are taken");
    // A node refuses a ninth (`Node::apply`); an etcd leader takes it, so its record is forged.
    let (metadata, image) = snapply_tests::forge::snapshot_with_peer_urls(&leader, 7, &url_refs);
    let mut follower = follower(VecBackend::new());
    let before = state(&follower);
    let mut observer = Recorder::default();
    let (result, peers) = snapply_tests::apply_in_memory::<VecBackend, Growable, Vec<u8>>(
        &mut follower,
        &metadata,
        &image,
        &mut observer,
    );
    let err = result.expect_err("nine peer URLs are more than the transport takes");
    assert_eq!(err.phase(), Phase::OpenBackend, "{err}");
    assert!(err.to_string().contains("peer URLs of one member"), "{err}");
    assert_eq!(state(&follower), before, "the follower keeps its old state");
    assert_eq!(peers, PeerTable::<Growable>::default(), "no peer was touched");
}

/// Every key etcd holds is carried on a host: keys of 65,536, 70,000 and 1,000,000 bytes (etcd
/// 3.4 accepts them under its default request limit) are put, snapshotted and restored. A
/// device's profile holds keys up to its key arena's size: a longer one in a snapshot is
/// refused, typed and naming the limit (not as a corrupt record), before the swap.
#[test]
fn keys_longer_than_65535_bytes_restore_on_hosts_and_are_refused_by_name_on_devices() {
    let mut leader = node(1);
    let keys: Vec<Vec<u8>> = [65_536usize, 70_000, 1_000_000].iter().map(|n| vec![b'k'; *n]).collect();
    for (i, key) in keys.iter().enumerate() {
        let index = 100 + i as u64;
        let value = format!("v{i}").into_bytes();
        leader.apply(index, 1, &Request::Put { key, value: &value, lease: 0 }).expect("a long key is put");
    }
    assert_eq!(snapply_core::store::check_backend::<Growable, _>(leader.backend()), Ok(()));
    let (md, image) = snapshot(&leader);
    let mut buf = vec![0u8; image::buffer_for(image::MAX_KEY_LEN, 1_100_000)];
    let mut storage = MemSnapshotStore::<VecBackend, Vec<u8>>::new(&mut buf);
    let mut f = follower(VecBackend::new());
    let mut transport = PeerTable::<Growable>::default();
    let mut obs = Recorder::default();
    let ports = Ports { storage: &mut storage, transport: &mut transport, observer: &mut obs };
    apply_snapshot(&mut f, ports, Snapshot::from_bytes(&md, &image)).expect("restores on a host").expect("not empty");
    assert_eq!(f.stores().kv, leader.stores().kv);
    assert_eq!(records(f.backend()), records(leader.backend()));

    // A device whose key arena is 2 KiB: a snapshot with a 4 KiB key is refused by name.
    type Device = Fixed<16, 64>;
    let limit = snapply_core::store::max_key_len::<Device>();
    assert_eq!(limit, 2048);
    let mut small = node(1);
    let long = vec![b'x'; 4096];
    small.apply(10, 1, &Request::Put { key: &long, value: b"v", lease: 0 }).expect("a host holds it");
    let (md, image) = snapshot(&small);
    let mut d = Node::<VecBackend, Device>::new(snapply_tests::config(2), VecBackend::new());
    d.apply(1, 1, &Request::Put { key: b"mine", value: b"v", lease: 0 }).expect("put");
    let before = state(&d);
    let err =
        snapply_tests::apply_in_memory::<VecBackend, Device, Vec<u8>>(&mut d, &md, &image, &mut Recorder::default())
            .0
            .expect_err("a key longer than the device's key arena");
    assert_eq!(err.phase(), Phase::RestoreMvcc);
    assert_eq!(*err.kind(), ApplyErrorKind::Store(StoreError::KeyTooLong { len: 4096, limit: 2048 }));
    assert!(err.to_string().contains("2048 bytes"), "{err}");
    assert_eq!(state(&d), before);
    // A put of such a key is refused on the device too, and changes nothing.
    let r = d.apply(2, 1, &Request::Put { key: &long, value: b"v", lease: 0 });
    assert!(matches!(r, Err(StoreError::KeyTooLong { .. } | StoreError::Capacity(_))), "{r:?}");
    assert_eq!((records(d.backend()), d.stores().clone()), (before.0, before.1));
}
