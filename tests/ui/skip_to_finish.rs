// Skipping every phase: a validated snapshot cannot jump to `finish`.
use snapply_core::collections::Profile;
use snapply_core::pipeline::Validated;
use snapply_core::ports::SnapshotStore;

fn skip<'n, P: Profile, S: SnapshotStore>(state: Validated<'n, P, S>) {
    let _ = state.finish();
}

fn main() {}
