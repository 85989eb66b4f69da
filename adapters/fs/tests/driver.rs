//! The async driver: the persisted signal awaited as a future, the runtime serving other tasks
//! while a restore runs, readers seeing one generation while restores run back to back, and
//! pre-built stores equal to rebuilt ones.

// Test scaffolding: a failure here is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, clippy::unreachable)]

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{DiskNode, FOLLOWER, assert_same, leader, more_ops, rich_ops};
use snapply_core::backend::{Bucket, ReadTxn};
use snapply_core::collections::Growable;
use snapply_core::memports::PeerTable;
use snapply_core::store::ConsistentIndex;
use snapply_core::{Event, NoObserver, Observer, Phase};
use snapply_core::{Node, Request, SnapshotMetadata};
use snapply_fs::{AsyncNode, DataDir, FsError, FsSnapshotStore, PersistedSnapshot, persist_async, persist_for_apply};
use snapply_tests::{config, records, snapshot};

/// A bound on every wait of these tests: generous, only there so a bug hangs no run.
const PATIENCE: Duration = Duration::from_secs(60);

fn follower(root: &std::path::Path) -> (DiskNode, FsSnapshotStore) {
    let dir = DataDir::open(root).unwrap();
    let boot = dir.boot().unwrap();
    (Node::new(config(FOLLOWER), boot.backend), FsSnapshotStore::new(dir))
}

/// An observer whose phases and events other tasks can watch.
#[derive(Clone, Default)]
struct Shared {
    phases: Arc<Mutex<Vec<Phase>>>,
}

impl Observer for Shared {
    fn phase_done(&mut self, phase: Phase, _micros: Option<u64>) {
        self.phases.lock().unwrap().push(phase);
    }
}

/// The raft side persists the snapshot only once the run is waiting for it: the run validates,
/// then waits (no later phase is done) until the signal arrives, then completes the restore.
#[tokio::test]
async fn the_persisted_signal_arrives_later() {
    let (leader, metadata, image) = leader(&[rich_ops(), more_ops()]);
    let root = tempfile::tempdir().unwrap();
    let (node, store) = follower(root.path());
    let dir = store.dir().clone();
    let observer = Shared::default();
    let phases = Arc::clone(&observer.phases);
    let driver = AsyncNode::new(node, store, PeerTable::<Growable>::default(), observer);

    let (tx, rx) = tokio::sync::oneshot::channel::<PersistedSnapshot>();
    let signal = async move { rx.await.map_err(|_| FsError::Task { what: "waiting for persistence" }) };
    let raft_side = async {
        let deadline = Instant::now() + PATIENCE;
        while !phases.lock().unwrap().contains(&Phase::Validate) {
            assert!(Instant::now() < deadline, "the run never validated");
            tokio::task::yield_now().await;
        }
        // The run is waiting: nothing after validation is done before the signal.
        assert_eq!(*phases.lock().unwrap(), vec![Phase::Validate]);
        let persisted = persist_for_apply(dir, metadata.clone(), image, config(FOLLOWER)).await.unwrap();
        assert!(persisted.is_prebuilt());
        assert_eq!(*phases.lock().unwrap(), vec![Phase::Validate], "still waiting while persisting");
        tx.send(persisted).unwrap();
    };
    let (applied, ()) = tokio::join!(driver.apply_snapshot(metadata.clone(), signal), raft_side);
    let progress = applied.unwrap().unwrap();
    assert_eq!(progress, snapply_core::Progress::at_snapshot(&metadata));
    assert_eq!(*phases.lock().unwrap(), Phase::ALL.to_vec());
    driver.with_node(move |node| assert_same(&leader, node, &metadata)).await.unwrap();
}

/// A raft side that fails to persist: the run fails in its persist phase and the node keeps
/// its old state and serves again.
#[tokio::test]
async fn a_failed_persist_signal_fails_the_run_before_the_swap() {
    let (_, metadata, _) = leader(&[rich_ops()]);
    let root = tempfile::tempdir().unwrap();
    let (node, store) = follower(root.path());
    let before = records(node.backend());
    let driver = AsyncNode::new(node, store, PeerTable::<Growable>::default(), NoObserver);
    let failed = async { Err(FsError::NotFound { index: 1, term: 1 }) };
    let err = driver.apply_snapshot(metadata, failed).await.unwrap_err();
    match err {
        FsError::Apply(e) => assert_eq!(e.phase(), Phase::Persist, "{e}"),
        e => panic!("not a pipeline error: {e}"),
    }
    let (after, unfinished) =
        driver.with_node(|node| (records(node.backend()), node.unfinished().is_some())).await.unwrap();
    assert_eq!(after, before);
    assert!(!unfinished);
}

/// An observer that, once the key index is rebuilt (the O(keys) phase), waits until another
/// task of the runtime has made progress: if the run were on the runtime's thread, that task
/// could not run and the wait would give up.
struct WaitsForOthers {
    counter: Arc<AtomicU64>,
    advanced: Arc<AtomicBool>,
}

impl Observer for WaitsForOthers {
    fn phase_done(&mut self, phase: Phase, _micros: Option<u64>) {
        if phase != Phase::RestoreMvcc {
            return;
        }
        let start = self.counter.load(Ordering::SeqCst);
        let deadline = Instant::now() + PATIENCE;
        while Instant::now() < deadline {
            if self.counter.load(Ordering::SeqCst) >= start + 1000 {
                self.advanced.store(true, Ordering::SeqCst);
                return;
            }
            std::thread::yield_now();
        }
    }
}

/// A large restore (its key index rebuilt in the run) on a single-threaded runtime: another
/// task keeps counting while the run is inside its phases.
#[tokio::test(flavor = "current_thread")]
async fn the_runtime_serves_other_tasks_during_a_large_restore() {
    let keys = 20_000u64;
    let mut leader = snapply_tests::node(1);
    let value = vec![0x5a; 64];
    for i in 0..keys {
        let key = format!("key-{i:08}");
        leader.apply(i + 1, 1, &Request::Put { key: key.as_bytes(), value: &value, lease: 0 }).unwrap();
    }
    let (metadata, image) = snapshot(&leader);
    let root = tempfile::tempdir().unwrap();
    let (node, store) = follower(root.path());
    let dir = store.dir().clone();
    let counter = Arc::new(AtomicU64::new(0));
    let advanced = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let observer = WaitsForOthers { counter: Arc::clone(&counter), advanced: Arc::clone(&advanced) };
    let driver = AsyncNode::new(node, store, PeerTable::<Growable>::default(), observer);

    let other = tokio::spawn({
        let (counter, stop) = (Arc::clone(&counter), Arc::clone(&stop));
        async move {
            while !stop.load(Ordering::SeqCst) {
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::task::yield_now().await;
            }
        }
    });
    // Persisted without pre-built stores, so the run rebuilds the key index itself.
    let persisted = persist_async(dir, metadata.clone(), image).await.unwrap();
    let signal = async move { Ok(PersistedSnapshot::new(persisted)) };
    driver.apply_snapshot(metadata, signal).await.unwrap().unwrap();
    stop.store(true, Ordering::SeqCst);
    other.await.unwrap();
    assert!(advanced.load(Ordering::SeqCst), "another task ran while the restore was in its phases");
    let count = driver.with_node(|node| node.stores().kv.index_len()).await.unwrap();
    assert!(count >= keys as usize, "{count} revisions restored");
}

/// Generation `g`'s leader: `keys` keys, every value naming the generation, at indexes above
/// those of every earlier generation.
fn generation(g: u64, keys: u64) -> (SnapshotMetadata, Vec<u8>) {
    let mut leader = snapply_tests::node(1);
    let value = format!("GEN{g:04}");
    for i in 0..keys {
        let key = format!("key-{i:04}");
        let request = Request::Put { key: key.as_bytes(), value: value.as_bytes(), lease: 0 };
        leader.apply(g * 100_000 + i + 1, 1, &request).unwrap();
    }
    snapshot(&leader)
}

/// The generations the records of the `key` bucket name, and how many records there are.
fn generations_in(txn: &impl ReadTxn) -> (Vec<u64>, usize) {
    let mut gens = Vec::new();
    let mut count = 0;
    txn.scan(Bucket::Key, b"", &mut |_, v| {
        count += 1;
        let at = v.windows(3).position(|w| w == b"GEN");
        let g = at.and_then(|at| v.get(at + 3..at + 7)).and_then(|d| std::str::from_utf8(d).ok()?.parse().ok());
        if let Some(g) = g
            && !gens.contains(&g)
        {
            gens.push(g);
        }
        std::ops::ControlFlow::Continue(())
    })
    .unwrap();
    (gens, count)
}

/// Readers served from the read slot while restores run back to back: every read sees one
/// generation (every key's value, the consistent index and the view's own generation agree),
/// never a mix of two, and every reader sees every generation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_see_one_generation_while_restores_run() {
    const KEYS: u64 = 300;
    const GENERATIONS: u64 = 5;
    const READERS: usize = 3;
    let root = tempfile::tempdir().unwrap();
    let (node, store) = follower(root.path());
    let dir = store.dir().clone();
    let driver = AsyncNode::new(node, store, PeerTable::<Growable>::default(), NoObserver);
    let slot = driver.readers();
    let stop = Arc::new(AtomicBool::new(false));
    let seen: Arc<Vec<AtomicU64>> = Arc::new((0..READERS).map(|_| AtomicU64::new(0)).collect());

    let mut readers = Vec::new();
    for r in 0..READERS {
        let (slot, stop, seen) = (slot.clone(), Arc::clone(&stop), Arc::clone(&seen));
        readers.push(tokio::spawn(async move {
            let mut reads = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let view = slot.view();
                let txn = view.read().unwrap();
                let (gens, count) = generations_in(&txn);
                let cindex = ConsistentIndex::load(&txn).unwrap().index();
                let g = view.generation();
                if g == 0 {
                    assert_eq!((gens.len(), count, cindex), (0, 0, 0), "the empty start");
                } else {
                    assert_eq!(gens, vec![g], "one generation per read, the view's");
                    assert_eq!(count as u64, KEYS, "every key of generation {g}");
                    assert_eq!(cindex, g * 100_000 + KEYS, "the consistent index of generation {g}");
                }
                seen[r].store(g, Ordering::SeqCst);
                reads += 1;
                tokio::task::yield_now().await;
            }
            reads
        }));
    }
    for g in 1..=GENERATIONS {
        let (metadata, image) = generation(g, KEYS);
        let persisted = persist_for_apply(dir.clone(), metadata.clone(), image, config(FOLLOWER));
        driver.apply_snapshot(metadata, persisted).await.unwrap().unwrap();
        let deadline = Instant::now() + PATIENCE;
        while seen.iter().any(|s| s.load(Ordering::SeqCst) < g) {
            assert!(Instant::now() < deadline, "a reader never saw generation {g}");
            tokio::task::yield_now().await;
        }
    }
    stop.store(true, Ordering::SeqCst);
    for reader in readers {
        assert!(reader.await.unwrap() > 0);
    }
}

/// The lessor and key index built while persisting are the ones the apply would rebuild: two
/// followers, one installing them pre-built, one rebuilding, end equal to the leader and to
/// each other, leases with their attached keys included.
#[tokio::test]
async fn prebuilt_stores_equal_rebuilt_ones() {
    let (leader, metadata, image) = leader(&[rich_ops(), more_ops()]);
    let mut states = Vec::new();
    for prebuilt in [true, false] {
        let root = tempfile::tempdir().unwrap();
        let (node, store) = follower(root.path());
        let dir = store.dir().clone();
        let events = Arc::new(Mutex::new(Vec::new()));
        let driver = AsyncNode::new(node, store, PeerTable::<Growable>::default(), Events(Arc::clone(&events)));
        let persisted = if prebuilt {
            persist_for_apply(dir, metadata.clone(), image.clone(), config(FOLLOWER)).await.unwrap()
        } else {
            PersistedSnapshot::new(persist_async(dir, metadata.clone(), image.clone()).await.unwrap())
        };
        assert_eq!(persisted.is_prebuilt(), prebuilt);
        driver.apply_snapshot(metadata.clone(), async { Ok(persisted) }).await.unwrap().unwrap();
        let (lead, meta) = (snapply_tests::state(&leader), metadata.clone());
        let state = driver
            .with_node(move |node| {
                let state = snapply_tests::state(node);
                assert_eq!((&state.0, &state.1), (&lead.0, &lead.1), "records and stores equal the leader's");
                assert_eq!(state.2, snapply_core::Progress::at_snapshot(&meta));
                state
            })
            .await
            .unwrap();
        // etcd's log lines are the same either way.
        let events = events.lock().unwrap().clone();
        assert!(events.contains(&Event::RestoringLeaseStore) && events.contains(&Event::RestoringMvccStore));
        states.push(state);
    }
    assert_eq!(states[0], states[1]);
}

struct Events(Arc<Mutex<Vec<Event>>>);

impl Observer for Events {
    fn event(&mut self, event: &Event) {
        self.0.lock().unwrap().push(*event);
    }
}

/// An image spooled to a file is streamed into the data directory (never read whole), and
/// applies as the same image from memory does.
#[tokio::test]
async fn an_image_streamed_from_a_file_applies() {
    let (leader, metadata, image) = leader(&[rich_ops(), more_ops()]);
    let root = tempfile::tempdir().unwrap();
    let spool = root.path().join("incoming.image");
    std::fs::write(&spool, &image).unwrap();
    let (node, store) = follower(&root.path().join("data"));
    let dir = store.dir().clone();
    let driver = AsyncNode::new(node, store, PeerTable::<Growable>::default(), NoObserver);
    let persisted = snapply_fs::persist_file_for_apply(dir, metadata.clone(), spool, config(FOLLOWER));
    driver.apply_snapshot(metadata.clone(), persisted).await.unwrap().unwrap();
    driver.with_node(move |node| assert_same(&leader, node, &metadata)).await.unwrap();
}

/// v2 content beyond membership is refused while persisting, by the core's own check, under
/// the node's write-only level: nothing is left in the directory. Under "not yet" it persists.
#[tokio::test]
async fn v2_content_the_node_refuses_is_refused_while_persisting() {
    let leader = snapply_tests::sample_leader();
    let (metadata, _) = snapshot(&leader);
    let mut v2 = snapply_core::store::V2Store::<Growable>::default();
    v2.set(b"/1/legacy-key", b"v2 value").unwrap();
    let mut data = Vec::new();
    v2.save(&mut data).unwrap();
    let mut image = Vec::new();
    let txn = snapply_core::backend::Backend::read(leader.backend()).unwrap();
    snapply_core::image::encode(&metadata, &txn, &data, &mut image).unwrap();

    let root = tempfile::tempdir().unwrap();
    let dir = DataDir::open(root.path()).unwrap();
    let err = persist_for_apply(dir.clone(), metadata.clone(), image.clone(), config(FOLLOWER)).await.unwrap_err();
    assert!(
        matches!(err, FsError::Store { source: snapply_core::store::StoreError::V2ContentDisallowed, .. }),
        "{err}"
    );
    assert!(common::snap_files(root.path()).is_empty());

    let not_yet =
        snapply_core::Config { v2_deprecation: snapply_core::store::V2Deprecation::NotYet, ..config(FOLLOWER) };
    persist_for_apply(dir, metadata, image, not_yet).await.unwrap();
}

/// The pipeline run by hand from a persisted snapshot, with `prebuilt` handed to the lessor
/// phase; returns whether the key index came back pre-built.
fn apply_with_prebuilt(
    node: &mut DiskNode,
    store: &mut FsSnapshotStore,
    metadata: &SnapshotMetadata,
    sha256: [u8; 32],
    prebuilt: snapply_core::pipeline::Prebuilt<Growable>,
) -> bool {
    use snapply_core::pipeline::Validated;
    let mut transport = PeerTable::<Growable>::default();
    let ports = snapply_core::ports::Ports { storage: store, transport: &mut transport, observer: &mut NoObserver };
    let snapshot = snapply_core::Snapshot::persisted(metadata, sha256);
    let validated = Validated::new(node, ports, snapshot).unwrap().unwrap();
    let bound = validated.persist().unwrap().open_backend().unwrap().bind_index().unwrap();
    let (leases, index) = bound.restore_lease_prebuilt(prebuilt).unwrap();
    let used = index.is_some();
    let mvcc = match index {
        Some(index) => leases.restore_mvcc_prebuilt(index).unwrap(),
        None => leases.restore_mvcc().unwrap(),
    };
    let (swapped, _old) = mvcc.swap_backend();
    let applied = swapped
        .restore_alarms()
        .restore_auth()
        .restore_v2()
        .restore_cluster()
        .update_peers()
        .unwrap()
        .finish()
        .unwrap();
    assert_eq!(applied.into_progress(), snapply_core::Progress::at_snapshot(metadata));
    used
}

/// Stores built from another image at the same index (another digest), or with another minimum
/// lease TTL, are not installed: the phases rebuild from the backend instead, and the node still
/// ends equal to the leader. Stores built from this snapshot's image are installed. A prebuilt is
/// built from what the core's decoder wrote ([`snapply_core::image::Decoded`]), so its digest is
/// the one the decoder verified: no caller can pair a backend with another image's digest.
#[test]
fn prebuilt_stores_of_another_snapshot_or_ttl_are_not_used() {
    use snapply_core::backend::{Backend as _, WriteTxn as _};
    use snapply_core::image;
    use snapply_core::mem::VecBackend;
    use snapply_core::pipeline::Prebuilt;
    let (leader, metadata, image) = leader(&[rich_ops(), more_ops()]);
    // Another image of the same index and metadata: one more record in the meta bucket, which
    // no store reads, so only the digest tells it apart.
    let another = {
        let mut backend = leader.backend().clone();
        let mut txn = backend.write().unwrap();
        txn.put(Bucket::Meta, b"another", b"image").unwrap();
        txn.commit().unwrap();
        let mut v2 = Vec::new();
        leader.v2_snapshot_data(&mut v2).unwrap();
        let mut out = Vec::new();
        image::encode(&metadata, &backend.read().unwrap(), &v2, &mut out).unwrap();
        out
    };
    let ttl = config(FOLLOWER).min_lease_ttl;
    let cases = [
        ("this snapshot", &image, ttl, true),
        ("another image at the same index", &another, ttl, false),
        ("another TTL", &image, ttl + 1, false),
    ];
    for (what, built_from, min_ttl, expect_used) in cases {
        let root = tempfile::tempdir().unwrap();
        let (mut node, mut store) = follower(root.path());
        let info = store.persist_image(&metadata, snapply_core::ImageData::Bytes(&image)).unwrap();
        let mut buf = vec![0u8; image::buffer_for(image::MAX_KEY_LEN, 1 << 16)];
        let decoded = image::decode_into(&built_from[..], &mut buf, VecBackend::new(), &mut |_| Ok(())).unwrap();
        let prebuilt =
            Prebuilt::<Growable>::build(&decoded, min_ttl).unwrap().expect("no scheduled compaction pending");
        assert_eq!(prebuilt.index(), metadata.index);
        let used = apply_with_prebuilt(&mut node, &mut store, &metadata, info.image_sha256, prebuilt);
        assert_eq!(used, expect_used, "{what}");
        assert_same(&leader, &node, &metadata);
    }
}
