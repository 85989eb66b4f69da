//! Fuzzes the snapshot image decoder and `materialize`.
//!
//! The first input byte picks a mode, how many bytes each read returns, and the decoder's buffer:
//! a host-sized one, or one of 64 to 1 072 bytes, which refuses larger frames with
//! `BufferTooSmall`. The modes:
//! - raw: the bytes are the image (framing, preamble and length checks);
//! - preamble: a valid preamble, then the bytes (frame heads and payloads);
//! - structured: the bytes describe metadata, records and v2 data, which are encoded into a
//!   valid image; then the tail of the input flips bytes of it and, optionally, recomputes every
//!   CRC and the trailer's digest, so that the damage reaches the payload parsers and the order,
//!   count and canonical-encoding checks instead of stopping at a checksum.
//!
//! Properties checked on every input, beyond "no panic":
//! - the decoder and `materialize` agree (same metadata, records and v2 data, or the same error,
//!   `BufferTooSmall` included);
//! - after an error the decoder is poisoned; after the end it is fused;
//! - a rejected image leaves the backend as it was (the transaction is dropped, not committed);
//! - an accepted image is canonical: re-encoding what was decoded gives back the same bytes.

#![no_main]

use std::ops::ControlFlow;

use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha256};
use snapply_core::backend::{Backend, Bucket, ReadTxn, WriteTxn, for_each_record};
use snapply_core::image::{
    Chunked, DecodeError, Decoder, FORMAT_VERSION, Item, MAGIC, MAX_KEY_LEN, MaterializeError, Summary, buffer_for,
    encode, materialize,
};
use snapply_core::mem::VecBackend;
use snapply_core::{ConfState, IdList, SnapshotMetadata};

type Records = Vec<(Bucket, Vec<u8>, Vec<u8>)>;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    // The low bits of the mode byte also pick how many bytes each read returns.
    let chunk = usize::from(mode >> 2) * 37 + 1;
    let buffer = if mode & 0x40 == 0 { buffer_for(MAX_KEY_LEN, 64 * 1024) } else { 64 + usize::from(mode & 0x3F) * 16 };
    match mode % 3 {
        0 => check(rest, chunk, buffer),
        1 => {
            let mut image = MAGIC.to_vec();
            image.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
            image.extend_from_slice(&[0, 0]);
            image.extend_from_slice(rest);
            check(&image, chunk, buffer);
        }
        _ => {
            let image = structured(rest);
            check(&image, chunk, buffer);
        }
    }
});

#[derive(Debug, PartialEq)]
struct Decoded {
    metadata: SnapshotMetadata,
    records: Records,
    v2: Vec<u8>,
    summary: Summary,
}

fn contents<R: ReadTxn + ?Sized>(txn: &R) -> Records {
    let mut out = Vec::new();
    for_each_record(txn, &mut |b, k, v| {
        out.push((b, k.to_vec(), v.to_vec()));
        ControlFlow::Continue(())
    })
    .expect("VecBackend does not fail");
    out
}

fn check(image: &[u8], chunk: usize, buffer: usize) {
    let mut buf = vec![0u8; buffer];

    // 1. The decoder, reading `chunk` bytes at a time.
    let decoded = (|| {
        let mut decoder = Decoder::new(Chunked::new(image, chunk), &mut buf)?;
        let metadata = decoder.metadata().clone();
        let (mut records, mut v2) = (Vec::new(), Vec::new());
        loop {
            match decoder.next() {
                Ok(Some(Item::Record { bucket, key, value })) => records.push((bucket, key.to_vec(), value.to_vec())),
                Ok(Some(Item::V2(c))) => v2.extend_from_slice(c),
                Ok(None) => break,
                Err(e) => {
                    assert!(matches!(decoder.next(), Err(DecodeError::Poisoned)), "decoder not poisoned");
                    return Err(e);
                }
            }
        }
        assert!(matches!(decoder.next(), Ok(None)), "decoder not fused");
        let summary = *decoder.summary().expect("summary after the end");
        Ok(Decoded { metadata, records, v2, summary })
    })();

    // 2. `materialize` into a backend that already holds something, without committing.
    let mut backend = VecBackend::new();
    {
        let mut txn = backend.write().expect("write txn");
        txn.put(Bucket::Key, b"old", b"state").expect("put");
        txn.commit().expect("commit");
    }
    let before = contents(&backend.read().expect("read txn"));
    let mut v2 = Vec::new();
    let mut txn = backend.write().expect("write txn");
    let materialized = materialize(image, &mut buf, &mut txn, &mut |c| {
        v2.extend_from_slice(c);
        Ok(())
    });

    match (decoded, materialized) {
        (Ok(decoded), Ok((metadata, summary))) => {
            assert_eq!((&metadata, &summary, &v2), (&decoded.metadata, &decoded.summary, &decoded.v2));
            assert_eq!(contents(&txn), decoded.records);
            txn.commit().expect("commit");
            // Canonical: the same content encodes to exactly the accepted bytes.
            let mut again = Vec::new();
            let read = backend.read().expect("read txn");
            let summary_again = encode(&metadata, &read, &v2, &mut again).expect("re-encode");
            assert_eq!(summary_again, summary);
            assert!(again == image, "an accepted image is not canonical");
        }
        (Err(d), Err(m)) => {
            assert_eq!(m, MaterializeError::Decode(d), "decoder and materialize disagree");
            drop(txn);
            assert_eq!(contents(&backend.read().expect("read txn")), before, "a rejected image changed the backend");
        }
        (d, m) => panic!("decoder and materialize disagree: {:?} vs {:?}", d.map(|_| ()), m.map(|_| ())),
    }
}

/// A byte cursor that yields zeros once the input runs out.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn u8(&mut self) -> u8 {
        let (first, rest) = self.0.split_first().map_or((0, &[][..]), |(f, r)| (*f, r));
        self.0 = rest;
        first
    }
    fn take(&mut self, n: usize) -> Vec<u8> {
        let n = n.min(self.0.len());
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        head.to_vec()
    }
    fn u64(&mut self) -> u64 {
        let mut out = [0u8; 8];
        out.iter_mut().for_each(|b| *b = self.u8());
        u64::from_le_bytes(out)
    }
}

/// Builds a valid image from the input, then damages it as the input's tail says.
fn structured(input: &[u8]) -> Vec<u8> {
    // The last byte says how many damage instructions (3 bytes each) end the input.
    let (damage_count, input) = input.split_last().map_or((0, input), |(n, rest)| (usize::from(*n % 8), rest));
    let split = input.len().saturating_sub(damage_count * 3);
    let (body, damage) = input.split_at(split);

    let mut bytes = Bytes(body);
    let voters: IdList = (0..bytes.u8() % 17).map(|_| bytes.u64() % 1000).collect();
    let metadata = SnapshotMetadata {
        index: bytes.u64(),
        term: bytes.u64(),
        conf_state: ConfState { voters, auto_leave: bytes.u8() & 1 == 1, ..Default::default() },
    };
    let mut backend = VecBackend::new();
    let mut txn = backend.write().expect("write txn");
    for _ in 0..bytes.u8() % 32 {
        let bucket = Bucket::from_id(bytes.u8() % 10).expect("valid id");
        let key_len = usize::from(bytes.u8() % 24);
        let value_len = usize::from(bytes.u8());
        let key = bytes.take(key_len);
        let value = bytes.take(value_len);
        txn.put(bucket, &key, &value).expect("put");
    }
    txn.commit().expect("commit");
    let v2_len = usize::from(bytes.u8()) * 40;
    let v2 = bytes.take(v2_len);
    let mut image = Vec::new();
    encode(&metadata, &backend.read().expect("read txn"), &v2, &mut image).expect("encode");

    let mut fix = false;
    for step in damage.chunks(3) {
        let [hi, lo, xor] = [step.first(), step.get(1), step.get(2)].map(|b| b.copied().unwrap_or(0));
        let at = usize::from(u16::from_be_bytes([hi, lo])) % image.len().max(1);
        if xor == 0 {
            image.truncate(at);
        } else if let Some(byte) = image.get_mut(at) {
            *byte ^= xor;
        }
        fix |= xor & 1 == 1;
    }
    if fix {
        fix_checksums(&mut image);
    }
    image
}

/// Recomputes every frame's head and payload CRC-32C and the trailer's SHA-256 after damage, as
/// far as the frame lengths still parse.
fn fix_checksums(image: &mut [u8]) {
    let castagnoli = crc::Crc::<u32, crc::Table<16>>::new(&crc::CRC_32_ISCSI);
    let mut sha = Sha256::new();
    sha.update(image.get(..12).unwrap_or(&[]));
    let mut at = 12;
    while let Some(&[kind, a, b, c, d]) = image.get(at..at + 5) {
        let Some(head) = image.get_mut(at..at + 9) else { break };
        let head_crc = castagnoli.checksum(&head[..5]);
        head[5..].copy_from_slice(&head_crc.to_le_bytes());
        let len = u32::from_le_bytes([a, b, c, d]) as usize;
        let body_end = at + 9 + len;
        let Some(end) = body_end.checked_add(4).filter(|&e| e <= image.len()) else { break };
        if kind == 0x04 && len >= 32 {
            let digest: [u8; 32] = sha.clone().finalize().into();
            image[body_end - 32..body_end].copy_from_slice(&digest);
        }
        let crc = castagnoli.checksum(&image[at + 9..body_end]);
        image[body_end..end].copy_from_slice(&crc.to_le_bytes());
        if kind != 0x04 {
            sha.update(&image[at..end]);
        }
        at = end;
    }
}
