//! The portable snapshot image: one versioned byte format for every adapter, so a host leader
//! can feed a flash follower. `docs/format.md` specifies it byte by byte.
//!
//! An image is a preamble (magic, version, flags), a header frame (the snapshot metadata), one
//! frame per backend record in bucket-then-key order, the v2 data in chunk frames, and a
//! trailer frame with the counts and a SHA-256 of everything before it. Every frame carries a
//! CRC-32C, so a torn or flipped byte is caught in the frame where it happens; the SHA-256
//! catches everything else (a missing, repeated or swapped frame).
//!
//! [`encode`] streams an image out of a backend read transaction into a [`Sink`];
//! [`Decoder`] streams one in from a [`Source`] through a fixed buffer, so a device never holds
//! a whole image; [`materialize`] writes one into a backend write transaction. Every length is
//! bounded before it is trusted: a hostile image gets an error, never an allocation or a panic.
//!
//! The format bounds values only by what etcd's backend holds ([`MAX_VALUE_LEN`], 2 GiB); each
//! follower picks its decoder buffer ([`buffer_for`]) and refuses, with
//! [`DecodeError::BufferTooSmall`] naming the record's size and its buffer, an image holding a
//! record larger than that buffer, before reading the record.
//!
//! ```
//! use snapply_core::backend::{Backend, Bucket, WriteTxn};
//! use snapply_core::image::{self, BASE_BUFFER};
//! use snapply_core::mem::MemBackend;
//! use snapply_core::SnapshotMetadata;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut leader = MemBackend::<8, 16, 16>::new();
//! let mut txn = leader.write()?;
//! txn.put(Bucket::Key, b"rev-1", b"hello")?;
//! txn.put(Bucket::Meta, b"consistent_index", &7u64.to_be_bytes())?;
//! txn.commit()?;
//!
//! let metadata = SnapshotMetadata { index: 7, term: 2, ..Default::default() };
//! let mut bytes = heapless::Vec::<u8, 512>::new();
//! let summary = image::encode(&metadata, &leader.read()?, b"v2 store", &mut bytes)?;
//! assert_eq!(summary.records, 2);
//!
//! // The follower: decode through a fixed buffer (1 KiB: its records are small), stage in a
//! // write transaction, commit on Ok.
//! let mut follower = MemBackend::<8, 16, 16>::new();
//! let mut buf = [0u8; BASE_BUFFER];
//! let mut v2 = Vec::new();
//! let mut txn = follower.write()?;
//! let (meta, checked) = image::materialize(&bytes[..], &mut buf, &mut txn, &mut |chunk| {
//!     v2.extend_from_slice(chunk);
//!     Ok(())
//! })?;
//! txn.commit()?;
//! assert_eq!((meta, checked, &v2[..]), (metadata, summary, &b"v2 store"[..]));
//! # Ok(())
//! # }
//! ```

mod decode;
mod encode;
mod error;
mod order;
mod wire;

#[cfg(test)]
mod tests;

use core::convert::Infallible;
use core::fmt::Debug;

pub use decode::{Decoded, Decoder, decode_into, materialize, verify};
pub use encode::encode;
pub use error::{Corruption, DecodeError, EncodeError, MaterializeError};

/// Reads `bytes`, exactly the canonical postcard encoding of a [`SnapshotMetadata`] (an
/// image's header payload, `docs/format.md`), into `out`, in place: a device keeps one copy of
/// the metadata where it wants it instead of receiving a 568-byte value through several frames.
/// The decoder checks header frames with it, and a store can read back metadata it persisted.
///
/// # Errors
/// [`Corruption::Malformed`] (kind `0x01`, the header) if `bytes` is not exactly one canonical
/// encoding; `out` then holds a partial value.
pub fn read_metadata(bytes: &[u8], out: &mut SnapshotMetadata) -> Result<(), Corruption> {
    if wire::read_metadata_into(bytes, out) {
        Ok(())
    } else {
        Err(Corruption::Malformed { kind: wire::Kind::Header as u8 })
    }
}

use crate::backend::Bucket;
use crate::collections::CapacityError;
use crate::raft::SnapshotMetadata;

/// The first eight bytes of every image.
pub const MAGIC: [u8; 8] = *b"SNAPPLY\0";

/// The format version this crate writes and reads. Version 1 images are refused
/// ([`Corruption::UnsupportedVersion`]): none was ever persisted.
pub const FORMAT_VERSION: u16 = 2;

/// Longest key a record may have, in bytes. etcd's `key` bucket keys are 17-byte revisions;
/// the other buckets' keys are ids and names.
pub const MAX_KEY_LEN: usize = 1024;

/// Longest value a record may have, in bytes: bbolt's `MaxValueSize` (`(1 << 31) - 2`), the
/// largest value etcd's backend can hold, so that the format never refuses a snapshot etcd
/// could take (etcd's request limit, `--max-request-bytes`, is 1.5 MiB by default and can be
/// raised).
///
/// The format does not bound values by any receiver's RAM: each follower decodes with a buffer
/// of its own choosing ([`buffer_for`]) and refuses a record that does not fit it with
/// [`DecodeError::BufferTooSmall`], before reading it.
pub const MAX_VALUE_LEN: usize = (1 << 31) - 2;

/// Longest encoded snapshot metadata (the header frame's payload), in bytes. The largest
/// metadata the types allow encodes in 665 bytes.
pub const MAX_METADATA_LEN: usize = 1024;

/// Bytes of v2 data per chunk frame: every chunk but the last holds exactly this many. The
/// same as [`MAX_METADATA_LEN`], so that a [`BASE_BUFFER`] of 1 KiB decodes every frame but
/// the records.
pub const V2_CHUNK_LEN: usize = 1024;

/// Longest payload any frame may declare: that of the largest record (2 147 484 678 bytes).
pub const MAX_FRAME_LEN: usize = wire::MAX_RECORD_PAYLOAD;

/// Bytes a frame adds to its payload: kind (1), length (4), head CRC-32C (4), payload
/// CRC-32C (4).
pub const FRAME_OVERHEAD: usize = wire::FRAME_HEAD + wire::FRAME_CRC;

/// The smallest [`Decoder`] buffer that decodes every frame but records: the header, v2 chunks
/// and the trailer (1 024 bytes). The decoder's buffer holds one frame's payload at a time, so
/// a buffer of at least this size decodes every image whose record payloads all fit it too;
/// [`buffer_for`] gives the size for given key and value lengths.
pub const BASE_BUFFER: usize = {
    let (header, v2, trailer) = (MAX_METADATA_LEN, wire::MAX_V2_PAYLOAD, wire::MAX_TRAILER_PAYLOAD);
    let most = if header > v2 { header } else { v2 };
    if most > trailer { most } else { trailer }
};

/// A [`Decoder`] buffer that decodes every image whose keys are at most [`MAX_KEY_LEN`] bytes
/// and whose values are at most 64 KiB (66 566 bytes): [`buffer_for`]`(MAX_KEY_LEN, 64 * 1024)`.
///
/// Version 1 capped values at 64 KiB, and this was then the buffer that decoded every valid
/// image; it is kept for the callers sized that way. A version 2 image may hold larger values:
/// pick the buffer with [`buffer_for`], for the largest value the follower accepts.
pub const MIN_BUFFER: usize = buffer_for(MAX_KEY_LEN, 64 * 1024);

/// Bytes of [`Decoder`] buffer that a record with a key of `key_len` and a value of
/// `value_len` bytes takes: its frame's payload length. Saturates at `usize::MAX` for lengths
/// no image can hold.
pub const fn record_buffer_len(key_len: usize, value_len: usize) -> usize {
    wire::record_payload_len(key_len, value_len)
}

/// The [`Decoder`] buffer that decodes every image whose keys are at most `max_key_len` bytes
/// and whose values are at most `max_value_len` bytes: the larger of [`BASE_BUFFER`] and the
/// payload of such a record.
///
/// A device whose records are small decodes with a small buffer; a host that takes etcd's
/// largest requests sizes it for them:
///
/// ```
/// use snapply_core::image::{BASE_BUFFER, buffer_for};
///
/// // Keys and values of at most 100 bytes: every frame fits 1 KiB.
/// assert_eq!(buffer_for(100, 100), BASE_BUFFER);
/// // etcd's default request limit (1.5 MiB) for a value, under a 17-byte revision key.
/// assert_eq!(buffer_for(17, 1536 * 1024), 1_572_886);
/// ```
pub const fn buffer_for(max_key_len: usize, max_value_len: usize) -> usize {
    let record = record_buffer_len(max_key_len, max_value_len);
    if record > BASE_BUFFER { record } else { BASE_BUFFER }
}

/// Where the decoder reads an image from.
pub trait Source {
    /// The medium's error.
    type Error: Debug;

    /// Reads at most `buf.len()` bytes into the front of `buf` and returns how many it read.
    /// `Ok(0)` means the end of the input; the decoder never passes an empty `buf`.
    ///
    /// # Errors
    /// The medium's error; the decoder stops at the first one.
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, Self::Error>;
}

impl Source for &[u8] {
    type Error = Infallible;

    fn read(&mut self, buf: &mut [u8]) -> Result<usize, Infallible> {
        let n = buf.len().min(self.len());
        if let (Some(dst), Some((src, rest))) = (buf.get_mut(..n), self.split_at_checked(n)) {
            dst.copy_from_slice(src);
            *self = rest;
            return Ok(n);
        }
        Ok(0)
    }
}

impl<S: Source + ?Sized> Source for &mut S {
    type Error = S::Error;

    fn read(&mut self, buf: &mut [u8]) -> Result<usize, S::Error> {
        (**self).read(buf)
    }
}

/// A [`Source`] that returns at most `max` bytes per read, the way a socket or a flash driver
/// with a small transfer size does. Tests use it to cut an image at every boundary.
#[derive(Clone, Debug)]
pub struct Chunked<S> {
    inner: S,
    max: usize,
}

impl<S> Chunked<S> {
    /// Reads `inner` at most `max` bytes at a time (at least one).
    pub fn new(inner: S, max: usize) -> Self {
        Chunked { inner, max: max.max(1) }
    }

    /// The wrapped source.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Source> Source for Chunked<S> {
    type Error = S::Error;

    fn read(&mut self, buf: &mut [u8]) -> Result<usize, S::Error> {
        let n = buf.len().min(self.max);
        match buf.get_mut(..n) {
            Some(head) => self.inner.read(head),
            None => self.inner.read(buf),
        }
    }
}

/// Where the encoder writes an image to.
pub trait Sink {
    /// The medium's error.
    type Error: Debug;

    /// Writes all of `bytes`.
    ///
    /// # Errors
    /// The medium's error; the encoder stops at the first one.
    fn write_all(&mut self, bytes: &[u8]) -> Result<(), Self::Error>;
}

impl<W: Sink + ?Sized> Sink for &mut W {
    type Error = W::Error;

    fn write_all(&mut self, bytes: &[u8]) -> Result<(), W::Error> {
        (**self).write_all(bytes)
    }
}

/// A fixed-capacity vector is a sink that fails, writing nothing, when `bytes` do not fit.
impl<const N: usize> Sink for heapless::Vec<u8, N> {
    type Error = CapacityError;

    fn write_all(&mut self, bytes: &[u8]) -> Result<(), CapacityError> {
        self.extend_from_slice(bytes).map_err(|_| CapacityError { what: "image sink" })
    }
}

#[cfg(feature = "alloc")]
impl Sink for alloc::vec::Vec<u8> {
    type Error = Infallible;

    fn write_all(&mut self, bytes: &[u8]) -> Result<(), Infallible> {
        self.extend_from_slice(bytes);
        Ok(())
    }
}

/// What an image holds, as its trailer states it: returned by [`encode`], and by the decoder
/// once it has verified the trailer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Summary {
    /// Number of records.
    pub records: u64,
    /// Length of the v2 data, in bytes.
    pub v2_len: u64,
    /// SHA-256 of every byte of the image before the trailer frame.
    pub sha256: [u8; 32],
}

/// One element of an image after its header, borrowed from the decoder's buffer.
///
/// Deliberately exhaustive: a consumer that does not handle every element would silently drop
/// part of a snapshot, so a new element (with a new format version) should break its build.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Item<'a> {
    /// A backend record.
    Record {
        /// Its bucket.
        bucket: Bucket,
        /// Its key.
        key: &'a [u8],
        /// Its value.
        value: &'a [u8],
    },
    /// The next chunk of the v2 data.
    V2(&'a [u8]),
}
