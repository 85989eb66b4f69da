// Building a phase state from `Default`: no state implements it, so `Persisted` cannot be made
// from nothing.
use snapply_core::collections::Profile;
use snapply_core::pipeline::Persisted;
use snapply_core::ports::{Observer, SnapshotStore, Transport};

fn conjure<'n, P: Profile, S: SnapshotStore, T: Transport, O: Observer>() -> Persisted<'n, P, S, T, O> {
    Default::default()
}

fn main() {}
