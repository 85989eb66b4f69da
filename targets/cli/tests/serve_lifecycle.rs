//! How a `snapply serve` member ends: SIGTERM as SIGINT, logged; a data directory another member
//! holds is exit 4; a member that cannot write its files logs why and exits 5; `--help` prints
//! the exit codes.

// Test scaffolding: a failure here is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, clippy::unreachable)]

mod support;

use std::process::Command;
use std::time::Duration;

use support::{Member, cluster, put_until_ok, snapply};

fn one_member(root: &std::path::Path) -> Member {
    cluster(root, 1).pop().unwrap()
}

/// etcd's `osutil.HandleInterrupts`: both signals log `received signal; shutting down` with the
/// signal's name, and the member stops cleanly (exit 0, `stopped` logged).
#[test]
fn sigterm_and_sigint_stop_a_member_cleanly_and_are_logged() {
    for (signal, name) in [("TERM", "terminated"), ("INT", "interrupt")] {
        let dir = tempfile::tempdir().unwrap();
        let mut member = one_member(dir.path());
        member.start();
        put_until_ok(&member, "/a", "1");
        member.signal(signal);
        let status = member.wait_exit(Duration::from_secs(30));
        let log = member.log();
        assert_eq!(status.code(), Some(0), "SIG{signal}: {status:?}\n{log}");
        assert!(log.contains("received signal; shutting down"), "SIG{signal}:\n{log}");
        assert!(log.contains(&format!("\"signal\":\"{name}\"")), "SIG{signal}:\n{log}");
        assert!(log.contains("\tstopped\t"), "SIG{signal}:\n{log}");
    }
}

/// A second member on a data directory in use (other ports) exits 4, as the README's table
/// says, and the first goes on serving.
#[test]
fn a_second_serve_on_a_data_directory_in_use_exits_4() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = one_member(dir.path());
    first.start();
    put_until_ok(&first, "/a", "1");
    let second = snapply()
        .args(["serve", "--name", "infra1", "--data-dir"])
        .arg(&first.data)
        .arg("--initial-cluster")
        .arg(format!("infra1=http://127.0.0.1:{}", support::free_port()))
        .arg("--listen-client-urls")
        .arg(format!("http://127.0.0.1:{}", support::free_port()))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("is in use by another process"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    let mut kv = first.kv(Duration::from_secs(20)).unwrap();
    assert_eq!(kv.get("/a", false).unwrap().as_deref(), Some("1"));
}

/// A member whose files cannot grow (here a file size limit: writes past it fail with EFBIG,
/// as a full disk fails them with ENOSPC) logs the cause and exits 5, instead of answering
/// `etcdserver: server stopped` for ever.
#[test]
fn a_member_that_cannot_write_its_files_logs_why_and_exits_5() {
    let dir = tempfile::tempdir().unwrap();
    let mut member = one_member(dir.path());
    // SIGXFSZ ignored (kept across exec), so a write past the limit fails instead of killing
    // the process. The limit (in 512-byte blocks) leaves room to start and a few puts.
    let mut limited = Command::new("sh");
    limited.args(["-c", "trap '' XFSZ; ulimit -f 16384; exec \"$0\" \"$@\"", env!("CARGO_BIN_EXE_snapply")]);
    member.start_with(limited);
    member.wait_listening();
    put_until_ok(&member, "/first", "1");
    let value = "v".repeat(512 * 1024);
    let mut stopped = false;
    for i in 0..64 {
        let answer = member.kv(Duration::from_secs(20)).and_then(|mut c| c.put(&format!("/big{i}"), &value));
        if answer.is_err() {
            stopped = true;
            break;
        }
    }
    assert!(stopped, "every put fitted: raise the value size");
    let status = member.wait_exit(Duration::from_secs(30));
    let log = member.log();
    assert_eq!(status.code(), Some(5), "{status:?}\n{log}");
    // The cause: the raft log's error from the system, or the backend's (whose port error
    // keeps its kind, not the system's message).
    assert!(log.contains("error: member") && log.contains(" stopped: "), "{log}");
    assert!(log.contains("File too large") || log.contains("i/o error while writing"), "the cause is logged:\n{log}");
}

#[test]
fn serve_help_prints_the_exit_codes() {
    let out = snapply().args(["serve", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(help.contains("Exit codes:") && help.contains("4  data directory not empty, or in use"), "{help}");
}
