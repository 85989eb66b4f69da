//! Boot: a node opened from the mounted flash, never handed out before a restore that a power
//! cut interrupted is completed (etcd's `RecoverSnapshotBackend`).

use core::fmt;

use embedded_storage::nor_flash::NorFlash;
use snapply_core::Observer;
use snapply_core::collections::Profile;
use snapply_core::ports::{PortErrorKind, Ports, Transport};
use snapply_core::store::StoreError;
use snapply_core::{ApplyError, ApplyErrorKind, Config, Node, Snapshot, apply_snapshot};

use crate::backend::FlashBackend;
use crate::error::FlashError;
use crate::store::{FlashSnapshotStore, Mounted, PendingSnapshot};

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
    /// Completing the restore of the pending snapshot failed in a way that may pass: after the
    /// swap ([`ApplyError::is_fatal`]: the node cannot serve a mix), a flash operation failed
    /// (an I/O error), or the node's old state could not be read back. The snapshot stays
    /// persisted and the next boot tries again. (A snapshot that can
    /// never be applied does not end here: it is refused, see [`Booted::refused`].)
    Apply(ApplyError),
}

/// A pending snapshot that boot refused: completing its restore failed before the swap for a
/// reason that does not pass (its records exceed the node's profile, say a member with more
/// peer URLs than it holds, or its area does not read back intact). The node serves the
/// committed state and the snapshot's area is erased; the leader sends a snapshot again.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct RefusedSnapshot {
    /// The snapshot that was pending.
    pub snapshot: PendingSnapshot,
    /// Why it could not be applied.
    pub error: ApplyError,
}

/// A node booted from flash by [`Mounted::open_node`], on a finished state.
#[derive(Debug)]
#[non_exhaustive]
pub struct Booted<'f, F: NorFlash, const N: usize, const R: usize, P: Profile> {
    /// The node: on the pending snapshot if its restore completed, else on the committed state.
    pub node: Node<FlashBackend<'f, F, N, R>, P>,
    /// The pending snapshot boot refused, if it could not be applied (logged as well).
    pub refused: Option<RefusedSnapshot>,
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
    /// A pending snapshot that can never be applied does not keep the device from booting: when
    /// its restore fails before the swap, with the node's old state read back intact, for any
    /// reason but a failed flash operation (its records exceed the profile, its area does not
    /// read back intact; not a misuse of the adapter either),
    /// it is logged, its area erased, and the node is returned on the committed state with the
    /// snapshot in [`Booted::refused`] (etcd logs a failed snapshot and keeps serving; the
    /// leader sends a snapshot again). Kept, it would fail every boot and keep the committed
    /// area from being compacted.
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
    ) -> Result<Booted<'f, F, N, R, P>, BootError<F::Error>> {
        let Mounted { backend, pending, .. } = self;
        let v2 = store.committed_v2(&backend).map_err(BootError::Flash)?;
        let mut node = Node::open(config, backend, v2).map_err(BootError::Store)?;
        let Some(p) = pending else { return Ok(Booted { node, refused: None }) };
        crate::fmt::info!("completing the restore of the persisted snapshot at index {}", p.metadata.index);
        let ports = Ports { storage: store, transport, observer };
        let Err(error) = apply_snapshot(&mut node, ports, Snapshot::persisted(&p.metadata, p.sha256)) else {
            return Ok(Booted { node, refused: None });
        };
        if !never_applies(&error) || node.unfinished().is_some() {
            return Err(BootError::Apply(error));
        }
        crate::fmt::warning!(
            "refusing the persisted snapshot at index {} and serving the committed state: {}",
            p.metadata.index,
            error
        );
        store.discard_pending().map_err(BootError::Flash)?;
        Ok(Booted { node, refused: Some(RefusedSnapshot { snapshot: p, error }) })
    }
}

/// Whether a failed restore of a pending snapshot fails the same way at every boot: it ended
/// before the swap for a reason the snapshot carries, not a flash operation that failed and may
/// pass (through the snapshot store, or through the backend under a store), nor the caller's
/// misuse of the adapter (say a backend held beside the node's, so that the snapshot's backend
/// finds no free slot in the [`crate::Indexes`]), which is no fault of the snapshot.
fn never_applies(error: &ApplyError) -> bool {
    let passing = match error.kind() {
        ApplyErrorKind::Port(e) | ApplyErrorKind::Store(StoreError::Backend(e)) => {
            matches!(e.kind, PortErrorKind::Io | PortErrorKind::Misuse)
        }
        _ => false,
    };
    !error.is_fatal() && !passing
}
