//! A follower whose restore is cut short after the snapshot was persisted (the fs adapter's
//! failpoint before the backend is opened) stops; restarted from its data directory, it applies
//! the persisted snapshot before serving (etcd's `RecoverSnapshotBackend`) and catches up.
//!
//! Alone in its test binary: failpoints are configured process-wide.

use snapply_raft::RequestBuf;
use std::error::Error;
use std::time::{Duration, Instant};

use snapply_raft::{Cluster, Command, RaftError};
use tokio::time::timeout;

type Result<T = ()> = std::result::Result<T, Box<dyn Error + Send + Sync>>;

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn follower_stopped_during_the_restore_finishes_it_from_its_data_dir() -> Result {
    timeout(Duration::from_secs(240), async {
        let scenario = fail::FailScenario::setup();
        let root = tempfile::tempdir()?;
        let mut cluster = Cluster::start(root.path(), 3)?;
        let leader = cluster.leader(WAIT).await?;
        let follower = cluster.ids().into_iter().find(|&id| id != leader).ok_or("no follower")?;

        cluster.node(follower)?.client().isolate(true).await?;
        let client = cluster.node(leader)?.client();
        let puts = (0..500).map(|i| {
            Command::Apply(RequestBuf::Put {
                key: format!("/lagged/{i:04}").into_bytes(),
                value: vec![b'v'; 64],
                lease: 0,
            })
        });
        client.propose_all(puts, 64).await?;
        let compacted = cluster.node(leader)?.client().compact_log().await?;

        // The follower persists the snapshot, then fails on opening its backend: its loop stops.
        fail::cfg("fs::open::start", "1*return").map_err(|e| e.to_string())?;
        cluster.node(follower)?.client().isolate(false).await?;
        let deadline = Instant::now() + WAIT;
        loop {
            match cluster.node(follower)?.client().status().await {
                Err(RaftError::Stopped) => break,
                Ok(s) => assert!(s.applied_index < compacted, "the restore must not have completed"),
                Err(e) => return Err(e.into()),
            }
            if Instant::now() > deadline {
                return Err("the follower's restore was not interrupted".into());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        fail::remove("fs::open::start");
        cluster.kill(follower).await;
        let snaps = std::fs::read_dir(cluster.dir(follower).ok_or("no dir")?.join("member/snap"))?
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".snap"))
            .count();
        assert_eq!(snaps, 1, "the snapshot is persisted in the follower's data directory");

        cluster.restart(follower)?;
        let status = cluster.wait_applied(follower, compacted, WAIT).await?;
        assert!(status.restored_at_boot, "the persisted snapshot was applied at start: {status:?}");
        let digests = cluster.settle(leader, WAIT).await?;
        let first = digests.values().next().ok_or("no node")?;
        assert!(digests.values().all(|d| d == first), "digests differ: {digests:x?}");
        cluster.shutdown().await;
        scenario.teardown();
        Ok(())
    })
    .await?
}
