//! Loading a snapshot's backend on two threads: the decoder and the redb writer.
//!
//! Persisting used to run one step after the other on one thread: decode and check the image
//! while inserting every record into redb, commit, then read every record back out of redb to
//! build the key index and the lessor. On a host with two cores the decoder (frame CRCs, the
//! image's SHA-256, parsing) and the writer (redb's B-tree, its page cache, the file writes)
//! each keep one core busy, so they now run side by side:
//!
//! - the caller's thread decodes the image, hands the records to the writer in bounded
//!   [`Batch`]es, and keeps the few bytes of each record the key index and the lessor are built
//!   from ([`Records`]): a `key` record without its value, every other (small) bucket whole;
//! - a writer thread appends the batches to the redb file through one cursor per bucket run
//!   (the image's records are sorted, so every insert is an append at the end of the table), in
//!   non-durable transactions of 8 MiB ([`crate::backend::BulkWrite`]), and commits the last
//!   one durably once the decoder says the image is whole and checked; a third thread syncs the
//!   file after each chunk, so that the last commit has little left to write;
//! - while the writer commits, the decoder's thread builds the stores from [`Records`], without
//!   reading the redb file back.
//!
//! Memory stays bounded by the image's key count, not its size: at most [`QUEUE`] + 2 batches
//! exist at once ([`QUEUE`] waiting, one being written, one being filled), each of about
//! [`BATCH_BYTES`] (or one record, if that is larger); the values are not kept; redb's page
//! cache is capped (32 MiB while loading).

use std::cell::Cell;
use std::ops::ControlFlow;
use std::path::Path;
use std::sync::mpsc::{Receiver, Sender, SyncSender};

use snapply_core::backend::{Backend, BackendError, BackendErrorKind, Bucket, ReadTxn, Visit, WriteTxn};
use snapply_core::store::KeyValue;

use crate::backend::RedbBackend;
use crate::error::FsError;
use crate::failpoint::failpoint;

/// How many bytes of keys and values a batch holds before it is handed to the writer.
pub(crate) const BATCH_BYTES: usize = 1 << 20;

/// How many full batches may wait for the writer: the decoder blocks beyond that, so a slow
/// disk bounds the memory in flight instead of letting it grow with the image.
pub(crate) const QUEUE: usize = 4;

/// Records on their way to the writer, keys and values back to back in one buffer.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    bytes: Vec<u8>,
    /// Bucket, key length and value length of each record, in order.
    lens: Vec<(Bucket, u32, u32)>,
}

impl Batch {
    fn push(&mut self, bucket: Bucket, key: &[u8], value: &[u8]) -> Result<(), FsError> {
        let (k, v) = (u32::try_from(key.len()), u32::try_from(value.len()));
        let (Ok(k), Ok(v)) = (k, v) else {
            return Err(misuse("a record longer than 4 GiB"));
        };
        self.bytes.extend_from_slice(key);
        self.bytes.extend_from_slice(value);
        self.lens.push((bucket, k, v));
        Ok(())
    }

    fn clear(&mut self) {
        self.bytes.clear();
        self.lens.clear();
    }
}

/// What the decoder sends the writer.
#[derive(Debug)]
pub(crate) enum Msg {
    /// Records to append.
    Batch(Batch),
    /// The image is whole and checked: commit. A writer whose channel closes without this
    /// drops its transaction, which leaves nothing.
    Commit,
}

/// The writer thread: appends every batch received on `rx` to a write transaction of
/// `backend` and commits it on [`Msg::Commit`]. Emptied batches go back on `recycle`, so the
/// decoder reuses their buffers instead of allocating new ones.
///
/// `Ok(true)` once committed (redb has synced the file), `Ok(false)` if the channel closed
/// first (the decoder failed: nothing is committed).
///
/// # Errors
/// [`FsError::Backend`] if redb fails (a full disk among them), or a failpoint's error.
pub(crate) fn write(
    backend: RedbBackend,
    rx: Receiver<Msg>,
    recycle: Sender<Batch>,
    path: &Path,
) -> Result<bool, FsError> {
    let op = |op| move |source| FsError::Backend { op, source };
    let mut txn = backend.bulk_write().map_err(op("beginning the snapshot backend's transaction"))?;
    std::thread::scope(|scope| {
        let (kick, kicked) = std::sync::mpsc::sync_channel::<()>(1);
        // Early syncs only save time: if the syncer cannot start, the last commit syncs
        // everything itself, as it always does.
        let _ =
            std::thread::Builder::new().name("snapply-fs-sync".into()).spawn_scoped(scope, || sync_early(path, kicked));
        let mut first = true;
        while let Ok(msg) = rx.recv() {
            match msg {
                Msg::Batch(mut batch) => {
                    append(&mut txn, &batch).map_err(op("writing the snapshot's backend"))?;
                    if txn.checkpoint().map_err(op("writing the snapshot's backend"))? {
                        // A sync already asked for covers this chunk's pages too.
                        let _ = kick.try_send(());
                    }
                    if first {
                        first = false;
                        failpoint!("fs::persist::writing", path);
                    }
                    batch.clear();
                    // The decoder may be gone already (it failed); the buffer is then just freed.
                    let _ = recycle.send(batch);
                }
                Msg::Commit => {
                    drop(kick);
                    txn.commit().map_err(op("committing the snapshot's backend"))?;
                    return Ok(true);
                }
            }
        }
        Ok(false)
    })
}

/// Writes the file's dirty pages to disk while the writer goes on appending, each time the
/// writer has committed a chunk, until it stops asking.
///
/// The kernel would otherwise keep them in its page cache (its background writeback starts only
/// past a share of the machine's memory), and the last commit's `fdatasync` would write the
/// whole file at once while both threads wait for it. Syncing early only makes pages durable
/// sooner; what the last commit makes durable, and when it reports it, is unchanged (redb syncs
/// the file when it commits durably). A failed early sync is ignored for the same reason: the
/// last commit's own sync reports the disk's errors.
fn sync_early(path: &Path, kicked: Receiver<()>) {
    let Ok(file) = std::fs::File::open(path) else { return };
    for () in kicked {
        let _ = file.sync_data();
    }
}

/// Appends a batch's records, one cursor per run of records of one bucket.
fn append(txn: &mut crate::backend::BulkWrite, batch: &Batch) -> Result<(), BackendError> {
    let mut rest = batch.bytes.as_slice();
    let mut lens = batch.lens.as_slice();
    while let Some(&(bucket, _, _)) = lens.first() {
        let run = lens.iter().take_while(|(b, _, _)| *b == bucket).count();
        let (this, next) = lens.split_at_checked(run).ok_or_else(batch_bug)?;
        let mut records = Run { bytes: rest, lens: this.iter(), broken: false };
        txn.append(bucket, &mut records)?;
        if records.broken || records.lens.next().is_some() {
            return Err(batch_bug());
        }
        rest = records.bytes;
        lens = next;
    }
    Ok(())
}

/// The records of one bucket run of a batch, split off its buffer as they are asked for.
struct Run<'a> {
    bytes: &'a [u8],
    lens: std::slice::Iter<'a, (Bucket, u32, u32)>,
    broken: bool,
}

impl<'a> Iterator for Run<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let &(_, k, v) = self.lens.next()?;
        let split = self
            .bytes
            .split_at_checked(k as usize)
            .and_then(|(key, tail)| tail.split_at_checked(v as usize).map(|(value, tail)| (key, value, tail)));
        match split {
            Some((key, value, tail)) => {
                self.bytes = tail;
                Some((key, value))
            }
            None => {
                self.broken = true;
                None
            }
        }
    }
}

/// The batch's lengths and bytes disagree: a bug of this module, reported rather than panicked.
fn batch_bug() -> BackendError {
    BackendError::new(BackendErrorKind::Misuse, "batched records out of step with their lengths")
}

fn misuse(what: &'static str) -> FsError {
    FsError::Backend { op: "loading the snapshot's backend", source: BackendError::new(BackendErrorKind::Misuse, what) }
}

/// The decoder's side of the channel: fills batches, hands them over, keeps [`Records`].
///
/// The backend the core's decoder writes an image into ([`snapply_core::image::decode_into`]):
/// a write transaction's records go both to the writer and into [`Records`], and reads read
/// [`Records`], so the stores built from it are bound to the image the decoder verified
/// ([`snapply_core::pipeline::Prebuilt::build`]).
pub(crate) struct Feed<'a> {
    /// `None` once [`Feed::close`] let the writer go.
    tx: Cell<Option<SyncSender<Msg>>>,
    recycle: &'a Receiver<Batch>,
    batch: Batch,
    records: Records,
}

impl<'a> Feed<'a> {
    pub(crate) fn new(tx: SyncSender<Msg>, recycle: &'a Receiver<Batch>) -> Self {
        Feed { tx: Cell::new(Some(tx)), recycle, batch: Batch::default(), records: Records::default() }
    }

    /// Takes one decoded record.
    ///
    /// # Errors
    /// [`FsError::Task`] if the writer is gone (it failed: its own error is the one to
    /// report).
    fn record(&mut self, bucket: Bucket, key: &[u8], value: &[u8]) -> Result<(), FsError> {
        self.records.push(bucket, key, value)?;
        self.batch.push(bucket, key, value)?;
        if self.batch.bytes.len() >= BATCH_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    /// Hands the records batched so far to the writer.
    ///
    /// # Errors
    /// As [`Feed::record`].
    fn flush(&mut self) -> Result<(), FsError> {
        if self.batch.lens.is_empty() {
            return Ok(());
        }
        let next = self.recycle.try_recv().unwrap_or_default();
        let full = std::mem::replace(&mut self.batch, next);
        self.send(Msg::Batch(full))
    }

    fn send(&self, msg: Msg) -> Result<(), FsError> {
        let tx = self.tx.take().ok_or_else(writer_gone)?;
        let sent = tx.send(msg).map_err(|_| writer_gone());
        self.tx.set(Some(tx));
        sent
    }

    /// Lets the writer go: with `commit`, after telling it to commit what it was sent (the
    /// image is whole and checked); without, it drops its transaction when it sees the channel
    /// closed.
    ///
    /// # Errors
    /// As [`Feed::record`].
    pub(crate) fn close(&self, commit: bool) -> Result<(), FsError> {
        let sent = if commit { self.send(Msg::Commit) } else { Ok(()) };
        drop(self.tx.take());
        sent
    }
}

fn to_backend(e: FsError) -> BackendError {
    match e {
        FsError::Backend { source, .. } => source,
        // The writer is gone: its own error is reported instead of this one.
        _ => BackendError::new(BackendErrorKind::Io, "the snapshot backend's writer stopped"),
    }
}

/// The decoder's write transaction on a [`Feed`]: it puts into a fresh backend, so `clear` has
/// nothing to clear and there is nothing to delete; `commit` hands the last batch over (the
/// writer commits only when told by [`Feed::close`]).
pub(crate) struct FeedTxn<'f, 'a> {
    feed: &'f mut Feed<'a>,
}

impl ReadTxn for FeedTxn<'_, '_> {
    fn get(&self, bucket: Bucket, key: &[u8], f: &mut dyn FnMut(&[u8])) -> Result<bool, BackendError> {
        RecordsRead { records: &self.feed.records, next: Cell::new(None) }.get(bucket, key, f)
    }

    fn scan(&self, bucket: Bucket, from: &[u8], f: &mut Visit<'_>) -> Result<(), BackendError> {
        RecordsRead { records: &self.feed.records, next: Cell::new(None) }.scan(bucket, from, f)
    }
}

impl WriteTxn for FeedTxn<'_, '_> {
    fn put(&mut self, bucket: Bucket, key: &[u8], value: &[u8]) -> Result<(), BackendError> {
        self.feed.record(bucket, key, value).map_err(to_backend)
    }

    fn delete(&mut self, _: Bucket, _: &[u8]) -> Result<bool, BackendError> {
        Err(BackendError::new(BackendErrorKind::Misuse, "a snapshot's records are only appended"))
    }

    fn clear(&mut self, bucket: Bucket) -> Result<(), BackendError> {
        if self.feed.records.entries_of(bucket).is_empty() {
            Ok(())
        } else {
            Err(BackendError::new(BackendErrorKind::Misuse, "a snapshot's records are only appended"))
        }
    }

    fn commit(self) -> Result<(), BackendError> {
        self.feed.flush().map_err(to_backend)
    }
}

impl<'a> Backend for Feed<'a> {
    type Read<'f>
        = RecordsRead<'f>
    where
        Self: 'f;
    type Write<'f>
        = FeedTxn<'f, 'a>
    where
        Self: 'f;

    fn read(&self) -> Result<RecordsRead<'_>, BackendError> {
        self.records.read()
    }

    fn write(&mut self) -> Result<FeedTxn<'_, 'a>, BackendError> {
        Ok(FeedTxn { feed: self })
    }
}

/// The writer thread stopped taking records: it failed, and its error is reported instead.
pub(crate) fn writer_gone() -> FsError {
    FsError::Task { what: "writing the snapshot's backend" }
}

/// The records of a snapshot as the key index, the lessor and the other stores are built from
/// them, in memory: every bucket's records whole, except the `key` bucket's values, whose
/// `value` field is dropped (the stores never read it; it is most of an image's bytes).
///
/// A read-only [`Backend`] over them: records arrive in the image's order (bucket, then key,
/// strictly increasing, which the decoder checks), so a bucket is a contiguous, sorted run and
/// a lookup is a binary search.
#[derive(Debug, Default)]
pub(crate) struct Records {
    bytes: Vec<u8>,
    entries: Vec<Entry>,
    /// Each bucket's run of `entries`, in the order the buckets came.
    buckets: Vec<(Bucket, usize, usize)>,
    /// Scratch for re-encoding a `key` record without its value.
    scratch: Vec<u8>,
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    at: usize,
    key: u32,
    value: u32,
}

impl Records {
    fn push(&mut self, bucket: Bucket, key: &[u8], value: &[u8]) -> Result<(), FsError> {
        let n = self.entries.len();
        match self.buckets.last_mut() {
            Some((b, _, end)) if *b == bucket => *end = n.saturating_add(1),
            _ => self.buckets.push((bucket, n, n.saturating_add(1))),
        }
        // A `key` record that does not decode is kept as it is: the store's own decode then
        // reports it, as it would have from the backend.
        let stripped = match bucket {
            Bucket::Key => match postcard::from_bytes::<KeyValue<'_>>(value) {
                Ok(kv) => {
                    let scratch = std::mem::take(&mut self.scratch);
                    let encoded = postcard::to_extend(&KeyValue { value: &[], ..kv }, scratch)
                        .map_err(|_| misuse("re-encoding a key record"))?;
                    self.scratch = encoded;
                    true
                }
                Err(_) => false,
            },
            _ => false,
        };
        let value: &[u8] = if stripped { &self.scratch } else { value };
        let (Ok(k), Ok(v)) = (u32::try_from(key.len()), u32::try_from(value.len())) else {
            return Err(misuse("a record longer than 4 GiB"));
        };
        let at = self.bytes.len();
        self.bytes.extend_from_slice(key);
        self.bytes.extend_from_slice(value);
        self.entries.push(Entry { at, key: k, value: v });
        self.scratch.clear();
        Ok(())
    }

    fn entries_of(&self, bucket: Bucket) -> &[Entry] {
        self.buckets
            .iter()
            .find(|(b, _, _)| *b == bucket)
            .and_then(|&(_, start, end)| self.entries.get(start..end))
            .unwrap_or(&[])
    }

    fn key(&self, e: &Entry) -> &[u8] {
        let end = e.at.saturating_add(e.key as usize);
        self.bytes.get(e.at..end).unwrap_or(&[])
    }

    fn value(&self, e: &Entry) -> &[u8] {
        let start = e.at.saturating_add(e.key as usize);
        let end = start.saturating_add(e.value as usize);
        self.bytes.get(start..end).unwrap_or(&[])
    }
}

/// A read transaction on [`Records`].
#[derive(Debug)]
pub(crate) struct RecordsRead<'a> {
    records: &'a Records,
    /// Where the entry after the last one found is: the key index reads the `key` records of
    /// its keys' latest revisions one by one, in key order, and when keys were written in key
    /// order (a bulk load, a counter's keys) that is revision order too, so the next lookup is
    /// usually there. Checked first; a miss costs one comparison before the binary search.
    next: Cell<Option<(Bucket, usize)>>,
}

impl ReadTxn for RecordsRead<'_> {
    fn get(&self, bucket: Bucket, key: &[u8], f: &mut dyn FnMut(&[u8])) -> Result<bool, BackendError> {
        let records = self.records;
        let entries = records.entries_of(bucket);
        let hinted = match self.next.get() {
            Some((b, i)) if b == bucket => entries.get(i).filter(|e| records.key(e) == key).map(|_| i),
            _ => None,
        };
        let found = match hinted {
            Some(i) => Some(i),
            None => entries.binary_search_by(|e| records.key(e).cmp(key)).ok(),
        };
        match found.and_then(|i| entries.get(i).map(|e| (i, e))) {
            Some((i, e)) => {
                self.next.set(Some((bucket, i.saturating_add(1))));
                f(records.value(e));
                Ok(true)
            }
            None => Ok(false),
        }
    }

    fn scan(&self, bucket: Bucket, from: &[u8], f: &mut Visit<'_>) -> Result<(), BackendError> {
        let records = self.records;
        let entries = records.entries_of(bucket);
        let start = entries.partition_point(|e| records.key(e) < from);
        for e in entries.get(start..).unwrap_or(&[]) {
            if let ControlFlow::Break(()) = f(records.key(e), records.value(e)) {
                break;
            }
        }
        Ok(())
    }
}

/// [`Records`] are read only: the stores built from them only read.
#[derive(Debug)]
pub(crate) struct NoWrite;

fn read_only() -> BackendError {
    BackendError::new(BackendErrorKind::Misuse, "the decoded records are read only")
}

impl ReadTxn for NoWrite {
    fn get(&self, _: Bucket, _: &[u8], _: &mut dyn FnMut(&[u8])) -> Result<bool, BackendError> {
        Err(read_only())
    }

    fn scan(&self, _: Bucket, _: &[u8], _: &mut Visit<'_>) -> Result<(), BackendError> {
        Err(read_only())
    }
}

impl WriteTxn for NoWrite {
    fn put(&mut self, _: Bucket, _: &[u8], _: &[u8]) -> Result<(), BackendError> {
        Err(read_only())
    }

    fn delete(&mut self, _: Bucket, _: &[u8]) -> Result<bool, BackendError> {
        Err(read_only())
    }

    fn clear(&mut self, _: Bucket) -> Result<(), BackendError> {
        Err(read_only())
    }

    fn commit(self) -> Result<(), BackendError> {
        Err(read_only())
    }
}

impl Backend for Records {
    type Read<'a> = RecordsRead<'a>;
    type Write<'a> = NoWrite;

    fn read(&self) -> Result<RecordsRead<'_>, BackendError> {
        Ok(RecordsRead { records: self, next: Cell::new(None) })
    }

    fn write(&mut self) -> Result<NoWrite, BackendError> {
        Err(read_only())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use snapply_core::backend::dump;
    use snapply_core::store::revision_key;

    fn kv(key: &[u8], value: &[u8], lease: i64) -> Vec<u8> {
        let kv = KeyValue { key, create_revision: 2, mod_revision: 3, version: 1, value, lease };
        postcard::to_allocvec(&kv).unwrap()
    }

    #[test]
    fn records_keep_key_records_without_their_value_and_other_buckets_whole() {
        let mut records = Records::default();
        let rev = |main| revision_key(snapply_core::store::Revision { main, sub: 0 }, false);
        records.push(Bucket::Key, &rev(2), &kv(b"a", &[7; 300], 0)).unwrap();
        records.push(Bucket::Key, &rev(3), &kv(b"b", b"v", 9)).unwrap();
        // Not a `KeyValue`: kept as it is, for the store's decode to report.
        records.push(Bucket::Key, &rev(4), &[0xff; 3]).unwrap();
        records.push(Bucket::Meta, b"m", b"meta value").unwrap();
        records.push(Bucket::Lease, b"l1", b"x").unwrap();
        records.push(Bucket::Lease, b"l2", b"y").unwrap();
        let txn = records.read().unwrap();

        let mut got = Vec::new();
        assert!(txn.get(Bucket::Key, &rev(3), &mut |v| got = v.to_vec()).unwrap());
        assert_eq!(got, kv(b"b", b"", 9));
        assert!(txn.get(Bucket::Key, &rev(2), &mut |v| got = v.to_vec()).unwrap());
        assert_eq!(got, kv(b"a", b"", 0));
        assert!(txn.get(Bucket::Key, &rev(4), &mut |v| got = v.to_vec()).unwrap());
        assert_eq!(got, [0xff; 3]);
        assert!(!txn.get(Bucket::Key, &rev(5), &mut |_| {}).unwrap());
        assert!(!txn.get(Bucket::Alarm, b"m", &mut |_| {}).unwrap());

        let mut leases = Vec::new();
        txn.scan(Bucket::Lease, b"l2", &mut |k, v| {
            leases.push((k.to_vec(), v.to_vec()));
            ControlFlow::Continue(())
        })
        .unwrap();
        assert_eq!(leases, vec![(b"l2".to_vec(), b"y".to_vec())]);
        let all = dump(&txn).unwrap();
        assert_eq!(all.len(), 6);
        assert!(all.contains(&(Bucket::Meta, b"m".to_vec(), b"meta value".to_vec())));
        assert!(records.write().is_err());
    }

    #[test]
    fn lookups_in_any_order_find_every_record_and_only_those() {
        let mut records = Records::default();
        let keys: Vec<[u8; 2]> = (0..50u16).map(|i| (i * 2).to_be_bytes()).collect();
        for k in &keys {
            records.push(Bucket::Lease, k, k).unwrap();
        }
        records.push(Bucket::Alarm, &keys[1], b"other bucket").unwrap();
        let txn = records.read().unwrap();
        // In order (the hinted path), backwards, skipping, and keys that are absent.
        let order: Vec<usize> = (0..50).chain((0..50).rev()).chain((0..50).step_by(7)).collect();
        for i in order {
            let mut got = Vec::new();
            assert!(txn.get(Bucket::Lease, &keys[i], &mut |v| got = v.to_vec()).unwrap());
            assert_eq!(got, keys[i]);
            let absent = (i as u16 * 2 + 1).to_be_bytes();
            assert!(!txn.get(Bucket::Lease, &absent, &mut |_| {}).unwrap());
        }
        let mut got = Vec::new();
        assert!(txn.get(Bucket::Alarm, &keys[1], &mut |v| got = v.to_vec()).unwrap());
        assert_eq!(got, b"other bucket");
        assert!(!txn.get(Bucket::Alarm, &keys[2], &mut |_| {}).unwrap());
    }

    fn writer_on(dir: &Path) -> (std::path::PathBuf, RedbBackend) {
        let path = dir.join("db");
        (path.clone(), RedbBackend::open(&path).unwrap())
    }

    #[test]
    fn the_writer_commits_only_when_told_and_recycles_its_batches() {
        let dir = tempfile::tempdir().unwrap();
        let (path, backend) = writer_on(dir.path());
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
        let (recycle_tx, recycle_rx) = std::sync::mpsc::channel();
        let mut feed = Feed::new(tx, &recycle_rx);
        let value = vec![1u8; 4096];
        // More than one batch, so batches come back for reuse.
        let n = BATCH_BYTES / 4096 + 10;
        let keys: Vec<[u8; 4]> = (0..n as u32).map(u32::to_be_bytes).collect();
        std::thread::scope(|s| {
            let writer = s.spawn(|| write(backend, rx, recycle_tx, &path));
            for k in &keys {
                feed.record(Bucket::Lease, k, &value).unwrap();
            }
            feed.record(Bucket::Alarm, b"a", b"").unwrap();
            feed.flush().unwrap();
            feed.close(true).unwrap();
            assert!(writer.join().unwrap().unwrap());
        });
        assert!(recycle_rx.try_recv().is_ok());
        let b = RedbBackend::open(&dir.path().join("db")).unwrap();
        let all = dump(&b.read().unwrap()).unwrap();
        assert_eq!(all.len(), n + 1);
        assert_eq!(dump(&feed.read().unwrap()).unwrap(), all);
        feed.record(Bucket::Alarm, b"b", b"").unwrap();
        assert!(feed.flush().is_err(), "a closed feed hands nothing more to the writer");
    }

    #[test]
    fn a_writer_whose_channel_closes_before_commit_commits_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (path, backend) = writer_on(dir.path());
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
        let (recycle_tx, _recycle_rx) = std::sync::mpsc::channel();
        let mut batch = Batch::default();
        batch.push(Bucket::Lease, b"k", b"v").unwrap();
        tx.send(Msg::Batch(batch)).unwrap();
        drop(tx);
        assert!(!write(backend, rx, recycle_tx, &path).unwrap());
    }
}
