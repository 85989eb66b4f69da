//! Async NOR flash (`embedded_storage_async::nor_flash::NorFlash`, what embassy's flash drivers
//! and most async HALs implement) under the blocking traits this adapter is written on.
//!
//! Why this way round: the core's ports are synchronous (one pipeline for every target; see
//! docs/dev/style.md), so the backend must have each read and write done before it returns. An
//! async driver is therefore driven to completion where it is called
//! ([`embassy_futures::block_on`] polls the operation until it is ready: a driver that finishes
//! by interrupt or by polling its peripheral finishes the same way). One implementation of the
//! layout, the commit protocol and the power-cut rules then serves both kinds of flash, and the
//! power-cut sweep runs on both (`tests/async_flash.rs`). The other way round, the adapter
//! async at its core, would need every store operation of the core to be async as well.

use embedded_storage::nor_flash::{ErrorType, NorFlash, ReadNorFlash};
use embedded_storage_async::nor_flash::{NorFlash as AsyncNorFlash, ReadNorFlash as AsyncReadNorFlash};

/// An async NOR flash seen through the blocking traits: each operation is polled to completion
/// as it is called. Give it to [`crate::mount`] and [`crate::FlashBackend`] as any blocking flash.
#[derive(Clone, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct BlockOn<F>(F);

impl<F> BlockOn<F> {
    /// Wraps an async flash.
    pub const fn new(flash: F) -> Self {
        BlockOn(flash)
    }

    /// The async flash.
    pub fn inner(&self) -> &F {
        &self.0
    }

    /// The async flash, mutably.
    pub fn inner_mut(&mut self) -> &mut F {
        &mut self.0
    }

    /// Unwraps the async flash.
    pub fn into_inner(self) -> F {
        self.0
    }
}

impl<F: ErrorType> ErrorType for BlockOn<F> {
    type Error = F::Error;
}

impl<F: AsyncReadNorFlash> ReadNorFlash for BlockOn<F> {
    const READ_SIZE: usize = F::READ_SIZE;

    fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), Self::Error> {
        embassy_futures::block_on(self.0.read(offset, bytes))
    }

    fn capacity(&self) -> usize {
        self.0.capacity()
    }
}

impl<F: AsyncNorFlash> NorFlash for BlockOn<F> {
    const WRITE_SIZE: usize = F::WRITE_SIZE;
    const ERASE_SIZE: usize = F::ERASE_SIZE;

    fn erase(&mut self, from: u32, to: u32) -> Result<(), Self::Error> {
        embassy_futures::block_on(self.0.erase(from, to))
    }

    fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), Self::Error> {
        embassy_futures::block_on(self.0.write(offset, bytes))
    }
}
