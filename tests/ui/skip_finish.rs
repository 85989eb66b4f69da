// Skipping `finish`: the new progress cannot be read before the restore has finished.
use snapply_core::collections::Profile;
use snapply_core::pipeline::PeersUpdated;
use snapply_core::ports::{Observer, SnapshotStore, Transport};

fn skip<'n, P: Profile, S: SnapshotStore, T: Transport, O: Observer>(state: PeersUpdated<'n, P, S, T, O>) {
    let _ = state.into_progress();
}

fn main() {}
