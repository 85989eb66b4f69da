//! A mock NOR flash that enforces the medium's rules, cuts power after a number of bytes, and
//! counts what a restore costs (feature `mock`; semver-exempt, for tests; needs `std`).
//!
//! `sequential-storage`'s `mock_flash` was the first choice and does not fit: it implements
//! only the async traits, counts erase calls rather than erased units (so "each unit is erased
//! at most once" cannot be checked), leaves a cut word or unit in one fixed, partly finished
//! state instead of an undefined one, and panics instead of returning an error on a misaligned
//! write. This one is written for the blocking `embedded_storage` traits.
//!
//! The rules, each an error ([`MockError`]), never a panic:
//! - reads: offset and length multiples of `READ_SIZE` (4), inside the chip;
//! - writes: offset and length multiples of `WRITE`, inside the chip; every word written at
//!   most once per erase ([`MockError::WrittenTwice`]); bits only go from 1 to 0;
//! - erases: whole units of `ERASE` bytes; afterwards every byte is `0xFF`.
//!
//! Power cuts ([`MockFlash::cut_after`]): the next `n` bytes programmed or erased succeed, then
//! the operation in progress stops. A write leaves the word being programmed *undefined* (as
//! the `NorFlash` docs allow): bytes of that word from the cut on read as a mix of the old and
//! the new bits (pseudo-random, never all `0xFF` where the new word was not), and the word
//! counts as written. An erase leaves the unit being erased undefined (old bits with
//! pseudo-random bits set, the same for any cut inside that unit) and its words count as
//! written, so it must be erased again before use; the units before it are erased, those after
//! it untouched. After the cut every operation fails with [`MockError::PowerOff`] until
//! [`MockFlash::reboot`].

// Test support: every index below is inside a range `bounds` checked, and a bad index in a
// test double is a bug of the test, which a panic reports well.
#![allow(clippy::indexing_slicing)]

extern crate std;

use std::vec;
use std::vec::Vec;

use embedded_storage::nor_flash::{ErrorType, NorFlash, NorFlashError, NorFlashErrorKind, ReadNorFlash};

/// What the mock refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum MockError {
    /// Offset or length not aligned to the read, write or erase size.
    NotAligned {
        /// The offending offset.
        offset: u32,
    },
    /// The operation reaches past the chip.
    OutOfBounds {
        /// The offending offset.
        offset: u32,
    },
    /// A word was written twice without an erase between.
    WrittenTwice {
        /// Address of the word.
        offset: u32,
    },
    /// A write tried to turn a 0 bit into a 1.
    ZeroToOne {
        /// Address of the byte.
        offset: u32,
    },
    /// Power was cut during this operation, at `offset`.
    PowerCut {
        /// The first byte not finished.
        offset: u32,
    },
    /// Power is off since a cut; [`MockFlash::reboot`] turns it back on.
    PowerOff,
}

impl core::fmt::Display for MockError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            MockError::NotAligned { offset } => write!(f, "misaligned flash access at {offset:#x}"),
            MockError::OutOfBounds { offset } => write!(f, "flash access past the chip at {offset:#x}"),
            MockError::WrittenTwice { offset } => write!(f, "flash word at {offset:#x} written twice without erase"),
            MockError::ZeroToOne { offset } => write!(f, "flash write at {offset:#x} sets a cleared bit"),
            MockError::PowerCut { offset } => write!(f, "power cut at {offset:#x}"),
            MockError::PowerOff => f.write_str("power is off"),
        }
    }
}

impl core::error::Error for MockError {}

impl NorFlashError for MockError {
    fn kind(&self) -> NorFlashErrorKind {
        match self {
            MockError::NotAligned { .. } => NorFlashErrorKind::NotAligned,
            MockError::OutOfBounds { .. } => NorFlashErrorKind::OutOfBounds,
            _ => NorFlashErrorKind::Other,
        }
    }
}

/// Operation counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Stats {
    /// Read calls.
    pub reads: u64,
    /// Bytes read.
    pub bytes_read: u64,
    /// Write calls.
    pub writes: u64,
    /// Bytes programmed (padding included).
    pub programmed: u64,
    /// Erase units erased.
    pub erases: u64,
}

/// A write or erase, as [`MockFlash::record`] keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Recorded {
    /// `bytes` written at `offset`.
    Write {
        /// Where.
        offset: u32,
        /// What.
        bytes: Vec<u8>,
    },
    /// `from..to` erased.
    Erase {
        /// First byte.
        from: u32,
        /// End, exclusive.
        to: u32,
    },
}

impl Recorded {
    /// Bytes the operation programs or erases: what a power cut counts.
    pub fn cost(&self) -> u64 {
        match self {
            Recorded::Write { bytes, .. } => bytes.len() as u64,
            Recorded::Erase { from, to } => u64::from(to - from),
        }
    }
}

/// A NOR flash in memory: `WRITE`-byte words, `ERASE`-byte erase units, 4-byte reads.
#[derive(Clone, Debug)]
pub struct MockFlash<const WRITE: usize, const ERASE: usize> {
    journal: Option<Vec<Recorded>>,
    data: Vec<u8>,
    written: Vec<bool>,
    unit_erases: Vec<u32>,
    budget: Option<u64>,
    off: bool,
    seed: u64,
    stats: Stats,
}

fn noise(addr: u64, seed: u64) -> u8 {
    // splitmix64: a fixed pseudo-random byte per address, so a cut is reproducible.
    let mut z = addr.wrapping_add(seed).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)) as u8
}

impl<const WRITE: usize, const ERASE: usize> MockFlash<WRITE, ERASE> {
    /// An erased chip of `units` erase units.
    pub fn new(units: usize) -> Self {
        let capacity = units * ERASE;
        MockFlash {
            journal: None,
            data: vec![0xFF; capacity],
            written: vec![false; capacity / WRITE.max(1)],
            unit_erases: vec![0; units],
            budget: None,
            off: false,
            seed: 0x5EED,
            stats: Stats::default(),
        }
    }

    /// Cuts power once `bytes` more bytes have been programmed or erased.
    pub fn cut_after(&mut self, bytes: u64) {
        self.budget = Some(bytes);
    }

    /// Whether power was cut.
    pub fn is_off(&self) -> bool {
        self.off
    }

    /// Turns power back on, with no cut armed. The contents stay as the cut left them.
    pub fn reboot(&mut self) {
        self.off = false;
        self.budget = None;
    }

    /// The counters since [`MockFlash::reset_stats`].
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Zeroes the counters, and the erase count of every unit.
    pub fn reset_stats(&mut self) {
        self.stats = Stats::default();
        self.unit_erases.iter_mut().for_each(|n| *n = 0);
    }

    /// How often each unit was erased since [`MockFlash::reset_stats`].
    pub fn unit_erases(&self) -> &[u32] {
        &self.unit_erases
    }

    /// Starts keeping every write and erase, for [`MockFlash::take_journal`].
    pub fn record(&mut self) {
        self.journal = Some(Vec::new());
    }

    /// The writes and erases since [`MockFlash::record`]; stops keeping them.
    pub fn take_journal(&mut self) -> Vec<Recorded> {
        self.journal.take().unwrap_or_default()
    }

    /// Performs a recorded operation again (a cut armed with [`MockFlash::cut_after`] applies).
    pub fn replay(&mut self, op: &Recorded) -> Result<(), MockError> {
        match op {
            Recorded::Write { offset, bytes } => self.write(*offset, bytes),
            Recorded::Erase { from, to } => self.erase(*from, *to),
        }
    }

    /// The chip's contents.
    pub fn bytes(&self) -> &[u8] {
        &self.data
    }

    fn spend(&mut self) -> bool {
        match self.budget.as_mut() {
            None => true,
            Some(0) => {
                self.budget = None;
                self.off = true;
                false
            }
            Some(n) => {
                *n -= 1;
                true
            }
        }
    }

    fn bounds(&self, offset: u32, len: usize, align: usize) -> Result<core::ops::Range<usize>, MockError> {
        let start = offset as usize;
        if !start.is_multiple_of(align) || !len.is_multiple_of(align) {
            return Err(MockError::NotAligned { offset });
        }
        let end = start.checked_add(len).filter(|e| *e <= self.data.len()).ok_or(MockError::OutOfBounds { offset })?;
        Ok(start..end)
    }
}

impl<const WRITE: usize, const ERASE: usize> ErrorType for MockFlash<WRITE, ERASE> {
    type Error = MockError;
}

impl<const WRITE: usize, const ERASE: usize> ReadNorFlash for MockFlash<WRITE, ERASE> {
    const READ_SIZE: usize = 4;

    fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), MockError> {
        if self.off {
            return Err(MockError::PowerOff);
        }
        let range = self.bounds(offset, bytes.len(), Self::READ_SIZE)?;
        bytes.copy_from_slice(&self.data[range]);
        self.stats.reads += 1;
        self.stats.bytes_read += bytes.len() as u64;
        Ok(())
    }

    fn capacity(&self) -> usize {
        self.data.len()
    }
}

impl<const WRITE: usize, const ERASE: usize> NorFlash for MockFlash<WRITE, ERASE> {
    const WRITE_SIZE: usize = WRITE;
    const ERASE_SIZE: usize = ERASE;

    fn erase(&mut self, from: u32, to: u32) -> Result<(), MockError> {
        if self.off {
            return Err(MockError::PowerOff);
        }
        if to < from {
            return Err(MockError::OutOfBounds { offset: from });
        }
        let range = self.bounds(from, (to - from) as usize, ERASE)?;
        if let Some(j) = self.journal.as_mut() {
            j.push(Recorded::Erase { from, to });
        }
        for unit_start in range.step_by(ERASE) {
            for i in unit_start..unit_start + ERASE {
                if !self.spend() {
                    // The unit being erased is undefined, whatever byte the cut came at.
                    for j in unit_start..unit_start + ERASE {
                        self.data[j] |= noise(j as u64, self.seed) & noise(j as u64 + 7, self.seed);
                    }
                    for w in unit_start / WRITE..(unit_start + ERASE) / WRITE {
                        self.written[w] = true;
                    }
                    return Err(MockError::PowerCut { offset: i as u32 });
                }
            }
            self.data[unit_start..unit_start + ERASE].fill(0xFF);
            for w in unit_start / WRITE..(unit_start + ERASE) / WRITE {
                self.written[w] = false;
            }
            self.unit_erases[unit_start / ERASE] += 1;
            self.stats.erases += 1;
        }
        Ok(())
    }

    fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), MockError> {
        if self.off {
            return Err(MockError::PowerOff);
        }
        let range = self.bounds(offset, bytes.len(), WRITE)?;
        for w in range.clone().step_by(WRITE) {
            if self.written[w / WRITE] {
                return Err(MockError::WrittenTwice { offset: w as u32 });
            }
        }
        for (i, b) in range.clone().zip(bytes) {
            if self.data[i] & b != *b {
                return Err(MockError::ZeroToOne { offset: i as u32 });
            }
        }
        self.stats.writes += 1;
        if let Some(j) = self.journal.as_mut() {
            j.push(Recorded::Write { offset, bytes: bytes.to_vec() });
        }
        for (i, b) in range.zip(bytes.iter().copied()) {
            self.written[i / WRITE] = true;
            if !self.spend() {
                // The rest of this word is undefined: some of its new 0 bits made it.
                let word_end = (i / WRITE + 1) * WRITE;
                let mut any_zero = false;
                let mut all_ff = true;
                for j in i..word_end {
                    let new = bytes[j - offset as usize];
                    let keep = noise(j as u64, self.seed);
                    self.data[j] &= new | keep;
                    any_zero |= new != 0xFF;
                    all_ff &= self.data[j] == 0xFF;
                }
                if any_zero && all_ff {
                    // A word whose programming started never reads back as erased.
                    if let Some(j) = (i..word_end).find(|j| bytes[j - offset as usize] != 0xFF) {
                        self.data[j] = bytes[j - offset as usize] | 0x7F;
                        if self.data[j] == 0xFF {
                            self.data[j] = bytes[j - offset as usize];
                        }
                    }
                }
                return Err(MockError::PowerCut { offset: i as u32 });
            }
            self.data[i] &= b;
            self.stats.programmed += 1;
        }
        Ok(())
    }
}

/// An async-only view of a blocking flash, as an async driver behaves: each operation first
/// reports that it is not done (and wakes its task), then completes, so whoever drives it must
/// poll it again ([`crate::BlockOn`] does). Implements only `embedded-storage-async`'s traits.
#[cfg(feature = "async")]
#[derive(Clone, Debug)]
pub struct AsyncMock<F>(pub F);

/// A future that is pending once (waking its task), then ready.
#[cfg(feature = "async")]
struct YieldOnce(bool);

#[cfg(feature = "async")]
impl core::future::Future for YieldOnce {
    type Output = ();
    fn poll(mut self: core::pin::Pin<&mut Self>, cx: &mut core::task::Context<'_>) -> core::task::Poll<()> {
        if self.0 {
            return core::task::Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        core::task::Poll::Pending
    }
}

#[cfg(feature = "async")]
impl<F: ErrorType> ErrorType for AsyncMock<F> {
    type Error = F::Error;
}

#[cfg(feature = "async")]
impl<F: ReadNorFlash> embedded_storage_async::nor_flash::ReadNorFlash for AsyncMock<F> {
    const READ_SIZE: usize = F::READ_SIZE;

    async fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), Self::Error> {
        YieldOnce(false).await;
        self.0.read(offset, bytes)
    }

    fn capacity(&self) -> usize {
        self.0.capacity()
    }
}

#[cfg(feature = "async")]
impl<F: NorFlash> embedded_storage_async::nor_flash::NorFlash for AsyncMock<F> {
    const WRITE_SIZE: usize = F::WRITE_SIZE;
    const ERASE_SIZE: usize = F::ERASE_SIZE;

    async fn erase(&mut self, from: u32, to: u32) -> Result<(), Self::Error> {
        YieldOnce(false).await;
        self.0.erase(from, to)
    }

    async fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), Self::Error> {
        YieldOnce(false).await;
        self.0.write(offset, bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Chip = MockFlash<4, 64>;

    #[test]
    fn erased_is_ff_and_words_are_written_once() {
        let mut f = Chip::new(2);
        let mut buf = [0u8; 8];
        f.read(0, &mut buf).unwrap();
        assert_eq!(buf, [0xFF; 8]);
        f.write(4, &[1, 2, 3, 4]).unwrap();
        assert_eq!(f.write(4, &[0, 0, 0, 0]), Err(MockError::WrittenTwice { offset: 4 }));
        f.read(0, &mut buf).unwrap();
        assert_eq!(buf, [0xFF, 0xFF, 0xFF, 0xFF, 1, 2, 3, 4]);
        f.erase(0, 64).unwrap();
        f.read(0, &mut buf).unwrap();
        assert_eq!(buf, [0xFF; 8]);
        f.write(4, &[5, 6, 7, 8]).unwrap();
        assert_eq!(f.stats(), Stats { reads: 3, bytes_read: 24, writes: 2, programmed: 8, erases: 1 });
        assert_eq!(f.unit_erases(), &[1, 0]);
    }

    #[test]
    fn misaligned_and_out_of_bounds_accesses_are_errors() {
        let mut f = Chip::new(2);
        assert_eq!(f.write(2, &[0; 4]), Err(MockError::NotAligned { offset: 2 }));
        assert_eq!(f.write(0, &[0; 3]), Err(MockError::NotAligned { offset: 0 }));
        assert_eq!(f.read(1, &mut [0; 4]), Err(MockError::NotAligned { offset: 1 }));
        assert_eq!(f.erase(32, 64), Err(MockError::NotAligned { offset: 32 }));
        assert_eq!(f.write(128, &[0; 4]), Err(MockError::OutOfBounds { offset: 128 }));
        assert_eq!(f.erase(0, 192), Err(MockError::OutOfBounds { offset: 0 }));
        assert_eq!(f.stats().programmed, 0);
    }

    #[test]
    fn a_cut_write_leaves_earlier_words_written_the_cut_word_undefined_and_later_ones_erased() {
        let mut f = Chip::new(1);
        f.cut_after(5);
        let data = [0u8; 12];
        assert_eq!(f.write(0, &data), Err(MockError::PowerCut { offset: 5 }));
        assert!(f.is_off());
        assert_eq!(f.read(0, &mut [0; 4]), Err(MockError::PowerOff));
        f.reboot();
        let mut buf = [0u8; 12];
        f.read(0, &mut buf).unwrap();
        assert_eq!(buf[..5], [0; 5]);
        assert_ne!(buf[4..8], [0xFF; 4], "a word whose programming started is not erased");
        assert_eq!(buf[8..], [0xFF; 4]);
        // The torn word counts as written; the untouched one does not.
        assert_eq!(f.write(4, &[0; 4]), Err(MockError::WrittenTwice { offset: 4 }));
        f.write(8, &[0; 4]).unwrap();
    }

    #[test]
    fn a_cut_erase_leaves_the_unit_undefined_and_unwritable_until_erased_again() {
        let mut f = Chip::new(3);
        for unit in 0..3u32 {
            f.write(unit * 64, &[0; 64]).unwrap();
        }
        f.cut_after(64 + 10);
        assert_eq!(f.erase(0, 192), Err(MockError::PowerCut { offset: 74 }));
        f.reboot();
        assert!(f.bytes()[..64].iter().all(|b| *b == 0xFF), "the first unit was erased");
        assert!(f.bytes()[64..128].iter().any(|b| *b != 0), "the cut unit is not what it was");
        assert!(f.bytes()[64..128].iter().any(|b| *b != 0xFF), "nor erased");
        assert!(f.bytes()[128..].iter().all(|b| *b == 0), "the last unit was untouched");
        assert_eq!(f.write(64, &[0; 4]), Err(MockError::WrittenTwice { offset: 64 }));
        assert_eq!(f.unit_erases(), &[1, 0, 0]);
        // Any cut inside the same unit leaves the same contents.
        let mut g = Chip::new(3);
        for unit in 0..3u32 {
            g.write(unit * 64, &[0; 64]).unwrap();
        }
        g.cut_after(64 + 50);
        assert!(g.erase(0, 192).is_err());
        assert_eq!(f.bytes(), g.bytes());
    }

    #[test]
    fn programming_cannot_set_bits() {
        let mut f = MockFlash::<1, 64>::new(1);
        f.write(0, &[0x0F]).unwrap();
        // Write-once catches it first on this chip; a multi-byte word shows the bit rule.
        assert_eq!(f.write(0, &[0xFF]), Err(MockError::WrittenTwice { offset: 0 }));
        let mut g = Chip::new(1);
        g.cut_after(0);
        assert!(g.write(0, &[0x00, 0x11, 0x22, 0x33]).is_err());
        g.reboot();
        assert!(g.bytes()[..4].iter().zip([0x00, 0x11, 0x22, 0x33]).all(|(got, want)| got & want == want));
    }
}
