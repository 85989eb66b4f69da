//! The peer transport: raft messages over TCP on loopback (etcd's `rafthttp`, without HTTP).
//!
//! Every frame is a big-endian `u32` payload length, a kind byte and the payload. A raft message
//! is one frame (prost-encoded). A snapshot message carries only the snapshot's metadata; its
//! image goes out of band, as etcd's snapshot sender streams the backend over a connection of
//! its own: a new connection per snapshot, a header frame (the image's length, then the
//! message), the image read from the leader's image file in chunks of [`CHUNK`] bytes, an end
//! frame with the length again. The receiver persists the image while it arrives (the fs
//! adapter's streaming persist, fed through a bounded channel, so the connection is read only as
//! fast as the disk takes it and neither side holds the image whole), steps the message into
//! raft-rs only once the snapshot is durable, and answers one byte: 1 once it has, 0 if the
//! transfer or the persist failed (nothing of it is left), 2 if the image is larger than the
//! member takes. The sender reports the outcome to raft-rs (`report_snapshot`), as etcd's does
//! after its POST returns; raft-rs sends the snapshot again after a failure.
//!
//! A message from a member the receiver's membership lists as removed is answered with a
//! `removed` frame on its connection, which the sender's writer reads (etcd's `410 Gone`): a
//! member cut off while it was removed learns it so, and stops.
//!
//! Each peer has one writer task and one connection; the peer table is what the pipeline's
//! `PeersUpdated` phase rewrites ([`Transport::remove_all_peers`], [`Transport::add_peer`]), so
//! after a snapshot the node talks to exactly the members the snapshot lists.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use prost::Message as _;
use raft::prelude::{Message, MessageType};
use snapply_core::ports::{PortError, PortErrorKind, Transport};
use snapply_core::store::MemberId;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use crate::error::RaftError;
use crate::membership::RemoteCluster;
use crate::metrics::Metrics;
use crate::node::{LeaseAnswer, LeaseAsk};
use crate::snapshot::{ChunkSource, Inbound, Piece, Received, image_path, to_core_metadata};

/// Bytes of image per chunk frame.
pub const CHUNK: usize = 64 * 1024;
/// Largest frame a peer may send but a chunk: a raft message of entries (raft-rs is configured
/// for at most 1 MiB of entries per message) with room to spare.
const MAX_FRAME: usize = 16 * 1024 * 1024;
/// Largest snapshot image a member takes unless configured otherwise.
pub const MAX_SNAPSHOT_BYTES: u64 = 8 * 1024 * 1024 * 1024;
/// How long a sender waits for a connection, and for the receiver's answer to a snapshot once
/// the whole image is sent (the receiver commits and checks it meanwhile).
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
const SNAPSHOT_ACK_TIMEOUT: Duration = Duration::from_secs(300);
/// Image pieces queued between a snapshot connection and the thread persisting it.
const PIECES: usize = 16;
/// The receiver's answers to a snapshot.
const ANSWER_FAILED: u8 = 0;
const ANSWER_APPLIED: u8 = 1;
const ANSWER_TOO_LARGE: u8 = 2;

const KIND_MESSAGE: u8 = 0;
const KIND_SNAPSHOT_HEAD: u8 = 1;
const KIND_CHUNK: u8 = 2;
const KIND_SNAPSHOT_END: u8 = 3;
/// A member about to join asks for the cluster (etcd's `GET /members`); the answer is one
/// `KIND_CLUSTER` frame (postcard of [`RemoteCluster`], empty while this member knows none).
const KIND_CLUSTER_REQUEST: u8 = 4;
const KIND_CLUSTER: u8 = 5;
/// Sent back on a peer's connection when its messages come from a removed member (etcd's peer
/// handler answers it `410 Gone`): the member stops, as etcd's does on that answer. A removed
/// member may never apply its own removal: the others stop sending to it once they applied it.
const KIND_REMOVED: u8 = 6;
/// A lease request a follower forwards to the leader (etcd's `/leases` and `/leases/internal`):
/// postcard of the request; the answer is one `KIND_LEASE_ANSWER` frame (postcard of the
/// answer), and the connection ends.
const KIND_LEASE_REQUEST: u8 = 7;
const KIND_LEASE_ANSWER: u8 = 8;
/// How long a forwarded lease request waits for the leader's loop, and for its answer.
const LEASE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a member about to join waits for each peer's answer.
const CLUSTER_TIMEOUT: Duration = Duration::from_secs(2);

/// What the transport tells the node's loop, which tells raft-rs.
#[derive(Debug)]
pub(crate) enum Report {
    /// A message to this peer could not be sent (raft-rs `report_unreachable`).
    Unreachable(u64),
    /// A peer told this member it was removed from the cluster.
    Removed(u64),
    /// A snapshot to this peer was delivered (`true`) or not (raft-rs `report_snapshot`).
    Snapshot { to: u64, delivered: bool },
    /// A peer forwarded a lease request, for this member's loop to answer.
    Lease(LeaseAsk, tokio::sync::oneshot::Sender<LeaseAnswer>),
}

struct Peer {
    urls: Vec<String>,
    tx: mpsc::UnboundedSender<Message>,
    task: AbortHandle,
}

struct Inner {
    id: u64,
    peers: Mutex<BTreeMap<u64, Peer>>,
    isolated: AtomicBool,
    reports: mpsc::UnboundedSender<Report>,
    tasks: Mutex<Vec<AbortHandle>>,
    /// Where snapshots arriving from the leader are persisted.
    inbound: Inbound,
    /// What a member about to join is told: the cluster as this member's state has it.
    membership: Mutex<Option<RemoteCluster>>,
    /// Members removed from the cluster, whose messages are answered with `KIND_REMOVED`.
    removed: Mutex<Vec<u64>>,
    metrics: Arc<Metrics>,
}

/// A node's side of the peer network: its listener, its peers and their writer tasks.
#[derive(Clone)]
pub struct Network {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Network").field("id", &self.inner.id).field("peers", &self.peers()).finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The socket address of a peer URL (`http://127.0.0.1:2380`, or a bare `127.0.0.1:2380`).
pub fn peer_addr(url: &str) -> Option<SocketAddr> {
    let rest = url.strip_prefix("http://").or_else(|| url.strip_prefix("https://")).unwrap_or(url);
    rest.trim_end_matches('/').parse().ok()
}

impl Network {
    /// Starts accepting peers on `listener`; messages for this node go to `inbox`.
    pub(crate) fn start(
        id: u64,
        listener: TcpListener,
        inbox: mpsc::UnboundedSender<Message>,
        reports: mpsc::UnboundedSender<Report>,
        inbound: Inbound,
        metrics: Arc<Metrics>,
    ) -> Self {
        let inner = Arc::new(Inner {
            id,
            peers: Mutex::default(),
            isolated: AtomicBool::new(false),
            reports,
            tasks: Mutex::default(),
            inbound,
            membership: Mutex::default(),
            removed: Mutex::default(),
            metrics,
        });
        let net = Network { inner };
        let accepting = net.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let conn = accepting.clone();
                let inbox = inbox.clone();
                let handle = tokio::spawn(async move {
                    if let Err(e) = conn.receive(stream, inbox).await {
                        log::debug!("peer connection to {:x} closed: {e}", conn.inner.id);
                    }
                });
                lock(&accepting.inner.tasks).push(handle.abort_handle());
            }
        });
        lock(&net.inner.tasks).push(task.abort_handle());
        net
    }

    /// Ids of the peers this node talks to, in order.
    pub fn peers(&self) -> Vec<u64> {
        lock(&self.inner.peers).keys().copied().collect()
    }

    /// Drops every message to and from this node while `on` (a network partition, for tests
    /// and the demo).
    pub fn set_isolated(&self, on: bool) {
        self.inner.isolated.store(on, Ordering::SeqCst);
    }

    fn isolated(&self) -> bool {
        self.inner.isolated.load(Ordering::SeqCst)
    }

    /// Whether this node is cut off the network ([`Network::set_isolated`]).
    pub(crate) fn is_isolated(&self) -> bool {
        self.isolated()
    }

    /// Hands `messages` to their peers' writer tasks.
    pub(crate) fn send(&self, messages: Vec<Message>) {
        if self.isolated() {
            return;
        }
        let peers = lock(&self.inner.peers);
        for m in messages {
            let to = m.to;
            let sent = peers.get(&to).is_some_and(|p| p.tx.send(m).is_ok());
            if !sent {
                let _ = self.inner.reports.send(Report::Unreachable(to));
            }
        }
    }

    /// Sets what a member about to join is told about the cluster.
    pub(crate) fn set_membership(&self, cluster: RemoteCluster, removed: Vec<u64>) {
        *lock(&self.inner.membership) = Some(cluster);
        *lock(&self.inner.removed) = removed;
    }

    /// Removes one peer (a member removed by a conf change).
    pub(crate) fn remove_peer(&self, id: u64) {
        if let Some(p) = lock(&self.inner.peers).remove(&id) {
            p.task.abort();
        }
    }

    /// Stops every task of this network: the listener, its connections and the writers.
    pub(crate) fn shutdown(&self) {
        for p in std::mem::take(&mut *lock(&self.inner.peers)).into_values() {
            p.task.abort();
        }
        for t in std::mem::take(&mut *lock(&self.inner.tasks)) {
            t.abort();
        }
    }

    async fn receive(&self, mut stream: TcpStream, inbox: mpsc::UnboundedSender<Message>) -> std::io::Result<()> {
        stream.set_nodelay(true)?;
        let mut buf = Vec::new();
        loop {
            let Some(kind) = read_frame(&mut stream, &mut buf).await? else {
                return Ok(());
            };
            match kind {
                KIND_MESSAGE => {
                    let msg = Message::decode(&buf[..]).map_err(|_| invalid("a raft message does not decode"))?;
                    if self.isolated() {
                        continue;
                    }
                    if lock(&self.inner.removed).contains(&msg.from) {
                        log::warn!("member {:x} rejected a message from removed member {:x}", self.inner.id, msg.from);
                        write_frame(&mut stream, KIND_REMOVED, &self.inner.id.to_be_bytes()).await?;
                        return Ok(());
                    }
                    let _ = inbox.send(msg);
                }
                KIND_CLUSTER_REQUEST => {
                    let answer = lock(&self.inner.membership)
                        .as_ref()
                        .filter(|_| !self.isolated())
                        .and_then(|c| postcard::to_allocvec(c).ok())
                        .unwrap_or_default();
                    write_frame(&mut stream, KIND_CLUSTER, &answer).await?;
                    return Ok(());
                }
                KIND_LEASE_REQUEST => {
                    let ask: LeaseAsk =
                        postcard::from_bytes(&buf).map_err(|_| invalid("a lease request does not decode"))?;
                    if self.isolated() {
                        return Ok(());
                    }
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    let _ = self.inner.reports.send(Report::Lease(ask, tx));
                    let answer = match tokio::time::timeout(LEASE_TIMEOUT, rx).await {
                        Ok(Ok(answer)) => answer,
                        // The loop is busy or gone: the asker tries again.
                        _ => LeaseAnswer::NotLeader,
                    };
                    let answer =
                        postcard::to_allocvec(&answer).map_err(|_| invalid("a lease answer does not encode"))?;
                    write_frame(&mut stream, KIND_LEASE_ANSWER, &answer).await?;
                    return Ok(());
                }
                KIND_SNAPSHOT_HEAD => {
                    // A snapshot connection carries one snapshot and ends.
                    let answer = self.receive_snapshot(&mut stream, &mut buf, &inbox).await;
                    stream.write_all(&[answer]).await?;
                    return Ok(());
                }
                _ => return Err(invalid("unknown frame kind")),
            }
        }
    }
}

impl Network {
    /// Receives one snapshot on its connection (the header frame is in `buf`) and persists it
    /// as it arrives; once durable, hands the message to the node. Returns the answer for the
    /// sender.
    async fn receive_snapshot(
        &self,
        stream: &mut TcpStream,
        buf: &mut Vec<u8>,
        inbox: &mpsc::UnboundedSender<Message>,
    ) -> u8 {
        let id = self.inner.id;
        let inbound = &self.inner.inbound;
        let (Some(len), Some(message)) = (buf.get(..8), buf.get(8..)) else {
            log::warn!("member {id:x}: a snapshot header is truncated");
            return ANSWER_FAILED;
        };
        let declared = u64::from_be_bytes(len.try_into().unwrap_or_default());
        let Ok(msg) = Message::decode(message) else {
            log::warn!("member {id:x}: a snapshot header does not decode");
            return ANSWER_FAILED;
        };
        if declared > inbound.max_bytes {
            let refused = RaftError::SnapshotTooLarge { size: declared, limit: inbound.max_bytes };
            log::warn!("member {id:x}: refused a snapshot from {:x}: {refused}", msg.from);
            return ANSWER_TOO_LARGE;
        }
        if self.isolated() {
            return ANSWER_FAILED;
        }
        let metadata = match to_core_metadata(msg.get_snapshot().get_metadata()) {
            Ok(m) => m,
            Err(e) => {
                log::warn!("member {id:x}: a snapshot's metadata is not usable: {e}");
                return ANSWER_FAILED;
            }
        };
        let (index, term) = (metadata.index, metadata.term);
        log::info!(
            "member {id:x} receiving database snapshot from {:x} at index {index} term {term} ({declared} bytes)",
            msg.from
        );
        let started = std::time::Instant::now();
        self.inner.metrics.receiving(msg.from);
        let (tx, rx) = mpsc::channel(PIECES);
        let persisting = {
            let (dir, config) = (inbound.dir.clone(), inbound.config);
            tokio::task::spawn_blocking(move || {
                snapply_fs::persist_stream_for_apply(&dir, &metadata, ChunkSource::new(rx), &config)
            })
        };
        let received = self.stream_pieces(stream, buf, declared, tx).await;
        // The persist ends on its own: at the end piece, or with an error when the channel
        // closed early (then it removed what it wrote).
        let persisted = persisting.await;
        let ok = matches!((&received, &persisted), (Ok(_), Ok(Ok(_))));
        self.inner.metrics.received(msg.from, ok, started.elapsed());
        match (received, persisted) {
            (Ok(bytes), Ok(Ok(persisted))) => {
                log::info!(
                    "member {id:x} received and saved database snapshot at index {index} term {term} ({bytes} bytes)"
                );
                inbound.put(index, term, Received { persisted, bytes });
                if !self.isolated() && inbox.send(msg).is_ok() { ANSWER_APPLIED } else { ANSWER_FAILED }
            }
            (Err(e), _) => {
                log::warn!("member {id:x}: the snapshot transfer at index {index} broke off: {e}");
                ANSWER_FAILED
            }
            (_, Ok(Err(e))) => {
                log::warn!("member {id:x}: persisting the snapshot at index {index} failed: {e}");
                ANSWER_FAILED
            }
            (_, Err(_)) => {
                log::warn!("member {id:x}: persisting the snapshot at index {index} stopped");
                ANSWER_FAILED
            }
        }
    }

    /// Reads the chunk frames of a snapshot into `tx` up to its end frame; returns the bytes
    /// received. On any error `tx` is dropped without the end piece.
    async fn stream_pieces(
        &self,
        stream: &mut TcpStream,
        buf: &mut Vec<u8>,
        declared: u64,
        tx: mpsc::Sender<Piece>,
    ) -> std::io::Result<u64> {
        let mut received = 0u64;
        loop {
            match read_frame(stream, buf).await? {
                Some(KIND_CHUNK) => {
                    received = received.saturating_add(buf.len() as u64);
                    if received > declared {
                        return Err(invalid("a snapshot image is longer than its header says"));
                    }
                    if tx.send(Piece::Data(std::mem::take(buf))).await.is_err() {
                        return Err(invalid("the snapshot was refused while it arrived"));
                    }
                }
                Some(KIND_SNAPSHOT_END) => {
                    let end = buf.get(..8).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes);
                    if end != Some(received) || received != declared {
                        return Err(invalid("a snapshot image is not as long as its header says"));
                    }
                    tx.send(Piece::End).await.map_err(|_| invalid("the snapshot was refused at its end"))?;
                    return Ok(received);
                }
                _ => return Err(invalid("a snapshot stream ended early")),
            }
        }
    }
}

fn invalid(what: &'static str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what)
}

/// Reads one frame into `buf`; `None` at a clean end of stream.
async fn read_frame<R: tokio::io::AsyncRead + Unpin>(stream: &mut R, buf: &mut Vec<u8>) -> std::io::Result<Option<u8>> {
    let mut head = [0u8; 5];
    match stream.read_exact(&mut head).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let [a, b, c, d, kind] = head;
    let len = u32::from_be_bytes([a, b, c, d]) as usize;
    if len > MAX_FRAME {
        return Err(invalid("a peer frame is larger than 16 MiB"));
    }
    buf.clear();
    buf.resize(len, 0);
    stream.read_exact(buf).await?;
    Ok(Some(kind))
}

async fn write_frame<W: tokio::io::AsyncWrite + Unpin>(
    stream: &mut W,
    kind: u8,
    payload: &[u8],
) -> std::io::Result<()> {
    let len = u32::try_from(payload.len()).map_err(|_| invalid("frame too long"))?;
    let mut head = [0u8; 5];
    head[..4].copy_from_slice(&len.to_be_bytes());
    head[4] = kind;
    stream.write_all(&head).await?;
    stream.write_all(payload).await
}

/// Asks the member at `url` for its cluster.
async fn ask_cluster(url: &str) -> Result<RemoteCluster, String> {
    let addr = peer_addr(url).ok_or_else(|| format!("{url} is not http://IP:PORT"))?;
    let ask = async {
        let mut stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        write_frame(&mut stream, KIND_CLUSTER_REQUEST, &[]).await.map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        match read_frame(&mut stream, &mut buf).await.map_err(|e| e.to_string())? {
            Some(KIND_CLUSTER) if !buf.is_empty() => {
                postcard::from_bytes(&buf).map_err(|_| "its answer does not decode".to_string())
            }
            Some(KIND_CLUSTER) => Err("it knows no cluster yet".into()),
            _ => Err("it did not answer".into()),
        }
    };
    match tokio::time::timeout(CLUSTER_TIMEOUT, ask).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {CLUSTER_TIMEOUT:?}")),
    }
}

/// Asks the member at peer URL `url` to answer a lease request as the leader.
pub(crate) async fn ask_lease(url: &str, ask: LeaseAsk) -> Result<LeaseAnswer, String> {
    let addr = peer_addr(url).ok_or_else(|| format!("{url} is not http://IP:PORT"))?;
    let request = postcard::to_allocvec(&ask).map_err(|e| e.to_string())?;
    let asked = async {
        let mut stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        write_frame(&mut stream, KIND_LEASE_REQUEST, &request).await.map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        match read_frame(&mut stream, &mut buf).await.map_err(|e| e.to_string())? {
            Some(KIND_LEASE_ANSWER) => postcard::from_bytes(&buf).map_err(|_| "its answer does not decode".to_string()),
            _ => Err("it did not answer".into()),
        }
    };
    match tokio::time::timeout(LEASE_TIMEOUT, asked).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {LEASE_TIMEOUT:?}")),
    }
}

/// The cluster as the first of the members at `peer_urls` that answers tells it (etcd's
/// `GetClusterFromRemotePeers`): what a member started with `--initial-cluster-state existing`
/// learns its id and the cluster's from.
///
/// # Errors
/// [`RaftError::ClusterUnknown`] if none answers, saying why each did not.
pub async fn fetch_cluster(peer_urls: &[String]) -> Result<RemoteCluster, RaftError> {
    let mut why = Vec::new();
    for url in peer_urls {
        match ask_cluster(url).await {
            Ok(cluster) => return Ok(cluster),
            Err(e) => why.push(format!("{url}: {e}")),
        }
    }
    if why.is_empty() {
        why.push("no peer URL to ask: list the cluster's members in --initial-cluster".into());
    }
    Err(RaftError::ClusterUnknown { what: why.join("; ") })
}

/// Sends a snapshot message on a connection of its own: header, the image from its file in
/// chunks (each written only once the connection takes it), end; waits for the receiver's
/// answer.
async fn send_snapshot(addr: SocketAddr, msg: &Message, image: &std::path::Path) -> std::io::Result<u8> {
    let mut file = tokio::fs::File::open(image).await?;
    let len = file.metadata().await?.len();
    let mut stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(s) => s?,
        Err(_) => return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "connecting for a snapshot")),
    };
    stream.set_nodelay(true)?;
    let mut head = len.to_be_bytes().to_vec();
    head.extend_from_slice(&msg.encode_to_vec());
    write_frame(&mut stream, KIND_SNAPSHOT_HEAD, &head).await?;
    let mut chunk = vec![0u8; CHUNK];
    let mut sent = 0u64;
    loop {
        let n = file.read(&mut chunk).await?;
        let Some(piece) = chunk.get(..n).filter(|p| !p.is_empty()) else {
            break;
        };
        write_frame(&mut stream, KIND_CHUNK, piece).await?;
        sent = sent.saturating_add(n as u64);
    }
    if sent != len {
        return Err(invalid("the snapshot image changed while it was sent"));
    }
    write_frame(&mut stream, KIND_SNAPSHOT_END, &sent.to_be_bytes()).await?;
    stream.flush().await?;
    let mut answer = [0u8; 1];
    match tokio::time::timeout(SNAPSHOT_ACK_TIMEOUT, stream.read_exact(&mut answer)).await {
        Ok(Ok(_)) => Ok(answer[0]),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer to a snapshot")),
    }
}

/// One snapshot transfer to peer `to`, reported to the node's loop when it ends.
async fn transfer(
    to: u64,
    addr: SocketAddr,
    msg: Message,
    snap_dir: std::path::PathBuf,
    reports: mpsc::UnboundedSender<Report>,
    metrics: Arc<Metrics>,
) {
    let meta = msg.get_snapshot().get_metadata();
    let (index, term) = (meta.index, meta.term);
    let image = image_path(&snap_dir, term, index);
    log::info!("sending database snapshot to {to:x} at index {index} term {term}");
    let started = std::time::Instant::now();
    metrics.sending(to);
    let delivered = match send_snapshot(addr, &msg, &image).await {
        Ok(ANSWER_APPLIED) => {
            log::info!("sent database snapshot to {to:x} at index {index} term {term}");
            true
        }
        Ok(ANSWER_TOO_LARGE) => {
            log::warn!("member {to:x} refused the snapshot at index {index}: larger than it takes");
            false
        }
        Ok(_) => {
            log::warn!("member {to:x} failed to persist the snapshot at index {index}");
            false
        }
        Err(e) => {
            log::warn!("failed to send database snapshot to {to:x} at index {index}: {e}");
            false
        }
    };
    metrics.sent(to, delivered, started.elapsed());
    let _ = reports.send(Report::Snapshot { to, delivered });
}

async fn writer(
    to: u64,
    addr: SocketAddr,
    mut rx: mpsc::UnboundedReceiver<Message>,
    reports: mpsc::UnboundedSender<Report>,
    snap_dir: std::path::PathBuf,
    metrics: Arc<Metrics>,
) {
    let mut conn: Option<tokio::net::tcp::OwnedWriteHalf> = None;
    // The task reading what the peer sends back on the connection (only `KIND_REMOVED`); it
    // ends with the connection.
    let mut listening = AbortOnDrop(None);
    // The transfer in progress: raft-rs sends a follower one snapshot at a time; it ends with
    // the writer (the peer removed, the node stopped).
    let mut sending = AbortOnDrop(None);
    while let Some(msg) = rx.recv().await {
        if msg.get_msg_type() == MessageType::MsgSnapshot {
            let task = tokio::spawn(transfer(to, addr, msg, snap_dir.clone(), reports.clone(), metrics.clone()));
            if let Some(old) = sending.0.replace(task) {
                old.abort();
            }
            continue;
        }
        if conn.is_none() {
            conn = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
                Ok(Ok(s)) => {
                    let _ = s.set_nodelay(true);
                    let (mut read, write) = s.into_split();
                    let reports = reports.clone();
                    let task = tokio::spawn(async move {
                        let mut buf = Vec::new();
                        if let Ok(Some(KIND_REMOVED)) = read_frame(&mut read, &mut buf).await {
                            let _ = reports.send(Report::Removed(to));
                        }
                    });
                    if let Some(old) = listening.0.replace(task) {
                        old.abort();
                    }
                    Some(write)
                }
                _ => None,
            };
        }
        let Some(stream) = conn.as_mut() else {
            let _ = reports.send(Report::Unreachable(to));
            continue;
        };
        if let Err(e) = write_frame(stream, KIND_MESSAGE, &msg.encode_to_vec()).await {
            log::debug!("sending to peer {to:x} failed: {e}");
            conn = None;
            let _ = reports.send(Report::Unreachable(to));
        }
    }
}

/// Aborts the snapshot transfer a writer started when the writer ends.
struct AbortOnDrop(Option<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(t) = self.0.take() {
            t.abort();
        }
    }
}

impl Transport for Network {
    fn remove_all_peers(&mut self) {
        for p in std::mem::take(&mut *lock(&self.inner.peers)).into_values() {
            p.task.abort();
        }
    }

    fn add_peer(&mut self, id: MemberId, peer_urls: &[&[u8]]) -> Result<(), PortError> {
        if id == self.inner.id {
            return Ok(());
        }
        let urls: Vec<String> = peer_urls.iter().map(|u| String::from_utf8_lossy(u).into_owned()).collect();
        let Some(addr) = urls.iter().find_map(|u| peer_addr(u)) else {
            return Err(PortError::new(PortErrorKind::Misuse, "a member has no peer URL of the form http://IP:PORT"));
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let snap_dir = self.inner.inbound.dir.snap_dir().to_path_buf();
        let metrics = self.inner.metrics.clone();
        let task = tokio::spawn(writer(id, addr, rx, self.inner.reports.clone(), snap_dir, metrics)).abort_handle();
        if let Some(old) = lock(&self.inner.peers).insert(id, Peer { urls, tx, task }) {
            old.task.abort();
        }
        Ok(())
    }
}

impl Network {
    /// The peer URLs of peer `id`, if it is one.
    pub fn peer_urls(&self, id: u64) -> Option<Vec<String>> {
        lock(&self.inner.peers).get(&id).map(|p| p.urls.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_urls_parse_with_or_without_scheme() {
        assert_eq!(peer_addr("http://127.0.0.1:2380"), Some(SocketAddr::from(([127, 0, 0, 1], 2380))));
        assert_eq!(peer_addr("127.0.0.1:2380/"), Some(SocketAddr::from(([127, 0, 0, 1], 2380))));
        assert_eq!(peer_addr("http://localhost"), None);
    }

    fn inbound(root: &std::path::Path, max_bytes: u64) -> Inbound {
        let dir = snapply_fs::DataDir::open(root).unwrap();
        let config = snapply_core::Config {
            id: 2,
            min_lease_ttl: 5,
            v2_deprecation: snapply_core::store::V2Deprecation::WriteOnly,
        };
        Inbound::new(dir, config, max_bytes)
    }

    fn metrics(id: u64) -> Arc<Metrics> {
        Arc::new(Metrics::new(id, std::path::PathBuf::from("db")).unwrap())
    }

    /// Files of a receiver's `member/snap`.
    fn snap_files(root: &std::path::Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(root.join("member/snap"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// A receiver taking at most `max_bytes`, a sender whose image at index 42 term 7 is
    /// `image`; the sender sends a heartbeat and the snapshot message.
    async fn send_to_receiver(max_bytes: u64, image: &[u8]) -> (Option<Message>, Report, Vec<String>) {
        let (rdir, sdir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (in_tx, mut in_rx) = mpsc::unbounded_channel();
        let (rep_tx, _rep_rx) = mpsc::unbounded_channel();
        let receiver = Network::start(2, listener, in_tx, rep_tx, inbound(rdir.path(), max_bytes), metrics(2));

        let quiet = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (q_tx, _q_rx) = mpsc::unbounded_channel();
        let (s_tx, mut s_rx) = mpsc::unbounded_channel();
        let sender_inbound = inbound(sdir.path(), max_bytes);
        std::fs::write(image_path(sender_inbound.dir.snap_dir(), 7, 42), image).unwrap();
        let mut sender = Network::start(1, quiet, q_tx, s_tx, sender_inbound, metrics(1));
        sender.add_peer(2, &[url.as_bytes()]).unwrap();
        assert_eq!(sender.peers(), vec![2]);

        let mut m = Message { to: 2, from: 1, term: 7, ..Default::default() };
        m.set_msg_type(MessageType::MsgHeartbeat);
        let mut s = Message { to: 2, from: 1, term: 7, ..Default::default() };
        s.set_msg_type(MessageType::MsgSnapshot);
        s.mut_snapshot().mut_metadata().index = 42;
        s.mut_snapshot().mut_metadata().term = 7;
        sender.send(vec![m, s]);

        let got = tokio::time::timeout(Duration::from_secs(10), in_rx.recv()).await.unwrap().unwrap();
        assert_eq!((got.get_msg_type(), got.term), (MessageType::MsgHeartbeat, 7));
        let report = tokio::time::timeout(Duration::from_secs(10), s_rx.recv()).await.unwrap().unwrap();
        let snapshot = in_rx.try_recv().ok();
        sender.remove_all_peers();
        assert!(sender.peers().is_empty());
        sender.shutdown();
        receiver.shutdown();
        (snapshot, report, snap_files(rdir.path()))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_snapshot_larger_than_the_receiver_takes_is_refused_and_nothing_is_written() {
        let image: Vec<u8> = (0..CHUNK * 3 + 17).map(|i| i as u8).collect();
        let (snapshot, report, files) = send_to_receiver(CHUNK as u64, &image).await;
        assert!(snapshot.is_none(), "the node never sees a refused snapshot");
        assert!(matches!(report, Report::Snapshot { to: 2, delivered: false }), "{report:?}");
        assert!(files.is_empty(), "{files:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_snapshot_that_does_not_persist_is_reported_failed_and_leaves_nothing() {
        let image: Vec<u8> = (0..CHUNK * 3 + 17).map(|i| i as u8).collect();
        let (snapshot, report, files) = send_to_receiver(MAX_SNAPSHOT_BYTES, &image).await;
        assert!(snapshot.is_none(), "the node never sees a snapshot that is not durable");
        assert!(matches!(report, Report::Snapshot { to: 2, delivered: false }), "{report:?}");
        assert!(files.is_empty(), "{files:?}");
    }
}
