// Skipping `bind_index`: leases cannot be restored before the consistent index points at the new backend (etcd #13922).
use snapply_core::collections::Profile;
use snapply_core::pipeline::BackendOpened;
use snapply_core::ports::{Observer, SnapshotStore, Transport};

fn skip<'n, P: Profile, S: SnapshotStore, T: Transport, O: Observer>(state: BackendOpened<'n, P, S, T, O>) {
    let _ = state.restore_lease();
}

fn main() {}
