//! The ready loop: the node's task, driving raft-rs and applying what it commits.

use snapply_core::RequestBuf;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message as _;
use raft::prelude::{ConfChange, ConfChangeType, Entry, EntryType, Message, Snapshot};
use raft::{RawNode, SnapshotStatus};
use sha2::{Digest as _, Sha256};
use snapply_core::backend::{Backend, for_each_record};
use snapply_core::collections::Growable;
use snapply_core::ports::{Ports, Transport};
use snapply_core::store::StoreError;
use snapply_core::{Node, Request, pipeline};
use snapply_fs::{FsSnapshotStore, PersistedSnapshot, SnapName};
use tokio::sync::{mpsc, oneshot};

use super::observer::Recorder;
use super::{Control, HostNode, Pair, RestoreReport, Status, context, leases, parse_context};
use crate::codec::{Command, MemberInfo};
use crate::error::RaftError;
use crate::log::RaftLog;
use crate::metrics::Metrics;
use crate::policy::SnapshotPolicy;
use crate::read::Reads;
use crate::snapshot::{ImageFile, Inbound, to_core_conf, to_core_metadata};
use crate::transport::{Network, Report};

/// SHA-256 of every backend record.
pub(crate) fn digest(node: &HostNode) -> Result<[u8; 32], RaftError> {
    let mut sha = Sha256::new();
    for_each_record(&node.backend().read()?, &mut |bucket, key, value| {
        sha.update([bucket as u8]);
        sha.update((key.len() as u64).to_be_bytes());
        sha.update(key);
        sha.update((value.len() as u64).to_be_bytes());
        sha.update(value);
        std::ops::ControlFlow::Continue(())
    })?;
    Ok(sha.finalize().into())
}

/// How long a batched backend commit may stay out of the file's durable state, and how many
/// entries may wait for that: etcd's backend batch interval and limit (`--backend-batch-interval`
/// 100 ms, `--backend-batch-limit` 10,000).
const BATCH_INTERVAL: Duration = Duration::from_millis(100);
const BATCH_LIMIT: u64 = 10_000;

pub(super) struct Loop {
    pub(super) id: u64,
    pub(super) raw: RawNode<RaftLog>,
    pub(super) log: RaftLog,
    pub(super) node: HostNode,
    pub(super) store: FsSnapshotStore,
    pub(super) net: Network,
    pub(super) waiters: HashMap<u64, oneshot::Sender<Result<i64, RaftError>>>,
    /// The largest entry proposed for a client (`--max-request-bytes`).
    pub(super) max_request_bytes: usize,
    /// Client API hook: reads to run just before (and, as they return, just after) this node
    /// applies its own proposal `seq`.
    pub(super) around_apply: HashMap<u64, crate::query::AroundApply>,
    pub(super) seq: u64,
    pub(super) snapshots_applied: u64,
    pub(super) snapshots_sent: u64,
    pub(super) last_restore: Option<RestoreReport>,
    pub(super) restored_at_boot: bool,
    /// Linearizable reads waiting for a read index or for it to be applied.
    pub(super) reads: Reads,
    /// How long a read may wait (etcd's request timeout).
    pub(super) read_timeout: Duration,
    /// Entries applied since the backend was last synced, and when that was.
    pub(super) unsynced_entries: u64,
    pub(super) last_sync: Instant,
    /// The snapshot policy, the index of the last snapshot taken (or applied), the index of the
    /// image being built for a follower, if any, and where a build reports.
    pub(super) policy: SnapshotPolicy,
    pub(super) snapshot_index: u64,
    pub(super) building: Option<u64>,
    pub(super) built: mpsc::UnboundedSender<Result<ImageFile, RaftError>>,
    /// Snapshots received from the leader and persisted, waiting for raft-rs.
    pub(super) inbound: Inbound,
    /// The cluster's id (0: not known).
    pub(super) cluster_id: u64,
    /// This member was removed from the cluster: the loop stops (etcd's server stops).
    pub(super) removed: bool,
    pub(super) metrics: Arc<Metrics>,
    /// The leader the metrics last saw.
    pub(super) leader_seen: u64,
    /// When the snapshot being built was begun.
    pub(super) build_started: Option<Instant>,
    /// Where the loop publishes the store's revision after each ready (crate::watch).
    pub(super) revision: tokio::sync::watch::Sender<i64>,
    /// The clock lease expiries are counted on (node::leases).
    pub(super) lease_clock: leases::LeaseClock,
    /// The auth tokens this member issued (crate::auth).
    pub(super) tokens: Arc<crate::auth::Tokens>,
}

fn sorted(ids: impl Iterator<Item = u64>) -> Vec<u64> {
    let mut ids: Vec<u64> = ids.collect();
    ids.sort_unstable();
    ids
}

/// How far behind the leader's log a learner may be and still be promoted (etcd's
/// `readyPercent`).
const LEARNER_READY: f64 = 0.9;

/// Runs `f`, letting the runtime move other tasks off this worker while it blocks on the disk
/// (a current-thread runtime cannot, and runs it in place).
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        // Also when the task is aborted: no listener or writer outlives its node.
        self.net.shutdown();
    }
}

impl Loop {
    pub(super) async fn run(
        &mut self,
        tick: Duration,
        mut inbox: mpsc::UnboundedReceiver<Message>,
        mut reports: mpsc::UnboundedReceiver<Report>,
        mut control: mpsc::UnboundedReceiver<Control>,
        mut built: mpsc::UnboundedReceiver<Result<ImageFile, RaftError>>,
    ) -> Result<(), RaftError> {
        let mut ticker = tokio::time::interval(tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {
                    self.raw.tick();
                    self.drop_abandoned();
                    self.reads.expire(self.raw.raft.leader_id);
                    self.expire_leases();
                }
                Some(msg) = inbox.recv() => {
                    // raft-rs refuses messages from unknown peers or of a stale term: it has
                    // already logged why, and the sender retries.
                    let _ = self.raw.step(msg);
                    while let Ok(msg) = inbox.try_recv() {
                        let _ = self.raw.step(msg);
                    }
                }
                Some(image) = built.recv() => blocking(|| self.snapshot_built(image))?,
                Some(report) = reports.recv() => match report {
                    Report::Unreachable(to) => self.raw.report_unreachable(to),
                    Report::Removed(by) => {
                        // etcd: "the member has been permanently removed from the cluster".
                        log::warn!("member {:x} was told by member {by:x} that it was removed from the cluster", self.id);
                        self.removed = true;
                    }
                    Report::Snapshot { to, delivered } => {
                        if delivered {
                            self.snapshots_sent += 1;
                        }
                        let status = if delivered { SnapshotStatus::Finish } else { SnapshotStatus::Failure };
                        self.raw.report_snapshot(to, status);
                    }
                    Report::Lease(ask, reply) => {
                        let _ = reply.send(self.answer_lease(ask));
                    }
                },
                c = control.recv() => match c {
                    None | Some(Control::Stop) => return blocking(|| self.sync_backend()),
                    Some(c) => {
                        self.control(c);
                        // Proposals queued meanwhile go into the same ready, so one log write
                        // (one sync) carries them all, as etcd's raft loop batches proposals.
                        while let Ok(c) = control.try_recv() {
                            if matches!(c, Control::Stop) {
                                return blocking(|| self.sync_backend());
                            }
                            self.control(c);
                        }
                    }
                },
            }
            self.reads.send(&mut self.raw);
            blocking(|| self.on_ready())?;
            crate::watch::publish(&self.revision, self.node.stores().kv.current_revision());
            self.track_lease_leadership();
            self.update_metrics();
            if self.removed {
                // etcd: "the member has been permanently removed from the cluster".
                blocking(|| self.sync_backend())?;
                return Err(RaftError::Removed);
            }
            // raft-rs's applied index counts every entry handed out, the empty ones a new leader
            // appends included (a read index can be one of them).
            self.reads.release(self.raw.raft.raft_log.applied);
            if self.unsynced_entries >= BATCH_LIMIT
                || (self.unsynced_entries > 0 && self.last_sync.elapsed() >= BATCH_INTERVAL)
            {
                blocking(|| self.sync_backend())?;
            }
            blocking(|| self.maybe_snapshot())?;
        }
    }

    fn control(&mut self, c: Control) {
        match c {
            Control::Propose(command, reply) => {
                let data = command.encode();
                if data.len() > self.max_request_bytes {
                    // etcd's `ErrRequestTooLarge`: refused before raft sees it.
                    let _ =
                        reply.send(Err(RaftError::RequestTooLarge { size: data.len(), limit: self.max_request_bytes }));
                    return;
                }
                self.seq += 1;
                match self.raw.propose(context(self.id, self.seq), data) {
                    Ok(()) => {
                        self.waiters.insert(self.seq, reply);
                    }
                    Err(e) => {
                        self.log_refused(&e);
                        let _ = reply.send(Err(e.into()));
                    }
                }
            }
            Control::ConfChange(cc, reply) => {
                self.seq += 1;
                match self.raw.propose_conf_change(context(self.id, self.seq), cc) {
                    Ok(()) => {
                        self.waiters.insert(self.seq, reply);
                    }
                    Err(e) => {
                        self.log_refused(&e);
                        let _ = reply.send(Err(e.into()));
                    }
                }
            }
            Control::Promote(cc, reply) => match self.learner_ready(cc.node_id) {
                Ok(()) => self.control(Control::ConfChange(cc, reply)),
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
            Control::Status(reply) => {
                let _ = reply.send(Status {
                    id: self.id,
                    leader: self.raw.raft.leader_id,
                    term: self.raw.raft.term,
                    applied_index: self.node.progress().applied_index,
                    log: (self.log.first_index(), self.log.last_index()),
                    snapshot_index: self.snapshot_index,
                    peers: self.net.peers(),
                    members: self.node.stores().membership.members().iter().map(|m| m.id).collect(),
                    voters: sorted(self.raw.raft.prs().conf().voters().ids().iter()),
                    learners: sorted(self.raw.raft.prs().conf().learners().iter().copied()),
                    snapshots_applied: self.snapshots_applied,
                    last_restore: self.last_restore.clone(),
                    snapshots_sent: self.snapshots_sent,
                    restored_at_boot: self.restored_at_boot,
                    read_rounds: self.reads.rounds(),
                });
            }
            Control::Digest(reply) => {
                let _ = reply.send(digest(&self.node));
            }
            Control::Range(key, end, reply) => {
                let _ = reply.send(self.range(&key, &end));
            }
            Control::ReadIndex(reply) => self.reads.push(reply, self.read_timeout),
            Control::WaitApplied(index, reply) => {
                self.reads.wait_applied(index, reply, self.read_timeout);
                self.reads.release(self.raw.raft.raft_log.applied);
            }
            Control::CompactLog(reply) => {
                let _ = reply.send(blocking(|| self.compact_log()));
            }
            Control::Isolate(on, reply) => {
                self.net.set_isolated(on);
                let _ = reply.send(());
            }
            Control::Defragment(reply) => {
                let _ = reply.send(blocking(|| self.defragment()));
            }
            Control::Lease(ask, reply) => self.lease_control(ask, reply),
            Control::Read(read) => read(&self.view()),
            Control::ProposeRead(command, read, reply) => {
                self.control(Control::Propose(command, reply));
                if self.waiters.contains_key(&self.seq) {
                    self.around_apply.insert(self.seq, read);
                }
            }
            Control::Stop => {}
        }
    }

    /// Forgets the proposals whose client has gone (its request timed out or was cancelled):
    /// raft-rs may never commit an entry it accepted (a leader that lost its term drops what it
    /// had not replicated), and nothing else would remove its waiter. An entry that commits
    /// later is applied all the same; only its answer has nobody to go to.
    fn drop_abandoned(&mut self) {
        self.waiters.retain(|_, w| !w.is_closed());
        let waiters = &self.waiters;
        self.around_apply.retain(|seq, _| waiters.contains_key(seq));
    }

    /// Defragments the backend between two readies (etcd's `Defragment`): the batched commits
    /// are made durable and the file compacted in place.
    fn defragment(&mut self) -> Result<(), RaftError> {
        let started = Instant::now();
        let before = std::fs::metadata(self.node.backend().path()).map_or(0, |m| m.len());
        if !self.node.backend_mut().compact()? {
            return Err(RaftError::DefragmentBusy);
        }
        self.unsynced_entries = 0;
        self.last_sync = Instant::now();
        let after = std::fs::metadata(self.node.backend().path()).map_or(0, |m| m.len());
        log::info!(
            "member {:x} finished defragmenting the backend: size {before} bytes before, {after} after, took {:?}",
            self.id,
            started.elapsed()
        );
        Ok(())
    }

    /// Sets the metrics of the raft state, as etcd's raft loop does on each ready.
    fn update_metrics(&mut self) {
        let raft = &self.raw.raft;
        let m = &self.metrics;
        let leader = raft.leader_id;
        if leader != raft::INVALID_ID && leader != self.leader_seen {
            m.leader_changes.inc();
        }
        self.leader_seen = leader;
        m.has_leader.set(i64::from(leader != raft::INVALID_ID));
        m.is_leader.set(i64::from(raft.state == raft::StateRole::Leader));
        m.is_learner.set(i64::from(self.node.stores().membership.member(self.id).is_some_and(|m| m.is_learner)));
        m.proposals_committed.set(i64::try_from(raft.raft_log.committed).unwrap_or(i64::MAX));
        m.proposals_applied.set(i64::try_from(raft.raft_log.applied).unwrap_or(i64::MAX));
        m.proposals_pending.set(i64::try_from(self.waiters.len()).unwrap_or(i64::MAX));
    }

    /// Logs why raft-rs refused a proposal: it says only "proposal dropped".
    fn log_refused(&self, e: &raft::Error) {
        self.metrics.proposals_failed.inc();
        let raft = &self.raw.raft;
        let why = if !matches!(e, raft::Error::ProposalDropped) {
            e.to_string()
        } else if !raft.promotable() && !raft.prs().conf().learners().contains(&self.id) {
            format!(
                "this member ({:x}) is not in the cluster's configuration (voters {:x?}): its data directory was made for other members; `snapply restore --initial-cluster` makes one for the members that will run it",
                self.id,
                raft.prs().conf().voters().ids().iter().collect::<Vec<_>>()
            )
        } else if raft.leader_id == raft::INVALID_ID {
            format!("no leader at term {}", raft.term)
        } else if let Some(to) = raft.lead_transferee {
            format!("leadership is being transferred to {to:x}")
        } else {
            format!("refused by raft at term {} (leader {:x})", raft.term, raft.leader_id)
        };
        log::warn!("member {:x} dropped a proposal: {why}", self.id);
    }

    fn view(&self) -> crate::query::View<'_> {
        crate::query::View {
            node: &self.node,
            id: self.id,
            leader: self.raw.raft.leader_id,
            term: self.raw.raft.term,
            raft_index: self.log.last_index(),
        }
    }

    fn range(&self, key: &[u8], end: &[u8]) -> Result<Vec<Pair>, RaftError> {
        let mut out = Vec::new();
        let txn = self.node.backend().read()?;
        self.node.stores().kv.range(&txn, key, end, 0, &mut |kv| out.push((kv.key.to_vec(), kv.value.to_vec())))?;
        Ok(out)
    }

    /// Makes the backend's batched commits durable (etcd's backend batch commit).
    pub(super) fn sync_backend(&mut self) -> Result<(), RaftError> {
        self.node.backend().sync()?;
        self.unsynced_entries = 0;
        self.last_sync = Instant::now();
        Ok(())
    }

    /// The ready loop, in the order raft-rs documents (`RawNode`'s docs and its
    /// `five_mem_node` example): send, apply the snapshot, apply committed entries, persist
    /// entries and hard state, send what waited for persistence, advance, and again for the
    /// light ready.
    fn on_ready(&mut self) -> Result<(), RaftError> {
        if !self.raw.has_ready() {
            return Ok(());
        }
        let mut ready = self.raw.ready();
        self.reads.confirm(ready.take_read_states());
        if !ready.messages().is_empty() {
            self.net.send(ready.take_messages());
        }
        if !ready.snapshot().is_empty() {
            // Before any committed entry: they follow the snapshot (etcd's applySnapshot runs
            // before applyEntries).
            let snapshot = ready.snapshot().clone();
            self.apply_snapshot(&snapshot)?;
        }
        let committed = ready.take_committed_entries();
        self.apply_entries(committed)?;
        self.log.persist(ready.entries(), ready.hs())?;
        if !ready.persisted_messages().is_empty() {
            self.net.send(ready.take_persisted_messages());
        }
        let mut light = self.raw.advance(ready);
        if let Some(commit) = light.commit_index() {
            self.log.set_commit(commit)?;
        }
        self.net.send(light.take_messages());
        let committed = light.take_committed_entries();
        self.apply_entries(committed)?;
        self.raw.advance_apply();
        Ok(())
    }

    /// A leader's snapshot, already persisted by the transport while it arrived, through
    /// snapply's pipeline with the fs adapter's ports; then the raft log restarts after it.
    fn apply_snapshot(&mut self, snapshot: &Snapshot) -> Result<(), RaftError> {
        let meta = snapshot.get_metadata();
        let metadata = to_core_metadata(meta)?;
        let (persisted, image_bytes) = match self.inbound.take(meta.index, meta.term) {
            Some(received) => (received.persisted, received.bytes),
            // Persisted, but its stores were dropped (a newer one arrived meanwhile): the
            // pipeline confirms it from the data directory and rebuilds the stores.
            None => {
                let info = self.store.dir().read_snap(SnapName { index: meta.index, term: meta.term })?;
                (PersistedSnapshot::new(info), 0)
            }
        };
        let mut recorder = Recorder::new(&self.metrics);
        // Persisting built the lessor and key index the apply installs, so the apply does no
        // O(keys) work (the fs adapter's pre-built stores).
        let result = snapply_fs::apply_persisted(
            &mut self.node,
            &mut self.store,
            &mut self.net,
            &mut recorder,
            &metadata,
            persisted,
        );
        match result {
            Ok(Some((_, old_backend))) => {
                // etcd closes the old backend off the apply loop (closing it also makes its
                // last batched commits durable; the snapshot supersedes them anyway).
                tokio::task::spawn_blocking(move || drop(old_backend));
                self.node.backend().set_batched_commits(true);
                self.unsynced_entries = 0;
                self.snapshots_applied += 1;
                self.snapshot_index = self.snapshot_index.max(meta.index);
                self.last_restore = Some(RestoreReport {
                    index: meta.index,
                    term: meta.term,
                    image_bytes: usize::try_from(image_bytes).unwrap_or(usize::MAX),
                    phases: recorder.phases,
                    trace: recorder.trace,
                    applied_at: Instant::now(),
                });
                log::info!("member {:x} applied snapshot at index {} term {}", self.id, meta.index, meta.term);
                crate::auth::restored(&self.tokens, &self.view());
                self.publish_membership();
            }
            Ok(None) => {}
            Err(e) => {
                if self.node.unfinished().is_some() {
                    // Past the swap: complete the restore from the durable snapshot.
                    let mut recorder = Recorder::new(&self.metrics);
                    let ports = Ports { storage: &mut self.store, transport: &mut self.net, observer: &mut recorder };
                    pipeline::resume(&mut self.node, ports)?;
                    self.node.backend().set_batched_commits(true);
                }
                return Err(e.into());
            }
        }
        self.log.apply_snapshot(meta)
    }

    fn apply_entries(&mut self, entries: Vec<Entry>) -> Result<(), RaftError> {
        for e in entries {
            let result = match e.get_entry_type() {
                EntryType::EntryNormal if e.data.is_empty() => continue,
                EntryType::EntryNormal => match Command::decode(&e.data) {
                    Some(c) => {
                        let around = parse_context(&e.context)
                            .filter(|(origin, _)| *origin == self.id)
                            .and_then(|(_, seq)| self.around_apply.remove(&seq));
                        // etcd's apply-time auth check: a request checked when it was proposed
                        // is checked again against the auth state it is applied on (the same on
                        // every member); a refused one changes nothing.
                        let c = match crate::auth::unwrap_checked(&self.view(), c) {
                            Ok(c) => c,
                            Err(refused) => {
                                self.unsynced_entries += 1;
                                self.answer(&e, Err(refused.into()));
                                continue;
                            }
                        };
                        let after = around.map(|around| around(&self.view()));
                        let applied = c.with_request(|r| self.node.apply(e.index, e.term, r)).map_err(RaftError::from);
                        if applied.is_ok() {
                            self.lease_applied(&c);
                            self.member_changed(&c);
                        }
                        crate::auth::applied(&self.tokens, &c, e.index, applied.is_ok());
                        if let Some(after) = after {
                            after(&self.view());
                        }
                        applied
                    }
                    None => Err(RaftError::Decode { what: "a committed entry" }),
                },
                EntryType::EntryConfChange => self.apply_conf_change(&e),
                EntryType::EntryConfChangeV2 => Err(RaftError::Decode { what: "a joint conf change (unsupported)" }),
            };
            self.unsynced_entries += 1;
            let result = match result {
                // etcd panics when its backend cannot be written (a full disk): the member
                // stops here, and a restart replays the entry from the raft log.
                Err(e) if e.is_storage_failure() => return Err(e),
                r => r,
            };
            if let Err(e) = &result {
                log::warn!("member {:x}: entry not applied: {e}", self.id);
            }
            self.answer(&e, result);
        }
        Ok(())
    }

    /// Hands the outcome of applying `e` to the client that proposed it here, if any.
    fn answer(&mut self, e: &Entry, result: Result<i64, RaftError>) {
        if let Some((origin, seq)) = parse_context(&e.context)
            && origin == self.id
            && let Some(w) = self.waiters.remove(&seq)
        {
            let _ = w.send(result);
        }
    }

    /// etcd's `isLearnerReady`, on the leader: the learner's log matches at least 90% of the
    /// leader's. A follower cannot tell (it has no progress of its peers): it proposes, and the
    /// leader does not check a forwarded proposal.
    fn learner_ready(&self, id: u64) -> Result<(), RaftError> {
        let raft = &self.raw.raft;
        if raft.state != raft::StateRole::Leader {
            return Ok(());
        }
        // Not a learner raft-rs knows: the membership's checks answer (not found, not a learner).
        let Some(learner) = raft.prs().get(id).filter(|_| raft.prs().conf().learners().contains(&id)) else {
            return Ok(());
        };
        let learner = learner.matched;
        let leader = raft.prs().get(self.id).map_or(0, |p| p.matched);
        if (learner as f64) < (leader as f64) * LEARNER_READY {
            return Err(RaftError::LearnerNotReady { id, matched: learner, leader });
        }
        Ok(())
    }

    /// A committed conf change, in etcd's order (`applyConfChange`): the change is validated
    /// first (etcd's `ValidateConfigurationChange`: the core's own checks, on a copy of the
    /// membership); a refused one changes neither raft-rs's configuration nor the membership, and
    /// moves only the consistent index, as etcd applies an empty conf change instead. An
    /// accepted one is applied to the node with the conf state raft-rs will have, then to
    /// raft-rs, and the transport's peers follow.
    fn apply_conf_change(&mut self, e: &Entry) -> Result<i64, RaftError> {
        let cc = ConfChange::decode(&e.data[..]).map_err(|_| RaftError::Decode { what: "a conf change" })?;
        let id = cc.node_id;
        let info = match cc.get_change_type() {
            ConfChangeType::RemoveNode => None,
            _ if cc.context.is_empty() => None,
            _ => Some(MemberInfo::decode(&cc.context)),
        };
        let peers: Vec<&[u8]> = info.iter().flatten().flat_map(|i| i.peer_urls.iter()).map(|u| u.as_bytes()).collect();
        let clients: Vec<&[u8]> =
            info.iter().flatten().flat_map(|i| i.client_urls.iter()).map(|u| u.as_bytes()).collect();
        let name = info.iter().flatten().next().map_or(&[][..], |i| i.name.as_bytes());
        let request = match cc.get_change_type() {
            // An AddNode without a member (raft-rs makes a learner a voter): etcd's promotion.
            ConfChangeType::AddNode if cc.context.is_empty() => Request::MemberPromote { id },
            ConfChangeType::AddNode | ConfChangeType::AddLearnerNode => {
                if !matches!(info, Some(Some(_))) {
                    return Err(RaftError::Decode { what: "a member" });
                }
                Request::MemberAdd(snapply_core::store::NewMember {
                    id,
                    name,
                    peer_urls: &peers,
                    client_urls: &clients,
                    is_learner: cc.get_change_type() == ConfChangeType::AddLearnerNode,
                })
            }
            ConfChangeType::RemoveNode => Request::MemberRemove { id },
        };
        if e.index <= self.node.progress().applied_index {
            // Already in the backend (replayed after a restart): raft-rs only.
            let cs = self.raw.apply_conf_change(&cc)?;
            self.log.set_conf_state(cs)?;
            return Ok(self.node.stores().kv.current_revision());
        }
        if let Err(refused) = membership_verdict(&self.node, &request)? {
            log::warn!("member {:x} refused a configuration change for member {id:x}: {refused}", self.id);
            // The same checks refuse it on the node: a rejection moves the consistent index
            // (with the conf state unchanged), a local refusal (a full table) leaves the entry.
            return match self.node.apply(e.index, e.term, &request) {
                Err(e) => Err(e.into()),
                Ok(_) => Err(RaftError::Store(refused)),
            };
        }
        // The configuration raft-rs will have, worked out without changing it: raft-rs may
        // refuse the change (removing the last voter), and then nothing changes anywhere.
        let mut single = raft::prelude::ConfChangeSingle { node_id: id, ..Default::default() };
        single.set_change_type(cc.get_change_type());
        let (next, _) = raft::Changer::new(self.raw.raft.prs()).simple(&[single])?;
        let before = self.node.progress().conf_state.clone();
        self.node.set_conf_state(to_core_conf(&next.to_conf_state())?);
        let rev = match self.node.apply(e.index, e.term, &request) {
            Ok(rev) => rev,
            Err(err) => {
                self.node.set_conf_state(before);
                return Err(err.into());
            }
        };
        let cs = self.raw.apply_conf_change(&cc)?;
        self.log.set_conf_state(cs)?;
        match request {
            Request::MemberAdd(_) => self.net.add_peer(id, &peers)?,
            Request::MemberRemove { .. } => {
                self.net.remove_peer(id);
                if id == self.id {
                    self.removed = true;
                }
            }
            _ => {}
        }
        self.publish_membership();
        Ok(rev)
    }

    /// What an applied member update or published attributes change beyond the store: the
    /// transport dials a member's new peer URLs (etcd's `UpdateRaftAttributes` updates its
    /// transport's peer), and a member about to join is told the new names and URLs.
    fn member_changed(&mut self, command: &Command) {
        match command {
            Command::Apply(RequestBuf::MemberUpdate { id, peer_urls }) => {
                let urls: Vec<&[u8]> = peer_urls.iter().map(Vec::as_slice).collect();
                match self.net.add_peer(*id, &urls) {
                    Ok(()) => log::info!("member {:x} updated the peer URLs of member {id:x}", self.id),
                    // The store has them; the transport keeps dialing the old ones.
                    Err(e) => log::warn!("member {:x} cannot dial the new peer URLs of member {id:x}: {e}", self.id),
                }
            }
            Command::Apply(RequestBuf::MemberAttrSet { .. }) => {}
            _ => return,
        }
        self.publish_membership();
    }

    /// Hands the transport the cluster's id and members, which it tells a member about to join
    /// (etcd's `/members` on the peer URL).
    pub(super) fn publish_membership(&self) {
        let members = self
            .node
            .stores()
            .membership
            .members()
            .iter()
            .map(|m| crate::membership::RemoteMember {
                id: m.id,
                name: String::from_utf8_lossy(&m.name).into_owned(),
                peer_urls: m.peer_urls.iter().map(|u| String::from_utf8_lossy(u).into_owned()).collect(),
                is_learner: m.is_learner,
            })
            .collect();
        let removed = self.node.stores().membership.removed().to_vec();
        self.net.set_membership(crate::membership::RemoteCluster { cluster_id: self.cluster_id, members }, removed);
    }
}

/// Whether `node`'s membership store takes `request` (etcd's `ValidateConfigurationChange`),
/// asked of a copy: a core node holding only `node`'s membership records and v2 store, so the
/// answer is the core's own, and `node` is untouched.
fn membership_verdict(node: &HostNode, request: &Request<'_>) -> Result<Result<(), StoreError>, RaftError> {
    use snapply_core::backend::{Bucket, ReadTxn as _, WriteTxn as _};
    let mut copy = snapply_core::mem::VecBackend::new();
    {
        let from = node.backend().read()?;
        let mut to = copy.write()?;
        for bucket in [Bucket::Members, Bucket::MembersRemoved, Bucket::Cluster] {
            let mut failed = None;
            from.scan(bucket, &[], &mut |k, v| match to.put(bucket, k, v) {
                Ok(()) => std::ops::ControlFlow::Continue(()),
                Err(e) => {
                    failed = Some(e);
                    std::ops::ControlFlow::Break(())
                }
            })?;
            if let Some(e) = failed {
                return Err(e.into());
            }
        }
        to.commit()?;
    }
    let mut v2 = Vec::new();
    node.v2_snapshot_data(&mut v2)?;
    let mut scratch = Node::<_, Growable>::open(*node.config(), copy, &v2)?;
    Ok(scratch.apply(1, 1, request).map(drop))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorted_orders_ids_and_keeps_each() {
        assert_eq!(sorted([3, 1, 2, 1].into_iter()), vec![1, 1, 2, 3]);
        assert_eq!(sorted([u64::MAX, 0].into_iter()), vec![0, u64::MAX]);
        assert!(sorted(std::iter::empty()).is_empty());
    }

    fn host_node(dir: &std::path::Path) -> HostNode {
        let boot = snapply_fs::DataDir::open(dir).unwrap().boot().unwrap();
        let config = snapply_core::Config {
            id: 1,
            min_lease_ttl: 1,
            v2_deprecation: snapply_core::store::V2Deprecation::WriteOnly,
        };
        HostNode::open(config, boot.backend, &[]).unwrap()
    }

    #[test]
    fn a_membership_verdict_is_the_cores_and_leaves_the_node_alone() {
        let dir = tempfile::tempdir().unwrap();
        let mut node = host_node(dir.path());
        let peers: [&[u8]; 1] = [b"http://127.0.0.1:2380"];
        let add = Request::MemberAdd(snapply_core::store::NewMember {
            id: 5,
            name: b"e",
            peer_urls: &peers,
            client_urls: &[],
            is_learner: false,
        });
        let remove = Request::MemberRemove { id: 5 };
        assert!(matches!(membership_verdict(&node, &add), Ok(Ok(()))));
        assert!(node.stores().membership.members().is_empty(), "the verdict changed the node");
        let verdict = membership_verdict(&node, &remove);
        assert!(matches!(verdict, Ok(Err(StoreError::NotFound(_)))), "{verdict:?}");

        node.apply(1, 1, &add).unwrap();
        let verdict = membership_verdict(&node, &add);
        assert!(matches!(verdict, Ok(Err(StoreError::AlreadyExists(_)))), "{verdict:?}");
        assert!(matches!(membership_verdict(&node, &remove), Ok(Ok(()))));
        assert_eq!(node.stores().membership.members().iter().map(|m| m.id).collect::<Vec<_>>(), vec![5]);
    }
}
