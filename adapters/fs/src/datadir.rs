//! The data directory, laid out as etcd's, and what a node finds in it when it starts.

use std::path::{Path, PathBuf};

use snapply_core::Snapshot;
use snapply_core::SnapshotMetadata;
use snapply_core::backend::Backend;
use snapply_core::store::ConsistentIndex;

use crate::backend::RedbBackend;
use crate::durable::{private_dir, remove_if_exists, rename, sync_dir, write_durable};
use crate::error::FsError;
use crate::failpoint::failpoint;
use crate::snapfile::{self, SnapInfo};

/// A persisted snapshot's name: its index and term.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SnapName {
    /// The snapshot's index.
    pub index: u64,
    /// The snapshot's term.
    pub term: u64,
}

/// A data directory: `member/db` (the live backend) and `member/snap/` (persisted snapshots).
///
/// Directories are created 0700 and files 0600, as etcd does. The paths are plain values:
/// cloning a `DataDir` (to hand it to a blocking task) opens nothing.
#[derive(Clone, Debug)]
pub struct DataDir {
    member: PathBuf,
    snap: PathBuf,
}

impl DataDir {
    /// Opens the data directory at `root`, creating `member/` and `member/snap/` (0700) if they
    /// are missing. It removes nothing: what an interrupted persist left is swept by
    /// [`DataDir::boot`], once the live backend's lock is held, so that opening a directory
    /// another process is running on cannot delete the files that process is writing.
    ///
    /// # Errors
    /// [`FsError::Io`] if a directory cannot be created, listed or synced.
    pub fn open(root: &Path) -> Result<Self, FsError> {
        let member = root.join("member");
        let snap = member.join("snap");
        private_dir(&snap)?;
        sync_dir(&member)?;
        sync_dir(root)?;
        Ok(DataDir { member, snap })
    }

    /// `member/`.
    pub fn member_dir(&self) -> &Path {
        &self.member
    }

    /// `member/snap/`.
    pub fn snap_dir(&self) -> &Path {
        &self.snap
    }

    /// `member/db`, the live backend.
    pub fn db_path(&self) -> PathBuf {
        self.member.join("db")
    }

    /// `member/snap/<term>-<index>.snap`.
    pub fn snap_path(&self, name: SnapName) -> PathBuf {
        self.snap.join(snapfile::snap_name(name.term, name.index))
    }

    /// `member/snap/<index>.snap.db`, the backend of the snapshot at `index`.
    pub fn snap_db_path(&self, index: u64) -> PathBuf {
        self.snap.join(snapfile::db_name(index))
    }

    fn file_names(&self) -> Result<Vec<String>, FsError> {
        let listing = std::fs::read_dir(&self.snap).map_err(|e| FsError::io("listing snapshots", &self.snap, e))?;
        let mut names = Vec::new();
        for entry in listing {
            let entry = entry.map_err(|e| FsError::io("listing snapshots", &self.snap, e))?;
            // Names that are not UTF-8 are not ours.
            if let Ok(name) = entry.file_name().into_string() {
                names.push(name);
            }
        }
        Ok(names)
    }

    /// Every `.snap` file, newest first (highest index, then highest term).
    ///
    /// # Errors
    /// [`FsError::Io`] if `member/snap/` cannot be listed.
    pub fn snapshots(&self) -> Result<Vec<SnapName>, FsError> {
        let mut found: Vec<SnapName> = self
            .file_names()?
            .iter()
            .filter_map(|n| snapfile::parse_snap_name(n))
            .map(|(term, index)| SnapName { index, term })
            .collect();
        found.sort_unstable_by(|a, b| b.cmp(a));
        Ok(found)
    }

    /// Reads and checks the `.snap` file of `name`.
    ///
    /// # Errors
    /// [`FsError::CorruptSnap`] if it fails its checksum or does not decode, or names another
    /// snapshot than its file name; [`FsError::Io`] if it cannot be read.
    pub fn read_snap(&self, name: SnapName) -> Result<SnapInfo, FsError> {
        let path = self.snap_path(name);
        let bytes = std::fs::read(&path).map_err(|e| FsError::io("reading a snapshot file", &path, e))?;
        let info = snapfile::decode(&bytes).map_err(|what| FsError::CorruptSnap { path: path.clone(), what })?;
        if info.metadata.index != name.index || info.metadata.term != name.term {
            return Err(FsError::CorruptSnap { path, what: "holds another snapshot than its name says" });
        }
        Ok(info)
    }

    /// Writes the `.snap` file of `info` durably.
    pub(crate) fn write_snap(&self, info: &SnapInfo) -> Result<(), FsError> {
        let name = snapfile::snap_name(info.metadata.term, info.metadata.index);
        let bytes =
            snapfile::encode(info).map_err(|what| FsError::CorruptSnap { path: self.snap.join(&name), what })?;
        write_durable(&self.snap, &name, &bytes)
    }

    /// Sets a bad `.snap` aside as `.snap.broken`, as etcd does, so that the next newest is used
    /// and the bad one is kept for the operator.
    ///
    /// # Errors
    /// [`FsError::Io`] if the rename or the directory sync fails.
    pub fn set_aside(&self, name: SnapName) -> Result<(), FsError> {
        let path = self.snap_path(name);
        let mut broken = path.clone().into_os_string();
        broken.push(".broken");
        rename(&path, Path::new(&broken)).map_err(|e| FsError::io("setting a broken snapshot aside", &path, e))?;
        sync_dir(&self.snap)
    }

    /// Deletes every snapshot (`.snap` and `.snap.db`) older than `applied`: the pinning rule.
    /// A snapshot at or above the last applied index may still be waiting to be applied, so it
    /// is never deleted here, whatever arrived after it (etcd #18055, #20133).
    pub(crate) fn release_before(&self, applied: u64) -> Result<(), FsError> {
        failpoint!("fs::release::start", &self.snap);
        let mut removed = false;
        for name in self.file_names()? {
            let index = match (snapfile::parse_snap_name(&name), snapfile::parse_db_name(&name)) {
                (Some((_, index)), _) | (_, Some(index)) => index,
                _ => continue,
            };
            if index < applied {
                remove_if_exists(&self.snap.join(&name))?;
                removed = true;
                failpoint!("fs::release::removed", &self.snap.join(&name));
            }
        }
        if removed {
            sync_dir(&self.snap)?;
        }
        Ok(())
    }

    /// Removes temp files and snapshot backends no `.snap` names.
    fn sweep(&self) -> Result<(), FsError> {
        let names = self.file_names()?;
        let named: Vec<u64> = names.iter().filter_map(|n| snapfile::parse_snap_name(n)).map(|(_, i)| i).collect();
        let mut removed = false;
        for name in &names {
            let orphan = snapfile::parse_db_name(name).is_some_and(|i| !named.contains(&i));
            if name.ends_with(".tmp") || orphan {
                remove_if_exists(&self.snap.join(name))?;
                removed = true;
            }
        }
        if removed {
            sync_dir(&self.snap)?;
        }
        Ok(())
    }

    /// Opens the node's state as it was left: the live backend (created empty if there is none),
    /// its consistent index, and the newest valid persisted snapshot newer than that index, which
    /// the caller must apply through the pipeline before the node serves (etcd's
    /// `RecoverSnapshotBackend`).
    ///
    /// A `.snap` that fails its checksum, or whose backend file is missing, is set aside as
    /// `.broken` and the next newest is used.
    ///
    /// Once the live backend is open (redb holds an exclusive lock on it, so no other process
    /// runs on this directory), it removes what an interrupted persist or write left: `*.tmp`
    /// files, and `<index>.snap.db` files that no `.snap` names (a crash between writing a
    /// snapshot's backend and its `.snap`: that snapshot was never reported durable). If the
    /// backend is in use by another process, nothing is removed.
    ///
    /// # Errors
    /// [`FsError`] if the live backend cannot be opened or read, or the directory listed.
    pub fn boot(&self) -> Result<Boot, FsError> {
        let db = self.db_path();
        let backend = RedbBackend::open(&db)?;
        self.sweep()?;
        let cindex = {
            let txn = backend.read().map_err(|source| FsError::Backend { op: "reading the live backend", source })?;
            ConsistentIndex::load(&txn).map_err(|source| FsError::Store { index: 0, source })?
        };
        let mut pending = None;
        for name in self.snapshots()? {
            if name.index <= cindex.index() {
                break;
            }
            match self.read_snap(name) {
                Ok(info) if self.snap_db_path(name.index).exists() => {
                    pending = Some(PendingSnapshot { info });
                    break;
                }
                Ok(_) | Err(FsError::CorruptSnap { .. }) => self.set_aside(name)?,
                Err(e) => return Err(e),
            }
        }
        Ok(Boot { backend, consistent_index: cindex.index(), pending })
    }
}

/// What [`DataDir::boot`] found.
#[derive(Debug)]
pub struct Boot {
    /// The live backend (`member/db`).
    pub backend: RedbBackend,
    /// Its consistent index: the last entry it reflects.
    pub consistent_index: u64,
    /// A persisted snapshot newer than the live backend: apply it before serving.
    pub pending: Option<PendingSnapshot>,
}

/// A persisted snapshot waiting to be applied.
#[derive(Debug)]
pub struct PendingSnapshot {
    info: SnapInfo,
}

impl PendingSnapshot {
    /// Its metadata.
    pub fn metadata(&self) -> &SnapshotMetadata {
        &self.info.metadata
    }

    /// What its `.snap` holds.
    pub fn info(&self) -> &SnapInfo {
        &self.info
    }

    /// The snapshot to hand the pipeline: already persisted, named by its image's digest, so
    /// [`crate::FsSnapshotStore`] confirms it from the data directory without reading an image.
    pub fn snapshot(&self) -> Snapshot<'_> {
        Snapshot::persisted(&self.info.metadata, self.info.image_sha256)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(index: u64, term: u64) -> SnapInfo {
        SnapInfo {
            metadata: SnapshotMetadata { index, term, ..Default::default() },
            image_sha256: [1; 32],
            records: 0,
            v2: vec![index as u8],
        }
    }

    #[test]
    fn layout_and_modes_are_etcds() {
        let root = tempfile::tempdir().unwrap();
        let dir = DataDir::open(root.path()).unwrap();
        assert_eq!(dir.db_path(), root.path().join("member/db"));
        assert_eq!(
            dir.snap_path(SnapName { index: 16, term: 2 }),
            root.path().join("member/snap/0000000000000002-0000000000000010.snap")
        );
        assert_eq!(dir.snap_db_path(16), root.path().join("member/snap/0000000000000010.snap.db"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for d in ["member", "member/snap"] {
                let mode = std::fs::metadata(root.path().join(d)).unwrap().permissions().mode();
                assert_eq!(mode & 0o777, 0o700, "{d}");
            }
            dir.write_snap(&info(16, 2)).unwrap();
            let mode = std::fs::metadata(dir.snap_path(SnapName { index: 16, term: 2 })).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn snapshots_are_listed_newest_first() {
        let root = tempfile::tempdir().unwrap();
        let dir = DataDir::open(root.path()).unwrap();
        for (i, t) in [(5, 1), (20, 2), (9, 1), (20, 3)] {
            dir.write_snap(&info(i, t)).unwrap();
        }
        let got: Vec<(u64, u64)> = dir.snapshots().unwrap().iter().map(|n| (n.index, n.term)).collect();
        assert_eq!(got, vec![(20, 3), (20, 2), (9, 1), (5, 1)]);
    }

    #[test]
    fn boot_sweeps_temp_files_and_orphan_backends() {
        let root = tempfile::tempdir().unwrap();
        let dir = DataDir::open(root.path()).unwrap();
        dir.write_snap(&info(7, 1)).unwrap();
        std::fs::write(dir.snap_db_path(7), b"kept: its .snap exists").unwrap();
        std::fs::write(dir.snap_db_path(8), b"orphan").unwrap();
        std::fs::write(dir.snap_dir().join("0000000000000009.snap.db.tmp"), b"torn").unwrap();
        let dir = DataDir::open(root.path()).unwrap();
        let _boot = dir.boot().unwrap();
        assert!(dir.snap_db_path(7).exists());
        assert!(!dir.snap_db_path(8).exists());
        assert!(!dir.snap_dir().join("0000000000000009.snap.db.tmp").exists());
    }

    #[test]
    fn a_directory_in_use_is_not_swept_by_a_second_opener() {
        let root = tempfile::tempdir().unwrap();
        let running = DataDir::open(root.path()).unwrap();
        let _live = running.boot().unwrap();
        // What the running node is writing right now: a snapshot's backend before its `.snap`.
        let in_flight = running.snap_dir().join("0000000000000009.snap.db.tmp");
        std::fs::write(&in_flight, b"being persisted").unwrap();
        std::fs::write(running.snap_db_path(9), b"renamed, .snap not yet written").unwrap();

        let second = DataDir::open(root.path()).unwrap();
        assert!(second.boot().is_err(), "the live backend is locked by the running node");
        assert!(
            in_flight.exists() && running.snap_db_path(9).exists(),
            "a second opener removed the running node's files"
        );
    }

    #[test]
    fn release_keeps_every_snapshot_not_older_than_applied() {
        let root = tempfile::tempdir().unwrap();
        let dir = DataDir::open(root.path()).unwrap();
        for i in [5, 10, 15] {
            dir.write_snap(&info(i, 1)).unwrap();
            std::fs::write(dir.snap_db_path(i), b"db").unwrap();
        }
        dir.release_before(10).unwrap();
        let left: Vec<u64> = dir.snapshots().unwrap().iter().map(|n| n.index).collect();
        assert_eq!(left, vec![15, 10]);
        assert!(!dir.snap_db_path(5).exists());
        assert!(dir.snap_db_path(10).exists() && dir.snap_db_path(15).exists());
    }

    #[test]
    fn boot_sets_a_corrupt_snap_aside_and_uses_the_next_newest() {
        let root = tempfile::tempdir().unwrap();
        let dir = DataDir::open(root.path()).unwrap();
        for i in [10, 20] {
            dir.write_snap(&info(i, 1)).unwrap();
            std::fs::write(dir.snap_db_path(i), b"db").unwrap();
        }
        let newest = dir.snap_path(SnapName { index: 20, term: 1 });
        let mut bytes = std::fs::read(&newest).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x40;
        std::fs::write(&newest, &bytes).unwrap();

        let boot = dir.boot().unwrap();
        assert_eq!(boot.consistent_index, 0);
        assert_eq!(boot.pending.as_ref().map(|p| p.metadata().index), Some(10));
        assert!(!newest.exists());
        let mut broken = newest.into_os_string();
        broken.push(".broken");
        assert!(Path::new(&broken).exists());
        assert_eq!(dir.read_snap(SnapName { index: 10, term: 1 }).unwrap(), info(10, 1));
    }
}
