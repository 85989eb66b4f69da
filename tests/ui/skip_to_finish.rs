// Skipping every phase: a validated snapshot cannot jump to `finish`.
use snapply_core::collections::Profile;
use snapply_core::pipeline::Validated;
use snapply_core::ports::{Observer, SnapshotStore, Transport};

fn skip<'n, P: Profile, S: SnapshotStore, T: Transport, O: Observer>(state: Validated<'n, P, S, T, O>) {
    let _ = state.finish();
}

fn main() {}
