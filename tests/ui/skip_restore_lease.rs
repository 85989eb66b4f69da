// Skipping `restore_lease`: the key index cannot be restored before the leases its keys attach to (etcd #6098).
use snapply_core::collections::Profile;
use snapply_core::pipeline::IndexBound;
use snapply_core::ports::SnapshotStore;

fn skip<'n, P: Profile, S: SnapshotStore>(state: IndexBound<'n, P, S>) {
    let _ = state.restore_mvcc();
}

fn main() {}
