#![cfg_attr(not(any(test, feature = "std")), no_std)]
#![doc = include_str!("../README.md")]

#[cfg(feature = "alloc")]
extern crate alloc;

mod fmt;

// What a node is and does, at the root: the node, the requests it applies, the snapshot it is
// given, the pipeline's entry points, what it reports, and its errors.
mod error;
mod node;
mod observe;
mod raft;
mod request;
mod snapshot;

// The parts a user reaches into by name: the ports an adapter implements and the backend port,
// the pipeline's states, the stores and their records, the image format, the profiles, and the
// in-memory backends and ports for hosts.
pub mod backend;
pub mod collections;
pub mod image;
pub mod mem;
pub mod memports;
pub mod pipeline;
pub mod ports;
pub mod store;

pub use error::{ApplyError, ApplyErrorKind};
pub use node::{Config, Node, Stores, Unfinished};
pub use observe::{Event, NoObserver, Observer, Phase, SnapshotFields};
pub use pipeline::{Outcome, apply_snapshot, resume};
pub use raft::{ConfState, IdList, MAX_CONF_IDS, Progress, SnapshotMetadata};
pub use request::Request;
#[cfg(feature = "alloc")]
pub use request::{CompareBuf, CompareTargetBuf, MemberBuf, RequestBuf, TxnNodeBuf, TxnOpBuf};
pub use snapshot::{ImageData, Snapshot};
