//! The streaming decoder and [`materialize`].
//!
//! The generic parts (reading from the [`Source`]) are a thin shell; checking frames, parsing
//! payloads, the order check and the hashing live in [`State`], which is not generic, so a
//! firmware pays for one copy of them whatever its sources.

use sha2::{Digest, Sha256};

use super::error::{Corruption, DecodeError, MaterializeError};
use super::order::{Order, Verdict};
use super::wire::{
    FRAME_CRC, FRAME_HEAD, HEAD_FIELDS, Kind, PREAMBLE_LEN, RecordLimit, RecordWire, TrailerWire, check_record_lens,
    is_canonical, read_metadata_into,
};
use super::{FORMAT_VERSION, Item, MAGIC, Source, Summary, V2_CHUNK_LEN};
use crate::backend::{Backend, BackendError, Bucket, WriteTxn};
use crate::raft::SnapshotMetadata;

/// Decodes an image from a [`Source`] through a caller-provided buffer, one frame at a time.
///
/// Records and v2 chunks are yielded as slices of the buffer, without a further copy. Memory
/// use is the buffer plus about 2 KiB in the decoder itself, whatever the image's size.
///
/// The buffer holds one frame's payload at a time, so its size is the follower's limit on
/// records: [`BASE_BUFFER`](super::BASE_BUFFER) (1 KiB) decodes every frame but records, and
/// [`buffer_for`](super::buffer_for) gives the size for the largest key and value the follower
/// takes. A record that does not fit is refused with [`DecodeError::BufferTooSmall`] before
/// any of it is read.
///
/// Nothing yielded is known to be part of a valid image until [`Decoder::next`] has returned
/// `Ok(None)`: only then have the trailer's counts and SHA-256 been checked and the end of the
/// input been seen. Stage what is yielded (as [`materialize`] does in a write transaction) and
/// use it only after that.
#[derive(Debug)]
pub struct Decoder<'b, S: Source> {
    source: S,
    buf: &'b mut [u8],
    state: State,
}

impl<'b, S: Source> Decoder<'b, S> {
    /// Reads and checks the preamble and the header frame of the image in `source`.
    ///
    /// `buf` holds one frame's payload at a time: it decodes every image whose payloads all
    /// fit it, and reports [`DecodeError::BufferTooSmall`] at the first frame whose payload does
    /// not, before reading that payload.
    ///
    /// # Errors
    /// [`DecodeError::Corrupt`] if the image does not start with a valid preamble and header,
    /// [`DecodeError::Source`] if reading fails, [`DecodeError::BufferTooSmall`].
    pub fn new(source: S, buf: &'b mut [u8]) -> Result<Self, DecodeError<S::Error>> {
        let mut decoder = Decoder { source, buf, state: State::new() };
        decoder.start()?;
        Ok(decoder)
    }

    /// Reads and checks the preamble and the header frame, in place: [`materialize`] keeps
    /// its decoder where it made it rather than have [`Decoder::new`] return one (a copy of
    /// the decoder's 2 KiB on a device's stack).
    fn start(&mut self) -> Result<(), DecodeError<S::Error>> {
        let Decoder { source, buf, state } = self;
        let mut preamble = [0u8; PREAMBLE_LEN];
        read_exact(source, &mut preamble, &mut state.offset)?;
        state.preamble(&preamble)?;
        let (_, payload) = read_frame(source, buf, state)?;
        state.header(payload)?;
        Ok(())
    }

    /// The snapshot metadata of the image's header.
    pub fn metadata(&self) -> &SnapshotMetadata {
        &self.state.metadata
    }

    /// The image's summary, once [`Decoder::next`] has returned `Ok(None)`.
    pub fn summary(&self) -> Option<&Summary> {
        self.state.summary.as_ref()
    }

    /// Bytes of the image read so far, for progress reports.
    pub fn offset(&self) -> u64 {
        self.state.offset
    }

    /// The next record or v2 chunk; `Ok(None)` once the trailer has been read and verified and
    /// the source is at its end. After `Ok(None)`, every call returns `Ok(None)`.
    ///
    /// # Errors
    /// [`DecodeError::Corrupt`] at the first frame that is invalid, [`DecodeError::Source`],
    /// [`DecodeError::BufferTooSmall`]. After an error, every call returns
    /// [`DecodeError::Poisoned`].
    #[allow(clippy::should_implement_trait)] // Lending: items borrow the decoder's buffer.
    pub fn next(&mut self) -> Result<Option<Item<'_>>, DecodeError<S::Error>> {
        match self.state.phase {
            Phase::Done => return Ok(None),
            Phase::Failed => return Err(DecodeError::Poisoned),
            Phase::Header | Phase::Records | Phase::V2 => {}
        }
        let Decoder { source, buf, state } = self;
        match advance(source, buf, state) {
            Ok(Step::Item(item)) => Ok(Some(item)),
            Ok(Step::Done(_)) => Ok(None),
            Err(e) => {
                state.phase = Phase::Failed;
                Err(e)
            }
        }
    }
}

/// Decodes and verifies the whole image in `source`, keeping nothing but its metadata and
/// summary (`snapply verify`).
///
/// # Errors
/// As [`Decoder::new`] and [`Decoder::next`].
pub fn verify<S: Source>(source: S, buf: &mut [u8]) -> Result<(SnapshotMetadata, Summary), DecodeError<S::Error>> {
    // Made where it is kept and started in place, as in `materialize`.
    let mut decoder = Decoder { source, buf, state: State::new() };
    decoder.start()?;
    loop {
        let Decoder { source, buf, state } = &mut decoder;
        if let Step::Done(summary) = advance(source, buf, state)? {
            return Ok((core::mem::take(&mut decoder.state.metadata), summary));
        }
    }
}

/// Writes the image in `source` into `txn`: clears every bucket, puts every record, and passes
/// the v2 data to `v2` chunk by chunk.
///
/// The image is verified as it is written and its trailer only at the end, so on error `txn`
/// holds a partial state: drop it. Commit `txn` only when this returns `Ok`; then it holds
/// exactly the image's records, and a bad image never becomes visible. This holds for a record
/// too large for `buf` as for any other error: the backend's committed state is untouched.
///
/// # Errors
/// [`MaterializeError::Decode`] if the image is invalid or cannot be read, or holds a record
/// larger than `buf` ([`DecodeError::BufferTooSmall`]),
/// [`MaterializeError::Backend`] if `txn` fails, [`MaterializeError::V2`] if `v2` fails.
pub fn materialize<S: Source, W: WriteTxn + ?Sized>(
    source: S,
    buf: &mut [u8],
    txn: &mut W,
    v2: &mut dyn FnMut(&[u8]) -> Result<(), BackendError>,
) -> Result<(SnapshotMetadata, Summary), MaterializeError<S::Error>> {
    let mut decoder = Decoder { source, buf, state: State::new() };
    decoder.start()?;
    for bucket in Bucket::ALL {
        txn.clear(bucket).map_err(MaterializeError::Backend)?;
    }
    loop {
        let Decoder { source, buf, state } = &mut decoder;
        match advance(source, buf, state)? {
            Step::Item(Item::Record { bucket, key, value }) => {
                txn.put(bucket, key, value).map_err(MaterializeError::Backend)?;
            }
            Step::Item(Item::V2(chunk)) => v2(chunk).map_err(MaterializeError::V2)?,
            Step::Done(summary) => return Ok((core::mem::take(&mut decoder.state.metadata), summary)),
        }
    }
}

/// The records of an image whose every frame and trailer digest were checked, written by the
/// decoder itself into a backend that this has owned since: what the backend holds is known to
/// be the image's records and nothing else, so stores built from it are bound to the image's
/// digest ([`crate::pipeline::Prebuilt::build`] takes one of these, not a backend and a digest).
///
/// The binding holds for a backend that owns its records (a backend whose clones share their
/// state can be written through a clone behind this value's back).
#[derive(Debug)]
pub struct Decoded<B> {
    backend: B,
    metadata: SnapshotMetadata,
    summary: Summary,
}

impl<B: Backend> Decoded<B> {
    /// The backend holding exactly the image's records, to read.
    pub fn backend(&self) -> &B {
        &self.backend
    }
    /// The image's metadata, from its header.
    pub fn metadata(&self) -> &SnapshotMetadata {
        &self.metadata
    }
    /// The image's summary, from its verified trailer.
    pub fn summary(&self) -> &Summary {
        &self.summary
    }
    /// The backend, the binding given up.
    pub fn into_backend(self) -> B {
        self.backend
    }
}

/// [`materialize`] into `backend` (every bucket cleared first), committed once the image is
/// whole and verified, and kept: see [`Decoded`].
///
/// # Errors
/// As [`materialize`]; [`MaterializeError::Backend`] also if the commit fails. On error the
/// backend is dropped with its transaction uncommitted.
pub fn decode_into<S: Source, B: Backend>(
    source: S,
    buf: &mut [u8],
    mut backend: B,
    v2: &mut dyn FnMut(&[u8]) -> Result<(), BackendError>,
) -> Result<Decoded<B>, MaterializeError<S::Error>> {
    let mut txn = backend.write().map_err(MaterializeError::Backend)?;
    let (metadata, summary) = materialize(source, buf, &mut txn, v2)?;
    txn.commit().map_err(MaterializeError::Backend)?;
    Ok(Decoded { backend, metadata, summary })
}

/// What one call of [`advance`] produced.
enum Step<'a> {
    Item(Item<'a>),
    Done(Summary),
}

/// Reads, checks and parses the next frame after the header.
fn advance<'a, S: Source>(
    source: &mut S,
    buf: &'a mut [u8],
    state: &mut State,
) -> Result<Step<'a>, DecodeError<S::Error>> {
    let (kind, payload) = read_frame(source, buf, state)?;
    match state.body(kind, payload)? {
        Parsed::Item(item) => Ok(Step::Item(item)),
        Parsed::Trailer(summary) => {
            // The image is complete; the input must be too.
            let mut probe = [0u8; 1];
            let at = state.offset;
            if source.read(&mut probe).map_err(DecodeError::Source)? != 0 {
                return Err(DecodeError::Corrupt { offset: at, what: Corruption::TrailingBytes });
            }
            state.phase = Phase::Done;
            state.summary = Some(summary);
            Ok(Step::Done(summary))
        }
    }
}

/// Reads exactly `dst.len()` bytes, advancing `offset`.
fn read_exact<S: Source>(source: &mut S, dst: &mut [u8], offset: &mut u64) -> Result<(), DecodeError<S::Error>> {
    let mut filled = 0;
    while let Some(rest) = dst.get_mut(filled..) {
        if rest.is_empty() {
            break;
        }
        let n = source.read(rest).map_err(DecodeError::Source)?;
        if n == 0 {
            return Err(DecodeError::Corrupt { offset: *offset, what: Corruption::Truncated });
        }
        // A source claiming more than it was asked for is not believed beyond the slice.
        let n = n.min(rest.len());
        filled += n;
        *offset = offset.saturating_add(n as u64);
    }
    Ok(())
}

/// Reads one frame: its head into the stack, checked before anything more is read; its payload
/// into the front of `buf`; its CRC. Returns the frame's kind and its checked payload.
fn read_frame<'a, S: Source>(
    source: &mut S,
    buf: &'a mut [u8],
    state: &mut State,
) -> Result<(u8, &'a [u8]), DecodeError<S::Error>> {
    state.frame_start = state.offset;
    let mut head = [0u8; FRAME_HEAD];
    read_exact(source, &mut head, &mut state.offset)?;
    let (kind, len) = state.head(&head)?;
    let available = buf.len();
    let Some(payload) = buf.get_mut(..len) else {
        return Err(DecodeError::BufferTooSmall { offset: state.frame_start, kind, needed: len, available });
    };
    read_exact(source, payload, &mut state.offset)?;
    let mut crc = [0u8; FRAME_CRC];
    read_exact(source, &mut crc, &mut state.offset)?;
    state.payload(kind, &head, payload, crc)?;
    Ok((kind, payload))
}

/// Where the decoder is in the image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Expecting the header frame.
    Header,
    /// Expecting records, the first v2 chunk or the trailer.
    Records,
    /// Expecting v2 chunks or the trailer.
    V2,
    /// The trailer has been verified.
    Done,
    /// A call failed.
    Failed,
}

/// A frame after the header, parsed.
enum Parsed<'a> {
    Item(Item<'a>),
    Trailer(Summary),
}

/// A corruption found by [`State`]; its `From` turns it into a [`DecodeError`] of any source.
#[derive(Debug)]
struct Fail {
    offset: u64,
    what: Corruption,
}

impl<E> From<Fail> for DecodeError<E> {
    fn from(Fail { offset, what }: Fail) -> Self {
        DecodeError::Corrupt { offset, what }
    }
}

/// Everything the decoder knows, and every check it makes: not generic.
#[derive(Debug)]
struct State {
    phase: Phase,
    /// Bytes read from the source.
    offset: u64,
    /// Offset of the frame being checked.
    frame_start: u64,
    metadata: SnapshotMetadata,
    sha: Sha256,
    order: Order,
    records: u64,
    v2_len: u64,
    /// Whether the last v2 chunk was shorter than [`V2_CHUNK_LEN`]: then it must be the last.
    short_chunk: bool,
    summary: Option<Summary>,
}

impl State {
    fn new() -> Self {
        State {
            phase: Phase::Header,
            offset: 0,
            frame_start: 0,
            metadata: SnapshotMetadata::default(),
            sha: Sha256::new(),
            order: Order::new(),
            records: 0,
            v2_len: 0,
            short_chunk: false,
            summary: None,
        }
    }

    fn corrupt(&self, what: Corruption) -> Fail {
        Fail { offset: self.frame_start, what }
    }

    fn preamble(&mut self, preamble: &[u8; PREAMBLE_LEN]) -> Result<(), Fail> {
        let [m0, m1, m2, m3, m4, m5, m6, m7, v0, v1, f0, f1] = *preamble;
        if [m0, m1, m2, m3, m4, m5, m6, m7] != MAGIC {
            return Err(Fail { offset: 0, what: Corruption::BadMagic });
        }
        let version = u16::from_le_bytes([v0, v1]);
        if version != FORMAT_VERSION {
            return Err(Fail { offset: 8, what: Corruption::UnsupportedVersion { version } });
        }
        let flags = u16::from_le_bytes([f0, f1]);
        if flags != 0 {
            return Err(Fail { offset: 10, what: Corruption::UnsupportedFlags { flags } });
        }
        self.sha.update(preamble);
        Ok(())
    }

    /// Checks a frame head: its kind, its CRC, its place and its length; returns the kind and
    /// the payload length. Nothing of the payload has been read yet, and the length is trusted
    /// only after the head's CRC has matched, so a flipped length bit is reported as damage,
    /// never as a record too large for the buffer.
    fn head(&self, head: &[u8; FRAME_HEAD]) -> Result<(u8, usize), Fail> {
        let [kind, l0, l1, l2, l3, c0, c1, c2, c3] = *head;
        let Some(known) = Kind::from_u8(kind) else {
            return Err(self.corrupt(Corruption::UnknownFrameKind { kind }));
        };
        let stored = u32::from_le_bytes([c0, c1, c2, c3]);
        let computed = super::wire::crc32c(&[head.get(..HEAD_FIELDS).unwrap_or(&[])]);
        if stored != computed {
            return Err(self.corrupt(Corruption::BadHeadCrc { stored, computed }));
        }
        let in_place = matches!(
            (self.phase, known),
            (Phase::Header, Kind::Header)
                | (Phase::Records, Kind::Record | Kind::V2 | Kind::Trailer)
                | (Phase::V2, Kind::V2 | Kind::Trailer)
        );
        if !in_place {
            return Err(self.corrupt(Corruption::UnexpectedFrame { kind }));
        }
        let len = u32::from_le_bytes([l0, l1, l2, l3]);
        let max = known.max_payload();
        match usize::try_from(len).ok().filter(|&n| n <= max) {
            Some(len) => Ok((kind, len)),
            None => {
                let max = u32::try_from(max).unwrap_or(u32::MAX);
                Err(self.corrupt(Corruption::FrameTooLong { kind, len, max }))
            }
        }
    }

    /// Checks a payload's CRC and adds the frame to the image digest (the trailer excepted).
    fn payload(&mut self, kind: u8, head: &[u8], payload: &[u8], crc: [u8; FRAME_CRC]) -> Result<(), Fail> {
        let stored = u32::from_le_bytes(crc);
        let computed = super::wire::crc32c(&[payload]);
        if stored != computed {
            return Err(self.corrupt(Corruption::BadCrc { stored, computed }));
        }
        if kind != Kind::Trailer as u8 {
            self.sha.update(head);
            self.sha.update(payload);
            self.sha.update(crc);
        }
        Ok(())
    }

    fn header(&mut self, payload: &[u8]) -> Result<(), Fail> {
        let kind = Kind::Header as u8;
        // Read in place: serde's path would hold the metadata in several frames at once.
        if !read_metadata_into(payload, &mut self.metadata) {
            return Err(self.corrupt(Corruption::Malformed { kind }));
        }
        self.phase = Phase::Records;
        Ok(())
    }

    /// Parses and checks a record, v2 or trailer payload.
    fn body<'a>(&mut self, kind: u8, payload: &'a [u8]) -> Result<Parsed<'a>, Fail> {
        match Kind::from_u8(kind) {
            Some(Kind::Record) => self.record(kind, payload),
            Some(Kind::V2) => self.v2(payload),
            Some(Kind::Trailer) => self.trailer(kind, payload),
            // `head` let only the kinds above through in this phase.
            Some(Kind::Header) | None => Err(self.corrupt(Corruption::UnexpectedFrame { kind })),
        }
    }

    fn record<'a>(&mut self, kind: u8, payload: &'a [u8]) -> Result<Parsed<'a>, Fail> {
        let Ok((record, rest)) = postcard::take_from_bytes::<RecordWire<'a>>(payload) else {
            return Err(self.corrupt(Corruption::Malformed { kind }));
        };
        let Some(bucket) = Bucket::from_id(record.bucket) else {
            return Err(self.corrupt(Corruption::UnknownBucket { id: record.bucket }));
        };
        let len32 = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        match check_record_lens(record.key.len(), record.value.len()) {
            Ok(()) => {}
            Err(RecordLimit::Key) => {
                return Err(self.corrupt(Corruption::KeyTooLong { len: len32(record.key.len()) }));
            }
            Err(RecordLimit::Value) => {
                return Err(self.corrupt(Corruption::ValueTooLong { len: len32(record.value.len()) }));
            }
        }
        if !rest.is_empty() || record.canonical_len() != payload.len() {
            return Err(self.corrupt(Corruption::Malformed { kind }));
        }
        match self.order.admit(bucket, record.key) {
            Verdict::After => {}
            Verdict::Duplicate => return Err(self.corrupt(Corruption::DuplicateRecord { bucket })),
            Verdict::Before => return Err(self.corrupt(Corruption::OutOfOrder { bucket })),
        }
        self.records = self.records.saturating_add(1);
        Ok(Parsed::Item(Item::Record { bucket, key: record.key, value: record.value }))
    }

    /// A v2 chunk's payload is the chunk itself: the frame's length is the chunk's.
    fn v2<'a>(&mut self, chunk: &'a [u8]) -> Result<Parsed<'a>, Fail> {
        if chunk.is_empty() || chunk.len() > V2_CHUNK_LEN || self.short_chunk {
            let len = u32::try_from(chunk.len()).unwrap_or(u32::MAX);
            return Err(self.corrupt(Corruption::BadV2Chunk { len }));
        }
        self.short_chunk = chunk.len() < V2_CHUNK_LEN;
        self.v2_len = self.v2_len.saturating_add(chunk.len() as u64);
        self.phase = Phase::V2;
        Ok(Parsed::Item(Item::V2(chunk)))
    }

    fn trailer<'a>(&mut self, kind: u8, payload: &[u8]) -> Result<Parsed<'a>, Fail> {
        let Ok((trailer, rest)) = postcard::take_from_bytes::<TrailerWire>(payload) else {
            return Err(self.corrupt(Corruption::Malformed { kind }));
        };
        if !is_canonical(&trailer, payload, rest) {
            return Err(self.corrupt(Corruption::Malformed { kind }));
        }
        if trailer.records != self.records {
            return Err(
                self.corrupt(Corruption::RecordCountMismatch { trailer: trailer.records, actual: self.records })
            );
        }
        if trailer.v2_len != self.v2_len {
            return Err(self.corrupt(Corruption::V2LenMismatch { trailer: trailer.v2_len, actual: self.v2_len }));
        }
        let sha256: [u8; 32] = core::mem::take(&mut self.sha).finalize().into();
        if sha256 != trailer.sha256 {
            return Err(self.corrupt(Corruption::DigestMismatch));
        }
        Ok(Parsed::Trailer(Summary { records: self.records, v2_len: self.v2_len, sha256 }))
    }
}
