//! snapply on a Cortex-M3 (QEMU's mps2-an385), in 64 KiB of RAM.
//!
//! Boot 1 builds an old state (its own keys, a lease, a member, a user), then receives the first
//! snapshot image the build script made on the host, streams it through the typestate pipeline
//! (etcd's `applySnapshot`), checks the restored state against the host's digests, commits, and
//! resets the system. Boot 2 re-opens the node from storage, checks it again, applies the second
//! snapshot the same way and resets. Boot 3 re-opens and checks the second snapshot's state and
//! exits through semihosting. Every failure, panic or fault exits with failure.
//!
//! The log goes out through defmt over semihosting; decode it on the host with
//! `defmt-print -e <elf>` (`cargo xtask qemu` does).
#![no_std]
#![no_main]
#![warn(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]

mod phases;
mod shared;
mod stack;
mod storage;

use core::mem::size_of;

use cortex_m_rt::{ExceptionFrame, entry, exception};
use cortex_m_semihosting::debug::{self, EXIT_FAILURE, EXIT_SUCCESS};
use defmt::{Display2Format, error, info};
use defmt_semihosting as _;
use snapply_core::image::{self, BASE_BUFFER, Chunked};
use snapply_core::memports::PeerTable;
use snapply_core::ports::{Event, ImageStream, Observer, Phase, Ports};
use snapply_core::store::{NewMember, StoreError};
use snapply_core::{ApplyError, Node, Request, Snapshot};

use shared::{DEVICE, Device, digests};
use storage::{ExtBackend, Storage, StorageError};

/// What the build script expects a snapshot to lead to.
struct Expected {
    index: u64,
    term: u64,
    image_len: usize,
    live_keys: u32,
    records: u32,
    records_sha256: [u8; 32],
    stores_sha256: [u8; 32],
}

include!(concat!(env!("OUT_DIR"), "/expected.rs"));

/// The snapshot images, made on the host at build time.
static IMAGES: [&[u8]; 2] = [
    include_bytes!(concat!(env!("OUT_DIR"), "/snapshot-1.img")),
    include_bytes!(concat!(env!("OUT_DIR"), "/snapshot-2.img")),
];

/// The image arrives in pieces of this size, as from a transport with a small frame.
const CHUNK: usize = 256;

type DeviceNode = Node<ExtBackend, Device>;

/// Why the firmware failed.
#[derive(Debug, defmt::Format)]
enum Failure {
    Storage(StorageError),
    Store(StoreError),
    Apply(ApplyError),
    Steps(phases::StepError),
    /// The image's header did not decode.
    Header,
    /// The snapshot in the image is not the one the build script recorded.
    WrongSnapshot {
        index: u64,
    },
    /// The state differs from the host's.
    Digest {
        what: &'static str,
    },
    /// More boots than the scenario has: the reset loops.
    TooManyBoots {
        boot: u32,
    },
}

impl From<StorageError> for Failure {
    fn from(e: StorageError) -> Self {
        Failure::Storage(e)
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
impl From<phases::StepError> for Failure {
    fn from(e: phases::StepError) -> Self {
        Failure::Steps(e)
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
    fn event(&mut self, event: &Event) {
        let _ = event;
    }
    fn phase_done(&mut self, phase: Phase, _micros: Option<u64>) {
        info!("phase done: {}", phase.state());
    }
}

#[entry]
fn main() -> ! {
    stack::paint();
    let code = match run() {
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
    let (mut storage, boot) = Storage::open()?;
    info!("boot {}: {} snapshot(s) restored before", boot.boot, boot.restores);
    if boot.boot > 3 {
        return Err(Failure::TooManyBoots { boot: boot.boot });
    }
    let restores = boot.restores as usize;
    if restores == 0 { first_boot(&mut storage) } else { later_boot(&mut storage, restores) }?;
    if restores < SNAPSHOTS.len() {
        info!("rebooting");
        cortex_m::peripheral::SCB::sys_reset();
    }
    info!("all snapshots restored and checked after reboot");
    Ok(())
}

/// Builds the old state and applies the first snapshot onto it.
#[inline(never)]
fn first_boot(storage: &mut Storage) -> Result<(), Failure> {
    let mut node = DeviceNode::new(DEVICE, storage.live_backend()?);
    old_state(&mut node)?;
    info!(
        "old state: applied-index={} revisions={} records={}",
        node.progress().applied_index,
        node.stores().kv.index_len(),
        node.backend().len()
    );
    next_snapshot(&mut node, storage, 0)
}

/// Re-opens the node from storage, checks it against the snapshot applied before the reset, and
/// applies the next one if there is one.
#[inline(never)]
fn later_boot(storage: &mut Storage, restores: usize) -> Result<(), Failure> {
    let backend = storage.live_backend()?;
    let mut node = DeviceNode::open(DEVICE, backend, storage.live_v2())?;
    info!("re-opened from storage after reboot: applied-index={}", node.progress().applied_index);
    let expected = SNAPSHOTS.get(restores - 1).ok_or(Failure::TooManyBoots { boot: 0 })?;
    check(&node, expected, "after reboot")?;
    info!("peak stack: {} of {} bytes", stack::high_water(), stack::size());
    next_snapshot(&mut node, storage, restores)
}

/// Applies snapshot number `n` (from 0), if there is one, checks and commits it.
fn next_snapshot(node: &mut DeviceNode, storage: &mut Storage, n: usize) -> Result<(), Failure> {
    let (Some(expected), Some(image)) = (SNAPSHOTS.get(n), IMAGES.get(n)) else {
        return Ok(());
    };
    restore(node, storage, image, expected)?;
    check(node, expected, "before reboot")?;
    report(node, expected);
    Ok(())
}

/// The device's own state before any snapshot: keys, a lease with keys, a member and a user
/// that the snapshots do not have.
#[inline(never)]
fn old_state(node: &mut DeviceNode) -> Result<(), Failure> {
    let mut index = 0u64;
    let mut apply = |node: &mut DeviceNode, request: Request<'_>| {
        index += 1;
        node.apply(index, 1, &request).map(drop)
    };
    let peer: &[u8] = b"http://192.168.1.9:2380";
    let member = NewMember { id: 9, name: b"old", peer_urls: &[peer], client_urls: &[], is_learner: false };
    apply(node, Request::MemberAdd(member))?;
    apply(node, Request::UserAdd { name: b"old-user", password_hash: b"x", no_password: false })?;
    apply(node, Request::LeaseGrant { id: 9, ttl: 60 })?;
    let mut key = *b"/old/key/00000000";
    for i in 0..30u32 {
        let digits = i.to_be_bytes();
        if let Some(tail) = key.get_mut(9..13) {
            tail.copy_from_slice(&digits);
        }
        apply(node, Request::Put { key: &key, value: b"old value", lease: if i < 2 { 9 } else { 0 } })?;
    }
    Ok(())
}

/// Streams `image` through the pipeline into the storage's spare slot and commits it.
#[inline(never)]
fn restore(node: &mut DeviceNode, storage: &mut Storage, image: &[u8], expected: &Expected) -> Result<(), Failure> {
    let mut buf = [0u8; BASE_BUFFER];
    let metadata = image::Decoder::new(image, &mut buf).map_err(|_| Failure::Header)?.metadata().clone();
    if metadata.index != expected.index || metadata.term != expected.term {
        return Err(Failure::WrongSnapshot { index: metadata.index });
    }
    info!(
        "receiving snapshot: index={} term={} image-bytes={} chunk={}",
        metadata.index, metadata.term, expected.image_len, CHUNK
    );
    let mut source = ImageStream::new(Chunked::new(image, CHUNK));
    let outcome = {
        let mut store = storage.snapshot_store(&mut buf);
        let mut transport = PeerTable::<Device>::default();
        let ports = Ports { storage: &mut store, transport: &mut transport, observer: &mut PhaseLog };
        let outcome = phases::apply(node, ports, Snapshot::streamed(&metadata, &mut source))?;
        info!("peers: {}", transport.peers().len());
        outcome
    };
    let Some(outcome) = outcome else {
        return Err(Failure::WrongSnapshot { index: metadata.index });
    };
    storage.commit(outcome.old_backend)?;
    info!("committed: live slot holds snapshot index={}", outcome.progress.applied_index);
    Ok(())
}

/// Compares the node's state with the host's digests.
#[inline(never)]
fn check(node: &DeviceNode, expected: &Expected, when: &'static str) -> Result<(), Failure> {
    let got = digests(node)?;
    if got.record_count != expected.records || got.records != expected.records_sha256 {
        error!("records: {} (expected {}), sha256 {:02x}", got.record_count, expected.records, got.records);
        return Err(Failure::Digest { what: "backend records" });
    }
    if got.stores != expected.stores_sha256 {
        error!("stores sha256 {:02x}", got.stores);
        return Err(Failure::Digest { what: "stores and progress" });
    }
    info!(
        "digest check passed ({}): index={} records={} sha256={:02x}",
        when,
        node.progress().applied_index,
        got.record_count,
        got.records
    );
    Ok(())
}

/// The RAM numbers of a restore.
#[inline(never)]
fn report(node: &DeviceNode, expected: &Expected) {
    let kv = &node.stores().kv;
    let entries = kv.index_len();
    let arena = kv.arena_len();
    let per_key_milli =
        (entries * size_of::<snapply_core::store::IndexEntry>() + arena) * 1000 / (expected.live_keys as usize).max(1);
    info!(
        "ram: node={} stores={} index-entries={} key-arena-bytes={} live-keys={} ram-per-key={}.{=usize:03} bytes",
        size_of::<DeviceNode>(),
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
