//! Fuzzes the whole restore with hostile store records: the input describes the records of a
//! snapshot backend (any bucket, any key, any value), which are encoded into a valid image (so
//! every checksum passes and the records reach the stores' decoders) and applied to a follower
//! with state of its own, on growable and on fixed-capacity nodes.
//!
//! Properties checked on every input, beyond "no panic":
//! - a refused snapshot leaves the follower exactly as it was (backend records, stores,
//!   progress) and is refused before the backend swap;
//! - an applied snapshot leaves the follower at the snapshot's index with the snapshot's records;
//! - the in-progress gauge is back to zero.

#![no_main]

use libfuzzer_sys::fuzz_target;
use snapply_core::backend::{Backend, Bucket, WriteTxn, dump};
use snapply_core::collections::{Fixed, Growable, Profile};
use snapply_core::image::{BASE_BUFFER, encode};
use snapply_core::mem::{MemBackend, VecBackend};
use snapply_core::memports::{MemSnapshotStore, PeerTable};
use snapply_core::ports::Ports;
use snapply_core::{Observer, Phase};
use snapply_core::store::{META_CONSISTENT_INDEX, NewMember, V2Deprecation};
use snapply_core::{Config, Node, Request, Snapshot, SnapshotMetadata, apply_snapshot};

const INDEX: u64 = 1_000;

#[derive(Default)]
struct Gauge(i64);

impl Observer for Gauge {
    fn in_progress(&mut self, applying: bool) {
        self.0 = i64::from(applying);
    }
}

/// Reads records from the input: `[bucket][key len][key][value len][value]`, repeated.
fn records(mut data: &[u8]) -> Vec<(Bucket, Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    let take = |n: usize, data: &mut &[u8]| {
        let n = n.min(data.len());
        let (head, tail) = data.split_at(n);
        *data = tail;
        head.to_vec()
    };
    while data.len() >= 3 {
        let bucket = Bucket::ALL[usize::from(data[0]) % Bucket::ALL.len()];
        let key_len = usize::from(data[1]);
        data = &data[2..];
        let key = take(key_len, &mut data);
        let value_len = data.first().map_or(0, |n| usize::from(*n));
        data = data.get(1..).unwrap_or(&[]);
        let value = take(value_len, &mut data);
        out.push((bucket, key, value));
    }
    out
}

fn follower<B: Backend + Default, P: Profile>(v2: V2Deprecation) -> Node<B, P> {
    let mut node = Node::new(Config { id: 2, min_lease_ttl: 5, v2_deprecation: v2 }, B::default());
    let url: &[u8] = b"http://127.0.0.1:2380";
    let requests = [
        Request::LeaseGrant { id: 9, ttl: 60 },
        Request::Put { key: b"old", value: b"state", lease: 9 },
        Request::MemberAdd(NewMember { id: 1, name: b"a", peer_urls: &[url], client_urls: &[], is_learner: false }),
    ];
    for (i, r) in requests.iter().enumerate() {
        node.apply(i as u64 + 1, 1, r).expect("the follower's own state fits");
    }
    node
}

fn apply<B: Backend + Default + Clone, P: Profile>(metadata: &SnapshotMetadata, image: &[u8], v2: V2Deprecation) {
    let mut node = follower::<B, P>(v2);
    let before = (dump(&node.backend().read().unwrap()).unwrap(), node.stores().clone(), node.progress().clone());
    // A device-sized buffer: every record the input can describe (keys and values of at most
    // 255 bytes) fits 1 KiB.
    let mut buf = vec![0u8; BASE_BUFFER];
    let mut storage = MemSnapshotStore::<B, Vec<u8>>::new(&mut buf);
    let mut transport = PeerTable::<P>::default();
    let mut gauge = Gauge::default();
    let ports = Ports { storage: &mut storage, transport: &mut transport, observer: &mut gauge };
    match apply_snapshot(&mut node, ports, Snapshot::from_bytes(metadata, image)) {
        Ok(_) => assert_eq!(node.progress().applied_index, INDEX),
        Err(e) => {
            assert!(e.phase() < Phase::SwapBackend, "a snapshot's content failed after the swap: {e}");
            let after =
                (dump(&node.backend().read().unwrap()).unwrap(), node.stores().clone(), node.progress().clone());
            assert!(after == before, "a refused snapshot changed the follower: {e}");
        }
    }
    assert_eq!(gauge.0, 0);
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else { return };
    let (rest, v2) = rest.split_at(rest.len().min(usize::from(flags >> 2) * 4));
    let v2_level = if flags & 1 == 0 { V2Deprecation::WriteOnly } else { V2Deprecation::NotYet };
    let mut backend = VecBackend::new();
    let mut txn = backend.write().unwrap();
    for (bucket, key, value) in records(rest) {
        txn.put(bucket, &key, &value).unwrap();
    }
    if flags & 2 == 0 {
        // Most images carry the right consistent index, so the records reach the stores.
        txn.put(Bucket::Meta, META_CONSISTENT_INDEX, &INDEX.to_be_bytes()).unwrap();
    }
    txn.commit().unwrap();
    let metadata = SnapshotMetadata { index: INDEX, term: 3, ..SnapshotMetadata::default() };
    let mut image = Vec::new();
    if encode(&metadata, &backend.read().unwrap(), v2, &mut image).is_err() {
        return; // A record the format cannot carry (too long): nothing to apply.
    }
    apply::<VecBackend, Growable>(&metadata, &image, v2_level);
    apply::<MemBackend<64, 48, 160>, Fixed<8, 64>>(&metadata, &image, v2_level);
});
