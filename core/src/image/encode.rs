//! The streaming encoder: backend records in, image bytes out, one frame at a time.

use core::ops::ControlFlow;

use sha2::{Digest, Sha256};

use super::error::EncodeError;
use super::order::{Order, Verdict};
use super::wire::{
    FRAME_HEAD, Kind, PREAMBLE_LEN, RecordLimit, RecordWire, Varint, check_record_lens, crc32c, frame_head,
};
use super::{FORMAT_VERSION, MAGIC, MAX_METADATA_LEN, Sink, Summary, V2_CHUNK_LEN};
use crate::backend::{Bucket, ReadTxn, for_each_record};
use crate::raft::SnapshotMetadata;

/// Writes the image of `metadata`, every record of `txn` and the v2 data `v2` to `sink`.
///
/// The encoder streams: it never holds the image, only the frame it is writing, and its stack
/// use is fixed (about 2 KiB: the previous key for the order check and the metadata encoding).
/// Key and value bytes go from the backend's callback to the sink without a copy.
///
/// The image is canonical: the same metadata, records and v2 data always give the same bytes.
///
/// # Errors
/// [`EncodeError::Sink`] if the sink fails, [`EncodeError::Backend`] if the backend fails,
/// [`EncodeError::KeyTooLong`] / [`EncodeError::ValueTooLong`] for a record the format cannot
/// carry, and [`EncodeError::OutOfOrder`] if the backend scans out of order. What was written
/// before the error is not an image (it has no trailer) and no decoder accepts it.
pub fn encode<R: ReadTxn + ?Sized, W: Sink>(
    metadata: &SnapshotMetadata,
    txn: &R,
    v2: &[u8],
    sink: &mut W,
) -> Result<Summary, EncodeError<W::Error>> {
    let mut out = Out { sink, sha: Sha256::new() };
    out.preamble()?;
    out.header(metadata)?;

    let mut order = Order::new();
    let mut records: u64 = 0;
    let mut failed = None;
    for_each_record(txn, &mut |bucket, key, value| match out.record(&mut order, bucket, key, value) {
        Ok(()) => {
            records = records.saturating_add(1);
            ControlFlow::Continue(())
        }
        Err(e) => {
            failed = Some(e);
            ControlFlow::Break(())
        }
    })
    .map_err(EncodeError::Backend)?;
    if let Some(e) = failed {
        return Err(e);
    }

    for chunk in v2.chunks(V2_CHUNK_LEN) {
        out.frame(Kind::V2, &[chunk], true)?;
    }

    let summary = Summary { records, v2_len: v2.len() as u64, sha256: out.sha.finalize_reset().into() };
    // The trailer is postcard of `TrailerWire`: two varints and the digest's 32 bytes.
    let (records, v2_len) = (Varint::new(summary.records), Varint::new(summary.v2_len));
    out.frame(Kind::Trailer, &[records.as_bytes(), v2_len.as_bytes(), &summary.sha256], false)?;
    Ok(summary)
}

/// The sink, and the SHA-256 of everything written to it before the trailer.
struct Out<'w, W: Sink> {
    sink: &'w mut W,
    sha: Sha256,
}

impl<W: Sink> Out<'_, W> {
    fn put(&mut self, bytes: &[u8], hashed: bool) -> Result<(), EncodeError<W::Error>> {
        if hashed {
            self.sha.update(bytes);
        }
        self.sink.write_all(bytes).map_err(EncodeError::Sink)
    }

    fn preamble(&mut self) -> Result<(), EncodeError<W::Error>> {
        let mut preamble = [0u8; PREAMBLE_LEN];
        let [v0, v1] = FORMAT_VERSION.to_le_bytes();
        for (slot, byte) in preamble.iter_mut().zip(MAGIC.iter().chain(&[v0, v1, 0, 0])) {
            *slot = *byte;
        }
        self.put(&preamble, true)
    }

    fn header(&mut self, metadata: &SnapshotMetadata) -> Result<(), EncodeError<W::Error>> {
        let mut scratch = [0u8; MAX_METADATA_LEN];
        let payload = postcard::to_slice(metadata, &mut scratch).map_err(|_| EncodeError::MetadataTooLong)?;
        self.frame(Kind::Header, &[payload], true)
    }

    fn record(
        &mut self,
        order: &mut Order,
        bucket: Bucket,
        key: &[u8],
        value: &[u8],
    ) -> Result<(), EncodeError<W::Error>> {
        match check_record_lens(key.len(), value.len()) {
            Ok(()) => {}
            Err(RecordLimit::Key) => return Err(EncodeError::KeyTooLong { bucket, len: key.len() }),
            Err(RecordLimit::Value) => return Err(EncodeError::ValueTooLong { bucket, len: value.len() }),
        }
        match order.admit(bucket, key) {
            Verdict::After => {}
            Verdict::Duplicate | Verdict::Before => return Err(EncodeError::OutOfOrder { bucket }),
        }
        let len = RecordWire { bucket: bucket.id(), key, value }.canonical_len();
        // Head, bucket id and key length go out as one write; key and value are not copied.
        let key_len = Varint::new(key.len() as u64);
        let mut first = [0u8; FRAME_HEAD + 1 + 10];
        let head = frame_head(Kind::Record, len_u32(len));
        let mut n = 0;
        for (slot, byte) in first.iter_mut().zip(head.iter().chain(&[bucket.id()]).chain(key_len.as_bytes())) {
            *slot = *byte;
            n += 1;
        }
        let first = first.get(..n).unwrap_or(&[]);
        let value_len = Varint::new(value.len() as u64);
        // The payload's CRC: everything after the head.
        let crc = crc32c(&[first.get(FRAME_HEAD..).unwrap_or(&[]), key, value_len.as_bytes(), value]);
        self.put(first, true)?;
        self.put(key, true)?;
        self.put(value_len.as_bytes(), true)?;
        self.put(value, true)?;
        self.put(&crc.to_le_bytes(), true)
    }

    /// Writes one frame whose payload is the concatenation of `parts`.
    fn frame(&mut self, kind: Kind, parts: &[&[u8]], hashed: bool) -> Result<(), EncodeError<W::Error>> {
        let len = parts.iter().fold(0usize, |n, p| n.saturating_add(p.len()));
        let head = frame_head(kind, len_u32(len));
        let crc = crc32c(parts);
        self.put(&head, hashed)?;
        for part in parts {
            self.put(part, hashed)?;
        }
        self.put(&crc.to_le_bytes(), hashed)
    }
}

/// A payload length as written on disk. Every caller bounds its payload far below `u32::MAX`
/// first; should one not, the saturated length makes the decoder reject the frame
/// ([`Corruption::FrameTooLong`](super::Corruption::FrameTooLong)), never misread it.
fn len_u32(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}
