//! The core's snapshot-store port on a data directory (etcd's snapshotter and
//! `openSnapshotBackend`).
//!
//! The real work is in inherent methods and free functions that take plain values; the
//! [`SnapshotStore`] impl at the end only converts tickets and proofs, so it follows the port's
//! changes without touching the disk logic.

use snapply_core::Config;
use snapply_core::ImageData;
use snapply_core::SnapshotMetadata;
use snapply_core::backend::Backend;
use snapply_core::collections::Growable;
use snapply_core::image::{self, DecodeError, MaterializeError};
use snapply_core::pipeline::Prebuilt;
use snapply_core::ports::{Durable, PersistTicket, PortError, ReleaseTicket, SnapshotStore};
use snapply_core::store::{AlarmStore, AuthStore, ConsistentIndex, Membership, V2Store};

use crate::backend::RedbBackend;
use crate::bulk::{self, Feed};
use crate::datadir::{DataDir, SnapName};
use crate::durable::{self, remove_if_exists, sync_dir};
use crate::error::FsError;
use crate::failpoint::failpoint;
use crate::snapfile::{self, SnapInfo};

/// Snapshots persisted in a [`DataDir`], their backends opened by a rename over `member/db`.
///
/// A persisted snapshot stays on disk until [`FsSnapshotStore::release`] is called with a
/// newer applied index: two snapshots persisted back to back are both kept, so the one waiting
/// to be applied is never deleted under it (etcd #18055, #20133).
#[derive(Debug)]
pub struct FsSnapshotStore {
    dir: DataDir,
    buf: Vec<u8>,
    /// The v2 data of the last snapshot asked for, so that `v2_data` can lend it.
    v2: Option<(SnapName, Vec<u8>)>,
}

/// Longest value a snapshot may hold for a host node, in bytes: 10 MiB, the most etcd advises
/// for `--max-request-bytes` (its default is 1.5 MiB), so every snapshot an etcd cluster can
/// write restores. A record that does not fit a buffer for this value and the longest key is
/// refused with [`FsError::RecordTooLarge`].
pub const MAX_VALUE_LEN: usize = 10 << 20;

/// A decoder buffer for every image whose values are at most [`MAX_VALUE_LEN`] bytes. Zeroed
/// pages are not touched until a record needs them, so the unused part costs no memory.
pub(crate) fn decode_buffer() -> Vec<u8> {
    vec![0; image::buffer_for(image::MAX_KEY_LEN, MAX_VALUE_LEN)]
}

impl FsSnapshotStore {
    /// A store on `dir`.
    pub fn new(dir: DataDir) -> Self {
        FsSnapshotStore { dir, buf: decode_buffer(), v2: None }
    }

    /// The data directory.
    pub fn dir(&self) -> &DataDir {
        &self.dir
    }

    /// Makes the snapshot durable: see [`persist`].
    ///
    /// # Errors
    /// As [`persist`].
    pub fn persist_image(&mut self, metadata: &SnapshotMetadata, image: ImageData<'_>) -> Result<SnapInfo, FsError> {
        persist(&self.dir, &mut self.buf, metadata, image)
    }

    /// Opens the backend of the persisted snapshot `name` as etcd's `openSnapshotBackend` does:
    /// renames `<index>.snap.db` over `member/db`, syncs both directories, opens it.
    ///
    /// The node's live backend keeps its own handle on the file it opened: the rename replaces
    /// the directory entry, not the open file, so the old backend goes on working (on the
    /// replaced file) until the pipeline swaps it out and it is dropped, which closes the file
    /// and frees it. redb's file lock is per file, so the new handle does not conflict with it.
    /// This relies on POSIX rename semantics; Windows refuses to rename over an open file.
    ///
    /// # Errors
    /// [`FsError::NotFound`] if no such snapshot is persisted, [`FsError::MissingDb`] if its
    /// backend file is gone, [`FsError::Io`] or [`FsError::Db`] if the rename or the open fails.
    pub fn open_snapshot(&mut self, name: SnapName) -> Result<RedbBackend, FsError> {
        let snap = self.dir.snap_path(name);
        if !snap.exists() {
            return Err(FsError::NotFound { index: name.index, term: name.term });
        }
        let from = self.dir.snap_db_path(name.index);
        if !from.exists() {
            return Err(FsError::MissingDb { index: name.index, path: from });
        }
        let to = self.dir.db_path();
        failpoint!("fs::open::start", &from);
        durable::rename(&from, &to)
            .map_err(|e| FsError::io("renaming the snapshot's backend over the live one", &to, e))?;
        failpoint!("fs::open::renamed", &to);
        // The rename changed two directories: the new `db` entry first, then the removed one.
        sync_dir(self.dir.member_dir())?;
        sync_dir(self.dir.snap_dir())?;
        failpoint!("fs::open::dir_synced", &to);
        let backend = RedbBackend::open(&to)?;
        failpoint!("fs::open::opened", &to);
        Ok(backend)
    }

    /// The v2 data of the persisted snapshot `name`, read from its `.snap`.
    ///
    /// # Errors
    /// As [`DataDir::read_snap`].
    pub fn v2_of(&mut self, name: SnapName) -> Result<&[u8], FsError> {
        let cached = matches!(&self.v2, Some((n, _)) if *n == name);
        if !cached {
            let info = self.dir.read_snap(name)?;
            self.v2 = Some((name, info.v2));
        }
        Ok(self.v2.as_ref().map_or(&[][..], |(_, v2)| v2.as_slice()))
    }

    /// The snapshot at `applied` is applied: deletes the snapshots older than it. Snapshots at
    /// or above it are kept (see [`DataDir`]'s pinning rule).
    ///
    /// # Errors
    /// [`FsError::Io`] if a file cannot be removed or the directory synced.
    pub fn release(&mut self, applied: u64) -> Result<(), FsError> {
        self.dir.release_before(applied)
    }
}

/// Makes a snapshot durable in `dir`, checking it on the way, off the apply loop's critical
/// path: everything that depends only on the snapshot's bytes is done here.
///
/// 1. The image is streamed (from memory or a [`snapply_core::image::Source`]) through `buf`
///    by [`image::materialize`] into a write transaction of a fresh redb file
///    `<index>.snap.db.tmp`: every frame's CRC and the trailer's SHA-256 are checked as it goes.
/// 2. The image's metadata must be the snapshot's, and its `meta` bucket's consistent index the
///    snapshot's index (the check etcd makes only under a debug flag, #13973); then it commits
///    (redb syncs the file).
/// 3. Every store the pipeline will recover from it (leases, keys, alarms, auth, membership) is
///    recovered once here, so a snapshot whose records do not recover never replaces `member/db`.
/// 4. `<index>.snap.db.tmp` is renamed to `<index>.snap.db` and the directory synced.
/// 5. The `.snap` (metadata, the image's digest, v2 data, CRC-32C) is written durably: it is the
///    commit record, so a crash before it leaves an orphan backend [`DataDir::open`] removes.
///
/// A snapshot already persisted with the same metadata, whose backend is still there, is not
/// written again: the image is not read (a retry, or a boot-time recovery whose image is empty).
///
/// # Errors
/// [`FsError::Image`], [`FsError::MetadataMismatch`], [`FsError::IndexMismatch`],
/// [`FsError::Store`] for a bad snapshot; [`FsError::Stream`] if the stream failed;
/// [`FsError::Full`] (see [`FsError::is_full`]) if the disk is full; [`FsError::Io`],
/// [`FsError::Db`] otherwise. On every error what was written is removed: the directory holds
/// what it held before.
pub fn persist(
    dir: &DataDir,
    buf: &mut [u8],
    metadata: &SnapshotMetadata,
    image: ImageData<'_>,
) -> Result<SnapInfo, FsError> {
    persist_building(dir, buf, metadata, image, None).map(|(info, _)| info)
}

/// [`persist`], and with `node` (the applying node's configuration) the lessor and key index
/// built from the snapshot's backend with the node's minimum lease TTL for the apply to install
/// ([`Prebuilt`]): the recovery check of step 3 builds them anyway, so they are kept instead of
/// dropped. The snapshot's v2 data is then also checked against the node's v2 deprecation
/// level with the core's own check ([`V2Store::recover`], etcd's `AssertNoV2StoreContent`), so
/// a snapshot the apply would refuse is refused before it is reported durable. `None` for a snapshot that was already persisted (its backend is not read again)
/// or that holds an unfinished scheduled compaction (see [`Prebuilt::build`]).
pub(crate) fn persist_building(
    dir: &DataDir,
    buf: &mut [u8],
    metadata: &SnapshotMetadata,
    image: ImageData<'_>,
    node: Option<&Config>,
) -> Result<(SnapInfo, Option<Prebuilt<Growable>>), FsError> {
    let name = SnapName { index: metadata.index, term: metadata.term };
    let db = dir.snap_db_path(name.index);
    if db.exists()
        && let Ok(info) = dir.read_snap(name)
        && info.metadata == *metadata
    {
        // Already persisted (a retry): it is this snapshot only if the image is the same one.
        let digest = match image {
            ImageData::Bytes(bytes) => image::verify(bytes, buf)
                .map(|(_, s)| s.sha256)
                .map_err(|_| FsError::Image { offset: 0, what: snapply_core::image::Corruption::DigestMismatch })?,
            ImageData::Stream(source) => image::verify(source, buf).map(|(_, s)| s.sha256).map_err(|e| match e {
                DecodeError::Source(e) => FsError::Stream(e),
                _ => FsError::Image { offset: 0, what: snapply_core::image::Corruption::DigestMismatch },
            })?,
            ImageData::Persisted { sha256 } => sha256,
        };
        if digest != info.image_sha256 {
            return Err(FsError::MetadataMismatch { index: name.index });
        }
        return Ok((info, None));
    }
    if let ImageData::Persisted { .. } = image {
        return Err(FsError::NotFound { index: name.index, term: name.term });
    }
    let tmp = dir.snap_dir().join(format!("{}.tmp", snapfile::db_name(name.index)));
    let result = (|| {
        remove_if_exists(&tmp)?;
        failpoint!("fs::persist::start", &tmp);
        let (info, prebuilt) = materialize(&tmp, buf, metadata, image, node)?;
        durable::rename(&tmp, &db).map_err(|e| FsError::io("renaming the snapshot's backend into place", &db, e))?;
        failpoint!("fs::persist::db_renamed", &db);
        sync_dir(dir.snap_dir())?;
        failpoint!("fs::persist::db_dir_synced", &db);
        dir.write_snap(&info)?;
        failpoint!("fs::persist::done", &dir.snap_path(name));
        Ok((info, prebuilt))
    })();
    if result.is_err() {
        // Leave the directory as it was: the snapshot was not reported durable, so nothing of it
        // may stay (a `.snap` left by a failed directory sync would be applied at the next boot).
        // Removal is best effort; whatever survives a second failure is what `DataDir::open`
        // sweeps (temp files, backends no `.snap` names) or a `.snap` the leader's next snapshot
        // supersedes.
        let _ = remove_if_exists(&dir.snap_path(name));
        let _ = remove_if_exists(&db);
        let _ = remove_if_exists(&tmp);
        let _ = sync_dir(dir.snap_dir());
    }
    result
}

/// Steps 1 to 3 of [`persist`], into the redb file `tmp`, on two threads (see [`crate::bulk`]):
/// this one decodes and checks the image and then builds the stores from the records it kept,
/// a writer thread appends the records to the redb file and commits once the image is whole
/// and checked. Both end before this returns, and nothing is reported durable before the
/// commit returned.
fn materialize(
    tmp: &std::path::Path,
    buf: &mut [u8],
    metadata: &SnapshotMetadata,
    image: ImageData<'_>,
    node: Option<&Config>,
) -> Result<(SnapInfo, Option<Prebuilt<Growable>>), FsError> {
    let index = metadata.index;
    let backend = RedbBackend::open_for_load(tmp)?;
    failpoint!("fs::persist::tmp_created", tmp);
    let mut v2 = Vec::new();
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::sync_channel(bulk::QUEUE);
        let (recycle_tx, recycle_rx) = std::sync::mpsc::channel();
        let writer = std::thread::Builder::new()
            .name("snapply-fs-writer".into())
            .spawn_scoped(scope, move || bulk::write(backend, rx, recycle_tx, tmp))
            .map_err(|e| FsError::io("starting the snapshot backend's writer", tmp, e))?;
        let decoded = (|| {
            // Without `close(true)` (an error here drops the feed), the writer drops its
            // transaction when the channel closes.
            let decoded = decode(image, buf, Feed::new(tx, &recycle_rx), &mut v2, index, metadata.term)?;
            if *decoded.metadata() != *metadata {
                return Err(FsError::MetadataMismatch { index });
            }
            let cindex = decoded
                .backend()
                .read()
                .map_err(snapply_core::store::StoreError::from)
                .and_then(|t| ConsistentIndex::load(&t))
                .map_err(|source| FsError::Store { index, source })?;
            if cindex.index() != index {
                return Err(FsError::IndexMismatch { backend_index: cindex.index(), snapshot_index: index });
            }
            failpoint!("fs::persist::materialized", tmp);
            decoded.backend().close(true)?;
            Ok(decoded)
        })();
        // The stores are built while the writer commits (mostly waiting for the disk).
        let checked = decoded.and_then(|decoded| {
            if let Some(node) = node {
                V2Store::<Growable>::recover(&v2, node.v2_deprecation)
                    .map_err(|source| FsError::Store { index, source })?;
            }
            let prebuilt = check_stores(&decoded, index, node.map(|n| n.min_lease_ttl))?;
            Ok((decoded.metadata().clone(), *decoded.summary(), prebuilt))
        });
        let written = writer.join().map_err(|_| bulk::writer_gone())?;
        // The writer's failure (a full disk) is the cause when both failed: the decoder then
        // only saw the writer gone.
        let committed = written?;
        let (decoded, summary, prebuilt) = checked?;
        if !committed {
            return Err(bulk::writer_gone());
        }
        failpoint!("fs::persist::committed", tmp);
        failpoint!("fs::persist::checked", tmp);
        let info = SnapInfo { metadata: decoded, image_sha256: summary.sha256, records: summary.records, v2 };
        Ok((info, prebuilt))
    })
}

/// Decodes `image` into `feed` and `v2` with the core's decoder, which writes every record into
/// `feed` itself: every frame's CRC and the trailer's SHA-256 are checked as it goes (see
/// [`image::Decoder`]), and nothing fed is valid until this returns `Ok`.
fn decode<'a>(
    image: ImageData<'_>,
    buf: &mut [u8],
    feed: Feed<'a>,
    v2: &mut Vec<u8>,
    index: u64,
    term: u64,
) -> Result<image::Decoded<Feed<'a>>, FsError> {
    match image {
        ImageData::Bytes(bytes) => decode_from(bytes, buf, feed, v2, |e| match e {}),
        ImageData::Stream(source) => decode_from(source, buf, feed, v2, FsError::Stream),
        ImageData::Persisted { .. } => Err(FsError::NotFound { index, term }),
    }
}

fn decode_from<'a, S: image::Source>(
    source: S,
    buf: &mut [u8],
    feed: Feed<'a>,
    v2: &mut Vec<u8>,
    source_error: impl Fn(S::Error) -> FsError,
) -> Result<image::Decoded<Feed<'a>>, FsError> {
    let mut keep_v2 = |chunk: &[u8]| {
        v2.extend_from_slice(chunk);
        Ok(())
    };
    image::decode_into(source, buf, feed, &mut keep_v2).map_err(|e| match e {
        MaterializeError::Decode(DecodeError::Source(e)) => source_error(e),
        e => image_error(e),
    })
}

/// Reads every store the pipeline recovers from a snapshot's backend: a snapshot whose
/// records do not recover is refused while persisting, before it can replace `member/db`.
/// With `min_lease_ttl`, the lessor and key index are kept for the apply ([`Prebuilt`], bound
/// to the image `decoded` came from) rather than dropped; the other stores are small and are
/// read again when the backend is opened.
fn check_stores<B: Backend>(
    decoded: &image::Decoded<B>,
    index: u64,
    min_lease_ttl: Option<i64>,
) -> Result<Option<Prebuilt<Growable>>, FsError> {
    let store = |source| FsError::Store { index, source };
    let backend = decoded.backend();
    let prebuilt = match min_lease_ttl {
        Some(ttl) => Prebuilt::<Growable>::build(decoded, ttl).map_err(store)?,
        None => None,
    };
    if prebuilt.is_none() {
        snapply_core::store::check_backend::<Growable, B>(backend).map_err(store)?;
        return Ok(None);
    }
    AlarmStore::<Growable>::recover(backend).map_err(store)?;
    AuthStore::<Growable>::recover(backend).map_err(store)?;
    Membership::<Growable>::recover(backend).map_err(store)?;
    Ok(prebuilt)
}

fn image_error<E>(e: MaterializeError<E>) -> FsError {
    match e {
        MaterializeError::Decode(DecodeError::Corrupt { offset, what }) => FsError::Image { offset, what },
        MaterializeError::Decode(DecodeError::BufferTooSmall { offset, needed, available, .. }) => {
            FsError::RecordTooLarge { offset, needed, limit: available }
        }
        MaterializeError::Backend(source) | MaterializeError::V2(source) => {
            FsError::Backend { op: "writing the snapshot's backend", source }
        }
        // The decoder is used once, so a poisoned one is a bug here, reported as an I/O failure
        // rather than a panic.
        _ => FsError::Backend {
            op: "decoding the snapshot image",
            source: snapply_core::backend::BackendError::new(
                snapply_core::backend::BackendErrorKind::Misuse,
                "decoder buffer too small or decoder reused",
            ),
        },
    }
}

fn name_of(d: &Durable<'_>) -> SnapName {
    SnapName { index: d.index(), term: d.term() }
}

impl SnapshotStore for FsSnapshotStore {
    type Backend = RedbBackend;

    fn persist<'r>(&mut self, image: ImageData<'_>, ticket: PersistTicket<'r>) -> Result<Durable<'r>, PortError> {
        let info = self.persist_image(ticket.metadata(), image)?;
        if info.metadata != *ticket.metadata() {
            return Err(FsError::MetadataMismatch { index: ticket.index() }.to_port());
        }
        Ok(ticket.confirm(info.image_sha256))
    }

    fn open_backend(&mut self, snapshot: &Durable<'_>) -> Result<RedbBackend, PortError> {
        let name = name_of(snapshot);
        if !self.dir.snap_db_path(name.index).exists() {
            // Completing a restore whose backend was already renamed over `member/db` (the run
            // ended after opening it): the live file is the snapshot's if its consistent index is.
            let live = RedbBackend::open(&self.dir.db_path())?;
            let index = live
                .read()
                .map_err(snapply_core::store::StoreError::from)
                .and_then(|t| ConsistentIndex::load(&t))
                .map(|c| c.index())
                .map_err(|source| FsError::Store { index: name.index, source })?;
            if index == name.index {
                return Ok(live);
            }
        }
        Ok(self.open_snapshot(name)?)
    }

    fn v2_data(&mut self, snapshot: &Durable<'_>) -> Result<&[u8], PortError> {
        Ok(self.v2_of(name_of(snapshot))?)
    }

    /// Releases only for a snapshot this data directory holds (its `.snap` names the applied
    /// index, term and image digest): a release ticket of another store's run, handed on,
    /// deletes nothing here.
    fn release_before(&mut self, applied: ReleaseTicket<'_>) -> Result<(), PortError> {
        let name = SnapName { index: applied.index(), term: applied.term() };
        match self.dir.read_snap(name) {
            Ok(info) if info.image_sha256 == *applied.sha256() => Ok(self.release(applied.index())?),
            _ => Err(FsError::NotFound { index: name.index, term: name.term }.to_port()),
        }
    }
}
