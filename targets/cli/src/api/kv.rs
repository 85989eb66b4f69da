//! etcd's KV service: Range, Put, DeleteRange and Compact (Txn and RangeStream: not yet).

use etcd_client::proto::{
    PbCompactionRequest, PbCompactionResponse, PbDeleteRequest, PbDeleteResponse, PbKeyValue, PbKvService,
    PbPutRequest, PbPutResponse, PbRangeRequest, PbRangeResponse, PbRangeStreamResponse, PbTxnRequest, PbTxnResponse,
};
use snapply_raft::{Command, KeyValue, RangeRequest, SortOrder, SortTarget};
use tonic::{Request, Response, Status};

use super::{Member, error};

/// The KV service of a member.
pub(super) struct KvService(pub(super) Member);

pub(super) fn to_pb(kv: KeyValue) -> PbKeyValue {
    PbKeyValue {
        key: kv.key,
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        value: kv.value,
        lease: kv.lease,
    }
}

fn range_request(r: PbRangeRequest) -> Result<RangeRequest, Status> {
    if r.key.is_empty() {
        return Err(error::empty_key());
    }
    let sort_order = match r.sort_order {
        0 => SortOrder::None,
        1 => SortOrder::Ascend,
        2 => SortOrder::Descend,
        _ => return Err(error::invalid_sort_option()),
    };
    let sort_target = match r.sort_target {
        0 => SortTarget::Key,
        1 => SortTarget::Version,
        2 => SortTarget::Create,
        3 => SortTarget::Mod,
        4 => SortTarget::Value,
        _ => return Err(error::invalid_sort_option()),
    };
    Ok(RangeRequest {
        key: r.key,
        range_end: r.range_end,
        limit: r.limit,
        revision: r.revision,
        sort_order,
        sort_target,
        keys_only: r.keys_only,
        count_only: r.count_only,
        min_mod_revision: r.min_mod_revision,
        max_mod_revision: r.max_mod_revision,
        min_create_revision: r.min_create_revision,
        max_create_revision: r.max_create_revision,
    })
}

#[tonic::async_trait]
impl PbKvService for KvService {
    async fn range(&self, request: Request<PbRangeRequest>) -> Result<Response<PbRangeResponse>, Status> {
        let r = request.into_inner();
        let serializable = r.serializable;
        let query = range_request(r)?;
        self.0.read_barrier(serializable).await?;
        let got = self.0.client.range_request(query).await.map_err(|e| error::status(&e))?;
        Ok(Response::new(PbRangeResponse {
            header: self.0.header(got.header),
            kvs: got.kvs.into_iter().map(to_pb).collect(),
            more: got.more,
            count: got.count,
        }))
    }

    type RangeStreamStream = tokio_stream::Empty<Result<PbRangeStreamResponse, Status>>;

    async fn range_stream(
        &self,
        _request: Request<PbRangeRequest>,
    ) -> Result<Response<Self::RangeStreamStream>, Status> {
        Err(error::unimplemented("RangeStream"))
    }

    async fn put(&self, request: Request<PbPutRequest>) -> Result<Response<PbPutResponse>, Status> {
        let r = request.into_inner();
        if r.key.is_empty() {
            return Err(error::empty_key());
        }
        if r.ignore_value && !r.value.is_empty() {
            return Err(error::value_provided());
        }
        if r.ignore_lease && r.lease != 0 {
            return Err(error::lease_provided());
        }
        let (mut value, mut lease) = (r.value, r.lease);
        if r.ignore_value || r.ignore_lease {
            // etcd resolves these when it applies the put; here they are resolved from this
            // member's state before proposing (docs/etcd-differences.md).
            let current = self
                .0
                .client
                .range_request(RangeRequest { key: r.key.clone(), ..RangeRequest::default() })
                .await
                .map_err(|e| error::status(&e))?;
            let Some(kv) = current.kvs.into_iter().next() else {
                return Err(error::key_not_found());
            };
            if r.ignore_value {
                value = kv.value;
            }
            if r.ignore_lease {
                lease = kv.lease;
            }
        }
        let (header, prev) = self.0.client.put_returning(r.key, value, lease).await.map_err(|e| error::status(&e))?;
        Ok(Response::new(PbPutResponse {
            header: self.0.header(header),
            prev_kv: if r.prev_kv { prev.map(to_pb) } else { None },
        }))
    }

    async fn delete_range(&self, request: Request<PbDeleteRequest>) -> Result<Response<PbDeleteResponse>, Status> {
        let r = request.into_inner();
        if r.key.is_empty() {
            return Err(error::empty_key());
        }
        let (header, prev) = self.0.client.delete_returning(r.key, r.range_end).await.map_err(|e| error::status(&e))?;
        Ok(Response::new(PbDeleteResponse {
            header: self.0.header(header),
            deleted: i64::try_from(prev.len()).unwrap_or(i64::MAX),
            prev_kvs: if r.prev_kv { prev.into_iter().map(to_pb).collect() } else { Vec::new() },
        }))
    }

    async fn txn(&self, _request: Request<PbTxnRequest>) -> Result<Response<PbTxnResponse>, Status> {
        Err(error::unimplemented("Txn"))
    }

    async fn compact(&self, request: Request<PbCompactionRequest>) -> Result<Response<PbCompactionResponse>, Status> {
        let r = request.into_inner();
        // The compaction is applied with the entry, so `physical` is always met.
        let header = self
            .0
            .client
            .propose_with_header(Command::Compact { revision: r.revision })
            .await
            .map_err(|e| error::status(&e))?;
        Ok(Response::new(PbCompactionResponse { header: self.0.header(header) }))
    }
}
