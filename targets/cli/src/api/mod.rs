//! etcd's v3 gRPC API on a member's client URL: the services generated from etcd's own
//! `.proto` files ([`pb`], by `build.rs`), served with tonic.
//!
//! One file per service: [`kv`] (Range, Put, DeleteRange, Txn, Compact), [`watch`] (Watch),
//! [`lease`] (Grant, Revoke, KeepAlive, TimeToLive, Leases), [`cluster`] (MemberList,
//! MemberAdd, ...), [`maintenance`] (Status, Alarm, Snapshot), [`auth`] (users, roles,
//! tokens). Every service checks a request's auth token as etcd does ([`Member::authorize`]).
//! What is not served yet answers `Unimplemented`; docs/etcd-differences.md lists the
//! differences.
//!
//! The client URL carries this API, `/metrics` and `/health` ([`http`]): [`serve`] looks at the
//! first bytes of each connection, as etcd's cmux does: the HTTP/2 preface goes to gRPC, an
//! HTTP/1 request line to [`http`], and any other connection is closed.

mod auth;
mod cluster;
mod error;
mod http;
mod kv;
mod lease;
mod maintenance;
mod pb;
mod watch;

use std::time::Duration;

use pb::{
    PbAuthServer, PbClusterServer, PbKvServer, PbLeaseServer, PbMaintenanceServer, PbResponseHeader, PbWatchServer,
};
use snapply_raft::{Client, Header, Need};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tonic::Status;

/// The connection preface every HTTP/2 client sends first (RFC 9113, 3.4).
const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How long a new connection may take to show whether it speaks HTTP/2.
const SNIFF_WAIT: Duration = Duration::from_secs(10);

/// A running member as the API serves it.
#[derive(Clone, Debug)]
pub struct Member {
    /// The member's node.
    pub client: Client,
    /// The member's backend file, whose size `Status` reports.
    pub db_path: std::path::PathBuf,
    /// The URLs this member serves clients on.
    pub client_urls: Vec<String>,
    /// The member's name (`--name`).
    pub name: String,
    /// The cost of the bcrypt hashes of new passwords (etcd's `--bcrypt-cost`).
    pub bcrypt_cost: u32,
    /// The request limits (`--max-request-bytes`, `--max-txn-ops`).
    pub limits: Limits,
}

/// What a member takes of a request, named as etcd's flags.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// The largest request (its raft entry), in bytes (etcd's `--max-request-bytes`); the gRPC
    /// server receives messages up to this plus [`GRPC_OVERHEAD_BYTES`].
    pub max_request_bytes: usize,
    /// Most compares, and most ops of each branch, of a transaction (etcd's `--max-txn-ops`).
    pub max_txn_ops: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_request_bytes: snapply_raft::MAX_REQUEST_BYTES, max_txn_ops: kv::MAX_TXN_OPS }
    }
}

/// How often a request refused at apply for an auth state that changed since its check is
/// checked and proposed again.
const AUTH_RETRIES: usize = 3;

/// What etcd's gRPC server takes beyond `--max-request-bytes` (`grpcOverheadBytes`, 512 KiB):
/// a larger message is refused before it is decoded.
pub const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

impl Member {
    fn header(&self, h: Header) -> Option<PbResponseHeader> {
        Some(PbResponseHeader {
            cluster_id: self.client.cluster_id(),
            member_id: h.member_id,
            revision: h.revision,
            raft_term: h.raft_term,
        })
    }

    /// etcd's auth check of a request: the token its `token` metadata carries (etcdctl's
    /// `--user` sends one) must be live, and its user must have every need (see
    /// [`snapply_raft::Client::authorize`]). With auth disabled, everything passes.
    async fn authorize<T>(&self, request: &tonic::Request<T>, needs: Vec<Need>) -> Result<(), Status> {
        self.client.authorize(token(request), needs).await.map(drop).map_err(|e| error::status(&e))
    }

    /// Runs `call`, which proposes through the client it is given, under `request`'s auth:
    /// checked now ([`Member::authorize`]), carried with the request's entries and checked
    /// again as they are applied. When the auth state changed in between, the entries changed
    /// nothing, and the request is checked and run again, as etcd's server retries on
    /// `ErrAuthOldRevision` (at most [`AUTH_RETRIES`] times; then etcd's error).
    async fn authorized<R, T, F, Fut>(
        &self,
        request: &tonic::Request<R>,
        needs: Vec<Need>,
        call: F,
    ) -> Result<T, Status>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<T, snapply_raft::RaftError>>,
    {
        let token = token(request);
        let mut tries = 0;
        loop {
            let auth = self.client.authorize(token.clone(), needs.clone()).await.map_err(|e| error::status(&e))?;
            match call(self.client.with_auth(auth)).await {
                Err(snapply_raft::RaftError::Auth(snapply_raft::AuthError::OldRevision)) if tries < AUTH_RETRIES => {
                    tries += 1;
                }
                result => return result.map_err(|e| error::status(&e)),
            }
        }
    }

    /// [`Member::authorize`] as etcd 3.4's and 3.5's maintenance service checks a request for the
    /// root role (Snapshot, Defragment, Hash, HashKV, MoveLeader): its refusal is the auth
    /// store's own error, not mapped to a gRPC code (`Unknown`, `auth: permission denied`).
    async fn authorize_admin<T>(&self, request: &tonic::Request<T>) -> Result<(), Status> {
        match self.client.authorize(token(request), vec![Need::Admin]).await {
            Ok(_) => Ok(()),
            Err(snapply_raft::RaftError::Auth(e)) => Err(Status::unknown(format!("auth: {e}"))),
            Err(e) => Err(error::status(&e)),
        }
    }

    /// How every read is served: `serializable` reads are answered from this member's applied
    /// state at once; linearizable ones (etcd's default) first wait for a read index confirmed
    /// by the leader's quorum (raft-rs's ReadIndex) and for this member to have applied up to it.
    async fn read_barrier(&self, serializable: bool) -> Result<(), Status> {
        if serializable {
            return Ok(());
        }
        self.client.read_index().await.map_err(|e| error::status(&e))
    }
}

/// Serves `/metrics` and `/health` (HTTP/1.1) on `listener` (etcd's
/// `--listen-metrics-urls`); each connection is its own task. Never returns.
pub async fn serve_metrics(listener: TcpListener, member: Member) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                tokio::spawn(http::serve(stream, member.clone()));
            }
            // Out of file descriptors, say: the client URL is unaffected; try again shortly.
            Err(e) => {
                log::warn!("accepting metrics clients: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// The auth token `request` carries in its `token` metadata (etcd's `TokenFieldNameGRPC`). One
/// that is not ASCII is not one this member issued: it is kept, to be checked and refused.
fn token<T>(request: &tonic::Request<T>) -> Option<String> {
    request.metadata().get("token").map(|t| t.to_str().unwrap_or_default().to_owned())
}

/// Accepts clients on `listener` until it fails: HTTP/2 connections are served etcd's gRPC
/// services for `member`, HTTP/1 ones `/metrics` and `/health`; any other is closed.
///
/// # Errors
/// Why it stopped: the listener or the gRPC server failed.
pub async fn serve(listener: TcpListener, member: Member) -> Result<(), String> {
    let (grpc_tx, grpc_rx) = mpsc::unbounded_channel::<Result<TcpStream, std::io::Error>>();
    // etcd's `grpc.MaxRecvMsgSize(maxRequestBytes + grpcOverheadBytes)`; it sends any size.
    let max = member.limits.max_request_bytes.saturating_add(GRPC_OVERHEAD_BYTES);
    let grpc = tonic::transport::Server::builder()
        .layer(tower::util::MapResponseLayer::new(too_large::as_grpc_go))
        .add_service(PbKvServer::new(kv::KvService(member.clone())).max_decoding_message_size(max))
        .add_service(PbLeaseServer::new(lease::LeaseService(member.clone())).max_decoding_message_size(max))
        .add_service(PbClusterServer::new(cluster::ClusterService(member.clone())).max_decoding_message_size(max))
        .add_service(
            PbMaintenanceServer::new(maintenance::MaintenanceService(member.clone())).max_decoding_message_size(max),
        )
        .add_service(PbWatchServer::new(watch::WatchService(member.clone())).max_decoding_message_size(max))
        .add_service(
            PbAuthServer::new(auth::AuthService { member: member.clone(), bcrypt_cost: member.bcrypt_cost })
                .max_decoding_message_size(max),
        )
        .serve_with_incoming(tokio_stream::wrappers::UnboundedReceiverStream::new(grpc_rx));
    let accept = async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => return format!("accepting clients: {e}"),
            };
            // As etcd's (Go's) and tonic's own listeners: without it a response's frames wait for
            // the client's delayed ACK (about 40 ms) behind Nagle's algorithm.
            let _ = stream.set_nodelay(true);
            let (grpc_tx, member) = (grpc_tx.clone(), member.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(SNIFF_WAIT, sniff(&stream)).await {
                    Ok(Ok(Protocol::Http2)) => {
                        let _ = grpc_tx.send(Ok(stream));
                    }
                    Ok(Ok(Protocol::Http1)) => http::serve(stream, member).await,
                    // A connection that speaks neither, errs or stays silent is dropped.
                    Ok(Ok(Protocol::Other)) | Ok(Err(_)) | Err(_) => {}
                }
            });
        }
    };
    tokio::select! {
        e = accept => Err(e),
        result = grpc => Err(match result {
            Ok(()) => "the gRPC server stopped".into(),
            Err(e) => format!("serving gRPC: {e}"),
        }),
    }
}

/// A request message over the gRPC server's limit, refused as etcd's server (grpc-go) refuses
/// it: tonic answers `OutOfRange` ("decoded message length too large"), grpc-go
/// `ResourceExhausted` ("grpc: received message larger than max (N vs. M)"), which clients
/// print.
mod too_large {
    use tonic::codegen::http::Response;
    use tonic::{Code, Status};

    /// tonic's words for a message over the limit, before its sizes.
    const TONIC: &str = "Error, decoded message length too large: found ";

    /// `response` with tonic's refusal of a too large message in grpc-go's words.
    pub(super) fn as_grpc_go(mut response: Response<tonic::body::Body>) -> Response<tonic::body::Body> {
        let Some(status) = Status::from_header_map(response.headers()) else { return response };
        if status.code() != Code::OutOfRange {
            return response;
        }
        let Some(sizes) = grpc_go_sizes(status.message()) else { return response };
        let status = Status::new(Code::ResourceExhausted, format!("grpc: received message larger than max ({sizes})"));
        let _ = status.add_header(response.headers_mut());
        response
    }

    /// "N vs. M" from tonic's "... found N bytes, the limit is: M bytes".
    fn grpc_go_sizes(message: &str) -> Option<String> {
        let rest = message.strip_prefix(TONIC)?;
        let (found, rest) = rest.split_once(" bytes, the limit is: ")?;
        let limit = rest.strip_suffix(" bytes")?;
        Some(format!("{found} vs. {limit}"))
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn tonic_sizes_are_said_as_grpc_go_says_them() {
            let tonic = "Error, decoded message length too large: found 2097200 bytes, the limit is: 2097152 bytes";
            assert_eq!(super::grpc_go_sizes(tonic).as_deref(), Some("2097200 vs. 2097152"));
            assert_eq!(super::grpc_go_sizes("etcdserver: request is too large"), None);
        }
    }
}

/// What a connection speaks, from its first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Protocol {
    /// The HTTP/2 preface: gRPC.
    Http2,
    /// An HTTP/1 request line (`GET /metrics ...`): `/metrics` and `/health`.
    Http1,
    /// Anything else: closed.
    Other,
}

/// The request methods an HTTP/1 connection may start with.
const HTTP1_METHODS: [&[u8]; 6] = [b"GET ", b"HEAD ", b"POST ", b"PUT ", b"DELETE ", b"OPTIONS "];

/// What `got`, the first bytes of a connection, say it speaks; `None` while they may still be
/// the start of more than one.
fn classify(got: &[u8]) -> Option<Protocol> {
    if got.is_empty() {
        return Some(Protocol::Other);
    }
    if HTTP2_PREFACE.starts_with(got) {
        return (got.len() == HTTP2_PREFACE.len()).then_some(Protocol::Http2);
    }
    if HTTP1_METHODS.iter().any(|m| got.starts_with(m)) {
        return Some(Protocol::Http1);
    }
    if HTTP1_METHODS.iter().any(|m| m.starts_with(got)) {
        return None;
    }
    Some(Protocol::Other)
}

/// What `stream` speaks, from its first bytes (etcd's cmux); reads nothing off it.
async fn sniff(stream: &TcpStream) -> std::io::Result<Protocol> {
    let mut buf = [0u8; HTTP2_PREFACE.len()];
    let mut seen = 0;
    loop {
        let n = stream.peek(&mut buf).await?;
        let got = buf.get(..n).unwrap_or_default();
        if let Some(protocol) = classify(got) {
            return Ok(protocol);
        }
        if n == seen {
            // The start is in: wait for the rest.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        seen = n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_told_apart_by_their_first_bytes() {
        assert_eq!(classify(HTTP2_PREFACE), Some(Protocol::Http2));
        assert_eq!(classify(b"PRI * HTTP"), None);
        assert_eq!(classify(b"GET /metrics HTTP/1.1\r\n"), Some(Protocol::Http1));
        assert_eq!(classify(b"GE"), None);
        assert_eq!(classify(b"P"), None);
        assert_eq!(classify(b"PUT /x"), Some(Protocol::Http1));
        for line in [&b"get /a\n"[..], b"put /a b\n", b"range /a /b\n", b"x", b""] {
            assert_eq!(classify(line), Some(Protocol::Other), "{line:?}");
        }
    }
}
