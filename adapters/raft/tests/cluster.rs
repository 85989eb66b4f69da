//! Clusters on loopback: a follower cut off while the leader writes and compacts its log
//! catches up by a snapshot applied through snapply's pipeline, and every node ends with the
//! same state.

use snapply_raft::RequestBuf;
use std::error::Error;
use std::time::Duration;

use snapply_core::Phase;
use snapply_raft::{Client, Cluster, Command};
use tokio::task::JoinSet;
use tokio::time::timeout;

type Result<T = ()> = std::result::Result<T, Box<dyn Error + Send + Sync>>;

const WAIT: Duration = Duration::from_secs(60);

/// Writes `n` keys `prefix-00000..` through `client`, 64 proposals in flight at a time.
async fn write_keys(client: &Client, prefix: &str, n: usize) -> Result {
    let puts = (0..n).map(|i| {
        Command::Apply(RequestBuf::Put {
            key: format!("/{prefix}/key-{i:05}").into_bytes(),
            value: format!("value-{i}-{}", "x".repeat(i % 50)).into_bytes(),
            lease: 0,
        })
    });
    client.propose_all(puts, 64).await?;
    Ok(())
}

/// Cuts `follower` off, writes `keys` keys, compacts the leader's log so only a snapshot can
/// bring the follower back, heals it, and checks it was restored by snapshot.
async fn lag_and_catch_up(cluster: &Cluster, leader: u64, follower: u64, prefix: &str, keys: usize) -> Result<u64> {
    let before = cluster.node(follower)?.client().status().await?.snapshots_applied;
    cluster.node(follower)?.client().isolate(true).await?;
    write_keys(cluster.node(leader)?.client(), prefix, keys).await?;
    let compacted = cluster.node(leader)?.client().compact_log().await?;
    assert!(cluster.node(follower)?.client().status().await?.applied_index < compacted, "the follower lagged");
    cluster.node(follower)?.client().isolate(false).await?;
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
    write_keys(cluster.node(leader)?.client(), "before", 10).await?;
    lag_and_catch_up(&cluster, leader, follower, "lagged", keys).await?;
    // The restored follower goes on applying entries like the others.
    write_keys(cluster.node(leader)?.client(), "after", 10).await?;
    assert_equal_digests(&cluster, leader).await?;
    let got = cluster.node(follower)?.client().range(b"/lagged/key-00007", b"").await?;
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

/// The value of the metric sample `name` on `client`'s member.
fn sample(client: &Client, name: &str) -> Option<f64> {
    client.metrics().text().lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// Waits (bounded) until the metric `name` of `client`'s member reads `want`.
async fn until_sample(client: &Client, name: &str, want: f64) -> Result {
    let deadline = std::time::Instant::now() + WAIT;
    while sample(client, name) != Some(want) {
        if std::time::Instant::now() > deadline {
            return Err(format!("{name} never read {want}:\n{}", client.metrics().text()).into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// A leader cut off takes proposals it can never commit; once their clients gave up (a
/// timeout on the client's side), the member forgets them: the pending gauge is back at 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn proposals_a_cut_off_leader_never_commits_are_forgotten_once_their_clients_give_up() -> Result {
    timeout(Duration::from_secs(120), async {
        let root = tempfile::tempdir()?;
        let cluster = Cluster::start(root.path(), 3)?;
        let leader = cluster.leader(WAIT).await?;
        let l = cluster.node(leader)?.client();
        let pending = "etcd_server_proposals_pending";
        assert_eq!(sample(l, pending), Some(0.0));
        l.isolate(true).await?;
        let mut inflight = JoinSet::new();
        for i in 0..20 {
            let put = l.propose(Command::Apply(RequestBuf::Put {
                key: format!("/lost/{i}").into_bytes(),
                value: b"v".to_vec(),
                lease: 0,
            }));
            inflight.spawn(timeout(Duration::from_secs(2), put));
        }
        // Taken by raft-rs while the member still leads, then never committed.
        until_sample(l, pending, 20.0).await?;
        while let Some(r) = inflight.join_next().await {
            assert!(r?.is_err(), "a proposal to a cut-off leader was answered");
        }
        until_sample(l, pending, 0.0).await?;
        l.isolate(false).await?;
        cluster.shutdown().await;
        Ok(())
    })
    .await?
}

/// etcd's HashKV on every member: the same hash at the same revision, another one once a key
/// changed; defragmenting a member's backend keeps its content and does not grow its file; a
/// request over `--max-request-bytes` is refused and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn members_agree_on_the_hash_of_the_key_space_and_defragmenting_keeps_it() -> Result {
    timeout(Duration::from_secs(120), async {
        let root = tempfile::tempdir()?;
        let cluster = Cluster::start(root.path(), 3)?;
        let leader = cluster.leader(WAIT).await?;
        let l = cluster.node(leader)?.client();
        write_keys(l, "hashed", 300).await?;
        l.propose(Command::Apply(RequestBuf::DeleteRange {
            key: b"/hashed/key-00001".to_vec(),
            range_end: Vec::new(),
        }))
        .await?;
        cluster.settle(leader, WAIT).await?;
        let hashes = async |rev: i64| -> Result<Vec<(u32, i64, i64)>> {
            let mut out = Vec::new();
            for id in cluster.ids() {
                let (header, hash, compacted, at) = cluster.node(id)?.client().hash_kv(rev).await?;
                assert_eq!(header.member_id, id);
                out.push((hash, compacted, at));
            }
            Ok(out)
        };
        let before = hashes(0).await?;
        let (hash, compacted, at) = before[0];
        assert!(before.iter().all(|h| *h == (hash, -1, at)), "{before:?}");
        assert_eq!(at, 302, "300 puts and a delete after revision 1");

        // A key changes: another hash at the new revision, the old one at the old revision.
        let rev = l.put(b"/hashed/key-00002", b"changed").await?;
        cluster.settle(leader, WAIT).await?;
        let after = hashes(0).await?;
        assert!(after.iter().all(|h| *h == (after[0].0, -1, rev)), "{after:?}");
        assert_ne!(after[0].0, hash);
        assert!(hashes(at).await?.iter().all(|h| h.0 == hash));
        let future = cluster.node(leader)?.client().hash_kv(rev + 1).await;
        assert!(matches!(future, Err(snapply_raft::RaftError::Store(_))), "{future:?}");
        // Compacted: revisions at or below it are refused, and the hash still agrees.
        l.propose(Command::Apply(RequestBuf::Compact { revision: at })).await?;
        cluster.settle(leader, WAIT).await?;
        let compacted_hashes = hashes(0).await?;
        assert!(compacted_hashes.iter().all(|h| *h == (compacted_hashes[0].0, at, rev)), "{compacted_hashes:?}");
        assert!(cluster.node(leader)?.client().hash_kv(at).await.is_err());
        let _ = compacted;

        // Defragmenting: the content is kept, the file does not grow.
        let digests = cluster.settle(leader, WAIT).await?;
        for id in cluster.ids() {
            let db = cluster.dir(id).ok_or("no data dir")?.join("member").join("db");
            let size = std::fs::metadata(&db)?.len();
            cluster.node(id)?.client().defragment().await?;
            assert!(std::fs::metadata(&db)?.len() <= size, "member {id:x}'s backend grew");
        }
        assert_eq!(cluster.settle(leader, WAIT).await?, digests);
        assert_eq!(hashes(0).await?, compacted_hashes);

        // Over --max-request-bytes: refused before raft, nothing changes.
        let big = l.put(b"/big", &vec![b'x'; snapply_raft::MAX_REQUEST_BYTES]).await;
        assert!(matches!(big, Err(snapply_raft::RaftError::RequestTooLarge { .. })), "{big:?}");
        assert_eq!(hashes(0).await?, compacted_hashes);
        cluster.shutdown().await;
        Ok(())
    })
    .await?
}

/// `Client::propose_all` proposes in order and returns the revision after the last command; with
/// one in flight, a refused command stops it before anything after it is proposed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn propose_all_applies_in_order_and_stops_at_the_first_refused_command() -> Result {
    let dir = tempfile::tempdir()?;
    let cluster = Cluster::start(dir.path(), 1)?;
    let id = cluster.leader(WAIT).await?;
    let client = cluster.node(id)?.client();
    let put =
        |key: &str, value: &str| Command::Apply(RequestBuf::Put { key: key.into(), value: value.into(), lease: 0 });
    let before = client.propose(put("/x", "0")).await?;
    let revision = client.propose_all([put("/a", "1"), put("/a", "2"), put("/b", "1")], 2).await?;
    assert_eq!(revision, before + 3, "the revision after the last of three puts");
    let refused = client
        .propose_all([put("/a", "3"), Command::Apply(RequestBuf::LeaseRevoke { id: 99 }), put("/c", "1")], 1)
        .await;
    assert!(matches!(refused, Err(snapply_raft::RaftError::Store(_))), "{refused:?}");
    assert_eq!(client.range(b"/a", b"").await?, vec![(b"/a".to_vec(), b"3".to_vec())]);
    assert_eq!(client.range(b"/c", b"").await?, Vec::new(), "nothing after the refused command was proposed");
    cluster.shutdown().await;
    Ok(())
}
