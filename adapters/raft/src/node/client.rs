//! The client API of a running node: [`NodeHandle`] and the cheap, cloneable [`Client`].

use snapply_core::RequestBuf;
use std::sync::Arc;
use std::time::Duration;

use raft::prelude::{ConfChange, ConfChangeType};
use tokio::sync::{mpsc, oneshot};

use super::{Control, Pair, Status};
use crate::codec::{Command, MemberInfo};
use crate::error::RaftError;
use crate::metrics::Metrics;

/// A running node: talk to it through its [`Client`] ([`NodeHandle::client`]). Dropping the
/// handle stops the node's tasks.
#[derive(Debug)]
pub struct NodeHandle {
    pub(super) client: Client,
    pub(super) task: Option<tokio::task::JoinHandle<Result<(), RaftError>>>,
}

/// A cheap, cloneable way to talk to a running node, for many concurrent requests.
#[derive(Clone, Debug)]
pub struct Client {
    pub(super) id: u64,
    pub(super) cluster_id: u64,
    pub(super) control: mpsc::UnboundedSender<Control>,
    pub(super) metrics: Arc<Metrics>,
    /// The store's revision as the loop last published it (crate::watch).
    pub(crate) revision: tokio::sync::watch::Receiver<i64>,
    /// The auth tokens this member issued (crate::auth).
    pub(crate) tokens: Arc<crate::auth::Tokens>,
    /// The auth this client's proposals carry ([`Client::with_auth`]).
    pub(crate) auth: Option<Arc<crate::auth::Authorized>>,
}

/// How a read is served (etcd's `--consistency`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Consistency {
    /// The member first obtains a read index from the leader and applies up to it: the read
    /// sees every write acknowledged before it was asked (etcd's default, `l`).
    #[default]
    Linearizable,
    /// From the member's local state, without asking the leader: may be stale (etcd's `s`).
    Serializable,
}

/// How long a handle waits for its node to answer or a proposal to be applied.
const WAIT: Duration = Duration::from_secs(20);

impl Client {
    /// The member id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The cluster's id (etcd's, as response headers carry it): 0 if this member joined a
    /// cluster without being told it.
    pub fn cluster_id(&self) -> u64 {
        self.cluster_id
    }

    /// The member's metrics (etcd's names), read without asking the node's loop: they answer
    /// while it is busy applying a snapshot.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub(crate) async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Control,
        what: &'static str,
    ) -> Result<T, RaftError> {
        let (tx, rx) = oneshot::channel();
        self.control.send(make(tx)).map_err(|_| RaftError::Stopped)?;
        match tokio::time::timeout(WAIT, rx).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(_)) => Err(RaftError::Stopped),
            Err(_) => Err(RaftError::Timeout { what }),
        }
    }

    /// Proposes `command` and waits until this node applied it; returns the key-value
    /// revision after it. A follower forwards the proposal to the leader.
    ///
    /// # Errors
    /// [`RaftError::Raft`] (proposal dropped: no leader), [`RaftError::Timeout`],
    /// [`RaftError::Store`] if the store refused it, [`RaftError::Stopped`].
    ///
    /// The proposal is handed to the node when this is called, before the future is first
    /// polled: proposals made one after the other are proposed in that order, even when their
    /// futures are awaited concurrently.
    pub fn propose(&self, command: Command) -> impl Future<Output = Result<i64, RaftError>> + Send + 'static {
        let (tx, rx) = oneshot::channel();
        let sent = self.control.send(Control::Propose(self.stamped(command), tx)).is_ok();
        async move {
            if !sent {
                return Err(RaftError::Stopped);
            }
            match tokio::time::timeout(WAIT, rx).await {
                Ok(Ok(v)) => v,
                Ok(Err(_)) => Err(RaftError::Stopped),
                Err(_) => Err(RaftError::Timeout { what: "a proposal to be applied" }),
            }
        }
    }

    /// Proposes `commands` one after the other, with at most `max_in_flight` (at least 1)
    /// waiting to be applied, and waits for the last; returns the revision after it (0 for no
    /// command). A bulk load's loop: the proposals are made in order, only their waits overlap.
    ///
    /// # Errors
    /// The first failure, as [`Client::propose`]. No command after it is proposed; those
    /// proposed before it may still be applied.
    pub async fn propose_all(
        &self,
        commands: impl IntoIterator<Item = Command>,
        max_in_flight: usize,
    ) -> Result<i64, RaftError> {
        let mut waiting = std::collections::VecDeque::new();
        let mut revision = 0;
        for command in commands {
            if waiting.len() >= max_in_flight.max(1)
                && let Some(oldest) = waiting.pop_front()
            {
                revision = oldest.await?;
            }
            waiting.push_back(self.propose(command));
        }
        while let Some(oldest) = waiting.pop_front() {
            revision = oldest.await?;
        }
        Ok(revision)
    }

    /// `command` with this client's auth, if it has one ([`Client::with_auth`]).
    pub(crate) fn stamped(&self, command: Command) -> Command {
        match &self.auth {
            Some(auth) => auth.stamp(command),
            None => command,
        }
    }

    /// Puts `value` under `key`.
    ///
    /// # Errors
    /// As [`Client::propose`].
    pub async fn put(&self, key: &[u8], value: &[u8]) -> Result<i64, RaftError> {
        self.propose(Command::Apply(RequestBuf::Put { key: key.to_vec(), value: value.to_vec(), lease: 0 })).await
    }

    /// Adds member `id` (a conf change whose context is `info`, as etcd's).
    ///
    /// # Errors
    /// As [`Client::propose`].
    pub async fn add_member(&self, id: u64, info: &MemberInfo) -> Result<i64, RaftError> {
        let mut cc = ConfChange { node_id: id, context: info.encode(), ..Default::default() };
        cc.set_change_type(ConfChangeType::AddNode);
        self.ask(|tx| Control::ConfChange(cc, tx), "a member to be added").await?
    }

    /// Adds member `id` as a learner (raft-rs `AddLearnerNode`).
    ///
    /// # Errors
    /// As [`Client::propose`].
    pub async fn add_learner(&self, id: u64, info: &MemberInfo) -> Result<i64, RaftError> {
        let mut cc = ConfChange { node_id: id, context: info.encode(), ..Default::default() };
        cc.set_change_type(ConfChangeType::AddLearnerNode);
        self.ask(|tx| Control::ConfChange(cc, tx), "a learner to be added").await?
    }

    /// Promotes learner `id` to a voting member (raft-rs `AddNode` of a learner, etcd's
    /// `MemberPromote`). Asked of the leader, it is refused while the learner's log is behind
    /// 90% of the leader's (etcd's `isLearnerReady`).
    ///
    /// # Errors
    /// [`RaftError::LearnerNotReady`], and as [`Client::propose`].
    pub async fn promote_member(&self, id: u64) -> Result<i64, RaftError> {
        let mut cc = ConfChange { node_id: id, ..Default::default() };
        cc.set_change_type(ConfChangeType::AddNode);
        self.ask(|tx| Control::Promote(cc, tx), "a learner to be promoted").await?
    }

    /// Removes member `id`.
    ///
    /// # Errors
    /// As [`Client::propose`].
    pub async fn remove_member(&self, id: u64) -> Result<i64, RaftError> {
        let mut cc = ConfChange { node_id: id, ..Default::default() };
        cc.set_change_type(ConfChangeType::RemoveNode);
        self.ask(|tx| Control::ConfChange(cc, tx), "a member to be removed").await?
    }

    /// The node's status.
    ///
    /// # Errors
    /// [`RaftError::Stopped`] or [`RaftError::Timeout`].
    pub async fn status(&self) -> Result<Status, RaftError> {
        self.ask(Control::Status, "the node's status").await
    }

    /// SHA-256 of every backend record (bucket, key, value) in order: equal on two nodes that
    /// applied the same entries, however they got them.
    ///
    /// # Errors
    /// [`RaftError::Backend`] if the backend cannot be read.
    pub async fn digest(&self) -> Result<[u8; 32], RaftError> {
        self.ask(Control::Digest, "the node's digest").await?
    }

    /// Live keys and values in `[key, range_end)` (etcd's conventions: empty `range_end` is just
    /// `key`, `[0]` is every key from `key` on), from this member's local state: a serializable
    /// read (etcd's `--consistency=s`), which may miss writes the leader has acknowledged. See
    /// [`Client::read`] for a linearizable one.
    ///
    /// # Errors
    /// [`RaftError::Store`] if the range cannot be read.
    pub async fn range(&self, key: &[u8], range_end: &[u8]) -> Result<Vec<Pair>, RaftError> {
        self.ask(|tx| Control::Range(key.to_vec(), range_end.to_vec(), tx), "a range").await?
    }

    // --- Reads: linearizable (ReadIndex) or serializable. ---

    /// Waits until this member has applied everything the cluster had committed when this was
    /// called, as the leader confirms it (raft-rs's ReadIndex, batched with concurrent reads
    /// into one round): a read of the local state after it returns is linearizable. Works on a
    /// follower as on the leader.
    ///
    /// # Errors
    /// [`RaftError::Timeout`] if no read index was obtained and applied within the request
    /// timeout (etcd's: 5 s plus two election timeouts), saying when the member knows no leader;
    /// [`RaftError::Stopped`].
    pub async fn read_index(&self) -> Result<(), RaftError> {
        self.ask(Control::ReadIndex, "a read index").await?
    }

    /// [`Client::range`] with the consistency asked: [`Consistency::Linearizable`] (etcd's
    /// default) waits for [`Client::read_index`] first.
    ///
    /// # Errors
    /// As [`Client::read_index`] and [`Client::range`].
    pub async fn read(&self, key: &[u8], range_end: &[u8], consistency: Consistency) -> Result<Vec<Pair>, RaftError> {
        if consistency == Consistency::Linearizable {
            self.read_index().await?;
        }
        self.range(key, range_end).await
    }

    // --- End of reads. ---

    /// Takes a snapshot of the live backend at the applied index and drops the raft log up to
    /// it (etcd's snapshot at `--snapshot-count` and `raftStorage.Compact`); returns the index.
    ///
    /// # Errors
    /// [`RaftError::Image`] or [`RaftError::Log`] if the snapshot or the compaction fails.
    pub async fn compact_log(&self) -> Result<u64, RaftError> {
        self.ask(Control::CompactLog, "the log to be compacted").await?
    }

    /// Defragments this member's backend file (etcd's `Maintenance.Defragment`): on the loop,
    /// between two readies, so nothing is applied or read meanwhile; the content is unchanged.
    ///
    /// # Errors
    /// [`RaftError::DefragmentBusy`] while a reader holds the backend (a snapshot being sent),
    /// [`RaftError::Fs`] if the file cannot be compacted, [`RaftError::Stopped`] or
    /// [`RaftError::Timeout`].
    pub async fn defragment(&self) -> Result<(), RaftError> {
        self.ask(Control::Defragment, "the backend to be defragmented").await?
    }

    /// Cuts the node off the network (`true`) or heals it (`false`); returns once the node's
    /// transport has taken it, so nothing sent or received after the return crosses the cut.
    ///
    /// # Errors
    /// [`RaftError::Stopped`] or [`RaftError::Timeout`].
    pub async fn isolate(&self, on: bool) -> Result<(), RaftError> {
        self.ask(|tx| Control::Isolate(on, tx), "the node to be cut off or healed").await
    }

    /// Client API hook: sends `control` to the loop (crate::query builds it).
    pub(crate) fn send(&self, control: Control) -> Result<(), RaftError> {
        self.control.send(control).map_err(|_| RaftError::Stopped)
    }
}

impl NodeHandle {
    /// The node's client: every request goes through it. Clone it for a task of its own.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Stops the node and waits for its loop to end; returns the loop's error, if it failed.
    ///
    /// # Errors
    /// The error the loop stopped on.
    pub async fn stop(mut self) -> Result<(), RaftError> {
        let _ = self.client.control.send(Control::Stop);
        match self.task.take() {
            Some(t) => t.await.unwrap_or(Err(RaftError::Stopped)),
            None => Ok(()),
        }
    }

    /// Waits until the node's loop ends on its own and returns why: a fatal error, such as a
    /// write to a full disk (etcd exits on a failed raft log or backend write). Never resolves
    /// while the node runs; cancel-safe, for a `select!` beside the server's other work.
    pub async fn failed(&mut self) -> RaftError {
        let Some(task) = self.task.as_mut() else {
            return std::future::pending().await;
        };
        let result = task.await;
        self.task = None;
        match result {
            Ok(Err(e)) => e,
            Ok(Ok(())) | Err(_) => RaftError::Stopped,
        }
    }

    /// Stops the node at once, as a crash would: its task is aborted at its next await (a
    /// ready being handled is finished first: the loop's disk work is synchronous), and its
    /// files are closed when this returns.
    pub async fn kill(mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = t.await;
        }
    }
}

impl Drop for NodeHandle {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_linearizable_unless_asked_otherwise() {
        // etcd's `--consistency` defaults to `l`.
        assert_eq!(Consistency::default(), Consistency::Linearizable);
    }
}
