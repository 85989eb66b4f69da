//! The errors of reading an etcd snapshot.

use core::fmt;
use std::io;

use crate::bbolt::BoltError;

/// Why one record of a bucket could not be decoded.
#[derive(Debug)]
#[non_exhaustive]
pub enum RecordFault {
    /// The protobuf value does not decode.
    Protobuf(prost::DecodeError),
    /// The JSON value does not decode.
    Json(serde_json::Error),
    /// The value (or key) does not have the length its layout fixes.
    Length {
        /// What was expected.
        expected: &'static str,
        /// The length found.
        found: usize,
    },
    /// A `key` bucket key is not `main (8 bytes) '_' sub (8 bytes)` with an optional `t`.
    RevisionKey,
    /// The key does not match the id or name inside the value.
    KeyMismatch,
    /// A member id key is not a hexadecimal `u64`.
    MemberKey,
    /// A version string is not `major.minor.patch`.
    Version,
    /// A value that must be text is not UTF-8.
    Utf8,
    /// An enumeration holds a value etcd does not define.
    UnknownEnum(i32),
    /// The entry is a nested bucket where etcd stores plain values.
    NestedBucket,
    /// A top-level name that etcd uses for a bucket holds a plain value.
    NotABucket,
}

impl fmt::Display for RecordFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecordFault::Protobuf(e) => write!(f, "bad protobuf: {e}"),
            RecordFault::Json(e) => write!(f, "bad JSON: {e}"),
            RecordFault::Length { expected, found } => write!(f, "{found} bytes where {expected} are expected"),
            RecordFault::RevisionKey => f.write_str("not a revision key (8-byte main, '_', 8-byte sub, optional 't')"),
            RecordFault::KeyMismatch => f.write_str("the key does not match the value's id or name"),
            RecordFault::MemberKey => f.write_str("not a hexadecimal member id"),
            RecordFault::Version => f.write_str("not a major.minor.patch version"),
            RecordFault::Utf8 => f.write_str("not UTF-8"),
            RecordFault::UnknownEnum(v) => write!(f, "unknown enumeration value {v}"),
            RecordFault::NestedBucket => f.write_str("a nested bucket where a value is expected"),
            RecordFault::NotABucket => f.write_str("a plain value where a bucket is expected"),
        }
    }
}

/// An etcd snapshot could not be read.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The file could not be opened or measured.
    Open {
        /// The path.
        path: std::path::PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The bbolt database is unreadable or malformed.
    Bolt(BoltError),
    /// The SHA-256 trailer that `etcdctl snapshot save` appends does not match the database
    /// bytes before it: the file was damaged after it was saved.
    DigestMismatch {
        /// The digest stored in the trailer.
        stored: [u8; 32],
        /// The digest of the database bytes.
        computed: [u8; 32],
    },
    /// A record of a bucket does not decode as etcd writes it.
    Record {
        /// The bucket.
        bucket: &'static str,
        /// The record's key.
        key: Vec<u8>,
        /// What is wrong.
        fault: RecordFault,
    },
}

impl Error {
    pub(crate) fn record(bucket: &'static str, key: &[u8], fault: RecordFault) -> Self {
        Error::Record { bucket, key: key.to_vec(), fault }
    }
}

struct Hex<'a>(&'a [u8]);

impl fmt::Display for Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Open { path, source } => write!(f, "cannot open {}: {source}", path.display()),
            Error::Bolt(e) => write!(f, "bad bbolt database: {e}"),
            Error::DigestMismatch { stored, computed } => write!(
                f,
                "snapshot damaged: its SHA-256 trailer is {} but the database hashes to {}",
                Hex(stored),
                Hex(computed)
            ),
            Error::Record { bucket, key, fault } => {
                write!(f, "bad record in bucket `{bucket}` at key {}: {fault}", key.escape_ascii())
            }
        }
    }
}

impl core::error::Error for Error {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            Error::Open { source, .. } => Some(source),
            Error::Bolt(e) => Some(e),
            Error::Record { fault: RecordFault::Protobuf(e), .. } => Some(e),
            Error::Record { fault: RecordFault::Json(e), .. } => Some(e),
            _ => None,
        }
    }
}

impl From<BoltError> for Error {
    fn from(e: BoltError) -> Self {
        Error::Bolt(e)
    }
}
