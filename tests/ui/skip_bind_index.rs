// Skipping `bind_index`: leases cannot be restored before the consistent index points at the new backend (etcd #13922).
use snapply_core::collections::Profile;
use snapply_core::pipeline::BackendOpened;
use snapply_core::ports::SnapshotStore;

fn skip<'n, P: Profile, S: SnapshotStore>(state: BackendOpened<'n, P, S>) {
    let _ = state.restore_lease();
}

fn main() {}
