//! What a watcher asks a running node (etcd's Watch): when the store's revision moves, and the
//! changes made in a range of revisions, read from the MVCC history in the `key` bucket.
//!
//! etcd pushes each write's events to the watchers in memory as it applies it, and reads the
//! history only for watchers that are behind. Here every watcher pulls: the loop publishes the
//! store's revision after each ready (a `tokio::sync::watch`, which holds only the latest value,
//! so a slow watcher costs the loop nothing), and a watcher reads the changes since the last
//! revision it saw, in bounded batches, on the loop. A snapshot applied to the member moves the
//! revision too: its watchers read on from the restored history, or are told it was compacted.

use std::ops::ControlFlow;

use snapply_core::backend::Backend as _;
use snapply_core::store::{Revision, StoreError, in_range};
use tokio::sync::watch;

use crate::error::RaftError;
use crate::node::Client;
use crate::query::{Header, KeyValue, View, header};

/// Most revisions with events one batch holds (etcd's `watchBatchMaxRevs`).
pub const MAX_BATCH_REVISIONS: usize = 1000;
/// Most events one batch holds before it stops, at the end of a revision (a revision's events
/// are never split: one batch may exceed this by one revision's events).
pub const MAX_BATCH_EVENTS: usize = 1000;
/// Most changes of the history one batch reads, matching or not, before it stops at the end of
/// a revision: a watcher far behind on a rarely written key does not read the whole history in
/// one turn of the loop.
const MAX_BATCH_SCANNED: usize = 10_000;

/// etcd's `mvccpb.Event.EventType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A put.
    Put,
    /// A deletion: the event's key-value carries only the key and the revision that deleted it.
    Delete,
}

/// etcd's `mvccpb.Event`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// Put or delete.
    pub kind: EventKind,
    /// The key-value the change wrote (for a deletion: the key and its `mod_revision`).
    pub kv: KeyValue,
    /// The key-value just before the change, if asked for and the history still holds it (never
    /// for a put that created the key, as etcd).
    pub prev_kv: Option<KeyValue>,
}

/// The changes a watcher reads: `[key, range_end)` (etcd's conventions for the end) after
/// revision `after`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EventsRequest {
    /// The key or start of the range.
    pub key: Vec<u8>,
    /// The end of the range: empty for just `key`, `[0]` for every key from `key` on.
    pub range_end: Vec<u8>,
    /// Only changes at main revisions above this one.
    pub after: i64,
    /// Give each event the key-value before it.
    pub prev_kv: bool,
}

/// A batch of changes, in revision order (and within a revision, in the order its changes were
/// made).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Events {
    /// The header when the batch was read (its revision: the store's then).
    pub header: Header,
    /// The changes in the range at revisions `(after, through]`: all of them.
    pub events: Vec<Event>,
    /// Every change up to this revision has been read: the store's revision when the batch
    /// reached it, else the last revision of the batch (more are to be read); `after` when there
    /// was nothing after it.
    pub through: i64,
}

/// Publishes `revision` to the watchers, waking them only when it moved (or a restore made it
/// another one).
pub(crate) fn publish(tx: &watch::Sender<i64>, revision: i64) {
    tx.send_if_modified(|seen| {
        let moved = *seen != revision;
        *seen = revision;
        moved
    });
}

/// Reads the changes `request` asks for, as one bounded batch: stops at the end of a revision
/// once the batch holds [`MAX_BATCH_EVENTS`] events or [`MAX_BATCH_REVISIONS`] revisions with
/// events, or has read [`MAX_BATCH_SCANNED`] changes.
fn read_events(view: &View<'_>, request: &EventsRequest) -> Result<Events, RaftError> {
    let kv = &view.node.stores().kv;
    let current = kv.current_revision();
    let header = header(view);
    if request.after >= current {
        return Ok(Events { header, events: Vec::new(), through: request.after });
    }
    let txn = view.node.backend().read()?;
    let mut events = Vec::new();
    let (mut scanned, mut revisions, mut last) = (0usize, 0usize, request.after);
    let mut through = current;
    kv.history(&txn, request.after.saturating_add(1), &mut |rev, tombstone, record| {
        if rev.main > current {
            return ControlFlow::Break(());
        }
        if rev.main != last {
            if events.last().is_some_and(|e: &Event| e.kv.mod_revision == last) {
                revisions += 1;
            }
            // Every change up to `last` has been read: a batch may stop here.
            if scanned >= MAX_BATCH_SCANNED || revisions >= MAX_BATCH_REVISIONS || events.len() >= MAX_BATCH_EVENTS {
                through = last;
                return ControlFlow::Break(());
            }
            last = rev.main;
        }
        scanned += 1;
        if in_range(record.key, &request.key, &request.range_end) {
            let (kind, kv) = if tombstone {
                let kv = KeyValue { key: record.key.to_vec(), mod_revision: rev.main, ..KeyValue::default() };
                (EventKind::Delete, kv)
            } else {
                (EventKind::Put, KeyValue::of(record))
            };
            events.push(Event { kind, kv, prev_kv: None });
        }
        ControlFlow::Continue(())
    })?;
    if request.prev_kv {
        for e in &mut events {
            // etcd's `sendLoop`: the key at the revision before the event, unless the event
            // created it; nothing when that revision is compacted.
            if e.kind == EventKind::Put && e.kv.create_revision == e.kv.mod_revision {
                continue;
            }
            let bound = Revision { main: e.kv.mod_revision, sub: 0 };
            let mut prev = None;
            match kv.range_before(&txn, &e.kv.key, b"", bound, &mut |kv| prev = Some(KeyValue::of(kv))) {
                Ok(()) | Err(StoreError::Compacted { .. }) => e.prev_kv = prev,
                Err(err) => return Err(err.into()),
            }
        }
    }
    Ok(Events { header, events, through })
}

impl Client {
    /// The store's revision, as this member's loop publishes it after each batch of entries or
    /// snapshot it applies: `changed()` wakes when it moved.
    pub fn revisions(&self) -> watch::Receiver<i64> {
        self.revision.clone()
    }

    /// The changes `request` asks for, read on the loop from this member's MVCC history, as one
    /// bounded batch ([`MAX_BATCH_EVENTS`]); read again from [`Events::through`] for more.
    ///
    /// # Errors
    /// [`RaftError::Store`] with [`StoreError::Compacted`] (carrying the compaction revision)
    /// when `request.after + 1` is below the compaction revision: the history no longer holds
    /// every change since; [`RaftError::Stopped`] or [`RaftError::Timeout`].
    pub async fn events(&self, request: EventsRequest) -> Result<Events, RaftError> {
        self.read_local(move |view| read_events(view, &request), "watch events").await?
    }
}
