#![doc = include_str!("../README.md")]
#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod bbolt;
mod error;
pub mod proto;
mod records;
mod snapshot;

pub use error::{Error, RecordFault};
pub use records::{Alarm, AuthState, ConfState, Downgrade, Layout, Member, Meta, Revision, RevisionKey, Version};
pub use snapshot::{Digest, EtcdBucket, EtcdSnapshot, Options, Revisions};
