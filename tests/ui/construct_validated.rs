// Building `Validated` outside the core: its fields are private, so the check that the snapshot
// is newer than the applied index cannot be bypassed.
use snapply_core::collections::Profile;
use snapply_core::pipeline::Validated;
use snapply_core::ports::SnapshotStore;

fn forge<'n, P: Profile, S: SnapshotStore>() -> Validated<'n, P, S> {
    Validated {}
}

fn main() {}
