//! Where the node keeps its state: the one module that knows the medium.
//!
//! The medium is a NOR flash in a file on the host ([`crate::hostflash`]: erase to 0xFF,
//! program only erased words, aligned 4-byte words, 4 KiB erase units), reached through
//! semihosting: it outlives a system reset and QEMU itself, so killing QEMU is a power cut. The
//! file is named by the semihosting command line (`flash=PATH`, see [`take`]). The board's
//! PSRAM at [`REGION_BASE`], outside the program's 48 KiB of RAM and in no ELF segment, keeps
//! a boot counter across the system resets of one QEMU run.

use core::cell::RefCell;
use core::ops::Range;
use core::sync::atomic::{AtomicBool, Ordering};

#[cfg(feature = "async")]
use embedded_storage::nor_flash::{NorFlash, ReadNorFlash};
use snapply_flash::{FlashBackend, FlashSnapshotStore, Indexes};

use crate::hostflash::{HostFlash, HostFlashError};

/// Start of the board memory used: the mps2-an385's 16 MiB PSRAM.
pub const REGION_BASE: usize = 0x2100_0000;
/// Bytes of the PSRAM.
const REGION_LEN: usize = 16 * 1024 * 1024;
/// Bytes of the board's own words at [`REGION_BASE`].
const BOARD_PAGE: usize = 8;
/// Program word of the emulated flash.
pub const WRITE: usize = 4;
/// Erase unit of the emulated flash.
pub const ERASE: usize = 4096;
/// Erase units per area; the flash adapter keeps two areas (committed state, next snapshot).
/// An area holds the reference profile's snapshot (about 40 KiB, `BENCHMARKS.md`) with room for
/// the entries after it before a compaction.
const AREA_UNITS: usize = 12;
/// Bytes of flash given to the adapter.
pub const FLASH_LEN: usize = 2 * AREA_UNITS * ERASE;
/// The flash range given to the adapter: all of it.
pub const RANGE: Range<u32> = 0..FLASH_LEN as u32;
/// Live records the backend indexes: the reference profile's whole state (512 key revisions,
/// 8 leases, 3 members and 4 removed ones, 2 users, 2 roles, auth, meta, cluster and alarm
/// records), 4 bytes of RAM each in each of the two slots of [`DeviceIndexes`].
pub const RECORDS: usize = 560;
/// Largest record the backend holds.
pub const RECORD_BYTES: usize = 256;

const _: () = assert!(BOARD_PAGE <= REGION_LEN);

/// The flash file as a blocking NOR flash.
pub type Flash = HostFlash<WRITE, ERASE>;
/// The chip the adapter drives.
#[cfg(not(feature = "async"))]
pub type Chip = Flash;
/// The chip behind an async driver ([`AsyncFlash`]), which the adapter drives through
/// `snapply_flash::BlockOn`.
#[cfg(feature = "async")]
pub type Chip = snapply_flash::BlockOn<AsyncFlash>;
/// What the chip refuses.
pub type ChipError = HostFlashError;
/// The record indexes of the node's backend and of a snapshot being restored (one slot each):
/// the backends refer to them, so no index rides along when a backend moves.
pub type DeviceIndexes = Indexes<RECORDS>;
/// The node's backend on the flash.
pub type DeviceBackend<'f> = FlashBackend<'f, Chip, RECORDS, RECORD_BYTES>;
/// The snapshot store on the flash.
pub type DeviceStore<'f, 'b> = FlashSnapshotStore<'f, 'b, Chip, RECORDS, RECORD_BYTES>;

const MAGIC: u32 = 0x534e_4150; // "SNAP"

static TAKEN: AtomicBool = AtomicBool::new(false);

/// How the board was found at boot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, defmt::Format)]
pub struct Boot {
    /// This boot's number in this QEMU run, from 1.
    pub boot: u32,
    /// The flash file did not exist: the chip is blank.
    pub blank: bool,
    /// Cut the power after this many bytes programmed or erased by the first restore
    /// (`cut=N` on the semihosting command line).
    pub cut: Option<u64>,
    /// Follow a host over the link on UART0 (`link` on the command line) instead of
    /// restoring the images built in.
    pub link: bool,
}

/// Why the medium cannot be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, defmt::Format)]
#[non_exhaustive]
pub enum MediumError {
    /// The region was already taken by this boot.
    Taken,
    /// The flash file could not be opened.
    Flash(HostFlashError),
    /// The semihosting command line could not be read, or holds a word this board does not
    /// know.
    Args,
}

impl core::fmt::Display for MediumError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            MediumError::Taken => f.write_str("the board memory was taken twice"),
            MediumError::Flash(e) => write!(f, "opening the flash file: {e}"),
            MediumError::Args => f.write_str(
                "the semihosting command line is not `[flash=PATH] [cut=BYTES] [link]` (QEMU `-semihosting-config arg=...`)",
            ),
        }
    }
}

impl core::error::Error for MediumError {}

/// The flash file when the command line names none, in QEMU's working directory.
pub const DEFAULT_FLASH_FILE: &str = "snapply-flash.bin";

/// Longest flash file path taken from the command line.
const PATH_MAX: usize = 128;

/// What the semihosting command line says: `flash=PATH` (default [`DEFAULT_FLASH_FILE`]),
/// `cut=BYTES` and `link`; the first word, the program's name, is skipped.
#[inline(never)]
fn args(path: &mut [u8; PATH_MAX]) -> Result<(Option<u64>, bool), MediumError> {
    let mut cut = None;
    let mut link = false;
    let mut name: &[u8] = DEFAULT_FLASH_FILE.as_bytes();
    let args = semihosting::experimental::env::args::<256>().map_err(|_| MediumError::Args)?;
    for arg in (&args).skip(1) {
        let arg = arg.map_err(|_| MediumError::Args)?;
        if let Some(p) = arg.strip_prefix("flash=") {
            name = p.as_bytes();
        } else if arg == "link" {
            link = true;
        } else if let Some(n) = arg.strip_prefix("cut=") {
            cut = Some(n.parse::<u64>().map_err(|_| MediumError::Args)?);
        } else {
            return Err(MediumError::Args);
        }
    }
    // The path and its terminating NUL.
    let dst = path.get_mut(..name.len()).ok_or(MediumError::Args)?;
    dst.copy_from_slice(name);
    *path.get_mut(name.len()).ok_or(MediumError::Args)? = 0;
    Ok((cut, link))
}

/// Takes the board (once per boot): counts the boot and opens the flash file the semihosting
/// command line names.
pub fn take() -> Result<(RefCell<Chip>, Boot), MediumError> {
    if TAKEN.swap(true, Ordering::AcqRel) {
        return Err(MediumError::Taken);
    }
    // Safety: the PSRAM at REGION_BASE is board memory that no ELF section, the stack or other
    // code uses (memory.x places nothing there); `TAKEN` makes this the only reference to it
    // for this boot; `BOARD_PAGE` fits in it (const assertion above). Every bit pattern is a
    // valid `u32`.
    let words: &'static mut [u32; 2] = unsafe { &mut *(REGION_BASE as *mut [u32; 2]) };
    let [magic, boots] = words;
    if *magic != MAGIC {
        *magic = MAGIC;
        *boots = 0;
    }
    *boots = boots.saturating_add(1);
    let mut path = [0u8; PATH_MAX];
    let (cut, link) = args(&mut path)?;
    let path = core::ffi::CStr::from_bytes_until_nul(&path).map_err(|_| MediumError::Args)?;
    let (chip, blank) = Flash::open(path, FLASH_LEN as u32).map_err(MediumError::Flash)?;
    #[cfg(feature = "async")]
    let chip = snapply_flash::BlockOn::new(AsyncFlash(chip));
    Ok((RefCell::new(chip), Boot { boot: *boots, blank, cut, link }))
}

/// Calls `f` with the flash file under the chip (its counters and its power cut); `None` if the
/// chip is borrowed.
pub fn with_flash<R>(chip: &RefCell<Chip>, f: impl FnOnce(&mut Flash) -> R) -> Option<R> {
    let mut chip = chip.try_borrow_mut().ok()?;
    #[cfg(feature = "async")]
    let flash = &mut chip.inner_mut().0;
    #[cfg(not(feature = "async"))]
    let flash = &mut *chip;
    Some(f(flash))
}

/// The flash file as an async NOR flash driver (`embedded-storage-async`, as embassy's flash
/// drivers are): each operation yields to the executor once before it completes, as a driver
/// waiting for its peripheral does, so the adapter's async path (`BlockOn` polling it until it
/// is ready) is what runs.
#[cfg(feature = "async")]
pub struct AsyncFlash(Flash);

#[cfg(feature = "async")]
impl embedded_storage_async::nor_flash::ErrorType for AsyncFlash {
    type Error = HostFlashError;
}

#[cfg(feature = "async")]
impl embedded_storage_async::nor_flash::ReadNorFlash for AsyncFlash {
    const READ_SIZE: usize = <Flash as ReadNorFlash>::READ_SIZE;

    async fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), Self::Error> {
        embassy_futures::yield_now().await;
        ReadNorFlash::read(&mut self.0, offset, bytes)
    }

    fn capacity(&self) -> usize {
        ReadNorFlash::capacity(&self.0)
    }
}

#[cfg(feature = "async")]
impl embedded_storage_async::nor_flash::NorFlash for AsyncFlash {
    const WRITE_SIZE: usize = WRITE;
    const ERASE_SIZE: usize = ERASE;

    async fn erase(&mut self, from: u32, to: u32) -> Result<(), Self::Error> {
        embassy_futures::yield_now().await;
        NorFlash::erase(&mut self.0, from, to)
    }

    async fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), Self::Error> {
        embassy_futures::yield_now().await;
        NorFlash::write(&mut self.0, offset, bytes)
    }
}
