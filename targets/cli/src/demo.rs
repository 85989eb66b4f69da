//! `snapply demo`: a leader's state is snapshotted and applied to a follower through every
//! phase; the two nodes are then compared store by store.

use std::error::Error;
use std::process::ExitCode;
use std::time::Instant;

use snapply_core::backend::{Backend, dump};
use snapply_core::collections::Growable;
use snapply_core::image::{self, MIN_BUFFER};
use snapply_core::mem::VecBackend;
use snapply_core::memports::{MemSnapshotStore, PeerTable};
use snapply_core::ports::{Phase, Ports};
use snapply_core::store::{Alarm, AlarmType, NewMember, PermissionType, V2Deprecation, Version};
use snapply_core::{Config, Node, Request, Snapshot, apply_snapshot};

use crate::observe::Printer;

/// Options of `snapply demo`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Keys the leader writes.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    keys: u32,
    /// Bytes of each value.
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u32).range(0..=65_536))]
    value_size: u32,
}

type HostNode = Node<VecBackend, Growable>;

const LEADER: u64 = 0x8e9e_05c5_2164_694d;
const FOLLOWER: u64 = 0x91bc_3c39_8fb3_c146;
const THIRD: u64 = 0xfd42_2379_fda5_0e48;

fn config(id: u64) -> Config {
    Config { id, min_lease_ttl: 5, v2_deprecation: V2Deprecation::WriteOnly }
}

/// Applies `request` as the next entry of `node` at `term`.
fn commit(node: &mut HostNode, term: u64, request: &Request<'_>) -> Result<i64, Box<dyn Error>> {
    let index = node.progress().applied_index + 1;
    Ok(node.apply(index, term, request)?)
}

fn members(node: &mut HostNode, term: u64, ids: &[u64]) -> Result<(), Box<dyn Error>> {
    for (i, id) in ids.iter().enumerate() {
        let name = format!("infra{i}");
        let peer = format!("http://127.0.0.1:{}", 2380 + 10 * i);
        let client = format!("http://127.0.0.1:{}", 2379 + 10 * i);
        let member = NewMember {
            id: *id,
            name: name.as_bytes(),
            peer_urls: &[peer.as_bytes()],
            client_urls: &[client.as_bytes()],
            is_learner: false,
        };
        commit(node, term, &Request::MemberAdd(member))?;
    }
    Ok(())
}

/// The leader: a key space with overwrites, deletes, leases and a compaction, auth with users
/// and roles, three members, a cluster version and an alarm.
fn build_leader(args: &Args) -> Result<HostNode, Box<dyn Error>> {
    let term = 4;
    let mut leader = HostNode::new(config(LEADER), VecBackend::new());
    members(&mut leader, term, &[LEADER, FOLLOWER, THIRD])?;
    commit(&mut leader, term, &Request::ClusterVersion(Version { major: 3, minor: 6, patch: 0 }))?;
    for id in 1..=16 {
        commit(&mut leader, term, &Request::LeaseGrant { id, ttl: 60 })?;
    }
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let mut value = vec![0u8; args.value_size as usize];
    for i in 0..args.keys {
        for b in value.iter_mut() {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            *b = b'a' + (seed % 26) as u8;
        }
        let key = format!("/registry/pods/default/pod-{i:07}");
        let lease = if i % 4 == 0 { i64::from(i % 16) + 1 } else { 0 };
        commit(&mut leader, term, &Request::Put { key: key.as_bytes(), value: &value, lease })?;
        if i % 3 == 0 {
            commit(&mut leader, term, &Request::Put { key: key.as_bytes(), value: b"updated", lease: 0 })?;
        }
        if i % 10 == 0 {
            commit(&mut leader, term, &Request::DeleteRange { key: key.as_bytes(), range_end: b"" })?;
        }
        if i == args.keys / 2 {
            let revision = leader.stores().kv.current_revision();
            commit(&mut leader, term, &Request::Compact { revision })?;
        }
    }
    commit(&mut leader, term, &Request::LeaseRevoke { id: 16 })?;
    for (name, hash) in [(&b"root"[..], &b"$2a$10$rootpasswordhash"[..]), (b"app", b"$2a$10$apppasswordhash")] {
        commit(&mut leader, term, &Request::UserAdd { name, password_hash: hash, no_password: false })?;
    }
    commit(&mut leader, term, &Request::UserGrantRole { user: b"root", role: b"root" })?;
    commit(&mut leader, term, &Request::RoleAdd { name: b"reader" })?;
    let read = Request::RoleGrantPermission {
        role: b"reader",
        kind: PermissionType::Read,
        key: b"/registry/",
        range_end: b"/registry0",
    };
    commit(&mut leader, term, &read)?;
    commit(&mut leader, term, &Request::UserGrantRole { user: b"app", role: b"reader" })?;
    commit(&mut leader, term, &Request::AuthSetEnabled(true))?;
    commit(&mut leader, term, &Request::AlarmActivate(Alarm { member: THIRD, kind: AlarmType::Nospace }))?;
    Ok(leader)
}

/// The follower: far behind, with state the snapshot must replace entirely.
fn build_follower() -> Result<HostNode, Box<dyn Error>> {
    let term = 2;
    let mut follower = HostNode::new(config(FOLLOWER), VecBackend::new());
    members(&mut follower, term, &[LEADER, FOLLOWER, 0x1234])?;
    commit(&mut follower, term, &Request::LeaseGrant { id: 99, ttl: 30 })?;
    for i in 0..20 {
        let key = format!("/stale/key-{i:02}");
        commit(&mut follower, term, &Request::Put { key: key.as_bytes(), value: b"stale", lease: 99 })?;
    }
    commit(&mut follower, term, &Request::AlarmActivate(Alarm { member: FOLLOWER, kind: AlarmType::Corrupt }))?;
    Ok(follower)
}

fn describe(role: &str, node: &HostNode) -> Result<(), Box<dyn Error>> {
    let s = node.stores();
    let mut live = 0usize;
    s.kv.range(&node.backend().read()?, b"\0", b"\0", 0, &mut |_| live += 1)?;
    println!(
        "{role} (member {:016x}): applied index {} term {}, {live} live keys at revision {} (compacted at {}), {} leases, {} users, {} members, {} alarms, auth {}",
        node.config().id,
        node.progress().applied_index,
        node.progress().applied_term,
        s.kv.current_revision(),
        s.kv.compact_revision(),
        s.lessor.leases().len(),
        s.auth.users().len(),
        s.membership.members().len(),
        s.alarms.alarms().len(),
        if s.auth.is_enabled() { "enabled" } else { "disabled" },
    );
    Ok(())
}

/// Compares the two nodes store by store; prints one line per store; returns whether all match.
fn compare(leader: &HostNode, follower: &HostNode) -> Result<bool, Box<dyn Error>> {
    let (l, f) = (leader.stores(), follower.stores());
    let leader_records = dump(&leader.backend().read()?)?;
    let follower_records = dump(&follower.backend().read()?)?;
    let checks = [
        ("backend records", leader_records == follower_records),
        ("consistent index", l.cindex == f.cindex),
        ("lease store", l.lessor == f.lessor),
        ("mvcc store", l.kv == f.kv),
        ("alarm store", l.alarms == f.alarms),
        ("auth store", l.auth == f.auth),
        ("cluster membership", l.membership == f.membership),
        ("v2 store", l.v2 == f.v2),
        ("applied index", leader.progress().applied_index == follower.progress().applied_index),
    ];
    println!("comparison ({} backend records):", leader_records.len());
    for (what, equal) in checks {
        println!("  {what:<20} {}", if equal { "equal" } else { "DIFFERENT" });
    }
    Ok(checks.iter().all(|(_, equal)| *equal))
}

pub fn run(args: &Args) -> Result<ExitCode, Box<dyn Error>> {
    let started = Instant::now();
    let leader = build_leader(args)?;
    describe("leader  ", &leader)?;
    println!("  built in {:.1} ms", started.elapsed().as_secs_f64() * 1000.0);

    let metadata = leader.snapshot_metadata()?;
    let mut v2 = Vec::new();
    leader.v2_snapshot_data(&mut v2)?;
    let mut data = Vec::new();
    let encoding = Instant::now();
    let summary = image::encode(&metadata, &leader.backend().read()?, &v2, &mut data)?;
    let encoded_in = encoding.elapsed();
    println!(
        "snapshot image: index {} term {}, {} records, {} bytes, encoded in {:.2} ms, sha256 {}",
        metadata.index,
        metadata.term,
        summary.records,
        data.len(),
        encoded_in.as_secs_f64() * 1000.0,
        summary.sha256.iter().map(|b| format!("{b:02x}")).collect::<String>(),
    );

    let mut follower = build_follower()?;
    describe("follower", &follower)?;

    println!("applying the snapshot to the follower:");
    let mut buf = vec![0u8; MIN_BUFFER];
    let mut storage = MemSnapshotStore::<VecBackend, Vec<u8>>::new(&mut buf);
    let mut transport = PeerTable::<Growable>::default();
    let mut printer = Printer::new();
    let ports = Ports { storage: &mut storage, transport: &mut transport, observer: &mut printer };
    let outcome = apply_snapshot(&mut follower, ports, Snapshot::from_bytes(&metadata, &data))?
        .ok_or("the leader's snapshot is empty")?;
    // The old backend would be closed off the apply loop; here it is simply dropped.
    drop(outcome.old_backend);
    let total: u64 = printer.phases.iter().map(|(_, us)| us).sum();
    let apply: u64 = printer.phases.iter().filter(|(p, _)| *p > Phase::Persist).map(|(_, us)| us).sum();
    println!(
        "  total {:.3} ms, of which the apply (persisted -> Applied) {:.3} ms",
        total as f64 / 1000.0,
        apply as f64 / 1000.0
    );
    let peers: Vec<String> = transport.peers().iter().map(|(id, _)| format!("{id:016x}")).collect();
    println!("  transport peers: {}", peers.join(", "));

    describe("follower", &follower)?;
    if compare(&leader, &follower)? {
        println!("states equal");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("states DIFFER");
        Ok(ExitCode::FAILURE)
    }
}
