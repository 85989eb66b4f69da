//! etcd's v3 API as `build.rs` generates it from etcd's own `.proto` files (`proto/`), under the
//! names the service modules use (`Pb` + etcd's message name).

// Generated code: etcd's field names and tonic's server plumbing, not written here.
#[allow(
    missing_docs,
    dead_code,
    clippy::all,
    clippy::pedantic,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]
#[allow(clippy::indexing_slicing, clippy::unreachable, clippy::todo, clippy::unimplemented)]
mod generated {
    pub mod authpb {
        tonic::include_proto!("authpb");
    }
    pub mod mvccpb {
        tonic::include_proto!("mvccpb");
    }
    pub mod etcdserverpb {
        tonic::include_proto!("etcdserverpb");
    }
}

pub(super) use generated::authpb::{Permission as PbPermission, permission::Type as PbPermissionType};
pub(super) use generated::etcdserverpb::alarm_request::AlarmAction as PbAlarmAction;
pub(super) use generated::etcdserverpb::compare::TargetUnion as PbTargetUnion;
pub(super) use generated::etcdserverpb::request_op::Request as PbTxnOpRequest;
pub(super) use generated::etcdserverpb::response_op::Response as PbTxnOpResponse;
pub(super) use generated::etcdserverpb::watch_request::RequestUnion as PbWatchRequestUnion;
pub(super) use generated::etcdserverpb::{
    AlarmMember as PbAlarmMember, AlarmRequest as PbAlarmRequest, AlarmResponse as PbAlarmResponse,
    AlarmType as PbAlarmType, AuthDisableRequest as PbAuthDisableRequest, AuthDisableResponse as PbAuthDisableResponse,
    AuthEnableRequest as PbAuthEnableRequest, AuthEnableResponse as PbAuthEnableResponse,
    AuthRoleAddRequest as PbAuthRoleAddRequest, AuthRoleAddResponse as PbAuthRoleAddResponse,
    AuthRoleDeleteRequest as PbAuthRoleDeleteRequest, AuthRoleDeleteResponse as PbAuthRoleDeleteResponse,
    AuthRoleGetRequest as PbAuthRoleGetRequest, AuthRoleGetResponse as PbAuthRoleGetResponse,
    AuthRoleGrantPermissionRequest as PbAuthRoleGrantPermissionRequest,
    AuthRoleGrantPermissionResponse as PbAuthRoleGrantPermissionResponse, AuthRoleListRequest as PbAuthRoleListRequest,
    AuthRoleListResponse as PbAuthRoleListResponse,
    AuthRoleRevokePermissionRequest as PbAuthRoleRevokePermissionRequest,
    AuthRoleRevokePermissionResponse as PbAuthRoleRevokePermissionResponse, AuthStatusRequest as PbAuthStatusRequest,
    AuthStatusResponse as PbAuthStatusResponse, AuthUserAddRequest as PbAuthUserAddRequest,
    AuthUserAddResponse as PbAuthUserAddResponse, AuthUserChangePasswordRequest as PbAuthUserChangePasswordRequest,
    AuthUserChangePasswordResponse as PbAuthUserChangePasswordResponse,
    AuthUserDeleteRequest as PbAuthUserDeleteRequest, AuthUserDeleteResponse as PbAuthUserDeleteResponse,
    AuthUserGetRequest as PbAuthUserGetRequest, AuthUserGetResponse as PbAuthUserGetResponse,
    AuthUserGrantRoleRequest as PbAuthUserGrantRoleRequest, AuthUserGrantRoleResponse as PbAuthUserGrantRoleResponse,
    AuthUserListRequest as PbAuthUserListRequest, AuthUserListResponse as PbAuthUserListResponse,
    AuthUserRevokeRoleRequest as PbAuthUserRevokeRoleRequest,
    AuthUserRevokeRoleResponse as PbAuthUserRevokeRoleResponse, AuthenticateRequest as PbAuthenticateRequest,
    AuthenticateResponse as PbAuthenticateResponse, CompactionRequest as PbCompactionRequest,
    CompactionResponse as PbCompactionResponse, Compare as PbCompare, DefragmentRequest as PbDefragmentRequest,
    DefragmentResponse as PbDefragmentResponse, DeleteRangeRequest as PbDeleteRequest,
    DeleteRangeResponse as PbDeleteResponse, DowngradeRequest as PbDowngradeRequest,
    DowngradeResponse as PbDowngradeResponse, HashKvRequest as PbHashKvRequest, HashKvResponse as PbHashKvResponse,
    HashRequest as PbHashRequest, HashResponse as PbHashResponse, LeaseGrantRequest as PbLeaseGrantRequest,
    LeaseGrantResponse as PbLeaseGrantResponse, LeaseKeepAliveRequest as PbLeaseKeepAliveRequest,
    LeaseKeepAliveResponse as PbLeaseKeepAliveResponse, LeaseLeasesRequest as PbLeaseLeasesRequest,
    LeaseLeasesResponse as PbLeaseLeasesResponse, LeaseRevokeRequest as PbLeaseRevokeRequest,
    LeaseRevokeResponse as PbLeaseRevokeResponse, LeaseStatus as PbLeaseStatus,
    LeaseTimeToLiveRequest as PbLeaseTimeToLiveRequest, LeaseTimeToLiveResponse as PbLeaseTimeToLiveResponse,
    Member as PbMember, MemberAddRequest as PbMemberAddRequest, MemberAddResponse as PbMemberAddResponse,
    MemberListRequest as PbMemberListRequest, MemberListResponse as PbMemberListResponse,
    MemberPromoteRequest as PbMemberPromoteRequest, MemberPromoteResponse as PbMemberPromoteResponse,
    MemberRemoveRequest as PbMemberRemoveRequest, MemberRemoveResponse as PbMemberRemoveResponse,
    MemberUpdateRequest as PbMemberUpdateRequest, MemberUpdateResponse as PbMemberUpdateResponse,
    MoveLeaderRequest as PbMoveLeaderRequest, MoveLeaderResponse as PbMoveLeaderResponse, PutRequest as PbPutRequest,
    PutResponse as PbPutResponse, RangeRequest as PbRangeRequest, RangeResponse as PbRangeResponse,
    RangeStreamResponse as PbRangeStreamResponse, RequestOp as PbTxnRequestOp, ResponseHeader as PbResponseHeader,
    ResponseOp as PbResponseOp, SnapshotRequest as PbSnapshotRequest, SnapshotResponse as PbSnapshotResponse,
    StatusRequest as PbStatusRequest, StatusResponse as PbStatusResponse, TxnRequest as PbTxnRequest,
    TxnResponse as PbTxnResponse, WatchRequest as PbWatchRequest, WatchResponse as PbWatchResponse,
};
pub(super) use generated::etcdserverpb::{
    auth_server::{Auth as PbAuthService, AuthServer as PbAuthServer},
    cluster_server::{Cluster as PbClusterService, ClusterServer as PbClusterServer},
    kv_server::{Kv as PbKvService, KvServer as PbKvServer},
    lease_server::{Lease as PbLeaseService, LeaseServer as PbLeaseServer},
    maintenance_server::{Maintenance as PbMaintenanceService, MaintenanceServer as PbMaintenanceServer},
    watch_server::{Watch as PbWatchService, WatchServer as PbWatchServer},
};
pub(super) use generated::mvccpb::{Event as PbEvent, KeyValue as PbKeyValue};
