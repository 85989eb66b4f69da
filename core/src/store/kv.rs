//! The MVCC key-value store (etcd's `mvcc.store`): values live in the backend's `key` bucket
//! under their revision; an in-memory index maps each key to its revisions.
//!
//! The index is flat, one entry per (key, revision), sorted by key then revision. A key's
//! generations are the runs of revisions ended by a tombstone, as in etcd's `keyIndex`; keeping
//! them flat needs no nested collection, which matters for fixed capacities.

use serde::{Deserialize, Serialize};

use super::cindex::ConsistentIndex;
use super::lease::{LeaseId, Lessor};
use super::{StoreError, codec};
use crate::backend::{Backend, Bucket, ReadTxn, WriteTxn};
use crate::collections::{CapacityError, Profile, Seq};

/// `meta` key of the compaction revision that was scheduled (etcd's `scheduledCompactRev`).
pub const META_SCHEDULED_COMPACT: &[u8] = b"scheduledCompactRev";
/// `meta` key of the compaction revision that finished (etcd's `finishedCompactRev`).
pub const META_FINISHED_COMPACT: &[u8] = b"finishedCompactRev";

/// A revision: the main revision of a transaction and the sub revision of a change in it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Revision {
    /// The transaction's revision.
    pub main: i64,
    /// The change's position in the transaction.
    pub sub: i64,
}

/// Length of a revision key in the `key` bucket: main, `_`, sub (etcd's `revBytesLen`).
pub const REV_KEY_LEN: usize = 17;
/// Marker appended to the revision key of a tombstone (etcd's `markTombstone`).
pub const TOMBSTONE_MARK: u8 = b't';

/// The key of a revision in the `key` bucket, as etcd lays it out: 8 bytes main (big-endian),
/// `_`, 8 bytes sub, and `t` for a tombstone.
pub fn revision_key(rev: Revision, tombstone: bool) -> heapless::Vec<u8, 18> {
    let mut out = heapless::Vec::new();
    // The vector holds 18 bytes and at most 18 are written: these pushes cannot fail.
    let _ = out.extend_from_slice(&rev.main.to_be_bytes());
    let _ = out.push(b'_');
    let _ = out.extend_from_slice(&rev.sub.to_be_bytes());
    if tombstone {
        let _ = out.push(TOMBSTONE_MARK);
    }
    out
}

/// Parses a revision key; `None` when it is not one.
pub fn parse_revision_key(key: &[u8]) -> Option<(Revision, bool)> {
    let tombstone = match key.len() {
        REV_KEY_LEN => false,
        18 if key.get(17) == Some(&TOMBSTONE_MARK) => true,
        _ => return None,
    };
    let main = i64::from_be_bytes(key.get(0..8)?.try_into().ok()?);
    let sub = i64::from_be_bytes(key.get(9..17)?.try_into().ok()?);
    (key.get(8) == Some(&b'_')).then_some((Revision { main, sub }, tombstone))
}

/// A key-value record in the `key` bucket (etcd's `mvccpb.KeyValue`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue<'a> {
    /// The key.
    pub key: &'a [u8],
    /// Revision of the key's creation in its current generation.
    pub create_revision: i64,
    /// Revision of the last change.
    pub mod_revision: i64,
    /// Number of changes in the current generation (0 for a tombstone).
    pub version: i64,
    /// The value.
    pub value: &'a [u8],
    /// The lease the key is attached to, 0 for none.
    pub lease: LeaseId,
}

/// One entry of the key index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexEntry<B> {
    /// The key.
    pub key: B,
    /// A revision of the key.
    pub rev: Revision,
    /// Whether the revision deleted the key.
    pub tombstone: bool,
}

/// The MVCC key-value store.
#[derive(Clone, Debug, PartialEq)]
pub struct KvStore<P: Profile> {
    index: P::Vec<IndexEntry<P::Bytes>>,
    current_rev: i64,
    compact_rev: i64,
}

impl<P: Profile> Default for KvStore<P> {
    fn default() -> Self {
        // etcd's store starts at revision 1 and "no compaction" is -1.
        KvStore { index: Default::default(), current_rev: 1, compact_rev: -1 }
    }
}

fn entry_cmp<B: Seq<u8>>(e: &IndexEntry<B>, key: &[u8], rev: Revision) -> core::cmp::Ordering {
    (e.key.as_slice(), e.rev).cmp(&(key, rev))
}

impl<P: Profile> KvStore<P> {
    /// The revision of the last change (1 for an empty store).
    pub fn current_revision(&self) -> i64 {
        self.current_rev
    }

    /// The revision compacted at, -1 if none.
    pub fn compact_revision(&self) -> i64 {
        self.compact_rev
    }

    /// The key index.
    pub fn index(&self) -> &[IndexEntry<P::Bytes>] {
        self.index.as_slice()
    }

    /// The revision of the next change. A store restored from a hostile image can sit at the
    /// top of the revision space; that refuses the change instead of overflowing.
    fn next_revision(&self) -> Result<i64, StoreError> {
        self.current_rev.checked_add(1).ok_or(StoreError::InvalidRequest("revision space exhausted"))
    }

    /// Entries of `key`, in revision order.
    fn entries_of(&self, key: &[u8]) -> &[IndexEntry<P::Bytes>] {
        let all = self.index.as_slice();
        let start = all.partition_point(|e| e.key.as_slice() < key);
        let end = start + all.get(start..).map_or(0, |r| r.partition_point(|e| e.key.as_slice() == key));
        all.get(start..end).unwrap_or(&[])
    }

    /// The revision of `key` visible at `at` (its latest revision `<= at`), unless deleted.
    fn visible(&self, key: &[u8], at: i64) -> Option<Revision> {
        let e = self.entries_of(key).iter().rev().find(|e| e.rev.main <= at)?;
        (!e.tombstone).then_some(e.rev)
    }

    fn insert_entry(&mut self, key: &[u8], rev: Revision, tombstone: bool) -> Result<(), StoreError> {
        let entry = IndexEntry { key: codec::bytes::<P::Bytes>(key, "key index key")?, rev, tombstone };
        let pos = match self.index.as_slice().binary_search_by(|e| entry_cmp(e, key, rev)) {
            Ok(_) => return Err(StoreError::Corrupt { bucket: Bucket::Key, what: "revision written twice" }),
            Err(pos) => pos,
        };
        self.index.try_insert(pos, entry).map_err(|_| CapacityError { what: "key index" })?;
        Ok(())
    }

    /// Calls `f` with every live key-value in `[key, range_end)` at revision `at` (0 = current),
    /// in key order. An empty `range_end` means just `key`; `range_end == [0]` means every key
    /// from `key` on (etcd's conventions).
    pub fn range<R: ReadTxn + ?Sized>(
        &self,
        txn: &R,
        key: &[u8],
        range_end: &[u8],
        at: i64,
        f: &mut dyn FnMut(&KeyValue<'_>),
    ) -> Result<(), StoreError> {
        let at = if at <= 0 { self.current_rev } else { at };
        if at > self.current_rev {
            return Err(StoreError::FutureRevision { requested: at, current: self.current_rev });
        }
        if at < self.compact_rev {
            return Err(StoreError::Compacted { requested: at, compacted: self.compact_rev });
        }
        let mut last: Option<&[u8]> = None;
        let all = self.index.as_slice();
        let start = all.partition_point(|e| e.key.as_slice() < key);
        for e in all.get(start..).unwrap_or(&[]) {
            let k = e.key.as_slice();
            if !in_range(k, key, range_end) {
                break;
            }
            if last == Some(k) {
                continue;
            }
            last = Some(k);
            if let Some(rev) = self.visible(k, at) {
                let mut result = Ok(());
                let found = txn.get(Bucket::Key, &revision_key(rev, false), &mut |v| {
                    result = codec::decode::<KeyValue<'_>>(Bucket::Key, v).map(|kv| f(&kv));
                })?;
                result?;
                if !found {
                    return Err(StoreError::Corrupt { bucket: Bucket::Key, what: "indexed revision missing" });
                }
            }
        }
        Ok(())
    }

    /// Puts `value` under `key` in a new revision, attached to `lease` (0 for none).
    pub(crate) fn put<W: WriteTxn + ?Sized>(
        &mut self,
        txn: &mut W,
        lessor: &mut Lessor<P>,
        key: &[u8],
        value: &[u8],
        lease: LeaseId,
        scratch: &mut P::Bytes,
    ) -> Result<i64, StoreError> {
        if key.is_empty() {
            return Err(StoreError::InvalidRequest("empty key"));
        }
        if lease != 0 && lessor.lease(lease).is_none() {
            return Err(StoreError::NotFound("lease"));
        }
        let rev = Revision { main: self.next_revision()?, sub: 0 };
        let (mut create_revision, mut version, mut old_lease) = (rev.main, 1, 0);
        if let Some(prev) = self.visible(key, self.current_rev) {
            let mut result = Ok(());
            txn.get(Bucket::Key, &revision_key(prev, false), &mut |v| {
                result = codec::decode::<KeyValue<'_>>(Bucket::Key, v).map(|kv| {
                    create_revision = kv.create_revision;
                    version = kv.version.saturating_add(1);
                    old_lease = kv.lease;
                });
            })?;
            result?;
        }
        let kv = KeyValue { key, create_revision, mod_revision: rev.main, version, value, lease };
        codec::put(txn, Bucket::Key, &revision_key(rev, false), &kv, scratch)?;
        self.insert_entry(key, rev, false)?;
        if old_lease != 0 && old_lease != lease {
            lessor.detach(old_lease, key);
        }
        if lease != 0 {
            lessor.attach(lease, key)?;
        }
        self.current_rev = rev.main;
        Ok(rev.main)
    }

    /// Deletes every live key in `[key, range_end)` in one new revision; returns how many.
    pub(crate) fn delete_range<W: WriteTxn + ?Sized>(
        &mut self,
        txn: &mut W,
        lessor: &mut Lessor<P>,
        key: &[u8],
        range_end: &[u8],
        scratch: &mut P::Bytes,
    ) -> Result<usize, StoreError> {
        // Collect the live keys first: the index is changed while deleting.
        let mut doomed = P::Vec::<(P::Bytes, LeaseId)>::default();
        self.range(txn, key, range_end, 0, &mut |kv| {
            let item = codec::bytes::<P::Bytes>(kv.key, "deleted key").map(|k| (k, kv.lease));
            if let Ok(item) = item {
                let _ = doomed.try_push(item);
            }
        })?;
        let mut live = 0;
        self.range(txn, key, range_end, 0, &mut |_| live += 1)?;
        if live != doomed.len() {
            return Err(CapacityError { what: "keys deleted in one request" }.into());
        }
        if doomed.is_empty() {
            return Ok(0);
        }
        let main = self.next_revision()?;
        for (sub, (k, lease)) in doomed.as_slice().iter().enumerate() {
            let rev = Revision { main, sub: sub as i64 };
            let kv = KeyValue {
                key: k.as_slice(),
                create_revision: 0,
                mod_revision: main,
                version: 0,
                value: &[],
                lease: 0,
            };
            codec::put(txn, Bucket::Key, &revision_key(rev, true), &kv, scratch)?;
            self.insert_entry(k.as_slice(), rev, true)?;
            if *lease != 0 {
                lessor.detach(*lease, k.as_slice());
            }
        }
        self.current_rev = main;
        Ok(doomed.len())
    }

    /// Schedules a compaction at `rev`: records it in `meta` so an interrupted compaction is
    /// resumed on restore (etcd's `scheduledCompactRev`).
    pub(crate) fn schedule_compaction<W: WriteTxn + ?Sized>(&self, txn: &mut W, rev: i64) -> Result<(), StoreError> {
        if rev <= self.compact_rev {
            return Err(StoreError::Compacted { requested: rev, compacted: self.compact_rev });
        }
        if rev > self.current_rev {
            return Err(StoreError::FutureRevision { requested: rev, current: self.current_rev });
        }
        txn.put(Bucket::Meta, META_SCHEDULED_COMPACT, &rev.to_be_bytes())?;
        Ok(())
    }

    /// Compacts at `rev`: for each key, drops every revision before its latest revision `<= rev`,
    /// and that one too if it is a tombstone, from the index and from the `key` bucket.
    pub(crate) fn compact<W: WriteTxn + ?Sized>(&mut self, txn: &mut W, rev: i64) -> Result<(), StoreError> {
        let all = self.index.as_slice();
        let mut i = 0;
        while let Some(e) = all.get(i) {
            let run = all.get(i..).map_or(0, |r| r.partition_point(|x| x.key == e.key));
            let entries = all.get(i..i + run).unwrap_or(&[]);
            // The latest revision <= rev survives unless it is a tombstone.
            let keep = entries.iter().rposition(|x| x.rev.main <= rev);
            if let Some(keep) = keep {
                let last_dropped = if entries.get(keep).is_some_and(|x| x.tombstone) { keep + 1 } else { keep };
                for x in entries.get(..last_dropped).unwrap_or(&[]) {
                    txn.delete(Bucket::Key, &revision_key(x.rev, x.tombstone))?;
                }
            }
            i += run.max(1);
        }
        // The backend is done; now drop the same entries from the index.
        let mut keep_flags = P::Vec::<bool>::default();
        let mut i = 0;
        while let Some(e) = all.get(i) {
            let run = all.get(i..).map_or(0, |r| r.partition_point(|x| x.key == e.key));
            let entries = all.get(i..i + run).unwrap_or(&[]);
            let keep = entries.iter().rposition(|x| x.rev.main <= rev);
            let first_kept = match keep {
                Some(k) if entries.get(k).is_some_and(|x| x.tombstone) => k + 1,
                Some(k) => k,
                None => 0,
            };
            for j in 0..entries.len() {
                codec::push(&mut keep_flags, j >= first_kept, "compaction scratch")?;
            }
            i += run.max(1);
        }
        let mut flags = keep_flags.as_slice().iter();
        self.index.retain_by(|_| flags.next().copied().unwrap_or(true));
        txn.put(Bucket::Meta, META_FINISHED_COMPACT, &rev.to_be_bytes())?;
        self.compact_rev = rev;
        Ok(())
    }

    /// Rebuilds the store from the `key` and `meta` buckets of `backend` (etcd's
    /// `kvstore.restore`): the index with generations and tombstones, the current and compacted
    /// revisions, keys reattached to `lessor`'s leases, and an unfinished scheduled compaction
    /// resumed and committed on `backend` through `cindex`.
    pub(crate) fn restore<B: Backend>(
        backend: &mut B,
        lessor: &mut Lessor<P>,
        cindex: &ConsistentIndex,
    ) -> Result<Self, StoreError> {
        let (mut store, scheduled) = Self::load(&backend.read()?, lessor)?;
        if let Some(scheduled) = scheduled {
            crate::fmt::info!("resume scheduled compaction: scheduled-compact-revision {}", scheduled);
            let mut txn = backend.write()?;
            store.compact(&mut txn, scheduled)?;
            cindex.commit(txn)?;
            // etcd: the current revision is never below the compacted one.
            store.current_rev = store.current_rev.max(store.compact_rev);
        }
        Ok(store)
    }

    /// Reads the store as [`KvStore::restore`] does, without committing; returns the scheduled
    /// compaction revision if a compaction is unfinished.
    pub(crate) fn load<R: ReadTxn + ?Sized>(
        txn: &R,
        lessor: &mut Lessor<P>,
    ) -> Result<(Self, Option<i64>), StoreError> {
        let mut store = KvStore::<P>::default();
        let finished = codec::get_u64(txn, Bucket::Meta, META_FINISHED_COMPACT)?.map(|v| v as i64);
        let scheduled = codec::get_u64(txn, Bucket::Meta, META_SCHEDULED_COMPACT)?.map(|v| v as i64);
        // Revisions that attach their key to a lease; a key's lease is that of its latest revision.
        let mut leased = P::Vec::<(Revision, LeaseId)>::default();
        codec::scan(txn, Bucket::Key, |k, v| store.restore_one(k, v, &mut leased))?;
        // Entries were pushed in revision order; one sort puts them in key order, which keeps the
        // restore O(n log n) however the keys interleave.
        store.index.as_mut_slice().sort_unstable_by(|a, b| (a.key.as_slice(), a.rev).cmp(&(b.key.as_slice(), b.rev)));
        if store.index.as_slice().windows(2).any(|w| matches!(w, [a, b] if a.key == b.key && a.rev == b.rev)) {
            return Err(StoreError::Corrupt { bucket: Bucket::Key, what: "revision written twice" });
        }
        leased.as_mut_slice().sort_unstable_by_key(|(rev, _)| *rev);
        let index = store.index.as_slice();
        let latest = index.iter().enumerate().filter(|(i, e)| index.get(i + 1).is_none_or(|next| next.key != e.key));
        let attachments = latest.filter(|(_, e)| !e.tombstone).filter_map(|(_, e)| {
            let pos = leased.as_slice().binary_search_by_key(&e.rev, |(rev, _)| *rev).ok()?;
            leased.as_slice().get(pos).map(|(_, lease)| (*lease, e.key.as_slice()))
        });
        lessor.attach_all(attachments)?;
        if let Some(finished) = finished {
            store.compact_rev = finished;
        }
        if store.current_rev < store.compact_rev {
            store.current_rev = store.compact_rev;
        }
        let unfinished = scheduled.filter(|s| *s > store.compact_rev);
        Ok((store, unfinished))
    }

    fn restore_one(&mut self, k: &[u8], v: &[u8], leased: &mut P::Vec<(Revision, LeaseId)>) -> Result<(), StoreError> {
        let (rev, tombstone) =
            parse_revision_key(k).ok_or(StoreError::Corrupt { bucket: Bucket::Key, what: "malformed revision key" })?;
        let kv = codec::decode::<KeyValue<'_>>(Bucket::Key, v)?;
        let entry = IndexEntry { key: codec::bytes::<P::Bytes>(kv.key, "key index key")?, rev, tombstone };
        codec::push(&mut self.index, entry, "key index")?;
        if !tombstone && kv.lease != 0 {
            codec::push(leased, (rev, kv.lease), "leased revisions")?;
        }
        if rev.main > self.current_rev {
            self.current_rev = rev.main;
        }
        Ok(())
    }
}

/// Whether `k` is in etcd's range `[key, range_end)`.
pub(crate) fn in_range(k: &[u8], key: &[u8], range_end: &[u8]) -> bool {
    match range_end {
        [] => k == key,
        [0] => k >= key,
        end => k >= key && k < end,
    }
}
