//! The lessor: leases with TTLs and the keys attached to them (etcd's `lease.lessor`).

use super::cindex::ConsistentIndex;
use super::records::{self, lease_key};
use super::{StoreError, codec};
use crate::backend::{Backend, Bucket, ReadTxn, WriteTxn};
use crate::collections::{Profile, Seq};

/// A lease id (etcd's `LeaseID`); 0 means "no lease".
pub type LeaseId = i64;

/// When a lease expires. Kept in memory only, and only by the leader's lessor (etcd's primary
/// lessor): no record holds it, so a restart, a restore or a new leader starts it again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Expiry {
    /// Never: a follower holds every lease until it is promoted to leader (etcd's `forever`).
    Forever,
    /// At this time of the node's clock, in milliseconds.
    At(u64),
    /// Expired, its revocation handed to the caller ([`Lessor::expired`]); handed again at this
    /// time of the node's clock if the lease still exists then (etcd's
    /// `expiredLeaseRetryInterval`).
    Revoking(u64),
}

/// What renewing a lease answered (etcd's `lessor.Renew`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Renewal {
    /// Renewed: it expires its TTL, in seconds, from now.
    Renewed(i64),
    /// No such lease, or it has expired and is being revoked (etcd's `ErrLeaseNotFound`, which
    /// etcd answers once the revocation is applied).
    NotFound,
    /// This lessor does not expire leases: only the leader's does (etcd's `ErrNotPrimary`).
    NotPrimary,
}

impl Lease {
    /// The TTL its expiry is counted from at promotion: the remaining TTL last checkpointed,
    /// else the granted one (etcd's `getRemainingTTL`).
    pub fn remaining_or_granted_ttl(&self) -> i64 {
        if self.remaining_ttl > 0 { self.remaining_ttl } else { self.ttl }
    }

    /// Milliseconds from `now_ms` to its expiry (negative once past, 0 while its revocation is
    /// pending); `None` if it does not expire ([`Expiry::Forever`]).
    pub fn remaining_ms(&self, now_ms: u64) -> Option<i64> {
        match self.expiry {
            Expiry::Forever => None,
            Expiry::At(at) => Some(i64::try_from(i128::from(at) - i128::from(now_ms)).unwrap_or(i64::MIN)),
            Expiry::Revoking(_) => Some(0),
        }
    }
}

/// A lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Lease {
    /// The id.
    pub id: LeaseId,
    /// The TTL in seconds, at least the lessor's minimum.
    pub ttl: i64,
    /// The remaining TTL last checkpointed, 0 if none (etcd's `remainingTTL`).
    pub remaining_ttl: i64,
    /// When it expires.
    pub expiry: Expiry,
}

/// A key attached to a lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseItem<B> {
    /// The lease.
    pub lease: LeaseId,
    /// The key.
    pub key: B,
}

/// The largest TTL a lease may be granted, in seconds (etcd's `MaxLeaseTTL`, 9,000,000,000:
/// about 285 years, far from overflowing a clock in nanoseconds).
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;

/// The lessor.
#[derive(Clone, Debug, PartialEq)]
pub struct Lessor<P: Profile> {
    leases: P::Leases,
    items: P::LeaseItems,
    min_ttl: i64,
    /// Whether this lessor expires its leases: the leader's does (etcd's `isPrimary`).
    primary: bool,
}

/// Milliseconds in `secs` seconds, saturating.
fn secs_to_ms(secs: i64) -> u64 {
    u64::try_from(secs).unwrap_or(0).saturating_mul(1000)
}

impl<P: Profile> Lessor<P> {
    /// An empty lessor whose leases live at least `min_ttl` seconds.
    pub fn new(min_ttl: i64) -> Self {
        Lessor { leases: Default::default(), items: Default::default(), min_ttl: min_ttl.max(1), primary: false }
    }

    /// Every lease, by id.
    pub fn leases(&self) -> &[Lease] {
        self.leases.as_slice()
    }

    /// Every attached key, by lease then key.
    pub fn items(&self) -> &[LeaseItem<P::Bytes>] {
        self.items.as_slice()
    }

    /// The lease `id`, if granted.
    pub fn lease(&self, id: LeaseId) -> Option<&Lease> {
        codec::find(self.leases.as_slice(), &id, |l| &l.id)
    }

    /// The minimum TTL.
    pub fn min_ttl(&self) -> i64 {
        self.min_ttl
    }

    /// Grants lease `id` with `ttl` seconds, writing it into `txn`. As etcd's `lessor.Grant`:
    /// a TTL above [`MAX_LEASE_TTL`] is refused (`ErrLeaseTTLTooLarge`), and any TTL below the
    /// minimum, zero and negative ones included, is raised to it; the raised TTL is persisted.
    pub(crate) fn grant<W: WriteTxn + ?Sized>(
        &mut self,
        txn: &mut W,
        id: LeaseId,
        ttl: i64,
        scratch: &mut P::Record,
    ) -> Result<(), StoreError> {
        if id == 0 {
            return Err(StoreError::InvalidRequest("lease id 0"));
        }
        if ttl > MAX_LEASE_TTL {
            return Err(StoreError::InvalidRequest("lease ttl too large"));
        }
        if self.lease(id).is_some() {
            return Err(StoreError::AlreadyExists("lease"));
        }
        let lease = Lease { id, ttl: ttl.max(self.min_ttl), remaining_ttl: 0, expiry: Expiry::Forever };
        records::encode_lease(id, lease.ttl, 0, scratch)?;
        txn.put(Bucket::Lease, &lease_key(id), scratch.as_slice())?;
        codec::upsert(&mut self.leases, lease, |l| &l.id, "lessor leases")?;
        Ok(())
    }

    /// Removes lease `id` from the lessor and from `txn` (etcd's `Revoke`); the caller then
    /// deletes its keys from the key space, taking them one by one with
    /// [`Lessor::first_key_of`] (deleting a key detaches it).
    pub(crate) fn revoke<W: WriteTxn + ?Sized>(&mut self, txn: &mut W, id: LeaseId) -> Result<(), StoreError> {
        if !codec::remove(&mut self.leases, &id, |l| &l.id) {
            return Err(StoreError::NotFound("lease"));
        }
        txn.delete(Bucket::Lease, &lease_key(id))?;
        Ok(())
    }

    /// The first key still attached to lease `id`, copied into `out`; `false` when none is.
    pub(crate) fn first_key_of(&self, id: LeaseId, out: &mut P::Bytes) -> Result<bool, StoreError> {
        let items = self.items.as_slice();
        let pos = items.partition_point(|i| i.lease < id);
        match items.get(pos).filter(|i| i.lease == id) {
            Some(item) => {
                out.clear_all();
                out.try_extend(item.key.as_slice())
                    .map_err(|_| crate::collections::CapacityError { what: "revoked lease key" })?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Records the remaining TTL of lease `id`, so a new leader does not extend it back to its
    /// full TTL (etcd's `lessor.Checkpoint`). As in etcd: a checkpoint for a lease that does not
    /// exist (revoked meanwhile) is a no-op; a remaining TTL of 0 (what a renewal sends) clears
    /// the remaining TTL, so promotion uses the full TTL again; the record in the `lease` bucket
    /// is rewritten only when `persist` (etcd's `shouldPersistCheckpoints`: cluster version
    /// 3.6 or later, or the feature gate), otherwise only the lessor's memory changes.
    pub(crate) fn checkpoint<W: WriteTxn + ?Sized>(
        &mut self,
        txn: &mut W,
        id: LeaseId,
        remaining_ttl: i64,
        persist: bool,
        scratch: &mut P::Record,
    ) -> Result<(), StoreError> {
        let Some(lease) = self.leases.as_mut_slice().iter_mut().find(|l| l.id == id) else {
            return Ok(());
        };
        lease.remaining_ttl = remaining_ttl;
        if persist {
            records::encode_lease(id, lease.ttl, remaining_ttl, scratch)?;
            txn.put(Bucket::Lease, &lease_key(id), scratch.as_slice())?;
        }
        Ok(())
    }

    /// Attaches `key` to lease `id`.
    pub(crate) fn attach(&mut self, id: LeaseId, key: &[u8]) -> Result<(), StoreError> {
        if self.lease(id).is_none() {
            return Err(StoreError::NotFound("lease"));
        }
        let item = LeaseItem { lease: id, key: codec::bytes::<P::Bytes>(key, "lease item key")? };
        let pos = self.items.as_slice().binary_search_by(|i| (i.lease, i.key.as_slice()).cmp(&(id, key)));
        if let Err(pos) = pos {
            self.items.try_insert(pos, item).map_err(|_| crate::collections::CapacityError { what: "lease items" })?;
        }
        Ok(())
    }

    /// Attaches `key` to lease `id` during a restore, unsorted; [`Lessor::finish_attaching`]
    /// sorts once at the end. A key whose lease does not exist stays unattached, as in etcd,
    /// which logs it and goes on.
    pub(crate) fn attach_restored(&mut self, lease: LeaseId, key: &[u8]) -> Result<(), StoreError> {
        if self.lease(lease).is_none() {
            crate::fmt::warning!("key attached to a missing lease: lease {}", lease);
            return Ok(());
        }
        let item = LeaseItem { lease, key: codec::bytes::<P::Bytes>(key, "lease item key")? };
        codec::push(&mut self.items, item, "lease items")?;
        Ok(())
    }

    /// Sorts what [`Lessor::attach_restored`] attached and drops duplicates.
    pub(crate) fn finish_attaching(&mut self) {
        self.items
            .as_mut_slice()
            .sort_unstable_by(|a, b| (a.lease, a.key.as_slice()).cmp(&(b.lease, b.key.as_slice())));
        let mut i = 1;
        while let (Some(prev), Some(cur)) = (self.items.as_slice().get(i - 1), self.items.as_slice().get(i)) {
            if prev == cur {
                self.items.remove_at(i);
            } else {
                i += 1;
            }
        }
    }

    /// Detaches `key` from lease `id`, if it was attached.
    pub(crate) fn detach(&mut self, id: LeaseId, key: &[u8]) {
        let pos = self.items.as_slice().binary_search_by(|i| (i.lease, i.key.as_slice()).cmp(&(id, key)));
        if let Ok(pos) = pos {
            self.items.remove_at(pos);
        }
    }

    /// Whether this lessor expires its leases (it was promoted and not demoted since, nor
    /// rebuilt: a rebuilt lessor starts as a follower's).
    pub fn is_primary(&self) -> bool {
        self.primary
    }

    /// Starts expiring leases: this node became the leader at `now_ms` (etcd's `Promote`).
    /// Every lease expires its remaining TTL (the checkpointed one, else the granted one) plus
    /// `extend_ms` from now: etcd extends by the election timeout, so no lease expires because
    /// the leader changed.
    pub fn promote(&mut self, now_ms: u64, extend_ms: u64) {
        self.primary = true;
        let start = now_ms.saturating_add(extend_ms);
        for lease in self.leases.as_mut_slice() {
            lease.expiry = Expiry::At(start.saturating_add(secs_to_ms(lease.remaining_or_granted_ttl())));
        }
    }

    /// Stops expiring leases: this node is a follower again (etcd's `Demote`).
    pub fn demote(&mut self) {
        self.primary = false;
        for lease in self.leases.as_mut_slice() {
            lease.expiry = Expiry::Forever;
        }
    }

    /// Renews lease `id` at `now_ms`: it expires its granted TTL from now (etcd's `Renew`,
    /// `refresh(0)`). Only a primary lessor renews; a lease already expired (its revocation
    /// pending) is not renewed, as etcd answers such a renewal "not found" once it is revoked.
    /// Also what a primary lessor does with a lease just granted (etcd's `Grant`).
    pub fn renew(&mut self, id: LeaseId, now_ms: u64) -> Renewal {
        if !self.primary {
            return Renewal::NotPrimary;
        }
        let Some(lease) = self.leases.as_mut_slice().iter_mut().find(|l| l.id == id) else {
            return Renewal::NotFound;
        };
        match lease.expiry {
            Expiry::Revoking(_) => return Renewal::NotFound,
            Expiry::At(at) if at <= now_ms => return Renewal::NotFound,
            Expiry::At(_) | Expiry::Forever => {}
        }
        lease.expiry = Expiry::At(now_ms.saturating_add(secs_to_ms(lease.ttl)));
        Renewal::Renewed(lease.ttl)
    }

    /// Hands `revoke` up to `limit` leases expired at `now_ms`, in order of id, and marks them
    /// [`Expiry::Revoking`] until `now_ms + retry_ms`: the caller proposes their revocation, and
    /// a lease whose revocation was lost (a proposal dropped) is handed again after that, never
    /// twice while one may be in flight (etcd's `revokeExpiredLeases` and `expireExists`). A
    /// lessor that is not primary expires nothing.
    pub fn expired(&mut self, now_ms: u64, retry_ms: u64, limit: usize, revoke: &mut dyn FnMut(LeaseId)) {
        if !self.primary {
            return;
        }
        let mut handed = 0;
        for lease in self.leases.as_mut_slice() {
            if handed >= limit {
                break;
            }
            let due = match lease.expiry {
                Expiry::At(at) | Expiry::Revoking(at) => at <= now_ms,
                Expiry::Forever => false,
            };
            if due {
                lease.expiry = Expiry::Revoking(now_ms.saturating_add(retry_ms));
                revoke(lease.id);
                handed += 1;
            }
        }
    }

    /// Rebuilds the lessor from the `lease` bucket of `backend` (etcd's `lessor.Recover` and
    /// `initAndRecover`): every TTL at least the minimum, every lease "forever" until promotion,
    /// no attached key yet (the key-value store reattaches them). Like etcd, it ends with a
    /// forced commit, which stamps `cindex` into the backend.
    ///
    /// In place: the leases and attached keys are cleared and refilled.
    pub(crate) fn recover_into<B: Backend>(
        &mut self,
        backend: &mut B,
        min_ttl: i64,
        cindex: &ConsistentIndex,
    ) -> Result<(), StoreError> {
        self.load_into(&backend.read()?, min_ttl)?;
        cindex.commit(backend.write()?)?;
        Ok(())
    }

    /// Empties the lessor in its own memory: no lease, no attached key, `min_ttl` as its
    /// minimum TTL (at least 1), as [`Lessor::new`] makes it.
    pub(crate) fn clear(&mut self, min_ttl: i64) {
        self.leases.clear_all();
        self.items.clear_all();
        self.min_ttl = min_ttl.max(1);
        self.primary = false;
    }

    /// Reads the leases of the `lease` bucket, as [`Lessor::recover_into`] does, without
    /// committing, into a new lessor.
    pub(crate) fn load<R: ReadTxn + ?Sized>(txn: &R, min_ttl: i64) -> Result<Self, StoreError> {
        let mut lessor = Lessor::new(min_ttl);
        lessor.load_into(txn, min_ttl)?;
        Ok(lessor)
    }

    /// Reads the leases of the `lease` bucket in place (cleared first), without committing.
    pub(crate) fn load_into<R: ReadTxn + ?Sized>(&mut self, txn: &R, min_ttl: i64) -> Result<(), StoreError> {
        self.clear(min_ttl);
        let min_ttl = self.min_ttl;
        let leases = &mut self.leases;
        codec::scan(txn, Bucket::Lease, |_, v| {
            records::decode_lease(v).and_then(|(id, ttl, remaining_ttl)| {
                let lease = Lease { id, ttl: ttl.max(min_ttl), remaining_ttl, expiry: Expiry::Forever };
                codec::upsert(leases, lease, |l| &l.id, "lessor leases").map_err(Into::into)
            })
        })
    }
}

#[cfg(test)]
#[cfg(feature = "alloc")]
mod tests {
    use super::*;
    use crate::collections::Growable;
    use crate::mem::VecBackend;

    /// A lessor with leases 1 (TTL 10 s) and 2 (TTL 30 s).
    fn lessor() -> Lessor<Growable> {
        let mut backend = VecBackend::new();
        let mut txn = backend.write().unwrap();
        let mut scratch = Default::default();
        let mut lessor = Lessor::new(2);
        lessor.grant(&mut txn, 1, 10, &mut scratch).unwrap();
        lessor.grant(&mut txn, 2, 30, &mut scratch).unwrap();
        lessor
    }

    fn expired(lessor: &mut Lessor<Growable>, now_ms: u64, limit: usize) -> std::vec::Vec<LeaseId> {
        let mut ids = std::vec::Vec::new();
        lessor.expired(now_ms, 3_000, limit, &mut |id| ids.push(id));
        ids
    }

    /// The clock is the caller's: every instant below is a number of milliseconds, nothing
    /// sleeps.
    #[test]
    fn only_a_promoted_lessor_expires_leases_and_renewals_and_promotion_move_expiries() {
        let mut l = lessor();
        // A follower's lessor: nothing expires, nothing renews.
        assert!(!l.is_primary());
        assert_eq!(expired(&mut l, u64::MAX, 10), []);
        assert_eq!(l.renew(1, 0), Renewal::NotPrimary);
        assert_eq!(l.lease(1).and_then(|l| l.remaining_ms(0)), None);

        // Promoted at 1 s with the election timeout (0.5 s) as extension.
        l.promote(1_000, 500);
        assert!(l.is_primary());
        assert_eq!(l.lease(1).map(|l| l.expiry), Some(Expiry::At(11_500)));
        assert_eq!(l.lease(2).map(|l| l.expiry), Some(Expiry::At(31_500)));
        assert_eq!(l.lease(1).and_then(|l| l.remaining_ms(2_000)), Some(9_500));
        assert_eq!(expired(&mut l, 11_499, 10), []);

        // A renewal at 5 s: expires its granted TTL from then.
        assert_eq!(l.renew(1, 5_000), Renewal::Renewed(10));
        assert_eq!(l.lease(1).map(|l| l.expiry), Some(Expiry::At(15_000)));
        assert_eq!(l.renew(3, 5_000), Renewal::NotFound);
        assert_eq!(expired(&mut l, 14_999, 10), []);

        // Expired: handed once, not again while its revocation may be in flight, again after
        // the retry interval if it still exists; a renewal no longer saves it.
        assert_eq!(expired(&mut l, 15_000, 10), [1]);
        assert_eq!(l.lease(1).and_then(|l| l.remaining_ms(15_000)), Some(0));
        assert_eq!(expired(&mut l, 17_999, 10), []);
        assert_eq!(l.renew(1, 16_000), Renewal::NotFound);
        assert_eq!(expired(&mut l, 18_000, 10), [1]);

        // The limit bounds what one call hands out.
        assert_eq!(expired(&mut l, 40_000, 1), [1]);
        assert_eq!(expired(&mut l, 40_000, 1), [2]);

        // Demoted: every expiry is forgotten.
        l.demote();
        assert!(!l.is_primary());
        assert!(l.leases().iter().all(|l| l.expiry == Expiry::Forever));
        assert_eq!(expired(&mut l, u64::MAX, 10), []);
        assert_eq!(l.renew(2, 40_000), Renewal::NotPrimary);

        // Promoted again (a new term): expiries start over from the TTLs, even for a lease that
        // had expired under the previous leader and was not revoked.
        l.promote(50_000, 500);
        assert_eq!(l.lease(1).map(|l| l.expiry), Some(Expiry::At(60_500)));
        assert_eq!(l.renew(1, 51_000), Renewal::Renewed(10));

        // A rebuilt lessor (a restore, a restart) starts as a follower's.
        l.clear(2);
        assert!(!l.is_primary());
    }

    #[test]
    fn an_expiry_past_is_a_negative_remaining_time() {
        let mut l = lessor();
        l.promote(0, 0);
        assert_eq!(l.lease(1).and_then(|l| l.remaining_ms(10_400)), Some(-400));
        assert_eq!(l.lease(1).map(Lease::remaining_or_granted_ttl), Some(10));
    }
}
