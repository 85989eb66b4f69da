//! Images damaged where the frame checksums cannot see it: every frame valid, the trailer's
//! SHA-256 wrong. Only the digest check refuses them (docs/format.md, "Trailer").

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
