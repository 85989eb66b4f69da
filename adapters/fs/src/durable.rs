//! Durable file operations with `std::fs`: every write is temp file → `sync_all` → rename →
//! fsync of the directory, every rename is followed by an fsync of the directories it touched.
//!
//! The last step is the one etcd missed (#22340): without it a rename can be lost at a power
//! cut, and a file that was reported durable is gone. `std::fs` rather than tokio's file I/O:
//! tokio's writes can report success while the bytes still sit in its buffer; the async edge
//! runs these on a blocking task instead.
//!
//! Every step a power cut can undo goes through the few functions here: creating a file
//! ([`create_file`]), syncing its contents ([`sync_file`], or [`synced`] where redb synced
//! it), renaming ([`rename`]), removing ([`remove_if_exists`]) and syncing a directory
//! ([`sync_dir`]). With the `failpoints` feature (tests only) each also records itself in the
//! [`journal`], from which a crash model rebuilds what a power cut after any step leaves: only
//! synced contents and synced directory entries. Without it they are the plain calls.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;

use crate::error::FsError;
use crate::failpoint::failpoint;

/// Records a durable step in the [`journal`] (with the `failpoints` feature; nothing without).
macro_rules! step {
    ($step:expr) => {
        #[cfg(feature = "failpoints")]
        $crate::durable::journal::push(|| $step);
    };
}

/// The durable steps as they were taken, for a crash model (feature `failpoints`, tests only).
///
/// [`record`] runs a closure and returns every step the adapter took meanwhile, on any thread,
/// in order: files created, contents synced (with the bytes that are then durable), renames,
/// removals, directory syncs, and the failpoints passed (which name the protocol's points, such
/// as `fs::persist::done`, after which a snapshot is reported durable). A power cut after step
/// `k` leaves the directory entries as of their directory's last sync and each file's contents
/// as of its last sync, as redb's crash tests and ALICE-style checkers model it.
#[cfg(feature = "failpoints")]
pub mod journal {
    use std::path::PathBuf;
    use std::sync::Mutex;

    /// One durable step.
    #[derive(Clone, Debug, PartialEq, Eq)]
    #[non_exhaustive]
    pub enum Step {
        /// A new, empty file was created at this path (its directory entry is not durable yet).
        Created(PathBuf),
        /// The contents of the file at this path are durable: these bytes.
        Synced {
            /// The file.
            path: PathBuf,
            /// Its contents once synced.
            bytes: Vec<u8>,
        },
        /// A file was renamed (durable once both directories are synced).
        Renamed {
            /// The old path.
            from: PathBuf,
            /// The new path.
            to: PathBuf,
        },
        /// A file was removed (durable once its directory is synced).
        Removed(PathBuf),
        /// The entries of this directory are durable.
        DirSynced(PathBuf),
        /// A failpoint was passed.
        Reached(&'static str),
    }

    static JOURNAL: Mutex<Option<Vec<Step>>> = Mutex::new(None);

    /// Runs `f`, recording every durable step taken meanwhile. Steps of another `record` running
    /// at the same time (another test thread) would mix in: one recording per process.
    pub fn record<R>(f: impl FnOnce() -> R) -> (R, Vec<Step>) {
        *JOURNAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Vec::new());
        let result = f();
        let steps = JOURNAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take().unwrap_or_default();
        (result, steps)
    }

    pub(crate) fn push(step: impl FnOnce() -> Step) {
        let mut journal = JOURNAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(steps) = journal.as_mut() {
            steps.push(step());
        }
    }
}

/// The contents of `path` for the [`journal`]; a file that cannot be read records as empty.
#[cfg(feature = "failpoints")]
fn contents(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_default()
}

/// Creates (or truncates) `path` as a file only its owner can read and write.
pub(crate) fn create_file(path: &Path) -> std::io::Result<File> {
    let file = private_file().open(path)?;
    step!(journal::Step::Created(path.to_path_buf()));
    Ok(file)
}

/// Makes the contents of `file` (at `path`) durable.
pub(crate) fn sync_file(file: &File, path: &Path) -> std::io::Result<()> {
    file.sync_all()?;
    step!(journal::Step::Synced { path: path.to_path_buf(), bytes: contents(path) });
    let _ = path;
    Ok(())
}

/// Notes that the file at `path` was made durable by redb (a durable commit syncs it).
pub(crate) fn synced(path: &Path) {
    step!(journal::Step::Synced { path: path.to_path_buf(), bytes: contents(path) });
    let _ = path;
}

/// Renames `from` to `to`; durable once the directories of both are synced.
pub(crate) fn rename(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::rename(from, to)?;
    step!(journal::Step::Renamed { from: from.to_path_buf(), to: to.to_path_buf() });
    Ok(())
}

/// Opens options that create a file only its owner can read and write (0600).
pub(crate) fn private_file() -> OpenOptions {
    let mut options = OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options
}

/// Creates `dir` (and missing parents) with mode 0700.
pub(crate) fn private_dir(dir: &Path) -> Result<(), FsError> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).map_err(|e| FsError::io("creating a data directory", dir, e))
}

/// Makes the entries of `dir` (creations, renames, removals) durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), FsError> {
    // Directories cannot be opened as files on Windows; NTFS journals renames itself.
    #[cfg(unix)]
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| FsError::io("syncing a directory", dir, e))?;
    step!(journal::Step::DirSynced(dir.to_path_buf()));
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Writes `bytes` to `dir/name` so that, whatever happens, the file is either absent (or its
/// old version) or complete: `dir/name.tmp` is written, synced, renamed over `dir/name`, and the
/// directory synced. A failure removes the temp file.
pub(crate) fn write_durable(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), FsError> {
    let tmp = dir.join(format!("{name}.tmp"));
    let target = dir.join(name);
    let result = (|| {
        let mut file = create_file(&tmp).map_err(|e| FsError::io("creating a temp file", &tmp, e))?;
        file.write_all(bytes).map_err(|e| FsError::io("writing a temp file", &tmp, e))?;
        failpoint!("fs::durable::written", &tmp);
        sync_file(&file, &tmp).map_err(|e| FsError::io("syncing a temp file", &tmp, e))?;
        drop(file);
        failpoint!("fs::durable::synced", &tmp);
        rename(&tmp, &target).map_err(|e| FsError::io("renaming a temp file into place", &target, e))?;
        Ok(())
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    failpoint!("fs::durable::renamed", &target);
    sync_dir(dir)?;
    failpoint!("fs::durable::dir_synced", dir);
    Ok(())
}

/// Removes `path` if it exists.
pub(crate) fn remove_if_exists(path: &Path) -> Result<(), FsError> {
    match std::fs::remove_file(path) {
        Ok(()) => {
            step!(journal::Step::Removed(path.to_path_buf()));
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(FsError::io("removing a file", path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durable_write_replaces_the_file_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        write_durable(dir.path(), "f", b"one").unwrap();
        write_durable(dir.path(), "f", b"two").unwrap();
        assert_eq!(std::fs::read(dir.path().join("f")).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("f")]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("f")).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn a_failed_write_leaves_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        write_durable(dir.path(), "f", b"one").unwrap();
        // A directory where the temp file should go makes the write fail.
        std::fs::create_dir(dir.path().join("f.tmp")).unwrap();
        assert!(write_durable(dir.path(), "f", b"two").is_err());
        assert_eq!(std::fs::read(dir.path().join("f")).unwrap(), b"one");
    }
}
