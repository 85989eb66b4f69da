//! A restore driven by hand and left half-done, as a stranger would leave it: a dropped state, a
//! forgotten state, a panic unwinding out of a port, a fatal error. However the run ends short
//! of `Applied`, the node never serves a mix of old and new stores: it is either exactly as it
//! was (the run ended before the swap) or it refuses entries and new restores until `resume`
//! completes the restore from the durable snapshot.

use std::panic::{AssertUnwindSafe, catch_unwind};

use snapply_core::collections::Growable;
use snapply_core::image::MIN_BUFFER;
use snapply_core::mem::VecBackend;
use snapply_core::memports::{MemSnapshotStore, PeerTable};
use snapply_core::pipeline::Validated;
use snapply_core::ports::{Durable, PortError, PortErrorKind, Ports, Transport};
use snapply_core::store::{MemberId, StoreError};
use snapply_core::{ApplyErrorKind, Node, Request, Snapshot, SnapshotMetadata, resume};
use snapply_core::{Event, Observer, Phase};
use snapply_tests::{Op, Recorder, records, run, sample_follower, sample_leader, snapshot, state};

type Store<'b> = MemSnapshotStore<'b, VecBackend, Vec<u8>>;
type HostNode = Node<VecBackend, Growable>;

/// What to do with the state at the stop point.
#[derive(Clone, Copy, Debug)]
enum End {
    Drop,
    Forget,
}

/// Drives a restore by hand through `stop` transitions (1 = `Persisted` ... 12 = `Applied`)
/// and then drops or forgets the state reached.
fn drive(
    node: &mut HostNode,
    storage: &mut Store<'_>,
    obs: &mut Recorder,
    md: &SnapshotMetadata,
    image: &[u8],
    stop: usize,
    end: End,
) {
    let mut transport = PeerTable::<Growable>::default();
    let ports = Ports { storage, transport: &mut transport, observer: obs };
    let v = Validated::new(node, ports, Snapshot::from_bytes(md, image)).expect("valid").expect("not empty");
    macro_rules! stop_here {
        ($state:expr, $n:expr) => {
            if stop == $n {
                match end {
                    End::Drop => drop($state),
                    End::Forget => std::mem::forget($state),
                }
                return;
            }
        };
    }
    stop_here!(v, 0);
    let s = v.persist().expect("persist");
    stop_here!(s, 1);
    let s = s.open_backend().expect("open");
    stop_here!(s, 2);
    let s = s.bind_index().expect("bind");
    stop_here!(s, 3);
    let s = s.restore_lease().expect("lease");
    stop_here!(s, 4);
    let s = s.restore_mvcc().expect("mvcc");
    stop_here!(s, 5);
    let (s, _old) = s.swap_backend();
    stop_here!(s, 6);
    let s = s.restore_alarms();
    stop_here!(s, 7);
    let s = s.restore_auth();
    stop_here!(s, 8);
    let s = s.restore_v2();
    stop_here!(s, 9);
    let s = s.restore_cluster();
    stop_here!(s, 10);
    let s = s.update_peers().expect("peers");
    stop_here!(s, 11);
    let s = s.finish().expect("finish");
    stop_here!(s, 12);
}

/// The phase a run stopped after `stop` transitions did not reach.
fn next_phase(stop: usize) -> Phase {
    Phase::ALL[stop + 1]
}

fn put_refused(node: &mut HostNode) -> bool {
    matches!(
        node.apply(10_000, 9, &Request::Put { key: b"late", value: b"x", lease: 0 }),
        Err(StoreError::RestoreUnfinished { .. })
    )
}

/// Resumes with `storage` and checks the node then equals the leader, store by store.
fn resume_to_leader(node: &mut HostNode, storage: &mut Store<'_>, leader: &HostNode, md: &SnapshotMetadata) {
    let mut obs = Recorder::default();
    let mut transport = PeerTable::<Growable>::default();
    let ports = Ports { storage, transport: &mut transport, observer: &mut obs };
    let out = resume(node, ports).expect("resume").expect("a swapped restore is completed");
    assert_eq!(out.progress.applied_index, md.index);
    assert!(node.unfinished().is_none());
    assert_eq!(records(node.backend()), records(leader.backend()));
    assert_eq!(node.stores(), leader.stores());
    assert_eq!(node.progress().applied_index, md.index);
    assert_eq!(obs.gauge, 0);
    assert_eq!(obs.events.last().map(Event::message), Some("applied snapshot"));
}

#[test]
fn a_state_dropped_before_the_swap_leaves_the_node_exactly_as_it_was() {
    let leader = sample_leader();
    let (md, image) = snapshot(&leader);
    for stop in 0..=5 {
        let mut f = sample_follower(VecBackend::new());
        let before = state(&f);
        let mut buf = vec![0u8; MIN_BUFFER];
        let mut storage = Store::new(&mut buf);
        let mut obs = Recorder::default();
        drive(&mut f, &mut storage, &mut obs, &md, &image, stop, End::Drop);
        assert_eq!(state(&f), before, "dropped after {stop} transitions");
        assert!(f.unfinished().is_none(), "dropped after {stop} transitions");
        assert_eq!(obs.gauge, 0);
        assert!(obs.events.contains(&Event::Failed { phase: next_phase(stop), fatal: false }), "{:?}", obs.events);
        // The node serves again: an entry applies (not a put: the sample follower's CORRUPT
        // alarm refuses key-value requests, as etcd's corrupt applier does).
        let index = f.progress().applied_index + 1;
        f.apply(index, 1, &Request::RoleAdd { name: b"serving" }).expect("entry after a dropped restore");
    }
}

#[test]
fn a_state_dropped_after_the_swap_leaves_a_refusing_node_that_resume_completes() {
    let leader = sample_leader();
    let (md, image) = snapshot(&leader);
    let (older_md, older_image) = {
        // A leader at a lower index than `md`.
        let mut l = snapply_tests::node(1);
        run(&mut l, &[Op::Put { key: 1, value: b"early".to_vec(), lease: None }], 50, 1);
        snapshot(&l)
    };
    for stop in 6..=11 {
        let mut f = sample_follower(VecBackend::new());
        let old_progress = f.progress().clone();
        let mut buf = vec![0u8; MIN_BUFFER];
        let mut storage = Store::new(&mut buf);
        let mut obs = Recorder::default();
        drive(&mut f, &mut storage, &mut obs, &md, &image, stop, End::Drop);
        // Never a mix: every store is the leader's (installed at the swap), the progress is the
        // old one until the restore completes, and the node says so.
        assert_eq!(f.stores(), leader.stores(), "dropped after {stop} transitions");
        assert_eq!(f.progress(), &old_progress);
        let u = f.unfinished().expect("an unfinished restore is recorded");
        assert!(u.swapped());
        assert_eq!(u.metadata(), &md);
        assert_eq!(obs.gauge, 0);
        assert!(obs.events.contains(&Event::Failed { phase: next_phase(stop), fatal: true }), "{:?}", obs.events);
        // It refuses entries, snapshots of itself and new restores, older ones first of all.
        assert!(put_refused(&mut f));
        assert!(matches!(f.snapshot_metadata(), Err(StoreError::RestoreUnfinished { .. })));
        let mut other_obs = Recorder::default();
        let err = snapply_tests::apply_in_memory::<VecBackend, Growable, Vec<u8>>(
            &mut f,
            &older_md,
            &older_image,
            &mut other_obs,
        )
        .0
        .expect_err("an older snapshot must not roll the node back");
        assert_eq!(*err.kind(), ApplyErrorKind::RestoreUnfinished { index: md.index, swapped: true });
        assert!(other_obs.events.is_empty(), "a refused restore calls no port");
        resume_to_leader(&mut f, &mut storage, &leader, &md);
        // After the restore an older snapshot is outdated.
        let err = snapply_tests::apply_in_memory::<VecBackend, Growable, Vec<u8>>(
            &mut f,
            &older_md,
            &older_image,
            &mut Recorder::default(),
        )
        .0
        .expect_err("outdated");
        assert!(matches!(err.kind(), ApplyErrorKind::Outdated { .. }));
    }
}

#[test]
fn a_forgotten_state_keeps_the_node_refusing_until_resume() {
    let leader = sample_leader();
    let (md, image) = snapshot(&leader);
    for stop in 0..=11 {
        let mut f = sample_follower(VecBackend::new());
        let before = state(&f);
        let mut buf = vec![0u8; MIN_BUFFER];
        let mut storage = Store::new(&mut buf);
        let mut obs = Recorder::default();
        drive(&mut f, &mut storage, &mut obs, &md, &image, stop, End::Forget);
        // No code ran at the forget: the gauge stays up and the node refuses work.
        assert_eq!(obs.gauge, 1, "forgotten after {stop} transitions");
        assert!(f.unfinished().is_some());
        assert!(put_refused(&mut f), "forgotten after {stop} transitions");
        if stop < 6 {
            // Before the swap, `resume` reads the old state back.
            let mut transport = PeerTable::<Growable>::default();
            let ports = Ports { storage: &mut storage, transport: &mut transport, observer: &mut obs };
            assert!(matches!(resume(&mut f, ports), Ok(None)));
            assert_eq!(obs.gauge, 0);
            assert_eq!(state(&f), before, "forgotten after {stop} transitions, resumed");
        } else {
            resume_to_leader(&mut f, &mut storage, &leader, &md);
        }
    }
}

#[test]
fn an_applied_state_dropped_or_forgotten_leaves_a_finished_node() {
    let leader = sample_leader();
    let (md, image) = snapshot(&leader);
    for end in [End::Drop, End::Forget] {
        let mut f = sample_follower(VecBackend::new());
        let mut buf = vec![0u8; MIN_BUFFER];
        let mut storage = Store::new(&mut buf);
        let mut obs = Recorder::default();
        drive(&mut f, &mut storage, &mut obs, &md, &image, 12, end);
        assert!(f.unfinished().is_none());
        assert_eq!(obs.gauge, 0, "{end:?}");
        assert_eq!(f.stores(), leader.stores());
        assert!(!obs.events.iter().any(|e| matches!(e, Event::Failed { .. })));
    }
}

/// An observer that panics at a chosen event, or in its first clock reading.
struct Panicky {
    inner: Recorder,
    at: Option<&'static str>,
    clock: bool,
}

impl Observer for Panicky {
    fn event(&mut self, event: &Event) {
        if self.at == Some(event.message()) {
            self.at = None;
            panic!("observer failed at {}", event.message());
        }
        self.inner.event(event);
    }
    fn in_progress(&mut self, applying: bool) {
        self.inner.in_progress(applying);
    }
    fn now_micros(&mut self) -> Option<u64> {
        if self.clock {
            self.clock = false;
            panic!("clock failed");
        }
        Some(0)
    }
}

#[test]
fn a_panic_out_of_the_observer_never_leaves_a_mixed_serving_node() {
    let leader = sample_leader();
    let (md, image) = snapshot(&leader);
    let cases: [(Option<&'static str>, bool, bool); 4] = [
        (None, true, false),
        (Some("restoring lease store"), false, false),
        (Some("restored auth store"), false, true),
        (Some("added peers from new cluster configuration"), false, true),
    ];
    for (at, clock, after_swap) in cases {
        let mut f = sample_follower(VecBackend::new());
        let before = state(&f);
        let mut buf = vec![0u8; MIN_BUFFER];
        let mut storage = Store::new(&mut buf);
        let mut obs = Panicky { inner: Recorder::default(), at, clock };
        let mut transport = PeerTable::<Growable>::default();
        let unwound = catch_unwind(AssertUnwindSafe(|| {
            let ports = Ports { storage: &mut storage, transport: &mut transport, observer: &mut obs };
            snapply_core::apply_snapshot(&mut f, ports, Snapshot::from_bytes(&md, &image))
        }));
        assert!(unwound.is_err(), "{at:?}");
        assert_eq!(obs.inner.gauge, 0, "the run's guard ends it while unwinding ({at:?})");
        assert!(obs.inner.events.iter().any(|e| matches!(e, Event::Failed { fatal, .. } if *fatal == after_swap)));
        if after_swap {
            assert!(put_refused(&mut f), "{at:?}");
            assert_eq!(f.stores(), leader.stores());
            resume_to_leader(&mut f, &mut storage, &leader, &md);
        } else {
            assert_eq!(state(&f), before, "{at:?}");
            assert!(f.unfinished().is_none());
        }
    }
}

/// A transport that fails, or panics, when adding a peer.
struct Broken {
    panic: bool,
}

impl Transport for Broken {
    fn remove_all_peers(&mut self) {}
    fn add_peer(&mut self, _id: MemberId, _urls: &[&[u8]]) -> Result<(), PortError> {
        if self.panic {
            panic!("transport failed");
        }
        Err(PortError::new(PortErrorKind::Io, "dialing a peer"))
    }
}

#[test]
fn a_fatal_error_or_a_transport_panic_leaves_a_refusing_node_that_resume_completes() {
    let leader = sample_leader();
    let (md, image) = snapshot(&leader);
    for panic in [false, true] {
        let mut f = sample_follower(VecBackend::new());
        let mut buf = vec![0u8; MIN_BUFFER];
        let mut storage = Store::new(&mut buf);
        let mut obs = Recorder::default();
        let mut transport = Broken { panic };
        let result = catch_unwind(AssertUnwindSafe(|| {
            let ports = Ports { storage: &mut storage, transport: &mut transport, observer: &mut obs };
            snapply_core::apply_snapshot(&mut f, ports, Snapshot::from_bytes(&md, &image)).map(|o| o.is_some())
        }));
        match result {
            Ok(Err(e)) => {
                assert!(!panic);
                assert!(e.is_fatal());
                assert_eq!(e.phase(), Phase::UpdatePeers);
            }
            Err(_) => assert!(panic),
            Ok(Ok(_)) => panic!("a broken transport cannot reach Applied"),
        }
        assert_eq!(obs.gauge, 0);
        assert!(obs.events.contains(&Event::Failed { phase: Phase::UpdatePeers, fatal: true }));
        assert!(put_refused(&mut f));
        // The snapshot metadata of the node and its backend's consistent index cannot disagree:
        // the node refuses to describe itself until the restore is complete.
        assert!(f.snapshot_metadata().is_err());
        resume_to_leader(&mut f, &mut storage, &leader, &md);
        assert_eq!(f.snapshot_metadata().expect("complete"), md);
    }
}

#[test]
fn a_store_holding_the_index_with_other_metadata_or_image_does_not_confirm_it() {
    let leader = sample_leader();
    let (md, image) = snapshot(&leader);
    let mut buf = vec![0u8; MIN_BUFFER];
    let mut storage = Store::new(&mut buf);
    // Persist the leader's snapshot, then drop the run before the swap: the store keeps it.
    let mut f = sample_follower(VecBackend::new());
    drive(&mut f, &mut storage, &mut Recorder::default(), &md, &image, 1, End::Drop);
    assert_eq!(storage.pinned().collect::<Vec<_>>(), [md.index]);

    // The same index and term under another conf state.
    let mut other_conf = md.clone();
    other_conf.conf_state.voters.clear();
    other_conf.conf_state.voters.push(42).expect("room");
    let mut l2 = sample_leader();
    l2.set_conf_state(other_conf.conf_state.clone());
    let (_, image2) = snapshot(&l2);
    // The same metadata with another image (one more key at the same index and term).
    let mut l3 = snapply_tests::node(1);
    run(&mut l3, &[Op::Put { key: 1, value: b"other".to_vec(), lease: None }], md.index - 1, md.term);
    let (md3, image3) = snapshot(&l3);
    assert_eq!((md3.index, md3.term), (md.index, md.term));

    for (m, img) in [(&other_conf, &image2), (&md3, &image3)] {
        let before = state(&f);
        let mut obs = Recorder::default();
        let mut transport = PeerTable::<Growable>::default();
        let ports = Ports { storage: &mut storage, transport: &mut transport, observer: &mut obs };
        let err = snapply_core::apply_snapshot(&mut f, ports, Snapshot::from_bytes(m, img))
            .expect_err("another snapshot under the same index and term must not be confirmed");
        assert_eq!(err.phase(), Phase::Persist);
        assert!(matches!(err.kind(), ApplyErrorKind::Port(PortError { kind: PortErrorKind::Corrupt, .. })));
        assert_eq!(state(&f), before);
    }
    // A persisted snapshot named by another digest is not confirmed either.
    let mut obs = Recorder::default();
    let mut transport = PeerTable::<Growable>::default();
    let ports = Ports { storage: &mut storage, transport: &mut transport, observer: &mut obs };
    let err = snapply_core::apply_snapshot(&mut f, ports, Snapshot::persisted(&md, [7; 32])).expect_err("digest");
    assert_eq!(err.phase(), Phase::Persist);
    // The right one is.
    let mut obs = Recorder::default();
    let mut transport = PeerTable::<Growable>::default();
    let ports = Ports { storage: &mut storage, transport: &mut transport, observer: &mut obs };
    let out = snapply_core::apply_snapshot(&mut f, ports, Snapshot::from_bytes(&md, &image)).expect("same snapshot");
    assert!(out.is_some());
    assert_eq!(f.stores(), leader.stores());
}

#[test]
fn recovery_applies_the_followers_own_minimum_lease_ttl() {
    // The leader's minimum TTL is lower than the follower's: the follower raises the lease to
    // its own minimum on recovery, as etcd's lessor does (`minLeaseTTL` of the recovering node).
    let mut leader = Node::<VecBackend, Growable>::new(
        snapply_core::Config { min_lease_ttl: 1, ..snapply_tests::config(1) },
        VecBackend::new(),
    );
    run(&mut leader, &[Op::Grant { lease: 0, ttl: 2 }], 10, 1);
    assert_eq!(leader.stores().lessor.leases()[0].ttl, 2);
    let (md, image) = snapshot(&leader);
    let mut f = Node::<VecBackend, Growable>::new(
        snapply_core::Config { min_lease_ttl: 30, ..snapply_tests::config(2) },
        VecBackend::new(),
    );
    snapply_tests::apply_in_memory::<VecBackend, Growable, Vec<u8>>(&mut f, &md, &image, &mut Recorder::default())
        .0
        .expect("apply");
    assert_eq!(f.stores().lessor.leases()[0].ttl, 30);
}

/// Reopening in place a node left unfinished after the swap neither serves nor completes
/// anything: a read that fails keeps the mark (the node is not left unmarked at its old index
/// with the new stores), and a read that succeeds with the old v2 data keeps it too (the v2
/// store and the progress are the snapshot's only once `resume` completes the restore).
#[test]
fn reopening_in_place_keeps_the_mark_of_a_restore_left_after_the_swap() {
    let leader = sample_leader();
    let (md, image) = snapshot(&leader);
    let mut f = sample_follower(VecBackend::new());
    let mut old_v2 = Vec::new();
    f.v2_snapshot_data(&mut old_v2).expect("v2 data");
    let mut buf = vec![0u8; MIN_BUFFER];
    let mut storage = Store::new(&mut buf);
    drive(&mut f, &mut storage, &mut Recorder::default(), &md, &image, 6, End::Drop);
    assert!(f.unfinished().is_some_and(|u| u.swapped()));

    // v2 data that does not decode: the read fails and the mark stays.
    Node::open_in_place(&mut f, b"\xff\xff\xff not v2 data").expect_err("undecodable v2 data");
    assert!(f.unfinished().is_some_and(|u| u.swapped()), "a failed read must not clear the mark");
    assert!(put_refused(&mut f));
    let next = f.progress().applied_index + 1;
    assert!(matches!(f.apply(next, 1, &Request::RoleAdd { name: b"late" }), Err(StoreError::RestoreUnfinished { .. })));

    // The old v2 data reads back, and the mark still stays: the node does not serve the new
    // backend with the old v2 store.
    Node::open_in_place(&mut f, &old_v2).expect("the state reads back");
    assert!(f.unfinished().is_some_and(|u| u.swapped()), "the old v2 store must not be served");
    assert!(put_refused(&mut f));
    resume_to_leader(&mut f, &mut storage, &leader, &md);
}

/// Reopening in place a node whose restore ended before the swap, with its state unread
/// (forgotten), reads the old state back and clears the mark, as `resume` would.
#[test]
fn reopening_in_place_abandons_a_restore_that_ended_before_the_swap() {
    let leader = sample_leader();
    let (md, image) = snapshot(&leader);
    let mut f = sample_follower(VecBackend::new());
    let before = state(&f);
    let mut old_v2 = Vec::new();
    f.v2_snapshot_data(&mut old_v2).expect("v2 data");
    let mut buf = vec![0u8; MIN_BUFFER];
    let mut storage = Store::new(&mut buf);
    drive(&mut f, &mut storage, &mut Recorder::default(), &md, &image, 5, End::Forget);
    Node::open_in_place(&mut f, b"\xff\xff\xff not v2 data").expect_err("undecodable v2 data");
    assert!(f.unfinished().is_some(), "a failed read must not clear the mark");
    Node::open_in_place(&mut f, &old_v2).expect("the old state reads back");
    assert!(f.unfinished().is_none());
    let (records_before, stores_before, progress_before) = before;
    assert_eq!(records(f.backend()), records_before);
    assert_eq!((&f.stores().kv, &f.stores().lessor), (&stores_before.kv, &stores_before.lessor));
    assert_eq!(f.progress().applied_index, progress_before.applied_index);
}

/// A store that confirms every ticket with one digest, whatever it was asked to persist, and
/// opens what the store it wraps holds under it.
struct ConfirmsWith<'s, 'b> {
    inner: &'s mut Store<'b>,
    digest: [u8; 32],
}

impl snapply_core::ports::SnapshotStore for ConfirmsWith<'_, '_> {
    type Backend = VecBackend;
    fn persist<'r>(
        &mut self,
        _image: snapply_core::ImageData<'_>,
        ticket: snapply_core::ports::PersistTicket<'r>,
    ) -> Result<snapply_core::ports::Durable<'r>, PortError> {
        Ok(ticket.confirm(self.digest))
    }
    fn open_backend(&mut self, snapshot: &snapply_core::ports::Durable<'_>) -> Result<VecBackend, PortError> {
        self.inner.open_backend(snapshot)
    }
    fn v2_data(&mut self, snapshot: &snapply_core::ports::Durable<'_>) -> Result<&[u8], PortError> {
        self.inner.v2_data(snapshot)
    }
    fn release_before(&mut self, applied: snapply_core::ports::ReleaseTicket<'_>) -> Result<(), PortError> {
        self.inner.release_before(applied)
    }
}

/// A store that confirms a snapshot's ticket with the digest of another image pinned at the
/// same index and term (another conf state) does not get that image's backend installed under
/// this metadata: the core compares the whole metadata with the backend it opens, and refuses
/// before the swap.
#[test]
fn a_proof_naming_another_pinned_image_at_the_same_index_and_term_is_refused() {
    let leader = sample_leader();
    let (pinned_md, pinned_image) = snapshot(&leader);
    let mut buf = vec![0u8; MIN_BUFFER];
    let (_, summary) = snapply_core::image::verify(&pinned_image[..], &mut buf).expect("a valid image");
    let mut store_buf = vec![0u8; MIN_BUFFER];
    let mut inner = Store::new(&mut store_buf);
    // The store pins the leader's image (a run dropped after persisting it).
    let mut f = sample_follower(VecBackend::new());
    drive(&mut f, &mut inner, &mut Recorder::default(), &pinned_md, &pinned_image, 1, End::Drop);
    assert_eq!(inner.pinned().collect::<Vec<_>>(), [pinned_md.index]);

    // Another snapshot at the same index and term, under another conf state.
    let mut md = pinned_md.clone();
    md.conf_state.voters = snapply_core::IdList::from_slice(&[42, 43]).expect("room");
    let before = state(&f);
    let mut storage = ConfirmsWith { inner: &mut inner, digest: summary.sha256 };
    let mut transport = PeerTable::<Growable>::default();
    let mut obs = Recorder::default();
    let ports = Ports { storage: &mut storage, transport: &mut transport, observer: &mut obs };
    let err = snapply_core::apply_snapshot(&mut f, ports, Snapshot::from_bytes(&md, &pinned_image))
        .expect_err("another image's backend must not be installed under this metadata");
    assert_eq!(err.phase(), Phase::OpenBackend);
    assert_eq!(*err.kind(), ApplyErrorKind::MetadataMismatch { index: md.index });
    assert_eq!(state(&f), before);
    assert!(f.unfinished().is_none());
    assert_eq!(obs.gauge, 0);
    // The pinned snapshot itself still applies.
    let mut obs = Recorder::default();
    let ports = Ports { storage: &mut inner, transport: &mut transport, observer: &mut obs };
    snapply_core::apply_snapshot(&mut f, ports, Snapshot::from_bytes(&pinned_md, &pinned_image)).expect("apply");
    assert_eq!(f.stores(), leader.stores());
    assert_eq!(f.progress().conf_state, pinned_md.conf_state);
}

/// An observer that panics on the last event of a successful run (`applied snapshot`) does not
/// leave the in-progress gauge up: the run is complete, and nothing would ever lower it again
/// (`resume` has nothing to do).
#[test]
fn an_observer_panicking_on_the_last_event_still_sees_the_gauge_lowered() {
    let leader = sample_leader();
    let (md, image) = snapshot(&leader);
    let mut f = sample_follower(VecBackend::new());
    let mut buf = vec![0u8; MIN_BUFFER];
    let mut storage = Store::new(&mut buf);
    let mut obs = Panicky { inner: Recorder::default(), at: Some("applied snapshot"), clock: false };
    let mut transport = PeerTable::<Growable>::default();
    let unwound = catch_unwind(AssertUnwindSafe(|| {
        let ports = Ports { storage: &mut storage, transport: &mut transport, observer: &mut obs };
        snapply_core::apply_snapshot(&mut f, ports, Snapshot::from_bytes(&md, &image)).map(|o| o.is_some())
    }));
    assert!(unwound.is_err(), "the observer panicked");
    assert_eq!(obs.inner.gauge, 0, "the gauge must not stay at 1");
    assert_eq!(obs.inner.gauge_peak, 1);
    assert!(!obs.inner.events.iter().any(|e| matches!(e, Event::Failed { .. })));
    // The restore itself was complete.
    assert!(f.unfinished().is_none());
    assert_eq!(f.stores(), leader.stores());
    let mut transport = PeerTable::<Growable>::default();
    let ports = Ports { storage: &mut storage, transport: &mut transport, observer: &mut obs.inner };
    assert!(matches!(resume(&mut f, ports), Ok(None)));
}

/// rustc's implied-bounds hole (rust-lang/rust#25860), in safe code: `same` may assume `'a` and
/// `'b` equal (each outlives the other by its argument types), and coercing it to a function
/// pointer whose argument types are inferred never checks that they are well-formed. It
/// rebrands a proof to any lifetime.
fn rebrand<'a, 'b>(proof: Durable<'a>) -> Durable<'b> {
    fn same<'a, 'b>(_: &'a &'b (), _: &'b &'a (), proof: Durable<'a>) -> Durable<'b> {
        proof
    }
    const UNIT: &&() = &&();
    let same: for<'z> fn(_, _, Durable<'z>) -> Durable<'b> = same;
    same(UNIT, UNIT, proof)
}

/// A store that keeps the proof of the first run it persists for (refusing that run), and
/// hands it, rebranded, to the next run.
struct KeepsProof<'s, 'b> {
    inner: &'s mut Store<'b>,
    kept: Option<Durable<'static>>,
}

impl snapply_core::ports::SnapshotStore for KeepsProof<'_, '_> {
    type Backend = VecBackend;
    fn persist<'r>(
        &mut self,
        image: snapply_core::ImageData<'_>,
        ticket: snapply_core::ports::PersistTicket<'r>,
    ) -> Result<Durable<'r>, PortError> {
        match self.kept.take() {
            Some(proof) => Ok(rebrand(proof)),
            None => {
                let proof = self.inner.persist(image, ticket)?;
                self.kept = Some(rebrand(proof));
                Err(PortError::new(PortErrorKind::Io, "keeping the proof for later"))
            }
        }
    }
    fn open_backend(&mut self, snapshot: &Durable<'_>) -> Result<VecBackend, PortError> {
        self.inner.open_backend(snapshot)
    }
    fn v2_data(&mut self, snapshot: &Durable<'_>) -> Result<&[u8], PortError> {
        self.inner.v2_data(snapshot)
    }
    fn release_before(&mut self, applied: snapply_core::ports::ReleaseTicket<'_>) -> Result<(), PortError> {
        self.inner.release_before(applied)
    }
}

/// A proof rebranded from another run (rust-lang/rust#25860) for the very same snapshot (index,
/// term, image) is refused: the brand is a compile-time check only, and the run identity the
/// proof carries is checked at run time.
#[test]
fn a_proof_rebranded_from_another_run_at_the_same_index_is_refused() {
    let leader = sample_leader();
    let (md, image) = snapshot(&leader);
    let mut buf = vec![0u8; MIN_BUFFER];
    let mut inner = Store::new(&mut buf);
    let mut storage = KeepsProof { inner: &mut inner, kept: None };
    let mut nodes = [sample_follower(VecBackend::new()), sample_follower(VecBackend::new())];
    let before = state(&nodes[1]);
    for (i, node) in nodes.iter_mut().enumerate() {
        let mut transport = PeerTable::<Growable>::default();
        let mut obs = Recorder::default();
        let ports = Ports { storage: &mut storage, transport: &mut transport, observer: &mut obs };
        let err = snapply_core::apply_snapshot(node, ports, Snapshot::from_bytes(&md, &image))
            .expect_err("no run may proceed on another run's proof");
        assert_eq!(err.phase(), Phase::Persist, "run {i}");
        if i == 1 {
            assert!(matches!(err.kind(), ApplyErrorKind::PersistedOther { .. }), "{err}");
        }
        assert!(node.unfinished().is_none());
        assert_eq!(obs.gauge, 0);
    }
    assert_eq!(state(&nodes[1]), before);
    assert!(storage.kept.is_none(), "the kept proof was handed to the second run");
    // The snapshot applies through the store that holds it.
    let [_, f] = &mut nodes;
    let mut transport = PeerTable::<Growable>::default();
    let mut obs = Recorder::default();
    let ports = Ports { storage: &mut inner, transport: &mut transport, observer: &mut obs };
    snapply_core::apply_snapshot(f, ports, Snapshot::from_bytes(&md, &image)).expect("apply");
    assert_eq!(f.stores(), leader.stores());
}

/// The key index a lessor phase hands back is bound to its run: kept and handed to another
/// run's key-index phase (the same snapshot, a node with another minimum lease TTL), it is not
/// installed; that run rebuilds the key index and its leases carry its own node's minimum.
#[test]
fn a_prebuilt_key_index_of_another_run_is_not_installed() {
    let mut leader = Node::<VecBackend, Growable>::new(
        snapply_core::Config { min_lease_ttl: 1, ..snapply_tests::config(1) },
        VecBackend::new(),
    );
    run(
        &mut leader,
        &[Op::Grant { lease: 0, ttl: 2 }, Op::Put { key: 1, value: b"v".to_vec(), lease: Some(0) }],
        10,
        1,
    );
    let (md, image) = snapshot(&leader);
    let mut buf = vec![0u8; MIN_BUFFER];
    let decoded = snapply_core::image::decode_into(&image[..], &mut buf, VecBackend::new(), &mut |_| Ok(()))
        .expect("a valid image");
    let config = |ttl| snapply_core::Config { min_lease_ttl: ttl, ..snapply_tests::config(2) };

    // Run A, on a node whose minimum is 1: its lessor phase hands back the key index, kept.
    let mut a = Node::<VecBackend, Growable>::new(config(1), VecBackend::new());
    let mut store_buf = vec![0u8; MIN_BUFFER];
    let mut storage = Store::new(&mut store_buf);
    let kept = {
        let mut transport = PeerTable::<Growable>::default();
        let mut obs = Recorder::default();
        let ports = Ports { storage: &mut storage, transport: &mut transport, observer: &mut obs };
        let v = Validated::new(&mut a, ports, Snapshot::from_bytes(&md, &image)).expect("valid").expect("not empty");
        let bound = v.persist().expect("persist").open_backend().expect("open").bind_index().expect("bind");
        let prebuilt = snapply_core::pipeline::Prebuilt::<Growable>::build(&decoded, 1)
            .expect("build")
            .expect("no scheduled compaction");
        let (_leases, index) = bound.restore_lease_prebuilt(prebuilt).expect("lease");
        index.expect("the pre-built stores fit run A")
    };

    // Run B, on a node whose minimum is 30, same snapshot, same store: A's key index is refused.
    let mut b = Node::<VecBackend, Growable>::new(config(30), VecBackend::new());
    let mut transport = PeerTable::<Growable>::default();
    let mut obs = Recorder::default();
    let ports = Ports { storage: &mut storage, transport: &mut transport, observer: &mut obs };
    let v = Validated::new(&mut b, ports, Snapshot::from_bytes(&md, &image)).expect("valid").expect("not empty");
    let leases = v.persist().expect("persist").open_backend().expect("open").bind_index().expect("bind");
    let mvcc = leases.restore_lease().expect("lease").restore_mvcc_prebuilt(kept).expect("mvcc");
    let (swapped, _old) = mvcc.swap_backend();
    let applied = swapped
        .restore_alarms()
        .restore_auth()
        .restore_v2()
        .restore_cluster()
        .update_peers()
        .expect("peers")
        .finish()
        .expect("finish");
    drop(applied);
    let lease = b.stores().lessor.leases().first().map(|l| l.ttl);
    assert_eq!(lease, Some(30), "the lease carries run B's node's minimum TTL");
}

/// A store that hands every release ticket to another store (a throwaway run's store, holding
/// a reference to a victim's).
struct ReleasesInto<'s, 'v, 'b> {
    own: &'s mut Store<'b>,
    victim: &'v mut Store<'b>,
}

impl snapply_core::ports::SnapshotStore for ReleasesInto<'_, '_, '_> {
    type Backend = VecBackend;
    fn persist<'r>(
        &mut self,
        image: snapply_core::ImageData<'_>,
        ticket: snapply_core::ports::PersistTicket<'r>,
    ) -> Result<Durable<'r>, PortError> {
        self.own.persist(image, ticket)
    }
    fn open_backend(&mut self, snapshot: &Durable<'_>) -> Result<VecBackend, PortError> {
        self.own.open_backend(snapshot)
    }
    fn v2_data(&mut self, snapshot: &Durable<'_>) -> Result<&[u8], PortError> {
        self.own.v2_data(snapshot)
    }
    fn release_before(&mut self, applied: snapply_core::ports::ReleaseTicket<'_>) -> Result<(), PortError> {
        self.victim.release_before(applied)
    }
}

/// A release ticket unpins only in the store whose run it ends: handed by a throwaway run's
/// store to a victim's, whose node waits to complete a restore, it is refused and the victim's
/// pending snapshot stays, so `resume` completes the restore. And a node whose pending
/// snapshot is gone after all accepts that same snapshot again, which completes it.
#[test]
fn a_release_ticket_of_another_stores_run_does_not_unpin_a_pending_snapshot() {
    let leader = sample_leader();
    let (md, image) = snapshot(&leader);
    let (newer_md, newer_image) = {
        let mut l = sample_leader();
        run(&mut l, &[Op::Put { key: 7, value: b"later".to_vec(), lease: None }], md.index, md.term);
        snapshot(&l)
    };
    assert!(newer_md.index > md.index);
    let mut victim_buf = vec![0u8; MIN_BUFFER];
    let mut victim_store = Store::new(&mut victim_buf);
    let mut victim = sample_follower(VecBackend::new());
    drive(&mut victim, &mut victim_store, &mut Recorder::default(), &md, &image, 6, End::Drop);
    assert!(victim.unfinished().is_some_and(|u| u.swapped()));

    // A throwaway run of a newer snapshot, whose store releases into the victim's.
    let mut own_buf = vec![0u8; MIN_BUFFER];
    let mut own = Store::new(&mut own_buf);
    let mut throwaway = sample_follower(VecBackend::new());
    let mut storage = ReleasesInto { own: &mut own, victim: &mut victim_store };
    let mut transport = PeerTable::<Growable>::default();
    let mut obs = Recorder::default();
    let ports = Ports { storage: &mut storage, transport: &mut transport, observer: &mut obs };
    let err = snapply_core::apply_snapshot(&mut throwaway, ports, Snapshot::from_bytes(&newer_md, &newer_image))
        .expect_err("the victim's store refuses another store's release ticket");
    assert_eq!(err.phase(), Phase::Finish);
    assert_eq!(victim_store.pinned().collect::<Vec<_>>(), [md.index], "the pending snapshot stays pinned");
    resume_to_leader(&mut victim, &mut victim_store, &leader, &md);

    // Had the pending snapshot been lost, the same snapshot sent again completes the restore;
    // another one is still refused.
    let mut f = sample_follower(VecBackend::new());
    let mut buf = vec![0u8; MIN_BUFFER];
    let mut first = Store::new(&mut buf);
    drive(&mut f, &mut first, &mut Recorder::default(), &md, &image, 6, End::Drop);
    let err = snapply_tests::apply_in_memory::<VecBackend, Growable, Vec<u8>>(
        &mut f,
        &newer_md,
        &newer_image,
        &mut Recorder::default(),
    )
    .0
    .expect_err("another snapshot is refused while unfinished");
    assert!(matches!(err.kind(), ApplyErrorKind::RestoreUnfinished { .. }));
    // A fresh store, which holds nothing: the image is persisted again.
    let mut obs = Recorder::default();
    let (result, _) = snapply_tests::apply_in_memory::<VecBackend, Growable, Vec<u8>>(&mut f, &md, &image, &mut obs);
    result.expect("the same snapshot completes the restore").expect("not empty");
    assert!(f.unfinished().is_none());
    assert_eq!(f.stores(), leader.stores());
    assert_eq!(records(f.backend()), records(leader.backend()));
    assert_eq!(f.progress().applied_index, md.index);
    assert_eq!(obs.gauge, 0);
}
