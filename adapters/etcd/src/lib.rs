#![doc = include_str!("../README.md")]

pub mod bbolt;
mod convert;
mod error;
pub mod proto;
mod records;
mod snapshot;

pub use convert::{ImportError, ImportMetadata, ImportOptions, Imported, Origin, import, import_metadata};
pub use error::{Error, RecordFault};
pub use records::{Alarm, AuthState, ConfState, Downgrade, Layout, Member, Meta, Revision, RevisionKey, Version};
pub use snapshot::{Digest, EtcdBucket, EtcdSnapshot, Options, Revisions};
