//! Linearizable reads through raft-rs's ReadIndex: a follower cut off from the leader does not
//! answer from its stale state, and concurrent reads share ReadIndex rounds.

use std::error::Error;
use std::time::Duration;

use snapply_raft::{Cluster, Consistency};
use tokio::task::JoinSet;
use tokio::time::timeout;

type Result<T = ()> = std::result::Result<T, Box<dyn Error + Send + Sync>>;

const WAIT: Duration = Duration::from_secs(60);
const BOUND: Duration = Duration::from_secs(120);

/// The cluster's leader and a follower of it.
async fn leader_and_follower(cluster: &Cluster) -> Result<(u64, u64)> {
    let leader = cluster.leader(WAIT).await?;
    let follower = cluster.ids().into_iter().find(|&id| id != leader).ok_or("no follower")?;
    Ok((leader, follower))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cut_off_follower_answers_a_linearizable_read_only_with_the_leaders_latest_write() -> Result {
    timeout(BOUND, async {
        let root = tempfile::tempdir()?;
        let cluster = Cluster::start(root.path(), 3)?;
        let (leader, follower) = leader_and_follower(&cluster).await?;
        let (l, f) = (cluster.node(leader)?.client(), cluster.node(follower)?.client());
        l.put(b"/k", b"old").await?;
        let applied = cluster.node(leader)?.client().status().await?.applied_index;
        cluster.wait_applied(follower, applied, WAIT).await?;
        assert_eq!(f.read(b"/k", b"", Consistency::Linearizable).await?, vec![(b"/k".to_vec(), b"old".to_vec())]);

        f.isolate(true).await?;
        // Acknowledged by the leader and the other follower.
        l.put(b"/k", b"new").await?;
        // The follower's own state is stale: a serializable read says so.
        assert_eq!(f.read(b"/k", b"", Consistency::Serializable).await?, vec![(b"/k".to_vec(), b"old".to_vec())]);
        // A linearizable read waits for the leader instead of answering from that state.
        let read = tokio::spawn({
            let f = f.clone();
            async move { f.read(b"/k", b"", Consistency::Linearizable).await }
        });
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert!(!read.is_finished(), "a cut-off follower answered a linearizable read: {:?}", read.await);
        f.isolate(false).await?;
        assert_eq!(read.await??, vec![(b"/k".to_vec(), b"new".to_vec())]);
        Ok(())
    })
    .await?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_reads_share_read_index_rounds() -> Result {
    timeout(BOUND, async {
        let root = tempfile::tempdir()?;
        let cluster = Cluster::start(root.path(), 3)?;
        let (leader, follower) = leader_and_follower(&cluster).await?;
        cluster.node(leader)?.client().put(b"/k", b"v").await?;
        for id in [leader, follower] {
            let client = cluster.node(id)?.client();
            // A first read: the leader answers once it has committed an entry of its term.
            client.read_index().await?;
            let before = client.status().await?.read_rounds;
            const READS: u64 = 200;
            let mut reads = JoinSet::new();
            for _ in 0..READS {
                let c = client.clone();
                reads.spawn(async move { c.read(b"/k", b"", Consistency::Linearizable).await });
            }
            while let Some(r) = reads.join_next().await {
                assert_eq!(r??, vec![(b"/k".to_vec(), b"v".to_vec())]);
            }
            let rounds = client.status().await?.read_rounds - before;
            assert!((1..=READS / 4).contains(&rounds), "{READS} reads on {id:x} took {rounds} rounds");
        }
        Ok(())
    })
    .await?
}
