// Skipping `persist`: a backend cannot be opened before the snapshot is durable (etcd #7876).
use snapply_core::collections::Profile;
use snapply_core::pipeline::Validated;
use snapply_core::ports::{Observer, SnapshotStore, Transport};

fn skip<'n, P: Profile, S: SnapshotStore, T: Transport, O: Observer>(state: Validated<'n, P, S, T, O>) {
    let _ = state.open_backend();
}

fn main() {}
