// Cloning a state: no phase state is `Clone`, so a run cannot be forked and driven twice.
use snapply_core::collections::Profile;
use snapply_core::pipeline::Validated;
use snapply_core::ports::SnapshotStore;

fn fork<'n, P: Profile, S: SnapshotStore>(state: Validated<'n, P, S>) {
    let _ = state.clone();
}

fn main() {}
