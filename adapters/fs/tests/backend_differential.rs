//! The redb backend under the core's node: generated workloads applied to a node on redb and to
//! a node on the in-memory `VecBackend` leave equal stores and equal records, and the redb file,
//! reopened, holds the same records and recovers the same stores.

// Test scaffolding: a failure here is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, clippy::unreachable)]

use proptest::prelude::*;
use snapply_core::collections::Growable;
use snapply_core::{Node, Stores};
use snapply_fs::RedbBackend;
use snapply_tests::{config, node, records, run, workload};

/// The stores of a node reopened on `backend`, as a restarting node reads them (the v2 store is
/// not in the backend: it comes from the snapshot and the log, so it is taken from `v2_of`).
fn recovered(backend: RedbBackend, v2_of: &Stores<Growable>) -> Stores<Growable> {
    let mut v2 = Vec::new();
    v2_of.v2.save(&mut v2).unwrap();
    Node::<RedbBackend, Growable>::open(config(1), backend, &v2).unwrap().stores().clone()
}

proptest! {
    // Every commit is an fsync: keep the case count modest.
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn redb_node_equals_memory_node(ops in workload(64)) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let mut reference = node(1);
        let applied_ref = run(&mut reference, &ops, 0, 1);
        let mut on_disk = Node::<RedbBackend, Growable>::new(config(1), RedbBackend::open(&path).unwrap());
        let applied = run(&mut on_disk, &ops, 0, 1);

        // The same requests were accepted and refused.
        prop_assert_eq!(applied, applied_ref);
        prop_assert_eq!(records(reference.backend()), records(on_disk.backend()));
        prop_assert_eq!(reference.stores(), on_disk.stores());
        prop_assert_eq!(reference.progress(), on_disk.progress());

        // Reopened, the file holds the same records and the stores recover equal.
        let stores = on_disk.stores().clone();
        drop(on_disk);
        let reopened = RedbBackend::open(&path).unwrap();
        prop_assert_eq!(records(&reopened), records(reference.backend()));
        // A lease checkpoint below cluster version 3.6 lives in memory only (etcd's
        // `shouldPersistCheckpoints`): the recovered remaining TTLs are the backend's.
        let recovered = recovered(reopened, &stores);
        let ttls = |s: &Stores<Growable>| s.lessor.leases().iter().map(|l| (l.id, l.ttl)).collect::<Vec<_>>();
        prop_assert_eq!(ttls(&recovered), ttls(&stores));
        let mut expected = stores.clone();
        expected.lessor = recovered.lessor.clone();
        prop_assert_eq!(&recovered, &expected);
    }
}
