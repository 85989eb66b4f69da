//! RaftError to etcd's gRPC errors: the codes and messages of etcd's `rpctypes`
//! (api/v3rpc/rpctypes/error.go), so clients print what they print against etcd.

use snapply_core::store::{AUTH_FAILED, AUTH_NOT_ENABLED, StoreError};
use snapply_raft::{AuthError, RaftError};
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

pub(super) fn user_empty() -> Status {
    Status::new(Code::InvalidArgument, "etcdserver: user name is empty")
}

pub(super) fn user_not_found() -> Status {
    Status::new(Code::FailedPrecondition, "etcdserver: user name not found")
}

pub(super) fn role_empty() -> Status {
    Status::new(Code::InvalidArgument, "etcdserver: role name is empty")
}

pub(super) fn role_not_found() -> Status {
    Status::new(Code::FailedPrecondition, "etcdserver: role name not found")
}

pub(super) fn permission_not_given() -> Status {
    Status::new(Code::InvalidArgument, "etcdserver: permission not given")
}

pub(super) fn invalid_auth_mgmt() -> Status {
    Status::new(Code::InvalidArgument, "etcdserver: invalid auth management")
}

pub(super) fn permission_denied() -> Status {
    Status::new(Code::PermissionDenied, "etcdserver: permission denied")
}

fn auth(e: &AuthError) -> Status {
    match e {
        AuthError::UserEmpty => user_empty(),
        AuthError::InvalidToken => Status::new(Code::Unauthenticated, "etcdserver: invalid auth token"),
        AuthError::PermissionDenied => permission_denied(),
        AuthError::UserNotFound => user_not_found(),
        AuthError::AuthFailed => {
            Status::new(Code::InvalidArgument, "etcdserver: authentication failed, invalid user ID or password")
        }
        AuthError::NotEnabled => Status::new(Code::FailedPrecondition, "etcdserver: authentication is not enabled"),
        AuthError::OldRevision => Status::new(Code::InvalidArgument, "etcdserver: revision of auth store is old"),
        e => Status::new(Code::Internal, e.to_string()),
    }
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
        // etcd's auth store errors, as `rpctypes` names them.
        StoreError::NotFound("user") => user_not_found(),
        StoreError::NotFound("role") => role_not_found(),
        StoreError::AlreadyExists("user") => {
            Status::new(Code::FailedPrecondition, "etcdserver: user name already exists")
        }
        StoreError::AlreadyExists("role") => {
            Status::new(Code::FailedPrecondition, "etcdserver: role name already exists")
        }
        StoreError::InvalidRequest("empty user name") => user_empty(),
        StoreError::InvalidRequest("empty role name") => role_empty(),
        StoreError::NotFound("root user") => {
            Status::new(Code::FailedPrecondition, "etcdserver: root user does not exist")
        }
        StoreError::InvalidRequest("root user does not have the root role") => {
            Status::new(Code::FailedPrecondition, "etcdserver: root user does not have root role")
        }
        StoreError::NotFound("role of the user") => {
            Status::new(Code::FailedPrecondition, "etcdserver: role is not granted to the user")
        }
        StoreError::NotFound("permission") => {
            Status::new(Code::FailedPrecondition, "etcdserver: permission is not granted to the role")
        }
        StoreError::InvalidRequest(
            "cannot delete root user while auth is enabled"
            | "cannot delete root role while auth is enabled"
            | "cannot revoke root role from root user while auth is enabled"
            | "invalid permission range",
        ) => invalid_auth_mgmt(),
        StoreError::InvalidRequest(m) if *m == AUTH_FAILED => auth(&AuthError::AuthFailed),
        StoreError::InvalidRequest(m) if *m == AUTH_NOT_ENABLED => auth(&AuthError::NotEnabled),
        StoreError::NoSpace => Status::new(Code::ResourceExhausted, "etcdserver: mvcc: database space exceeded"),
        StoreError::CorruptAlarm => Status::new(Code::DataLoss, "etcdserver: corrupt cluster"),
        e => Status::new(Code::Unknown, e.to_string()),
    }
}

/// The status a failed request gets.
pub(super) fn status(e: &RaftError) -> Status {
    match e {
        RaftError::Store(e) => store(e),
        RaftError::Auth(e) => auth(e),
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
