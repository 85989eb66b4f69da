//! etcd's Watch service: the bidirectional stream of watch create, cancel and progress
//! requests, and of the events from the member's MVCC history (etcd's `serverWatchStream`).
//!
//! Each stream is one task. Its watchers pull: when the member's loop publishes a new revision
//! (`Client::revisions`), every watcher behind it reads the changes since the last revision it
//! delivered (`Client::events`, in bounded batches) and sends them. A watcher whose start
//! revision is in the past is *unsynced* until it has caught up: its history comes in batches,
//! each one response headed by the store's revision, as etcd's `syncWatchers` sends them; a
//! caught-up watcher sends one response per revision, headed by that revision, as etcd's
//! `notify` does. A snapshot applied to the member moves the revision too: its watchers read on
//! from the restored history, or get a compacted response if it no longer holds their next
//! revision (etcd's `watchableStore.Restore`).
//!
//! Responses go through a bounded buffer. A client that stops reading stalls only its own
//! stream: the stream stops reading the history (and its requests) until the client reads
//! again, so nothing grows; meanwhile a compaction can pass its watchers, which then get
//! compacted responses (etcd keeps such a slow watcher's events in memory as a *victim* and
//! cancels it with a compacted response the same way).

use std::collections::BTreeMap;
use std::time::Duration;

use super::pb::{PbEvent, PbWatchRequest, PbWatchRequestUnion, PbWatchResponse, PbWatchService};
use prost::Message as _;
use snapply_core::store::StoreError;
use snapply_raft::{AuthError, EventKind, Events, EventsRequest, Header, Need, RaftError};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::kv::to_pb;
use super::{Member, error};

/// The Watch service of a member.
pub(super) struct WatchService(pub(super) Member);

/// Responses a stream holds for its client before its watchers wait.
const SEND_BUFFER: usize = 16;

/// How often a watcher created with `progress_notify` is told the revision it reached when it
/// had no event meanwhile (etcd's `progressReportInterval`).
const PROGRESS_INTERVAL: Duration = Duration::from_secs(600);

/// etcd's `clientv3.InvalidWatchID`: a response that is not about one watcher.
const NO_WATCH: i64 = -1;

/// etcd's `WatchCreateRequest.FilterType`.
const FILTER_NOPUT: i32 = 0;
const FILTER_NODELETE: i32 = 1;

/// One watcher of a stream.
struct Watcher {
    key: Vec<u8>,
    range_end: Vec<u8>,
    /// Every event up to this revision has been sent.
    seen: i64,
    /// Caught up with the store when it last read: its events go out one revision at a time.
    synced: bool,
    prev_kv: bool,
    no_put: bool,
    no_delete: bool,
    fragment: bool,
    /// `Some` for a watcher created with `progress_notify`: whether no event was sent to it
    /// since the last progress tick (etcd's `progress[id]`).
    progress: Option<bool>,
}

/// The watchers of one stream, and where it sends.
struct Stream {
    member: Member,
    watchers: BTreeMap<i64, Watcher>,
    /// etcd's `watchStream.nextID`: where the search for a free id starts.
    next_id: i64,
    tx: mpsc::Sender<Result<PbWatchResponse, Status>>,
    /// The auth token the stream was opened with (its `token` metadata), checked at each create.
    token: Option<String>,
}

/// Why a stream ends: its client went away, or an error to send it.
enum End {
    Gone,
    Failed(Status),
}

impl From<RaftError> for End {
    fn from(e: RaftError) -> Self {
        End::Failed(error::status(&e))
    }
}

#[tonic::async_trait]
impl PbWatchService for WatchService {
    type WatchStream = ReceiverStream<Result<PbWatchResponse, Status>>;

    async fn watch(&self, request: Request<Streaming<PbWatchRequest>>) -> Result<Response<Self::WatchStream>, Status> {
        let (tx, rx) = mpsc::channel(SEND_BUFFER);
        let token = super::token(&request);
        let stream = Stream { member: self.0.clone(), watchers: BTreeMap::new(), next_id: 0, tx, token };
        tokio::spawn(stream.run(request.into_inner()));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// etcd's `sendFragments`: `response` whole if it is below `max` bytes or has fewer than two
/// events, else split into responses of as many events as stay below `max` (at least one),
/// each but the last marked `fragment`.
fn fragments(mut response: PbWatchResponse, max: usize) -> Vec<PbWatchResponse> {
    if response.encoded_len() < max || response.events.len() < 2 {
        return vec![response];
    }
    let events = std::mem::take(&mut response.events);
    response.fragment = true;
    let mut out = Vec::new();
    let mut current = response.clone();
    for event in events {
        current.events.push(event);
        if current.events.len() > 1 && current.encoded_len() >= max {
            // One too many: it starts the next fragment.
            let back = current.events.pop();
            out.push(std::mem::replace(&mut current, response.clone()));
            current.events.extend(back);
        }
    }
    current.fragment = false;
    out.push(current);
    out
}

fn event_to_pb(e: snapply_raft::Event) -> PbEvent {
    PbEvent {
        r#type: match e.kind {
            EventKind::Put => 0,
            EventKind::Delete => 1,
        },
        kv: Some(to_pb(e.kv)),
        prev_kv: e.prev_kv.map(to_pb),
    }
}

impl Stream {
    async fn run(mut self, mut requests: Streaming<PbWatchRequest>) {
        let end = self.serve(&mut requests).await;
        if let Err(End::Failed(status)) = end {
            let _ = self.tx.send(Err(status)).await;
        }
    }

    async fn serve(&mut self, requests: &mut Streaming<PbWatchRequest>) -> Result<(), End> {
        let mut revisions = self.member.client.revisions();
        let start = tokio::time::Instant::now() + PROGRESS_INTERVAL;
        let mut progress = tokio::time::interval_at(start, PROGRESS_INTERVAL);
        let mut reading = true;
        loop {
            let published = *revisions.borrow_and_update();
            // One batch per watcher behind: a far-behind watcher does not hold up requests.
            let behind = self.catch_up(published).await?;
            tokio::select! {
                biased;
                () = self.tx.closed() => return Err(End::Gone),
                message = requests.message(), if reading => match message {
                    Ok(Some(request)) => self.request(request, &mut revisions).await?,
                    // The client closed its side: etcd goes on sending until it goes away.
                    Ok(None) => reading = false,
                    Err(_) => return Err(End::Gone),
                },
                () = std::future::ready(()), if behind => {}
                changed = revisions.changed() => {
                    if changed.is_err() {
                        return Err(End::Failed(error::status(&RaftError::Stopped)));
                    }
                }
                _ = progress.tick() => self.progress_tick().await?,
            }
        }
    }

    /// The header of a response at `revision`, with this member's id and term now.
    async fn header_at(&self, revision: Option<i64>) -> Result<Option<super::pb::PbResponseHeader>, End> {
        let mut h: Header = self.member.client.header().await?;
        if let Some(revision) = revision {
            h.revision = revision;
        }
        Ok(self.member.header(h))
    }

    async fn send(&self, response: PbWatchResponse) -> Result<(), End> {
        self.tx.send(Ok(response)).await.map_err(|_| End::Gone)
    }

    async fn request(
        &mut self,
        request: PbWatchRequest,
        revisions: &mut tokio::sync::watch::Receiver<i64>,
    ) -> Result<(), End> {
        match request.request_union {
            Some(PbWatchRequestUnion::CreateRequest(c)) => {
                // etcd's `isWatchPermitted`, on the key and range as the client sent them.
                let need = Need::Read { key: c.key.clone(), range_end: c.range_end.clone() };
                let denied = match self.member.client.authorize(self.token.clone(), vec![need]).await {
                    Ok(_) => None,
                    // Go's `Error()` of the gRPC status etcd names: code and message.
                    Err(RaftError::Auth(AuthError::InvalidToken)) => {
                        Some("rpc error: code = Unauthenticated desc = etcdserver: invalid auth token")
                    }
                    Err(RaftError::Auth(AuthError::UserEmpty)) => {
                        Some("rpc error: code = InvalidArgument desc = etcdserver: user name is empty")
                    }
                    Err(RaftError::Auth(_)) => {
                        Some("rpc error: code = PermissionDenied desc = etcdserver: permission denied")
                    }
                    Err(e) => return Err(e.into()),
                };
                let header = self.member.client.header().await?;
                let current = header.revision;
                let key = if c.key.is_empty() { vec![0] } else { c.key };
                // etcd's `watchStream.Watch`.
                let refused = if denied.is_some() {
                    denied
                } else if !c.range_end.is_empty() && c.range_end != [0] && key >= c.range_end {
                    Some("mvcc: watcher range is empty")
                } else if c.watch_id != 0 && self.watchers.contains_key(&c.watch_id) {
                    Some("mvcc: duplicate watch ID provided on the WatchStream")
                } else {
                    None
                };
                if let Some(reason) = refused {
                    return self
                        .send(PbWatchResponse {
                            header: self.member.header(header),
                            watch_id: NO_WATCH,
                            created: true,
                            canceled: true,
                            cancel_reason: reason.into(),
                            ..PbWatchResponse::default()
                        })
                        .await;
                }
                let id = if c.watch_id == 0 {
                    while self.watchers.contains_key(&self.next_id) {
                        self.next_id += 1;
                    }
                    self.next_id += 1;
                    self.next_id - 1
                } else {
                    c.watch_id
                };
                let start = if c.start_revision == 0 { current.saturating_add(1) } else { c.start_revision };
                let watcher = Watcher {
                    key,
                    range_end: c.range_end,
                    seen: start.saturating_sub(1),
                    synced: start > current,
                    prev_kv: c.prev_kv,
                    no_put: c.filters.contains(&FILTER_NOPUT),
                    no_delete: c.filters.contains(&FILTER_NODELETE),
                    fragment: c.fragment,
                    progress: c.progress_notify.then_some(true),
                };
                self.watchers.insert(id, watcher);
                let created = PbWatchResponse {
                    header: self.member.header(header),
                    watch_id: id,
                    created: true,
                    ..PbWatchResponse::default()
                };
                self.send(created).await
            }
            Some(PbWatchRequestUnion::CancelRequest(c)) => {
                // etcd answers only the cancel of a watcher it has.
                if self.watchers.remove(&c.watch_id).is_none() {
                    return Ok(());
                }
                let response = PbWatchResponse {
                    header: self.header_at(None).await?,
                    watch_id: c.watch_id,
                    canceled: true,
                    ..PbWatchResponse::default()
                };
                self.send(response).await
            }
            Some(PbWatchRequestUnion::ProgressRequest(_)) => {
                // Every event up to the revision it carries is sent first: the response says
                // each watcher has seen everything up to it.
                let header = self.member.client.header().await?;
                loop {
                    let published = (*revisions.borrow_and_update()).max(header.revision);
                    if !self.catch_up(published).await? {
                        break;
                    }
                }
                let response = PbWatchResponse {
                    header: self.member.header(header),
                    watch_id: NO_WATCH,
                    ..PbWatchResponse::default()
                };
                self.send(response).await
            }
            // etcd ignores a request it does not know.
            None => Ok(()),
        }
    }

    /// Reads and sends one batch for each watcher behind `published`; whether any still is.
    async fn catch_up(&mut self, published: i64) -> Result<bool, End> {
        let behind: Vec<i64> = self.watchers.iter().filter(|(_, w)| w.seen < published).map(|(id, _)| *id).collect();
        let mut still = false;
        for id in behind {
            let Some(w) = self.watchers.get(&id) else { continue };
            let request =
                EventsRequest { key: w.key.clone(), range_end: w.range_end.clone(), after: w.seen, prev_kv: w.prev_kv };
            match self.member.client.events(request).await {
                Ok(batch) => {
                    if self.deliver(id, batch).await? {
                        still = true;
                    }
                }
                Err(RaftError::Store(StoreError::Compacted { compacted, .. })) => {
                    // etcd's `chooseAll`: the watcher is told the compaction revision and
                    // canceled; the response's header has revision 0.
                    self.watchers.remove(&id);
                    let response = PbWatchResponse {
                        header: self.header_at(Some(0)).await?,
                        watch_id: id,
                        canceled: true,
                        compact_revision: compacted,
                        ..PbWatchResponse::default()
                    };
                    self.send(response).await?;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(still)
    }

    /// Sends watcher `id` the events of `batch`; whether it is still behind the store.
    async fn deliver(&mut self, id: i64, batch: Events) -> Result<bool, End> {
        let Some(w) = self.watchers.get_mut(&id) else { return Ok(false) };
        let (no_put, no_delete) = (w.no_put, w.no_delete);
        let events: Vec<snapply_raft::Event> = batch
            .events
            .into_iter()
            .filter(|e| match e.kind {
                EventKind::Put => !no_put,
                EventKind::Delete => !no_delete,
            })
            .collect();
        let reached = batch.through >= batch.header.revision;
        let per_revision = w.synced && reached;
        w.seen = w.seen.max(batch.through);
        w.synced = reached;
        if !events.is_empty()
            && let Some(p) = w.progress.as_mut()
        {
            *p = false;
        }
        let fragment = w.fragment;
        let mut responses = Vec::new();
        if per_revision {
            // etcd's `notify`: one response per write, headed by its revision.
            let mut events = events.into_iter().peekable();
            while let Some(first) = events.next() {
                let revision = first.kv.mod_revision;
                let mut group = vec![event_to_pb(first)];
                while let Some(e) = events.next_if(|e| e.kv.mod_revision == revision) {
                    group.push(event_to_pb(e));
                }
                responses.push((revision, group));
            }
        } else if !events.is_empty() {
            // etcd's `syncWatchers`: the batch in one response, headed by the store's revision.
            responses.push((batch.header.revision, events.into_iter().map(event_to_pb).collect()));
        }
        for (revision, events) in responses {
            let mut header = batch.header;
            header.revision = revision;
            let response = PbWatchResponse {
                header: self.member.header(header),
                watch_id: id,
                events,
                ..PbWatchResponse::default()
            };
            // etcd's `MaxRequestBytesWithOverhead`: `--max-request-bytes` plus the gRPC overhead.
            let max = self.member.limits.max_request_bytes.saturating_add(super::GRPC_OVERHEAD_BYTES);
            let parts = if fragment { fragments(response, max) } else { vec![response] };
            for part in parts {
                self.send(part).await?;
            }
        }
        Ok(!reached)
    }

    /// etcd's progress ticker: each watcher created with `progress_notify` that got no event
    /// since the last tick and is caught up is told the revision it has seen everything up to.
    async fn progress_tick(&mut self) -> Result<(), End> {
        let mut due = Vec::new();
        for (id, w) in &mut self.watchers {
            if let Some(quiet) = w.progress.as_mut() {
                if *quiet && w.synced {
                    due.push((*id, w.seen));
                }
                *quiet = true;
            }
        }
        for (id, revision) in due {
            let response = PbWatchResponse {
                header: self.header_at(Some(revision)).await?,
                watch_id: id,
                ..PbWatchResponse::default()
            };
            self.send(response).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::pb::PbKeyValue;

    use super::*;

    fn event(value_len: usize) -> PbEvent {
        PbEvent {
            r#type: 0,
            kv: Some(PbKeyValue { key: b"/k".to_vec(), value: vec![b'v'; value_len], ..PbKeyValue::default() }),
            prev_kv: None,
        }
    }

    #[test]
    fn a_response_over_the_limit_is_split_into_fragments_of_whole_events_as_etcd_splits_it() {
        let whole =
            PbWatchResponse { watch_id: 3, events: (0..10).map(|_| event(100)).collect(), ..Default::default() };
        assert_eq!(fragments(whole.clone(), 10_000), vec![whole.clone()], "below the limit: whole");
        let parts = fragments(whole.clone(), 350);
        assert!(parts.len() > 1);
        assert!(parts.iter().all(|p| !p.events.is_empty() && p.watch_id == 3));
        assert!(parts.iter().all(|p| p.encoded_len() < 350));
        assert!(parts.iter().take(parts.len() - 1).all(|p| p.fragment));
        assert!(!parts.last().unwrap().fragment, "the last part is not a fragment");
        let events: Vec<PbEvent> = parts.into_iter().flat_map(|p| p.events).collect();
        assert_eq!(events, whole.events, "every event once, in order");
        // One event over the limit goes whole.
        let big = PbWatchResponse { events: vec![event(1000)], ..Default::default() };
        assert_eq!(fragments(big.clone(), 100), vec![big]);
    }
}
