//! etcd's Maintenance service: Status, Snapshot, Alarm, HashKV and Defragment (Hash,
//! MoveLeader and Downgrade: not yet).

use super::pb::{PbAlarmAction, PbAlarmType};
use super::pb::{
    PbAlarmMember, PbAlarmRequest, PbAlarmResponse, PbDefragmentRequest, PbDefragmentResponse, PbDowngradeRequest,
    PbDowngradeResponse, PbHashKvRequest, PbHashKvResponse, PbHashRequest, PbHashResponse, PbMaintenanceService,
    PbMoveLeaderRequest, PbMoveLeaderResponse, PbResponseHeader, PbSnapshotRequest, PbSnapshotResponse,
    PbStatusRequest, PbStatusResponse,
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status};

use super::{Member, error};
use crate::saved::Tail;

/// Bytes of image per `SnapshotResponse` (etcd's `snapshotSendBufferSize`).
const SNAPSHOT_CHUNK: usize = 32 * 1024;

/// The etcd API version a member reports in `Status`: the etcd release whose v3 API this
/// serves a subset of.
pub const API_VERSION: &str = "3.5.0";

/// The Maintenance service of a member.
pub(super) struct MaintenanceService(pub(super) Member);

#[tonic::async_trait]
impl PbMaintenanceService for MaintenanceService {
    /// etcd's `Alarm`: `GET` lists the alarms raised (of one type, or all for `NONE`);
    /// `ACTIVATE` and `DEACTIVATE` go through raft and answer the alarm they raised, or cleared
    /// if it was raised (etcd's `applierV3backend.Alarm`).
    async fn alarm(&self, request: Request<PbAlarmRequest>) -> Result<Response<PbAlarmResponse>, Status> {
        let request = request.into_inner();
        let kind = PbAlarmType::try_from(request.alarm).map_err(|_| error::invalid_alarm())?;
        let action = PbAlarmAction::try_from(request.action).map_err(|_| error::invalid_alarm())?;
        let member = |nospace: bool| PbAlarmMember {
            member_id: request.member_id,
            alarm: if nospace { PbAlarmType::Nospace } else { PbAlarmType::Corrupt } as i32,
        };
        let (header, alarms) = match (action, kind) {
            (PbAlarmAction::Get, _) => {
                // etcd answers it through raft: linearizable.
                self.0.read_barrier(false).await?;
                let (header, alarms) = self.0.client.alarms().await.map_err(|e| error::status(&e))?;
                let alarms = alarms
                    .into_iter()
                    .filter(|(_, nospace)| match kind {
                        PbAlarmType::None => true,
                        PbAlarmType::Nospace => *nospace,
                        PbAlarmType::Corrupt => !*nospace,
                    })
                    .map(|(member_id, nospace)| PbAlarmMember { member_id, ..member(nospace) })
                    .collect();
                (header, alarms)
            }
            // An alarm of no type is neither raised nor cleared.
            (_, PbAlarmType::None) => (self.0.client.header().await.map_err(|e| error::status(&e))?, Vec::new()),
            (PbAlarmAction::Activate | PbAlarmAction::Deactivate, kind) => {
                let nospace = kind == PbAlarmType::Nospace;
                let activate = action == PbAlarmAction::Activate;
                let (header, was_raised) = self
                    .0
                    .client
                    .change_alarm(request.member_id, nospace, activate)
                    .await
                    .map_err(|e| error::status(&e))?;
                let changed = activate || was_raised;
                (header, if changed { vec![member(nospace)] } else { Vec::new() })
            }
        };
        Ok(Response::new(PbAlarmResponse { header: self.0.header(header), alarms }))
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

    /// etcd's `Defragment`: this member's backend file is compacted in place, on the member's
    /// loop (nothing is applied or served from it meanwhile), its content unchanged.
    async fn defragment(
        &self,
        request: Request<PbDefragmentRequest>,
    ) -> Result<Response<PbDefragmentResponse>, Status> {
        self.0.authorize_admin(&request).await?;
        log::info!("starting defragment");
        self.0.client.defragment().await.map_err(|e| {
            log::warn!("failed to defragment: {e}");
            error::status(&e)
        })?;
        log::info!("finished defragment");
        let header = self.0.client.header().await.map_err(|e| error::status(&e))?;
        Ok(Response::new(PbDefragmentResponse { header: self.0.header(header) }))
    }

    async fn hash(&self, _request: Request<PbHashRequest>) -> Result<Response<PbHashResponse>, Status> {
        Err(error::unimplemented("Hash"))
    }

    /// etcd's `HashKV`: the CRC-32C of the key space up to a revision (0: the current one), as
    /// etcd computes it, so members that applied the same entries answer the same hash.
    async fn hash_kv(&self, request: Request<PbHashKvRequest>) -> Result<Response<PbHashKvResponse>, Status> {
        self.0.authorize_admin(&request).await?;
        let rev = request.into_inner().revision;
        let (header, hash, compact_revision, hash_revision) =
            self.0.client.hash_kv(rev).await.map_err(|e| error::status(&e))?;
        Ok(Response::new(PbHashKvResponse { header: self.0.header(header), hash, compact_revision, hash_revision }))
    }

    type SnapshotStream = ReceiverStream<Result<PbSnapshotResponse, Status>>;

    /// etcd's `maintenanceServer.Snapshot`: the member's snapshot image, encoded from a read
    /// transaction at its applied index while it is sent, in 32 KiB messages, then the SHA-256
    /// of everything sent as the last message, which `etcdctl snapshot save` appends to its
    /// file. The image is followed by padding and its length before the digest (see
    /// [`crate::saved`]), so the file is one etcdctl takes for a snapshot with a digest, and
    /// one `snapply restore` and `snapply verify` read.
    async fn snapshot(&self, request: Request<PbSnapshotRequest>) -> Result<Response<Self::SnapshotStream>, Status> {
        // etcd's `authMaintenanceServer`: the whole key space leaves with a snapshot.
        self.0.authorize_admin(&request).await?;
        let (header, mut image) = self.0.client.snapshot(SNAPSHOT_CHUNK).await.map_err(|e| error::status(&e))?;
        let mut header = self.0.header(header);
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        log::info!("sending database snapshot to client");
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let mut tail = Tail::default();
            let message = |header: &mut Option<PbResponseHeader>, blob: Vec<u8>| PbSnapshotResponse {
                // The first header of the stream tells the snapshot's point in time.
                header: header.take(),
                // Not known before the image is encoded to its end (etcd's is the size of its
                // backend file): 0 (docs/etcd-differences.md).
                remaining_bytes: 0,
                blob,
                version: API_VERSION.into(),
            };
            while let Some(chunk) = image.next().await {
                let sent = match chunk {
                    Ok(chunk) => {
                        tail.image(&chunk);
                        tx.send(Ok(message(&mut header, chunk))).await
                    }
                    Err(e) => {
                        log::warn!("failed to send database snapshot to client: {e}");
                        let _ = tx.send(Err(Status::new(Code::Internal, e.to_string()))).await;
                        return;
                    }
                };
                if sent.is_err() {
                    // The client went away; dropping the image stops its encoder.
                    log::warn!("the client stopped receiving the database snapshot");
                    return;
                }
            }
            let total = tail.image_len();
            let (body, digest) = tail.finish();
            log::info!("sending database sha256 checksum to client: total-bytes {total}, checksum-size 32");
            let _ = tx.send(Ok(message(&mut header, body))).await;
            let _ = tx.send(Ok(message(&mut header, digest.to_vec()))).await;
            log::info!(
                "successfully sent database snapshot to client: total-bytes {total}, took {:?}",
                started.elapsed()
            );
        });
        Ok(Response::new(ReceiverStream::new(rx)))
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
