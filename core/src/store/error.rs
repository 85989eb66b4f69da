//! The error of the stores: requests a node refuses and records it cannot read.

use crate::backend::{BackendError, Bucket};
use crate::collections::CapacityError;

/// A store operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum StoreError {
    /// The backend failed.
    Backend(BackendError),
    /// A fixed capacity is exhausted; nothing was changed.
    Capacity(CapacityError),
    /// A record of `bucket` could not be decoded: the data is corrupted.
    Corrupt {
        /// Where the record is.
        bucket: Bucket,
        /// What was wrong with it.
        what: &'static str,
    },
    /// The request names something that does not exist (a lease, a user, a member...).
    NotFound(&'static str),
    /// The request creates something that exists already.
    AlreadyExists(&'static str),
    /// The request is malformed (an empty key, a zero lease id, a TTL of zero...).
    InvalidRequest(&'static str),
    /// The requested revision has been compacted.
    Compacted {
        /// The revision asked for.
        requested: i64,
        /// The compaction revision.
        compacted: i64,
    },
    /// The requested revision is newer than the store's current revision.
    FutureRevision {
        /// The revision asked for.
        requested: i64,
        /// The current revision.
        current: i64,
    },
    /// The v2 store holds content other than membership, which the configured
    /// `--v2-deprecation` level forbids (etcd's `AssertNoV2StoreContent`).
    V2ContentDisallowed,
    /// A NOSPACE alarm is active: the request would add data (etcd's `ErrNoSpace`, "database
    /// space exceeded").
    NoSpace,
    /// A CORRUPT alarm is active: the request reads or writes the key space or leases (etcd's
    /// `ErrCorrupt`, "corrupt cluster").
    CorruptAlarm,
    /// The node holds an unfinished restore and refuses entries until
    /// [`crate::pipeline::resume`] completes it.
    RestoreUnfinished {
        /// Index of the unfinished snapshot.
        index: u64,
    },
    /// A request was cut short inside [`crate::Node::apply`] (a panic unwound out of the
    /// backend or a store): the stores may hold effects the backend never committed, so the
    /// node refuses work until it is reopened from its backend ([`crate::Node::open_in_place`]).
    ApplyInterrupted,
    /// A key longer than this node's profile holds ([`crate::store::max_key_len`]): a valid
    /// key (etcd accepts keys up to its request size) that a device's key index has no room for.
    /// Nothing was changed.
    KeyTooLong {
        /// The key's length in bytes.
        len: u64,
        /// The longest key the profile holds, in bytes.
        limit: u64,
    },
}

impl core::fmt::Display for StoreError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            StoreError::Backend(e) => write!(f, "{e}"),
            StoreError::Capacity(e) => write!(f, "{e}"),
            StoreError::Corrupt { bucket, what } => write!(f, "corrupt record in bucket {}: {what}", bucket.name()),
            StoreError::NotFound(what) => write!(f, "{what} not found"),
            StoreError::AlreadyExists(what) => write!(f, "{what} already exists"),
            StoreError::InvalidRequest(what) => write!(f, "invalid request: {what}"),
            StoreError::Compacted { requested, compacted } => {
                write!(f, "revision {requested} has been compacted (compacted revision {compacted})")
            }
            StoreError::FutureRevision { requested, current } => {
                write!(f, "revision {requested} is a future revision (current revision {current})")
            }
            StoreError::RestoreUnfinished { index } => {
                write!(f, "the restore of snapshot {index} is unfinished; complete it with `resume` first")
            }
            StoreError::ApplyInterrupted => f.write_str(
                "a request was interrupted before the node's stores matched its backend; reopen the node from its backend",
            ),
            StoreError::KeyTooLong { len, limit } => {
                write!(f, "key of {len} bytes is longer than this node's profile holds ({limit} bytes)")
            }
            StoreError::NoSpace => f.write_str("database space exceeded (a NOSPACE alarm is active)"),
            StoreError::CorruptAlarm => f.write_str("corrupt cluster (a CORRUPT alarm is active)"),
            StoreError::V2ContentDisallowed => {
                f.write_str("v2 store holds content other than membership, which the v2 deprecation level forbids")
            }
        }
    }
}

impl StoreError {
    /// Whether the error is the request's own rejection, as etcd's appliers return it in the
    /// entry's response (a missing lease, an existing user, a compacted revision, an alarm):
    /// the entry is still applied, so the consistent index moves past it. Failures of the node
    /// itself (its backend, a full table, corrupted records, an unfinished restore) are not:
    /// the entry is not applied.
    pub fn is_rejection(&self) -> bool {
        matches!(
            self,
            StoreError::NotFound(_)
                | StoreError::AlreadyExists(_)
                | StoreError::InvalidRequest(_)
                | StoreError::Compacted { .. }
                | StoreError::FutureRevision { .. }
                | StoreError::NoSpace
                | StoreError::CorruptAlarm
        )
    }
}

/// `Display` is the wrapped error's own message; `source` goes on below it, so a reporter that
/// walks the chain prints each cause once.
impl core::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            StoreError::Backend(e) => e.source(),
            StoreError::Capacity(e) => e.source(),
            _ => None,
        }
    }
}

impl From<BackendError> for StoreError {
    fn from(e: BackendError) -> Self {
        StoreError::Backend(e)
    }
}

impl From<CapacityError> for StoreError {
    fn from(e: CapacityError) -> Self {
        StoreError::Capacity(e)
    }
}
