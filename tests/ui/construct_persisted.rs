// Building `Persisted` outside the core, even with a genuine `Durable`: its fields are private.
use snapply_core::collections::Profile;
use snapply_core::pipeline::Persisted;
use snapply_core::ports::{Durable, Observer, SnapshotStore, Transport};

fn forge<'n, P: Profile, S: SnapshotStore, T: Transport, O: Observer>(durable: Durable) -> Persisted<'n, P, S, T, O> {
    Persisted { durable }
}

fn main() {}
