//! A snapply node under raft-rs: the data directory, the raft log, the transport and the ready
//! loop, on a tokio task.

mod leases;

use snapply_core::RequestBuf;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message as _;
use raft::prelude::{ConfChange, ConfChangeType, Entry, EntryType, Message, Snapshot};
use raft::{RawNode, SnapshotStatus};
use sha2::{Digest as _, Sha256};
use snapply_core::backend::{Backend, for_each_record};
use snapply_core::collections::Growable;
use snapply_core::ports::{Ports, Transport};
use snapply_core::store::{StoreError, V2Deprecation};
use snapply_core::{Config, Node, Request, pipeline};
use snapply_core::{Event, Observer, Phase};
use snapply_fs::{DataDir, FsSnapshotStore, PersistedSnapshot, RedbBackend, SnapName};
use tokio::sync::{mpsc, oneshot};

use crate::codec::{Command, MemberInfo};
use crate::error::RaftError;
use crate::log::RaftLog;
use crate::metrics::Metrics;
use crate::policy::SnapshotPolicy;
use crate::read::Reads;
use crate::snapshot::{Build, ImageFile, Inbound, purge_images, to_core_conf, to_core_metadata, to_raft_metadata};
use crate::transport::{MAX_SNAPSHOT_BYTES, Network, Report};

pub(crate) use leases::{LeaseAnswer, LeaseAsk};

pub(crate) type HostNode = Node<RedbBackend, Growable>;

/// A key and its value.
pub type Pair = (Vec<u8>, Vec<u8>);

/// How a node is started.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// The member id (raft-rs's node id): not 0.
    pub id: u64,
    /// The data directory (etcd's `--data-dir`).
    pub data_dir: PathBuf,
    /// The members of the cluster (etcd's `--initial-cluster`), this one included. Used only
    /// when the data directory holds no raft log yet: a new cluster's members start with them
    /// in their log; a member that joins an existing cluster talks to them until it has
    /// learnt the membership from the leader.
    pub initial_cluster: Vec<(u64, MemberInfo)>,
    /// Whether this member joins an existing cluster (etcd's `--initial-cluster-state
    /// existing`) rather than starting a new one.
    pub join_existing: bool,
    /// The cluster's id, as response headers carry it. 0: the one the raft log keeps, else for
    /// a new cluster the one its initial members give (etcd's `genID`). A member joining an
    /// existing cluster is given the id that cluster told it (the raft log keeps it from then).
    pub cluster_id: u64,
    /// The raft tick.
    pub tick: Duration,
    /// Ticks without a leader before an election (raft-rs `election_tick`).
    pub election_tick: usize,
    /// Ticks between heartbeats (raft-rs `heartbeat_tick`).
    pub heartbeat_tick: usize,
    /// When the member snapshots its backend and compacts its raft log.
    pub snapshot: SnapshotPolicy,
    /// The largest snapshot image this member takes from a leader; a larger one is refused
    /// ([`RaftError::SnapshotTooLarge`]) before any of it is written.
    pub max_snapshot_bytes: u64,
    /// How long a simple auth token lives unused (etcd's `--auth-token-ttl`, 300 s).
    pub auth_token_ttl: Duration,
    /// The largest raft entry this member proposes for a client (etcd's `--max-request-bytes`):
    /// a larger request is refused with [`RaftError::RequestTooLarge`] and changes nothing.
    pub max_request_bytes: usize,
}

/// etcd's default `--max-request-bytes`: 1.5 MiB.
pub const MAX_REQUEST_BYTES: usize = 1536 * 1024;

impl NodeConfig {
    /// A configuration with a 100 ms heartbeat and a 500 ms election timeout (etcd's defaults
    /// are 100 ms and 1 s; loopback needs no more, and a disk that stalls the loop for a
    /// moment must not cost the leader its term).
    pub fn new(id: u64, data_dir: PathBuf, initial_cluster: Vec<(u64, MemberInfo)>) -> Self {
        NodeConfig {
            id,
            data_dir,
            initial_cluster,
            join_existing: false,
            cluster_id: 0,
            tick: Duration::from_millis(50),
            election_tick: 10,
            heartbeat_tick: 2,
            snapshot: SnapshotPolicy::default(),
            max_snapshot_bytes: MAX_SNAPSHOT_BYTES,
            auth_token_ttl: crate::auth::DEFAULT_TOKEN_TTL,
            max_request_bytes: MAX_REQUEST_BYTES,
        }
    }
}

/// One applied snapshot: what it was and how long each phase took.
#[derive(Clone, Debug)]
pub struct RestoreReport {
    /// The snapshot's index.
    pub index: u64,
    /// The snapshot's term.
    pub term: u64,
    /// Bytes of its image.
    pub image_bytes: usize,
    /// Each phase and its duration.
    pub phases: Vec<(Phase, Duration)>,
    /// What the pipeline reported, in order: etcd's log lines, the gauge, the phases.
    pub trace: Vec<Trace>,
    /// When the pipeline reached `Applied`.
    pub applied_at: Instant,
}

/// One report of the pipeline to its observer, kept so a caller can replay a restore's log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Trace {
    /// An event, with etcd's message and fields.
    Event(Event),
    /// The in-progress gauge was set.
    InProgress(bool),
    /// A phase finished after this long.
    PhaseDone(Phase, Duration),
}

/// A node's state as its loop last saw it.
#[derive(Clone, Debug)]
pub struct Status {
    /// The member id.
    pub id: u64,
    /// The leader this node knows of (0: none).
    pub leader: u64,
    /// The raft term.
    pub term: u64,
    /// The node's applied index (the backend's consistent index).
    pub applied_index: u64,
    /// The raft log's first and last index.
    pub log: (u64, u64),
    /// The applied index of the last snapshot this member took (its backend made durable and
    /// its raft log compacted behind it) or applied; at start, its applied index.
    pub snapshot_index: u64,
    /// Peers the transport talks to.
    pub peers: Vec<u64>,
    /// Members in the node's membership store.
    pub members: Vec<u64>,
    /// Voters and learners of raft-rs's configuration.
    pub voters: Vec<u64>,
    /// See `voters`.
    pub learners: Vec<u64>,
    /// Snapshots applied through the pipeline since the node started.
    pub snapshots_applied: u64,
    /// The last of them.
    pub last_restore: Option<RestoreReport>,
    /// Snapshots this node (as leader) reported delivered to a follower.
    pub snapshots_sent: u64,
    /// Whether the node applied a persisted snapshot when it started (one it had received
    /// before it stopped: etcd's `RecoverSnapshotBackend`).
    pub restored_at_boot: bool,
    /// ReadIndex rounds this node started for linearizable reads (concurrent reads share one).
    pub read_rounds: u64,
}

pub(crate) enum Control {
    Propose(Command, oneshot::Sender<Result<i64, RaftError>>),
    ConfChange(ConfChange, oneshot::Sender<Result<i64, RaftError>>),
    /// A conf change promoting a learner: checked for readiness on the leader first.
    Promote(ConfChange, oneshot::Sender<Result<i64, RaftError>>),
    Status(oneshot::Sender<Status>),
    Digest(oneshot::Sender<Result<[u8; 32], RaftError>>),
    Range(Vec<u8>, Vec<u8>, oneshot::Sender<Result<Vec<Pair>, RaftError>>),
    ReadIndex(oneshot::Sender<Result<(), RaftError>>),
    /// Answers once this member has applied up to the index (crate::auth: a token is taken
    /// only once the entry that issued it is applied here, as etcd's `isValidSimpleToken`).
    WaitApplied(u64, oneshot::Sender<Result<(), RaftError>>),
    CompactLog(oneshot::Sender<Result<u64, RaftError>>),
    /// Client API hook (crate::query): run a read on the loop.
    Read(crate::query::Reader),
    /// Client API hook (crate::query): propose, and run the reads on this node just before and
    /// just after the entry is applied here (etcd's prev_kv, deleted count, txn responses).
    ProposeRead(Command, crate::query::AroundApply, oneshot::Sender<Result<i64, RaftError>>),
    /// Cuts the node off the network or heals it; answers once the transport has taken it.
    Isolate(bool, oneshot::Sender<()>),
    /// Defragment the backend (etcd's `Maintenance.Defragment`), on the loop.
    Defragment(oneshot::Sender<Result<(), RaftError>>),
    /// A lease request only the leader answers (node::leases).
    Lease(leases::LeaseAsk, oneshot::Sender<(leases::LeaseAnswer, Vec<String>)>),
    Stop,
}

/// A running node: talk to it through this handle (its [`Client`] methods are the handle's
/// own). Dropping the handle stops the node's tasks.
#[derive(Debug)]
pub struct NodeHandle {
    client: Client,
    task: Option<tokio::task::JoinHandle<Result<(), RaftError>>>,
}

/// A cheap, cloneable way to talk to a running node, for many concurrent requests.
#[derive(Clone, Debug)]
pub struct Client {
    id: u64,
    cluster_id: u64,
    control: mpsc::UnboundedSender<Control>,
    metrics: Arc<Metrics>,
    /// The store's revision as the loop last published it (crate::watch).
    pub(crate) revision: tokio::sync::watch::Receiver<i64>,
    /// The auth tokens this member issued (crate::auth).
    pub(crate) tokens: Arc<crate::auth::Tokens>,
    /// The auth this client's proposals carry ([`Client::with_auth`]).
    pub(crate) auth: Option<Arc<crate::auth::Authorized>>,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Control")
    }
}

impl std::ops::Deref for NodeHandle {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.client
    }
}

/// How a read is served (etcd's `--consistency`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Consistency {
    /// The member first obtains a read index from the leader and applies up to it: the read
    /// sees every write acknowledged before it was asked (etcd's default, `l`).
    #[default]
    Linearizable,
    /// From the member's local state, without asking the leader: may be stale (etcd's `s`).
    Serializable,
}

/// How long a handle waits for its node to answer or a proposal to be applied.
const WAIT: Duration = Duration::from_secs(20);

impl Client {
    /// The member id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The cluster's id (etcd's, as response headers carry it): 0 if this member joined a
    /// cluster without being told it.
    pub fn cluster_id(&self) -> u64 {
        self.cluster_id
    }

    /// The member's metrics (etcd's names), read without asking the node's loop: they answer
    /// while it is busy applying a snapshot.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub(crate) async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Control,
        what: &'static str,
    ) -> Result<T, RaftError> {
        let (tx, rx) = oneshot::channel();
        self.control.send(make(tx)).map_err(|_| RaftError::Stopped)?;
        match tokio::time::timeout(WAIT, rx).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(_)) => Err(RaftError::Stopped),
            Err(_) => Err(RaftError::Timeout { what }),
        }
    }

    /// Proposes `command` and waits until this node applied it; returns the key-value
    /// revision after it. A follower forwards the proposal to the leader.
    ///
    /// # Errors
    /// [`RaftError::Raft`] (proposal dropped: no leader), [`RaftError::Timeout`],
    /// [`RaftError::Store`] if the store refused it, [`RaftError::Stopped`].
    ///
    /// The proposal is handed to the node when this is called, before the future is first
    /// polled: proposals made one after the other are proposed in that order, even when their
    /// futures are awaited concurrently.
    pub fn propose(&self, command: Command) -> impl Future<Output = Result<i64, RaftError>> + Send + 'static {
        let (tx, rx) = oneshot::channel();
        let sent = self.control.send(Control::Propose(self.stamped(command), tx)).is_ok();
        async move {
            if !sent {
                return Err(RaftError::Stopped);
            }
            match tokio::time::timeout(WAIT, rx).await {
                Ok(Ok(v)) => v,
                Ok(Err(_)) => Err(RaftError::Stopped),
                Err(_) => Err(RaftError::Timeout { what: "a proposal to be applied" }),
            }
        }
    }

    /// Proposes `commands` one after the other, with at most `max_in_flight` (at least 1)
    /// waiting to be applied, and waits for the last; returns the revision after it (0 for no
    /// command). A bulk load's loop: the proposals are made in order, only their waits overlap.
    ///
    /// # Errors
    /// The first failure, as [`Client::propose`]. No command after it is proposed; those
    /// proposed before it may still be applied.
    pub async fn propose_all(
        &self,
        commands: impl IntoIterator<Item = Command>,
        max_in_flight: usize,
    ) -> Result<i64, RaftError> {
        let mut waiting = std::collections::VecDeque::new();
        let mut revision = 0;
        for command in commands {
            if waiting.len() >= max_in_flight.max(1)
                && let Some(oldest) = waiting.pop_front()
            {
                revision = oldest.await?;
            }
            waiting.push_back(self.propose(command));
        }
        while let Some(oldest) = waiting.pop_front() {
            revision = oldest.await?;
        }
        Ok(revision)
    }

    /// `command` with this client's auth, if it has one ([`Client::with_auth`]).
    pub(crate) fn stamped(&self, command: Command) -> Command {
        match &self.auth {
            Some(auth) => auth.stamp(command),
            None => command,
        }
    }

    /// Puts `value` under `key`.
    ///
    /// # Errors
    /// As [`NodeHandle::propose`].
    pub async fn put(&self, key: &[u8], value: &[u8]) -> Result<i64, RaftError> {
        self.propose(Command::Apply(RequestBuf::Put { key: key.to_vec(), value: value.to_vec(), lease: 0 })).await
    }

    /// Adds member `id` (a conf change whose context is `info`, as etcd's).
    ///
    /// # Errors
    /// As [`NodeHandle::propose`].
    pub async fn add_member(&self, id: u64, info: &MemberInfo) -> Result<i64, RaftError> {
        let mut cc = ConfChange { node_id: id, context: info.encode(), ..Default::default() };
        cc.set_change_type(ConfChangeType::AddNode);
        self.ask(|tx| Control::ConfChange(cc, tx), "a member to be added").await?
    }

    /// Adds member `id` as a learner (raft-rs `AddLearnerNode`).
    ///
    /// # Errors
    /// As [`NodeHandle::propose`].
    pub async fn add_learner(&self, id: u64, info: &MemberInfo) -> Result<i64, RaftError> {
        let mut cc = ConfChange { node_id: id, context: info.encode(), ..Default::default() };
        cc.set_change_type(ConfChangeType::AddLearnerNode);
        self.ask(|tx| Control::ConfChange(cc, tx), "a learner to be added").await?
    }

    /// Promotes learner `id` to a voting member (raft-rs `AddNode` of a learner, etcd's
    /// `MemberPromote`). Asked of the leader, it is refused while the learner's log is behind
    /// 90% of the leader's (etcd's `isLearnerReady`).
    ///
    /// # Errors
    /// [`RaftError::LearnerNotReady`], and as [`NodeHandle::propose`].
    pub async fn promote_member(&self, id: u64) -> Result<i64, RaftError> {
        let mut cc = ConfChange { node_id: id, ..Default::default() };
        cc.set_change_type(ConfChangeType::AddNode);
        self.ask(|tx| Control::Promote(cc, tx), "a learner to be promoted").await?
    }

    /// Removes member `id`.
    ///
    /// # Errors
    /// As [`NodeHandle::propose`].
    pub async fn remove_member(&self, id: u64) -> Result<i64, RaftError> {
        let mut cc = ConfChange { node_id: id, ..Default::default() };
        cc.set_change_type(ConfChangeType::RemoveNode);
        self.ask(|tx| Control::ConfChange(cc, tx), "a member to be removed").await?
    }

    /// The node's status.
    ///
    /// # Errors
    /// [`RaftError::Stopped`] or [`RaftError::Timeout`].
    pub async fn status(&self) -> Result<Status, RaftError> {
        self.ask(Control::Status, "the node's status").await
    }

    /// SHA-256 of every backend record (bucket, key, value) in order: equal on two nodes that
    /// applied the same entries, however they got them.
    ///
    /// # Errors
    /// [`RaftError::Backend`] if the backend cannot be read.
    pub async fn digest(&self) -> Result<[u8; 32], RaftError> {
        self.ask(Control::Digest, "the node's digest").await?
    }

    /// Live keys and values in `[key, range_end)` (etcd's conventions: empty `range_end` is just
    /// `key`, `[0]` is every key from `key` on), from this member's local state: a serializable
    /// read (etcd's `--consistency=s`), which may miss writes the leader has acknowledged. See
    /// [`Client::read`] for a linearizable one.
    ///
    /// # Errors
    /// [`RaftError::Store`] if the range cannot be read.
    pub async fn range(&self, key: &[u8], range_end: &[u8]) -> Result<Vec<Pair>, RaftError> {
        self.ask(|tx| Control::Range(key.to_vec(), range_end.to_vec(), tx), "a range").await?
    }

    // --- Reads: linearizable (ReadIndex) or serializable. ---

    /// Waits until this member has applied everything the cluster had committed when this was
    /// called, as the leader confirms it (raft-rs's ReadIndex, batched with concurrent reads
    /// into one round): a read of the local state after it returns is linearizable. Works on a
    /// follower as on the leader.
    ///
    /// # Errors
    /// [`RaftError::Timeout`] if no read index was obtained and applied within the request
    /// timeout (etcd's: 5 s plus two election timeouts), saying when the member knows no leader;
    /// [`RaftError::Stopped`].
    pub async fn read_index(&self) -> Result<(), RaftError> {
        self.ask(Control::ReadIndex, "a read index").await?
    }

    /// [`Client::range`] with the consistency asked: [`Consistency::Linearizable`] (etcd's
    /// default) waits for [`Client::read_index`] first.
    ///
    /// # Errors
    /// As [`Client::read_index`] and [`Client::range`].
    pub async fn read(&self, key: &[u8], range_end: &[u8], consistency: Consistency) -> Result<Vec<Pair>, RaftError> {
        if consistency == Consistency::Linearizable {
            self.read_index().await?;
        }
        self.range(key, range_end).await
    }

    // --- End of reads. ---

    /// Takes a snapshot of the live backend at the applied index and drops the raft log up to
    /// it (etcd's snapshot at `--snapshot-count` and `raftStorage.Compact`); returns the index.
    ///
    /// # Errors
    /// [`RaftError::Image`] or [`RaftError::Log`] if the snapshot or the compaction fails.
    pub async fn compact_log(&self) -> Result<u64, RaftError> {
        self.ask(Control::CompactLog, "the log to be compacted").await?
    }

    /// Defragments this member's backend file (etcd's `Maintenance.Defragment`): on the loop,
    /// between two readies, so nothing is applied or read meanwhile; the content is unchanged.
    ///
    /// # Errors
    /// [`RaftError::DefragmentBusy`] while a reader holds the backend (a snapshot being sent),
    /// [`RaftError::Fs`] if the file cannot be compacted, [`RaftError::Stopped`] or
    /// [`RaftError::Timeout`].
    pub async fn defragment(&self) -> Result<(), RaftError> {
        self.ask(Control::Defragment, "the backend to be defragmented").await?
    }

    /// Cuts the node off the network (`true`) or heals it (`false`); returns once the node's
    /// transport has taken it, so nothing sent or received after the return crosses the cut.
    ///
    /// # Errors
    /// [`RaftError::Stopped`] or [`RaftError::Timeout`].
    pub async fn isolate(&self, on: bool) -> Result<(), RaftError> {
        self.ask(|tx| Control::Isolate(on, tx), "the node to be cut off or healed").await
    }

    /// Client API hook: sends `control` to the loop (crate::query builds it).
    pub(crate) fn send(&self, control: Control) -> Result<(), RaftError> {
        self.control.send(control).map_err(|_| RaftError::Stopped)
    }
}

impl NodeHandle {
    /// A client of the node.
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// Stops the node and waits for its loop to end; returns the loop's error, if it failed.
    ///
    /// # Errors
    /// The error the loop stopped on.
    pub async fn stop(mut self) -> Result<(), RaftError> {
        let _ = self.client.control.send(Control::Stop);
        match self.task.take() {
            Some(t) => t.await.unwrap_or(Err(RaftError::Stopped)),
            None => Ok(()),
        }
    }

    /// Waits until the node's loop ends on its own and returns why: a fatal error, such as a
    /// write to a full disk (etcd exits on a failed raft log or backend write). Never resolves
    /// while the node runs; cancel-safe, for a `select!` beside the server's other work.
    pub async fn failed(&mut self) -> RaftError {
        let Some(task) = self.task.as_mut() else {
            return std::future::pending().await;
        };
        let result = task.await;
        self.task = None;
        match result {
            Ok(Err(e)) => e,
            Ok(Ok(())) | Err(_) => RaftError::Stopped,
        }
    }

    /// Stops the node at once, as a crash would: its task is aborted at its next await (a
    /// ready being handled is finished first: the loop's disk work is synchronous), and its
    /// files are closed when this returns.
    pub async fn kill(mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = t.await;
        }
    }
}

impl Drop for NodeHandle {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

fn core_config(id: u64, config: &NodeConfig) -> Config {
    Config { id, min_lease_ttl: min_lease_ttl(config), v2_deprecation: V2Deprecation::WriteOnly }
}

/// The election timeout: `election_tick` ticks.
fn election_timeout(config: &NodeConfig) -> Duration {
    config.tick.saturating_mul(u32::try_from(config.election_tick).unwrap_or(u32::MAX))
}

/// etcd's minimum lease TTL (`minTTL`): 1.5 × the election timeout, in whole seconds rounded up,
/// at least 1 (1 with this crate's default 500 ms election timeout, 2 with etcd's 1 s).
fn min_lease_ttl(config: &NodeConfig) -> i64 {
    let ms = election_timeout(config).as_millis().saturating_mul(3) / 2;
    i64::try_from(ms.div_ceil(1000)).unwrap_or(i64::MAX).max(1)
}

/// SHA-256 of every backend record.
pub(crate) fn digest(node: &HostNode) -> Result<[u8; 32], RaftError> {
    let mut sha = Sha256::new();
    for_each_record(&node.backend().read()?, &mut |bucket, key, value| {
        sha.update([bucket as u8]);
        sha.update((key.len() as u64).to_be_bytes());
        sha.update(key);
        sha.update((value.len() as u64).to_be_bytes());
        sha.update(value);
        std::ops::ControlFlow::Continue(())
    })?;
    Ok(sha.finalize().into())
}

/// Records each phase's duration and etcd's log lines, and sets the member's metrics (the
/// in-progress gauge, the apply's duration).
struct Recorder {
    started: Instant,
    phases: Vec<(Phase, Duration)>,
    trace: Vec<Trace>,
    metrics: Arc<Metrics>,
    applying_since: Option<Instant>,
}

impl Recorder {
    fn new(metrics: &Arc<Metrics>) -> Self {
        Recorder {
            started: Instant::now(),
            phases: Vec::new(),
            trace: Vec::new(),
            metrics: metrics.clone(),
            applying_since: None,
        }
    }
}

impl Observer for Recorder {
    fn event(&mut self, event: &Event) {
        if event.is_warning() {
            log::warn!("{event}");
        } else {
            log::info!("{event}");
        }
        self.trace.push(Trace::Event(*event));
    }
    fn in_progress(&mut self, applying: bool) {
        self.trace.push(Trace::InProgress(applying));
        if applying {
            self.metrics.snapshot_apply_in_progress.inc();
            self.applying_since = Some(Instant::now());
        } else {
            self.metrics.snapshot_apply_in_progress.dec();
            if let Some(since) = self.applying_since.take() {
                self.metrics.snapshot_apply.observe(since.elapsed().as_secs_f64());
            }
        }
    }
    fn now_micros(&mut self) -> Option<u64> {
        u64::try_from(self.started.elapsed().as_micros()).ok()
    }
    fn phase_done(&mut self, phase: Phase, micros: Option<u64>) {
        let took = Duration::from_micros(micros.unwrap_or(0));
        self.phases.push((phase, took));
        self.trace.push(Trace::PhaseDone(phase, took));
    }
}

/// How long a batched backend commit may stay out of the file's durable state, and how many
/// entries may wait for that: etcd's backend batch interval and limit (`--backend-batch-interval`
/// 100 ms, `--backend-batch-limit` 10,000).
const BATCH_INTERVAL: Duration = Duration::from_millis(100);
const BATCH_LIMIT: u64 = 10_000;

struct Loop {
    id: u64,
    raw: RawNode<RaftLog>,
    log: RaftLog,
    node: HostNode,
    store: FsSnapshotStore,
    net: Network,
    waiters: HashMap<u64, oneshot::Sender<Result<i64, RaftError>>>,
    /// The largest entry proposed for a client (`--max-request-bytes`).
    max_request_bytes: usize,
    /// Client API hook: reads to run just before (and, as they return, just after) this node
    /// applies its own proposal `seq`.
    around_apply: HashMap<u64, crate::query::AroundApply>,
    seq: u64,
    snapshots_applied: u64,
    snapshots_sent: u64,
    last_restore: Option<RestoreReport>,
    restored_at_boot: bool,
    /// Linearizable reads waiting for a read index or for it to be applied.
    reads: Reads,
    /// How long a read may wait (etcd's request timeout).
    read_timeout: Duration,
    /// Entries applied since the backend was last synced, and when that was.
    unsynced_entries: u64,
    last_sync: Instant,
    /// The snapshot policy, the index of the last snapshot taken (or applied), the index of the
    /// image being built for a follower, if any, and where a build reports.
    policy: SnapshotPolicy,
    snapshot_index: u64,
    building: Option<u64>,
    built: mpsc::UnboundedSender<Result<ImageFile, RaftError>>,
    /// Snapshots received from the leader and persisted, waiting for raft-rs.
    inbound: Inbound,
    /// The cluster's id (0: not known).
    cluster_id: u64,
    /// This member was removed from the cluster: the loop stops (etcd's server stops).
    removed: bool,
    metrics: Arc<Metrics>,
    /// The leader the metrics last saw.
    leader_seen: u64,
    /// When the snapshot being built was begun.
    build_started: Option<Instant>,
    /// Where the loop publishes the store's revision after each ready (crate::watch).
    revision: tokio::sync::watch::Sender<i64>,
    /// The clock lease expiries are counted on (node::leases).
    lease_clock: leases::LeaseClock,
    /// The auth tokens this member issued (crate::auth).
    tokens: Arc<crate::auth::Tokens>,
}

/// Starts a node on its data directory, listening for peers on `listener`. Must be called
/// within a tokio runtime; a multi-threaded one lets the loop's disk work block its own worker
/// only.
///
/// A data directory left by an earlier run is reopened: the live backend, a persisted snapshot
/// not yet applied (applied now, through the pipeline: etcd's `RecoverSnapshotBackend`), the
/// raft log and hard state.
///
/// # Errors
/// [`RaftError`] if the data directory, the log or the listener cannot be used.
pub fn start(config: NodeConfig, listener: std::net::TcpListener) -> Result<NodeHandle, RaftError> {
    if config.id == 0 {
        return Err(RaftError::Config { what: "a member id must not be 0".into() });
    }
    let id = config.id;
    let dir = DataDir::open(&config.data_dir)?;
    let boot = dir.boot()?;
    // The v2 data of the newest snapshot the backend already reflects.
    let mut v2 = Vec::new();
    for name in dir.snapshots()? {
        if name.index <= boot.consistent_index {
            v2 = dir.read_snap(name)?.v2;
            break;
        }
    }
    let mut node = HostNode::open(core_config(id, &config), boot.backend, &v2)?;
    let mut store = FsSnapshotStore::new(dir.clone());

    listener.set_nonblocking(true).map_err(|source| RaftError::Io { op: "configuring the peer listener", source })?;
    let listener = tokio::net::TcpListener::from_std(listener)
        .map_err(|source| RaftError::Io { op: "registering the peer listener", source })?;
    let (inbox_tx, inbox) = mpsc::unbounded_channel();
    let (report_tx, reports) = mpsc::unbounded_channel();
    let inbound = Inbound::new(dir.clone(), core_config(id, &config), config.max_snapshot_bytes);
    let metrics = Arc::new(Metrics::new(id, dir.member_dir().join("db"))?);
    let mut net = Network::start(id, listener, inbox_tx, report_tx, inbound.clone(), metrics.clone());

    let restored_at_boot = boot.pending.is_some();
    if let Some(pending) = boot.pending {
        let mut recorder = Recorder::new(&metrics);
        let ports = Ports { storage: &mut store, transport: &mut net, observer: &mut recorder };
        if let Some(outcome) = snapply_core::apply_snapshot(&mut node, ports, pending.snapshot())? {
            drop(outcome.old_backend);
        }
    }
    if node.unfinished().is_some() {
        let mut recorder = Recorder::new(&metrics);
        let ports = Ports { storage: &mut store, transport: &mut net, observer: &mut recorder };
        pipeline::resume(&mut node, ports)?;
    }

    let initial = if config.join_existing { Vec::new() } else { config.initial_cluster.clone() };
    let log = RaftLog::open(&dir.member_dir().join("raft.redb"), move || bootstrap(&initial))?;
    match log.member_id() {
        Some(kept) if kept != id => {
            return Err(RaftError::Config {
                what: format!(
                    "the data directory {} belongs to member {kept:x}, not {id:x}: start it as that member",
                    config.data_dir.display()
                ),
            });
        }
        Some(_) => {}
        None => log.set_member_id(id)?,
    }
    let cluster_id = match log.cluster_id() {
        Some(kept) => kept,
        None => {
            let ids: Vec<u64> = config.initial_cluster.iter().map(|(id, _)| *id).collect();
            let id = match config.cluster_id {
                0 if config.join_existing => 0,
                0 => crate::membership::cluster_id(&ids),
                given => given,
            };
            if id != 0 {
                log.set_cluster_id(id)?;
            }
            id
        }
    };
    let applied = node.progress().applied_index;
    let holds_applied =
        applied <= log.commit() || raft::Storage::term(&log, applied).is_ok_and(|t| t == node.progress().applied_term);
    if applied > log.last_index() || !holds_applied {
        // The pipeline applied a snapshot (a received one persisted before the stop, applied
        // above), and the log was not told: it restarts after the snapshot, as raft-rs restores
        // one whose index and term its log does not hold.
        log.apply_snapshot(&to_raft_metadata(&node.snapshot_metadata()?))?;
    }
    if applied.saturating_add(1) < log.first_index() {
        return Err(RaftError::CorruptLog {
            what: format!("the log starts at {} but the backend holds only up to {applied}", log.first_index()),
        });
    }
    // The transport talks to the members the node's state lists (the pipeline did the same if
    // a snapshot was applied above).
    net.remove_all_peers();
    for m in node.stores().membership.members() {
        let urls: Vec<&[u8]> = m.peer_urls.iter().map(Vec::as_slice).collect();
        net.add_peer(m.id, &urls)?;
    }
    if node.stores().membership.members().is_empty() {
        // A member joining an existing cluster knows nobody yet: it answers the members it
        // was told of until the leader's entries or snapshot give it the membership.
        for (id, info) in &config.initial_cluster {
            let urls: Vec<&[u8]> = info.peer_urls.iter().map(|u| u.as_bytes()).collect();
            net.add_peer(*id, &urls)?;
        }
    }

    let raft_config = raft::Config {
        id,
        election_tick: config.election_tick,
        heartbeat_tick: config.heartbeat_tick,
        applied: applied.min(log.commit()),
        max_size_per_msg: 1024 * 1024,
        max_inflight_msgs: 256,
        pre_vote: true,
        check_quorum: true,
        ..Default::default()
    };
    let logger = slog::Logger::root(slog::Discard, slog::o!());
    let raw = RawNode::new(&raft_config, log.clone(), &logger)?;
    let (control_tx, control) = mpsc::unbounded_channel();
    let (built, built_rx) = mpsc::unbounded_channel();
    let (revision_tx, revision) = tokio::sync::watch::channel(node.stores().kv.current_revision());
    let tokens = crate::auth::Tokens::new(config.auth_token_ttl);
    let mut state = Loop {
        id,
        raw,
        log,
        node,
        store,
        net,
        waiters: HashMap::new(),
        max_request_bytes: config.max_request_bytes,
        around_apply: HashMap::new(),
        seq: 0,
        snapshots_applied: 0,
        snapshots_sent: 0,
        last_restore: None,
        restored_at_boot,
        reads: Reads::default(),
        read_timeout: request_timeout(&config),
        unsynced_entries: 0,
        last_sync: Instant::now(),
        policy: config.snapshot,
        snapshot_index: applied,
        building: None,
        built,
        inbound,
        cluster_id,
        removed: false,
        metrics: metrics.clone(),
        leader_seen: raft::INVALID_ID,
        build_started: None,
        revision: revision_tx,
        lease_clock: leases::LeaseClock::new(election_timeout(&config)),
        tokens: tokens.clone(),
    };
    state.publish_membership();
    // From here on the raft log holds every applied entry: the backend commits in batches.
    state.node.backend().set_batched_commits(true);
    let tick = config.tick;
    let task = tokio::spawn(async move {
        let result = state.run(tick, inbox, reports, control, built_rx).await;
        state.net.shutdown();
        if let Err(e) = &result {
            log::error!("member {id:x} stopped: {e}");
        }
        result
    });
    Ok(NodeHandle {
        client: Client { id, cluster_id, control: control_tx, metrics, revision, tokens, auth: None },
        task: Some(task),
    })
}

/// etcd's request timeout (`ServerConfig.ReqTimeout`): 5 s plus two election timeouts.
fn request_timeout(config: &NodeConfig) -> Duration {
    Duration::from_secs(5).saturating_add(election_timeout(config).saturating_mul(2))
}

/// Creates the raft log of `member` of the new cluster `cluster` in `data_dir`, as `etcdutl
/// snapshot restore` writes its WAL: one `AddNode` per member at term 1, committed, and the
/// member's and the cluster's ids. A member started on the directory then ignores `--initial-cluster`.
///
/// # Errors
/// [`RaftError::Fs`] if the data directory cannot be opened, [`RaftError::Log`] if the log
/// cannot be written, [`RaftError::Config`] if the directory already holds a log.
pub fn init_raft_log(
    data_dir: &std::path::Path,
    cluster: &crate::InitialCluster,
    member: u64,
) -> Result<(), RaftError> {
    let path = DataDir::open(data_dir)?.member_dir().join("raft.redb");
    if path.exists() {
        return Err(RaftError::Config { what: format!("{} exists already", path.display()) });
    }
    let log = RaftLog::open(&path, || bootstrap(cluster.members()))?;
    log.set_member_id(member)?;
    log.set_cluster_id(cluster.id())
}

/// The member and cluster ids the data directory's raft log keeps (each 0 if it keeps none):
/// a member that started once is that member again, whatever its flags say (etcd reads them
/// from its WAL). `None` before the member's first start.
///
/// # Errors
/// [`RaftError::Log`] if the log cannot be read (another process holds it open, for one).
pub fn ids(data_dir: &std::path::Path) -> Result<Option<(u64, u64)>, RaftError> {
    RaftLog::ids(&data_dir.join("member").join("raft.redb"))
}

/// The entries every member of a new cluster starts with: one `AddNode` per initial member,
/// committed at term 1 (etcd's `raft.StartNode` with peers).
fn bootstrap(initial: &[(u64, MemberInfo)]) -> (raft::prelude::ConfState, Vec<Entry>) {
    let mut cs = raft::prelude::ConfState::default();
    let mut entries = Vec::new();
    for (i, (id, info)) in initial.iter().enumerate() {
        cs.voters.push(*id);
        let mut cc = ConfChange { node_id: *id, context: info.encode(), ..Default::default() };
        cc.set_change_type(ConfChangeType::AddNode);
        let mut e = Entry { index: i as u64 + 1, term: 1, data: cc.encode_to_vec(), ..Default::default() };
        e.set_entry_type(EntryType::EntryConfChange);
        entries.push(e);
    }
    (cs, entries)
}

fn sorted(ids: impl Iterator<Item = u64>) -> Vec<u64> {
    let mut ids: Vec<u64> = ids.collect();
    ids.sort_unstable();
    ids
}

/// How far behind the leader's log a learner may be and still be promoted (etcd's
/// `readyPercent`).
const LEARNER_READY: f64 = 0.9;

fn context(origin: u64, seq: u64) -> Vec<u8> {
    let mut c = origin.to_be_bytes().to_vec();
    c.extend_from_slice(&seq.to_be_bytes());
    c
}

fn parse_context(c: &[u8]) -> Option<(u64, u64)> {
    let origin = u64::from_be_bytes(c.get(..8)?.try_into().ok()?);
    let seq = u64::from_be_bytes(c.get(8..16)?.try_into().ok()?);
    Some((origin, seq))
}

/// Runs `f`, letting the runtime move other tasks off this worker while it blocks on the disk
/// (a current-thread runtime cannot, and runs it in place).
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        // Also when the task is aborted: no listener or writer outlives its node.
        self.net.shutdown();
    }
}

impl Loop {
    async fn run(
        &mut self,
        tick: Duration,
        mut inbox: mpsc::UnboundedReceiver<Message>,
        mut reports: mpsc::UnboundedReceiver<Report>,
        mut control: mpsc::UnboundedReceiver<Control>,
        mut built: mpsc::UnboundedReceiver<Result<ImageFile, RaftError>>,
    ) -> Result<(), RaftError> {
        let mut ticker = tokio::time::interval(tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {
                    self.raw.tick();
                    self.drop_abandoned();
                    self.reads.expire(self.raw.raft.leader_id);
                    self.expire_leases();
                }
                Some(msg) = inbox.recv() => {
                    // raft-rs refuses messages from unknown peers or of a stale term: it has
                    // already logged why, and the sender retries.
                    let _ = self.raw.step(msg);
                    while let Ok(msg) = inbox.try_recv() {
                        let _ = self.raw.step(msg);
                    }
                }
                Some(image) = built.recv() => blocking(|| self.snapshot_built(image))?,
                Some(report) = reports.recv() => match report {
                    Report::Unreachable(to) => self.raw.report_unreachable(to),
                    Report::Removed(by) => {
                        // etcd: "the member has been permanently removed from the cluster".
                        log::warn!("member {:x} was told by member {by:x} that it was removed from the cluster", self.id);
                        self.removed = true;
                    }
                    Report::Snapshot { to, delivered } => {
                        if delivered {
                            self.snapshots_sent += 1;
                        }
                        let status = if delivered { SnapshotStatus::Finish } else { SnapshotStatus::Failure };
                        self.raw.report_snapshot(to, status);
                    }
                    Report::Lease(ask, reply) => {
                        let _ = reply.send(self.answer_lease(ask));
                    }
                },
                c = control.recv() => match c {
                    None | Some(Control::Stop) => return blocking(|| self.sync_backend()),
                    Some(c) => {
                        self.control(c);
                        // Proposals queued meanwhile go into the same ready, so one log write
                        // (one sync) carries them all, as etcd's raft loop batches proposals.
                        while let Ok(c) = control.try_recv() {
                            if matches!(c, Control::Stop) {
                                return blocking(|| self.sync_backend());
                            }
                            self.control(c);
                        }
                    }
                },
            }
            self.reads.send(&mut self.raw);
            blocking(|| self.on_ready())?;
            crate::watch::publish(&self.revision, self.node.stores().kv.current_revision());
            self.track_lease_leadership();
            self.update_metrics();
            if self.removed {
                // etcd: "the member has been permanently removed from the cluster".
                blocking(|| self.sync_backend())?;
                return Err(RaftError::Removed);
            }
            // raft-rs's applied index counts every entry handed out, the empty ones a new leader
            // appends included (a read index can be one of them).
            self.reads.release(self.raw.raft.raft_log.applied);
            if self.unsynced_entries >= BATCH_LIMIT
                || (self.unsynced_entries > 0 && self.last_sync.elapsed() >= BATCH_INTERVAL)
            {
                blocking(|| self.sync_backend())?;
            }
            blocking(|| self.maybe_snapshot())?;
        }
    }

    fn control(&mut self, c: Control) {
        match c {
            Control::Propose(command, reply) => {
                let data = command.encode();
                if data.len() > self.max_request_bytes {
                    // etcd's `ErrRequestTooLarge`: refused before raft sees it.
                    let _ =
                        reply.send(Err(RaftError::RequestTooLarge { size: data.len(), limit: self.max_request_bytes }));
                    return;
                }
                self.seq += 1;
                match self.raw.propose(context(self.id, self.seq), data) {
                    Ok(()) => {
                        self.waiters.insert(self.seq, reply);
                    }
                    Err(e) => {
                        self.log_refused(&e);
                        let _ = reply.send(Err(e.into()));
                    }
                }
            }
            Control::ConfChange(cc, reply) => {
                self.seq += 1;
                match self.raw.propose_conf_change(context(self.id, self.seq), cc) {
                    Ok(()) => {
                        self.waiters.insert(self.seq, reply);
                    }
                    Err(e) => {
                        self.log_refused(&e);
                        let _ = reply.send(Err(e.into()));
                    }
                }
            }
            Control::Promote(cc, reply) => match self.learner_ready(cc.node_id) {
                Ok(()) => self.control(Control::ConfChange(cc, reply)),
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
            Control::Status(reply) => {
                let _ = reply.send(Status {
                    id: self.id,
                    leader: self.raw.raft.leader_id,
                    term: self.raw.raft.term,
                    applied_index: self.node.progress().applied_index,
                    log: (self.log.first_index(), self.log.last_index()),
                    snapshot_index: self.snapshot_index,
                    peers: self.net.peers(),
                    members: self.node.stores().membership.members().iter().map(|m| m.id).collect(),
                    voters: sorted(self.raw.raft.prs().conf().voters().ids().iter()),
                    learners: sorted(self.raw.raft.prs().conf().learners().iter().copied()),
                    snapshots_applied: self.snapshots_applied,
                    last_restore: self.last_restore.clone(),
                    snapshots_sent: self.snapshots_sent,
                    restored_at_boot: self.restored_at_boot,
                    read_rounds: self.reads.rounds(),
                });
            }
            Control::Digest(reply) => {
                let _ = reply.send(digest(&self.node));
            }
            Control::Range(key, end, reply) => {
                let _ = reply.send(self.range(&key, &end));
            }
            Control::ReadIndex(reply) => self.reads.push(reply, self.read_timeout),
            Control::WaitApplied(index, reply) => {
                self.reads.wait_applied(index, reply, self.read_timeout);
                self.reads.release(self.raw.raft.raft_log.applied);
            }
            Control::CompactLog(reply) => {
                let _ = reply.send(blocking(|| self.compact_log()));
            }
            Control::Isolate(on, reply) => {
                self.net.set_isolated(on);
                let _ = reply.send(());
            }
            Control::Defragment(reply) => {
                let _ = reply.send(blocking(|| self.defragment()));
            }
            Control::Lease(ask, reply) => self.lease_control(ask, reply),
            Control::Read(read) => read(&self.view()),
            Control::ProposeRead(command, read, reply) => {
                self.control(Control::Propose(command, reply));
                if self.waiters.contains_key(&self.seq) {
                    self.around_apply.insert(self.seq, read);
                }
            }
            Control::Stop => {}
        }
    }

    /// Forgets the proposals whose client has gone (its request timed out or was cancelled):
    /// raft-rs may never commit an entry it accepted (a leader that lost its term drops what it
    /// had not replicated), and nothing else would remove its waiter. An entry that commits
    /// later is applied all the same; only its answer has nobody to go to.
    fn drop_abandoned(&mut self) {
        self.waiters.retain(|_, w| !w.is_closed());
        let waiters = &self.waiters;
        self.around_apply.retain(|seq, _| waiters.contains_key(seq));
    }

    /// Defragments the backend between two readies (etcd's `Defragment`): the batched commits
    /// are made durable and the file compacted in place.
    fn defragment(&mut self) -> Result<(), RaftError> {
        let started = Instant::now();
        let before = std::fs::metadata(self.node.backend().path()).map_or(0, |m| m.len());
        if !self.node.backend_mut().compact()? {
            return Err(RaftError::DefragmentBusy);
        }
        self.unsynced_entries = 0;
        self.last_sync = Instant::now();
        let after = std::fs::metadata(self.node.backend().path()).map_or(0, |m| m.len());
        log::info!(
            "member {:x} finished defragmenting the backend: size {before} bytes before, {after} after, took {:?}",
            self.id,
            started.elapsed()
        );
        Ok(())
    }

    /// Sets the metrics of the raft state, as etcd's raft loop does on each ready.
    fn update_metrics(&mut self) {
        let raft = &self.raw.raft;
        let m = &self.metrics;
        let leader = raft.leader_id;
        if leader != raft::INVALID_ID && leader != self.leader_seen {
            m.leader_changes.inc();
        }
        self.leader_seen = leader;
        m.has_leader.set(i64::from(leader != raft::INVALID_ID));
        m.is_leader.set(i64::from(raft.state == raft::StateRole::Leader));
        m.is_learner.set(i64::from(self.node.stores().membership.member(self.id).is_some_and(|m| m.is_learner)));
        m.proposals_committed.set(i64::try_from(raft.raft_log.committed).unwrap_or(i64::MAX));
        m.proposals_applied.set(i64::try_from(raft.raft_log.applied).unwrap_or(i64::MAX));
        m.proposals_pending.set(i64::try_from(self.waiters.len()).unwrap_or(i64::MAX));
    }

    /// Logs why raft-rs refused a proposal: it says only "proposal dropped".
    fn log_refused(&self, e: &raft::Error) {
        self.metrics.proposals_failed.inc();
        let raft = &self.raw.raft;
        let why = if !matches!(e, raft::Error::ProposalDropped) {
            e.to_string()
        } else if !raft.promotable() && !raft.prs().conf().learners().contains(&self.id) {
            format!(
                "this member ({:x}) is not in the cluster's configuration (voters {:x?}): its data directory was made for other members; `snapply restore --initial-cluster` makes one for the members that will run it",
                self.id,
                raft.prs().conf().voters().ids().iter().collect::<Vec<_>>()
            )
        } else if raft.leader_id == raft::INVALID_ID {
            format!("no leader at term {}", raft.term)
        } else if let Some(to) = raft.lead_transferee {
            format!("leadership is being transferred to {to:x}")
        } else {
            format!("refused by raft at term {} (leader {:x})", raft.term, raft.leader_id)
        };
        log::warn!("member {:x} dropped a proposal: {why}", self.id);
    }

    fn view(&self) -> crate::query::View<'_> {
        crate::query::View {
            node: &self.node,
            id: self.id,
            leader: self.raw.raft.leader_id,
            term: self.raw.raft.term,
            raft_index: self.log.last_index(),
        }
    }

    fn range(&self, key: &[u8], end: &[u8]) -> Result<Vec<Pair>, RaftError> {
        let mut out = Vec::new();
        let txn = self.node.backend().read()?;
        self.node.stores().kv.range(&txn, key, end, 0, &mut |kv| out.push((kv.key.to_vec(), kv.value.to_vec())))?;
        Ok(out)
    }

    /// Makes the backend's batched commits durable (etcd's backend batch commit).
    fn sync_backend(&mut self) -> Result<(), RaftError> {
        self.node.backend().sync()?;
        self.unsynced_entries = 0;
        self.last_sync = Instant::now();
        Ok(())
    }

    /// The ready loop, in the order raft-rs documents (`RawNode`'s docs and its
    /// `five_mem_node` example): send, apply the snapshot, apply committed entries, persist
    /// entries and hard state, send what waited for persistence, advance, and again for the
    /// light ready.
    fn on_ready(&mut self) -> Result<(), RaftError> {
        if !self.raw.has_ready() {
            return Ok(());
        }
        let mut ready = self.raw.ready();
        self.reads.confirm(ready.take_read_states());
        if !ready.messages().is_empty() {
            self.net.send(ready.take_messages());
        }
        if !ready.snapshot().is_empty() {
            // Before any committed entry: they follow the snapshot (etcd's applySnapshot runs
            // before applyEntries).
            let snapshot = ready.snapshot().clone();
            self.apply_snapshot(&snapshot)?;
        }
        let committed = ready.take_committed_entries();
        self.apply_entries(committed)?;
        self.log.persist(ready.entries(), ready.hs())?;
        if !ready.persisted_messages().is_empty() {
            self.net.send(ready.take_persisted_messages());
        }
        let mut light = self.raw.advance(ready);
        if let Some(commit) = light.commit_index() {
            self.log.set_commit(commit)?;
        }
        self.net.send(light.take_messages());
        let committed = light.take_committed_entries();
        self.apply_entries(committed)?;
        self.raw.advance_apply();
        Ok(())
    }

    /// A leader's snapshot, already persisted by the transport while it arrived, through
    /// snapply's pipeline with the fs adapter's ports; then the raft log restarts after it.
    fn apply_snapshot(&mut self, snapshot: &Snapshot) -> Result<(), RaftError> {
        let meta = snapshot.get_metadata();
        let metadata = to_core_metadata(meta)?;
        let (persisted, image_bytes) = match self.inbound.take(meta.index, meta.term) {
            Some(received) => (received.persisted, received.bytes),
            // Persisted, but its stores were dropped (a newer one arrived meanwhile): the
            // pipeline confirms it from the data directory and rebuilds the stores.
            None => {
                let info = self.store.dir().read_snap(SnapName { index: meta.index, term: meta.term })?;
                (PersistedSnapshot::new(info), 0)
            }
        };
        let mut recorder = Recorder::new(&self.metrics);
        // Persisting built the lessor and key index the apply installs, so the apply does no
        // O(keys) work (the fs adapter's pre-built stores).
        let result = snapply_fs::apply_persisted(
            &mut self.node,
            &mut self.store,
            &mut self.net,
            &mut recorder,
            &metadata,
            persisted,
        );
        match result {
            Ok(Some((_, old_backend))) => {
                // etcd closes the old backend off the apply loop (closing it also makes its
                // last batched commits durable; the snapshot supersedes them anyway).
                tokio::task::spawn_blocking(move || drop(old_backend));
                self.node.backend().set_batched_commits(true);
                self.unsynced_entries = 0;
                self.snapshots_applied += 1;
                self.snapshot_index = self.snapshot_index.max(meta.index);
                self.last_restore = Some(RestoreReport {
                    index: meta.index,
                    term: meta.term,
                    image_bytes: usize::try_from(image_bytes).unwrap_or(usize::MAX),
                    phases: recorder.phases,
                    trace: recorder.trace,
                    applied_at: Instant::now(),
                });
                log::info!("member {:x} applied snapshot at index {} term {}", self.id, meta.index, meta.term);
                crate::auth::restored(&self.tokens, &self.view());
                self.publish_membership();
            }
            Ok(None) => {}
            Err(e) => {
                if self.node.unfinished().is_some() {
                    // Past the swap: complete the restore from the durable snapshot.
                    let mut recorder = Recorder::new(&self.metrics);
                    let ports = Ports { storage: &mut self.store, transport: &mut self.net, observer: &mut recorder };
                    pipeline::resume(&mut self.node, ports)?;
                    self.node.backend().set_batched_commits(true);
                }
                return Err(e.into());
            }
        }
        self.log.apply_snapshot(meta)
    }

    fn apply_entries(&mut self, entries: Vec<Entry>) -> Result<(), RaftError> {
        for e in entries {
            let result = match e.get_entry_type() {
                EntryType::EntryNormal if e.data.is_empty() => continue,
                EntryType::EntryNormal => match Command::decode(&e.data) {
                    Some(c) => {
                        let around = parse_context(&e.context)
                            .filter(|(origin, _)| *origin == self.id)
                            .and_then(|(_, seq)| self.around_apply.remove(&seq));
                        // etcd's apply-time auth check: a request checked when it was proposed
                        // is checked again against the auth state it is applied on (the same on
                        // every member); a refused one changes nothing.
                        let c = match crate::auth::unwrap_checked(&self.view(), c) {
                            Ok(c) => c,
                            Err(refused) => {
                                self.unsynced_entries += 1;
                                self.answer(&e, Err(refused.into()));
                                continue;
                            }
                        };
                        let after = around.map(|around| around(&self.view()));
                        let applied = c.with_request(|r| self.node.apply(e.index, e.term, r)).map_err(RaftError::from);
                        if applied.is_ok() {
                            self.lease_applied(&c);
                            self.member_changed(&c);
                        }
                        crate::auth::applied(&self.tokens, &c, e.index, applied.is_ok());
                        if let Some(after) = after {
                            after(&self.view());
                        }
                        applied
                    }
                    None => Err(RaftError::Decode { what: "a committed entry" }),
                },
                EntryType::EntryConfChange => self.apply_conf_change(&e),
                EntryType::EntryConfChangeV2 => Err(RaftError::Decode { what: "a joint conf change (unsupported)" }),
            };
            self.unsynced_entries += 1;
            let result = match result {
                // etcd panics when its backend cannot be written (a full disk): the member
                // stops here, and a restart replays the entry from the raft log.
                Err(e) if e.is_storage_failure() => return Err(e),
                r => r,
            };
            if let Err(e) = &result {
                log::warn!("member {:x}: entry not applied: {e}", self.id);
            }
            self.answer(&e, result);
        }
        Ok(())
    }

    /// Hands the outcome of applying `e` to the client that proposed it here, if any.
    fn answer(&mut self, e: &Entry, result: Result<i64, RaftError>) {
        if let Some((origin, seq)) = parse_context(&e.context)
            && origin == self.id
            && let Some(w) = self.waiters.remove(&seq)
        {
            let _ = w.send(result);
        }
    }

    /// etcd's `isLearnerReady`, on the leader: the learner's log matches at least 90% of the
    /// leader's. A follower cannot tell (it has no progress of its peers): it proposes, and the
    /// leader does not check a forwarded proposal.
    fn learner_ready(&self, id: u64) -> Result<(), RaftError> {
        let raft = &self.raw.raft;
        if raft.state != raft::StateRole::Leader {
            return Ok(());
        }
        // Not a learner raft-rs knows: the membership's checks answer (not found, not a learner).
        let Some(learner) = raft.prs().get(id).filter(|_| raft.prs().conf().learners().contains(&id)) else {
            return Ok(());
        };
        let learner = learner.matched;
        let leader = raft.prs().get(self.id).map_or(0, |p| p.matched);
        if (learner as f64) < (leader as f64) * LEARNER_READY {
            return Err(RaftError::LearnerNotReady { id, matched: learner, leader });
        }
        Ok(())
    }

    /// A committed conf change, in etcd's order (`applyConfChange`): the change is validated
    /// first (etcd's `ValidateConfigurationChange`: the core's own checks, on a copy of the
    /// membership); a refused one changes neither raft-rs's configuration nor the membership, and
    /// moves only the consistent index, as etcd applies an empty conf change instead. An
    /// accepted one is applied to the node with the conf state raft-rs will have, then to
    /// raft-rs, and the transport's peers follow.
    fn apply_conf_change(&mut self, e: &Entry) -> Result<i64, RaftError> {
        let cc = ConfChange::decode(&e.data[..]).map_err(|_| RaftError::Decode { what: "a conf change" })?;
        let id = cc.node_id;
        let info = match cc.get_change_type() {
            ConfChangeType::RemoveNode => None,
            _ if cc.context.is_empty() => None,
            _ => Some(MemberInfo::decode(&cc.context)),
        };
        let peers: Vec<&[u8]> = info.iter().flatten().flat_map(|i| i.peer_urls.iter()).map(|u| u.as_bytes()).collect();
        let clients: Vec<&[u8]> =
            info.iter().flatten().flat_map(|i| i.client_urls.iter()).map(|u| u.as_bytes()).collect();
        let name = info.iter().flatten().next().map_or(&[][..], |i| i.name.as_bytes());
        let request = match cc.get_change_type() {
            // An AddNode without a member (raft-rs makes a learner a voter): etcd's promotion.
            ConfChangeType::AddNode if cc.context.is_empty() => Request::MemberPromote { id },
            ConfChangeType::AddNode | ConfChangeType::AddLearnerNode => {
                if !matches!(info, Some(Some(_))) {
                    return Err(RaftError::Decode { what: "a member" });
                }
                Request::MemberAdd(snapply_core::store::NewMember {
                    id,
                    name,
                    peer_urls: &peers,
                    client_urls: &clients,
                    is_learner: cc.get_change_type() == ConfChangeType::AddLearnerNode,
                })
            }
            ConfChangeType::RemoveNode => Request::MemberRemove { id },
        };
        if e.index <= self.node.progress().applied_index {
            // Already in the backend (replayed after a restart): raft-rs only.
            let cs = self.raw.apply_conf_change(&cc)?;
            self.log.set_conf_state(cs)?;
            return Ok(self.node.stores().kv.current_revision());
        }
        if let Err(refused) = membership_verdict(&self.node, &request)? {
            log::warn!("member {:x} refused a configuration change for member {id:x}: {refused}", self.id);
            // The same checks refuse it on the node: a rejection moves the consistent index
            // (with the conf state unchanged), a local refusal (a full table) leaves the entry.
            return match self.node.apply(e.index, e.term, &request) {
                Err(e) => Err(e.into()),
                Ok(_) => Err(RaftError::Store(refused)),
            };
        }
        // The configuration raft-rs will have, worked out without changing it: raft-rs may
        // refuse the change (removing the last voter), and then nothing changes anywhere.
        let mut single = raft::prelude::ConfChangeSingle { node_id: id, ..Default::default() };
        single.set_change_type(cc.get_change_type());
        let (next, _) = raft::Changer::new(self.raw.raft.prs()).simple(&[single])?;
        let before = self.node.progress().conf_state.clone();
        self.node.set_conf_state(to_core_conf(&next.to_conf_state())?);
        let rev = match self.node.apply(e.index, e.term, &request) {
            Ok(rev) => rev,
            Err(err) => {
                self.node.set_conf_state(before);
                return Err(err.into());
            }
        };
        let cs = self.raw.apply_conf_change(&cc)?;
        self.log.set_conf_state(cs)?;
        match request {
            Request::MemberAdd(_) => self.net.add_peer(id, &peers)?,
            Request::MemberRemove { .. } => {
                self.net.remove_peer(id);
                if id == self.id {
                    self.removed = true;
                }
            }
            _ => {}
        }
        self.publish_membership();
        Ok(rev)
    }

    /// What an applied member update or published attributes change beyond the store: the
    /// transport dials a member's new peer URLs (etcd's `UpdateRaftAttributes` updates its
    /// transport's peer), and a member about to join is told the new names and URLs.
    fn member_changed(&mut self, command: &Command) {
        match command {
            Command::Apply(RequestBuf::MemberUpdate { id, peer_urls }) => {
                let urls: Vec<&[u8]> = peer_urls.iter().map(Vec::as_slice).collect();
                match self.net.add_peer(*id, &urls) {
                    Ok(()) => log::info!("member {:x} updated the peer URLs of member {id:x}", self.id),
                    // The store has them; the transport keeps dialing the old ones.
                    Err(e) => log::warn!("member {:x} cannot dial the new peer URLs of member {id:x}: {e}", self.id),
                }
            }
            Command::Apply(RequestBuf::MemberAttrSet { .. }) => {}
            _ => return,
        }
        self.publish_membership();
    }

    /// Hands the transport the cluster's id and members, which it tells a member about to join
    /// (etcd's `/members` on the peer URL).
    fn publish_membership(&self) {
        let members = self
            .node
            .stores()
            .membership
            .members()
            .iter()
            .map(|m| crate::membership::RemoteMember {
                id: m.id,
                name: String::from_utf8_lossy(&m.name).into_owned(),
                peer_urls: m.peer_urls.iter().map(|u| String::from_utf8_lossy(u).into_owned()).collect(),
                is_learner: m.is_learner,
            })
            .collect();
        let removed = self.node.stores().membership.removed().to_vec();
        self.net.set_membership(crate::membership::RemoteCluster { cluster_id: self.cluster_id, members }, removed);
    }
}

/// Whether `node`'s membership store takes `request` (etcd's `ValidateConfigurationChange`),
/// asked of a copy: a core node holding only `node`'s membership records and v2 store, so the
/// answer is the core's own, and `node` is untouched.
fn membership_verdict(node: &HostNode, request: &Request<'_>) -> Result<Result<(), StoreError>, RaftError> {
    use snapply_core::backend::{Bucket, ReadTxn as _, WriteTxn as _};
    let mut copy = snapply_core::mem::VecBackend::new();
    {
        let from = node.backend().read()?;
        let mut to = copy.write()?;
        for bucket in [Bucket::Members, Bucket::MembersRemoved, Bucket::Cluster] {
            let mut failed = None;
            from.scan(bucket, &[], &mut |k, v| match to.put(bucket, k, v) {
                Ok(()) => std::ops::ControlFlow::Continue(()),
                Err(e) => {
                    failed = Some(e);
                    std::ops::ControlFlow::Break(())
                }
            })?;
            if let Some(e) = failed {
                return Err(e.into());
            }
        }
        to.commit()?;
    }
    let mut v2 = Vec::new();
    node.v2_snapshot_data(&mut v2)?;
    let mut scratch = Node::<_, Growable>::open(*node.config(), copy, &v2)?;
    Ok(scratch.apply(1, 1, request).map(drop))
}

// The snapshot policy: when the member snapshots its backend, how the image is built and the
// raft log compacted (etcd's `triggerSnapshot`, `snapshot` and `purgeFile`).
//
// As etcd's, a snapshot the policy takes is not an image: every `--snapshot-count` entries the
// member makes its backend durable and compacts its raft log behind that point (keeping the
// catch-up entries). An image is built only when raft-rs asks for one for a lagging follower, of
// the live backend at the applied index of that moment (etcd 3.4 sends its live bbolt file,
// "merged" with the applied index's metadata): the follower has nothing older than it to replay,
// and a member that no follower needs a snapshot from never writes one.
impl Loop {
    /// Takes the policy's snapshot if one is due, and starts building an image if raft-rs asked
    /// for one for a lagging follower and none is being built.
    fn maybe_snapshot(&mut self) -> Result<(), RaftError> {
        let applied = self.node.progress().applied_index;
        if self.policy.due(applied, self.snapshot_index) {
            log::info!(
                "member {:x} triggering snapshot: applied index {applied}, snapshot index {}, snapshot count {}",
                self.id,
                self.snapshot_index,
                self.policy.count
            );
            // Not past an image being built: the follower it is for needs the entries after it.
            let compact_to = self.policy.compact_to(applied).map(|to| self.building.map_or(to, |b| to.min(b)));
            self.snapshot_log(applied, compact_to)?;
        }
        if self.building.is_some() {
            return Ok(());
        }
        // raft-rs asks again on the follower's next heartbeat response, and is told the
        // snapshot is temporarily unavailable until the build is done.
        if !self.log.take_request() {
            return Ok(());
        }
        let build = self.start_build()?;
        log::info!("member {:x} building a snapshot image at index {} for a follower", self.id, build.metadata.index);
        self.build_started = Some(Instant::now());
        let index = build.metadata.index;
        build.spawn(self.built.clone())?;
        self.building = Some(index);
        Ok(())
    }

    /// The policy's snapshot at `applied`: the backend is made durable (the log may drop only
    /// entries the backend holds durably: after a crash it comes back at its last sync, and the
    /// log must still reach from there), then the log is compacted to `compact_to`.
    fn snapshot_log(&mut self, applied: u64, compact_to: Option<u64>) -> Result<(), RaftError> {
        self.sync_backend()?;
        self.snapshot_index = self.snapshot_index.max(applied);
        if let Some(to) = compact_to
            && to >= self.log.first_index()
        {
            self.log.compact(to)?;
            log::info!(
                "member {:x} compacted Raft logs at index {to}: log holds entries {} to {}",
                self.id,
                self.log.first_index(),
                self.log.last_index()
            );
        }
        Ok(())
    }

    /// What a snapshot at the applied index is built from. The backend is synced first: the
    /// log is compacted up to the snapshot's index at most, and may drop only entries the
    /// backend holds durably (after a crash it comes back at its last sync, and the log must
    /// still reach from there).
    fn start_build(&mut self) -> Result<Build, RaftError> {
        self.sync_backend()?;
        let metadata = self.node.snapshot_metadata()?;
        let mut v2 = Vec::new();
        self.node.v2_snapshot_data(&mut v2)?;
        let view = self.node.backend().view();
        Ok(Build { metadata, v2, view, snap_dir: self.store.dir().snap_dir().to_path_buf() })
    }

    /// A build ended: offer the image to raft-rs and purge old images.
    fn snapshot_built(&mut self, image: Result<ImageFile, RaftError>) -> Result<(), RaftError> {
        self.building = None;
        match image {
            Ok(image) => {
                if let Some(started) = self.build_started.take() {
                    self.metrics.snap_save.observe(started.elapsed().as_secs_f64());
                }
                self.install_snapshot(&image)
            }
            Err(e) => {
                log::warn!("member {:x} failed to save snapshot: {e}", self.id);
                Ok(())
            }
        }
    }

    fn install_snapshot(&mut self, image: &ImageFile) -> Result<(), RaftError> {
        let index = image.metadata.index;
        log::info!("member {:x} saved snapshot at index {index} ({} bytes)", self.id, image.len);
        self.log.offer(image.raft_snapshot());
        for path in purge_images(self.store.dir().snap_dir(), self.policy.keep())? {
            log::info!("member {:x} purged snapshot image {}", self.id, path.display());
        }
        Ok(())
    }

    /// Takes a snapshot at once, on the loop, and compacts the whole log up to it.
    fn compact_log(&mut self) -> Result<u64, RaftError> {
        let started = Instant::now();
        let image = self.start_build()?.run()?;
        self.metrics.snap_save.observe(started.elapsed().as_secs_f64());
        let index = image.metadata.index;
        self.install_snapshot(&image)?;
        self.snapshot_log(index, Some(index))?;
        Ok(index)
    }
}
