// Building `BackendSwapped` outside the core: the phases before the swap cannot be declared done.
use snapply_core::collections::Profile;
use snapply_core::pipeline::BackendSwapped;
use snapply_core::ports::{Durable, Observer, SnapshotStore, Transport};

fn forge<'n, P: Profile, S: SnapshotStore, T: Transport, O: Observer>(
    durable: Durable,
) -> BackendSwapped<'n, P, S, T, O> {
    BackendSwapped { durable }
}

fn main() {}
