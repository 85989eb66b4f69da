//! Throughput of the snapshot image codec (`cargo bench -p snapply-core --bench image --features std`).
//!
//! Two images of about 24 MiB each: etcd-like records (17-byte revision keys, values of 64 to
//! 960 bytes) plus 1 MiB of v2 data, and large values (16 KiB). For each: a `memcpy` of the
//! image's bytes (the floor any codec pays), encoding from a backend, and decoding with full
//! verification (CRC-32C per frame, order, counts, SHA-256). The CRC-32C and SHA-256 of the
//! same bytes alone show what bounds decoding. Results and their reading: BENCHMARKS.md.

// Test scaffolding: a failure here is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, clippy::unreachable)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sha2::{Digest, Sha256};
use snapply_core::backend::{Backend, Bucket, WriteTxn};
use snapply_core::image::{Decoder, Item, MAX_KEY_LEN, buffer_for, encode};
use snapply_core::mem::VecBackend;
use snapply_core::{ConfState, SnapshotMetadata};

const TARGET: usize = 24 << 20;

/// A deterministic pseudo-random generator (xorshift), so every run benches the same bytes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn fill(&mut self, out: &mut [u8]) {
        for chunk in out.chunks_mut(8) {
            let bytes = self.next().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
}

struct Workload {
    name: &'static str,
    backend: VecBackend,
    metadata: SnapshotMetadata,
    v2: Vec<u8>,
}

fn workload(name: &'static str, value_len: impl Fn(&mut Rng) -> usize, v2_len: usize) -> Workload {
    let mut rng = Rng(0x5EED_0F5A_A99E);
    let mut backend = VecBackend::new();
    let mut txn = backend.write().expect("write txn");
    let mut total = 0;
    let mut revision = 1u64;
    let mut value = vec![0u8; 64 * 1024];
    while total < TARGET - v2_len {
        // etcd's revision key: main revision, '_', sub revision.
        let mut key = [0u8; 17];
        key[..8].copy_from_slice(&revision.to_be_bytes());
        key[8] = b'_';
        let len = value_len(&mut rng);
        rng.fill(&mut value[..len]);
        txn.put(Bucket::Key, &key, &value[..len]).expect("put");
        total += key.len() + len + 14;
        revision += 1;
    }
    for id in 0..64u64 {
        txn.put(Bucket::Lease, &id.to_be_bytes(), &[0x42; 24]).expect("put");
    }
    txn.put(Bucket::Meta, b"consistent_index", &revision.to_be_bytes()).expect("put");
    txn.commit().expect("commit");
    let mut v2 = vec![0u8; v2_len];
    rng.fill(&mut v2);
    let ids = heapless::Vec::from_slice(&[1, 2, 3]).expect("ids");
    let metadata =
        SnapshotMetadata { index: revision, term: 7, conf_state: ConfState { voters: ids, ..Default::default() } };
    Workload { name, backend, metadata, v2 }
}

fn bench_workload(c: &mut Criterion, w: &Workload) -> Vec<u8> {
    let read = w.backend.read().expect("read txn");
    let mut image = Vec::new();
    encode(&w.metadata, &read, &w.v2, &mut image).expect("encode");

    let mut group = c.benchmark_group(format!("image/{}", w.name));
    group.throughput(Throughput::Bytes(image.len() as u64));

    let mut copy = vec![0u8; image.len()];
    group.bench_function("memcpy", |b| {
        b.iter(|| {
            copy.copy_from_slice(black_box(&image));
            black_box(&copy);
        })
    });

    let mut sink = Vec::with_capacity(image.len());
    group.bench_function("encode", |b| {
        b.iter(|| {
            sink.clear();
            black_box(encode(&w.metadata, &read, &w.v2, &mut sink).expect("encode"));
        })
    });

    // A buffer sized for the workloads' largest values, as a follower would size it.
    let mut buf = vec![0u8; buffer_for(MAX_KEY_LEN, 16 * 1024)];
    group.bench_function("decode+verify", |b| {
        b.iter(|| {
            let mut decoder = Decoder::new(black_box(&image[..]), &mut buf).expect("header");
            while let Some(item) = decoder.next().expect("valid image") {
                match item {
                    Item::Record { key, value, .. } => {
                        black_box((key, value));
                    }
                    Item::V2(chunk) => {
                        black_box(chunk);
                    }
                }
            }
        })
    });
    group.finish();
    image
}

fn benches(c: &mut Criterion) {
    let small = workload("etcd-like", |rng| 64 + (rng.next() % 897) as usize, 1 << 20);
    let image = bench_workload(c, &small);
    let large = workload("16KiB-values", |_| 16 * 1024, 0);
    bench_workload(c, &large);

    // What decoding pays per byte besides parsing: the two checksums over the same image.
    let mut group = c.benchmark_group("image/checksums");
    group.throughput(Throughput::Bytes(image.len() as u64));
    group.bench_function("sha256", |b| b.iter(|| black_box(Sha256::digest(black_box(&image)))));
    let castagnoli = crc::Crc::<u32, crc::Table<16>>::new(&crc::CRC_32_ISCSI);
    group.bench_function("crc32c-slice16", |b| b.iter(|| black_box(castagnoli.checksum(black_box(&image)))));
    group.bench_function("crc32c-hw", |b| b.iter(|| black_box(crc32c::crc32c(black_box(&image)))));
    group.finish();
}

criterion_group! {
    name = image;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = benches
}
criterion_main!(image);
