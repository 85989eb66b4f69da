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

pub(super) fn too_many_ops() -> Status {
    Status::new(Code::InvalidArgument, "etcdserver: too many operations in txn request")
}

pub(super) fn duplicate_key() -> Status {
    Status::new(Code::InvalidArgument, "etcdserver: duplicate key given in txn request")
}

pub(super) fn invalid_sort_option() -> Status {
    Status::new(Code::InvalidArgument, "etcdserver: invalid sort option")
}

/// An alarm request whose action or type is none of etcd's.
pub(super) fn invalid_alarm() -> Status {
    Status::new(Code::InvalidArgument, "snapply: an alarm request of an unknown action or type")
}

pub(super) fn member_bad_urls() -> Status {
    Status::new(Code::InvalidArgument, "etcdserver: given member URLs are invalid")
}

fn member_not_found() -> Status {
    Status::new(Code::NotFound, "etcdserver: member not found")
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
        // etcd's `ValidateConfigurationChange` errors, as `togRPCError` maps them.
        StoreError::NotFound("member") | StoreError::InvalidRequest("member id was removed") => member_not_found(),
        StoreError::AlreadyExists("member") => {
            Status::new(Code::FailedPrecondition, "etcdserver: member ID already exist")
        }
        StoreError::AlreadyExists("peer url") => {
            Status::new(Code::FailedPrecondition, "etcdserver: Peer URLs already exists")
        }
        StoreError::InvalidRequest("too many learner members in cluster") => {
            Status::new(Code::FailedPrecondition, "etcdserver: too many learner members in cluster")
        }
        StoreError::InvalidRequest("can only promote a learner member") => {
            Status::new(Code::FailedPrecondition, "etcdserver: can only promote a learner member")
        }
        StoreError::NoSpace => Status::new(Code::ResourceExhausted, "etcdserver: mvcc: database space exceeded"),
        StoreError::CorruptAlarm => Status::new(Code::DataLoss, "etcdserver: corrupt cluster"),
        e => Status::new(Code::Unknown, e.to_string()),
    }
}

/// The status a failed request gets.
pub(super) fn status(e: &RaftError) -> Status {
    match e {
        RaftError::Store(e) => store(e),
        RaftError::Apply(a) => match a.kind() {
            snapply_core::ApplyErrorKind::Store(e) => store(e),
            _ => Status::new(Code::Unknown, a.to_string()),
        },
        // raft-rs drops a proposal when there is no leader to take it.
        RaftError::Raft(_) => Status::new(Code::Unavailable, "etcdserver: no leader"),
        RaftError::Timeout { .. } => Status::new(Code::Unavailable, "etcdserver: request timed out"),
        RaftError::Stopped | RaftError::Removed => Status::new(Code::Unavailable, "etcdserver: server stopped"),
        RaftError::RequestTooLarge { .. } => Status::new(Code::InvalidArgument, "etcdserver: request is too large"),
        RaftError::DefragmentBusy => Status::new(Code::Unavailable, format!("snapply: {e}")),
        RaftError::LearnerNotReady { .. } => Status::new(
            Code::FailedPrecondition,
            "etcdserver: can only promote a learner member which is in sync with leader",
        ),
        e => Status::new(Code::Unknown, e.to_string()),
    }
}
