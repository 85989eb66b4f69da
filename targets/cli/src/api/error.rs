//! RaftError to etcd's gRPC errors: the codes and messages of etcd's `rpctypes`
//! (api/v3rpc/rpctypes/error.go), so clients print what they print against etcd.

use snapply_core::store::StoreError;
use snapply_raft::RaftError;
use tonic::{Code, Status};

pub(super) fn empty_key() -> Status {
    Status::new(Code::InvalidArgument, "etcdserver: key is not provided")
}

pub(super) fn lease_not_found() -> Status {
    Status::new(Code::NotFound, "etcdserver: requested lease not found")
}

pub(super) fn key_not_found() -> Status {
    Status::new(Code::InvalidArgument, "etcdserver: key not found")
}

pub(super) fn value_provided() -> Status {
    Status::new(Code::InvalidArgument, "etcdserver: value is provided")
}

pub(super) fn lease_provided() -> Status {
    Status::new(Code::InvalidArgument, "etcdserver: lease is provided")
}

pub(super) fn invalid_sort_option() -> Status {
    Status::new(Code::InvalidArgument, "etcdserver: invalid sort option")
}

/// A request this member does not serve yet.
pub(super) fn unimplemented(what: &str) -> Status {
    Status::new(Code::Unimplemented, format!("snapply: {what} is not supported yet"))
}

fn store(e: &StoreError) -> Status {
    match e {
        StoreError::Compacted { .. } => {
            Status::new(Code::OutOfRange, "etcdserver: mvcc: required revision has been compacted")
        }
        StoreError::FutureRevision { .. } => {
            Status::new(Code::OutOfRange, "etcdserver: mvcc: required revision is a future revision")
        }
        StoreError::NotFound("lease") => lease_not_found(),
        StoreError::AlreadyExists("lease") => Status::new(Code::FailedPrecondition, "etcdserver: lease already exists"),
        StoreError::InvalidRequest("lease ttl too large") => {
            Status::new(Code::OutOfRange, "etcdserver: too large lease TTL")
        }
        StoreError::InvalidRequest("empty key") => empty_key(),
        StoreError::NoSpace => Status::new(Code::ResourceExhausted, "etcdserver: mvcc: database space exceeded"),
        StoreError::CorruptAlarm => Status::new(Code::DataLoss, "etcdserver: corrupt cluster"),
        e => Status::new(Code::Unknown, e.to_string()),
    }
}

/// The status a failed request gets.
pub(super) fn status(e: &RaftError) -> Status {
    match e {
        RaftError::Store(e) => store(e),
        RaftError::Apply(a) => match std::error::Error::source(a).and_then(|s| s.downcast_ref::<StoreError>()) {
            Some(e) => store(e),
            None => Status::new(Code::Unknown, a.to_string()),
        },
        // raft-rs drops a proposal when there is no leader to take it.
        RaftError::Raft(_) => Status::new(Code::Unavailable, "etcdserver: no leader"),
        RaftError::Timeout { .. } => Status::new(Code::Unavailable, "etcdserver: request timed out"),
        RaftError::Stopped => Status::new(Code::Unavailable, "etcdserver: server stopped"),
        e => Status::new(Code::Unknown, e.to_string()),
    }
}
