//! The adapter's error.

use std::fmt;

use snapply_core::ApplyError;
use snapply_core::backend::BackendError;
use snapply_core::store::StoreError;
use snapply_fs::FsError;

/// A raft node, its log or its transport failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum RaftError {
    /// raft-rs refused an operation (a proposal while there is no leader, a bad conf change).
    Raft(raft::Error),
    /// The raft log file failed.
    Log {
        /// What was being done.
        op: &'static str,
        /// redb's error.
        source: Box<redb::Error>,
    },
    /// The raft log holds something it should not (a gap, an entry that does not decode).
    CorruptLog {
        /// What is wrong.
        what: String,
    },
    /// The data directory failed.
    Fs(FsError),
    /// The node's stores refused an operation.
    Store(StoreError),
    /// The node's backend failed.
    Backend(BackendError),
    /// Applying a snapshot failed in the phase the error names.
    Apply(ApplyError),
    /// Encoding a snapshot image of the live backend failed.
    Image {
        /// What failed.
        what: String,
    },
    /// A peer-network operation failed.
    Io {
        /// What was being done.
        op: &'static str,
        /// The system's error.
        source: std::io::Error,
    },
    /// A committed entry or a peer's message does not decode.
    Decode {
        /// What was being decoded.
        what: &'static str,
    },
    /// The node's loop has stopped; it no longer takes requests.
    Stopped,
    /// A proposal was not applied in time (no leader, or this node is cut off).
    Timeout {
        /// What was waited for.
        what: &'static str,
    },
    /// A leader offered a snapshot image larger than this member takes
    /// ([`crate::NodeConfig::max_snapshot_bytes`]); it was refused before any of it was written.
    SnapshotTooLarge {
        /// The image's size, as the leader declared it.
        size: u64,
        /// The most this member takes.
        limit: u64,
    },
    /// A configuration value is not usable.
    Config {
        /// What is wrong, and what to do.
        what: String,
    },
    /// A learner asked to be promoted has not caught up with the leader (etcd's
    /// `ErrLearnerNotReady`): its log matches less than 90% of the leader's.
    LearnerNotReady {
        /// The learner.
        id: u64,
        /// The last index its log matches.
        matched: u64,
        /// The leader's.
        leader: u64,
    },
    /// This member was removed from the cluster by a conf change it applied; its loop stopped.
    Removed,
    /// No member could tell the cluster's membership (a member joining an existing cluster).
    ClusterUnknown {
        /// What was tried, and why it failed.
        what: String,
    },
    /// Auth refused the request (etcd's auth errors).
    Auth(crate::AuthError),
    /// A request whose raft entry would be larger than the member takes (etcd's
    /// `ErrRequestTooLarge`, `--max-request-bytes`): refused before it is proposed.
    RequestTooLarge {
        /// The entry's size.
        size: usize,
        /// The most the member proposes ([`crate::NodeConfig::max_request_bytes`]).
        limit: usize,
    },
    /// The backend could not be defragmented now (a reader, such as a snapshot being sent,
    /// holds it open); nothing changed.
    DefragmentBusy,
}

impl fmt::Display for RaftError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // raft-rs's own messages mostly start with "raft: " already (etcd's raft wording).
            RaftError::Raft(e) => {
                let message = e.to_string();
                if message.starts_with("raft: ") { f.write_str(&message) } else { write!(f, "raft: {message}") }
            }
            RaftError::Log { op, source } => write!(f, "raft log: {op}: {source}"),
            RaftError::CorruptLog { what } => write!(f, "raft log is corrupted: {what}"),
            RaftError::Fs(e) => write!(f, "data directory: {e}"),
            RaftError::Store(e) => write!(f, "store: {e}"),
            RaftError::Backend(e) => write!(f, "backend: {e}"),
            RaftError::Apply(e) => write!(f, "applying a snapshot: {e}"),
            RaftError::Image { what } => write!(f, "building a snapshot image: {what}"),
            RaftError::Io { op, source } => write!(f, "{op}: {source}"),
            RaftError::Decode { what } => write!(f, "{what} does not decode"),
            RaftError::Stopped => f.write_str("the raft node has stopped"),
            RaftError::Timeout { what } => write!(f, "timed out waiting for {what}"),
            RaftError::SnapshotTooLarge { size, limit } => write!(
                f,
                "a snapshot image of {size} bytes is larger than the {limit} bytes this member takes (--max-snapshot-bytes)"
            ),
            RaftError::Config { what } => write!(f, "bad configuration: {what}"),
            RaftError::LearnerNotReady { id, matched, leader } => write!(
                f,
                "can only promote a learner member which is in sync with leader: {id:x} matches index {matched}, the leader {leader}"
            ),
            RaftError::Removed => f.write_str("the member has been permanently removed from the cluster"),
            RaftError::ClusterUnknown { what } => write!(f, "cannot fetch cluster info from peer urls: {what}"),
            RaftError::Auth(e) => write!(f, "auth: {e}"),
            RaftError::RequestTooLarge { size, limit } => {
                write!(f, "request is too large: an entry of {size} bytes, over the {limit} of --max-request-bytes")
            }
            RaftError::DefragmentBusy => {
                f.write_str("the backend is being read (a snapshot is being sent): defragment it again when it is done")
            }
        }
    }
}

impl RaftError {
    /// Whether the member's own files failed (its raft log, data directory or backend: a full
    /// disk, an I/O error), as opposed to a refused request, a peer or a timeout. etcd exits on
    /// such a failure; a member stops on it.
    pub fn is_storage_failure(&self) -> bool {
        matches!(
            self,
            RaftError::Log { .. } | RaftError::Fs(_) | RaftError::Backend(_) | RaftError::Store(StoreError::Backend(_))
        )
    }
}

impl std::error::Error for RaftError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            RaftError::Raft(e) => Some(e),
            RaftError::Log { source, .. } => Some(source.as_ref()),
            RaftError::Fs(e) => Some(e),
            RaftError::Store(e) => Some(e),
            RaftError::Backend(e) => Some(e),
            RaftError::Apply(e) => Some(e),
            RaftError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl From<raft::Error> for RaftError {
    fn from(e: raft::Error) -> Self {
        RaftError::Raft(e)
    }
}

impl From<FsError> for RaftError {
    fn from(e: FsError) -> Self {
        RaftError::Fs(e)
    }
}

impl From<StoreError> for RaftError {
    fn from(e: StoreError) -> Self {
        RaftError::Store(e)
    }
}

impl From<BackendError> for RaftError {
    fn from(e: BackendError) -> Self {
        RaftError::Backend(e)
    }
}

impl From<ApplyError> for RaftError {
    fn from(e: ApplyError) -> Self {
        RaftError::Apply(e)
    }
}

pub(crate) fn log_err(op: &'static str) -> impl FnOnce(redb::Error) -> RaftError {
    move |e| RaftError::Log { op, source: Box::new(e) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raft_errors_say_raft_once() {
        assert_eq!(RaftError::Raft(raft::Error::ProposalDropped).to_string(), "raft: proposal dropped");
        assert_eq!(
            RaftError::Raft(raft::Error::Store(raft::StorageError::Compacted)).to_string(),
            "raft: log compacted"
        );
    }
}
