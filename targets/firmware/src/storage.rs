//! Where the node keeps its state: the one module that knows the medium, so switching the
//! medium (to the NOR-flash adapter) changes this file and nothing else.
//!
//! The medium is a region of memory outside the program's 64 KiB of RAM: the board's PSRAM at
//! [`REGION_BASE`], reached by address like a memory-mapped flash and in no ELF segment, so it
//! survives a system reset (QEMU reloads only the ELF's segments). It holds two *slots*, each a
//! backend of two banks (the core's `FixedTable`, the table of its heap-free `MemBackend`): a
//! write transaction stages into the inactive bank and commit flips the active one, as the
//! core's `MemBackend` does. A restore materialises the snapshot into the slot that is not live;
//! the header's `live` field, one word written after the pipeline reaches `Applied`, is the
//! commit record.
//!
//! The core's own `MemBackend` and `MemSnapshotStore` are not used as they are: both build a
//! whole table by value (`B::default()` in `persist`, `clone_from` of a bank in `write`), which
//! would put a 200 KiB temporary on a 64 KiB stack. The tables are instead built in place, and a
//! transaction stages by copying records one at a time.
//!
//! This medium is plain RAM: it does not enforce NOR rules (erase to 0xFF, program 1 to 0).

use core::sync::atomic::{AtomicBool, Ordering};

use snapply_core::ImageData;
use snapply_core::backend::{Backend, BackendError, BackendErrorKind, Bucket, ReadTxn, Visit, WriteTxn};
use snapply_core::image;
use snapply_core::mem::{FixedTable, Table};
use snapply_core::ports::{Durable, PersistTicket, PortError, PortErrorKind, ReleaseTicket, SnapshotStore};

/// Start of the emulated storage: the mps2-an385's 16 MiB PSRAM.
pub const REGION_BASE: usize = 0x2100_0000;
/// Size of the PSRAM.
pub const REGION_LEN: usize = 16 * 1024 * 1024;

/// Records per bank: the reference device's ~500 keys plus the other buckets' records.
const RECORDS: usize = 640;
/// Longest backend key: revisions are 17 bytes, names and member ids shorter than 48.
const KEY_BYTES: usize = 48;
/// Longest backend value: the reference profile's largest record.
const VALUE_BYTES: usize = 256;
/// Largest v2 data of a snapshot.
const V2_BYTES: usize = 2048;

const MAGIC: u32 = 0x534e_4150; // "SNAP"

type Bank = FixedTable<RECORDS, KEY_BYTES, VALUE_BYTES>;
type V2Data = heapless::Vec<u8, V2_BYTES>;

/// One backend: two banks and which one is committed.
pub struct Banks {
    tables: [Bank; 2],
    active: u32,
}

impl Banks {
    fn active(&self) -> &Bank {
        let [a, b] = &self.tables;
        if self.active == 0 { a } else { b }
    }

    fn split(&mut self) -> (&Bank, &mut Bank) {
        let [a, b] = &mut self.tables;
        if self.active == 0 { (a, b) } else { (b, a) }
    }

    fn staged(&mut self) -> &mut Bank {
        self.split().1
    }

    /// Makes the inactive bank a copy of the active one, a record at a time.
    fn stage(&mut self) -> Result<(), BackendError> {
        let (active, staged) = self.split();
        for bucket in Bucket::ALL {
            staged.clear(bucket);
            let mut failed = None;
            active.scan(bucket, &[], &mut |k, v| match staged.put(bucket, k, v) {
                Ok(()) => core::ops::ControlFlow::Continue(()),
                Err(e) => {
                    failed = Some(e);
                    core::ops::ControlFlow::Break(())
                }
            });
            if let Some(e) = failed {
                return Err(e);
            }
        }
        Ok(())
    }

    fn clear(&mut self) {
        for table in &mut self.tables {
            for bucket in Bucket::ALL {
                table.clear(bucket);
            }
        }
        self.active = 0;
    }

    /// Records of the committed bank.
    pub fn len(&self) -> usize {
        self.active().len()
    }
}

/// The header: the commit record and the boot count.
#[repr(C)]
struct Header {
    magic: u32,
    /// The slot that holds the node's state.
    live: u32,
    /// Snapshots applied and committed since the region was formatted.
    restores: u32,
    /// Boots since the region was formatted.
    boots: u32,
}

#[repr(C)]
struct Region {
    header: Header,
    slots: [Banks; 2],
    v2: [V2Data; 2],
}

const _: () = assert!(core::mem::size_of::<Region>() <= REGION_LEN);

static TAKEN: AtomicBool = AtomicBool::new(false);

/// A slot's backend, handed to the node (live) or to the pipeline (the restored snapshot).
pub struct ExtBackend {
    banks: &'static mut Banks,
    slot: u32,
}

/// Read view of an [`ExtBackend`].
pub struct ExtRead<'a> {
    table: &'a Bank,
}

/// Write transaction of an [`ExtBackend`].
pub struct ExtWrite<'a> {
    banks: &'a mut Banks,
}

impl ReadTxn for ExtRead<'_> {
    fn get(&self, bucket: Bucket, key: &[u8], f: &mut dyn FnMut(&[u8])) -> Result<bool, BackendError> {
        Ok(self.table.get(bucket, key).map(f).is_some())
    }
    fn scan(&self, bucket: Bucket, from: &[u8], f: &mut Visit<'_>) -> Result<(), BackendError> {
        self.table.scan(bucket, from, f);
        Ok(())
    }
}

impl ReadTxn for ExtWrite<'_> {
    fn get(&self, bucket: Bucket, key: &[u8], f: &mut dyn FnMut(&[u8])) -> Result<bool, BackendError> {
        let [a, b] = &self.banks.tables;
        let staged = if self.banks.active == 0 { b } else { a };
        Ok(staged.get(bucket, key).map(f).is_some())
    }
    fn scan(&self, bucket: Bucket, from: &[u8], f: &mut Visit<'_>) -> Result<(), BackendError> {
        let [a, b] = &self.banks.tables;
        let staged = if self.banks.active == 0 { b } else { a };
        staged.scan(bucket, from, f);
        Ok(())
    }
}

impl WriteTxn for ExtWrite<'_> {
    fn put(&mut self, bucket: Bucket, key: &[u8], value: &[u8]) -> Result<(), BackendError> {
        self.banks.staged().put(bucket, key, value)
    }
    fn delete(&mut self, bucket: Bucket, key: &[u8]) -> Result<bool, BackendError> {
        Ok(self.banks.staged().delete(bucket, key))
    }
    fn clear(&mut self, bucket: Bucket) -> Result<(), BackendError> {
        self.banks.staged().clear(bucket);
        Ok(())
    }
    fn commit(self) -> Result<(), BackendError> {
        self.banks.active = 1 - self.banks.active;
        Ok(())
    }
}

impl Backend for ExtBackend {
    type Read<'a> = ExtRead<'a>;
    type Write<'a> = ExtWrite<'a>;

    fn read(&self) -> Result<ExtRead<'_>, BackendError> {
        Ok(ExtRead { table: self.banks.active() })
    }

    fn write(&mut self) -> Result<ExtWrite<'_>, BackendError> {
        self.banks.stage()?;
        Ok(ExtWrite { banks: self.banks })
    }
}

impl ExtBackend {
    /// Records of the committed bank.
    pub fn len(&self) -> usize {
        self.banks.len()
    }
}

/// How the storage was found at boot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, defmt::Format)]
pub struct Boot {
    /// This boot's number, from 1 (the region was blank or foreign and was formatted).
    pub boot: u32,
    /// Snapshots applied and committed before this boot.
    pub restores: u32,
}

/// Why the storage cannot be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, defmt::Format)]
#[non_exhaustive]
pub enum StorageError {
    /// The region was already taken by this boot.
    Taken,
    /// The slot asked for is handed out.
    SlotInUse {
        /// Which slot.
        slot: u32,
    },
    /// The header names a slot that does not exist.
    BadHeader {
        /// The `live` field found.
        live: u32,
    },
    /// No snapshot was persisted by the store whose backend should be committed.
    NothingToCommit,
}

impl core::fmt::Display for StorageError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            StorageError::Taken => f.write_str("the storage region was taken twice"),
            StorageError::SlotInUse { slot } => write!(f, "storage slot {slot} is already handed out"),
            StorageError::BadHeader { live } => write!(f, "the storage header names live slot {live}, not 0 or 1"),
            StorageError::NothingToCommit => f.write_str("committing a restore that persisted no snapshot"),
        }
    }
}

impl core::error::Error for StorageError {}

/// The storage: the header, the two slots and their v2 data.
pub struct Storage {
    header: &'static mut Header,
    slots: [Option<&'static mut Banks>; 2],
    v2: [&'static mut V2Data; 2],
    /// The slot a snapshot was persisted into in this boot, not yet committed.
    persisted: Option<u32>,
}

impl Storage {
    /// Takes the region (once per boot), formatting it if its header is not ours, and counts
    /// the boot.
    pub fn open() -> Result<(Storage, Boot), StorageError> {
        if TAKEN.swap(true, Ordering::AcqRel) {
            return Err(StorageError::Taken);
        }
        let region = REGION_BASE as *mut Region;
        // Safety: the PSRAM at REGION_BASE is board memory that no ELF section, stack or other
        // code uses (memory.x places nothing there), `TAKEN` makes this the only reference to
        // it for this boot, and `Region` fits in it (const assertion above). The magic is read
        // as a plain word before any reference to the region is made.
        let magic = unsafe { core::ptr::addr_of!((*region).header.magic).read_volatile() };
        if magic != MAGIC {
            // Safety: as above; all-zero bytes are a valid `Region`: every table and vector is
            // a length (0: empty) followed by uninitialised slots, and the header is integers.
            unsafe { core::ptr::write_bytes(region, 0, 1) };
        }
        // Safety: as above; the region now holds a valid `Region`.
        let region: &'static mut Region = unsafe { &mut *region };
        let Region { header, slots: [s0, s1], v2: [v0, v1] } = region;
        if magic != MAGIC {
            s0.clear();
            s1.clear();
            v0.clear();
            v1.clear();
            *header = Header { magic: MAGIC, live: 0, restores: 0, boots: 0 };
        }
        if header.live > 1 {
            return Err(StorageError::BadHeader { live: header.live });
        }
        header.boots = header.boots.saturating_add(1);
        let boot = Boot { boot: header.boots, restores: header.restores };
        Ok((Storage { header, slots: [Some(s0), Some(s1)], v2: [v0, v1], persisted: None }, boot))
    }

    fn take(&mut self, slot: u32) -> Result<ExtBackend, StorageError> {
        let [a, b] = &mut self.slots;
        let entry = if slot == 0 { a } else { b };
        entry.take().map(|banks| ExtBackend { banks, slot }).ok_or(StorageError::SlotInUse { slot })
    }

    /// The live slot's backend, for the node.
    pub fn live_backend(&mut self) -> Result<ExtBackend, StorageError> {
        self.take(self.header.live)
    }

    /// The v2 data of the snapshot the live slot came from (empty if none).
    pub fn live_v2(&self) -> &[u8] {
        let [a, b] = &self.v2;
        if self.header.live == 0 { a } else { b }
    }

    /// A snapshot store persisting into the slot that is not live, decoding with `buf`.
    pub fn snapshot_store<'s>(&'s mut self, buf: &'s mut [u8]) -> ExtSnapshotStore<'s> {
        ExtSnapshotStore { storage: self, buf, pinned: None }
    }

    /// The commit record: the slot the restore persisted becomes the live one, and the old
    /// backend the pipeline handed back is taken back.
    pub fn commit(&mut self, old: ExtBackend) -> Result<(), StorageError> {
        let new = self.persisted.take().ok_or(StorageError::NothingToCommit)?;
        self.header.live = new;
        self.header.restores = self.header.restores.saturating_add(1);
        let [a, b] = &mut self.slots;
        let entry = if old.slot == 0 { a } else { b };
        *entry = Some(old.banks);
        Ok(())
    }
}

/// The snapshot store over the slot that is not live.
pub struct ExtSnapshotStore<'s> {
    storage: &'s mut Storage,
    buf: &'s mut [u8],
    /// Index, term and image digest of the snapshot persisted.
    pinned: Option<(u64, u64, [u8; 32])>,
}

fn port(e: BackendError) -> PortError {
    PortError::new(e.kind, e.context)
}

impl ExtSnapshotStore<'_> {
    fn spare(&self) -> u32 {
        1 - self.storage.header.live
    }
}

impl SnapshotStore for ExtSnapshotStore<'_> {
    type Backend = ExtBackend;

    fn persist<'r>(&mut self, image: ImageData<'_>, ticket: PersistTicket<'r>) -> Result<Durable<'r>, PortError> {
        if let ImageData::Persisted { sha256 } = image {
            return match self.pinned {
                Some((i, t, s)) if i == ticket.index() && t == ticket.term() && s == sha256 => Ok(ticket.confirm(s)),
                _ => Err(PortError::new(PortErrorKind::NotFound, "looking up a persisted snapshot")),
            };
        }
        let spare = self.spare();
        let [s0, s1] = &mut self.storage.slots;
        let banks = if spare == 0 { s0 } else { s1 };
        let banks = banks
            .as_deref_mut()
            .ok_or(PortError::new(PortErrorKind::Misuse, "persisting into a slot that is handed out"))?;
        let [v0, v1] = &mut self.storage.v2;
        let v2: &mut V2Data = if spare == 0 { v0 } else { v1 };
        banks.clear();
        v2.clear();
        let mut txn = ExtWrite { banks };
        let mut keep_v2 = |chunk: &[u8]| {
            v2.extend_from_slice(chunk).map_err(|_| BackendError::new(BackendErrorKind::Full, "holding the v2 data"))
        };
        let (metadata, summary) = match image {
            ImageData::Bytes(bytes) => image::materialize(bytes, self.buf, &mut txn, &mut keep_v2).map_err(|e| {
                if e.corruption().is_some() {
                    PortError::new(PortErrorKind::Corrupt, "checking the snapshot image")
                } else {
                    PortError::new(PortErrorKind::Io, "materialising the snapshot image")
                }
            })?,
            ImageData::Stream(source) => {
                image::materialize(source, self.buf, &mut txn, &mut keep_v2).map_err(|e| match e {
                    image::MaterializeError::Decode(image::DecodeError::Source(e)) => e,
                    e if e.corruption().is_some() => {
                        PortError::new(PortErrorKind::Corrupt, "checking the snapshot image")
                    }
                    _ => PortError::new(PortErrorKind::Io, "materialising the snapshot image"),
                })?
            }
            ImageData::Persisted { .. } => {
                return Err(PortError::new(PortErrorKind::NotFound, "looking up a persisted snapshot"));
            }
        };
        if metadata != *ticket.metadata() {
            return Err(PortError::new(PortErrorKind::Corrupt, "comparing the image's metadata with the snapshot's"));
        }
        txn.commit().map_err(port)?;
        self.pinned = Some((ticket.index(), ticket.term(), summary.sha256));
        self.storage.persisted = Some(spare);
        Ok(ticket.confirm(summary.sha256))
    }

    fn open_backend(&mut self, snapshot: &Durable<'_>) -> Result<ExtBackend, PortError> {
        match self.pinned {
            Some((i, t, s)) if i == snapshot.index() && t == snapshot.term() && s == *snapshot.sha256() => {}
            _ => return Err(PortError::new(PortErrorKind::NotFound, "looking up a persisted snapshot")),
        }
        let spare = self.spare();
        self.storage
            .take(spare)
            .map_err(|_| PortError::new(PortErrorKind::Misuse, "opening a snapshot backend that is handed out"))
    }

    fn v2_data(&mut self, _snapshot: &Durable<'_>) -> Result<&[u8], PortError> {
        let [a, b] = &self.storage.v2;
        Ok(if self.spare() == 0 { a } else { b })
    }

    fn release_before(&mut self, _applied: ReleaseTicket<'_>) -> Result<(), PortError> {
        // One spare slot: the previous snapshot's slot is reclaimed by `Storage::commit`.
        Ok(())
    }
}
