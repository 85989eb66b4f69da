//! Where the time of a restore goes: persisting (checking and materialising the image, off the
//! apply loop's critical path) versus the apply proper (persisted -> `Applied`, during which the
//! node applies nothing else), for a leader of 10 000 and 100 000 keys.

// Test scaffolding: a failure here is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, clippy::unreachable)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use snapply_core::NoObserver;
use snapply_core::collections::Growable;
use snapply_core::image::MIN_BUFFER;
use snapply_core::mem::VecBackend;
use snapply_core::memports::{MemSnapshotStore, PeerTable};
use snapply_core::pipeline::Validated;
use snapply_core::ports::Ports;
use snapply_core::store::{NewMember, V2Deprecation};
use snapply_core::{Config, Node, Request, Snapshot, SnapshotMetadata};

type HostNode = Node<VecBackend, Growable>;

fn config(id: u64) -> Config {
    Config { id, min_lease_ttl: 5, v2_deprecation: V2Deprecation::WriteOnly }
}

/// A leader with `keys` keys of 128 bytes, a quarter of them on one of 16 leases, three members.
fn leader(keys: u32) -> (SnapshotMetadata, Vec<u8>) {
    let mut node = HostNode::new(config(1), VecBackend::new());
    let mut index = 0;
    let mut apply = |node: &mut HostNode, r: &Request<'_>| {
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
    let value = [b'v'; 128];
    for i in 0..keys {
        let key = format!("/registry/pods/default/pod-{i:07}");
        let lease = if i % 4 == 0 { i64::from(i % 16) + 1 } else { 0 };
        apply(&mut node, &Request::Put { key: key.as_bytes(), value: &value, lease });
    }
    let mut data = Vec::new();
    let (metadata, _) = node.encode_image(&mut Vec::new(), &mut data).expect("a bench leader encodes its image");
    (metadata, data)
}

/// Restores the snapshot on a fresh follower; returns how long persisting took and how long the
/// apply proper (`open_backend` through `finish`) took.
fn restore_once(metadata: &SnapshotMetadata, data: &[u8], buf: &mut [u8]) -> (Duration, Duration) {
    let mut follower = HostNode::new(config(2), VecBackend::new());
    let mut storage = MemSnapshotStore::<VecBackend, Vec<u8>>::new(buf);
    let mut transport = PeerTable::<Growable>::default();
    let ports = Ports { storage: &mut storage, transport: &mut transport, observer: &mut NoObserver };
    let start = Instant::now();
    let v =
        Validated::new(&mut follower, ports, Snapshot::from_bytes(metadata, data)).expect("valid").expect("not empty");
    let persisted = v.persist().expect("persist");
    let persist = start.elapsed();
    let start = Instant::now();
    let mvcc = persisted
        .open_backend()
        .and_then(|s| s.bind_index())
        .and_then(|s| s.restore_lease())
        .and_then(|s| s.restore_mvcc())
        .expect("restore");
    let (swapped, old) = mvcc.swap_backend();
    let applied = swapped
        .restore_alarms()
        .restore_auth()
        .restore_v2()
        .restore_cluster()
        .update_peers()
        .and_then(|s| s.finish())
        .expect("apply");
    black_box(applied.into_progress());
    let apply = start.elapsed();
    drop(old);
    (persist, apply)
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("restore");
    for keys in [10_000u32, 100_000] {
        let (metadata, data) = leader(keys);
        let mut buf = vec![0u8; MIN_BUFFER];
        // Persisting: the image checked (CRCs, SHA-256) and materialised into a backend.
        group.bench_function(BenchmarkId::new("persist", keys), |b| {
            b.iter_custom(|iters| (0..iters).map(|_| restore_once(&metadata, &data, &mut buf).0).sum())
        });
        // The apply proper, the apply loop's critical path.
        group.bench_function(BenchmarkId::new("apply", keys), |b| {
            b.iter_custom(|iters| (0..iters).map(|_| restore_once(&metadata, &data, &mut buf).1).sum())
        });
    }
    group.finish();
}

criterion_group! {
    name = restore;
    config = Criterion::default().sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3));
    targets = bench
}
criterion_main!(restore);
