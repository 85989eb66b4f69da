//! Linearizable reads through raft-rs's ReadIndex, as etcd's linearizable range
//! (`EtcdServer.linearizableReadLoop`).
//!
//! A read asks the ready loop for a read index and waits. Reads that arrive while a round is in
//! flight wait for the next one, so concurrent reads share one ReadIndex round (one quorum
//! heartbeat on the leader), as etcd's `readwaitc` batches them. The leader answers with its
//! commit index once a quorum confirmed it is still the leader (raft-rs's `ReadOnlyOption::Safe`);
//! the member releases the round's reads once it has applied up to that index, so a read from its
//! local state then sees every write acknowledged before the read was asked, on a follower too and
//! on a member that has just restarted.
//!
//! raft-rs drops a read index request without an answer when the member knows no leader, or when
//! the leader has not yet committed an entry of its term; the loop sends the round again every
//! [`RETRY`] (etcd's `readIndexRetryTime`), and a read not released by its deadline fails.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use raft::RawNode;
use raft::ReadState;
use tokio::sync::oneshot;

use crate::error::RaftError;
use crate::log::RaftLog;

/// How long a round may go unanswered before it is sent again (etcd's `readIndexRetryTime`).
pub(crate) const RETRY: Duration = Duration::from_millis(500);

/// A read waiting for its read index to be applied.
struct Waiter {
    reply: oneshot::Sender<Result<(), RaftError>>,
    deadline: Instant,
}

/// The read index round in flight: its context (unique per round), when it was last sent, and
/// the reads it answers.
struct Round {
    ctx: u64,
    sent: Instant,
    waiters: Vec<Waiter>,
}

/// The reads of one member, owned by its ready loop.
#[derive(Default)]
pub(crate) struct Reads {
    /// The context of the last round started: also how many rounds were started.
    last_ctx: u64,
    /// Reads asked since the round in flight was sent.
    queued: Vec<Waiter>,
    round: Option<Round>,
    /// Reads whose read index the leader confirmed, by that index, until it is applied.
    confirmed: BTreeMap<u64, Vec<Waiter>>,
}

impl Reads {
    /// A read asked: it fails unless released within `timeout`.
    pub(crate) fn push(&mut self, reply: oneshot::Sender<Result<(), RaftError>>, timeout: Duration) {
        self.queued.push(Waiter { reply, deadline: Instant::now() + timeout });
    }

    /// A wait for `index` to be applied here (no read index round): it fails unless released
    /// within `timeout`.
    pub(crate) fn wait_applied(
        &mut self,
        index: u64,
        reply: oneshot::Sender<Result<(), RaftError>>,
        timeout: Duration,
    ) {
        self.confirmed.entry(index).or_default().push(Waiter { reply, deadline: Instant::now() + timeout });
    }

    /// How many rounds were started.
    pub(crate) fn rounds(&self) -> u64 {
        self.last_ctx
    }

    /// Starts a round for the queued reads when none is in flight, or sends the round in flight
    /// again when it went unanswered for [`RETRY`].
    pub(crate) fn send(&mut self, raw: &mut RawNode<RaftLog>) {
        let now = Instant::now();
        match &mut self.round {
            Some(round) if now.duration_since(round.sent) >= RETRY => {
                round.sent = now;
                raw.read_index(round.ctx.to_be_bytes().to_vec());
            }
            Some(_) => {}
            None if !self.queued.is_empty() => {
                self.last_ctx += 1;
                let ctx = self.last_ctx;
                let waiters = std::mem::take(&mut self.queued);
                self.round = Some(Round { ctx, sent: now, waiters });
                raw.read_index(ctx.to_be_bytes().to_vec());
            }
            None => {}
        }
    }

    /// The read states of a ready: the round in flight gets its read index. An answer to an
    /// earlier round (sent again, or given up) is ignored.
    pub(crate) fn confirm(&mut self, states: Vec<ReadState>) {
        for state in states {
            let answers = self.round.as_ref().is_some_and(|r| state.request_ctx == r.ctx.to_be_bytes());
            if answers && let Some(round) = self.round.take() {
                self.confirmed.entry(state.index).or_default().extend(round.waiters);
            }
        }
    }

    /// Releases every read whose read index is applied.
    pub(crate) fn release(&mut self, applied: u64) {
        while let Some(entry) = self.confirmed.first_entry() {
            if *entry.key() > applied {
                break;
            }
            for w in entry.remove() {
                let _ = w.reply.send(Ok(()));
            }
        }
    }

    /// Fails the reads past their deadline; `leader` (0: none) says why in the error. A round
    /// whose reads all failed is given up.
    pub(crate) fn expire(&mut self, leader: u64) {
        let now = Instant::now();
        let what = if leader == 0 {
            "a read index: this member knows no leader (a serializable read answers from its local state)"
        } else {
            "a read index from the leader, or for this member to apply up to it"
        };
        let expire = |waiters: &mut Vec<Waiter>| {
            let (late, keep): (Vec<_>, Vec<_>) = std::mem::take(waiters).into_iter().partition(|w| w.deadline <= now);
            *waiters = keep;
            for w in late {
                let _ = w.reply.send(Err(RaftError::Timeout { what }));
            }
        };
        expire(&mut self.queued);
        if let Some(round) = &mut self.round {
            expire(&mut round.waiters);
            if round.waiters.is_empty() {
                self.round = None;
            }
        }
        self.confirmed.retain(|_, waiters| {
            expire(waiters);
            !waiters.is_empty()
        });
    }
}
