//! What a watcher reads from a member (etcd's Watch on the node side): the changes after a
//! revision, from the MVCC history, in revision order, with the key-value before each; bounded
//! batches; a revision below the compaction refused with the compaction revision; and a
//! watcher of a follower caught up by a snapshot reads on from the restored history.

use snapply_raft::RequestBuf;
use std::error::Error;
use std::time::Duration;

use snapply_core::store::StoreError;
use snapply_raft::{
    Client, Cluster, Command, Event, EventKind, Events, EventsRequest, KeyValue, MAX_BATCH_EVENTS, RaftError,
};
use tokio::time::timeout;

type Result<T = ()> = std::result::Result<T, Box<dyn Error + Send + Sync>>;

const WAIT: Duration = Duration::from_secs(60);
const BOUND: Duration = Duration::from_secs(180);

fn request(key: &[u8], range_end: &[u8], after: i64, prev_kv: bool) -> EventsRequest {
    EventsRequest { key: key.to_vec(), range_end: range_end.to_vec(), after, prev_kv }
}

fn kv(key: &str, value: &str, create: i64, modified: i64, version: i64) -> KeyValue {
    KeyValue {
        key: key.into(),
        create_revision: create,
        mod_revision: modified,
        version,
        value: value.into(),
        lease: 0,
    }
}

fn put(kv: KeyValue, prev_kv: Option<KeyValue>) -> Event {
    Event { kind: EventKind::Put, kv, prev_kv }
}

fn delete(key: &str, revision: i64, prev_kv: Option<KeyValue>) -> Event {
    Event {
        kind: EventKind::Delete,
        kv: KeyValue { key: key.into(), mod_revision: revision, ..KeyValue::default() },
        prev_kv,
    }
}

/// Writes `n` keys `/<prefix>/NNNNN` through `client`, 64 proposals in flight at a time.
async fn write_keys(client: &Client, prefix: &str, n: usize) -> Result {
    let puts = (0..n).map(|i| {
        Command::Apply(RequestBuf::Put {
            key: format!("/{prefix}/{i:05}").into_bytes(),
            value: b"v".to_vec(),
            lease: 0,
        })
    });
    client.propose_all(puts, 64).await?;
    Ok(())
}

/// Every event after `after` in `[key, range_end)`, read batch after batch; the batches.
async fn read_all(client: &Client, key: &[u8], range_end: &[u8], after: i64) -> Result<Vec<Events>> {
    let mut batches = Vec::new();
    let mut after = after;
    loop {
        let batch = client.events(request(key, range_end, after, false)).await?;
        let done = batch.through >= batch.header.revision;
        after = batch.through;
        batches.push(batch);
        if done {
            return Ok(batches);
        }
    }
}

/// Waits until `client`'s published revision reaches `revision`.
async fn until_revision(client: &Client, revision: i64) -> Result {
    let mut revisions = client.revisions();
    timeout(WAIT, revisions.wait_for(|r| *r >= revision)).await??;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_come_from_the_history_in_revision_order_with_prev_kv_and_a_compacted_start_is_refused() -> Result {
    timeout(BOUND, async {
        let root = tempfile::tempdir()?;
        let cluster = Cluster::start(root.path(), 1)?;
        let client = cluster.node(cluster.leader(WAIT).await?)?.client();
        client.put(b"/a", b"1").await?; // 2
        client.put(b"/b", b"2").await?; // 3
        client.put(b"/a", b"3").await?; // 4
        client.propose(Command::Apply(RequestBuf::DeleteRange { key: b"/a".to_vec(), range_end: Vec::new() })).await?; // 5
        client.put(b"/a", b"4").await?; // 6
        // The loop publishes the revision once the ready that applied the write is done.
        until_revision(client, 6).await?;
        assert_eq!(*client.revisions().borrow(), 6, "the loop published the store's revision");

        let got = client.events(request(b"/a", b"", 1, true)).await?;
        assert_eq!(got.header.revision, 6);
        assert_eq!(got.through, 6);
        assert_eq!(
            got.events,
            vec![
                put(kv("/a", "1", 2, 2, 1), None),
                put(kv("/a", "3", 2, 4, 2), Some(kv("/a", "1", 2, 2, 1))),
                delete("/a", 5, Some(kv("/a", "3", 2, 4, 2))),
                put(kv("/a", "4", 6, 6, 1), None),
            ]
        );
        // A range, from a later revision, without prev_kv.
        let got = client.events(request(b"/", b"0", 2, false)).await?;
        let keys: Vec<(&[u8], i64)> = got.events.iter().map(|e| (e.kv.key.as_slice(), e.kv.mod_revision)).collect();
        assert_eq!(keys, vec![(&b"/b"[..], 3), (b"/a", 4), (b"/a", 5), (b"/a", 6)]);
        assert!(got.events.iter().all(|e| e.prev_kv.is_none()));
        // Nothing after the current revision, nor after a future one.
        for after in [6, 10] {
            let got = client.events(request(b"/", b"0", after, true)).await?;
            assert_eq!((got.events.len(), got.through), (0, after));
        }

        client.propose(Command::Apply(RequestBuf::Compact { revision: 4 })).await?;
        match client.events(request(b"/a", b"", 2, false)).await {
            Err(RaftError::Store(StoreError::Compacted { compacted: 4, .. })) => {}
            other => panic!("a start below the compaction: {other:?}"),
        }
        // From the compaction revision on, the history is there (etcd's `minRev < compactRev`);
        // prev_kv of the delete at 5 is /a at 4, still held.
        let got = client.events(request(b"/a", b"", 3, true)).await?;
        assert_eq!(got.events.first(), Some(&put(kv("/a", "3", 2, 4, 2), None)), "its prev_kv is compacted away");
        assert_eq!(got.events.get(1), Some(&delete("/a", 5, Some(kv("/a", "3", 2, 4, 2)))));
        Ok(())
    })
    .await?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_watcher_far_behind_reads_bounded_batches() -> Result {
    timeout(BOUND, async {
        let root = tempfile::tempdir()?;
        let cluster = Cluster::start(root.path(), 1)?;
        let client = cluster.node(cluster.leader(WAIT).await?)?.client();
        let n = MAX_BATCH_EVENTS + 100;
        write_keys(client, "k", n).await?;
        let batches = read_all(client, b"/k/", b"/k0", 1).await?;
        assert!(batches.len() >= 2, "{} batches", batches.len());
        assert!(batches.iter().all(|b| b.events.len() <= MAX_BATCH_EVENTS));
        let revisions: Vec<i64> = batches.iter().flat_map(|b| b.events.iter().map(|e| e.kv.mod_revision)).collect();
        assert_eq!(revisions, (2..2 + n as i64).collect::<Vec<_>>(), "every event once, in revision order");
        Ok(())
    })
    .await?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_watcher_of_a_follower_reads_on_after_a_snapshot_restore_or_is_told_it_was_compacted() -> Result {
    timeout(BOUND, async {
        let root = tempfile::tempdir()?;
        let cluster = Cluster::start(root.path(), 3)?;
        let leader_id = cluster.leader(WAIT).await?;
        let follower_id = cluster.ids().into_iter().find(|&id| id != leader_id).ok_or("no follower")?;
        let (leader, follower) = (cluster.node(leader_id)?.client(), cluster.node(follower_id)?.client());
        write_keys(leader, "before", 10).await?;
        let seen = leader.header().await?.revision;
        until_revision(follower, seen).await?;

        // Cut off while the leader writes and compacts its raft log: only a snapshot brings the
        // follower back.
        follower.isolate(true).await?;
        write_keys(leader, "lagged", 300).await?;
        leader.compact_log().await?;
        let now = leader.header().await?.revision;
        follower.isolate(false).await?;
        until_revision(follower, now).await?;
        let status = follower.status().await?;
        assert_eq!(status.snapshots_applied, 1, "the follower was caught up by a snapshot");
        let batches = read_all(follower, b"/lagged/", b"/lagged0", seen).await?;
        let keys: Vec<Vec<u8>> = batches.iter().flat_map(|b| b.events.iter().map(|e| e.kv.key.clone())).collect();
        let want: Vec<Vec<u8>> = (0..300).map(|i| format!("/lagged/{i:05}").into_bytes()).collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(sorted, want, "every write made while it lagged, from the restored history");
        let revisions: Vec<i64> = batches.iter().flat_map(|b| b.events.iter().map(|e| e.kv.mod_revision)).collect();
        assert_eq!(revisions, (seen + 1..=now).collect::<Vec<_>>(), "in revision order");

        // Again, with the history compacted past the watcher meanwhile: the restored member
        // refuses its revision with the compaction's.
        follower.isolate(true).await?;
        write_keys(leader, "later", 20).await?;
        let compact_at = leader.header().await?.revision;
        leader.propose(Command::Apply(RequestBuf::Compact { revision: compact_at })).await?;
        leader.compact_log().await?;
        follower.isolate(false).await?;
        until_revision(follower, compact_at).await?;
        assert_eq!(follower.status().await?.snapshots_applied, 2);
        match follower.events(request(b"/later/", b"/later0", now, false)).await {
            Err(RaftError::Store(StoreError::Compacted { compacted, .. })) => assert_eq!(compacted, compact_at),
            other => panic!("a watcher behind the restored compaction: {other:?}"),
        }
        cluster.shutdown().await;
        Ok(())
    })
    .await?
}
