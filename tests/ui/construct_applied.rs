// Building `Applied` outside the core: a restore cannot be declared finished without running it.
use snapply_core::collections::Profile;
use snapply_core::pipeline::Applied;
use snapply_core::ports::SnapshotStore;

fn forge<'n, P: Profile, S: SnapshotStore>() -> Applied<'n, P, S> {
    Applied {}
}

fn main() {}
