//! The backend on one flash area: a log of transactions and a sorted index of record offsets
//! in RAM (4 bytes per live record), held in one of the two slots of an [`Indexes`].

use core::cell::{RefCell, RefMut};

use embedded_storage::nor_flash::NorFlash;
use heapless::Vec;
use snapply_core::backend::{Backend, BackendError, BackendErrorKind, Bucket, ReadTxn, Visit, WriteTxn};

use crate::chip::{self, Geometry, Payload, Result};
use crate::error::FlashError;
use crate::log::{
    self, AreaKind, AreaState, CRC, Header, K_BEGIN, K_CLEAR, K_COMMIT, K_DELETE, K_PUT, Scanned, SnapInfo,
};

/// The consistent index key of the `meta` bucket (etcd's `consistent_index`).
const CONSISTENT_INDEX: &[u8] = b"consistent_index";

/// The RAM the record indexes of a flash's backends live in: two slots of `N` records (4 bytes
/// each), one for the backend a node runs on and one for the backend of a snapshot being
/// restored. Give the same `Indexes` to [`crate::mount`] and to [`crate::FlashSnapshotStore::new`].
///
/// A [`FlashBackend`] takes a free slot when it is opened and gives it back when it is dropped;
/// it refers to its slot rather than holding the index, so a backend is a few dozen bytes
/// whatever `N` is, and moving it (through the pipeline's states, into and out of a node) copies
/// no index. Opening a third backend while two are alive fails with [`FlashError::Misuse`].
pub struct Indexes<const N: usize> {
    slots: [RefCell<Vec<u32, N>>; 2],
}

impl<const N: usize> Indexes<N> {
    /// Two empty slots.
    pub const fn new() -> Self {
        Indexes { slots: [RefCell::new(Vec::new()), RefCell::new(Vec::new())] }
    }

    /// Number of slots in use (held by a live backend).
    pub fn in_use(&self) -> usize {
        self.slots.iter().filter(|s| s.try_borrow_mut().is_err()).count()
    }

    /// A free slot, emptied.
    fn claim<E>(&self) -> core::result::Result<RefMut<'_, Vec<u32, N>>, FlashError<E>> {
        let mut slot = self
            .slots
            .iter()
            .find_map(|s| s.try_borrow_mut().ok())
            .ok_or(FlashError::Misuse("both record index slots are held by live backends"))?;
        slot.clear();
        Ok(slot)
    }
}

impl<const N: usize> Default for Indexes<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> core::fmt::Debug for Indexes<N> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Indexes").field("records", &N).field("in_use", &self.in_use()).finish()
    }
}

/// A bucketed key-value backend on one area of a NOR flash (see FORMAT.md).
///
/// `N` is the most live records it holds: the index keeps one `u32` offset per record, sorted
/// by bucket and key, in a slot of the flash's [`Indexes`], and reads compare keys on flash. `R` is the largest record
/// (key + value bytes) it accepts: reads copy a record into an `R`-byte stack buffer to hand it
/// out as slices, and a put of a larger record is a `Full` error.
///
/// A write transaction appends frames to the area's log and updates the index in place, so it
/// reads its own writes; commit appends a commit frame with the transaction's CRC. Dropping it
/// rebuilds the index from flash, where the uncommitted frames are ignored. When the area is
/// nearly full, beginning a write transaction first compacts the live records into the other
/// area and makes that one the committed area, unless the other area holds a pending snapshot.
/// A transaction that runs out of room compacts the committed records the same way and goes on
/// in the other area, its frames so far copied after them; it fails with `Full` only if the
/// live records and it do not fit one area.
pub struct FlashBackend<'f, F: NorFlash, const N: usize, const R: usize> {
    flash: &'f RefCell<F>,
    geo: Geometry,
    area: u8,
    epoch: u32,
    tail: u32,
    index: RefMut<'f, Vec<u32, N>>,
    snap: Option<SnapInfo>,
    poisoned: bool,
    compact_next: bool,
}

impl<F: NorFlash, const N: usize, const R: usize> core::fmt::Debug for FlashBackend<'_, F, N, R> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("FlashBackend")
            .field("area", &self.area)
            .field("epoch", &self.epoch)
            .field("tail", &self.tail)
            .field("records", &self.index.len())
            .field("poisoned", &self.poisoned)
            .finish_non_exhaustive()
    }
}

#[cfg(feature = "defmt")]
impl<F: NorFlash, const N: usize, const R: usize> defmt::Format for FlashBackend<'_, F, N, R> {
    fn format(&self, f: defmt::Formatter<'_>) {
        defmt::write!(
            f,
            "FlashBackend {{ area: {}, epoch: {}, tail: {}, records: {}, poisoned: {} }}",
            self.area,
            self.epoch,
            self.tail,
            self.index.len(),
            self.poisoned
        )
    }
}

/// A read view of a [`FlashBackend`].
#[derive(Debug)]
pub struct FlashRead<'b, 'f, F: NorFlash, const N: usize, const R: usize> {
    backend: &'b FlashBackend<'f, F, N, R>,
}

/// A write transaction of a [`FlashBackend`].
pub struct FlashWrite<'b, 'f, F: NorFlash, const N: usize, const R: usize> {
    backend: &'b mut FlashBackend<'f, F, N, R>,
    digest: Option<crc::Digest<'static, u32>>,
    done: bool,
    /// The transaction wrote snapshot frames (metadata, v2 data).
    snapshot_frames: bool,
    /// Where its `K_BEGIN` frame is, once written.
    begun: Option<u32>,
    /// Moving it into a compacted area failed: its earlier writes are gone from the index, so
    /// it takes no more writes and does not commit.
    lost: bool,
}

impl<'f, F: NorFlash, const N: usize, const R: usize> FlashBackend<'f, F, N, R> {
    /// Opens the backend of `area` by scanning its log, its index in a free slot of `indexes`.
    pub(crate) fn open(
        flash: &'f RefCell<F>,
        indexes: &'f Indexes<N>,
        geo: Geometry,
        area: u8,
        epoch: u32,
    ) -> Result<Self, F> {
        let mut backend = Self::fresh(flash, indexes, geo, area, epoch)?;
        let mut key = [0u8; R];
        let scanned = log::scan(flash, &geo, geo.base(area), Some(backend.index.as_mut_view()), &mut key, false)?;
        backend.tail = scanned.tail;
        backend.snap = scanned.snap;
        Ok(backend)
    }

    /// An empty backend on a freshly formatted `area`, its index in a free slot of `indexes`.
    pub(crate) fn fresh(
        flash: &'f RefCell<F>,
        indexes: &'f Indexes<N>,
        geo: Geometry,
        area: u8,
        epoch: u32,
    ) -> Result<Self, F> {
        Ok(FlashBackend {
            flash,
            geo,
            area,
            epoch,
            tail: geo.base(area) + geo.log_start,
            index: indexes.claim()?,
            snap: None,
            poisoned: false,
            compact_next: false,
        })
    }

    /// Which area (0 or 1) the backend lives on.
    pub fn area(&self) -> u8 {
        self.area
    }

    /// The area's epoch: it grows by one with each snapshot or compaction.
    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    /// Number of live records.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Whether the backend holds no record.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Bytes of the area's log in use, and the area's size.
    pub fn usage(&self) -> (u32, u32) {
        (self.tail - self.geo.base(self.area), self.geo.area_len)
    }

    /// The v2 data of the snapshot this area was restored from (kept through compactions),
    /// read into `buf`; empty if the area holds none. A node that boots without a pending
    /// snapshot recovers its v2 store from it.
    pub fn v2_data<'a>(&self, buf: &'a mut [u8]) -> Result<&'a [u8], F> {
        match &self.snap {
            Some(snap) => crate::store::read_v2(self.flash, &self.geo, snap, buf),
            None => Ok(&[]),
        }
    }

    /// The metadata and image digest of the snapshot this area was restored from, if any.
    pub fn snapshot(&self) -> Result<Option<(snapply_core::SnapshotMetadata, [u8; 32])>, F> {
        match &self.snap {
            Some(snap) if snap.frame != 0 => crate::store::read_snap(self.flash, &self.geo, snap.frame).map(Some),
            _ => Ok(None),
        }
    }

    pub(crate) fn snap(&self) -> Option<SnapInfo> {
        self.snap
    }

    /// The consistent index the backend reflects (`meta`/`consistent_index`), 0 if absent.
    pub(crate) fn consistent_index(&self) -> Result<u64, F> {
        let mut value = [0u8; 8];
        let mut ok = false;
        self.get_inner(Bucket::Meta, CONSISTENT_INDEX, &mut |v| {
            if let Ok(b) = <[u8; 8]>::try_from(v) {
                value = b;
                ok = true;
            }
        })?;
        Ok(if ok { u64::from_be_bytes(value) } else { 0 })
    }

    fn get_inner(&self, bucket: Bucket, key: &[u8], f: &mut dyn FnMut(&[u8])) -> Result<bool, F> {
        match log::find(self.flash, &self.geo, self.index.as_view(), bucket, key)? {
            Ok(i) => {
                let pos = *self.index.get(i).ok_or(FlashError::Misuse("index lookup"))?;
                let mut buf = [0u8; R];
                let (k, v) = self.record(pos, &mut buf)?;
                let _ = k;
                f(v);
                Ok(true)
            }
            Err(_) => Ok(false),
        }
    }

    /// Reads the record at `pos` into `buf`; returns its key and value.
    fn record<'a>(&self, pos: u32, buf: &'a mut [u8]) -> Result<(&'a [u8], &'a [u8]), F> {
        let h = log::valid_header_at(self.flash, pos)?;
        let (klen, vlen) = (usize::from(h.klen), h.vlen as usize);
        let all = buf.get_mut(..klen + vlen).ok_or(FlashError::Full("a record is larger than the read buffer"))?;
        chip::read(self.flash, pos + self.geo.header, all)?;
        Ok(all.split_at(klen))
    }

    fn scan_inner(&self, bucket: Bucket, from: &[u8], f: &mut Visit<'_>) -> Result<(), F> {
        let mut i = log::find(self.flash, &self.geo, self.index.as_view(), bucket, from)?.unwrap_or_else(|i| i);
        let mut buf = [0u8; R];
        while let Some(pos) = self.index.get(i).copied() {
            let h = log::valid_header_at(self.flash, pos)?;
            if h.bucket != bucket.id() {
                break;
            }
            let (k, v) = self.record(pos, &mut buf)?;
            if f(k, v).is_break() {
                break;
            }
            i += 1;
        }
        Ok(())
    }

    /// Appends one frame; the tail moves before the write, so a failed write is never written
    /// over, and the backend refuses further writes until mounted again.
    pub(crate) fn append(
        &mut self,
        h: &Header,
        payload: &Payload<'_>,
        digest: Option<&mut crc::Digest<'static, u32>>,
    ) -> Result<u32, F> {
        if self.poisoned {
            return Err(FlashError::Poisoned);
        }
        let end = self.geo.base(self.area) + self.geo.area_len;
        match append_at(self.flash, &self.geo, end, &mut self.tail, h, payload, digest) {
            Ok(pos) => Ok(pos),
            Err(e @ FlashError::Full(_)) => {
                self.compact_next = true;
                Err(e)
            }
            Err(e) => {
                self.poisoned = true;
                Err(e)
            }
        }
    }

    /// Rebuilds the index from flash (after a dropped transaction).
    fn reload(&mut self) -> Result<(), F> {
        self.index.clear();
        let mut key = [0u8; R];
        let scanned = log::scan(
            self.flash,
            &self.geo,
            self.geo.base(self.area),
            Some(self.index.as_mut_view()),
            &mut key,
            false,
        )?;
        self.tail = self.tail.max(scanned.tail);
        self.snap = scanned.snap;
        Ok(())
    }

    /// Whether the other area holds a complete snapshot newer than this backend's state.
    fn other_is_pending(&self) -> Result<bool, F> {
        let other = 1 - (self.area & 1);
        let state: AreaState = log::area_state(self.flash, &self.geo, other)?;
        let Some(h) = state.header else { return Ok(false) };
        if h.kind != AreaKind::Snapshot || state.activated || h.epoch <= self.epoch {
            return Ok(false);
        }
        let mut key = [0u8; 0];
        let scanned = log::scan(self.flash, &self.geo, self.geo.base(other), None, &mut key, true)?;
        let Some(snap) = scanned.snap else { return Ok(false) };
        let index = crate::store::snapshot_index(self.flash, &self.geo, snap.frame)?;
        Ok(index > self.consistent_index()?)
    }

    /// Why this area cannot be compacted now, if it cannot: only the committed area compacts
    /// (a snapshot area not yet flipped, where the pipeline's own commits land, or a stale
    /// handle on a superseded area must never erase the area that holds the committed state),
    /// and never over a pending snapshot.
    fn compaction_refused(&self) -> Result<Option<&'static str>, F> {
        if self.poisoned {
            return Err(FlashError::Poisoned);
        }
        let other = 1 - (self.area & 1);
        let mine = log::area_state(self.flash, &self.geo, self.area)?;
        let theirs = log::area_state(self.flash, &self.geo, other)?;
        let committed = mine.activated
            && mine.header.map(|h| h.epoch) == Some(self.epoch)
            && !(theirs.activated && theirs.header.is_some_and(|h| h.epoch > self.epoch));
        if !committed {
            return Ok(Some("the flash area is full and is not the committed one"));
        }
        if self.other_is_pending()? {
            return Ok(Some("the flash area is full and the other one holds a pending snapshot"));
        }
        Ok(None)
    }

    /// Copies the live records and the snapshot frames into the other area, then writes its
    /// commit record: from that write on, the other area is the committed one.
    fn compact(&mut self) -> Result<(), F> {
        if let Some(why) = self.compaction_refused()? {
            return Err(FlashError::Full(why));
        }
        let other = 1 - (self.area & 1);
        let epoch = self.epoch.checked_add(1).ok_or(FlashError::Full("area epochs exhausted"))?;
        crate::fmt::info!("compacting flash area {} into area {}", self.area, other);
        // The target is written through a bare tail rather than a second backend, and the index
        // is rewritten in place as records move (their order does not change): a compaction
        // costs no second index in RAM. If it fails, the index is read back from this area,
        // which is still the committed one.
        let end = self.geo.base(other) + self.geo.area_len;
        let mut tail = self.geo.base(other) + self.geo.log_start;
        let result = (|| {
            log::format_area(self.flash, &self.geo, other, AreaKind::Compaction, epoch)?;
            let mut digest = CRC.digest();
            let begin = Header { kind: K_BEGIN, bucket: 0, klen: 0, vlen: 0 };
            append_at(self.flash, &self.geo, end, &mut tail, &begin, &Payload::Slices(&[]), Some(&mut digest))?;
            for i in 0..self.index.len() {
                let slot = self.index.get_mut(i).ok_or(FlashError::Misuse("compaction index"))?;
                *slot = copy_frame(self.flash, &self.geo, end, &mut tail, *slot, &mut digest)?;
            }
            if let Some(snap) = self.snap {
                let mut pos = snap.v2_first.unwrap_or(snap.frame);
                // The v2 frames run up to the snapshot frame, which comes last.
                loop {
                    let h = log::valid_header_at(self.flash, pos)?;
                    copy_frame(self.flash, &self.geo, end, &mut tail, pos, &mut digest)?;
                    if pos >= snap.frame {
                        break;
                    }
                    pos = log::next_frame(&self.geo, pos, &h)?;
                }
            }
            let commit = Header { kind: K_COMMIT, bucket: 0, klen: 0, vlen: digest.finalize() };
            append_at(self.flash, &self.geo, end, &mut tail, &commit, &Payload::Slices(&[]), None)?;
            log::activate(self.flash, &self.geo, other, epoch)
        })();
        match result {
            Ok(()) => {
                let mut key = [0u8; 0];
                let scanned = log::scan(self.flash, &self.geo, self.geo.base(other), None, &mut key, false)?;
                self.area = other;
                self.epoch = epoch;
                self.tail = tail;
                self.snap = scanned.snap;
                self.compact_next = false;
                Ok(())
            }
            Err(e) => {
                if matches!(e, FlashError::Flash { .. }) || self.reload().is_err() {
                    self.poisoned = true;
                }
                Err(e)
            }
        }
    }

    /// Compacts while a transaction is in flight, if the area can be compacted (else returns
    /// false, having changed nothing): the committed records go into the other area as
    /// [`Self::compact`] copies them, then the transaction's frames so far (from its `K_BEGIN`
    /// at `begun` to the tail) are copied after them, byte for byte (so its CRC still holds),
    /// and applied to the index again. A cut anywhere leaves the committed state in one area or
    /// the other and the transaction uncommitted, as any cut before its commit frame does.
    ///
    /// Not inlined: its key buffer would otherwise sit in the frame of every write, under the
    /// deepest frame of a restore on a device (BENCHMARKS.md, "Firmware").
    #[inline(never)]
    fn compact_in_flight(&mut self, begun: Option<u32>) -> Result<bool, F> {
        if self.compaction_refused()?.is_some() {
            return Ok(false);
        }
        let Some(begun) = begun else {
            self.compact()?;
            return Ok(true);
        };
        let old_tail = self.tail;
        // The compaction copies what is committed: the index goes back to that first.
        self.reload()?;
        self.compact()?;
        let end = self.geo.base(self.area) + self.geo.area_len;
        let start = self.tail;
        let copied = (|| {
            let mut unused = CRC.digest();
            let mut pos = begun;
            while pos < old_tail {
                let h = log::valid_header_at(self.flash, pos)?;
                copy_frame(self.flash, &self.geo, end, &mut self.tail, pos, &mut unused)?;
                pos = log::next_frame(&self.geo, pos, &h)?;
            }
            let mut key = [0u8; R];
            let mut scanned = Scanned { tail: self.tail, snap: None, txns: 0, torn: false };
            let index = self.index.as_mut_view();
            log::replay(self.flash, &self.geo, start, self.tail, Some(index), &mut key, &mut scanned)
        })();
        if let Err(e) = copied {
            // The index must say what the flash commits.
            if matches!(e, FlashError::Flash { .. }) || self.reload().is_err() {
                self.poisoned = true;
            }
            return Err(e);
        }
        Ok(true)
    }

    fn begin(&mut self) -> Result<(), F> {
        if self.poisoned {
            return Err(FlashError::Poisoned);
        }
        let (used, len) = self.usage();
        if self.compact_next || len - used < len / 8 {
            match self.compact() {
                Ok(()) => {}
                // An area whose compaction is blocked by a pending snapshot still takes the
                // transactions that fit; the others fail with `Full`.
                Err(FlashError::Full(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// Appends one frame at `*tail` in an area ending at `end`; the tail moves before the write,
/// so a failed write is never written over.
fn append_at<F: NorFlash>(
    flash: &RefCell<F>,
    geo: &Geometry,
    end: u32,
    tail: &mut u32,
    h: &Header,
    payload: &Payload<'_>,
    mut digest: Option<&mut crc::Digest<'static, u32>>,
) -> Result<u32, F> {
    let pos = *tail;
    let next = log::next_frame(geo, pos, h)?;
    if next > end {
        return Err(FlashError::Full("the flash area is full"));
    }
    *tail = next;
    let raw = h.encode();
    if let Some(d) = digest.as_deref_mut() {
        d.update(&raw);
    }
    chip::write_small(flash, pos, &raw, geo.header)?;
    if h.payload_len() != 0 {
        chip::write_payload(flash, pos + geo.header, payload, geo.align, digest)?;
    }
    Ok(pos)
}

/// Copies the frame at `pos` (of another area) to `*tail`.
fn copy_frame<F: NorFlash>(
    flash: &RefCell<F>,
    geo: &Geometry,
    end: u32,
    tail: &mut u32,
    pos: u32,
    digest: &mut crc::Digest<'static, u32>,
) -> Result<u32, F> {
    let h = log::valid_header_at(flash, pos)?;
    let payload = Payload::Flash { addr: pos + geo.header, len: h.payload_len() };
    append_at(flash, geo, end, tail, &h, &payload, Some(digest))
}

impl<F: NorFlash, const N: usize, const R: usize> core::fmt::Debug for FlashWrite<'_, '_, F, N, R> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("FlashWrite").field("backend", &self.backend).field("begun", &self.digest.is_some()).finish()
    }
}

impl<'f, F: NorFlash, const N: usize, const R: usize> FlashWrite<'_, 'f, F, N, R> {
    fn frame(&mut self, kind: u8, bucket: Bucket, key: &[u8], value: &[u8]) -> Result<u32, F> {
        if self.done {
            return Err(FlashError::Misuse("writing to a finished transaction"));
        }
        let klen = u16::try_from(key.len()).map_err(|_| FlashError::Full("a key longer than 65535 bytes"))?;
        let vlen = u32::try_from(value.len()).map_err(|_| FlashError::Full("a value longer than 4 GiB"))?;
        if self.lost {
            return Err(FlashError::Misuse("writing to a transaction that could not be moved to the compacted area"));
        }
        if self.digest.is_none() {
            self.digest = Some(CRC.digest());
            let begin = Header { kind: K_BEGIN, bucket: 0, klen: 0, vlen: 0 };
            match self.append(&begin, &Payload::Slices(&[]), true) {
                Ok(pos) => self.begun = Some(pos),
                Err(e) => {
                    self.digest = None;
                    return Err(e);
                }
            }
        }
        let h = Header { kind, bucket: bucket.id(), klen, vlen };
        self.append(&h, &Payload::Slices(&[key, value]), true)
    }

    /// Appends one frame of the transaction (into its digest if `digested`); if the area is full,
    /// compacts it and goes on in the other area ([`FlashBackend::compact_in_flight`]), unless
    /// the transaction writes a snapshot (into an area that is not committed).
    fn append(&mut self, h: &Header, payload: &Payload<'_>, digested: bool) -> Result<u32, F> {
        let digest = if digested { self.digest.as_mut() } else { None };
        match self.backend.append(h, payload, digest) {
            Err(FlashError::Full(why)) if !self.snapshot_frames => {
                // Until the frames are copied, the index holds only the committed records.
                self.lost = self.begun.is_some();
                if !self.backend.compact_in_flight(self.begun)? {
                    self.lost = false;
                    return Err(FlashError::Full(why));
                }
                self.lost = false;
                let digest = if digested { self.digest.as_mut() } else { None };
                self.backend.append(h, payload, digest)
            }
            other => other,
        }
    }

    /// Appends a frame that is not a bucket record (snapshot metadata, v2 data).
    pub(crate) fn raw_frame(&mut self, kind: u8, value: &[u8]) -> Result<u32, F> {
        self.snapshot_frames = true;
        self.frame(kind, Bucket::Key, &[], value)
    }

    fn put_inner(&mut self, bucket: Bucket, key: &[u8], value: &[u8]) -> Result<(), F> {
        // A record must fit the read buffer to be read back; snapshot frames (metadata, v2
        // chunks of up to 1 KiB) are read through their own buffers and are not limited by `R`.
        if key.len().saturating_add(value.len()) > R {
            return Err(FlashError::Full("a record is larger than the backend's record buffer"));
        }
        let pos = self.frame(K_PUT, bucket, key, value)?;
        let b = &mut *self.backend;
        match log::find(b.flash, &b.geo, b.index.as_view(), bucket, key)? {
            Ok(i) => {
                if let Some(slot) = b.index.get_mut(i) {
                    *slot = pos;
                }
            }
            Err(i) => b.index.insert(i, pos).map_err(|_| FlashError::Full("the record index is full"))?,
        }
        Ok(())
    }

    fn delete_inner(&mut self, bucket: Bucket, key: &[u8]) -> Result<bool, F> {
        let b = &*self.backend;
        let Ok(i) = log::find(b.flash, &b.geo, b.index.as_view(), bucket, key)? else { return Ok(false) };
        self.frame(K_DELETE, bucket, key, &[])?;
        if i < self.backend.index.len() {
            self.backend.index.remove(i);
        }
        Ok(true)
    }

    fn clear_inner(&mut self, bucket: Bucket) -> Result<(), F> {
        let b = &*self.backend;
        let (lo, hi) = log::bucket_range(b.flash, &b.geo, b.index.as_view(), bucket)?;
        if lo == hi {
            // Nothing to clear: a snapshot written into a fresh area costs no clear frames.
            return Ok(());
        }
        self.frame(K_CLEAR, bucket, &[], &[])?;
        let b = &mut *self.backend;
        log::clear_bucket(b.flash, &b.geo, b.index.as_mut_view(), bucket)?;
        Ok(())
    }

    pub(crate) fn commit_inner(mut self) -> Result<(), F> {
        if self.lost {
            return Err(FlashError::Misuse("committing a transaction that could not be moved to the compacted area"));
        }
        self.done = true;
        let Some(d) = self.digest.take() else { return Ok(()) };
        let crc = d.finalize();
        let committed =
            self.append(&Header { kind: K_COMMIT, bucket: 0, klen: 0, vlen: crc }, &Payload::Slices(&[]), false);
        if let Err(e) = committed {
            // Whether the commit frame reached the flash or not, the index must say what the
            // flash says.
            let _ = self.backend.reload();
            return Err(e);
        }
        let b = &mut *self.backend;
        if self.snapshot_frames {
            // The snapshot transaction wrote its own frames: find them for `v2_data`.
            let mut key = [0u8; 0];
            let scanned = log::scan(b.flash, &b.geo, b.geo.base(b.area), None, &mut key, true)?;
            b.snap = scanned.snap;
        }
        Ok(())
    }
}

impl<F: NorFlash, const N: usize, const R: usize> Drop for FlashWrite<'_, '_, F, N, R> {
    fn drop(&mut self) {
        if !self.done && self.digest.is_some() {
            // The frames written stay on flash without a commit frame, which every scan
            // ignores; the index goes back to what the flash commits. If even that fails, the
            // backend refuses to work until mounted again.
            if self.backend.reload().is_err() {
                self.backend.poisoned = true;
            }
        }
    }
}

impl<F: NorFlash, const N: usize, const R: usize> ReadTxn for FlashRead<'_, '_, F, N, R> {
    fn get(&self, bucket: Bucket, key: &[u8], f: &mut dyn FnMut(&[u8])) -> core::result::Result<bool, BackendError> {
        Ok(self.backend.get_inner(bucket, key, f)?)
    }
    fn scan(&self, bucket: Bucket, from: &[u8], f: &mut Visit<'_>) -> core::result::Result<(), BackendError> {
        Ok(self.backend.scan_inner(bucket, from, f)?)
    }
}

impl<F: NorFlash, const N: usize, const R: usize> ReadTxn for FlashWrite<'_, '_, F, N, R> {
    fn get(&self, bucket: Bucket, key: &[u8], f: &mut dyn FnMut(&[u8])) -> core::result::Result<bool, BackendError> {
        Ok(self.backend.get_inner(bucket, key, f)?)
    }
    fn scan(&self, bucket: Bucket, from: &[u8], f: &mut Visit<'_>) -> core::result::Result<(), BackendError> {
        Ok(self.backend.scan_inner(bucket, from, f)?)
    }
}

impl<F: NorFlash, const N: usize, const R: usize> WriteTxn for FlashWrite<'_, '_, F, N, R> {
    fn put(&mut self, bucket: Bucket, key: &[u8], value: &[u8]) -> core::result::Result<(), BackendError> {
        Ok(self.put_inner(bucket, key, value)?)
    }
    fn delete(&mut self, bucket: Bucket, key: &[u8]) -> core::result::Result<bool, BackendError> {
        Ok(self.delete_inner(bucket, key)?)
    }
    fn clear(&mut self, bucket: Bucket) -> core::result::Result<(), BackendError> {
        Ok(self.clear_inner(bucket)?)
    }
    fn commit(self) -> core::result::Result<(), BackendError> {
        Ok(self.commit_inner()?)
    }
}

impl<'f, F: NorFlash, const N: usize, const R: usize> Backend for FlashBackend<'f, F, N, R> {
    type Read<'a>
        = FlashRead<'a, 'f, F, N, R>
    where
        Self: 'a;
    type Write<'a>
        = FlashWrite<'a, 'f, F, N, R>
    where
        Self: 'a;

    fn read(&self) -> core::result::Result<Self::Read<'_>, BackendError> {
        if self.poisoned {
            return Err(BackendError::new(BackendErrorKind::Io, "reading after a failed flash write"));
        }
        Ok(FlashRead { backend: self })
    }

    fn write(&mut self) -> core::result::Result<Self::Write<'_>, BackendError> {
        self.begin()?;
        Ok(FlashWrite { backend: self, digest: None, done: false, snapshot_frames: false, begun: None, lost: false })
    }
}
