//! etcd's Watch on `snapply serve`, through the `etcd-client` crate: several watches on one
//! stream (ids chosen and allocated), filters, prev_kv, history from a start revision, cancel,
//! progress requests, a start below the compaction; and a watcher of a member that is caught up
//! by a snapshot goes on receiving events, or is told its revision was compacted.

// Test scaffolding: a failure here is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, clippy::unreachable)]

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use etcd_client::{Client, EventType, WatchFilterType, WatchOptions, WatchResponse, WatchStream};
use support::Member;
use tokio::time::timeout;

type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

const WAIT: Duration = Duration::from_secs(60);
const BOUND: Duration = Duration::from_secs(240);

/// A client of `member`, once it has a leader (a put went through).
async fn connect(member: &Member) -> Result<Client> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Ok(mut client) = Client::connect([format!("127.0.0.1:{}", member.client)], None).await
            && client.put("/ready", "", None).await.is_ok()
        {
            return Ok(client);
        }
        assert!(tokio::time::Instant::now() < deadline, "{} never took a put:\n{}", member.name, member.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The next response on `stream`.
async fn next(stream: &mut WatchStream) -> Result<WatchResponse> {
    Ok(timeout(WAIT, stream.message()).await??.ok_or("the watch stream ended")?)
}

/// An event as (type, key, value, mod revision, prev value).
type Seen = (EventType, String, String, i64, Option<String>);

fn seen(r: &WatchResponse) -> Vec<Seen> {
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    r.events()
        .iter()
        .map(|e| {
            let kv = e.kv().unwrap();
            (e.event_type(), text(kv.key()), text(kv.value()), kv.mod_revision(), e.prev_kv().map(|p| text(p.value())))
        })
        .collect()
}

fn put(key: &str, value: &str, revision: i64, prev: Option<&str>) -> Seen {
    (EventType::Put, key.into(), value.into(), revision, prev.map(Into::into))
}

fn delete(key: &str, revision: i64, prev: Option<&str>) -> Seen {
    (EventType::Delete, key.into(), String::new(), revision, prev.map(Into::into))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_stream_carries_several_watches_with_filters_history_cancel_and_progress() -> Result {
    timeout(BOUND, async {
        let root = tempfile::tempdir()?;
        let mut members = support::cluster(root.path(), 1);
        members[0].start();
        let mut client = connect(&members[0]).await?;
        let base = client.get("/ready", None).await?.header().unwrap().revision();

        // From now, with an allocated id (etcd's first is 0).
        let mut stream = client.watch_client().watch("/a", None).await?;
        let created = next(&mut stream).await?;
        assert!(created.created() && !created.canceled());
        assert_eq!((created.watch_id(), created.header().unwrap().revision()), (0, base));
        // A prefix, with a chosen id, no puts, and prev_kv.
        let options = WatchOptions::new().with_prefix().with_watch_id(7).with_filters([WatchFilterType::NoPut]);
        stream.watch("/p/", Some(options.with_prev_key())).await?;
        let created = next(&mut stream).await?;
        assert!(created.created() && created.watch_id() == 7);
        // The same id again is refused as etcd refuses it.
        stream.watch("/x", Some(WatchOptions::new().with_watch_id(7))).await?;
        let refused = next(&mut stream).await?;
        assert!(refused.created() && refused.canceled());
        assert_eq!(refused.watch_id(), -1);
        assert_eq!(refused.cancel_reason(), "mvcc: duplicate watch ID provided on the WatchStream");
        // An empty range too.
        stream.watch("/z", Some(WatchOptions::new().with_range("/a"))).await?;
        let refused = next(&mut stream).await?;
        assert_eq!((refused.canceled(), refused.cancel_reason()), (true, "mvcc: watcher range is empty"));

        client.put("/a", "1", None).await?; // base + 1
        client.put("/p/x", "1", None).await?; // + 2
        client.delete("/p/x", None).await?; // + 3
        client.put("/a", "2", None).await?; // + 4
        client.put("/b", "1", None).await?; // + 5
        stream.request_progress().await?;
        let mut got: BTreeMap<i64, Vec<(i64, Vec<Seen>)>> = BTreeMap::new();
        let progress = loop {
            let r = next(&mut stream).await?;
            if r.watch_id() == -1 {
                break r;
            }
            got.entry(r.watch_id()).or_default().push((r.header().unwrap().revision(), seen(&r)));
        };
        // Each write in its own response headed by its revision; the progress response after
        // every event up to the revision it carries.
        assert_eq!(
            got.get(&0).cloned().unwrap_or_default(),
            vec![(base + 1, vec![put("/a", "1", base + 1, None)]), (base + 4, vec![put("/a", "2", base + 4, None)])]
        );
        assert_eq!(
            got.get(&7).cloned().unwrap_or_default(),
            vec![(base + 3, vec![delete("/p/x", base + 3, Some("1"))])]
        );
        assert!(progress.events().is_empty() && !progress.canceled());
        assert_eq!(progress.header().unwrap().revision(), base + 5);

        // History: from a past revision, the changes since, in one response headed by the
        // store's revision (etcd's unsynced watchers), then the next write on its own.
        stream
            .watch("/", Some(WatchOptions::new().with_prefix().with_start_revision(base + 2).with_watch_id(9)))
            .await?;
        assert!(next(&mut stream).await?.created());
        let history = next(&mut stream).await?;
        assert_eq!(history.watch_id(), 9);
        assert_eq!(history.header().unwrap().revision(), base + 5);
        assert_eq!(
            seen(&history),
            vec![
                put("/p/x", "1", base + 2, None),
                delete("/p/x", base + 3, None),
                put("/a", "2", base + 4, None),
                put("/b", "1", base + 5, None)
            ]
        );

        // Canceled: no more events for it; the others go on.
        stream.cancel(0).await?;
        let canceled = next(&mut stream).await?;
        assert!(canceled.canceled() && canceled.watch_id() == 0);
        stream.cancel(9).await?;
        assert!(next(&mut stream).await?.canceled());
        client.put("/a", "3", None).await?; // + 6
        client.put("/p/y", "1", None).await?; // + 7: filtered out
        client.delete("/p/y", None).await?; // + 8
        let r = next(&mut stream).await?;
        assert_eq!((r.watch_id(), seen(&r)), (7, vec![delete("/p/y", base + 8, Some("1"))]));

        // A start revision below the compaction: created, then canceled with the compaction
        // revision (etcd's `compact_revision`).
        client.compact(base + 6, None).await?;
        stream.watch("/a", Some(WatchOptions::new().with_start_revision(base + 1).with_watch_id(11))).await?;
        assert!(next(&mut stream).await?.created());
        let compacted = next(&mut stream).await?;
        assert_eq!((compacted.watch_id(), compacted.canceled()), (11, true));
        assert_eq!(compacted.compact_revision(), base + 6);
        Ok(())
    })
    .await?
}

/// Puts `/k/<i>` for `i` in `keys` through `client`, retrying while there is no leader.
async fn write(client: &mut Client, keys: std::ops::Range<usize>) -> Result {
    for i in keys {
        let deadline = tokio::time::Instant::now() + WAIT;
        while let Err(e) = client.put(format!("/k/{i:05}"), format!("v{i}"), None).await {
            assert!(tokio::time::Instant::now() < deadline, "put /k/{i:05}: {e}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_of_a_member_caught_up_by_a_snapshot_goes_on_or_is_told_it_was_compacted() -> Result {
    timeout(BOUND, async {
        let root = tempfile::tempdir()?;
        let mut members = support::cluster(root.path(), 3);
        for m in &mut members {
            m.add_args(&["--snapshot-count", "100", "--snapshot-catchup-entries", "50"]);
            m.start();
        }
        let mut writer = connect(&members[0]).await?;
        let watched = connect(&members[2]).await?;
        let mut stream = watched.watch_client().watch("/k/", Some(WatchOptions::new().with_prefix())).await?;
        assert!(next(&mut stream).await?.created());
        write(&mut writer, 0..10).await?;

        // Stopped while the others write ten times the snapshot count: only a snapshot
        // brings it back, and its watcher reads on from the restored history.
        let from = members[2].log().len();
        members[2].signal("STOP");
        write(&mut writer, 10..1000).await?;
        members[2].signal("CONT");
        let mut keys = Vec::new();
        let mut revisions = Vec::new();
        while keys.len() < 1000 {
            let r = next(&mut stream).await?;
            assert!(!r.canceled(), "{:?}", r.cancel_reason());
            for (_, key, _, revision, _) in seen(&r) {
                keys.push(key);
                revisions.push(revision);
            }
        }
        let want: Vec<String> = (0..1000).map(|i| format!("/k/{i:05}")).collect();
        assert_eq!(keys, want, "every write, once, in order");
        assert!(revisions.windows(2).all(|w| w[0] < w[1]));
        let log = members[2].log();
        assert!(
            log.get(from..).is_some_and(|l| l.contains("applied snapshot at index")),
            "the member was caught up by a snapshot:\n{log}"
        );

        // Again, with the history compacted past the watcher meanwhile: canceled with the
        // compaction revision.
        let from = members[2].log().len();
        members[2].signal("STOP");
        write(&mut writer, 1000..1300).await?;
        let compact_at = writer.get("/ready", None).await?.header().unwrap().revision();
        writer.compact(compact_at, None).await?;
        write(&mut writer, 1300..1400).await?;
        members[2].signal("CONT");
        let r = loop {
            let r = next(&mut stream).await?;
            if r.canceled() {
                break r;
            }
        };
        assert_eq!(r.compact_revision(), compact_at);
        let log = members[2].log();
        assert!(log.get(from..).is_some_and(|l| l.contains("applied snapshot at index")), "{log}");
        Ok(())
    })
    .await?
}

/// A client that stops reading its watch stream holds up only that stream: the member takes
/// every write meanwhile, and once the client reads again it gets every event, in order, none
/// lost and the watch not canceled (the stream waited on its bounded buffer instead of
/// buffering the events).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_that_stops_reading_holds_up_only_its_stream_and_loses_nothing() -> Result {
    timeout(BOUND, async {
        let root = tempfile::tempdir()?;
        let mut members = support::cluster(root.path(), 1);
        members[0].start();
        let mut client = connect(&members[0]).await?;
        let mut stream = client.watch_client().watch("/k/", Some(WatchOptions::new().with_prefix())).await?;
        assert!(next(&mut stream).await?.created());
        // Far more than the buffers hold (the stream's 16 responses, HTTP/2's windows): 4 MB.
        let value = "v".repeat(4096);
        for i in 0..1000 {
            client.put(format!("/k/{i:05}"), value.clone(), None).await?;
        }
        let mut keys = Vec::new();
        while keys.len() < 1000 {
            let r = next(&mut stream).await?;
            assert!(!r.canceled(), "{:?}", r.cancel_reason());
            keys.extend(seen(&r).into_iter().map(|(_, key, value_read, _, _)| {
                assert_eq!(value_read.len(), 4096);
                key
            }));
        }
        assert_eq!(keys, (0..1000).map(|i| format!("/k/{i:05}")).collect::<Vec<_>>());
        Ok(())
    })
    .await?
}
