//! etcd's Cluster service: MemberList (MemberAdd, MemberRemove, MemberUpdate and
//! MemberPromote: not yet).

use etcd_client::proto::{
    PbClusterService, PbMember, PbMemberAddRequest, PbMemberAddResponse, PbMemberListRequest, PbMemberListResponse,
    PbMemberPromoteRequest, PbMemberPromoteResponse, PbMemberRemoveRequest, PbMemberRemoveResponse,
    PbMemberUpdateRequest, PbMemberUpdateResponse,
};
use tonic::{Request, Response, Status};

use super::{Member, error};

/// The Cluster service of a member.
pub(super) struct ClusterService(pub(super) Member);

#[tonic::async_trait]
impl PbClusterService for ClusterService {
    async fn member_add(&self, _request: Request<PbMemberAddRequest>) -> Result<Response<PbMemberAddResponse>, Status> {
        Err(error::unimplemented("MemberAdd"))
    }

    async fn member_remove(
        &self,
        _request: Request<PbMemberRemoveRequest>,
    ) -> Result<Response<PbMemberRemoveResponse>, Status> {
        Err(error::unimplemented("MemberRemove"))
    }

    async fn member_update(
        &self,
        _request: Request<PbMemberUpdateRequest>,
    ) -> Result<Response<PbMemberUpdateResponse>, Status> {
        Err(error::unimplemented("MemberUpdate"))
    }

    async fn member_list(
        &self,
        request: Request<PbMemberListRequest>,
    ) -> Result<Response<PbMemberListResponse>, Status> {
        self.0.read_barrier(!request.into_inner().linearizable).await?;
        let (mut header, members) = self.0.client.members().await.map_err(|e| error::status(&e))?;
        // etcd's Cluster service headers carry no revision.
        header.revision = 0;
        let me = self.0.client.id();
        Ok(Response::new(PbMemberListResponse {
            header: self.0.header(header),
            members: members
                .into_iter()
                .map(|m| PbMember {
                    id: m.id,
                    name: m.name,
                    peer_ur_ls: m.peer_urls,
                    // Members do not publish their client URLs yet (etcd's `publish`): a
                    // member knows only its own.
                    client_ur_ls: if m.id == me && m.client_urls.is_empty() {
                        self.0.client_urls.clone()
                    } else {
                        m.client_urls
                    },
                    is_learner: m.is_learner,
                })
                .collect(),
        }))
    }

    async fn member_promote(
        &self,
        _request: Request<PbMemberPromoteRequest>,
    ) -> Result<Response<PbMemberPromoteResponse>, Status> {
        Err(error::unimplemented("MemberPromote"))
    }
}
