//! Images no snapply node makes: every frame valid and the trailer's SHA-256 wrong (only the
//! digest check refuses them, docs/format.md, "Trailer"), or a leader's backend holding a record
//! its node refuses to write (an etcd leader does write it).

use snapply_core::backend::{Backend, Bucket, ReadTxn as _, WriteTxn as _};
use snapply_core::collections::Profile;
use snapply_core::{Node, SnapshotMetadata, image, store};

/// CRC-32C (Castagnoli, reflected polynomial `0x82F63B78`), bit by bit: the frames' checksum.
fn crc32c(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0x82F6_3B78 } else { crc >> 1 };
        }
    }
    !crc
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("four bytes"))
}

/// `image` with its trailer's SHA-256 replaced by `sha256` and the trailer frame's CRC made
/// right again. The trailer is the last frame (kind `0x04`, a payload of at most 52 bytes that
/// ends with the 32-byte digest), followed by nothing.
///
/// # Panics
/// If `image` does not end with a trailer frame.
pub fn with_trailer_digest(image: &[u8], sha256: [u8; 32]) -> Vec<u8> {
    let n = image.len();
    let start = (34..=52usize)
        .filter_map(|len| n.checked_sub(13 + len))
        .find(|&at| {
            image[at] == 0x04
                && u32_at(image, at + 1) as usize == n - 13 - at
                && crc32c(&image[at..at + 5]) == u32_at(image, at + 5)
                && crc32c(&image[at + 9..n - 4]) == u32_at(image, n - 4)
        })
        .expect("the image ends with a trailer frame");
    let mut out = image.to_vec();
    out[n - 36..n - 4].copy_from_slice(&sha256);
    let crc = crc32c(&out[start + 9..n - 4]);
    out[n - 4..].copy_from_slice(&crc.to_le_bytes());
    out
}

/// The SHA-256 `image`'s trailer holds.
pub fn trailer_digest(image: &[u8]) -> [u8; 32] {
    image[image.len() - 36..image.len() - 4].try_into().expect("32 bytes")
}

/// `image` with one bit of its trailer's SHA-256 flipped, every frame still valid.
pub fn with_wrong_digest(image: &[u8]) -> Vec<u8> {
    let mut sha256 = trailer_digest(image);
    sha256[0] ^= 1;
    with_trailer_digest(image, sha256)
}

/// A member record, in the layout of docs/records.md (postcard, fields in this order).
#[derive(serde::Serialize, serde::Deserialize)]
struct MemberRecord {
    id: u64,
    name: Vec<u8>,
    peer_urls: Vec<Vec<u8>>,
    client_urls: Vec<Vec<u8>>,
    is_learner: bool,
}

/// `leader`'s snapshot at its applied index, with member `id`'s record holding `peer_urls`
/// instead of its own. A node refuses a member with more peer URLs than the transport takes
/// (`store::check_peer_urls`); an etcd leader makes one, so its snapshot is forged here.
///
/// # Panics
/// If `leader` has no member `id`, or its record is not in the layout above (the layout is
/// checked by re-encoding the stored record), or the leader's backend fails.
pub fn snapshot_with_peer_urls<B: Backend + Clone, P: Profile>(
    leader: &Node<B, P>,
    id: u64,
    peer_urls: &[&[u8]],
) -> (SnapshotMetadata, Vec<u8>) {
    let key = store::member_key(id);
    let mut stored = None;
    leader.backend().read().expect("read").get(Bucket::Members, &key, &mut |v| stored = Some(v.to_vec())).expect("get");
    let stored = stored.expect("the leader has the member");
    let mut record: MemberRecord = postcard::from_bytes(&stored).expect("a member record");
    assert_eq!(postcard::to_allocvec(&record).expect("encode"), stored, "the record layout is the store's");
    record.peer_urls = peer_urls.iter().map(|u| u.to_vec()).collect();
    let mut backend = leader.backend().clone();
    let mut txn = backend.write().expect("write");
    txn.put(Bucket::Members, &key, &postcard::to_allocvec(&record).expect("encode")).expect("put");
    txn.commit().expect("commit");
    let metadata = leader.snapshot_metadata().expect("metadata");
    let mut v2 = Vec::new();
    leader.v2_snapshot_data(&mut v2).expect("v2");
    let mut out = Vec::new();
    image::encode(&metadata, &backend.read().expect("read"), &v2, &mut out).expect("encode");
    (metadata, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_check_value() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn a_forged_trailer_passes_every_frame_check_and_fails_the_digest() {
        let (_, image) = crate::snapshot(&crate::sample_leader());
        let forged = with_wrong_digest(&image);
        assert_ne!(forged, image);
        let mut buf = vec![0u8; 1 << 16];
        let err = snapply_core::image::verify(forged.as_slice(), &mut buf).expect_err("the digest is wrong");
        assert!(
            matches!(
                err,
                snapply_core::image::DecodeError::Corrupt { what: snapply_core::image::Corruption::DigestMismatch, .. }
            ),
            "{err:?}"
        );
        // Put back, it verifies: only the digest was changed.
        assert_eq!(with_trailer_digest(&forged, trailer_digest(&image)), image);
    }
}
