//! Durable file operations with `std::fs`: every write is temp file → `sync_all` → rename →
//! fsync of the directory, every rename is followed by an fsync of the directories it touched.
//!
//! The last step is the one etcd missed (#22340): without it a rename can be lost at a power
//! cut, and a file that was reported durable is gone. `std::fs` rather than tokio's file I/O:
//! tokio's writes can report success while the bytes still sit in its buffer; the async edge
//! runs these on a blocking task instead.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;

use crate::error::FsError;
use crate::failpoint::failpoint;

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
        let mut file = private_file().open(&tmp).map_err(|e| FsError::io("creating a temp file", &tmp, e))?;
        file.write_all(bytes).map_err(|e| FsError::io("writing a temp file", &tmp, e))?;
        failpoint!("fs::durable::written", &tmp);
        file.sync_all().map_err(|e| FsError::io("syncing a temp file", &tmp, e))?;
        drop(file);
        failpoint!("fs::durable::synced", &tmp);
        std::fs::rename(&tmp, &target).map_err(|e| FsError::io("renaming a temp file into place", &target, e))?;
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
        Ok(()) => Ok(()),
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
