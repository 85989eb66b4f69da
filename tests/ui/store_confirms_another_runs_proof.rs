// A snapshot store that answers `persist` with a proof it made earlier (from a throwaway image,
// another run) instead of confirming this run's ticket: a proof is branded with the `persist`
// call it came from, so one of another call does not type-check.
use snapply_core::ImageData;
use snapply_core::mem::VecBackend;
use snapply_core::ports::{Durable, PersistTicket, PortError, PortErrorKind, ReleaseTicket, SnapshotStore};

struct Replayer<'x> {
    earlier: Option<Durable<'x>>,
}

impl<'x> SnapshotStore for Replayer<'x> {
    type Backend = VecBackend;

    fn persist<'r>(&mut self, _image: ImageData<'_>, ticket: PersistTicket<'r>) -> Result<Durable<'r>, PortError> {
        drop(ticket);
        self.earlier.take().ok_or(PortError::new(PortErrorKind::NotFound, "no earlier proof"))
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
