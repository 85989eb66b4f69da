//! What a client API asks a running node: etcd's Range (with every option of its
//! `RangeRequest`), writes that return the key-values they replace (etcd's `prev_kv` and
//! `deleted`), leases, members and the node's status, each with the response header's fields.
//!
//! Reads run on the node's loop (a `Read` control) against the node's stores, so they see
//! exactly the entries applied so far; the previous key-values of a write are read on the loop
//! just before this node applies it, so they are exactly what the write replaced.

use snapply_core::{RequestBuf, TxnNodeBuf, TxnOpBuf};
use std::time::Duration;

use snapply_core::backend::Backend as _;
use snapply_core::store::{AlarmType, KeyValue as StoredKeyValue, Revision};
use tokio::sync::oneshot;

use crate::codec::Command;
use crate::error::RaftError;
use crate::node::{Client, Control, HostNode};
use crate::snapshot::ImageStream;

/// How long a client API call waits for the node.
const WAIT: Duration = Duration::from_secs(20);

/// What a read sees: the node and its raft state.
pub(crate) struct View<'a> {
    pub(crate) node: &'a HostNode,
    pub(crate) id: u64,
    pub(crate) leader: u64,
    pub(crate) term: u64,
    pub(crate) raft_index: u64,
}

/// A read run on the node's loop.
pub(crate) type Reader = Box<dyn FnOnce(&View<'_>) + Send>;

/// A read run on the node's loop just before it applies an entry, returning the read to run
/// just after (in the same turn of the loop: nothing else is applied in between).
pub(crate) type AroundApply = Box<dyn FnOnce(&View<'_>) -> Reader + Send>;

/// The fields of etcd's `ResponseHeader` a node knows (the cluster id is the API's).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    /// The member that answered.
    pub member_id: u64,
    /// The key-value store's revision when the request was served.
    pub revision: i64,
    /// The raft term when the request was served.
    pub raft_term: u64,
}

/// A key-value as etcd's `mvccpb.KeyValue`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyValue {
    /// The key.
    pub key: Vec<u8>,
    /// Revision of the key's creation in its current generation.
    pub create_revision: i64,
    /// Revision of the last change.
    pub mod_revision: i64,
    /// Number of changes in the current generation.
    pub version: i64,
    /// The value.
    pub value: Vec<u8>,
    /// The lease, 0 for none.
    pub lease: i64,
}

impl KeyValue {
    pub(crate) fn of(kv: &StoredKeyValue<'_>) -> Self {
        KeyValue {
            key: kv.key.to_vec(),
            create_revision: kv.create_revision,
            mod_revision: kv.mod_revision,
            version: kv.version,
            value: kv.value.to_vec(),
            lease: kv.lease,
        }
    }
}

/// etcd's `RangeRequest.SortOrder`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SortOrder {
    /// Key order, as stored.
    #[default]
    None,
    /// Lowest target first.
    Ascend,
    /// Highest target first.
    Descend,
}

/// etcd's `RangeRequest.SortTarget`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SortTarget {
    /// The key.
    #[default]
    Key,
    /// The version.
    Version,
    /// The create revision.
    Create,
    /// The mod revision.
    Mod,
    /// The value.
    Value,
}

/// etcd's `RangeRequest`, less `serializable` (how a read is served is the caller's choice).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeRequest {
    /// The key or start of the range.
    pub key: Vec<u8>,
    /// The end of the range: empty for just `key`, `[0]` for every key from `key` on.
    pub range_end: Vec<u8>,
    /// At most this many key-values (0: no limit).
    pub limit: i64,
    /// The revision to read at (0 or less: the current one).
    pub revision: i64,
    /// The order.
    pub sort_order: SortOrder,
    /// What to sort by.
    pub sort_target: SortTarget,
    /// Return keys without values.
    pub keys_only: bool,
    /// Return only the count.
    pub count_only: bool,
    /// Filters on the mod and create revisions (0: none).
    pub min_mod_revision: i64,
    /// See `min_mod_revision`.
    pub max_mod_revision: i64,
    /// See `min_mod_revision`.
    pub min_create_revision: i64,
    /// See `min_mod_revision`.
    pub max_create_revision: i64,
}

/// etcd's `RangeResponse`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeResponse {
    /// The header.
    pub header: Header,
    /// The key-values.
    pub kvs: Vec<KeyValue>,
    /// Whether the limit left key-values out.
    pub more: bool,
    /// Keys in the range at the revision, before filters and limit.
    pub count: i64,
}

/// The response to one op of a transaction (etcd's `ResponseOp`): what it read or replaced,
/// as the transaction's earlier ops had left the store. Each carries the revision etcd puts in
/// its header: the transaction's revision once it has changed something, the store's before.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxnOpResponse {
    /// A range's result (its header's revision only is set).
    Range(RangeResponse),
    /// A put, with the key-value it replaced.
    Put {
        /// The revision in its header: the transaction's.
        revision: i64,
        /// The key-value the put replaced, if any.
        prev_kv: Option<KeyValue>,
    },
    /// A delete, with the key-values it deleted.
    DeleteRange {
        /// The revision in its header.
        revision: i64,
        /// The key-values deleted.
        prev_kvs: Vec<KeyValue>,
    },
    /// A nested transaction's response (etcd gives it no header).
    Txn(TxnResponse),
}

/// etcd's `TxnResponse`: whether the compares held, and a response for each op of the branch
/// that ran.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TxnResponse {
    /// The header after the transaction.
    pub header: Header,
    /// Whether every compare held (the success branch ran).
    pub succeeded: bool,
    /// One response per op of the branch that ran.
    pub responses: Vec<TxnOpResponse>,
}

/// A lease, as etcd's `LeaseTimeToLiveResponse` describes it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaseInfo {
    /// The id.
    pub id: i64,
    /// The TTL it was granted, in seconds.
    pub granted_ttl: i64,
    /// Its remaining TTL in seconds, as the leader's lessor counts it (the leader alone expires
    /// leases; truncated, negative once past while its revoke is being applied).
    pub ttl: i64,
    /// Keys attached to it.
    pub keys: Vec<Vec<u8>>,
}

/// A member, as etcd's `Member`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Member {
    /// The id.
    pub id: u64,
    /// The name.
    pub name: String,
    /// Peer URLs.
    pub peer_urls: Vec<String>,
    /// Client URLs.
    pub client_urls: Vec<String>,
    /// Whether it is a learner.
    pub is_learner: bool,
}

/// A node's status, as etcd's `StatusResponse`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeStatus {
    /// The header.
    pub header: Header,
    /// The leader (0: none known).
    pub leader: u64,
    /// The raft log's last index.
    pub raft_index: u64,
    /// The applied index.
    pub raft_applied_index: u64,
    /// Whether this member is a learner.
    pub is_learner: bool,
}

pub(crate) fn header(view: &View<'_>) -> Header {
    Header { member_id: view.id, revision: view.node.stores().kv.current_revision(), raft_term: view.term }
}

/// Every key-value in `[key, range_end)` at `revision` (0: current), in key order.
fn range_at(view: &View<'_>, key: &[u8], range_end: &[u8], revision: i64) -> Result<Vec<KeyValue>, RaftError> {
    let txn = view.node.backend().read()?;
    let mut out = Vec::new();
    view.node.stores().kv.range(&txn, key, range_end, revision, &mut |kv| out.push(KeyValue::of(kv)))?;
    Ok(out)
}

/// Every key-value in `[key, range_end)` as of just before revision `bound`, in key order.
fn range_before(view: &View<'_>, key: &[u8], range_end: &[u8], bound: Revision) -> Result<Vec<KeyValue>, RaftError> {
    let txn = view.node.backend().read()?;
    let mut out = Vec::new();
    view.node.stores().kv.range_before(&txn, key, range_end, bound, &mut |kv| out.push(KeyValue::of(kv)))?;
    Ok(out)
}

/// etcd's `applierV3backend.Range`: read, filter on revisions, sort, then limit.
fn range(view: &View<'_>, r: &RangeRequest) -> Result<RangeResponse, RaftError> {
    if r.count_only {
        // Counted from the key index: no record is read (a count of a million keys would
        // otherwise decode and copy every value).
        let count = view.node.stores().kv.count(&r.key, &r.range_end, r.revision)?;
        let count = i64::try_from(count).unwrap_or(i64::MAX);
        return Ok(RangeResponse { header: header(view), kvs: Vec::new(), more: false, count });
    }
    let kvs = range_at(view, &r.key, &r.range_end, r.revision)?;
    // The header carries the store's current revision, whatever revision was read (etcd's).
    Ok(shape_range(r, kvs, header(view)))
}

/// A range's read key-values `kvs`, filtered, sorted and limited as `r` asks.
fn shape_range(r: &RangeRequest, mut kvs: Vec<KeyValue>, header: Header) -> RangeResponse {
    let count = i64::try_from(kvs.len()).unwrap_or(i64::MAX);
    if r.count_only {
        kvs.clear();
    }
    kvs.retain(|kv| {
        (r.max_mod_revision == 0 || kv.mod_revision <= r.max_mod_revision)
            && (r.min_mod_revision == 0 || kv.mod_revision >= r.min_mod_revision)
            && (r.max_create_revision == 0 || kv.create_revision <= r.max_create_revision)
            && (r.min_create_revision == 0 || kv.create_revision >= r.min_create_revision)
    });
    // etcd sorts ascending by default when the target is not the key (the store returns key
    // order already).
    let order = match (r.sort_order, r.sort_target) {
        (SortOrder::None, SortTarget::Key) => SortOrder::None,
        (SortOrder::None, _) => SortOrder::Ascend,
        (order, _) => order,
    };
    if order != SortOrder::None {
        let target = r.sort_target;
        let cmp = move |a: &KeyValue, b: &KeyValue| match target {
            SortTarget::Key => a.key.cmp(&b.key),
            SortTarget::Version => a.version.cmp(&b.version),
            SortTarget::Create => a.create_revision.cmp(&b.create_revision),
            SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
            SortTarget::Value => a.value.cmp(&b.value),
        };
        if order == SortOrder::Ascend {
            kvs.sort_by(cmp);
        } else {
            kvs.sort_by(|a, b| cmp(b, a));
        }
    }
    let mut more = false;
    if let Ok(limit) = usize::try_from(r.limit)
        && limit > 0
        && kvs.len() > limit
    {
        kvs.truncate(limit);
        more = true;
    }
    if r.keys_only {
        for kv in &mut kvs {
            kv.value.clear();
        }
    }
    RangeResponse { header, kvs, more, count }
}

/// Where a transaction's ops read, as etcd's `storeTxnWrite` does: the store before the
/// transaction (at `before`) and the changes its earlier ops made, numbered as the core numbers
/// them (sub revisions of main revision `before + 1`).
struct TxnCursor {
    /// The store's revision before the transaction.
    before: i64,
    /// Changes made by the ops so far.
    changes: i64,
}

impl TxnCursor {
    /// What the next op reads: everything below this revision.
    fn bound(&self) -> Revision {
        Revision { main: self.before.saturating_add(1), sub: self.changes }
    }

    /// etcd's `storeTxnWrite.Rev`: the transaction's revision once it has changed something.
    fn revision(&self) -> i64 {
        if self.changes > 0 { self.before.saturating_add(1) } else { self.before }
    }
}

/// The responses of a transaction table's node `index` and, where its ops name them, of its
/// nested ones, taking each node's outcome from `path` in the order the apply takes them.
/// `ranges` holds, per node, the range requests of its success and failure ops, in order. Run
/// just after the transaction is applied: each op reads the store as the ops before it left it.
fn txn_responses(
    view: &View<'_>,
    nodes: &[TxnNodeBuf],
    ranges: &[[Vec<RangeRequest>; 2]],
    index: usize,
    path: &mut dyn Iterator<Item = bool>,
    cursor: &mut TxnCursor,
) -> Result<TxnResponse, RaftError> {
    let mismatch = RaftError::Decode { what: "a transaction whose ranges do not match its ops" };
    let (Some(node), Some([success_ranges, failure_ranges])) = (nodes.get(index), ranges.get(index)) else {
        return Err(mismatch);
    };
    let succeeded = path.next().unwrap_or(false);
    let (ops, mut node_ranges) =
        if succeeded { (&node.success, success_ranges.iter()) } else { (&node.failure, failure_ranges.iter()) };
    let count = |kvs: &[KeyValue]| i64::try_from(kvs.len()).unwrap_or(i64::MAX);
    let mut responses = Vec::with_capacity(ops.len());
    for op in ops {
        responses.push(match op {
            TxnOpBuf::Range { .. } => {
                let r =
                    node_ranges.next().ok_or(RaftError::Decode { what: "a transaction range without its request" })?;
                let kvs = if r.revision > 0 {
                    range_at(view, &r.key, &r.range_end, r.revision)?
                } else {
                    range_before(view, &r.key, &r.range_end, cursor.bound())?
                };
                let header = Header { revision: cursor.revision(), ..Header::default() };
                TxnOpResponse::Range(shape_range(r, kvs, header))
            }
            TxnOpBuf::Put { key, .. } => {
                let prev_kv = range_before(view, key, b"", cursor.bound())?.into_iter().next();
                cursor.changes = cursor.changes.saturating_add(1);
                TxnOpResponse::Put { revision: cursor.revision(), prev_kv }
            }
            TxnOpBuf::DeleteRange { key, range_end } => {
                let prev_kvs = range_before(view, key, range_end, cursor.bound())?;
                cursor.changes = cursor.changes.saturating_add(count(&prev_kvs));
                TxnOpResponse::DeleteRange { revision: cursor.revision(), prev_kvs }
            }
            TxnOpBuf::Txn(child) => {
                let child = usize::try_from(*child).unwrap_or(usize::MAX);
                let mut nested = txn_responses(view, nodes, ranges, child, path, cursor)?;
                nested.header = Header::default();
                TxnOpResponse::Txn(nested)
            }
        });
    }
    Ok(TxnResponse { header: header(view), succeeded, responses })
}

impl Client {
    /// Runs `f` on the node's loop and returns what it returns.
    pub(crate) async fn read_local<T: Send + 'static>(
        &self,
        f: impl FnOnce(&View<'_>) -> T + Send + 'static,
        what: &'static str,
    ) -> Result<T, RaftError> {
        let (tx, rx) = oneshot::channel();
        self.send(Control::Read(Box::new(move |view| {
            let _ = tx.send(f(view));
        })))?;
        match tokio::time::timeout(WAIT, rx).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(_)) => Err(RaftError::Stopped),
            Err(_) => Err(RaftError::Timeout { what }),
        }
    }

    /// Proposes `command`; `before` reads this node's state just before it applies the entry,
    /// `after` just after it, with what `before` read (in the same turn of the loop, so no other
    /// entry is applied in between). Returns the revision after the write and what `after` made.
    pub(crate) async fn propose_around<A: Send + 'static, T: Send + 'static>(
        &self,
        command: Command,
        before: impl FnOnce(&View<'_>) -> A + Send + 'static,
        after: impl FnOnce(&View<'_>, A) -> T + Send + 'static,
    ) -> Result<(i64, T), RaftError> {
        let (read_tx, read_rx) = oneshot::channel();
        let (tx, rx) = oneshot::channel();
        let around: AroundApply = Box::new(move |view| {
            let read = before(view);
            Box::new(move |view| {
                let _ = read_tx.send(after(view, read));
            })
        });
        self.send(Control::ProposeRead(self.stamped(command), around, tx))?;
        let revision = match tokio::time::timeout(WAIT, rx).await {
            Ok(Ok(v)) => v?,
            Ok(Err(_)) => return Err(RaftError::Stopped),
            Err(_) => return Err(RaftError::Timeout { what: "a proposal to be applied" }),
        };
        // Applied: both reads ran.
        let read = read_rx.await.map_err(|_| RaftError::Stopped)?;
        Ok((revision, read))
    }

    /// Proposes `command`; `before` reads this node's state just before it applies the entry.
    /// Returns the revision after the write and what `before` read.
    async fn propose_reading<T: Send + 'static>(
        &self,
        command: Command,
        before: impl FnOnce(&View<'_>) -> T + Send + 'static,
    ) -> Result<(i64, T), RaftError> {
        self.propose_around(command, before, |_, read| read).await
    }

    /// etcd's Range, served from this node's applied state.
    ///
    /// # Errors
    /// [`RaftError::Store`] with [`snapply_core::store::StoreError::Compacted`] or
    /// [`snapply_core::store::StoreError::FutureRevision`] for a revision out of the history,
    /// [`RaftError::Stopped`] or [`RaftError::Timeout`].
    pub async fn range_request(&self, request: RangeRequest) -> Result<RangeResponse, RaftError> {
        self.read_local(move |view| range(view, &request), "a range").await?
    }

    /// Puts `value` under `key` attached to `lease`; returns the header after the put and the
    /// key-value it replaced, if any.
    ///
    /// # Errors
    /// As [`Client::propose`].
    pub async fn put_returning(
        &self,
        key: Vec<u8>,
        value: Vec<u8>,
        lease: i64,
    ) -> Result<(Header, Option<KeyValue>), RaftError> {
        let k = key.clone();
        let command = Command::Apply(RequestBuf::Put { key, value, lease });
        let (revision, (mut header, prev)) =
            self.propose_reading(command, move |view| (header(view), range_at(view, &k, b"", 0))).await?;
        header.revision = revision;
        Ok((header, prev?.into_iter().next()))
    }

    /// Deletes `[key, range_end)`; returns the header after the delete and the key-values it
    /// deleted.
    ///
    /// # Errors
    /// As [`Client::propose`].
    pub async fn delete_returning(
        &self,
        key: Vec<u8>,
        range_end: Vec<u8>,
    ) -> Result<(Header, Vec<KeyValue>), RaftError> {
        let (k, end) = (key.clone(), range_end.clone());
        let command = Command::Apply(RequestBuf::DeleteRange { key, range_end });
        let (revision, (mut header, prev)) =
            self.propose_reading(command, move |view| (header(view), range_at(view, &k, &end, 0))).await?;
        header.revision = revision;
        Ok((header, prev?))
    }

    /// etcd's Txn: proposes the transaction `nodes` (the top one first) and returns whether its
    /// compares held and each op's response, each op reading the store as the transaction's
    /// earlier ops left it (etcd's); `ranges` holds, per node, the full range requests of its
    /// success and failure range ops, in order.
    ///
    /// # Errors
    /// As [`Client::propose`]; [`RaftError::Store`] if the transaction was refused (a lease that
    /// does not exist, an alarm).
    pub async fn txn(
        &self,
        nodes: Vec<TxnNodeBuf>,
        ranges: Vec<[Vec<RangeRequest>; 2]>,
    ) -> Result<TxnResponse, RaftError> {
        let command = Command::Apply(RequestBuf::Txn(nodes.clone()));
        let plan = Command::Apply(RequestBuf::Txn(nodes.clone()));
        // Before: the compares' outcomes, on the store the transaction sees, and its revision.
        let before = move |view: &View<'_>| {
            let mut path = Vec::new();
            let walked = plan.with_request(|request| {
                let snapply_core::Request::Txn(t) = request else { return Ok(()) };
                let txn = view.node.backend().read()?;
                view.node.stores().kv.txn_path(&txn, t, 0, &mut |_, holds| path.push(holds)).map_err(RaftError::from)
            });
            walked.map(|()| (path, view.node.stores().kv.current_revision()))
        };
        // After, in the same turn of the loop: the responses, from the history it just wrote.
        let after = move |view: &View<'_>, before: Result<(Vec<bool>, i64), RaftError>| {
            let (path, revision) = before?;
            let mut cursor = TxnCursor { before: revision, changes: 0 };
            txn_responses(view, &nodes, &ranges, 0, &mut path.into_iter(), &mut cursor)
        };
        let (revision, response) = self.propose_around(command, before, after).await?;
        let mut response = response?;
        response.header.revision = revision;
        Ok(response)
    }

    /// Proposes `command` and returns the header after it is applied here.
    ///
    /// # Errors
    /// As [`Client::propose`].
    pub async fn propose_with_header(&self, command: Command) -> Result<Header, RaftError> {
        let (revision, mut header) = self.propose_reading(command, header).await?;
        header.revision = revision;
        Ok(header)
    }

    /// The response header as of now.
    ///
    /// # Errors
    /// [`RaftError::Stopped`] or [`RaftError::Timeout`].
    pub async fn header(&self) -> Result<Header, RaftError> {
        self.read_local(header, "a response header").await
    }

    /// Lease `id` and its keys as the leader sees them (etcd's `LeaseTimeToLive`: a follower
    /// asks the leader), or `None` if it is not granted; the header is this member's, read
    /// first.
    ///
    /// # Errors
    /// [`RaftError::Stopped`] or [`RaftError::Timeout`] (no leader answered in time).
    pub async fn lease(&self, id: i64) -> Result<(Header, Option<LeaseInfo>), RaftError> {
        let header = self.header().await?;
        let info = self.lease_on_leader(id).await?.map(|l| LeaseInfo {
            id,
            granted_ttl: l.granted_ttl,
            ttl: l.ttl,
            keys: l.keys,
        });
        Ok((header, info))
    }

    /// Every granted lease id, in order.
    ///
    /// # Errors
    /// [`RaftError::Stopped`] or [`RaftError::Timeout`].
    pub async fn leases(&self) -> Result<(Header, Vec<i64>), RaftError> {
        self.read_local(
            |view| (header(view), view.node.stores().lessor.leases().iter().map(|l| l.id).collect()),
            "the leases",
        )
        .await
    }

    /// The members in the node's membership store.
    ///
    /// # Errors
    /// [`RaftError::Stopped`] or [`RaftError::Timeout`].
    pub async fn members(&self) -> Result<(Header, Vec<Member>), RaftError> {
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        self.read_local(
            move |view| {
                let members = view
                    .node
                    .stores()
                    .membership
                    .members()
                    .iter()
                    .map(|m| Member {
                        id: m.id,
                        name: text(&m.name),
                        peer_urls: m.peer_urls.iter().map(|u| text(u)).collect(),
                        client_urls: m.client_urls.iter().map(|u| text(u)).collect(),
                        is_learner: m.is_learner,
                    })
                    .collect();
                (header(view), members)
            },
            "the members",
        )
        .await
    }

    /// The alarms raised, as (member, `NOSPACE` if true else `CORRUPT`), in the store's order.
    ///
    /// # Errors
    /// [`RaftError::Stopped`] or [`RaftError::Timeout`].
    pub async fn alarms(&self) -> Result<(Header, Vec<(u64, bool)>), RaftError> {
        self.read_local(
            |view| {
                let alarms = view.node.stores().alarms.alarms().iter();
                let alarms = alarms.map(|a| (a.member, a.kind == AlarmType::Nospace)).collect();
                (header(view), alarms)
            },
            "the alarms",
        )
        .await
    }

    /// Raises (`activate`) or clears an alarm of `member` (etcd's `Alarm` with `ACTIVATE` or
    /// `DEACTIVATE`); returns the header after it and whether the alarm was raised just before
    /// this member applied the change.
    ///
    /// # Errors
    /// As [`Client::propose`].
    pub async fn change_alarm(&self, member: u64, nospace: bool, activate: bool) -> Result<(Header, bool), RaftError> {
        let kind = if nospace { AlarmType::Nospace } else { AlarmType::Corrupt };
        let alarm = snapply_core::store::Alarm { member, kind };
        let request = if activate { RequestBuf::AlarmActivate(alarm) } else { RequestBuf::AlarmDeactivate(alarm) };
        let command = Command::Apply(request);
        let (revision, (mut header, raised)) = self
            .propose_reading(command, move |view| {
                let raised = view.node.stores().alarms.alarms().iter().any(|a| a.member == member && a.kind == kind);
                (header(view), raised)
            })
            .await?;
        header.revision = revision;
        Ok((header, raised))
    }

    /// etcd's health check (`/health`, etcd 3.4's `checkHealth`): no alarm is raised, the
    /// member knows a leader, and a linearizable read gets its read index within a second (etcd
    /// asks a quorum read). Counted in `etcd_server_health_success` or `_failures`.
    ///
    /// # Errors
    /// Why the member is not healthy.
    pub async fn health(&self) -> Result<(), String> {
        let checked = self
            .read_local(
                |view| {
                    let alarms = view.node.stores().alarms.alarms().len();
                    if alarms > 0 {
                        Err(format!("{alarms} alarm(s) raised"))
                    } else if view.leader == 0 {
                        Err("no leader".to_string())
                    } else {
                        Ok(())
                    }
                },
                "a health check",
            )
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r);
        let checked = match checked {
            Ok(()) => match tokio::time::timeout(Duration::from_secs(1), self.read_index()).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("no read index within 1s".to_string()),
            },
            Err(e) => Err(e),
        };
        self.metrics().health_checked(checked.is_ok());
        checked
    }

    /// A snapshot image of this member's state at its applied index, encoded from a read
    /// transaction of its backend as it is read, in chunks of `chunk` bytes (etcd's
    /// `Maintenance.Snapshot`); with the response header as of that index. Entries applied
    /// meanwhile are not in it; the image is never whole in memory.
    ///
    /// # Errors
    /// [`RaftError::Store`] while a restore is unfinished, [`RaftError::Backend`] if the read
    /// transaction cannot be begun, [`RaftError::Stopped`] or [`RaftError::Timeout`].
    pub async fn snapshot(&self, chunk: usize) -> Result<(Header, ImageStream), RaftError> {
        self.read_local(
            move |view| {
                let metadata = view.node.snapshot_metadata()?;
                let mut v2 = Vec::new();
                view.node.v2_snapshot_data(&mut v2)?;
                let stream = crate::snapshot::stream(view.node.backend().view(), metadata, v2, chunk)?;
                Ok((header(view), stream))
            },
            "a snapshot",
        )
        .await?
    }

    /// etcd's `HashKV`: the CRC-32C of the key space at revision `rev` (0: the current one),
    /// as etcd computes it (see `hash.rs`), read from a transaction begun on the loop and hashed
    /// on a blocking thread. Returns the header (its revision the current one), the hash, the
    /// compaction revision (-1: none) and the revision hashed.
    ///
    /// # Errors
    /// [`RaftError::Store`] with [`snapply_core::store::StoreError::Compacted`] or
    /// [`snapply_core::store::StoreError::FutureRevision`] for a revision out of the history;
    /// [`RaftError::Backend`], [`RaftError::Stopped`] or [`RaftError::Timeout`].
    pub async fn hash_kv(&self, rev: i64) -> Result<(Header, u32, i64, i64), RaftError> {
        let (header, view, current, compacted) = self
            .read_local(
                |view| {
                    let kv = &view.node.stores().kv;
                    (header(view), view.node.backend().view(), kv.current_revision(), kv.compact_revision())
                },
                "a hash of the key space",
            )
            .await?;
        let hashed = tokio::task::spawn_blocking(move || {
            let txn = view.read()?;
            crate::hash::hash_kv(&txn, rev, current, compacted).map_err(RaftError::from)
        })
        .await
        .map_err(|_| RaftError::Stopped)?;
        let (hash, at) = hashed?;
        Ok((header, hash, compacted, at))
    }

    /// etcd's `MemberUpdate`: proposes member `id`'s new peer URLs as a normal entry (raft-rs has
    /// no conf change for it); once applied, every member's transport dials them. Returns the
    /// header after it is applied here.
    ///
    /// # Errors
    /// [`RaftError::Store`] with `NotFound("member")` or `AlreadyExists("peer url")`, and as
    /// [`Client::propose`].
    pub async fn update_member(&self, id: u64, peer_urls: &[String]) -> Result<Header, RaftError> {
        let peer_urls = peer_urls.iter().map(|u| u.as_bytes().to_vec()).collect();
        self.propose_with_header(Command::Apply(RequestBuf::MemberUpdate { id, peer_urls })).await
    }

    /// Publishes this member's name and client URLs through raft (etcd's `publish`, a
    /// `ClusterMemberAttrSetRequest`), so every member lists them.
    ///
    /// # Errors
    /// As [`Client::propose`].
    pub async fn publish_attributes(&self, name: &str, client_urls: &[String]) -> Result<(), RaftError> {
        let client_urls = client_urls.iter().map(|u| u.as_bytes().to_vec()).collect();
        self.propose(Command::Apply(RequestBuf::MemberAttrSet {
            id: self.id(),
            name: name.as_bytes().to_vec(),
            client_urls,
        }))
        .await?;
        Ok(())
    }

    /// The node's status.
    ///
    /// # Errors
    /// [`RaftError::Stopped`] or [`RaftError::Timeout`].
    pub async fn node_status(&self) -> Result<NodeStatus, RaftError> {
        self.read_local(
            |view| {
                let progress = view.node.progress();
                let is_learner = view.node.stores().membership.member(view.id).is_some_and(|m| m.is_learner);
                NodeStatus {
                    header: header(view),
                    leader: view.leader,
                    raft_index: view.raft_index,
                    raft_applied_index: progress.applied_index,
                    is_learner,
                }
            },
            "the node's status",
        )
        .await
    }
}
