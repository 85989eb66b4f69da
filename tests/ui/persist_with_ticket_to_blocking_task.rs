// Sending the ticket of an async driver's persist phase to a thread that writes the image and
// confirms there: tickets are not `Send`; the driver sends the bytes and confirms on its own
// thread once the work is done.
use snapply_core::collections::Profile;
use snapply_core::pipeline::Validated;
use snapply_core::ports::SnapshotStore;

pub async fn drive<'n, P: Profile, S: SnapshotStore>(validated: Validated<'n, P, S>) {
    let _ = validated
        .persist_with(async |_image, ticket| {
            let handle = std::thread::spawn(move || ticket.confirm([0; 32]));
            handle.join().map_err(|_| snapply_core::ports::PortError::new(snapply_core::ports::PortErrorKind::Io, "x"))
        })
        .await;
}

fn main() {}
