// Skipping `restore_auth`: the v2 store cannot be restored before auth (etcd #13205, #14571).
use snapply_core::collections::Profile;
use snapply_core::pipeline::AlarmsRestored;
use snapply_core::ports::SnapshotStore;

fn skip<'n, P: Profile, S: SnapshotStore>(state: AlarmsRestored<'n, P, S>) {
    let _ = state.restore_v2();
}

fn main() {}
