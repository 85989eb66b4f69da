//! The adapter on an async NOR flash: `BlockOn` over a driver that answers each operation only
//! when it is polled a second time (`mock::AsyncMock`). A restore programs and erases exactly
//! what it does on the blocking flash; the power-cut sweep finds the same number of cut points,
//! each cut leaves the same flash contents as on the blocking flash, boots the old or the new
//! state (never a mix), and then recovers to the leader's state.

// Test scaffolding: a failure here is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, clippy::unreachable)]

mod common;

use std::cell::RefCell;
use std::ops::Range;

use common::*;
use embedded_storage::nor_flash::NorFlash;
use snapply_core::SnapshotMetadata;
use snapply_flash::mock::{AsyncMock, MockFlash};
use snapply_flash::{BlockOn, Indexes};

/// Keys of the snapshot (as the blocking sweep's).
const KEYS: u8 = 20;
/// 8 erase units of 4 KiB, 4-byte words: the blocking sweep's first geometry.
type Chip = MockFlash<4, 4096>;
const UNITS: usize = 8;
/// Every how many cut points one is run on both paths (all of them with `SNAPPLY_FLASH_SWEEP=full`).
fn stride() -> u64 {
    if std::env::var("SNAPPLY_FLASH_SWEEP").is_ok_and(|v| v == "full") { 1 } else { 97 }
}

type Async = BlockOn<AsyncMock<Chip>>;

/// Runs the restore of `(metadata, image)` on a follower whose flash starts as `base`, with the
/// power cut after `cut` bytes (none if `None`); returns the flash as the cut left it.
fn restore<F: NorFlash>(
    chip: F,
    range: Range<u32>,
    cut: Option<u64>,
    arm: impl Fn(&mut F, u64),
    metadata: &SnapshotMetadata,
    image: &[u8],
) -> F {
    let chip = RefCell::new(chip);
    let indexes = Indexes::new();
    let mut node = follower(&chip, &indexes, range.clone(), &[]);
    if let Some(n) = cut {
        arm(&mut chip.borrow_mut(), n);
    }
    let result = apply(&chip, &indexes, range, &mut node, metadata, image);
    assert_eq!(result.is_ok(), cut.is_none(), "a restore fails exactly when the power is cut");
    drop(node);
    chip.into_inner()
}

#[test]
fn the_async_path_programs_what_the_blocking_path_does_and_survives_the_same_cuts() {
    on_big_stack(|| {
        let range = 0..(UNITS * 4096) as u32;
        let leader = leader(KEYS);
        let (metadata, image) = snapply_tests::snapshot(&leader);
        let base = RefCell::new(Chip::new(UNITS));
        let indexes = Indexes::new();
        drop(follower(&base, &indexes, range.clone(), &follower_ops()));
        let mut base = base.into_inner();
        base.reset_stats();
        let (old_records, _, _) = reboot_state(&RefCell::new(base.clone()), range.clone());

        // Uncut: the same operations, the same bytes.
        let blocking = restore(base.clone(), range.clone(), None, |_, _| {}, &metadata, &image);
        let arm_async = |f: &mut Async, n: u64| f.inner_mut().0.cut_after(n);
        let on_async = restore(Async::new(AsyncMock(base.clone())), range.clone(), None, arm_async, &metadata, &image);
        let on_async = on_async.into_inner().0;
        assert_eq!(on_async.bytes(), blocking.bytes(), "the same flash contents");
        assert_eq!(on_async.stats(), blocking.stats(), "the same reads, writes and erases");
        let stats = blocking.stats();
        let cut_points = stats.programmed + stats.erases * 4096;
        assert!(cut_points > 4096, "a restore programs and erases: {stats:?}");

        // Cut: every stride-th byte of the restore, on both paths.
        let (mut checked, mut new_states, mut pending_states) = (0u64, 0u64, 0u64);
        let last = cut_points - 1;
        for n in (0..cut_points).step_by(stride() as usize).chain([last]) {
            let arm = |f: &mut Chip, n: u64| f.cut_after(n);
            let mut blocking = restore(base.clone(), range.clone(), Some(n), arm, &metadata, &image);
            let on_async =
                restore(Async::new(AsyncMock(base.clone())), range.clone(), Some(n), arm_async, &metadata, &image);
            let mut on_async = on_async.into_inner().0;
            assert!(on_async.is_off() && blocking.is_off(), "cut at {n}: the power was cut on both paths");
            on_async.reboot();
            blocking.reboot();
            assert_eq!(on_async.bytes(), blocking.bytes(), "cut at {n}: the same contents on both paths");

            // Rebooted on the async path: old or new, then recovered to the leader's state.
            let chip = RefCell::new(Async::new(AsyncMock(on_async)));
            let indexes = Indexes::new();
            let (recs, _, pending) = reboot_state(&chip, range.clone());
            let is_new = recs == records(leader.backend()) && pending.is_none();
            assert!(is_new || recs == old_records, "cut at {n}: neither the old state nor the new one");
            let booted = boot(&chip, &indexes, range.clone()).unwrap_or_else(|e| panic!("cut at {n}: boot: {e}"));
            let mut node = booted.node;
            if node.progress().applied_index < metadata.index {
                apply(&chip, &indexes, range.clone(), &mut node, &metadata, &image)
                    .unwrap_or_else(|e| panic!("cut at {n}: {e}"));
            }
            assert_eq!(records(node.backend()), records(leader.backend()), "cut at {n}: recovered");
            assert_eq!(differing(node.stores(), leader.stores(), true), Vec::<&str>::new(), "cut at {n}");
            checked += 1;
            new_states += u64::from(is_new);
            pending_states += u64::from(!is_new && pending.is_some());
        }
        println!(
            "async flash: {cut_points} cut points, {checked} run on both paths: {pending_states} rebooted with the \
             snapshot persisted and pending, {new_states} on the new state, the rest on the old one"
        );
        // Cuts land before the image is durable (old, nothing pending) and after it (old, the
        // snapshot pending: boot completes it); the commit record is the restore's last write.
        assert!(checked > 10 && pending_states > 0 && pending_states < checked, "{pending_states} of {checked}");
    });
}
