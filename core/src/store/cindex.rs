//! The consistent index: the Raft index (and term) of the last entry the backend reflects.
//!
//! Every write transaction a node commits goes through [`ConsistentIndex::commit`], which
//! stamps the index into the `meta` bucket in the same transaction (etcd's
//! `OnPreCommitUnsafe` hook). That is why the holder must point at the backend being written:
//! if lease recovery commits on the new backend with the old holder, the old index overwrites
//! the snapshot's (etcd bug #13922).

use super::{StoreError, codec};
use crate::backend::{Bucket, ReadTxn, WriteTxn};
use crate::raft::ConfState;

/// `meta` key of the consistent index (etcd's `consistent_index`).
pub const META_CONSISTENT_INDEX: &[u8] = b"consistent_index";
/// `meta` key of the term of the consistent index (etcd's `term`).
pub const META_TERM: &[u8] = b"term";
/// `meta` key of the conf state (etcd's `confState`).
pub const META_CONF_STATE: &[u8] = b"confState";

/// The consistent index and term a backend reflects.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ConsistentIndex {
    index: u64,
    term: u64,
}

impl ConsistentIndex {
    /// Reads the consistent index stored in a backend (0 when there is none).
    pub fn load<R: ReadTxn + ?Sized>(txn: &R) -> Result<Self, StoreError> {
        Ok(ConsistentIndex {
            index: codec::get_u64(txn, Bucket::Meta, META_CONSISTENT_INDEX)?.unwrap_or(0),
            term: codec::get_u64(txn, Bucket::Meta, META_TERM)?.unwrap_or(0),
        })
    }

    /// The index.
    pub fn index(&self) -> u64 {
        self.index
    }

    /// The term of the entry at the index.
    pub fn term(&self) -> u64 {
        self.term
    }

    /// Moves the index forward to an applied entry. An entry at or before the current index is
    /// ignored, as etcd does for re-applied entries.
    pub(crate) fn advance(&mut self, index: u64, term: u64) {
        if index > self.index {
            self.index = index;
            self.term = term;
        }
    }

    /// Stamps the index into `txn` and commits it.
    pub(crate) fn commit<W: WriteTxn>(&self, mut txn: W) -> Result<(), StoreError> {
        self.stamp(&mut txn)?;
        txn.commit()?;
        Ok(())
    }

    /// Writes the index and term into the `meta` bucket of `txn`.
    pub(crate) fn stamp<W: WriteTxn + ?Sized>(&self, txn: &mut W) -> Result<(), StoreError> {
        txn.put(Bucket::Meta, META_CONSISTENT_INDEX, &self.index.to_be_bytes())?;
        txn.put(Bucket::Meta, META_TERM, &self.term.to_be_bytes())?;
        Ok(())
    }
}

/// Writes the conf state into the `meta` bucket of `txn` (etcd's `UnsafeSaveConfStateToBackend`).
pub(crate) fn save_conf_state<W: WriteTxn + ?Sized>(txn: &mut W, conf: &ConfState) -> Result<(), StoreError> {
    // A conf state of at most 4 * 16 ids of 10 varint bytes fits in 1 KiB.
    let mut buf = heapless::Vec::<u8, 1024>::new();
    codec::put(txn, Bucket::Meta, META_CONF_STATE, conf, &mut buf)
}

/// Whether the conf state stored in the `meta` bucket is `conf` (none stored counts as the
/// empty conf state), compared without decoding a second one.
pub(crate) fn conf_state_is<R: ReadTxn + ?Sized>(txn: &R, conf: &ConfState) -> Result<bool, StoreError> {
    let mut equal = None;
    txn.get(Bucket::Meta, META_CONF_STATE, &mut |v| equal = Some(codec::encodes_as(conf, v)))?;
    Ok(equal.unwrap_or_else(|| {
        conf.voters.is_empty()
            && conf.learners.is_empty()
            && conf.voters_outgoing.is_empty()
            && conf.learners_next.is_empty()
            && !conf.auto_leave
    }))
}

/// Reads the conf state stored in the `meta` bucket, if any.
pub fn load_conf_state<R: ReadTxn + ?Sized>(txn: &R) -> Result<Option<ConfState>, StoreError> {
    codec::get(txn, Bucket::Meta, META_CONF_STATE)
}
