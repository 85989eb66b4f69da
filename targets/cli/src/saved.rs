//! The file `etcdctl snapshot save` writes from a snapply member: what `Maintenance.Snapshot`
//! streams (the member's snapshot image, then padding and the image's length), followed by the
//! SHA-256 of all of it, which etcd's server appends as the stream's last message.
//!
//! ```text
//! image | zero bytes | image length (u64, big-endian) | SHA-256 of everything before (32 bytes)
//! ```
//!
//! The zero bytes make everything before the digest a multiple of 512 bytes, as an etcd
//! database is (a multiple of its page size): etcdctl and etcdutl take a file for one with a
//! digest only if its length is 32 past a multiple of 512 (`hasChecksum`). The image's length
//! says where the image ends, so a reader hands the decoder the image alone and checks the
//! digest once it has read it. Everything here is the one owner of that layout: the server
//! writes the tail with [`Tail`], the commands read such a file through [`detect`] and
//! [`Check`].

use sha2::{Digest as _, Sha256};

/// What everything before the digest is a multiple of (etcd's `hasChecksum`: 512, "a minimum
/// disk sector size").
const ALIGN: u64 = 512;
/// Bytes of the image length field.
const LEN_BYTES: u64 = 8;
/// Bytes of the digest.
const DIGEST_BYTES: u64 = 32;

/// The zero bytes after an image of `image_len` bytes: as many as make the image, the padding
/// and the length field a multiple of [`ALIGN`].
fn padding(image_len: u64) -> u64 {
    (ALIGN - (image_len.wrapping_add(LEN_BYTES)) % ALIGN) % ALIGN
}

/// The bytes between the image and the digest: the padding and the image's length.
fn tail_body(image_len: u64) -> Vec<u8> {
    let pad = usize::try_from(padding(image_len)).unwrap_or_default();
    let mut body = vec![0u8; pad];
    body.extend_from_slice(&image_len.to_be_bytes());
    body
}

/// The server's side: hashes the image as it is sent, then gives what follows it.
#[derive(Default)]
pub struct Tail {
    sha: Sha256,
    image_len: u64,
}

impl Tail {
    /// Counts and hashes the next bytes of the image.
    pub fn image(&mut self, bytes: &[u8]) {
        self.sha.update(bytes);
        self.image_len = self.image_len.saturating_add(bytes.len() as u64);
    }

    /// The image's length so far.
    pub fn image_len(&self) -> u64 {
        self.image_len
    }

    /// The padding and length to send after the image, and the digest to send last.
    pub fn finish(mut self) -> (Vec<u8>, [u8; 32]) {
        let body = tail_body(self.image_len);
        self.sha.update(&body);
        (body, self.sha.finalize().into())
    }
}

/// A saved snapshot's layout, as [`detect`] found it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Saved {
    /// Bytes of the image at the start of the file.
    pub image_len: u64,
    digest: [u8; 32],
}

/// Reads `n` bytes at `offset`.
fn read_at(file: &std::fs::File, offset: u64, n: u64) -> std::io::Result<Vec<u8>> {
    use std::io::{Read as _, Seek as _, SeekFrom};
    let mut file = file;
    file.seek(SeekFrom::Start(offset))?;
    let mut out = vec![0u8; usize::try_from(n).unwrap_or_default()];
    file.read_exact(&mut out)?;
    Ok(out)
}

/// Whether `file` (of `len` bytes) is a saved snapshot: its length is 32 past a multiple of 512,
/// and the image length before the digest leaves only zero bytes (fewer than 512) between the
/// image and itself. The digest is checked by [`Check`] as the image is read. Leaves the
/// file's position anywhere: rewind it.
///
/// # Errors
/// The file could not be read.
pub fn detect(file: &std::fs::File, len: u64) -> std::io::Result<Option<Saved>> {
    if len < LEN_BYTES + DIGEST_BYTES || len % ALIGN != DIGEST_BYTES {
        return Ok(None);
    }
    let body = len - DIGEST_BYTES;
    let end = read_at(file, body - LEN_BYTES, LEN_BYTES + DIGEST_BYTES)?;
    let (Some(image_len), Some(digest)) =
        (end.first_chunk::<8>().copied().map(u64::from_be_bytes), end.last_chunk::<32>().copied())
    else {
        return Ok(None);
    };
    if image_len > body - LEN_BYTES || padding(image_len) != body - LEN_BYTES - image_len {
        return Ok(None);
    }
    let pad = read_at(file, image_len, padding(image_len))?;
    if pad.iter().any(|&b| b != 0) {
        return Ok(None);
    }
    Ok(Some(Saved { image_len, digest }))
}

/// The reader's side: hashes the image as it is read and, at its end, checks the digest.
pub struct Check {
    saved: Saved,
    sha: Sha256,
    read: u64,
    checked: bool,
}

impl Check {
    pub fn new(saved: Saved) -> Self {
        Check { saved, sha: Sha256::new(), read: 0, checked: false }
    }

    /// How many of the next `want` bytes belong to the image.
    pub fn allowed(&self, want: usize) -> usize {
        let left = self.saved.image_len.saturating_sub(self.read);
        usize::try_from(left).map_or(want, |left| left.min(want))
    }

    /// Hashes bytes of the image just read.
    pub fn read(&mut self, bytes: &[u8]) {
        self.sha.update(bytes);
        self.read = self.read.saturating_add(bytes.len() as u64);
    }

    /// Called when the image is read to its end: checks the digest (once).
    ///
    /// # Errors
    /// [`std::io::ErrorKind::InvalidData`] if the digest does not match: the file is damaged.
    pub fn end(&mut self) -> std::io::Result<()> {
        if self.checked {
            return Ok(());
        }
        self.checked = true;
        let mut sha = std::mem::take(&mut self.sha);
        sha.update(tail_body(self.read));
        let digest: [u8; 32] = sha.finalize().into();
        if self.read != self.saved.image_len || digest != self.saved.digest {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "the SHA-256 that `etcdctl snapshot save` appended does not match the file: it is damaged",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    fn saved(image: &[u8]) -> Vec<u8> {
        let mut tail = Tail::default();
        for chunk in image.chunks(7) {
            tail.image(chunk);
        }
        let (body, digest) = tail.finish();
        let mut out = image.to_vec();
        out.extend_from_slice(&body);
        out.extend_from_slice(&digest);
        out
    }

    fn file(bytes: &[u8]) -> std::fs::File {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(bytes).unwrap();
        f
    }

    fn read_all(bytes: &[u8]) -> std::io::Result<Vec<u8>> {
        let saved = detect(&file(bytes), bytes.len() as u64)?.expect("a saved snapshot");
        let mut check = Check::new(saved);
        let image = &bytes[..check.allowed(bytes.len())];
        check.read(image);
        check.end()?;
        Ok(image.to_vec())
    }

    #[test]
    fn a_saved_snapshot_is_32_bytes_past_a_multiple_of_512_and_gives_back_its_image() {
        for len in [0usize, 1, 503, 504, 505, 512, 1000, 4096] {
            let image: Vec<u8> = (0..len).map(|i| (i % 251) as u8 + 1).collect();
            let bytes = saved(&image);
            assert_eq!(bytes.len() % 512, 32, "etcdctl's hasChecksum for an image of {len} bytes");
            assert!(bytes.len() - 32 - len < 512 + 8);
            assert_eq!(read_all(&bytes).unwrap(), image);
        }
    }

    #[test]
    fn a_damaged_saved_snapshot_fails_its_digest_and_other_files_are_not_taken_for_one() {
        let image: Vec<u8> = (0..3000).map(|i| (i % 13) as u8 + 1).collect();
        let mut bytes = saved(&image);
        bytes[100] ^= 1;
        assert_eq!(read_all(&bytes).unwrap_err().kind(), std::io::ErrorKind::InvalidData);
        // The image alone, or one whose padding is not zeros, is not a saved snapshot.
        let plain: Vec<u8> = (0..(512 * 3 + 32)).map(|i| (i % 7) as u8 + 1).collect();
        assert_eq!(detect(&file(&plain), plain.len() as u64).unwrap(), None);
        let mut bad_pad = saved(&image);
        let at = image.len();
        bad_pad[at] = 1;
        assert_eq!(detect(&file(&bad_pad), bad_pad.len() as u64).unwrap(), None);
    }
}
