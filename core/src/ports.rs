//! The ports: what the pipeline needs from the world, as small traits adapters implement.
//!
//! The backend port lives in [`crate::backend`]; the live-backend slot is the node itself,
//! borrowed exclusively by the pipeline from validation to the end (so nothing else, not even a
//! defragmentation, can touch it between opening the new backend and swapping it in: etcd
//! #20271).

use crate::backend::Backend;
use crate::image::Source;
use crate::raft::{ImageData, SnapshotMetadata};
use crate::store::MemberId;

/// What went wrong in a port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum PortErrorKind {
    /// The medium or the network failed.
    Io,
    /// The snapshot (image, metadata) is corrupted or malformed.
    Corrupt,
    /// A capacity is exhausted.
    Full,
    /// What was asked for does not exist (no such persisted snapshot).
    NotFound,
    /// The caller broke the port's contract (a bug, would have been a panic).
    Misuse,
}

/// A port failed. Adapters map their own errors into this, keeping a short static context, so
/// the pipeline's error type does not depend on any adapter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct PortError {
    /// The kind of failure.
    pub kind: PortErrorKind,
    /// What was being done.
    pub context: &'static str,
}

impl PortError {
    /// A failure of `kind` while doing `context`.
    pub const fn new(kind: PortErrorKind, context: &'static str) -> Self {
        PortError { kind, context }
    }
}

impl core::fmt::Display for PortError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let kind = match self.kind {
            PortErrorKind::Io => "i/o error",
            PortErrorKind::Corrupt => "corrupt snapshot",
            PortErrorKind::Full => "capacity exhausted",
            PortErrorKind::NotFound => "not found",
            PortErrorKind::Misuse => "misuse",
        };
        write!(f, "{kind} while {}", self.context)
    }
}

impl core::error::Error for PortError {}

/// Handed by the pipeline to [`SnapshotStore::persist`]; the only way to make a [`Durable`].
///
/// It cannot be built outside the core, so the `Persisted` phase can only be reached through a
/// snapshot store that was asked to persist this very snapshot.
#[derive(Debug)]
#[must_use = "a snapshot store proves durability by confirming the ticket"]
pub struct PersistTicket {
    index: u64,
    term: u64,
}

impl PersistTicket {
    pub(crate) fn new(index: u64, term: u64) -> Self {
        PersistTicket { index, term }
    }

    /// Index of the snapshot to persist.
    pub fn index(&self) -> u64 {
        self.index
    }

    /// Term of the snapshot to persist.
    pub fn term(&self) -> u64 {
        self.term
    }

    /// Confirms that the snapshot's metadata and data are durable. Call it only after the
    /// medium has acknowledged the write (`fsync`, flash program verified).
    pub fn confirm(self) -> Durable {
        Durable { index: self.index, term: self.term }
    }
}

/// Evidence that a snapshot is durable on the node's own storage.
#[derive(Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Durable {
    index: u64,
    term: u64,
}

impl Durable {
    /// Index of the durable snapshot.
    pub fn index(&self) -> u64 {
        self.index
    }

    /// Term of the durable snapshot.
    pub fn term(&self) -> u64 {
        self.term
    }
}

/// Where snapshots are persisted and their backends opened (etcd's snapshotter plus
/// `openSnapshotBackend`).
///
/// A persisted snapshot stays pinned until [`SnapshotStore::release_before`] is called with a
/// newer applied snapshot: a second snapshot arriving quickly must not delete the first while it
/// waits to be applied (etcd #18055, #20133).
pub trait SnapshotStore {
    /// The backend a persisted snapshot opens into.
    type Backend: Backend;

    /// Makes `snapshot` (metadata and image) durable, then confirms `ticket`. Checking the
    /// image and materialising its backend belongs here: it only depends on the snapshot's bytes
    /// and keeps that work off the apply loop's critical path.
    ///
    /// The image is read once, front to back; a store that keeps it must check it (the
    /// decoder verifies every frame's CRC and the trailer's SHA-256) before confirming.
    fn persist(
        &mut self,
        metadata: &SnapshotMetadata,
        image: ImageData<'_>,
        ticket: PersistTicket,
    ) -> Result<Durable, PortError>;

    /// Opens the backend of the durable snapshot (etcd's `openSnapshotBackend`).
    fn open_backend(&mut self, snapshot: &Durable) -> Result<Self::Backend, PortError>;

    /// The v2 store data of the durable snapshot.
    fn v2_data(&mut self, snapshot: &Durable) -> Result<&[u8], PortError>;

    /// The snapshot `applied` is applied: snapshots older than it may be deleted.
    fn release_before(&mut self, applied: &Durable) -> Result<(), PortError>;
}

/// Adapts any image [`Source`] to the one [`ImageData::Stream`] takes: its errors become
/// [`PortErrorKind::Io`] port errors.
#[derive(Debug)]
pub struct ImageStream<S>(S);

impl<S: Source> ImageStream<S> {
    /// Wraps `source`.
    pub fn new(source: S) -> Self {
        ImageStream(source)
    }

    /// The wrapped source.
    pub fn into_inner(self) -> S {
        self.0
    }
}

impl<S: Source> Source for ImageStream<S> {
    type Error = PortError;

    fn read(&mut self, buf: &mut [u8]) -> Result<usize, PortError> {
        self.0.read(buf).map_err(|_| PortError::new(PortErrorKind::Io, "reading the snapshot image stream"))
    }
}

/// The peer transport (etcd's `rafthttp.Transporter`).
pub trait Transport {
    /// Removes every peer.
    fn remove_all_peers(&mut self);
    /// Adds a peer reachable at `peer_urls`.
    fn add_peer(&mut self, id: MemberId, peer_urls: &[&[u8]]) -> Result<(), PortError>;
}

/// A phase of the pipeline, named by the transition that reaches it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Phase {
    /// Reaching `Validated`.
    Validate,
    /// Reaching `Persisted`.
    Persist,
    /// Reaching `BackendOpened`.
    OpenBackend,
    /// Reaching `IndexBound`.
    BindIndex,
    /// Reaching `LeaseRestored`.
    RestoreLease,
    /// Reaching `MvccRestored`.
    RestoreMvcc,
    /// Reaching `BackendSwapped`.
    SwapBackend,
    /// Reaching `AlarmsRestored`.
    RestoreAlarms,
    /// Reaching `AuthRestored`.
    RestoreAuth,
    /// Reaching `V2Restored`.
    RestoreV2,
    /// Reaching `ClusterRestored`.
    RestoreCluster,
    /// Reaching `PeersUpdated`.
    UpdatePeers,
    /// Reaching `Applied`.
    Finish,
}

impl Phase {
    /// Every phase, in order.
    pub const ALL: [Phase; 13] = [
        Phase::Validate,
        Phase::Persist,
        Phase::OpenBackend,
        Phase::BindIndex,
        Phase::RestoreLease,
        Phase::RestoreMvcc,
        Phase::SwapBackend,
        Phase::RestoreAlarms,
        Phase::RestoreAuth,
        Phase::RestoreV2,
        Phase::RestoreCluster,
        Phase::UpdatePeers,
        Phase::Finish,
    ];

    /// The name of the state the phase reaches.
    pub const fn state(self) -> &'static str {
        match self {
            Phase::Validate => "Validated",
            Phase::Persist => "Persisted",
            Phase::OpenBackend => "BackendOpened",
            Phase::BindIndex => "IndexBound",
            Phase::RestoreLease => "LeaseRestored",
            Phase::RestoreMvcc => "MvccRestored",
            Phase::SwapBackend => "BackendSwapped",
            Phase::RestoreAlarms => "AlarmsRestored",
            Phase::RestoreAuth => "AuthRestored",
            Phase::RestoreV2 => "V2Restored",
            Phase::RestoreCluster => "ClusterRestored",
            Phase::UpdatePeers => "PeersUpdated",
            Phase::Finish => "Applied",
        }
    }
}

/// The fields etcd logs with `applying snapshot` and `applied snapshot`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct SnapshotFields {
    /// `current-snapshot-index`.
    pub current_snapshot_index: u64,
    /// `current-applied-index`.
    pub current_applied_index: u64,
    /// `incoming-leader-snapshot-index`.
    pub incoming_leader_snapshot_index: u64,
    /// `incoming-leader-snapshot-term`.
    pub incoming_leader_snapshot_term: u64,
}

/// What the pipeline reports, with etcd's messages (see [`Event::message`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum Event {
    /// `applying snapshot`.
    ApplyingSnapshot(SnapshotFields),
    /// `applied snapshot`: logged on every exit, success or failure (etcd's `defer`).
    AppliedSnapshot(SnapshotFields),
    /// `unexpected leader snapshot from outdated index` (etcd panics; snapply refuses).
    OutdatedSnapshot(SnapshotFields),
    /// `restoring lease store`.
    RestoringLeaseStore,
    /// `restored lease store`.
    RestoredLeaseStore,
    /// `restoring mvcc store`.
    RestoringMvccStore,
    /// `restored mvcc store`, with `consistent-index`.
    RestoredMvccStore {
        /// `consistent-index`.
        consistent_index: u64,
    },
    /// `restoring alarm store`.
    RestoringAlarmStore,
    /// `restored alarm store`.
    RestoredAlarmStore,
    /// `restoring auth store`.
    RestoringAuthStore,
    /// `restored auth store`.
    RestoredAuthStore,
    /// `restoring v2 store`.
    RestoringV2Store,
    /// `restored v2 store`.
    RestoredV2Store,
    /// `restoring cluster configuration`.
    RestoringClusterConfiguration,
    /// `restored cluster configuration`.
    RestoredClusterConfiguration,
    /// `removing old peers from network`.
    RemovingOldPeers,
    /// `removed old peers from network`.
    RemovedOldPeers,
    /// `adding peers from new cluster configuration`.
    AddingPeers,
    /// `added peers from new cluster configuration`.
    AddedPeers,
    /// `failed to apply snapshot`: a phase failed.
    Failed {
        /// The phase that failed.
        phase: Phase,
        /// Whether the node is past the swap (etcd would panic here).
        fatal: bool,
    },
}

impl Event {
    /// The message etcd logs for this event.
    pub const fn message(&self) -> &'static str {
        match self {
            Event::ApplyingSnapshot(_) => "applying snapshot",
            Event::AppliedSnapshot(_) => "applied snapshot",
            Event::OutdatedSnapshot(_) => "unexpected leader snapshot from outdated index",
            Event::RestoringLeaseStore => "restoring lease store",
            Event::RestoredLeaseStore => "restored lease store",
            Event::RestoringMvccStore => "restoring mvcc store",
            Event::RestoredMvccStore { .. } => "restored mvcc store",
            Event::RestoringAlarmStore => "restoring alarm store",
            Event::RestoredAlarmStore => "restored alarm store",
            Event::RestoringAuthStore => "restoring auth store",
            Event::RestoredAuthStore => "restored auth store",
            Event::RestoringV2Store => "restoring v2 store",
            Event::RestoredV2Store => "restored v2 store",
            Event::RestoringClusterConfiguration => "restoring cluster configuration",
            Event::RestoredClusterConfiguration => "restored cluster configuration",
            Event::RemovingOldPeers => "removing old peers from network",
            Event::RemovedOldPeers => "removed old peers from network",
            Event::AddingPeers => "adding peers from new cluster configuration",
            Event::AddedPeers => "added peers from new cluster configuration",
            Event::Failed { .. } => "failed to apply snapshot",
        }
    }
}

/// Logs, metrics and timing. Every method has a default that does nothing.
pub trait Observer {
    /// An event, with etcd's message and fields.
    fn event(&mut self, event: &Event) {
        let _ = event;
    }
    /// Adds `delta` to `etcd_server_snapshot_apply_in_progress_total` ("1 if the server is
    /// applying the incoming snapshot. 0 if none.").
    fn in_progress(&mut self, delta: i8) {
        let _ = delta;
    }
    /// A monotonic clock in microseconds, if the observer has one; used for phase durations.
    fn now_micros(&mut self) -> Option<u64> {
        None
    }
    /// `phase` finished successfully after `micros` microseconds (`None` without a clock).
    fn phase_done(&mut self, phase: Phase, micros: Option<u64>) {
        let _ = (phase, micros);
    }
}

/// An observer that observes nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoObserver;

impl Observer for NoObserver {}

/// The ports a restore uses, borrowed for its whole run.
#[derive(Debug)]
pub struct Ports<'p, S, T, O> {
    /// Where the snapshot is persisted and its backend opened.
    pub storage: &'p mut S,
    /// The peer transport.
    pub transport: &'p mut T,
    /// Logs, metrics and timing.
    pub observer: &'p mut O,
}
