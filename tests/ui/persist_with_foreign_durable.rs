// Handing back, from an async driver's persist phase, a proof that is not this ticket's (one
// kept from another run): the closure is generic over the ticket's brand, so it can only hand
// back what it made from the ticket it was given.
use snapply_core::collections::Profile;
use snapply_core::pipeline::Validated;
use snapply_core::ports::{Durable, SnapshotStore};

pub async fn drive<'n, P: Profile, S: SnapshotStore>(validated: Validated<'n, P, S>, other: Durable<'n>) {
    let _ = validated.persist_with(async move |_image, _ticket| Ok(other)).await;
}

fn main() {}
