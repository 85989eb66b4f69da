//! Lease expiry is the leader's: a lease the leader stops hearing about is revoked through the
//! log, on every member; a member whose lessor was rebuilt from a snapshot expires the leases it
//! restored once it leads; a restarted leader starts every expiry over.

use snapply_raft::RequestBuf;
use std::error::Error;
use std::time::{Duration, Instant};

use snapply_raft::{Client, Cluster, Command};

type Result<T = ()> = std::result::Result<T, Box<dyn Error + Send + Sync>>;

const WAIT: Duration = Duration::from_secs(60);

/// Waits (at most `WAIT`) until `key` is gone on `client`'s member.
async fn wait_gone(client: &Client, key: &[u8]) -> Result {
    let deadline = Instant::now() + WAIT;
    while !client.range(key, &[]).await?.is_empty() {
        assert!(Instant::now() < deadline, "{} outlived its lease", String::from_utf8_lossy(key));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// Renews lease `id` through `client` every 300 ms until the returned sender is dropped.
fn keep_alive(client: Client, id: i64) -> tokio::sync::oneshot::Sender<()> {
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        loop {
            let _ = client.renew_lease(id).await;
            tokio::select! {
                _ = &mut stopped => return,
                () = tokio::time::sleep(Duration::from_millis(300)) => {}
            }
        }
    });
    stop
}

/// Cuts `follower` off, writes, compacts the leader's log and heals it: it catches up by a
/// snapshot, its lessor rebuilt from the snapshot's leases.
async fn restore_by_snapshot(cluster: &Cluster, leader: u64, follower: u64) -> Result {
    let before = cluster.node(follower)?.client().status().await?.snapshots_applied;
    cluster.node(follower)?.client().isolate(true).await?;
    let client = cluster.node(leader)?.client();
    for i in 0..20 {
        client.put(format!("/fill/{follower:x}/{i}").as_bytes(), b"x").await?;
    }
    let compacted = cluster.node(leader)?.client().compact_log().await?;
    cluster.node(follower)?.client().isolate(false).await?;
    let status = cluster.wait_applied(follower, compacted, WAIT).await?;
    assert_eq!(status.snapshots_applied, before + 1, "member {follower:x} caught up by a snapshot");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_restored_by_snapshot_expire_under_the_member_that_then_leads() -> Result {
    let dir = tempfile::tempdir()?;
    let mut cluster = Cluster::start(dir.path(), 3)?;
    let leader = cluster.leader(WAIT).await?;
    let client = cluster.node(leader)?.client();
    client.propose(Command::Apply(RequestBuf::LeaseGrant { id: 7, ttl: 2 })).await?;
    client
        .propose(Command::Apply(RequestBuf::Put { key: b"/leased".to_vec(), value: b"v".to_vec(), lease: 7 }))
        .await?;
    let renewing = keep_alive(client.clone(), 7);

    // Both followers are restored by snapshot while the lease is kept alive.
    let followers: Vec<u64> = cluster.ids().into_iter().filter(|&id| id != leader).collect();
    for &follower in &followers {
        restore_by_snapshot(&cluster, leader, follower).await?;
        assert_eq!(cluster.node(follower)?.client().range(b"/leased", &[]).await?.len(), 1, "kept alive");
    }

    // The leader dies and nobody renews: one of the restored members leads and revokes the
    // lease, and its key goes on both.
    drop(renewing);
    cluster.kill(leader).await;
    let new_leader = cluster.leader(WAIT).await?;
    assert!(followers.contains(&new_leader));
    for &follower in &followers {
        wait_gone(cluster.node(follower)?.client(), b"/leased").await?;
        let (_, lease) = cluster.node(follower)?.client().lease(7).await?;
        assert_eq!(lease, None, "the lease is revoked on {follower:x}");
    }
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_leader_expires_the_leases_it_held() -> Result {
    let dir = tempfile::tempdir()?;
    let mut cluster = Cluster::start(dir.path(), 1)?;
    let id = cluster.leader(WAIT).await?;
    let client = cluster.node(id)?.client();
    client.propose(Command::Apply(RequestBuf::LeaseGrant { id: 9, ttl: 2 })).await?;
    client
        .propose(Command::Apply(RequestBuf::Put { key: b"/leased".to_vec(), value: b"v".to_vec(), lease: 9 }))
        .await?;
    // Renewed while it runs: the TTL is the granted one, and an unknown lease is not found.
    assert_eq!(client.renew_lease(9).await?, Some(2));
    assert_eq!(client.renew_lease(10).await?, None);
    let (_, lease) = client.lease(9).await?;
    let lease = lease.ok_or("lease 9 is granted")?;
    assert_eq!((lease.granted_ttl, lease.keys), (2, vec![b"/leased".to_vec()]));
    assert!((0..=2).contains(&lease.ttl), "remaining TTL {}", lease.ttl);

    cluster.stop(id).await?;
    cluster.restart(id)?;
    cluster.leader(WAIT).await?;
    let client = cluster.node(id)?.client();
    wait_gone(client, b"/leased").await?;
    assert_eq!(client.lease(9).await?.1, None);
    assert_eq!(client.renew_lease(9).await?, None);
    cluster.shutdown().await;
    Ok(())
}
