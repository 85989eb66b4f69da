// Why the on-flash layout is hand-written rather than `sequential-storage`'s (8.x), the usual
// crate for key-value data on NOR flash (its futures would complete at once on a blocking
// flash, so being async-only is not the obstacle):
// - A restore replaces the whole state atomically: the old state stays intact and readable
//   until one small write (the commit record) makes the new one live, and a power cut before it
//   leaves the old one. That takes two areas and an atomic swap between them;
//   `sequential-storage`'s map overwrites items one at a time in one flash range, so a restore
//   cut half-way would leave a mix of old and new records.
// - A node's write transaction (a clear of a bucket and thousands of puts for a snapshot; a
//   put, a lease and the consistent index for one request) must be all or nothing. Its map
//   stores one item atomically and has no multi-item transaction committed by one write.
// - The backend scans a bucket in key order from a key; the map's iterator returns items in
//   storage order, with superseded copies, and has no bucket clear.
// - Removing an item needs `MultiwriteNorFlash` (a word written twice), which flashes with
//   ECC or write-once words (and this crate's mock) do not allow.
// - Wear: a restore must erase each erase unit at most once; the map's garbage collection
//   erases a page and migrates its live items whenever the range fills, so what a restore
//   erases depends on how full the range already was.
// The hand-written layout is small and specified in FORMAT.md; its frames are CRC-32C checked
// like the image's, and `tests/power_cut.rs` checks it at every byte of a restore.
#![cfg_attr(not(any(test, feature = "mock")), no_std)]
#![doc = include_str!("../README.md")]

mod fmt;

#[cfg(feature = "async")]
mod asynch;
mod backend;
mod boot;
mod chip;
mod error;
mod log;
#[cfg(any(test, feature = "mock"))]
pub mod mock;
#[cfg(any(test, feature = "ram"))]
mod ram;
mod store;

#[cfg(feature = "async")]
pub use asynch::BlockOn;
pub use backend::{FlashBackend, FlashRead, FlashWrite, Indexes};
pub use boot::{BootError, Booted, RefusedSnapshot};
pub use error::FlashError;
#[cfg(any(test, feature = "ram"))]
pub use ram::{RamFlash, RamFlashError, RamStats, check_erased, erase_span, span, write_span};
pub use store::{FlashSnapshotStore, Mounted, OtherArea, PendingSnapshot, mount};
