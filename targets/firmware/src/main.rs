//! snapply on a Cortex-M3 (QEMU's mps2-an385), in 48 KiB of RAM, its state on NOR flash.
//!
//! Boot 1 (blank flash) builds an old state (its own keys, a lease, a member, a user), then
//! receives the first snapshot image the build script made on the host, streams it through the
//! typestate pipeline (etcd's `applySnapshot`) into the flash (`snapply-flash`), checks the
//! restored state against the host's digests, and resets the system. Boot 2 mounts the flash,
//! re-opens the node from it, checks it again, applies the second snapshot the same way and
//! resets. Boot 3 re-opens and checks the second snapshot's state and exits through
//! semihosting. Every failure, panic or fault exits with failure.
//!
//! The flash is a file on the host ([`hostflash`]), so it outlives QEMU: a run on a file that
//! a killed QEMU left boots on whatever state it holds (the old state, a snapshot restored with
//! or without the entries on top, a persisted snapshot it completes) and carries the scenario
//! on from there. `cut=N` on the semihosting command line cuts the power `N` bytes into the
//! run's first restore.
//!
//! With feature `async` the same run is embassy-executor's main task, on an async flash driver
//! (`storage::AsyncFlash`) that the flash adapter drives through `snapply_flash::BlockOn`.
//!
//! The log goes out through defmt over semihosting; decode it on the host with
//! `defmt-print -e <elf>` (`cargo xtask qemu` does).
#![no_std]
#![no_main]
#![warn(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]

mod follow;
mod hostflash;
mod phases;
mod shared;
mod stack;
mod storage;
mod uart;

use core::cell::RefCell;
use core::mem::size_of;

#[cfg(not(feature = "async"))]
use cortex_m_rt::entry;
use cortex_m_rt::{ExceptionFrame, exception};
use cortex_m_semihosting::debug::{self, EXIT_FAILURE, EXIT_SUCCESS};
use defmt::{Display2Format, error, info};
use defmt_semihosting as _;
use snapply_core::image::{self, BASE_BUFFER, Chunked};
use snapply_core::memports::PeerTable;
use snapply_core::ports::{ImageStream, Ports};
use snapply_core::store::{NewMember, StoreError};
use snapply_core::{ApplyError, Node, Request, Snapshot, SnapshotMetadata};
use snapply_core::{Observer, Phase};

use shared::{DEVICE, Device, digests};

use snapply_flash::{BootError, FlashError};
use storage::{ChipError, DeviceBackend, DeviceIndexes, DeviceStore, MediumError, RANGE, RECORD_BYTES, RECORDS};

/// What the build script expects a snapshot to lead to.
struct Expected {
    index: u64,
    term: u64,
    image_len: usize,
    live_keys: u32,
    records: u32,
    records_sha256: [u8; 32],
    stores_sha256: [u8; 32],
    /// Index of the last entry of `shared::writes_after_restore`, and the state after them.
    written_index: u64,
    written_records: u32,
    written_records_sha256: [u8; 32],
    written_stores_sha256: [u8; 32],
    /// The stores of that state re-opened from the backend (the key arena is laid out afresh).
    reopened_stores_sha256: [u8; 32],
}

include!(concat!(env!("OUT_DIR"), "/expected.rs"));

/// A state to check against: the host's digests of it.
#[derive(Clone, Copy)]
struct Want {
    records: u32,
    records_sha256: &'static [u8; 32],
    stores_sha256: &'static [u8; 32],
}

impl Expected {
    /// The state right after the restore.
    fn restored(&'static self) -> Want {
        Want { records: self.records, records_sha256: &self.records_sha256, stores_sha256: &self.stores_sha256 }
    }

    /// The state after `shared::writes_after_restore`.
    fn written(&'static self) -> Want {
        Want {
            records: self.written_records,
            records_sha256: &self.written_records_sha256,
            stores_sha256: &self.written_stores_sha256,
        }
    }

    /// The state after `shared::writes_after_restore`, re-opened from the backend.
    fn reopened(&'static self) -> Want {
        Want { stores_sha256: &self.reopened_stores_sha256, ..self.written() }
    }
}

/// The snapshot images, made on the host at build time.
static IMAGES: [&[u8]; 2] = [
    include_bytes!(concat!(env!("OUT_DIR"), "/snapshot-1.img")),
    include_bytes!(concat!(env!("OUT_DIR"), "/snapshot-2.img")),
];

/// Buffer for reading an image's header frame (its metadata) ahead of the restore.
const HEADER_BUFFER: usize = 256;

/// The image arrives in pieces of this size, as from a transport with a small frame.
const CHUNK: usize = 256;

type DeviceNode<'f> = Node<DeviceBackend<'f>, Device>;

/// Why the firmware failed.
#[derive(Debug, defmt::Format)]
#[non_exhaustive]
enum Failure {
    /// The board memory holding the flash could not be taken.
    Medium(MediumError),
    /// The flash adapter failed (mounting, reading the committed v2 data).
    Flash(FlashError<ChipError>),
    /// Booting from the flash failed.
    Boot(BootError<ChipError>),
    /// A store failed: applying an entry of the old state, or re-opening the node.
    Store(StoreError),
    /// The pipeline failed; the error names the phase.
    Apply(ApplyError),
    /// The image's header did not decode.
    Header,
    /// The snapshot in the image is not the one the build script recorded.
    WrongSnapshot { index: u64 },
    /// The state differs from the host's.
    Digest { what: &'static str },
    /// More boots than the scenario has: the reset loops.
    TooManyBoots { boot: u32 },
    /// The flash holds a state that is neither blank nor one of the snapshots.
    UnknownState { applied_index: u64 },
}

impl core::fmt::Display for Failure {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Failure::Medium(e) => write!(f, "{e}"),
            Failure::Flash(e) => write!(f, "{e}"),
            Failure::Boot(e) => write!(f, "{e}"),
            Failure::Store(e) => write!(f, "{e}"),
            Failure::Apply(e) => write!(f, "{e}"),
            Failure::Header => f.write_str("the snapshot image's header does not decode"),
            Failure::WrongSnapshot { index } => {
                write!(f, "the image holds snapshot {index}, not the one the build recorded")
            }
            Failure::Digest { what } => write!(f, "the {what} differ from the host's digest"),
            Failure::TooManyBoots { boot } => write!(f, "boot {boot}: the scenario resets at most twice"),
            Failure::UnknownState { applied_index } => {
                write!(f, "the flash holds a state at index {applied_index}, which is no snapshot of this build")
            }
        }
    }
}

impl core::error::Error for Failure {}

impl From<MediumError> for Failure {
    fn from(e: MediumError) -> Self {
        Failure::Medium(e)
    }
}
impl From<FlashError<ChipError>> for Failure {
    fn from(e: FlashError<ChipError>) -> Self {
        Failure::Flash(e)
    }
}
impl From<BootError<ChipError>> for Failure {
    fn from(e: BootError<ChipError>) -> Self {
        Failure::Boot(e)
    }
}
impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        Failure::Store(e)
    }
}
impl From<ApplyError> for Failure {
    fn from(e: ApplyError) -> Self {
        Failure::Apply(e)
    }
}
impl From<snapply_core::backend::BackendError> for Failure {
    fn from(e: snapply_core::backend::BackendError) -> Self {
        Failure::Store(StoreError::from(e))
    }
}

/// Logs each phase as the pipeline completes it.
struct PhaseLog;

impl Observer for PhaseLog {
    fn phase_done(&mut self, phase: Phase, _micros: Option<u64>) {
        info!("phase done: {}", phase.state());
    }
}

#[cfg(not(feature = "async"))]
#[entry]
fn main() -> ! {
    stack::paint();
    info!("executor: none (blocking flash)");
    exit(run())
}

/// The async build: the firmware runs as embassy-executor's main task (thread mode), on the
/// async flash driver (`storage::AsyncRam` under `snapply_flash::BlockOn`).
#[cfg(feature = "async")]
#[embassy_executor::main]
async fn main(_spawner: embassy_executor::Spawner) {
    stack::paint();
    info!("executor: embassy (async flash)");
    exit(run())
}

/// Exits QEMU through semihosting with the run's outcome.
fn exit(outcome: Result<(), Failure>) -> ! {
    let code = match outcome {
        Ok(()) => EXIT_SUCCESS,
        Err(e) => {
            error!("firmware failed: {}", e);
            EXIT_FAILURE
        }
    };
    debug::exit(code);
    loop {
        cortex_m::asm::wfi();
    }
}

fn run() -> Result<(), Failure> {
    let (chip, boot) = storage::take()?;
    info!("boot {} (flash file {})", boot.boot, if boot.blank { "created blank" } else { "found" });
    log_sizes();
    if boot.boot > 3 && !boot.link {
        return Err(Failure::TooManyBoots { boot: boot.boot });
    }
    // The one slot for a snapshot's metadata: the pending one's, then the received one's.
    let mut metadata = SnapshotMetadata::default();
    // The backends' record indexes: the node's, and the one of the snapshot being restored.
    let indexes = DeviceIndexes::new();
    let Mounted { backend, pending, formatted } = mount(&chip, &indexes, &mut metadata)?;
    let mut buf = [0u8; BASE_BUFFER];
    let mut store = DeviceStore::new(&chip, &indexes, RANGE, &mut buf)?;
    let mut peers = PeerTable::<Device>::default();
    // `snapply_flash::Mounted::open_node`, taken apart: the node is made here, in the one slot
    // it lives in, and opened in place (`Node::open` would build it and return it, a second
    // copy of 34 KiB on the stack), and a restore a reset interrupted is completed by
    // `phases::apply` (one frame per phase) rather than `apply_snapshot`.
    let mut node = DeviceNode::new(DEVICE, backend);
    let node = &mut node;
    {
        let v2 = store.committed_v2(node.backend())?;
        open_node(node, v2)?;
    }
    if let Some(sha256) = pending {
        info!("completing the restore of the persisted snapshot at index {}", metadata.index);
        let ports = Ports { storage: &mut store, transport: &mut peers, observer: &mut PhaseLog };
        phases::apply(node, ports, Snapshot::persisted(&metadata, sha256))?;
    }
    if boot.link {
        return follow::follow(node, &mut store, &mut peers, &mut metadata, &chip, boot.cut);
    }
    let next = if formatted {
        old_state(node)?;
        info!(
            "old state: applied-index={} revisions={} records={}",
            node.progress().applied_index,
            node.stores().kv.index_len(),
            node.backend().len()
        );
        log_state(node, "old state")?;
        0
    } else {
        let applied_index = node.progress().applied_index;
        info!("re-opened from flash after reboot: applied-index={}", applied_index);
        log_state(node, "found on flash")?;
        match found(applied_index) {
            // A power cut before the first snapshot's commit record: the old state, whole (the
            // host compares its records with the ones logged before the cut).
            Some(Found::Old) => {
                info!("the old state survived the power cut: restoring the first snapshot again");
                0
            }
            // A power cut after a snapshot's commit record, before the entries on top of it.
            Some(Found::Restored(done)) => {
                let expected = SNAPSHOTS.get(done).ok_or(Failure::UnknownState { applied_index })?;
                check_records(node, expected.restored(), "restored before the power cut")?;
                match write_and_reboot(node, expected, false)? {}
            }
            // The last boot restored a snapshot and applied `writes_after_restore` on top.
            Some(Found::Written(done)) => {
                let expected = SNAPSHOTS.get(done).ok_or(Failure::UnknownState { applied_index })?;
                check(node, expected.reopened(), "after reboot")?;
                done + 1
            }
            None => return Err(Failure::UnknownState { applied_index }),
        }
    };
    let (Some(expected), Some(image)) = (SNAPSHOTS.get(next), IMAGES.get(next)) else {
        info!("peak stack: {} of {} bytes", stack::high_water(), stack::size());
        info!("all snapshots restored and checked after reboot");
        return Ok(());
    };
    storage::with_flash(&chip, |flash| {
        flash.reset_stats();
        // The power cut the host asked for falls in this run's first restore.
        if boot.boot == 1 {
            flash.cut_after(boot.cut);
        }
    });
    restore(node, &mut store, &mut peers, image, expected, &mut metadata)?;
    let stats = storage::with_flash(&chip, |flash| {
        flash.cut_after(None);
        flash.stats()
    })
    .unwrap_or_default();
    check(node, expected.restored(), "before reboot")?;
    info!(
        "flash: image-bytes={} programmed-bytes={} erases={} (erase unit {} bytes)",
        expected.image_len,
        stats.programmed,
        stats.erases,
        storage::ERASE
    );
    report(node, expected);
    match write_and_reboot(node, expected, true)? {}
}

/// Index of the old state's last entry ([`old_state`]: a member, a user, a lease, the keys).
const OLD_INDEX: u64 = 3 + OLD_KEYS as u64;
/// Keys of the old state.
const OLD_KEYS: u32 = 30;

/// Which state of the scenario the flash holds.
enum Found {
    /// The old state, before any snapshot.
    Old,
    /// Snapshot `n` restored, no entry on top.
    Restored(usize),
    /// Snapshot `n` restored and `writes_after_restore` applied on top.
    Written(usize),
}

fn found(applied_index: u64) -> Option<Found> {
    if applied_index == OLD_INDEX {
        return Some(Found::Old);
    }
    if let Some(n) = SNAPSHOTS.iter().position(|s| s.written_index == applied_index) {
        return Some(Found::Written(n));
    }
    SNAPSHOTS.iter().position(|s| s.index == applied_index).map(Found::Restored)
}

/// Applies `writes_after_restore` on top of `expected`'s snapshot, checks (the stores too when
/// the node was restored in this boot, not re-opened), and resets.
fn write_and_reboot(
    node: &mut DeviceNode<'_>,
    expected: &'static Expected,
    restored_here: bool,
) -> Result<core::convert::Infallible, Failure> {
    // Ordinary entries after the restore go to the flash like any other and survive the reset.
    let written = shared::writes_after_restore(node, expected.index, expected.term)?;
    if restored_here {
        check(node, expected.written(), "after writes")?;
    } else {
        check_records(node, expected.written(), "after writes")?;
    }
    info!("applied entries up to index {} after the restore; rebooting", written);
    cortex_m::peripheral::SCB::sys_reset();
}

/// Logs the applied index and the digest of the backend's records, for the host to compare
/// across a power cut.
#[inline(never)]
fn log_state(node: &DeviceNode<'_>, what: &'static str) -> Result<(), Failure> {
    let got = digests(node)?;
    info!(
        "state ({}): index={} records={} records-sha256={:02x}",
        what,
        node.progress().applied_index,
        got.record_count,
        got.records
    );
    Ok(())
}

/// Logs the sizes of the node, its stores and the pipeline's states (BENCHMARKS.md, "Firmware").
#[inline(never)]
fn log_sizes() {
    use snapply_core::pipeline::{
        BackendOpened, BackendSwapped, IndexBound, LeaseRestored, MvccRestored, Persisted, Validated,
    };
    type S<'a> = DeviceStore<'a, 'a>;
    info!(
        "sizes: states validated={} persisted={} opened={} bound={} leases={} mvcc={} swapped={}, node={} kv={} auth={} membership={} v2={} backend={} indexes={} metadata={} peers={} store={} mounted={}",
        size_of::<Validated<'_, Device, S<'_>>>(),
        size_of::<Persisted<'_, Device, S<'_>>>(),
        size_of::<BackendOpened<'_, Device, S<'_>>>(),
        size_of::<IndexBound<'_, Device, S<'_>>>(),
        size_of::<LeaseRestored<'_, Device, S<'_>>>(),
        size_of::<MvccRestored<'_, Device, S<'_>>>(),
        size_of::<BackendSwapped<'_, Device, S<'_>>>(),
        size_of::<DeviceNode<'_>>(),
        size_of::<snapply_core::store::KvStore<Device>>(),
        size_of::<snapply_core::store::AuthStore<Device>>(),
        size_of::<snapply_core::store::Membership<Device>>(),
        size_of::<snapply_core::store::V2Store<Device>>(),
        size_of::<DeviceBackend<'_>>(),
        size_of::<DeviceIndexes>(),
        size_of::<SnapshotMetadata>(),
        size_of::<PeerTable<Device>>(),
        size_of::<S<'_>>(),
        size_of::<snapply_flash::Mounted<'_, storage::Chip, RECORDS, RECORD_BYTES>>(),
    );
}

/// What [`mount`] hands on: `snapply_flash::Mounted` without the pending snapshot's metadata,
/// which goes to the caller's slot.
struct Mounted<'f> {
    backend: DeviceBackend<'f>,
    /// The image digest of a persisted snapshot to apply before serving.
    pending: Option<[u8; 32]>,
    formatted: bool,
}

/// Mounts the flash in a frame of its own (inlined, its area states, the backend it opens and
/// the pending snapshot it reads would stay in `main`'s frame, under the whole restore), and
/// moves a pending snapshot's metadata into `metadata`, the one slot `main` keeps for it.
#[inline(never)]
fn mount<'f>(
    chip: &'f RefCell<storage::Chip>,
    indexes: &'f DeviceIndexes,
    metadata: &mut SnapshotMetadata,
) -> Result<Mounted<'f>, Failure> {
    let mounted = snapply_flash::mount::<_, RECORDS, RECORD_BYTES>(chip, indexes, RANGE)?;
    info!("flash mounted: formatted={} other-area={}", mounted.formatted, mounted.other);
    let snapply_flash::Mounted { backend, pending, formatted, .. } = mounted;
    let pending = pending.map(|p| {
        *metadata = p.metadata;
        p.sha256
    });
    Ok(Mounted { backend, pending, formatted })
}

/// `Node::open_in_place` in a frame of its own: every store is read into the node's own memory.
#[inline(never)]
fn open_node(node: &mut DeviceNode<'_>, v2: &[u8]) -> Result<(), StoreError> {
    DeviceNode::open_in_place(node, v2)
}

/// The device's own state before any snapshot: keys, a lease with keys, a member and a user
/// that the snapshots do not have.
#[inline(never)]
fn old_state(node: &mut DeviceNode<'_>) -> Result<(), Failure> {
    let mut index = 0u64;
    let mut apply = |node: &mut DeviceNode<'_>, request: Request<'_>| {
        index += 1;
        node.apply(index, 1, &request).map(drop)
    };
    let peer: &[u8] = b"http://192.168.1.9:2380";
    let member = NewMember { id: 9, name: b"old", peer_urls: &[peer], client_urls: &[], is_learner: false };
    apply(node, Request::MemberAdd(member))?;
    apply(node, Request::UserAdd { name: b"old-user", password_hash: b"x", no_password: false })?;
    apply(node, Request::LeaseGrant { id: 9, ttl: 60 })?;
    let mut key = *b"/old/key/00000000";
    for i in 0..OLD_KEYS {
        let digits = i.to_be_bytes();
        if let Some(tail) = key.get_mut(9..13) {
            tail.copy_from_slice(&digits);
        }
        apply(node, Request::Put { key: &key, value: b"old value", lease: if i < 2 { 9 } else { 0 } })?;
    }
    Ok(())
}

/// Streams `image` through the pipeline into the flash; the store's commit record is written
/// when the pipeline reaches `Applied`.
#[inline(never)]
fn restore<'f>(
    node: &mut DeviceNode<'f>,
    store: &mut DeviceStore<'f, '_>,
    peers: &mut PeerTable<Device>,
    image: &[u8],
    expected: &Expected,
    metadata: &mut SnapshotMetadata,
) -> Result<(), Failure> {
    // Read into `main`'s slot (the pipeline borrows it): returned by value, it was another
    // copy in this frame.
    read_metadata(image, metadata)?;
    if metadata.index != expected.index || metadata.term != expected.term {
        return Err(Failure::WrongSnapshot { index: metadata.index });
    }
    info!(
        "receiving snapshot: index={} term={} image-bytes={} chunk={}",
        metadata.index, metadata.term, expected.image_len, CHUNK
    );
    let mut source = ImageStream::new(Chunked::new(image, CHUNK));
    let ports = Ports { storage: store, transport: peers, observer: &mut PhaseLog };
    let Some(applied_index) = phases::apply(node, ports, Snapshot::streamed(metadata, &mut source))? else {
        return Err(Failure::WrongSnapshot { index: metadata.index });
    };
    info!("peers: {}", peers.peers().len());
    info!("committed to flash: snapshot index={}", applied_index);
    Ok(())
}

/// Reads the snapshot metadata in `image`'s header into `out`, in a frame of its own. The
/// header frame holds only the metadata (a few dozen bytes for a three-member conf state); the
/// decode buffer proper is the store's.
#[inline(never)]
fn read_metadata(image: &[u8], out: &mut SnapshotMetadata) -> Result<(), Failure> {
    let mut header = [0u8; HEADER_BUFFER];
    out.clone_from(image::Decoder::new(image, &mut header).map_err(|_| Failure::Header)?.metadata());
    Ok(())
}

/// Compares the node's state with the host's digests.
#[inline(never)]
fn check(node: &DeviceNode<'_>, want: Want, when: &'static str) -> Result<(), Failure> {
    let got = records_match(node, want)?;
    if got.stores != *want.stores_sha256 {
        error!("stores sha256 {:02x}", got.stores);
        return Err(Failure::Digest { what: "stores and progress" });
    }
    passed(node, &got, when);
    Ok(())
}

/// Compares the node's backend records with the host's digest (the stores of a node re-opened
/// from its backend are laid out afresh, so only the records are compared).
#[inline(never)]
fn check_records(node: &DeviceNode<'_>, want: Want, when: &'static str) -> Result<(), Failure> {
    let got = records_match(node, want)?;
    passed(node, &got, when);
    Ok(())
}

/// The node's digests, once its backend records are the host's.
fn records_match(node: &DeviceNode<'_>, want: Want) -> Result<shared::Digests, Failure> {
    let got = digests(node)?;
    if got.record_count != want.records || got.records != *want.records_sha256 {
        error!("records: {} (expected {}), sha256 {:02x}", got.record_count, want.records, got.records);
        return Err(Failure::Digest { what: "backend records" });
    }
    Ok(got)
}

/// The line `cargo xtask qemu` counts for a check that passed.
fn passed(node: &DeviceNode<'_>, got: &shared::Digests, when: &'static str) {
    info!(
        "digest check passed ({}): index={} records={} sha256={:02x}",
        when,
        node.progress().applied_index,
        got.record_count,
        got.records
    );
}

/// The RAM numbers of a restore.
#[inline(never)]
fn report(node: &DeviceNode<'_>, expected: &Expected) {
    let kv = &node.stores().kv;
    let entries = kv.index_len();
    let arena = kv.arena_len();
    let per_key_milli =
        (entries * size_of::<snapply_core::store::IndexEntry>() + arena) * 1000 / (expected.live_keys as usize).max(1);
    info!(
        "ram: node={} stores={} index-entries={} key-arena-bytes={} live-keys={} ram-per-key={}.{=usize:03} bytes",
        size_of::<DeviceNode<'_>>(),
        size_of::<snapply_core::Stores<Device>>(),
        entries,
        arena,
        expected.live_keys,
        per_key_milli / 1000,
        per_key_milli % 1000
    );
    info!("peak stack: {} of {} bytes", stack::high_water(), stack::size());
}

#[exception]
unsafe fn HardFault(frame: &ExceptionFrame) -> ! {
    error!("hard fault at pc={=u32:#010x} (a stack overflow faults here)", frame.pc());
    debug::exit(EXIT_FAILURE);
    loop {
        cortex_m::asm::wfi();
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    error!("panicked: {}", Display2Format(info));
    debug::exit(EXIT_FAILURE);
    loop {
        cortex_m::asm::wfi();
    }
}
