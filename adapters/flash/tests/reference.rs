//! The reference device's configuration: the core's `Reference` profile, a flash backend for
//! 600 records of up to 256 bytes, a 1 KiB decode buffer (`BASE_BUFFER`), and a snapshot of a
//! few hundred keys. The firmware's path (a RAM NOR flash, restore, reboot) is run as the
//! firmware runs it; the cost of a restore is measured on the mock on two geometries; the RAM
//! of the adapter's types is pinned.

// Test scaffolding: a failure here is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, clippy::unreachable)]

mod common;

use std::cell::RefCell;
use std::ops::Range;

use common::on_big_stack;
use embedded_storage::nor_flash::NorFlash;
use snapply_core::NoObserver;
use snapply_core::collections::Reference;
use snapply_core::image::BASE_BUFFER;
use snapply_core::memports::PeerTable;
use snapply_core::ports::Ports;
use snapply_core::store::NewMember;
use snapply_core::{ApplyError, ApplyErrorKind, Node, Request, Snapshot, SnapshotMetadata, apply_snapshot};
use snapply_flash::mock::MockFlash;
use snapply_flash::{Booted, FlashBackend, FlashSnapshotStore, Indexes, Mounted, OtherArea, RamFlash, mount};
use snapply_tests::HostNode;

/// Live records of the reference device's backend: 500 keys, 8 leases, 3 members, 2 users,
/// 2 roles, the meta, auth and cluster records.
const RECORDS: usize = 600;
/// Largest record: a key's revision record with a 32-byte key and a value of up to ~180 bytes.
const RECORD: usize = 256;
/// Keys in the snapshot.
const KEYS: usize = 300;

type RefBackend<'f, F> = FlashBackend<'f, F, RECORDS, RECORD>;
type RefNode<'f, F> = Node<RefBackend<'f, F>, Reference>;

/// A leader holding `KEYS` keys of 20 to 27 bytes with 24-byte values, 8 leases (16 keys
/// attached), 3 members, 2 users and 2 roles: what the reference device holds.
fn leader() -> HostNode {
    let mut node = snapply_tests::node(1);
    let mut index = 100;
    let mut apply = |node: &mut HostNode, r: Request<'_>| {
        index += 1;
        node.apply(index, 2, &r).unwrap();
    };
    for id in 1..=8 {
        apply(&mut node, Request::LeaseGrant { id, ttl: 30 + id });
    }
    for id in 1..=3u64 {
        let url = format!("http://10.0.0.{id}:2380");
        let name = format!("node-{id}");
        let peer_urls: &[&[u8]] = &[url.as_bytes()];
        apply(
            &mut node,
            Request::MemberAdd(NewMember { id, name: name.as_bytes(), peer_urls, client_urls: &[], is_learner: false }),
        );
    }
    for (user, role) in [(&b"alice"[..], &b"reader"[..]), (b"bob", b"writer")] {
        apply(&mut node, Request::UserAdd { name: user, password_hash: b"$2a$10$hash", no_password: false });
        apply(&mut node, Request::RoleAdd { name: role });
        apply(&mut node, Request::UserGrantRole { user, role });
    }
    for k in 0..KEYS {
        let key = format!("site/device-{:04}/t{}", k, "x".repeat(k % 8));
        let value = [b'a' + (k % 26) as u8; 24];
        let lease = if k % 19 == 0 && k < 19 * 16 { 1 + (k as i64 / 19) % 8 } else { 0 };
        apply(&mut node, Request::Put { key: key.as_bytes(), value: &value, lease });
    }
    node
}

/// Runs the pipeline on `node` with a flash snapshot store over `range`.
fn restore<'f, F: NorFlash>(
    chip: &'f RefCell<F>,
    indexes: &'f Indexes<RECORDS>,
    range: Range<u32>,
    node: &mut RefNode<'f, F>,
    metadata: &SnapshotMetadata,
    image: &[u8],
) {
    try_restore(chip, indexes, range, node, metadata, image).unwrap();
}

fn try_restore<'f, F: NorFlash>(
    chip: &'f RefCell<F>,
    indexes: &'f Indexes<RECORDS>,
    range: Range<u32>,
    node: &mut RefNode<'f, F>,
    metadata: &SnapshotMetadata,
    image: &[u8],
) -> Result<(), ApplyError> {
    let mut buf = [0u8; BASE_BUFFER];
    let mut store = FlashSnapshotStore::<F, RECORDS, RECORD>::new(chip, indexes, range, &mut buf).unwrap();
    let mut peers = PeerTable::<Reference>::default();
    let ports = Ports { storage: &mut store, transport: &mut peers, observer: &mut NoObserver };
    apply_snapshot(node, ports, Snapshot::from_bytes(metadata, image)).map(drop)
}

/// Mounts and boots a node the way the firmware does.
fn boot<'f, F: NorFlash>(chip: &'f RefCell<F>, indexes: &'f Indexes<RECORDS>, range: Range<u32>) -> RefNode<'f, F> {
    let booted = open(chip, indexes, range);
    assert_eq!(booted.refused, None);
    booted.node
}

/// Mounts and opens the node, reporting a pending snapshot boot refused.
fn open<'f, F: NorFlash>(
    chip: &'f RefCell<F>,
    indexes: &'f Indexes<RECORDS>,
    range: Range<u32>,
) -> Booted<'f, F, RECORDS, RECORD, Reference> {
    let mounted: Mounted<'f, F, RECORDS, RECORD> = mount(chip, indexes, range.clone()).unwrap();
    let mut buf = [0u8; BASE_BUFFER];
    let mut store = FlashSnapshotStore::<F, RECORDS, RECORD>::new(chip, indexes, range, &mut buf).unwrap();
    let mut peers = PeerTable::<Reference>::default();
    mounted.open_node(snapply_tests::config(2), &mut store, &mut peers, &mut NoObserver).unwrap()
}

fn check_equal<F: NorFlash>(node: &RefNode<'_, F>, leader: &HostNode, when: &str) {
    assert_eq!(
        snapply_tests::records(node.backend()),
        snapply_tests::records(leader.backend()),
        "{when}: records differ"
    );
    assert_eq!(node.stores().kv.index_len(), leader.stores().kv.index_len(), "{when}");
    assert_eq!(node.stores().cindex, leader.stores().cindex, "{when}");
    assert_eq!(node.stores().membership.members().len(), 3, "{when}");
    assert!(node.unfinished().is_none(), "{when}");
}

/// The firmware's path on a RAM NOR flash: mount a blank flash, restore, reboot over the same
/// memory, and find the leader's state again.
#[test]
fn the_reference_device_restores_on_a_ram_flash_and_finds_the_state_after_a_reboot() {
    on_big_stack(|| {
        let leader = leader();
        let (metadata, image) = snapply_tests::snapshot(&leader);
        let range = 0..32 * 4096;
        let mut mem = vec![0xFFu8; 32 * 4096];
        let chip = RefCell::new(RamFlash::<4, 4096>::new(&mut mem).unwrap());
        let indexes = Indexes::new();
        let mut node = boot(&chip, &indexes, range.clone());
        // Mounting the blank flash formatted its first area; the restore's cost starts here.
        chip.borrow_mut().reset_stats();
        restore(&chip, &indexes, range.clone(), &mut node, &metadata, &image);
        check_equal(&node, &leader, "after the restore");
        // The old backend was dropped at the swap: its slot is free for the next restore.
        assert_eq!(indexes.in_use(), 1, "slots held after the restore");
        let stats = chip.borrow().stats();
        drop(node);
        let mem = chip.into_inner().into_inner();
        // The reboot: a new driver over the same memory.
        let chip = RefCell::new(RamFlash::<4, 4096>::new(mem).unwrap());
        let indexes = Indexes::new();
        let node = boot(&chip, &indexes, range);
        check_equal(&node, &leader, "after the reboot");
        assert_eq!(chip.borrow().stats().programmed, 0, "booting a committed state writes nothing");
        println!(
            "RAM flash: image {} bytes, programmed {} bytes, {} erases of 4 KiB",
            image.len(),
            stats.programmed,
            stats.erases
        );
    });
}

/// An etcd leader takes a member with 9 peer URLs (a snapply node refuses it, so the record is
/// forged into the leader's snapshot); the transport takes 8 per member, so the device's restore
/// of that snapshot persists it and fails before the swap, at every try. The snapshot pending on flash then does not keep the
/// device from booting: boot refuses it (reported, its area erased) and serves the committed
/// state, as etcd logs a failed snapshot and keeps serving.
#[test]
fn a_pending_snapshot_with_more_peer_urls_than_the_profile_holds_is_refused_at_boot() {
    on_big_stack(|| {
        let mut leader = leader();
        let urls: Vec<String> = (0..9).map(|i| format!("http://10.0.1.{i}:2380")).collect();
        let peer_urls: Vec<&[u8]> = urls.iter().map(|u| u.as_bytes()).collect();
        let index = leader.progress().applied_index + 1;
        let member = NewMember { id: 9, name: b"wide", peer_urls: &peer_urls[..1], client_urls: &[], is_learner: true };
        leader.apply(index, 2, &Request::MemberAdd(member)).unwrap();
        let (metadata, image) = snapply_tests::forge::snapshot_with_peer_urls(&leader, 9, &peer_urls);

        let range = 0..32 * 4096;
        let chip = RefCell::new(MockFlash::<4, 4096>::new(32));
        let indexes = Indexes::new();
        let mut node = boot(&chip, &indexes, range.clone());
        node.apply(1, 1, &Request::Put { key: b"mine", value: b"old", lease: 0 }).unwrap();
        let before = snapply_tests::records(node.backend());
        let err = try_restore(&chip, &indexes, range.clone(), &mut node, &metadata, &image).unwrap_err();
        assert!(!err.is_fatal(), "{err}");
        drop(node);
        let pending = mount::<_, RECORDS, RECORD>(&chip, &indexes, range.clone()).unwrap().pending.unwrap();
        assert_eq!(pending.metadata, metadata);

        let booted = open(&chip, &indexes, range.clone());
        let refused = booted.refused.expect("the refused snapshot is reported");
        assert_eq!(refused.snapshot, pending);
        assert!(matches!(refused.error.kind(), ApplyErrorKind::Store(_)), "{}", refused.error);
        assert!(refused.error.to_string().contains("member urls"), "{}", refused.error);
        let node = booted.node;
        assert!(node.unfinished().is_none());
        assert_eq!(node.progress().applied_index, 1);
        assert_eq!(snapply_tests::records(node.backend()), before);
        drop(node);
        let mounted = mount::<_, RECORDS, RECORD>(&chip, &indexes, range.clone()).unwrap();
        assert_eq!((&mounted.pending, mounted.other), (&None, OtherArea::Unused));
        drop(mounted);
        assert_eq!(snapply_tests::records(boot(&chip, &indexes, range).backend()), before);
    });
}

/// What a restore of the reference snapshot costs on the medium: each erase unit erased at most
/// once, and programmed bytes against image bytes.
fn cost<const W: usize, const E: usize>(units: usize) -> (usize, u64, u64) {
    let leader = leader();
    let (metadata, image) = snapply_tests::snapshot(&leader);
    let range = 0..(units * E) as u32;
    let chip = RefCell::new(MockFlash::<W, E>::new(units));
    let indexes = Indexes::new();
    let mut node = boot(&chip, &indexes, range.clone());
    // The follower's own state first, so the restore replaces something.
    node.apply(1, 1, &Request::Put { key: b"mine", value: b"old", lease: 0 }).unwrap();
    chip.borrow_mut().reset_stats();
    restore(&chip, &indexes, range, &mut node, &metadata, &image);
    check_equal(&node, &leader, "after the restore");
    let stats = chip.borrow().stats();
    let erases = chip.borrow().unit_erases().to_vec();
    assert!(erases.iter().all(|n| *n <= 1), "a unit erased twice in one restore: {erases:?}");
    assert_eq!(stats.erases as usize, units / 2, "a restore erases the inactive area once");
    let ratio = stats.programmed as f64 / image.len() as f64;
    println!(
        "reference restore, {W}-byte words, {} KiB erase units: image {} bytes, programmed {} bytes ({ratio:.3}x), \
         {} erases (max {} per unit), {} bytes read",
        E / 1024,
        image.len(),
        stats.programmed,
        stats.erases,
        erases.iter().max().copied().unwrap_or(0),
        stats.bytes_read,
    );
    (image.len(), stats.programmed, stats.erases)
}

#[test]
fn a_reference_restore_with_4_byte_words_programs_at_most_1_05_times_the_image() {
    on_big_stack(|| {
        let (image, programmed, _) = cost::<4, 4096>(32);
        assert!(programmed as f64 <= 1.05 * image as f64, "{programmed} bytes for an image of {image}");
    });
}

/// With 8-byte words every frame header is padded from 12 to 16 bytes on its own (so that a
/// header cut short never spills into its payload, see FORMAT.md) and every payload to 8
/// bytes: a few bytes more per record than with 4-byte words, still within 1.05 for records
/// of this size.
#[test]
fn a_reference_restore_with_8_byte_words_and_128_kib_units_programs_at_most_1_05_times_the_image() {
    on_big_stack(|| {
        let (image, programmed, _) = cost::<8, { 128 * 1024 }>(2);
        assert!(programmed as f64 <= 1.05 * image as f64, "{programmed} bytes for an image of {image}");
    });
}

/// RAM of the adapter's types for the reference device (measured on the 64-bit host; a 32-bit
/// target's are smaller), pinned: the indexes are one `u32` per record in each of two slots; the
/// backend is a fixed header that refers to its slot, whatever the number of records (so moving
/// it copies no index); the store a few words and the held snapshot's digest.
#[test]
fn the_reference_configuration_takes_pinned_ram() {
    type Chip<'a> = RamFlash<'a, 4, 4096>;
    let backend = std::mem::size_of::<RefBackend<'_, Chip<'_>>>();
    let indexes = std::mem::size_of::<Indexes<RECORDS>>();
    let store = std::mem::size_of::<FlashSnapshotStore<'_, '_, Chip<'_>, RECORDS, RECORD>>();
    let mounted = std::mem::size_of::<Mounted<'_, Chip<'_>, RECORDS, RECORD>>();
    let node = std::mem::size_of::<RefNode<'_, Chip<'_>>>();
    println!(
        "reference sizes (host, 64-bit): FlashBackend {backend} B, Indexes {indexes} B, FlashSnapshotStore {store} B, \
         Mounted {mounted} B, Node<FlashBackend, Reference> {node} B"
    );
    assert!(indexes <= 2 * (RECORDS * 4 + 16), "{indexes}");
    assert!(backend <= 128, "{backend}");
    assert_eq!(backend, std::mem::size_of::<FlashBackend<'_, Chip<'_>, 8, RECORD>>(), "the backend grows with N");
    assert!(store <= 128, "{store}");
    // The mount result is the backend and the pending snapshot's metadata (its conf state).
    assert!(mounted <= backend + 640, "{mounted}");
}
