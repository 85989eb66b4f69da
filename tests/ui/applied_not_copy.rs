// Copying `Applied`: it is not `Copy`, so moving it out leaves nothing behind (use of moved value).
use snapply_core::collections::Profile;
use snapply_core::pipeline::Applied;
use snapply_core::ports::SnapshotStore;

fn copy<'n, P: Profile, S: SnapshotStore>(applied: Applied<'n, P, S>) {
    let _progress = applied.into_progress();
    let _ = applied.progress();
}

fn main() {}
