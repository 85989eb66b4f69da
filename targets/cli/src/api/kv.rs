//! etcd's KV service: Range, Put, DeleteRange, Txn and Compact (RangeStream: not yet).

use super::pb::{
    PbCompactionRequest, PbCompactionResponse, PbCompare, PbDeleteRequest, PbDeleteResponse, PbKeyValue, PbKvService,
    PbPutRequest, PbPutResponse, PbRangeRequest, PbRangeResponse, PbRangeStreamResponse, PbResponseHeader,
    PbResponseOp, PbTargetUnion, PbTxnOpRequest, PbTxnOpResponse, PbTxnRequest, PbTxnRequestOp, PbTxnResponse,
};
use snapply_core::store::MAX_TXN_DEPTH;
use snapply_raft::{
    Command, CompareBuf, CompareResult, CompareTargetBuf, KeyValue, Need, RangeRequest, RequestBuf, SortOrder,
    SortTarget, TxnNodeBuf, TxnOpBuf, TxnOpResponse, TxnResponse,
};
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

fn read(key: &[u8], range_end: &[u8]) -> Need {
    Need::Read { key: key.to_vec(), range_end: range_end.to_vec() }
}

fn write(key: &[u8], range_end: &[u8]) -> Need {
    Need::Write { key: key.to_vec(), range_end: range_end.to_vec() }
}

/// What a put needs of its user (etcd's `checkPutAuth`): writing the key; writing every key of
/// the lease it attaches the key to; reading the key when it asks for the previous one.
fn put_needs(p: &PbPutRequest, needs: &mut Vec<Need>) {
    needs.push(write(&p.key, b""));
    if p.lease != 0 {
        needs.push(Need::LeaseKeys(p.lease));
    }
    if p.prev_kv {
        needs.push(read(&p.key, b""));
    }
}

/// What a delete needs: writing the range, and reading it when it asks for what it deleted.
fn delete_needs(d: &PbDeleteRequest, needs: &mut Vec<Need>) {
    needs.push(write(&d.key, &d.range_end));
    if d.prev_kv {
        needs.push(read(&d.key, &d.range_end));
    }
}

/// What a transaction needs (etcd's `checkTxnPermission`): reading what it compares, and what
/// each op of both branches needs, nested transactions included.
fn txn_needs(r: &PbTxnRequest, needs: &mut Vec<Need>) {
    needs.extend(r.compare.iter().map(|c| read(&c.key, &c.range_end)));
    for op in r.success.iter().chain(&r.failure) {
        match &op.request {
            Some(PbTxnOpRequest::RequestRange(rr)) => needs.push(read(&rr.key, &rr.range_end)),
            Some(PbTxnOpRequest::RequestPut(p)) => put_needs(p, needs),
            Some(PbTxnOpRequest::RequestDeleteRange(d)) => delete_needs(d, needs),
            Some(PbTxnOpRequest::RequestTxn(t)) => txn_needs(t, needs),
            None => {}
        }
    }
}

/// etcd's default `--max-txn-ops`: most compares, and most ops of each branch, a transaction
/// may have.
pub const MAX_TXN_OPS: usize = 128;

fn compare(c: &PbCompare) -> Result<CompareBuf, Status> {
    let result = match c.result {
        0 => CompareResult::Equal,
        1 => CompareResult::Greater,
        2 => CompareResult::Less,
        3 => CompareResult::NotEqual,
        _ => return Err(Status::invalid_argument("etcdserver: unknown compare result")),
    };
    let target = match &c.target_union {
        Some(PbTargetUnion::Version(v)) => CompareTargetBuf::Version(*v),
        Some(PbTargetUnion::CreateRevision(v)) => CompareTargetBuf::CreateRevision(*v),
        Some(PbTargetUnion::ModRevision(v)) => CompareTargetBuf::ModRevision(*v),
        Some(PbTargetUnion::Value(v)) => CompareTargetBuf::Value(v.clone()),
        Some(PbTargetUnion::Lease(v)) => CompareTargetBuf::Lease(*v),
        // A compare without its value compares with the target's zero, as Go's proto does.
        None => match c.target {
            0 => CompareTargetBuf::Version(0),
            1 => CompareTargetBuf::CreateRevision(0),
            2 => CompareTargetBuf::ModRevision(0),
            3 => CompareTargetBuf::Value(Vec::new()),
            4 => CompareTargetBuf::Lease(0),
            _ => return Err(Status::invalid_argument("etcdserver: unknown compare target")),
        },
    };
    Ok(CompareBuf { key: c.key.clone(), range_end: c.range_end.clone(), result, target })
}

/// Flattens `r` and its nested transactions into the table the node applies (a nested one
/// after the one holding it), with each node's range requests; returns `r`'s index.
fn flatten(
    r: &PbTxnRequest,
    max_ops: usize,
    depth: usize,
    nodes: &mut Vec<TxnNodeBuf>,
    ranges: &mut Vec<[Vec<RangeRequest>; 2]>,
) -> Result<u32, Status> {
    if depth > MAX_TXN_DEPTH {
        return Err(Status::invalid_argument(format!("snapply: transactions nested deeper than {MAX_TXN_DEPTH}")));
    }
    if r.compare.len() > max_ops || r.success.len() > max_ops || r.failure.len() > max_ops {
        return Err(error::too_many_ops());
    }
    let index = nodes.len();
    let id = u32::try_from(index).map_err(|_| error::too_many_ops())?;
    nodes.push(TxnNodeBuf::default());
    ranges.push([Vec::new(), Vec::new()]);
    let compares = r.compare.iter().map(compare).collect::<Result<Vec<_>, _>>()?;
    let mut branches = [Vec::new(), Vec::new()];
    let mut branch_ranges = [Vec::new(), Vec::new()];
    for ((ops, out), out_ranges) in [&r.success, &r.failure].into_iter().zip(&mut branches).zip(&mut branch_ranges) {
        for op in ops {
            out.push(match &op.request {
                Some(PbTxnOpRequest::RequestRange(rr)) => {
                    if rr.revision != 0 {
                        return Err(error::unimplemented("a range at a past revision inside a transaction"));
                    }
                    let request = range_request(rr.clone())?;
                    let op = TxnOpBuf::Range { key: request.key.clone(), range_end: request.range_end.clone() };
                    out_ranges.push(request);
                    op
                }
                Some(PbTxnOpRequest::RequestPut(p)) => {
                    if p.key.is_empty() {
                        return Err(error::empty_key());
                    }
                    if p.ignore_value || p.ignore_lease {
                        return Err(error::unimplemented("ignore_value and ignore_lease inside a transaction"));
                    }
                    TxnOpBuf::Put { key: p.key.clone(), value: p.value.clone(), lease: p.lease }
                }
                Some(PbTxnOpRequest::RequestDeleteRange(d)) => {
                    if d.key.is_empty() {
                        return Err(error::empty_key());
                    }
                    TxnOpBuf::DeleteRange { key: d.key.clone(), range_end: d.range_end.clone() }
                }
                Some(PbTxnOpRequest::RequestTxn(t)) => TxnOpBuf::Txn(flatten(t, max_ops, depth + 1, nodes, ranges)?),
                None => return Err(Status::invalid_argument("etcdserver: a transaction op without a request")),
            });
        }
    }
    let [success, failure] = branches;
    if let (Some(node), Some(node_ranges)) = (nodes.get_mut(index), ranges.get_mut(index)) {
        *node = TxnNodeBuf { compare: compares, success, failure };
        *node_ranges = branch_ranges;
    }
    Ok(id)
}

/// Whether `key` is in one of `dels`' intervals (`[start, end)`; an empty end is `start` alone,
/// `[0]` every key from `start` on).
fn deleted(dels: &[(Vec<u8>, Vec<u8>)], key: &[u8]) -> bool {
    dels.iter().any(|(start, end)| match end.as_slice() {
        [] => key == start.as_slice(),
        [0] => key >= start.as_slice(),
        end => key >= start.as_slice() && key < end,
    })
}

/// etcd's `checkIntervals`: the keys one branch puts, and the ranges it deletes, nested
/// transactions included; a key put twice, or put and deleted, is refused (the two branches
/// of a nested transaction may put the same key: only one of them runs).
type Intervals = (std::collections::BTreeSet<Vec<u8>>, Vec<(Vec<u8>, Vec<u8>)>);

fn check_intervals(ops: &[PbTxnRequestOp]) -> Result<Intervals, Status> {
    let mut dels: Vec<(Vec<u8>, Vec<u8>)> = ops
        .iter()
        .filter_map(|op| match &op.request {
            Some(PbTxnOpRequest::RequestDeleteRange(d)) => Some((d.key.clone(), d.range_end.clone())),
            _ => None,
        })
        .collect();
    let mut puts = std::collections::BTreeSet::new();
    for op in ops {
        let Some(PbTxnOpRequest::RequestTxn(t)) = &op.request else { continue };
        let (puts_then, dels_then) = check_intervals(&t.success)?;
        let (puts_else, dels_else) = check_intervals(&t.failure)?;
        for k in &puts_then {
            if puts.contains(k) || deleted(&dels, k) {
                return Err(error::duplicate_key());
            }
            puts.insert(k.clone());
        }
        for k in &puts_else {
            if (puts.contains(k) && !puts_then.contains(k)) || deleted(&dels, k) {
                return Err(error::duplicate_key());
            }
            puts.insert(k.clone());
        }
        dels.extend(dels_then);
        dels.extend(dels_else);
    }
    for op in ops {
        let Some(PbTxnOpRequest::RequestPut(p)) = &op.request else { continue };
        if puts.contains(&p.key) || deleted(&dels, &p.key) {
            return Err(error::duplicate_key());
        }
        puts.insert(p.key.clone());
    }
    Ok((puts, dels))
}

/// The response to `r` from the node's `response`, with what each op asked for (`prev_kv`).
/// A node's transaction response in etcd's form. Only the top response has a full header; the
/// ops' responses carry only the revision their op saw, and nested transactions an empty one
/// (all zero), as etcd's `newTxnResp` and `applyTxn` build them.
fn txn_to_pb(member: &Member, response: TxnResponse, r: &PbTxnRequest) -> PbTxnResponse {
    let mut pb = txn_ops_to_pb(response.responses, response.succeeded, r);
    pb.header = member.header(response.header);
    pb
}

fn txn_ops_to_pb(done: Vec<TxnOpResponse>, succeeded: bool, r: &PbTxnRequest) -> PbTxnResponse {
    let ops = if succeeded { &r.success } else { &r.failure };
    let header = |revision| Some(PbResponseHeader { revision, ..PbResponseHeader::default() });
    let responses = done
        .into_iter()
        .zip(ops)
        .map(|(done, op)| {
            let response = match (done, &op.request) {
                (TxnOpResponse::Range(got), _) => PbTxnOpResponse::ResponseRange(PbRangeResponse {
                    header: header(got.header.revision),
                    kvs: got.kvs.into_iter().map(to_pb).collect(),
                    more: got.more,
                    count: got.count,
                }),
                (TxnOpResponse::Put { revision, prev_kv }, Some(PbTxnOpRequest::RequestPut(p))) => {
                    PbTxnOpResponse::ResponsePut(PbPutResponse {
                        header: header(revision),
                        prev_kv: if p.prev_kv { prev_kv.map(to_pb) } else { None },
                    })
                }
                (TxnOpResponse::DeleteRange { revision, prev_kvs }, Some(PbTxnOpRequest::RequestDeleteRange(d))) => {
                    PbTxnOpResponse::ResponseDeleteRange(PbDeleteResponse {
                        header: header(revision),
                        deleted: i64::try_from(prev_kvs.len()).unwrap_or(i64::MAX),
                        prev_kvs: if d.prev_kv { prev_kvs.into_iter().map(to_pb).collect() } else { Vec::new() },
                    })
                }
                (TxnOpResponse::Txn(nested), Some(PbTxnOpRequest::RequestTxn(t))) => {
                    PbTxnOpResponse::ResponseTxn(txn_ops_to_pb(nested.responses, nested.succeeded, t))
                }
                // The node answers op for op as it was asked: nothing else can come back.
                (TxnOpResponse::Put { .. }, _) => PbTxnOpResponse::ResponsePut(PbPutResponse::default()),
                (TxnOpResponse::DeleteRange { .. }, _) => {
                    PbTxnOpResponse::ResponseDeleteRange(PbDeleteResponse::default())
                }
                (TxnOpResponse::Txn(_), _) => PbTxnOpResponse::ResponseTxn(PbTxnResponse::default()),
            };
            PbResponseOp { response: Some(response) }
        })
        .collect();
    PbTxnResponse { header: Some(PbResponseHeader::default()), succeeded, responses }
}

#[tonic::async_trait]
impl PbKvService for KvService {
    async fn range(&self, request: Request<PbRangeRequest>) -> Result<Response<PbRangeResponse>, Status> {
        let need = read(&request.get_ref().key, &request.get_ref().range_end);
        self.0.authorize(&request, vec![need]).await?;
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
        let mut needs = Vec::new();
        put_needs(request.get_ref(), &mut needs);
        let r = request.get_ref();
        if r.key.is_empty() {
            return Err(error::empty_key());
        }
        if r.ignore_value && !r.value.is_empty() {
            return Err(error::value_provided());
        }
        if r.ignore_lease && r.lease != 0 {
            return Err(error::lease_provided());
        }
        let (mut value, mut lease) = (r.value.clone(), r.lease);
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
        let put = |client: snapply_raft::Client| {
            let (key, value) = (r.key.clone(), value.clone());
            async move { client.put_returning(key, value, lease).await }
        };
        let (header, prev) = self.0.authorized(&request, needs, put).await?;
        Ok(Response::new(PbPutResponse {
            header: self.0.header(header),
            prev_kv: if r.prev_kv { prev.map(to_pb) } else { None },
        }))
    }

    async fn delete_range(&self, request: Request<PbDeleteRequest>) -> Result<Response<PbDeleteResponse>, Status> {
        let mut needs = Vec::new();
        delete_needs(request.get_ref(), &mut needs);
        let r = request.get_ref();
        if r.key.is_empty() {
            return Err(error::empty_key());
        }
        let delete = |client: snapply_raft::Client| {
            let (key, range_end) = (r.key.clone(), r.range_end.clone());
            async move { client.delete_returning(key, range_end).await }
        };
        let (header, prev) = self.0.authorized(&request, needs, delete).await?;
        Ok(Response::new(PbDeleteResponse {
            header: self.0.header(header),
            deleted: i64::try_from(prev.len()).unwrap_or(i64::MAX),
            prev_kvs: if r.prev_kv { prev.into_iter().map(to_pb).collect() } else { Vec::new() },
        }))
    }

    async fn txn(&self, request: Request<PbTxnRequest>) -> Result<Response<PbTxnResponse>, Status> {
        let mut needs = Vec::new();
        txn_needs(request.get_ref(), &mut needs);
        let r = request.get_ref();
        let (mut nodes, mut ranges) = (Vec::new(), Vec::new());
        flatten(r, self.0.limits.max_txn_ops, 1, &mut nodes, &mut ranges)?;
        check_intervals(&r.success)?;
        check_intervals(&r.failure)?;
        let txn = |client: snapply_raft::Client| {
            let (nodes, ranges) = (nodes.clone(), ranges.clone());
            async move { client.txn(nodes, ranges).await }
        };
        let response = self.0.authorized(&request, needs, txn).await?;
        Ok(Response::new(txn_to_pb(&self.0, response, r)))
    }

    async fn compact(&self, request: Request<PbCompactionRequest>) -> Result<Response<PbCompactionResponse>, Status> {
        // etcd checks no permission for a compaction, only that a token given is live.
        let revision = request.get_ref().revision;
        // The compaction is applied with the entry, so `physical` is always met.
        let compact = |client: snapply_raft::Client| async move {
            client.propose_with_header(Command::Apply(RequestBuf::Compact { revision })).await
        };
        let header = self.0.authorized(&request, Vec::new(), compact).await?;
        Ok(Response::new(PbCompactionResponse { header: self.0.header(header) }))
    }
}
