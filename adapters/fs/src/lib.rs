#![doc = include_str!("../README.md")]
#![warn(missing_docs)]
#![forbid(unsafe_code)]
// Files and images are input: no path they reach may panic.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, clippy::unreachable)
)]

mod backend;
mod bulk;
mod datadir;
mod driver;
mod durable;
mod error;
mod failpoint;
mod snapfile;
mod store;
mod tasks;

pub use backend::{RedbBackend, RedbRead, RedbReadOnly, RedbView, RedbWrite};
pub use datadir::{Boot, DataDir, PendingSnapshot, SnapName};
pub use driver::{
    AsyncNode, DiskNode, PersistedSnapshot, ReadSlot, ReadView, apply_persisted, apply_received,
    persist_file_for_apply, persist_for_apply, persist_stream_for_apply,
};
#[cfg(feature = "failpoints")]
pub use durable::journal;
pub use error::FsError;
#[cfg(feature = "failpoints")]
pub use failpoint::{CRASH_EXIT_CODE, FAILPOINTS};
pub use snapfile::SnapInfo;
pub use store::{FsSnapshotStore, MAX_VALUE_LEN, persist};
pub use tasks::{close_async, persist_async};
