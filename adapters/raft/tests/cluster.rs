//! Clusters on loopback: a follower cut off while the leader writes and compacts its log
//! catches up by a snapshot applied through snapply's pipeline, and every node ends with the
//! same state.

use std::error::Error;
use std::time::Duration;

use snapply_raft::{Client, Cluster, Command, Phase};
use tokio::task::JoinSet;
use tokio::time::timeout;

type Result<T = ()> = std::result::Result<T, Box<dyn Error + Send + Sync>>;

const WAIT: Duration = Duration::from_secs(60);

/// Writes `n` keys `prefix-00000..` through `client`, 64 proposals in flight at a time.
async fn write_keys(client: &Client, prefix: &str, n: usize) -> Result {
    let mut inflight = JoinSet::new();
    for i in 0..n {
        let key = format!("/{prefix}/key-{i:05}").into_bytes();
        let value = format!("value-{i}-{}", "x".repeat(i % 50)).into_bytes();
        inflight.spawn(client.propose(Command::Put { key, value, lease: 0 }));
        if inflight.len() >= 64
            && let Some(r) = inflight.join_next().await
        {
            r??;
        }
    }
    while let Some(r) = inflight.join_next().await {
        r??;
    }
    Ok(())
}

/// Cuts `follower` off, writes `keys` keys, compacts the leader's log so only a snapshot can
/// bring the follower back, heals it, and checks it was restored by snapshot.
async fn lag_and_catch_up(cluster: &Cluster, leader: u64, follower: u64, prefix: &str, keys: usize) -> Result<u64> {
    let before = cluster.node(follower)?.status().await?.snapshots_applied;
    cluster.node(follower)?.isolate(true);
    write_keys(&cluster.node(leader)?.client(), prefix, keys).await?;
    let compacted = cluster.node(leader)?.compact_log().await?;
    assert!(cluster.node(follower)?.status().await?.applied_index < compacted, "the follower lagged");
    cluster.node(follower)?.isolate(false);
    let status = cluster.wait_applied(follower, compacted, WAIT).await?;
    assert_eq!(status.snapshots_applied, before + 1, "the follower caught up by one snapshot");
    let restore = status.last_restore.ok_or("no restore report")?;
    assert!(restore.index >= compacted, "snapshot at {} covers the compacted log ({compacted})", restore.index);
    let phases: Vec<Phase> = restore.phases.iter().map(|(p, _)| *p).collect();
    assert_eq!(phases, Phase::ALL.to_vec(), "every phase of the pipeline ran, in order");
    Ok(compacted)
}

async fn assert_equal_digests(cluster: &Cluster, leader: u64) -> Result {
    let digests = cluster.settle(leader, WAIT).await?;
    let first = digests.values().next().ok_or("no node")?;
    assert!(digests.values().all(|d| d == first), "digests differ: {digests:x?}");
    Ok(())
}

async fn snapshot_catch_up(nodes: usize, keys: usize) -> Result {
    let root = tempfile::tempdir()?;
    let cluster = Cluster::start(root.path(), nodes)?;
    let leader = cluster.leader(WAIT).await?;
    let follower = cluster.ids().into_iter().find(|&id| id != leader).ok_or("no follower")?;
    write_keys(&cluster.node(leader)?.client(), "before", 10).await?;
    lag_and_catch_up(&cluster, leader, follower, "lagged", keys).await?;
    // The restored follower goes on applying entries like the others.
    write_keys(&cluster.node(leader)?.client(), "after", 10).await?;
    assert_equal_digests(&cluster, leader).await?;
    let got = cluster.node(follower)?.range(b"/lagged/key-00007", b"").await?;
    assert_eq!(got.len(), 1);
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_lagging_follower_catches_up_by_snapshot() -> Result {
    timeout(Duration::from_secs(180), snapshot_catch_up(3, 2_000)).await?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_nodes_lagging_follower_catches_up_by_snapshot() -> Result {
    timeout(Duration::from_secs(180), snapshot_catch_up(5, 1_000)).await?
}
