//! A snapshot as the follower receives it: the metadata and where its image comes from.

use crate::image::Source;
use crate::ports::PortError;
use crate::raft::SnapshotMetadata;

/// Where a snapshot's image (see `docs/format.md`) comes from.
pub enum ImageData<'a> {
    /// The whole image in memory, as raft-rs hands a snapshot over.
    Bytes(&'a [u8]),
    /// A stream, read once, front to back, through the snapshot store's fixed buffer: for a
    /// device that receives the image in pieces and cannot hold it whole.
    Stream(&'a mut dyn Source<Error = PortError>),
    /// The image is already durable in the snapshot store, named by its SHA-256 (the digest its
    /// trailer carries): completing a restore after a restart or an unfinished run (etcd's
    /// `RecoverSnapshotBackend`). The store confirms only a snapshot it holds with exactly this
    /// metadata and digest.
    Persisted {
        /// SHA-256 of the image, as its trailer states it.
        sha256: [u8; 32],
    },
}

impl core::fmt::Debug for ImageData<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ImageData::Bytes(b) => write!(f, "Bytes({} bytes)", b.len()),
            ImageData::Stream(_) => f.write_str("Stream"),
            ImageData::Persisted { .. } => f.write_str("Persisted"),
        }
    }
}

/// A snapshot as received from the leader: metadata and the snapshot image.
///
/// Raft's empty snapshot (index 0) means "nothing to apply" (`raft.IsEmptySnap`).
#[derive(Debug)]
pub struct Snapshot<'a> {
    /// What the snapshot replaces.
    pub metadata: &'a SnapshotMetadata,
    /// The snapshot image, as produced by the leader's encoder.
    pub data: ImageData<'a>,
}

impl<'a> Snapshot<'a> {
    /// A snapshot whose image is in memory.
    pub fn from_bytes(metadata: &'a SnapshotMetadata, image: &'a [u8]) -> Self {
        Snapshot { metadata, data: ImageData::Bytes(image) }
    }

    /// A snapshot whose image is read from a stream (wrap any [`Source`] in
    /// [`crate::ports::ImageStream`]).
    pub fn streamed(metadata: &'a SnapshotMetadata, image: &'a mut dyn Source<Error = PortError>) -> Self {
        Snapshot { metadata, data: ImageData::Stream(image) }
    }

    /// A snapshot already durable in the snapshot store, named by its image's SHA-256: what a
    /// node applies at start when its store holds a snapshot newer than its backend.
    pub fn persisted(metadata: &'a SnapshotMetadata, sha256: [u8; 32]) -> Self {
        Snapshot { metadata, data: ImageData::Persisted { sha256 } }
    }

    /// raft's `IsEmptySnap`: a snapshot at index 0 carries nothing to apply.
    pub fn is_empty(&self) -> bool {
        self.metadata.index == 0
    }
}
