//! A restore onto flash, end to end: state equal to the leader's, surviving a reboot, with the
//! cost a restore has on the medium.

mod common;

use std::cell::RefCell;

use common::*;
use snapply_core::Request;
use snapply_flash::mock::MockFlash;
use snapply_flash::{OtherArea, mount};

type Chip = MockFlash<4, 4096>;
const RANGE: std::ops::Range<u32> = 0..8 * 4096;

#[test]
fn a_restore_equals_the_leader_survives_reboot_and_costs_one_erase_per_unit() {
    on_big_stack(restore_equals_the_leader);
}

fn restore_equals_the_leader() {
    let leader = leader(40);
    let (metadata, image) = snapply_tests::snapshot(&leader);
    let chip = RefCell::new(Chip::new(8));
    let mut node = follower(&chip, RANGE, &follower_ops());
    chip.borrow_mut().reset_stats();
    apply(&chip, RANGE, &mut node, &metadata, &image).unwrap();
    let stats = chip.borrow().stats();
    let erases = chip.borrow().unit_erases().to_vec();
    println!(
        "restore: image {} bytes, programmed {} bytes ({:.3}x), erased {} units of 4 KiB, {} reads ({} bytes)",
        image.len(),
        stats.programmed,
        stats.programmed as f64 / image.len() as f64,
        stats.erases,
        stats.reads,
        stats.bytes_read
    );
    assert!(erases.iter().all(|n| *n <= 1), "a unit was erased twice: {erases:?}");
    assert_eq!(stats.erases, 4, "the inactive area, once");
    assert!(stats.programmed as f64 <= 1.05 * image.len() as f64);
    assert_eq!(records(node.backend()), records(leader.backend()));
    assert_eq!(differing(node.stores(), leader.stores(), true), Vec::<&str>::new());

    let (recs, stores, pending) = reboot_state(&chip, RANGE);
    assert_eq!(pending, None);
    assert_eq!(recs, records(leader.backend()));
    assert_eq!(differing(&stores, leader.stores(), true), Vec::<&str>::new());
}

#[test]
fn writes_after_a_restore_survive_reboot() {
    on_big_stack(writes_survive_reboot);
}

fn writes_survive_reboot() {
    let leader = leader(20);
    let (metadata, image) = snapply_tests::snapshot(&leader);
    let chip = RefCell::new(Chip::new(8));
    let mut node = follower(&chip, RANGE, &follower_ops());
    apply(&chip, RANGE, &mut node, &metadata, &image).unwrap();
    let mut index = metadata.index;
    let url: &[u8] = b"http://10.0.0.7:2380";
    let requests = [
        Request::Put { key: b"after/one", value: b"1", lease: 0 },
        Request::DeleteRange { key: b"device/sensor-003", range_end: b"" },
        Request::LeaseGrant { id: 77, ttl: 120 },
        Request::Put { key: b"after/two", value: b"2", lease: 77 },
        Request::LeaseCheckpoint { id: 77, remaining_ttl: 50 },
        Request::MemberAdd(snapply_core::store::NewMember {
            id: 9,
            name: b"nine",
            peer_urls: &[url],
            client_urls: &[],
            is_learner: true,
        }),
        Request::MemberPromote { id: 9 },
        Request::LeaseRevoke { id: 1 },
    ];
    for r in &requests {
        index += 1;
        node.apply(index, 3, r).unwrap();
    }
    let (recs, stores, pending) = reboot_state(&chip, RANGE);
    assert_eq!(pending, None);
    assert_eq!(recs, records(node.backend()));
    // The v2 store is not in the backend: member changes after the snapshot reach it only in
    // memory, so it is compared with the snapshot's.
    assert_eq!(differing(&stores, node.stores(), false), Vec::<&str>::new());
    assert_eq!(stores.v2, leader.stores().v2);
    let mounted = mount::<Chip, RECORDS, RECORD>(&chip, RANGE).unwrap();
    assert_eq!(mounted.other, OtherArea::Stale);
}

/// RAM of the flash backend for the reference device (500 keys, 8 leases, 3 members, 2 users,
/// 2 roles and the meta, auth and cluster records: under 540 records), pinned: one `u32` offset
/// per record plus a fixed header, so RAM follows the record count, not the record sizes.
#[test]
fn the_backend_costs_four_bytes_of_ram_per_record() {
    type Reference<'f> = snapply_flash::FlashBackend<'f, MockFlash<4, 4096>, 600, 256>;
    let per_record = 4;
    let size = std::mem::size_of::<Reference<'_>>();
    println!("FlashBackend<_, 600, 256>: {size} bytes");
    assert!(size <= 600 * per_record + 96, "{size}");
}
