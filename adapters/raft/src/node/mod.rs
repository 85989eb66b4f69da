//! A snapply node under raft-rs: the data directory, the raft log, the transport and the ready
//! loop, on a tokio task.
//!
//! This module starts a node ([`start`]) and holds its configuration and status; [`client`] is
//! the API a running node is talked to through, [`ready`] the loop that drives raft-rs and
//! applies what it commits ([`snapshots`]: its snapshot policy; [`leases`]: lease expiry), and
//! [`observer`] what the snapshot pipeline reports to.

mod client;
mod leases;
mod observer;
mod ready;
mod snapshots;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message as _;
use raft::RawNode;
use raft::prelude::{ConfChange, ConfChangeType, Entry, EntryType};
use snapply_core::collections::Growable;
use snapply_core::ports::{Ports, Transport};
use snapply_core::store::V2Deprecation;
use snapply_core::{Config, Node, pipeline};
use snapply_core::{Event, Phase};
use snapply_fs::{DataDir, FsSnapshotStore, RedbBackend};
use tokio::sync::{mpsc, oneshot};

use crate::codec::{Command, MemberInfo};
use crate::error::RaftError;
use crate::log::RaftLog;
use crate::metrics::Metrics;
use crate::policy::SnapshotPolicy;
use crate::read::Reads;
use crate::snapshot::{Inbound, to_raft_metadata};
use crate::transport::{MAX_SNAPSHOT_BYTES, Network};

pub use client::{Client, Consistency, NodeHandle};
pub(crate) use leases::{LeaseAnswer, LeaseAsk};
use observer::Recorder;
use ready::Loop;

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

/// What a [`Client`] asks of the node's loop.
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

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Control")
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::InitialCluster;

    fn member(name: &str, port: u16) -> MemberInfo {
        MemberInfo {
            name: name.into(),
            peer_urls: vec![format!("http://127.0.0.1:{port}")],
            client_urls: vec![format!("http://127.0.0.1:{}", port + 1)],
        }
    }

    fn config(tick_ms: u64, election_tick: usize) -> NodeConfig {
        let mut config = NodeConfig::new(1, PathBuf::from("unused"), Vec::new());
        config.tick = Duration::from_millis(tick_ms);
        config.election_tick = election_tick;
        config
    }

    #[test]
    fn a_proposal_context_round_trips() {
        for (origin, seq) in [(1, 1), (0x8e9e_05c5_2164_694d, 42), (u64::MAX, u64::MAX), (0, 0)] {
            let c = context(origin, seq);
            assert_eq!(c.len(), 16);
            assert_eq!(parse_context(&c), Some((origin, seq)));
        }
        // Origin first: two members' proposals with the same sequence number differ.
        assert_ne!(context(1, 7), context(2, 7));
    }

    #[test]
    fn a_short_context_is_not_a_proposal_of_this_crate() {
        // An entry a leader appends on its own (empty), or one too short to hold both numbers.
        for c in [&[][..], &[1; 7], &[1; 8], &[1; 15]] {
            assert_eq!(parse_context(c), None, "{c:?}");
        }
    }

    #[test]
    fn the_default_election_timeout_is_500_ms_and_its_minimum_lease_ttl_1_s() {
        let config = NodeConfig::new(1, PathBuf::from("unused"), Vec::new());
        assert_eq!(election_timeout(&config), Duration::from_millis(500));
        assert_eq!(min_lease_ttl(&config), 1);
        assert_eq!(request_timeout(&config), Duration::from_secs(6));
        let core = core_config(7, &config);
        assert_eq!((core.id, core.min_lease_ttl), (7, 1));
    }

    #[test]
    fn the_minimum_lease_ttl_is_one_and_a_half_election_timeouts_rounded_up() {
        // etcd's defaults: 100 ms ticks, 10 of them: 1.5 s, so 2 s.
        assert_eq!(election_timeout(&config(100, 10)), Duration::from_secs(1));
        assert_eq!(min_lease_ttl(&config(100, 10)), 2);
        // 3 s: 4.5 s, so 5 s; exactly 3 s: 3 s.
        assert_eq!(min_lease_ttl(&config(1000, 3)), 5);
        assert_eq!(min_lease_ttl(&config(1000, 2)), 3);
        // Never below 1, even without an election timeout.
        assert_eq!(min_lease_ttl(&config(0, 10)), 1);
        assert_eq!(min_lease_ttl(&config(100, 0)), 1);
    }

    #[test]
    fn a_huge_election_tick_saturates_instead_of_overflowing() {
        let config = config(1000, usize::MAX);
        assert_eq!(election_timeout(&config), Duration::from_secs(u64::from(u32::MAX)));
        assert!(min_lease_ttl(&config) > i64::from(u32::MAX));
        assert!(request_timeout(&config) > election_timeout(&config));
    }

    #[test]
    fn bootstrap_commits_one_add_node_per_initial_member_at_term_1() {
        let initial = [(0x10, member("a", 2380)), (0x20, member("b", 2390))];
        let (cs, entries) = bootstrap(&initial);
        assert_eq!(cs.voters, vec![0x10, 0x20]);
        assert!(cs.learners.is_empty());
        assert_eq!(entries.len(), 2);
        for (i, (e, (id, info))) in entries.iter().zip(&initial).enumerate() {
            assert_eq!((e.index, e.term), (i as u64 + 1, 1));
            assert_eq!(e.get_entry_type(), EntryType::EntryConfChange);
            let cc = ConfChange::decode(&e.data[..]).expect("a conf change");
            assert_eq!(cc.node_id, *id);
            assert_eq!(cc.get_change_type(), ConfChangeType::AddNode);
            assert_eq!(MemberInfo::decode(&cc.context).as_ref(), Some(info));
        }
    }

    #[test]
    fn a_member_joining_an_existing_cluster_bootstraps_nothing() {
        let (cs, entries) = bootstrap(&[]);
        assert!(cs.voters.is_empty() && entries.is_empty());
    }

    #[test]
    fn init_raft_log_writes_the_ids_once() {
        let dir = tempfile::tempdir().expect("a temp dir");
        assert_eq!(ids(dir.path()).expect("no log yet"), None);
        let cluster =
            InitialCluster::parse("a=http://127.0.0.1:2380,b=http://127.0.0.1:2390", "token").expect("a valid cluster");
        let member = cluster.members()[1].0;
        init_raft_log(dir.path(), &cluster, member).expect("a new log");
        assert_eq!(ids(dir.path()).expect("the log"), Some((member, cluster.id())));
        let again = init_raft_log(dir.path(), &cluster, member);
        assert!(matches!(&again, Err(RaftError::Config { what }) if what.contains("exists already")), "{again:?}");
        assert_eq!(ids(dir.path()).expect("the log"), Some((member, cluster.id())));
    }

    #[test]
    fn a_member_id_of_0_is_refused_before_anything_is_opened() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a loopback port");
        let config = NodeConfig::new(0, dir.path().join("data"), Vec::new());
        let started = start(config, listener);
        assert!(matches!(&started, Err(RaftError::Config { what }) if what.contains("must not be 0")), "{started:?}");
        assert!(!dir.path().join("data").exists());
    }
}
