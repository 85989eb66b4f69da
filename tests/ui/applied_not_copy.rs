// Copying `Applied`: it is not `Copy`, so moving it out leaves nothing behind (use of moved value).
use snapply_core::collections::Profile;
use snapply_core::pipeline::Applied;
use snapply_core::ports::{Observer, SnapshotStore, Transport};

fn copy<'n, P: Profile, S: SnapshotStore, T: Transport, O: Observer>(applied: Applied<'n, P, S, T, O>) {
    let _progress = applied.into_progress();
    let _ = applied.progress();
}

fn main() {}
