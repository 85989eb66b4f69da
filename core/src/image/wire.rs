//! The byte layout shared by the encoder and the decoder: preamble, frame heads, frame kinds,
//! payload types, the CRC and the varints. `docs/format.md` is the normative description; the
//! tests at the end of this file tie the hand-written encodings to postcard's.

use serde::{Deserialize, Serialize};

use super::{MAX_KEY_LEN, MAX_METADATA_LEN, MAX_VALUE_LEN, V2_CHUNK_LEN};
use crate::raft::SnapshotMetadata;

/// Length of the preamble: magic (8), version (2), flags (2).
pub(crate) const PREAMBLE_LEN: usize = 12;
/// Length of the part of a frame head its own CRC covers: kind (1), payload length (4).
pub(crate) const HEAD_FIELDS: usize = 5;
/// Length of a frame head: kind (1), payload length (4), CRC-32C of those five bytes (4).
pub(crate) const FRAME_HEAD: usize = HEAD_FIELDS + 4;
/// Length of a frame's payload CRC-32C, after the payload.
pub(crate) const FRAME_CRC: usize = 4;

/// The kinds of frame of a version 2 image. Kinds are never reused: a retired kind stays
/// reserved. `0x00` and `0xFF` are never valid, so zeroed memory and erased NOR flash do not
/// parse as frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Kind {
    /// Snapshot metadata.
    Header = 0x01,
    /// One backend record.
    Record = 0x02,
    /// One chunk of the v2 data.
    V2 = 0x03,
    /// Counts and the SHA-256 of everything before it.
    Trailer = 0x04,
}

impl Kind {
    pub(crate) const fn from_u8(kind: u8) -> Option<Kind> {
        Some(match kind {
            0x01 => Kind::Header,
            0x02 => Kind::Record,
            0x03 => Kind::V2,
            0x04 => Kind::Trailer,
            _ => return None,
        })
    }

    /// The largest payload a frame of this kind may declare; checked before the payload is read.
    pub(crate) const fn max_payload(self) -> usize {
        match self {
            Kind::Header => MAX_METADATA_LEN,
            Kind::Record => MAX_RECORD_PAYLOAD,
            Kind::V2 => MAX_V2_PAYLOAD,
            Kind::Trailer => MAX_TRAILER_PAYLOAD,
        }
    }
}

/// The name of a frame kind byte, for messages.
pub(crate) const fn kind_name(kind: u8) -> &'static str {
    match Kind::from_u8(kind) {
        Some(Kind::Header) => "header",
        Some(Kind::Record) => "record",
        Some(Kind::V2) => "v2 chunk",
        Some(Kind::Trailer) => "trailer",
        None => "unknown",
    }
}

/// Number of bytes of the postcard varint (LEB128) of `n`.
pub(crate) const fn varint_len(n: u64) -> usize {
    let mut len = 1;
    let mut rest = n >> 7;
    while rest != 0 {
        len += 1;
        rest >>= 7;
    }
    len
}

/// Length of the payload of a record with a key of `key_len` and a value of `value_len` bytes:
/// bucket id, key length, key, value length, value. Saturates instead of overflowing, so a
/// caller's absurd lengths give `usize::MAX`, never a panic or a wrapped small number.
pub(crate) const fn record_payload_len(key_len: usize, value_len: usize) -> usize {
    let key = varint_len(key_len as u64).saturating_add(key_len);
    let value = varint_len(value_len as u64).saturating_add(value_len);
    key.saturating_add(value).saturating_add(1)
}

/// Largest record payload: that of the longest key with the longest value.
pub(crate) const MAX_RECORD_PAYLOAD: usize = record_payload_len(MAX_KEY_LEN, MAX_VALUE_LEN);
/// Largest v2 chunk payload: the chunk's bytes, nothing else (the frame's length is the
/// chunk's).
pub(crate) const MAX_V2_PAYLOAD: usize = V2_CHUNK_LEN;
/// Largest trailer payload: two u64 varints and the digest.
pub(crate) const MAX_TRAILER_PAYLOAD: usize = 2 * varint_len(u64::MAX) + 32;

// A payload length is a `u32` on the wire: every kind's limit must be one.
const _: () = assert!(MAX_RECORD_PAYLOAD <= u32::MAX as usize);
const _: () = assert!(MAX_METADATA_LEN <= u32::MAX as usize && MAX_V2_PAYLOAD <= MAX_METADATA_LEN);

/// Why a record's key or value cannot be in an image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RecordLimit {
    /// The key is longer than [`MAX_KEY_LEN`].
    Key,
    /// The value is longer than [`MAX_VALUE_LEN`].
    Value,
}

/// Checks a record's key and value lengths against the format's limits: the one check the
/// encoder and the decoder share.
pub(crate) const fn check_record_lens(key_len: usize, value_len: usize) -> Result<(), RecordLimit> {
    if key_len > MAX_KEY_LEN {
        return Err(RecordLimit::Key);
    }
    if value_len > MAX_VALUE_LEN {
        return Err(RecordLimit::Value);
    }
    Ok(())
}

/// A postcard varint, encoded on the stack.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Varint {
    bytes: [u8; 10],
    len: usize,
}

impl Varint {
    pub(crate) fn new(n: u64) -> Self {
        let mut bytes = [0u8; 10];
        let mut rest = n;
        let mut len = 0;
        for slot in bytes.iter_mut() {
            len += 1;
            // Truncation to the low seven bits is the encoding.
            let low = (rest & 0x7F) as u8;
            rest >>= 7;
            if rest == 0 {
                *slot = low;
                break;
            }
            *slot = low | 0x80;
        }
        Varint { bytes, len }
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        // `len` is at most 10 by construction; `get` keeps this free of a panic path anyway.
        self.bytes.get(..self.len).unwrap_or(&self.bytes)
    }
}

/// The frame head of a frame of `kind` with a payload of `len` bytes: kind, length, and the
/// CRC-32C of those five bytes.
pub(crate) fn frame_head(kind: Kind, len: u32) -> [u8; FRAME_HEAD] {
    let [a, b, c, d] = len.to_le_bytes();
    let fields = [kind as u8, a, b, c, d];
    let [e, f, g, h] = crc32c(&[&fields]).to_le_bytes();
    [kind as u8, a, b, c, d, e, f, g, h]
}

/// CRC-32C (Castagnoli, iSCSI polynomial, reflected, init and xorout `0xFFFF_FFFF`), computed
/// incrementally.
///
/// On hosts (feature `std`) the `crc32c` crate computes it with the CPU's CRC instructions
/// (SSE4.2 `crc32`, ARMv8 `crc32c*`) when the CPU has them, several times the speed of any table;
/// it needs `std` to detect the CPU, so `no_std` builds use the `crc` crate's tables instead:
/// slice-by-16 (16 KiB) where flash is plentiful, the 1 KiB byte table on bare metal, where flash
/// is scarce and the software SHA-256 bounds decoding anyway. Both give the same checksum (a
/// test pins the check value).
#[derive(Clone)]
pub(crate) struct Crc32c {
    #[cfg(feature = "std")]
    state: u32,
    #[cfg(not(feature = "std"))]
    state: crc::Digest<'static, u32, CrcTable>,
}

#[cfg(all(not(feature = "std"), not(target_os = "none")))]
type CrcTable = crc::Table<16>;
#[cfg(all(not(feature = "std"), target_os = "none"))]
type CrcTable = crc::Table<1>;

#[cfg(not(feature = "std"))]
static CASTAGNOLI: crc::Crc<u32, CrcTable> = crc::Crc::<u32, CrcTable>::new(&crc::CRC_32_ISCSI);

impl Crc32c {
    pub(crate) fn new() -> Self {
        #[cfg(feature = "std")]
        return Crc32c { state: 0 };
        #[cfg(not(feature = "std"))]
        return Crc32c { state: CASTAGNOLI.digest() };
    }

    pub(crate) fn update(&mut self, bytes: &[u8]) {
        #[cfg(feature = "std")]
        {
            self.state = ::crc32c::crc32c_append(self.state, bytes);
        }
        #[cfg(not(feature = "std"))]
        self.state.update(bytes);
    }

    pub(crate) fn finish(self) -> u32 {
        #[cfg(feature = "std")]
        return self.state;
        #[cfg(not(feature = "std"))]
        return self.state.finalize();
    }
}

/// The CRC-32C of the concatenation of `parts`.
pub(crate) fn crc32c(parts: &[&[u8]]) -> u32 {
    let mut crc = Crc32c::new();
    for part in parts {
        crc.update(part);
    }
    crc.finish()
}

/// Payload of a record frame: postcard of `(u8, &[u8], &[u8])`.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RecordWire<'a> {
    pub(crate) bucket: u8,
    #[serde(borrow)]
    pub(crate) key: &'a [u8],
    #[serde(borrow)]
    pub(crate) value: &'a [u8],
}

impl RecordWire<'_> {
    /// Length of the canonical (shortest) postcard encoding of this record.
    pub(crate) fn canonical_len(&self) -> usize {
        bytes_len(self.key).saturating_add(bytes_len(self.value)).saturating_add(1)
    }
}

/// Length of the canonical postcard encoding of a byte string: varint length, bytes.
pub(crate) fn bytes_len(bytes: &[u8]) -> usize {
    varint_len(bytes.len() as u64).saturating_add(bytes.len())
}

/// Payload of the trailer frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct TrailerWire {
    pub(crate) records: u64,
    pub(crate) v2_len: u64,
    pub(crate) sha256: [u8; 32],
}

/// Reads a header payload, the canonical postcard encoding of a [`SnapshotMetadata`] and
/// nothing after it, into `out`; returns whether `bytes` is exactly that. On `false`, `out`
/// holds a partial value: do not use it.
///
/// Hand-written over postcard's wire format (docs/format.md, "Header") because postcard's
/// serde path builds the value in frames of its own and returns it by value: on a device, the
/// 568-byte metadata then lived in four nested frames at once (about 3.8 KiB of stack, the
/// deepest part of a restore), where this writes it in place. It accepts exactly what
/// `postcard::take_from_bytes` followed by [`is_canonical`] accepts: varints must be minimal
/// and fit a `u64` (postcard's own limit on the tenth byte), a list holds at most
/// [`MAX_CONF_IDS`](crate::raft::MAX_CONF_IDS) ids, the flag is `0` or `1`, and no byte is
/// left over (the tests below check both ways against postcard).
pub(crate) fn read_metadata_into(bytes: &[u8], out: &mut SnapshotMetadata) -> bool {
    let mut r = Reader(bytes);
    let ok = (|| {
        out.index = r.varint()?;
        out.term = r.varint()?;
        let c = &mut out.conf_state;
        for list in [&mut c.voters, &mut c.learners, &mut c.voters_outgoing, &mut c.learners_next] {
            list.clear();
            let n = r.varint()?;
            for _ in 0..n {
                list.push(r.varint()?).ok()?;
            }
        }
        c.auto_leave = match r.byte()? {
            0 => false,
            1 => true,
            _ => return None,
        };
        Some(())
    })();
    ok.is_some() && r.0.is_empty()
}

/// The unread part of a payload.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    /// A minimal (canonical) LEB128 varint of at most ten bytes that fits a `u64`.
    fn varint(&mut self) -> Option<u64> {
        let mut out = 0u64;
        for i in 0..10u32 {
            let b = self.byte()?;
            out |= u64::from(b & 0x7F) << (7 * i);
            if b & 0x80 == 0 {
                // A zero last byte after the first is an over-long encoding; the tenth byte
                // holds the 64th bit only.
                let minimal = i == 0 || b != 0;
                return (minimal && (i < 9 || b <= 1)).then_some(out);
            }
        }
        None
    }
}

/// Whether `payload` is exactly the canonical postcard encoding of `value`, given that
/// `value` was decoded from `payload` leaving `rest` unread.
///
/// postcard accepts over-long varints (`0x80 0x00` for 0); an image must not contain any, so
/// that one content has exactly one image. Every over-long varint makes the encoding longer
/// than postcard's own, so "nothing left over and the length equals postcard's" is exactly
/// "canonical".
pub(crate) fn is_canonical<T: Serialize + ?Sized>(value: &T, payload: &[u8], rest: &[u8]) -> bool {
    rest.is_empty()
        && postcard::serialize_with_flavor::<T, _, usize>(value, postcard::ser_flavors::Size::default())
            .is_ok_and(|n| n == payload.len())
}

#[cfg(test)]
pub(super) mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use proptest::prelude::*;

    use super::*;
    use crate::raft::{ConfState, IdList, MAX_CONF_IDS, SnapshotMetadata};

    #[test]
    fn limits_are_what_the_spec_says() {
        // bbolt's `MaxValueSize`, the largest value etcd's backend can hold.
        assert_eq!(MAX_VALUE_LEN, (1 << 31) - 2);
        assert_eq!(MAX_RECORD_PAYLOAD, 2_147_484_678);
        assert_eq!(MAX_V2_PAYLOAD, 1_024);
        assert_eq!(MAX_TRAILER_PAYLOAD, 52);
        assert_eq!(super::super::MAX_FRAME_LEN, MAX_RECORD_PAYLOAD);
        assert_eq!(super::super::FRAME_OVERHEAD, 13);
        assert_eq!(super::super::BASE_BUFFER, 1_024);
        assert_eq!(super::super::MIN_BUFFER, 66_566);
        assert_eq!(record_payload_len(17, 1_572_864), 1 + 1 + 17 + 3 + 1_572_864);
        assert_eq!(record_payload_len(usize::MAX, 1), usize::MAX);
    }

    #[test]
    fn record_limits_are_checked_in_one_place() {
        assert_eq!(check_record_lens(MAX_KEY_LEN, MAX_VALUE_LEN), Ok(()));
        assert_eq!(check_record_lens(0, 0), Ok(()));
        assert_eq!(check_record_lens(MAX_KEY_LEN + 1, 0), Err(RecordLimit::Key));
        assert_eq!(check_record_lens(MAX_KEY_LEN + 1, MAX_VALUE_LEN + 1), Err(RecordLimit::Key));
        assert_eq!(check_record_lens(0, MAX_VALUE_LEN + 1), Err(RecordLimit::Value));
        assert_eq!(check_record_lens(0, usize::MAX), Err(RecordLimit::Value));
    }

    #[test]
    fn a_frame_head_carries_the_crc_of_its_kind_and_length() {
        let head = frame_head(Kind::Record, 0x0102_0304);
        assert_eq!(head[..5], [0x02, 0x04, 0x03, 0x02, 0x01]);
        assert_eq!(head[5..], crc32c(&[&head[..5]]).to_le_bytes());
    }

    #[test]
    fn the_largest_metadata_fits_its_limit() {
        let full = || {
            let mut ids = IdList::new();
            for _ in 0..MAX_CONF_IDS {
                ids.push(u64::MAX).unwrap();
            }
            ids
        };
        let worst = SnapshotMetadata {
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
        let size = postcard::to_slice(&worst, &mut [0u8; 2048]).unwrap().len();
        assert_eq!(size, 665);
        assert!(size <= MAX_METADATA_LEN);
    }

    #[test]
    fn crc_is_castagnoli() {
        // The standard check value of CRC-32C ("123456789").
        assert_eq!(crc32c(&[b"123456789"]), 0xE306_9283);
        assert_eq!(crc32c(&[b"1234", b"", b"56789"]), 0xE306_9283);
    }

    #[test]
    fn kinds_round_trip_and_reserve_zero_and_erased() {
        for kind in [Kind::Header, Kind::Record, Kind::V2, Kind::Trailer] {
            assert_eq!(Kind::from_u8(kind as u8), Some(kind));
        }
        assert_eq!(Kind::from_u8(0x00), None);
        assert_eq!(Kind::from_u8(0xFF), None);
    }

    /// What the serde path accepted before the hand-written reader: postcard, then canonical.
    fn postcard_metadata(bytes: &[u8]) -> Option<SnapshotMetadata> {
        let (m, rest) = postcard::take_from_bytes::<SnapshotMetadata>(bytes).ok()?;
        is_canonical(&m, bytes, rest).then_some(m)
    }

    fn ids() -> impl Strategy<Value = IdList> {
        proptest::collection::vec(prop_oneof![0..300u64, any::<u64>()], 0..=MAX_CONF_IDS)
            .prop_map(|v| v.into_iter().collect())
    }

    /// Metadata of every shape: small and large ids, empty and full lists (also used by the
    /// image's property tests).
    pub(in crate::image) fn metadata() -> impl Strategy<Value = SnapshotMetadata> {
        (any::<u64>(), any::<u64>(), ids(), ids(), ids(), ids(), any::<bool>()).prop_map(
            |(index, term, voters, learners, voters_outgoing, learners_next, auto_leave)| SnapshotMetadata {
                index,
                term,
                conf_state: ConfState { voters, learners, voters_outgoing, learners_next, auto_leave },
            },
        )
    }

    #[test]
    fn metadata_reader_refuses_what_postcard_refuses() {
        let mut out = SnapshotMetadata::default();
        // Over-long zero, an eleventh varint byte, a 65th bit, 17 voters, a flag of 2, a byte
        // too many, a truncated payload.
        let mut seventeen = vec![1, 1, 17];
        seventeen.extend([1; 17]);
        seventeen.extend([0, 0, 0, 0]);
        let cases: [&[u8]; 7] = [
            &[0x80, 0x00, 1, 0, 0, 0, 0, 0],
            &[0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x81, 0x00, 1, 0, 0, 0, 0, 0],
            &[0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x02, 1, 0, 0, 0, 0, 0],
            &seventeen,
            &[1, 1, 0, 0, 0, 0, 2],
            &[1, 1, 0, 0, 0, 0, 1, 0],
            &[1, 1, 1],
        ];
        for case in cases {
            assert!(!read_metadata_into(case, &mut out), "{case:02x?}");
            assert_eq!(postcard_metadata(case), None, "{case:02x?}");
        }
        let max = [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01, 0, 0, 0, 0, 0, 1];
        assert!(read_metadata_into(&max, &mut out));
        assert_eq!((out.index, out.term, out.conf_state.auto_leave), (u64::MAX, 0, true));
    }

    proptest! {
        #[test]
        fn metadata_reader_reads_what_postcard_writes(m in metadata()) {
            let mut buf = [0u8; MAX_METADATA_LEN];
            let bytes = postcard::to_slice(&m, &mut buf).unwrap();
            // A slot that held another metadata is overwritten whole.
            let mut out = SnapshotMetadata { index: 7, conf_state: ConfState { voters: [9].into_iter().collect(), ..Default::default() }, ..Default::default() };
            prop_assert!(read_metadata_into(bytes, &mut out));
            prop_assert_eq!(out, m);
        }

        #[test]
        fn metadata_reader_agrees_with_postcard_on_any_bytes(
            bytes in proptest::collection::vec(prop_oneof![0..3u8, 0x7F..0x82u8, any::<u8>()], 0..40),
        ) {
            let mut out = SnapshotMetadata::default();
            let ours = read_metadata_into(&bytes, &mut out).then_some(out);
            prop_assert_eq!(ours, postcard_metadata(&bytes));
        }

        #[test]
        fn varint_matches_postcard(n in any::<u64>()) {
            let mut buf = [0u8; 16];
            let expected = postcard::to_slice(&n, &mut buf).unwrap();
            let ours = Varint::new(n);
            prop_assert_eq!(ours.as_bytes(), &*expected);
            prop_assert_eq!(varint_len(n), expected.len());
        }

        #[test]
        fn record_layout_matches_postcard(
            bucket in any::<u8>(),
            key in proptest::collection::vec(any::<u8>(), 0..300),
            value in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let record = RecordWire { bucket, key: &key, value: &value };
            let mut buf = [0u8; 1024];
            let expected = postcard::to_slice(&record, &mut buf).unwrap();
            // The encoder writes these pieces one after the other.
            let mut ours = std::vec::Vec::new();
            ours.push(bucket);
            ours.extend_from_slice(Varint::new(key.len() as u64).as_bytes());
            ours.extend_from_slice(&key);
            ours.extend_from_slice(Varint::new(value.len() as u64).as_bytes());
            ours.extend_from_slice(&value);
            prop_assert_eq!(&ours[..], &*expected);
            prop_assert_eq!(record.canonical_len(), expected.len());
            let (back, rest) = postcard::take_from_bytes::<RecordWire<'_>>(expected).unwrap();
            prop_assert_eq!(back, record);
            prop_assert!(rest.is_empty());
        }
    }

    #[test]
    fn overlong_varints_are_not_canonical() {
        // Key length 1 written as `0x81 0x00` instead of `0x01`.
        let payload = [0x00, 0x81, 0x00, b'k', 0x00];
        let (record, rest) = postcard::take_from_bytes::<RecordWire<'_>>(&payload).unwrap();
        assert_eq!(record.key, b"k");
        assert!(!is_canonical(&record, &payload, rest));
        let canonical = [0x00, 0x01, b'k', 0x00];
        let (record, rest) = postcard::take_from_bytes::<RecordWire<'_>>(&canonical).unwrap();
        assert!(is_canonical(&record, &canonical, rest));
    }
}
