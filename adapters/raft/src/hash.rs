//! etcd's `HashKV`: a CRC-32C of the MVCC key space up to a revision (etcd 3.4's
//! `store.HashByRev`), computed from the `key` bucket as etcd's bbolt holds it, so that two
//! members that applied the same entries answer the same hash, and a member answers what an
//! etcd member with the same history answers.
//!
//! etcd hashes the bucket's name, then every record's key (the 17- or 18-byte revision) and
//! value (the `mvccpb.KeyValue` protobuf) in revision order, up to the revision asked. The
//! records here are postcard (docs/records.md); each is hashed as the protobuf etcd would have
//! written for it: a put's `KeyValue` with its zero fields left out, a tombstone's with only
//! its key (etcd's `storeTxnWrite.delete`). Records at or below the compaction revision count
//! only if compacting at the hash revision would keep them (etcd's `kvindex.Keep`), unless that
//! would keep none.

use std::collections::HashMap;
use std::ops::ControlFlow;

use snapply_core::backend::{Bucket, ReadTxn};
use snapply_core::store::{KeyValue, StoreError, parse_revision_key};

/// The name etcd hashes first: its `key` bucket's.
const KEY_BUCKET: &[u8] = b"key";

/// Each key's latest revision (main, sub) at or below a revision, and whether it deleted the key.
type Latest = HashMap<Vec<u8>, ((i64, i64), bool)>;

/// The hash of the key space at `rev` (0: the current revision) of a store at `current`
/// compacted at `compacted` (-1: never), read from `txn`. Returns the hash and the revision it
/// was taken at.
///
/// # Errors
/// [`StoreError::Compacted`] for a revision at or below the compaction, [`StoreError::FutureRevision`]
/// for one above the current revision (etcd's `ErrCompacted` and `ErrFutureRev`), and the
/// backend's or a record's error.
pub(crate) fn hash_kv<R: ReadTxn + ?Sized>(
    txn: &R,
    rev: i64,
    current: i64,
    compacted: i64,
) -> Result<(u32, i64), StoreError> {
    if rev > 0 && rev <= compacted {
        return Err(StoreError::Compacted { requested: rev, compacted });
    }
    if rev > current {
        return Err(StoreError::FutureRevision { requested: rev, current });
    }
    let rev = if rev == 0 { current } else { rev };
    // etcd's `kvindex.Keep(rev)`: each key's latest revision at or below `rev`, unless that
    // deleted it. Only asked of records at or below the compaction.
    let latest = if compacted >= 0 { latest_revisions(txn, rev)? } else { Latest::new() };
    let keeps_any = latest.values().any(|(_, tombstone)| !tombstone);
    let mut crc = crc32c::crc32c(KEY_BUCKET);
    let mut value = Vec::new();
    let mut result = Ok(());
    txn.scan(Bucket::Key, &[], &mut |k, v| {
        let Some((at, tombstone)) = parse_revision_key(k) else {
            result = Err(StoreError::Corrupt { bucket: Bucket::Key, what: "a key that is not a revision" });
            return ControlFlow::Break(());
        };
        if at.main > rev {
            return ControlFlow::Break(());
        }
        let kv = match postcard::from_bytes::<KeyValue<'_>>(v) {
            Ok(kv) => kv,
            Err(_) => {
                result = Err(StoreError::Corrupt { bucket: Bucket::Key, what: "a key-value record" });
                return ControlFlow::Break(());
            }
        };
        if at.main <= compacted && keeps_any {
            let kept = latest.get(kv.key).is_some_and(|&(main_sub, t)| !t && main_sub == (at.main, at.sub));
            if !kept {
                return ControlFlow::Continue(());
            }
        }
        value.clear();
        etcd_key_value(&kv, tombstone, &mut value);
        crc = crc32c::crc32c_append(crc, k);
        crc = crc32c::crc32c_append(crc, &value);
        ControlFlow::Continue(())
    })?;
    result.map(|()| (crc, rev))
}

/// Each key's latest revision at or below `rev`, and whether it deleted the key.
fn latest_revisions<R: ReadTxn + ?Sized>(txn: &R, rev: i64) -> Result<Latest, StoreError> {
    let mut latest = Latest::new();
    let mut result = Ok(());
    txn.scan(Bucket::Key, &[], &mut |k, v| {
        let (Some((at, tombstone)), Ok(kv)) = (parse_revision_key(k), postcard::from_bytes::<KeyValue<'_>>(v)) else {
            result = Err(StoreError::Corrupt { bucket: Bucket::Key, what: "a key-value record" });
            return ControlFlow::Break(());
        };
        if at.main > rev {
            return ControlFlow::Break(());
        }
        // Revision order: the last one seen is the latest.
        latest.insert(kv.key.to_vec(), ((at.main, at.sub), tombstone));
        ControlFlow::Continue(())
    })?;
    result.map(|()| latest)
}

/// `kv` as etcd's `mvccpb.KeyValue` protobuf (gogoproto's field order, zero fields left out);
/// a tombstone's carries only its key.
fn etcd_key_value(kv: &KeyValue<'_>, tombstone: bool, out: &mut Vec<u8>) {
    bytes_field(1, kv.key, out);
    if tombstone {
        return;
    }
    int_field(2, kv.create_revision, out);
    int_field(3, kv.mod_revision, out);
    int_field(4, kv.version, out);
    bytes_field(5, kv.value, out);
    int_field(6, kv.lease, out);
}

fn bytes_field(field: u64, bytes: &[u8], out: &mut Vec<u8>) {
    if bytes.is_empty() {
        return;
    }
    varint(field << 3 | 2, out);
    varint(bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}

fn int_field(field: u64, v: i64, out: &mut Vec<u8>) {
    if v == 0 {
        return;
    }
    varint(field << 3, out);
    // An int64 is its two's complement as a varint (ten bytes for a negative one).
    varint(v as u64, out);
}

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_values_encode_as_etcds_protobuf() {
        let kv = KeyValue { key: b"foo", create_revision: 2, mod_revision: 300, version: 1, value: b"bar", lease: 0 };
        let mut out = Vec::new();
        etcd_key_value(&kv, false, &mut out);
        // What gogoproto's `KeyValue.Marshal` writes for it.
        assert_eq!(out, [0x0a, 3, b'f', b'o', b'o', 0x10, 2, 0x18, 0xac, 0x02, 0x20, 1, 0x2a, 3, b'b', b'a', b'r']);
        out.clear();
        etcd_key_value(&kv, true, &mut out);
        assert_eq!(out, [0x0a, 3, b'f', b'o', b'o']);
        out.clear();
        int_field(6, -1, &mut out);
        assert_eq!(out, [0x30, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]);
    }
}
