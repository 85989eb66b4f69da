//! What can go wrong on flash, and how it maps onto the core's port errors.

use core::fmt;

use snapply_core::image::Corruption;
use snapply_core::ports::{PortError, PortErrorKind};

/// An error of the flash adapter, generic over the flash chip's own error `E`.
///
/// "The data is corrupted" ([`FlashError::Corrupt`], [`FlashError::BadImage`]) is told apart
/// from "the caller broke a rule" ([`FlashError::Geometry`], [`FlashError::Misuse`]) and from
/// "a capacity is exhausted" ([`FlashError::Full`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum FlashError<E> {
    /// The chip failed an operation at `offset` (absolute address).
    Flash {
        /// The chip's error.
        error: E,
        /// Where the read, write or erase started.
        offset: u32,
    },
    /// The flash range or the chip's sizes do not fit the layout (see FORMAT.md).
    Geometry(&'static str),
    /// Stored bytes are not what was written: a frame whose checksum holds but whose content
    /// does not, at `offset`.
    Corrupt {
        /// Absolute address of the offending frame or record.
        offset: u32,
        /// What is wrong.
        what: &'static str,
    },
    /// The snapshot image is invalid (bad CRC, bad digest, bad framing...).
    BadImage(Corruption),
    /// The snapshot image stream failed with this error.
    ImageSource(PortError),
    /// The image's header carries other metadata than the snapshot being persisted.
    MetadataMismatch,
    /// The snapshot's backend does not reflect the snapshot's index: its `meta` bucket's
    /// consistent index is another (etcd #17146, #20426).
    IndexMismatch {
        /// The consistent index the image's records hold.
        backend_index: u64,
        /// The snapshot's index.
        snapshot_index: u64,
    },
    /// A capacity is exhausted: the area, the record index, a read buffer, or the inactive
    /// area is pinned by a pending snapshot.
    Full(&'static str),
    /// No persisted snapshot with this index and term.
    NotFound,
    /// An earlier write failed: the backend refuses to write until the flash is mounted again.
    Poisoned,
    /// The flash is already borrowed (a callback re-entered a write), or the caller broke
    /// another contract of the adapter.
    Misuse(&'static str),
    /// A backend error passed through the core (materialising an image).
    Backend(PortError),
}

impl<E: fmt::Debug> fmt::Display for FlashError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FlashError::Flash { error, offset } => write!(f, "flash operation at {offset:#x} failed: {error:?}"),
            FlashError::Geometry(what) => write!(f, "flash geometry: {what}"),
            FlashError::Corrupt { offset, what } => write!(f, "corrupt flash data at {offset:#x}: {what}"),
            FlashError::BadImage(c) => write!(f, "invalid snapshot image: {c}"),
            FlashError::ImageSource(e) => write!(f, "the snapshot image stream failed: {e}"),
            FlashError::MetadataMismatch => f.write_str("the image's metadata differs from the snapshot's"),
            FlashError::IndexMismatch { backend_index, snapshot_index } => write!(
                f,
                "snapshot backend consistent index {backend_index} does not match snapshot index {snapshot_index}"
            ),
            FlashError::Full(what) => write!(f, "flash capacity exhausted: {what}"),
            FlashError::NotFound => f.write_str("no persisted snapshot with this index and term"),
            FlashError::Poisoned => f.write_str("an earlier flash write failed; mount the flash again"),
            FlashError::Misuse(what) => write!(f, "flash adapter misuse: {what}"),
            FlashError::Backend(e) => write!(f, "{e}"),
        }
    }
}

impl<E: fmt::Debug> core::error::Error for FlashError<E> {}

impl<E> FlashError<E> {
    /// A short static description, for the core's error types.
    pub fn context(&self) -> &'static str {
        match self {
            FlashError::Flash { .. } => "accessing the flash chip",
            FlashError::Geometry(what) | FlashError::Full(what) | FlashError::Misuse(what) => what,
            FlashError::Corrupt { what, .. } => what,
            FlashError::BadImage(_) => "checking the snapshot image",
            FlashError::ImageSource(e) => e.context,
            FlashError::MetadataMismatch => "comparing the image's metadata with the snapshot's",
            FlashError::NotFound => "looking up a persisted snapshot on flash",
            FlashError::IndexMismatch { .. } => "comparing the snapshot's consistent index with its index",
            FlashError::Poisoned => "writing after a failed flash write",
            FlashError::Backend(e) => e.context,
        }
    }
}

/// The core's one port error (`BackendError` is the same type): the kind says whether the data
/// is corrupt, a capacity is exhausted, the caller broke a rule or the medium failed.
impl<E> From<FlashError<E>> for PortError {
    fn from(e: FlashError<E>) -> Self {
        let kind = match &e {
            FlashError::Corrupt { .. }
            | FlashError::BadImage(_)
            | FlashError::MetadataMismatch
            | FlashError::IndexMismatch { .. } => PortErrorKind::Corrupt,
            FlashError::Full(_) => PortErrorKind::Full,
            FlashError::NotFound => PortErrorKind::NotFound,
            FlashError::Geometry(_) | FlashError::Misuse(_) => PortErrorKind::Misuse,
            FlashError::Backend(b) | FlashError::ImageSource(b) => b.kind,
            _ => PortErrorKind::Io,
        };
        PortError::new(kind, e.context())
    }
}
