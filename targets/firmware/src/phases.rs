//! The pipeline driven phase by phase, one non-inlined function per transition.
//!
//! `apply_snapshot` runs every transition in one function; inlined, every typestate (those
//! before the swap carry the new backend and the proof, about 1 KiB with the reference profile) and
//! every `Result` around one gets its own stack slot in one frame. Here each transition is a
//! function of its own that takes the previous transition's result as it is and returns its own,
//! and the driver only passes results along (`swap(restore_mvcc(restore_lease(...)))`), so a
//! result is dead once the next transition has taken it and the frames stay small (BENCHMARKS.md,
//! "Firmware"). Keeping the states in one enum slot, or in `Option`s in scoped blocks, measured
//! larger: every move of a state through a `match` or `take` is another copy on the stack. So
//! did giving the snapshot store's calls frames of their own (a wrapper with non-inlined
//! methods): 768 B more than letting them inline into the transitions.

use snapply_core::pipeline::{
    BackendOpened, BackendSwapped, IndexBound, LeaseRestored, MvccRestored, Persisted, Validated,
};
use snapply_core::ports::{Ports, SnapshotStore};
use snapply_core::{ApplyError, Node, Snapshot};

use crate::shared::Device;

/// Runs every phase, in etcd's order, like `apply_snapshot`, and returns the node's applied
/// index after the snapshot; `Ok(None)` for an empty snapshot. The old backend handed back by
/// the swap is dropped there: it is the flash's previous area, with nothing to close, and
/// carrying it (and the whole progress) back through every frame would cost stack.
///
/// Every step takes the previous step's result as it is, the empty snapshot's `Ok(None)`
/// included, so no frame unpacks a state out of a `Result` into a copy of its own.
pub fn apply<'n, S: SnapshotStore>(
    node: &'n mut Node<S::Backend, Device>,
    ports: Ports<'n, S>,
    snapshot: Snapshot<'n>,
) -> Result<Option<u64>, ApplyError> {
    after_swap(before_swap(validate(node, ports, snapshot)))
}

/// The first phase, in a frame of its own.
#[inline(never)]
fn validate<'n, S: SnapshotStore>(
    node: &'n mut Node<S::Backend, Device>,
    ports: Ports<'n, S>,
    snapshot: Snapshot<'n>,
) -> Result<Option<Validated<'n, Device, S>>, ApplyError> {
    Validated::new(node, ports, snapshot)
}

/// A state, or `None` for an empty snapshot, or the error that ended the run.
type Step<T> = Result<Option<T>, ApplyError>;

/// The phases up to the swap. Each transition takes the previous one's result as it is and
/// returns its own, so this frame only passes results along, and each result is dead once the
/// next transition has taken it.
#[inline(never)]
fn before_swap<'n, S: SnapshotStore>(validated: Step<Validated<'n, Device, S>>) -> Step<BackendSwapped<'n, Device, S>> {
    after_persist(persist(validated))
}

/// The phases from opening the backend to the swap, in frames of their own. Each frame holds
/// the results alive in it: here only the opened backend's state, while the open phase (the
/// deepest of them) runs; the states after it (about 1 KiB each, two alive at a time, the new
/// backend in each) in `after_open`, once that phase's frame is gone. In one frame, every
/// phase below it would run on top of all of them.
#[inline(never)]
fn after_persist<'n, S: SnapshotStore>(
    persisted: Step<Persisted<'n, Device, S>>,
) -> Step<BackendSwapped<'n, Device, S>> {
    after_open(open_backend(persisted))
}

/// The phases from binding the consistent index to the swap (see `after_persist`).
#[inline(never)]
fn after_open<'n, S: SnapshotStore>(opened: Step<BackendOpened<'n, Device, S>>) -> Step<BackendSwapped<'n, Device, S>> {
    swap(restore_mvcc(restore_lease(bind_index(opened))))
}

/// Defines a transition as a function of its own, from the previous transition's result.
macro_rules! transition {
    ($name:ident, $from:ident => $to:ident) => {
        #[inline(never)]
        fn $name<'n, S: SnapshotStore>(state: Step<$from<'n, Device, S>>) -> Step<$to<'n, Device, S>> {
            match state? {
                Some(state) => state.$name().map(Some),
                None => Ok(None),
            }
        }
    };
}

transition!(persist, Validated => Persisted);
transition!(open_backend, Persisted => BackendOpened);
transition!(bind_index, BackendOpened => IndexBound);
transition!(restore_lease, IndexBound => LeaseRestored);
transition!(restore_mvcc, LeaseRestored => MvccRestored);

/// The swap: the new backend and every store become live; the old backend is dropped.
#[inline(never)]
fn swap<'n, S: SnapshotStore>(mvcc: Step<MvccRestored<'n, Device, S>>) -> Step<BackendSwapped<'n, Device, S>> {
    Ok(mvcc?.map(|mvcc| mvcc.swap_backend().0))
}

/// The phases after the swap: they announce stores already live, then update the peers and
/// finish.
#[inline(never)]
fn after_swap<S: SnapshotStore>(swapped: Step<BackendSwapped<'_, Device, S>>) -> Step<u64> {
    let Some(s) = swapped? else {
        return Ok(None);
    };
    let peers = s.restore_alarms().restore_auth().restore_v2().restore_cluster().update_peers()?;
    Ok(Some(peers.finish()?.progress().applied_index))
}
