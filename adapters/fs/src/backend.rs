//! The core's backend port on redb: one redb table per bucket.
//!
//! Why one table per bucket rather than one table keyed by `(bucket, key)`:
//! - it is etcd's layout (one bbolt bucket each), and redb's own tooling shows the buckets by
//!   their etcd names;
//! - a bucket scan is a plain range over its table, with no prefix to build or filter;
//! - `clear`, which every snapshot restore does for all ten buckets, is `delete_table`: redb
//!   frees the table's pages in bulk instead of deleting its keys one by one;
//! - keys are stored as they are, without a bucket byte in front of each.
//!
//! A table that was never written does not exist in the file; reads treat it as empty.

use std::cell::RefCell;
use std::fs::OpenOptions;
use std::io;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use redb::backends::FileBackend;
use redb::{
    Builder, Database, Durability, ReadOnlyDatabase, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition,
    TableError, WriteTransaction,
};
use snapply_core::backend::{Backend, BackendError, BackendErrorKind, Bucket, ReadTxn, Visit, WriteTxn};

use crate::error::FsError;

/// redb's page cache per database. redb's default (1 GiB) lets a snapshot's whole backend stay
/// in memory while it is written, so a restore's peak RSS grew with the snapshot (381 MiB for a
/// 305 MiB image of 1,000,000 keys); with 64 MiB the image is streamed to disk as it is written.
/// Measured on 300,000 keys: peak RSS 125 MiB with the default, 61 MiB with 32 MiB, for a
/// persist about 10 % slower.
const CACHE_BYTES: usize = 64 << 20;

/// The redb table of each bucket, named as etcd names its bbolt buckets.
const fn table(bucket: Bucket) -> TableDefinition<'static, &'static [u8], &'static [u8]> {
    TableDefinition::new(bucket.name())
}

/// Whether an I/O error means the medium is out of space (ENOSPC, EDQUOT).
pub(crate) fn is_full(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded)
}

/// The kind of a redb failure, as the core sees it.
pub(crate) fn redb_kind(e: &redb::Error) -> BackendErrorKind {
    match e {
        redb::Error::Io(io) if is_full(io) => BackendErrorKind::Full,
        redb::Error::Corrupted(_) | redb::Error::UpgradeRequired(_) => BackendErrorKind::Corrupt,
        // redb's word for "this file is not a redb database".
        redb::Error::Io(io) if io.kind() == io::ErrorKind::InvalidData => BackendErrorKind::Corrupt,
        // A value larger than redb accepts (about 3 GiB) is a caller's bug: images bound values
        // far below it.
        redb::Error::ValueTooLarge(_) => BackendErrorKind::Misuse,
        // A record appended out of order: the image's order is checked before, so a bug here.
        redb::Error::UnorderedKey => BackendErrorKind::Misuse,
        _ => BackendErrorKind::Io,
    }
}

fn backend_err(e: impl Into<redb::Error>, context: &'static str) -> BackendError {
    let e = e.into();
    BackendError::new(redb_kind(&e), context)
}

/// A bucketed key-value backend in one redb file (etcd's `backend.Backend` on bbolt).
///
/// Read transactions are consistent snapshots (redb's MVCC); a write transaction is atomic and
/// discarded when dropped; `commit` returns once redb has synced the file
/// ([`redb::Durability::Immediate`], redb's default), unless batched commits are on (see
/// [`RedbBackend::set_batched_commits`]).
#[derive(Debug)]
pub struct RedbBackend {
    /// Shared with the [`RedbView`]s handed to readers: the file stays open until the last of
    /// them is dropped, so a reader that took a view before a restore swapped the backend out
    /// finishes on the state it started on.
    db: Arc<Database>,
    path: PathBuf,
    /// Whether commits skip the sync until the next [`RedbBackend::sync`].
    batched: AtomicBool,
    /// Whether a commit since the last sync is not yet on disk.
    unsynced: AtomicBool,
}

impl RedbBackend {
    /// Opens the redb file at `path`, creating an empty one (mode 0600) if there is none.
    ///
    /// # Errors
    /// [`FsError::Io`] if the file cannot be opened, [`FsError::Db`] if it is not a redb
    /// database or redb cannot open it.
    pub fn open(path: &Path) -> Result<Self, FsError> {
        Self::open_cached(path, CACHE_BYTES)
    }

    /// [`RedbBackend::open`] for loading a snapshot's records with [`RedbBackend::bulk_write`],
    /// with a page cache of [`LOAD_CACHE_BYTES`].
    ///
    /// # Errors
    /// As [`RedbBackend::open`].
    pub(crate) fn open_for_load(path: &Path) -> Result<Self, FsError> {
        Self::open_cached(path, LOAD_CACHE_BYTES)
    }

    fn open_cached(path: &Path, cache: usize) -> Result<Self, FsError> {
        let mut options = OpenOptions::new();
        options.read(true).write(true).create(true).truncate(false);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        #[cfg(feature = "failpoints")]
        let created = !path.exists();
        let file = options.open(path).map_err(|e| FsError::io("opening the backend file", path, e))?;
        #[cfg(feature = "failpoints")]
        if created {
            crate::durable::journal::push(|| crate::durable::journal::Step::Created(path.to_path_buf()));
        }
        let db = FileBackend::new(file)
            .and_then(|b| Builder::new().set_cache_size(cache).create_with_backend(b))
            .map_err(|e| FsError::db("opening the backend database", path, e))?;
        Ok(RedbBackend {
            db: Arc::new(db),
            path: path.to_path_buf(),
            batched: AtomicBool::new(false),
            unsynced: AtomicBool::new(false),
        })
    }

    /// Turns batched commits on or off (off when opened).
    ///
    /// With batched commits a write transaction's `commit` publishes its writes to every later
    /// read of this process at once, but leaves them out of the file's durable state
    /// ([`redb::Durability::None`]) until [`RedbBackend::sync`] (or a commit with batching off)
    /// writes them all with one sync. This is etcd's batch transaction: its backend commits
    /// every 100 ms or 10,000 writes, not per entry, because the raft log already holds every
    /// applied entry durably and replays what the backend lost past its consistent index. Turn
    /// it on only where such a log exists; a crash loses the commits since the last sync. A
    /// clean close (dropping the last handle) still makes them durable.
    pub fn set_batched_commits(&self, on: bool) {
        self.batched.store(on, Ordering::Relaxed);
    }

    /// Whether a batched commit is not yet durable.
    pub fn has_unsynced(&self) -> bool {
        self.unsynced.load(Ordering::Relaxed)
    }

    /// Makes every commit so far durable (an empty commit with [`redb::Durability::Immediate`],
    /// which syncs the batched ones before it). Does nothing if none is pending.
    ///
    /// # Errors
    /// [`FsError::Db`] if redb cannot commit (the disk is full, the file is gone); the batched
    /// commits then stay visible in this process but not durable.
    pub fn sync(&self) -> Result<(), FsError> {
        if !self.has_unsynced() {
            return Ok(());
        }
        let txn = self.db.begin_write().map_err(|e| FsError::db("beginning a sync of the backend", &self.path, e))?;
        txn.commit().map_err(|e| FsError::db("syncing the backend", &self.path, e))?;
        crate::durable::synced(&self.path);
        self.unsynced.store(false, Ordering::Relaxed);
        Ok(())
    }

    /// The file the backend was opened from. After the file was renamed or replaced (a
    /// snapshot's backend renamed over it), this handle still reads and writes the file it
    /// opened, not the one now at the path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A write transaction for loading a snapshot's records, which arrive sorted: see
    /// [`BulkWrite`].
    pub(crate) fn bulk_write(&self) -> Result<BulkWrite, BackendError> {
        self.bulk_write_in(CHUNK_BYTES)
    }

    fn bulk_write_in(&self, chunk: usize) -> Result<BulkWrite, BackendError> {
        Ok(BulkWrite {
            txn: Some(begin_chunk(&self.db)?),
            db: Arc::clone(&self.db),
            path: self.path.clone(),
            dirty: 0,
            chunk,
        })
    }

    /// Defragments the backend file in place (redb's [`Database::compact`], etcd's
    /// `Maintenance.Defragment`): every commit is made durable first, then the free pages are
    /// moved to the end of the file and cut off. The content is unchanged. Returns `false`,
    /// having done nothing, while a reader holds the file (a [`RedbView`] of this backend, a
    /// read transaction): a defragmentation needs the database to itself.
    ///
    /// # Errors
    /// [`FsError::Db`] if the sync or the compaction fails.
    pub fn compact(&mut self) -> Result<bool, FsError> {
        self.sync()?;
        let Some(db) = Arc::get_mut(&mut self.db) else {
            return Ok(false);
        };
        match db.compact() {
            Ok(_) => Ok(true),
            Err(redb::CompactionError::TransactionInProgress) => Ok(false),
            Err(e) => Err(FsError::db("defragmenting the backend", &self.path, e)),
        }
    }

    /// A read-only handle on this backend for readers on other threads: every read
    /// transaction it begins is a consistent snapshot of a commit of this backend, never of
    /// another one (see [`crate::ReadSlot`]).
    pub fn view(&self) -> RedbView {
        RedbView { db: Arc::clone(&self.db) }
    }
}

/// A backend opened read-only ([`redb::ReadOnlyDatabase`]): for reading a stopped node's data
/// directory (`snapply create`) without writing a byte to it, also on a read-only medium.
///
/// redb opens it only if it was closed cleanly (a file that needs recovery is refused rather
/// than repaired) and no [`RedbBackend`] holds it open. [`Backend::write`] is refused.
pub struct RedbReadOnly {
    db: ReadOnlyDatabase,
    path: PathBuf,
}

impl core::fmt::Debug for RedbReadOnly {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("RedbReadOnly").field("path", &self.path).finish_non_exhaustive()
    }
}

impl RedbReadOnly {
    /// Opens the redb file at `path` for reading only; it must exist.
    ///
    /// # Errors
    /// [`FsError::Io`] if the file cannot be opened (missing, permissions), [`FsError::Db`] if
    /// it is not a redb database, needs recovery, or another process holds it open
    /// ([`redb::DatabaseError::DatabaseAlreadyOpen`]).
    pub fn open(path: &Path) -> Result<Self, FsError> {
        let file = std::fs::File::open(path).map_err(|e| FsError::io("opening the backend file", path, e))?;
        let db = FileBackend::new(file)
            .and_then(|b| Builder::new().set_cache_size(CACHE_BYTES).open_read_only_with_backend(b))
            .map_err(|e| FsError::db("opening the backend database read-only", path, e))?;
        Ok(RedbReadOnly { db, path: path.to_path_buf() })
    }
}

impl Backend for RedbReadOnly {
    type Read<'a>
        = RedbRead<'a>
    where
        Self: 'a;
    type Write<'a>
        = RedbWrite<'a>
    where
        Self: 'a;

    fn read(&self) -> Result<RedbRead<'_>, BackendError> {
        let txn = self.db.begin_read().map_err(|e| backend_err(e, "beginning a read transaction"))?;
        Ok(RedbRead { txn, _backend: PhantomData })
    }

    fn write(&mut self) -> Result<RedbWrite<'_>, BackendError> {
        Err(BackendError::new(BackendErrorKind::Misuse, "writing to a backend opened read-only"))
    }
}

/// A read-only handle on a [`RedbBackend`], cheap to clone and to send to other threads.
///
/// It keeps the backend's file open after the backend itself is dropped (closed after a
/// restore swapped it out): a reader holding it goes on reading the state it started on.
#[derive(Clone, Debug)]
pub struct RedbView {
    db: Arc<Database>,
}

impl RedbView {
    /// Begins a read transaction: a consistent snapshot of the backend's last commit.
    ///
    /// # Errors
    /// The backend's error if redb cannot begin one.
    pub fn read(&self) -> Result<RedbRead<'_>, BackendError> {
        let txn = self.db.begin_read().map_err(|e| backend_err(e, "beginning a read transaction"))?;
        Ok(RedbRead { txn, _backend: PhantomData })
    }
}

/// A read transaction of a [`RedbBackend`]: a consistent snapshot of its last commit.
#[derive(Debug)]
pub struct RedbRead<'a> {
    txn: ReadTransaction,
    _backend: PhantomData<&'a Database>,
}

/// A write transaction of a [`RedbBackend`]; dropped without `commit`, it leaves nothing.
///
/// Puts are batched per bucket: opening a redb table and closing it (which writes its new root
/// into the table tree) costs more than inserting one small record, and a snapshot is written
/// one put at a time. Consecutive puts into one bucket are kept in a bounded buffer and inserted
/// through one opened table when the bucket changes, the buffer is full, or anything else
/// touches the transaction (a read, a delete, a clear, the commit), so the transaction reads
/// its own writes and the memory used stays bounded whatever the snapshot's size.
pub struct RedbWrite<'a> {
    txn: WriteTransaction,
    batch: RefCell<Batch>,
    /// The backend's flag of commits not yet durable, and whether this transaction's commit
    /// is one of them: a durable commit makes the batched ones before it durable too.
    unsynced: &'a AtomicBool,
    batched: bool,
    /// The backend's file, which a durable commit syncs.
    path: &'a Path,
}

/// Puts not yet inserted: one bucket's, keys and values back to back in one buffer.
#[derive(Default)]
struct Batch {
    bucket: Option<Bucket>,
    bytes: Vec<u8>,
    /// Key length and value length of each put, in order.
    lens: Vec<(usize, usize)>,
}

/// How many bytes of keys and values a batch holds before it is inserted.
const BATCH_BYTES: usize = 4 << 20;

impl core::fmt::Debug for RedbWrite<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("RedbWrite").finish_non_exhaustive()
    }
}

fn get_in<T: ReadableTable<&'static [u8], &'static [u8]>>(
    table: &T,
    key: &[u8],
    f: &mut dyn FnMut(&[u8]),
) -> Result<bool, BackendError> {
    match table.get(key).map_err(|e| backend_err(e, "reading a key"))? {
        Some(v) => {
            f(v.value());
            Ok(true)
        }
        None => Ok(false),
    }
}

fn scan_in<T: ReadableTable<&'static [u8], &'static [u8]>>(
    table: &T,
    from: &[u8],
    f: &mut Visit<'_>,
) -> Result<(), BackendError> {
    let range = table.range::<&[u8]>(from..).map_err(|e| backend_err(e, "scanning a bucket"))?;
    for item in range {
        let (k, v) = item.map_err(|e| backend_err(e, "scanning a bucket"))?;
        if f(k.value(), v.value()).is_break() {
            break;
        }
    }
    Ok(())
}

impl ReadTxn for RedbRead<'_> {
    fn get(&self, bucket: Bucket, key: &[u8], f: &mut dyn FnMut(&[u8])) -> Result<bool, BackendError> {
        match self.txn.open_table(table(bucket)) {
            Ok(t) => get_in(&t, key, f),
            Err(TableError::TableDoesNotExist(_)) => Ok(false),
            Err(e) => Err(backend_err(e, "opening a bucket to read")),
        }
    }

    fn scan(&self, bucket: Bucket, from: &[u8], f: &mut Visit<'_>) -> Result<(), BackendError> {
        match self.txn.open_table(table(bucket)) {
            Ok(t) => scan_in(&t, from, f),
            Err(TableError::TableDoesNotExist(_)) => Ok(()),
            Err(e) => Err(backend_err(e, "opening a bucket to scan")),
        }
    }
}

impl RedbWrite<'_> {
    /// Opens `bucket`'s table, after inserting the batched puts.
    fn open(&self, bucket: Bucket) -> Result<redb::Table<'_, &'static [u8], &'static [u8]>, BackendError> {
        self.flush()?;
        self.open_unflushed(bucket)
    }

    fn open_unflushed(&self, bucket: Bucket) -> Result<redb::Table<'_, &'static [u8], &'static [u8]>, BackendError> {
        self.txn.open_table(table(bucket)).map_err(|e| backend_err(e, "opening a bucket to write"))
    }

    /// Inserts the batched puts through one opened table and empties the batch (also when the
    /// insert fails: the transaction is then to be dropped, not committed).
    fn flush(&self) -> Result<(), BackendError> {
        let mut batch = self.batch.borrow_mut();
        let Some(bucket) = batch.bucket.take() else { return Ok(()) };
        let result = (|| {
            let mut table = self.open_unflushed(bucket)?;
            let mut rest = batch.bytes.as_slice();
            for &(k, v) in &batch.lens {
                let (key, tail) = rest.split_at_checked(k).ok_or_else(batch_bug)?;
                let (value, tail) = tail.split_at_checked(v).ok_or_else(batch_bug)?;
                table.insert(key, value).map_err(|e| backend_err(e, "writing a key"))?;
                rest = tail;
            }
            Ok(())
        })();
        batch.bytes.clear();
        batch.lens.clear();
        result
    }
}

/// The batch's lengths and bytes disagree: a bug of this module, reported rather than panicked.
fn batch_bug() -> BackendError {
    BackendError::new(BackendErrorKind::Misuse, "batched puts out of step with their lengths")
}

impl ReadTxn for RedbWrite<'_> {
    fn get(&self, bucket: Bucket, key: &[u8], f: &mut dyn FnMut(&[u8])) -> Result<bool, BackendError> {
        get_in(&self.open(bucket)?, key, f)
    }

    fn scan(&self, bucket: Bucket, from: &[u8], f: &mut Visit<'_>) -> Result<(), BackendError> {
        scan_in(&self.open(bucket)?, from, f)
    }
}

impl WriteTxn for RedbWrite<'_> {
    fn put(&mut self, bucket: Bucket, key: &[u8], value: &[u8]) -> Result<(), BackendError> {
        let full = {
            let batch = self.batch.get_mut();
            batch.bucket.is_some_and(|b| b != bucket) || batch.bytes.len() >= BATCH_BYTES
        };
        if full {
            self.flush()?;
        }
        let batch = self.batch.get_mut();
        batch.bucket = Some(bucket);
        batch.bytes.extend_from_slice(key);
        batch.bytes.extend_from_slice(value);
        batch.lens.push((key.len(), value.len()));
        Ok(())
    }

    fn delete(&mut self, bucket: Bucket, key: &[u8]) -> Result<bool, BackendError> {
        let mut table = self.open(bucket)?;
        let removed = table.remove(key).map_err(|e| backend_err(e, "deleting a key"))?.is_some();
        Ok(removed)
    }

    fn clear(&mut self, bucket: Bucket) -> Result<(), BackendError> {
        self.flush()?;
        self.txn.delete_table(table(bucket)).map_err(|e| backend_err(e, "clearing a bucket"))?;
        Ok(())
    }

    fn commit(self) -> Result<(), BackendError> {
        self.flush()?;
        self.txn.commit().map_err(|e| backend_err(e, "committing a write transaction"))?;
        if !self.batched {
            crate::durable::synced(self.path);
        }
        self.unsynced.store(self.batched, Ordering::Relaxed);
        Ok(())
    }
}

/// Writes to a fresh backend that only append, for loading a snapshot's records.
///
/// The records of each bucket come in increasing key order (an image's order), so they are
/// inserted through a cursor at the end of the table (`upper_bound_mut` and `insert_before`),
/// which redb buffers and packs into full pages, instead of `insert`'s descent from the root for
/// every record. Measured for 1,000,000 records of 307 bytes into one transaction: 1.1 s instead
/// of 3.0 s.
///
/// The load is cut into transactions of about [`CHUNK_BYTES`] committed with
/// [`Durability::None`], and only the last one is committed durably: a redb commit computes the
/// checksum of every page the transaction dirtied, and with one transaction for the whole
/// snapshot most of those pages had already left the 64 MiB page cache, so the commit read them
/// back from the file (about 1 s of a 1,000,000-key load). In chunks, each commit finds its pages
/// still cached; the last, durable commit syncs the file (redb's one sync covers the pages of the
/// non-durable commits before it) and writes the header. A crash before it leaves no durable
/// commit of these records: the file is a temp file the data directory removes at boot. Dropped
/// without [`BulkWrite::commit`], the chunks committed so far may still become durable when the
/// database is closed (redb makes a pending non-durable commit durable at close), so the caller
/// removes the file, as persisting does on every error: it is never renamed into place.
pub(crate) struct BulkWrite {
    db: Arc<Database>,
    /// The file being loaded, which the last commit syncs.
    path: PathBuf,
    /// `None` only between a chunk's commit and the next chunk's begin, which failed.
    txn: Option<WriteTransaction>,
    /// Bytes of records appended in the current chunk.
    dirty: usize,
    /// Bytes of records per chunk: [`CHUNK_BYTES`], smaller in tests.
    chunk: usize,
}

/// Bytes of records per non-durable transaction of a [`BulkWrite`]: well under the page
/// cache, so a chunk's pages are still cached when it commits. Measured for 1,000,000 records
/// of 307 bytes with the 64 MiB cache: 16 MiB chunks load in 1.6 s in all, 32 MiB chunks in
/// 2.2 s (their commits evict pages again), one transaction in 2.4 s. A load uses 8 MiB chunks
/// in a 32 MiB cache ([`LOAD_CACHE_BYTES`]).
pub(crate) const CHUNK_BYTES: usize = 8 << 20;

/// redb's page cache of a snapshot's backend while it is loaded ([`RedbBackend::open_for_load`]):
/// smaller than a live backend's, so the pages of committed chunks are written to the file
/// early, where the writer's early syncs find them, rather than all at the last commit.
/// Alternated runs, 100,000 keys of 256 bytes (first byte to `Applied`): 144-152 ms against
/// 167-195 ms with 64 MiB and 16 MiB chunks; 1,000,000 keys 1.03-1.28 s against 1.14-1.22 s,
/// peak RSS 126-130 MiB against 154-158 MiB.
pub(crate) const LOAD_CACHE_BYTES: usize = 32 << 20;

impl core::fmt::Debug for BulkWrite {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("BulkWrite").field("dirty", &self.dirty).finish_non_exhaustive()
    }
}

fn begin_chunk(db: &Database) -> Result<WriteTransaction, BackendError> {
    let mut txn = db.begin_write().map_err(|e| backend_err(e, "beginning a write transaction"))?;
    txn.set_durability(Durability::None).map_err(|e| backend_err(e, "beginning a non-durable transaction"))?;
    Ok(txn)
}

impl BulkWrite {
    fn txn(&self) -> Result<&WriteTransaction, BackendError> {
        self.txn.as_ref().ok_or_else(|| BackendError::new(BackendErrorKind::Misuse, "bulk write used after a failure"))
    }

    /// Appends `records` to `bucket`'s table; every key must sort after the table's last one.
    ///
    /// # Errors
    /// The backend's error if redb fails; [`BackendErrorKind::Misuse`] for a key out of order.
    pub(crate) fn append<'r>(
        &mut self,
        bucket: Bucket,
        records: &mut dyn Iterator<Item = (&'r [u8], &'r [u8])>,
    ) -> Result<(), BackendError> {
        let mut bytes = 0usize;
        {
            let txn = self.txn()?;
            let mut table = txn.open_table(table(bucket)).map_err(|e| backend_err(e, "opening a bucket to write"))?;
            let mut cursor = table
                .upper_bound_mut(std::ops::Bound::<&[u8]>::Unbounded)
                .map_err(|e| backend_err(e, "opening a bucket to append"))?;
            for (key, value) in records {
                cursor.insert_before(key, value).map_err(|e| backend_err(e, "appending a record"))?;
                bytes = bytes.saturating_add(key.len()).saturating_add(value.len());
            }
            cursor.close().map_err(|e| backend_err(e, "appending a record"))?;
        }
        self.dirty = self.dirty.saturating_add(bytes);
        Ok(())
    }

    /// Commits the current chunk, without syncing, once it holds [`CHUNK_BYTES`], and begins
    /// the next.
    ///
    /// # Errors
    /// The backend's error if the commit or the next begin fails.
    pub(crate) fn checkpoint(&mut self) -> Result<bool, BackendError> {
        if self.dirty < self.chunk {
            return Ok(false);
        }
        if let Some(txn) = self.txn.take() {
            txn.commit().map_err(|e| backend_err(e, "committing a chunk of the load"))?;
        }
        self.txn = Some(begin_chunk(&self.db)?);
        self.dirty = 0;
        Ok(true)
    }

    /// Commits durably: returns once redb has synced the file ([`Durability::Immediate`]), with
    /// every record appended since [`RedbBackend::bulk_write`].
    ///
    /// # Errors
    /// The backend's error if the commit fails.
    pub(crate) fn commit(mut self) -> Result<(), BackendError> {
        let mut txn = self
            .txn
            .take()
            .ok_or_else(|| BackendError::new(BackendErrorKind::Misuse, "bulk write used after a failure"))?;
        txn.set_durability(Durability::Immediate).map_err(|e| backend_err(e, "making the last commit durable"))?;
        txn.commit().map_err(|e| backend_err(e, "committing a write transaction"))?;
        crate::durable::synced(&self.path);
        Ok(())
    }
}

impl Backend for RedbBackend {
    type Read<'a>
        = RedbRead<'a>
    where
        Self: 'a;
    type Write<'a>
        = RedbWrite<'a>
    where
        Self: 'a;

    fn read(&self) -> Result<RedbRead<'_>, BackendError> {
        let txn = self.db.begin_read().map_err(|e| backend_err(e, "beginning a read transaction"))?;
        Ok(RedbRead { txn, _backend: PhantomData })
    }

    fn write(&mut self) -> Result<RedbWrite<'_>, BackendError> {
        let mut txn = self.db.begin_write().map_err(|e| backend_err(e, "beginning a write transaction"))?;
        let batched = self.batched.load(Ordering::Relaxed);
        if batched {
            txn.set_durability(Durability::None)
                .map_err(|_| BackendError::new(BackendErrorKind::Misuse, "batching a commit on a shared database"))?;
        }
        Ok(RedbWrite { txn, batch: RefCell::default(), unsynced: &self.unsynced, batched, path: &self.path })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use snapply_core::backend::dump;
    use std::ops::ControlFlow;

    fn backend() -> (tempfile::TempDir, RedbBackend) {
        let dir = tempfile::tempdir().unwrap();
        let b = RedbBackend::open(&dir.path().join("db")).unwrap();
        (dir, b)
    }

    #[test]
    fn dropped_write_leaves_nothing_and_commit_publishes() {
        let (_dir, mut b) = backend();
        {
            let mut t = b.write().unwrap();
            t.put(Bucket::Key, b"a", b"1").unwrap();
        }
        assert!(dump(&b.read().unwrap()).unwrap().is_empty());
        let mut t = b.write().unwrap();
        t.put(Bucket::Key, b"a", b"1").unwrap();
        t.put(Bucket::Meta, b"m", b"2").unwrap();
        t.commit().unwrap();
        let want = vec![(Bucket::Key, b"a".to_vec(), b"1".to_vec()), (Bucket::Meta, b"m".to_vec(), b"2".to_vec())];
        assert_eq!(dump(&b.read().unwrap()).unwrap(), want);
    }

    #[test]
    fn compacting_keeps_the_content_shrinks_the_file_and_waits_for_readers() {
        let (dir, mut b) = backend();
        b.set_batched_commits(true);
        for round in 0..4u8 {
            let mut t = b.write().unwrap();
            for i in 0..2_000u32 {
                t.put(Bucket::Key, &i.to_be_bytes(), &[round; 256]).unwrap();
            }
            t.commit().unwrap();
        }
        let mut t = b.write().unwrap();
        for i in 0..1_900u32 {
            t.delete(Bucket::Key, &i.to_be_bytes()).unwrap();
        }
        t.commit().unwrap();
        let want = dump(&b.read().unwrap()).unwrap();
        let path = dir.path().join("db");
        let view = b.view();
        assert!(!b.compact().unwrap(), "a reader holds the backend: nothing done");
        drop(view);
        let before = std::fs::metadata(&path).unwrap().len();
        assert!(b.compact().unwrap());
        assert!(!b.has_unsynced(), "the batched commits were made durable first");
        // 95% of the records were deleted: the file shrinks (2.2 MB to 48 KiB here).
        assert!(std::fs::metadata(&path).unwrap().len() < before / 2);
        assert_eq!(dump(&b.read().unwrap()).unwrap(), want);
        drop(b);
        assert_eq!(dump(&RedbBackend::open(&path).unwrap().read().unwrap()).unwrap(), want);
    }

    #[test]
    fn read_transaction_is_a_snapshot() {
        let (_dir, mut b) = backend();
        let mut t = b.write().unwrap();
        t.put(Bucket::Lease, b"x", b"old").unwrap();
        t.commit().unwrap();
        let before = b.db.begin_read().unwrap();
        let mut t = b.write().unwrap();
        t.put(Bucket::Lease, b"x", b"new").unwrap();
        t.commit().unwrap();
        let view = RedbRead { txn: before, _backend: PhantomData };
        let mut seen = Vec::new();
        assert!(view.get(Bucket::Lease, b"x", &mut |v| seen = v.to_vec()).unwrap());
        assert_eq!(seen, b"old");
    }

    #[test]
    fn write_sees_its_own_changes_and_clear_empties_one_bucket() {
        let (_dir, mut b) = backend();
        let mut t = b.write().unwrap();
        for k in [b"a", b"b", b"c"] {
            t.put(Bucket::Key, k, b"v").unwrap();
        }
        t.put(Bucket::Alarm, b"z", b"").unwrap();
        assert!(t.delete(Bucket::Key, b"b").unwrap());
        assert!(!t.delete(Bucket::Key, b"b").unwrap());
        let mut keys = Vec::new();
        t.scan(Bucket::Key, b"a\0", &mut |k, _| {
            keys.push(k.to_vec());
            ControlFlow::Continue(())
        })
        .unwrap();
        assert_eq!(keys, vec![b"c".to_vec()]);
        t.clear(Bucket::Key).unwrap();
        assert!(!t.get(Bucket::Key, b"a", &mut |_| {}).unwrap());
        t.put(Bucket::Key, b"d", b"v").unwrap();
        t.commit().unwrap();
        let got = dump(&b.read().unwrap()).unwrap();
        assert_eq!(got, vec![(Bucket::Key, b"d".to_vec(), b"v".to_vec()), (Bucket::Alarm, b"z".to_vec(), vec![])]);
    }

    #[test]
    fn batched_puts_across_buckets_and_past_the_batch_bound_are_all_written_in_order() {
        let (_dir, mut b) = backend();
        let value = vec![7u8; 1024];
        let n = BATCH_BYTES / 1024 + 100;
        let mut t = b.write().unwrap();
        t.put(Bucket::Meta, b"first", b"m").unwrap();
        for i in 0..n {
            t.put(Bucket::Key, format!("{i:08}").as_bytes(), &value).unwrap();
        }
        // A put to the same key later in the batch wins, as it would unbatched.
        t.put(Bucket::Key, b"00000000", b"last").unwrap();
        t.put(Bucket::Lease, b"l", b"x").unwrap();
        let mut seen = Vec::new();
        assert!(t.get(Bucket::Key, b"00000000", &mut |v| seen = v.to_vec()).unwrap());
        assert_eq!(seen, b"last");
        t.put(Bucket::Lease, b"m", b"y").unwrap();
        t.commit().unwrap();
        let all = dump(&b.read().unwrap()).unwrap();
        assert_eq!(all.iter().filter(|(b, _, _)| *b == Bucket::Key).count(), n);
        assert_eq!(all.iter().filter(|(b, _, _)| *b == Bucket::Lease).count(), 2);
        assert!(all.contains(&(Bucket::Meta, b"first".to_vec(), b"m".to_vec())));
    }

    #[test]
    fn a_dropped_transaction_with_batched_puts_leaves_nothing() {
        let (_dir, mut b) = backend();
        {
            let mut t = b.write().unwrap();
            t.put(Bucket::Key, b"a", b"1").unwrap();
            t.put(Bucket::Meta, b"b", b"2").unwrap();
        }
        assert!(dump(&b.read().unwrap()).unwrap().is_empty());
    }

    #[test]
    fn reopened_file_holds_what_was_committed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        {
            let mut b = RedbBackend::open(&path).unwrap();
            let mut t = b.write().unwrap();
            t.put(Bucket::Members, b"1", b"m").unwrap();
            t.commit().unwrap();
        }
        let b = RedbBackend::open(&path).unwrap();
        assert_eq!(dump(&b.read().unwrap()).unwrap(), vec![(Bucket::Members, b"1".to_vec(), b"m".to_vec())]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
    }

    fn put_one(b: &mut RedbBackend, key: &[u8]) {
        let mut t = b.write().unwrap();
        t.put(Bucket::Key, key, b"v").unwrap();
        t.commit().unwrap();
    }

    /// What a crash would leave: the file as redb has written it, opened by another handle
    /// while this one is still open and never closes (its close would make batched commits
    /// durable).
    fn crash_copy(b: RedbBackend, dir: &Path) -> Vec<Vec<u8>> {
        let copy = dir.join("copy");
        std::fs::copy(b.path(), &copy).unwrap();
        std::mem::forget(b);
        let reopened = RedbBackend::open(&copy).unwrap();
        dump(&reopened.read().unwrap()).unwrap().into_iter().map(|(_, k, _)| k).collect()
    }

    #[test]
    fn batched_commits_are_read_at_once_and_durable_only_after_a_sync() {
        let (dir, mut b) = backend();
        put_one(&mut b, b"durable");
        assert!(!b.has_unsynced());
        b.set_batched_commits(true);
        put_one(&mut b, b"synced");
        assert!(b.has_unsynced());
        b.sync().unwrap();
        assert!(!b.has_unsynced());
        put_one(&mut b, b"batched");
        assert!(b.has_unsynced());
        // Readers of this process see the batched commit at once.
        let keys: Vec<Vec<u8>> = dump(&b.read().unwrap()).unwrap().into_iter().map(|(_, k, _)| k).collect();
        assert_eq!(keys, [b"batched".to_vec(), b"durable".to_vec(), b"synced".to_vec()]);
        // A crash now keeps what was synced and loses the batched commit.
        assert_eq!(crash_copy(b, dir.path()), [b"durable".to_vec(), b"synced".to_vec()]);
    }

    #[test]
    fn a_durable_commit_after_batched_ones_makes_them_durable_too() {
        let (dir, mut b) = backend();
        b.set_batched_commits(true);
        put_one(&mut b, b"a");
        put_one(&mut b, b"b");
        b.set_batched_commits(false);
        assert!(b.has_unsynced(), "turning batching off syncs nothing by itself");
        put_one(&mut b, b"c");
        assert!(!b.has_unsynced());
        assert_eq!(crash_copy(b, dir.path()), [b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]);
    }

    #[test]
    fn closing_a_backend_makes_its_batched_commits_durable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        {
            let mut b = RedbBackend::open(&path).unwrap();
            b.set_batched_commits(true);
            put_one(&mut b, b"a");
        }
        let b = RedbBackend::open(&path).unwrap();
        assert_eq!(dump(&b.read().unwrap()).unwrap(), vec![(Bucket::Key, b"a".to_vec(), b"v".to_vec())]);
    }

    #[test]
    fn a_file_that_is_not_redb_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        std::fs::write(&path, vec![0x5a; 8192]).unwrap();
        let e = RedbBackend::open(&path).unwrap_err();
        assert!(matches!(e, FsError::Db { .. }), "{e:?}");
    }

    #[test]
    fn a_bulk_write_in_many_chunks_holds_every_record_once_committed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let mut want = Vec::new();
        {
            let b = RedbBackend::open(&path).unwrap();
            // 1 KiB chunks: every few records end a non-durable transaction.
            let mut w = b.bulk_write_in(1024).unwrap();
            for (bucket, n) in [(Bucket::Key, 300u32), (Bucket::Meta, 3), (Bucket::Lease, 40)] {
                let records: Vec<(Vec<u8>, Vec<u8>)> =
                    (0..n).map(|i| (i.to_be_bytes().to_vec(), vec![i as u8; 100])).collect();
                for part in records.chunks(7) {
                    w.append(bucket, &mut part.iter().map(|(k, v)| (k.as_slice(), v.as_slice()))).unwrap();
                    w.checkpoint().unwrap();
                }
                want.extend(records.into_iter().map(|(k, v)| (bucket, k, v)));
            }
            w.commit().unwrap();
        }
        let b = RedbBackend::open(&path).unwrap();
        assert_eq!(dump(&b.read().unwrap()).unwrap(), want);
    }

    #[test]
    fn a_bulk_write_refuses_a_key_out_of_order() {
        let (_dir, b) = backend();
        let mut w = b.bulk_write().unwrap();
        w.append(Bucket::Key, &mut [(&b"b"[..], &b"1"[..])].into_iter()).unwrap();
        let e = w.append(Bucket::Key, &mut [(&b"a"[..], &b"2"[..])].into_iter()).unwrap_err();
        assert_eq!(e.kind, BackendErrorKind::Misuse);
    }

    #[test]
    fn disk_full_maps_to_full() {
        let e = redb::Error::Io(io::Error::from(io::ErrorKind::StorageFull));
        assert_eq!(redb_kind(&e), BackendErrorKind::Full);
        assert_eq!(backend_err(e, "x").kind, BackendErrorKind::Full);
        assert_eq!(redb_kind(&redb::Error::Corrupted("x".into())), BackendErrorKind::Corrupt);
    }
}
