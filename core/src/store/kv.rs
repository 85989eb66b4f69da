//! The MVCC key-value store (etcd's `mvcc.store`): values live in the backend's `key` bucket
//! under their revision; an in-memory index maps each key to its revisions.
//!
//! The index is flat, one entry per (key, revision), sorted by key then revision. A key's
//! generations are the runs of revisions ended by a tombstone, as in etcd's `keyIndex`; keeping
//! them flat needs no nested collection, which matters for fixed capacities.

use core::ops::ControlFlow;

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
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
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

/// Parses a revision key (etcd's `BytesToBucketKey`: 8-byte big-endian main, `_`, 8-byte
/// big-endian sub, and a trailing `t` for a tombstone); `None` when it is not one. A negative
/// revision is not one either: etcd's revisions start at 1 and sub revisions at 0, and refusing
/// negatives keeps the bucket's byte order equal to revision order.
pub fn parse_revision_key(key: &[u8]) -> Option<(Revision, bool)> {
    let tombstone = match key.len() {
        REV_KEY_LEN => false,
        18 if key.get(17) == Some(&TOMBSTONE_MARK) => true,
        _ => return None,
    };
    let main = i64::from_be_bytes(key.get(0..8)?.try_into().ok()?);
    let sub = i64::from_be_bytes(key.get(9..17)?.try_into().ok()?);
    (key.get(8) == Some(&b'_') && main >= 0 && sub >= 0).then_some((Revision { main, sub }, tombstone))
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

/// Where a key's bytes are in the key index's arena.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Span {
    offset: u32,
    len: u32,
}

/// One entry of the key index: a revision of a key. 24 bytes on every target (the size test
/// pins it); the key's bytes are in the store's arena, once per key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    main: i64,
    /// The sub revision: a change's position in its transaction, below 2^32 (a transaction
    /// of four billion changes cannot be applied anyway).
    sub: u32,
    offset: u32,
    /// The key's length: a `u32`, so every key etcd accepts is carried (its limit is the request
    /// size, 1.5 MiB by default), in the 24 bytes a `u16` took (it fitted the padding).
    len: u32,
    tombstone: bool,
}

impl IndexEntry {
    fn new(rev: Revision, key: Span, tombstone: bool) -> Result<Self, StoreError> {
        let sub = u32::try_from(rev.sub)
            .map_err(|_| StoreError::Corrupt { bucket: Bucket::Key, what: "sub revision out of range" })?;
        Ok(IndexEntry { main: rev.main, sub, offset: key.offset, len: key.len, tombstone })
    }

    fn rev(&self) -> Revision {
        Revision { main: self.main, sub: i64::from(self.sub) }
    }

    fn span(&self) -> Span {
        Span { offset: self.offset, len: self.len }
    }

    fn set_span(&mut self, span: Span) {
        self.offset = span.offset;
        self.len = span.len;
    }

    /// The revision.
    pub fn revision(&self) -> Revision {
        self.rev()
    }
    /// Whether the revision deleted the key.
    pub fn is_tombstone(&self) -> bool {
        self.tombstone
    }
}

/// A write transaction in progress on the key-value store: its main revision and the number of
/// changes made so far, the next change's sub revision (etcd's `storeTxnWrite`).
#[derive(Debug)]
pub(crate) struct Change {
    main: i64,
    changes: i64,
}

impl Change {
    /// Begins a transaction at the store's next revision.
    pub(crate) fn begin<P: Profile>(store: &KvStore<P>) -> Result<Self, StoreError> {
        Ok(Change { main: store.next_revision()?, changes: 0 })
    }

    /// The revision of the transaction's next change (its main revision, the next sub revision),
    /// counted as made.
    fn next(&mut self) -> Result<Revision, StoreError> {
        let rev = Revision { main: self.main, sub: self.changes };
        self.changes =
            self.changes.checked_add(1).ok_or(StoreError::InvalidRequest("too many changes in one transaction"))?;
        Ok(rev)
    }
}

/// The MVCC key-value store.
///
/// The index is flat, one [`IndexEntry`] per (key, revision), sorted by key then revision; the
/// keys' bytes sit in one arena, each key once (its revisions share its bytes), so RAM follows
/// the keys' lengths. Bytes of keys dropped by a compaction are reclaimed when the arena fills.
#[derive(Clone, Debug)]
pub struct KvStore<P: Profile> {
    index: P::KeyIndex,
    arena: P::KeyArena,
    current_rev: i64,
    compact_rev: i64,
}

impl<P: Profile> Default for KvStore<P> {
    fn default() -> Self {
        // etcd's store starts at revision 1 and "no compaction" is -1.
        KvStore { index: Default::default(), arena: Default::default(), current_rev: 1, compact_rev: -1 }
    }
}

/// Two stores are equal when they hold the same revisions of the same keys, whatever the
/// layout of their arenas.
impl<P: Profile> PartialEq for KvStore<P> {
    fn eq(&self, other: &Self) -> bool {
        self.current_rev == other.current_rev
            && self.compact_rev == other.compact_rev
            && self.index.len() == other.index.len()
            && self.entries().eq(other.entries())
    }
}

fn bytes_of(arena: &[u8], span: Span) -> &[u8] {
    let start = span.offset as usize;
    arena.get(start..start.saturating_add(span.len as usize)).unwrap_or(&[])
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

    /// Number of entries of the key index (revisions of keys, tombstones included).
    pub fn index_len(&self) -> usize {
        self.index.len()
    }

    /// Every entry of the key index, by key then revision: key, revision, tombstone.
    pub fn entries(&self) -> impl Iterator<Item = (&[u8], Revision, bool)> + '_ {
        let arena = self.arena.as_slice();
        self.index.as_slice().iter().map(move |e| (bytes_of(arena, e.span()), e.rev(), e.tombstone))
    }

    /// Bytes the arena holds, garbage included.
    pub fn arena_len(&self) -> usize {
        self.arena.len()
    }

    fn key_of(&self, e: &IndexEntry) -> &[u8] {
        bytes_of(self.arena.as_slice(), e.span())
    }

    /// The revision of the next change. A store restored from a hostile image can sit at the
    /// top of the revision space; that refuses the change instead of overflowing.
    fn next_revision(&self) -> Result<i64, StoreError> {
        self.current_rev.checked_add(1).ok_or(StoreError::InvalidRequest("revision space exhausted"))
    }

    /// Index positions of the entries of `key`.
    fn run_of(&self, key: &[u8]) -> core::ops::Range<usize> {
        let arena = self.arena.as_slice();
        let all = self.index.as_slice();
        let start = all.partition_point(|e| bytes_of(arena, e.span()) < key);
        let len = all.get(start..).map_or(0, |r| r.partition_point(|e| bytes_of(arena, e.span()) == key));
        start..start + len
    }

    /// Entries of `key`, in revision order.
    fn entries_of(&self, key: &[u8]) -> &[IndexEntry] {
        self.index.as_slice().get(self.run_of(key)).unwrap_or(&[])
    }

    /// The revision of `key` visible at `at` (its latest revision `<= at`), unless deleted.
    fn visible(&self, key: &[u8], at: i64) -> Option<Revision> {
        let e = self.entries_of(key).iter().rev().find(|e| e.main <= at)?;
        (!e.tombstone).then_some(e.rev())
    }

    /// Stores `key`'s bytes once: an indexed key's span is shared by its new revision.
    fn intern(&mut self, key: &[u8]) -> Result<Span, StoreError> {
        if let Some(e) = self.entries_of(key).first() {
            return Ok(e.span());
        }
        let len = key_len::<P>(key)?;
        if self.arena.len().saturating_add(key.len()) > u32::MAX as usize {
            return Err(CapacityError { what: "key index arena" }.into());
        }
        if self.arena.try_extend(key).is_err() {
            self.reclaim();
            self.arena.try_extend(key).map_err(|_| CapacityError { what: "key index arena" })?;
        }
        Ok(Span { offset: (self.arena.len() - key.len()) as u32, len })
    }

    /// Reclaims the bytes of keys no entry refers to any more: sorts the entries by where their
    /// key is, slides every key still referred to down over the gaps, then sorts the entries back
    /// by key and revision. In place: a device has no room for a second arena.
    fn reclaim(&mut self) {
        self.index.as_mut_slice().sort_unstable_by_key(|e| e.offset);
        let arena = self.arena.as_mut_slice();
        let mut cursor = 0usize;
        let mut last: Option<(u32, u32)> = None;
        for e in self.index.as_mut_slice() {
            match last {
                Some((from, to)) if from == e.offset => e.offset = to,
                _ => {
                    let start = e.offset as usize;
                    let len = e.len as usize;
                    if start.saturating_add(len) <= arena.len() {
                        arena.copy_within(start..start + len, cursor);
                    }
                    last = Some((e.offset, cursor as u32));
                    e.offset = cursor as u32;
                    cursor += len;
                }
            }
        }
        self.arena.truncate_to(cursor);
        let arena = self.arena.as_slice();
        self.index
            .as_mut_slice()
            .sort_unstable_by(|a, b| (bytes_of(arena, a.span()), a.rev()).cmp(&(bytes_of(arena, b.span()), b.rev())));
    }

    fn insert_entry(&mut self, key: &[u8], rev: Revision, tombstone: bool) -> Result<(), StoreError> {
        let span = self.intern(key)?;
        let run = self.run_of(key);
        let entries = self.index.as_slice().get(run.clone()).unwrap_or(&[]);
        let pos = match entries.binary_search_by_key(&rev, |e| e.rev()) {
            Ok(_) => return Err(StoreError::Corrupt { bucket: Bucket::Key, what: "revision written twice" }),
            Err(i) => run.start + i,
        };
        let entry = IndexEntry::new(rev, span, tombstone)?;
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
        self.range_before(txn, key, range_end, self.bound_at(at)?, f)
    }

    /// How many keys [`KvStore::range`] would call back with, counted from the key index alone:
    /// no record is read (etcd's `Range` with `CountOnly`).
    pub fn count(&self, key: &[u8], range_end: &[u8], at: i64) -> Result<usize, StoreError> {
        let mut n = 0usize;
        self.live_revisions(key, range_end, self.bound_at(at)?, &mut |_| {
            n += 1;
            Ok(())
        })?;
        Ok(n)
    }

    /// What a read at revision `at` (0 = current) sees: everything below this bound.
    fn bound_at(&self, at: i64) -> Result<Revision, StoreError> {
        let at = if at <= 0 { self.current_rev } else { at };
        if at > self.current_rev {
            return Err(StoreError::FutureRevision { requested: at, current: self.current_rev });
        }
        Ok(Revision { main: at.saturating_add(1), sub: 0 })
    }

    /// [`KvStore::range`] as of just before revision `bound`: every change at a lower revision
    /// is seen, none at or above it. Inside a transaction at main revision `m` whose ops have made
    /// `c` changes so far, `bound = (m, c)` is what its next op sees: the store before the
    /// transaction and the transaction's changes until then (etcd's `storeTxnWrite` reads).
    pub fn range_before<R: ReadTxn + ?Sized>(
        &self,
        txn: &R,
        key: &[u8],
        range_end: &[u8],
        bound: Revision,
        f: &mut dyn FnMut(&KeyValue<'_>),
    ) -> Result<(), StoreError> {
        self.live_revisions(key, range_end, bound, &mut |rev| {
            let mut result = Ok(());
            let found = txn.get(Bucket::Key, &revision_key(rev, false), &mut |v| {
                result = codec::decode::<KeyValue<'_>>(Bucket::Key, v).map(|kv| f(&kv));
            })?;
            result?;
            if !found {
                return Err(StoreError::Corrupt { bucket: Bucket::Key, what: "indexed revision missing" });
            }
            Ok(())
        })
    }

    /// Calls `f`, in key order, with the revision of every key in `[key, range_end)` live just
    /// before `bound` (its last change below `bound` is not a delete). The one walk of the key
    /// index that reads and counts share.
    fn live_revisions(
        &self,
        key: &[u8],
        range_end: &[u8],
        bound: Revision,
        f: &mut dyn FnMut(Revision) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let seen = bound.main.saturating_sub(1);
        if seen < self.compact_rev {
            return Err(StoreError::Compacted { requested: seen, compacted: self.compact_rev });
        }
        let arena = self.arena.as_slice();
        let all = self.index.as_slice();
        let mut i = all.partition_point(|e| bytes_of(arena, e.span()) < key);
        while let Some(e) = all.get(i) {
            let k = bytes_of(arena, e.span());
            if !in_range(k, key, range_end) {
                break;
            }
            let run = self.entries_of(k);
            i += run.len().max(1);
            if let Some(rev) = run.iter().rev().find(|e| e.rev() < bound).filter(|e| !e.tombstone).map(|e| e.rev()) {
                f(rev)?;
            }
        }
        Ok(())
    }

    /// Calls `f` with every change the `key` bucket holds at main revision `from` or later, in
    /// revision order: its revision, whether it deleted the key, and its record (a tombstone's
    /// carries only the key), until `f` breaks. This is the history etcd's watchable store reads
    /// for watchers that are behind (`syncWatchers`: a range over the revision keys). A `from`
    /// below the compaction revision is refused: changes before it may be gone.
    pub fn history<R: ReadTxn + ?Sized>(
        &self,
        txn: &R,
        from: i64,
        f: &mut dyn FnMut(Revision, bool, &KeyValue<'_>) -> ControlFlow<()>,
    ) -> Result<(), StoreError> {
        if from < self.compact_rev {
            return Err(StoreError::Compacted { requested: from, compacted: self.compact_rev });
        }
        let start = revision_key(Revision { main: from.max(0), sub: 0 }, false);
        let mut result = Ok(());
        txn.scan(Bucket::Key, &start, &mut |k, v| {
            let Some((rev, tombstone)) = parse_revision_key(k) else {
                result = Err(StoreError::Corrupt { bucket: Bucket::Key, what: "a key that is not a revision" });
                return ControlFlow::Break(());
            };
            match codec::decode::<KeyValue<'_>>(Bucket::Key, v) {
                Ok(kv) => f(rev, tombstone, &kv),
                Err(e) => {
                    result = Err(e);
                    ControlFlow::Break(())
                }
            }
        })?;
        result
    }

    /// Puts `value` under `key` in a new revision, attached to `lease` (0 for none).
    pub(crate) fn put<W: WriteTxn + ?Sized>(
        &mut self,
        txn: &mut W,
        lessor: &mut Lessor<P>,
        key: &[u8],
        value: &[u8],
        lease: LeaseId,
        scratch: &mut P::Record,
    ) -> Result<i64, StoreError> {
        let mut change = Change::begin(self)?;
        self.put_in(txn, lessor, key, value, lease, &mut change, scratch)?;
        self.end(change);
        Ok(self.current_rev)
    }

    /// Puts `value` under `key` as part of `change`: the revision is `change`'s main revision
    /// and its next sub revision, as a put in an etcd write transaction (`storeTxnWrite.put`).
    /// The key's previous revision is the latest at or below `change`'s, so a key changed
    /// earlier in the same transaction is seen changed.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn put_in<W: WriteTxn + ?Sized>(
        &mut self,
        txn: &mut W,
        lessor: &mut Lessor<P>,
        key: &[u8],
        value: &[u8],
        lease: LeaseId,
        change: &mut Change,
        scratch: &mut P::Record,
    ) -> Result<(), StoreError> {
        if key.is_empty() {
            return Err(StoreError::InvalidRequest("empty key"));
        }
        if lease != 0 && lessor.lease(lease).is_none() {
            return Err(StoreError::NotFound("lease"));
        }
        let rev = change.next()?;
        let (mut create_revision, mut version, mut old_lease) = (rev.main, 1, 0);
        if let Some(prev) = self.visible(key, change.main) {
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
        Ok(())
    }

    /// Deletes every live key in `[key, range_end)` in one new revision; returns how many.
    ///
    /// Key by key, in key order, without collecting them first: a device has no room for a
    /// second list of keys.
    pub(crate) fn delete_range<W: WriteTxn + ?Sized>(
        &mut self,
        txn: &mut W,
        lessor: &mut Lessor<P>,
        key: &[u8],
        range_end: &[u8],
        scratch: &mut P::Record,
    ) -> Result<usize, StoreError> {
        let mut change = Change::begin(self)?;
        self.delete_in(txn, lessor, key, range_end, &mut change, scratch)?;
        Ok(self.end(change))
    }

    /// Deletes every live key in `[key, range_end)` as part of `change`: the tombstones take
    /// `change`'s main revision and its next sub revisions, as the deletions of one etcd write
    /// transaction do (`storeTxnWrite.delete`: sub revision = number of changes so far). The
    /// current revision moves when the change ends ([`KvStore::end`]).
    pub(crate) fn delete_in<W: WriteTxn + ?Sized>(
        &mut self,
        txn: &mut W,
        lessor: &mut Lessor<P>,
        key: &[u8],
        range_end: &[u8],
        change: &mut Change,
        scratch: &mut P::Record,
    ) -> Result<(), StoreError> {
        let mut i = {
            let arena = self.arena.as_slice();
            self.index.as_slice().partition_point(|e| bytes_of(arena, e.span()) < key)
        };
        while let Some(e) = self.index.as_slice().get(i).copied() {
            let span = e.span();
            let run = {
                let k = bytes_of(self.arena.as_slice(), span);
                if !in_range(k, key, range_end) {
                    break;
                }
                self.run_of(k)
            };
            let live = self.index.as_slice().get(run.clone()).and_then(|r| r.last()).filter(|e| !e.tombstone).copied();
            i = run.end;
            let Some(last) = live else { continue };
            let mut lease = 0;
            let mut result = Ok(());
            txn.get(Bucket::Key, &revision_key(last.rev(), false), &mut |v| {
                result = codec::decode::<KeyValue<'_>>(Bucket::Key, v).map(|kv| lease = kv.lease);
            })?;
            result?;
            let rev = change.next()?;
            {
                let k = bytes_of(self.arena.as_slice(), span);
                // etcd's tombstone record carries only the key (`mvccpb.KeyValue{Key: key}`).
                let kv = KeyValue { key: k, create_revision: 0, mod_revision: 0, version: 0, value: &[], lease: 0 };
                codec::put(txn, Bucket::Key, &revision_key(rev, true), &kv, scratch)?;
                if lease != 0 {
                    lessor.detach(lease, k);
                }
            }
            self.index
                .try_insert(run.end, IndexEntry::new(rev, span, true)?)
                .map_err(|_| CapacityError { what: "key index" })?;
            i = run.end + 1;
        }
        Ok(())
    }

    /// Ends `change`: the current revision becomes its main revision if it changed anything
    /// (etcd's `storeTxnWrite.End`: a transaction without changes makes no revision). Returns
    /// the number of changes.
    pub(crate) fn end(&mut self, change: Change) -> usize {
        if change.changes > 0 {
            self.current_rev = change.main;
        }
        usize::try_from(change.changes).unwrap_or(usize::MAX)
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

    /// Whether compacting at `rev` keeps the entry at `i`: every revision after `rev`, and the
    /// latest revision `<= rev` of its key unless it is a tombstone older than `rev`.
    ///
    /// A tombstone at exactly `rev` is kept, as etcd 3.6 keeps it (`keyIndex.doCompact` stops at
    /// the generation whose tombstone is `>= atRev`, etcd PR #17555, also in 3.5.13 and 3.4.31);
    /// older etcd releases (3.4.23, 3.5.1) drop it. `docs/etcd-differences.md` lists this.
    fn survives(&self, i: usize, rev: i64) -> bool {
        let all = self.index.as_slice();
        let Some(e) = all.get(i) else { return true };
        if e.main > rev {
            return true;
        }
        let next_same_key = all.get(i + 1).filter(|n| n.span() == e.span() || self.key_of(n) == self.key_of(e));
        let latest = next_same_key.is_none_or(|n| n.main > rev);
        latest && (!e.tombstone || e.main == rev)
    }

    /// Compacts at `rev`: for each key, drops every revision before its latest revision `<= rev`,
    /// and that one too if it is a tombstone older than `rev`, from the `key` bucket and from
    /// the index.
    pub(crate) fn compact<W: WriteTxn + ?Sized>(&mut self, txn: &mut W, rev: i64) -> Result<(), StoreError> {
        for i in 0..self.index.len() {
            if !self.survives(i, rev)
                && let Some(e) = self.index.as_slice().get(i)
            {
                txn.delete(Bucket::Key, &revision_key(e.rev(), e.tombstone))?;
            }
        }
        // The backend is done; now drop the same entries from the index, in place. An entry's
        // fate depends on the next one, which is read before anything is moved over it.
        let len = self.index.len();
        let mut kept = 0;
        for i in 0..len {
            if self.survives(i, rev) {
                self.index.as_mut_slice().swap(kept, i);
                kept += 1;
            }
        }
        self.index.truncate_to(kept);
        txn.put(Bucket::Meta, META_FINISHED_COMPACT, &rev.to_be_bytes())?;
        self.compact_rev = rev;
        Ok(())
    }

    /// Empties the store in its own memory, as a fresh store: no entry, no key byte, revision
    /// 1, no compaction. A device has no room for a second store to replace it with.
    pub(crate) fn clear(&mut self) {
        self.index.clear_all();
        self.arena.clear_all();
        self.current_rev = 1;
        self.compact_rev = -1;
    }

    /// Rebuilds the store in place from the `key` and `meta` buckets of `backend` (etcd's
    /// `kvstore.restore`): the index with generations and tombstones, the current and compacted
    /// revisions, keys reattached to `lessor`'s leases, and an unfinished scheduled compaction
    /// resumed and committed on `backend` through `cindex`.
    ///
    /// In place: the index and the arena are cleared and refilled, so no second store exists
    /// (a store of the reference profile is 24 KiB). If it fails, the store holds what was read
    /// so far; callers read it back or drop it.
    pub(crate) fn restore_into<B: Backend>(
        &mut self,
        backend: &mut B,
        lessor: &mut Lessor<P>,
        cindex: &ConsistentIndex,
    ) -> Result<(), StoreError> {
        let scheduled = self.load_into(&backend.read()?, lessor)?;
        if let Some(scheduled) = scheduled {
            crate::fmt::info!("resume scheduled compaction: scheduled-compact-revision {}", scheduled);
            let mut txn = backend.write()?;
            self.compact(&mut txn, scheduled)?;
            cindex.commit(txn)?;
            // etcd: the current revision is never below the compacted one.
            self.current_rev = self.current_rev.max(self.compact_rev);
        }
        Ok(())
    }

    /// Reads a store as [`KvStore::load_into`] does, into a new one: for a host that builds a
    /// store beside the live one ([`crate::pipeline::Prebuilt`]).
    pub(crate) fn load<R: ReadTxn + ?Sized>(
        txn: &R,
        lessor: &mut Lessor<P>,
    ) -> Result<(Self, Option<i64>), StoreError> {
        let mut store = KvStore::<P>::default();
        let scheduled = store.load_into(txn, lessor)?;
        Ok((store, scheduled))
    }

    /// Reads the store in place as [`KvStore::restore_into`] does, without committing; returns
    /// the scheduled compaction revision if a compaction is unfinished.
    pub(crate) fn load_into<R: ReadTxn + ?Sized>(
        &mut self,
        txn: &R,
        lessor: &mut Lessor<P>,
    ) -> Result<Option<i64>, StoreError> {
        self.clear();
        let store = self;
        let finished = codec::get_u64(txn, Bucket::Meta, META_FINISHED_COMPACT)?.map(|v| v as i64);
        let scheduled = codec::get_u64(txn, Bucket::Meta, META_SCHEDULED_COMPACT)?.map(|v| v as i64);
        codec::scan(txn, Bucket::Key, |k, v| store.restore_one(k, v))?;
        // Entries were pushed in revision order; one sort puts them in key order, which keeps the
        // restore O(n log n) however the keys interleave. Keys were interned as they came, so a
        // key's revisions may hold copies of its bytes; `dedup_keys` shares them.
        {
            let arena = store.arena.as_slice();
            store.index.as_mut_slice().sort_unstable_by(|a, b| {
                (bytes_of(arena, a.span()), a.rev()).cmp(&(bytes_of(arena, b.span()), b.rev()))
            });
        }
        store.dedup_keys();
        let duplicate = {
            let index = store.index.as_slice();
            index.windows(2).any(|w| matches!(w, [a, b] if a.span() == b.span() && a.rev() == b.rev()))
        };
        if duplicate {
            return Err(StoreError::Corrupt { bucket: Bucket::Key, what: "revision written twice" });
        }
        // Reattach every key's latest live revision to its lease (read from its record: the
        // index keeps no lease, which saves 8 bytes per revision).
        let index = store.index.as_slice();
        let arena = store.arena.as_slice();
        for (i, e) in index.iter().enumerate() {
            let latest = index.get(i + 1).is_none_or(|n| n.span() != e.span());
            if !latest || e.tombstone {
                continue;
            }
            let mut lease = 0;
            let mut result = Ok(());
            txn.get(Bucket::Key, &revision_key(e.rev(), false), &mut |v| {
                result = codec::decode::<KeyValue<'_>>(Bucket::Key, v).map(|kv| lease = kv.lease);
            })?;
            result?;
            if lease != 0 {
                lessor.attach_restored(lease, bytes_of(arena, e.span()))?;
            }
        }
        lessor.finish_attaching();
        if let Some(finished) = finished {
            store.compact_rev = finished;
        }
        if store.current_rev < store.compact_rev {
            store.current_rev = store.compact_rev;
        }
        Ok(scheduled.filter(|s| *s > store.compact_rev))
    }

    /// Makes the revisions of a key share one copy of its bytes (the index is sorted) and
    /// reclaims the copies.
    fn dedup_keys(&mut self) {
        let mut changed = false;
        for i in 1..self.index.len() {
            let (prev, cur) = match (self.index.as_slice().get(i - 1), self.index.as_slice().get(i)) {
                (Some(p), Some(c)) => (*p, *c),
                _ => break,
            };
            if prev.span() != cur.span()
                && self.key_of(&prev) == self.key_of(&cur)
                && let Some(e) = self.index.as_mut_slice().get_mut(i)
            {
                e.set_span(prev.span());
                changed = true;
            }
        }
        if changed {
            self.reclaim();
        }
    }

    fn restore_one(&mut self, k: &[u8], v: &[u8]) -> Result<(), StoreError> {
        let (rev, tombstone) =
            parse_revision_key(k).ok_or(StoreError::Corrupt { bucket: Bucket::Key, what: "malformed revision key" })?;
        let kv = codec::decode::<KeyValue<'_>>(Bucket::Key, v)?;
        // Share the bytes with the previous revision of the same key when it was the last one
        // interned (a key's revisions are often adjacent); `dedup_keys` catches the rest.
        let last = self.index.as_slice().last().copied();
        let span = match last {
            Some(e) if self.key_of(&e) == kv.key => e.span(),
            _ => {
                let len = key_len::<P>(kv.key)?;
                if self.arena.try_extend(kv.key).is_err() {
                    self.reclaim();
                    self.arena.try_extend(kv.key).map_err(|_| CapacityError { what: "key index arena" })?;
                }
                Span { offset: (self.arena.len() - kv.key.len()) as u32, len }
            }
        };
        codec::push(&mut self.index, IndexEntry::new(rev, span, tombstone)?, "key index")?;
        if rev.main > self.current_rev {
            self.current_rev = rev.main;
        }
        Ok(())
    }
}

/// The longest key the key index of profile `P` holds: its key arena's size on a device (a
/// longer key cannot be stored however empty the arena is), `u32::MAX` bytes on a host (the
/// key index's length field; etcd's own limit, the request size, is far below).
pub const fn max_key_len<P: Profile>() -> usize {
    let arena = <P::KeyArena as Seq<u8>>::CAPACITY;
    if arena < u32::MAX as usize { arena } else { u32::MAX as usize }
}

/// `key`'s length for the key index, or [`StoreError::KeyTooLong`] naming the profile's limit
/// (a valid key this node cannot hold, not a corrupt record).
fn key_len<P: Profile>(key: &[u8]) -> Result<u32, StoreError> {
    let limit = max_key_len::<P>();
    match u32::try_from(key.len()) {
        Ok(len) if key.len() <= limit => Ok(len),
        _ => Err(StoreError::KeyTooLong { len: key.len() as u64, limit: limit as u64 }),
    }
}

/// Whether `k` is in etcd's range `[key, range_end)`: an empty `range_end` is `key` alone,
/// `[0]` every key from `key` on.
pub fn in_range(k: &[u8], key: &[u8], range_end: &[u8]) -> bool {
    match range_end {
        [] => k == key,
        [0] => k >= key,
        end => k >= key && k < end,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A revision key round-trips through `revision_key` and `parse_revision_key`; anything
    /// else (a wrong length or separator, a trailing byte other than `t`, a negative main or
    /// sub revision) is not a revision key.
    #[test]
    fn revision_keys_parse_as_etcd_writes_them_and_nothing_else() {
        for (rev, tombstone) in [(Revision { main: 5, sub: 1 }, false), (Revision { main: 7, sub: 0 }, true)] {
            assert_eq!(parse_revision_key(&revision_key(rev, tombstone)), Some((rev, tombstone)));
        }
        let good = revision_key(Revision { main: 5, sub: 1 }, false);
        let mut bad_separator = good.clone();
        bad_separator[8] = b'-';
        let mut bad_mark = revision_key(Revision { main: 5, sub: 1 }, true);
        bad_mark[17] = b'x';
        let negative_main = revision_key(Revision { main: -1, sub: 0 }, false);
        let negative_sub = revision_key(Revision { main: 1, sub: -1 }, false);
        for bad in [&good[..16], &bad_separator[..], &bad_mark[..], &negative_main[..], &negative_sub[..]] {
            assert_eq!(parse_revision_key(bad), None, "{bad:?}");
        }
    }
}
