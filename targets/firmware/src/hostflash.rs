//! A NOR flash kept in a file on the host, reached through semihosting file calls
//! (`SYS_OPEN`, `SYS_SEEK`, `SYS_READ`, `SYS_WRITE`, `SYS_FLEN`, by the `semihosting` crate's
//! `fs`): it outlives the emulator, so killing QEMU is a power cut and the next run boots from
//! what the file holds.
//!
//! It keeps the rules of `snapply-flash`'s `RamFlash` and mock, each an error, never a panic:
//! erase sets whole `ERASE`-byte units (aligned) to `0xFF`; writes are aligned to `WRITE`
//! bytes and may only program words that are still erased (so bits only go from 1 to 0, and a
//! word is written once per erase); nothing reaches past the chip. A file that does not exist,
//! or is shorter than the chip, is a blank chip there: the missing bytes are filled with `0xFF`.
//!
//! A power cut at a chosen point ([`HostFlash::cut_after`]): like the mock's, the next `n`
//! bytes programmed or erased succeed, and the operation in progress stops there with the
//! word or unit being changed left undefined (old bits with some new ones, never the finished
//! value unless it was all `0xFF`); then the device logs `power cut` and halts, and the host
//! kills QEMU. The file then holds exactly what a chip would after that cut.

use core::ffi::CStr;

use embedded_storage::nor_flash::{ErrorType, NorFlash, NorFlashError, NorFlashErrorKind, ReadNorFlash};
use semihosting::fs::{File, OpenOptions};
use semihosting::io::{Read, Seek, SeekFrom, Write};
use snapply_flash::{RamFlashError, RamStats};

/// What [`HostFlash`] refused, or what the host's file calls failed at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, defmt::Format)]
#[non_exhaustive]
pub enum HostFlashError {
    /// The access breaks a NOR rule (alignment, bounds, a word programmed twice): the same
    /// refusals as `snapply-flash`'s `RamFlash`.
    Rule(RamFlashError),
    /// The host's file call failed.
    Io {
        /// Which call.
        op: &'static str,
        /// Where in the chip.
        offset: u32,
    },
    /// The file is longer than the chip: it is some other chip's.
    WrongSize {
        /// The file's length.
        len: u32,
    },
}

impl core::fmt::Display for HostFlashError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            HostFlashError::Rule(e) => write!(f, "{e}"),
            HostFlashError::Io { op, offset } => write!(f, "the host's flash file: {op} at {offset:#x} failed"),
            HostFlashError::WrongSize { len } => {
                write!(f, "the host's flash file holds {len} bytes, more than the chip: another chip's file")
            }
        }
    }
}

impl core::error::Error for HostFlashError {}

impl NorFlashError for HostFlashError {
    fn kind(&self) -> NorFlashErrorKind {
        match self {
            HostFlashError::Rule(e) => e.kind(),
            _ => NorFlashErrorKind::Other,
        }
    }
}

/// Bytes moved per file call when checking, erasing or filling (a small stack buffer: the
/// calls run at the restore's deepest frames).
const SCRATCH: usize = 64;

/// A NOR flash of `len` bytes, `WRITE`-byte words and `ERASE`-byte units, in a host file.
#[derive(Debug)]
pub struct HostFlash<const WRITE: usize, const ERASE: usize> {
    file: File,
    len: u32,
    stats: RamStats,
    /// Bytes that may still be programmed or erased before the power is cut.
    budget: Option<u64>,
}

impl<const WRITE: usize, const ERASE: usize> HostFlash<WRITE, ERASE> {
    /// Opens the chip in the host file `path` (created when missing), `len` bytes long (a
    /// multiple of `ERASE`). Bytes the file does not hold yet are blank (`0xFF`). Returns the
    /// chip and whether the file was created.
    ///
    /// # Errors
    /// [`HostFlashError::Rule`] for a bad geometry, [`HostFlashError::WrongSize`] for a
    /// file longer than `len`, [`HostFlashError::Io`] when a file call fails.
    pub fn open(path: &CStr, len: u32) -> Result<(Self, bool), HostFlashError> {
        if WRITE == 0 || ERASE == 0 || !ERASE.is_multiple_of(WRITE) || !(len as usize).is_multiple_of(ERASE) {
            return Err(HostFlashError::Rule(RamFlashError::NotAligned { offset: len }));
        }
        let existing = OpenOptions::new().read(true).write(true).open(path);
        let created = existing.is_err();
        let file = match existing {
            Ok(file) => file,
            Err(_) => OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(path)
                .map_err(|_| HostFlashError::Io { op: "open", offset: 0 })?,
        };
        let held = file.metadata().map_err(|_| HostFlashError::Io { op: "length", offset: 0 })?.len();
        let held = u32::try_from(held).map_err(|_| HostFlashError::WrongSize { len: u32::MAX })?;
        if held > len {
            return Err(HostFlashError::WrongSize { len: held });
        }
        let mut chip = HostFlash { file, len, stats: RamStats::default(), budget: None };
        // The part of a blank chip the file does not hold yet (all of a new file; the tail
        // of a file whose filling a power cut stopped).
        let mut at = held;
        while at < len {
            let n = (len - at).min(SCRATCH as u32);
            chip.put(at, &[0xFF; SCRATCH][..n as usize])?;
            at += n;
        }
        Ok((chip, created))
    }

    /// The counters.
    pub fn stats(&self) -> RamStats {
        self.stats
    }

    /// Sets the counters to zero.
    pub fn reset_stats(&mut self) {
        self.stats = RamStats::default();
    }

    /// Cuts the power once `bytes` more bytes have been programmed or erased (`None`: never).
    pub fn cut_after(&mut self, bytes: Option<u64>) {
        self.budget = bytes;
    }

    fn seek(&mut self, offset: u32) -> Result<(), HostFlashError> {
        self.file.seek(SeekFrom::Start(u64::from(offset))).map_err(|_| HostFlashError::Io { op: "seek", offset })?;
        Ok(())
    }

    /// Reads `out.len()` bytes at `offset` from the file.
    fn get(&mut self, offset: u32, out: &mut [u8]) -> Result<(), HostFlashError> {
        self.seek(offset)?;
        self.file.read_exact(out).map_err(|_| HostFlashError::Io { op: "read", offset })
    }

    /// Writes `bytes` at `offset` into the file.
    fn put(&mut self, offset: u32, bytes: &[u8]) -> Result<(), HostFlashError> {
        self.seek(offset)?;
        self.file.write_all(bytes).map_err(|_| HostFlashError::Io { op: "write", offset })
    }

    fn check_span(&self, offset: u32, len: usize) -> Result<(), HostFlashError> {
        snapply_flash::span(offset, len, self.len as usize).map(drop).map_err(HostFlashError::Rule)
    }

    /// Spends `n` bytes of the power budget; the bytes that fit before the cut, if it comes
    /// within them.
    fn spend(&mut self, n: usize) -> Option<usize> {
        let budget = self.budget?;
        let n64 = n as u64;
        if budget >= n64 {
            self.budget = Some(budget - n64);
            None
        } else {
            self.budget = Some(0);
            Some(budget as usize)
        }
    }
}

/// A byte the power cut left half-changed: some of the bits the operation was setting or
/// clearing, not all (a fixed pattern keeps a cut point reproducible).
fn torn(old: u8, new: u8) -> u8 {
    let mixed = (old & 0x5A) | (new & 0xA5);
    if mixed == new && old != new { old } else { mixed }
}

/// The power is gone: the device stops here, and the host kills the emulator.
fn power_cut(op: &'static str, offset: u32) -> ! {
    defmt::info!("power cut during {} at {=u32:#x}: halting for the host to kill the emulator", op, offset);
    loop {
        cortex_m::asm::wfi();
    }
}

impl<const WRITE: usize, const ERASE: usize> ErrorType for HostFlash<WRITE, ERASE> {
    type Error = HostFlashError;
}

impl<const WRITE: usize, const ERASE: usize> ReadNorFlash for HostFlash<WRITE, ERASE> {
    const READ_SIZE: usize = 1;

    fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), HostFlashError> {
        self.check_span(offset, bytes.len())?;
        self.get(offset, bytes)?;
        self.stats.bytes_read += bytes.len() as u64;
        Ok(())
    }

    fn capacity(&self) -> usize {
        self.len as usize
    }
}

impl<const WRITE: usize, const ERASE: usize> NorFlash for HostFlash<WRITE, ERASE> {
    const WRITE_SIZE: usize = WRITE;
    const ERASE_SIZE: usize = ERASE;

    fn erase(&mut self, from: u32, to: u32) -> Result<(), HostFlashError> {
        snapply_flash::erase_span::<ERASE>(from, to, self.len as usize).map_err(HostFlashError::Rule)?;
        let mut unit = from;
        while unit < to {
            if let Some(done) = self.spend(ERASE) {
                // The unit being erased is undefined: old bits with some set, in every chunk.
                let mut at = unit;
                let end = unit + ERASE as u32;
                let mut buf = [0u8; SCRATCH];
                while at < end {
                    let n = ((end - at) as usize).min(SCRATCH);
                    let chunk =
                        buf.get_mut(..n).ok_or(HostFlashError::Rule(RamFlashError::OutOfBounds { offset: at }))?;
                    self.get(at, chunk)?;
                    for b in chunk.iter_mut() {
                        *b = torn(*b, 0xFF);
                    }
                    self.put(at, chunk)?;
                    at += n as u32;
                }
                power_cut("erase", unit + done as u32);
            }
            let mut at = unit;
            let end = unit + ERASE as u32;
            while at < end {
                let n = ((end - at) as usize).min(SCRATCH);
                self.put(at, &[0xFF; SCRATCH][..n])?;
                at += n as u32;
            }
            self.stats.erases += 1;
            unit = end;
        }
        Ok(())
    }

    fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), HostFlashError> {
        snapply_flash::write_span::<WRITE>(offset, bytes.len(), self.len as usize).map_err(HostFlashError::Rule)?;
        // Check every word before programming any, so a refused write changes nothing.
        let mut buf = [0u8; SCRATCH];
        let mut done = 0usize;
        while done < bytes.len() {
            let n = (bytes.len() - done).min(SCRATCH);
            let at = offset + done as u32;
            let chunk = buf.get_mut(..n).ok_or(HostFlashError::Rule(RamFlashError::OutOfBounds { offset: at }))?;
            self.get(at, chunk)?;
            snapply_flash::check_erased::<WRITE>(at, chunk).map_err(HostFlashError::Rule)?;
            done += n;
        }
        match self.spend(bytes.len()) {
            None => {
                self.put(offset, bytes)?;
                self.stats.programmed += bytes.len() as u64;
                Ok(())
            }
            Some(kept) => {
                // Bytes before the cut are programmed; the rest of the word being programmed
                // is undefined; the words after it are untouched.
                // `kept < bytes.len()`: the word holding byte `kept` is the one being programmed.
                let word_end = ((kept / WRITE + 1) * WRITE).min(bytes.len());
                let mut out = [0u8; SCRATCH];
                let mut at = 0usize;
                while at < word_end {
                    let n = (word_end - at).min(SCRATCH);
                    let (Some(src), Some(dst)) = (bytes.get(at..at + n), out.get_mut(..n)) else {
                        break;
                    };
                    for (i, (d, s)) in dst.iter_mut().zip(src).enumerate() {
                        *d = if at + i < kept { *s } else { torn(0xFF, *s) };
                    }
                    self.put(offset + at as u32, dst)?;
                    at += n;
                }
                power_cut("write", offset + kept as u32);
            }
        }
    }
}
