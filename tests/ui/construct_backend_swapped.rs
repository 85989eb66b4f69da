// Building `BackendSwapped` outside the core: the phases before the swap cannot be declared done.
use snapply_core::collections::Profile;
use snapply_core::pipeline::BackendSwapped;
use snapply_core::ports::{Durable, SnapshotStore};

fn forge<'n, P: Profile, S: SnapshotStore>(
    durable: Durable<'n>,
) -> BackendSwapped<'n, P, S> {
    BackendSwapped { durable }
}

fn main() {}
