#![doc = include_str!("../README.md")]

mod auth;
mod cluster;
mod codec;
mod error;
mod hash;
mod log;
mod membership;
mod metrics;
mod node;
mod policy;
mod query;
mod read;
mod snapshot;
mod transport;
mod watch;

pub use auth::{
    AuthError, Authorized, DEFAULT_BCRYPT_COST, DEFAULT_TOKEN_TTL, Need, PermissionInfo, RoleInfo, UserInfo,
    hash_password,
};
pub use cluster::{Cluster, member_id};
pub use codec::{Command, MemberInfo};
pub use error::RaftError;
pub use log::RaftLog;
pub use membership::{
    DEFAULT_CLUSTER_TOKEN, InitialCluster, RemoteCluster, RemoteMember, check_peer_url, cluster_id, compute_member_id,
};
pub use metrics::Metrics;
pub use node::{
    Client, Consistency, MAX_REQUEST_BYTES, NodeConfig, NodeHandle, Pair, RestoreReport, Status, Trace, ids,
    init_raft_log, start,
};
pub use policy::SnapshotPolicy;
pub use query::{
    Header, KeyValue, LeaseInfo, Member, NodeStatus, RangeRequest, RangeResponse, SortOrder, SortTarget, TxnOpResponse,
    TxnResponse,
};
pub use snapply_core::store::CompareResult;
pub use snapply_core::{CompareBuf, CompareTargetBuf, MemberBuf, RequestBuf, TxnNodeBuf, TxnOpBuf};
pub use snapshot::ImageStream;
pub use transport::{CHUNK, MAX_SNAPSHOT_BYTES, Network, fetch_cluster, peer_addr};
pub use watch::{Event, EventKind, Events, EventsRequest, MAX_BATCH_EVENTS, MAX_BATCH_REVISIONS};
