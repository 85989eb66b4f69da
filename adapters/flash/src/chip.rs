//! Geometry and raw access: aligned reads through a bounce buffer, frame writes through an
//! aligned staging buffer, erases. Every access borrows the shared chip only for its own
//! duration, so a scan callback may read again.

use core::cell::RefCell;
use core::ops::Range;

use embedded_storage::nor_flash::NorFlash;

use crate::error::FlashError;

/// Largest `READ_SIZE` and `WRITE_SIZE` supported: the bounce and staging buffers are 64 bytes.
const MAX_WORD: usize = 32;
/// Bytes of the bounce and staging buffers.
const CHUNK: usize = 64;

/// Bytes of a frame header before padding: kind, bucket, key length, value length, CRC.
pub(crate) const FRAME_HEADER: usize = 12;
/// Bytes of the area header and of the commit record before padding.
pub(crate) const AREA_RECORD: usize = 16;
/// Commit-record slots after the area header: a commit-record write cut short leaves its slot
/// unusable, and the next attempt takes the next slot.
pub(crate) const COMMIT_SLOTS: u32 = 4;

pub(crate) type Result<T, F> =
    core::result::Result<T, FlashError<<F as embedded_storage::nor_flash::ErrorType>::Error>>;

/// A buffer aligned to 4 bytes: some flash drivers need aligned source buffers.
#[repr(C, align(4))]
pub(crate) struct Aligned<const N: usize>(pub(crate) [u8; N]);

/// Where the two areas are and how records are padded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Geometry {
    /// First address of area 0.
    pub(crate) start: u32,
    /// Bytes per area (a whole number of erase units).
    pub(crate) area_len: u32,
    /// Every frame starts and ends on this alignment: `max(WRITE_SIZE, 4)`.
    pub(crate) align: u32,
    /// Bytes of a padded frame header.
    pub(crate) header: u32,
    /// Bytes of the padded area header (and of each padded commit-record slot after it).
    pub(crate) record: u32,
    /// Offset of the log in an area.
    pub(crate) log_start: u32,
}

pub(crate) fn round_up(n: u32, align: u32) -> Option<u32> {
    let rem = n % align;
    if rem == 0 { Some(n) } else { n.checked_add(align - rem) }
}

impl Geometry {
    /// The layout over `range` of a chip of `capacity` bytes.
    pub(crate) fn new<F: NorFlash>(range: &Range<u32>, capacity: usize) -> Result<Self, F> {
        let (w, r, e) = (F::WRITE_SIZE, F::READ_SIZE, F::ERASE_SIZE);
        if !w.is_power_of_two() || w > MAX_WORD || !r.is_power_of_two() || r > MAX_WORD {
            return Err(FlashError::Geometry("READ_SIZE and WRITE_SIZE must be powers of two up to 32"));
        }
        let align = w.max(4);
        if e == 0 || !e.is_multiple_of(align) {
            return Err(FlashError::Geometry("ERASE_SIZE must be a multiple of WRITE_SIZE and of 4"));
        }
        let e = u32::try_from(e).map_err(|_| FlashError::Geometry("ERASE_SIZE does not fit 32 bits"))?;
        let align = align as u32;
        if !range.start.is_multiple_of(e) || !range.end.is_multiple_of(e) || range.end <= range.start {
            return Err(FlashError::Geometry("the flash range must start and end on erase-unit boundaries"));
        }
        if usize::try_from(range.end).map_or(true, |end| end > capacity) {
            return Err(FlashError::Geometry("the flash range ends beyond the chip"));
        }
        let units = (range.end - range.start) / e;
        if units < 2 || !units.is_multiple_of(2) {
            return Err(FlashError::Geometry("the flash range must hold an even number of erase units"));
        }
        let area_len = (range.end - range.start) / 2;
        let header = round_up(FRAME_HEADER as u32, align).ok_or(FlashError::Geometry("alignment"))?;
        let record = round_up(AREA_RECORD as u32, align).ok_or(FlashError::Geometry("alignment"))?;
        let log_start = record * (1 + COMMIT_SLOTS);
        if area_len < log_start + 8 * header {
            return Err(FlashError::Geometry("an area is too small for its headers and a transaction"));
        }
        Ok(Geometry { start: range.start, area_len, align, header, record, log_start })
    }

    /// First address of `area` (0 or 1).
    pub(crate) fn base(&self, area: u8) -> u32 {
        self.start + u32::from(area & 1) * self.area_len
    }
}

/// Reads `out.len()` bytes at `addr`, whatever the chip's `READ_SIZE`.
pub(crate) fn read<F: NorFlash>(chip: &RefCell<F>, addr: u32, out: &mut [u8]) -> Result<(), F> {
    let mut flash = chip.try_borrow_mut().map_err(|_| FlashError::Misuse("the flash is borrowed by another access"))?;
    let rs = F::READ_SIZE as u32;
    if rs <= 1 {
        return flash.read(addr, out).map_err(|error| FlashError::Flash { error, offset: addr });
    }
    let mut bounce = Aligned([0u8; CHUNK]);
    let mut done = 0usize;
    while done < out.len() {
        let at = addr.checked_add(done as u32).ok_or(FlashError::Misuse("read past 4 GiB"))?;
        let base = at & !(rs - 1);
        let skip = (at - base) as usize;
        let take = (CHUNK - skip).min(out.len() - done);
        let len = round_up((skip + take) as u32, rs).ok_or(FlashError::Misuse("read length"))? as usize;
        let window = bounce.0.get_mut(..len).ok_or(FlashError::Misuse("bounce buffer"))?;
        flash.read(base, window).map_err(|error| FlashError::Flash { error, offset: base })?;
        let src = bounce.0.get(skip..skip + take).ok_or(FlashError::Misuse("bounce buffer"))?;
        let dst = out.get_mut(done..done + take).ok_or(FlashError::Misuse("read buffer"))?;
        dst.copy_from_slice(src);
        done += take;
    }
    Ok(())
}

/// Writes `bytes` (aligned, a multiple of the write size) at `addr`.
fn program<F: NorFlash>(chip: &RefCell<F>, addr: u32, bytes: &[u8]) -> Result<(), F> {
    let mut flash = chip.try_borrow_mut().map_err(|_| FlashError::Misuse("the flash is borrowed by another access"))?;
    flash.write(addr, bytes).map_err(|error| FlashError::Flash { error, offset: addr })
}

/// Erases `from..to` (erase-unit aligned). One call, so a chip erases the units in order.
pub(crate) fn erase<F: NorFlash>(chip: &RefCell<F>, from: u32, to: u32) -> Result<(), F> {
    let mut flash = chip.try_borrow_mut().map_err(|_| FlashError::Misuse("the flash is borrowed by another access"))?;
    flash.erase(from, to).map_err(|error| FlashError::Flash { error, offset: from })
}

/// Writes a small record (a frame header, an area header, a commit record) padded with `0xFF`
/// to `slot` bytes, in one write call.
pub(crate) fn write_small<F: NorFlash>(chip: &RefCell<F>, addr: u32, bytes: &[u8], slot: u32) -> Result<(), F> {
    let mut buf = Aligned([0xFFu8; MAX_WORD]);
    let slot = slot as usize;
    buf.0.get_mut(..bytes.len()).ok_or(FlashError::Misuse("small record longer than its slot"))?.copy_from_slice(bytes);
    program(chip, addr, buf.0.get(..slot).ok_or(FlashError::Misuse("slot longer than 32 bytes"))?)
}

/// Where a frame's payload comes from.
pub(crate) enum Payload<'a> {
    /// Slices written one after the other.
    Slices(&'a [&'a [u8]]),
    /// `len` bytes already on flash at `addr` (compaction copies frames).
    Flash { addr: u32, len: u32 },
}

/// Streams a payload to `addr` through an aligned staging buffer, padding the last word with
/// `0xFF`. Returns the padded length written. `digest` sees the unpadded bytes.
pub(crate) fn write_payload<F: NorFlash>(
    chip: &RefCell<F>,
    addr: u32,
    payload: &Payload<'_>,
    align: u32,
    mut digest: Option<&mut crc::Digest<'static, u32>>,
) -> Result<u32, F> {
    let mut stage = Aligned([0xFFu8; CHUNK]);
    let mut fill = 0usize;
    let mut at = addr;
    let flush = |stage: &mut Aligned<CHUNK>, fill: &mut usize, at: &mut u32, last: bool| -> Result<(), F> {
        let len = if last { round_up(*fill as u32, align).ok_or(FlashError::Misuse("pad"))? as usize } else { *fill };
        if len == 0 {
            return Ok(());
        }
        if let Some(pad) = stage.0.get_mut(*fill..len) {
            pad.fill(0xFF);
        }
        program(chip, *at, stage.0.get(..len).ok_or(FlashError::Misuse("staging buffer"))?)?;
        *at += len as u32;
        *fill = 0;
        Ok(())
    };
    let push = |bytes: &[u8], stage: &mut Aligned<CHUNK>, fill: &mut usize, at: &mut u32| -> Result<(), F> {
        let mut rest = bytes;
        while !rest.is_empty() {
            let room = CHUNK - *fill;
            let n = room.min(rest.len());
            let (head, tail) = rest.split_at(n);
            stage.0.get_mut(*fill..*fill + n).ok_or(FlashError::Misuse("staging buffer"))?.copy_from_slice(head);
            *fill += n;
            rest = tail;
            if *fill == CHUNK {
                flush(stage, fill, at, false)?;
            }
        }
        Ok(())
    };
    match payload {
        Payload::Slices(parts) => {
            for part in *parts {
                if let Some(d) = digest.as_deref_mut() {
                    d.update(part);
                }
                push(part, &mut stage, &mut fill, &mut at)?;
            }
        }
        Payload::Flash { addr: src, len } => {
            let mut chunk = [0u8; CHUNK];
            let mut done = 0u32;
            while done < *len {
                let n = (*len - done).min(CHUNK as u32) as usize;
                let part = chunk.get_mut(..n).ok_or(FlashError::Misuse("copy buffer"))?;
                read(chip, src + done, part)?;
                if let Some(d) = digest.as_deref_mut() {
                    d.update(part);
                }
                push(part, &mut stage, &mut fill, &mut at)?;
                done += n as u32;
            }
        }
    }
    flush(&mut stage, &mut fill, &mut at, true)?;
    Ok(at - addr)
}
