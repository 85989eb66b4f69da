//! The redb backend under the core's node: generated workloads applied to a node on redb and to
//! a node on the in-memory `VecBackend` leave equal stores and equal records, and the redb file,
//! reopened, holds the same records and recovers the same stores.

use proptest::prelude::*;
use snapply_core::collections::Growable;
use snapply_core::store::{AlarmStore, AuthStore, ConsistentIndex, KvStore, Lessor, Membership};
use snapply_core::{Node, Stores};
use snapply_fs::RedbBackend;
use snapply_tests::{config, node, records, run, workload};

/// The stores kept in a backend, recovered from it as a restarting node would (the v2 store is
/// not in the backend: it comes from the snapshot and the log, so it is taken from `v2_of`).
fn recovered(backend: &mut RedbBackend, v2_of: &Stores<Growable>) -> Stores<Growable> {
    let cindex = ConsistentIndex::load(&snapply_core::backend::Backend::read(&*backend).unwrap()).unwrap();
    let mut lessor = Lessor::recover(backend, config(1).min_lease_ttl, &cindex).unwrap();
    let kv = KvStore::restore(backend, &mut lessor, &cindex).unwrap();
    Stores {
        cindex,
        lessor,
        kv,
        alarms: AlarmStore::recover(backend).unwrap(),
        auth: AuthStore::recover(backend).unwrap(),
        membership: Membership::recover(backend).unwrap(),
        v2: v2_of.v2.clone(),
    }
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
        let mut reopened = RedbBackend::open(&path).unwrap();
        prop_assert_eq!(records(&reopened), records(reference.backend()));
        prop_assert_eq!(&recovered(&mut reopened, &stores), &stores);
    }
}
