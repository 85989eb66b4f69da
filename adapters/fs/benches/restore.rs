//! The apply loop's critical path on a data directory, through the async driver: the apply
//! (persisted -> `Applied`) and first byte -> `Applied` (persist, then apply), for a leader of
//! 100 000 keys of 256 bytes, a quarter of them on one of 16 leases. `rebuilt` rebuilds the
//! lessor and key index in the apply; `prebuilt` installs the ones built while persisting.
//!
//! `cargo bench -p snapply-fs --bench restore`

// Test scaffolding: a failure here is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, clippy::unreachable)]

use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, SamplingMode, criterion_group, criterion_main};
use snapply_core::NoObserver;
use snapply_core::backend::Backend;
use snapply_core::collections::Growable;
use snapply_core::image;
use snapply_core::mem::VecBackend;
use snapply_core::memports::PeerTable;
use snapply_core::store::{NewMember, V2Deprecation};
use snapply_core::{Config, Node, Request, SnapshotMetadata};
use snapply_fs::{AsyncNode, DataDir, FsSnapshotStore, PersistedSnapshot, persist_async, persist_for_apply};

const KEYS: u32 = 100_000;
const VALUE: usize = 256;

fn config(id: u64) -> Config {
    Config { id, min_lease_ttl: 5, v2_deprecation: V2Deprecation::WriteOnly }
}

fn leader(keys: u32) -> (SnapshotMetadata, Vec<u8>) {
    let mut node = Node::<VecBackend, Growable>::new(config(1), VecBackend::new());
    let mut index = 0;
    let mut apply = |node: &mut Node<VecBackend, Growable>, r: &Request<'_>| {
        index += 1;
        node.apply(index, 2, r).expect("bench workload");
    };
    for id in 1..=3u64 {
        let url = format!("http://127.0.0.1:{}", 2380 + id);
        let m = NewMember { id, name: b"m", peer_urls: &[url.as_bytes()], client_urls: &[], is_learner: false };
        apply(&mut node, &Request::MemberAdd(m));
    }
    for id in 1..=16 {
        apply(&mut node, &Request::LeaseGrant { id, ttl: 60 });
    }
    let value = [b'v'; VALUE];
    for i in 0..keys {
        let key = format!("/registry/pods/default/pod-{i:07}");
        let lease = if i % 4 == 0 { i64::from(i % 16) + 1 } else { 0 };
        apply(&mut node, &Request::Put { key: key.as_bytes(), value: &value, lease });
    }
    let metadata = node.snapshot_metadata().expect("a bench leader has no unfinished restore");
    let mut v2 = Vec::new();
    node.v2_snapshot_data(&mut v2).expect("v2 data");
    let mut data = Vec::new();
    image::encode(&metadata, &node.backend().read().expect("read"), &v2, &mut data).expect("encode");
    (metadata, data)
}

/// One restore on a fresh data directory: (first byte -> `Applied`, persisted -> `Applied`).
fn restore_once(
    rt: &tokio::runtime::Runtime,
    metadata: &SnapshotMetadata,
    data: &[u8],
    prebuilt: bool,
) -> (Duration, Duration) {
    let root = tempfile::tempdir().expect("temp dir");
    let dir = DataDir::open(root.path()).expect("data dir");
    let boot = dir.boot().expect("boot");
    let node = Node::new(config(2), boot.backend);
    let driver = AsyncNode::new(node, FsSnapshotStore::new(dir.clone()), PeerTable::<Growable>::default(), NoObserver);
    rt.block_on(async {
        let start = Instant::now();
        let persisted = if prebuilt {
            persist_for_apply(dir, metadata.clone(), data.to_vec(), config(2)).await
        } else {
            persist_async(dir, metadata.clone(), data.to_vec()).await.map(PersistedSnapshot::new)
        }
        .expect("persist");
        let durable = Instant::now();
        driver.apply_snapshot(metadata.clone(), async { Ok(persisted) }).await.expect("apply").expect("not empty");
        (start.elapsed(), durable.elapsed())
    })
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).build().expect("runtime");
    let (metadata, data) = leader(KEYS);
    let mut group = c.benchmark_group("fs_restore");
    group.sampling_mode(SamplingMode::Flat);
    for (name, prebuilt) in [("rebuilt", false), ("prebuilt", true)] {
        group.bench_function(BenchmarkId::new(format!("apply/{name}"), KEYS), |b| {
            b.iter_custom(|iters| (0..iters).map(|_| restore_once(&rt, &metadata, &data, prebuilt).1).sum())
        });
        group.bench_function(BenchmarkId::new(format!("first_byte_to_applied/{name}"), KEYS), |b| {
            b.iter_custom(|iters| (0..iters).map(|_| restore_once(&rt, &metadata, &data, prebuilt).0).sum())
        });
    }
    group.finish();
}

criterion_group! {
    name = restore;
    config = Criterion::default().sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(5));
    targets = bench
}
criterion_main!(restore);
