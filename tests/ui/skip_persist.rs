// Skipping `persist`: a backend cannot be opened before the snapshot is durable (etcd #7876).
use snapply_core::collections::Profile;
use snapply_core::pipeline::Validated;
use snapply_core::ports::SnapshotStore;

fn skip<'n, P: Profile, S: SnapshotStore>(state: Validated<'n, P, S>) {
    let _ = state.open_backend();
}

fn main() {}
