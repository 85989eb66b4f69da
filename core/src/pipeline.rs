//! The restore pipeline: one type per phase, in etcd's order.
//!
//! ```text
//! Validated → Persisted → BackendOpened → IndexBound → LeaseRestored → MvccRestored →
//! BackendSwapped → AlarmsRestored → AuthRestored → V2Restored → ClusterRestored →
//! PeersUpdated → Applied
//! ```
//!
//! Each transition consumes its state and is the only way to the next one; no state is `Clone`
//! or `Copy`, and none can be built outside this module. So skipping, repeating or reordering a
//! phase does not compile (see the compile-fail tests). `Persisted` needs a [`Durable`] that only
//! a [`SnapshotStore`] confirming a [`PersistTicket`] can produce.
//!
//! Phases 4 to 6 build the consistent index, the lessor and the key index as staged values read
//! from the new backend; phase 7 installs backend and staged stores together under the one
//! exclusive borrow of the node. Until then the node is untouched, so any failure before the
//! swap leaves it exactly as it was.
//!
//! The alarms, auth, membership and v2 stores are read from the new backend (and the snapshot's
//! v2 data) when it is opened, in phase 3, and installed after the swap in etcd's order, phases 8
//! to 11. The data is the same the live backend holds after the swap, but a corrupt record or a
//! full capacity is then found while the old state is still live: after the swap, only the
//! transport and the snapshot store can fail, and the node is never left between its old and its
//! new state by what a snapshot contains.
//!
//! The in-progress gauge goes up when `Validated` is reached and down, with etcd's
//! `applied snapshot` line, whenever the run ends: at `Applied`, on an error, or when a state is
//! dropped (etcd's `defer`).

use crate::backend::Backend;
use crate::collections::Profile;
use crate::collections::Seq;
use crate::error::{ApplyError, ApplyErrorKind};
use crate::fmt::info;
use crate::node::Node;
use crate::ports::{
    Durable, Event, Observer, PersistTicket, Phase, PortError, PortErrorKind, Ports, SnapshotFields, SnapshotStore,
    Transport,
};
use crate::raft::{ImageData, Progress, Snapshot, SnapshotMetadata};
use crate::store::{
    AlarmStore, AuthStore, ConsistentIndex, KvStore, Lessor, MAX_MEMBER_URLS, Membership, StoreError, V2Store,
};

/// What every state carries: the node (the live-backend slot, held exclusively), the ports, the
/// snapshot. Dropping it ends the run: `applied snapshot` is logged and the gauge goes down.
struct Run<'n, P: Profile, S: SnapshotStore, T: Transport, O: Observer> {
    node: &'n mut Node<S::Backend, P>,
    storage: &'n mut S,
    transport: &'n mut T,
    observer: &'n mut O,
    metadata: &'n SnapshotMetadata,
    /// The image, until `persist` hands it to the snapshot store.
    image: Option<ImageData<'n>>,
    mark: Option<u64>,
}

impl<P: Profile, S: SnapshotStore, T: Transport, O: Observer> Run<'_, P, S, T, O> {
    fn fields(&self) -> SnapshotFields {
        SnapshotFields {
            current_snapshot_index: self.node.progress.snapshot_index,
            current_applied_index: self.node.progress.applied_index,
            incoming_leader_snapshot_index: self.metadata.index,
            incoming_leader_snapshot_term: self.metadata.term,
        }
    }

    fn event(&mut self, event: Event) {
        match event {
            Event::RestoredMvccStore { consistent_index } => {
                info!("restored mvcc store: consistent-index={}", consistent_index)
            }
            Event::Failed { phase, fatal } => {
                crate::fmt::warning!("{}: phase={} fatal={}", event.message(), phase.state(), fatal)
            }
            Event::ApplyingSnapshot(f) | Event::AppliedSnapshot(f) | Event::OutdatedSnapshot(f) => info!(
                "{}: current-snapshot-index={} current-applied-index={} incoming-leader-snapshot-index={} incoming-leader-snapshot-term={}",
                event.message(),
                f.current_snapshot_index,
                f.current_applied_index,
                f.incoming_leader_snapshot_index,
                f.incoming_leader_snapshot_term
            ),
            _ => info!("{}", event.message()),
        }
        self.observer.event(&event);
    }

    /// Reports `phase` done and restarts the clock.
    fn done(&mut self, phase: Phase) {
        let now = self.observer.now_micros();
        let elapsed = match (self.mark, now) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a)),
            _ => None,
        };
        self.mark = now;
        self.observer.phase_done(phase, elapsed);
    }

    fn fail(&mut self, phase: Phase, kind: ApplyErrorKind) -> ApplyError {
        let error = ApplyError::new(phase, kind);
        self.event(Event::Failed { phase, fatal: error.is_fatal() });
        error
    }

    fn store_err(&mut self, phase: Phase) -> impl FnOnce(StoreError) -> ApplyError + '_ {
        move |e| self.fail(phase, ApplyErrorKind::Store(e))
    }
}

impl<P: Profile, S: SnapshotStore, T: Transport, O: Observer> Drop for Run<'_, P, S, T, O> {
    fn drop(&mut self) {
        let fields = self.fields();
        self.event(Event::AppliedSnapshot(fields));
        self.observer.in_progress(-1);
    }
}

macro_rules! state {
    ($(#[$doc:meta])* $name:ident { $($field:ident : $ty:ty),* $(,)? }) => {
        $(#[$doc])*
        #[must_use = "a restore in progress must be driven to `Applied`; dropping it abandons the restore"]
        pub struct $name<'n, P: Profile, S: SnapshotStore, T: Transport, O: Observer> {
            run: Run<'n, P, S, T, O>,
            $($field: $ty,)*
        }

        impl<P: Profile, S: SnapshotStore, T: Transport, O: Observer> core::fmt::Debug for $name<'_, P, S, T, O> {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                f.debug_struct(stringify!($name))
                    .field("index", &self.run.metadata.index)
                    .field("term", &self.run.metadata.term)
                    .finish_non_exhaustive()
            }
        }
    };
}

state!(
    /// The snapshot is newer than the node's applied index; the gauge is up.
    Validated {}
);
state!(
    /// The snapshot is durable on the node's own storage (etcd waits on `apply.notifyc`).
    Persisted { durable: Durable }
);
/// The stores read from the new backend when it is opened and installed after the swap.
struct Later<P: Profile> {
    alarms: AlarmStore<P>,
    auth: AuthStore<P>,
    v2: V2Store<P>,
    membership: Membership<P>,
}

state!(
    /// The snapshot's backend is open, its consistent index equals the snapshot's index, and the
    /// stores installed after the swap have been read from it.
    BackendOpened { durable: Durable, backend: S::Backend, later: Later<P> }
);
state!(
    /// The consistent-index holder points at the new backend (etcd's `consistIndex.SetBackend`).
    IndexBound { durable: Durable, backend: S::Backend, later: Later<P>, cindex: ConsistentIndex }
);
state!(
    /// The lessor is rebuilt from the new backend, staged.
    LeaseRestored { durable: Durable, backend: S::Backend, later: Later<P>, cindex: ConsistentIndex, lessor: Lessor<P> }
);
state!(
    /// The key index is rebuilt from the new backend, keys reattached to the staged leases.
    MvccRestored {
        durable: Durable,
        backend: S::Backend,
        later: Later<P>,
        cindex: ConsistentIndex,
        lessor: Lessor<P>,
        kv: KvStore<P>,
    }
);
state!(
    /// The new backend and staged stores are live; the old backend was handed back.
    BackendSwapped { durable: Durable, alarms: AlarmStore<P>, auth: AuthStore<P>, v2: V2Store<P>, membership: Membership<P> }
);
state!(
    /// Alarms are restored.
    AlarmsRestored { durable: Durable, auth: AuthStore<P>, v2: V2Store<P>, membership: Membership<P> }
);
state!(
    /// Auth is restored: flag, revision, users, roles, permission cache, token provider.
    AuthRestored { durable: Durable, v2: V2Store<P>, membership: Membership<P> }
);
state!(
    /// The v2 store is restored, checked against the deprecation level.
    V2Restored { durable: Durable, membership: Membership<P> }
);
state!(
    /// Membership, cluster version and downgrade info are restored; capabilities updated.
    ClusterRestored { durable: Durable }
);
state!(
    /// The transport has every member but this node as a peer.
    PeersUpdated { durable: Durable }
);
state!(
    /// The node's progress is the snapshot's. Dropping it ends the run.
    Applied {}
);

impl<'n, P: Profile, S: SnapshotStore, T: Transport, O: Observer> Validated<'n, P, S, T, O> {
    /// Starts applying `snapshot` to `node`.
    ///
    /// Returns `Ok(None)` for an empty snapshot (`raft.IsEmptySnap`): nothing is done, nothing
    /// is logged. A snapshot whose index is not above the node's applied index is refused with
    /// [`ApplyErrorKind::Outdated`] and changes nothing (etcd panics there).
    pub fn new(
        node: &'n mut Node<S::Backend, P>,
        ports: Ports<'n, S, T, O>,
        snapshot: Snapshot<'n>,
    ) -> Result<Option<Self>, ApplyError> {
        if snapshot.is_empty() {
            return Ok(None);
        }
        let Ports { storage, transport, observer } = ports;
        observer.in_progress(1);
        let mark = observer.now_micros();
        let Snapshot { metadata, data } = snapshot;
        let mut run = Run { node, storage, transport, observer, metadata, image: Some(data), mark };
        let fields = run.fields();
        run.event(Event::ApplyingSnapshot(fields));
        let applied_index = run.node.progress.applied_index;
        if metadata.index <= applied_index {
            run.event(Event::OutdatedSnapshot(fields));
            let kind = ApplyErrorKind::Outdated { incoming_index: metadata.index, applied_index };
            return Err(run.fail(Phase::Validate, kind));
        }
        run.done(Phase::Validate);
        Ok(Some(Validated { run }))
    }

    /// Makes the snapshot durable through the snapshot store. The backend swap must never come
    /// before the durable record of the snapshot, or a crash loses the only copy (etcd #7876).
    pub fn persist(mut self) -> Result<Persisted<'n, P, S, T, O>, ApplyError> {
        let meta = self.run.metadata;
        let ticket = PersistTicket::new(meta.index, meta.term);
        // `Validated` is reached once per run and consumed here, so the image is always there.
        let stored = match self.run.image.take() {
            Some(image) => self.run.storage.persist(meta, image, ticket),
            None => Err(PortError::new(PortErrorKind::Misuse, "persisting an image that was already handed over")),
        };
        let durable = match stored {
            Ok(d) => d,
            Err(e) => return Err(self.run.fail(Phase::Persist, ApplyErrorKind::Port(e))),
        };
        if durable.index() != meta.index || durable.term() != meta.term {
            let kind = ApplyErrorKind::PersistedOther { expected_index: meta.index, confirmed_index: durable.index() };
            return Err(self.run.fail(Phase::Persist, kind));
        }
        self.run.done(Phase::Persist);
        Ok(Persisted { run: self.run, durable })
    }
}

impl<'n, P: Profile, S: SnapshotStore, T: Transport, O: Observer> Persisted<'n, P, S, T, O> {
    /// Opens the snapshot's backend and checks that its consistent index is the snapshot's
    /// index. etcd checks this only under a debug flag (#13973, #20426); snapply always does.
    pub fn open_backend(mut self) -> Result<BackendOpened<'n, P, S, T, O>, ApplyError> {
        let backend = match self.run.storage.open_backend(&self.durable) {
            Ok(b) => b,
            Err(e) => return Err(self.run.fail(Phase::OpenBackend, ApplyErrorKind::Port(e))),
        };
        let stored = match backend.read().map_err(StoreError::from).and_then(|t| ConsistentIndex::load(&t)) {
            Ok(c) => c,
            Err(e) => return Err(self.run.fail(Phase::OpenBackend, ApplyErrorKind::Store(e))),
        };
        let snapshot_index = self.run.metadata.index;
        if stored.index() != snapshot_index {
            let kind = ApplyErrorKind::IndexMismatch { backend_index: stored.index(), snapshot_index };
            return Err(self.run.fail(Phase::OpenBackend, kind));
        }
        let later = match self.read_later(&backend) {
            Ok(later) => later,
            Err(kind) => return Err(self.run.fail(Phase::OpenBackend, kind)),
        };
        self.run.done(Phase::OpenBackend);
        Ok(BackendOpened { run: self.run, durable: self.durable, backend, later })
    }

    /// Reads the stores installed after the swap: alarms, auth and membership from the new
    /// backend (etcd's `restoreAlarms`, `authStore.Recover`, `cluster.Recover`), the v2 store from
    /// the snapshot's v2 data, checked against the deprecation level (`AssertNoV2StoreContent`).
    fn read_later(&mut self, backend: &S::Backend) -> Result<Later<P>, ApplyErrorKind> {
        let level = self.run.node.config.v2_deprecation;
        let v2 = match self.run.storage.v2_data(&self.durable) {
            Ok(data) => V2Store::recover(data, level).map_err(ApplyErrorKind::Store)?,
            Err(e) => return Err(ApplyErrorKind::Port(e)),
        };
        Ok(Later {
            alarms: AlarmStore::recover(backend).map_err(ApplyErrorKind::Store)?,
            auth: AuthStore::recover(backend).map_err(ApplyErrorKind::Store)?,
            membership: Membership::recover(backend).map_err(ApplyErrorKind::Store)?,
            v2,
        })
    }
}

impl<'n, P: Profile, S: SnapshotStore, T: Transport, O: Observer> BackendOpened<'n, P, S, T, O> {
    /// Points the consistent-index holder at the new backend. Lease recovery commits a
    /// transaction; with the holder still on the old state, the old consistent index would
    /// overwrite the snapshot's (etcd #13922, fixed by #13930).
    pub fn bind_index(mut self) -> Result<IndexBound<'n, P, S, T, O>, ApplyError> {
        let cindex = match self.backend.read().map_err(StoreError::from).and_then(|t| ConsistentIndex::load(&t)) {
            Ok(c) => c,
            Err(e) => return Err(self.run.store_err(Phase::BindIndex)(e)),
        };
        self.run.done(Phase::BindIndex);
        Ok(IndexBound { run: self.run, durable: self.durable, backend: self.backend, later: self.later, cindex })
    }
}

impl<'n, P: Profile, S: SnapshotStore, T: Transport, O: Observer> IndexBound<'n, P, S, T, O> {
    /// Rebuilds the lessor from the new backend's `lease` bucket. Leases must exist before the
    /// key-value store reattaches its keys to them (etcd PR #6098).
    pub fn restore_lease(mut self) -> Result<LeaseRestored<'n, P, S, T, O>, ApplyError> {
        self.run.event(Event::RestoringLeaseStore);
        let min_ttl = self.run.node.config.min_lease_ttl;
        let lessor = match Lessor::recover(&mut self.backend, min_ttl, &self.cindex) {
            Ok(l) => l,
            Err(e) => return Err(self.run.store_err(Phase::RestoreLease)(e)),
        };
        self.run.event(Event::RestoredLeaseStore);
        self.run.done(Phase::RestoreLease);
        Ok(LeaseRestored {
            run: self.run,
            durable: self.durable,
            backend: self.backend,
            later: self.later,
            cindex: self.cindex,
            lessor,
        })
    }
}

impl<'n, P: Profile, S: SnapshotStore, T: Transport, O: Observer> LeaseRestored<'n, P, S, T, O> {
    /// Rebuilds the key index from the new backend, reattaches keys to the staged leases and
    /// resumes an unfinished scheduled compaction.
    pub fn restore_mvcc(mut self) -> Result<MvccRestored<'n, P, S, T, O>, ApplyError> {
        self.run.event(Event::RestoringMvccStore);
        let kv = match KvStore::restore(&mut self.backend, &mut self.lessor, &self.cindex) {
            Ok(kv) => kv,
            Err(e) => return Err(self.run.store_err(Phase::RestoreMvcc)(e)),
        };
        self.run.event(Event::RestoredMvccStore { consistent_index: self.cindex.index() });
        self.run.done(Phase::RestoreMvcc);
        Ok(MvccRestored {
            run: self.run,
            durable: self.durable,
            backend: self.backend,
            later: self.later,
            cindex: self.cindex,
            lessor: self.lessor,
            kv,
        })
    }
}

impl<'n, P: Profile, S: SnapshotStore, T: Transport, O: Observer> MvccRestored<'n, P, S, T, O> {
    /// Makes the new backend and the staged consistent index, lessor and key index live, all
    /// at once, and hands back the old backend to be closed off the apply loop (etcd closes it
    /// on a goroutine, "closing old backend file").
    pub fn swap_backend(mut self) -> (BackendSwapped<'n, P, S, T, O>, S::Backend) {
        let node = &mut *self.run.node;
        let old = core::mem::replace(&mut node.backend, self.backend);
        node.stores.cindex = self.cindex;
        node.stores.lessor = self.lessor;
        node.stores.kv = self.kv;
        self.run.done(Phase::SwapBackend);
        let Later { alarms, auth, v2, membership } = self.later;
        (BackendSwapped { run: self.run, durable: self.durable, alarms, auth, v2, membership }, old)
    }
}

impl<'n, P: Profile, S: SnapshotStore, T: Transport, O: Observer> BackendSwapped<'n, P, S, T, O> {
    /// Restores the alarms (etcd's `restoreAlarms`), read from the new backend when it was
    /// opened.
    pub fn restore_alarms(mut self) -> AlarmsRestored<'n, P, S, T, O> {
        self.run.event(Event::RestoringAlarmStore);
        self.run.node.stores.alarms = self.alarms;
        self.run.event(Event::RestoredAlarmStore);
        self.run.done(Phase::RestoreAlarms);
        AlarmsRestored {
            run: self.run,
            durable: self.durable,
            auth: self.auth,
            v2: self.v2,
            membership: self.membership,
        }
    }
}

impl<'n, P: Profile, S: SnapshotStore, T: Transport, O: Observer> AlarmsRestored<'n, P, S, T, O> {
    /// Restores auth: flag, revision, users, roles, the permission cache, and the token provider
    /// enabled or disabled to match (etcd #13205, #14571).
    pub fn restore_auth(mut self) -> AuthRestored<'n, P, S, T, O> {
        self.run.event(Event::RestoringAuthStore);
        self.run.node.stores.auth = self.auth;
        self.run.event(Event::RestoredAuthStore);
        self.run.done(Phase::RestoreAuth);
        AuthRestored { run: self.run, durable: self.durable, v2: self.v2, membership: self.membership }
    }
}

impl<'n, P: Profile, S: SnapshotStore, T: Transport, O: Observer> AuthRestored<'n, P, S, T, O> {
    /// Restores the v2 store recovered from the snapshot's v2 data, which held nothing the
    /// configured deprecation level forbids (etcd's `AssertNoV2StoreContent`).
    pub fn restore_v2(mut self) -> V2Restored<'n, P, S, T, O> {
        self.run.event(Event::RestoringV2Store);
        self.run.node.stores.v2 = self.v2;
        self.run.event(Event::RestoredV2Store);
        self.run.done(Phase::RestoreV2);
        V2Restored { run: self.run, durable: self.durable, membership: self.membership }
    }
}

impl<'n, P: Profile, S: SnapshotStore, T: Transport, O: Observer> V2Restored<'n, P, S, T, O> {
    /// Restores members, removed members, cluster version and downgrade info, with the
    /// capabilities the version enables (etcd's `cluster.Recover(api.UpdateCapability)`).
    pub fn restore_cluster(mut self) -> ClusterRestored<'n, P, S, T, O> {
        self.run.event(Event::RestoringClusterConfiguration);
        self.run.node.stores.membership = self.membership;
        self.run.event(Event::RestoredClusterConfiguration);
        self.run.done(Phase::RestoreCluster);
        ClusterRestored { run: self.run, durable: self.durable }
    }
}

impl<'n, P: Profile, S: SnapshotStore, T: Transport, O: Observer> ClusterRestored<'n, P, S, T, O> {
    /// Removes every peer from the transport and adds every member but this node.
    pub fn update_peers(mut self) -> Result<PeersUpdated<'n, P, S, T, O>, ApplyError> {
        self.run.event(Event::RemovingOldPeers);
        self.run.transport.remove_all_peers();
        self.run.event(Event::RemovedOldPeers);
        self.run.event(Event::AddingPeers);
        let me = self.run.node.config.id;
        let mut failed = None;
        for member in self.run.node.stores.membership.members() {
            if member.id == me {
                continue;
            }
            let mut urls = heapless::Vec::<&[u8], MAX_MEMBER_URLS>::new();
            for u in member.peer_urls.as_slice().iter().take(MAX_MEMBER_URLS) {
                // `take` bounds the count to the capacity: the push cannot fail.
                let _ = urls.push(u.as_slice());
            }
            if let Err(e) = self.run.transport.add_peer(member.id, &urls) {
                failed = Some(e);
                break;
            }
        }
        if let Some(e) = failed {
            return Err(self.run.fail(Phase::UpdatePeers, ApplyErrorKind::Port(e)));
        }
        self.run.event(Event::AddedPeers);
        self.run.done(Phase::UpdatePeers);
        Ok(PeersUpdated { run: self.run, durable: self.durable })
    }
}

impl<'n, P: Profile, S: SnapshotStore, T: Transport, O: Observer> PeersUpdated<'n, P, S, T, O> {
    /// Sets the progress to the snapshot's (applied term and index, snapshot index, conf state)
    /// and lets the snapshot store release snapshots older than this one.
    pub fn finish(mut self) -> Result<Applied<'n, P, S, T, O>, ApplyError> {
        self.run.node.progress = Progress::at_snapshot(self.run.metadata);
        if let Err(e) = self.run.storage.release_before(&self.durable) {
            return Err(self.run.fail(Phase::Finish, ApplyErrorKind::Port(e)));
        }
        self.run.done(Phase::Finish);
        Ok(Applied { run: self.run })
    }
}

impl<P: Profile, S: SnapshotStore, T: Transport, O: Observer> Applied<'_, P, S, T, O> {
    /// The node's progress after the snapshot.
    pub fn progress(&self) -> &Progress {
        &self.run.node.progress
    }

    /// Ends the run (logs `applied snapshot`, gauge down) and returns the new progress.
    pub fn into_progress(self) -> Progress {
        self.run.node.progress.clone()
    }
}

/// The result of [`apply_snapshot`].
#[derive(Debug)]
pub struct Outcome<B> {
    /// The node's progress after the snapshot.
    pub progress: Progress,
    /// The backend that was live before the swap, to be closed off the apply loop.
    pub old_backend: B,
}

/// Runs the whole pipeline: etcd's `applySnapshot`.
///
/// Returns `Ok(None)` for an empty snapshot. See [`ApplyError`] for what a failure leaves.
pub fn apply_snapshot<'n, P: Profile, S: SnapshotStore, T: Transport, O: Observer>(
    node: &'n mut Node<S::Backend, P>,
    ports: Ports<'n, S, T, O>,
    snapshot: Snapshot<'n>,
) -> Result<Option<Outcome<S::Backend>>, ApplyError> {
    let Some(validated) = Validated::new(node, ports, snapshot)? else {
        return Ok(None);
    };
    let mvcc = validated.persist()?.open_backend()?.bind_index()?.restore_lease()?.restore_mvcc()?;
    let (swapped, old_backend) = mvcc.swap_backend();
    let applied = swapped.restore_alarms().restore_auth().restore_v2().restore_cluster().update_peers()?.finish()?;
    Ok(Some(Outcome { progress: applied.into_progress(), old_backend }))
}
