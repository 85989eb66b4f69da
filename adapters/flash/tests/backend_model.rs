//! The flash backend against the reference model of the backend port (`snapply-testkit`), the
//! same check the in-memory and redb backends run: random transaction sequences (puts,
//! deletes, clears, gets, range reads, commits, aborts, reboots) on the mock NOR flash, where
//! every read and every range equals the model's. The areas are small, so the sequences compact
//! the log into the other area again and again.

// Test scaffolding: a failure here is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, clippy::unreachable)]

use std::cell::RefCell;
use std::ops::Range;

use embedded_storage::nor_flash::NorFlash;
use proptest::prelude::*;
use snapply_flash::mock::MockFlash;
use snapply_flash::{FlashBackend, Indexes, mount};
use snapply_testkit::{Shape, Subject, check, steps};

/// Live records the backend indexes: more than a sequence can put.
const RECORDS: usize = 128;
/// Largest record: the model's longest key and value, and room to spare.
const RECORD: usize = 64;

/// A flash backend, rebooted by mounting the flash again.
struct OnFlash<'f, F: NorFlash> {
    chip: &'f RefCell<F>,
    indexes: &'f Indexes<RECORDS>,
    range: Range<u32>,
    backend: FlashBackend<'f, F, RECORDS, RECORD>,
}

impl<'f, F: NorFlash> OnFlash<'f, F> {
    fn mount(chip: &'f RefCell<F>, indexes: &'f Indexes<RECORDS>, range: Range<u32>) -> Self {
        let backend = mount::<F, RECORDS, RECORD>(chip, indexes, range.clone()).unwrap().backend;
        OnFlash { chip, indexes, range, backend }
    }
}

impl<'f, F: NorFlash> Subject for OnFlash<'f, F> {
    type Backend = FlashBackend<'f, F, RECORDS, RECORD>;

    fn backend(&mut self) -> &mut Self::Backend {
        &mut self.backend
    }

    fn reopen(self) -> Result<Self, String> {
        let OnFlash { chip, indexes, range, backend } = self;
        drop(backend);
        let mounted = mount::<F, RECORDS, RECORD>(chip, indexes, range.clone()).map_err(|e| e.to_string())?;
        if mounted.formatted || mounted.pending.is_some() {
            return Err(format!("the remount formatted the flash or found a snapshot: {:?}", mounted.other));
        }
        Ok(OnFlash { chip, indexes, range, backend: mounted.backend })
    }
}

proptest! {
    /// Two areas of two 1 KiB units, 4-byte words: the log is compacted into the other area
    /// every few transactions.
    #[test]
    fn flash_backend_matches_the_model_on_small_areas(
        steps in steps(Shape { steps: 256, buckets: 3, max_key: 1, max_value: 32, ..Shape::default() })
    ) {
        let chip = RefCell::new(MockFlash::<4, 1024>::new(4));
        let indexes = Indexes::new();
        check(OnFlash::mount(&chip, &indexes, 0..4 * 1024), &steps)?;
    }

    /// Two areas of four 4 KiB units, 8-byte words.
    #[test]
    fn flash_backend_matches_the_model_with_eight_byte_words(steps in steps(Shape::default())) {
        let chip = RefCell::new(MockFlash::<8, 4096>::new(8));
        let indexes = Indexes::new();
        check(OnFlash::mount(&chip, &indexes, 0..8 * 4096), &steps)?;
    }
}
