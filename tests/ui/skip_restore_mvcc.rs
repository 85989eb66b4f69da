// Skipping `restore_mvcc`: the backend cannot go live with its key index not rebuilt.
use snapply_core::collections::Profile;
use snapply_core::pipeline::LeaseRestored;
use snapply_core::ports::SnapshotStore;

fn skip<'n, P: Profile, S: SnapshotStore>(state: LeaseRestored<'n, P, S>) {
    let _ = state.swap_backend();
}

fn main() {}
