#![no_std]
#![doc = include_str!("../README.md")]

#[cfg(feature = "host")]
pub mod host;

use crc::{CRC_32_ISCSI, Crc};
use serde::{Deserialize, Serialize};

/// Largest image chunk, or encoded request of an entry, one frame carries.
pub const MAX_PAYLOAD: usize = 128;

/// Largest frame body before COBS: the sequence number, the message (its tag, two varint
/// `u64`s, the payload's varint length and the payload) and the CRC.
pub const MAX_BODY: usize = 3 + 1 + 2 * 10 + 3 + MAX_PAYLOAD + CRC_LEN;

/// Largest frame on the wire: the COBS encoding of [`MAX_BODY`] bytes and the closing zero.
pub const MAX_FRAME: usize = cobs::max_encoding_length(MAX_BODY) + 1;

const CRC_LEN: usize = 4;

/// CRC-32C (Castagnoli), the one the image format and the flash layout use.
const CRC32C: Crc<u32> = Crc::<u32>::new(&CRC_32_ISCSI);

/// What one frame says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Message<'a> {
    /// Device: the index and term of the last entry it applied, at connect (and again while
    /// nobody answers).
    Hello {
        /// Applied index.
        applied_index: u64,
        /// Term of the applied index.
        applied_term: u64,
    },
    /// Device: the frame `seq` was taken.
    Ack {
        /// The frame's sequence number.
        seq: u16,
    },
    /// Device: a frame arrived damaged; the last frame taken was `seq - 1`.
    Nak {
        /// The sequence number the device expects next.
        seq: u16,
    },
    /// Device: snapshot `index` is committed on its flash (a power cut keeps it).
    Durable {
        /// The snapshot's index.
        index: u64,
    },
    /// Device: entry `index` is applied (and on flash).
    Applied {
        /// The entry's index.
        index: u64,
    },
    /// Device: it cannot take what the host sent; the transfer is over.
    Refused {
        /// Why, as the device names it (for the host's log).
        reason: Refusal,
    },
    /// Host: a new connection; the device answers `Hello` (and drops any transfer in progress).
    Connect,
    /// Host: a snapshot follows, `len` bytes of image (format 2).
    Snapshot {
        /// The snapshot's index.
        index: u64,
        /// The snapshot's term.
        term: u64,
        /// Bytes of the image.
        len: u32,
    },
    /// Host: image bytes from `offset`.
    Chunk {
        /// Where in the image.
        offset: u32,
        /// The bytes (at most [`MAX_PAYLOAD`]).
        #[serde(borrow)]
        bytes: &'a [u8],
    },
    /// Host: a committed entry: its request in the core's encoding (`RequestBuf::encode` on the
    /// host, `Request::decode`, without a heap, on the device; opaque to the link).
    Entry {
        /// The entry's index.
        index: u64,
        /// The entry's term.
        term: u64,
        /// The encoded request (at most [`MAX_PAYLOAD`]); a request `Request::decode` cannot
        /// read (one with a list) is never sent: the host sends a snapshot taken after it.
        #[serde(borrow)]
        request: &'a [u8],
    },
}

/// Why a device refused a transfer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum Refusal {
    /// A chunk or entry out of order (not the next offset or index).
    OutOfOrder,
    /// The snapshot does not fit the device (its flash, its profile).
    TooLarge,
    /// The image or the entry failed to apply.
    Apply,
    /// The message is not one the device expects now.
    Unexpected,
}

/// A sequence number and its message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Frame<'a> {
    /// The sender's sequence number (host frames: one more per new frame, wrapping).
    pub seq: u16,
    /// What it says.
    #[serde(borrow)]
    pub message: Message<'a>,
}

/// Why bytes are not a frame, or a frame does not fit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum FrameError {
    /// More bytes than [`MAX_FRAME`] before a zero: the rest up to the next zero is dropped.
    TooLong,
    /// The COBS encoding is broken.
    Cobs,
    /// Fewer bytes than a CRC.
    Short,
    /// The CRC does not match the bytes.
    Crc {
        /// The CRC the frame carries.
        carried: u32,
        /// The CRC of its bytes.
        computed: u32,
    },
    /// The CRC matches but the bytes are no message (another protocol or version).
    Message,
    /// A payload over [`MAX_PAYLOAD`], or an output buffer too small.
    Oversize,
}

impl core::fmt::Display for FrameError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            FrameError::TooLong => write!(f, "no frame end within {MAX_FRAME} bytes"),
            FrameError::Cobs => f.write_str("the frame's COBS encoding is broken"),
            FrameError::Short => f.write_str("the frame is shorter than its CRC"),
            FrameError::Crc { carried, computed } => {
                write!(f, "the frame's CRC is {carried:#010x}, its bytes' {computed:#010x}")
            }
            FrameError::Message => f.write_str("the frame's CRC matches but it holds no message of this protocol"),
            FrameError::Oversize => write!(f, "a payload over {MAX_PAYLOAD} bytes, or a buffer too small"),
        }
    }
}

impl core::error::Error for FrameError {}

impl Message<'_> {
    fn payload_len(&self) -> usize {
        match self {
            Message::Chunk { bytes, .. } => bytes.len(),
            Message::Entry { request, .. } => request.len(),
            _ => 0,
        }
    }
}

/// Encodes `frame` into `out` (at least [`MAX_FRAME`] bytes serve any frame) and returns the
/// bytes to send, the closing zero included.
///
/// # Errors
/// [`FrameError::Oversize`] for a payload over [`MAX_PAYLOAD`] or an `out` too small.
pub fn encode<'o>(frame: &Frame<'_>, out: &'o mut [u8]) -> Result<&'o [u8], FrameError> {
    if frame.message.payload_len() > MAX_PAYLOAD {
        return Err(FrameError::Oversize);
    }
    // A frame without payload goes through a small buffer: a device acknowledges from deep in
    // a restore, where stack is short.
    if frame.message.payload_len() == 0 {
        encode_with::<SMALL_BODY>(frame, out)
    } else {
        encode_with::<MAX_BODY>(frame, out)
    }
}

/// Largest body of a frame without payload.
const SMALL_BODY: usize = 3 + 1 + 2 * 10 + CRC_LEN + 5;

#[inline(never)]
fn encode_with<'o, const BODY: usize>(frame: &Frame<'_>, out: &'o mut [u8]) -> Result<&'o [u8], FrameError> {
    let mut body = [0u8; BODY];
    let len = postcard::to_slice(frame, &mut body).map_err(|_| FrameError::Oversize)?.len();
    let crc = CRC32C.checksum(body.get(..len).ok_or(FrameError::Oversize)?);
    body.get_mut(len..len + CRC_LEN).ok_or(FrameError::Oversize)?.copy_from_slice(&crc.to_le_bytes());
    let body = body.get(..len + CRC_LEN).ok_or(FrameError::Oversize)?;
    let encoded = cobs::try_encode(body, out).map_err(|_| FrameError::Oversize)?;
    *out.get_mut(encoded).ok_or(FrameError::Oversize)? = 0;
    out.get(..=encoded).ok_or(FrameError::Oversize)
}

/// Decodes one frame's bytes as they arrived, without the closing zero; the frame borrows
/// `wire`, which the COBS decode overwrites.
///
/// # Errors
/// [`FrameError::Cobs`], [`FrameError::Short`], [`FrameError::Crc`] or
/// [`FrameError::Message`].
pub fn decode(wire: &mut [u8]) -> Result<Frame<'_>, FrameError> {
    let len = cobs::decode_in_place(wire).map_err(|_| FrameError::Cobs)?;
    let body = wire.get(..len).ok_or(FrameError::Cobs)?;
    let split = len.checked_sub(CRC_LEN).ok_or(FrameError::Short)?;
    let (bytes, crc) = body.split_at(split);
    let mut carried = [0u8; CRC_LEN];
    carried.copy_from_slice(crc);
    let carried = u32::from_le_bytes(carried);
    let computed = CRC32C.checksum(bytes);
    if carried != computed {
        return Err(FrameError::Crc { carried, computed });
    }
    let (frame, rest): (Frame<'_>, _) = postcard::take_from_bytes(bytes).map_err(|_| FrameError::Message)?;
    if !rest.is_empty() || frame.message.payload_len() > MAX_PAYLOAD {
        return Err(FrameError::Message);
    }
    Ok(frame)
}

/// Gathers bytes from the line into frames: push each byte as it arrives; a zero ends a frame.
#[derive(Debug)]
pub struct Receiver {
    buf: [u8; MAX_FRAME],
    len: usize,
    /// The frame being gathered overflowed: drop up to the next zero.
    overflow: bool,
}

impl Default for Receiver {
    fn default() -> Self {
        Receiver { buf: [0; MAX_FRAME], len: 0, overflow: false }
    }
}

impl Receiver {
    /// An empty receiver.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes one byte: `None` inside a frame; at a frame's end, the frame or why it is none.
    /// Empty frames (two zeros in a row, a line's idle zeros) are skipped.
    pub fn push(&mut self, byte: u8) -> Option<Result<Frame<'_>, FrameError>> {
        if byte != 0 {
            if self.overflow {
                return None;
            }
            if let Some(slot) = self.buf.get_mut(self.len) {
                *slot = byte;
                self.len += 1;
                return None;
            }
            self.overflow = true;
            self.len = 0;
            return Some(Err(FrameError::TooLong));
        }
        let len = core::mem::take(&mut self.len);
        if core::mem::take(&mut self.overflow) || len == 0 {
            return None;
        }
        Some(self.buf.get_mut(..len).map_or(Err(FrameError::TooLong), decode))
    }

    /// Drops a partly gathered frame (the line was reset).
    pub fn clear(&mut self) {
        self.len = 0;
        self.overflow = false;
    }
}

/// Whether a frame is new or a repeat of the last one taken (its ack was lost, and the sender
/// sent it again).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Seen {
    /// A new frame: act on it.
    New,
    /// The last frame again: acknowledge it again, do not act twice.
    Repeat,
}

/// The receiving side of stop-and-wait: remembers the last sequence number taken.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Sequence {
    last: Option<u16>,
}

impl Sequence {
    /// Classifies frame `seq`; a new one becomes the last taken.
    pub fn see(&mut self, seq: u16) -> Seen {
        if self.last == Some(seq) {
            return Seen::Repeat;
        }
        self.last = Some(seq);
        Seen::New
    }

    /// The sequence number expected next (for a `Nak`).
    pub fn next(&self) -> u16 {
        self.last.map_or(0, |s| s.wrapping_add(1))
    }

    /// Forgets the last frame (a new connection).
    pub fn reset(&mut self) {
        self.last = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_largest_frame_fits_the_bounds() {
        let bytes = [0u8; MAX_PAYLOAD];
        let frame =
            Frame { seq: u16::MAX, message: Message::Entry { index: u64::MAX, term: u64::MAX, request: &bytes } };
        let mut out = [0u8; MAX_FRAME];
        let wire = encode(&frame, &mut out).unwrap();
        assert!(wire.len() <= MAX_FRAME);
        let over = [0u8; MAX_PAYLOAD + 1];
        let frame = Frame { seq: 0, message: Message::Chunk { offset: 0, bytes: &over } };
        assert_eq!(encode(&frame, &mut out), Err(FrameError::Oversize));
    }
}
