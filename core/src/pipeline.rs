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
//! a [`SnapshotStore`] (or the closure of [`Validated::persist_with`], for a driver that awaits
//! durability) confirming the [`PersistTicket`] of this very run can produce.
//!
//! A host can build the lessor and the key index while persisting ([`Prebuilt`]) and hand them
//! to the lessor and key-index phases, which then install them instead of scanning the backend.
//!
//! The alarms, auth, membership and v2 stores are read from the new backend (and the snapshot's
//! v2 data) when it is opened, in phase 3: alarms, auth and membership into the node's own
//! stores, the v2 store into the node's staging slot, exchanged with the live one at the swap. Phases 4 to 6 bind the consistent
//! index and rebuild the lessor and the key index from the new backend, in the node's own
//! memory (a device cannot hold two copies of them). Phase 7 installs the new backend and every store at once; phases 8
//! to 11 then announce, in etcd's order, stores that are already live. Nothing a snapshot
//! contains can fail after the swap: only the transport and the snapshot store can.
//!
//! # However a run ends
//!
//! The node is borrowed exclusively from [`Validated::new`] to the end of the run and is marked
//! *unfinished* before any port is called. The mark is cleared when the run reaches `Applied`,
//! or when it ends before the swap, the old backend still live (the stores the run had begun to
//! rebuild, from phase 3 on, are then read back from it). A run that ends after the swap
//! other than at `Applied` (an error, a dropped state, a panic unwinding out of a port) and a
//! run whose state is forgotten (`mem::forget`) leave the mark: the node then refuses
//! [`Node::apply`] and new restores until [`resume`] completes the restore from the durable
//! snapshot, or the same snapshot is sent again and completes it from its image. Such a run
//! reports [`Event::Failed`] naming the phase it did not reach; the gauge goes to 0 (even if
//! the observer panics on a closing event) and `applied snapshot` is logged on every exit but a
//! forgotten state (etcd's `defer`).

use crate::backend::Backend;
use crate::collections::{Profile, Seq};
use crate::error::{ApplyError, ApplyErrorKind};
use crate::fmt::info;
use crate::image;
use crate::node::Node;
use crate::observe::{Event, Observer, Phase, SnapshotFields};
use crate::ports::{
    Durable, PersistTicket, PortError, PortErrorKind, Ports, ReleaseTicket, RunId, SnapshotStore, Transport,
};
use crate::raft::{Progress, SnapshotMetadata};
use crate::snapshot::{ImageData, Snapshot};
use crate::store::{ConsistentIndex, KvStore, Lessor, MAX_MEMBER_URLS, StoreError};

/// What every state carries: the node (the live-backend slot, held exclusively), the ports, the
/// snapshot. Dropping it before the end reports the failure and ends the run.
struct Run<'n, P: Profile, S: SnapshotStore> {
    node: &'n mut Node<S::Backend, P>,
    storage: &'n mut S,
    transport: &'n mut dyn Transport,
    observer: &'n mut dyn Observer,
    /// The snapshot's index and term. Its whole metadata is in the node's unfinished mark (set
    /// before `Validated` is made, cleared when the run ends) and, during the persist phase, in
    /// the [`PersistTicket`]: a copy in a state would cost a device 568 bytes of stack in every
    /// frame the state passes through.
    index: u64,
    term: u64,
    /// The image, until `persist` hands it to the snapshot store.
    image: Option<ImageData<'n>>,
    mark: Option<u64>,
    /// The last phase completed.
    reached: Option<Phase>,
    /// A failure was already reported.
    failed: bool,
    /// The run ended: its closing events are out (or an observer panicked on one).
    ended: bool,
    /// The in-progress gauge is up: lowered once, at the end, even if the observer panics on
    /// the closing event (the guard's `Drop` lowers it while unwinding).
    gauge_up: bool,
}

impl<P: Profile, S: SnapshotStore> Run<'_, P, S> {
    fn fields(&self) -> SnapshotFields {
        SnapshotFields {
            current_snapshot_index: self.node.progress().snapshot_index,
            current_applied_index: self.node.progress().applied_index,
            incoming_leader_snapshot_index: self.index,
            incoming_leader_snapshot_term: self.term,
        }
    }

    fn event(&mut self, event: Event) {
        if event.is_warning() {
            crate::fmt::warning!("{}", event);
        } else {
            info!("{}", event);
        }
        self.observer.event(&event);
    }

    /// Reports `phase` done and restarts the clock.
    fn done(&mut self, phase: Phase) {
        self.reached = Some(phase);
        let now = self.observer.now_micros();
        let elapsed = match (self.mark, now) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a)),
            _ => None,
        };
        self.mark = now;
        self.observer.phase_done(phase, elapsed);
    }

    fn swapped(&self) -> bool {
        self.node.unfinished().is_some_and(|u| u.swapped())
    }

    fn fail(&mut self, phase: Phase, kind: ApplyErrorKind) -> ApplyError {
        let error = ApplyError::new(phase, kind);
        self.failed = true;
        self.event(Event::Failed { phase, fatal: error.is_fatal() });
        error
    }

    fn store_err(&mut self, phase: Phase) -> impl FnOnce(StoreError) -> ApplyError + '_ {
        move |e| self.fail(phase, ApplyErrorKind::Store(e))
    }

    /// The closing events: a failure if the run did not reach `Applied` and none was reported,
    /// `applied snapshot`, the gauge down. Before the swap, the node's old state is restored
    /// and the unfinished mark cleared.
    fn end(&mut self) {
        if self.ended {
            return;
        }
        self.ended = true;
        if self.reached != Some(Phase::Finish) {
            let next = match self.reached {
                None => Phase::Validate,
                Some(p) => Phase::ALL.iter().copied().find(|q| *q > p).unwrap_or(Phase::Finish),
            };
            if !self.failed {
                let fatal = self.swapped();
                self.failed = true;
                self.event(Event::Failed { phase: next, fatal });
            }
            if let Err(e) = self.node.abandon_before_swap() {
                crate::fmt::warning!("reading the old state back failed; the restore stays unfinished: {}", e);
            }
        }
        let fields = self.fields();
        self.event(Event::AppliedSnapshot(fields));
        self.lower_gauge();
    }

    /// Lowers the in-progress gauge if it is up. The flag goes first, so an observer that
    /// panics here is not called again.
    fn lower_gauge(&mut self) {
        if self.gauge_up {
            self.gauge_up = false;
            self.observer.in_progress(false);
        }
    }
}

impl<P: Profile, S: SnapshotStore> Drop for Run<'_, P, S> {
    fn drop(&mut self) {
        self.end();
        // An observer that panicked on a closing event unwound out of `end` before the gauge
        // went down (etcd's deferred `Dec` runs however the function returns).
        self.lower_gauge();
    }
}

macro_rules! state {
    ($(#[$doc:meta])* $name:ident { $($field:ident : $ty:ty),* $(,)? }) => {
        $(#[$doc])*
        #[must_use = "a restore in progress must be driven to `Applied`; dropping it abandons the restore"]
        pub struct $name<'n, P: Profile, S: SnapshotStore> {
            run: Run<'n, P, S>,
            $($field: $ty,)*
        }

        impl<P: Profile, S: SnapshotStore> core::fmt::Debug for $name<'_, P, S> {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                f.debug_struct(stringify!($name))
                    .field("index", &self.run.index)
                    .field("term", &self.run.term)
                    .finish_non_exhaustive()
            }
        }
    };
}

state!(
    /// The snapshot is newer than the node's applied index and its backend's consistent index;
    /// the gauge is up and the node is marked unfinished (the mark holds the metadata).
    Validated {}
);
state!(
    /// The snapshot is durable on the node's own storage (etcd waits on `apply.notifyc`).
    Persisted { durable: Durable<'n> }
);
state!(
    /// The snapshot's backend is open, its consistent index, term and conf state are the
    /// snapshot's, and the stores installed with it at the swap have been read from it.
    BackendOpened { durable: Durable<'n>, backend: S::Backend }
);
state!(
    /// The consistent-index holder points at the new backend (etcd's `consistIndex.SetBackend`).
    IndexBound { durable: Durable<'n>, backend: S::Backend, cindex: ConsistentIndex }
);
state!(
    /// The lessor is rebuilt from the new backend (in the node's memory, not yet live: the node
    /// is borrowed by the run).
    LeaseRestored { durable: Durable<'n>, backend: S::Backend, cindex: ConsistentIndex }
);
state!(
    /// The key index is rebuilt from the new backend, keys reattached to the new leases.
    MvccRestored { durable: Durable<'n>, backend: S::Backend, cindex: ConsistentIndex }
);
state!(
    /// The new backend and every store read from it are live; the old backend was handed back.
    BackendSwapped { durable: Durable<'n> }
);
state!(
    /// Alarms are restored.
    AlarmsRestored { durable: Durable<'n> }
);
state!(
    /// Auth is restored: flag, revision, users, roles, permission cache, token provider.
    AuthRestored { durable: Durable<'n> }
);
state!(
    /// The v2 store is restored, checked against the deprecation level.
    V2Restored { durable: Durable<'n> }
);
state!(
    /// Membership, cluster version and downgrade info are restored; capabilities updated.
    ClusterRestored { durable: Durable<'n> }
);
state!(
    /// The transport has every member but this node as a peer.
    PeersUpdated { durable: Durable<'n> }
);
state!(
    /// The node's progress is the snapshot's and the run has ended.
    Applied {}
);

impl<'n, P: Profile, S: SnapshotStore> Validated<'n, P, S> {
    /// Starts applying `snapshot` to `node`.
    ///
    /// Returns `Ok(None)` for an empty snapshot (`raft.IsEmptySnap`): nothing is done, nothing
    /// is logged. A snapshot whose index is not above both the node's applied index and its
    /// live backend's consistent index is refused with [`ApplyErrorKind::Outdated`] and changes
    /// nothing (etcd panics there). A node holding an unfinished restore refuses with
    /// [`ApplyErrorKind::RestoreUnfinished`] any snapshot but that one (the same metadata,
    /// which completes the restore from the image given, as [`resume`] does from the persisted
    /// one), and one whose last request was cut short
    /// ([`Node::interrupted`]) with [`StoreError::ApplyInterrupted`], calling no port.
    pub fn new(
        node: &'n mut Node<S::Backend, P>,
        ports: Ports<'n, S>,
        snapshot: Snapshot<'n>,
    ) -> Result<Option<Self>, ApplyError> {
        if snapshot.is_empty() {
            return Ok(None);
        }
        // The very snapshot being restored, sent again (the leader retries it), completes the
        // restore from its image: so a node whose persisted copy was lost (deleted by a broken
        // store, a damaged medium) is never stuck unfinished. Any other is refused.
        let resuming = node.admit(snapshot.metadata).map_err(|kind| ApplyError::new(Phase::Validate, kind))?;
        let Snapshot { metadata, data } = snapshot;
        Self::start(node, ports, metadata, data, resuming).map(Some)
    }

    /// Marks the node, then calls the ports: the guard that ends the run exists before any
    /// port is called, so a panic in the first one still ends it.
    fn start(
        node: &'n mut Node<S::Backend, P>,
        ports: Ports<'n, S>,
        metadata: &SnapshotMetadata,
        data: ImageData<'n>,
        resuming: bool,
    ) -> Result<Self, ApplyError> {
        let run_id = RunId::next();
        // Completing an unfinished restore: the mark stays, the run is a new one.
        node.begin_restore(metadata, run_id, resuming);
        let Ports { storage, transport, observer } = ports;
        let mut run = Run {
            node,
            storage,
            transport,
            observer,
            index: metadata.index,
            term: metadata.term,
            image: Some(data),
            mark: None,
            reached: None,
            failed: false,
            ended: false,
            gauge_up: true,
        };
        run.observer.in_progress(true);
        run.mark = run.observer.now_micros();
        let fields = run.fields();
        run.event(Event::ApplyingSnapshot(fields));
        // etcd compares with the applied index only; the live backend's consistent index can be
        // ahead of it (a restore swapped in and not finished), and a snapshot below it would
        // roll the node back. Completing the unfinished restore itself is the one exception.
        // A node reopened in place while unfinished took its progress from the new backend,
        // which is the snapshot's: completing the restore at that very index is not outdated.
        let applied = run.node.progress().applied_index;
        let outdated =
            if resuming { run.index < applied } else { run.index <= applied.max(run.node.stores().cindex.index()) };
        let floor = if resuming { applied } else { applied.max(run.node.stores().cindex.index()) };
        if outdated {
            run.event(Event::OutdatedSnapshot(fields));
            let kind = ApplyErrorKind::Outdated { incoming_index: run.index, applied_index: floor };
            return Err(run.fail(Phase::Validate, kind));
        }
        run.done(Phase::Validate);
        Ok(Validated { run })
    }

    /// Makes the snapshot durable through the snapshot store. The backend swap must never come
    /// before the durable record of the snapshot, or a crash loses the only copy (etcd #7876).
    pub fn persist(mut self) -> Result<Persisted<'n, P, S>, ApplyError> {
        let (stored, asked) = match self.take_image() {
            Ok((image, ticket, asked)) => (self.run.storage.persist(image, ticket), asked),
            Err(e) => (Err(e), None),
        };
        self.accept(stored, asked)
    }

    /// The persist phase for a driver that waits for durability without blocking: hands the
    /// image and the run's [`PersistTicket`] to `persist` and awaits the [`Durable`] it hands
    /// back (etcd's apply loop waiting on `<-apply.notifyc` while the raft side saves the
    /// snapshot). The snapshot store is not called in this phase; every later phase is the
    /// same as after [`Validated::persist`], and the proof is checked the same way (the whole
    /// metadata, and the digest an [`ImageData::Persisted`] image asked for).
    ///
    /// `persist` is an async closure generic over the ticket's brand `'r`, as
    /// [`SnapshotStore::persist`] is: it can hand back a proof made from this ticket and no
    /// other (a proof of another run, a kept one or a forged one does not compile), and since
    /// neither the ticket nor the proof is `Send`, both stay on the driver's thread while the
    /// closure awaits the work done elsewhere (a blocking task, the raft side). The pipeline
    /// itself stays synchronous: this is the one phase that awaits, and it awaits only the
    /// caller's future. Dropping the returned future before it completes ends the run before
    /// the swap, as dropping any state does.
    pub async fn persist_with<F>(mut self, persist: F) -> Result<Persisted<'n, P, S>, ApplyError>
    where
        F: for<'r> AsyncFnOnce(ImageData<'n>, PersistTicket<'r>) -> Result<Durable<'r>, PortError>,
    {
        let (stored, asked) = match self.take_image() {
            Ok((image, ticket, asked)) => (persist(image, ticket).await, asked),
            Err(e) => (Err(e), None),
        };
        self.accept(stored, asked)
    }

    /// The image, handed over once, the ticket for it (the metadata cloned from the node's
    /// unfinished mark), and the digest it asks the store to confirm if it names a persisted
    /// snapshot.
    fn take_image<'r>(&mut self) -> Result<(ImageData<'n>, PersistTicket<'r>, Option<[u8; 32]>), PortError> {
        // `Validated` is reached once per run and consumed by the persist phase, so the image is
        // always there, and the mark set before it stays until the run ends.
        let misuse = |what| PortError::new(PortErrorKind::Misuse, what);
        let Some(unfinished) = self.run.node.unfinished() else {
            return Err(misuse("persisting without the node's unfinished mark"));
        };
        let ticket = PersistTicket::new(unfinished.metadata(), unfinished.run());
        match self.run.image.take() {
            Some(image) => {
                let asked = match &image {
                    ImageData::Persisted { sha256 } => Some(*sha256),
                    _ => None,
                };
                Ok((image, ticket, asked))
            }
            None => Err(misuse("persisting an image that was already handed over")),
        }
    }

    /// Checks the proof a store or a driver handed back: it must name this run's snapshot,
    /// whole metadata, and the image digest asked for, if one was.
    fn accept(
        mut self,
        stored: Result<Durable<'n>, PortError>,
        asked: Option<[u8; 32]>,
    ) -> Result<Persisted<'n, P, S>, ApplyError> {
        let durable = match stored {
            Ok(d) => d,
            Err(e) => return Err(self.run.fail(Phase::Persist, ApplyErrorKind::Port(e))),
        };
        let other_image = asked.is_some_and(|d| d != *durable.sha256());
        // The brand keeps a proof of another run out at compile time, but rustc's implied-bounds
        // hole (#25860) lets safe code rebrand one: the run identity it carries is checked too.
        let other_run = self.run.node.restoring_run() != Some(durable.run());
        if durable.index() != self.run.index || durable.term() != self.run.term || other_image || other_run {
            let kind =
                ApplyErrorKind::PersistedOther { expected_index: self.run.index, confirmed_index: durable.index() };
            return Err(self.run.fail(Phase::Persist, kind));
        }
        self.run.node.record_persisted(*durable.sha256());
        self.run.done(Phase::Persist);
        Ok(Persisted { run: self.run, durable })
    }
}

impl<'n, P: Profile, S: SnapshotStore> Persisted<'n, P, S> {
    /// Opens the snapshot's backend and checks that its consistent index is the snapshot's
    /// index. etcd checks this only under a debug flag (#13973, #20426); snapply always does.
    pub fn open_backend(mut self) -> Result<BackendOpened<'n, P, S>, ApplyError> {
        let backend = match self.run.storage.open_backend(&self.durable) {
            Ok(b) => b,
            Err(e) => return Err(self.run.fail(Phase::OpenBackend, ApplyErrorKind::Port(e))),
        };
        // The backend goes into the next state at once and is checked there: every move of it
        // is another copy on the stack (828 bytes on the reference device's flash), and a state
        // dropped on an error drops it as before.
        let Persisted { run, durable } = self;
        let mut opened = BackendOpened { run, durable, backend };
        if let Err(kind) = opened.check_and_read() {
            return Err(opened.run.fail(Phase::OpenBackend, kind));
        }
        opened.run.done(Phase::OpenBackend);
        Ok(opened)
    }
}

impl<P: Profile, S: SnapshotStore> BackendOpened<'_, P, S> {
    /// The open phase's checks and reads, on the state that holds the new backend: its
    /// consistent index must be the snapshot's, then the stores installed with it are read.
    fn check_and_read(&mut self) -> Result<(), ApplyErrorKind> {
        let stored = self
            .backend
            .read()
            .map_err(StoreError::from)
            .and_then(|t| ConsistentIndex::load(&t))
            .map_err(ApplyErrorKind::Store)?;
        let snapshot_index = self.run.index;
        if stored.index() != snapshot_index {
            return Err(ApplyErrorKind::IndexMismatch { backend_index: stored.index(), snapshot_index });
        }
        self.check_metadata(stored.term())?;
        self.read_later()
    }

    /// The whole metadata, not only the index: the backend's term and conf state must be the
    /// snapshot's (the run's metadata is in the node's unfinished mark). The proof names the
    /// image by index, term and digest, but only the store vouches that the digest is this
    /// metadata's image; a store that confirmed the ticket with another image's digest would
    /// otherwise give the node this metadata's conf state over another backend's.
    #[inline(never)]
    fn check_metadata(&self, backend_term: u64) -> Result<(), ApplyErrorKind> {
        let index = self.run.index;
        let Some(unfinished) = self.run.node.unfinished() else {
            return Err(ApplyErrorKind::MetadataMismatch { index });
        };
        let conf_matches = self
            .backend
            .read()
            .map_err(StoreError::from)
            .and_then(|t| crate::store::conf_state_is(&t, &unfinished.metadata().conf_state))
            .map_err(ApplyErrorKind::Store)?;
        if backend_term != self.run.term || !conf_matches {
            return Err(ApplyErrorKind::MetadataMismatch { index });
        }
        Ok(())
    }

    /// Reads the stores installed with the new backend: alarms, auth and membership from it
    /// (etcd's `restoreAlarms`, `authStore.Recover`, `cluster.Recover`), the v2 store from the
    /// snapshot's v2 data, checked against the deprecation level (`AssertNoV2StoreContent`).
    ///
    /// Alarms, auth and membership are read into the node's own stores, as the lessor and the
    /// key index are later: a device has no room to carry second copies through the phases.
    /// They are in no port's reach until the swap (the node is borrowed by the run), and if the
    /// run ends before the swap they are read back from the old backend. The v2 store is not in
    /// the backend: the new one is staged in the node beside the live one, and the swap
    /// exchanges them.
    #[inline(never)]
    fn read_later(&mut self) -> Result<(), ApplyErrorKind> {
        match self.run.storage.v2_data(&self.durable) {
            Ok(data) => self.run.node.stage_v2(data).map_err(ApplyErrorKind::Store)?,
            Err(e) => return Err(ApplyErrorKind::Port(e)),
        }
        self.run.node.read_restored_stores(&self.backend).map_err(ApplyErrorKind::Store)?;
        // The transport port takes a member's peer URLs as one fixed array (the core has no
        // heap): a member with more is refused here, before the swap, rather than cut short when
        // the peers are updated after it.
        for m in self.run.node.stores().membership.members() {
            crate::store::check_peer_urls(m.peer_urls.as_slice().len()).map_err(ApplyErrorKind::Store)?;
        }
        Ok(())
    }
}

impl<'n, P: Profile, S: SnapshotStore> BackendOpened<'n, P, S> {
    /// Points the consistent-index holder at the new backend. Lease recovery commits a
    /// transaction; with the holder still on the old state, the old consistent index would
    /// overwrite the snapshot's (etcd #13922, fixed by #13930).
    pub fn bind_index(mut self) -> Result<IndexBound<'n, P, S>, ApplyError> {
        let cindex = match self.backend.read().map_err(StoreError::from).and_then(|t| ConsistentIndex::load(&t)) {
            Ok(c) => c,
            Err(e) => return Err(self.run.store_err(Phase::BindIndex)(e)),
        };
        self.run.done(Phase::BindIndex);
        Ok(IndexBound { run: self.run, durable: self.durable, backend: self.backend, cindex })
    }
}

/// What [`IndexBound::restore_lease_prebuilt`] hands on: the next state and, if the pre-built
/// stores were used, the key index for [`LeaseRestored::restore_mvcc_prebuilt`].
pub type LeaseWithIndex<'n, P, S> = (LeaseRestored<'n, P, S>, Option<PrebuiltIndex<P>>);

impl<'n, P: Profile, S: SnapshotStore> IndexBound<'n, P, S> {
    /// Rebuilds the lessor from the new backend's `lease` bucket, with this node's own minimum
    /// TTL. Leases must exist before the key-value store reattaches its keys to them (etcd PR
    /// #6098).
    pub fn restore_lease(mut self) -> Result<LeaseRestored<'n, P, S>, ApplyError> {
        self.run.event(Event::RestoringLeaseStore);
        // In the node's own lessor, cleared first: a device has no room for a second one.
        if let Err(e) = self.run.node.rebuild_lessor(&mut self.backend, &self.cindex) {
            return Err(self.run.store_err(Phase::RestoreLease)(e));
        }
        Ok(self.lease_restored())
    }

    /// [`IndexBound::restore_lease`] with a lessor built ahead of the apply ([`Prebuilt`]):
    /// the lessor is installed as it is, after the same forced commit of the consistent index
    /// etcd's lessor recovery ends with, and the key index built with it is handed back for
    /// [`LeaseRestored::restore_mvcc_prebuilt`], the next phase.
    ///
    /// A `prebuilt` made for another snapshot (index or image digest) or another minimum TTL is
    /// not used: the lessor is then recovered from the backend, as `restore_lease` does, and
    /// `None` is handed back.
    pub fn restore_lease_prebuilt(mut self, prebuilt: Prebuilt<P>) -> Result<LeaseWithIndex<'n, P, S>, ApplyError> {
        let fits = prebuilt.index == self.run.index
            && prebuilt.sha256 == *self.durable.sha256()
            && prebuilt.min_ttl == self.run.node.config().min_lease_ttl;
        if !fits {
            return self.restore_lease().map(|restored| (restored, None));
        }
        self.run.event(Event::RestoringLeaseStore);
        self.run.node.clear_for_rebuild();
        // Lessor::recover's commit: it stamps the snapshot's consistent index (etcd #13922).
        let committed = self.backend.write().map_err(StoreError::from).and_then(|t| self.cindex.commit(t));
        if let Err(e) = committed {
            return Err(self.run.store_err(Phase::RestoreLease)(e));
        }
        let Prebuilt { index, sha256, min_ttl, lessor, attached, kv } = prebuilt;
        self.run.node.install_prebuilt(lessor, None);
        let run = self.run.node.restoring_run();
        Ok((self.lease_restored(), Some(PrebuiltIndex { index, sha256, min_ttl, run, attached, kv })))
    }

    fn lease_restored(mut self) -> LeaseRestored<'n, P, S> {
        self.run.event(Event::RestoredLeaseStore);
        self.run.done(Phase::RestoreLease);
        LeaseRestored { run: self.run, durable: self.durable, backend: self.backend, cindex: self.cindex }
    }
}

impl<'n, P: Profile, S: SnapshotStore> LeaseRestored<'n, P, S> {
    /// Rebuilds the key index from the new backend, reattaches keys to the new leases and
    /// resumes an unfinished scheduled compaction.
    pub fn restore_mvcc(mut self) -> Result<MvccRestored<'n, P, S>, ApplyError> {
        self.run.event(Event::RestoringMvccStore);
        // In the node's own key store, cleared with the lessor: no second key store (24 KiB in
        // the reference profile) ever exists.
        if let Err(e) = self.run.node.rebuild_kv(&mut self.backend, &self.cindex) {
            return Err(self.run.store_err(Phase::RestoreMvcc)(e));
        }
        Ok(self.mvcc_restored())
    }

    /// [`LeaseRestored::restore_mvcc`] with the key index built ahead of the apply: installs it
    /// and the lessor with its keys attached, in O(1). An index handed back by another run (of
    /// this node or another, whatever its snapshot and minimum lease TTL), or of another
    /// snapshot, is not used: the key index is then rebuilt from the backend, as `restore_mvcc`
    /// does.
    pub fn restore_mvcc_prebuilt(mut self, index: PrebuiltIndex<P>) -> Result<MvccRestored<'n, P, S>, ApplyError> {
        let run = self.run.node.restoring_run();
        let fits = index.run.is_some()
            && index.run == run
            && index.index == self.run.index
            && index.sha256 == *self.durable.sha256()
            && index.min_ttl == self.run.node.config().min_lease_ttl;
        if !fits {
            return self.restore_mvcc();
        }
        self.run.event(Event::RestoringMvccStore);
        self.run.node.install_prebuilt(index.attached, Some(index.kv));
        Ok(self.mvcc_restored())
    }

    fn mvcc_restored(mut self) -> MvccRestored<'n, P, S> {
        self.run.event(Event::RestoredMvccStore { consistent_index: self.cindex.index() });
        self.run.done(Phase::RestoreMvcc);
        MvccRestored { run: self.run, durable: self.durable, backend: self.backend, cindex: self.cindex }
    }
}

/// The lessor and the key index of a snapshot, built from its materialised backend ahead of
/// the apply, while persisting (they only depend on the snapshot's bytes), so that the apply
/// installs them instead of scanning every key: the host's critical-path hook. Handed to
/// [`IndexBound::restore_lease_prebuilt`], which installs the lessor and hands back the
/// [`PrebuiltIndex`] for the next phase, so the typestate order (lessor, then key index) holds.
///
/// It holds a second copy of the stores until installed: a device that cannot hold two copies
/// does not use it, and its path ([`IndexBound::restore_lease`]) is unchanged.
pub struct Prebuilt<P: Profile> {
    index: u64,
    sha256: [u8; 32],
    min_ttl: i64,
    /// The leases, no key attached: what the lessor phase installs.
    lessor: Lessor<P>,
    /// The same leases with the keys attached by the key index's build.
    attached: Lessor<P>,
    kv: KvStore<P>,
}

impl<P: Profile> core::fmt::Debug for Prebuilt<P> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Prebuilt").field("index", &self.index).finish_non_exhaustive()
    }
}

impl<P: Profile> Prebuilt<P> {
    /// Builds the lessor (every TTL at least `min_lease_ttl`, the node's own minimum) and the
    /// key index, keys attached to their leases, from an image's records as the decoder wrote
    /// them ([`image::Decoded`]): the prebuilt is bound to that image's verified digest, which
    /// the pipeline compares with the persisted snapshot's, and to `min_lease_ttl`, which it
    /// compares with the node's. Nothing is written.
    ///
    /// `Ok(None)` if the backend holds an unfinished scheduled compaction: resuming it writes
    /// through the bound consistent index, which only the pipeline has, so that snapshot takes
    /// the ordinary path.
    ///
    /// # Errors
    /// The [`StoreError`] of a record that does not recover.
    pub fn build<B: Backend>(decoded: &image::Decoded<B>, min_lease_ttl: i64) -> Result<Option<Self>, StoreError> {
        let sha256 = decoded.summary().sha256;
        let txn = decoded.backend().read()?;
        let index = ConsistentIndex::load(&txn)?.index();
        let lessor = Lessor::<P>::load(&txn, min_lease_ttl)?;
        let mut attached = lessor.clone();
        let (kv, scheduled) = KvStore::<P>::load(&txn, &mut attached)?;
        if scheduled.is_some() {
            return Ok(None);
        }
        Ok(Some(Prebuilt { index, sha256, min_ttl: min_lease_ttl, lessor, attached, kv }))
    }

    /// The consistent index of the backend it was built from.
    pub fn index(&self) -> u64 {
        self.index
    }
}

/// The key index of a [`Prebuilt`], handed back by the lessor phase for the key-index phase.
/// Only [`IndexBound::restore_lease_prebuilt`] makes one.
pub struct PrebuiltIndex<P: Profile> {
    index: u64,
    sha256: [u8; 32],
    min_ttl: i64,
    /// The run whose lessor phase handed it back.
    run: Option<RunId>,
    attached: Lessor<P>,
    kv: KvStore<P>,
}

impl<P: Profile> core::fmt::Debug for PrebuiltIndex<P> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PrebuiltIndex").field("index", &self.index).finish_non_exhaustive()
    }
}

impl<'n, P: Profile, S: SnapshotStore> MvccRestored<'n, P, S> {
    /// Makes the new backend and every store read from it live, all at once, and hands back the
    /// old backend to be closed off the apply loop (etcd closes it on a goroutine, "closing old
    /// backend file").
    pub fn swap_backend(mut self) -> (BackendSwapped<'n, P, S>, S::Backend) {
        let old = self.run.node.swap(self.backend, self.cindex);
        self.run.done(Phase::SwapBackend);
        (BackendSwapped { run: self.run, durable: self.durable }, old)
    }
}

impl<'n, P: Profile, S: SnapshotStore> BackendSwapped<'n, P, S> {
    /// Announces the alarms (etcd's `restoreAlarms`), live since the swap.
    pub fn restore_alarms(mut self) -> AlarmsRestored<'n, P, S> {
        self.run.event(Event::RestoringAlarmStore);
        self.run.event(Event::RestoredAlarmStore);
        self.run.done(Phase::RestoreAlarms);
        AlarmsRestored { run: self.run, durable: self.durable }
    }
}

impl<'n, P: Profile, S: SnapshotStore> AlarmsRestored<'n, P, S> {
    /// Announces auth: flag, revision, users, roles, the permission cache, and the token
    /// provider enabled or disabled to match (etcd #13205, #14571), live since the swap.
    pub fn restore_auth(mut self) -> AuthRestored<'n, P, S> {
        self.run.event(Event::RestoringAuthStore);
        self.run.event(Event::RestoredAuthStore);
        self.run.done(Phase::RestoreAuth);
        AuthRestored { run: self.run, durable: self.durable }
    }
}

impl<'n, P: Profile, S: SnapshotStore> AuthRestored<'n, P, S> {
    /// Announces the v2 store recovered from the snapshot's v2 data, which held nothing the
    /// configured deprecation level forbids (etcd's `AssertNoV2StoreContent`).
    pub fn restore_v2(mut self) -> V2Restored<'n, P, S> {
        self.run.event(Event::RestoringV2Store);
        self.run.event(Event::RestoredV2Store);
        self.run.done(Phase::RestoreV2);
        V2Restored { run: self.run, durable: self.durable }
    }
}

impl<'n, P: Profile, S: SnapshotStore> V2Restored<'n, P, S> {
    /// Announces members, removed members, cluster version and downgrade info, with the
    /// capabilities the version enables (etcd's `cluster.Recover(api.UpdateCapability)`).
    pub fn restore_cluster(mut self) -> ClusterRestored<'n, P, S> {
        self.run.event(Event::RestoringClusterConfiguration);
        self.run.event(Event::RestoredClusterConfiguration);
        self.run.done(Phase::RestoreCluster);
        ClusterRestored { run: self.run, durable: self.durable }
    }
}

impl<'n, P: Profile, S: SnapshotStore> ClusterRestored<'n, P, S> {
    /// Removes every peer from the transport and adds every member but this node.
    pub fn update_peers(mut self) -> Result<PeersUpdated<'n, P, S>, ApplyError> {
        self.run.event(Event::RemovingOldPeers);
        self.run.transport.remove_all_peers();
        self.run.event(Event::RemovedOldPeers);
        self.run.event(Event::AddingPeers);
        let me = self.run.node.config().id;
        let mut failed = None;
        for member in self.run.node.stores().membership.members() {
            if member.id == me {
                continue;
            }
            let mut urls = heapless::Vec::<&[u8], MAX_MEMBER_URLS>::new();
            for u in member.peer_urls.as_slice().iter().take(MAX_MEMBER_URLS) {
                // `take` bounds the count to the capacity, and a member with more URLs was
                // refused when the backend was opened: the push cannot fail.
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

impl<'n, P: Profile, S: SnapshotStore> PeersUpdated<'n, P, S> {
    /// Lets the snapshot store release snapshots older than this one, then sets the progress to
    /// the snapshot's (applied term and index, snapshot index, conf state), clears the node's
    /// unfinished mark and ends the run.
    pub fn finish(mut self) -> Result<Applied<'n, P, S>, ApplyError> {
        if let Err(e) = self.run.storage.release_before(ReleaseTicket::new(&self.durable)) {
            return Err(self.run.fail(Phase::Finish, ApplyErrorKind::Port(e)));
        }
        let Self { mut run, durable } = self;
        // The run's metadata is in the node's unfinished mark, set before the first port call;
        // `accept` checked that the proof names it.
        run.node.complete_restore(durable.index(), durable.term());
        run.done(Phase::Finish);
        run.end();
        Ok(Applied { run })
    }
}

impl<P: Profile, S: SnapshotStore> Applied<'_, P, S> {
    /// The node's progress after the snapshot.
    pub fn progress(&self) -> &Progress {
        self.run.node.progress()
    }

    /// The new progress.
    pub fn into_progress(self) -> Progress {
        self.run.node.progress().clone()
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
pub fn apply_snapshot<'n, P: Profile, S: SnapshotStore>(
    node: &'n mut Node<S::Backend, P>,
    ports: Ports<'n, S>,
    snapshot: Snapshot<'n>,
) -> Result<Option<Outcome<S::Backend>>, ApplyError> {
    let Some(validated) = Validated::new(node, ports, snapshot)? else {
        return Ok(None);
    };
    run_from(validated).map(Some)
}

fn run_from<'n, P: Profile, S: SnapshotStore>(
    validated: Validated<'n, P, S>,
) -> Result<Outcome<S::Backend>, ApplyError> {
    let mvcc = validated.persist()?.open_backend()?.bind_index()?.restore_lease()?.restore_mvcc()?;
    let (swapped, old_backend) = mvcc.swap_backend();
    let applied = swapped.restore_alarms().restore_auth().restore_v2().restore_cluster().update_peers()?.finish()?;
    Ok(Outcome { progress: applied.into_progress(), old_backend })
}

/// Ends the restore a run left unfinished (see [`Node::unfinished`]), so the node serves
/// again: the in-memory form of etcd's boot-time `RecoverSnapshotBackend`.
///
/// - No unfinished restore: `Ok(None)`, nothing is done.
/// - The run ended after the swap (the new backend is live): the restore is completed from the
///   durable snapshot: the whole pipeline runs again from it (the snapshot store confirms it
///   holds exactly that metadata and image digest), and the node serves again once it reaches
///   `Applied`.
/// - The run ended before the swap, the old backend still live, but the old state could not be
///   read back then (a medium failure), or its state was forgotten (`mem::forget`): the old
///   state is read back from the old backend, the mark cleared, the gauge set to 0, and
///   `Ok(None)` returned. The snapshot stays persisted for the next attempt.
pub fn resume<'n, P: Profile, S: SnapshotStore>(
    node: &'n mut Node<S::Backend, P>,
    ports: Ports<'n, S>,
) -> Result<Option<Outcome<S::Backend>>, ApplyError> {
    let Some(unfinished) = node.unfinished().cloned() else {
        return Ok(None);
    };
    let sha256 = match unfinished.sha256().copied() {
        Some(sha256) if unfinished.swapped() => sha256,
        _ => {
            node.abandon_before_swap().map_err(|e| ApplyError::new(Phase::Validate, ApplyErrorKind::Store(e)))?;
            ports.observer.in_progress(false);
            return Ok(None);
        }
    };
    let validated = Validated::start(node, ports, unfinished.metadata(), ImageData::Persisted { sha256 }, true)?;
    run_from(validated).map(Some)
}
