//! A read-only reader of bbolt database files, as etcd writes them.
//!
//! # Why not a crate
//! The Rust ports of bbolt fall short of what a snapshot importer needs. `bbolt-rs` is a
//! full read-write port that memory-maps the whole file, takes a file lock, uses `unsafe`
//! casts over the mapped bytes and trusts their offsets, and brings a large dependency tree;
//! it opens a database, not an arbitrary `Read + Seek`, and cannot skip etcd's SHA-256
//! trailer. `bolt-lite` reads the whole file into memory and deliberately skips the meta
//! checksums. Neither detects page loops or bounds element counts by the page size. So this
//! module reads the format itself, page by page, from any [`ReadAt`].
//!
//! # The format (bbolt `internal/common`, little-endian as on every platform etcd ships)
//! - Every page starts with a 16-byte header: `id u64`, `flags u16` (branch `0x01`, leaf
//!   `0x02`, meta `0x04`, freelist `0x10`), `count u16`, `overflow u32`. A page with overflow
//!   `n` spans `n + 1` consecutive pages.
//! - Pages 0 and 1 hold the meta after the header: `magic u32` (`0xED0CDAED`), `version u32`
//!   (2), `page_size u32`, `flags u32`, root bucket (`root pgid u64`, `sequence u64`),
//!   `freelist pgid u64` (all ones under `NoFreelistSync`, as etcd runs), `pgid u64` (the
//!   high-water mark), `txid u64`, `checksum u64` (FNV-1a 64 of the 56 bytes before it). The
//!   valid meta with the higher txid is current (bbolt `DB.meta`).
//! - Branch elements are 16 bytes: `pos u32`, `ksize u32`, `pgid u64`; leaf elements are 16
//!   bytes: `flags u32` (`0x01`: the value is a bucket), `pos u32`, `ksize u32`, `vsize u32`.
//!   `pos` counts from the element itself.
//! - A bucket value is a 16-byte header (`root pgid u64`, `sequence u64`); when `root` is 0
//!   the bucket's only page, a leaf, follows the header inline.

mod error;
mod source;

use std::collections::HashSet;
use std::ops::ControlFlow;

pub use error::{BoltError, MetaFault, PageLoc};
pub use source::{ReadAt, SeekReader};

/// bbolt's magic number.
pub const MAGIC: u32 = 0xED0C_DAED;
/// The only bbolt file format version.
pub const VERSION: u32 = 2;
/// The freelist page id of a database that does not persist its freelist (`NoFreelistSync`,
/// which etcd sets).
pub const NO_FREELIST: u64 = u64::MAX;

const PAGE_HEADER: usize = 16;
const ELEMENT: usize = 16;
const META_LEN: usize = 64;
/// The meta bytes the checksum covers: everything before the checksum field.
const META_SUMMED: usize = 56;
const BUCKET_HEADER: usize = 16;

const BRANCH: u16 = 0x01;
const LEAF: u16 = 0x02;
const BUCKET_LEAF_FLAG: u32 = 0x01;

/// The smallest and largest page sizes accepted. bbolt uses the OS page size (4 KiB on x86-64,
/// up to 64 KiB on some arm64 kernels) and probes up to 16 MiB when page 0 is damaged.
const MIN_PAGE_SIZE: u32 = 512;
const MAX_PAGE_SIZE: u32 = 16 << 20;
/// A bucket B+tree deeper than this cannot exist in a file of at most 2^64 bytes (every branch
/// page holds at least two children), so a deeper walk is corruption.
const MAX_DEPTH: usize = 64;

/// Limits on what the reader allocates for one page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// The largest page run (a page and its overflow pages) read into memory, in bytes. A value
    /// lives in one run, so this is also the largest value that can be read. etcd limits a
    /// request to 1.5 MiB by default (`--max-request-bytes`); the default here is 64 MiB.
    pub max_page_run: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_page_run: 64 << 20 }
    }
}

/// The current meta page of a database.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Meta {
    /// Which meta page (0 or 1) is current.
    pub page: u8,
    /// The page size in bytes.
    pub page_size: u32,
    /// The meta's flags (unused by bbolt today).
    pub flags: u32,
    /// The root page of the root bucket.
    pub root: u64,
    /// The root bucket's sequence.
    pub root_sequence: u64,
    /// The freelist page, or `None` when the freelist is not persisted (`NoFreelistSync`).
    pub freelist: Option<u64>,
    /// The high-water mark: the first page id not in use.
    pub high_water: u64,
    /// The id of the transaction that wrote this meta.
    pub txid: u64,
    /// Whether the other meta page is valid too.
    pub other_valid: bool,
}

/// A bucket: where its tree is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bucket {
    root: Root,
    sequence: u64,
    /// The page holding the bucket's header (a meta page for the root bucket), named in errors.
    parent: PageLoc,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Root {
    Page(u64),
    /// The bytes of the inline leaf page, header included.
    Inline(Vec<u8>),
}

impl Bucket {
    /// The bucket's sequence (`NextSequence` in bbolt).
    pub fn sequence(&self) -> u64 {
        self.sequence
    }

    /// The bucket's root page id, or `None` for an inline bucket.
    pub fn root_page(&self) -> Option<u64> {
        match self.root {
            Root::Page(id) => Some(id),
            Root::Inline(_) => None,
        }
    }

    fn from_value(value: &[u8], loc: PageLoc) -> Result<Bucket, BoltError> {
        let bad = || BoltError::BadBucketHeader { page: loc, len: value.len() as u64 };
        let root = read_u64(value, 0).ok_or_else(bad)?;
        let sequence = read_u64(value, 8).ok_or_else(bad)?;
        let root = if root == 0 {
            Root::Inline(value.get(BUCKET_HEADER..).ok_or_else(bad)?.to_vec())
        } else {
            Root::Page(root)
        };
        Ok(Bucket { root, sequence, parent: loc })
    }
}

/// One entry of a bucket, as a [`Cursor`] yields it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry<'a> {
    key: &'a [u8],
    value: &'a [u8],
    is_bucket: bool,
    loc: PageLoc,
}

impl<'a> Entry<'a> {
    /// The key.
    pub fn key(&self) -> &'a [u8] {
        self.key
    }

    /// The value as stored: for a nested bucket, its bucket header (and inline page).
    pub fn value(&self) -> &'a [u8] {
        self.value
    }

    /// Whether the value is a nested bucket.
    pub fn is_bucket(&self) -> bool {
        self.is_bucket
    }

    /// The nested bucket this entry holds, or `None` for a plain value.
    pub fn bucket(&self) -> Result<Option<Bucket>, BoltError> {
        if self.is_bucket { Bucket::from_value(self.value, self.loc).map(Some) } else { Ok(None) }
    }
}

/// A bbolt database opened read-only over a [`ReadAt`] source.
pub struct Db<S> {
    source: S,
    len: u64,
    meta: Meta,
    limits: Limits,
}

impl<S> core::fmt::Debug for Db<S> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        // The source is left out: it may be the whole file in memory.
        f.debug_struct("Db").field("len", &self.len).field("meta", &self.meta).field("limits", &self.limits).finish()
    }
}

impl<S: ReadAt> Db<S> {
    /// Opens the whole of `source` as a bbolt database.
    pub fn open(source: S) -> Result<Self, BoltError> {
        let len = source.size().map_err(|source| BoltError::Io { offset: 0, len: 0, source })?;
        Self::open_prefix(source, len, Limits::default())
    }

    /// Opens the first `len` bytes of `source` as a bbolt database (the rest, such as the
    /// SHA-256 trailer of an etcd snapshot, is not looked at).
    ///
    /// Reads both meta pages, checks magic, version and checksum of each, takes the valid one
    /// with the higher transaction id, and checks that the file holds every page it counts.
    pub fn open_prefix(source: S, len: u64, limits: Limits) -> Result<Self, BoltError> {
        if len < (PAGE_HEADER + META_LEN) as u64 {
            return Err(BoltError::TooSmall { len });
        }
        let meta0 = read_meta(&source, 0, len)?;
        // The page size comes from page 0's meta; if that one is damaged, probe for page 1 at
        // every plausible page size, as bbolt's `getPageSizeFromSecondMeta` does.
        let (page_size, meta1) = match &meta0 {
            Ok(m) => (m.page_size, read_meta(&source, u64::from(m.page_size), len)?),
            Err(_) => probe_second_meta(&source, len)?,
        };
        let meta1 = meta1.and_then(|m| {
            if m.page_size == page_size { Ok(m) } else { Err(MetaFault::Inconsistent("page size differs from page 0")) }
        });
        let meta = match (meta0, meta1) {
            (Ok(a), Ok(b)) => {
                let mut m = if b.txid > a.txid { b } else { a };
                m.other_valid = true;
                m
            }
            (Ok(m), Err(_)) | (Err(_), Ok(m)) => m,
            (Err(MetaFault::BadMagic(magic)), Err(MetaFault::BadMagic(_) | MetaFault::Missing)) => {
                return Err(BoltError::NotBbolt { magic });
            }
            (Err(meta0), Err(meta1)) => return Err(BoltError::NoValidMeta { meta0, meta1 }),
        };
        let needed = meta
            .high_water
            .checked_mul(u64::from(meta.page_size))
            .ok_or(BoltError::Truncated { needed: u64::MAX, len })?;
        if needed > len {
            return Err(BoltError::Truncated { needed, len });
        }
        if !len.is_multiple_of(u64::from(meta.page_size)) {
            return Err(BoltError::PartialPage { len, page_size: meta.page_size });
        }
        Ok(Db { source, len, meta, limits })
    }

    /// The current meta.
    pub fn meta(&self) -> &Meta {
        &self.meta
    }

    /// The number of bytes of the source that belong to the database.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the database is empty (it never is once opened: it has two meta pages).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The source the database is read from.
    pub fn source(&self) -> &S {
        &self.source
    }

    /// The root bucket, whose entries are the top-level buckets.
    pub fn root(&self) -> Bucket {
        Bucket {
            root: Root::Page(self.meta.root),
            sequence: self.meta.root_sequence,
            parent: PageLoc::Page(u64::from(self.meta.page)),
        }
    }

    /// A cursor over `bucket`'s entries in key order.
    pub fn cursor<'db>(&'db self, bucket: &Bucket) -> Cursor<'db, S> {
        Cursor {
            db: self,
            start: Some(bucket.root.clone()),
            parent: bucket.parent,
            stack: Vec::new(),
            leaf: None,
            visited: HashSet::new(),
            prev_key: None,
            failed: false,
        }
    }

    /// Calls `f` with every entry of `bucket` in key order, until it breaks.
    pub fn for_each<E: From<BoltError>>(
        &self,
        bucket: &Bucket,
        mut f: impl FnMut(Entry<'_>) -> Result<ControlFlow<()>, E>,
    ) -> Result<(), E> {
        let mut cursor = self.cursor(bucket);
        while let Some(entry) = cursor.next()? {
            if f(entry)?.is_break() {
                break;
            }
        }
        Ok(())
    }

    /// The nested bucket `name` of `parent`, if there is one (a plain value of that name is
    /// not a bucket: `None`, as in bbolt).
    pub fn bucket(&self, parent: &Bucket, name: &[u8]) -> Result<Option<Bucket>, BoltError> {
        self.find(parent, name, |entry| entry.bucket())
    }

    /// The value of `key` in `bucket`, if it is a plain value (`None` for a nested bucket, as in
    /// bbolt).
    pub fn get(&self, bucket: &Bucket, key: &[u8]) -> Result<Option<Vec<u8>>, BoltError> {
        self.find(bucket, key, |entry| Ok((!entry.is_bucket).then(|| entry.value.to_vec())))
    }

    /// Descends `bucket`'s tree to the leaf that would hold `key` and hands its entry to `f`.
    fn find<T>(
        &self,
        bucket: &Bucket,
        key: &[u8],
        f: impl FnOnce(Entry<'_>) -> Result<Option<T>, BoltError>,
    ) -> Result<Option<T>, BoltError> {
        let mut visited = HashSet::new();
        let mut page = match &bucket.root {
            Root::Inline(bytes) => Page::inline(bytes.clone())?,
            Root::Page(id) => self.read_page(*id, bucket.parent)?,
        };
        loop {
            match page.flags {
                LEAF => {
                    for index in 0..page.count {
                        let entry = page.leaf(index)?;
                        if entry.key == key {
                            return f(entry);
                        }
                    }
                    return Ok(None);
                }
                BRANCH => {
                    if visited.len() >= MAX_DEPTH {
                        return Err(BoltError::TooDeep { page: page.id() });
                    }
                    if !visited.insert(page.id()) {
                        return Err(BoltError::PageCycle { page: page.id() });
                    }
                    // The child to follow is the last one whose first key is at most `key`
                    // (bbolt `Cursor.searchPage`); below the first key, the first child.
                    let mut child = page.branch(0)?.1;
                    for index in 1..page.count {
                        let (k, id) = page.branch(index)?;
                        if k > key {
                            break;
                        }
                        child = id;
                    }
                    if visited.contains(&child) {
                        return Err(BoltError::PageCycle { page: child });
                    }
                    page = self.read_page(child, page.loc)?;
                }
                flags => return Err(BoltError::UnexpectedPageType { page: page.loc, flags }),
            }
        }
    }

    /// Reads page `id` and its overflow pages.
    fn read_page(&self, id: u64, from: PageLoc) -> Result<Page, BoltError> {
        let high_water = self.meta.high_water;
        if id < 2 || id >= high_water {
            return Err(BoltError::PageOutOfRange { page: id, from, high_water });
        }
        let page_size = u64::from(self.meta.page_size);
        // In range: `id < high_water` and `high_water * page_size <= len` were checked.
        let offset = id.saturating_mul(page_size);
        // One read for the page, a second only for its overflow pages, if it has any.
        let first = usize::try_from(page_size).map_err(|_| BoltError::OverflowTooLong { page: id, overflow: 0 })?;
        let mut data = vec![0u8; first];
        self.read_at(&mut data, offset)?;
        let found = read_u64(&data, 0).unwrap_or(u64::MAX);
        if found != id {
            return Err(BoltError::PageIdMismatch { page: id, found });
        }
        let overflow = read_u32(&data, 12).unwrap_or(u32::MAX);
        if overflow > 0 {
            let pages = u64::from(overflow) + 1;
            let run = pages.checked_mul(page_size).filter(|&run| run <= self.limits.max_page_run);
            let run = match (run, id.checked_add(pages)) {
                (Some(run), Some(end)) if end <= high_water => run,
                _ => return Err(BoltError::OverflowTooLong { page: id, overflow }),
            };
            let run = usize::try_from(run).map_err(|_| BoltError::OverflowTooLong { page: id, overflow })?;
            data.resize(run, 0);
            let rest = data.get_mut(first..).unwrap_or_default();
            self.read_at(rest, offset.saturating_add(page_size))?;
        }
        Page::new(data, PageLoc::Page(id))
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), BoltError> {
        self.source.read_exact_at(buf, offset).map_err(|source| BoltError::Io { offset, len: buf.len() as u64, source })
    }
}

/// Reads and checks the meta of the page at `offset`; `Err(Err(_))` is an I/O failure.
fn read_meta<S: ReadAt>(source: &S, offset: u64, len: u64) -> Result<Result<Meta, MetaFault>, BoltError> {
    let size = (PAGE_HEADER + META_LEN) as u64;
    if offset.checked_add(size).is_none_or(|end| end > len) {
        return Ok(Err(MetaFault::Missing));
    }
    let mut buf = [0u8; PAGE_HEADER + META_LEN];
    source.read_exact_at(&mut buf, offset).map_err(|source| BoltError::Io { offset, len: size, source })?;
    Ok(parse_meta(&buf, offset))
}

/// bbolt's `getPageSizeFromSecondMeta`: page 0 is damaged, so look for a valid meta at every
/// power-of-two offset from 1 KiB to 16 MiB. A meta found there is believed only if its page
/// size is that offset.
fn probe_second_meta<S: ReadAt>(source: &S, len: u64) -> Result<(u32, Result<Meta, MetaFault>), BoltError> {
    let mut first_fault = MetaFault::Missing;
    let mut size = 1024u32;
    while size <= MAX_PAGE_SIZE {
        match read_meta(source, u64::from(size), len)? {
            Ok(meta) if meta.page_size == size => return Ok((size, Ok(meta))),
            Ok(_) => {}
            // Report the most telling fault: a meta with bbolt's magic beats garbage.
            Err(fault) => {
                if matches!(first_fault, MetaFault::Missing | MetaFault::BadMagic(_))
                    && !matches!(fault, MetaFault::Missing | MetaFault::BadMagic(_))
                    || first_fault == MetaFault::Missing
                {
                    first_fault = fault;
                }
            }
        }
        size = size.saturating_mul(2);
    }
    Ok((0, Err(first_fault)))
}

fn parse_meta(buf: &[u8], offset: u64) -> Result<Meta, MetaFault> {
    let m = buf.get(PAGE_HEADER..).ok_or(MetaFault::Missing)?;
    let field32 = |at| read_u32(m, at).ok_or(MetaFault::Missing);
    let field64 = |at| read_u64(m, at).ok_or(MetaFault::Missing);
    let magic = field32(0)?;
    if magic != MAGIC {
        return Err(MetaFault::BadMagic(magic));
    }
    let version = field32(4)?;
    if version != VERSION {
        return Err(MetaFault::BadVersion(version));
    }
    let stored = field64(56)?;
    let computed = fnv1a64(m.get(..META_SUMMED).ok_or(MetaFault::Missing)?);
    if stored != computed {
        return Err(MetaFault::BadChecksum { stored, computed });
    }
    let page_size = field32(8)?;
    if !(MIN_PAGE_SIZE..=MAX_PAGE_SIZE).contains(&page_size) || !page_size.is_power_of_two() {
        return Err(MetaFault::Inconsistent("page size is not a power of two between 512 B and 16 MiB"));
    }
    let root = field64(16)?;
    let freelist = field64(32)?;
    let high_water = field64(40)?;
    if root < 2 || root >= high_water {
        return Err(MetaFault::Inconsistent("root bucket page outside the pages in use"));
    }
    if freelist != NO_FREELIST && (freelist < 2 || freelist >= high_water) {
        return Err(MetaFault::Inconsistent("freelist page outside the pages in use"));
    }
    Ok(Meta {
        page: u8::from(offset != 0),
        page_size,
        flags: field32(12)?,
        root,
        root_sequence: field64(24)?,
        freelist: (freelist != NO_FREELIST).then_some(freelist),
        high_water,
        txid: field64(48)?,
        other_valid: false,
    })
}

/// FNV-1a, 64 bits (Go's `hash/fnv.New64a`), which bbolt uses for the meta checksum.
pub(crate) fn fnv1a64(bytes: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.iter().fold(OFFSET, |hash, &b| (hash ^ u64::from(b)).wrapping_mul(PRIME))
}

fn read_u16(buf: &[u8], at: usize) -> Option<u16> {
    let bytes = buf.get(at..at.checked_add(2)?)?;
    Some(u16::from_le_bytes(bytes.try_into().ok()?))
}

fn read_u32(buf: &[u8], at: usize) -> Option<u32> {
    let bytes = buf.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes(bytes.try_into().ok()?))
}

fn read_u64(buf: &[u8], at: usize) -> Option<u64> {
    let bytes = buf.get(at..at.checked_add(8)?)?;
    Some(u64::from_le_bytes(bytes.try_into().ok()?))
}

/// A page run in memory whose element count was checked against its length.
struct Page {
    data: Vec<u8>,
    loc: PageLoc,
    flags: u16,
    count: u16,
}

impl core::fmt::Debug for Page {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Page")
            .field("loc", &self.loc)
            .field("flags", &self.flags)
            .field("count", &self.count)
            .field("len", &self.data.len())
            .finish()
    }
}

impl Page {
    fn new(data: Vec<u8>, loc: PageLoc) -> Result<Page, BoltError> {
        let flags = read_u16(&data, 8).unwrap_or(0);
        let count = read_u16(&data, 10).unwrap_or(0);
        if data.len() < PAGE_HEADER {
            return Err(BoltError::CountTooLarge { page: loc, count, capacity: 0 });
        }
        // Bound the count by what the page can hold before any element is read.
        let capacity = ((data.len() - PAGE_HEADER) / ELEMENT) as u64;
        if u64::from(count) > capacity {
            return Err(BoltError::CountTooLarge { page: loc, count, capacity });
        }
        Ok(Page { data, loc, flags, count })
    }

    /// The page stored inline in a bucket value: it must be a leaf (bbolt inlines only
    /// buckets whose root is a small leaf, `Bucket.inlineable`).
    fn inline(bytes: Vec<u8>) -> Result<Page, BoltError> {
        let page = Page::new(bytes, PageLoc::Inline)?;
        if page.flags != LEAF {
            return Err(BoltError::UnexpectedPageType { page: PageLoc::Inline, flags: page.flags });
        }
        Ok(page)
    }

    fn id(&self) -> u64 {
        match self.loc {
            PageLoc::Page(id) => id,
            PageLoc::Inline => 0,
        }
    }

    fn element(&self, index: u16) -> Result<(usize, [u32; 4]), BoltError> {
        let oob = || BoltError::ElementOutOfBounds { page: self.loc, index };
        let at = PAGE_HEADER + usize::from(index) * ELEMENT;
        let field = |i: usize| read_u32(&self.data, at + i * 4).ok_or_else(oob);
        Ok((at, [field(0)?, field(1)?, field(2)?, field(3)?]))
    }

    fn slice(&self, start: usize, len: u32, index: u16) -> Result<&[u8], BoltError> {
        let oob = || BoltError::ElementOutOfBounds { page: self.loc, index };
        let len = usize::try_from(len).map_err(|_| oob())?;
        let end = start.checked_add(len).ok_or_else(oob)?;
        self.data.get(start..end).ok_or_else(oob)
    }

    /// Leaf element `index`: flags, key, value.
    fn leaf(&self, index: u16) -> Result<Entry<'_>, BoltError> {
        let (at, [flags, pos, ksize, vsize]) = self.element(index)?;
        let oob = || BoltError::ElementOutOfBounds { page: self.loc, index };
        let key_start = usize::try_from(pos).ok().and_then(|p| at.checked_add(p)).ok_or_else(oob)?;
        let key = self.slice(key_start, ksize, index)?;
        let value = self.slice(key_start + key.len(), vsize, index)?;
        Ok(Entry { key, value, is_bucket: flags & BUCKET_LEAF_FLAG != 0, loc: self.loc })
    }

    /// Branch element `index`: key, child page id.
    fn branch(&self, index: u16) -> Result<(&[u8], u64), BoltError> {
        let (at, [pos, ksize, lo, hi]) = self.element(index)?;
        let oob = || BoltError::ElementOutOfBounds { page: self.loc, index };
        let key_start = usize::try_from(pos).ok().and_then(|p| at.checked_add(p)).ok_or_else(oob)?;
        let key = self.slice(key_start, ksize, index)?;
        Ok((key, u64::from(lo) | (u64::from(hi) << 32)))
    }
}

/// A walk over one bucket's entries in key order, reading pages on demand.
///
/// It holds one page per level of the tree (a handful of pages), never the whole bucket. Every
/// page it enters is remembered, so a page reached twice (a loop or a page shared by two
/// subtrees) is an error rather than an endless walk; and every key must be above the one
/// before, so the order is checked, not assumed. After an error the cursor yields nothing more.
#[derive(Debug)]
pub struct Cursor<'db, S> {
    db: &'db Db<S>,
    /// The bucket's root, until the first call to `next`.
    start: Option<Root>,
    /// The page holding the bucket's header.
    parent: PageLoc,
    /// Branch pages from the root down, each with the index of the next child to visit.
    stack: Vec<(Page, u16)>,
    /// The current leaf and the index of the next element to yield.
    leaf: Option<(Page, u16)>,
    visited: HashSet<u64>,
    prev_key: Option<Vec<u8>>,
    failed: bool,
}

impl<S: ReadAt> Cursor<'_, S> {
    /// The next entry, or `None` after the last one.
    #[allow(clippy::should_implement_trait)] // A lending cursor: entries borrow its page.
    pub fn next(&mut self) -> Result<Option<Entry<'_>>, BoltError> {
        if self.failed {
            return Ok(None);
        }
        match self.advance() {
            Ok(true) => {}
            Ok(false) => return Ok(None),
            Err(e) => {
                self.failed = true;
                return Err(e);
            }
        }
        let Some((page, next)) = self.leaf.as_ref() else { return Ok(None) };
        let index = next.saturating_sub(1);
        let checked = page.leaf(index).and_then(|entry| {
            if self.prev_key.as_deref().is_some_and(|prev| entry.key <= prev) {
                return Err(BoltError::KeysOutOfOrder { page: page.loc, index });
            }
            Ok(entry)
        });
        match checked {
            Ok(entry) => {
                let prev = self.prev_key.get_or_insert_with(Vec::new);
                prev.clear();
                prev.extend_from_slice(entry.key);
                Ok(Some(entry))
            }
            Err(e) => {
                self.failed = true;
                Err(e)
            }
        }
    }

    /// Moves to the next leaf element; `false` at the end.
    fn advance(&mut self) -> Result<bool, BoltError> {
        if let Some(root) = self.start.take() {
            match root {
                Root::Inline(bytes) => self.leaf = Some((Page::inline(bytes)?, 0)),
                Root::Page(id) => self.descend(id, self.parent)?,
            }
        }
        loop {
            if let Some((page, next)) = self.leaf.as_mut()
                && *next < page.count
            {
                *next += 1;
                return Ok(true);
            }
            self.leaf = None;
            // The current leaf is done: move to the next child of the deepest branch that
            // still has one.
            let child = loop {
                let Some((page, next)) = self.stack.last_mut() else { return Ok(false) };
                if *next < page.count {
                    let child = page.branch(*next)?.1;
                    *next += 1;
                    break (child, page.loc);
                }
                self.stack.pop();
            };
            self.descend(child.0, child.1)?;
        }
    }

    /// Reads page `id` and follows first children down to a leaf.
    fn descend(&mut self, mut id: u64, mut from: PageLoc) -> Result<(), BoltError> {
        loop {
            if !self.visited.insert(id) {
                return Err(BoltError::PageCycle { page: id });
            }
            if self.stack.len() >= MAX_DEPTH {
                return Err(BoltError::TooDeep { page: id });
            }
            let page = self.db.read_page(id, from)?;
            match page.flags {
                LEAF => {
                    self.leaf = Some((page, 0));
                    return Ok(());
                }
                BRANCH => {
                    if page.count == 0 {
                        return Err(BoltError::EmptyBranch { page: id });
                    }
                    let child = page.branch(0)?.1;
                    from = page.loc;
                    self.stack.push((page, 1));
                    id = child;
                }
                flags => return Err(BoltError::UnexpectedPageType { page: page.loc, flags }),
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod testdb;

#[cfg(test)]
mod tests;
