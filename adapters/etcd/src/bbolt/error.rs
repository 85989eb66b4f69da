//! What can be wrong with a bbolt file.

use core::fmt;
use std::io;

/// Where a page came from: a page of the file, or the page stored inline in a bucket's value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageLoc {
    /// The page with this id (its offset is `id * page_size`).
    Page(u64),
    /// The page stored inline in the value of a small bucket (bbolt's inline buckets).
    Inline,
}

impl fmt::Display for PageLoc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PageLoc::Page(id) => write!(f, "page {id}"),
            PageLoc::Inline => f.write_str("an inline bucket page"),
        }
    }
}

/// Why one meta page (page 0 or 1) was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum MetaFault {
    /// The file ends before the meta page.
    Missing,
    /// The magic number is not bbolt's `0xED0CDAED`.
    BadMagic(u32),
    /// The format version is not 2.
    BadVersion(u32),
    /// The FNV-1a 64 checksum of the meta does not match the one stored in it.
    BadChecksum {
        /// The checksum stored in the meta.
        stored: u64,
        /// The checksum of the bytes.
        computed: u64,
    },
    /// The meta is well-formed but says something impossible (page size, root, high-water mark).
    Inconsistent(&'static str),
}

impl fmt::Display for MetaFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MetaFault::Missing => f.write_str("missing (the file ends first)"),
            MetaFault::BadMagic(m) => write!(f, "bad magic {m:#010x} (expected 0xed0cdaed)"),
            MetaFault::BadVersion(v) => write!(f, "unsupported version {v} (expected 2)"),
            MetaFault::BadChecksum { stored, computed } => {
                write!(f, "checksum mismatch (stored {stored:#018x}, computed {computed:#018x})")
            }
            MetaFault::Inconsistent(what) => write!(f, "inconsistent: {what}"),
        }
    }
}

/// A bbolt file could not be read: the medium failed or the bytes are not a sound bbolt file.
#[derive(Debug)]
#[non_exhaustive]
pub enum BoltError {
    /// The medium failed while reading `len` bytes at `offset`.
    Io {
        /// Offset of the read.
        offset: u64,
        /// Length of the read.
        len: u64,
        /// The medium's error.
        source: io::Error,
    },
    /// The file is too short to hold even one meta page.
    TooSmall {
        /// The length of the file (without a snapshot trailer).
        len: u64,
    },
    /// Page 0 does not carry bbolt's magic number, and no meta page was found elsewhere:
    /// this is not a bbolt file.
    NotBbolt {
        /// The first 4 bytes of page 0's meta, as bbolt reads them.
        magic: u32,
    },
    /// Neither meta page is valid (bad checksums, version, or contents).
    NoValidMeta {
        /// Why page 0 was refused.
        meta0: MetaFault,
        /// Why page 1 was refused.
        meta1: MetaFault,
    },
    /// The file ends before the last page the meta says is in use.
    Truncated {
        /// Bytes the meta's high-water mark needs (`pgid * page_size`).
        needed: u64,
        /// Bytes the file has (without a snapshot trailer).
        len: u64,
    },
    /// The file is not a whole number of pages (bbolt only ever grows its file by whole pages):
    /// it was cut short, or has bytes appended.
    PartialPage {
        /// Bytes the file has (without a snapshot trailer).
        len: u64,
        /// The page size.
        page_size: u32,
    },
    /// A page id points at a meta page or past the meta's high-water mark.
    PageOutOfRange {
        /// The page id.
        page: u64,
        /// The page that referenced it.
        from: PageLoc,
        /// The high-water mark (first page id not in use).
        high_water: u64,
    },
    /// A page's header names a different page id than its position in the file.
    PageIdMismatch {
        /// The page read.
        page: u64,
        /// The id its header holds.
        found: u64,
    },
    /// A page's overflow run goes past the high-water mark or the configured size limit.
    OverflowTooLong {
        /// The page.
        page: u64,
        /// The overflow count in its header.
        overflow: u32,
    },
    /// A page has a type that cannot appear where it was found (e.g. a freelist page inside a
    /// bucket's B+tree, or a branch page stored inline).
    UnexpectedPageType {
        /// The page.
        page: PageLoc,
        /// Its flags.
        flags: u16,
    },
    /// A page's element count does not fit in the page.
    CountTooLarge {
        /// The page.
        page: PageLoc,
        /// The element count in its header.
        count: u16,
        /// How many elements the page's bytes can hold at most.
        capacity: u64,
    },
    /// A branch page has no elements, so its subtree cannot be reached.
    EmptyBranch {
        /// The page.
        page: u64,
    },
    /// An element's key or value lies outside its page.
    ElementOutOfBounds {
        /// The page.
        page: PageLoc,
        /// The element's index.
        index: u16,
    },
    /// A page is reached twice while walking a bucket: the tree has a loop or a shared page.
    PageCycle {
        /// The page reached again.
        page: u64,
    },
    /// The tree is deeper than any tree bbolt builds.
    TooDeep {
        /// The page at which the limit was hit.
        page: u64,
    },
    /// Keys of a bucket are not in strictly increasing order.
    KeysOutOfOrder {
        /// The page holding the offending key.
        page: PageLoc,
        /// The element's index.
        index: u16,
    },
    /// A bucket value is shorter than bbolt's 16-byte bucket header.
    BadBucketHeader {
        /// The page holding the entry.
        page: PageLoc,
        /// The value's length.
        len: u64,
    },
}

impl fmt::Display for BoltError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BoltError::Io { offset, len, source } => {
                write!(f, "reading {len} bytes at offset {offset} failed: {source}")
            }
            BoltError::TooSmall { len } => write!(f, "file of {len} bytes is too small to be a bbolt database"),
            BoltError::NotBbolt { magic } => {
                write!(f, "not a bbolt database: magic {magic:#010x} instead of 0xed0cdaed")
            }
            BoltError::NoValidMeta { meta0, meta1 } => {
                write!(f, "no valid meta page: page 0 {meta0}; page 1 {meta1}")
            }
            BoltError::Truncated { needed, len } => {
                write!(f, "file cut short: the meta needs {needed} bytes of pages, the file has {len}")
            }
            BoltError::PartialPage { len, page_size } => write!(
                f,
                "file of {len} bytes is not a whole number of {page_size}-byte pages: cut short, or with bytes appended"
            ),
            BoltError::PageOutOfRange { page, from, high_water } => {
                write!(f, "{from} references page {page}, outside the pages in use (2..{high_water})")
            }
            BoltError::PageIdMismatch { page, found } => write!(f, "page {page} says it is page {found}"),
            BoltError::OverflowTooLong { page, overflow } => {
                write!(f, "page {page} has an overflow of {overflow} pages, past the end or the size limit")
            }
            BoltError::UnexpectedPageType { page, flags } => {
                write!(f, "{page} has page type {flags:#06x}, not expected here")
            }
            BoltError::CountTooLarge { page, count, capacity } => {
                write!(f, "{page} claims {count} elements but can hold at most {capacity}")
            }
            BoltError::EmptyBranch { page } => write!(f, "branch page {page} has no elements"),
            BoltError::ElementOutOfBounds { page, index } => {
                write!(f, "element {index} of {page} lies outside the page")
            }
            BoltError::PageCycle { page } => write!(f, "page {page} is reached twice: the tree has a loop"),
            BoltError::TooDeep { page } => write!(f, "the tree is too deep at page {page}"),
            BoltError::KeysOutOfOrder { page, index } => {
                write!(f, "key of element {index} of {page} is not above the key before it")
            }
            BoltError::BadBucketHeader { page, len } => {
                write!(f, "bucket value of {len} bytes on {page} is shorter than a bucket header")
            }
        }
    }
}

impl core::error::Error for BoltError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            BoltError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}
