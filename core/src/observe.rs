//! What the pipeline reports: phases, events with etcd's messages, the in-progress gauge and
//! phase durations, through the [`Observer`] port.

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

/// What the pipeline reports, with etcd's messages (see [`Event::message`]). Its `Display` (and,
/// with the `defmt` feature, its `defmt::Format`) is the line etcd logs: the message, then the
/// fields etcd logs with it (`applied snapshot: current-snapshot-index=… …`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
    /// `failed to apply snapshot`: a phase failed, or the run ended (a state dropped, a panic
    /// unwinding out of a port) before reaching `phase`.
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

    /// Whether etcd logs it as a warning (else as information).
    pub const fn is_warning(&self) -> bool {
        matches!(self, Event::Failed { .. })
    }
}

impl core::fmt::Display for Event {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.message())?;
        match self {
            Event::ApplyingSnapshot(s) | Event::AppliedSnapshot(s) | Event::OutdatedSnapshot(s) => write!(
                f,
                ": current-snapshot-index={} current-applied-index={} incoming-leader-snapshot-index={} incoming-leader-snapshot-term={}",
                s.current_snapshot_index,
                s.current_applied_index,
                s.incoming_leader_snapshot_index,
                s.incoming_leader_snapshot_term
            ),
            Event::RestoredMvccStore { consistent_index } => write!(f, ": consistent-index={consistent_index}"),
            Event::Failed { phase, fatal } => write!(f, ": phase={} fatal={fatal}", phase.state()),
            _ => Ok(()),
        }
    }
}

// The same line as `Display`, for defmt (which formats on the host from its own format strings).
#[cfg(feature = "defmt")]
impl defmt::Format for Event {
    fn format(&self, f: defmt::Formatter<'_>) {
        match self {
            Event::ApplyingSnapshot(s) | Event::AppliedSnapshot(s) | Event::OutdatedSnapshot(s) => defmt::write!(
                f,
                "{=str}: current-snapshot-index={=u64} current-applied-index={=u64} incoming-leader-snapshot-index={=u64} incoming-leader-snapshot-term={=u64}",
                self.message(),
                s.current_snapshot_index,
                s.current_applied_index,
                s.incoming_leader_snapshot_index,
                s.incoming_leader_snapshot_term
            ),
            Event::RestoredMvccStore { consistent_index } => {
                defmt::write!(f, "{=str}: consistent-index={=u64}", self.message(), consistent_index)
            }
            Event::Failed { phase, fatal } => {
                defmt::write!(f, "{=str}: phase={=str} fatal={=bool}", self.message(), phase.state(), fatal)
            }
            _ => defmt::write!(f, "{=str}", self.message()),
        }
    }
}

/// Logs, metrics and timing. Every method has a default that does nothing.
pub trait Observer {
    /// An event, with etcd's message and fields.
    fn event(&mut self, event: &Event) {
        let _ = event;
    }
    /// Sets `etcd_server_snapshot_apply_in_progress_total` ("1 if the server is applying the
    /// incoming snapshot. 0 if none."): `true` when a run starts, `false` when it ends, however
    /// it ends. A run whose state was forgotten (`mem::forget`) leaves it `true` until
    /// [`crate::pipeline::resume`] completes the restore; the node refuses work until then.
    fn in_progress(&mut self, applying: bool) {
        let _ = applying;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_displays_as_the_line_etcd_logs() {
        let fields = SnapshotFields {
            current_snapshot_index: 1,
            current_applied_index: 2,
            incoming_leader_snapshot_index: 3,
            incoming_leader_snapshot_term: 4,
        };
        assert_eq!(
            format!("{}", Event::AppliedSnapshot(fields)),
            "applied snapshot: current-snapshot-index=1 current-applied-index=2 \
             incoming-leader-snapshot-index=3 incoming-leader-snapshot-term=4"
        );
        assert_eq!(
            format!("{}", Event::RestoredMvccStore { consistent_index: 9 }),
            "restored mvcc store: consistent-index=9"
        );
        let failed = Event::Failed { phase: Phase::SwapBackend, fatal: true };
        assert_eq!(format!("{failed}"), "failed to apply snapshot: phase=BackendSwapped fatal=true");
        assert!(failed.is_warning() && !Event::AddedPeers.is_warning());
        assert_eq!(format!("{}", Event::RestoringAuthStore), "restoring auth store");
    }
}
