#![cfg_attr(not(any(test, feature = "std")), no_std)]
#![doc = include_str!("../README.md")]

#[cfg(feature = "alloc")]
extern crate alloc;

mod fmt;

pub mod backend;
pub mod collections;
pub mod error;
pub mod image;
pub mod mem;
pub mod memports;
pub mod node;
mod observe;
pub mod pipeline;
pub mod ports;
pub mod raft;
mod request;
mod snapshot;
pub mod store;

pub use error::{ApplyError, ApplyErrorKind};
pub use node::{Config, Node, Stores};
pub use pipeline::apply_snapshot;
pub use pipeline::resume;
pub use raft::{ConfState, Progress, SnapshotMetadata};
pub use request::Request;
pub use snapshot::{ImageData, Snapshot};
