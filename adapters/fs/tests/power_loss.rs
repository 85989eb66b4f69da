//! Power-loss sweep: a crash model that loses what was not synced.
//!
//! The crash sweep (`crash_sweep.rs`) kills a process, which keeps the page cache: a missing
//! `fsync` of a directory after a rename is invisible there. Here a restore (persist, then the
//! apply through every phase) runs once with the adapter's durable steps recorded
//! ([`snapply_fs::journal`]); then, for a power cut after every step, the data directory a
//! machine would find at boot is rebuilt from the steps before it, keeping only what was
//! synced: a file's contents as of its last sync (a file never synced is empty), a directory's
//! entries as of its last sync (a rename or a creation not yet synced is undone). A second
//! variant keeps every directory entry but still drops unsynced contents, as a file system
//! that orders metadata but not data can. A node booted on each must hold the old state or the
//! new one, never anything else; and once the persist said the snapshot was durable
//! (`fs::persist::done`), the new one.

// Test scaffolding: a failure here is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, clippy::unreachable)]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::{apply, boot, leader, more_ops, rich_ops};
use snapply_core::backend::OwnedRecord;
use snapply_fs::journal::{self, Step};
use snapply_tests::records;

/// The files of a data directory after a power cut: what each path holds.
type Disk = BTreeMap<PathBuf, Vec<u8>>;

/// What survives a power cut, step by step.
struct Model {
    /// Directory entries as the running system sees them: path → file.
    live: BTreeMap<PathBuf, usize>,
    /// Directory entries as they were when their directory was last synced.
    durable: BTreeMap<PathBuf, usize>,
    /// Each file's contents as of its last sync; a file never synced has none.
    synced: BTreeMap<usize, Vec<u8>>,
    files: usize,
}

impl Model {
    /// Everything on disk before the recording is durable.
    fn new(root: &Path) -> Self {
        let mut model = Model { live: BTreeMap::new(), durable: BTreeMap::new(), synced: BTreeMap::new(), files: 0 };
        for path in files(root) {
            let file = model.file();
            model.synced.insert(file, std::fs::read(&path).unwrap());
            model.live.insert(path.clone(), file);
            model.durable.insert(path, file);
        }
        model
    }

    fn file(&mut self) -> usize {
        self.files += 1;
        self.files
    }

    fn take(&mut self, step: &Step) {
        match step {
            Step::Created(path) => {
                let file = self.file();
                self.live.insert(path.clone(), file);
            }
            Step::Synced { path, bytes } => {
                let file =
                    self.live.get(path).copied().unwrap_or_else(|| panic!("{} synced but absent", path.display()));
                self.synced.insert(file, bytes.clone());
            }
            Step::Renamed { from, to } => {
                let file = self.live.remove(from).unwrap_or_else(|| panic!("{} renamed but absent", from.display()));
                self.live.insert(to.clone(), file);
            }
            Step::Removed(path) => {
                self.live.remove(path);
            }
            Step::DirSynced(dir) => {
                self.durable.retain(|p, _| p.parent() != Some(dir.as_path()));
                let entries = self.live.iter().filter(|(p, _)| p.parent() == Some(dir.as_path()));
                self.durable.extend(entries.map(|(p, f)| (p.clone(), *f)));
            }
            Step::Reached(_) => {}
            other => panic!("a step this model does not know: {other:?}"),
        }
    }

    /// The disk after a power cut now: synced entries only, or (`entries_kept`) every entry.
    fn cut(&self, entries_kept: bool) -> Disk {
        let entries = if entries_kept { &self.live } else { &self.durable };
        entries.iter().map(|(p, f)| (p.clone(), self.synced.get(f).cloned().unwrap_or_default())).collect()
    }
}

/// Every file under `dir`.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// The records a node booted on `disk` (files under `from`, written under `to`) holds, once it
/// applied a pending snapshot as a restarting node does.
fn boot_on(disk: &Disk, from: &Path, to: &Path) -> Vec<OwnedRecord> {
    std::fs::create_dir_all(to.join("member/snap")).unwrap();
    for (path, bytes) in disk {
        std::fs::write(to.join(path.strip_prefix(from).unwrap()), bytes).unwrap();
    }
    let (node, _, _) = boot(to);
    records(node.backend())
}

/// The old state: the follower restored the leader's first snapshot. Returns its records.
fn setup(root: &Path) -> Vec<OwnedRecord> {
    let (_, metadata, image) = leader(&[rich_ops()]);
    let (mut node, mut store, _) = boot(root);
    apply(&mut node, &mut store, &metadata, &image).expect("restoring the first snapshot");
    records(node.backend())
}

/// Records the steps of the restore of the leader's second snapshot on the old state at
/// `root`.
fn record_restore(root: &Path) -> Vec<Step> {
    let (_, metadata, image) = leader(&[rich_ops(), more_ops()]);
    let (mut node, mut store, _) = boot(root);
    let (result, steps) = journal::record(|| apply(&mut node, &mut store, &metadata, &image).map(drop));
    result.expect("restoring the second snapshot");
    steps
}

#[test]
fn a_power_cut_at_any_step_of_a_restore_leaves_old_or_new() {
    let root = tempfile::tempdir().unwrap();
    let old = setup(root.path());
    let (leader, _, _) = leader(&[rich_ops(), more_ops()]);
    let new = records(leader.backend());
    assert_ne!(old, new);
    let mut model = Model::new(root.path());
    let steps = record_restore(root.path());
    let durable_at = steps
        .iter()
        .position(|s| *s == Step::Reached("fs::persist::done"))
        .expect("the persist reports the snapshot durable");

    let mut outcomes = Vec::new();
    for k in 0..=steps.len() {
        if let Some(step) = k.checked_sub(1).and_then(|i| steps.get(i)) {
            model.take(step);
        }
        for entries_kept in [false, true] {
            let cut = tempfile::tempdir().unwrap();
            let got = boot_on(&model.cut(entries_kept), root.path(), cut.path());
            let after = k.checked_sub(1).and_then(|i| steps.get(i));
            let state = if got == new {
                "new"
            } else {
                assert!(
                    got == old,
                    "power cut after step {k} ({after:?}, entries kept: {entries_kept}): neither old nor new"
                );
                "old"
            };
            if k > durable_at {
                assert_eq!(
                    state, "new",
                    "power cut after step {k} ({after:?}, entries kept: {entries_kept}): the snapshot was reported durable"
                );
            }
            outcomes.push(state);
        }
    }
    assert!(outcomes.contains(&"old") && outcomes.contains(&"new"), "{outcomes:?}");
    // The recording saw every kind of step (a recorder that missed one would make the sweep
    // vacuous).
    for kind in ["Created", "Synced", "Renamed", "DirSynced", "Removed"] {
        assert!(steps.iter().any(|s| format!("{s:?}").starts_with(kind)), "a restore takes a {kind} step: {steps:?}");
    }
}
