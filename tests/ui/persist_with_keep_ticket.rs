// Keeping the ticket an async driver's persist phase hands out, to confirm it later or for
// another run: the ticket's brand is the closure's own, so it cannot leave the closure.
use snapply_core::collections::Profile;
use snapply_core::pipeline::Validated;
use snapply_core::ports::{PersistTicket, SnapshotStore};

pub async fn drive<'n, P: Profile, S: SnapshotStore>(validated: Validated<'n, P, S>) {
    let mut kept: Option<PersistTicket<'n>> = None;
    let _ = validated
        .persist_with(async |_image, ticket| {
            kept = Some(ticket);
            Err(snapply_core::ports::PortError::new(snapply_core::ports::PortErrorKind::Io, "later"))
        })
        .await;
    drop(kept);
}

fn main() {}
