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

/// Whether `bytes` is the encoding of `value`, compared byte by byte as it is encoded: no
/// buffer, so a device compares a large record (a conf state) without a second copy of it.
/// postcard's encoding is canonical (minimal varints), so equal encodings mean equal values.
pub(crate) fn encodes_as<T: Serialize + ?Sized>(value: &T, bytes: &[u8]) -> bool {
    struct Compare<'a>(&'a [u8]);
    impl postcard::ser_flavors::Flavor for Compare<'_> {
        type Output = bool;
        fn try_push(&mut self, data: u8) -> postcard::Result<()> {
            match self.0.split_first() {
                Some((&expected, rest)) if expected == data => {
                    self.0 = rest;
                    Ok(())
                }
                _ => Err(postcard::Error::SerializeBufferFull),
            }
        }
        fn finalize(self) -> postcard::Result<bool> {
            Ok(self.0.is_empty())
        }
    }
    postcard::serialize_with_flavor(value, Compare(bytes)).unwrap_or(false)
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

/// A list serialized as postcard serializes a sequence (its length, then each item), straight
/// from a slice of the store's own items: a record holds as many items as the profile's table
/// does, with no intermediate fixed-size list (and no cap of its own).
pub(crate) struct List<'a, T, U, F: Fn(&'a T) -> U>(pub(crate) &'a [T], pub(crate) F);

impl<'a, T, U: Serialize, F: Fn(&'a T) -> U> Serialize for List<'a, T, U, F> {
    fn serialize<Z: serde::Serializer>(&self, serializer: Z) -> Result<Z::Ok, Z::Error> {
        serializer.collect_seq(self.0.iter().map(&self.1))
    }
}

/// Reads a record field by field, so a list in it can be read item by item into the profile's
/// table (see [`List`]): the wire format is what postcard's derive gives for the same struct.
pub(crate) struct Fields<'a> {
    rest: &'a [u8],
    bucket: Bucket,
}

impl<'a> Fields<'a> {
    /// Starts reading a record of `bucket`.
    pub(crate) fn new(bucket: Bucket, bytes: &'a [u8]) -> Self {
        Fields { rest: bytes, bucket }
    }

    /// Reads the next field.
    pub(crate) fn next<T: serde::Deserialize<'a>>(&mut self) -> Result<T, StoreError> {
        let (value, rest) = postcard::take_from_bytes::<T>(self.rest)
            .map_err(|_| StoreError::Corrupt { bucket: self.bucket, what: "record does not decode" })?;
        self.rest = rest;
        Ok(value)
    }

    /// Reads the length of a list; its items follow. A hostile length only makes the reads of
    /// the items fail: nothing is allocated by it.
    pub(crate) fn list_len(&mut self) -> Result<usize, StoreError> {
        self.next::<usize>()
    }
}
