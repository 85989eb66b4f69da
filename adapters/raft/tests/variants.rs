//! The cluster scenarios around a snapshot catch-up: membership changed while the follower
//! lagged, two snapshots in a row, the leader restarted while sending (the follower killed
//! during the restore is in `crash_restore.rs`: it configures process-wide failpoints).

use snapply_raft::RequestBuf;
use std::error::Error;
use std::time::Duration;

use snapply_raft::{Client, Cluster, Command, member_id};
use tokio::time::timeout;

type Result<T = ()> = std::result::Result<T, Box<dyn Error + Send + Sync>>;

const WAIT: Duration = Duration::from_secs(60);
const BOUND: Duration = Duration::from_secs(240);

async fn write_keys(client: &Client, prefix: &str, n: usize) -> Result {
    let puts = (0..n).map(|i| {
        Command::Apply(RequestBuf::Put {
            key: format!("/{prefix}/key-{i:05}").into_bytes(),
            value: vec![b'v'; 64],
            lease: 0,
        })
    });
    client.propose_all(puts, 64).await?;
    Ok(())
}

async fn assert_equal_digests(cluster: &Cluster, leader: u64) -> Result {
    let digests = cluster.settle(leader, WAIT).await?;
    let first = digests.values().next().ok_or("no node")?;
    assert!(digests.values().all(|d| d == first), "digests differ: {digests:x?}");
    Ok(())
}

/// The cluster's leader and a follower of it.
async fn leader_and_follower(cluster: &Cluster) -> Result<(u64, u64)> {
    let leader = cluster.leader(WAIT).await?;
    let follower = cluster.ids().into_iter().find(|&id| id != leader).ok_or("no follower")?;
    Ok((leader, follower))
}

/// Cuts `follower` off, writes, compacts the leader's log; returns the compaction index.
async fn lag(cluster: &Cluster, leader: u64, follower: u64, prefix: &str, keys: usize) -> Result<u64> {
    cluster.node(follower)?.client().isolate(true).await?;
    write_keys(cluster.node(leader)?.client(), prefix, keys).await?;
    let status = cluster.node(leader)?.client().status().await?;
    assert_eq!(status.leader, leader, "leadership stayed put while the follower lagged");
    Ok(cluster.node(leader)?.client().compact_log().await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn membership_changed_while_the_follower_lagged_changes_its_peers() -> Result {
    timeout(BOUND, async {
        let root = tempfile::tempdir()?;
        let mut cluster = Cluster::start(root.path(), 5)?;
        let (leader, follower) = leader_and_follower(&cluster).await?;
        let removed = cluster.ids().into_iter().find(|&id| id != leader && id != follower).ok_or("no third")?;
        let joiner = member_id(9);
        assert_eq!(cluster.node(follower)?.client().status().await?.peers.len(), 4);

        cluster.node(follower)?.client().isolate(true).await?;
        let info = cluster.spawn_joiner(joiner, "joiner")?;
        cluster.node(leader)?.client().add_member(joiner, &info).await?;
        cluster.node(leader)?.client().remove_member(removed).await?;
        cluster.forget(removed).await;
        let compacted = lag(&cluster, leader, follower, "lagged", 500).await?;

        cluster.node(follower)?.client().isolate(false).await?;
        let status = cluster.wait_applied(follower, compacted, WAIT).await?;
        assert_eq!(status.snapshots_applied, 1, "caught up by snapshot");
        let mut want: Vec<u64> = cluster.ids().into_iter().filter(|&id| id != follower).collect();
        want.sort_unstable();
        assert!(!want.contains(&removed) && want.contains(&joiner));
        assert_eq!(status.peers, want, "after the snapshot the follower talks to exactly the members it lists");
        let mut members = status.members.clone();
        members.sort_unstable();
        assert_eq!(members, cluster.ids());
        write_keys(cluster.node(leader)?.client(), "after", 10).await?;
        assert_equal_digests(&cluster, leader).await?;
        cluster.shutdown().await;
        Ok(())
    })
    .await?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_snapshots_in_a_row() -> Result {
    timeout(BOUND, async {
        let root = tempfile::tempdir()?;
        let cluster = Cluster::start(root.path(), 3)?;
        let (leader, follower) = leader_and_follower(&cluster).await?;
        for (round, prefix) in ["first", "second"].into_iter().enumerate() {
            let compacted = lag(&cluster, leader, follower, prefix, 300).await?;
            cluster.node(follower)?.client().isolate(false).await?;
            let status = cluster.wait_applied(follower, compacted, WAIT).await?;
            assert_eq!(status.snapshots_applied, round as u64 + 1);
            assert!(status.last_restore.is_some_and(|r| r.index >= compacted));
        }
        assert_equal_digests(&cluster, leader).await?;
        cluster.shutdown().await;
        Ok(())
    })
    .await?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_restarted_while_sending() -> Result {
    timeout(BOUND, async {
        let root = tempfile::tempdir()?;
        let mut cluster = Cluster::start(root.path(), 3)?;
        let (leader, follower) = leader_and_follower(&cluster).await?;
        let compacted = lag(&cluster, leader, follower, "lagged", 1_000).await?;
        // Every log is compacted, so whichever node leads next can only send a snapshot.
        for id in cluster.ids() {
            if id != follower && id != leader {
                cluster.node(id)?.client().compact_log().await?;
            }
        }
        cluster.node(follower)?.client().isolate(false).await?;
        tokio::time::sleep(Duration::from_millis(20)).await;
        cluster.kill(leader).await;
        cluster.restart(leader)?;
        let status = cluster.wait_applied(follower, compacted, WAIT).await?;
        assert!(status.snapshots_applied >= 1, "caught up by snapshot: {status:?}");
        let leader = cluster.leader(WAIT).await?;
        write_keys(cluster.node(leader)?.client(), "after", 10).await?;
        assert_equal_digests(&cluster, leader).await?;
        cluster.shutdown().await;
        Ok(())
    })
    .await?
}
