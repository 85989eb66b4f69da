//! etcd's Cluster service: MemberAdd (voter or learner), MemberRemove, MemberList and
//! MemberPromote, as raft-rs conf changes; MemberUpdate as a normal entry (raft-rs has no
//! `UpdateNode`).

use super::pb::{
    PbClusterService, PbMember, PbMemberAddRequest, PbMemberAddResponse, PbMemberListRequest, PbMemberListResponse,
    PbMemberPromoteRequest, PbMemberPromoteResponse, PbMemberRemoveRequest, PbMemberRemoveResponse,
    PbMemberUpdateRequest, PbMemberUpdateResponse, PbResponseHeader,
};
use snapply_raft::{MemberInfo, Need};
use tonic::{Request, Response, Status};

use super::{Member, error};

/// The Cluster service of a member.
pub(super) struct ClusterService(pub(super) Member);

#[tonic::async_trait]
impl PbClusterService for ClusterService {
    /// etcd's `ClusterServer.MemberAdd`: the id from the peer URLs and the time (etcd's
    /// `NewMember("", urls, "", now)`), a raft-rs conf change (`AddNode`, or `AddLearnerNode`),
    /// answered once this member applied it.
    async fn member_add(&self, request: Request<PbMemberAddRequest>) -> Result<Response<PbMemberAddResponse>, Status> {
        self.0.authorize(&request, vec![Need::Admin]).await?;
        let request = request.into_inner();
        let mut peer_urls = request.peer_ur_ls;
        if peer_urls.is_empty() || peer_urls.iter().any(|u| snapply_raft::check_peer_url(u).is_err()) {
            return Err(error::member_bad_urls());
        }
        peer_urls.sort_unstable();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let id = snapply_raft::compute_member_id(&peer_urls, "", i64::try_from(now).ok());
        let info = MemberInfo { name: String::new(), peer_urls: peer_urls.clone(), client_urls: Vec::new() };
        let added = if request.is_learner {
            self.0.client.add_learner(id, &info).await
        } else {
            self.0.client.add_member(id, &info).await
        };
        added.map_err(|e| error::status(&e))?;
        let (header, members) = self.members().await?;
        let member = PbMember { id, peer_ur_ls: peer_urls, is_learner: request.is_learner, ..Default::default() };
        Ok(Response::new(PbMemberAddResponse { header, member: Some(member), members }))
    }

    /// etcd's `ClusterServer.MemberRemove`: a raft-rs `RemoveNode`, answered once applied here.
    async fn member_remove(
        &self,
        request: Request<PbMemberRemoveRequest>,
    ) -> Result<Response<PbMemberRemoveResponse>, Status> {
        self.0.authorize(&request, vec![Need::Admin]).await?;
        let id = request.into_inner().id;
        self.0.client.remove_member(id).await.map_err(|e| error::status(&e))?;
        let (header, members) = self.members().await?;
        Ok(Response::new(PbMemberRemoveResponse { header, members }))
    }

    /// etcd's `ClusterServer.MemberUpdate`: the member's new peer URLs through raft, answered
    /// once this member applied them; every member's transport then dials them.
    async fn member_update(
        &self,
        request: Request<PbMemberUpdateRequest>,
    ) -> Result<Response<PbMemberUpdateResponse>, Status> {
        self.0.authorize(&request, vec![Need::Admin]).await?;
        let request = request.into_inner();
        let peer_urls = request.peer_ur_ls;
        if peer_urls.is_empty() || peer_urls.iter().any(|u| snapply_raft::check_peer_url(u).is_err()) {
            return Err(error::member_bad_urls());
        }
        // Kept in the order given, as etcd's `MemberUpdate` keeps them.
        self.0.client.update_member(request.id, &peer_urls).await.map_err(|e| error::status(&e))?;
        let (header, members) = self.members().await?;
        Ok(Response::new(PbMemberUpdateResponse { header, members }))
    }

    async fn member_list(
        &self,
        request: Request<PbMemberListRequest>,
    ) -> Result<Response<PbMemberListResponse>, Status> {
        self.0.read_barrier(!request.into_inner().linearizable).await?;
        let (header, members) = self.members().await?;
        Ok(Response::new(PbMemberListResponse { header, members }))
    }

    /// etcd's `ClusterServer.MemberPromote`: raft-rs's `AddNode` of the learner; asked of the
    /// leader, refused while the learner has not caught up (etcd's `isLearnerReady`).
    async fn member_promote(
        &self,
        request: Request<PbMemberPromoteRequest>,
    ) -> Result<Response<PbMemberPromoteResponse>, Status> {
        self.0.authorize(&request, vec![Need::Admin]).await?;
        let id = request.into_inner().id;
        self.0.client.promote_member(id).await.map_err(|e| error::status(&e))?;
        let (header, members) = self.members().await?;
        Ok(Response::new(PbMemberPromoteResponse { header, members }))
    }
}

impl ClusterService {
    /// The members as this member's state has them, with the response header.
    async fn members(&self) -> Result<(Option<PbResponseHeader>, Vec<PbMember>), Status> {
        let (mut header, members) = self.0.client.members().await.map_err(|e| error::status(&e))?;
        // etcd's Cluster service headers carry no revision.
        header.revision = 0;
        let me = self.0.client.id();
        let members = members
            .into_iter()
            .map(|m| {
                // A member publishes its name and client URLs through raft once it started
                // (etcd's `publish`); until that is applied, it answers its own from its flags.
                let own = m.id == me;
                PbMember {
                    id: m.id,
                    name: if own && m.name.is_empty() { self.0.name.clone() } else { m.name },
                    peer_ur_ls: m.peer_urls,
                    client_ur_ls: if own && m.client_urls.is_empty() {
                        self.0.client_urls.clone()
                    } else {
                        m.client_urls
                    },
                    is_learner: m.is_learner,
                }
            })
            .collect();
        Ok((self.0.header(header), members))
    }
}
