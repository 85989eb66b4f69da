//! The adapter's error: what failed, on which file, and whether the disk is full.

use std::io;
use std::path::{Path, PathBuf};

use snapply_core::backend::{BackendError, BackendErrorKind};
use snapply_core::image::Corruption;
use snapply_core::ports::{PortError, PortErrorKind};
use snapply_core::store::StoreError;

use crate::backend::{is_full, redb_kind};

/// A data-directory operation failed.
///
/// Every variant that can leave a half-written file says so in its documentation; none leaves
/// the live backend or a persisted snapshot changed: a failed persist removes what it wrote.
#[derive(Debug)]
#[non_exhaustive]
pub enum FsError {
    /// A filesystem operation failed.
    Io {
        /// What was being done.
        op: &'static str,
        /// On which file or directory.
        path: PathBuf,
        /// The system's error.
        source: io::Error,
    },
    /// The filesystem is out of space (ENOSPC, EDQUOT). What was being written was removed; the
    /// old state is intact.
    Full {
        /// What was being done.
        op: &'static str,
        /// On which file or directory.
        path: PathBuf,
        /// The system's error.
        source: io::Error,
    },
    /// redb failed on a database file.
    Db {
        /// What was being done.
        op: &'static str,
        /// Which database file.
        path: PathBuf,
        /// redb's error (boxed: redb's error type is large, and errors travel by value).
        source: Box<redb::Error>,
    },
    /// A backend operation failed while persisting or checking a snapshot.
    Backend {
        /// What was being done.
        op: &'static str,
        /// The backend's error.
        source: BackendError,
    },
    /// A `.snap` file is not what snapply writes (see FORMAT.md).
    CorruptSnap {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        what: &'static str,
    },
    /// The snapshot image was refused: a frame, the trailer or the metadata is bad.
    Image {
        /// Byte offset in the image of the frame that is wrong.
        offset: u64,
        /// What is wrong.
        what: Corruption,
    },
    /// The image holds a record longer than this node accepts ([`crate::MAX_VALUE_LEN`]).
    RecordTooLarge {
        /// Byte offset in the image of the record's frame.
        offset: u64,
        /// Bytes the record's payload takes.
        needed: usize,
        /// Bytes the node's decode buffer holds.
        limit: usize,
    },
    /// The image stream failed (a dropped connection); nothing was kept.
    Stream(PortError),
    /// The image's own metadata is not the snapshot's.
    MetadataMismatch {
        /// Index of the snapshot being persisted.
        index: u64,
    },
    /// The snapshot's backend does not reflect the snapshot's index (etcd #17146, #20426).
    IndexMismatch {
        /// The consistent index the image's `meta` bucket holds.
        backend_index: u64,
        /// The snapshot's index.
        snapshot_index: u64,
    },
    /// A store of the snapshot's backend does not recover.
    Store {
        /// Index of the snapshot.
        index: u64,
        /// The store's error.
        source: StoreError,
    },
    /// No snapshot with this index and term is persisted.
    NotFound {
        /// The index asked for.
        index: u64,
        /// The term asked for.
        term: u64,
    },
    /// A blocking task panicked or was cancelled (the runtime is shutting down).
    Task {
        /// What the task was doing.
        what: &'static str,
    },
    /// The restore pipeline refused the snapshot or failed; the core's error says which phase
    /// and what the failure leaves.
    Apply(snapply_core::ApplyError),
    /// The snapshot's `.snap` is there but its backend file is not (etcd: "failed to find
    /// database snapshot file").
    MissingDb {
        /// Index of the snapshot.
        index: u64,
        /// The backend file expected.
        path: PathBuf,
    },
}

impl FsError {
    /// An I/O failure of `op` on `path`; a full disk becomes [`FsError::Full`].
    pub(crate) fn io(op: &'static str, path: &Path, source: io::Error) -> Self {
        let path = path.to_path_buf();
        if is_full(&source) { FsError::Full { op, path, source } } else { FsError::Io { op, path, source } }
    }

    /// A redb failure of `op` on `path`; a full disk becomes [`FsError::Full`].
    pub(crate) fn db(op: &'static str, path: &Path, source: impl Into<redb::Error>) -> Self {
        match source.into() {
            // redb reports a file that is not a database as `InvalidData`: that is corruption,
            // not a failing disk.
            redb::Error::Io(source) if source.kind() != io::ErrorKind::InvalidData => FsError::io(op, path, source),
            source => FsError::Db { op, path: path.to_path_buf(), source: Box::new(source) },
        }
    }

    /// Whether the disk was full: nothing was changed, freeing space and retrying can succeed.
    pub fn is_full(&self) -> bool {
        match self {
            FsError::Full { .. } => true,
            FsError::Backend { source, .. } => source.kind == BackendErrorKind::Full,
            _ => false,
        }
    }

    /// The error as the core's ports report it.
    pub fn to_port(&self) -> PortError {
        let kind = match self {
            _ if self.is_full() => PortErrorKind::Full,
            FsError::CorruptSnap { .. }
            | FsError::Image { .. }
            | FsError::RecordTooLarge { .. }
            | FsError::MetadataMismatch { .. }
            | FsError::IndexMismatch { .. }
            | FsError::Store { .. } => PortErrorKind::Corrupt,
            FsError::Backend { source, .. } if source.kind == BackendErrorKind::Corrupt => PortErrorKind::Corrupt,
            FsError::Db { source, .. } if redb_kind(source) == BackendErrorKind::Corrupt => PortErrorKind::Corrupt,
            FsError::Stream(e) => return *e,
            FsError::NotFound { .. } | FsError::MissingDb { .. } => PortErrorKind::NotFound,
            _ => PortErrorKind::Io,
        };
        PortError::new(kind, self.op())
    }

    /// What was being done, as a static phrase.
    fn op(&self) -> &'static str {
        match self {
            FsError::Io { op, .. }
            | FsError::Full { op, .. }
            | FsError::Db { op, .. }
            | FsError::Backend { op, .. } => op,
            FsError::CorruptSnap { what, .. } => what,
            FsError::Image { .. } => "checking the snapshot image",
            FsError::RecordTooLarge { .. } => "checking the snapshot image: a record is longer than this node accepts",
            FsError::Stream(e) => e.context,
            FsError::MetadataMismatch { .. } => "comparing the image's metadata with the snapshot's",
            FsError::IndexMismatch { .. } => "checking the snapshot backend's consistent index",
            FsError::Store { .. } => "recovering the stores of the snapshot's backend",
            FsError::NotFound { .. } => "looking up a persisted snapshot",
            FsError::Task { what } => what,
            FsError::Apply(_) => "applying the snapshot",
            FsError::MissingDb { .. } => "finding the snapshot's backend file",
        }
    }
}

impl core::fmt::Display for FsError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            FsError::Io { op, path, source } => write!(f, "{op} ({}): {source}", path.display()),
            FsError::Full { op, path, source } => write!(f, "disk full while {op} ({}): {source}", path.display()),
            FsError::Db { op, path, source } => write!(f, "{op} ({}): {source}", path.display()),
            FsError::Backend { op, source } => write!(f, "{op}: {source}"),
            FsError::CorruptSnap { path, what } => write!(f, "corrupt snapshot file {}: {what}", path.display()),
            FsError::Image { offset, what } => write!(f, "snapshot image refused at byte {offset}: {what}"),
            FsError::RecordTooLarge { offset, needed, limit } => write!(
                f,
                "snapshot image refused at byte {offset}: a record of {needed} bytes is longer than the \
                 {limit} bytes this node accepts"
            ),
            FsError::Stream(e) => write!(f, "snapshot image stream failed: {e}"),
            FsError::MetadataMismatch { index } => {
                write!(f, "the image's metadata is not that of snapshot {index}")
            }
            FsError::IndexMismatch { backend_index, snapshot_index } => write!(
                f,
                "the snapshot's backend has consistent index {backend_index}, the snapshot is at {snapshot_index}"
            ),
            FsError::Store { index, source } => write!(f, "snapshot {index}: a store does not recover: {source}"),
            FsError::NotFound { index, term } => write!(f, "no persisted snapshot at index {index}, term {term}"),
            FsError::Task { what } => write!(f, "the blocking task {what} panicked or was cancelled"),
            FsError::Apply(e) => write!(f, "applying the snapshot failed: {e}"),
            FsError::MissingDb { index, path } => {
                write!(f, "snapshot {index} has no backend file {}", path.display())
            }
        }
    }
}

/// `Display` prints the cause's message after the context; `source` goes on below it, so a
/// reporter that walks the chain prints each cause once.
impl std::error::Error for FsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            FsError::Io { source, .. } | FsError::Full { source, .. } => source.source(),
            FsError::Db { source, .. } => source.source(),
            FsError::Backend { source, .. } => source.source(),
            FsError::Stream(e) => e.source(),
            FsError::Image { what, .. } => what.source(),
            FsError::Store { source, .. } => source.source(),
            FsError::Apply(e) => e.source(),
            _ => None,
        }
    }
}

impl From<snapply_core::ApplyError> for FsError {
    fn from(e: snapply_core::ApplyError) -> Self {
        FsError::Apply(e)
    }
}

impl From<FsError> for PortError {
    fn from(e: FsError) -> Self {
        e.to_port()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_disk_is_typed_and_reported_as_full() {
        let e = FsError::io("writing", Path::new("/x"), io::Error::from(io::ErrorKind::StorageFull));
        assert!(matches!(e, FsError::Full { .. }));
        assert!(e.is_full());
        assert_eq!(e.to_port().kind, PortErrorKind::Full);
        let e = FsError::db("committing", Path::new("/x"), redb::Error::Io(io::ErrorKind::StorageFull.into()));
        assert!(e.is_full());
        let e = FsError::Backend { op: "materialising", source: BackendError::new(BackendErrorKind::Full, "x") };
        assert_eq!(e.to_port().kind, PortErrorKind::Full);
    }

    /// What a reporter that walks the chain prints: each cause once.
    fn chain(e: &dyn std::error::Error) -> Vec<String> {
        let mut out = vec![e.to_string()];
        let mut next = e.source();
        while let Some(e) = next {
            out.push(e.to_string());
            next = e.source();
        }
        out
    }

    #[test]
    fn a_chain_of_errors_prints_each_cause_once() {
        let store = snapply_core::store::StoreError::Backend(BackendError::new(BackendErrorKind::Io, "medium gone"));
        let printed = chain(&FsError::Store { index: 7, source: store }).join(": ");
        assert_eq!(printed.matches("medium gone").count(), 1, "{printed}");
        let e = FsError::io("writing", Path::new("/x"), io::Error::other("disk on fire"));
        let printed = chain(&e).join(": ");
        assert_eq!(printed.matches("disk on fire").count(), 1, "{printed}");
    }

    #[test]
    fn messages_name_the_file() {
        let e = FsError::CorruptSnap { path: PathBuf::from("/d/member/snap/a.snap"), what: "bad crc" };
        assert_eq!(e.to_string(), "corrupt snapshot file /d/member/snap/a.snap: bad crc");
        assert_eq!(e.to_port().kind, PortErrorKind::Corrupt);
    }
}
