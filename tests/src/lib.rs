//! Shared helpers of snapply's cross-crate tests: generated workloads, a leader that snapshots
//! itself, followers with a different prior state, and store-by-store comparison.

pub mod forge;
pub mod linearizability;

use proptest::prelude::*;
use snapply_core::backend::{Backend, Bucket, OwnedRecord, dump};
use snapply_core::collections::{Growable, Profile};
use snapply_core::image;
use snapply_core::mem::VecBackend;
use snapply_core::store::{
    Alarm, AlarmType, Compare, CompareResult, CompareTarget, Downgrade, NewMember, PermissionType, Txn, TxnNode, TxnOp,
    V2Deprecation, Version,
};
use snapply_core::{Config, Node, Request, SnapshotMetadata};
use snapply_core::{Event, Observer, Phase};

/// The node type of the host tests.
pub type HostNode = Node<VecBackend, Growable>;

/// One step of a generated workload. Small alphabets make overwrites, re-grants and conflicts
/// likely.
#[derive(Clone, Debug)]
pub enum Op {
    /// Put `k<key>`, optionally attached to lease `lease + 1`.
    Put { key: u8, value: Vec<u8>, lease: Option<u8> },
    /// Delete `k<key>`, or the range `[k<key>, k<key+3>)`.
    Delete { key: u8, range: bool },
    /// Compact `back` revisions behind the current one.
    Compact { back: u8 },
    /// Grant lease `lease + 1`.
    Grant { lease: u8, ttl: i64 },
    /// Revoke lease `lease + 1` (deleting its keys).
    Revoke { lease: u8 },
    /// Add user `u<user>`.
    UserAdd { user: u8 },
    /// Add role `r<role>`.
    RoleAdd { role: u8 },
    /// Grant role `r<role>` a permission on `k<key>`.
    RolePermit { role: u8, key: u8, write: bool },
    /// Grant role `r<role>` to user `u<user>`.
    UserRole { user: u8, role: u8 },
    /// Add the root user with the root role.
    RootSetup,
    /// Enable or disable auth.
    Auth(bool),
    /// Add member `id + 1`.
    MemberAdd { id: u8, learner: bool },
    /// Remove member `id + 1`.
    MemberRemove { id: u8 },
    /// Raise or clear an alarm.
    Alarm { member: u8, corrupt: bool, on: bool },
    /// Set the cluster version to 3.`minor`.
    Version { minor: u8 },
    /// Set the downgrade info.
    Downgrade { enabled: bool, minor: u8 },
    /// Checkpoint lease `lease + 1` with `remaining` seconds left.
    Checkpoint { lease: u8, remaining: i64 },
    /// Delete user `u<user>`.
    UserDelete { user: u8 },
    /// Delete role `r<role>`.
    RoleDelete { role: u8 },
    /// Revoke role `r<role>`'s permission on `k<key>`.
    RoleRevoke { role: u8, key: u8 },
    /// Revoke role `r<role>` from user `u<user>`.
    UserRevokeRole { user: u8, role: u8 },
    /// Move member `id + 1` to another peer URL.
    MemberUpdate { id: u8, port: u16 },
    /// Promote member `id + 1` from learner.
    MemberPromote { id: u8 },
    /// A transaction: if `k<key>` is at `version`, put `value` under each of `puts` and then,
    /// nested, delete `k<delete>` if it holds a value; otherwise delete `[k<delete>, k<delete+3>)`.
    Txn { key: u8, version: u8, puts: Vec<u8>, value: Vec<u8>, delete: u8 },
}

/// A strategy for one workload step.
pub fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u8..12, proptest::collection::vec(any::<u8>(), 0..24), proptest::option::of(0u8..4))
            .prop_map(|(key, value, lease)| Op::Put { key, value, lease }),
        2 => (0u8..12, any::<bool>()).prop_map(|(key, range)| Op::Delete { key, range }),
        1 => (0u8..6).prop_map(|back| Op::Compact { back }),
        2 => (0u8..4, 1i64..100).prop_map(|(lease, ttl)| Op::Grant { lease, ttl }),
        1 => (0u8..4).prop_map(|lease| Op::Revoke { lease }),
        1 => (0u8..3).prop_map(|user| Op::UserAdd { user }),
        1 => (0u8..3).prop_map(|role| Op::RoleAdd { role }),
        1 => (0u8..3, 0u8..12, any::<bool>()).prop_map(|(role, key, write)| Op::RolePermit { role, key, write }),
        1 => (0u8..3, 0u8..3).prop_map(|(user, role)| Op::UserRole { user, role }),
        1 => Just(Op::RootSetup),
        1 => any::<bool>().prop_map(Op::Auth),
        1 => (0u8..5, any::<bool>()).prop_map(|(id, learner)| Op::MemberAdd { id, learner }),
        1 => (0u8..5).prop_map(|id| Op::MemberRemove { id }),
        1 => (0u8..3, any::<bool>(), any::<bool>()).prop_map(|(member, corrupt, on)| Op::Alarm { member, corrupt, on }),
        1 => (0u8..7).prop_map(|minor| Op::Version { minor }),
        1 => (any::<bool>(), 0u8..7).prop_map(|(enabled, minor)| Op::Downgrade { enabled, minor }),
        1 => (0u8..4, 1i64..100).prop_map(|(lease, remaining)| Op::Checkpoint { lease, remaining }),
        1 => (0u8..3).prop_map(|user| Op::UserDelete { user }),
        1 => (0u8..3).prop_map(|role| Op::RoleDelete { role }),
        1 => (0u8..3, 0u8..12).prop_map(|(role, key)| Op::RoleRevoke { role, key }),
        1 => (0u8..3, 0u8..3).prop_map(|(user, role)| Op::UserRevokeRole { user, role }),
        1 => (0u8..5, 1u16..9).prop_map(|(id, port)| Op::MemberUpdate { id, port }),
        1 => (0u8..5).prop_map(|id| Op::MemberPromote { id }),
        2 => (0u8..12, 0u8..3, proptest::collection::vec(0u8..12, 0..4), proptest::collection::vec(any::<u8>(), 0..8), 0u8..12)
            .prop_map(|(key, version, puts, value, delete)| Op::Txn { key, version, puts, value, delete }),
    ]
}

/// A strategy for a workload of up to `max` steps.
pub fn workload(max: usize) -> impl Strategy<Value = Vec<Op>> {
    proptest::collection::vec(op(), 1..max)
}

/// The configuration of test node `id`.
pub fn config(id: u64) -> Config {
    Config { id, min_lease_ttl: 5, v2_deprecation: V2Deprecation::WriteOnly }
}

/// A fresh node on an empty in-memory backend.
pub fn node(id: u64) -> HostNode {
    Node::new(config(id), VecBackend::new())
}

fn key(k: u8) -> Vec<u8> {
    format!("k{k:02}").into_bytes()
}

/// Applies `ops` to `node` as the entries after `first_index`, at `term`. Requests the node refuses
/// (a missing lease, a duplicate user...) are part of a realistic workload and leave the node as
/// it was; they are skipped. Returns how many entries were applied.
pub fn run<B: Backend, P: Profile>(node: &mut Node<B, P>, ops: &[Op], first_index: u64, term: u64) -> usize {
    let mut applied = 0;
    let mut index = first_index;
    for op in ops {
        index += 1;
        let (k, end, name, role, moved, moved_urls);
        let (txn_keys, txn_success, txn_failure, txn_nested, txn_compare, txn_nested_compare, txn_nodes);
        let url = format!("http://127.0.0.1:{}", 2380 + index % 100).into_bytes();
        let urls = [url.as_slice()];
        let request = match op {
            Op::Put { key: kk, value, lease } => {
                k = key(*kk);
                Request::Put { key: &k, value, lease: lease.map_or(0, |l| i64::from(l) + 1) }
            }
            Op::Delete { key: kk, range } => {
                k = key(*kk);
                end = if *range { key(kk.saturating_add(3)) } else { Vec::new() };
                Request::DeleteRange { key: &k, range_end: &end }
            }
            Op::Compact { back } => {
                let rev = node.stores().kv.current_revision() - i64::from(*back);
                Request::Compact { revision: rev }
            }
            Op::Grant { lease, ttl } => Request::LeaseGrant { id: i64::from(*lease) + 1, ttl: *ttl },
            Op::Revoke { lease } => Request::LeaseRevoke { id: i64::from(*lease) + 1 },
            Op::UserAdd { user } => {
                name = format!("u{user}").into_bytes();
                Request::UserAdd { name: &name, password_hash: b"$2a$10$hash", no_password: false }
            }
            Op::RoleAdd { role: r } => {
                name = format!("r{r}").into_bytes();
                Request::RoleAdd { name: &name }
            }
            Op::RolePermit { role: r, key: kk, write } => {
                name = format!("r{r}").into_bytes();
                k = key(*kk);
                let kind = if *write { PermissionType::ReadWrite } else { PermissionType::Read };
                Request::RoleGrantPermission { role: &name, kind, key: &k, range_end: &[] }
            }
            Op::UserRole { user, role: r } => {
                name = format!("u{user}").into_bytes();
                role = format!("r{r}").into_bytes();
                Request::UserGrantRole { user: &name, role: &role }
            }
            Op::RootSetup => {
                let add = Request::UserAdd { name: b"root", password_hash: b"x", no_password: false };
                if node.apply(index, term, &add).is_ok() {
                    applied += 1;
                }
                index += 1;
                Request::UserGrantRole { user: b"root", role: b"root" }
            }
            Op::Auth(on) => Request::AuthSetEnabled(*on),
            Op::MemberAdd { id, learner } => {
                name = format!("m{id}").into_bytes();
                Request::MemberAdd(NewMember {
                    id: u64::from(*id) + 1,
                    name: &name,
                    peer_urls: &urls,
                    client_urls: &urls,
                    is_learner: *learner,
                })
            }
            Op::MemberRemove { id } => Request::MemberRemove { id: u64::from(*id) + 1 },
            Op::Alarm { member, corrupt, on } => {
                let alarm = Alarm {
                    member: u64::from(*member) + 1,
                    kind: if *corrupt { AlarmType::Corrupt } else { AlarmType::Nospace },
                };
                if *on { Request::AlarmActivate(alarm) } else { Request::AlarmDeactivate(alarm) }
            }
            Op::Version { minor } => Request::ClusterVersion(Version { major: 3, minor: u16::from(*minor), patch: 0 }),
            Op::Downgrade { enabled, minor } => Request::Downgrade(Downgrade {
                enabled: *enabled,
                target: Version { major: 3, minor: u16::from(*minor), patch: 0 },
            }),
            Op::Checkpoint { lease, remaining } => {
                Request::LeaseCheckpoint { id: i64::from(*lease) + 1, remaining_ttl: *remaining }
            }
            Op::UserDelete { user } => {
                name = format!("u{user}").into_bytes();
                Request::UserDelete { name: &name }
            }
            Op::RoleDelete { role: r } => {
                name = format!("r{r}").into_bytes();
                Request::RoleDelete { name: &name }
            }
            Op::RoleRevoke { role: r, key: kk } => {
                name = format!("r{r}").into_bytes();
                k = key(*kk);
                Request::RoleRevokePermission { role: &name, key: &k, range_end: &[] }
            }
            Op::UserRevokeRole { user, role: r } => {
                name = format!("u{user}").into_bytes();
                role = format!("r{r}").into_bytes();
                Request::UserRevokeRole { user: &name, role: &role }
            }
            Op::MemberUpdate { id, port } => {
                moved = format!("http://127.0.0.1:{}", 3380 + port).into_bytes();
                moved_urls = [moved.as_slice()];
                Request::MemberUpdate { id: u64::from(*id) + 1, peer_urls: &moved_urls }
            }
            Op::MemberPromote { id } => Request::MemberPromote { id: u64::from(*id) + 1 },
            Op::Txn { key: kk, version, puts, value, delete } => {
                k = key(*kk);
                name = key(*delete);
                end = key(delete.saturating_add(3));
                txn_keys = puts.iter().map(|p| key(*p)).collect::<Vec<_>>();
                txn_compare = [Compare {
                    key: &k,
                    range_end: &[],
                    result: CompareResult::Equal,
                    target: CompareTarget::Version(i64::from(*version)),
                }];
                txn_success = txn_keys
                    .iter()
                    .map(|key| TxnOp::Put { key, value, lease: 0 })
                    .chain([TxnOp::Txn(1)])
                    .collect::<Vec<_>>();
                txn_failure = [TxnOp::DeleteRange { key: &name, range_end: &end }];
                txn_nested_compare = [Compare {
                    key: &name,
                    range_end: &[],
                    result: CompareResult::NotEqual,
                    target: CompareTarget::Value(b""),
                }];
                txn_nested = [TxnOp::DeleteRange { key: &name, range_end: &[] }];
                txn_nodes = [
                    TxnNode { compare: &txn_compare, success: &txn_success, failure: &txn_failure },
                    TxnNode { compare: &txn_nested_compare, success: &txn_nested, failure: &[] },
                ];
                Request::Txn(Txn { nodes: &txn_nodes })
            }
        };
        if node.apply(index, term, &request).is_ok() {
            applied += 1;
        }
    }
    applied
}

/// A leader with keys, leases, users, members and alarms, at index > 100.
pub fn sample_leader() -> HostNode {
    let mut leader = node(1);
    let ops = [
        Op::Grant { lease: 0, ttl: 30 },
        Op::Put { key: 1, value: b"one".to_vec(), lease: Some(0) },
        Op::Put { key: 2, value: b"two".to_vec(), lease: None },
        Op::Put { key: 2, value: b"two again".to_vec(), lease: None },
        Op::Delete { key: 1, range: false },
        Op::Put { key: 3, value: b"three".to_vec(), lease: Some(0) },
        Op::Compact { back: 1 },
        Op::UserAdd { user: 0 },
        Op::RoleAdd { role: 0 },
        Op::RolePermit { role: 0, key: 3, write: true },
        Op::UserRole { user: 0, role: 0 },
        Op::RootSetup,
        Op::Auth(true),
        Op::MemberAdd { id: 0, learner: false },
        Op::MemberAdd { id: 1, learner: false },
        Op::MemberAdd { id: 2, learner: true },
        Op::Alarm { member: 1, corrupt: false, on: true },
        Op::Version { minor: 6 },
    ];
    run(&mut leader, &ops, 100, 3);
    leader
}

/// A follower at index < 100 with state of its own.
pub fn sample_follower<B: Backend>(backend: B) -> Node<B, Growable> {
    let mut f = Node::new(config(2), backend);
    let ops = [
        Op::Grant { lease: 3, ttl: 10 },
        Op::Put { key: 9, value: b"old".to_vec(), lease: Some(3) },
        Op::MemberAdd { id: 4, learner: false },
        Op::Alarm { member: 4, corrupt: true, on: true },
    ];
    run(&mut f, &ops, 0, 1);
    f
}

/// Encodes `node`'s snapshot image at its applied index.
pub fn snapshot<B: Backend, P: Profile>(node: &Node<B, P>) -> (SnapshotMetadata, Vec<u8>) {
    let mut image = Vec::new();
    let (metadata, _) = node.encode_image(&mut Vec::new(), &mut image).expect("encoding a test node's image");
    (metadata, image)
}

/// Every record of a backend, in bucket then key order.
pub fn records<B: Backend>(backend: &B) -> Vec<OwnedRecord> {
    dump(&backend.read().expect("read transaction")).expect("scanning a backend")
}

/// Everything observable of a node.
pub type NodeState<P> = (Vec<OwnedRecord>, snapply_core::Stores<P>, snapply_core::Progress);

/// Everything observable of a node: backend records, stores, progress.
pub fn state<B: Backend, P: Profile>(node: &Node<B, P>) -> NodeState<P> {
    (records(node.backend()), node.stores().clone(), node.progress().clone())
}

/// An observer that records events, the gauge and the phases done.
#[derive(Debug, Default)]
pub struct Recorder {
    /// The gauge `etcd_server_snapshot_apply_in_progress_total`.
    pub gauge: i64,
    /// The highest the gauge went.
    pub gauge_peak: i64,
    /// Every event, in order.
    pub events: Vec<Event>,
    /// Every phase done, in order.
    pub phases: Vec<Phase>,
}

impl Observer for Recorder {
    fn event(&mut self, event: &Event) {
        self.events.push(*event);
    }
    fn in_progress(&mut self, applying: bool) {
        self.gauge = i64::from(applying);
        self.gauge_peak = self.gauge_peak.max(self.gauge);
    }
    fn phase_done(&mut self, phase: Phase, _micros: Option<u64>) {
        self.phases.push(phase);
    }
}

thread_local! {
    /// Operations left before the fault, and whether the fault persists after it.
    static BUDGET: std::cell::Cell<Option<(usize, bool)>> = const { std::cell::Cell::new(None) };
    /// Whether the armed fault is a panic rather than an error.
    static PANIC: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Arms the fault injector of every [`Faulty`] backend of this thread: after `n` more
/// operations, every operation fails (a dead medium). `None` disarms it.
pub fn arm_faults(n: Option<usize>) {
    PANIC.with(|p| p.set(false));
    BUDGET.with(|b| b.set(n.map(|n| (n, true))));
}

/// Operations left before the armed fault, if one is armed and has not fired.
pub fn fault_pending() -> Option<usize> {
    BUDGET.with(|b| b.get().map(|(n, _)| n))
}

/// Arms the fault injector to fail only the operation after `n` more (a transient error).
pub fn arm_one_fault(n: usize) {
    PANIC.with(|p| p.set(false));
    BUDGET.with(|b| b.set(Some((n, false))));
}

/// Arms the fault injector to panic in the operation after `n` more (a backend whose driver
/// panics, the panic caught by the caller).
pub fn arm_one_panic(n: usize) {
    PANIC.with(|p| p.set(true));
    BUDGET.with(|b| b.set(Some((n, false))));
}

/// A backend that fails its operations once the budget armed by [`arm_faults`] runs out: the
/// fault injector of the failure sweeps. The budget is per thread, so a backend a snapshot store
/// makes with `Default` is armed too.
#[derive(Clone, Debug, Default)]
pub struct Faulty<B> {
    inner: B,
}

impl<B> Faulty<B> {
    /// The wrapped backend.
    pub fn inner(&self) -> &B {
        &self.inner
    }
}

fn spend() -> Result<(), snapply_core::backend::BackendError> {
    BUDGET.with(|budget| match budget.get() {
        None => Ok(()),
        Some((0, sticky)) => {
            if !sticky {
                budget.set(None);
            }
            if PANIC.with(|p| p.replace(false)) {
                panic!("injected backend panic");
            }
            Err(snapply_core::backend::BackendError::new(snapply_core::backend::BackendErrorKind::Io, "injected fault"))
        }
        Some((n, sticky)) => {
            budget.set(Some((n - 1, sticky)));
            Ok(())
        }
    })
}

/// A transaction of a [`Faulty`] backend.
#[derive(Debug)]
pub struct FaultyTxn<T> {
    inner: T,
}

impl<T: snapply_core::backend::ReadTxn> snapply_core::backend::ReadTxn for FaultyTxn<T> {
    fn get(
        &self,
        bucket: Bucket,
        key: &[u8],
        f: &mut dyn FnMut(&[u8]),
    ) -> Result<bool, snapply_core::backend::BackendError> {
        spend()?;
        self.inner.get(bucket, key, f)
    }
    fn scan(
        &self,
        bucket: Bucket,
        from: &[u8],
        f: &mut snapply_core::backend::Visit<'_>,
    ) -> Result<(), snapply_core::backend::BackendError> {
        spend()?;
        self.inner.scan(bucket, from, f)
    }
}

impl<T: snapply_core::backend::WriteTxn> snapply_core::backend::WriteTxn for FaultyTxn<T> {
    fn put(&mut self, bucket: Bucket, key: &[u8], value: &[u8]) -> Result<(), snapply_core::backend::BackendError> {
        spend()?;
        self.inner.put(bucket, key, value)
    }
    fn delete(&mut self, bucket: Bucket, key: &[u8]) -> Result<bool, snapply_core::backend::BackendError> {
        spend()?;
        self.inner.delete(bucket, key)
    }
    fn clear(&mut self, bucket: Bucket) -> Result<(), snapply_core::backend::BackendError> {
        spend()?;
        self.inner.clear(bucket)
    }
    fn commit(self) -> Result<(), snapply_core::backend::BackendError> {
        spend()?;
        self.inner.commit()
    }
}

impl<B: Backend> Backend for Faulty<B> {
    type Read<'a>
        = FaultyTxn<B::Read<'a>>
    where
        Self: 'a;
    type Write<'a>
        = FaultyTxn<B::Write<'a>>
    where
        Self: 'a;

    fn read(&self) -> Result<Self::Read<'_>, snapply_core::backend::BackendError> {
        spend()?;
        Ok(FaultyTxn { inner: self.inner.read()? })
    }
    fn write(&mut self) -> Result<Self::Write<'_>, snapply_core::backend::BackendError> {
        spend()?;
        Ok(FaultyTxn { inner: self.inner.write()? })
    }
}

/// The result of [`apply_in_memory`].
pub type ApplyResult<B> = Result<Option<snapply_core::pipeline::Outcome<B>>, snapply_core::ApplyError>;

/// Applies an image to `node` through the in-memory ports (a fresh `MemSnapshotStore` whose v2
/// data is held in a `V`, a fresh `PeerTable`), observed by `observer`. Returns the result and the
/// peer table the restore left.
pub fn apply_in_memory<B, P, V>(
    node: &mut Node<B, P>,
    metadata: &SnapshotMetadata,
    image: &[u8],
    observer: &mut Recorder,
) -> (ApplyResult<B>, snapply_core::memports::PeerTable<P>)
where
    B: Backend + Default + Clone,
    P: Profile,
    V: snapply_core::collections::Seq<u8>,
{
    let mut buf = vec![0u8; image::MIN_BUFFER];
    let mut storage = snapply_core::memports::MemSnapshotStore::<B, V>::new(&mut buf);
    let mut transport = snapply_core::memports::PeerTable::<P>::default();
    let ports = snapply_core::ports::Ports { storage: &mut storage, transport: &mut transport, observer };
    let result = snapply_core::apply_snapshot(node, ports, snapply_core::Snapshot::from_bytes(metadata, image));
    (result, transport)
}

/// Checks that `follower`'s stores, after restoring `leader`'s snapshot, are what etcd's restore
/// gives: the leader's stores as its backend holds them. Two of etcd's rules make that differ
/// from the leader's memory (`docs/etcd-differences.md`): a lease checkpoint below cluster
/// version 3.6 is not persisted, so the remaining TTL is the one in the `lease` bucket; and a
/// snapshot without a cluster version keeps the follower's `previous` capabilities (etcd's
/// `UpdateCapability` returns early on a nil version). Returns which store differs.
pub fn check_restored<B: Backend + Clone, F: Backend, P: Profile>(
    leader: &Node<B, P>,
    follower: &Node<F, P>,
    previous: snapply_core::store::Capabilities,
) -> Result<(), String> {
    let mut v2 = Vec::new();
    leader.v2_snapshot_data(&mut v2).map_err(|e| e.to_string())?;
    let reopened = Node::<B, P>::open(*leader.config(), leader.backend().clone(), &v2).map_err(|e| e.to_string())?;
    let (l, f) = (leader.stores(), follower.stores());
    let differs = |what: &str, a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| {
        Err(format!("{what} differs:\n  expected {a:?}\n  restored {b:?}"))
    };
    if l.cindex != f.cindex {
        return differs("consistent index", &l.cindex, &f.cindex);
    }
    if reopened.stores().lessor != f.lessor {
        return differs("lessor", &reopened.stores().lessor, &f.lessor);
    }
    if l.kv != f.kv {
        return differs("key-value store", &l.kv, &f.kv);
    }
    if l.alarms != f.alarms {
        return differs("alarms", &l.alarms, &f.alarms);
    }
    if l.auth != f.auth {
        return differs("auth", &l.auth, &f.auth);
    }
    let (lm, fm) = (&l.membership, &f.membership);
    if (lm.members(), lm.removed(), lm.version(), lm.downgrade())
        != (fm.members(), fm.removed(), fm.version(), fm.downgrade())
    {
        return differs("membership", lm, fm);
    }
    let capabilities = if lm.version().is_some() { lm.capabilities() } else { previous };
    if fm.capabilities() != capabilities {
        return differs("capabilities", &capabilities, &fm.capabilities());
    }
    if l.v2 != f.v2 {
        return differs("v2 store", &l.v2, &f.v2);
    }
    Ok(())
}
