// Skipping `restore_lease`: the key index cannot be restored before the leases its keys attach to (etcd #6098).
use snapply_core::collections::Profile;
use snapply_core::pipeline::IndexBound;
use snapply_core::ports::{Observer, SnapshotStore, Transport};

fn skip<'n, P: Profile, S: SnapshotStore, T: Transport, O: Observer>(state: IndexBound<'n, P, S, T, O>) {
    let _ = state.restore_mvcc();
}

fn main() {}
