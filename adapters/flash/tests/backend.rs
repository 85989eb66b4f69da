//! The flash backend's transactions: commit, drop, remount, compaction, and a pending snapshot
//! that blocks compaction.

// Test scaffolding: a failure here is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, clippy::unreachable)]

mod common;

use std::cell::RefCell;
use std::ops::ControlFlow;

use common::{RECORD, RECORDS, on_big_stack};
use snapply_core::Phase;
use snapply_core::backend::{Backend, BackendErrorKind, Bucket, ReadTxn, WriteTxn};
use snapply_core::{ApplyError, ApplyErrorKind, Request};
use snapply_flash::mock::MockFlash;
use snapply_flash::{FlashError, Indexes, OtherArea, mount};

type Chip = MockFlash<4, 4096>;
const RANGE: std::ops::Range<u32> = 0..4 * 4096;

fn all<B: Backend>(b: &B, bucket: Bucket) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    b.read()
        .unwrap()
        .scan(bucket, &[], &mut |k, v| {
            out.push((k.to_vec(), v.to_vec()));
            ControlFlow::Continue(())
        })
        .unwrap();
    out
}

/// Whether `err` is the snapshot store's failure while `context`, in the persist phase.
fn persist_failed(err: &ApplyError, context: &str) -> bool {
    err.phase() == Phase::Persist && matches!(err.kind(), ApplyErrorKind::Port(e) if e.context == context)
}

fn kv(pairs: &[(&[u8], &[u8])]) -> Vec<(Vec<u8>, Vec<u8>)> {
    pairs.iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect()
}

/// The indexes' two slots: the node's backend and a restoring snapshot's. A third backend open
/// at once is refused with a clear error rather than sharing a slot, and a dropped backend
/// gives its slot back, emptied of its records.
#[test]
fn a_third_backend_is_refused_until_one_is_dropped() {
    let chip = RefCell::new(Chip::new(4));
    let indexes = Indexes::new();
    let mut a = mount::<Chip, RECORDS, RECORD>(&chip, &indexes, RANGE).unwrap().backend;
    let mut t = a.write().unwrap();
    t.put(Bucket::Key, b"a", b"1").unwrap();
    t.commit().unwrap();
    let b = mount::<Chip, RECORDS, RECORD>(&chip, &indexes, RANGE).unwrap().backend;
    assert_eq!(indexes.in_use(), 2);
    let err = mount::<Chip, RECORDS, RECORD>(&chip, &indexes, RANGE).unwrap_err();
    assert!(matches!(err, FlashError::Misuse(why) if why.contains("slots")), "{err:?}");
    assert!(err.to_string().contains("slots"), "{err}");
    drop(a);
    assert_eq!(indexes.in_use(), 1);
    let c = mount::<Chip, RECORDS, RECORD>(&chip, &indexes, RANGE).unwrap().backend;
    assert_eq!(all(&c, Bucket::Key), kv(&[(b"a", b"1")]));
    assert_eq!(all(&b, Bucket::Key), all(&c, Bucket::Key));
    drop((b, c));
    assert_eq!(indexes.in_use(), 0);
}

#[test]
fn transactions_commit_or_vanish_and_survive_a_remount() {
    let chip = RefCell::new(Chip::new(4));
    let indexes = Indexes::new();
    let mounted = mount::<Chip, RECORDS, RECORD>(&chip, &indexes, RANGE).unwrap();
    assert!(mounted.formatted);
    let mut b = mounted.backend;
    let mut t = b.write().unwrap();
    t.put(Bucket::Key, b"b", b"2").unwrap();
    t.put(Bucket::Key, b"a", b"1").unwrap();
    t.put(Bucket::Meta, b"m", b"x").unwrap();
    // A transaction reads its own writes.
    let mut seen = None;
    assert!(t.get(Bucket::Key, b"a", &mut |v| seen = Some(v.to_vec())).unwrap());
    assert_eq!(seen.as_deref(), Some(&b"1"[..]));
    t.commit().unwrap();
    assert_eq!(all(&b, Bucket::Key), kv(&[(b"a", b"1"), (b"b", b"2")]));

    // Dropped: nothing happened, in RAM and on flash.
    let mut t = b.write().unwrap();
    t.put(Bucket::Key, b"c", b"3").unwrap();
    assert!(t.delete(Bucket::Key, b"a").unwrap());
    t.clear(Bucket::Meta).unwrap();
    drop(t);
    assert_eq!(all(&b, Bucket::Key), kv(&[(b"a", b"1"), (b"b", b"2")]));
    assert_eq!(all(&b, Bucket::Meta), kv(&[(b"m", b"x")]));

    let mut t = b.write().unwrap();
    assert!(t.delete(Bucket::Key, b"b").unwrap());
    assert!(!t.delete(Bucket::Key, b"zz").unwrap());
    t.put(Bucket::Key, b"a", b"1'").unwrap();
    t.clear(Bucket::Meta).unwrap();
    t.put(Bucket::Lease, b"l", b"").unwrap();
    t.commit().unwrap();
    drop(b);

    let b = mount::<Chip, RECORDS, RECORD>(&chip, &indexes, RANGE).unwrap().backend;
    assert_eq!(all(&b, Bucket::Key), kv(&[(b"a", b"1'")]));
    assert!(all(&b, Bucket::Meta).is_empty());
    assert_eq!(all(&b, Bucket::Lease), kv(&[(b"l", b"")]));
    // Scans start at `from` and stop at the bucket's end.
    let mut from_b = Vec::new();
    b.read()
        .unwrap()
        .scan(Bucket::Key, b"a\0", &mut |k, _| {
            from_b.push(k.to_vec());
            ControlFlow::Continue(())
        })
        .unwrap();
    assert!(from_b.is_empty());
}

#[test]
fn a_full_area_is_compacted_into_the_other_and_survives_a_remount() {
    let chip = RefCell::new(Chip::new(4));
    let indexes = Indexes::new();
    let mut b = mount::<Chip, RECORDS, RECORD>(&chip, &indexes, RANGE).unwrap().backend;
    for i in 0..400u32 {
        let mut t = b.write().unwrap();
        t.put(Bucket::Key, format!("key{}", i % 7).as_bytes(), &i.to_be_bytes()).unwrap();
        t.commit().unwrap();
    }
    assert!(b.epoch() > 2, "the area was compacted more than once");
    assert!(chip.borrow().unit_erases().iter().all(|n| *n >= 1));
    let mut want: Vec<_> =
        (393..400u32).map(|i| (format!("key{}", i % 7).into_bytes(), i.to_be_bytes().to_vec())).collect();
    want.sort();
    assert_eq!(all(&b, Bucket::Key), want);
    let epoch = b.epoch();
    let area = b.area();
    drop(b);
    let b = mount::<Chip, RECORDS, RECORD>(&chip, &indexes, RANGE).unwrap().backend;
    assert_eq!((b.area(), b.epoch()), (area, epoch));
    assert_eq!(all(&b, Bucket::Key), want);
}

#[test]
fn a_pending_snapshot_blocks_compaction_with_a_full_error() {
    on_big_stack(|| {
        let leader = common::leader(10);
        let (metadata, image) = snapply_tests::snapshot(&leader);
        let chip = RefCell::new(Chip::new(4));
        let indexes = Indexes::new();
        let mut node = common::follower(&chip, &indexes, RANGE, &[]);
        common::persist_only(&chip, &indexes, RANGE, &mut node, &metadata, common::Image::Bytes(&image)).unwrap();
        let sha256 = mount::<Chip, RECORDS, RECORD>(&chip, &indexes, RANGE).unwrap().pending.map(|p| p.sha256).unwrap();
        // A second persist of the same snapshot reuses the area, writing nothing: named by its
        // digest, or with the same image (decoded again to check its digest). Another image is
        // refused.
        chip.borrow_mut().reset_stats();
        common::persist_only(&chip, &indexes, RANGE, &mut node, &metadata, common::Image::Persisted(sha256)).unwrap();
        common::persist_only(&chip, &indexes, RANGE, &mut node, &metadata, common::Image::Bytes(&image)).unwrap();
        let stats = chip.borrow().stats();
        assert_eq!((stats.programmed, stats.erases), (0, 0), "a reused snapshot was written again");
        let err = common::persist_only(&chip, &indexes, RANGE, &mut node, &metadata, common::Image::Persisted([7; 32]))
            .unwrap_err();
        assert!(persist_failed(&err, "comparing the image's metadata with the snapshot's"), "{err}");
        drop(node);
        let mut b = mount::<Chip, RECORDS, RECORD>(&chip, &indexes, RANGE).unwrap().backend;
        let mut full = None;
        for i in 0..400u32 {
            let result = b.write().and_then(|mut t| {
                t.put(Bucket::Key, format!("key{}", i % 7).as_bytes(), &[0u8; 64])?;
                t.commit()
            });
            if let Err(e) = result {
                full = Some(e);
                break;
            }
        }
        assert_eq!(full.map(|e| e.kind), Some(BackendErrorKind::Full));
        let mounted = mount::<Chip, RECORDS, RECORD>(&chip, &indexes, RANGE).unwrap();
        assert_eq!(mounted.other, OtherArea::Pending);
        assert_eq!(mounted.pending.map(|p| p.metadata), Some(metadata));
    });
}

#[test]
fn a_bad_image_leaves_a_discarded_area_and_the_state_untouched() {
    on_big_stack(|| {
        let leader = common::leader(10);
        let (metadata, mut image) = snapply_tests::snapshot(&leader);
        let at = image.len() / 2;
        image[at] ^= 0x40;
        let chip = RefCell::new(Chip::new(4));
        let indexes = Indexes::new();
        let mut node = common::follower(&chip, &indexes, RANGE, &[]);
        let next = node.progress().applied_index + 1;
        node.apply(next, 1, &Request::Put { key: b"mine", value: b"1", lease: 0 }).unwrap();
        let before = common::records(node.backend());
        let err = common::apply(&chip, &indexes, RANGE, &mut node, &metadata, &image).unwrap_err();
        assert!(persist_failed(&err, "checking the snapshot image"), "{err}");
        drop(node);
        let mounted = mount::<Chip, RECORDS, RECORD>(&chip, &indexes, RANGE).unwrap();
        assert_eq!(mounted.other, OtherArea::Discarded);
        assert!(mounted.pending.is_none());
        assert_eq!(common::records(&mounted.backend), before);
    });
}

#[test]
fn ranges_that_do_not_fit_the_layout_are_refused() {
    let chip = RefCell::new(Chip::new(4));
    let indexes = Indexes::new();
    for range in [0..3 * 4096, 100..4 * 4096, 0..5 * 4096, 0..4096] {
        let err = mount::<Chip, RECORDS, RECORD>(&chip, &indexes, range.clone()).unwrap_err();
        assert!(matches!(err, FlashError::Geometry(_)), "{range:?}: {err:?}");
    }
    assert_eq!(chip.borrow().stats().programmed, 0);
}

#[test]
fn a_snapshot_whose_backend_misses_its_index_is_refused_before_it_is_committed() {
    on_big_stack(|| {
        let leader = common::leader(10);
        let (mut metadata, _) = snapply_tests::snapshot(&leader);
        // The same records under a later index: their consistent index is not the snapshot's.
        metadata.index += 5;
        let mut image = Vec::new();
        snapply_core::image::encode(&metadata, &leader.backend().read().unwrap(), &[], &mut image).unwrap();
        let chip = RefCell::new(Chip::new(4));
        let indexes = Indexes::new();
        let mut node = common::follower(&chip, &indexes, RANGE, &[]);
        let err = common::apply(&chip, &indexes, RANGE, &mut node, &metadata, &image).unwrap_err();
        assert!(persist_failed(&err, "comparing the snapshot's consistent index with its index"), "{err}");
        drop(node);
        let mounted = mount::<Chip, RECORDS, RECORD>(&chip, &indexes, RANGE).unwrap();
        assert!(mounted.pending.is_none());
        assert_eq!(mounted.other, OtherArea::Discarded);
    });
}

/// A pending snapshot the node's tables cannot hold fails the same way at every boot: boot
/// refuses it (reported, its area erased) and serves the committed state.
#[test]
fn a_pending_snapshot_too_large_for_the_node_is_refused_at_boot_and_the_committed_state_served() {
    on_big_stack(|| {
        // A leader with more keys than the follower's tables (64) hold.
        let mut leader = snapply_tests::node(1);
        for k in 0..80u64 {
            let key = format!("key-{k:03}");
            leader
                .apply(10 + k, 2, &snapply_core::Request::Put { key: key.as_bytes(), value: b"v", lease: 0 })
                .unwrap();
        }
        let (metadata, image) = snapply_tests::snapshot(&leader);
        let chip = RefCell::new(Chip::new(8));
        let indexes = Indexes::new();
        let range = 0..8 * 4096;
        let mut node = common::follower(&chip, &indexes, range.clone(), &common::follower_ops());
        let before = common::records(node.backend());
        // The run persists the snapshot and fails before the swap: it stays pending on flash.
        let err = common::apply(&chip, &indexes, range.clone(), &mut node, &metadata, &image).unwrap_err();
        assert!(!err.is_fatal() && err.phase() > Phase::Persist, "{err}");
        drop(node);
        let pending = mount::<Chip, RECORDS, RECORD>(&chip, &indexes, range.clone()).unwrap().pending.unwrap();
        assert_eq!(pending.metadata, metadata);

        let booted = common::boot(&chip, &indexes, range.clone()).unwrap_or_else(|e| panic!("boot failed: {e}"));
        let refused = booted.refused.expect("the refused snapshot is reported");
        assert_eq!(refused.snapshot, pending);
        assert!(!refused.error.is_fatal(), "{}", refused.error);
        assert!(matches!(refused.error.kind(), ApplyErrorKind::Store(_)), "{}", refused.error);
        let node = booted.node;
        assert!(node.unfinished().is_none());
        assert_eq!(common::records(node.backend()), before);
        drop(node);
        // Its area was erased: the next boot finds nothing pending and reports nothing.
        assert_eq!(mount::<Chip, RECORDS, RECORD>(&chip, &indexes, range.clone()).unwrap().other, OtherArea::Unused);
        let again = common::boot(&chip, &indexes, range).unwrap();
        assert_eq!(again.refused, None);
        assert_eq!(common::records(again.node.backend()), before);
    });
}

/// A transaction that outgrows the room left in the area (begun with more than the 1/8 that
/// makes `write` compact first) compacts the committed records into the other area and goes on
/// there, its frames so far copied after them: it used to fail with `Full` though the live
/// records and it fit an area. A power cut at any byte of it leaves the state before it or the
/// one after it.
#[test]
fn a_transaction_that_outgrows_the_area_compacts_it_and_goes_on_and_a_cut_leaves_old_or_new() {
    type Small = MockFlash<4, 1024>;
    let range = 0..4 * 1024;
    let chip = RefCell::new(Small::new(4));
    let indexes = Indexes::new();
    let mut b = mount::<Small, RECORDS, RECORD>(&chip, &indexes, range.clone()).unwrap().backend;
    let mut i = 0u32;
    loop {
        let (used, len) = b.usage();
        if len - used < 400 {
            assert!(len - used >= len / 8, "the next transaction would compact before it begins");
            break;
        }
        let mut t = b.write().unwrap();
        t.put(Bucket::Key, format!("k{}", i % 4).as_bytes(), &[i as u8; 40]).unwrap();
        t.commit().unwrap();
        i += 1;
    }
    let area = b.area();
    let before = common::records(&b);
    let base = chip.borrow().clone();
    chip.borrow_mut().record();
    let mut t = b.write().unwrap();
    for k in 0..12u8 {
        t.put(Bucket::Lease, &[k], &[k; 40]).unwrap();
    }
    assert!(t.delete(Bucket::Key, b"k0").unwrap());
    t.commit().unwrap();
    assert_ne!(b.area(), area, "the transaction compacted the area");
    let after = common::records(&b);
    assert_eq!(after.len(), before.len() + 11);
    drop(b);
    let journal = chip.borrow_mut().take_journal();
    assert_eq!(
        common::records(&mount::<Small, RECORDS, RECORD>(&chip, &indexes, range.clone()).unwrap().backend),
        after
    );

    let mut done = base;
    let mut olds = 0;
    for op in &journal {
        for k in 0..op.cost() {
            let mut cut = done.clone();
            cut.cut_after(k);
            assert!(cut.replay(op).is_err());
            cut.reboot();
            let cut = RefCell::new(cut);
            let indexes = Indexes::new();
            let mounted = mount::<Small, RECORDS, RECORD>(&cut, &indexes, range.clone()).unwrap();
            assert!(!mounted.formatted && mounted.pending.is_none());
            let got = common::records(&mounted.backend);
            assert!(got == before || got == after, "a cut at byte {k} of {op:?} left neither state");
            olds += usize::from(got == before);
        }
        done.replay(op).unwrap();
    }
    assert!(olds > 0);
}
