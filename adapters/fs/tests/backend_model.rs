//! The redb backend against the reference model of the backend port (`snapply-testkit`), the
//! same check the in-memory and flash backends run: random transaction sequences (puts,
//! deletes, clears, gets, range reads, commits, aborts, reopens of the file) where every read
//! and every range equals the model's, with durable commits and with batched ones.

// Test scaffolding: a failure here is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, clippy::unreachable)]

use std::path::PathBuf;

use proptest::prelude::*;
use snapply_fs::RedbBackend;
use snapply_testkit::{Shape, Subject, check, steps};

/// A redb file, reopened by dropping the backend and opening the file again.
struct OnDisk {
    path: PathBuf,
    batched: bool,
    backend: RedbBackend,
}

impl OnDisk {
    fn open(path: PathBuf, batched: bool) -> Self {
        let backend = RedbBackend::open(&path).unwrap();
        backend.set_batched_commits(batched);
        OnDisk { path, batched, backend }
    }
}

impl Subject for OnDisk {
    type Backend = RedbBackend;

    fn backend(&mut self) -> &mut RedbBackend {
        &mut self.backend
    }

    fn reopen(self) -> Result<Self, String> {
        let OnDisk { path, batched, backend } = self;
        // Closed first: redb refuses a second open of a file in use.
        drop(backend);
        let backend = RedbBackend::open(&path).map_err(|e| e.to_string())?;
        backend.set_batched_commits(batched);
        Ok(OnDisk { path, batched, backend })
    }
}

proptest! {
    // Durable commits sync the file: keep the case count modest.
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn redb_backend_matches_the_model(steps in steps(Shape::default()), batched in any::<bool>()) {
        let dir = tempfile::tempdir().unwrap();
        check(OnDisk::open(dir.path().join("db"), batched), &steps)?;
    }
}
