// Repeating `swap_backend` on the same state: the first swap consumed it, so a second old backend
// cannot be taken out of the node (use of moved value).
use snapply_core::collections::Profile;
use snapply_core::pipeline::MvccRestored;
use snapply_core::ports::SnapshotStore;

fn repeat<'n, P: Profile, S: SnapshotStore>(state: MvccRestored<'n, P, S>) {
    let (_swapped, _old) = state.swap_backend();
    let (_again, _older) = state.swap_backend();
}

fn main() {}
