#![doc = include_str!("../README.md")]

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
