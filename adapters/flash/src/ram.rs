//! A NOR flash emulated in a byte slice, for targets without a flash chip of their own (a QEMU
//! machine whose emulated flash is a RAM region): `no_std`, no heap (feature `ram`).
//!
//! It keeps the NOR rules that matter to the layout: erase sets whole units to `0xFF`, writes
//! are aligned to `WRITE` bytes and may only program words that are still erased (so bits only
//! go from 1 to 0, and a word is written at most once per erase, unless it was written as all
//! `0xFF`, which a real chip cannot tell either). It counts what a restore costs. Power cuts
//! are the host mock's business ([`crate::mock::MockFlash`], feature `mock`).

use core::ops::Range;

use embedded_storage::nor_flash::{ErrorType, NorFlash, NorFlashError, NorFlashErrorKind, ReadNorFlash};

/// The bytes `[offset, offset + len)` of a flash of `capacity` bytes, or
/// [`RamFlashError::OutOfBounds`].
pub fn span(offset: u32, len: usize, capacity: usize) -> Result<Range<usize>, RamFlashError> {
    let start = usize::try_from(offset).map_err(|_| RamFlashError::OutOfBounds { offset })?;
    let end = start.checked_add(len).ok_or(RamFlashError::OutOfBounds { offset })?;
    if end > capacity {
        return Err(RamFlashError::OutOfBounds { offset });
    }
    Ok(start..end)
}

/// The NOR rule of an erase of `[from, to)` on a flash of `ERASE`-byte units and `capacity`
/// bytes: whole aligned units within the chip. The span it covers, or what it breaks.
///
/// [`RamFlash`] keeps the rules with these functions, and so can an emulated flash whose memory
/// is elsewhere (a file on a host), so every emulated chip refuses the same accesses.
pub fn erase_span<const ERASE: usize>(from: u32, to: u32, capacity: usize) -> Result<Range<usize>, RamFlashError> {
    let len = to.checked_sub(from).ok_or(RamFlashError::OutOfBounds { offset: from })? as usize;
    if !(from as usize).is_multiple_of(ERASE) || !len.is_multiple_of(ERASE) {
        return Err(RamFlashError::NotAligned { offset: from });
    }
    span(from, len, capacity)
}

/// The NOR rule of a write of `len` bytes at `offset` on a flash of `WRITE`-byte words and
/// `capacity` bytes: whole aligned words within the chip. The span it covers, or what it
/// breaks. See [`check_erased`] for the rule on what the span holds.
pub fn write_span<const WRITE: usize>(offset: u32, len: usize, capacity: usize) -> Result<Range<usize>, RamFlashError> {
    if !(offset as usize).is_multiple_of(WRITE) || !len.is_multiple_of(WRITE) {
        return Err(RamFlashError::NotAligned { offset });
    }
    span(offset, len, capacity)
}

/// The NOR rule on what a write programs: every `WRITE`-byte word of `current` (what the flash
/// holds from `offset` on) is erased (all `0xFF`); a word is programmed once per erase.
pub fn check_erased<const WRITE: usize>(offset: u32, current: &[u8]) -> Result<(), RamFlashError> {
    for (i, word) in current.chunks(WRITE).enumerate() {
        if word.iter().any(|b| *b != 0xFF) {
            return Err(RamFlashError::NotErased { offset: offset.saturating_add((i * WRITE) as u32) });
        }
    }
    Ok(())
}

/// What [`RamFlash`] refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum RamFlashError {
    /// Offset or length not aligned to the write or erase size.
    NotAligned {
        /// The offending offset.
        offset: u32,
    },
    /// The operation reaches past the memory.
    OutOfBounds {
        /// The offending offset.
        offset: u32,
    },
    /// A write to a word that is not erased.
    NotErased {
        /// Address of the word.
        offset: u32,
    },
}

impl core::fmt::Display for RamFlashError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            RamFlashError::NotAligned { offset } => write!(f, "misaligned flash access at {offset:#x}"),
            RamFlashError::OutOfBounds { offset } => write!(f, "flash access past the memory at {offset:#x}"),
            RamFlashError::NotErased { offset } => write!(f, "flash word at {offset:#x} written without erase"),
        }
    }
}

impl core::error::Error for RamFlashError {}

impl NorFlashError for RamFlashError {
    fn kind(&self) -> NorFlashErrorKind {
        match self {
            RamFlashError::NotAligned { .. } => NorFlashErrorKind::NotAligned,
            RamFlashError::OutOfBounds { .. } => NorFlashErrorKind::OutOfBounds,
            RamFlashError::NotErased { .. } => NorFlashErrorKind::Other,
        }
    }
}

/// What a [`RamFlash`] did since it was made or [`RamFlash::reset_stats`] was called.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct RamStats {
    /// Bytes read.
    pub bytes_read: u64,
    /// Bytes programmed (padding included).
    pub programmed: u64,
    /// Erase units erased.
    pub erases: u64,
}

/// A NOR flash of `WRITE`-byte words and `ERASE`-byte erase units over `mem` (whose length is a
/// multiple of `ERASE`). The contents are whatever `mem` holds: a region kept across a
/// simulated reboot keeps the flash's state.
#[derive(Debug)]
pub struct RamFlash<'a, const WRITE: usize, const ERASE: usize> {
    mem: &'a mut [u8],
    stats: RamStats,
}

impl<'a, const WRITE: usize, const ERASE: usize> RamFlash<'a, WRITE, ERASE> {
    /// The flash over `mem`, as it is (call [`NorFlash::erase`] or [`RamFlash::erase_all`] for
    /// a blank one).
    ///
    /// # Errors
    /// [`RamFlashError::NotAligned`] if `mem` is not a whole number of erase units, or `WRITE`
    /// does not divide `ERASE`.
    pub fn new(mem: &'a mut [u8]) -> Result<Self, RamFlashError> {
        if WRITE == 0 || ERASE == 0 || !ERASE.is_multiple_of(WRITE) || !mem.len().is_multiple_of(ERASE) {
            return Err(RamFlashError::NotAligned { offset: u32::try_from(mem.len()).unwrap_or(u32::MAX) });
        }
        Ok(RamFlash { mem, stats: RamStats::default() })
    }

    /// Sets every byte to `0xFF`, without counting erases: a blank chip.
    pub fn erase_all(&mut self) {
        self.mem.fill(0xFF);
    }

    /// The counters.
    pub fn stats(&self) -> RamStats {
        self.stats
    }

    /// Sets the counters to zero.
    pub fn reset_stats(&mut self) {
        self.stats = RamStats::default();
    }

    /// The memory back, with the flash's contents.
    pub fn into_inner(self) -> &'a mut [u8] {
        self.mem
    }

    fn span(&self, offset: u32, len: usize) -> Result<Range<usize>, RamFlashError> {
        span(offset, len, self.mem.len())
    }
}

impl<const WRITE: usize, const ERASE: usize> ErrorType for RamFlash<'_, WRITE, ERASE> {
    type Error = RamFlashError;
}

impl<const WRITE: usize, const ERASE: usize> ReadNorFlash for RamFlash<'_, WRITE, ERASE> {
    const READ_SIZE: usize = 1;

    fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), RamFlashError> {
        let span = self.span(offset, bytes.len())?;
        let src = self.mem.get(span).ok_or(RamFlashError::OutOfBounds { offset })?;
        bytes.copy_from_slice(src);
        self.stats.bytes_read += bytes.len() as u64;
        Ok(())
    }

    fn capacity(&self) -> usize {
        self.mem.len()
    }
}

impl<const WRITE: usize, const ERASE: usize> NorFlash for RamFlash<'_, WRITE, ERASE> {
    const WRITE_SIZE: usize = WRITE;
    const ERASE_SIZE: usize = ERASE;

    fn erase(&mut self, from: u32, to: u32) -> Result<(), RamFlashError> {
        let span = erase_span::<ERASE>(from, to, self.mem.len())?;
        let units = span.len() / ERASE;
        self.mem.get_mut(span).ok_or(RamFlashError::OutOfBounds { offset: from })?.fill(0xFF);
        self.stats.erases += units as u64;
        Ok(())
    }

    fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), RamFlashError> {
        let span = write_span::<WRITE>(offset, bytes.len(), self.mem.len())?;
        let dst = self.mem.get_mut(span).ok_or(RamFlashError::OutOfBounds { offset })?;
        // Check every word before programming any, so a refused write changes nothing.
        check_erased::<WRITE>(offset, dst)?;
        dst.copy_from_slice(bytes);
        self.stats.programmed += bytes.len() as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erased_words_are_written_once_and_misuse_is_an_error() {
        let mut mem = [0u8; 64];
        let mut f = RamFlash::<4, 32>::new(&mut mem).unwrap();
        assert_eq!(f.write(0, &[1, 2, 3, 4]), Err(RamFlashError::NotErased { offset: 0 }));
        f.erase(0, 32).unwrap();
        f.write(4, &[1, 2, 3, 4]).unwrap();
        assert_eq!(f.write(4, &[0, 0, 0, 0]), Err(RamFlashError::NotErased { offset: 4 }));
        assert_eq!(f.write(2, &[0, 0, 0, 0]), Err(RamFlashError::NotAligned { offset: 2 }));
        assert_eq!(f.erase(0, 16), Err(RamFlashError::NotAligned { offset: 0 }));
        assert_eq!(f.write(64, &[0; 4]), Err(RamFlashError::OutOfBounds { offset: 64 }));
        let mut out = [0u8; 6];
        f.read(3, &mut out).unwrap();
        assert_eq!(out, [0xFF, 1, 2, 3, 4, 0xFF]);
        assert_eq!(f.stats(), RamStats { bytes_read: 6, programmed: 4, erases: 1 });
        assert_eq!(&f.into_inner()[32..36], &[0, 0, 0, 0]);
    }
}
