//! The ports: what the pipeline needs from the world, as small traits adapters implement.
//!
//! The backend port lives in [`crate::backend`]; the live-backend slot is the node itself,
//! borrowed exclusively by the pipeline from validation to the end (so nothing else, not even a
//! defragmentation, can touch it between opening the new backend and swapping it in: etcd
//! #20271).

use core::marker::PhantomData;

use crate::backend::Backend;
use crate::image::Source;
use crate::raft::SnapshotMetadata;
use crate::snapshot::ImageData;
use crate::store::MemberId;

pub use crate::error::{PortError, PortErrorKind};
use crate::observe::Observer;

/// The brand of a proof: an invariant lifetime (so a proof of one run cannot be passed off as
/// one of another run: the compiler never unifies two invariant lifetimes it cannot prove equal)
/// and a raw-pointer marker (so a proof is neither `Send` nor `Sync` and cannot leave the thread
/// of its run). GhostCell's brand, without the closure: the brand is the lifetime parameter of
/// [`SnapshotStore::persist`], so a store cannot keep a ticket beyond the call or confirm
/// anything but the ticket of this very call. An async driver gets the same guarantee from
/// [`crate::pipeline::Validated::persist_with`], whose closure is generic over the brand.
type Brand<'r> = PhantomData<(fn(&'r ()) -> &'r (), *const ())>;

/// The identity of one run of the pipeline, carried by its tickets and proofs beside their
/// lifetime brand, and checked at run time: rustc's implied-bounds hole (rust-lang/rust#25860)
/// lets safe code rebrand a value to another lifetime, so the brand alone does not keep a
/// proof of one run out of another run at the same index and term. Every run (a resumed one
/// too) takes the next value of a process-wide counter; only the core makes one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct RunId(u32);

impl RunId {
    /// The next run's identity. The counter wraps after 2^32 runs; a proof kept that long by a
    /// broken store is the one case this does not catch.
    pub(crate) fn next() -> Self {
        static NEXT: core::sync::atomic::AtomicU32 = core::sync::atomic::AtomicU32::new(1);
        RunId(NEXT.fetch_add(1, core::sync::atomic::Ordering::Relaxed))
    }
}

/// Handed by the pipeline to [`SnapshotStore::persist`], or to the closure of
/// [`crate::pipeline::Validated::persist_with`]; the only way to make a [`Durable`].
///
/// It cannot be built outside the core, cannot outlive the call it was handed to,
/// cannot be sent to another thread, and confirming it proves durability of exactly the snapshot
/// it names (the whole metadata) and of an image with the digest given to
/// [`PersistTicket::confirm`].
#[must_use = "a snapshot store proves durability by confirming the ticket"]
pub struct PersistTicket<'r> {
    metadata: SnapshotMetadata,
    run: RunId,
    _brand: Brand<'r>,
}

impl core::fmt::Debug for PersistTicket<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PersistTicket").field("index", &self.metadata.index).field("term", &self.metadata.term).finish()
    }
}

impl<'r> PersistTicket<'r> {
    pub(crate) fn new(metadata: &SnapshotMetadata, run: RunId) -> Self {
        PersistTicket { metadata: metadata.clone(), run, _brand: PhantomData }
    }

    /// The run the ticket belongs to: the proof it is confirmed into carries it, and the
    /// pipeline refuses a proof of any other run.
    pub fn run(&self) -> RunId {
        self.run
    }

    /// The metadata of the snapshot to persist.
    pub fn metadata(&self) -> &SnapshotMetadata {
        &self.metadata
    }

    /// Index of the snapshot to persist.
    pub fn index(&self) -> u64 {
        self.metadata.index
    }

    /// Term of the snapshot to persist.
    pub fn term(&self) -> u64 {
        self.metadata.term
    }

    /// Confirms that the snapshot's metadata and its image, whose SHA-256 (the digest the
    /// image's trailer carries, checked while decoding) is `sha256`, are durable. Call it only
    /// after the medium has acknowledged the write (`fsync`, flash program verified).
    pub fn confirm(self, sha256: [u8; 32]) -> Durable<'r> {
        Durable { index: self.metadata.index, term: self.metadata.term, sha256, run: self.run, _brand: PhantomData }
    }
}

/// Evidence that a snapshot is durable on the node's own storage: its index, term and image
/// SHA-256 (the digest covers the image's header, so it names the whole metadata too). Only
/// [`PersistTicket::confirm`] makes one, within the run it belongs to.
///
/// It holds no copy of the metadata: every state after the persist phase carries it, and on a
/// device a copy would be 568 bytes more of stack in every frame a state passes through. The
/// run's metadata is in the node's unfinished mark ([`crate::Node::unfinished`]).
pub struct Durable<'r> {
    index: u64,
    term: u64,
    sha256: [u8; 32],
    run: RunId,
    _brand: Brand<'r>,
}

impl core::fmt::Debug for Durable<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Durable").field("index", &self.index).field("term", &self.term).finish()
    }
}

impl Durable<'_> {
    /// Index of the durable snapshot.
    pub fn index(&self) -> u64 {
        self.index
    }

    /// Term of the durable snapshot.
    pub fn term(&self) -> u64 {
        self.term
    }

    /// SHA-256 of the durable snapshot's image.
    pub fn sha256(&self) -> &[u8; 32] {
        &self.sha256
    }

    /// The run whose ticket was confirmed.
    pub fn run(&self) -> RunId {
        self.run
    }
}

/// Handed by the pipeline's last phase, and only by it, to [`SnapshotStore::release_before`]:
/// the snapshot it names is applied, so older snapshots may be deleted. Branded like
/// [`PersistTicket`]: it cannot be built, kept or moved to another thread by a store.
pub struct ReleaseTicket<'r> {
    index: u64,
    term: u64,
    sha256: [u8; 32],
    run: RunId,
    _brand: Brand<'r>,
}

impl core::fmt::Debug for ReleaseTicket<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ReleaseTicket").field("index", &self.index).field("term", &self.term).finish()
    }
}

impl<'r> ReleaseTicket<'r> {
    pub(crate) fn new(durable: &Durable<'r>) -> Self {
        ReleaseTicket {
            index: durable.index(),
            term: durable.term(),
            sha256: durable.sha256,
            run: durable.run,
            _brand: PhantomData,
        }
    }

    /// Index of the applied snapshot.
    pub fn index(&self) -> u64 {
        self.index
    }

    /// Term of the applied snapshot.
    pub fn term(&self) -> u64 {
        self.term
    }

    /// SHA-256 of the applied snapshot's image.
    pub fn sha256(&self) -> &[u8; 32] {
        &self.sha256
    }

    /// The run that applied it (the run whose [`PersistTicket`] the store confirmed).
    pub fn run(&self) -> RunId {
        self.run
    }
}

/// Where snapshots are persisted and their backends opened (etcd's snapshotter plus
/// `openSnapshotBackend`).
///
/// A persisted snapshot stays pinned until [`SnapshotStore::release_before`] is called for it or
/// a newer one: a second snapshot arriving quickly must not delete the first while it waits to
/// be applied (etcd #18055, #20133).
pub trait SnapshotStore {
    /// The backend a persisted snapshot opens into.
    type Backend: Backend;

    /// Makes the snapshot `ticket` names (metadata and image) durable, then confirms `ticket`
    /// with the image's SHA-256. Checking the image and materialising its backend belongs here:
    /// it only depends on the snapshot's bytes and keeps that work off the apply loop's critical
    /// path.
    ///
    /// The image is read once, front to back; a store that keeps it must check it (the
    /// decoder verifies every frame's CRC and the trailer's SHA-256) before confirming. A store
    /// that already holds a snapshot at the ticket's index and term confirms it only if it has
    /// the ticket's whole metadata and the same image digest; [`ImageData::Persisted`] asks for
    /// exactly that and nothing else.
    fn persist<'r>(&mut self, image: ImageData<'_>, ticket: PersistTicket<'r>) -> Result<Durable<'r>, PortError>;

    /// Opens the backend of the durable snapshot (etcd's `openSnapshotBackend`).
    fn open_backend(&mut self, snapshot: &Durable<'_>) -> Result<Self::Backend, PortError>;

    /// The v2 store data of the durable snapshot.
    fn v2_data(&mut self, snapshot: &Durable<'_>) -> Result<&[u8], PortError>;

    /// The snapshot `applied` names is applied: it and newer ones stay, older ones may be
    /// deleted. Only the pipeline's last phase can make the ticket, but a store that hands it on
    /// can give it to another store: a store releases only if it holds the snapshot the ticket
    /// names (index, term, image digest and, where it confirmed the run's ticket itself, the
    /// run: [`ReleaseTicket::run`]) and refuses the ticket otherwise, deleting nothing.
    fn release_before(&mut self, applied: ReleaseTicket<'_>) -> Result<(), PortError>;
}

/// Adapts any image [`Source`] to the one [`ImageData::Stream`] takes: its errors become
/// [`PortErrorKind::Io`] port errors, and the stream's own error is kept for the caller
/// ([`ImageStream::take_error`]).
#[derive(Debug)]
pub struct ImageStream<S: Source> {
    inner: S,
    error: Option<S::Error>,
}

impl<S: Source> ImageStream<S> {
    /// Wraps `source`.
    pub fn new(source: S) -> Self {
        ImageStream { inner: source, error: None }
    }

    /// The last error of the wrapped source, if a read failed.
    pub fn take_error(&mut self) -> Option<S::Error> {
        self.error.take()
    }

    /// The wrapped source.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Source> Source for ImageStream<S> {
    type Error = PortError;

    fn read(&mut self, buf: &mut [u8]) -> Result<usize, PortError> {
        self.inner.read(buf).map_err(|e| {
            self.error = Some(e);
            PortError::new(PortErrorKind::Io, "reading the snapshot image stream")
        })
    }
}

/// The peer transport (etcd's `rafthttp.Transporter`).
pub trait Transport {
    /// Removes every peer.
    fn remove_all_peers(&mut self);
    /// Adds a peer reachable at `peer_urls`.
    fn add_peer(&mut self, id: MemberId, peer_urls: &[&[u8]]) -> Result<(), PortError>;
}

/// The ports a restore uses, borrowed for its whole run. The transport and the observer are
/// called a few times per run, so they are trait objects: one copy of the pipeline per snapshot
/// store, not per combination of ports.
pub struct Ports<'p, S> {
    /// Where the snapshot is persisted and its backend opened.
    pub storage: &'p mut S,
    /// The peer transport.
    pub transport: &'p mut dyn Transport,
    /// Logs, metrics and timing.
    pub observer: &'p mut dyn Observer,
}

impl<S> core::fmt::Debug for Ports<'_, S> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Ports").finish_non_exhaustive()
    }
}
