//! A member's metrics under etcd's names while a follower restores a snapshot: the
//! `etcd_server_snapshot_apply_in_progress_total` gauge is 1 while the restore runs (held in
//! its backend-opening phase by the fs adapter's failpoint) and 0 after, the transfer is counted
//! on both sides, the apply's duration observed.
//!
//! Alone in its test binary: failpoints are configured process-wide.

use snapply_raft::RequestBuf;
use std::error::Error;
use std::time::{Duration, Instant};

use snapply_raft::{Cluster, Command, Metrics};
use tokio::time::timeout;

type Result<T = ()> = std::result::Result<T, Box<dyn Error + Send + Sync>>;

const WAIT: Duration = Duration::from_secs(60);

/// The value of the sample `name` (with its labels, as the text format spells them).
fn sample(metrics: &Metrics, name: &str) -> Option<f64> {
    metrics.text().lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// Waits (bounded) until `name` reads `want` on `metrics`.
async fn until(metrics: &Metrics, name: &str, want: f64) -> Result {
    let deadline = Instant::now() + WAIT;
    while sample(metrics, name) != Some(want) {
        if Instant::now() > deadline {
            return Err(format!("{name} never read {want}:\n{}", metrics.text()).into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_apply_gauge_is_1_while_a_follower_restores_a_snapshot_and_0_after() -> Result {
    timeout(Duration::from_secs(240), async {
        let scenario = fail::FailScenario::setup();
        let root = tempfile::tempdir()?;
        let cluster = Cluster::start(root.path(), 3)?;
        let leader = cluster.leader(WAIT).await?;
        let follower = cluster.ids().into_iter().find(|&id| id != leader).ok_or("no follower")?;
        let (l, f) = (cluster.node(leader)?.client(), cluster.node(follower)?.client());
        assert_eq!(sample(l.metrics(), "etcd_server_is_leader"), Some(1.0));
        assert_eq!(sample(f.metrics(), "etcd_server_has_leader"), Some(1.0));
        assert_eq!(sample(f.metrics(), "etcd_server_is_leader"), Some(0.0));
        assert_eq!(sample(f.metrics(), "etcd_server_snapshot_apply_in_progress_total"), Some(0.0));

        f.isolate(true).await?;
        let puts = (0..300).map(|i| {
            Command::Apply(RequestBuf::Put {
                key: format!("/lagged/{i:04}").into_bytes(),
                value: vec![b'v'; 64],
                lease: 0,
            })
        });
        l.propose_all(puts, 64).await?;
        let compacted = l.compact_log().await?;

        // The follower receives and persists the snapshot, then holds in its restore.
        fail::cfg("fs::open::start", "pause").map_err(|e| e.to_string())?;
        f.isolate(false).await?;
        until(f.metrics(), "etcd_server_snapshot_apply_in_progress_total", 1.0).await?;
        let from = format!("etcd_network_snapshot_receive_success{{From=\"{leader:x}\"}}");
        assert_eq!(sample(f.metrics(), &from), Some(1.0), "{}", f.metrics().text());
        until(l.metrics(), &format!("etcd_network_snapshot_send_success{{To=\"{follower:x}\"}}"), 1.0).await?;
        assert_eq!(sample(f.metrics(), "etcd_snap_db_save_total_duration_seconds_count"), Some(1.0));
        assert_eq!(sample(f.metrics(), "snapply_snapshot_apply_duration_seconds_count"), Some(0.0));

        fail::cfg("fs::open::start", "off").map_err(|e| e.to_string())?;
        cluster.wait_applied(follower, compacted, WAIT).await?;
        until(f.metrics(), "etcd_server_snapshot_apply_in_progress_total", 0.0).await?;
        assert_eq!(sample(f.metrics(), "snapply_snapshot_apply_duration_seconds_count"), Some(1.0));
        assert!(sample(l.metrics(), "etcd_debugging_snap_save_total_duration_seconds_count") >= Some(1.0));
        let applied = sample(f.metrics(), "etcd_server_proposals_applied_total").ok_or("no applied")?;
        assert!(applied >= compacted as f64, "{applied} < {compacted}");
        scenario.teardown();
        cluster.shutdown().await;
        Ok(())
    })
    .await?
}
