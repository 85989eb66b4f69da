//! Measures how long a lagging follower takes from the heal to the pipeline's `Applied` when
//! the leader holds N keys (default 100,000): three nodes on loopback, data directories in a
//! temporary directory.
//!
//! `cargo run --release -p snapply-raft --example catch_up -- 100000`

use snapply_raft::RequestBuf;
use std::error::Error;
use std::time::{Duration, Instant};

use snapply_core::Phase;
use snapply_raft::{Cluster, Command};
use tokio::task::JoinSet;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn Error>> {
    let keys: usize = std::env::args().nth(1).map(|a| a.parse()).transpose()?.unwrap_or(100_000);
    let wait = Duration::from_secs(600);
    let root = tempfile::tempdir()?;
    let cluster = Cluster::start(root.path(), 3)?;
    let leader = cluster.leader(wait).await?;
    let follower = cluster.ids().into_iter().find(|&id| id != leader).ok_or("no follower")?;
    cluster.node(follower)?.client().isolate(true).await?;
    let client = cluster.node(leader)?.client();
    let t = Instant::now();
    let mut inflight = JoinSet::new();
    for i in 0..keys {
        let key = format!("/registry/pods/default/pod-{i:07}").into_bytes();
        inflight.spawn(client.propose(Command::Apply(RequestBuf::Put { key, value: vec![b'v'; 128], lease: 0 })));
        if inflight.len() >= 256
            && let Some(r) = inflight.join_next().await
        {
            r??;
        }
    }
    while let Some(r) = inflight.join_next().await {
        r??;
    }
    println!("wrote {keys} keys (128-byte values) in {:.1} s", t.elapsed().as_secs_f64());
    let t = Instant::now();
    let compacted = cluster.node(leader)?.client().compact_log().await?;
    println!("leader snapshot + log compaction at index {compacted}: {:.1} ms", t.elapsed().as_secs_f64() * 1e3);
    let healed = Instant::now();
    cluster.node(follower)?.client().isolate(false).await?;
    let status = cluster.wait_applied(follower, compacted, wait).await?;
    let restore = status.last_restore.ok_or("caught up without a snapshot")?;
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "heal -> Applied: {:.1} ms (image {} bytes); pipeline: persist {:.1} ms, apply (persisted -> Applied) {:.1} ms",
        ms(restore.applied_at.saturating_duration_since(healed)),
        restore.image_bytes,
        ms(restore.phases.iter().filter(|(p, _)| *p == Phase::Persist).map(|(_, d)| *d).sum()),
        ms(restore.phases.iter().filter(|(p, _)| *p > Phase::Persist).map(|(_, d)| *d).sum()),
    );
    for (phase, d) in &restore.phases {
        println!("  {:<16} {:>10.3} ms", phase.state(), ms(*d));
    }
    let digests = cluster.settle(leader, wait).await?;
    let equal = digests.values().all(|d| Some(d) == digests.values().next());
    println!("digests {}", if equal { "equal" } else { "DIFFER" });
    cluster.shutdown().await;
    Ok(())
}
