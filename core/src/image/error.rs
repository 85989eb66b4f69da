//! Errors of the image codec: one enum per operation, generic over the medium's error where
//! they wrap it, with [`Corruption`] naming what is wrong with a bad image.

use core::fmt;

use crate::backend::{BackendError, Bucket};

/// What is wrong with an image that failed to decode. Every variant means "the bytes are not a
/// valid image": torn, flipped, truncated, forged or written by an incompatible encoder. None of
/// them is a bug of the decoder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum Corruption {
    /// The image does not start with [`MAGIC`](super::MAGIC): it is not a snapply image.
    BadMagic,
    /// The image is a format version this decoder does not read.
    UnsupportedVersion {
        /// The version the image declares.
        version: u16,
    },
    /// The preamble sets flag bits this version does not define.
    UnsupportedFlags {
        /// The flags the image declares.
        flags: u16,
    },
    /// A frame has a kind no version 2 image uses.
    UnknownFrameKind {
        /// The frame's kind byte.
        kind: u8,
    },
    /// A frame of a known kind is where it may not be: a second header, a record after v2
    /// data, anything before the header.
    UnexpectedFrame {
        /// The frame's kind byte.
        kind: u8,
    },
    /// A frame's head (kind and length) does not match the CRC-32C that follows it: a torn
    /// write or a flipped bit. Nothing of the payload was read, and the length was not trusted.
    BadHeadCrc {
        /// The CRC stored in the frame head.
        stored: u32,
        /// The CRC of the head's kind and length.
        computed: u32,
    },
    /// A frame declares a payload longer than its kind allows. Nothing of the payload was read.
    FrameTooLong {
        /// The frame's kind byte.
        kind: u8,
        /// The declared payload length.
        len: u32,
        /// The largest payload the kind allows.
        max: u32,
    },
    /// A frame's payload does not match the CRC-32C that follows it: a torn write or a flipped
    /// bit.
    BadCrc {
        /// The CRC stored in the frame.
        stored: u32,
        /// The CRC of the frame's bytes.
        computed: u32,
    },
    /// A payload is not the canonical postcard encoding of its kind's payload type.
    Malformed {
        /// The frame's kind byte.
        kind: u8,
    },
    /// A record names a bucket that does not exist.
    UnknownBucket {
        /// The bucket id in the record.
        id: u8,
    },
    /// A record's key is longer than [`MAX_KEY_LEN`](super::MAX_KEY_LEN).
    KeyTooLong {
        /// The key's length.
        len: u32,
    },
    /// A record's value is longer than [`MAX_VALUE_LEN`](super::MAX_VALUE_LEN).
    ValueTooLong {
        /// The value's length.
        len: u32,
    },
    /// A record sorts before the record preceding it (bucket order, then key order).
    OutOfOrder {
        /// The bucket of the record.
        bucket: Bucket,
    },
    /// A record has the same bucket and key as the record preceding it.
    DuplicateRecord {
        /// The bucket of the record.
        bucket: Bucket,
    },
    /// A v2 chunk is empty, longer than [`V2_CHUNK_LEN`](super::V2_CHUNK_LEN), or follows a
    /// chunk shorter than that.
    BadV2Chunk {
        /// The chunk's length.
        len: u32,
    },
    /// The input ends before the image does.
    Truncated,
    /// The input goes on after the trailer.
    TrailingBytes,
    /// The trailer's record count is not the number of records in the image.
    RecordCountMismatch {
        /// The count in the trailer.
        trailer: u64,
        /// The records decoded.
        actual: u64,
    },
    /// The trailer's v2 length is not the number of v2 bytes in the image.
    V2LenMismatch {
        /// The length in the trailer.
        trailer: u64,
        /// The v2 bytes decoded.
        actual: u64,
    },
    /// The SHA-256 in the trailer is not the digest of the image before the trailer.
    DigestMismatch,
}

impl fmt::Display for Corruption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Corruption::BadMagic => f.write_str("not a snapply image (bad magic)"),
            Corruption::UnsupportedVersion { version } => {
                write!(f, "unsupported image format version {version} (this decoder reads version 2)")
            }
            Corruption::UnsupportedFlags { flags } => write!(f, "unsupported image flags {flags:#06x}"),
            Corruption::UnknownFrameKind { kind } => write!(f, "unknown frame kind {kind:#04x}"),
            Corruption::UnexpectedFrame { kind } => write!(f, "frame of kind {kind:#04x} out of place"),
            Corruption::FrameTooLong { kind, len, max } => {
                write!(f, "frame of kind {kind:#04x} declares {len} payload bytes, at most {max} allowed")
            }
            Corruption::BadHeadCrc { stored, computed } => {
                write!(f, "frame head CRC-32C mismatch (stored {stored:#010x}, computed {computed:#010x})")
            }
            Corruption::BadCrc { stored, computed } => {
                write!(f, "frame payload CRC-32C mismatch (stored {stored:#010x}, computed {computed:#010x})")
            }
            Corruption::Malformed { kind } => write!(f, "malformed payload in frame of kind {kind:#04x}"),
            Corruption::UnknownBucket { id } => write!(f, "record in unknown bucket {id}"),
            Corruption::KeyTooLong { len } => write!(f, "record key of {len} bytes is over the limit"),
            Corruption::ValueTooLong { len } => write!(f, "record value of {len} bytes is over the limit"),
            Corruption::OutOfOrder { bucket } => {
                write!(f, "record in bucket `{}` out of bucket-then-key order", bucket.name())
            }
            Corruption::DuplicateRecord { bucket } => write!(f, "duplicate record in bucket `{}`", bucket.name()),
            Corruption::BadV2Chunk { len } => write!(f, "badly sized v2 chunk of {len} bytes"),
            Corruption::Truncated => f.write_str("image truncated"),
            Corruption::TrailingBytes => f.write_str("bytes after the image trailer"),
            Corruption::RecordCountMismatch { trailer, actual } => {
                write!(f, "trailer counts {trailer} records, image holds {actual}")
            }
            Corruption::V2LenMismatch { trailer, actual } => {
                write!(f, "trailer counts {trailer} v2 bytes, image holds {actual}")
            }
            Corruption::DigestMismatch => f.write_str("image SHA-256 mismatch"),
        }
    }
}

impl core::error::Error for Corruption {}

/// Decoding an image failed.
#[derive(Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeError<E> {
    /// The source failed to read. The image may be fine; the medium is not.
    Source(E),
    /// The image is not valid (see [`Corruption`]).
    Corrupt {
        /// Byte offset in the image of the frame (or preamble field) that is wrong; for
        /// [`Corruption::Truncated`], where the input ended.
        offset: u64,
        /// What is wrong.
        what: Corruption,
    },
    /// A frame within the format's limits (its head checked by its CRC) has a payload larger
    /// than the caller's buffer: typically a record whose value is larger than this follower
    /// was sized for (see [`buffer_for`](super::buffer_for)). Reported before any of the
    /// payload is read. A configuration limit of this follower, not corruption: a follower with
    /// a larger buffer decodes the image.
    BufferTooSmall {
        /// Byte offset in the image of the frame.
        offset: u64,
        /// The frame's kind byte (`0x02` for a record).
        kind: u8,
        /// Bytes the frame's payload takes in the buffer (for a record: bucket id, key, value
        /// and their lengths).
        needed: usize,
        /// Bytes the buffer has.
        available: usize,
    },
    /// An earlier call on this decoder failed; it cannot resume.
    Poisoned,
}

impl<E> DecodeError<E> {
    /// What is wrong with the image, if the error is that the image is invalid.
    pub fn corruption(&self) -> Option<Corruption> {
        match self {
            DecodeError::Corrupt { what, .. } => Some(*what),
            _ => None,
        }
    }
}

impl<E: fmt::Display> fmt::Display for DecodeError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Source(e) => write!(f, "reading the image failed: {e}"),
            DecodeError::Corrupt { offset, what } => write!(f, "corrupt image at byte {offset}: {what}"),
            DecodeError::BufferTooSmall { offset, kind, needed, available } => write!(
                f,
                "the {} frame at byte {offset} is {needed} bytes, larger than this decoder's {available}-byte buffer",
                super::wire::kind_name(*kind)
            ),
            DecodeError::Poisoned => f.write_str("the image decoder failed earlier and cannot resume"),
        }
    }
}

/// `Display` prints the source's message; `source` goes on below it, so a reporter that walks
/// the chain prints each cause once.
impl<E: core::error::Error + 'static> core::error::Error for DecodeError<E> {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            DecodeError::Source(e) => e.source(),
            _ => None,
        }
    }
}

/// Encoding an image failed. Nothing is wrong with the image format; either the sink failed
/// or the backend holds something the format cannot carry.
#[derive(Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum EncodeError<E> {
    /// The sink failed to write.
    Sink(E),
    /// The backend failed to read.
    Backend(BackendError),
    /// A record's key is longer than [`MAX_KEY_LEN`](super::MAX_KEY_LEN).
    KeyTooLong {
        /// The record's bucket.
        bucket: Bucket,
        /// The key's length.
        len: usize,
    },
    /// A record's value is longer than [`MAX_VALUE_LEN`](super::MAX_VALUE_LEN).
    ValueTooLong {
        /// The record's bucket.
        bucket: Bucket,
        /// The value's length.
        len: usize,
    },
    /// The backend yielded a record that does not sort after the one before it: the backend
    /// breaks the [`ReadTxn::scan`](crate::backend::ReadTxn::scan) contract (a bug).
    OutOfOrder {
        /// The record's bucket.
        bucket: Bucket,
    },
    /// The metadata does not encode within [`MAX_METADATA_LEN`](super::MAX_METADATA_LEN)
    /// bytes (a bug: the metadata's capacities are fixed so that it always does).
    MetadataTooLong,
    /// The node's own state could not be read for its image ([`crate::Node::encode_image`]):
    /// a restore is unfinished, or its v2 data does not fit the buffer given.
    Node(crate::store::StoreError),
}

impl<E: fmt::Display> fmt::Display for EncodeError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EncodeError::Sink(e) => write!(f, "writing the image failed: {e}"),
            EncodeError::Backend(e) => write!(f, "reading the backend failed: {e}"),
            EncodeError::KeyTooLong { bucket, len } => write!(
                f,
                "key of {len} bytes in bucket `{}` is longer than an image allows ({} bytes)",
                bucket.name(),
                super::MAX_KEY_LEN
            ),
            EncodeError::ValueTooLong { bucket, len } => write!(
                f,
                "value of {len} bytes in bucket `{}` is longer than an image allows ({} bytes)",
                bucket.name(),
                super::MAX_VALUE_LEN
            ),
            EncodeError::OutOfOrder { bucket } => {
                write!(f, "backend scanned bucket `{}` out of key order", bucket.name())
            }
            EncodeError::MetadataTooLong => f.write_str("snapshot metadata does not fit an image header"),
            EncodeError::Node(e) => write!(f, "reading the node's state for its image failed: {e}"),
        }
    }
}

/// As [`DecodeError`]'s: each cause printed once along the chain.
impl<E: core::error::Error + 'static> core::error::Error for EncodeError<E> {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            EncodeError::Sink(e) => e.source(),
            EncodeError::Backend(e) => e.source(),
            EncodeError::Node(e) => e.source(),
            _ => None,
        }
    }
}

/// Materialising an image into a write transaction failed. The transaction holds a partial
/// state: drop it, do not commit it.
#[derive(Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum MaterializeError<E> {
    /// The image did not decode.
    Decode(DecodeError<E>),
    /// The write transaction failed (clearing a bucket or putting a record).
    Backend(BackendError),
    /// The v2 callback failed.
    V2(BackendError),
}

impl<E> MaterializeError<E> {
    /// What is wrong with the image, if the error is that the image is invalid.
    pub fn corruption(&self) -> Option<Corruption> {
        match self {
            MaterializeError::Decode(e) => e.corruption(),
            _ => None,
        }
    }
}

impl<E> From<DecodeError<E>> for MaterializeError<E> {
    fn from(e: DecodeError<E>) -> Self {
        MaterializeError::Decode(e)
    }
}

impl<E: fmt::Display> fmt::Display for MaterializeError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MaterializeError::Decode(e) => write!(f, "materialising the image failed: {e}"),
            MaterializeError::Backend(e) => write!(f, "materialising the image failed: {e}"),
            MaterializeError::V2(e) => write!(f, "restoring the image's v2 data failed: {e}"),
        }
    }
}

/// As [`DecodeError`]'s: each cause printed once along the chain.
impl<E: core::error::Error + 'static> core::error::Error for MaterializeError<E> {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            MaterializeError::Decode(e) => e.source(),
            MaterializeError::Backend(e) | MaterializeError::V2(e) => e.source(),
        }
    }
}
