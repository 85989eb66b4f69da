//! Mounting the flash, and the snapshot store: persist into the inactive area, open it, flip
//! the commit record.

use core::cell::RefCell;
use core::ops::Range;

use embedded_storage::nor_flash::NorFlash;
use snapply_core::backend::{Backend, BackendError, BackendErrorKind, Bucket, ReadTxn, Visit, WriteTxn};
use snapply_core::image::{self, MAX_METADATA_LEN, MaterializeError};
use snapply_core::ports::{Durable, PersistTicket, PortError, ReleaseTicket, SnapshotStore};
use snapply_core::{ImageData, SnapshotMetadata};

use snapply_core::store::ConsistentIndex;

use crate::backend::{FlashBackend, FlashWrite, Indexes};
use crate::chip::{self, Geometry, Result};
use crate::error::FlashError;
use crate::log::{self, AreaKind, AreaState, K_SNAP, K_V2};

/// Bytes of a SHA-256 digest.
const SHA256_LEN: usize = 32;

/// A complete persisted snapshot that is newer than the committed area's state: the restore
/// must be completed through the pipeline before the node serves (etcd's
/// `RecoverSnapshotBackend`).
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct PendingSnapshot {
    /// The snapshot's metadata.
    pub metadata: SnapshotMetadata,
    /// SHA-256 of the image it was persisted from (the image trailer's digest).
    pub sha256: [u8; SHA256_LEN],
}

/// What the area that is not committed holds, as mounting found it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum OtherArea {
    /// Nothing valid: erased, or an erase was cut short.
    Unused,
    /// A formerly committed area, or a snapshot already applied or older than the state.
    Stale,
    /// A half-written snapshot or compaction: discarded (it is erased when next used).
    Discarded,
    /// A complete snapshot to apply before serving.
    Pending,
}

/// The flash after [`mount`]: the backend of the committed area and what the other area holds.
#[derive(Debug)]
pub struct Mounted<'f, F: NorFlash, const N: usize, const R: usize> {
    /// The backend of the committed area.
    pub backend: FlashBackend<'f, F, N, R>,
    /// A persisted snapshot to apply before serving.
    pub pending: Option<PendingSnapshot>,
    /// What the other area holds.
    pub other: OtherArea,
    /// The flash held no committed area and was formatted.
    pub formatted: bool,
}

#[cfg(feature = "defmt")]
impl<F: NorFlash, const N: usize, const R: usize> defmt::Format for Mounted<'_, F, N, R> {
    fn format(&self, f: defmt::Formatter<'_>) {
        defmt::write!(
            f,
            "Mounted {{ backend: {}, pending: {}, other: {}, formatted: {} }}",
            self.backend,
            self.pending,
            self.other,
            self.formatted
        )
    }
}

/// The state of `area` (0 or 1) of a pair read by [`log::area_state`].
fn pick(states: &[AreaState; 2], area: u8) -> AreaState {
    let [a, b] = *states;
    if area == 0 { a } else { b }
}

fn geometry<F: NorFlash>(flash: &RefCell<F>, range: &Range<u32>) -> Result<Geometry, F> {
    let capacity = flash.try_borrow().map_err(|_| FlashError::Misuse("the flash is borrowed"))?.capacity();
    Geometry::new::<F>(range, capacity)
}

/// The committed area of two, if any: the activated one with the higher epoch.
fn committed<E>(states: &[AreaState; 2]) -> core::result::Result<Option<(u8, u32)>, FlashError<E>> {
    let epoch = |s: &AreaState| s.header.filter(|_| s.activated).map(|h| h.epoch);
    Ok(match (epoch(&states[0]), epoch(&states[1])) {
        (Some(a), Some(b)) if a == b => {
            return Err(FlashError::Corrupt { offset: 0, what: "both areas are committed with the same epoch" });
        }
        (Some(a), Some(b)) => Some(if a > b { (0, a) } else { (1, b) }),
        (Some(a), None) => Some((0, a)),
        (None, Some(b)) => Some((1, b)),
        (None, None) => None,
    })
}

/// Reads the metadata and image digest of the snapshot frame at `frame`.
pub(crate) fn read_snap<F: NorFlash>(
    flash: &RefCell<F>,
    geo: &Geometry,
    frame: u32,
) -> Result<(SnapshotMetadata, [u8; SHA256_LEN]), F> {
    let mut metadata = SnapshotMetadata::default();
    let sha256 = read_snap_into(flash, geo, frame, &mut metadata)?;
    Ok((metadata, sha256))
}

/// Reads the metadata of the snapshot frame at `frame` into `metadata` (in place, with the
/// core's reader: postcard's serde path held it in several frames at once) and returns the
/// image digest.
///
/// Not inlined: its buffer is dead once it returns, and would otherwise add to its callers'
/// frames.
#[inline(never)]
pub(crate) fn read_snap_into<F: NorFlash>(
    flash: &RefCell<F>,
    geo: &Geometry,
    frame: u32,
    metadata: &mut SnapshotMetadata,
) -> Result<[u8; SHA256_LEN], F> {
    let h = log::valid_header_at(flash, frame)?;
    let len = h.vlen as usize;
    let mut buf = [0u8; MAX_METADATA_LEN + SHA256_LEN];
    let corrupt = || FlashError::Corrupt { offset: frame, what: "snapshot metadata frame" };
    if h.kind != K_SNAP || h.klen != 0 || !(SHA256_LEN..=buf.len()).contains(&len) {
        return Err(corrupt());
    }
    let bytes = buf.get_mut(..len).ok_or_else(corrupt)?;
    chip::read(flash, frame + geo.header, bytes)?;
    let (meta, sha) = bytes.split_at(len - SHA256_LEN);
    image::read_metadata(meta, metadata).map_err(|_| corrupt())?;
    <[u8; SHA256_LEN]>::try_from(sha).map_err(|_| corrupt())
}

/// Reads the v2 data of the snapshot whose frames `snap` locates into `buf`.
pub(crate) fn read_v2<'a, F: NorFlash>(
    flash: &RefCell<F>,
    geo: &Geometry,
    snap: &log::SnapInfo,
    buf: &'a mut [u8],
) -> Result<&'a [u8], F> {
    if snap.v2_len as usize > buf.len() {
        return Err(FlashError::Full("the v2 data is larger than the buffer"));
    }
    let mut filled = 0usize;
    if let Some(mut pos) = snap.v2_first {
        while pos < snap.frame {
            let h = log::valid_header_at(flash, pos)?;
            if h.kind == K_V2 {
                let n = h.vlen as usize;
                let dst =
                    buf.get_mut(filled..filled + n).ok_or(FlashError::Full("the v2 data is larger than the buffer"))?;
                chip::read(flash, pos + geo.header + u32::from(h.klen), dst)?;
                filled += n;
            }
            pos = log::next_frame(geo, pos, &h)?;
        }
    }
    buf.get(..filled).ok_or(FlashError::Misuse("v2 data"))
}

/// The index of the snapshot frame at `frame`.
pub(crate) fn snapshot_index<F: NorFlash>(flash: &RefCell<F>, geo: &Geometry, frame: u32) -> Result<u64, F> {
    let mut metadata = SnapshotMetadata::default();
    read_snap_into(flash, geo, frame, &mut metadata).map(|_| metadata.index)
}

/// The complete snapshot the not-committed area holds, if it holds one written right after the
/// committed area (epoch + 1).
fn complete_snapshot<F: NorFlash>(
    flash: &RefCell<F>,
    geo: &Geometry,
    other: &AreaState,
    committed_epoch: u32,
) -> Result<Option<(SnapshotMetadata, [u8; SHA256_LEN])>, F> {
    let mut metadata = SnapshotMetadata::default();
    Ok(complete_snapshot_into(flash, geo, other, committed_epoch, &mut metadata)?.map(|sha256| (metadata, sha256)))
}

/// [`complete_snapshot`] into the caller's `metadata` slot; returns the image digest.
fn complete_snapshot_into<F: NorFlash>(
    flash: &RefCell<F>,
    geo: &Geometry,
    other: &AreaState,
    committed_epoch: u32,
    metadata: &mut SnapshotMetadata,
) -> Result<Option<[u8; SHA256_LEN]>, F> {
    let Some(h) = other.header else { return Ok(None) };
    // A snapshot whose every commit slot was spent by cut writes cannot be committed: it is
    // not offered, and the next persist writes the area again.
    if other.activated
        || other.free_slot.is_none()
        || h.kind != AreaKind::Snapshot
        || Some(h.epoch) != committed_epoch.checked_add(1)
    {
        return Ok(None);
    }
    let mut key = [0u8; 0];
    let scanned = log::scan(flash, geo, geo.base(other.id), None, &mut key, true)?;
    match scanned.snap {
        Some(s) if s.frame != 0 => read_snap_into(flash, geo, s.frame, metadata).map(Some),
        _ => Ok(None),
    }
}

/// Mounts the flash range `range` of `flash` (two areas of equal size, see FORMAT.md): finds
/// the committed area and opens its backend, and reports a complete persisted snapshot that is
/// newer than its state. A blank flash is formatted (its first area erased and committed).
///
/// A half-written area is left alone here and erased when it is next written.
pub fn mount<'f, F: NorFlash, const N: usize, const R: usize>(
    flash: &'f RefCell<F>,
    indexes: &'f Indexes<N>,
    range: Range<u32>,
) -> Result<Mounted<'f, F, N, R>, F> {
    let geo = geometry(flash, &range)?;
    let states = [log::area_state(flash, &geo, 0)?, log::area_state(flash, &geo, 1)?];
    let (area, epoch, formatted) = match committed(&states)? {
        Some((area, epoch)) => (area, epoch, false),
        None => {
            crate::fmt::info!("no committed flash area: formatting area 0");
            log::format_area(flash, &geo, 0, AreaKind::Format, 1)?;
            log::activate(flash, &geo, 0, 1)?;
            (0, 1, true)
        }
    };
    let backend = FlashBackend::<F, N, R>::open(flash, indexes, geo, area, epoch)?;
    let other = if formatted { log::area_state(flash, &geo, 1)? } else { pick(&states, 1 - area) };
    let (other, pending) = match complete_snapshot(flash, &geo, &other, epoch)? {
        Some((metadata, sha256)) if metadata.index > backend.consistent_index()? => {
            crate::fmt::info!("found a persisted snapshot to apply before serving: index={}", metadata.index);
            (OtherArea::Pending, Some(PendingSnapshot { metadata, sha256 }))
        }
        Some(_) => (OtherArea::Stale, None),
        None => match other.header {
            None => (OtherArea::Unused, None),
            Some(_) if other.activated => (OtherArea::Stale, None),
            Some(_) => {
                crate::fmt::warning!("discarding the half-written flash area {}", other.id);
                (OtherArea::Discarded, None)
            }
        },
    };
    Ok(Mounted { backend, pending, other, formatted })
}

/// A snapshot persisted in the inactive area.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct PersistedSnapshot {
    /// The snapshot's index.
    index: u64,
    /// The snapshot's term.
    term: u64,
    /// SHA-256 of the image (its trailer's digest).
    sha256: [u8; SHA256_LEN],
    /// The area already held this snapshot, complete: nothing was read or written.
    reused: bool,
}

#[derive(Clone, Copy, Debug)]
struct Held {
    area: u8,
    epoch: u32,
    index: u64,
    term: u64,
    sha256: [u8; SHA256_LEN],
}

/// The snapshot store on the area that is not committed.
///
/// `persist` erases that area once, writes the image into it as one transaction and commits
/// it; `open_backend` scans it (checking every transaction's CRC again); `release_before`,
/// called at the very end of a successful apply, writes its commit record, the one small write
/// that makes it the committed area. The old area is reclaimed lazily: the next persist or
/// compaction erases it, so a restore erases each erase unit once.
///
/// Only the pipeline persists, opens and commits: these are reachable through the
/// [`SnapshotStore`] port alone, whose tickets only the pipeline makes. A persist or a commit
/// beside it would flip the committed area under a node still writing to the old one (an entry
/// acknowledged after the flip is gone after a reboot), or erase the area the node runs on.
///
/// `buf` is the image decoder's buffer (at least `snapply_core::image::BASE_BUFFER` bytes, and
/// as large as the largest record the node takes: `snapply_core::image::buffer_for`); it also
/// holds the v2 data `v2_data` hands out.
#[derive(Debug)]
pub struct FlashSnapshotStore<'f, 'b, F: NorFlash, const N: usize, const R: usize> {
    flash: &'f RefCell<F>,
    indexes: &'f Indexes<N>,
    geo: Geometry,
    buf: &'b mut [u8],
    held: Option<Held>,
}

/// Adapts a write transaction shared with the v2 callback of `materialize`.
struct Staging<'t, 'b, 'f, F: NorFlash, const N: usize, const R: usize>(&'t RefCell<FlashWrite<'b, 'f, F, N, R>>);

const BUSY: BackendError = BackendError::new(BackendErrorKind::Misuse, "re-entering the staging transaction");

impl<F: NorFlash, const N: usize, const R: usize> ReadTxn for Staging<'_, '_, '_, F, N, R> {
    fn get(&self, bucket: Bucket, key: &[u8], f: &mut dyn FnMut(&[u8])) -> core::result::Result<bool, BackendError> {
        self.0.try_borrow().map_err(|_| BUSY)?.get(bucket, key, f)
    }
    fn scan(&self, bucket: Bucket, from: &[u8], f: &mut Visit<'_>) -> core::result::Result<(), BackendError> {
        self.0.try_borrow().map_err(|_| BUSY)?.scan(bucket, from, f)
    }
}

impl<F: NorFlash, const N: usize, const R: usize> WriteTxn for Staging<'_, '_, '_, F, N, R> {
    fn put(&mut self, bucket: Bucket, key: &[u8], value: &[u8]) -> core::result::Result<(), BackendError> {
        self.0.try_borrow_mut().map_err(|_| BUSY)?.put(bucket, key, value)
    }
    fn delete(&mut self, bucket: Bucket, key: &[u8]) -> core::result::Result<bool, BackendError> {
        self.0.try_borrow_mut().map_err(|_| BUSY)?.delete(bucket, key)
    }
    fn clear(&mut self, bucket: Bucket) -> core::result::Result<(), BackendError> {
        self.0.try_borrow_mut().map_err(|_| BUSY)?.clear(bucket)
    }
    fn commit(self) -> core::result::Result<(), BackendError> {
        Err(BackendError::new(BackendErrorKind::Misuse, "committing the staging view; the store commits"))
    }
}

/// The SHA-256 of the image in `source`, decoded whole. One frame per kind of source: in one
/// frame, both decoders would be on the stack at once.
#[inline(never)]
fn image_digest<S: image::Source>(
    source: S,
    buf: &mut [u8],
) -> core::result::Result<[u8; SHA256_LEN], image::DecodeError<S::Error>> {
    image::verify(source, buf).map(|(_, summary)| summary.sha256)
}

fn decode_error<S, E>(e: image::DecodeError<S>, source: impl FnOnce(S) -> FlashError<E>) -> FlashError<E> {
    match e {
        image::DecodeError::Source(s) => source(s),
        image::DecodeError::BufferTooSmall { .. } => {
            FlashError::Full("a frame of the image is larger than the decode buffer")
        }
        d => match d.corruption() {
            Some(c) => FlashError::BadImage(c),
            None => FlashError::Misuse("the image decoder failed"),
        },
    }
}

fn image_error<S, E>(e: MaterializeError<S>, source: impl FnOnce(S) -> FlashError<E>) -> FlashError<E> {
    match e {
        MaterializeError::Decode(d) => decode_error(d, source),
        MaterializeError::Backend(b) | MaterializeError::V2(b) => FlashError::Backend(b),
        _ => FlashError::Misuse("materialising the image failed"),
    }
}

impl<'f, 'b, F: NorFlash, const N: usize, const R: usize> FlashSnapshotStore<'f, 'b, F, N, R> {
    /// The snapshot store of the flash range `range` (the range given to [`mount`]), decoding
    /// images with `buf` (at least [`snapply_core::image::BASE_BUFFER`] bytes, and as large as
    /// the largest record the node accepts: [`snapply_core::image::buffer_for`]).
    ///
    /// `indexes` is the one given to [`mount`]: the backend of a snapshot being restored takes
    /// the slot the node's backend does not hold.
    pub fn new(
        flash: &'f RefCell<F>,
        indexes: &'f Indexes<N>,
        range: Range<u32>,
        buf: &'b mut [u8],
    ) -> Result<Self, F> {
        let geo = geometry(flash, &range)?;
        Ok(FlashSnapshotStore { flash, indexes, geo, buf, held: None })
    }

    fn areas(&self) -> Result<(AreaState, u32, AreaState), F> {
        let states = [log::area_state(self.flash, &self.geo, 0)?, log::area_state(self.flash, &self.geo, 1)?];
        let (area, epoch) = committed(&states)?.ok_or(FlashError::Misuse("persisting before the flash is mounted"))?;
        Ok((pick(&states, area), epoch, pick(&states, 1 - area)))
    }

    /// The SHA-256 of an image handed in again for a snapshot already persisted: the image is
    /// decoded whole (its trailer's digest is only proved by decoding), so a retry that carries
    /// another image under the same metadata is told apart. Nothing is written.
    ///
    /// Not inlined: its decoder is dead before anything is written (see [`Self::already_held`]).
    #[inline(never)]
    fn digest_of(&mut self, image: ImageData<'_>) -> Result<[u8; SHA256_LEN], F> {
        match image {
            ImageData::Bytes(bytes) => {
                image_digest(bytes, self.buf).map_err(|e| decode_error(e, |never| match never {}))
            }
            ImageData::Stream(source) => {
                image_digest(source, self.buf).map_err(|e| decode_error(e, FlashError::ImageSource))
            }
            ImageData::Persisted { sha256 } => Ok(sha256),
        }
    }

    /// Persists the snapshot `metadata` with its image into the area that is not committed:
    /// erases it (once), streams the image through `materialize` into one transaction with the
    /// v2 data and the snapshot's metadata and digest, and commits it.
    ///
    /// A snapshot already persisted with this whole metadata (a retry, a snapshot persisted
    /// ahead of the pipeline, or boot recovery) is confirmed without writing anything, and only
    /// if the image's SHA-256 is the one persisted with it: an [`ImageData::Persisted`] names
    /// it, a byte slice or a stream is decoded again to compute it. The committed area also
    /// counts when it holds exactly this snapshot and nothing since (its commit record landed but
    /// the run that wrote it did not finish).
    ///
    /// The area that is not committed holds one snapshot: persisting another one (newer, or
    /// with other metadata) replaces a snapshot persisted there and not yet applied.
    ///
    /// # Errors
    /// [`FlashError::NotFound`] for [`ImageData::Persisted`] when no such snapshot is held;
    /// [`FlashError::MetadataMismatch`] when it is held with another image, or the image
    /// carries other metadata; [`FlashError::BadImage`] for an invalid image;
    /// [`FlashError::Full`] when the area, the record index or the buffer is too small; a
    /// flash error otherwise.
    fn persist_snapshot(&mut self, metadata: &SnapshotMetadata, image: ImageData<'_>) -> Result<PersistedSnapshot, F> {
        let (committed_area, epoch, other) = self.areas()?;
        if let Some(h) = self.already_held(committed_area.id, epoch, &other, metadata)? {
            let digest = self.digest_of(image)?;
            if digest != h.sha256 {
                return Err(FlashError::MetadataMismatch);
            }
            self.held = Some(h);
            return Ok(PersistedSnapshot { index: h.index, term: h.term, sha256: h.sha256, reused: true });
        }
        if let ImageData::Persisted { .. } = image {
            return Err(FlashError::NotFound);
        }
        self.held = None;
        let epoch = epoch.checked_add(1).ok_or(FlashError::Full("area epochs exhausted"))?;
        let sha256 = self.write_snapshot(other.id, epoch, metadata, image)?;
        self.held = Some(Held { area: other.id, epoch, index: metadata.index, term: metadata.term, sha256 });
        Ok(PersistedSnapshot { index: metadata.index, term: metadata.term, sha256, reused: false })
    }

    /// Where `metadata`'s snapshot is already held complete, with its digest: the area that is
    /// not committed (persisted ahead, or a retry), or the committed area holding exactly it.
    ///
    /// Not inlined, like [`Self::write_snapshot`]: the backend this opens and the metadata it
    /// reads are dead before the image is written, and in a frame of their own they do not add
    /// to the deepest frame of a restore on a device (BENCHMARKS.md, "Firmware").
    #[inline(never)]
    fn already_held(
        &mut self,
        committed_area: u8,
        epoch: u32,
        other: &AreaState,
        metadata: &SnapshotMetadata,
    ) -> Result<Option<Held>, F> {
        let mut meta = SnapshotMetadata::default();
        if let Some(sha256) = complete_snapshot_into(self.flash, &self.geo, other, epoch, &mut meta)?
            && meta == *metadata
        {
            return Ok(Some(Held {
                area: other.id,
                epoch: epoch.saturating_add(1),
                index: meta.index,
                term: meta.term,
                sha256,
            }));
        }
        Ok(self.committed_snapshot(committed_area, epoch, metadata)?.map(|sha256| Held {
            area: committed_area,
            epoch,
            index: metadata.index,
            term: metadata.term,
            sha256,
        }))
    }

    /// Erases `area`, streams the image into it as one transaction with the v2 data and the
    /// snapshot frame (`metadata` and the image's digest), and commits it; returns the image's
    /// SHA-256. Not inlined (see [`Self::already_held`]).
    #[inline(never)]
    fn write_snapshot(
        &mut self,
        area: u8,
        epoch: u32,
        metadata: &SnapshotMetadata,
        image: ImageData<'_>,
    ) -> Result<[u8; SHA256_LEN], F> {
        log::format_area(self.flash, &self.geo, area, AreaKind::Snapshot, epoch)?;
        let mut backend = FlashBackend::<F, N, R>::fresh(self.flash, self.indexes, self.geo, area, epoch)?;
        let txn = RefCell::new(backend.write().map_err(FlashError::Backend)?);
        let mut staging = Staging(&txn);
        let mut v2 = |chunk: &[u8]| -> core::result::Result<(), BackendError> {
            let mut t = txn.try_borrow_mut().map_err(|_| BUSY)?;
            t.raw_frame(K_V2, chunk).map(|_| ()).map_err(BackendError::from)
        };
        let decoded = match image {
            ImageData::Bytes(bytes) => image::materialize(bytes, self.buf, &mut staging, &mut v2)
                .map_err(|e| image_error(e, |never| match never {})),
            ImageData::Stream(source) => image::materialize(source, self.buf, &mut staging, &mut v2)
                .map_err(|e| image_error(e, FlashError::ImageSource)),
            ImageData::Persisted { .. } => return Err(FlashError::NotFound),
        };
        let (decoded, summary) = decoded?;
        if decoded != *metadata {
            return Err(FlashError::MetadataMismatch);
        }
        let mut txn = txn.into_inner();
        // A snapshot whose backend does not reflect its index would fail the pipeline's check
        // (etcd #17146, #20426) at every boot: it is refused before it is committed, so it is
        // never pending.
        let cindex = ConsistentIndex::load(&txn)
            .map_err(|_| FlashError::Corrupt { offset: self.geo.base(area), what: "the snapshot's consistent index" })?
            .index();
        if cindex != metadata.index {
            return Err(FlashError::IndexMismatch { backend_index: cindex, snapshot_index: metadata.index });
        }
        let used = postcard::to_slice(metadata, self.buf)
            .map_err(|_| FlashError::Full("the decode buffer cannot hold the snapshot metadata"))?
            .len();
        let value = self.buf.get_mut(..used + SHA256_LEN).ok_or(FlashError::Full("decode buffer"))?;
        if let Some(tail) = value.get_mut(used..) {
            tail.copy_from_slice(&summary.sha256);
        }
        txn.raw_frame(K_SNAP, value)?;
        txn.commit_inner()?;
        Ok(summary.sha256)
    }

    /// The image digest of `metadata`'s snapshot if the committed area holds exactly it: its
    /// snapshot frame names this metadata and its consistent index is the snapshot's (nothing
    /// was applied on top of it).
    #[inline(never)]
    fn committed_snapshot(
        &mut self,
        area: u8,
        epoch: u32,
        metadata: &SnapshotMetadata,
    ) -> Result<Option<[u8; SHA256_LEN]>, F> {
        let backend = FlashBackend::<F, N, R>::open(self.flash, self.indexes, self.geo, area, epoch)?;
        let Some(snap) = backend.snap().filter(|s| s.frame != 0) else { return Ok(None) };
        let mut meta = SnapshotMetadata::default();
        let sha256 = read_snap_into(self.flash, &self.geo, snap.frame, &mut meta)?;
        Ok((meta == *metadata && backend.consistent_index()? == metadata.index).then_some(sha256))
    }

    fn held(&self, index: u64, term: u64, sha256: &[u8; SHA256_LEN]) -> Result<Held, F> {
        self.held.filter(|h| h.index == index && h.term == term && h.sha256 == *sha256).ok_or(FlashError::NotFound)
    }

    /// Opens the backend of the persisted snapshot, scanning its area again (every
    /// transaction's CRC is checked again).
    fn open_snapshot(
        &mut self,
        index: u64,
        term: u64,
        sha256: &[u8; SHA256_LEN],
    ) -> Result<FlashBackend<'f, F, N, R>, F> {
        let held = self.held(index, term, sha256)?;
        // Checked where `open` put it and returned as it is: every move of a backend through a
        // `?` is another copy on a device's stack (its index stays in its slot).
        let opened = FlashBackend::<F, N, R>::open(self.flash, self.indexes, self.geo, held.area, held.epoch);
        if let Ok(backend) = &opened
            && backend.snap().is_none()
        {
            return Err(FlashError::Corrupt {
                offset: self.geo.base(held.area),
                what: "the snapshot area lost its snapshot",
            });
        }
        opened
    }

    /// The v2 data of the persisted snapshot, read from its area into the decode buffer.
    fn snapshot_v2(&mut self, index: u64, term: u64, sha256: &[u8; SHA256_LEN]) -> Result<&[u8], F> {
        let held = self.held(index, term, sha256)?;
        let base = self.geo.base(held.area);
        let lost = FlashError::Corrupt { offset: base, what: "the snapshot area lost its snapshot" };
        // The snapshot frames are in an area's first transaction: the snapshot's own in a
        // snapshot area, the compaction's in a compacted one.
        let mut key = [0u8; 0];
        let scanned = log::scan(self.flash, &self.geo, base, None, &mut key, true)?;
        let snap = scanned.snap.ok_or(lost)?;
        read_v2(self.flash, &self.geo, &snap, self.buf)
    }

    /// Makes the persisted snapshot's area the committed one: one commit-record write. Until it
    /// lands, a reboot finds the old area committed and this snapshot pending.
    fn commit_snapshot(&mut self, index: u64, term: u64, sha256: &[u8; SHA256_LEN]) -> Result<(), F> {
        let held = self.held(index, term, sha256)?;
        let state = log::area_state(self.flash, &self.geo, held.area)?;
        if !state.activated {
            log::activate(self.flash, &self.geo, held.area, held.epoch)?;
        }
        crate::fmt::info!("flash area {} committed at epoch {}", held.area, held.epoch);
        self.held = None;
        Ok(())
    }

    /// Drops a snapshot persisted in the area that is not committed and not yet applied, by
    /// erasing that area (one erase per unit), and returns whether there was one. Boot calls it
    /// for a pending snapshot that cannot be applied ([`crate::RefusedSnapshot`]: say a snapshot
    /// larger than the node's tables), once the node is back on the committed state; the
    /// leader sends a snapshot again. Crate-private like the port's calls: between a swap and
    /// its commit record the node runs on that very area.
    pub(crate) fn discard_pending(&mut self) -> Result<bool, F> {
        let (_, epoch, other) = self.areas()?;
        if complete_snapshot(self.flash, &self.geo, &other, epoch)?.is_none() {
            return Ok(false);
        }
        crate::fmt::warning!("discarding the snapshot pending in flash area {}", other.id);
        let base = self.geo.base(other.id);
        chip::erase(self.flash, base, base + self.geo.area_len)?;
        self.held = None;
        Ok(true)
    }

    /// The v2 data of the snapshot the committed state was restored from, read into the decode
    /// buffer: what [`snapply_core::Node::open`] recovers the v2 store from at boot.
    pub fn committed_v2(&mut self, backend: &FlashBackend<'f, F, N, R>) -> Result<&[u8], F> {
        backend.v2_data(self.buf)
    }
}

#[cfg(feature = "defmt")]
impl<F: NorFlash, const N: usize, const R: usize> defmt::Format for FlashSnapshotStore<'_, '_, F, N, R> {
    fn format(&self, f: defmt::Formatter<'_>) {
        let held = self.held.map(|h| (h.area, h.index, h.term));
        defmt::write!(f, "FlashSnapshotStore {{ area_len: {}, held (area, index, term): {} }}", self.geo.area_len, held)
    }
}

/// A thin shim over the inherent methods, so the port can change without moving the logic.
impl<'f, F: NorFlash, const N: usize, const R: usize> SnapshotStore for FlashSnapshotStore<'f, '_, F, N, R> {
    type Backend = FlashBackend<'f, F, N, R>;

    fn persist<'r>(
        &mut self,
        image: ImageData<'_>,
        ticket: PersistTicket<'r>,
    ) -> core::result::Result<Durable<'r>, PortError> {
        let persisted = self.persist_snapshot(ticket.metadata(), image)?;
        Ok(ticket.confirm(persisted.sha256))
    }

    fn open_backend(&mut self, snapshot: &Durable<'_>) -> core::result::Result<Self::Backend, PortError> {
        self.open_snapshot(snapshot.index(), snapshot.term(), snapshot.sha256()).map_err(PortError::from)
    }

    fn v2_data(&mut self, snapshot: &Durable<'_>) -> core::result::Result<&[u8], PortError> {
        Ok(self.snapshot_v2(snapshot.index(), snapshot.term(), snapshot.sha256())?)
    }

    fn release_before(&mut self, applied: ReleaseTicket<'_>) -> core::result::Result<(), PortError> {
        Ok(self.commit_snapshot(applied.index(), applied.term(), applied.sha256())?)
    }
}

#[allow(dead_code)]
fn _assert_backend<B: Backend>() {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mock::MockFlash;
    use snapply_core::backend::{OwnedRecord, dump};
    use snapply_core::collections::Growable;
    use snapply_core::image::BASE_BUFFER;
    use snapply_core::{Node, Request};

    type Chip = MockFlash<4, 4096>;
    const RANGE: Range<u32> = 0..8 * 4096;
    const RECORDS: usize = 64;
    const RECORD: usize = 256;

    fn records<B: Backend>(b: &B) -> std::vec::Vec<OwnedRecord> {
        dump(&b.read().unwrap()).unwrap()
    }

    /// A snapshot whose flip landed is still confirmed from the committed area, by its digest,
    /// while nothing was applied on top of it (a run that wrote the commit record and failed to
    /// report it resumes from there); another digest is refused, and after a write it is not
    /// offered any more. Persisted again before the flip, it is confirmed from the other area
    /// without writing anything.
    #[test]
    fn a_persisted_snapshot_is_confirmed_by_its_digest_until_the_node_writes_on() {
        let mut leader = snapply_tests::node(1);
        for k in 0..10u64 {
            let key = std::format!("key-{k}");
            leader.apply(10 + k, 2, &Request::Put { key: key.as_bytes(), value: b"v", lease: 0 }).unwrap();
        }
        let (metadata, image) = snapply_tests::snapshot(&leader);
        let chip = RefCell::new(Chip::new(8));
        let indexes = Indexes::new();
        drop(mount::<Chip, RECORDS, RECORD>(&chip, &indexes, RANGE).unwrap());
        let mut buf = std::vec![0u8; BASE_BUFFER];
        let mut store = FlashSnapshotStore::<Chip, RECORDS, RECORD>::new(&chip, &indexes, RANGE, &mut buf).unwrap();
        let persisted = store.persist_snapshot(&metadata, ImageData::Bytes(&image)).unwrap();
        assert!(!persisted.reused);
        let sha256 = persisted.sha256;

        chip.borrow_mut().reset_stats();
        assert!(store.persist_snapshot(&metadata, ImageData::Persisted { sha256 }).unwrap().reused);
        assert!(store.persist_snapshot(&metadata, ImageData::Bytes(&image)).unwrap().reused);
        let stats = chip.borrow().stats();
        assert_eq!((stats.programmed, stats.erases), (0, 0));
        let other = store.persist_snapshot(&metadata, ImageData::Persisted { sha256: [7; 32] });
        assert_eq!(other.unwrap_err(), FlashError::MetadataMismatch);

        store.commit_snapshot(metadata.index, metadata.term, &sha256).unwrap();
        let by_image = store.persist_snapshot(&metadata, ImageData::Bytes(&image)).unwrap();
        assert!(by_image.reused);
        assert_eq!(by_image.sha256, sha256);
        let again = store.persist_snapshot(&metadata, ImageData::Persisted { sha256 }).unwrap();
        assert!(again.reused);
        let opened = store.open_snapshot(metadata.index, metadata.term, &sha256).unwrap();
        assert_eq!(records(&opened), records(leader.backend()));
        drop(opened);
        let other = store.persist_snapshot(&metadata, ImageData::Persisted { sha256: [0; 32] });
        assert_eq!(other.unwrap_err(), FlashError::MetadataMismatch);

        let mounted = mount::<Chip, RECORDS, RECORD>(&chip, &indexes, RANGE).unwrap();
        let v2 = store.committed_v2(&mounted.backend).unwrap().to_vec();
        let mut node = Node::<_, Growable>::open(snapply_tests::config(2), mounted.backend, &v2).unwrap();
        node.apply(metadata.index + 1, 3, &Request::Put { key: b"k", value: b"v", lease: 0 }).unwrap();
        let gone = store.persist_snapshot(&metadata, ImageData::Persisted { sha256 });
        assert_eq!(gone.unwrap_err(), FlashError::NotFound);
    }
}
