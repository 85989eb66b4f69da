//! The `.snap` file: a persisted snapshot's metadata, image digest and v2 data (FORMAT.md).

use serde::{Deserialize, Serialize};
use snapply_core::SnapshotMetadata;

/// The first eight bytes of a `.snap` file.
pub(crate) const MAGIC: [u8; 8] = *b"SNAPPLYM";
/// The `.snap` format version this crate writes and reads.
pub(crate) const VERSION: u16 = 1;
/// Bytes before the body: magic, version, flags, body length.
const HEAD: usize = 16;
/// Bytes after the body: the CRC-32C.
const TAIL: usize = 4;

/// What a `.snap` file holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapInfo {
    /// The snapshot's metadata.
    pub metadata: SnapshotMetadata,
    /// SHA-256 of the snapshot image (its trailer's digest, see docs/format.md).
    pub image_sha256: [u8; 32],
    /// Number of backend records the image held.
    pub records: u64,
    /// The snapshot's v2 store data.
    pub v2: Vec<u8>,
}

/// The body as postcard encodes it. Fields are never removed; new ones bump [`VERSION`].
#[derive(Serialize, Deserialize)]
struct Body<'a> {
    metadata: SnapshotMetadata,
    image_sha256: [u8; 32],
    records: u64,
    #[serde(borrow)]
    v2: &'a [u8],
}

/// Encodes `info` as a `.snap` file.
pub(crate) fn encode(info: &SnapInfo) -> Result<Vec<u8>, &'static str> {
    let body =
        Body { metadata: info.metadata.clone(), image_sha256: info.image_sha256, records: info.records, v2: &info.v2 };
    let body = postcard::to_allocvec(&body).map_err(|_| "encoding the snapshot file's body")?;
    let len = u32::try_from(body.len()).map_err(|_| "the snapshot file's body is over 4 GiB")?;
    let mut out = Vec::with_capacity(HEAD + body.len() + TAIL);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&body);
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    Ok(out)
}

/// Decodes a `.snap` file; the error says what is wrong with it.
pub(crate) fn decode(bytes: &[u8]) -> Result<SnapInfo, &'static str> {
    let (head, rest) = bytes.split_at_checked(HEAD).ok_or("shorter than its header")?;
    let (magic, head) = head.split_at_checked(8).ok_or("shorter than its header")?;
    if magic != MAGIC {
        return Err("bad magic: not a snapply snapshot file");
    }
    let field = |at: usize, len: usize| head.get(at..at + len).ok_or("truncated header");
    let version = u16::from_le_bytes(field(0, 2)?.try_into().map_err(|_| "truncated header")?);
    let flags = u16::from_le_bytes(field(2, 2)?.try_into().map_err(|_| "truncated header")?);
    let len = u32::from_le_bytes(field(4, 4)?.try_into().map_err(|_| "truncated header")?);
    // The checksum is checked before any field is trusted beyond the magic: a torn or flipped
    // file is reported as such, not as an odd version.
    let body_len = usize::try_from(len).map_err(|_| "body length does not fit this machine")?;
    if rest.len() != body_len.checked_add(TAIL).ok_or("body length overflows")? {
        return Err("length does not match the header's body length (torn or truncated)");
    }
    let (body, crc) = rest.split_at(body_len);
    let stored = u32::from_le_bytes(crc.try_into().map_err(|_| "truncated checksum")?);
    let covered = bytes.get(..HEAD + body_len).ok_or("truncated body")?;
    if crc32c::crc32c(covered) != stored {
        return Err("CRC-32C mismatch");
    }
    if version != VERSION {
        return Err("unsupported format version");
    }
    if flags != 0 {
        return Err("unknown flags");
    }
    let (body, tail) = postcard::take_from_bytes::<Body<'_>>(body).map_err(|_| "body does not decode")?;
    if !tail.is_empty() {
        return Err("bytes after the body");
    }
    Ok(SnapInfo {
        metadata: body.metadata,
        image_sha256: body.image_sha256,
        records: body.records,
        v2: body.v2.to_vec(),
    })
}

/// The file name etcd gives a snapshot: `<term>-<index>.snap`, 16 hex digits each.
pub(crate) fn snap_name(term: u64, index: u64) -> String {
    format!("{term:016x}-{index:016x}.snap")
}

/// The file name of a snapshot's backend: `<index>.snap.db` (etcd's `snap.DBFilePath`).
pub(crate) fn db_name(index: u64) -> String {
    format!("{index:016x}.snap.db")
}

/// `(term, index)` of a `<term>-<index>.snap` file name.
pub(crate) fn parse_snap_name(name: &str) -> Option<(u64, u64)> {
    let (term, index) = name.strip_suffix(".snap")?.split_once('-')?;
    if term.len() != 16 || index.len() != 16 {
        return None;
    }
    Some((u64::from_str_radix(term, 16).ok()?, u64::from_str_radix(index, 16).ok()?))
}

/// The index of a `<index>.snap.db` file name.
pub(crate) fn parse_db_name(name: &str) -> Option<u64> {
    let index = name.strip_suffix(".snap.db")?;
    if index.len() != 16 {
        return None;
    }
    u64::from_str_radix(index, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use snapply_core::ConfState;

    fn info() -> SnapInfo {
        let mut conf = ConfState::default();
        conf.voters.push(1).unwrap();
        conf.learners.push(4).unwrap();
        SnapInfo {
            metadata: SnapshotMetadata { index: 0x1234, term: 7, conf_state: conf },
            image_sha256: [0xab; 32],
            records: 42,
            v2: b"v2 store".to_vec(),
        }
    }

    #[test]
    fn round_trips() {
        let bytes = encode(&info()).unwrap();
        assert_eq!(decode(&bytes).unwrap(), info());
    }

    /// The layout FORMAT.md documents, byte for byte.
    #[test]
    fn layout_is_the_documented_one() {
        let bytes = encode(&info()).unwrap();
        assert_eq!(&bytes[..8], b"SNAPPLYM");
        assert_eq!(&bytes[8..12], &[1, 0, 0, 0]);
        let len = u32::from_le_bytes(bytes[12..16].try_into().unwrap()) as usize;
        assert_eq!(bytes.len(), 16 + len + 4);
        // Body: metadata (index and term as varints, the conf state's lists), digest, records, v2.
        assert_eq!(&bytes[16..19], &[0xb4, 0x24, 7]);
        let crc = crc32c::crc32c(&bytes[..16 + len]);
        assert_eq!(&bytes[16 + len..], &crc.to_le_bytes());
        assert!(bytes.ends_with(&[&b"v2 store"[..], &crc.to_le_bytes()].concat()));
    }

    #[test]
    fn every_flipped_bit_and_every_truncation_is_refused() {
        let bytes = encode(&info()).unwrap();
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut bad = bytes.clone();
                bad[i] ^= 1 << bit;
                assert!(decode(&bad).is_err(), "byte {i} bit {bit}");
            }
        }
        for len in 0..bytes.len() {
            assert!(decode(&bytes[..len]).is_err(), "truncated to {len}");
        }
    }

    #[test]
    fn names_are_etcds() {
        assert_eq!(snap_name(2, 0x10), "0000000000000002-0000000000000010.snap");
        assert_eq!(db_name(0x10), "0000000000000010.snap.db");
        assert_eq!(parse_snap_name("0000000000000002-0000000000000010.snap"), Some((2, 0x10)));
        assert_eq!(parse_db_name("0000000000000010.snap.db"), Some(0x10));
        assert_eq!(parse_snap_name("2-10.snap"), None);
        assert_eq!(parse_snap_name("0000000000000002-0000000000000010.snap.broken"), None);
        assert_eq!(parse_db_name("0000000000000010.snap.db.tmp"), None);
    }
}
