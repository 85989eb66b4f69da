// Skipping `finish`: the new progress cannot be read before the restore has finished.
use snapply_core::collections::Profile;
use snapply_core::pipeline::PeersUpdated;
use snapply_core::ports::SnapshotStore;

fn skip<'n, P: Profile, S: SnapshotStore>(state: PeersUpdated<'n, P, S>) {
    let _ = state.into_progress();
}

fn main() {}
