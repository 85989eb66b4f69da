//! When a member snapshots its backend and how much raft log it keeps: etcd's
//! `--snapshot-count`, `--snapshot-catchup-entries` and `--max-snapshots`.

/// A member's snapshot policy, as etcd's `EtcdServer.triggerSnapshot` and `purgeFile`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotPolicy {
    /// Entries applied since the last snapshot that trigger the next one (etcd's
    /// `--snapshot-count`, 10,000 since etcd 3.6). 0 turns the policy off: the member snapshots
    /// only when asked or when a follower needs one.
    pub count: u64,
    /// Entries kept in the raft log behind a snapshot, for followers only a little behind
    /// (etcd's `--snapshot-catchup-entries`, 5,000).
    pub catchup_entries: u64,
    /// Snapshot images kept in `member/snap` (etcd's `--max-snapshots`, 5); older ones are
    /// purged. At least one, the newest, is always kept.
    pub max_snapshots: usize,
}

impl Default for SnapshotPolicy {
    fn default() -> Self {
        SnapshotPolicy { count: 10_000, catchup_entries: 5_000, max_snapshots: 5 }
    }
}

impl SnapshotPolicy {
    /// Whether a member that applied up to `applied` and last snapshotted at `snapshot` takes a
    /// snapshot now (etcd: `appliedi - snapi > SnapshotCount`).
    pub fn due(&self, applied: u64, snapshot: u64) -> bool {
        self.count > 0 && applied.saturating_sub(snapshot) >= self.count
    }

    /// The index the raft log is compacted to once a snapshot at `snapshot` is saved, if any:
    /// `catchup_entries` entries are kept behind it (etcd compacts to
    /// `snapi - SnapshotCatchUpEntries` and skips the compaction when that is not positive).
    pub fn compact_to(&self, snapshot: u64) -> Option<u64> {
        snapshot.checked_sub(self.catchup_entries).filter(|&i| i > 0)
    }

    /// How many snapshot images are kept.
    pub fn keep(&self) -> usize {
        self.max_snapshots.max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_is_due_after_count_entries_and_keeps_catchup_entries() {
        let p = SnapshotPolicy { count: 100, catchup_entries: 30, max_snapshots: 0 };
        assert!(!p.due(99, 0));
        assert!(p.due(100, 0));
        assert!(!p.due(150, 100));
        assert!(p.due(200, 100));
        assert_eq!(p.compact_to(100), Some(70));
        assert_eq!(p.compact_to(30), None);
        assert_eq!(p.compact_to(10), None);
        assert_eq!(p.keep(), 1);
        let off = SnapshotPolicy { count: 0, ..p };
        assert!(!off.due(1_000_000, 0));
        assert_eq!(
            SnapshotPolicy::default(),
            SnapshotPolicy { count: 10_000, catchup_entries: 5_000, max_snapshots: 5 }
        );
    }
}
