//! Snapshot images on disk: the leader's, built from a read view of the live backend on a
//! blocking thread into `member/snap/<term>-<index>.image`, and the follower's, persisted while
//! they arrive (see the transport) and handed to the ready loop once durable.
//!
//! A raft `Snapshot` the log offers raft-rs carries the metadata only; the transport streams the
//! image from its file (etcd's snapshot sender streams the backend over its own connection).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use snapply_core::backend::ReadTxn;
use snapply_core::image::{self, Sink, Source};
use snapply_fs::{DataDir, PersistedSnapshot, RedbRead, RedbView};

use crate::error::RaftError;

/// `<term>-<index>.image`: a snapshot image the leader built, in the core's portable format.
pub(crate) fn image_path(snap_dir: &Path, term: u64, index: u64) -> PathBuf {
    snap_dir.join(format!("{term:016x}-{index:016x}.image"))
}

/// `(term, index)` of an image file name.
fn parse_image_name(name: &str) -> Option<(u64, u64)> {
    let (term, index) = name.strip_suffix(".image")?.split_once('-')?;
    if term.len() != 16 || index.len() != 16 {
        return None;
    }
    Some((u64::from_str_radix(term, 16).ok()?, u64::from_str_radix(index, 16).ok()?))
}

pub(crate) fn to_core_conf(cs: &raft::prelude::ConfState) -> Result<snapply_core::ConfState, RaftError> {
    let list = |ids: &[u64]| -> Result<snapply_core::IdList, RaftError> {
        snapply_core::IdList::from_slice(ids).map_err(|_| RaftError::Config {
            what: format!("a configuration of {} nodes: snapply holds at most 16", ids.len()),
        })
    };
    Ok(snapply_core::ConfState {
        voters: list(&cs.voters)?,
        learners: list(&cs.learners)?,
        voters_outgoing: list(&cs.voters_outgoing)?,
        learners_next: list(&cs.learners_next)?,
        auto_leave: cs.auto_leave,
    })
}

pub(crate) fn to_raft_conf(cs: &snapply_core::ConfState) -> raft::prelude::ConfState {
    raft::prelude::ConfState {
        voters: cs.voters.to_vec(),
        learners: cs.learners.to_vec(),
        voters_outgoing: cs.voters_outgoing.to_vec(),
        learners_next: cs.learners_next.to_vec(),
        auto_leave: cs.auto_leave,
    }
}

pub(crate) fn to_core_metadata(
    m: &raft::prelude::SnapshotMetadata,
) -> Result<snapply_core::SnapshotMetadata, RaftError> {
    Ok(snapply_core::SnapshotMetadata { index: m.index, term: m.term, conf_state: to_core_conf(m.get_conf_state())? })
}

pub(crate) fn to_raft_metadata(m: &snapply_core::SnapshotMetadata) -> raft::prelude::SnapshotMetadata {
    let mut out = raft::prelude::SnapshotMetadata { index: m.index, term: m.term, ..Default::default() };
    out.set_conf_state(to_raft_conf(&m.conf_state));
    out
}

/// A snapshot image the leader built and saved.
#[derive(Clone, Debug)]
pub(crate) struct ImageFile {
    pub(crate) metadata: snapply_core::SnapshotMetadata,
    pub(crate) len: u64,
}

impl ImageFile {
    /// The raft snapshot raft-rs is offered: metadata only, the image stays in its file.
    pub(crate) fn raft_snapshot(&self) -> raft::prelude::Snapshot {
        raft::prelude::Snapshot { metadata: Some(to_raft_metadata(&self.metadata)), ..Default::default() }
    }
}

/// What a snapshot of the live backend is built from: taken on the ready loop, at its applied
/// index.
pub(crate) struct Build {
    pub(crate) metadata: snapply_core::SnapshotMetadata,
    pub(crate) v2: Vec<u8>,
    pub(crate) view: RedbView,
    pub(crate) snap_dir: PathBuf,
}

/// Runs `f` on a blocking thread with a read transaction of `view`. Returns once the
/// transaction is begun: from then on the loop may apply entries, `f` sees the backend as it was
/// when this was called.
///
/// # Errors
/// [`RaftError::Backend`] if the read transaction cannot be begun.
fn on_read_txn(view: RedbView, f: impl FnOnce(&RedbRead<'_>) + Send + 'static) -> Result<(), RaftError> {
    let (begun_tx, begun_rx) = std::sync::mpsc::sync_channel(1);
    tokio::task::spawn_blocking(move || {
        let txn = match view.read() {
            Ok(txn) => {
                let _ = begun_tx.send(Ok(()));
                txn
            }
            Err(e) => {
                let _ = begun_tx.send(Err(e));
                return;
            }
        };
        f(&txn);
    });
    match begun_rx.recv() {
        Ok(r) => r.map_err(RaftError::from),
        Err(_) => Err(RaftError::Image { what: "the snapshot builder stopped before it began".into() }),
    }
}

impl Build {
    /// Builds the image on a blocking thread and sends the outcome to `done`. Returns once the
    /// thread's read transaction is begun: from then on the loop may apply entries, the image
    /// is of the backend as it was at the build's index.
    ///
    /// # Errors
    /// [`RaftError::Backend`] if the read transaction cannot be begun.
    pub(crate) fn spawn(
        self,
        done: tokio::sync::mpsc::UnboundedSender<Result<ImageFile, RaftError>>,
    ) -> Result<(), RaftError> {
        let Build { metadata, v2, view, snap_dir } = self;
        on_read_txn(view, move |txn| {
            let _ = done.send(write_image(txn, &metadata, &v2, &snap_dir));
        })
    }

    /// Builds the image on the calling thread.
    pub(crate) fn run(self) -> Result<ImageFile, RaftError> {
        let txn = self.view.read()?;
        write_image(&txn, &self.metadata, &self.v2, &self.snap_dir)
    }
}

/// An image file being written.
struct FileSink(std::io::BufWriter<std::fs::File>);

impl Sink for FileSink {
    type Error = std::io::Error;

    fn write_all(&mut self, bytes: &[u8]) -> Result<(), std::io::Error> {
        std::io::Write::write_all(&mut self.0, bytes)
    }
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Encodes `txn` (with `metadata` and `v2`) into `<term>-<index>.image` of `snap_dir`, durably:
/// written under a `.tmp` name (swept at the next start if this stops halfway), synced, renamed,
/// the directory synced.
fn write_image<R: ReadTxn + ?Sized>(
    txn: &R,
    metadata: &snapply_core::SnapshotMetadata,
    v2: &[u8],
    snap_dir: &Path,
) -> Result<ImageFile, RaftError> {
    let path = image_path(snap_dir, metadata.term, metadata.index);
    let mut tmp = path.clone().into_os_string();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let io = |op: &'static str| move |source| RaftError::Io { op, source };
    let result = (|| {
        let file = std::fs::File::create(&tmp).map_err(io("creating a snapshot image"))?;
        let mut sink = FileSink(std::io::BufWriter::with_capacity(1 << 20, file));
        image::encode(metadata, txn, v2, &mut sink).map_err(|e| RaftError::Image { what: format!("{e:?}") })?;
        let file = sink
            .0
            .into_inner()
            .map_err(|e| RaftError::Io { op: "writing a snapshot image", source: e.into_error() })?;
        file.sync_all().map_err(io("syncing a snapshot image"))?;
        let len = file.metadata().map_err(io("reading a snapshot image's size"))?.len();
        std::fs::rename(&tmp, &path).map_err(io("renaming a snapshot image into place"))?;
        sync_dir(snap_dir).map_err(io("syncing the snapshot directory"))?;
        Ok(ImageFile { metadata: metadata.clone(), len })
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// An image of a member's state encoded while it is read, chunk by chunk (etcd's
/// `Maintenance.Snapshot`, which streams its backend from a read transaction): see
/// [`crate::Client::snapshot`]. At most a few chunks are in memory: the encoder waits while
/// the reader has not taken them. Dropping the stream stops the encoder and ends its read
/// transaction.
#[derive(Debug)]
pub struct ImageStream {
    rx: tokio::sync::mpsc::Receiver<Result<Vec<u8>, RaftError>>,
}

/// Chunks encoded ahead of the reader.
const STREAM_AHEAD: usize = 4;

impl ImageStream {
    /// The next chunk of the image (at most the chunk size asked for, never empty); `None` once
    /// the whole image was read.
    ///
    /// # Errors
    /// [`RaftError::Image`] if encoding failed (the backend could not be read): the bytes read
    /// so far are not an image.
    pub async fn next(&mut self) -> Option<Result<Vec<u8>, RaftError>> {
        self.rx.recv().await
    }
}

/// The reader of an [`ImageStream`] went away.
#[derive(Debug)]
struct Closed;

/// The encoder's sink: full chunks go to the stream's channel, waiting while it is full.
struct ChunkSink {
    chunk: usize,
    buf: Vec<u8>,
    tx: tokio::sync::mpsc::Sender<Result<Vec<u8>, RaftError>>,
}

impl ChunkSink {
    fn send(&mut self) -> Result<(), Closed> {
        let full = std::mem::replace(&mut self.buf, Vec::with_capacity(self.chunk));
        if full.is_empty() {
            return Ok(());
        }
        self.tx.blocking_send(Ok(full)).map_err(|_| Closed)
    }
}

impl Sink for ChunkSink {
    type Error = Closed;

    fn write_all(&mut self, mut bytes: &[u8]) -> Result<(), Closed> {
        while !bytes.is_empty() {
            let room = self.chunk.saturating_sub(self.buf.len()).max(1);
            let (now, rest) = bytes.split_at(room.min(bytes.len()));
            self.buf.extend_from_slice(now);
            bytes = rest;
            if self.buf.len() >= self.chunk {
                self.send()?;
            }
        }
        Ok(())
    }
}

/// Streams the image of `view` (with `metadata` and `v2`, taken with it at the applied index)
/// in chunks of `chunk` bytes, encoded on a blocking thread from a read transaction begun
/// before this returns.
///
/// # Errors
/// [`RaftError::Backend`] if the read transaction cannot be begun.
pub(crate) fn stream(
    view: RedbView,
    metadata: snapply_core::SnapshotMetadata,
    v2: Vec<u8>,
    chunk: usize,
) -> Result<ImageStream, RaftError> {
    let chunk = chunk.max(1);
    let (tx, rx) = tokio::sync::mpsc::channel(STREAM_AHEAD);
    on_read_txn(view, move |txn| {
        let mut sink = ChunkSink { chunk, buf: Vec::with_capacity(chunk), tx };
        match image::encode(&metadata, txn, &v2, &mut sink) {
            Ok(_) => {
                let _ = sink.send();
            }
            // The reader went away: nothing to tell.
            Err(image::EncodeError::Sink(Closed)) => {}
            Err(e) => {
                let failed = RaftError::Image { what: format!("{e:?}") };
                let _ = sink.tx.blocking_send(Err(failed));
            }
        }
    })?;
    Ok(ImageStream { rx })
}

/// Removes the oldest images of `snap_dir` past the `keep` newest (etcd's `purgeFile` of
/// `--max-snapshots`); returns the paths removed. An image being sent stays readable to its
/// sender after it is removed (it holds it open).
pub(crate) fn purge_images(snap_dir: &Path, keep: usize) -> Result<Vec<PathBuf>, RaftError> {
    let io = |op: &'static str| move |source| RaftError::Io { op, source };
    let mut found = Vec::new();
    for entry in std::fs::read_dir(snap_dir).map_err(io("listing the snapshot directory"))? {
        let entry = entry.map_err(io("listing the snapshot directory"))?;
        if let Some((term, index)) = entry.file_name().to_str().and_then(parse_image_name) {
            found.push(((index, term), entry.path()));
        }
    }
    found.sort_unstable_by_key(|f| std::cmp::Reverse(f.0));
    let mut removed = Vec::new();
    for (_, path) in found.into_iter().skip(keep.max(1)) {
        std::fs::remove_file(&path).map_err(io("purging a snapshot image"))?;
        removed.push(path);
    }
    if !removed.is_empty() {
        sync_dir(snap_dir).map_err(io("syncing the snapshot directory"))?;
    }
    Ok(removed)
}

/// A snapshot a follower received and made durable, waiting for raft-rs to hand it back in a
/// `Ready`.
#[derive(Debug)]
pub(crate) struct Received {
    pub(crate) persisted: PersistedSnapshot,
    pub(crate) bytes: u64,
}

/// The follower's side of snapshot transfers: where and how they are persisted, and those
/// persisted but not yet applied, by (index, term).
#[derive(Clone, Debug)]
pub(crate) struct Inbound {
    pub(crate) dir: DataDir,
    pub(crate) config: snapply_core::Config,
    pub(crate) max_bytes: u64,
    ready: Arc<Mutex<BTreeMap<(u64, u64), Received>>>,
}

impl Inbound {
    pub(crate) fn new(dir: DataDir, config: snapply_core::Config, max_bytes: u64) -> Self {
        Inbound { dir, config, max_bytes, ready: Arc::default() }
    }

    fn ready(&self) -> MutexGuard<'_, BTreeMap<(u64, u64), Received>> {
        self.ready.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn put(&self, index: u64, term: u64, received: Received) {
        self.ready().insert((index, term), received);
    }

    /// The received snapshot at `index` and `term`; those at or below `index` are dropped.
    pub(crate) fn take(&self, index: u64, term: u64) -> Option<Received> {
        let mut ready = self.ready();
        let found = ready.remove(&(index, term));
        ready.retain(|&(i, _), _| i > index);
        found
    }
}

/// One piece of an image as the transport hands it to the persisting thread.
#[derive(Debug)]
pub(crate) enum Piece {
    Data(Vec<u8>),
    End,
}

/// An image [`Source`] fed by the transport through a bounded channel: the connection is read
/// only as fast as the image is persisted (backpressure), and at most the channel's pieces are
/// in memory. A channel closed before [`Piece::End`] is a broken transfer: an error, so the
/// persist fails and leaves nothing.
pub(crate) struct ChunkSource {
    rx: tokio::sync::mpsc::Receiver<Piece>,
    current: Vec<u8>,
    at: usize,
    ended: bool,
}

impl ChunkSource {
    pub(crate) fn new(rx: tokio::sync::mpsc::Receiver<Piece>) -> Self {
        ChunkSource { rx, current: Vec::new(), at: 0, ended: false }
    }
}

impl Source for ChunkSource {
    type Error = std::io::Error;

    fn read(&mut self, buf: &mut [u8]) -> Result<usize, std::io::Error> {
        loop {
            if let Some(rest) = self.current.get(self.at..)
                && !rest.is_empty()
            {
                let n = rest.len().min(buf.len());
                if let (Some(to), Some(from)) = (buf.get_mut(..n), rest.get(..n)) {
                    to.copy_from_slice(from);
                }
                self.at += n;
                return Ok(n);
            }
            if self.ended {
                return Ok(0);
            }
            match self.rx.blocking_recv() {
                Some(Piece::Data(data)) => {
                    self.current = data;
                    self.at = 0;
                }
                Some(Piece::End) => self.ended = true,
                None => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the snapshot transfer broke off",
                    ));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_past_the_newest_kept_are_purged_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        for (term, index) in [(1, 10), (2, 30), (2, 20), (3, 40)] {
            std::fs::write(image_path(dir.path(), term, index), b"x").unwrap();
        }
        std::fs::write(dir.path().join("0000000000000001-000000000000000a.snap"), b"kept").unwrap();
        let removed = purge_images(dir.path(), 2).unwrap();
        assert_eq!(removed, vec![image_path(dir.path(), 2, 20), image_path(dir.path(), 1, 10)]);
        assert!(image_path(dir.path(), 3, 40).exists() && image_path(dir.path(), 2, 30).exists());
        assert!(dir.path().join("0000000000000001-000000000000000a.snap").exists());
        // At least the newest is kept.
        assert_eq!(purge_images(dir.path(), 0).unwrap(), vec![image_path(dir.path(), 2, 30)]);
    }

    #[test]
    fn a_chunk_source_reads_its_pieces_and_a_broken_transfer_is_an_error() {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.try_send(Piece::Data(b"abc".to_vec())).unwrap();
        tx.try_send(Piece::Data(b"de".to_vec())).unwrap();
        tx.try_send(Piece::End).unwrap();
        let mut s = ChunkSource::new(rx);
        let mut buf = [0u8; 2];
        let mut out = Vec::new();
        loop {
            let n = s.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        assert_eq!(out, b"abcde");

        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.try_send(Piece::Data(b"abc".to_vec())).unwrap();
        drop(tx);
        let mut s = ChunkSource::new(rx);
        let mut buf = [0u8; 8];
        assert_eq!(s.read(&mut buf).unwrap(), 3);
        assert_eq!(s.read(&mut buf).unwrap_err().kind(), std::io::ErrorKind::UnexpectedEof);
    }
}
