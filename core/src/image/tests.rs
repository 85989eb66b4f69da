//! Tests of the image format as a whole: round trips, every bit flip and truncation of a sample
//! image, hostile lengths, records larger than the follower's buffer, hand-crafted invalid
//! images, a golden image.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use core::convert::Infallible;
use core::ops::ControlFlow;
use std::vec::Vec;

use sha2::{Digest, Sha256};

use super::wire::{RecordWire, TrailerWire, crc32c};
use super::*;
use crate::backend::{Backend, BackendError, BackendErrorKind, ReadTxn, Visit, WriteTxn, for_each_record};
use crate::mem::MemBackend;
use crate::raft::{ConfState, IdList, SnapshotMetadata};

/// A growable sink that exists with or without the `alloc` feature.
#[derive(Default)]
struct VecSink(Vec<u8>);

impl Sink for VecSink {
    type Error = Infallible;
    fn write_all(&mut self, bytes: &[u8]) -> Result<(), Infallible> {
        self.0.extend_from_slice(bytes);
        Ok(())
    }
}

type Records = Vec<(Bucket, Vec<u8>, Vec<u8>)>;

/// The sample backend: a few dozen records over every bucket.
type Sample = MemBackend<64, 32, 256>;

fn contents<R: ReadTxn + ?Sized>(txn: &R) -> Records {
    let mut out = Vec::new();
    for_each_record(txn, &mut |b, k, v| {
        out.push((b, k.to_vec(), v.to_vec()));
        ControlFlow::Continue(())
    })
    .unwrap();
    out
}

fn fill<B: Backend>(backend: &mut B, records: &[(Bucket, Vec<u8>, Vec<u8>)]) {
    let mut txn = backend.write().unwrap();
    for (b, k, v) in records {
        txn.put(*b, k, v).unwrap();
    }
    txn.commit().unwrap();
}

fn ids(ids: &[u64]) -> IdList {
    IdList::from_slice(ids).unwrap()
}

fn sample_metadata() -> SnapshotMetadata {
    SnapshotMetadata {
        index: 1_234_567,
        term: 42,
        conf_state: ConfState {
            voters: ids(&[1, 2, 3]),
            learners: ids(&[4]),
            voters_outgoing: ids(&[1, 2, 5]),
            learners_next: ids(&[]),
            auto_leave: true,
        },
    }
}

fn sample_records() -> Records {
    let mut records = Vec::new();
    for (i, bucket) in Bucket::ALL.into_iter().enumerate() {
        for j in 0..(1 + i % 4) {
            let key = if j == 0 && i == 3 { Vec::new() } else { std::format!("{}-{j:03}", bucket.name()).into_bytes() };
            let value: Vec<u8> = (0..(j * 37 + i * 11) % 200).map(|x| (x * 7 + i) as u8).collect();
            records.push((bucket, key, value));
        }
    }
    records
}

fn sample_v2() -> Vec<u8> {
    (0..3 * V2_CHUNK_LEN + 300).map(|i| (i % 251) as u8).collect()
}

/// The sample image: about 5.5 KiB, every bucket, an empty key, four v2 chunks.
fn sample_image() -> (Sample, Vec<u8>, Summary) {
    let mut backend = Sample::new();
    fill(&mut backend, &sample_records());
    let mut sink = VecSink::default();
    let summary = encode(&sample_metadata(), &backend.read().unwrap(), &sample_v2(), &mut sink).unwrap();
    (backend, sink.0, summary)
}

#[derive(Debug, PartialEq, Eq)]
struct Decoded {
    metadata: SnapshotMetadata,
    records: Records,
    v2: Vec<u8>,
    summary: Summary,
}

fn decode_all<S: Source>(source: S, buf: &mut [u8]) -> Result<Decoded, DecodeError<S::Error>> {
    let mut decoder = Decoder::new(source, buf)?;
    let metadata = decoder.metadata().clone();
    let (mut records, mut v2) = (Vec::new(), Vec::new());
    while let Some(item) = decoder.next()? {
        match item {
            Item::Record { bucket, key, value } => records.push((bucket, key.to_vec(), value.to_vec())),
            Item::V2(chunk) => v2.extend_from_slice(chunk),
        }
    }
    let summary = *decoder.summary().expect("a summary after Ok(None)");
    // Fused after the end.
    assert!(matches!(decoder.next(), Ok(None)));
    Ok(Decoded { metadata, records, v2, summary })
}

/// The corruption `image` is rejected with, through the decoder.
fn rejection(image: &[u8]) -> (u64, Corruption) {
    let mut buf = std::vec![0u8; MIN_BUFFER];
    match decode_all(image, &mut buf) {
        Err(DecodeError::Corrupt { offset, what }) => (offset, what),
        other => panic!("expected a corruption, got {other:?}"),
    }
}

/// `(offset, kind, payload length)` of every frame of a valid image.
fn frames(image: &[u8]) -> Vec<(usize, u8, usize)> {
    let mut out = Vec::new();
    let mut at = wire::PREAMBLE_LEN;
    while at < image.len() {
        let len = u32::from_le_bytes(image[at + 1..at + 5].try_into().unwrap()) as usize;
        out.push((at, image[at], len));
        at += FRAME_OVERHEAD + len;
    }
    assert_eq!(at, image.len());
    out
}

/// Builds images frame by frame, with correct CRCs and (unless told otherwise) a correct
/// trailer, so that each test breaks exactly one rule.
struct Crafted {
    bytes: Vec<u8>,
    sha: Sha256,
    records: u64,
    v2_len: u64,
}

impl Crafted {
    fn preamble(version: u16, flags: u16) -> Self {
        let mut c = Crafted { bytes: Vec::new(), sha: Sha256::new(), records: 0, v2_len: 0 };
        let mut preamble = MAGIC.to_vec();
        preamble.extend_from_slice(&version.to_le_bytes());
        preamble.extend_from_slice(&flags.to_le_bytes());
        c.raw(&preamble);
        c
    }

    /// A valid preamble and header.
    fn new() -> Self {
        let mut c = Crafted::preamble(FORMAT_VERSION, 0);
        c.header(&sample_metadata());
        c
    }

    fn raw(&mut self, bytes: &[u8]) {
        self.sha.update(bytes);
        self.bytes.extend_from_slice(bytes);
    }

    fn offset(&self) -> u64 {
        self.bytes.len() as u64
    }

    /// A frame head with a correct head CRC.
    fn head(kind: u8, len: u32) -> Vec<u8> {
        let mut head = std::vec![kind];
        head.extend_from_slice(&len.to_le_bytes());
        let crc = crc32c(&[&head]);
        head.extend_from_slice(&crc.to_le_bytes());
        head
    }

    fn framed(kind: u8, payload: &[u8]) -> Vec<u8> {
        let mut frame = Self::head(kind, payload.len() as u32);
        frame.extend_from_slice(payload);
        frame.extend_from_slice(&crc32c(&[payload]).to_le_bytes());
        frame
    }

    /// Appends a frame; returns its offset.
    fn frame(&mut self, kind: u8, payload: &[u8]) -> u64 {
        let at = self.offset();
        self.raw(&Self::framed(kind, payload));
        at
    }

    fn header(&mut self, metadata: &SnapshotMetadata) -> u64 {
        self.frame(0x01, postcard::to_slice(metadata, &mut [0u8; 1024]).unwrap())
    }

    fn record(&mut self, bucket: u8, key: &[u8], value: &[u8]) -> u64 {
        let mut buf = std::vec![0u8; key.len() + value.len() + 16];
        let payload = postcard::to_slice(&RecordWire { bucket, key, value }, &mut buf).unwrap().to_vec();
        self.records += 1;
        self.frame(0x02, &payload)
    }

    fn v2(&mut self, chunk: &[u8]) -> u64 {
        self.v2_len += chunk.len() as u64;
        self.frame(0x03, chunk)
    }

    fn trailer_with(self, records: u64, v2_len: u64, sha256: [u8; 32]) -> Vec<u8> {
        let payload = postcard::to_slice(&TrailerWire { records, v2_len, sha256 }, &mut [0u8; 64]).unwrap().to_vec();
        let mut bytes = self.bytes;
        bytes.extend_from_slice(&Self::framed(0x04, &payload));
        bytes
    }

    fn trailer(self) -> Vec<u8> {
        let (records, v2_len, sha) = (self.records, self.v2_len, self.sha.clone().finalize().into());
        self.trailer_with(records, v2_len, sha)
    }
}

/// A source over a slice that counts what it hands out.
struct Counting<'a> {
    rest: &'a [u8],
    given: usize,
}

impl Source for Counting<'_> {
    type Error = Infallible;
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, Infallible> {
        assert!(!buf.is_empty(), "the decoder passed an empty buffer");
        let n = self.rest.read(buf)?;
        self.given += n;
        Ok(n)
    }
}

/// A source that fails once it has handed out `left` bytes.
struct Failing<'a> {
    rest: &'a [u8],
    left: usize,
}

#[derive(Debug, PartialEq, Eq)]
struct Unplugged;

impl Source for Failing<'_> {
    type Error = Unplugged;
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, Unplugged> {
        if self.left == 0 {
            return Err(Unplugged);
        }
        let n = buf.len().min(self.left);
        let n = self.rest.read(&mut buf[..n]).unwrap();
        self.left -= n;
        Ok(n)
    }
}

#[test]
fn sample_round_trips_through_every_buffer_and_chunk_size() {
    let (backend, image, summary) = sample_image();
    assert!((5_000..7_000).contains(&image.len()), "sample image is {} bytes", image.len());
    let expected =
        Decoded { metadata: sample_metadata(), records: contents(&backend.read().unwrap()), v2: sample_v2(), summary };
    assert_eq!(summary.records, expected.records.len() as u64);
    assert_eq!(summary.v2_len, expected.v2.len() as u64);
    let trailer_at = frames(&image).last().unwrap().0;
    assert_eq!(summary.sha256, <[u8; 32]>::from(Sha256::digest(&image[..trailer_at])));

    let mut buf = std::vec![0u8; 1 << 20];
    for size in [BASE_BUFFER, BASE_BUFFER + 1, MIN_BUFFER, 1 << 20] {
        assert_eq!(decode_all(&image[..], &mut buf[..size]).unwrap(), expected);
    }
    for chunk in [1, 2, 3, 4, 5, 7, 9, 13, 64, 4096, 5000] {
        assert_eq!(decode_all(Chunked::new(&image[..], chunk), &mut buf[..BASE_BUFFER]).unwrap(), expected);
    }
    assert_eq!(verify(&image[..], &mut buf).unwrap(), (sample_metadata(), summary));
}

#[test]
fn encoding_is_deterministic_and_canonical() {
    let (_, image, _) = sample_image();
    let (_, again, _) = sample_image();
    assert_eq!(image, again);
    // Materialise, then encode the result: the same bytes come back.
    let mut follower = Sample::new();
    let mut buf = std::vec![0u8; MIN_BUFFER];
    let mut v2 = Vec::new();
    let mut txn = follower.write().unwrap();
    let (metadata, _) = materialize(&image[..], &mut buf, &mut txn, &mut |c| {
        v2.extend_from_slice(c);
        Ok(())
    })
    .unwrap();
    txn.commit().unwrap();
    let mut sink = VecSink::default();
    encode(&metadata, &follower.read().unwrap(), &v2, &mut sink).unwrap();
    assert_eq!(sink.0, image);
}

#[test]
fn small_buffers_decode_small_frames_and_refuse_large_ones_by_type() {
    let (_, image, _) = sample_image();
    // The largest payload of the sample is a full v2 chunk.
    let frames = frames(&image);
    let largest = frames.iter().map(|f| f.2).max().unwrap();
    assert_eq!(largest, V2_CHUNK_LEN);
    let first_chunk = frames.iter().find(|f| f.1 == 0x03).unwrap().0 as u64;
    let mut buf = std::vec![0u8; largest];
    decode_all(&image[..], &mut buf).unwrap();
    assert_eq!(
        decode_all(&image[..], &mut buf[..largest - 1]).unwrap_err(),
        DecodeError::BufferTooSmall { offset: first_chunk, kind: 0x03, needed: largest, available: largest - 1 }
    );
    let header = frames[0].2;
    assert_eq!(
        decode_all(&image[..], &mut buf[..3]).unwrap_err(),
        DecodeError::BufferTooSmall { offset: 12, kind: 0x01, needed: header, available: 3 }
    );
}

#[test]
fn a_base_buffer_decodes_every_frame_but_large_records() {
    // The largest metadata the types allow, and full v2 chunks, through exactly 1 KiB.
    let full = || IdList::from_slice(&[u64::MAX; crate::raft::MAX_CONF_IDS]).unwrap();
    let metadata = SnapshotMetadata {
        index: u64::MAX,
        term: u64::MAX,
        conf_state: ConfState {
            voters: full(),
            learners: full(),
            voters_outgoing: full(),
            learners_next: full(),
            auto_leave: true,
        },
    };
    let mut backend = Sample::new();
    fill(&mut backend, &[(Bucket::Key, std::vec![1; 17], std::vec![2; 256])]);
    let v2: Vec<u8> = (0..3 * V2_CHUNK_LEN).map(|i| i as u8).collect();
    let mut sink = VecSink::default();
    encode(&metadata, &backend.read().unwrap(), &v2, &mut sink).unwrap();
    let decoded = decode_all(&sink.0[..], &mut [0u8; BASE_BUFFER]).unwrap();
    assert_eq!((decoded.metadata, decoded.v2), (metadata, v2));
    assert_eq!(BASE_BUFFER, 1024);
    assert_eq!(buffer_for(17, 256), BASE_BUFFER);
    assert_eq!(buffer_for(17, 2000), record_buffer_len(17, 2000));
    assert_eq!(record_buffer_len(17, 2000), 1 + 1 + 17 + 2 + 2000);
}

/// `decode_into` keeps the backend it wrote the image into, holding exactly the image's records,
/// with the metadata and the verified summary; a damaged image gives an error and no backend.
#[test]
fn decode_into_keeps_exactly_the_images_records_with_its_verified_digest() {
    let (_, image, summary) = sample_image();
    let mut buf = std::vec![0u8; MIN_BUFFER];
    let mut seen_v2 = Vec::new();
    let mut v2 = |chunk: &[u8]| {
        seen_v2.extend_from_slice(chunk);
        Ok(())
    };
    let decoded = decode_into(&image[..], &mut buf, Sample::new(), &mut v2).unwrap();
    assert_eq!(*decoded.summary(), summary);
    assert_eq!(*decoded.metadata(), sample_metadata());
    assert_eq!(contents(&decoded.backend().read().unwrap()), sample_records());
    assert_eq!(seen_v2, sample_v2());

    let mut damaged = image.clone();
    let at = damaged.len() / 2;
    damaged[at] ^= 1;
    let err = decode_into(&damaged[..], &mut buf, Sample::new(), &mut |_| Ok(())).unwrap_err();
    assert!(err.corruption().is_some(), "{err:?}");
}

#[test]
fn every_bit_flip_is_rejected_where_it_happens_and_never_materialises() {
    let (_, image, _) = sample_image();
    let frames = frames(&image);
    let frame_of = |at: usize| frames.iter().rev().find(|f| f.0 <= at).copied();

    // The follower's current state, which a bad image must leave untouched.
    let mut follower = Sample::new();
    fill(&mut follower, &[(Bucket::Key, b"old".to_vec(), b"state".to_vec())]);
    let before = contents(&follower.read().unwrap());

    let mut buf = std::vec![0u8; MIN_BUFFER];
    let mut flipped = image.clone();
    for at in 0..image.len() {
        for bit in 0..8 {
            flipped[at] ^= 1 << bit;
            let (offset, what) = rejection(&flipped);
            match frame_of(at) {
                None if at < 8 => assert_eq!((offset, what), (0, Corruption::BadMagic)),
                None if at < 10 => assert!(matches!(what, Corruption::UnsupportedVersion { .. }), "{what:?}"),
                None => assert!(matches!(what, Corruption::UnsupportedFlags { .. }), "{what:?}"),
                // A flip in a payload or its CRC is caught by that CRC.
                Some((start, _, _)) if at >= start + 9 => {
                    assert_eq!(offset, start as u64, "flip at {at}");
                    assert!(matches!(what, Corruption::BadCrc { .. }), "flip at {at}: {what:?}");
                }
                // A flip in a kind, a length or the head's CRC is caught by the head's CRC (or
                // as an unknown kind), before the length is trusted: never as a frame too large.
                Some((start, _, _)) => {
                    assert_eq!(offset, start as u64, "flip at {at}");
                    assert!(
                        matches!(what, Corruption::BadHeadCrc { .. } | Corruption::UnknownFrameKind { .. }),
                        "flip at {at}: {what:?}"
                    );
                }
            }

            // Materialised into a transaction that is then dropped, not committed.
            let result = materialize(&flipped[..], &mut buf, &mut follower.write().unwrap(), &mut |_| Ok(()));
            assert!(result.unwrap_err().corruption().is_some());
            flipped[at] ^= 1 << bit;
        }
    }
    assert_eq!(contents(&follower.read().unwrap()), before);
}

#[test]
fn every_truncation_is_rejected_and_never_materialises() {
    let (_, image, _) = sample_image();
    let mut follower = Sample::new();
    fill(&mut follower, &[(Bucket::Meta, b"old".to_vec(), b"state".to_vec())]);
    let before = contents(&follower.read().unwrap());
    let mut buf = std::vec![0u8; MIN_BUFFER];
    for len in 0..image.len() {
        assert_eq!(rejection(&image[..len]), (len as u64, Corruption::Truncated), "truncated to {len}");
        let mut txn = follower.write().unwrap();
        let result = materialize(Chunked::new(&image[..len], 7), &mut buf, &mut txn, &mut |_| Ok(()));
        assert_eq!(result.unwrap_err().corruption(), Some(Corruption::Truncated));
    }
    assert_eq!(contents(&follower.read().unwrap()), before);
}

#[test]
fn trailing_bytes_are_rejected() {
    let (_, mut image, _) = sample_image();
    let len = image.len() as u64;
    image.push(0);
    assert_eq!(rejection(&image), (len, Corruption::TrailingBytes));
    image.extend_from_slice(&image.clone());
    assert_eq!(rejection(&image), (len, Corruption::TrailingBytes));
}

#[test]
fn huge_lengths_are_refused_before_anything_more_is_read() {
    let mut buf = std::vec![0u8; MIN_BUFFER];
    let check = |bytes: &[u8], buf: &mut [u8], expected: DecodeError<Infallible>, read: usize| {
        let mut source = Counting { rest: bytes, given: 0 };
        let err = decode_all(&mut source, buf).unwrap_err();
        assert_eq!(err, expected);
        assert_eq!(source.given, read, "bytes read");
    };
    let head = Crafted::head;

    // A header frame claiming 4 GiB, followed by plenty of input.
    let mut image = Crafted::preamble(FORMAT_VERSION, 0).bytes;
    image.extend_from_slice(&head(0x01, u32::MAX));
    image.extend_from_slice(&[0xAB; 4096]);
    let too_long = |kind, len, max: usize| DecodeError::Corrupt {
        offset: 12,
        what: Corruption::FrameTooLong { kind, len, max: max as u32 },
    };
    check(&image, &mut buf, too_long(1, u32::MAX, MAX_METADATA_LEN), 21);

    // The same with a head CRC that does not match: the length is not even compared.
    let mut image = Crafted::preamble(FORMAT_VERSION, 0).bytes;
    let mut bad = head(0x01, u32::MAX);
    bad[8] ^= 0x40;
    image.extend_from_slice(&bad);
    image.extend_from_slice(&[0xAB; 4096]);
    let stored = u32::from_le_bytes(bad[5..9].try_into().unwrap());
    let computed = crc32c(&[&bad[..5]]);
    check(&image, &mut buf, DecodeError::Corrupt { offset: 12, what: Corruption::BadHeadCrc { stored, computed } }, 21);

    // Record, v2 and trailer frames claiming more than their kind allows, after a valid header.
    let valid = Crafted::new().bytes;
    let at = valid.len();
    for (kind, len, max) in [
        (0x02, u32::MAX, MAX_FRAME_LEN),
        (0x02, MAX_FRAME_LEN as u32 + 1, MAX_FRAME_LEN),
        (0x03, u32::MAX, wire::MAX_V2_PAYLOAD),
        (0x03, wire::MAX_V2_PAYLOAD as u32 + 1, wire::MAX_V2_PAYLOAD),
        (0x04, 53, 52),
    ] {
        let mut image = valid.clone();
        image.extend_from_slice(&head(kind, len));
        image.extend_from_slice(&[0; 100]);
        let expected =
            DecodeError::Corrupt { offset: at as u64, what: Corruption::FrameTooLong { kind, len, max: max as u32 } };
        check(&image, &mut buf, expected, at + 9);
    }

    // Within the format's limit but over the caller's buffer: a typed error, nothing read.
    for (len, available) in [(2000, 1024), (MAX_FRAME_LEN as u32, MIN_BUFFER), (MIN_BUFFER as u32 + 1, MIN_BUFFER)] {
        let mut image = valid.clone();
        image.extend_from_slice(&head(0x02, len));
        image.extend_from_slice(&[0; 100]);
        let expected = DecodeError::BufferTooSmall { offset: at as u64, kind: 0x02, needed: len as usize, available };
        check(&image, &mut buf[..available], expected, at + 9);
    }
}

#[test]
fn records_out_of_order_duplicated_or_in_unknown_buckets_are_rejected() {
    type Case<'a> = (&'a [(u8, &'a [u8])], Corruption);
    let cases: [Case<'_>; 6] = [
        (&[(0, b"b"), (0, b"a")], Corruption::OutOfOrder { bucket: Bucket::Key }),
        (&[(0, b"a"), (0, b"a")], Corruption::DuplicateRecord { bucket: Bucket::Key }),
        (&[(0, b""), (0, b"")], Corruption::DuplicateRecord { bucket: Bucket::Key }),
        (&[(1, b"a"), (0, b"z")], Corruption::OutOfOrder { bucket: Bucket::Key }),
        (&[(0, b"ab"), (0, b"a")], Corruption::OutOfOrder { bucket: Bucket::Key }),
        (&[(9, b"a"), (10, b"b")], Corruption::UnknownBucket { id: 10 }),
    ];
    for (records, expected) in cases {
        let mut c = Crafted::new();
        let mut last = 0;
        for (bucket, key) in records {
            last = c.record(*bucket, key, b"v");
        }
        assert_eq!(rejection(&c.trailer()), (last, expected), "{records:?}");
    }
    let mut c = Crafted::new();
    let at = c.record(0xFF, b"a", b"v");
    assert_eq!(rejection(&c.trailer()), (at, Corruption::UnknownBucket { id: 0xFF }));
}

#[test]
fn frames_out_of_place_or_of_unknown_kinds_are_rejected() {
    // A record after v2 data.
    let mut c = Crafted::new();
    c.v2(b"v2");
    let at = c.record(0, b"a", b"v");
    assert_eq!(rejection(&c.trailer()), (at, Corruption::UnexpectedFrame { kind: 0x02 }));
    // A second header.
    let mut c = Crafted::new();
    let at = c.header(&SnapshotMetadata::default());
    assert_eq!(rejection(&c.trailer()), (at, Corruption::UnexpectedFrame { kind: 0x01 }));
    // No header.
    let mut c = Crafted::preamble(FORMAT_VERSION, 0);
    c.record(0, b"a", b"v");
    assert_eq!(rejection(&c.trailer()), (12, Corruption::UnexpectedFrame { kind: 0x02 }));
    let c = Crafted::preamble(FORMAT_VERSION, 0);
    assert_eq!(rejection(&c.trailer()), (12, Corruption::UnexpectedFrame { kind: 0x04 }));
    // Kinds that do not exist, including zeroed memory and erased flash.
    for kind in [0x00, 0x05, 0x7F, 0xFF] {
        let mut c = Crafted::new();
        let at = c.frame(kind, b"");
        assert_eq!(rejection(&c.trailer()), (at, Corruption::UnknownFrameKind { kind }));
        let mut image = Crafted::new().bytes;
        let at = image.len() as u64;
        image.extend_from_slice(&[kind; 64]);
        assert_eq!(rejection(&image), (at, Corruption::UnknownFrameKind { kind }));
    }
    // No trailer.
    let mut c = Crafted::new();
    c.record(0, b"a", b"v");
    assert_eq!(rejection(&c.bytes), (c.offset(), Corruption::Truncated));
}

#[test]
fn trailer_mismatches_are_rejected() {
    let build = || {
        let mut c = Crafted::new();
        c.record(0, b"a", b"v");
        c.v2(b"v2");
        c
    };
    let good = build();
    let (at, sha) = (good.offset(), good.sha.clone().finalize().into());
    let mut buf = std::vec![0u8; MIN_BUFFER];
    decode_all(&build().trailer_with(1, 2, sha)[..], &mut buf).unwrap();
    assert_eq!(
        rejection(&build().trailer_with(2, 2, sha)),
        (at, Corruption::RecordCountMismatch { trailer: 2, actual: 1 })
    );
    assert_eq!(rejection(&build().trailer_with(1, 3, sha)), (at, Corruption::V2LenMismatch { trailer: 3, actual: 2 }));
    let mut wrong = sha;
    wrong[31] ^= 1;
    assert_eq!(rejection(&build().trailer_with(1, 2, wrong)), (at, Corruption::DigestMismatch));
}

#[test]
fn non_canonical_or_over_limit_payloads_are_rejected() {
    let malformed = |kind| Corruption::Malformed { kind };
    // A record whose key length is an over-long varint.
    let mut c = Crafted::new();
    let at = c.frame(0x02, &[0x00, 0x81, 0x00, b'k', 0x01, b'v']);
    c.records += 1;
    assert_eq!(rejection(&c.trailer()), (at, malformed(0x02)));
    // A record with a byte after its value, and one cut short.
    for payload in [&[0x00, 0x01, b'k', 0x01, b'v', 0x00][..], &[0x00, 0x01, b'k', 0x02, b'v'][..], &[][..]] {
        let mut c = Crafted::new();
        let at = c.frame(0x02, payload);
        assert_eq!(rejection(&c.trailer()), (at, malformed(0x02)));
    }
    // A key over its limit, inside the frame limit. (A value over its limit needs a 2 GiB
    // frame; the check the decoder makes is `wire::check_record_lens`, tested on its own.)
    let mut c = Crafted::new();
    let at = c.record(0, &[7; MAX_KEY_LEN + 1], b"");
    assert_eq!(rejection(&c.trailer()), (at, Corruption::KeyTooLong { len: MAX_KEY_LEN as u32 + 1 }));
    // The longest key with a value over version 1's limit: fine, through a buffer its size.
    let mut c = Crafted::new();
    c.record(0, &[7; MAX_KEY_LEN], &std::vec![7; 100_000]);
    let image = c.trailer();
    let needed = buffer_for(MAX_KEY_LEN, 100_000);
    assert_eq!(frames(&image)[1].2, needed);
    decode_all(&image[..], &mut std::vec![0u8; needed]).unwrap();

    // v2 chunks: empty, or following a short one.
    let mut c = Crafted::new();
    let at = c.v2(b"");
    assert_eq!(rejection(&c.trailer()), (at, Corruption::BadV2Chunk { len: 0 }));
    let mut c = Crafted::new();
    c.v2(b"short");
    let at = c.v2(b"more");
    assert_eq!(rejection(&c.trailer()), (at, Corruption::BadV2Chunk { len: 4 }));
    let mut c = Crafted::new();
    c.v2(&[1; V2_CHUNK_LEN]);
    c.v2(&[2; V2_CHUNK_LEN]);
    c.v2(b"last");
    decode_all(&c.trailer()[..], &mut std::vec![0u8; BASE_BUFFER]).unwrap();

    // Headers: a byte too many, a bool that is not 0 or 1, 17 voters.
    let mut metadata = postcard::to_slice(&sample_metadata(), &mut [0u8; 1024]).unwrap().to_vec();
    metadata.push(0);
    let mut c = Crafted::preamble(FORMAT_VERSION, 0);
    c.frame(0x01, &metadata);
    assert_eq!(rejection(&c.trailer()), (12, malformed(0x01)));
    let mut metadata = postcard::to_slice(&SnapshotMetadata::default(), &mut [0u8; 64]).unwrap().to_vec();
    *metadata.last_mut().unwrap() = 2;
    let mut c = Crafted::preamble(FORMAT_VERSION, 0);
    c.frame(0x01, &metadata);
    assert_eq!(rejection(&c.trailer()), (12, malformed(0x01)));
    let mut metadata = std::vec![0x01, 0x01, 17];
    metadata.extend_from_slice(&[0x01; 17]);
    metadata.extend_from_slice(&[0, 0, 0, 0]);
    let mut c = Crafted::preamble(FORMAT_VERSION, 0);
    c.frame(0x01, &metadata);
    assert_eq!(rejection(&c.trailer()), (12, malformed(0x01)));
    // A trailer with a byte too many.
    let c = Crafted::new();
    let at = c.offset();
    let mut trailer = postcard::to_slice(
        &TrailerWire { records: 0, v2_len: 0, sha256: c.sha.clone().finalize().into() },
        &mut [0u8; 64],
    )
    .unwrap()
    .to_vec();
    trailer.push(0);
    let mut bytes = c.bytes.clone();
    bytes.extend_from_slice(&Crafted::framed(0x04, &trailer));
    assert_eq!(rejection(&bytes), (at, malformed(0x04)));
}

#[test]
fn preambles_of_other_files_versions_and_flags_are_rejected() {
    assert_eq!(rejection(b"not an image at all, just text").1, Corruption::BadMagic);
    assert_eq!(rejection(&[0xFF; 64]), (0, Corruption::BadMagic));
    // Version 1 included: this decoder reads version 2 only.
    for version in [0, 1, 3, u16::MAX] {
        assert_eq!(
            rejection(&Crafted::preamble(version, 0).trailer()),
            (8, Corruption::UnsupportedVersion { version })
        );
    }
    for flags in [1, 0x8000] {
        assert_eq!(
            rejection(&Crafted::preamble(FORMAT_VERSION, flags).trailer()),
            (10, Corruption::UnsupportedFlags { flags })
        );
    }
}

#[test]
fn the_smallest_image_is_exactly_preamble_header_trailer() {
    let backend = Sample::new();
    let mut sink = VecSink::default();
    let summary = encode(&SnapshotMetadata::default(), &backend.read().unwrap(), &[], &mut sink).unwrap();
    assert_eq!((summary.records, summary.v2_len), (0, 0));
    let image = sink.0;
    // SnapshotMetadata::default() is 7 bytes of postcard; the trailer 1 + 1 + 32.
    assert_eq!(image.len(), 12 + (13 + 7) + (13 + 34));
    assert_eq!(frames(&image).iter().map(|f| f.1).collect::<Vec<_>>(), [0x01, 0x04]);
    let decoded = decode_all(&image[..], &mut std::vec![0u8; 64]).unwrap();
    assert_eq!(decoded.summary, summary);
    assert!(decoded.records.is_empty() && decoded.v2.is_empty());
}

/// The bytes of a small image, fixed forever for format version 2: if this test fails, the
/// format changed, and old images would no longer decode. Bump the version instead.
#[test]
fn golden_image_of_format_version_2() {
    let mut backend = MemBackend::<4, 8, 8>::new();
    fill(&mut backend, &[(Bucket::Key, b"k".to_vec(), b"v".to_vec()), (Bucket::Members, b"m1".to_vec(), b"".to_vec())]);
    let metadata = SnapshotMetadata {
        index: 300,
        term: 2,
        conf_state: ConfState { voters: ids(&[1, 2]), auto_leave: true, ..Default::default() },
    };
    let mut sink = VecSink::default();
    encode(&metadata, &backend.read().unwrap(), b"v2", &mut sink).unwrap();
    let hex: std::string::String = sink.0.iter().map(|b| std::format!("{b:02x}")).collect();
    let golden = concat!(
        "534e4150504c590002000000", // preamble
        "010a000000fe594034",
        "ac020202010200000001",
        "f2916420", // header
        "020500000026323793",
        "00016b0176",
        "6472f228", // record key/k
        "020500000026323793",
        "07026d3100",
        "68a26024", // record members/m1
        "030200000040e526b2",
        "7632",
        "21cb2ff6", // v2 chunk
        "04220000008fff75cd",
        "0202",
        "1df8d62a0de4ed8ebc5d324d1ded5bfe10b6ad0505a289a3b1ef7508b208da2d",
        "489289a4", // trailer
    );
    // These bytes were cross-checked with an independent implementation (Python: a bitwise
    // CRC-32C and hashlib's SHA-256), the one shown in docs/format.md.
    let decoded = decode_all(&sink.0[..], &mut std::vec![0u8; BASE_BUFFER]).unwrap();
    assert_eq!(decoded.metadata, metadata);
    assert_eq!(hex, golden, "the encoding of a version 2 image changed");
}

#[test]
fn fixed_capacity_sink_and_backend_round_trip_without_heap() {
    let mut backend = MemBackend::<8, 16, 32>::new();
    fill(&mut backend, &[(Bucket::Lease, b"lease-1".to_vec(), b"ttl=10".to_vec())]);
    let mut sink = heapless::Vec::<u8, 512>::new();
    let summary = encode(&sample_metadata(), &backend.read().unwrap(), b"v2", &mut sink).unwrap();
    let mut buf = [0u8; 128];
    let mut follower = MemBackend::<8, 16, 32>::new();
    let mut txn = follower.write().unwrap();
    let mut v2 = heapless::Vec::<u8, 8>::new();
    let out = materialize(&sink[..], &mut buf, &mut txn, &mut |c| {
        v2.extend_from_slice(c).map_err(|_| BackendError::new(BackendErrorKind::Full, "v2"))
    })
    .unwrap();
    txn.commit().unwrap();
    assert_eq!(out, (sample_metadata(), summary));
    assert_eq!(contents(&follower.read().unwrap()), contents(&backend.read().unwrap()));
    assert_eq!(&v2[..], b"v2");

    // Too small a sink: the error says so.
    let mut small = heapless::Vec::<u8, 64>::new();
    let err = encode(&sample_metadata(), &backend.read().unwrap(), b"v2", &mut small).unwrap_err();
    assert!(matches!(err, EncodeError::Sink(CapacityError { .. })), "{err:?}");
}

/// A read transaction that fails or scans in the wrong order.
struct Broken {
    fail: bool,
}

impl ReadTxn for Broken {
    fn get(&self, _: Bucket, _: &[u8], _: &mut dyn FnMut(&[u8])) -> Result<bool, BackendError> {
        Ok(false)
    }
    fn scan(&self, bucket: Bucket, _: &[u8], f: &mut Visit<'_>) -> Result<(), BackendError> {
        if self.fail {
            return Err(BackendError::new(BackendErrorKind::Io, "scanning"));
        }
        if bucket == Bucket::Key {
            for key in [b"b", b"a"] {
                if f(key, b"").is_break() {
                    break;
                }
            }
        }
        Ok(())
    }
}

/// A read transaction holding one record, whose value is not copied into a backend.
struct OneRecord {
    bucket: Bucket,
    value: Vec<u8>,
}

impl ReadTxn for OneRecord {
    fn get(&self, _: Bucket, _: &[u8], _: &mut dyn FnMut(&[u8])) -> Result<bool, BackendError> {
        Ok(false)
    }
    fn scan(&self, bucket: Bucket, _: &[u8], f: &mut Visit<'_>) -> Result<(), BackendError> {
        if bucket == self.bucket {
            let _ = f(b"k", &self.value);
        }
        Ok(())
    }
}

#[test]
fn the_encoder_refuses_what_the_format_cannot_carry() {
    let meta = sample_metadata();
    let mut sink = VecSink::default();
    let mut backend = MemBackend::<2, 2048, 8>::new();
    fill(&mut backend, &[(Bucket::Auth, std::vec![1; MAX_KEY_LEN + 1], b"v".to_vec())]);
    assert_eq!(
        encode(&meta, &backend.read().unwrap(), &[], &mut sink).unwrap_err(),
        EncodeError::KeyTooLong { bucket: Bucket::Auth, len: MAX_KEY_LEN + 1 }
    );
    // A value one byte over bbolt's limit: 2 GiB of zeroed pages that nothing touches, since the
    // encoder refuses the record on its length before reading it.
    let huge = OneRecord { bucket: Bucket::Alarm, value: std::vec![0; MAX_VALUE_LEN + 1] };
    assert_eq!(
        encode(&meta, &huge, &[], &mut sink).unwrap_err(),
        EncodeError::ValueTooLong { bucket: Bucket::Alarm, len: MAX_VALUE_LEN + 1 }
    );
    assert_eq!(
        encode(&meta, &Broken { fail: true }, &[], &mut sink).unwrap_err(),
        EncodeError::Backend(BackendError::new(BackendErrorKind::Io, "scanning"))
    );
    assert_eq!(
        encode(&meta, &Broken { fail: false }, &[], &mut sink).unwrap_err(),
        EncodeError::OutOfOrder { bucket: Bucket::Key }
    );
}

#[test]
fn the_decoder_is_poisoned_after_an_error_and_fused_after_the_end() {
    let (_, image, _) = sample_image();
    let mut bad = image.clone();
    let second = frames(&image)[1].0;
    bad[second + 10] ^= 0x10;
    let mut buf = std::vec![0u8; MIN_BUFFER];
    let mut decoder = Decoder::new(&bad[..], &mut buf).unwrap();
    assert!(matches!(decoder.next(), Err(DecodeError::Corrupt { what: Corruption::BadCrc { .. }, .. })));
    assert_eq!(decoder.next(), Err(DecodeError::Poisoned));
    assert_eq!(decoder.next(), Err(DecodeError::Poisoned));
    assert_eq!(decoder.summary(), None);

    let mut decoder = Decoder::new(&image[..], &mut buf).unwrap();
    let mut n = 0;
    while decoder.next().unwrap().is_some() {
        n += 1;
    }
    assert_eq!(decoder.offset(), image.len() as u64);
    assert_eq!(n, sample_records().len() + sample_v2().len().div_ceil(V2_CHUNK_LEN));
    assert_eq!(decoder.next(), Ok(None));
}

#[test]
fn source_errors_are_not_mistaken_for_corruption() {
    let (_, image, _) = sample_image();
    let mut buf = std::vec![0u8; MIN_BUFFER];
    for left in [0, 5, 12, 100, image.len() - 1, image.len()] {
        let err = decode_all(Failing { rest: &image, left }, &mut buf).unwrap_err();
        assert_eq!(err, DecodeError::Source(Unplugged), "failing after {left} bytes");
        assert_eq!(err.corruption(), None);
    }
}

#[test]
fn materialize_replaces_every_bucket_and_reports_failures_by_kind() {
    let (leader, image, summary) = sample_image();
    let mut buf = std::vec![0u8; MIN_BUFFER];

    // Whatever the follower held is gone after a committed materialisation.
    let mut follower = Sample::new();
    fill(
        &mut follower,
        &[(Bucket::Key, b"zzz".to_vec(), b"stale".to_vec()), (Bucket::Cluster, b"v".to_vec(), b"3.4".to_vec())],
    );
    let mut txn = follower.write().unwrap();
    let mut v2 = Vec::new();
    let out = materialize(&image[..], &mut buf, &mut txn, &mut |c| {
        v2.extend_from_slice(c);
        Ok(())
    })
    .unwrap();
    txn.commit().unwrap();
    assert_eq!(out, (sample_metadata(), summary));
    assert_eq!(contents(&follower.read().unwrap()), contents(&leader.read().unwrap()));
    assert_eq!(v2, sample_v2());

    // A backend too small, and a v2 consumer that fails: typed, and nothing committed.
    let mut tiny = MemBackend::<4, 32, 256>::new();
    let err = materialize(&image[..], &mut buf, &mut tiny.write().unwrap(), &mut |_| Ok(())).unwrap_err();
    assert!(matches!(err, MaterializeError::Backend(BackendError { kind: BackendErrorKind::Full, .. })), "{err:?}");
    assert!(tiny.is_empty());
    let mut txn = follower.write().unwrap();
    let failure = BackendError::new(BackendErrorKind::Io, "v2");
    let err = materialize(&image[..], &mut buf, &mut txn, &mut |_| Err(failure)).unwrap_err();
    assert_eq!(err, MaterializeError::V2(failure));
}

#[test]
fn errors_explain_themselves() {
    let err: DecodeError<Infallible> = DecodeError::Corrupt { offset: 17, what: Corruption::DigestMismatch };
    assert_eq!(std::format!("{err}"), "corrupt image at byte 17: image SHA-256 mismatch");
    let err: DecodeError<Infallible> =
        DecodeError::BufferTooSmall { offset: 640, kind: 0x02, needed: 1_572_886, available: 4096 };
    assert_eq!(
        std::format!("{err}"),
        "the record frame at byte 640 is 1572886 bytes, larger than this decoder's 4096-byte buffer"
    );
    let err: EncodeError<Infallible> = EncodeError::KeyTooLong { bucket: Bucket::AuthUsers, len: 2000 };
    assert_eq!(
        std::format!("{err}"),
        "key of 2000 bytes in bucket `authUsers` is longer than an image allows (1024 bytes)"
    );
    let err: MaterializeError<CapacityError> =
        MaterializeError::Decode(DecodeError::Source(CapacityError { what: "flash read" }));
    // Each cause once along the chain: `Display` prints them, `source` goes on below them.
    let mut chain = std::vec![std::format!("{err}")];
    let mut next = core::error::Error::source(&err);
    while let Some(e) = next {
        chain.push(std::format!("{e}"));
        next = e.source();
    }
    assert_eq!(chain, ["materialising the image failed: reading the image failed: capacity exhausted: flash read"]);
}

#[cfg(feature = "alloc")]
mod prop {
    use proptest::prelude::*;

    use super::*;
    use crate::image::wire::tests::metadata;
    use crate::mem::VecBackend;

    fn bucket() -> impl Strategy<Value = Bucket> {
        (0u8..10).prop_map(|id| Bucket::from_id(id).unwrap())
    }

    fn records() -> impl Strategy<Value = std::collections::BTreeMap<(Bucket, Vec<u8>), Vec<u8>>> {
        let small = proptest::collection::btree_map(
            (bucket(), proptest::collection::vec(any::<u8>(), 0..24)),
            proptest::collection::vec(any::<u8>(), 0..400),
            0..80,
        );
        // Now and then a record with the longest key and a value over version 1's limit.
        let large = proptest::option::weighted(
            0.1,
            (bucket(), any::<u8>(), any::<u8>())
                .prop_map(|(b, k, v)| ((b, std::vec![k; MAX_KEY_LEN]), std::vec![v; LARGE_VALUE])),
        );
        (small, large).prop_map(|(mut map, large)| {
            map.extend(large);
            map
        })
    }

    /// The largest value of the generated records.
    const LARGE_VALUE: usize = 70_000;

    /// A buffer that holds every generated record.
    fn buffer_size() -> impl Strategy<Value = usize> {
        let least = buffer_for(MAX_KEY_LEN, LARGE_VALUE);
        prop_oneof![Just(least), least..least + 10_000, Just(1 << 20)]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_content_round_trips(
            metadata in metadata(),
            records in records(),
            v2 in proptest::collection::vec(any::<u8>(), 0..3 * V2_CHUNK_LEN + 100),
            buffer in buffer_size(),
            chunk in prop_oneof![1usize..16, 16usize..70_000],
        ) {
            let mut leader = VecBackend::new();
            let mut txn = leader.write().unwrap();
            for ((b, k), v) in &records {
                txn.put(*b, k, v).unwrap();
            }
            txn.commit().unwrap();

            let mut image = Vec::new();
            let summary = encode(&metadata, &leader.read().unwrap(), &v2, &mut image).unwrap();
            prop_assert_eq!(summary.records, records.len() as u64);

            let mut buf = std::vec![0u8; buffer];
            let decoded = decode_all(Chunked::new(&image[..], chunk), &mut buf).unwrap();
            let expected: Records = records.iter().map(|((b, k), v)| (*b, k.clone(), v.clone())).collect();
            prop_assert_eq!(&decoded.metadata, &metadata);
            prop_assert_eq!(&decoded.records, &expected);
            prop_assert_eq!(&decoded.v2, &v2);
            prop_assert_eq!(decoded.summary, summary);

            // Materialised over unrelated content and committed, the follower equals the leader.
            let mut follower = VecBackend::new();
            let mut txn = follower.write().unwrap();
            txn.put(Bucket::Key, b"stale", b"x").unwrap();
            txn.commit().unwrap();
            let mut txn = follower.write().unwrap();
            let mut restored = Vec::new();
            let out = materialize(Chunked::new(&image[..], chunk), &mut buf, &mut txn, &mut |c| {
                restored.extend_from_slice(c);
                Ok(())
            }).unwrap();
            txn.commit().unwrap();
            prop_assert_eq!(out, (metadata, summary));
            prop_assert_eq!(contents(&follower.read().unwrap()), expected);
            prop_assert_eq!(restored, v2);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512), chunk in 1usize..32) {
            let mut buf = [0u8; 256];
            prop_assert!(decode_all(Chunked::new(&bytes[..], chunk), &mut buf).is_err());
            let mut prefixed = MAGIC.to_vec();
            prefixed.extend_from_slice(&[2, 0, 0, 0]);
            prefixed.extend_from_slice(&bytes);
            prop_assert!(decode_all(&prefixed[..], &mut buf).is_err());
        }

        /// Through any buffer, an image either decodes to its content, or is refused with
        /// `BufferTooSmall` naming the first frame whose payload does not fit (its offset, kind and
        /// exact size); materialising it then leaves the committed backend as it was.
        #[test]
        fn any_buffer_decodes_or_refuses_the_first_frame_that_does_not_fit(
            records in proptest::collection::btree_map(
                (bucket(), proptest::collection::vec(any::<u8>(), 0..24)),
                proptest::collection::vec(any::<u8>(), 0..3000),
                0..24,
            ),
            v2 in proptest::collection::vec(any::<u8>(), 0..3 * V2_CHUNK_LEN),
            buffer in 0usize..4200,
        ) {
            let mut leader = VecBackend::new();
            let mut txn = leader.write().unwrap();
            for ((b, k), v) in &records {
                txn.put(*b, k, v).unwrap();
            }
            txn.commit().unwrap();
            let metadata = sample_metadata();
            let mut image = Vec::new();
            encode(&metadata, &leader.read().unwrap(), &v2, &mut image).unwrap();

            let first_too_large = frames(&image).into_iter().find(|f| f.2 > buffer);
            let mut buf = std::vec![0u8; buffer];
            let decoded = decode_all(&image[..], &mut buf);
            match first_too_large {
                None => prop_assert_eq!(decoded.unwrap().records.len(), records.len()),
                Some((offset, kind, needed)) => {
                    let expected = || DecodeError::BufferTooSmall { offset: offset as u64, kind, needed, available: buffer };
                    prop_assert_eq!(decoded.unwrap_err(), expected());
                    let mut follower = VecBackend::new();
                    let mut txn = follower.write().unwrap();
                    txn.put(Bucket::Lease, b"mine", b"kept").unwrap();
                    txn.commit().unwrap();
                    let before = crate::backend::dump(&follower.read().unwrap()).unwrap();
                    let mut txn = follower.write().unwrap();
                    let err = materialize(&image[..], &mut buf, &mut txn, &mut |_| Ok(())).unwrap_err();
                    prop_assert_eq!(err, MaterializeError::Decode(expected()));
                    drop(txn);
                    prop_assert_eq!(crate::backend::dump(&follower.read().unwrap()).unwrap(), before);
                }
            }
        }
    }

    /// etcd's default request limit (`--max-request-bytes`, 1.5 MiB) as one value.
    const ETCD_REQUEST_LIMIT: usize = 1536 * 1024;

    /// A leader whose backend holds a 1.5 MiB value among small records, and its image.
    fn leader_with_a_large_value() -> (VecBackend, Vec<u8>, Vec<u8>) {
        let mut leader = VecBackend::new();
        let mut txn = leader.write().unwrap();
        let value: Vec<u8> = (0..ETCD_REQUEST_LIMIT).map(|i| (i % 253) as u8).collect();
        let revision = |main: u64| {
            let mut key = main.to_be_bytes().to_vec();
            key.push(b'_');
            key.extend_from_slice(&0u64.to_be_bytes());
            key
        };
        txn.put(Bucket::Key, &revision(2), b"small").unwrap();
        txn.put(Bucket::Key, &revision(3), &value).unwrap();
        txn.put(Bucket::Key, &revision(4), b"after").unwrap();
        txn.put(Bucket::Meta, b"consistent_index", &4u64.to_be_bytes()).unwrap();
        txn.commit().unwrap();
        let mut image = Vec::new();
        encode(&sample_metadata(), &leader.read().unwrap(), b"v2 data", &mut image).unwrap();
        (leader, image, value)
    }

    #[test]
    fn a_value_of_1_5_mib_round_trips_through_a_host_sized_buffer() {
        let (leader, image, value) = leader_with_a_large_value();
        let mut buf = std::vec![0u8; buffer_for(17, ETCD_REQUEST_LIMIT)];
        let decoded = decode_all(Chunked::new(&image[..], 64 * 1024), &mut buf).unwrap();
        assert_eq!(decoded.records, contents(&leader.read().unwrap()));
        assert!(decoded.records.iter().any(|r| r.2 == value));

        let mut follower = VecBackend::new();
        let mut txn = follower.write().unwrap();
        txn.put(Bucket::Key, b"stale", b"x").unwrap();
        let mut v2 = Vec::new();
        let (metadata, summary) = materialize(&image[..], &mut buf, &mut txn, &mut |c| {
            v2.extend_from_slice(c);
            Ok(())
        })
        .unwrap();
        txn.commit().unwrap();
        assert_eq!((&metadata, summary, &v2[..]), (&sample_metadata(), decoded.summary, &b"v2 data"[..]));
        assert_eq!(
            crate::backend::dump(&follower.read().unwrap()).unwrap(),
            crate::backend::dump(&leader.read().unwrap()).unwrap()
        );
        // Canonical: the follower's backend encodes to the same bytes.
        let mut again = Vec::new();
        encode(&metadata, &follower.read().unwrap(), &v2, &mut again).unwrap();
        assert!(again == image);
    }

    #[test]
    fn a_4_kib_follower_refuses_the_1_5_mib_value_by_type_and_keeps_its_state() {
        let (_, image, value) = leader_with_a_large_value();
        let (offset, kind, len) = frames(&image).into_iter().find(|f| f.2 > 4096).unwrap();
        let needed = record_buffer_len(17, value.len());
        assert_eq!((kind, len), (0x02, needed));
        let expected = || DecodeError::BufferTooSmall { offset: offset as u64, kind: 0x02, needed, available: 4096 };

        // The decoder stops at the record's head: nothing of the 1.5 MiB is read.
        let mut buf = std::vec![0u8; 4096];
        let mut source = Counting { rest: &image, given: 0 };
        assert_eq!(decode_all(&mut source, &mut buf).unwrap_err(), expected());
        assert_eq!(source.given, offset + 9);
        assert_eq!(
            std::format!("{}", expected()),
            std::format!(
                "the record frame at byte {offset} is {needed} bytes, larger than this decoder's 4096-byte buffer"
            )
        );
        assert_eq!(needed, 1_572_886);

        // A follower with state of its own: the failed materialisation's transaction is dropped,
        // and the committed backend is exactly what it was.
        let mut follower = VecBackend::new();
        let mut txn = follower.write().unwrap();
        txn.put(Bucket::Key, b"own", b"state").unwrap();
        txn.put(Bucket::Members, b"1", b"member").unwrap();
        txn.commit().unwrap();
        let before = crate::backend::dump(&follower.read().unwrap()).unwrap();
        let mut txn = follower.write().unwrap();
        let mut v2_seen = false;
        let err = materialize(&image[..], &mut buf, &mut txn, &mut |_| {
            v2_seen = true;
            Ok(())
        })
        .unwrap_err();
        assert_eq!(err, MaterializeError::Decode(expected()));
        assert_eq!(err.corruption(), None, "a record too large for the buffer is not corruption");
        assert!(!v2_seen);
        drop(txn);
        assert_eq!(crate::backend::dump(&follower.read().unwrap()).unwrap(), before);
    }
}

/// The decoder's own memory is fixed, whatever the image: the caller's buffer plus this.
#[test]
fn the_decoder_footprint_is_fixed_and_small() {
    let size = core::mem::size_of::<Decoder<'_, &[u8]>>();
    assert!(size <= 2048, "the decoder takes {size} bytes");
    // Most of it is the copy of the previous key that the order check needs.
    assert!(core::mem::size_of::<order::Order>() <= MAX_KEY_LEN + 32);
}
