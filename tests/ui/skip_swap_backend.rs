// Skipping `swap_backend`: alarms cannot be restored before the new backend is live.
use snapply_core::collections::Profile;
use snapply_core::pipeline::MvccRestored;
use snapply_core::ports::SnapshotStore;

fn skip<'n, P: Profile, S: SnapshotStore>(state: MvccRestored<'n, P, S>) {
    let _ = state.restore_alarms();
}

fn main() {}
