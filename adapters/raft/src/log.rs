//! The raft log of a node, kept in memory for raft-rs and persisted in a redb file of the data
//! directory (`member/raft.redb`, beside etcd's `member/wal`), and the [`raft::Storage`] that
//! hands raft-rs the log and snapshots of the live backend.
//!
//! raft-rs's own `MemStorage` is a test storage: it keeps nothing across restarts and panics on
//! a gap or an overwrite of compacted entries. This log returns errors instead and writes every
//! change (entries, hard state, conf state, compaction point) to disk before the ready loop
//! acts on it, as raft-rs's ready protocol requires.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use prost::Message as _;
use raft::prelude::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, StorageError};
use redb::{Database, ReadableDatabase, TableDefinition};

use crate::error::{RaftError, log_err};

const ENTRIES: TableDefinition<'static, u64, &'static [u8]> = TableDefinition::new("entries");
const STATE: TableDefinition<'static, &'static str, &'static [u8]> = TableDefinition::new("state");
const HARD_STATE: &str = "hard_state";
const CONF_STATE: &str = "conf_state";
/// Index and term of the last entry compacted away (or of the snapshot the log starts after).
const FIRST: &str = "first";
/// The cluster's id (etcd keeps it in its WAL's metadata): 8 bytes, big-endian. Absent in a log
/// made before it was kept, and until a member joining a cluster has learnt it.
const CLUSTER_ID: &str = "cluster_id";
/// This member's id (etcd's WAL metadata keeps it too): 8 bytes, big-endian. Absent in a log
/// made before it was kept.
const MEMBER_ID: &str = "member_id";

struct Core {
    db: Database,
    hard_state: HardState,
    conf_state: ConfState,
    /// Index and term of the entry just before the first one kept.
    offset: (u64, u64),
    entries: VecDeque<Entry>,
    /// 0 while unknown.
    cluster_id: u64,
    /// 0 while unknown.
    member_id: u64,
}

/// What the leader has ready to send a lagging follower: a snapshot of its live backend, built
/// by the ready loop when raft-rs asked for one.
#[derive(Default)]
struct Slot {
    snapshot: Option<Snapshot>,
    requested: bool,
}

/// A node's raft log: clones share it (raft-rs owns one as its [`raft::Storage`], the ready loop
/// another to persist what a `Ready` hands it).
#[derive(Clone)]
pub struct RaftLog {
    core: Arc<RwLock<Core>>,
    slot: Arc<Mutex<Slot>>,
}

impl std::fmt::Debug for RaftLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftLog").finish_non_exhaustive()
    }
}

fn other(what: String) -> raft::Error {
    raft::Error::Store(StorageError::Other(Box::new(RaftError::CorruptLog { what })))
}

impl Core {
    fn first_index(&self) -> u64 {
        self.offset.0.saturating_add(1)
    }

    fn last_index(&self) -> u64 {
        self.entries.back().map_or(self.offset.0, |e| e.index)
    }

    fn position(&self, index: u64) -> Option<usize> {
        let first = self.entries.front()?.index;
        let at = usize::try_from(index.checked_sub(first)?).ok()?;
        (at < self.entries.len()).then_some(at)
    }

    fn write_state(&self, txn: &redb::WriteTransaction) -> Result<(), RaftError> {
        let mut t = txn.open_table(STATE).map_err(|e| log_err("opening the state table")(e.into()))?;
        let hs = self.hard_state.encode_to_vec();
        let cs = self.conf_state.encode_to_vec();
        let mut first = [0u8; 16];
        first[..8].copy_from_slice(&self.offset.0.to_be_bytes());
        first[8..].copy_from_slice(&self.offset.1.to_be_bytes());
        for (k, v) in [(HARD_STATE, &hs[..]), (CONF_STATE, &cs[..]), (FIRST, &first[..])] {
            t.insert(k, v).map_err(|e| log_err("writing the raft state")(e.into()))?;
        }
        for (k, id) in [(CLUSTER_ID, self.cluster_id), (MEMBER_ID, self.member_id)] {
            if id != 0 {
                t.insert(k, &id.to_be_bytes()[..]).map_err(|e| log_err("writing the raft state")(e.into()))?;
            }
        }
        Ok(())
    }
}

/// The member and cluster ids of the state table (0 for one it does not keep).
fn read_ids(state: &impl redb::ReadableTable<&'static str, &'static [u8]>) -> Result<(u64, u64), RaftError> {
    let mut ids = [0u64; 2];
    for (k, id) in [MEMBER_ID, CLUSTER_ID].into_iter().zip(&mut ids) {
        if let Some(v) = state.get(k).map_err(|e| log_err("reading the raft state")(e.into()))? {
            *id = v
                .value()
                .first_chunk::<8>()
                .copied()
                .map(u64::from_be_bytes)
                .ok_or_else(|| RaftError::CorruptLog { what: format!("the {k} is truncated") })?;
        }
    }
    let [member, cluster] = ids;
    Ok((member, cluster))
}

impl RaftLog {
    /// Opens the log at `path`. A new file is initialised with `bootstrap`: the initial
    /// configuration and the entries every member of a new cluster starts with (etcd's
    /// `raft.StartNode` appends one `ConfChangeAddNode` per initial member, committed at term 1).
    ///
    /// # Errors
    /// [`RaftError::Log`] if the file cannot be opened or read, [`RaftError::CorruptLog`] if
    /// what it holds does not decode or has a gap.
    pub fn open(path: &Path, bootstrap: impl FnOnce() -> (ConfState, Vec<Entry>)) -> Result<Self, RaftError> {
        // 0600 whatever the umask, as etcd creates its WAL (`fileutil.PrivateFileMode`).
        let mut options = std::fs::OpenOptions::new();
        options.read(true).write(true).create(true).truncate(false);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let db = options
            .open(path)
            .map_err(redb::DatabaseError::from)
            .and_then(|file| redb::Builder::new().create_with_backend(redb::backends::FileBackend::new(file)?))
            .map_err(|e| log_err("opening the raft log")(e.into()))?;
        let (hard_state, conf_state, offset, entries, (member_id, cluster_id)) = {
            let txn = db.begin_read().map_err(|e| log_err("reading the raft log")(e.into()))?;
            match txn.open_table(STATE) {
                Ok(state) => {
                    let get = |k: &str| -> Result<Vec<u8>, RaftError> {
                        match state.get(k).map_err(|e| log_err("reading the raft state")(e.into()))? {
                            Some(v) => Ok(v.value().to_vec()),
                            None => Err(RaftError::CorruptLog { what: format!("the raft state has no {k}") }),
                        }
                    };
                    let hs = HardState::decode(&get(HARD_STATE)?[..])
                        .map_err(|_| RaftError::CorruptLog { what: "the hard state does not decode".into() })?;
                    let cs = ConfState::decode(&get(CONF_STATE)?[..])
                        .map_err(|_| RaftError::CorruptLog { what: "the conf state does not decode".into() })?;
                    let first = get(FIRST)?;
                    let (i, t) = match (first.get(..8), first.get(8..16)) {
                        (Some(i), Some(t)) => (
                            u64::from_be_bytes(i.try_into().unwrap_or_default()),
                            u64::from_be_bytes(t.try_into().unwrap_or_default()),
                        ),
                        _ => return Err(RaftError::CorruptLog { what: "the first index is truncated".into() }),
                    };
                    let mut entries = VecDeque::new();
                    if let Ok(table) = txn.open_table(ENTRIES) {
                        let range =
                            table.range(i.saturating_add(1)..).map_err(|e| log_err("reading entries")(e.into()))?;
                        for item in range {
                            let (k, v) = item.map_err(|e| log_err("reading entries")(e.into()))?;
                            let e = Entry::decode(v.value()).map_err(|_| RaftError::CorruptLog {
                                what: format!("entry {} does not decode", k.value()),
                            })?;
                            let want = i.saturating_add(1).saturating_add(entries.len() as u64);
                            if e.index != want || k.value() != want {
                                return Err(RaftError::CorruptLog {
                                    what: format!("entry {} found where entry {want} should be", e.index),
                                });
                            }
                            entries.push_back(e);
                        }
                    }
                    let ids = read_ids(&state)?;
                    (hs, cs, (i, t), entries, ids)
                }
                Err(redb::TableError::TableDoesNotExist(_)) => {
                    let (cs, entries) = bootstrap();
                    let mut hs = HardState::default();
                    if let Some(last) = entries.last() {
                        hs.commit = last.index;
                        hs.term = last.term;
                    }
                    (hs, cs, (0, 0), entries.into(), (0, 0))
                }
                Err(e) => return Err(log_err("opening the state table")(e.into())),
            }
        };
        let core = Core { db, hard_state, conf_state, offset, entries, cluster_id, member_id };
        // Persist what a bootstrap produced (and, for an existing log, nothing changes).
        let txn = core.db.begin_write().map_err(|e| log_err("writing the raft log")(e.into()))?;
        core.write_state(&txn)?;
        {
            let mut t = txn.open_table(ENTRIES).map_err(|e| log_err("opening the entries table")(e.into()))?;
            for e in &core.entries {
                t.insert(e.index, &e.encode_to_vec()[..]).map_err(|e| log_err("writing an entry")(e.into()))?;
            }
        }
        txn.commit().map_err(|e| log_err("committing the raft log")(e.into()))?;
        Ok(RaftLog { core: Arc::new(RwLock::new(core)), slot: Arc::default() })
    }

    fn rl(&self) -> RwLockReadGuard<'_, Core> {
        self.core.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn wl(&self) -> RwLockWriteGuard<'_, Core> {
        self.core.write().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn slot(&self) -> MutexGuard<'_, Slot> {
        self.slot.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Appends `entries` (replacing any conflicting suffix) and saves `hard_state`, in one
    /// durable transaction: what a `Ready` asks to persist before its messages go out.
    ///
    /// # Errors
    /// [`RaftError::CorruptLog`] if `entries` would leave a gap or overwrite compacted entries,
    /// [`RaftError::Log`] if the write fails.
    pub fn persist(&self, entries: &[Entry], hard_state: Option<&HardState>) -> Result<(), RaftError> {
        let mut core = self.wl();
        if let Some(first) = entries.first() {
            if first.index < core.first_index() {
                return Err(RaftError::CorruptLog {
                    what: format!("entry {} overwrites compacted entries (first {})", first.index, core.first_index()),
                });
            }
            if first.index > core.last_index().saturating_add(1) {
                return Err(RaftError::CorruptLog {
                    what: format!("entry {} leaves a gap after {}", first.index, core.last_index()),
                });
            }
        }
        let txn = core.db.begin_write().map_err(|e| log_err("writing the raft log")(e.into()))?;
        let old_last = core.last_index();
        {
            let mut t = txn.open_table(ENTRIES).map_err(|e| log_err("opening the entries table")(e.into()))?;
            if let Some(first) = entries.first() {
                for i in first.index..=old_last {
                    t.remove(i).map_err(|e| log_err("removing a conflicting entry")(e.into()))?;
                }
            }
            for e in entries {
                t.insert(e.index, &e.encode_to_vec()[..]).map_err(|e| log_err("writing an entry")(e.into()))?;
            }
        }
        if let Some(first) = entries.first() {
            let keep = first.index.saturating_sub(core.first_index());
            core.entries.truncate(usize::try_from(keep).unwrap_or(usize::MAX));
            core.entries.extend(entries.iter().cloned());
        }
        if let Some(hs) = hard_state {
            core.hard_state = hs.clone();
        }
        core.write_state(&txn)?;
        txn.commit().map_err(|e| log_err("committing the raft log")(e.into()))
    }

    /// The member and cluster ids the log at `path` keeps (each 0 if it keeps none), without
    /// changing it; `None` if there is no log there (a member's first start).
    ///
    /// # Errors
    /// [`RaftError::Log`] if the file cannot be read, [`RaftError::CorruptLog`] if an id is
    /// damaged.
    pub fn ids(path: &Path) -> Result<Option<(u64, u64)>, RaftError> {
        if !path.exists() {
            return Ok(None);
        }
        let db = Database::open(path).map_err(|e| log_err("opening the raft log")(e.into()))?;
        let txn = db.begin_read().map_err(|e| log_err("reading the raft log")(e.into()))?;
        match txn.open_table(STATE) {
            Ok(state) => read_ids(&state).map(Some),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
            Err(e) => Err(log_err("opening the state table")(e.into())),
        }
    }

    /// This member's id, if this log keeps it.
    pub fn member_id(&self) -> Option<u64> {
        Some(self.rl().member_id).filter(|&id| id != 0)
    }

    /// Keeps this member's id.
    ///
    /// # Errors
    /// [`RaftError::Log`] if the write fails.
    pub fn set_member_id(&self, id: u64) -> Result<(), RaftError> {
        self.wl().member_id = id;
        self.persist(&[], None)
    }

    /// The cluster's id, if this log keeps it.
    pub fn cluster_id(&self) -> Option<u64> {
        Some(self.rl().cluster_id).filter(|&id| id != 0)
    }

    /// Keeps the cluster's id (once known: from `--initial-cluster`, or from the cluster a
    /// member joined).
    ///
    /// # Errors
    /// [`RaftError::Log`] if the write fails.
    pub fn set_cluster_id(&self, id: u64) -> Result<(), RaftError> {
        self.wl().cluster_id = id;
        self.persist(&[], None)
    }

    /// Records the commit index a `LightReady` reports.
    ///
    /// # Errors
    /// [`RaftError::Log`] if the write fails.
    pub fn set_commit(&self, commit: u64) -> Result<(), RaftError> {
        let mut hs = self.rl().hard_state.clone();
        hs.commit = commit;
        self.persist(&[], Some(&hs))
    }

    /// Records the configuration after a conf change was applied.
    ///
    /// # Errors
    /// [`RaftError::Log`] if the write fails.
    pub fn set_conf_state(&self, conf_state: ConfState) -> Result<(), RaftError> {
        self.wl().conf_state = conf_state;
        self.persist(&[], None)
    }

    /// The log now starts after the snapshot `metadata` names: entries are dropped, the commit
    /// index is the snapshot's (raft-rs `MemStorage::apply_snapshot`). Called once the snapshot
    /// is applied to the node through the pipeline.
    ///
    /// # Errors
    /// [`RaftError::Log`] if the write fails.
    pub fn apply_snapshot(&self, metadata: &SnapshotMetadata) -> Result<(), RaftError> {
        let mut core = self.wl();
        if metadata.index < core.offset.0 {
            return Ok(());
        }
        let txn = core.db.begin_write().map_err(|e| log_err("writing the raft log")(e.into()))?;
        {
            let mut t = txn.open_table(ENTRIES).map_err(|e| log_err("opening the entries table")(e.into()))?;
            t.retain(|_, _| false).map_err(|e| log_err("dropping entries")(e.into()))?;
        }
        core.entries.clear();
        core.offset = (metadata.index, metadata.term);
        core.hard_state.commit = metadata.index;
        core.hard_state.term = core.hard_state.term.max(metadata.term);
        core.conf_state = metadata.get_conf_state().clone();
        core.write_state(&txn)?;
        txn.commit().map_err(|e| log_err("committing the raft log")(e.into()))
    }

    /// Drops every entry up to `index` (which the node has applied), keeping its term for
    /// matching: a follower that needs one of them now gets a snapshot.
    ///
    /// # Errors
    /// [`RaftError::CorruptLog`] if `index` is past the last entry, [`RaftError::Log`] if the
    /// write fails.
    pub fn compact(&self, index: u64) -> Result<(), RaftError> {
        let mut core = self.wl();
        if index <= core.offset.0 {
            return Ok(());
        }
        let Some(at) = core.position(index) else {
            return Err(RaftError::CorruptLog { what: format!("cannot compact to {index}: no such entry") });
        };
        let term = core.entries.get(at).map_or(0, |e| e.term);
        let txn = core.db.begin_write().map_err(|e| log_err("writing the raft log")(e.into()))?;
        {
            let mut t = txn.open_table(ENTRIES).map_err(|e| log_err("opening the entries table")(e.into()))?;
            t.retain(|k, _| k > index).map_err(|e| log_err("dropping compacted entries")(e.into()))?;
        }
        core.entries.drain(..=at);
        core.offset = (index, term);
        core.write_state(&txn)?;
        txn.commit().map_err(|e| log_err("committing the raft log")(e.into()))
    }

    /// The first index still in the log.
    pub fn first_index(&self) -> u64 {
        self.rl().first_index()
    }

    /// The last index in the log.
    pub fn last_index(&self) -> u64 {
        self.rl().last_index()
    }

    /// The persisted commit index.
    pub fn commit(&self) -> u64 {
        self.rl().hard_state.commit
    }

    /// Whether raft-rs asked for a snapshot the slot cannot give (the ready loop then builds
    /// one); clears the request.
    pub(crate) fn take_request(&self) -> bool {
        std::mem::take(&mut self.slot().requested)
    }

    /// Offers `snapshot` to the next [`raft::Storage::snapshot`] call.
    pub(crate) fn offer(&self, snapshot: Snapshot) {
        self.slot().snapshot = Some(snapshot);
    }
}

impl raft::Storage for RaftLog {
    fn initial_state(&self) -> raft::Result<RaftState> {
        let core = self.rl();
        Ok(RaftState::new(core.hard_state.clone(), core.conf_state.clone()))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let core = self.rl();
        if low < core.first_index() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > core.last_index().saturating_add(1) {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let max = max_size.into();
        let mut out = Vec::new();
        let mut size = 0u64;
        for index in low..high {
            let Some(e) = core.position(index).and_then(|at| core.entries.get(at)) else {
                return Err(other(format!("entry {index} is missing")));
            };
            size = size.saturating_add(e.encoded_len() as u64);
            if !out.is_empty() && max.is_some_and(|m| size > m) {
                break;
            }
            out.push(e.clone());
        }
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        let core = self.rl();
        if idx == core.offset.0 {
            return Ok(core.offset.1);
        }
        if idx < core.offset.0 {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        match core.position(idx).and_then(|at| core.entries.get(at)) {
            Some(e) => Ok(e.term),
            None => Err(raft::Error::Store(StorageError::Unavailable)),
        }
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.rl().first_index())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.rl().last_index())
    }

    /// The snapshot the ready loop built of the live backend, if it is at least as new as the
    /// log's compaction point (a follower given an older one could not be sent the entries
    /// after it) and as `request_index`; otherwise `SnapshotTemporarilyUnavailable`, and the
    /// ready loop builds a new one: raft-rs asks again on the follower's next heartbeat
    /// response.
    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let compacted = self.rl().offset.0;
        let mut slot = self.slot();
        if let Some(s) = &slot.snapshot {
            let index = s.get_metadata().index;
            if index >= request_index && index >= compacted {
                return Ok(s.clone());
            }
        }
        slot.requested = true;
        Err(raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::Storage;

    fn entry(index: u64, term: u64) -> Entry {
        Entry { index, term, data: vec![index as u8], ..Default::default() }
    }

    fn boot() -> (ConfState, Vec<Entry>) {
        (ConfState { voters: vec![1, 2, 3], ..Default::default() }, vec![entry(1, 1), entry(2, 1)])
    }

    /// The log is private to its owner (0600), as etcd's WAL files, whatever the umask.
    #[cfg(unix)]
    #[test]
    fn the_log_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft.redb");
        drop(RaftLog::open(&path, boot).unwrap());
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    }

    #[test]
    fn bootstrap_append_compact_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft.redb");
        let log = RaftLog::open(&path, boot).unwrap();
        assert_eq!((log.first_index(), log.last_index(), log.commit()), (1, 2, 2));
        log.persist(&[entry(3, 2), entry(4, 2), entry(5, 2)], None).unwrap();
        // A conflicting suffix is replaced.
        log.persist(&[entry(4, 3)], Some(&HardState { term: 3, vote: 1, commit: 4 })).unwrap();
        assert_eq!(log.last_index(), 4);
        assert_eq!(log.term(4).unwrap(), 3);
        log.compact(3).unwrap();
        assert_eq!(log.first_index(), 4);
        assert_eq!(log.term(3).unwrap(), 2);
        assert!(matches!(log.term(2), Err(raft::Error::Store(StorageError::Compacted))));
        assert!(log.entries(3, 5, None, GetEntriesContext::empty(false)).is_err());
        drop(log);

        let log = RaftLog::open(&path, || panic!("an existing log is not bootstrapped")).unwrap();
        assert_eq!((log.first_index(), log.last_index(), log.commit()), (4, 4, 4));
        assert_eq!(log.term(3).unwrap(), 2);
        let state = log.initial_state().unwrap();
        assert_eq!(state.hard_state.vote, 1);
        assert_eq!(state.conf_state.voters, vec![1, 2, 3]);
    }

    #[test]
    fn gaps_and_overwrites_of_compacted_entries_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let log = RaftLog::open(&dir.path().join("raft.redb"), boot).unwrap();
        assert!(matches!(log.persist(&[entry(9, 2)], None), Err(RaftError::CorruptLog { .. })));
        log.compact(2).unwrap();
        assert!(matches!(log.persist(&[entry(2, 2)], None), Err(RaftError::CorruptLog { .. })));
        assert!(matches!(log.compact(7), Err(RaftError::CorruptLog { .. })));
    }

    #[test]
    fn snapshot_is_unavailable_until_offered_and_then_only_if_new_enough() {
        let dir = tempfile::tempdir().unwrap();
        let log = RaftLog::open(&dir.path().join("raft.redb"), boot).unwrap();
        let unavailable = |r: raft::Result<Snapshot>| {
            matches!(r, Err(raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable)))
        };
        assert!(unavailable(log.snapshot(0, 2)));
        assert!(log.take_request());
        assert!(!log.take_request());
        let mut s = Snapshot::default();
        s.mut_metadata().index = 1;
        log.offer(s);
        assert_eq!(log.snapshot(0, 2).unwrap().get_metadata().index, 1);
        log.compact(2).unwrap();
        assert!(unavailable(log.snapshot(0, 2)));
        assert!(log.take_request());
    }

    #[test]
    fn applying_a_snapshot_restarts_the_log_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let log = RaftLog::open(&dir.path().join("raft.redb"), boot).unwrap();
        let mut m = SnapshotMetadata { index: 40, term: 5, ..Default::default() };
        m.mut_conf_state().voters = vec![1, 2];
        log.apply_snapshot(&m).unwrap();
        assert_eq!((log.first_index(), log.last_index(), log.commit()), (41, 40, 40));
        assert_eq!(log.term(40).unwrap(), 5);
        assert_eq!(log.initial_state().unwrap().conf_state.voters, vec![1, 2]);
        log.persist(&[entry(41, 5)], None).unwrap();
        assert_eq!(log.last_index(), 41);
    }
}
