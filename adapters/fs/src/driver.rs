//! The async driver: a node on a data directory applying snapshots under tokio.
//!
//! The pipeline stays synchronous; the driver runs it on a blocking task, so neither the disk
//! work nor the O(keys) phases stall the runtime's threads, and awaits the raft side's
//! "persisted" signal (etcd's `<-apply.notifyc`) as a future inside the persist phase
//! ([`Validated::persist_with`]): the ticket stays on the run's thread and is confirmed there
//! once the signal says the snapshot is durable.
//!
//! Readers are served from a [`ReadSlot`] while a restore runs: a read view is replaced at the
//! core's swap, in one store, so a reader sees the whole old state or the whole new one.

use std::cell::RefCell;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use snapply_core::backend::BackendError;
use snapply_core::collections::Growable;
use snapply_core::image::Source;
use snapply_core::pipeline::{Persisted, Prebuilt, Validated};
use snapply_core::ports::{
    Durable, ImageStream, PersistTicket, PortError, Ports, ReleaseTicket, SnapshotStore, Transport,
};
use snapply_core::{Config, ImageData, Node, Progress, Snapshot, SnapshotMetadata};
use snapply_core::{Event, Observer, Phase};

use crate::backend::{RedbBackend, RedbRead, RedbView};
use crate::datadir::DataDir;
use crate::error::FsError;
use crate::snapfile::SnapInfo;
use crate::store::{FsSnapshotStore, persist_building};

/// A node whose live backend is a data directory's `member/db`.
pub type DiskNode = Node<RedbBackend, Growable>;

/// A snapshot the raft side made durable, as the apply side awaits it (what etcd's raft loop
/// signals on `apply.notifyc` once `saveSnap` returned).
#[derive(Debug)]
pub struct PersistedSnapshot {
    info: SnapInfo,
    prebuilt: Option<Prebuilt<Growable>>,
}

impl PersistedSnapshot {
    /// A persisted snapshot with nothing built ahead: the apply rebuilds the lessor and the key
    /// index from the backend.
    pub fn new(info: SnapInfo) -> Self {
        PersistedSnapshot { info, prebuilt: None }
    }

    /// What was persisted.
    pub fn info(&self) -> &SnapInfo {
        &self.info
    }

    /// Whether the lessor and key index were built while persisting.
    pub fn is_prebuilt(&self) -> bool {
        self.prebuilt.is_some()
    }
}

/// Persists a snapshot on a blocking task, as [`crate::persist`] does, for the node whose
/// configuration is `node`: the lessor and key index its recovery check builds are kept, built
/// with the node's minimum lease TTL, for the apply to install without scanning the keys again
/// ([`Prebuilt`]), and the v2 data is checked against the node's v2 deprecation level. So
/// everything that depends only on the snapshot's bytes is done here, off the apply's critical
/// path.
///
/// # Errors
/// As [`crate::persist`]; [`FsError::Store`] if the v2 data holds what the deprecation level
/// refuses; [`FsError::Task`] if the blocking task panicked or the runtime is shutting down.
pub async fn persist_for_apply(
    dir: DataDir,
    metadata: SnapshotMetadata,
    image: Vec<u8>,
    node: Config,
) -> Result<PersistedSnapshot, FsError> {
    tokio::task::spawn_blocking(move || {
        let mut buf = crate::store::decode_buffer();
        persist_building(&dir, &mut buf, &metadata, ImageData::Bytes(&image), Some(&node))
            .map(|(info, prebuilt)| PersistedSnapshot { info, prebuilt })
    })
    .await
    .map_err(|_| FsError::Task { what: "persisting a snapshot" })?
}

/// [`persist_for_apply`] with the image streamed from the file at `image` (as a transport
/// spools it), through the decoder's fixed buffer: the image is never held in memory whole.
///
/// # Errors
/// As [`persist_for_apply`]; [`FsError::Io`] if the file cannot be opened, [`FsError::Stream`]
/// if reading it fails.
pub async fn persist_file_for_apply(
    dir: DataDir,
    metadata: SnapshotMetadata,
    image: PathBuf,
    node: Config,
) -> Result<PersistedSnapshot, FsError> {
    tokio::task::spawn_blocking(move || {
        let file = std::fs::File::open(&image).map_err(|e| FsError::io("opening the snapshot image", &image, e))?;
        persist_stream_for_apply(&dir, &metadata, FileSource(std::io::BufReader::with_capacity(1 << 20, file)), &node)
    })
    .await
    .map_err(|_| FsError::Task { what: "persisting a snapshot" })?
}

/// [`persist_for_apply`] on the calling thread, with the image read from `source` as it
/// arrives (a transport hands it over chunk by chunk), through the decoder's fixed buffer: the
/// image is never held in memory whole, and the snapshot is durable, checked and its stores
/// built when this returns. A source that fails or ends early leaves nothing persisted.
///
/// # Errors
/// As [`crate::persist`]; [`FsError::Stream`] if `source` failed.
pub fn persist_stream_for_apply<S: Source>(
    dir: &DataDir,
    metadata: &SnapshotMetadata,
    source: S,
    node: &Config,
) -> Result<PersistedSnapshot, FsError> {
    let mut source = ImageStream::new(source);
    let mut buf = crate::store::decode_buffer();
    persist_building(dir, &mut buf, metadata, ImageData::Stream(&mut source), Some(node))
        .map(|(info, prebuilt)| PersistedSnapshot { info, prebuilt })
}

/// Applies a snapshot already made durable by [`persist_stream_for_apply`] (or its siblings),
/// on the calling thread, for a loop that owns its node: the persist phase confirms the run's
/// ticket from `persisted` (which must be this snapshot), installs the lessor and key index it
/// carries pre-built, and the other phases follow at once. Returns the progress and the old
/// backend, as [`apply_received`] does.
///
/// `Ok(None)` for an empty snapshot (index 0).
///
/// # Errors
/// [`FsError::MetadataMismatch`] if `persisted` is another snapshot; otherwise as
/// [`apply_received`].
pub fn apply_persisted(
    node: &mut DiskNode,
    store: &mut FsSnapshotStore,
    transport: &mut dyn Transport,
    observer: &mut dyn Observer,
    metadata: &SnapshotMetadata,
    persisted: PersistedSnapshot,
) -> Result<Option<(Progress, RedbBackend)>, FsError> {
    let ports = Ports { storage: store, transport, observer };
    let sha256 = persisted.info.image_sha256;
    let Some(validated) = Validated::new(node, ports, Snapshot::persisted(metadata, sha256))? else {
        return Ok(None);
    };
    let mut prebuilt = None;
    let kept = &mut prebuilt;
    let persisting = validated.persist_with(async move |_image, ticket| {
        if persisted.info.metadata != *ticket.metadata() {
            return Err(FsError::MetadataMismatch { index: ticket.index() }.to_port());
        }
        *kept = persisted.prebuilt;
        Ok(ticket.confirm(persisted.info.image_sha256))
    });
    let persisted = completed(persisting).ok_or(FsError::Task { what: "applying a persisted snapshot" })??;
    from_persisted(persisted, prebuilt).map(Some)
}

/// An image [`Source`] on anything `std::io::Read`.
struct FileSource<R>(R);

impl<R: std::io::Read> Source for FileSource<R> {
    type Error = std::io::Error;

    fn read(&mut self, buf: &mut [u8]) -> Result<usize, std::io::Error> {
        loop {
            match self.0.read(buf) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                other => return other,
            }
        }
    }
}

/// One read view: the live backend as it was when the view was published.
#[derive(Debug)]
pub struct ReadView {
    backend: RedbView,
    generation: u64,
}

impl ReadView {
    /// Begins a read transaction on the view's backend: a consistent snapshot of one commit.
    ///
    /// # Errors
    /// The backend's error if redb cannot begin one.
    pub fn read(&self) -> Result<RedbRead<'_>, BackendError> {
        self.backend.read()
    }

    /// How many restores swapped the backend before this view was published (0 for the view
    /// the node started with).
    pub fn generation(&self) -> u64 {
        self.generation
    }
}

/// The live-backend slot readers are served from, shared between the driver and any number
/// of reader tasks.
///
/// A reader takes the current [`ReadView`] (an `Arc` clone under a read lock held for no
/// longer than that) and reads from it as long as it likes; the driver replaces the view at the
/// pipeline's swap. A view keeps its backend's file open, so a reader that took the old view
/// finishes on the old state even after the old backend was closed. A `std` `RwLock` around an
/// `Arc` is all this needs: the lock is never held across a read.
#[derive(Clone, Debug)]
pub struct ReadSlot {
    current: Arc<RwLock<Arc<ReadView>>>,
}

impl ReadSlot {
    fn new(backend: RedbView) -> Self {
        ReadSlot { current: Arc::new(RwLock::new(Arc::new(ReadView { backend, generation: 0 }))) }
    }

    /// The current view.
    pub fn view(&self) -> Arc<ReadView> {
        // A poisoned lock still holds a whole view: it is only ever replaced by one store.
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }

    fn publish(&self, backend: RedbView) {
        let mut current = self.current.write().unwrap_or_else(PoisonError::into_inner);
        let generation = current.generation.saturating_add(1);
        *current = Arc::new(ReadView { backend, generation });
    }
}

/// What the driver owns and lends to each run.
struct Parts {
    node: DiskNode,
    store: FsSnapshotStore,
    transport: Box<dyn Transport + Send>,
    observer: Box<dyn Observer + Send>,
}

/// A node on a data directory, applying snapshots under tokio (etcd's apply loop for
/// snapshots), with readers served from a [`ReadSlot`] meanwhile.
pub struct AsyncNode {
    parts: Arc<Mutex<Parts>>,
    readers: ReadSlot,
}

impl core::fmt::Debug for AsyncNode {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("AsyncNode").finish_non_exhaustive()
    }
}

impl AsyncNode {
    /// A driver for `node`, whose snapshots persist in `store`.
    pub fn new(
        node: DiskNode,
        store: FsSnapshotStore,
        transport: impl Transport + Send + 'static,
        observer: impl Observer + Send + 'static,
    ) -> Self {
        let readers = ReadSlot::new(node.backend().view());
        let parts = Parts { node, store, transport: Box::new(transport), observer: Box::new(observer) };
        AsyncNode { parts: Arc::new(Mutex::new(parts)), readers }
    }

    /// The slot readers are served from.
    pub fn readers(&self) -> ReadSlot {
        self.readers.clone()
    }

    /// Runs `f` on the node, on a blocking task (it waits for a restore in progress).
    ///
    /// # Errors
    /// [`FsError::Task`] if a restore panicked (the node is lost) or the runtime is shutting
    /// down.
    pub async fn with_node<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut DiskNode) -> R + Send + 'static,
    ) -> Result<R, FsError> {
        let parts = Arc::clone(&self.parts);
        tokio::task::spawn_blocking(move || {
            let mut parts = parts.lock().map_err(|_| FsError::Task { what: "applying a snapshot" })?;
            Ok(f(&mut parts.node))
        })
        .await
        .map_err(|_| FsError::Task { what: "reading the node" })?
    }

    /// Applies the snapshot `metadata` names (etcd's `applySnapshot`): the restore runs on a
    /// blocking task; its persist phase awaits `persisted`, the raft side's signal that the
    /// snapshot is durable, and confirms the run's ticket with the digest it carries; the lessor
    /// and key index it carries pre-built, if any, are installed instead of rebuilt. The read
    /// slot gets the new backend at the swap; the old backend is closed on a blocking task of
    /// its own, which the returned future does not wait for (etcd's "closing old backend file"
    /// goroutine).
    ///
    /// The image does not travel with the run: the raft side persisted it. Dropping the
    /// returned future does not stop the restore; the node stays locked until it ends.
    ///
    /// `Ok(None)` for an empty snapshot (index 0).
    ///
    /// # Errors
    /// [`FsError::Apply`] if the pipeline refused or failed (what it leaves is the pipeline's
    /// rule: the old state before the swap, an unfinished mark after it); [`FsError::Task`] if
    /// the blocking task panicked or the runtime is shutting down.
    pub async fn apply_snapshot<F>(&self, metadata: SnapshotMetadata, persisted: F) -> Result<Option<Progress>, FsError>
    where
        F: Future<Output = Result<PersistedSnapshot, FsError>> + Send + 'static,
    {
        let handle = tokio::runtime::Handle::current();
        let parts = Arc::clone(&self.parts);
        let readers = self.readers.clone();
        let closer = handle.clone();
        tokio::task::spawn_blocking(move || {
            let mut parts = parts.lock().map_err(|_| FsError::Task { what: "applying a snapshot" })?;
            let Parts { node, store, transport, observer } = &mut *parts;
            let outcome =
                drive(node, store, &mut **transport, &mut **observer, &metadata, &handle, persisted, readers)?;
            Ok(outcome.map(|(progress, old)| {
                drop(closer.spawn_blocking(move || drop(old)));
                progress
            }))
        })
        .await
        .map_err(|_| FsError::Task { what: "applying a snapshot" })?
    }
}

/// One run, on the blocking task.
#[allow(clippy::too_many_arguments)]
fn drive<F>(
    node: &mut DiskNode,
    store: &mut FsSnapshotStore,
    transport: &mut dyn Transport,
    observer: &mut dyn Observer,
    metadata: &SnapshotMetadata,
    handle: &tokio::runtime::Handle,
    persisted: F,
    readers: ReadSlot,
) -> Result<Option<(Progress, RedbBackend)>, FsError>
where
    F: Future<Output = Result<PersistedSnapshot, FsError>>,
{
    let opened = Rc::new(RefCell::new(None));
    let mut storage = ViewStore { inner: store, opened: Rc::clone(&opened) };
    let mut observer = SwapObserver { inner: observer, opened, readers };
    let ports = Ports { storage: &mut storage, transport, observer: &mut observer };
    // The run's own image is empty and never read: the persist phase below hands the ticket to
    // the closure, which confirms it from the raft side's signal.
    let snapshot = Snapshot::from_bytes(metadata, &[]);
    let Some(validated) = Validated::new(node, ports, snapshot)? else {
        return Ok(None);
    };
    let mut prebuilt = None;
    let kept = &mut prebuilt;
    let persisted = handle.block_on(validated.persist_with(async move |_image, ticket| {
        let done = persisted.await.map_err(|e| e.to_port())?;
        if done.info.metadata != *ticket.metadata() {
            return Err(FsError::MetadataMismatch { index: ticket.index() }.to_port());
        }
        *kept = done.prebuilt;
        Ok(ticket.confirm(done.info.image_sha256))
    }))?;
    from_persisted(persisted, prebuilt).map(Some)
}

/// The phases after the persist one, installing the stores built while persisting if there
/// are some: what [`AsyncNode::apply_snapshot`] and [`apply_received`] share.
fn from_persisted<S: SnapshotStore<Backend = RedbBackend>>(
    persisted: Persisted<'_, Growable, S>,
    prebuilt: Option<Prebuilt<Growable>>,
) -> Result<(Progress, RedbBackend), FsError> {
    let bound = persisted.open_backend()?.bind_index()?;
    let mvcc = match prebuilt {
        Some(prebuilt) => match bound.restore_lease_prebuilt(prebuilt)? {
            (leases, Some(index)) => leases.restore_mvcc_prebuilt(index)?,
            (leases, None) => leases.restore_mvcc()?,
        },
        None => bound.restore_lease()?.restore_mvcc()?,
    };
    let (swapped, old) = mvcc.swap_backend();
    let applied = swapped.restore_alarms().restore_auth().restore_v2().restore_cluster().update_peers()?.finish()?;
    Ok((applied.into_progress(), old))
}

/// Applies a snapshot received whole in memory on the calling thread, for a loop that owns its
/// node and may block (raft-rs hands a follower its leader's snapshot inside a message): the
/// persist phase persists the image while building the lessor and key index the apply then
/// installs, as [`persist_for_apply`] does, and the other phases follow at once. Returns the
/// progress and the old backend, for the caller to close off its loop (etcd closes it on a
/// goroutine of its own).
///
/// `Ok(None)` for an empty snapshot (index 0).
///
/// # Errors
/// [`FsError::Apply`] if the pipeline refused or failed (the old state before the swap, an
/// unfinished mark after it, which [`snapply_core::pipeline::resume`] completes).
pub fn apply_received(
    node: &mut DiskNode,
    store: &mut FsSnapshotStore,
    transport: &mut dyn Transport,
    observer: &mut dyn Observer,
    metadata: &SnapshotMetadata,
    image: &[u8],
) -> Result<Option<(Progress, RedbBackend)>, FsError> {
    let config = *node.config();
    let dir = store.dir().clone();
    let ports = Ports { storage: store, transport, observer };
    let Some(validated) = Validated::new(node, ports, Snapshot::from_bytes(metadata, image))? else {
        return Ok(None);
    };
    let mut prebuilt = None;
    let kept = &mut prebuilt;
    let persisting = validated.persist_with(async move |image, ticket| {
        let mut buf = crate::store::decode_buffer();
        let (info, built) =
            persist_building(&dir, &mut buf, ticket.metadata(), image, Some(&config)).map_err(|e| e.to_port())?;
        if info.metadata != *ticket.metadata() {
            return Err(FsError::MetadataMismatch { index: ticket.index() }.to_port());
        }
        *kept = built;
        Ok(ticket.confirm(info.image_sha256))
    });
    let persisted = completed(persisting).ok_or(FsError::Task { what: "persisting a received snapshot" })??;
    from_persisted(persisted, prebuilt).map(Some)
}

/// The output of a future that never waits (all its work is synchronous), polled once; `None`
/// if it did wait after all.
fn completed<F: Future>(future: F) -> Option<F::Output> {
    let mut future = std::pin::pin!(future);
    match future.as_mut().poll(&mut std::task::Context::from_waker(std::task::Waker::noop())) {
        std::task::Poll::Ready(output) => Some(output),
        std::task::Poll::Pending => None,
    }
}

/// The snapshot store of a run, noting the view of the backend it opens.
struct ViewStore<'a> {
    inner: &'a mut FsSnapshotStore,
    opened: Rc<RefCell<Option<RedbView>>>,
}

impl SnapshotStore for ViewStore<'_> {
    type Backend = RedbBackend;

    fn persist<'r>(&mut self, image: ImageData<'_>, ticket: PersistTicket<'r>) -> Result<Durable<'r>, PortError> {
        self.inner.persist(image, ticket)
    }

    fn open_backend(&mut self, snapshot: &Durable<'_>) -> Result<RedbBackend, PortError> {
        let backend = self.inner.open_backend(snapshot)?;
        *self.opened.borrow_mut() = Some(backend.view());
        Ok(backend)
    }

    fn v2_data(&mut self, snapshot: &Durable<'_>) -> Result<&[u8], PortError> {
        self.inner.v2_data(snapshot)
    }

    fn release_before(&mut self, applied: ReleaseTicket<'_>) -> Result<(), PortError> {
        self.inner.release_before(applied)
    }
}

/// The observer of a run, publishing the opened backend's view when the core reports the swap
/// done: the node and the read slot change backend in the same phase.
struct SwapObserver<'a> {
    inner: &'a mut dyn Observer,
    opened: Rc<RefCell<Option<RedbView>>>,
    readers: ReadSlot,
}

impl Observer for SwapObserver<'_> {
    fn event(&mut self, event: &Event) {
        self.inner.event(event);
    }

    fn in_progress(&mut self, applying: bool) {
        self.inner.in_progress(applying);
    }

    fn now_micros(&mut self) -> Option<u64> {
        self.inner.now_micros()
    }

    fn phase_done(&mut self, phase: Phase, micros: Option<u64>) {
        if phase == Phase::SwapBackend
            && let Some(view) = self.opened.borrow_mut().take()
        {
            self.readers.publish(view);
        }
        self.inner.phase_done(phase, micros);
    }
}
