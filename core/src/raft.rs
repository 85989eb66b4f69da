//! Raft-facing types: what a leader's snapshot carries and what a follower's apply loop tracks.
//!
//! These mirror raft-rs / etcd raft (`raftpb.SnapshotMetadata`, `raftpb.ConfState`) and etcd's
//! `etcdProgress`, with fixed capacities so they need no heap.

use heapless::Vec;

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
