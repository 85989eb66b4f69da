//! Crash sweep: for every failpoint of persist, open and release, a node process restoring a
//! snapshot is killed there (`std::process::exit`: no unwinding, no destructor), then the data
//! directory is checked to hold the old state or the new one, bucket by bucket, and a restarted
//! node is checked to reach the new state.
//!
//! The node process is this test executable run again on one test, `crash_node`, with the data
//! directory and the failpoint in its environment.

// Test scaffolding: a failure here is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, clippy::unreachable)]

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{DiskNode, apply, assert_same, boot, bucket, leader, more_ops, rich_ops};
use snapply_core::backend::{Bucket, OwnedRecord};
use snapply_fs::{CRASH_EXIT_CODE, DataDir, FAILPOINTS};
use snapply_tests::records;

const CHILD_DIR: &str = "SNAPPLY_FS_CRASH_DIR";
const CHILD_AT: &str = "SNAPPLY_FS_CRASH_AT";
/// Exit code of a node process whose failpoint was never reached.
const NOT_REACHED: i32 = 3;

/// The old state: the follower restored the leader's first snapshot (so `member/snap/` holds a
/// `.snap` the new restore releases). Returns its records.
fn setup(root: &Path) -> Vec<OwnedRecord> {
    let (_, metadata, image) = leader(&[rich_ops()]);
    let (mut node, mut store, _) = boot(root);
    apply(&mut node, &mut store, &metadata, &image).expect("restoring the first snapshot");
    records(node.backend())
}

/// The node process: boots on `root` (applying a pending snapshot), and if it is not at the
/// leader's second snapshot, applies it, as the leader resends a snapshot a follower lacks.
fn node_process(root: &Path) -> DiskNode {
    let (_, metadata, image) = leader(&[rich_ops(), more_ops()]);
    let (mut node, mut store, _) = boot(root);
    if node.progress().applied_index < metadata.index {
        apply(&mut node, &mut store, &metadata, &image).expect("restoring the second snapshot");
    }
    node
}

/// In a child (its environment names a directory and a failpoint): the node process, stopped
/// at the failpoint. Run on its own: the node process, uninterrupted, goes from the old state
/// to the new one.
#[test]
fn crash_node() {
    if let (Some(dir), Some(at)) = (std::env::var_os(CHILD_DIR), std::env::var_os(CHILD_AT)) {
        let at = at.into_string().expect("a failpoint name is UTF-8");
        fail::cfg(at, "return(exit)").expect("arming the failpoint");
        node_process(Path::new(&dir));
        std::process::exit(NOT_REACHED);
    }
    let root = tempfile::tempdir().unwrap();
    let old = setup(root.path());
    let (leader, metadata, _) = leader(&[rich_ops(), more_ops()]);
    assert_ne!(old, records(leader.backend()));
    assert_same(&leader, &node_process(root.path()), &metadata);
}

/// Kills the child when dropped, so a failing test leaves no process behind.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs the node process on `root`, stopping at `at`; returns its exit code.
fn run_child(root: &Path, at: &str) -> Option<i32> {
    let exe = std::env::current_exe().expect("the test executable");
    let child = Command::new(exe)
        .args(["crash_node", "--exact", "--test-threads", "1", "--nocapture"])
        .env(CHILD_DIR, root)
        .env(CHILD_AT, at)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting the node process");
    let mut guard = ChildGuard(child);
    // Bounded: a node process that hangs fails the sweep instead of hanging it.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(status) = guard.0.try_wait().expect("waiting for the node process") {
            return status.code();
        }
        assert!(Instant::now() < deadline, "{at}: the node process did not end");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// What a crash at `at` must leave: the live state (`"old"` or `"new"`) and whether the new
/// snapshot is pending.
fn expected(at: &str) -> (&'static str, bool) {
    match at {
        "fs::durable::renamed" | "fs::durable::dir_synced" | "fs::persist::done" | "fs::open::start" => ("old", true),
        a if a.starts_with("fs::persist") || a.starts_with("fs::durable") => ("old", false),
        _ => ("new", false),
    }
}

#[test]
fn crash_at_every_failpoint_leaves_old_or_new_and_recovers_to_new() {
    let (leader, metadata, _) = leader(&[rich_ops(), more_ops()]);
    let new = records(leader.backend());
    let mut seen = Vec::new();
    for &at in FAILPOINTS {
        let root = tempfile::tempdir().unwrap();
        let old = setup(root.path());
        assert_ne!(old, new);

        let code = run_child(root.path(), at);
        assert_eq!(code, Some(CRASH_EXIT_CODE), "{at}: the node process did not stop at its failpoint");

        // Bucket by bucket, the live backend holds the old records or the new ones...
        let dir = DataDir::open(root.path()).unwrap();
        let booted = dir.boot().unwrap();
        let live = records(&booted.backend);
        for b in Bucket::ALL {
            let got = bucket(&live, b);
            assert!(
                got == bucket(&old, b) || got == bucket(&new, b),
                "{at}: bucket {} is neither old nor new",
                b.name()
            );
        }
        // ... and all of them are from the same side.
        let state = if live == old {
            "old"
        } else {
            assert_eq!(live, new, "{at}: a mix of old and new buckets");
            "new"
        };
        let pending = booted.pending.as_ref().map(|p| p.metadata().index);
        assert_eq!((state, pending.is_some()), expected(at), "{at}");
        if let Some(index) = pending {
            assert_eq!(index, metadata.index, "{at}");
        }
        drop(booted);

        // A restarted node reaches the new state, store by store.
        assert_same(&leader, &node_process(root.path()), &metadata);
        seen.push((at, state, pending.is_some()));
    }
    assert_eq!(seen.len(), FAILPOINTS.len());
    for (at, state, pending) in &seen {
        eprintln!("crash at {at:<28} -> {state}{}", if *pending { " + pending snapshot" } else { "" });
    }
}
