//! Power-cut sweeps: a restore, and the ordinary writes after it (with and without a
//! compaction), cut at every byte they program or erase, on two flash geometries. After each cut
//! the node reboots from the flash contents: its state must be the old one or the new one,
//! store by store, never a mix and never an error; then boot recovery (a pending snapshot
//! applied before the node is handed out, or the snapshot received again) must bring it to the
//! new state.
//!
//! Every cut point is counted and its flash contents built; by default the checks that cannot
//! differ between two cut points are run once (cuts inside one erase unit leave the same
//! contents, and cuts that leave the same committed area and pending snapshot boot the same
//! state), and every 64th cut point is checked in full regardless. `SNAPPLY_FLASH_SWEEP=full`
//! (the nightly run) checks every cut point in full, each also replayed live.

// Test scaffolding: a failure here is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, clippy::unreachable)]

mod common;

use std::cell::RefCell;
use std::ops::Range;
use std::time::Instant;

use common::*;
use embedded_storage::nor_flash::NorFlash;
use snapply_core::backend::OwnedRecord;
use snapply_core::{Request, SnapshotMetadata, Stores};
use snapply_flash::mock::{MockFlash, Recorded};
use snapply_flash::{Indexes, mount};

/// Keys of the snapshot: about 2.5 KiB of image.
const KEYS: u8 = 20;

/// Whether every cut point is checked in full (`SNAPPLY_FLASH_SWEEP=full`).
fn full() -> bool {
    std::env::var("SNAPPLY_FLASH_SWEEP").is_ok_and(|v| v == "full")
}

/// Every how many cut points one is checked in full (and replayed live) in any case.
fn stride() -> u64 {
    if full() { 1 } else { 64 }
}

struct Expect {
    old_records: Vec<OwnedRecord>,
    old: Stores<Small>,
    new_records: Vec<OwnedRecord>,
    new: Stores<Small>,
}

/// Checks what a reboot finds: old or new, store by store. Returns whether it was new, and
/// whether it was old with the snapshot pending.
fn check_reboot<F: NorFlash + Clone>(chip: &RefCell<F>, range: Range<u32>, expect: &Expect, n: u64) -> (bool, bool) {
    let (recs, stores, pending) = reboot_state(chip, range);
    let old_diff = differing(&stores, &expect.old, false);
    let new_diff = differing(&stores, &expect.new, true);
    let is_old = recs == expect.old_records && old_diff.is_empty();
    let is_new = recs == expect.new_records && new_diff.is_empty() && pending.is_none();
    assert!(
        is_old || is_new,
        "cut at {n}: neither old nor new; differs from old in {old_diff:?}, from new in {new_diff:?}"
    );
    (is_new, !is_new && pending.is_some())
}

/// Boot recovery after a cut: the node boots (a pending snapshot is applied from flash before
/// the node is handed out); a node still on the old state then receives the snapshot again from
/// the leader. The node must then equal the leader, store by store.
fn recover<F: NorFlash>(
    chip: &RefCell<F>,
    range: Range<u32>,
    metadata: &SnapshotMetadata,
    image: &[u8],
    leader: &Leader,
    n: u64,
) {
    let indexes = Indexes::new();
    let pending = mount::<F, RECORDS, RECORD>(chip, &indexes, range.clone()).unwrap().pending;
    if let Some(p) = &pending {
        assert_eq!(p.metadata, *metadata, "cut at {n}: another snapshot pending");
    }
    let booted = boot(chip, &indexes, range.clone()).unwrap_or_else(|e| panic!("cut at {n}: boot: {e}"));
    assert_eq!(booted.refused, None, "cut at {n}: boot refused the pending snapshot");
    let mut node = booted.node;
    assert!(node.unfinished().is_none(), "cut at {n}: a booted node holds an unfinished restore");
    if node.progress().applied_index < metadata.index {
        assert!(pending.is_none(), "cut at {n}: boot left the pending snapshot unapplied");
        apply(chip, &indexes, range.clone(), &mut node, metadata, image).unwrap_or_else(|e| panic!("cut at {n}: {e}"));
    }
    assert_eq!(node.progress().applied_index, metadata.index, "cut at {n}");
    assert_eq!(records(node.backend()), records(leader.backend()), "cut at {n}: records after recovery");
    assert_eq!(differing(node.stores(), leader.stores(), true), Vec::<&str>::new(), "cut at {n}");
    drop(node);
    let again = mount::<F, RECORDS, RECORD>(chip, &indexes, range).unwrap();
    assert!(again.pending.is_none(), "cut at {n}: still pending after recovery");
}

/// What determines a reboot: the committed area (which one, its bytes) and the pending
/// snapshot, as mount finds them on a copy of the flash.
fn boot_key<F: NorFlash + Clone>(chip: &RefCell<F>, range: Range<u32>) -> u64 {
    let indexes = Indexes::new();
    use std::hash::{Hash, Hasher};
    let mounted = mount::<F, RECORDS, RECORD>(chip, &indexes, range.clone()).expect("mount after a power cut");
    // Mounting writes only to format a flash without a committed area, which a cut never leaves.
    assert!(!mounted.formatted, "a cut left no committed area");
    let area = mounted.backend.area();
    let pending = mounted.pending.as_ref().map(|p| (p.metadata.index, p.sha256));
    let (_, len) = mounted.backend.usage();
    drop(mounted);
    let mut bytes = vec![0u8; len as usize];
    let base = range.start + u32::from(area) * len;
    chip.borrow_mut().read(base, &mut bytes).expect("reading the committed area");
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (area, pending, bytes).hash(&mut h);
    h.finish()
}

/// The boot key of the write sweep: the committed area and its bytes, the first bytes of the
/// other area (its header and commit records), and the requests returned before the cut.
fn write_boot_key<F: NorFlash + Clone>(chip: &RefCell<F>, range: Range<u32>, returned: usize) -> u64 {
    let indexes = Indexes::new();
    use std::hash::{Hash, Hasher};
    let mounted = mount::<F, RECORDS, RECORD>(chip, &indexes, range.clone()).expect("mount after a power cut");
    assert!(!mounted.formatted, "a cut left no committed area");
    let area = mounted.backend.area();
    let (_, len) = mounted.backend.usage();
    drop(mounted);
    let mut committed = vec![0u8; len as usize];
    let mut other = [0u8; 256];
    let base = range.start + u32::from(area) * len;
    let other_base = range.start + u32::from(1 - area) * len;
    chip.borrow_mut().read(base, &mut committed).expect("reading the committed area");
    chip.borrow_mut().read(other_base, &mut other).expect("reading the other area");
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (area, committed, other, returned).hash(&mut h);
    h.finish()
}

fn sweep_restore<const W: usize, const E: usize>(units: usize) {
    let range = 0..(units * E) as u32;
    let area = (units / 2 * E) as u64;
    let leader = leader(KEYS);
    let (metadata, image) = snapply_tests::snapshot(&leader);
    let base = RefCell::new(MockFlash::<W, E>::new(units));
    let indexes = Indexes::new();
    let old = follower(&base, &indexes, range.clone(), &follower_ops());
    let old_records = records(old.backend());
    let old_stores = old.stores().clone();
    drop(old);
    let expect =
        Expect { old_records, old: old_stores, new_records: records(leader.backend()), new: leader.stores().clone() };
    let base = base.into_inner();

    // The whole restore, uncut: what it costs, and every write and erase it makes.
    let chip = RefCell::new(base.clone());
    let indexes = Indexes::new();
    let mut node = follower(&chip, &indexes, range.clone(), &[]);
    chip.borrow_mut().reset_stats();
    chip.borrow_mut().record();
    apply(&chip, &indexes, range.clone(), &mut node, &metadata, &image).unwrap();
    drop(node);
    let journal = chip.borrow_mut().take_journal();
    let stats = chip.borrow().stats();
    let erases = chip.borrow().unit_erases().to_vec();
    assert!(erases.iter().all(|n| *n <= 1), "a unit erased twice in one restore: {erases:?}");
    let total = stats.programmed + stats.erases * E as u64;
    assert_eq!(stats.erases * E as u64, area, "a restore erases the inactive area once");
    assert_eq!(journal.iter().map(|op| op.cost()).sum::<u64>(), total);

    // A cut at N bytes leaves the operations before the one in progress done and that one cut
    // after its first bytes: the contents are built by replaying the journal through the mock
    // (the same code that cuts a live run). Every 64th cut point also runs the restore itself
    // with the cut armed, and its contents must be the replayed ones.
    let started = Instant::now();
    let (mut cut_points, mut checked, mut new_states, mut repeated) = (0u64, 0u64, 0u64, 0u64);
    let mut pending_states = 0u64;
    let (full, stride) = (full(), stride());
    let mut seen = std::collections::HashSet::new();
    let mut done = base.clone();
    let mut n = 0u64;
    for op in &journal {
        let erase = matches!(op, Recorded::Erase { .. });
        let mut unit_contents: Option<Vec<u8>> = None;
        for k in 0..op.cost() {
            cut_points += 1;
            let in_unit = k % E as u64;
            let last_of_unit = in_unit == E as u64 - 1;
            if erase && in_unit != 0 && !last_of_unit && !full {
                // Any cut inside one unit's erase leaves the same contents (the mock's contract,
                // checked below at the unit's last byte): checked once per unit.
                n += 1;
                continue;
            }
            let mut cut = done.clone();
            cut.cut_after(k);
            assert!(cut.replay(op).is_err(), "cut at {n}: the operation was not cut");
            cut.reboot();
            if n.is_multiple_of(stride) {
                assert_eq!(live_cut(&base, range.clone(), n, &metadata, &image).bytes(), cut.bytes(), "cut at {n}");
            }
            if erase && !full {
                if last_of_unit {
                    assert_eq!(unit_contents.as_deref(), Some(cut.bytes()), "cut at {n}: unit contents differ");
                    n += 1;
                    continue;
                }
                unit_contents = Some(cut.bytes().to_vec());
            }
            check_cut(
                cut,
                range.clone(),
                n,
                &expect,
                &metadata,
                &image,
                &leader,
                &mut seen,
                &mut checked,
                &mut new_states,
                &mut pending_states,
                &mut repeated,
            );
            n += 1;
        }
        done.replay(op).unwrap();
    }
    // N = total: nothing is cut; the restore completed.
    cut_points += 1;
    assert_eq!(live_cut(&base, range.clone(), n, &metadata, &image).bytes(), done.bytes());
    check_cut(
        done,
        range.clone(),
        n,
        &expect,
        &metadata,
        &image,
        &leader,
        &mut seen,
        &mut checked,
        &mut new_states,
        &mut pending_states,
        &mut repeated,
    );
    println!(
        "restore sweep{}, {} KiB erase units, {W}-byte words: {cut_points} cut points (image {} bytes, programmed {}, \
         erased {} units = {} bytes), {checked} contents checked, {} boot states checked with recovery \
         ({new_states} new, {pending_states} old with the snapshot pending), 0 mixed, 0 lost, {:.1?}",
        if full { " (full)" } else { "" },
        E / 1024,
        image.len(),
        stats.programmed,
        stats.erases,
        stats.erases * E as u64,
        checked - repeated,
        started.elapsed()
    );
    assert_eq!(cut_points, total + 1);
    assert!(new_states >= 1 && new_states < checked - repeated, "the sweep saw both old and new states");
    assert!(pending_states >= 1, "the sweep saw a snapshot persisted and not committed");
}

/// The flash after running the restore itself with power cut after `n` bytes.
fn live_cut<const W: usize, const E: usize>(
    base: &MockFlash<W, E>,
    range: Range<u32>,
    n: u64,
    metadata: &SnapshotMetadata,
    image: &[u8],
) -> MockFlash<W, E> {
    let chip = RefCell::new(base.clone());
    let indexes = Indexes::new();
    let mut node = follower(&chip, &indexes, range.clone(), &[]);
    chip.borrow_mut().cut_after(n);
    let _ = apply(&chip, &indexes, range, &mut node, metadata, image);
    drop(node);
    let mut chip = chip.into_inner();
    chip.reboot();
    chip
}

/// Reboots from `cut`: old or new, store by store; then recovery reaches the new state.
#[allow(clippy::too_many_arguments)]
fn check_cut<const W: usize, const E: usize>(
    cut: MockFlash<W, E>,
    range: Range<u32>,
    n: u64,
    expect: &Expect,
    metadata: &SnapshotMetadata,
    image: &[u8],
    leader: &Leader,
    seen: &mut std::collections::HashSet<u64>,
    checked: &mut u64,
    new_states: &mut u64,
    pending_states: &mut u64,
    repeated: &mut u64,
) {
    let chip = RefCell::new(cut);
    *checked += 1;
    // What a reboot sees is a function of the committed area's bytes and of the pending
    // snapshot mount finds; so is what recovery does (it erases a non-pending inactive area
    // before writing to it). A boot state already checked, with its recovery, is not checked
    // again, except every 64th cut point, which is checked in full regardless.
    let key = boot_key(&chip, range.clone());
    if !seen.insert(key) && !n.is_multiple_of(stride()) {
        *repeated += 1;
        return;
    }
    let (was_new, pending) = check_reboot(&chip, range.clone(), expect, n);
    *new_states += u64::from(was_new);
    *pending_states += u64::from(pending);
    recover(&chip, range, metadata, image, leader, n);
}

#[test]
fn power_cut_at_every_byte_of_a_restore_with_4_kib_erase_units() {
    on_big_stack(|| sweep_restore::<4, 4096>(8));
}

#[test]
fn power_cut_at_every_byte_of_a_restore_with_128_kib_erase_units() {
    on_big_stack(|| sweep_restore::<8, { 128 * 1024 }>(2));
}

/// Ordinary writes after a restore, cut at every byte: each request is all or nothing, and the
/// node writes on after the reboot. With `compact`, the area is first filled (uncut) so that the
/// first request compacts it into the other area (an erase and a copy), and that is cut too.
fn sweep_writes<const W: usize, const E: usize>(units: usize, compact: bool) {
    let range = 0..(units * E) as u32;
    let leader = leader(KEYS);
    let (metadata, image) = snapply_tests::snapshot(&leader);
    let base = RefCell::new(MockFlash::<W, E>::new(units));
    let indexes = Indexes::new();
    drop(follower(&base, &indexes, range.clone(), &follower_ops()));
    let url: &[u8] = b"http://10.0.0.7:2380";
    let requests = [
        Request::Put { key: b"after/one", value: b"first write after the restore", lease: 0 },
        Request::LeaseGrant { id: 77, ttl: 120 },
        Request::MemberAdd(snapply_core::store::NewMember {
            id: 9,
            name: b"nine",
            peer_urls: &[url],
            client_urls: &[],
            is_learner: true,
        }),
        Request::DeleteRange { key: b"device/sensor-004", range_end: b"" },
    ];
    // The restore, then (with `compact`) checkpoints until the next write compacts, then the
    // requests with every write recorded, and the state after each.
    let chip = RefCell::new(base.into_inner());
    let indexes = Indexes::new();
    let mut node = follower(&chip, &indexes, range.clone(), &[]);
    apply(&chip, &indexes, range.clone(), &mut node, &metadata, &image).unwrap();
    let mut index = metadata.index;
    if compact {
        let area = node.backend().area();
        loop {
            let (used, len) = node.backend().usage();
            if len - used < len / 8 {
                break;
            }
            index += 1;
            node.apply(index, 3, &Request::LeaseCheckpoint { id: 1, remaining_ttl: (index % 50) as i64 + 1 }).unwrap();
        }
        assert_eq!(node.backend().area(), area, "filling the area compacted it too early");
    }
    let restored = chip.borrow().clone();
    let area = node.backend().area();
    let mut states = vec![(records(node.backend()), node.stores().clone())];
    chip.borrow_mut().reset_stats();
    chip.borrow_mut().record();
    let mut ends = Vec::new();
    let cost = |chip: &RefCell<MockFlash<W, E>>| {
        let stats = chip.borrow().stats();
        stats.programmed + stats.erases * E as u64
    };
    for (i, r) in requests.iter().enumerate() {
        node.apply(index + 1 + i as u64, 3, r).unwrap();
        states.push((records(node.backend()), node.stores().clone()));
        ends.push(cost(&chip));
    }
    let journal = chip.borrow_mut().take_journal();
    let total = cost(&chip);
    let erased = chip.borrow().stats().erases;
    if compact {
        assert_eq!(erased as usize, units / 2, "the compaction erases the other area once");
        assert_ne!(node.backend().area(), area, "the first request compacted the area");
    } else {
        assert_eq!(erased, 0);
    }
    drop(node);

    let started = Instant::now();
    let (full, mut checked) = (full(), 0u64);
    let mut done = restored;
    let mut n = 0u64;
    let mut seen = std::collections::HashSet::new();
    let mut check = |cut: MockFlash<W, E>, n: u64| -> bool {
        // Requests whose writes all came before the cut returned; the one cut is all or nothing.
        let returned = ends.iter().filter(|end| **end <= n).count();
        let chip = RefCell::new(cut);
        let indexes = Indexes::new();
        // What a reboot and the writes after it do is a function of the committed area's bytes
        // and of the other area's header and commit records (a write that must compact erases
        // the other area first, whatever it holds): contents that agree on those are checked
        // once, but for every `stride()`th cut point.
        let key = write_boot_key(&chip, range.clone(), returned);
        if !seen.insert(key) && !n.is_multiple_of(stride()) {
            return false;
        }
        let (recs, stores, pending) = reboot_state(&chip, range.clone());
        assert!(pending.is_none());
        let ok = (returned..=(returned + 1).min(requests.len())).any(|k| {
            let (r, s) = &states[k];
            *r == recs && differing(&stores, s, false).is_empty()
        });
        assert!(ok, "cut at {n}: the state after {returned} requests is neither complete nor untouched");
        // The node goes on writing after the reboot (compacting again if it must); what it
        // writes survives another one.
        let mut node = boot(&chip, &indexes, range.clone()).unwrap_or_else(|e| panic!("cut at {n}: boot: {e}")).node;
        let next = node.progress().applied_index + 1;
        node.apply(next, 3, &Request::Put { key: b"after/reboot", value: b"x", lease: 0 })
            .unwrap_or_else(|e| panic!("cut at {n}: a write after the reboot: {e}"));
        let want = records(node.backend());
        drop(node);
        let (again, _, _) = reboot_state(&chip, range.clone());
        assert_eq!(again, want, "cut at {n}: a write after the reboot was lost");
        true
    };
    for op in &journal {
        let erase = matches!(op, Recorded::Erase { .. });
        for k in 0..op.cost() {
            // Cuts inside one unit's erase leave the same contents (the mock's contract): by
            // default the first and last byte of each unit are checked.
            let in_unit = k % E as u64;
            if erase && !full && in_unit != 0 && in_unit != E as u64 - 1 && !n.is_multiple_of(stride()) {
                n += 1;
                continue;
            }
            let mut cut = done.clone();
            cut.cut_after(k);
            assert!(cut.replay(op).is_err());
            cut.reboot();
            checked += u64::from(check(cut, n));
            n += 1;
        }
        done.replay(op).unwrap();
    }
    checked += u64::from(check(done, n));
    println!(
        "write sweep{}{}, {} KiB erase units, {W}-byte words: {} cut points over {} requests ({} bytes programmed, {} \
         units erased), {checked} boot states checked with a write after the reboot, 0 mixed, 0 lost, {:.1?}",
        if compact { " with a compaction" } else { "" },
        if full { " (full)" } else { "" },
        E / 1024,
        total + 1,
        requests.len(),
        total - erased * E as u64,
        erased,
        started.elapsed()
    );
    assert_eq!(n, total);
}

#[test]
fn power_cut_at_every_byte_of_the_writes_after_a_restore_with_4_kib_erase_units() {
    on_big_stack(|| sweep_writes::<4, 4096>(8, false));
}

#[test]
fn power_cut_at_every_byte_of_the_writes_after_a_restore_with_128_kib_erase_units() {
    on_big_stack(|| sweep_writes::<8, { 128 * 1024 }>(2, false));
}

#[test]
fn power_cut_at_every_byte_of_a_write_that_compacts_the_area() {
    on_big_stack(|| sweep_writes::<4, 4096>(8, true));
}
