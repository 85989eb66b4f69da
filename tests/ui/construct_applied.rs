// Building `Applied` outside the core: a restore cannot be declared finished without running it.
use snapply_core::collections::Profile;
use snapply_core::pipeline::Applied;
use snapply_core::ports::{Observer, SnapshotStore, Transport};

fn forge<'n, P: Profile, S: SnapshotStore, T: Transport, O: Observer>() -> Applied<'n, P, S, T, O> {
    Applied {}
}

fn main() {}
