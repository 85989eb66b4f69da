//! etcd's Maintenance service: Status (Alarm, Defragment, Hash, HashKV, Snapshot, MoveLeader
//! and Downgrade: not yet).

use etcd_client::proto::{
    PbAlarmRequest, PbAlarmResponse, PbDefragmentRequest, PbDefragmentResponse, PbDowngradeRequest,
    PbDowngradeResponse, PbHashKvRequest, PbHashKvResponse, PbHashRequest, PbHashResponse, PbMaintenanceService,
    PbMoveLeaderRequest, PbMoveLeaderResponse, PbSnapshotRequest, PbSnapshotResponse, PbStatusRequest,
    PbStatusResponse,
};
use tonic::{Request, Response, Status};

use super::{Member, error};

/// The etcd API version a member reports in `Status`: the etcd release whose v3 API this
/// serves a subset of.
pub const API_VERSION: &str = "3.5.0";

/// The Maintenance service of a member.
pub(super) struct MaintenanceService(pub(super) Member);

#[tonic::async_trait]
impl PbMaintenanceService for MaintenanceService {
    async fn alarm(&self, _request: Request<PbAlarmRequest>) -> Result<Response<PbAlarmResponse>, Status> {
        Err(error::unimplemented("Alarm"))
    }

    async fn status(&self, _request: Request<PbStatusRequest>) -> Result<Response<PbStatusResponse>, Status> {
        let s = self.0.client.node_status().await.map_err(|e| error::status(&e))?;
        let db_size = std::fs::metadata(&self.0.db_path).map_or(0, |m| i64::try_from(m.len()).unwrap_or(i64::MAX));
        Ok(Response::new(PbStatusResponse {
            header: self.0.header(s.header),
            version: API_VERSION.into(),
            db_size,
            leader: s.leader,
            raft_index: s.raft_index,
            raft_term: s.header.raft_term,
            raft_applied_index: s.raft_applied_index,
            db_size_in_use: db_size,
            is_learner: s.is_learner,
            ..Default::default()
        }))
    }

    async fn defragment(
        &self,
        _request: Request<PbDefragmentRequest>,
    ) -> Result<Response<PbDefragmentResponse>, Status> {
        Err(error::unimplemented("Defragment"))
    }

    async fn hash(&self, _request: Request<PbHashRequest>) -> Result<Response<PbHashResponse>, Status> {
        Err(error::unimplemented("Hash"))
    }

    async fn hash_kv(&self, _request: Request<PbHashKvRequest>) -> Result<Response<PbHashKvResponse>, Status> {
        Err(error::unimplemented("HashKV"))
    }

    type SnapshotStream = tokio_stream::Empty<Result<PbSnapshotResponse, Status>>;

    async fn snapshot(&self, _request: Request<PbSnapshotRequest>) -> Result<Response<Self::SnapshotStream>, Status> {
        Err(error::unimplemented("Snapshot"))
    }

    async fn move_leader(
        &self,
        _request: Request<PbMoveLeaderRequest>,
    ) -> Result<Response<PbMoveLeaderResponse>, Status> {
        Err(error::unimplemented("MoveLeader"))
    }

    async fn downgrade(&self, _request: Request<PbDowngradeRequest>) -> Result<Response<PbDowngradeResponse>, Status> {
        Err(error::unimplemented("Downgrade"))
    }
}
