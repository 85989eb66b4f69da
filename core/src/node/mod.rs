//! A follower (or leader) node's state: the live backend, the stores built on it, and the apply
//! progress. Requests are applied as committed Raft entries; snapshots replace it all through
//! the [`crate::pipeline`].

use crate::backend::Backend;
use crate::collections::Profile;
use crate::raft::{Progress, SnapshotMetadata};
use crate::request::{Request, apply_request, refuse_unrestorable};
use crate::store::{
    AlarmStore, AuthStore, ConsistentIndex, KvStore, LeaseId, Lessor, MemberId, Membership, Renewal, StoreError,
    V2Deprecation, V2Store, save_conf_state,
};

mod lifecycle;

pub use lifecycle::Unfinished;

/// A node's configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Config {
    /// This node's member id; the transport never adds a peer for it.
    pub id: MemberId,
    /// The minimum lease TTL in seconds: etcd's `minTTL`, 1.5 × the election timeout
    /// (`3 * ElectionTicks / 2` heartbeat intervals), rounded up to whole seconds; 2 with etcd's
    /// defaults (election timeout 1000 ms, heartbeat 100 ms). At least 1.
    pub min_lease_ttl: i64,
    /// The `--v2-deprecation` level.
    pub v2_deprecation: V2Deprecation,
}

/// The stores of a node.
#[derive(Clone, Debug, PartialEq)]
pub struct Stores<P: Profile> {
    /// The consistent index of the live backend.
    pub cindex: ConsistentIndex,
    /// Leases.
    pub lessor: Lessor<P>,
    /// The key-value store.
    pub kv: KvStore<P>,
    /// Alarms.
    pub alarms: AlarmStore<P>,
    /// Auth.
    pub auth: AuthStore<P>,
    /// Membership.
    pub membership: Membership<P>,
    /// The v2 store.
    pub v2: V2Store<P>,
}

impl<P: Profile> Stores<P> {
    /// Empty stores.
    pub fn new(min_lease_ttl: i64) -> Self {
        Stores {
            cindex: ConsistentIndex::default(),
            lessor: Lessor::new(min_lease_ttl),
            kv: KvStore::default(),
            alarms: AlarmStore::default(),
            auth: AuthStore::default(),
            membership: Membership::default(),
            v2: V2Store::default(),
        }
    }
}

/// A node: live backend, stores and apply progress.
#[derive(Debug)]
pub struct Node<B: Backend, P: Profile> {
    config: Config,
    backend: B,
    stores: Stores<P>,
    progress: Progress,
    /// Set when a restore begins, cleared when it reaches `Applied` (or ends before the swap
    /// with the node's old state intact). While set, the node refuses entries and new restores.
    unfinished: Option<Unfinished>,
    /// The v2 store a restore read from its snapshot, installed at the swap. Empty otherwise.
    /// The v2 store is not in the backend, so the node's own cannot be read back if a restore
    /// ends before the swap: the new one waits here, in the node's memory, rather than being
    /// carried through every phase on the stack.
    staged_v2: V2Store<P>,
    /// Set while [`Node::apply`] changes the stores in place, cleared once they equal the
    /// backend again (committed, or read back from it). Still set, a request was cut short
    /// (a panic unwound out of a backend or a store): the stores may hold effects the backend
    /// never committed, so the node refuses work until it is reopened.
    interrupted: bool,
}

impl<B: Backend, P: Profile> Node<B, P> {
    /// A node on an empty `backend`, at index 0.
    pub fn new(config: Config, backend: B) -> Self {
        Node {
            config,
            stores: Stores::new(config.min_lease_ttl),
            backend,
            progress: Progress::default(),
            unfinished: None,
            staged_v2: V2Store::default(),
            interrupted: false,
        }
    }

    /// A node on a `backend` that already holds state (a restart): every store is read from it,
    /// the v2 store from `v2_data` (the v2 data of the newest snapshot the node applied, empty
    /// if none), and the progress is the backend's consistent index, term and conf state.
    /// A persisted snapshot newer than that is then applied with
    /// [`crate::Snapshot::persisted`] before the node serves (etcd's `RecoverSnapshotBackend`).
    pub fn open(config: Config, backend: B, v2_data: &[u8]) -> Result<Self, StoreError> {
        let mut node = Node::new(config, backend);
        node.read_state(v2_data)?;
        Ok(node)
    }

    /// [`Node::open`] in place: `node`, made with [`Node::new`] on the `backend` that holds
    /// the state, reads every store from it (the v2 store from `v2_data`) and takes its
    /// progress, in its own memory. A device whose node is most of its RAM cannot build a second
    /// one to return (a node of the reference profile is 34 KiB); it makes the node where it
    /// keeps it and opens it there.
    ///
    /// A node that holds an unfinished restore ([`Node::unfinished`]) keeps its mark unless
    /// every store the mark guards is read back consistent with the backend: a restore that
    /// ended before the swap is abandoned once the old backend's state is read (as a run ending
    /// there does), while one that ended after it stays marked whatever is read (its backend is
    /// the new snapshot's, the v2 data and progress are only the snapshot's once [`resume`]
    /// completes it).
    ///
    /// # Errors
    /// The [`StoreError`] of a store that does not read back; the node must then not be used.
    /// An unfinished restore stays marked, so the node refuses entries and restores until it is
    /// opened again or resumed.
    ///
    /// [`resume`]: crate::pipeline::resume
    pub fn open_in_place(node: &mut Self, v2_data: &[u8]) -> Result<(), StoreError> {
        // The node's stores are read afresh, as `open` reads them into a new node: the
        // membership's capabilities too. The unfinished mark is cleared only after the read,
        // and only for a restore that never reached the swap.
        node.stores.membership.clear();
        node.staged_v2.clear();
        node.read_state(v2_data)?;
        // Every store now equals the backend: a request cut short is forgotten.
        node.interrupted = false;
        if node.unfinished.as_ref().is_some_and(|u| !u.swapped()) {
            node.unfinished = None;
        }
        Ok(())
    }

    /// Reads every store and the progress from the backend and `v2_data`, in place.
    fn read_state(&mut self, v2_data: &[u8]) -> Result<(), StoreError> {
        self.reload()?;
        // Read, not checked against the deprecation level: this is the node's own state.
        self.stores.v2.recover_into(v2_data, V2Deprecation::NotYet)?;
        let conf_state = crate::store::load_conf_state(&self.backend.read()?)?.unwrap_or_default();
        let cindex = self.stores.cindex;
        self.progress = Progress {
            applied_term: cindex.term(),
            applied_index: cindex.index(),
            snapshot_index: cindex.index(),
            conf_state,
        };
        Ok(())
    }

    /// The restore a run began and did not finish, if any. While there is one, [`Node::apply`]
    /// and new restores are refused; [`crate::pipeline::resume`] completes it.
    pub fn unfinished(&self) -> Option<&Unfinished> {
        self.unfinished.as_ref()
    }

    /// Whether a request was cut short (a panic unwound out of [`Node::apply`]) and the stores
    /// may differ from the backend: the node then refuses entries, snapshots of itself and
    /// restores with [`StoreError::ApplyInterrupted`] until it is reopened
    /// ([`Node::open_in_place`]).
    pub fn interrupted(&self) -> bool {
        self.interrupted
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }
    /// The live backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }
    /// The live backend, mutably: for maintenance that keeps its content as it is (a
    /// defragmentation). Nothing written through it reaches the stores.
    pub fn backend_mut(&mut self) -> &mut B {
        &mut self.backend
    }
    /// The stores.
    pub fn stores(&self) -> &Stores<P> {
        &self.stores
    }
    /// The apply progress.
    pub fn progress(&self) -> &Progress {
        &self.progress
    }

    /// The metadata of a snapshot of this node's state at its applied index. Refused while a
    /// restore is unfinished: the backend and the progress disagree until it is completed.
    pub fn snapshot_metadata(&self) -> Result<SnapshotMetadata, StoreError> {
        self.refuse_if_unfinished()?;
        Ok(SnapshotMetadata {
            index: self.progress.applied_index,
            term: self.progress.applied_term,
            conf_state: self.progress.conf_state.clone(),
        })
    }

    /// Promotes the node's lessor at `now_ms` (the node leads): its leases start to expire,
    /// each its remaining TTL plus `extend_ms` from now (etcd's `Promote` with the election
    /// timeout). In memory only, as every expiry; see [`Lessor::promote`].
    pub fn promote(&mut self, now_ms: u64, extend_ms: u64) {
        self.stores.lessor.promote(now_ms, extend_ms);
    }

    /// Demotes the node's lessor (the node no longer leads): its leases stop expiring (etcd's
    /// `Demote`).
    pub fn demote(&mut self) {
        self.stores.lessor.demote();
    }

    /// Renews lease `id` at `now_ms` on a promoted lessor; see [`Lessor::renew`]. The node's
    /// host also calls it for a lease it just granted while leading (etcd's primary lessor
    /// starts a granted lease's expiry at once; the core has no clock of its own).
    pub fn renew_lease(&mut self, id: LeaseId, now_ms: u64) -> Renewal {
        self.stores.lessor.renew(id, now_ms)
    }

    /// Hands `revoke` up to `limit` leases expired at `now_ms`, to be revoked through the log;
    /// see [`Lessor::expired`].
    pub fn expired_leases(&mut self, now_ms: u64, retry_ms: u64, limit: usize, revoke: &mut dyn FnMut(LeaseId)) {
        self.stores.lessor.expired(now_ms, retry_ms, limit, revoke);
    }

    /// Applies the committed entry at (`index`, `term`) carrying `request`, atomically: the
    /// backend and every store change together or not at all. An entry at or below the applied
    /// index is skipped, as etcd skips entries the backend already reflects. Returns the
    /// key-value store's revision after the entry.
    ///
    /// A request the stores reject ([`StoreError::is_rejection`]: a missing lease, a compacted
    /// revision, an active alarm...) changes no store, but the entry is applied all the same:
    /// the consistent index and the applied index move to it, as etcd's `applyEntryNormal`
    /// moves them whatever the request's result, and the rejection is returned. Any other error
    /// (the backend, a full table) leaves the node where it was, entry not applied.
    ///
    /// Refused with [`StoreError::RestoreUnfinished`] while a restore is unfinished.
    pub fn apply(&mut self, index: u64, term: u64, request: &Request<'_>) -> Result<i64, StoreError> {
        self.refuse_if_unfinished()?;
        if index <= self.progress.applied_index {
            return Ok(self.stores.kv.current_revision());
        }
        refuse_unrestorable(request)?;
        // The stores change in place, as the request is written into the transaction. If
        // anything fails, the transaction is dropped, so the backend is as it was, and the stores
        // are read back from it: they always equal what recovering from the backend gives (the
        // invariant the differential tests check). The v2 store is not in the backend; the only
        // requests that touch it are member changes, which keep a copy.
        let touches_v2 =
            matches!(request, Request::MemberAdd(_) | Request::MemberRemove { .. } | Request::MemberUpdate { .. });
        let v2_before = touches_v2.then(|| self.stores.v2.clone());
        // Cleared below once the stores equal the backend again; a panic unwinding out of the
        // backend or a store leaves it set (see `interrupted`).
        self.interrupted = true;
        let mut cindex = self.stores.cindex;
        cindex.advance(index, term);
        let result = self.backend.write().map_err(StoreError::from).and_then(|mut txn| {
            let mut scratch = P::Record::default();
            apply_request(&mut self.stores, &mut txn, request, &mut scratch)?;
            if let Request::Compact { revision } = request {
                // etcd commits the schedule before compacting, so an interrupted compaction is
                // resumed on restore. Here both land in one transaction, which is stronger.
                self.stores.kv.compact(&mut txn, *revision)?;
            }
            save_conf_state(&mut txn, &self.progress.conf_state)?;
            cindex.commit(txn)
        });
        if let Err(e) = result {
            if let Some(v2) = v2_before {
                self.stores.v2 = v2;
            }
            // If even reading back fails, the error of the reload is the one to report: the
            // node must be reopened from its backend.
            self.reload()?;
            self.interrupted = false;
            if !e.is_rejection() {
                return Err(e);
            }
            // The request changed nothing; the entry still moves the consistent index.
            let mut txn = self.backend.write()?;
            save_conf_state(&mut txn, &self.progress.conf_state)?;
            cindex.commit(txn)?;
            self.stores.cindex = cindex;
            self.progress.applied_index = index;
            self.progress.applied_term = term;
            return Err(e);
        }
        self.interrupted = false;
        self.stores.cindex = cindex;
        self.progress.applied_index = index;
        self.progress.applied_term = term;
        Ok(self.stores.kv.current_revision())
    }

    /// Rebuilds every store kept in the backend from it, without writing.
    pub(crate) fn reload(&mut self) -> Result<(), StoreError> {
        let txn = self.backend.read()?;
        let stores = &mut self.stores;
        // One store at a time, each in its own memory: a device cannot hold a second key store
        // (24 KiB in the reference profile). A store that fails to read leaves the node to be
        // reopened, as before.
        stores.lessor.load_into(&txn, self.config.min_lease_ttl)?;
        stores.kv.load_into(&txn, &mut stores.lessor)?;
        stores.cindex = ConsistentIndex::load(&txn)?;
        stores.alarms.load_into(&txn)?;
        stores.auth.load_into(&txn)?;
        let previous = stores.membership.capabilities();
        stores.membership.load_into(&txn)?;
        stores.membership.inherit_capabilities(previous);
        Ok(())
    }

    /// Applies a configuration change's resulting conf state (raft-rs `apply_conf_change`).
    pub fn set_conf_state(&mut self, conf_state: crate::raft::ConfState) {
        self.progress.conf_state = conf_state;
    }

    /// Encodes an image of this node's state at its applied index into `sink`: the snapshot
    /// metadata, the backend's records and the v2 store's data, which is written into `v2`
    /// first (the buffer the caller gives: a device's is fixed). Returns the metadata and the
    /// image's summary. Refused while a restore is unfinished, as [`Node::snapshot_metadata`].
    ///
    /// # Errors
    /// [`EncodeError::Node`](crate::image::EncodeError::Node) when the node's state cannot be
    /// read, and what [`crate::image::encode`] returns.
    pub fn encode_image<S: crate::collections::Seq<u8>, W: crate::image::Sink>(
        &self,
        v2: &mut S,
        sink: &mut W,
    ) -> Result<(SnapshotMetadata, crate::image::Summary), crate::image::EncodeError<W::Error>> {
        use crate::image::EncodeError;
        let metadata = self.snapshot_metadata().map_err(EncodeError::Node)?;
        self.v2_snapshot_data(v2).map_err(EncodeError::Node)?;
        let txn = self.backend.read().map_err(EncodeError::Backend)?;
        let summary = crate::image::encode(&metadata, &txn, v2.as_slice(), sink)?;
        Ok((metadata, summary))
    }

    /// Writes the v2 store's snapshot data into `out`.
    pub fn v2_snapshot_data<S: crate::collections::Seq<u8>>(&self, out: &mut S) -> Result<(), StoreError> {
        self.stores.v2.save(out)
    }
}

#[cfg(test)]
#[cfg(feature = "alloc")]
pub(crate) mod tests;
