// Skipping `restore_auth`: the v2 store cannot be restored before auth (etcd #13205, #14571).
use snapply_core::collections::Profile;
use snapply_core::pipeline::AlarmsRestored;
use snapply_core::ports::{Observer, SnapshotStore, Transport};

fn skip<'n, P: Profile, S: SnapshotStore, T: Transport, O: Observer>(state: AlarmsRestored<'n, P, S, T, O>) {
    let _ = state.restore_v2();
}

fn main() {}
