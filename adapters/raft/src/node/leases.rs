//! Lease expiry, driven by the leader as etcd's lessor drives it (`lease/lessor.go`,
//! `etcdserver/v3_server.go`).
//!
//! Only the leader's lessor is promoted (the core's [`snapply_core::store::Lessor::promote`]):
//! it keeps an expiry per lease in memory, from the loop's clock. The loop promotes it once the
//! leader has applied every entry up to its own term's first (etcd promotes on applying the
//! leader's empty entry), extending every lease by the election timeout, so no lease expires
//! because the leader changed; it demotes it as soon as the member stops leading. Every
//! [`CHECK_INTERVAL`] the leader proposes a `LeaseRevoke` for each expired lease (at most
//! [`REVOKE_LIMIT`] a round), which every member applies as a client's revoke, deleting the
//! lease's keys; a lease whose revoke was lost is proposed again after [`RETRY`].
//!
//! Renewals (etcd's `LeaseKeepAlive`) and remaining TTLs (`LeaseTimeToLive`) are answered by the
//! leader: a follower forwards them over the peer transport, as etcd forwards them to its
//! leader's peer URL (`/leases`, `/leases/internal`), and retries until the request timeout
//! while there is no leader or the new one has not promoted its lessor yet.

use snapply_core::RequestBuf;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use snapply_core::store::Renewal;
use tokio::sync::oneshot;

use super::{Client, Control, Loop, context};
use crate::codec::Command;
use crate::error::RaftError;

/// How often the leader looks for expired leases (etcd's lessor loop: 500 ms).
pub(crate) const CHECK_INTERVAL: Duration = Duration::from_millis(500);
/// Most revokes proposed per check (etcd's `leaseRevokeRate` / 2, its per-round limit).
pub(crate) const REVOKE_LIMIT: usize = 500;
/// When an expired lease's revoke is proposed again if the lease still exists (etcd's
/// `expiredLeaseRetryInterval`).
pub(crate) const RETRY: Duration = Duration::from_secs(3);
/// How long a lease request waits for a leader to answer it (etcd's request timeout with its
/// default election timeout: 5 s plus two election timeouts).
const LEADER_WAIT: Duration = Duration::from_secs(7);
/// How long a lease request waits before asking again (etcd throttles its forwarding so).
const RETRY_ASK: Duration = Duration::from_millis(50);

/// A lease request only the leader answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum LeaseAsk {
    /// Renew the lease (etcd's `LeaseRenew`).
    Renew(i64),
    /// The lease's remaining TTL and keys (etcd's `LeaseTimeToLive`).
    TimeToLive(i64),
}

/// The leader's answer to a [`LeaseAsk`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum LeaseAnswer {
    /// This member does not expire leases (it does not lead, or has not promoted its lessor
    /// yet): ask the leader.
    NotLeader,
    /// No such lease (or it expired and is being revoked).
    NotFound,
    /// Renewed; its TTL in seconds.
    Renewed(i64),
    /// The lease as the leader sees it.
    TimeToLive(TimeToLive),
}

/// A lease as the leader sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct TimeToLive {
    /// The TTL it was granted, in seconds.
    pub(crate) granted_ttl: i64,
    /// Seconds until it expires, truncated (negative once past, as etcd's `Remaining`).
    pub(crate) ttl: i64,
    /// Its keys.
    pub(crate) keys: Vec<Vec<u8>>,
}

/// The loop's clock for lease expiries and how far a promotion extends them.
pub(crate) struct LeaseClock {
    epoch: Instant,
    last_check: Instant,
    /// The election timeout (etcd's `Promote(extend)`).
    extend: Duration,
}

impl LeaseClock {
    pub(crate) fn new(election_timeout: Duration) -> Self {
        let now = Instant::now();
        LeaseClock { epoch: now, last_check: now, extend: election_timeout }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Loop {
    /// Promotes the lessor once this member leads and has applied its own term's first entry
    /// (etcd's `Promote` on applying the leader's empty entry: every entry of earlier terms,
    /// grants and revokes included, is applied by then); demotes it once it no longer leads.
    /// A lessor rebuilt while leading (a snapshot applied) is promoted again.
    pub(super) fn track_lease_leadership(&mut self) {
        let raft = &self.raw.raft;
        let leads = raft.state == raft::StateRole::Leader;
        let primary = self.node.stores().lessor.is_primary();
        if !leads && primary {
            self.node.demote();
        } else if leads && !primary && raft.commit_to_current_term() && raft.raft_log.applied >= raft.raft_log.committed
        {
            self.node.promote(self.lease_clock.now_ms(), millis(self.lease_clock.extend));
        }
    }

    /// On the leader, every [`CHECK_INTERVAL`]: proposes the revoke of each expired lease.
    pub(super) fn expire_leases(&mut self) {
        if !self.node.stores().lessor.is_primary() || self.lease_clock.last_check.elapsed() < CHECK_INTERVAL {
            return;
        }
        self.lease_clock.last_check = Instant::now();
        let mut expired = Vec::new();
        self.node.expired_leases(self.lease_clock.now_ms(), millis(RETRY), REVOKE_LIMIT, &mut |id| expired.push(id));
        for id in expired {
            self.seq += 1;
            // No one waits for it: its outcome shows in the lessor (a lost proposal is retried).
            if let Err(e) =
                self.raw.propose(context(self.id, self.seq), Command::Apply(RequestBuf::LeaseRevoke { id }).encode())
            {
                log::warn!("member {:x} failed to revoke lease {id:016x}: {e}", self.id);
            }
        }
    }

    /// A lease granted while this member's lessor is promoted starts to expire at once (etcd's
    /// `Grant` on the primary lessor).
    pub(super) fn lease_applied(&mut self, command: &Command) {
        if let Command::Apply(RequestBuf::LeaseGrant { id, .. }) = command
            && self.node.stores().lessor.is_primary()
        {
            let _ = self.node.renew_lease(*id, self.lease_clock.now_ms());
        }
    }

    /// Answers a lease request as the leader ([`LeaseAnswer::NotLeader`] if this lessor is not
    /// promoted).
    pub(super) fn answer_lease(&mut self, ask: LeaseAsk) -> LeaseAnswer {
        let now = self.lease_clock.now_ms();
        match ask {
            LeaseAsk::Renew(id) => match self.node.renew_lease(id, now) {
                Renewal::Renewed(ttl) => LeaseAnswer::Renewed(ttl),
                Renewal::NotFound => LeaseAnswer::NotFound,
                Renewal::NotPrimary => LeaseAnswer::NotLeader,
            },
            LeaseAsk::TimeToLive(id) => {
                let lessor = &self.node.stores().lessor;
                if !lessor.is_primary() {
                    return LeaseAnswer::NotLeader;
                }
                match lessor.lease(id) {
                    None => LeaseAnswer::NotFound,
                    Some(lease) => LeaseAnswer::TimeToLive(TimeToLive {
                        granted_ttl: lease.ttl,
                        // Truncated towards zero, as Go's `int64(Remaining().Seconds())`.
                        ttl: lease.remaining_ms(now).map_or(lease.ttl, |ms| ms / 1000),
                        keys: lessor.items().iter().filter(|i| i.lease == id).map(|i| i.key.to_vec()).collect(),
                    }),
                }
            }
        }
    }

    /// A client's lease request: answered here if this member's lessor is promoted, else
    /// [`LeaseAnswer::NotLeader`] with the leader's peer URLs to forward it to (none while
    /// there is no leader or this member is cut off).
    pub(super) fn lease_control(&mut self, ask: LeaseAsk, reply: oneshot::Sender<(LeaseAnswer, Vec<String>)>) {
        let answer = self.answer_lease(ask);
        let leader = self.raw.raft.leader_id;
        let urls = if answer == LeaseAnswer::NotLeader && leader != self.id && !self.net.is_isolated() {
            self.net.peer_urls(leader).unwrap_or_default()
        } else {
            Vec::new()
        };
        let _ = reply.send((answer, urls));
    }
}

impl Client {
    /// Renews lease `id` (etcd's `LeaseRenew`, what each `LeaseKeepAlive` request does): the
    /// leader renews it; a follower forwards the renewal to the leader. Returns the lease's TTL
    /// in seconds, `None` if the lease does not exist (or has expired).
    ///
    /// # Errors
    /// [`RaftError::Timeout`] if no leader answered within etcd's request timeout,
    /// [`RaftError::Stopped`].
    pub async fn renew_lease(&self, id: i64) -> Result<Option<i64>, RaftError> {
        match self.ask_leader(LeaseAsk::Renew(id)).await? {
            LeaseAnswer::Renewed(ttl) => Ok(Some(ttl)),
            _ => Ok(None),
        }
    }

    /// Lease `id` as the leader sees it (its remaining TTL counted by the leader's lessor),
    /// `None` if it does not exist.
    pub(crate) async fn lease_on_leader(&self, id: i64) -> Result<Option<TimeToLive>, RaftError> {
        match self.ask_leader(LeaseAsk::TimeToLive(id)).await? {
            LeaseAnswer::TimeToLive(ttl) => Ok(Some(ttl)),
            _ => Ok(None),
        }
    }

    /// Asks this member, then the leader it knows of, until one with a promoted lessor answers
    /// (etcd's forwarding loop in `LeaseRenew` and `LeaseTimeToLive`).
    async fn ask_leader(&self, ask: LeaseAsk) -> Result<LeaseAnswer, RaftError> {
        let deadline = Instant::now() + LEADER_WAIT;
        loop {
            let (answer, urls) = self.ask(|tx| Control::Lease(ask, tx), "a lease request").await?;
            if answer != LeaseAnswer::NotLeader {
                return Ok(answer);
            }
            for url in &urls {
                match crate::transport::ask_lease(url, ask).await {
                    Ok(LeaseAnswer::NotLeader) => {}
                    Ok(answer) => return Ok(answer),
                    Err(e) => log::debug!("member {:x}: forwarding a lease request to {url}: {e}", self.id()),
                }
            }
            if Instant::now() >= deadline {
                return Err(RaftError::Timeout { what: "the leader to answer a lease request" });
            }
            tokio::time::sleep(RETRY_ASK).await;
        }
    }
}
