// Building a phase state from `Default`: no state implements it, so `Persisted` cannot be made
// from nothing.
use snapply_core::collections::Profile;
use snapply_core::pipeline::Persisted;
use snapply_core::ports::SnapshotStore;

fn conjure<'n, P: Profile, S: SnapshotStore>() -> Persisted<'n, P, S> {
    Default::default()
}

fn main() {}
