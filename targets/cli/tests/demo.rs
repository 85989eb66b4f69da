//! The `snapply` binary as a user runs it.

// Test scaffolding: a failure here is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, clippy::unreachable)]

use std::process::Command;

fn snapply(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_snapply")).args(args).output().expect("running snapply")
}

#[test]
fn demo_prints_every_phase_in_order_and_states_equal() {
    let out = snapply(&["demo", "--keys", "300", "--value-size", "16"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "demo failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let phases: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("ok   "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    // Every phase the pipeline has, in its order.
    let all: Vec<&str> = snapply_core::Phase::ALL.iter().map(|p| p.state()).collect();
    assert_eq!(phases, all);
    assert!(stdout.contains("restored mvcc store"), "{stdout}");
    assert_eq!(stdout.lines().last(), Some("states equal"));
}

#[test]
fn bad_arguments_are_refused_with_an_error_and_exit_code_2() {
    for args in [&["demo", "--keys", "0"][..], &["demo", "--keys", "many"], &["restore-everything"]] {
        let out = snapply(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(String::from_utf8_lossy(&out.stderr).starts_with("error:"), "{args:?}");
    }
}
