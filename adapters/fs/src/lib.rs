#![doc = include_str!("../README.md")]
#![warn(missing_docs)]
#![forbid(unsafe_code)]

mod backend;
mod error;

pub use backend::{RedbBackend, RedbRead, RedbWrite};
pub use error::FsError;
