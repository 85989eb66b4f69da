//! The peer transport: raft messages over TCP on loopback (etcd's `rafthttp`, without HTTP).
//!
//! Every frame is a big-endian `u32` payload length, a kind byte and the payload. A raft message
//! is one frame (prost-encoded). A snapshot message is streamed: a header frame (the message
//! without its image), the image in chunks of [`CHUNK`] bytes, an end frame with the image's
//! length; the receiver answers one byte, 1 once the node has the snapshot, and the sender
//! reports the outcome to raft-rs (`report_snapshot`), as etcd's snapshot sender does after its
//! POST returns.
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

/// Bytes of image per chunk frame.
pub const CHUNK: usize = 64 * 1024;
/// Largest frame a peer may send but a chunk: a raft message of entries (raft-rs is configured
/// for at most 1 MiB of entries per message) with room to spare.
const MAX_FRAME: usize = 16 * 1024 * 1024;
/// Largest snapshot image a peer may send.
const MAX_IMAGE: u64 = 8 * 1024 * 1024 * 1024;
/// How long a sender waits for a connection, and for the receiver's answer to a snapshot.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
const SNAPSHOT_ACK_TIMEOUT: Duration = Duration::from_secs(60);

const KIND_MESSAGE: u8 = 0;
const KIND_SNAPSHOT_HEAD: u8 = 1;
const KIND_CHUNK: u8 = 2;
const KIND_SNAPSHOT_END: u8 = 3;

/// What the transport tells the node's loop, which tells raft-rs.
#[derive(Debug)]
pub(crate) enum Report {
    /// A message to this peer could not be sent (raft-rs `report_unreachable`).
    Unreachable(u64),
    /// A snapshot to this peer was delivered (`true`) or not (raft-rs `report_snapshot`).
    Snapshot { to: u64, delivered: bool },
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
    ) -> Self {
        let inner = Arc::new(Inner {
            id,
            peers: Mutex::default(),
            isolated: AtomicBool::new(false),
            reports,
            tasks: Mutex::default(),
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
                    if !self.isolated() {
                        let _ = inbox.send(msg);
                    }
                }
                KIND_SNAPSHOT_HEAD => {
                    let mut msg =
                        Message::decode(&buf[..]).map_err(|_| invalid("a snapshot header does not decode"))?;
                    let mut image = Vec::new();
                    loop {
                        match read_frame(&mut stream, &mut buf).await? {
                            Some(KIND_CHUNK) => {
                                if (image.len() as u64).saturating_add(buf.len() as u64) > MAX_IMAGE {
                                    return Err(invalid("a snapshot image is larger than 8 GiB"));
                                }
                                image.extend_from_slice(&buf);
                            }
                            Some(KIND_SNAPSHOT_END) => break,
                            _ => return Err(invalid("a snapshot stream ended early")),
                        }
                    }
                    let declared = buf.get(..8).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes);
                    if declared != Some(image.len() as u64) {
                        return Err(invalid("a snapshot image is not as long as its end frame says"));
                    }
                    msg.mut_snapshot().data = image;
                    let delivered = !self.isolated() && inbox.send(msg).is_ok();
                    stream.write_all(&[u8::from(delivered)]).await?;
                }
                _ => return Err(invalid("unknown frame kind")),
            }
        }
    }
}

fn invalid(what: &'static str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what)
}

/// Reads one frame into `buf`; `None` at a clean end of stream.
async fn read_frame(stream: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<Option<u8>> {
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

async fn write_frame(stream: &mut TcpStream, kind: u8, payload: &[u8]) -> std::io::Result<()> {
    let len = u32::try_from(payload.len()).map_err(|_| invalid("frame too long"))?;
    let mut head = [0u8; 5];
    head[..4].copy_from_slice(&len.to_be_bytes());
    head[4] = kind;
    stream.write_all(&head).await?;
    stream.write_all(payload).await
}

/// Streams a snapshot message: header, chunks, end; waits for the receiver's answer.
async fn write_snapshot(stream: &mut TcpStream, mut msg: Message) -> std::io::Result<bool> {
    let image = std::mem::take(&mut msg.mut_snapshot().data);
    write_frame(stream, KIND_SNAPSHOT_HEAD, &msg.encode_to_vec()).await?;
    for chunk in image.chunks(CHUNK) {
        write_frame(stream, KIND_CHUNK, chunk).await?;
    }
    write_frame(stream, KIND_SNAPSHOT_END, &(image.len() as u64).to_be_bytes()).await?;
    stream.flush().await?;
    let mut ack = [0u8; 1];
    match tokio::time::timeout(SNAPSHOT_ACK_TIMEOUT, stream.read_exact(&mut ack)).await {
        Ok(Ok(_)) => Ok(ack[0] == 1),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer to a snapshot")),
    }
}

async fn writer(
    to: u64,
    addr: SocketAddr,
    mut rx: mpsc::UnboundedReceiver<Message>,
    reports: mpsc::UnboundedSender<Report>,
) {
    let mut conn: Option<TcpStream> = None;
    while let Some(msg) = rx.recv().await {
        if conn.is_none() {
            conn = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
                Ok(Ok(s)) => {
                    let _ = s.set_nodelay(true);
                    Some(s)
                }
                _ => None,
            };
        }
        let is_snapshot = msg.get_msg_type() == MessageType::MsgSnapshot;
        let Some(stream) = conn.as_mut() else {
            let _ = reports.send(Report::Unreachable(to));
            if is_snapshot {
                let _ = reports.send(Report::Snapshot { to, delivered: false });
            }
            continue;
        };
        let result = if is_snapshot {
            write_snapshot(stream, msg).await
        } else {
            write_frame(stream, KIND_MESSAGE, &msg.encode_to_vec()).await.map(|()| true)
        };
        match result {
            Ok(delivered) => {
                if is_snapshot {
                    let _ = reports.send(Report::Snapshot { to, delivered });
                }
            }
            Err(e) => {
                log::debug!("sending to peer {to:x} failed: {e}");
                conn = None;
                let _ = reports.send(Report::Unreachable(to));
                if is_snapshot {
                    let _ = reports.send(Report::Snapshot { to, delivered: false });
                }
            }
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
        let task = tokio::spawn(writer(id, addr, rx, self.inner.reports.clone())).abort_handle();
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn messages_and_a_chunked_snapshot_cross_and_are_reported() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (in_tx, mut in_rx) = mpsc::unbounded_channel();
        let (rep_tx, _rep_rx) = mpsc::unbounded_channel();
        let receiver = Network::start(2, listener, in_tx, rep_tx);

        let quiet = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (q_tx, _q_rx) = mpsc::unbounded_channel();
        let (s_tx, mut s_rx) = mpsc::unbounded_channel();
        let mut sender = Network::start(1, quiet, q_tx, s_tx);
        sender.add_peer(2, &[url.as_bytes()]).unwrap();
        assert_eq!(sender.peers(), vec![2]);

        let mut m = Message { to: 2, from: 1, term: 7, ..Default::default() };
        m.set_msg_type(MessageType::MsgHeartbeat);
        let mut s = Message { to: 2, from: 1, term: 7, ..Default::default() };
        s.set_msg_type(MessageType::MsgSnapshot);
        let image: Vec<u8> = (0..CHUNK * 3 + 17).map(|i| i as u8).collect();
        s.mut_snapshot().data = image.clone();
        s.mut_snapshot().mut_metadata().index = 42;
        sender.send(vec![m, s]);

        let got = tokio::time::timeout(Duration::from_secs(10), in_rx.recv()).await.unwrap().unwrap();
        assert_eq!((got.get_msg_type(), got.term), (MessageType::MsgHeartbeat, 7));
        let got = tokio::time::timeout(Duration::from_secs(10), in_rx.recv()).await.unwrap().unwrap();
        assert_eq!(got.get_snapshot().get_metadata().index, 42);
        assert_eq!(got.get_snapshot().data[..], image[..]);
        let report = tokio::time::timeout(Duration::from_secs(10), s_rx.recv()).await.unwrap().unwrap();
        assert!(matches!(report, Report::Snapshot { to: 2, delivered: true }), "{report:?}");

        sender.remove_all_peers();
        assert!(sender.peers().is_empty());
        sender.shutdown();
        receiver.shutdown();
    }
}
