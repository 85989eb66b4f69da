//! Raft-facing types: what a leader's snapshot carries and what a follower's apply loop tracks.
//!
//! These mirror raft-rs / etcd raft (`raftpb.SnapshotMetadata`, `raftpb.ConfState`) and etcd's
//! `etcdProgress`, with fixed capacities so they need no heap.

use heapless::Vec;

use crate::image::Source;
use crate::ports::PortError;
use serde::{Deserialize, Serialize};

/// Most node ids a [`ConfState`] list holds. etcd recommends clusters of at most seven voting
/// members; 16 leaves room for learners and joint consensus.
pub const MAX_CONF_IDS: usize = 16;

/// A list of Raft node ids in a [`ConfState`].
pub type IdList = Vec<u64, MAX_CONF_IDS>;

/// The cluster configuration a snapshot was taken under (raft-rs `ConfState`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ConfState {
    /// Voters of the incoming (or only) configuration.
    pub voters: IdList,
    /// Learners of the incoming configuration.
    pub learners: IdList,
    /// Voters of the outgoing configuration during joint consensus.
    pub voters_outgoing: IdList,
    /// Nodes that become learners when the joint configuration is left.
    pub learners_next: IdList,
    /// Whether the joint configuration is left automatically.
    pub auto_leave: bool,
}

/// Metadata of a snapshot: the log position it replaces and the configuration at that point.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct SnapshotMetadata {
    /// Raft log index of the last entry the snapshot contains.
    pub index: u64,
    /// Term of that entry.
    pub term: u64,
    /// Configuration at `index`.
    pub conf_state: ConfState,
}

/// Where a snapshot's image (see `docs/format.md`) comes from.
pub enum ImageData<'a> {
    /// The whole image in memory, as raft-rs hands a snapshot over.
    Bytes(&'a [u8]),
    /// A stream, read once, front to back, through the snapshot store's fixed buffer: for a
    /// device that receives the image in pieces and cannot hold it whole.
    Stream(&'a mut dyn Source<Error = PortError>),
}

impl core::fmt::Debug for ImageData<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ImageData::Bytes(b) => write!(f, "Bytes({} bytes)", b.len()),
            ImageData::Stream(_) => f.write_str("Stream"),
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

    /// raft's `IsEmptySnap`: a snapshot at index 0 carries nothing to apply.
    pub fn is_empty(&self) -> bool {
        self.metadata.index == 0
    }
}

/// The apply loop's progress (etcd's `etcdProgress`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Progress {
    /// Term of the last applied entry.
    pub applied_term: u64,
    /// Index of the last applied entry.
    pub applied_index: u64,
    /// Index of the last snapshot applied or taken.
    pub snapshot_index: u64,
    /// Configuration in force at `applied_index`.
    pub conf_state: ConfState,
}

impl Progress {
    /// The progress of a node that has applied `metadata`'s snapshot and nothing after it.
    pub fn at_snapshot(metadata: &SnapshotMetadata) -> Self {
        Progress {
            applied_term: metadata.term,
            applied_index: metadata.index,
            snapshot_index: metadata.index,
            conf_state: metadata.conf_state.clone(),
        }
    }
}
