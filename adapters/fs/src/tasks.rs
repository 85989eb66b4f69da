//! The async edge: the blocking disk work on tokio's blocking pool, never on the runtime's
//! threads, and with `std::fs` (tokio's own file writes can report success while the bytes are
//! still in its buffer, before they reach the kernel, let alone the disk).
//!
//! A tokio driver persists a snapshot with [`persist_async`] as soon as it arrives, off the
//! apply loop; the pipeline's persist phase then finds it persisted and only confirms it (the
//! image is not read again), so the apply loop waits only for the open and the restore proper.

use snapply_core::ImageData;
use snapply_core::SnapshotMetadata;

use crate::backend::RedbBackend;
use crate::datadir::DataDir;
use crate::error::FsError;
use crate::snapfile::SnapInfo;
use crate::store::persist;

/// [`persist`] on a blocking task: the image is checked, materialised into
/// `<index>.snap.db` and the `.snap` written durably before the future completes.
///
/// # Errors
/// As [`persist`]; [`FsError::Task`] if the blocking task panicked or the runtime is shutting
/// down.
pub async fn persist_async(dir: DataDir, metadata: SnapshotMetadata, image: Vec<u8>) -> Result<SnapInfo, FsError> {
    tokio::task::spawn_blocking(move || {
        let mut buf = crate::store::decode_buffer();
        persist(&dir, &mut buf, &metadata, ImageData::Bytes(&image))
    })
    .await
    .map_err(|_| FsError::Task { what: "persisting a snapshot" })?
}

/// Closes a backend the pipeline handed back after the swap on a blocking task, as etcd closes
/// the old backend on a goroutine ("closing old backend file"): closing can wait on the disk,
/// and the apply loop must not.
///
/// # Errors
/// [`FsError::Task`] if the blocking task panicked or the runtime is shutting down.
pub async fn close_async(backend: RedbBackend) -> Result<(), FsError> {
    tokio::task::spawn_blocking(move || drop(backend))
        .await
        .map_err(|_| FsError::Task { what: "closing the old backend" })
}
