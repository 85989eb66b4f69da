//! Boot: a node opened from the mounted flash, never handed out before a restore that a power
//! cut interrupted is completed (etcd's `RecoverSnapshotBackend`).

use core::fmt;

use embedded_storage::nor_flash::NorFlash;
use snapply_core::collections::Profile;
use snapply_core::ports::{Observer, Ports, Transport};
use snapply_core::store::StoreError;
use snapply_core::{ApplyError, Config, Node, Snapshot, apply_snapshot};

use crate::backend::FlashBackend;
use crate::error::FlashError;
use crate::store::{FlashSnapshotStore, Mounted};

/// Why [`Mounted::open_node`] gave no node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum BootError<E> {
    /// Reading the committed area's v2 data failed.
    Flash(FlashError<E>),
    /// The committed state did not load into the node's stores (corrupt records, or a
    /// capacity of the profile too small for them).
    Store(StoreError),
    /// Completing the restore of the pending snapshot failed; the snapshot stays persisted and
    /// the next boot tries again. If the error is not fatal ([`ApplyError::is_fatal`]), the
    /// committed state is intact; a snapshot that can never be applied (larger than the node's
    /// tables) is dropped with [`FlashSnapshotStore::discard_pending`], and the next boot serves
    /// the committed state.
    Apply(ApplyError),
}

impl<E: fmt::Debug> fmt::Display for BootError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BootError::Flash(e) => write!(f, "booting from flash: {e}"),
            BootError::Store(e) => write!(f, "booting from flash: loading the committed state: {e}"),
            BootError::Apply(e) => write!(f, "booting from flash: completing the pending snapshot: {e}"),
        }
    }
}

impl<E: fmt::Debug> core::error::Error for BootError<E> {}

impl<'f, F: NorFlash, const N: usize, const R: usize> Mounted<'f, F, N, R> {
    /// Opens the node on the committed area ([`Node::open`], its v2 store from the snapshot the
    /// area was restored from) and, if a snapshot was persisted and not yet committed, applies
    /// it through the pipeline from flash ([`Snapshot::persisted`]: no image is read) before
    /// returning the node. So a node is only ever handed out on a finished state.
    ///
    /// `store` must be the snapshot store of the same flash range.
    ///
    /// # Errors
    /// [`BootError`]: the node is not returned, so it cannot serve.
    pub fn open_node<P: Profile>(
        self,
        config: Config,
        store: &mut FlashSnapshotStore<'f, '_, F, N, R>,
        transport: &mut dyn Transport,
        observer: &mut dyn Observer,
    ) -> Result<Node<FlashBackend<'f, F, N, R>, P>, BootError<F::Error>> {
        let Mounted { backend, pending, .. } = self;
        let v2 = store.committed_v2(&backend).map_err(BootError::Flash)?;
        let mut node = Node::open(config, backend, v2).map_err(BootError::Store)?;
        if let Some(p) = pending {
            crate::fmt::info!("completing the restore of the persisted snapshot at index {}", p.metadata.index);
            let ports = Ports { storage: store, transport, observer };
            apply_snapshot(&mut node, ports, Snapshot::persisted(&p.metadata, p.sha256)).map_err(BootError::Apply)?;
        }
        Ok(node)
    }
}
