// A snapshot store that keeps the ticket beyond `persist`, to confirm it later for another run:
// the ticket's brand is the lifetime of the `persist` call, which the store cannot name.
use snapply_core::ImageData;
use snapply_core::mem::VecBackend;
use snapply_core::ports::{Durable, PersistTicket, PortError, PortErrorKind, ReleaseTicket, SnapshotStore};

struct Hoarder {
    kept: Option<PersistTicket<'static>>,
}

impl SnapshotStore for Hoarder {
    type Backend = VecBackend;

    fn persist<'r>(&mut self, _image: ImageData<'_>, ticket: PersistTicket<'r>) -> Result<Durable<'r>, PortError> {
        self.kept = Some(ticket);
        Err(PortError::new(PortErrorKind::Io, "kept the ticket"))
    }
    fn open_backend(&mut self, _: &Durable<'_>) -> Result<VecBackend, PortError> {
        Ok(VecBackend::new())
    }
    fn v2_data(&mut self, _: &Durable<'_>) -> Result<&[u8], PortError> {
        Ok(&[])
    }
    fn release_before(&mut self, _: ReleaseTicket<'_>) -> Result<(), PortError> {
        Ok(())
    }
}

fn main() {}
