//! The pipeline's error: which phase failed, why, and whether the node is past the swap.

use crate::observe::Phase;
use crate::store::StoreError;

/// What went wrong in a port (the backend, the snapshot store, the transport).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum PortErrorKind {
    /// The medium or the network failed.
    Io,
    /// Stored or received bytes are not what was written (checksum, framing, decoding).
    Corrupt,
    /// A capacity is exhausted (a fixed table, a flash area, a disk).
    Full,
    /// What was asked for does not exist (no such persisted snapshot).
    NotFound,
    /// The caller broke the port's contract (a bug, would have been a panic).
    Misuse,
}

/// A port failed. Adapters map their own errors into this, keeping a short static context, so
/// the pipeline's error type does not depend on any adapter. The backend's
/// [`crate::backend::BackendError`] is this same type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct PortError {
    /// The kind of failure.
    pub kind: PortErrorKind,
    /// What was being done, for the operator.
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
            PortErrorKind::Corrupt => "corrupt data",
            PortErrorKind::Full => "capacity exhausted",
            PortErrorKind::NotFound => "not found",
            PortErrorKind::Misuse => "misuse",
        };
        write!(f, "{kind} while {}", self.context)
    }
}

impl core::error::Error for PortError {}

/// Why a phase failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum ApplyErrorKind {
    /// The snapshot is not newer than what the node has applied (etcd panics with
    /// `unexpected leader snapshot from outdated index`).
    Outdated {
        /// Index of the incoming snapshot.
        incoming_index: u64,
        /// The node's applied index.
        applied_index: u64,
    },
    /// The snapshot store confirmed a different snapshot than the one asked for: another
    /// metadata, or (completing a persisted snapshot) another image digest (a bug in the store).
    PersistedOther {
        /// Index of the snapshot asked for.
        expected_index: u64,
        /// Index the store confirmed.
        confirmed_index: u64,
    },
    /// The node holds an unfinished restore (a run that ended before `Applied`: an error after
    /// the swap, a dropped or forgotten state, a panic unwinding out of a port). It refuses new
    /// entries and new snapshots until [`crate::pipeline::resume`] completes that restore.
    RestoreUnfinished {
        /// Index of the unfinished snapshot.
        index: u64,
        /// Whether its backend was already swapped in.
        swapped: bool,
    },
    /// The snapshot's backend does not reflect the snapshot's index (etcd #17146, #20426).
    IndexMismatch {
        /// The consistent index stored in the opened backend.
        backend_index: u64,
        /// The snapshot's index.
        snapshot_index: u64,
    },
    /// The snapshot's backend holds its index but another term or conf state than the
    /// snapshot's metadata: the snapshot store opened another snapshot's backend (a store that
    /// confirmed a ticket with another image's digest).
    MetadataMismatch {
        /// The snapshot's index.
        index: u64,
    },
    /// The snapshot store or the transport failed.
    Port(PortError),
    /// A store could not be restored.
    Store(StoreError),
}

/// A phase of the pipeline failed.
///
/// Before [`Phase::SwapBackend`] nothing changed on the node: its old backend and stores are
/// live and the persisted snapshot is kept for a retry. Everything a snapshot contains is read
/// and checked before the swap, so after it only the transport ([`Phase::UpdatePeers`]) and the
/// snapshot store ([`Phase::Finish`]) can fail; the node then runs on the new state and the
/// error is fatal for the apply loop ([`ApplyError::is_fatal`]); what was persisted lets a
/// restart finish the restore.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ApplyError {
    phase: Phase,
    kind: ApplyErrorKind,
}

impl ApplyError {
    pub(crate) fn new(phase: Phase, kind: ApplyErrorKind) -> Self {
        ApplyError { phase, kind }
    }

    /// The phase that failed.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Why.
    pub fn kind(&self) -> &ApplyErrorKind {
        &self.kind
    }

    /// Whether the failure happened after the new backend went live.
    pub fn is_fatal(&self) -> bool {
        self.phase > Phase::SwapBackend
    }
}

impl core::fmt::Display for ApplyError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "snapshot apply failed reaching {}: ", self.phase.state())?;
        match &self.kind {
            ApplyErrorKind::Outdated { incoming_index, applied_index } => write!(
                f,
                "unexpected leader snapshot from outdated index (incoming index {incoming_index}, applied index {applied_index})"
            ),
            ApplyErrorKind::PersistedOther { expected_index, confirmed_index } => {
                write!(f, "snapshot store confirmed index {confirmed_index} while persisting index {expected_index}")
            }
            ApplyErrorKind::IndexMismatch { backend_index, snapshot_index } => write!(
                f,
                "snapshot backend consistent index {backend_index} does not match snapshot index {snapshot_index}"
            ),
            ApplyErrorKind::MetadataMismatch { index } => write!(
                f,
                "snapshot backend at index {index} holds another term or conf state than the snapshot's metadata"
            ),
            ApplyErrorKind::RestoreUnfinished { index, swapped } => write!(
                f,
                "the restore of snapshot {index} is unfinished ({}); complete it with `resume` first",
                if *swapped { "its backend is live" } else { "its backend is not live yet" }
            ),
            ApplyErrorKind::Port(e) => write!(f, "{e}"),
            ApplyErrorKind::Store(e) => write!(f, "{e}"),
        }?;
        if self.is_fatal() {
            f.write_str(" (after the backend swap: the node runs on the new state; restart to finish the restore)")?;
        }
        Ok(())
    }
}

/// `Display` prints the cause (the port's or the store's message); `source` goes on below it,
/// so a reporter that walks the chain prints each cause once.
impl core::error::Error for ApplyError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match &self.kind {
            ApplyErrorKind::Port(e) => e.source(),
            ApplyErrorKind::Store(e) => e.source(),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreError;
    use std::string::{String, ToString};
    use std::vec::Vec;

    /// What a reporter that walks the chain prints.
    fn chain(e: &dyn core::error::Error) -> Vec<String> {
        let mut out = std::vec![e.to_string()];
        let mut next = e.source();
        while let Some(e) = next {
            out.push(e.to_string());
            next = e.source();
        }
        out
    }

    #[test]
    fn a_chain_of_errors_prints_each_cause_once() {
        let port = PortError::new(PortErrorKind::Io, "medium gone");
        for kind in [ApplyErrorKind::Port(port), ApplyErrorKind::Store(StoreError::Backend(port))] {
            let e = ApplyError::new(Phase::OpenBackend, kind);
            let printed = chain(&e).join(": ");
            assert_eq!(printed.matches("medium gone").count(), 1, "{printed}");
        }
    }
}
