//! Encoding of the stores' records: `postcard` for values, big-endian integers for keys that
//! must sort numerically (as etcd does in its buckets).

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::StoreError;
use crate::backend::{Bucket, ReadTxn, WriteTxn};
use crate::collections::{CapacityError, Seq};

/// A postcard flavor that writes into any [`Seq<u8>`], so records are encoded into the
/// profile's byte strings: no heap on devices, no fixed limit on hosts.
struct SeqFlavor<'a, S: Seq<u8>>(&'a mut S);

impl<S: Seq<u8>> postcard::ser_flavors::Flavor for SeqFlavor<'_, S> {
    type Output = ();
    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.0.try_push(data).map_err(|_| postcard::Error::SerializeBufferFull)
    }
    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

/// Encodes `value` into `out` (cleared first).
pub(crate) fn encode<T: Serialize + ?Sized, S: Seq<u8>>(value: &T, out: &mut S) -> Result<(), StoreError> {
    out.clear_all();
    append(value, out)
}

/// Encodes `value` at the end of `out`.
pub(crate) fn append<T: Serialize + ?Sized, S: Seq<u8>>(value: &T, out: &mut S) -> Result<(), StoreError> {
    postcard::serialize_with_flavor(value, SeqFlavor(out))
        .map_err(|_| StoreError::Capacity(CapacityError { what: "record encoding buffer" }))
}

/// Encodes `value` and puts it under `key` in `bucket`.
pub(crate) fn put<T: Serialize + ?Sized, S: Seq<u8>, W: WriteTxn + ?Sized>(
    txn: &mut W,
    bucket: Bucket,
    key: &[u8],
    value: &T,
    scratch: &mut S,
) -> Result<(), StoreError> {
    encode(value, scratch)?;
    txn.put(bucket, key, scratch.as_slice())?;
    Ok(())
}

/// Decodes a record of `bucket`.
pub(crate) fn decode<'a, T: serde::Deserialize<'a>>(bucket: Bucket, bytes: &'a [u8]) -> Result<T, StoreError> {
    postcard::from_bytes(bytes).map_err(|_| StoreError::Corrupt { bucket, what: "record does not decode" })
}

/// Calls `f` with every `(key, value)` of `bucket`, in key order, stopping at its first error.
pub(crate) fn scan<R: ReadTxn + ?Sized>(
    txn: &R,
    bucket: Bucket,
    mut f: impl FnMut(&[u8], &[u8]) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let mut result = Ok(());
    txn.scan(bucket, &[], &mut |k, v| {
        result = f(k, v);
        if result.is_err() { core::ops::ControlFlow::Break(()) } else { core::ops::ControlFlow::Continue(()) }
    })?;
    result
}

/// Reads and decodes the record under `key` in `bucket`, if any.
pub(crate) fn get<T: DeserializeOwned, R: ReadTxn + ?Sized>(
    txn: &R,
    bucket: Bucket,
    key: &[u8],
) -> Result<Option<T>, StoreError> {
    let mut out = None;
    txn.get(bucket, key, &mut |v| out = Some(decode::<T>(bucket, v)))?;
    out.transpose()
}

/// Reads a big-endian `u64` stored under `key` in `bucket`, if any.
pub(crate) fn get_u64<R: ReadTxn + ?Sized>(txn: &R, bucket: Bucket, key: &[u8]) -> Result<Option<u64>, StoreError> {
    let mut out = None;
    txn.get(bucket, key, &mut |v| {
        out = Some(
            <[u8; 8]>::try_from(v)
                .map(u64::from_be_bytes)
                .map_err(|_| StoreError::Corrupt { bucket, what: "integer is not 8 bytes" }),
        )
    })?;
    out.transpose()
}

/// Copies `bytes` into a byte string of type `S`.
pub(crate) fn bytes<S: Seq<u8>>(bytes: &[u8], what: &'static str) -> Result<S, CapacityError> {
    let mut out = S::default();
    for b in bytes {
        out.try_push(*b).map_err(|_| CapacityError { what })?;
    }
    Ok(out)
}

/// Pushes `value` to `seq`, or reports which table is full.
pub(crate) fn push<T: Clone + PartialEq + core::fmt::Debug, S: Seq<T>>(
    seq: &mut S,
    value: T,
    what: &'static str,
) -> Result<(), CapacityError> {
    seq.try_push(value).map_err(|_| CapacityError { what })
}

/// Inserts `value` into `seq`, kept sorted by `key`, replacing an equal-keyed element.
pub(crate) fn upsert<T: Clone + PartialEq + core::fmt::Debug, S: Seq<T>, K: Ord + ?Sized>(
    seq: &mut S,
    value: T,
    key: impl Fn(&T) -> &K,
    what: &'static str,
) -> Result<(), CapacityError> {
    match seq.as_slice().binary_search_by(|e| key(e).cmp(key(&value))) {
        Ok(i) => {
            if let Some(slot) = seq.as_mut_slice().get_mut(i) {
                *slot = value;
            }
            Ok(())
        }
        Err(i) => seq.try_insert(i, value).map_err(|_| CapacityError { what }),
    }
}

/// Removes the element of `seq` whose key is `k`; returns whether there was one.
pub(crate) fn remove<T: Clone + PartialEq + core::fmt::Debug, S: Seq<T>, K: Ord + ?Sized>(
    seq: &mut S,
    k: &K,
    key: impl Fn(&T) -> &K,
) -> bool {
    match seq.as_slice().binary_search_by(|e| key(e).cmp(k)) {
        Ok(i) => seq.remove_at(i).is_some(),
        Err(_) => false,
    }
}

/// Finds the element of a sorted table whose key is `k`, mutably; `what` names it in the error.
pub(crate) fn find_mut<'s, T: Clone + PartialEq + core::fmt::Debug, S: Seq<T>, K: Ord + ?Sized>(
    seq: &'s mut S,
    k: &K,
    key: impl Fn(&T) -> &K,
    what: &'static str,
) -> Result<&'s mut T, StoreError> {
    let pos = seq.as_slice().binary_search_by(|e| key(e).cmp(k));
    pos.ok().and_then(|i| seq.as_mut_slice().get_mut(i)).ok_or(StoreError::NotFound(what))
}

/// Finds the element of `seq` whose key is `k`.
pub(crate) fn find<'s, T, K: Ord + ?Sized>(items: &'s [T], k: &K, key: impl Fn(&T) -> &K) -> Option<&'s T> {
    items.binary_search_by(|e| key(e).cmp(k)).ok().and_then(|i| items.get(i))
}
