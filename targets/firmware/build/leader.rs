//! The leader the firmware's snapshot comes from, built on the host by the build script: the
//! reference profile filled (500 keys of 16 to 32 bytes, some overwritten, some deleted, the
//! history compacted), eight leases with attached keys, three members, two users and two roles
//! with permissions, auth enabled.

use std::error::Error;

use snapply_core::NoObserver;
use snapply_core::image;
use snapply_core::mem::VecBackend;
use snapply_core::memports::{MemSnapshotStore, PeerTable};
use snapply_core::ports::Ports;
use snapply_core::store::{NewMember, PermissionType, V2Deprecation};
use snapply_core::{Config, Node, Request, Snapshot, apply_snapshot};

use crate::shared::{DEVICE, Device, Digests, digests, writes_after_restore};

/// Number of distinct keys the leader puts before the first snapshot: the reference profile's
/// 500 (`shared::Device`: 512 key revisions, 12 KiB of key arena). Each snapshot's key index
/// holds 500 revisions (about 500 live keys, one revision each), and the device's entries after
/// a restore (a put, an overwrite, a range deletion of 10 keys) fill it to its 512 revisions.
pub const KEYS: u32 = 500;
/// Keys the leader adds between the two snapshots (it deletes three), so that the second
/// snapshot's key index, with the tombstone its compaction keeps, is as large as the first's.
const MORE_KEYS: u32 = 2;
/// Keys attached to leases (the reference profile holds 16 lease items).
const LEASED_KEYS: u32 = 16;
/// Leases granted (the reference profile holds 8).
const LEASES: u32 = 8;

/// What the build script hands the firmware.
pub struct Generated {
    /// The snapshot image (format version 2).
    pub image: Vec<u8>,
    /// The snapshot's index and term.
    pub index: u64,
    /// The snapshot's term.
    pub term: u64,
    /// The state a follower with the device's configuration has after applying the image.
    pub expected: Digests,
    /// The same follower's state after `shared::writes_after_restore`, and its applied index.
    pub written: (Digests, u64),
    /// That state as a node re-opened from its backend holds it (`Node::open`): the same
    /// records; the same stores, though the key index's arena is laid out afresh.
    pub reopened: Digests,
    /// Keys live in the expected state (distinct keys with a current revision).
    pub live_keys: u32,
}

/// A key of 16 to 32 bytes, 24 on average: the reference profile's key lengths.
fn key(i: u32) -> Vec<u8> {
    let len = 16 + (i % 17) as usize;
    let mut k = format!("/device/c{i:05}/").into_bytes();
    k.resize(len.max(k.len()), b'k');
    k
}

fn value(i: u32, generation: u32) -> Vec<u8> {
    format!("value-{i}-{generation}").into_bytes()
}

/// Builds the leader and takes two snapshots of it, the second some entries after the first.
pub fn generate() -> Result<[Generated; 2], Box<dyn Error>> {
    let leader_config = Config { id: 1, min_lease_ttl: 5, v2_deprecation: V2Deprecation::WriteOnly };
    let mut leader = Node::<VecBackend, Device>::new(leader_config, VecBackend::default());
    let mut index = 0u64;
    let term = 3u64;
    let mut apply = |leader: &mut Node<VecBackend, Device>, request: Request<'_>| {
        index += 1;
        leader.apply(index, term, &request).map(drop)
    };

    let urls: [(&[u8], &[u8]); 3] = [
        (b"http://10.0.0.1:2380", b"http://10.0.0.1:2379"),
        (b"http://10.0.0.2:2380", b"http://10.0.0.2:2379"),
        (b"http://10.0.0.3:2380", b"http://10.0.0.3:2379"),
    ];
    for (n, (peer, client)) in urls.iter().enumerate() {
        let id = n as u64 + 1;
        let name = format!("node-{id}").into_bytes();
        let (peer, client) = ([*peer], [*client]);
        let member = NewMember { id, name: &name, peer_urls: &peer, client_urls: &client, is_learner: false };
        apply(&mut leader, Request::MemberAdd(member))?;
    }

    // The root role may use every key: from the key `\0` on (an empty key is no valid
    // permission range, as in etcd 3.5).
    let grants =
        [(&b"root"[..], &b"root"[..], &b"\0"[..], &b"\0"[..]), (b"sensor", b"writer", b"/device/", b"/device0")];
    for (user, role, key, end) in grants {
        apply(&mut leader, Request::RoleAdd { name: role })?;
        apply(
            &mut leader,
            Request::RoleGrantPermission { role, kind: PermissionType::ReadWrite, key, range_end: end },
        )?;
        apply(&mut leader, Request::UserAdd { name: user, password_hash: b"$2a$10$hash", no_password: false })?;
        apply(&mut leader, Request::UserGrantRole { user, role })?;
    }
    apply(&mut leader, Request::AuthSetEnabled(true))?;

    for lease in 1..=LEASES {
        apply(&mut leader, Request::LeaseGrant { id: i64::from(lease) * 100, ttl: 30 + i64::from(lease) })?;
    }
    for i in 0..KEYS {
        let lease = if i < LEASED_KEYS { i64::from(i % LEASES + 1) * 100 } else { 0 };
        apply(&mut leader, Request::Put { key: &key(i), value: &value(i, 0), lease })?;
    }
    // Overwrites and deletes make revisions and tombstones; the profile holds 512 revisions, so
    // the leader compacts at the current revision after every ten of them (the history goes,
    // one revision per key stays), and some deleted keys come back.
    let mut changes = 0u32;
    for i in (LEASED_KEYS..KEYS).step_by(13) {
        apply(&mut leader, Request::Put { key: &key(i), value: &value(i, 1), lease: 0 })?;
        changes += 1;
        if changes.is_multiple_of(10) {
            let revision = leader.stores().kv.current_revision();
            apply(&mut leader, Request::Compact { revision })?;
        }
    }
    let mut live: std::collections::BTreeSet<u32> = (0..KEYS).collect();
    for i in (LEASED_KEYS + 5..KEYS).step_by(37) {
        apply(&mut leader, Request::DeleteRange { key: &key(i), range_end: b"" })?;
        live.remove(&i);
        changes += 1;
        if changes.is_multiple_of(10) {
            let revision = leader.stores().kv.current_revision();
            apply(&mut leader, Request::Compact { revision })?;
        }
    }
    let revision = leader.stores().kv.current_revision();
    apply(&mut leader, Request::Compact { revision })?;
    for i in (LEASED_KEYS + 5..KEYS).step_by(37).skip(1) {
        apply(&mut leader, Request::Put { key: &key(i), value: &value(i, 2), lease: 0 })?;
        live.insert(i);
    }

    let first = snapshot(&leader, &live)?;

    // The leader moves on: more keys, a deletion, a revoked lease (its keys go with it), a member
    // removed. The device applies this second snapshot after its first reboot.
    for i in KEYS..KEYS + MORE_KEYS {
        apply(&mut leader, Request::Put { key: &key(i), value: &value(i, 0), lease: 0 })?;
        live.insert(i);
    }
    apply(&mut leader, Request::DeleteRange { key: &key(LEASED_KEYS + 1), range_end: b"" })?;
    live.remove(&(LEASED_KEYS + 1));
    apply(&mut leader, Request::LeaseRevoke { id: 300 })?;
    for i in (0..LEASED_KEYS).filter(|i| i % LEASES + 1 == 3) {
        live.remove(&i);
    }
    apply(&mut leader, Request::MemberRemove { id: 3 })?;
    let revision = leader.stores().kv.current_revision();
    apply(&mut leader, Request::Compact { revision })?;
    let second = snapshot(&leader, &live)?;
    Ok([first, second])
}

/// Encodes `leader`'s snapshot image and applies it on the host to a fresh node with the
/// device's configuration, to learn the digests the device must reach.
fn snapshot(
    leader: &Node<VecBackend, Device>,
    live: &std::collections::BTreeSet<u32>,
) -> Result<Generated, Box<dyn Error>> {
    let mut data = Vec::new();
    let (metadata, _) = leader.encode_image(&mut Vec::new(), &mut data)?;

    let mut follower = Node::<VecBackend, Device>::new(DEVICE, VecBackend::default());
    let mut buf = vec![0u8; image::BASE_BUFFER];
    let mut storage = MemSnapshotStore::<VecBackend, Vec<u8>>::new(&mut buf);
    let mut transport = PeerTable::<Device>::default();
    let ports = Ports { storage: &mut storage, transport: &mut transport, observer: &mut NoObserver };
    apply_snapshot(&mut follower, ports, Snapshot::from_bytes(&metadata, &data))?;
    if follower.stores() != leader.stores() {
        return Err("the host follower's stores differ from the leader's after the restore".into());
    }
    let expected = digests(&follower)?;
    let written_index = writes_after_restore(&mut follower, metadata.index, metadata.term)?;
    let written = (digests(&follower)?, written_index);
    let mut v2 = Vec::new();
    follower.v2_snapshot_data(&mut v2)?;
    let reopened = digests(&Node::<VecBackend, Device>::open(DEVICE, follower.backend().clone(), &v2)?)?;
    if reopened.records != written.0.records {
        return Err("re-opening the host follower changed its backend records".into());
    }
    Ok(Generated {
        image: data,
        index: metadata.index,
        term: metadata.term,
        expected,
        written,
        reopened,
        live_keys: u32::try_from(live.len())?,
    })
}
