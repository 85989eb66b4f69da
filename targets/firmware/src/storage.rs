//! Where the node keeps its state: the one module that knows the medium.
//!
//! The medium is a NOR flash emulated by `snapply-flash`'s `RamFlash` (erase to 0xFF, program
//! only erased words, aligned 4-byte words, 4 KiB erase units) over the board's PSRAM at
//! [`REGION_BASE`], outside the program's 48 KiB of RAM. The region is in no ELF segment, so a
//! system reset (QEMU reloads only the ELF's segments) leaves the flash as it was, like a chip.
//! The first 4 KiB page of the region holds the board's own words (a marker that the flash was
//! erased once, as a factory erases a chip, and a boot counter); the flash follows it.

use core::cell::RefCell;
use core::ops::Range;
use core::sync::atomic::{AtomicBool, Ordering};

#[cfg(feature = "async")]
use embedded_storage::nor_flash::{NorFlash, ReadNorFlash};
use snapply_flash::{FlashBackend, FlashSnapshotStore, Indexes, RamFlash, RamStats};

/// Start of the board memory used: the mps2-an385's 16 MiB PSRAM.
pub const REGION_BASE: usize = 0x2100_0000;
/// Bytes of the PSRAM.
const REGION_LEN: usize = 16 * 1024 * 1024;
/// Bytes of the board's own page in front of the flash.
const BOARD_PAGE: usize = 4096;
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

const _: () = assert!(BOARD_PAGE + FLASH_LEN <= REGION_LEN);

/// The emulated chip.
#[cfg(not(feature = "async"))]
pub type Chip = RamFlash<'static, WRITE, ERASE>;
/// The emulated chip behind an async driver ([`AsyncRam`]), which the adapter drives through
/// `snapply_flash::BlockOn`.
#[cfg(feature = "async")]
pub type Chip = snapply_flash::BlockOn<AsyncRam>;
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
    /// This boot's number, from 1 (the flash was erased as a blank chip).
    pub boot: u32,
}

/// Why the medium cannot be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, defmt::Format)]
#[non_exhaustive]
pub enum MediumError {
    /// The region was already taken by this boot.
    Taken,
    /// The emulated flash refused its memory.
    Flash(snapply_flash::RamFlashError),
}

impl core::fmt::Display for MediumError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            MediumError::Taken => f.write_str("the board memory was taken twice"),
            MediumError::Flash(e) => write!(f, "making the emulated flash: {e}"),
        }
    }
}

impl core::error::Error for MediumError {}

/// Takes the board memory (once per boot): counts the boot, erases the flash if it was never
/// erased, and returns the chip.
pub fn take() -> Result<(RefCell<Chip>, Boot), MediumError> {
    if TAKEN.swap(true, Ordering::AcqRel) {
        return Err(MediumError::Taken);
    }
    // Safety: the PSRAM at REGION_BASE is board memory that no ELF section, the stack or other
    // code uses (memory.x places nothing there); `TAKEN` makes this the only reference to it
    // for this boot; `BOARD_PAGE + FLASH_LEN` fits in it (const assertion above). Every bit
    // pattern is a valid `u32` and `u8`.
    let (words, flash): (&'static mut [u32; 2], &'static mut [u8]) = unsafe {
        (
            &mut *(REGION_BASE as *mut [u32; 2]),
            core::slice::from_raw_parts_mut((REGION_BASE + BOARD_PAGE) as *mut u8, FLASH_LEN),
        )
    };
    let [magic, boots] = words;
    let mut chip = RamFlash::new(flash).map_err(MediumError::Flash)?;
    if *magic != MAGIC {
        chip.erase_all();
        *magic = MAGIC;
        *boots = 0;
    }
    *boots = boots.saturating_add(1);
    #[cfg(feature = "async")]
    let chip = snapply_flash::BlockOn::new(AsyncRam(chip));
    Ok((RefCell::new(chip), Boot { boot: *boots }))
}

/// The emulated chip under [`Chip`].
fn ram(chip: &mut Chip) -> &mut RamFlash<'static, WRITE, ERASE> {
    #[cfg(feature = "async")]
    let chip = &mut chip.inner_mut().0;
    chip
}

/// What the chip did since [`reset_stats`] (zeros if the chip is borrowed).
pub fn stats(chip: &RefCell<Chip>) -> RamStats {
    chip.try_borrow_mut().map(|mut chip| ram(&mut chip).stats()).unwrap_or_default()
}

/// Starts counting what the chip does afresh (nothing if the chip is borrowed).
pub fn reset_stats(chip: &RefCell<Chip>) {
    if let Ok(mut chip) = chip.try_borrow_mut() {
        ram(&mut chip).reset_stats();
    }
}

/// The emulated chip as an async NOR flash driver (`embedded-storage-async`, as embassy's flash
/// drivers are): each operation yields to the executor once before it completes, as a driver
/// waiting for its peripheral does, so the adapter's async path (`BlockOn` polling it until it
/// is ready) is what runs.
#[cfg(feature = "async")]
pub struct AsyncRam(RamFlash<'static, WRITE, ERASE>);

#[cfg(feature = "async")]
impl embedded_storage_async::nor_flash::ErrorType for AsyncRam {
    type Error = snapply_flash::RamFlashError;
}

#[cfg(feature = "async")]
impl embedded_storage_async::nor_flash::ReadNorFlash for AsyncRam {
    const READ_SIZE: usize = <RamFlash<'static, WRITE, ERASE> as ReadNorFlash>::READ_SIZE;

    async fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), Self::Error> {
        embassy_futures::yield_now().await;
        ReadNorFlash::read(&mut self.0, offset, bytes)
    }

    fn capacity(&self) -> usize {
        ReadNorFlash::capacity(&self.0)
    }
}

#[cfg(feature = "async")]
impl embedded_storage_async::nor_flash::NorFlash for AsyncRam {
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
