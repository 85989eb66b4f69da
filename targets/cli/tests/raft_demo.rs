//! `snapply demo` runs a raft-rs cluster whose lagging follower is restored by snapshot.

use assert_cmd::Command;

#[test]
fn demo_restores_the_lagging_follower_by_snapshot_and_digests_are_equal() {
    let out = Command::cargo_bin("snapply")
        .expect("the snapply binary")
        .args(["demo", "--keys", "300", "--value-size", "16"])
        .timeout(std::time::Duration::from_secs(120))
        .output()
        .expect("running snapply demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "demo failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let restored = stdout.lines().find(|l| l.contains("restored by snapshot at index")).expect("a restore line");
    assert!(restored.contains("heal to Applied"), "{restored}");
    let digests: Vec<&str> =
        stdout.lines().filter(|l| l.contains("state digest")).filter_map(|l| l.split_whitespace().last()).collect();
    assert_eq!(digests.len(), 3, "{stdout}");
    assert!(digests.iter().all(|d| *d == digests[0] && d.len() == 64), "{digests:?}");
    assert!(stdout.lines().any(|l| l == "digests equal"), "{stdout}");
}
