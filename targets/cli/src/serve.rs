//! `snapply serve`: one member of a raft-rs cluster, with etcd's flags; its client URL serves
//! etcd's v3 gRPC API, `/metrics` and `/health` (see [`crate::api`]), so that etcdctl and etcd's
//! client libraries are its clients.
//!
//! Member ids are etcd's (from the peer URLs and `--initial-cluster-token`); a member started
//! once is that member again (its raft log keeps its ids); a member started with
//! `--initial-cluster-state existing` asks the other members for the cluster and is the one
//! `etcdctl member add` added with its peer URLs.
//!
//! Reads are linearizable by default, as etcd's range: on any member they first obtain a read
//! index from the leader (raft's ReadIndex; concurrent reads share one round) and wait until this
//! member has applied up to it, so they see every write acknowledged before they were asked.
//! Without a leader they fail after etcd's request timeout (5 s plus two election timeouts) with
//! `etcdserver: request timed out`. Serializable reads (etcdctl's `--consistency=s`) answer at
//! once from this member's local state, without a leader, and may be stale.
//!
//! SIGINT and SIGTERM stop the member cleanly (`received signal; shutting down`, as etcd logs).
//! A member whose raft log or backend cannot be written (a full disk) logs why and exits 5, as
//! etcd exits on a fatal storage error; a data directory another member holds gives exit 4.

use std::error::Error;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use snapply_raft::{
    Client, InitialCluster, MAX_SNAPSHOT_BYTES, MemberInfo, NodeConfig, RaftError, SnapshotPolicy, peer_addr,
};

use crate::common::{Failure, Log, LogArgs, exit};

/// Options of `snapply serve`, named as etcd's.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// This member's name; it must appear in --initial-cluster.
    #[arg(long)]
    name: String,
    /// The data directory (created if missing).
    #[arg(long)]
    data_dir: PathBuf,
    /// Every member as name=peer-URL, comma-separated: infra1=http://127.0.0.1:2380,... (a name
    /// given twice has two peer URLs).
    #[arg(long)]
    initial_cluster: String,
    /// `new` to start a cluster, `existing` to join one (the member must first be added).
    #[arg(long, default_value = "new", value_parser = ["new", "existing"])]
    initial_cluster_state: String,
    /// The new cluster's token: with the peer URLs, it makes every member id (etcd's
    /// `computeMemberId`) and so the cluster id; two clusters started from the same
    /// --initial-cluster need different tokens.
    #[arg(long, default_value = snapply_raft::DEFAULT_CLUSTER_TOKEN)]
    initial_cluster_token: String,
    /// This member's peer URLs, comma-separated: they must be its URLs in --initial-cluster
    /// (default: those).
    #[arg(long, value_delimiter = ',')]
    initial_advertise_peer_urls: Vec<String>,
    /// Where to listen for peers (default: the first advertised peer URL).
    #[arg(long)]
    listen_peer_urls: Option<String>,
    /// Where to listen for clients.
    #[arg(long, default_value = "http://127.0.0.1:2379")]
    listen_client_urls: String,
    /// More URLs to serve `/metrics` and `/health` on (HTTP/1.1), comma-separated, beside the
    /// client URL.
    #[arg(long, value_delimiter = ',')]
    listen_metrics_urls: Vec<String>,
    /// This member's client URLs as other members and `member list` show them, comma-separated
    /// (default: --listen-client-urls).
    #[arg(long, value_delimiter = ',')]
    advertise_client_urls: Vec<String>,
    /// The largest client request, in bytes (its raft entry): a larger one is refused with
    /// `etcdserver: request is too large`; the gRPC server takes messages up to this plus 512 KiB.
    #[arg(long, default_value_t = snapply_raft::MAX_REQUEST_BYTES)]
    max_request_bytes: usize,
    /// Most compares, and most operations of each branch, of a transaction.
    #[arg(long, default_value_t = crate::api::Limits::default().max_txn_ops)]
    max_txn_ops: usize,
    #[command(flatten)]
    snapshots: SnapshotArgs,
    #[command(flatten)]
    auth: AuthArgs,
    #[command(flatten)]
    log: LogArgs,
}

/// Auth options, named as etcd's.
#[derive(Debug, clap::Args)]
struct AuthArgs {
    /// The cost of the bcrypt hashes of new passwords (4 to 31).
    #[arg(long, default_value_t = snapply_raft::DEFAULT_BCRYPT_COST, value_parser = clap::value_parser!(u32).range(4..=31))]
    bcrypt_cost: u32,
    /// Seconds a simple auth token lives unused.
    #[arg(long, default_value_t = snapply_raft::DEFAULT_TOKEN_TTL.as_secs(), value_parser = clap::value_parser!(u64).range(1..))]
    auth_token_ttl: u64,
}

/// When a member snapshots and how much it keeps, named as etcd's flags.
#[derive(Debug, clap::Args)]
struct SnapshotArgs {
    /// Entries applied since the last snapshot that trigger the next one: the member makes its
    /// backend durable and compacts its raft log (0: never). Images are built only for a
    /// follower that needs one.
    #[arg(long, default_value_t = SnapshotPolicy::default().count)]
    snapshot_count: u64,
    /// Entries kept in the raft log behind a snapshot, for followers only a little behind.
    #[arg(long, default_value_t = SnapshotPolicy::default().catchup_entries)]
    snapshot_catchup_entries: u64,
    /// Snapshot images (built for lagging followers) kept in member/snap; older ones are purged
    /// (at least the newest is kept).
    #[arg(long, default_value_t = SnapshotPolicy::default().max_snapshots)]
    max_snapshots: usize,
    /// The largest snapshot image this member takes from a leader, in bytes; a larger one is
    /// refused before any of it is written.
    #[arg(long, default_value_t = MAX_SNAPSHOT_BYTES)]
    max_snapshot_bytes: u64,
}

impl SnapshotArgs {
    fn apply(&self, config: &mut NodeConfig) {
        config.snapshot = SnapshotPolicy {
            count: self.snapshot_count,
            catchup_entries: self.snapshot_catchup_entries,
            max_snapshots: self.max_snapshots,
        };
        config.max_snapshot_bytes = self.max_snapshot_bytes;
    }
}

/// The member's own log lines (snapshots taken, sent, received, applied; raft log compactions)
/// in the command's log format: etcd's messages, from the raft and fs adapters' `log` records.
struct MemberLog(Log);

impl log::Log for MemberLog {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::Level::Info && metadata.target().starts_with("snapply")
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let msg = record.args().to_string();
        match record.level() {
            log::Level::Error | log::Level::Warn => self.0.warn(&msg, &[]),
            _ => self.0.info(&msg, &[]),
        }
    }

    fn flush(&self) {}
}

fn route_member_logs(log: Log) {
    // Set once per process; a second `serve` in the same process keeps the first logger.
    if log::set_boxed_logger(Box::new(MemberLog(log))).is_ok() {
        log::set_max_level(log::LevelFilter::Info);
    }
}

pub fn run(args: &Args) -> Result<ExitCode, Box<dyn Error>> {
    let log = Log::new(args.log, "snapply/serve");
    log.finish(serve(&log, args))
}

fn serve(log: &Log, args: &Args) -> Result<(), Failure> {
    let usage = |message: String| Failure::new(exit::USAGE, message);
    let cluster = InitialCluster::parse(&args.initial_cluster, &args.initial_cluster_token).map_err(usage)?;
    for url in &args.initial_advertise_peer_urls {
        snapply_raft::check_peer_url(url).map_err(|e| usage(format!("--initial-advertise-peer-urls: {e}")))?;
    }
    let (id, me) = cluster.member(&args.name, &args.initial_advertise_peer_urls).map_err(usage)?;
    let listen_peer = args.listen_peer_urls.as_deref().or(me.peer_urls.first().map(String::as_str)).unwrap_or_default();
    let peer = peer_addr(listen_peer)
        .ok_or_else(|| usage(format!("--listen-peer-urls `{listen_peer}` is not http://IP:PORT")))?;
    let id = *id;
    let client = peer_addr(&args.listen_client_urls)
        .ok_or_else(|| usage(format!("--listen-client-urls `{}` is not http://IP:PORT", args.listen_client_urls)))?;
    let busy = |what: &str, addr, e: std::io::Error| {
        Failure::new(exit::IO, format!("cannot listen for {what} on {addr}: {e} (is another member running there?)"))
    };
    let peer_listener = TcpListener::bind(peer).map_err(|e| busy("peers", peer, e))?;
    let client_listener = TcpListener::bind(client).map_err(|e| busy("clients", client, e))?;
    let failed = |what: &str, e: &dyn std::fmt::Display| Failure::new(exit::IO, format!("{what}: {e}"));
    client_listener.set_nonblocking(true).map_err(|e| failed("configuring the client listener", &e))?;
    let mut metrics_listeners = Vec::new();
    for url in &args.listen_metrics_urls {
        let addr =
            peer_addr(url).ok_or_else(|| usage(format!("--listen-metrics-urls `{url}` is not http://IP:PORT")))?;
        let listener = TcpListener::bind(addr).map_err(|e| busy("metrics", addr, e))?;
        listener.set_nonblocking(true).map_err(|e| failed("configuring the metrics listener", &e))?;
        metrics_listeners.push(listener);
    }
    // A member that started once is that member again (etcd reads its ids from its WAL).
    let kept = snapply_raft::ids(&args.data_dir).map_err(|e| start_failure(id, &args.data_dir, &e))?;
    route_member_logs(*log);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| failed("starting the runtime", &e))?;
    let (cluster, my_urls) = (&cluster, me.peer_urls.clone());
    runtime.block_on(async move {
        let mut config = match kept {
            Some((member, cluster_id)) if member != 0 => {
                let mut config = NodeConfig::new(member, args.data_dir.clone(), cluster.members().to_vec());
                config.cluster_id = cluster_id;
                config
            }
            _ if args.initial_cluster_state == "existing" => join(args, cluster, id, &my_urls).await?,
            _ => NodeConfig::new(id, args.data_dir.clone(), cluster.members().to_vec()),
        };
        args.snapshots.apply(&mut config);
        config.auth_token_ttl = Duration::from_secs(args.auth.auth_token_ttl);
        config.max_request_bytes = args.max_request_bytes;
        let id = config.id;
        let mut node = snapply_raft::start(config, peer_listener).map_err(|e| start_failure(id, &args.data_dir, &e))?;
        let clients =
            tokio::net::TcpListener::from_std(client_listener).map_err(|e| failed("listening for clients", &e))?;
        log.info(
            "serving",
            &[
                ("member-id", format!("{id:016x}").into()),
                ("cluster-id", format!("{:016x}", node.client().cluster_id()).into()),
                ("name", args.name.clone().into()),
                ("listen-peer-url", peer.to_string().into()),
                ("listen-client-url", client.to_string().into()),
                ("data-dir", args.data_dir.display().to_string().into()),
            ],
        );
        // The client URL: etcd's gRPC API (HTTP/2), `/metrics` and `/health` (HTTP/1).
        let api = node.client();
        let db_path = args.data_dir.join("member").join("db");
        let client_urls = if args.advertise_client_urls.is_empty() {
            vec![args.listen_client_urls.clone()]
        } else {
            args.advertise_client_urls.clone()
        };
        let limits = crate::api::Limits { max_request_bytes: args.max_request_bytes, max_txn_ops: args.max_txn_ops };
        // etcd's `publish`: the member's name and client URLs go through raft once it started,
        // retried until applied, so every member lists them.
        let publisher = tokio::spawn(publish(api.clone(), args.name.clone(), client_urls.clone()));
        let member = crate::api::Member {
            client: api.clone(),
            db_path,
            client_urls,
            name: args.name.clone(),
            limits,
            bcrypt_cost: args.auth.bcrypt_cost,
        };
        for listener in metrics_listeners {
            let listener =
                tokio::net::TcpListener::from_std(listener).map_err(|e| failed("listening for metrics", &e))?;
            tokio::spawn(crate::api::serve_metrics(listener, member.clone()));
        }
        let accept = crate::api::serve(clients, member);
        tokio::select! {
            stopped = accept => if let Err(e) = stopped { log.warn("stopped serving clients", &[("error", e.into())]) },
            signal = shutdown_signal() => {
                let signal = signal.map_err(|e| failed("listening for signals", &e))?;
                log.info("received signal; shutting down", &[("signal", signal.into())]);
            }
            e = node.failed() => {
                if matches!(e, RaftError::Removed) {
                    // etcd stops and exits 0 once it applied its own removal.
                    log.warn("the member has been permanently removed from the cluster", &[("member-id", format!("{id:016x}").into())]);
                    log.warn("the data-dir used by this member must be removed", &[("data-dir", args.data_dir.display().to_string().into())]);
                    return Ok(());
                }
                return Err(node_failure(id, &e));
            }
        }
        publisher.abort();
        node.stop().await.map_err(|e| failed("stopping the member", &e))?;
        log.info("stopped", &[("member-id", format!("{id:016x}").into())]);
        Ok(())
    })
}

/// The configuration of a member joining an existing cluster (`--initial-cluster-state
/// existing`): it asks the other members of `--initial-cluster` for the cluster (etcd's
/// `GetClusterFromRemotePeers`) and is the member the cluster has with its peer URLs, which
/// `etcdctl member add` added (etcd's `ValidateClusterAndAssignIDs`).
async fn join(args: &Args, cluster: &InitialCluster, me: u64, peer_urls: &[String]) -> Result<NodeConfig, Failure> {
    let others: Vec<String> =
        cluster.members().iter().filter(|(id, _)| *id != me).flat_map(|(_, m)| m.peer_urls.clone()).collect();
    // The first member that answers may not have applied the addition yet: the first answer
    // that has this member wins.
    let mut remote = None;
    for url in &others {
        if let Ok(cluster) = snapply_raft::fetch_cluster(std::slice::from_ref(url)).await {
            let found = cluster.member_with(peer_urls).is_some();
            remote = Some(cluster);
            if found {
                break;
            }
        }
    }
    let remote = match remote {
        Some(r) => r,
        // None answered: ask them all again for the reasons.
        None => snapply_raft::fetch_cluster(&others).await.map_err(|e| Failure::new(exit::IO, e.to_string()))?,
    };
    let Some(member) = remote.member_with(peer_urls) else {
        return Err(Failure::new(
            exit::USAGE,
            format!(
                "cluster {:016x} has no member with peer URLs {}: add it first (etcdctl member add {} --peer-urls={})",
                remote.cluster_id,
                peer_urls.join(","),
                args.name,
                peer_urls.join(",")
            ),
        ));
    };
    let members = remote
        .members
        .iter()
        .map(|m| {
            let info = MemberInfo { name: m.name.clone(), peer_urls: m.peer_urls.clone(), client_urls: Vec::new() };
            (m.id, info)
        })
        .collect();
    let mut config = NodeConfig::new(member.id, args.data_dir.clone(), members);
    config.join_existing = true;
    config.cluster_id = remote.cluster_id;
    Ok(config)
}

// --- Signals and the member's end. ---

/// Waits for SIGINT or SIGTERM (etcd's `osutil.HandleInterrupts`) and names it as Go does.
async fn shutdown_signal() -> std::io::Result<&'static str> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(tokio::select! {
        _ = interrupt.recv() => "interrupt",
        _ = terminate.recv() => "terminated",
    })
}

/// Whether `e` says that another process holds one of the member's files open.
fn in_use(e: &RaftError) -> bool {
    let redb = match e {
        RaftError::Fs(snapply_fs::FsError::Db { source, .. }) => source.as_ref(),
        RaftError::Log { source, .. } => source.as_ref(),
        _ => return false,
    };
    matches!(redb, redb::Error::DatabaseAlreadyOpen)
}

/// The member could not start: its data directory in use is exit 4, the rest is I/O.
fn start_failure(id: u64, data_dir: &std::path::Path, e: &RaftError) -> Failure {
    if in_use(e) {
        return Failure::new(
            exit::DATA_DIR,
            format!(
                "data directory {} is in use by another process: stop the member using it first",
                data_dir.display()
            ),
        );
    }
    Failure::new(exit::IO, format!("starting member {id:016x} on {}: {e}", data_dir.display()))
}

/// The member's loop stopped on its own: a storage failure (a full disk) is I/O, anything else
/// unexpected.
fn node_failure(id: u64, e: &RaftError) -> Failure {
    let code = if e.is_storage_failure() { exit::IO } else { exit::FAILED };
    Failure::new(code, format!("member {id:016x} stopped: {e}"))
}

/// Publishes the member's name and client URLs through raft (etcd's `EtcdServer.publish`),
/// again after a failure (no leader yet, a timeout), until it is applied.
async fn publish(api: Client, name: String, client_urls: Vec<String>) {
    for attempt in 0u64.. {
        match api.publish_attributes(&name, &client_urls).await {
            Ok(()) => {
                log::info!("published local member to cluster through raft: name {name}, client URLs {client_urls:?}");
                return;
            }
            Err(RaftError::Stopped) => return,
            // The first failure and one in ten after it: a member without a leader would
            // otherwise log twice a second.
            Err(e) if attempt % 10 == 0 => log::warn!("failed to publish local member to cluster through raft: {e}"),
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
