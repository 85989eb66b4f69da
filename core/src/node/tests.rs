//! The node's own tests: applying requests, reopening, and the unfinished mark.

use super::*;
use crate::backend::ReadTxn;
use crate::collections::{Fixed, Growable};
use crate::mem::{MemBackend, VecBackend};
use crate::store::{Alarm, Downgrade, NewMember, PermissionType, Version};
use crate::store::{AlarmType, Expiry, KeyValue, StoreError, TokenProvider};

pub(crate) type TestNode = Node<VecBackend, Growable>;

pub(crate) fn node() -> TestNode {
    Node::new(Config { id: 1, min_lease_ttl: 5, v2_deprecation: V2Deprecation::WriteOnly }, VecBackend::new())
}

pub(crate) fn apply(n: &mut TestNode, r: &Request<'_>) -> Result<i64, StoreError> {
    let index = n.progress().applied_index + 1;
    n.apply(index, 1, r)
}

/// Value, create revision, mod revision, version and lease of a key.
pub(crate) type Got = (std::vec::Vec<u8>, i64, i64, i64, i64);

pub(crate) fn get(n: &TestNode, key: &[u8], at: i64) -> Result<Option<Got>, StoreError> {
    let mut out = None;
    n.stores().kv.range(&n.backend().read()?, key, &[], at, &mut |kv: &KeyValue<'_>| {
        out = Some((kv.value.to_vec(), kv.create_revision, kv.mod_revision, kv.version, kv.lease))
    })?;
    Ok(out)
}

/// `open_in_place` reads the same node as `open`, into a fresh node and into one that held
/// other state (its stores, capabilities and progress are all replaced).
#[test]
fn open_in_place_reads_what_open_reads() {
    let mut leader = node();
    let peer: &[u8] = b"http://10.0.0.1:2380";
    let member = NewMember { id: 1, name: b"one", peer_urls: &[peer], client_urls: &[], is_learner: false };
    apply(&mut leader, &Request::MemberAdd(member)).unwrap();
    apply(&mut leader, &Request::LeaseGrant { id: 7, ttl: 60 }).unwrap();
    apply(&mut leader, &Request::Put { key: b"a", value: b"1", lease: 7 }).unwrap();
    apply(&mut leader, &Request::Put { key: b"a", value: b"2", lease: 7 }).unwrap();
    apply(&mut leader, &Request::Put { key: b"b", value: b"3", lease: 0 }).unwrap();
    apply(&mut leader, &Request::UserAdd { name: b"u", password_hash: b"h", no_password: false }).unwrap();
    apply(&mut leader, &Request::AlarmActivate(Alarm { member: 1, kind: AlarmType::Nospace })).unwrap();
    let mut v2 = std::vec::Vec::new();
    leader.v2_snapshot_data(&mut v2).unwrap();
    let config = *leader.config();
    let opened = Node::<VecBackend, Growable>::open(config, leader.backend().clone(), &v2).unwrap();

    let mut fresh = Node::<VecBackend, Growable>::new(config, leader.backend().clone());
    Node::open_in_place(&mut fresh, &v2).unwrap();
    assert_eq!(fresh.stores(), opened.stores());
    assert_eq!(fresh.progress(), opened.progress());

    // A node that held another state, with a cluster version (so other capabilities).
    let mut used = node();
    apply(&mut used, &Request::ClusterVersion(Version { major: 3, minor: 6, patch: 0 })).unwrap();
    apply(&mut used, &Request::Put { key: b"z", value: b"9", lease: 0 }).unwrap();
    used.backend = leader.backend().clone();
    Node::open_in_place(&mut used, &v2).unwrap();
    assert_eq!(used.stores(), opened.stores());
    assert_eq!(used.progress(), opened.progress());
    assert_eq!(used.stores().lessor.items().len(), 1);
    assert_eq!(used.stores().kv.index_len(), 3);
}

#[test]
fn revisions_versions_and_generations_follow_etcd() {
    let mut n = node();
    assert_eq!(apply(&mut n, &Request::Put { key: b"a", value: b"1", lease: 0 }), Ok(2));
    assert_eq!(apply(&mut n, &Request::Put { key: b"a", value: b"2", lease: 0 }), Ok(3));
    assert_eq!(get(&n, b"a", 0), Ok(Some((b"2".to_vec(), 2, 3, 2, 0))));
    assert_eq!(get(&n, b"a", 2), Ok(Some((b"1".to_vec(), 2, 2, 1, 0))));
    assert_eq!(apply(&mut n, &Request::DeleteRange { key: b"a", range_end: b"" }), Ok(4));
    assert_eq!(get(&n, b"a", 0), Ok(None));
    // A new generation starts with version 1 and a new create revision.
    assert_eq!(apply(&mut n, &Request::Put { key: b"a", value: b"3", lease: 0 }), Ok(5));
    assert_eq!(get(&n, b"a", 0), Ok(Some((b"3".to_vec(), 5, 5, 1, 0))));
    assert_eq!(get(&n, b"a", 6), Err(StoreError::FutureRevision { requested: 6, current: 5 }));
    // Deleting nothing makes no revision.
    assert_eq!(apply(&mut n, &Request::DeleteRange { key: b"zz", range_end: b"" }), Ok(5));
}

/// The index-only count agrees with a read at every revision of a history with deletes,
/// a new generation, ranges and a compaction.
#[test]
fn a_count_from_the_key_index_is_what_a_read_finds_at_every_revision() {
    let mut n = node();
    for (key, value) in [(b"a", b"1"), (b"b", b"2"), (b"a", b"3"), (b"c", b"4")] {
        apply(&mut n, &Request::Put { key, value, lease: 0 }).unwrap();
    }
    apply(&mut n, &Request::DeleteRange { key: b"a", range_end: b"" }).unwrap();
    apply(&mut n, &Request::Put { key: b"a", value: b"5", lease: 0 }).unwrap();
    apply(&mut n, &Request::DeleteRange { key: b"b", range_end: b"c" }).unwrap();
    let read = |n: &TestNode, key: &[u8], end: &[u8], at: i64| {
        let mut found = 0;
        n.stores().kv.range(&n.backend().read().unwrap(), key, end, at, &mut |_| found += 1).map(|()| found)
    };
    let current = n.stores().kv.current_revision();
    for at in 0..=current {
        for (key, end) in [(&b"a"[..], &b""[..]), (b"a", b"c"), (b"", b"\0"), (b"b", b"\0")] {
            assert_eq!(n.stores().kv.count(key, end, at), read(&n, key, end, at), "{key:?}..{end:?} at {at}");
        }
    }
    assert_eq!(n.stores().kv.count(b"", b"\0", 0), Ok(2));
    assert_eq!(n.stores().kv.count(b"", b"\0", 5), Ok(3));
    assert!(matches!(n.stores().kv.count(b"", b"\0", current + 1), Err(StoreError::FutureRevision { .. })));
    apply(&mut n, &Request::Compact { revision: current }).unwrap();
    assert!(matches!(n.stores().kv.count(b"", b"\0", 2), Err(StoreError::Compacted { .. })));
    assert_eq!(n.stores().kv.count(b"", b"\0", 0), Ok(2));
}

fn key_records(n: &TestNode) -> usize {
    let mut records = 0;
    n.backend()
        .read()
        .unwrap()
        .scan(crate::backend::Bucket::Key, &[], &mut |_, _| {
            records += 1;
            core::ops::ControlFlow::Continue(())
        })
        .unwrap();
    records
}

#[test]
fn compaction_keeps_the_latest_live_revision_and_drops_history() {
    let mut n = node();
    for v in [b"1", b"2", b"3"] {
        apply(&mut n, &Request::Put { key: b"a", value: v, lease: 0 }).unwrap();
    }
    apply(&mut n, &Request::Put { key: b"b", value: b"x", lease: 0 }).unwrap();
    apply(&mut n, &Request::DeleteRange { key: b"b", range_end: b"" }).unwrap();
    apply(&mut n, &Request::Put { key: b"c", value: b"y", lease: 0 }).unwrap();
    apply(&mut n, &Request::Compact { revision: 7 }).unwrap();
    assert_eq!(n.stores().kv.compact_revision(), 7);
    assert_eq!(get(&n, b"a", 0).unwrap().map(|v| v.0), Some(b"3".to_vec()));
    assert_eq!(get(&n, b"a", 3), Err(StoreError::Compacted { requested: 3, compacted: 7 }));
    // Only a@4 and c@7 survive: older revisions of a and b with its older tombstone are gone
    // from index and backend.
    assert_eq!(n.stores().kv.index_len(), 2);
    assert_eq!(key_records(&n), 2);
    assert_eq!(
        apply(&mut n, &Request::Compact { revision: 7 }),
        Err(StoreError::Compacted { requested: 7, compacted: 7 })
    );
}

#[test]
fn compaction_at_a_tombstones_revision_keeps_the_tombstone() {
    // etcd 3.6 `keyIndex.doCompact` (TestRestoreTombstone): the tombstone at exactly the
    // compaction revision stays, in the index and in the `key` bucket, until a later
    // compaction passes it.
    let mut n = node();
    apply(&mut n, &Request::Put { key: b"b", value: b"x", lease: 0 }).unwrap();
    apply(&mut n, &Request::DeleteRange { key: b"b", range_end: b"" }).unwrap();
    apply(&mut n, &Request::Compact { revision: 3 }).unwrap();
    let entries: std::vec::Vec<_> = n.stores().kv.entries().map(|(k, r, t)| (k.to_vec(), r.main, t)).collect();
    assert_eq!(entries, [(b"b".to_vec(), 3, true)]);
    assert_eq!(key_records(&n), 1);
    apply(&mut n, &Request::Put { key: b"c", value: b"y", lease: 0 }).unwrap();
    apply(&mut n, &Request::Compact { revision: 4 }).unwrap();
    let entries: std::vec::Vec<_> = n.stores().kv.entries().map(|(k, r, t)| (k.to_vec(), r.main, t)).collect();
    assert_eq!(entries, [(b"c".to_vec(), 4, false)]);
    assert_eq!(key_records(&n), 1);
}

#[test]
fn leases_floor_ttl_attach_keys_and_revoke_deletes_them() {
    let mut n = node();
    apply(&mut n, &Request::LeaseGrant { id: 7, ttl: 1 }).unwrap();
    assert_eq!(n.stores().lessor.lease(7).map(|l| (l.ttl, l.expiry)), Some((5, Expiry::Forever)));
    assert_eq!(apply(&mut n, &Request::Put { key: b"k", value: b"v", lease: 8 }), Err(StoreError::NotFound("lease")));
    apply(&mut n, &Request::Put { key: b"k", value: b"v", lease: 7 }).unwrap();
    apply(&mut n, &Request::Put { key: b"j", value: b"v", lease: 7 }).unwrap();
    apply(&mut n, &Request::Put { key: b"j", value: b"w", lease: 0 }).unwrap();
    assert_eq!(n.stores().lessor.items().len(), 1);
    apply(&mut n, &Request::LeaseRevoke { id: 7 }).unwrap();
    assert_eq!(get(&n, b"k", 0), Ok(None));
    assert_eq!(get(&n, b"j", 0).unwrap().map(|v| v.0), Some(b"w".to_vec()));
    assert!(n.stores().lessor.leases().is_empty());
    n.promote(1_000, 0);
    apply(&mut n, &Request::LeaseGrant { id: 9, ttl: 10 }).unwrap();
    n.promote(1_000, 500);
    assert_eq!(n.stores().lessor.lease(9).map(|l| l.expiry), Some(Expiry::At(11_500)));
}

#[test]
fn auth_needs_root_and_builds_the_permission_cache() {
    let mut n = node();
    assert_eq!(apply(&mut n, &Request::AuthSetEnabled(true)), Err(StoreError::NotFound("root user")));
    for name in [&b"root"[..], b"alice"] {
        apply(&mut n, &Request::UserAdd { name, password_hash: b"h", no_password: false }).unwrap();
    }
    apply(&mut n, &Request::UserGrantRole { user: b"root", role: b"root" }).unwrap();
    apply(&mut n, &Request::RoleAdd { name: b"reader" }).unwrap();
    let grant =
        Request::RoleGrantPermission { role: b"reader", kind: PermissionType::Read, key: b"a", range_end: b"c" };
    apply(&mut n, &grant).unwrap();
    apply(&mut n, &Request::UserGrantRole { user: b"alice", role: b"reader" }).unwrap();
    apply(&mut n, &Request::AuthSetEnabled(true)).unwrap();
    let auth = &n.stores().auth;
    assert_eq!(auth.token_provider(), TokenProvider::Enabled);
    assert!(auth.is_permitted(b"alice", b"b", false));
    assert!(!auth.is_permitted(b"alice", b"b", true));
    assert!(!auth.is_permitted(b"alice", b"c", false));
    assert!(auth.is_permitted(b"root", b"zzz", true));
    assert_eq!(auth.revision(), 7);
}

#[test]
fn membership_and_v2_track_member_changes() {
    let mut n = node();
    let url: &[u8] = b"http://10.0.0.2:2380";
    let add =
        Request::MemberAdd(NewMember { id: 2, name: b"b", peer_urls: &[url], client_urls: &[], is_learner: true });
    apply(&mut n, &add).unwrap();
    assert_eq!(apply(&mut n, &add), Err(StoreError::AlreadyExists("member")));
    apply(&mut n, &Request::ClusterVersion(Version { major: 3, minor: 6, patch: 0 })).unwrap();
    assert!(n.stores().membership.capabilities().auth);
    apply(&mut n, &Request::MemberRemove { id: 2 }).unwrap();
    assert_eq!(n.stores().membership.removed(), &[2]);
    assert_eq!(apply(&mut n, &add), Err(StoreError::InvalidRequest("member id was removed")));
    assert!(n.stores().v2.is_membership_only());
    let paths: std::vec::Vec<&[u8]> = n.stores().v2.nodes().iter().map(|x| x.path.as_slice()).collect();
    assert_eq!(paths, [&b"/0/removed_members/0000000000000002"[..]]);
}

#[test]
fn alarms_are_per_member_and_kind() {
    let mut n = node();
    let a = Alarm { member: 3, kind: AlarmType::Nospace };
    apply(&mut n, &Request::AlarmActivate(a)).unwrap();
    apply(&mut n, &Request::AlarmActivate(Alarm { member: 3, kind: AlarmType::Corrupt })).unwrap();
    apply(&mut n, &Request::AlarmActivate(a)).unwrap();
    assert_eq!(n.stores().alarms.alarms().len(), 2);
    apply(&mut n, &Request::AlarmDeactivate(a)).unwrap();
    assert_eq!(n.stores().alarms.alarms(), &[Alarm { member: 3, kind: AlarmType::Corrupt }]);
}

#[test]
fn entries_at_or_below_the_applied_index_are_skipped() {
    let mut n = node();
    n.apply(5, 1, &Request::Put { key: b"a", value: b"1", lease: 0 }).unwrap();
    n.apply(5, 1, &Request::Put { key: b"a", value: b"2", lease: 0 }).unwrap();
    n.apply(3, 1, &Request::Put { key: b"a", value: b"3", lease: 0 }).unwrap();
    assert_eq!(get(&n, b"a", 0).unwrap().map(|v| v.0), Some(b"1".to_vec()));
    assert_eq!(n.stores().cindex.index(), 5);
}

#[test]
fn a_full_fixed_node_refuses_the_request_and_keeps_its_state() {
    let mut n = Node::<MemBackend<16, 32, 64>, Fixed<2, 32>>::new(
        Config { id: 1, min_lease_ttl: 5, v2_deprecation: V2Deprecation::WriteOnly },
        MemBackend::default(),
    );
    n.apply(1, 1, &Request::Put { key: b"a", value: b"1", lease: 0 }).unwrap();
    n.apply(2, 1, &Request::Put { key: b"b", value: b"1", lease: 0 }).unwrap();
    let before = n.stores().clone();
    let full = n.apply(3, 1, &Request::Put { key: b"c", value: b"1", lease: 0 });
    assert!(matches!(full, Err(StoreError::Capacity(_))), "{full:?}");
    assert_eq!(n.stores(), &before);
    assert_eq!(n.progress().applied_index, 2);
    let long = [b'x'; 40];
    assert!(matches!(n.apply(3, 1, &Request::Put { key: &long, value: b"1", lease: 0 }), Err(StoreError::Capacity(_))));
    assert_eq!(n.stores(), &before);
}

#[test]
fn bytes_of_compacted_keys_are_reclaimed_when_the_arena_fills() {
    crate::fixed_profile! {
        Small {
            bytes: 32, record_bytes: 128, keys: 128, key_bytes: 2048, leases: 1, lease_items: 1, alarms: 1,
            users: 1, roles_per_user: 1, roles: 1, permissions_per_role: 1, permission_cache: 1,
            members: 1, urls_per_member: 1, removed: 1, v2_nodes: 1,
        }
    }
    // A 2 KiB arena: 60 keys of 30 bytes fill it most of the way.
    let mut n = Node::<MemBackend<200, 32, 96>, Small>::new(
        Config { id: 1, min_lease_ttl: 5, v2_deprecation: V2Deprecation::WriteOnly },
        MemBackend::default(),
    );
    let key = |round: u8, i: u8| [[b'a' + round; 28].as_slice(), &[b'0' + i / 10, b'0' + i % 10]].concat();
    let mut index = 0;
    let mut next = || {
        index += 1;
        index
    };
    for i in 0..60 {
        n.apply(next(), 1, &Request::Put { key: &key(0, i), value: b"v", lease: 0 })
            .map_err(|e| e.to_string())
            .unwrap();
    }
    n.apply(next(), 1, &Request::DeleteRange { key: b"a", range_end: b"b" }).unwrap();
    // A put after the deletions, so compacting at it drops their tombstones (a tombstone at
    // exactly the compaction revision would stay).
    n.apply(next(), 1, &Request::Put { key: b"z", value: b"v", lease: 0 }).unwrap();
    let rev = n.stores().kv.current_revision();
    n.apply(next(), 1, &Request::Compact { revision: rev }).unwrap();
    assert_eq!(n.stores().kv.index_len(), 1);
    // 60 new keys do not fit beside the old bytes: the arena reclaims them.
    for i in 0..60 {
        n.apply(next(), 1, &Request::Put { key: &key(1, i), value: b"v", lease: 0 })
            .map_err(|e| e.to_string())
            .unwrap();
    }
    assert_eq!(n.stores().kv.arena_len(), 60 * 30 + 1);
    let mut found = std::vec::Vec::new();
    n.stores()
        .kv
        .range(&n.backend().read().unwrap(), &key(1, 7), &[], 0, &mut |kv| found.push(kv.value.to_vec()))
        .unwrap();
    assert_eq!(found, [b"v".to_vec()]);
}

#[test]
fn role_delete_revokes_it_from_users_and_refreshes_the_cache() {
    let mut n = node();
    apply(&mut n, &Request::UserAdd { name: b"alice", password_hash: b"h", no_password: false }).unwrap();
    apply(&mut n, &Request::RoleAdd { name: b"rw" }).unwrap();
    let grant =
        Request::RoleGrantPermission { role: b"rw", kind: PermissionType::ReadWrite, key: b"k", range_end: b"" };
    apply(&mut n, &grant).unwrap();
    apply(&mut n, &Request::UserGrantRole { user: b"alice", role: b"rw" }).unwrap();
    assert_eq!(n.stores().auth.permission_cache().len(), 1);
    apply(&mut n, &Request::RoleDelete { name: b"rw" }).unwrap();
    assert!(n.stores().auth.users()[0].roles.is_empty());
    assert!(n.stores().auth.permission_cache().is_empty());
    assert_eq!(apply(&mut n, &Request::RoleDelete { name: b"rw" }), Err(StoreError::NotFound("role")));
    // What recovering from the backend gives matches, so the deletion reached the buckets.
    assert_eq!(AuthStore::<Growable>::recover(n.backend()).unwrap(), n.stores().auth);
}

#[test]
fn learners_are_promoted_and_members_move() {
    let mut n = node();
    let url: &[u8] = b"http://10.0.0.2:2380";
    let add =
        Request::MemberAdd(NewMember { id: 2, name: b"b", peer_urls: &[url], client_urls: &[], is_learner: true });
    apply(&mut n, &add).unwrap();
    apply(&mut n, &Request::MemberPromote { id: 2 }).unwrap();
    assert_eq!(
        apply(&mut n, &Request::MemberPromote { id: 2 }),
        Err(StoreError::InvalidRequest("can only promote a learner member"))
    );
    let moved: &[u8] = b"http://10.0.0.9:2380";
    apply(&mut n, &Request::MemberUpdate { id: 2, peer_urls: &[moved] }).unwrap();
    let m = n.stores().membership.member(2).unwrap();
    assert!(!m.is_learner);
    assert_eq!(m.peer_urls, std::vec![moved.to_vec()]);
    assert_eq!(Membership::<Growable>::recover(n.backend()).unwrap(), n.stores().membership);
    // A member publishes its name and client URLs once it started; its peer URLs stay.
    let client: &[u8] = b"http://10.0.0.9:2379";
    apply(&mut n, &Request::MemberAttrSet { id: 2, name: b"infra2", client_urls: &[client] }).unwrap();
    let m = n.stores().membership.member(2).unwrap();
    assert_eq!((m.name.as_slice(), m.client_urls.clone()), (&b"infra2"[..], std::vec![client.to_vec()]));
    assert_eq!(m.peer_urls, std::vec![moved.to_vec()]);
    assert_eq!(Membership::<Growable>::recover(n.backend()).unwrap(), n.stores().membership);
    assert_eq!(
        apply(&mut n, &Request::MemberAttrSet { id: 9, name: b"x", client_urls: &[] }),
        Err(StoreError::NotFound("member"))
    );
}

#[test]
fn a_checkpointed_lease_keeps_its_remaining_ttl_through_recovery() {
    let mut n = node();
    apply(&mut n, &Request::ClusterVersion(Version { major: 3, minor: 6, patch: 0 })).unwrap();
    apply(&mut n, &Request::LeaseGrant { id: 3, ttl: 60 }).unwrap();
    apply(&mut n, &Request::LeaseCheckpoint { id: 3, remaining_ttl: 17 }).unwrap();
    let recovered = Lessor::<Growable>::load(&n.backend().read().unwrap(), 5).unwrap();
    assert_eq!(recovered.lease(3).map(|l| (l.ttl, l.remaining_ttl)), Some((60, 17)));
    n.promote(0, 0);
    assert_eq!(n.stores().lessor.lease(3).map(|l| l.expiry), Some(Expiry::At(17_000)));
    // A checkpoint of 0 (what a renewal sends) clears the remaining TTL; one for a lease
    // that is gone is a no-op.
    apply(&mut n, &Request::LeaseCheckpoint { id: 3, remaining_ttl: 0 }).unwrap();
    apply(&mut n, &Request::LeaseCheckpoint { id: 99, remaining_ttl: 5 }).unwrap();
    let recovered = Lessor::<Growable>::load(&n.backend().read().unwrap(), 5).unwrap();
    assert_eq!(recovered.lease(3).map(|l| l.remaining_ttl), Some(0));
    assert!(recovered.lease(99).is_none());
}

#[test]
fn checkpoints_before_cluster_version_3_6_stay_in_memory() {
    let mut n = node();
    apply(&mut n, &Request::ClusterVersion(Version { major: 3, minor: 5, patch: 0 })).unwrap();
    apply(&mut n, &Request::LeaseGrant { id: 3, ttl: 60 }).unwrap();
    apply(&mut n, &Request::LeaseCheckpoint { id: 3, remaining_ttl: 17 }).unwrap();
    assert_eq!(n.stores().lessor.lease(3).map(|l| l.remaining_ttl), Some(17));
    let recovered = Lessor::<Growable>::load(&n.backend().read().unwrap(), 5).unwrap();
    assert_eq!(recovered.lease(3).map(|l| l.remaining_ttl), Some(0));
}

#[test]
fn lease_ttls_are_raised_to_the_minimum_and_capped() {
    let mut n = node();
    apply(&mut n, &Request::LeaseGrant { id: 1, ttl: 0 }).unwrap();
    apply(&mut n, &Request::LeaseGrant { id: 2, ttl: -7 }).unwrap();
    apply(&mut n, &Request::LeaseGrant { id: 3, ttl: crate::store::MAX_LEASE_TTL }).unwrap();
    let r = apply(&mut n, &Request::LeaseGrant { id: 4, ttl: crate::store::MAX_LEASE_TTL + 1 });
    assert_eq!(r, Err(StoreError::InvalidRequest("lease ttl too large")));
    let ttls: std::vec::Vec<_> = n.stores().lessor.leases().iter().map(|l| (l.id, l.ttl)).collect();
    assert_eq!(ttls, [(1, 5), (2, 5), (3, crate::store::MAX_LEASE_TTL)]);
    let recovered = Lessor::<Growable>::load(&n.backend().read().unwrap(), 1).unwrap();
    assert_eq!(recovered.lease(2).map(|l| l.ttl), Some(5));
}

#[test]
fn revoking_a_lease_deletes_its_keys_in_one_revision() {
    let mut n = node();
    apply(&mut n, &Request::LeaseGrant { id: 7, ttl: 10 }).unwrap();
    for k in [&b"c"[..], b"a", b"b"] {
        apply(&mut n, &Request::Put { key: k, value: b"v", lease: 7 }).unwrap();
    }
    assert_eq!(apply(&mut n, &Request::LeaseRevoke { id: 7 }), Ok(5));
    let tombstones: std::vec::Vec<_> =
        n.stores().kv.entries().filter(|e| e.2).map(|(k, r, _)| (k.to_vec(), r.main, r.sub)).collect();
    assert_eq!(tombstones, [(b"a".to_vec(), 5, 0), (b"b".to_vec(), 5, 1), (b"c".to_vec(), 5, 2)]);
    // A lease without keys makes no revision.
    apply(&mut n, &Request::LeaseGrant { id: 8, ttl: 10 }).unwrap();
    assert_eq!(apply(&mut n, &Request::LeaseRevoke { id: 8 }), Ok(5));
    assert_eq!(KvStore::<Growable>::load(&n.backend().read().unwrap(), &mut Lessor::new(1)).unwrap().0, n.stores().kv);
}

#[test]
fn a_rejected_request_still_moves_the_consistent_index() {
    let mut n = node();
    let r = n.apply(4, 2, &Request::LeaseRevoke { id: 9 });
    assert_eq!(r, Err(StoreError::NotFound("lease")));
    assert_eq!((n.progress().applied_index, n.progress().applied_term), (4, 2));
    assert_eq!(ConsistentIndex::load(&n.backend().read().unwrap()).unwrap().index(), 4);
    assert_eq!(n.stores().cindex.index(), 4);
    assert_eq!(n.stores().kv.current_revision(), 1);
}

#[test]
fn alarms_gate_what_the_node_accepts() {
    let mut n = node();
    apply(&mut n, &Request::Put { key: b"a", value: b"1", lease: 0 }).unwrap();
    let nospace = Alarm { member: 1, kind: AlarmType::Nospace };
    apply(&mut n, &Request::AlarmActivate(nospace)).unwrap();
    assert_eq!(apply(&mut n, &Request::Put { key: b"b", value: b"1", lease: 0 }), Err(StoreError::NoSpace));
    assert_eq!(apply(&mut n, &Request::LeaseGrant { id: 1, ttl: 10 }), Err(StoreError::NoSpace));
    assert_eq!(StoreError::NoSpace.to_string(), "database space exceeded (a NOSPACE alarm is active)");
    // Deleting and compacting make room, so they pass.
    assert_eq!(apply(&mut n, &Request::DeleteRange { key: b"a", range_end: b"" }), Ok(3));
    apply(&mut n, &Request::Compact { revision: 2 }).unwrap();
    apply(&mut n, &Request::AlarmDeactivate(nospace)).unwrap();
    apply(&mut n, &Request::Put { key: b"b", value: b"1", lease: 0 }).unwrap();
    apply(&mut n, &Request::AlarmActivate(Alarm { member: 2, kind: AlarmType::Corrupt })).unwrap();
    for r in [
        Request::Put { key: b"c", value: b"1", lease: 0 },
        Request::DeleteRange { key: b"b", range_end: b"" },
        Request::Compact { revision: 3 },
        Request::LeaseGrant { id: 1, ttl: 10 },
    ] {
        assert_eq!(apply(&mut n, &r), Err(StoreError::CorruptAlarm), "{r:?}");
    }
    // Membership and auth are not gated.
    apply(&mut n, &Request::RoleAdd { name: b"r" }).unwrap();
    assert_eq!(get(&n, b"b", 0).unwrap().map(|v| v.0), Some(b"1".to_vec()));
}

#[test]
fn auth_revision_starts_at_1_and_enabling_is_idempotent() {
    let mut n = node();
    assert_eq!(n.stores().auth.revision(), 1);
    assert_eq!(AuthStore::<Growable>::recover(n.backend()).unwrap().revision(), 1);
    apply(&mut n, &Request::AuthSetEnabled(false)).unwrap();
    assert_eq!(n.stores().auth.revision(), 1);
    apply(&mut n, &Request::UserAdd { name: b"root", password_hash: b"h", no_password: false }).unwrap();
    apply(&mut n, &Request::UserGrantRole { user: b"root", role: b"root" }).unwrap();
    assert_eq!(n.stores().auth.revision(), 3);
    // Granting a role the user has writes nothing.
    apply(&mut n, &Request::UserGrantRole { user: b"root", role: b"root" }).unwrap();
    assert_eq!(n.stores().auth.revision(), 3);
    apply(&mut n, &Request::AuthSetEnabled(true)).unwrap();
    apply(&mut n, &Request::AuthSetEnabled(true)).unwrap();
    assert_eq!(n.stores().auth.revision(), 3);
    apply(&mut n, &Request::AuthSetEnabled(false)).unwrap();
    apply(&mut n, &Request::AuthSetEnabled(false)).unwrap();
    assert_eq!(n.stores().auth.revision(), 4);
    assert_eq!(AuthStore::<Growable>::recover(n.backend()).unwrap(), n.stores().auth);
}

#[test]
fn role_permissions_are_checked_sorted_by_key_and_found_by_first_key_as_in_etcd() {
    let mut n = node();
    apply(&mut n, &Request::RoleAdd { name: b"r" }).unwrap();
    let grant = |key: &'static [u8], range_end: &'static [u8], kind| Request::RoleGrantPermission {
        role: b"r",
        kind,
        key,
        range_end,
    };
    for (k, e) in [(&b"m"[..], &b""[..]), (b"c", b"d"), (b"x", b"\0"), (b"c", b"")] {
        apply(&mut n, &grant(k, e, PermissionType::Read)).unwrap();
    }
    // An empty key or a range end below the key is refused.
    assert_eq!(
        apply(&mut n, &grant(b"", b"", PermissionType::Read)),
        Err(StoreError::InvalidRequest("invalid permission range"))
    );
    assert_eq!(
        apply(&mut n, &grant(b"q", b"p", PermissionType::Read)),
        Err(StoreError::InvalidRequest("invalid permission range"))
    );
    // The lookup sees only the first permission with key `c`, (c, d): granting (c, "") again
    // adds a second one after it, as etcd does; granting (c, d) again updates it in place.
    apply(&mut n, &grant(b"c", b"", PermissionType::Write)).unwrap();
    apply(&mut n, &grant(b"c", b"d", PermissionType::ReadWrite)).unwrap();
    let perms = |n: &TestNode| -> std::vec::Vec<(std::vec::Vec<u8>, std::vec::Vec<u8>, PermissionType)> {
        n.stores().auth.roles()[0].permissions.iter().map(|p| (p.key.clone(), p.range_end.clone(), p.kind)).collect()
    };
    assert_eq!(
        perms(&n),
        [
            (b"c".to_vec(), b"d".to_vec(), PermissionType::ReadWrite),
            (b"c".to_vec(), b"".to_vec(), PermissionType::Read),
            (b"c".to_vec(), b"".to_vec(), PermissionType::Write),
            (b"m".to_vec(), b"".to_vec(), PermissionType::Read),
            (b"x".to_vec(), b"\0".to_vec(), PermissionType::Read),
        ]
    );
    assert_eq!(AuthStore::<Growable>::recover(n.backend()).unwrap(), n.stores().auth);
}

#[test]
fn host_records_hold_more_than_the_old_fixed_caps() {
    let mut n = node();
    apply(&mut n, &Request::RoleAdd { name: b"r" }).unwrap();
    apply(&mut n, &Request::UserAdd { name: b"u", password_hash: b"h", no_password: true }).unwrap();
    for i in 0..40u8 {
        let key = [b'k', i];
        let r = Request::RoleGrantPermission { role: b"r", kind: PermissionType::Read, key: &key, range_end: b"" };
        apply(&mut n, &r).unwrap();
        let role = [b'r', b'0' + i / 10, b'0' + i % 10];
        apply(&mut n, &Request::RoleAdd { name: &role }).unwrap();
        apply(&mut n, &Request::UserGrantRole { user: b"u", role: &role }).unwrap();
    }
    let urls: std::vec::Vec<std::vec::Vec<u8>> =
        (0..12).map(|i| format!("http://10.0.0.{i}:2380").into_bytes()).collect();
    let urls: std::vec::Vec<&[u8]> = urls.iter().map(|u| u.as_slice()).collect();
    apply(
        &mut n,
        &Request::MemberAdd(NewMember {
            id: 5,
            name: b"e",
            peer_urls: &urls[..crate::store::MAX_MEMBER_URLS],
            client_urls: &urls,
            is_learner: false,
        }),
    )
    .unwrap();
    assert_eq!(AuthStore::<Growable>::recover(n.backend()).unwrap(), n.stores().auth);
    assert_eq!(n.stores().auth.roles()[0].permissions.len(), 40);
    let m = Membership::<Growable>::recover(n.backend()).unwrap();
    assert_eq!(m.member(5).map(|m| (m.peer_urls.len(), m.client_urls.len())), Some((8, 12)));
}

/// A member with more peer URLs than a follower's transport takes would make a snapshot
/// every follower refuses: the request is refused, typed, and nothing changes (not even the
/// applied index: the entry is not applied).
#[test]
fn a_member_no_follower_could_restore_is_refused_and_changes_nothing() {
    let mut n = node();
    let urls: std::vec::Vec<std::vec::Vec<u8>> =
        (0..9).map(|i| format!("http://10.0.0.{i}:2380").into_bytes()).collect();
    let urls: std::vec::Vec<&[u8]> = urls.iter().map(|u| u.as_slice()).collect();
    let add =
        |peer_urls| Request::MemberAdd(NewMember { id: 5, name: b"e", peer_urls, client_urls: &[], is_learner: false });
    let before = (n.stores().clone(), n.progress().clone(), crate::backend::dump(&n.backend().read().unwrap()));
    let next = n.progress().applied_index + 1;
    let err = n.apply(next, 1, &add(&urls)).unwrap_err();
    assert!(matches!(err, StoreError::Capacity(c) if c.what.contains("at most 8")), "{err}");
    assert!(!err.is_rejection());
    let after = (n.stores().clone(), n.progress().clone(), crate::backend::dump(&n.backend().read().unwrap()));
    assert_eq!(after, before);
    // Eight are taken, and a move to nine is refused as well.
    n.apply(next, 1, &add(&urls[..8])).unwrap();
    let r = n.apply(next + 1, 1, &Request::MemberUpdate { id: 5, peer_urls: &urls });
    assert!(matches!(r, Err(StoreError::Capacity(_))), "{r:?}");
    assert_eq!(n.stores().membership.member(5).map(|m| m.peer_urls.len()), Some(8));
}

#[test]
fn member_changes_refuse_peer_urls_in_use_and_extra_learners() {
    let mut n = node();
    let (u1, u2, u3): (&[u8], &[u8], &[u8]) = (b"http://a:2380", b"http://b:2380", b"http://c:2380");
    let add = |id, url: &'static [u8], is_learner| {
        let urls: &'static [&'static [u8]] = std::vec![url].leak();
        Request::MemberAdd(NewMember { id, name: b"m", peer_urls: urls, client_urls: &[], is_learner })
    };
    apply(&mut n, &add(1, u1, false)).unwrap();
    apply(&mut n, &add(2, u2, true)).unwrap();
    assert_eq!(apply(&mut n, &add(3, u1, false)), Err(StoreError::AlreadyExists("peer url")));
    assert_eq!(
        apply(&mut n, &add(3, u3, true)),
        Err(StoreError::InvalidRequest("too many learner members in cluster"))
    );
    assert_eq!(
        apply(&mut n, &Request::MemberUpdate { id: 2, peer_urls: &[u1] }),
        Err(StoreError::AlreadyExists("peer url"))
    );
    // A member may keep its own URL.
    apply(&mut n, &Request::MemberUpdate { id: 2, peer_urls: &[u2, u3] }).unwrap();
    assert_eq!(n.stores().membership.members().len(), 2);
}

#[test]
fn cancelling_a_downgrade_clears_its_target() {
    let mut n = node();
    let target = Version { major: 3, minor: 5, patch: 0 };
    apply(&mut n, &Request::Downgrade(Downgrade { enabled: true, target })).unwrap();
    apply(&mut n, &Request::Downgrade(Downgrade { enabled: false, target })).unwrap();
    assert_eq!(n.stores().membership.downgrade(), Downgrade::default());
}

#[test]
fn a_nodes_image_is_its_metadata_records_and_v2_data_and_a_full_v2_buffer_is_an_error() {
    let mut leader = node();
    let url: &[u8] = b"http://127.0.0.1:2380";
    let member = NewMember { id: 2, name: b"b", peer_urls: &[url], client_urls: &[], is_learner: false };
    apply(&mut leader, &Request::MemberAdd(member)).unwrap();
    apply(&mut leader, &Request::Put { key: b"k", value: b"v", lease: 0 }).unwrap();
    let mut image = std::vec::Vec::new();
    let (metadata, summary) = leader.encode_image(&mut std::vec::Vec::new(), &mut image).unwrap();
    // The same bytes as the image encoded by hand from the node's parts.
    let mut v2 = std::vec::Vec::new();
    leader.v2_snapshot_data(&mut v2).unwrap();
    assert!(!v2.is_empty(), "a member puts v2 data in the image");
    let mut by_hand = std::vec::Vec::new();
    let txn = leader.backend().read().unwrap();
    assert_eq!(crate::image::encode(&leader.snapshot_metadata().unwrap(), &txn, &v2, &mut by_hand).unwrap(), summary);
    assert_eq!(image, by_hand);
    assert_eq!(metadata.index, leader.progress().applied_index);
    // A device's v2 buffer too small for the data: an error naming the node, nothing written.
    let mut small = heapless::Vec::<u8, 4>::new();
    let mut out = std::vec::Vec::new();
    let err = leader.encode_image(&mut small, &mut out).unwrap_err();
    assert!(matches!(err, crate::image::EncodeError::Node(_)), "{err:?}");
    assert!(out.is_empty());
}
