// Skipping `restore_mvcc`: the backend cannot go live with its key index not rebuilt.
use snapply_core::collections::Profile;
use snapply_core::pipeline::LeaseRestored;
use snapply_core::ports::{Observer, SnapshotStore, Transport};

fn skip<'n, P: Profile, S: SnapshotStore, T: Transport, O: Observer>(state: LeaseRestored<'n, P, S, T, O>) {
    let _ = state.swap_backend();
}

fn main() {}
