//! etcd's Lease service: Grant, Revoke, KeepAlive, TimeToLive and Leases. Expiry is the
//! leader's (snapply-raft's node): renewals and remaining TTLs are answered by it.

use snapply_raft::RequestBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use super::pb::{
    PbLeaseGrantRequest, PbLeaseGrantResponse, PbLeaseKeepAliveRequest, PbLeaseKeepAliveResponse, PbLeaseLeasesRequest,
    PbLeaseLeasesResponse, PbLeaseRevokeRequest, PbLeaseRevokeResponse, PbLeaseService, PbLeaseStatus,
    PbLeaseTimeToLiveRequest, PbLeaseTimeToLiveResponse,
};
use snapply_raft::{Command, Need};
use tonic::{Request, Response, Status, Streaming};

use super::{Member, error};

/// Responses of one keep-alive stream waiting for the client to read them.
const KEEP_ALIVE_QUEUE: usize = 16;

/// The Lease service of a member.
pub(super) struct LeaseService(pub(super) Member);

/// Lease ids this member generated: the low bits of the ids it hands out.
static GENERATED: AtomicU64 = AtomicU64::new(0);

/// A new lease id, as etcd's `idutil.Generator`: the member id's low 16 bits, then a
/// millisecond timestamp and a counter; positive and never 0.
fn new_lease_id(member: u64) -> i64 {
    let millis = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    let prefix = (member & 0xffff) << 48;
    let suffix = ((millis & 0xff_ffff_ffff) << 8).wrapping_add(GENERATED.fetch_add(1, Ordering::Relaxed));
    let id = ((prefix | (suffix & 0xffff_ffff_ffff)) & (i64::MAX as u64)) as i64;
    id.max(1)
}

#[tonic::async_trait]
impl PbLeaseService for LeaseService {
    async fn lease_grant(
        &self,
        request: Request<PbLeaseGrantRequest>,
    ) -> Result<Response<PbLeaseGrantResponse>, Status> {
        let r = request.into_inner();
        let id = if r.id == 0 { new_lease_id(self.0.client.id()) } else { r.id };
        let status = |e| error::status(&e);
        let header = self
            .0
            .client
            .propose_with_header(Command::Apply(RequestBuf::LeaseGrant { id, ttl: r.ttl }))
            .await
            .map_err(status)?;
        // The lessor raises a TTL below its minimum: answer the TTL it granted.
        let (_, lease) = self.0.client.lease(id).await.map_err(status)?;
        let ttl = lease.map_or(r.ttl, |l| l.granted_ttl);
        Ok(Response::new(PbLeaseGrantResponse { header: self.0.header(header), id, ttl, error: String::new() }))
    }

    async fn lease_revoke(
        &self,
        request: Request<PbLeaseRevokeRequest>,
    ) -> Result<Response<PbLeaseRevokeResponse>, Status> {
        // etcd's `checkLeasePuts`: revoking deletes the lease's keys.
        let id = request.get_ref().id;
        let revoke = |client: snapply_raft::Client| async move {
            client.propose_with_header(Command::Apply(RequestBuf::LeaseRevoke { id })).await
        };
        let header = self.0.authorized(&request, vec![Need::LeaseKeys(id)], revoke).await?;
        Ok(Response::new(PbLeaseRevokeResponse { header: self.0.header(header) }))
    }

    type LeaseKeepAliveStream = tokio_stream::wrappers::ReceiverStream<Result<PbLeaseKeepAliveResponse, Status>>;

    /// etcd's `leaseKeepAlive`: each request renews its lease on the leader (a follower forwards
    /// it) and is answered with the lease's TTL, 0 for a lease that does not exist (or has
    /// expired); the stream ends when the client closes it or a renewal fails.
    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<PbLeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let mut requests = request.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(KEEP_ALIVE_QUEUE);
        let member = self.0.clone();
        tokio::spawn(async move {
            while let Ok(Some(r)) = requests.message().await {
                // The header is read before the renewal, as etcd fills it: its revision is never
                // past the one the renewal saw.
                let renewed = async {
                    let header = member.client.header().await?;
                    let ttl = member.client.renew_lease(r.id).await?;
                    Ok::<_, snapply_raft::RaftError>(PbLeaseKeepAliveResponse {
                        header: member.header(header),
                        id: r.id,
                        ttl: ttl.unwrap_or(0),
                    })
                }
                .await
                .map_err(|e| error::status(&e));
                let failed = renewed.is_err();
                if tx.send(renewed).await.is_err() || failed {
                    break;
                }
            }
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<PbLeaseTimeToLiveRequest>,
    ) -> Result<Response<PbLeaseTimeToLiveResponse>, Status> {
        let r = request.into_inner();
        let (header, lease) = self.0.client.lease(r.id).await.map_err(|e| error::status(&e))?;
        // etcd answers a lease it does not know with TTL -1, not an error.
        let response = match lease {
            Some(l) => PbLeaseTimeToLiveResponse {
                header: self.0.header(header),
                id: r.id,
                ttl: l.ttl,
                granted_ttl: l.granted_ttl,
                keys: if r.keys { l.keys } else { Vec::new() },
            },
            None => {
                PbLeaseTimeToLiveResponse { header: self.0.header(header), id: r.id, ttl: -1, ..Default::default() }
            }
        };
        Ok(Response::new(response))
    }

    async fn lease_leases(
        &self,
        _request: Request<PbLeaseLeasesRequest>,
    ) -> Result<Response<PbLeaseLeasesResponse>, Status> {
        let (header, ids) = self.0.client.leases().await.map_err(|e| error::status(&e))?;
        Ok(Response::new(PbLeaseLeasesResponse {
            header: self.0.header(header),
            leases: ids.into_iter().map(|id| PbLeaseStatus { id }).collect(),
        }))
    }
}
