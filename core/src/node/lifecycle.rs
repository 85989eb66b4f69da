//! The restore's lifecycle as the node sees it: the unfinished mark a run sets before it calls
//! any port, how far the run changed the node ([`Stage`], which only moves forward), and the
//! transitions that end it: the swap, abandoning before the swap (the old stores read back
//! from the old backend), and completing at `Applied`. The pipeline drives these; nothing else
//! changes the mark, so the node's fields stay private to `node`.

use super::Node;
use crate::backend::Backend;
use crate::collections::Profile;
use crate::error::ApplyErrorKind;
use crate::ports::RunId;
use crate::raft::{Progress, SnapshotMetadata};
use crate::store::{Capabilities, ConsistentIndex, KvStore, Lessor, StoreError, V2Deprecation};

/// A restore that a run began and did not finish (see [`Node::unfinished`]).
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Unfinished {
    metadata: SnapshotMetadata,
    sha256: Option<[u8; 32]>,
    /// How far the run got, as far as the node's own state is concerned.
    stage: Stage,
    /// The membership's capabilities when the run began, for reading the old state back.
    capabilities: Capabilities,
    /// The run now driving the restore: only its tickets' proofs and pre-built stores are taken.
    run: RunId,
}

impl Unfinished {
    /// The snapshot being restored.
    pub fn metadata(&self) -> &SnapshotMetadata {
        &self.metadata
    }
    /// The SHA-256 of its image, once it was persisted.
    pub fn sha256(&self) -> Option<&[u8; 32]> {
        self.sha256.as_ref()
    }
    /// Whether its backend and stores are live (the run got past `BackendSwapped`).
    pub fn swapped(&self) -> bool {
        self.stage == Stage::Swapped
    }
    /// The run now driving it.
    pub(crate) fn run(&self) -> RunId {
        self.run
    }
}

/// How far an unfinished restore changed the node, in order: what ending it needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
enum Stage {
    /// Nothing of the node's own state changed yet: ending the run only clears the mark.
    Begun,
    /// Stores were cleared for the rebuild or read from the new backend, the old backend still
    /// live: ending the run reads the old stores back from it ([`Node::abandon_before_swap`]).
    StoresCleared,
    /// The new backend and stores are live: the run can only be completed
    /// ([`crate::pipeline::resume`]).
    Swapped,
}

impl Unfinished {
    /// Marks that the run reached `stage` (a run only goes forward).
    fn reached(&mut self, stage: Stage) {
        self.stage = self.stage.max(stage);
    }
}

impl<B: Backend, P: Profile> Node<B, P> {
    /// Admits a restore of the snapshot `metadata` names, before any port is called: a node
    /// holding an unfinished restore admits only that same snapshot (the leader sends it again),
    /// abandoning it first if it never reached the swap; a node whose last request was cut
    /// short admits none. Returns whether the run completes a restore that reached the swap.
    pub(crate) fn admit(&mut self, metadata: &SnapshotMetadata) -> Result<bool, ApplyErrorKind> {
        let mut resuming = false;
        if let Some(u) = &self.unfinished {
            let (index, swapped) = (u.metadata.index, u.swapped());
            if u.metadata != *metadata {
                return Err(ApplyErrorKind::RestoreUnfinished { index, swapped });
            }
            if swapped {
                resuming = true;
            } else if self.abandon_before_swap().is_err() || self.unfinished.is_some() {
                // Before the swap the old state is read back first, as `resume` does.
                return Err(ApplyErrorKind::RestoreUnfinished { index, swapped: false });
            }
        }
        if self.interrupted {
            // A request was cut short: the stores may not be the backend's, and a restore
            // ending before the swap would leave them so. The node is reopened first.
            return Err(ApplyErrorKind::Store(StoreError::ApplyInterrupted));
        }
        Ok(resuming)
    }

    /// Marks the node as restoring `metadata` for `run`; a run completing a restore that
    /// reached the swap (`resuming`) keeps the mark and takes it over.
    pub(crate) fn begin_restore(&mut self, metadata: &SnapshotMetadata, run: RunId, resuming: bool) {
        match &mut self.unfinished {
            Some(u) if resuming => u.run = run,
            _ => {
                self.unfinished = Some(Unfinished {
                    metadata: metadata.clone(),
                    sha256: None,
                    stage: Stage::Begun,
                    capabilities: self.stores.membership.capabilities(),
                    run,
                });
            }
        }
    }

    /// The run now driving the unfinished restore, if any.
    pub(crate) fn restoring_run(&self) -> Option<RunId> {
        self.unfinished.as_ref().map(Unfinished::run)
    }

    /// Records the digest of the image the snapshot store made durable.
    pub(crate) fn record_persisted(&mut self, sha256: [u8; 32]) {
        if let Some(u) = &mut self.unfinished {
            u.sha256 = Some(sha256);
        }
    }

    /// Reads a restore's v2 data into the staged v2 store, checked against the deprecation
    /// level; the swap installs it.
    pub(crate) fn stage_v2(&mut self, data: &[u8]) -> Result<(), StoreError> {
        let level: V2Deprecation = self.config.v2_deprecation;
        self.staged_v2.recover_into(data, level)
    }

    /// Rebuilds the lessor from a restore's new `backend` in the node's own memory (cleared for
    /// the rebuild first).
    pub(crate) fn rebuild_lessor<T: Backend>(
        &mut self,
        backend: &mut T,
        cindex: &ConsistentIndex,
    ) -> Result<(), StoreError> {
        self.clear_for_rebuild();
        self.stores.lessor.recover_into(backend, self.config.min_lease_ttl, cindex)
    }

    /// Rebuilds the key index from a restore's new `backend`, reattaching keys to the leases
    /// the lessor was rebuilt with.
    pub(crate) fn rebuild_kv<T: Backend>(
        &mut self,
        backend: &mut T,
        cindex: &ConsistentIndex,
    ) -> Result<(), StoreError> {
        let stores = &mut self.stores;
        stores.kv.restore_into(backend, &mut stores.lessor, cindex)
    }

    /// Installs a lessor and a key index built ahead of the restore (the lessor alone when the
    /// key index is rebuilt later).
    pub(crate) fn install_prebuilt(&mut self, lessor: Lessor<P>, kv: Option<KvStore<P>>) {
        self.stores.lessor = lessor;
        if let Some(kv) = kv {
            self.stores.kv = kv;
        }
    }

    pub(crate) fn refuse_if_unfinished(&self) -> Result<(), StoreError> {
        match &self.unfinished {
            Some(u) => Err(StoreError::RestoreUnfinished { index: u.metadata.index }),
            None if self.interrupted => Err(StoreError::ApplyInterrupted),
            None => Ok(()),
        }
    }

    /// Installs the new backend and the v2 store staged from the snapshot, and hands back the
    /// old backend; every other store was rebuilt in place from the new backend. Only the
    /// pipeline's swap phase calls it.
    pub(crate) fn swap(&mut self, backend: B, cindex: ConsistentIndex) -> B {
        let old = core::mem::replace(&mut self.backend, backend);
        self.stores.cindex = cindex;
        core::mem::swap(&mut self.stores.v2, &mut self.staged_v2);
        self.staged_v2.clear();
        if let Some(u) = &mut self.unfinished {
            u.reached(Stage::Swapped);
        }
        old
    }

    /// Reads the alarms, auth and membership of a restore's new `backend` into the node's own
    /// stores (the run is marked as having cleared stores first, so the old ones are read back
    /// from the old backend if it ends before the swap). The membership keeps the node's
    /// capabilities when the backend holds no cluster version, as etcd's `UpdateCapability`
    /// does.
    pub(crate) fn read_restored_stores(&mut self, backend: &B) -> Result<(), StoreError> {
        if let Some(u) = &mut self.unfinished {
            u.reached(Stage::StoresCleared);
        }
        let txn = backend.read()?;
        let stores = &mut self.stores;
        let previous = stores.membership.capabilities();
        stores.alarms.load_into(&txn)?;
        stores.auth.load_into(&txn)?;
        stores.membership.load_into(&txn)?;
        stores.membership.inherit_capabilities(previous);
        Ok(())
    }

    /// Empties the lessor and the key index so a restore can rebuild them in their own memory
    /// (a device cannot hold two copies). The old ones are read back from the old backend if
    /// the restore ends before the swap.
    pub(crate) fn clear_for_rebuild(&mut self) {
        if let Some(u) = &mut self.unfinished {
            u.reached(Stage::StoresCleared);
        }
        self.stores.kv.clear();
        self.stores.lessor.clear(self.config.min_lease_ttl);
    }

    /// A restore ended before the swap: the old backend is live, so the node is as it was once
    /// the stores cleared for the rebuild are read back from it. If even that read fails, the
    /// node stays marked unfinished.
    pub(crate) fn abandon_before_swap(&mut self) -> Result<(), StoreError> {
        let cleared = self.unfinished.as_ref().filter(|u| u.stage == Stage::StoresCleared).map(|u| u.capabilities);
        if let Some(capabilities) = cleared {
            // The membership read back keeps the capabilities the node had when the run began.
            self.stores.membership.set_capabilities(capabilities);
            self.reload()?;
        }
        if self.unfinished.as_ref().is_some_and(|u| !u.swapped()) {
            self.unfinished = None;
            self.staged_v2.clear();
        }
        Ok(())
    }

    /// The restore reached `Applied`.
    pub(crate) fn complete_restore(&mut self, index: u64, term: u64) {
        match &self.unfinished {
            Some(u) => self.progress = Progress::at_snapshot(&u.metadata),
            // A run marks the node before calling any port and clears the mark only here or
            // when it ends before the swap: the mark is there. Were it not, the snapshot's
            // position is still known; the configuration stays the one applied last.
            None => {
                self.progress.applied_term = term;
                self.progress.applied_index = index;
                self.progress.snapshot_index = index;
            }
        }
        self.unfinished = None;
    }
}
