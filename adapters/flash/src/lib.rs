#![cfg_attr(not(any(test, feature = "mock")), no_std)]
#![doc = include_str!("../README.md")]
#![warn(missing_docs)]
#![forbid(unsafe_code)]
#![cfg_attr(
    not(test),
    deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::unreachable)
)]

mod fmt;

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

pub use backend::{FlashBackend, FlashRead, FlashWrite};
pub use boot::BootError;
pub use error::FlashError;
#[cfg(any(test, feature = "ram"))]
pub use ram::{RamFlash, RamFlashError, RamStats};
pub use store::{FlashSnapshotStore, Mounted, OtherArea, PendingSnapshot, PersistedSnapshot, mount};
