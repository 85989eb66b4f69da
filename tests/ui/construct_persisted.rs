// Building `Persisted` outside the core, even with a genuine `Durable`: its fields are private.
use snapply_core::collections::Profile;
use snapply_core::pipeline::Persisted;
use snapply_core::ports::{Durable, SnapshotStore};

fn forge<'n, P: Profile, S: SnapshotStore>(durable: Durable<'n>) -> Persisted<'n, P, S> {
    Persisted { durable }
}

fn main() {}
