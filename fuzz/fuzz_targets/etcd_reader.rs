//! Fuzzes the etcd snapshot reader (`snapply-etcd`): the bbolt walk and every bucket decoder.
//!
//! The first input byte picks a mode; the rest is the file:
//! - raw: the bytes as they are (meta checks, trailer detection, length checks);
//! - fixed metas: the meta checksums of pages 0 and 1 are recomputed after the input's damage,
//!   so that mutations reach the B+tree walk and the decoders instead of stopping at a checksum;
//! - fixed metas and trailer: as above, and a correct SHA-256 trailer is appended, so the
//!   trailer path passes too.
//!
//! Seed it with real snapshots (`etcdctl snapshot save`, or a member's `member/snap/db`) in
//! `fuzz/corpus/etcd_reader/`, each prefixed with a mode byte, and a `-max_len` that fits them.
//!
//! Properties checked on every input, beyond "no panic":
//! - memory stays bounded: pages are read one run at a time under a 1 MiB limit;
//! - revisions come out in strictly increasing order, each decoded;
//! - after an error the revision iterator ends;
//! - a walk of every bucket, nested ones included, ends (page loops are refused).

#![no_main]

use std::ops::ControlFlow;

use libfuzzer_sys::fuzz_target;
use sha2::{Digest as _, Sha256};
use snapply_etcd::bbolt::{BoltError, Bucket, Db, Limits, ReadAt};
use snapply_etcd::{EtcdSnapshot, Options};

const META_OFFSET: usize = 16;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let mut file = rest.to_vec();
    if mode % 3 != 0 {
        fix_meta(&mut file, 0);
        let page_size = file
            .get(META_OFFSET + 8..META_OFFSET + 12)
            .and_then(|b| b.try_into().ok())
            .map_or(4096, |b| u32::from_le_bytes(b) as usize);
        if page_size.is_power_of_two() && page_size >= 512 {
            fix_meta(&mut file, page_size);
        }
    }
    if mode % 3 == 2 && !file.is_empty() {
        // Pad to whole 512-byte sectors so the trailer is recognised by etcd's rule.
        file.resize(file.len().div_ceil(512) * 512, 0);
        let digest: [u8; 32] = Sha256::digest(&file).into();
        file.extend_from_slice(&digest);
    }
    let limits = Limits { max_page_run: 1 << 20 };
    for verify_digest in [true, false] {
        if let Ok(snap) = EtcdSnapshot::from_source(file.as_slice(), Options { verify_digest, limits }) {
            read_everything(&snap);
            walk(snap.db(), &snap.db().root(), &mut 256);
        }
    }
});

/// Recomputes the FNV-1a checksum of the meta at `page` (bbolt's `Meta.Sum64`).
fn fix_meta(file: &mut [u8], page: usize) {
    let start = page + META_OFFSET;
    let Some(summed) = file.get(start..start + 56) else { return };
    let sum = summed.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    if let Some(slot) = file.get_mut(start + 56..start + 64) {
        slot.copy_from_slice(&sum.to_le_bytes());
    }
}

fn read_everything<S: ReadAt>(snap: &EtcdSnapshot<S>) {
    let mut last = None;
    let mut revisions = snap.revisions();
    for item in revisions.by_ref() {
        let Ok((rev, _kv)) = item else { break };
        assert!(last.is_none_or(|l| rev > l), "revisions out of order");
        last = Some(rev);
    }
    assert!(revisions.next().is_none(), "the revision iterator goes on after its end or an error");
    let _ = snap.meta();
    let _ = snap.leases();
    let _ = snap.alarms();
    let _ = snap.auth();
    let _ = snap.users();
    let _ = snap.roles();
    let _ = snap.members();
    let _ = snap.removed_members();
    let _ = snap.cluster_version();
    let _ = snap.downgrade();
}

/// Walks `bucket` and every bucket nested in it, at most `budget` buckets in all: nested
/// buckets may point at each other's pages, so the recursion needs its own bound.
fn walk<S: ReadAt>(db: &Db<S>, bucket: &Bucket, budget: &mut u32) {
    if *budget == 0 {
        return;
    }
    *budget -= 1;
    let mut nested = Vec::new();
    let _ = db.for_each::<BoltError>(bucket, |entry| {
        if let Ok(Some(b)) = entry.bucket() {
            nested.push(b);
        }
        Ok(ControlFlow::Continue(()))
    });
    for b in &nested {
        walk(db, b, budget);
    }
}
