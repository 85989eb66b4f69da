//! Snapshots saved by a real etcd, imported and restored by the `snapply` binary, then the
//! restored node compared with what `etcdctl` printed about the same server: every key's value,
//! create and mod revision, version and lease; leases with their TTLs and keys; users with
//! their roles; roles with their permissions; members; the cluster version; the compaction
//! revision (a read below it fails, as in etcd).
//!
//! Three workloads: a mixed one (binary keys, a 300 KB value, overwrites, deletes, leases, one
//! revoked, auth on, a learner, a removed member and a voter added last; read from the member's
//! own `member/snap/db`, without a SHA-256 trailer), 100 000 keys written in large
//! transactions, and a history of overwrites and re-creations (both from `etcdctl snapshot
//! save`). Needs Debian's `etcd-server` and `etcd-client`
//! (etcd 3.4); the tests fail, not skip, without them.
//!
//! `SNAPPLY_KEEP_SNAPSHOTS=<dir>` copies each workload's etcd snapshot there, for timing the
//! import with the release binary.

// Test scaffolding: a failure here is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, clippy::unreachable)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use assert_cmd::Command;
use serde_json::Value;
use snapply_core::collections::Growable;
use snapply_core::store::{PermissionType, StoreError, V2Deprecation};
use snapply_core::{Config, Node};
use snapply_fs::{DataDir, RedbBackend};
use snapply_testkit::etcd::{Etcd, etcd_3_4};

/// A permission as etcdctl prints it: type, key, range end.
type Perm = (i64, Vec<u8>, Vec<u8>);
/// A member: id, name, peer URLs, client URLs, learner.
type MemberRow = (u64, Vec<u8>, Vec<Vec<u8>>, Vec<Vec<u8>>, bool);

/// What etcdctl printed about the server the snapshot was saved from.
struct Expected {
    get_all: Value,
    compact_revision: Option<i64>,
    /// Lease id -> (granted TTL, attached keys sorted).
    leases: BTreeMap<i64, (i64, Vec<Vec<u8>>)>,
    /// User name -> roles.
    users: BTreeMap<String, Vec<String>>,
    /// Role name -> permissions (type, key, range end).
    roles: BTreeMap<String, Vec<Perm>>,
    members: Value,
    status: Value,
    auth_enabled: bool,
}

fn b64(v: &Value) -> Vec<u8> {
    use base64::Engine as _;
    v.as_str().map(|s| base64::engine::general_purpose::STANDARD.decode(s).expect("base64")).unwrap_or_default()
}

fn workdir(name: &str) -> PathBuf {
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    for stale in std::fs::read_dir(&root).into_iter().flatten().flatten() {
        let n = stale.file_name().to_string_lossy().into_owned();
        if let Some(pid) = n.strip_prefix("interop-").and_then(|r| r.split('-').next())
            && !Path::new("/proc").join(pid).exists()
        {
            let _ = std::fs::remove_dir_all(stale.path());
        }
    }
    let dir = root.join(format!("interop-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("work dir");
    dir
}

/// Collects what etcdctl says about keys, leases and auth (not members: see `finish`).
fn collect(etcd: &Etcd, compact_revision: Option<i64>, auth_enabled: bool) -> Expected {
    let get_all = etcd.json(["get", "", "--prefix"]);
    let mut leases = BTreeMap::new();
    for l in etcd.json(["lease", "list"])["leases"].as_array().cloned().unwrap_or_default() {
        let id = l["id"].as_i64().expect("lease id");
        let ttl = etcd.json(["lease", "timetolive", &format!("{id:x}"), "--keys"]);
        let mut keys: Vec<Vec<u8>> = ttl["keys"].as_array().map(|k| k.iter().map(b64).collect()).unwrap_or_default();
        keys.sort();
        leases.insert(id, (ttl["granted-ttl"].as_i64().expect("granted-ttl"), keys));
    }
    let mut users = BTreeMap::new();
    let mut roles = BTreeMap::new();
    if auth_enabled {
        for u in etcd.json(["user", "list"])["users"].as_array().cloned().unwrap_or_default() {
            let name = u.as_str().expect("user name").to_owned();
            let got = etcd.json(["user", "get", &name]);
            let r = got["roles"].as_array().map(|r| r.iter().map(|r| r.as_str().unwrap().to_owned()).collect());
            users.insert(name, r.unwrap_or_default());
        }
        for r in etcd.json(["role", "list"])["roles"].as_array().cloned().unwrap_or_default() {
            let name = r.as_str().expect("role name").to_owned();
            let got = etcd.json(["role", "get", &name]);
            let perms = got["perm"]
                .as_array()
                .map(|p| {
                    p.iter()
                        .map(|p| (p["permType"].as_i64().unwrap_or(0), b64(&p["key"]), b64(&p["range_end"])))
                        .collect()
                })
                .unwrap_or_default();
            roles.insert(name, perms);
        }
    }
    Expected {
        get_all,
        compact_revision,
        leases,
        users,
        roles,
        members: Value::Null,
        status: Value::Null,
        auth_enabled,
    }
}

/// Members and status (served locally, without credentials or a quorum), then, unless
/// `saved` is false, `snapshot save`. Returns the saved snapshot and a copy of the member's
/// own `member/snap/db`, taken once etcd has stopped.
fn finish(mut etcd: Etcd, dir: &Path, mut expected: Expected, name: &str, saved: bool) -> (PathBuf, PathBuf, Expected) {
    etcd.credentials = None;
    expected.members = etcd.json(["member", "list"]);
    expected.status = etcd.json(["endpoint", "status"])[0]["Status"].clone();
    let snapshot = dir.join("snapshot.db");
    if saved {
        etcd.ctl(["snapshot", "save", snapshot.to_str().expect("utf-8 path")]);
        keep(&snapshot, name);
    }
    let data = etcd.data_dir.clone();
    etcd.stop();
    let member_db = dir.join("member.db");
    std::fs::copy(data.join("member/snap/db"), &member_db).expect("the member's db");
    let _ = std::fs::remove_dir_all(data);
    (snapshot, member_db, expected)
}

fn keep(snapshot: &Path, name: &str) {
    if let Some(to) = std::env::var_os("SNAPPLY_KEEP_SNAPSHOTS") {
        let to = PathBuf::from(to);
        let _ = std::fs::create_dir_all(&to);
        std::fs::copy(snapshot, to.join(format!("{name}.db"))).expect("keep the snapshot");
    }
}

fn snapply(args: &[&dyn AsRef<std::ffi::OsStr>]) {
    let mut cmd = Command::cargo_bin("snapply").expect("the snapply binary");
    for a in args {
        cmd.arg(a);
    }
    let out = cmd.timeout(std::time::Duration::from_secs(300)).output().expect("running snapply");
    assert!(out.status.success(), "snapply failed:\n{}", String::from_utf8_lossy(&out.stderr));
}

/// Imports the snapshot, restores the image into a data directory, and opens the node there.
/// A member's own db has no SHA-256 trailer: it is imported with `--skip-hash-check`, as
/// etcdutl restores one.
fn import_and_restore(snapshot: &Path, dir: &Path, member_db: bool) -> Node<RedbBackend, Growable> {
    let image = dir.join("image.snapply");
    let data = dir.join("restored");
    if member_db {
        snapply(&[&"import-etcd", &snapshot, &"-o", &image, &"--skip-hash-check"]);
    } else {
        snapply(&[&"import-etcd", &snapshot, &"-o", &image]);
    }
    snapply(&[&"restore", &image, &"--data-dir", &data, &"--min-lease-ttl", &"1"]);
    let data = DataDir::open(&data).expect("the restored data directory");
    let boot = data.boot().expect("boot");
    assert!(boot.pending.is_none(), "the restore applied its snapshot");
    let name = data.snapshots().expect("snapshots")[0];
    let v2 = data.read_snap(name).expect("the .snap").v2;
    let config = Config { id: 0, min_lease_ttl: 1, v2_deprecation: V2Deprecation::WriteOnly };
    Node::open(config, boot.backend, &v2).expect("the restored node opens")
}

/// Compares the restored node with what etcdctl printed.
fn compare(node: &Node<RedbBackend, Growable>, e: &Expected) {
    use snapply_core::backend::Backend;
    let s = node.stores();
    let txn = node.backend().read().expect("read");

    // Keys.
    let mut got = Vec::new();
    s.kv.range(&txn, b"", &[0], 0, &mut |kv| {
        got.push((kv.key.to_vec(), kv.create_revision, kv.mod_revision, kv.version, kv.value.to_vec(), kv.lease))
    })
    .expect("range");
    let want: Vec<_> = e.get_all["kvs"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|kv| {
            (
                b64(&kv["key"]),
                kv["create_revision"].as_i64().unwrap_or(0),
                kv["mod_revision"].as_i64().unwrap_or(0),
                kv["version"].as_i64().unwrap_or(0),
                b64(&kv["value"]),
                kv["lease"].as_i64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(got.len(), want.len(), "key count");
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g, w, "key {:?}", String::from_utf8_lossy(&w.0));
    }
    assert_eq!(s.kv.current_revision(), e.get_all["header"]["revision"].as_i64().expect("revision"));

    // Compaction: etcd refuses a read below it, and so does the restored store.
    if let Some(c) = e.compact_revision {
        assert_eq!(s.kv.compact_revision(), c);
        let err = s.kv.range(&txn, b"", &[0], c - 1, &mut |_| ()).expect_err("a read below the compaction");
        assert!(matches!(err, StoreError::Compacted { requested, compacted } if requested == c - 1 && compacted == c));
        s.kv.range(&txn, b"", &[0], c, &mut |_| ()).expect("a read at the compaction revision");
    }

    // Leases with their TTLs and keys.
    let mut leases = BTreeMap::new();
    for l in s.lessor.leases() {
        let mut keys: Vec<Vec<u8>> =
            s.lessor.items().iter().filter(|i| i.lease == l.id).map(|i| i.key.clone()).collect();
        keys.sort();
        leases.insert(l.id, (l.ttl, keys));
    }
    assert_eq!(leases, e.leases, "leases");

    // Auth.
    assert_eq!(s.auth.is_enabled(), e.auth_enabled);
    let users: BTreeMap<String, Vec<String>> = s
        .auth
        .users()
        .iter()
        .map(|u| {
            let name = String::from_utf8(u.name.clone()).unwrap();
            (name, u.roles.iter().map(|r| String::from_utf8(r.clone()).unwrap()).collect())
        })
        .collect();
    assert_eq!(users, e.users, "users");
    let roles: BTreeMap<String, Vec<Perm>> = s
        .auth
        .roles()
        .iter()
        .map(|r| {
            let perms = r
                .permissions
                .iter()
                .map(|p| {
                    let kind = match p.kind {
                        PermissionType::Read => 0,
                        PermissionType::Write => 1,
                        PermissionType::ReadWrite => 2,
                    };
                    (kind, p.key.clone(), p.range_end.clone())
                })
                .collect();
            (String::from_utf8(r.name.clone()).unwrap(), perms)
        })
        .collect();
    assert_eq!(roles, e.roles, "roles");

    // Members.
    let strings = |v: &Value| -> Vec<Vec<u8>> {
        v.as_array().map(|a| a.iter().map(|s| s.as_str().unwrap().as_bytes().to_vec()).collect()).unwrap_or_default()
    };
    let mut want: Vec<MemberRow> = e.members["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| {
            (
                m["ID"].as_u64().expect("ID"),
                m["name"].as_str().unwrap_or_default().as_bytes().to_vec(),
                strings(&m["peerURLs"]),
                strings(&m["clientURLs"]),
                m["isLearner"].as_bool().unwrap_or(false),
            )
        })
        .collect();
    want.sort();
    let got: Vec<_> = s
        .membership
        .members()
        .iter()
        .map(|m| (m.id, m.name.clone(), m.peer_urls.clone(), m.client_urls.clone(), m.is_learner))
        .collect();
    assert_eq!(got, want, "members");

    // The cluster version is the server's major.minor; the consistent index is one the server
    // applied.
    let server = e.status["version"].as_str().expect("version");
    let v = s.membership.version().expect("a cluster version");
    assert_eq!(format!("{}.{}.", v.major, v.minor), server[..server.rfind('.').unwrap() + 1]);
    assert_eq!(v.patch, 0);
    let applied = e.status["raftAppliedIndex"].as_u64().expect("raftAppliedIndex");
    assert!(s.cindex.index() > 0 && s.cindex.index() <= applied, "{} <= {applied}", s.cindex.index());
    assert_eq!(node.progress().applied_index, s.cindex.index());
}

#[test]
fn a_mixed_workload_with_auth_leases_and_members_restores_as_etcd_serves_it() {
    let dir = workdir("mixed");
    let mut etcd = Etcd::start(&etcd_3_4(), &dir, &[]);
    etcd.ctl(["put", "foo", "bar"]);
    etcd.ctl(["put", "foo", "baz"]);
    etcd.ctl(["put", "gone", "x"]);
    etcd.ctl(["del", "gone"]);
    {
        use std::os::unix::ffi::OsStrExt;
        let key = std::ffi::OsStr::from_bytes(&[0x01, 0xfe, 0xff, b'k']);
        etcd.ctl_with_input([std::ffi::OsStr::new("put"), key], Some(&[0x00, 0xff, 0x10, 0x00, b'v']));
    }
    let big: Vec<u8> = (0..300_000u32).map(|i| b"abcdefghijklmnopqrstuvwxyz"[(i % 26) as usize]).collect();
    etcd.ctl_with_input(["put", "big"], Some(&big));
    let compact = etcd.json(["get", "foo"])["header"]["revision"].as_i64().expect("revision");
    etcd.ctl(["compact", &compact.to_string()]);
    etcd.ctl(["put", "foo", "qux"]);
    etcd.ctl(["put", "gone", "again"]);

    let grant = |etcd: &Etcd, ttl: &str| etcd.json(["lease", "grant", ttl])["ID"].as_i64().expect("lease ID");
    let l1 = grant(&etcd, "600");
    etcd.ctl(["put", "lk1", "a", &format!("--lease={l1:x}")]);
    etcd.ctl(["put", "lk2", "b", &format!("--lease={l1:x}")]);
    let l2 = grant(&etcd, "500");
    etcd.ctl(["put", "lk3", "c", &format!("--lease={l2:x}")]);
    etcd.ctl(["lease", "revoke", &format!("{l2:x}")]);
    grant(&etcd, "300");

    etcd.ctl(["role", "add", "root"]);
    etcd.ctl(["user", "add", "root:rootpw"]);
    etcd.ctl(["user", "grant-role", "root", "root"]);
    etcd.ctl(["role", "add", "reader"]);
    etcd.ctl(["role", "grant-permission", "reader", "readwrite", "/app/", "--prefix"]);
    etcd.ctl(["role", "grant-permission", "reader", "read", "k1"]);
    etcd.ctl(["role", "grant-permission", "reader", "write", "w", "x"]);
    etcd.ctl(["user", "add", "alice:alicepw"]);
    etcd.ctl(["user", "grant-role", "alice", "reader"]);
    etcd.ctl(["user", "grant-role", "alice", "root"]);

    let peer = |n: u16| format!("--peer-urls=http://127.0.0.1:{n}");
    let s3 = etcd.json(["member", "add", "s3", "--learner", &peer(2)]);
    let removed = s3["member"]["ID"].as_u64().expect("member ID");
    etcd.ctl(["member", "remove", &format!("{removed:x}")]);
    etcd.ctl(["member", "add", "s2", "--learner", &peer(1)]);

    etcd.ctl(["auth", "enable"]);
    etcd.credentials = Some("root:rootpw".into());
    etcd.ctl(["put", "after-auth", "yes"]);
    let expected = collect(&etcd, Some(compact), true);
    // A read below the compaction fails on etcd as it must on the restored node.
    let below = etcd.try_ctl(["get", "foo", &format!("--rev={}", compact - 1)], None);
    assert!(!below.status.success());
    assert!(String::from_utf8_lossy(&below.stderr).contains("compacted"), "{below:?}");

    // A second voter, added last and never started: the cluster loses its quorum. Members and
    // status are served locally, but with auth on every request needs a token, which etcd 3.4
    // issues through Raft: the snapshot is the member's own `member/snap/db`, taken once the
    // server has stopped.
    etcd.ctl(["member", "add", "s4", &peer(3)]);
    // etcd commits its backend every 100 ms (`--backend-batch-interval`) and is killed, not
    // stopped: wait until the member's db holds the new member (at most 20 s).
    let live = etcd.data_dir.join("member/snap/db");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while snapply_etcd::EtcdSnapshot::open(&live).and_then(|s| s.members()).map_or(0, |m| m.len()) < 3 {
        assert!(std::time::Instant::now() < deadline, "the member's db never held the new member");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let (_, snapshot, expected) = finish(etcd, &dir, expected, "mixed", false);
    let members = expected.members["members"].as_array().expect("members");
    assert_eq!(members.len(), 3, "s1, the learner s2 and the voter s4");
    assert_eq!(members.iter().filter(|m| m["isLearner"] == Value::Bool(true)).count(), 1);

    let node = import_and_restore(&snapshot, &dir, true);
    compare(&node, &expected);
    assert_eq!(node.stores().membership.removed(), [removed]);
    let big_rev = node.stores().kv.current_revision();
    let txn = snapply_core::backend::Backend::read(node.backend()).unwrap();
    let mut value = Vec::new();
    node.stores().kv.range(&txn, b"big", b"", big_rev, &mut |kv| value = kv.value.to_vec()).unwrap();
    assert_eq!(value, big);
    // etcd 3.4 stores no conf state: it is derived from the members, the learner as a learner.
    let conf = &node.progress().conf_state;
    assert_eq!((conf.voters.len(), conf.learners.len()), (2, 1));
}

#[test]
fn one_hundred_thousand_keys_restore_as_etcd_serves_them() {
    const KEYS: usize = 100_000;
    const BATCH: usize = 10_000;
    let dir = workdir("100k");
    let etcd = Etcd::start(
        &etcd_3_4(),
        &dir,
        &["--max-txn-ops=10000", "--max-request-bytes=8388608", "--quota-backend-bytes=4294967296"],
    );
    let txn = |range: std::ops::Range<usize>, value: &dyn Fn(usize) -> String| {
        let mut body = String::from("\n");
        for i in range {
            body.push_str(&format!("put k/{i:06} {}\n", value(i)));
        }
        body.push_str("\n\n");
        etcd.ctl_with_input(["txn"], Some(body.as_bytes()));
    };
    for start in (0..KEYS).step_by(BATCH) {
        txn(start..start + BATCH, &|i| format!("v{i:06}-{}", "x".repeat(80)));
    }
    // Overwrite a tenth, delete a hundred, compact, overwrite some again, with a lease.
    txn(0..BATCH, &|i| format!("second-{i}"));
    etcd.ctl(["del", "k/0999", "--prefix"]);
    let compact = etcd.json(["get", "k/000000"])["header"]["revision"].as_i64().expect("revision");
    etcd.ctl(["compact", &compact.to_string()]);
    txn(0..100, &|i| format!("third-{i}"));
    let lease = etcd.json(["lease", "grant", "900"])["ID"].as_i64().expect("lease");
    etcd.ctl(["put", "k/000001", "leased", &format!("--lease={lease:x}")]);
    let expected = collect(&etcd, Some(compact), false);
    assert_eq!(expected.get_all["count"].as_u64(), Some((KEYS - 100) as u64));
    let (snapshot, _, expected) = finish(etcd, &dir, expected, "100k", true);
    let node = import_and_restore(&snapshot, &dir, false);
    compare(&node, &expected);
}

#[test]
fn a_members_db_with_a_long_history_restores_as_etcd_serves_it() {
    let dir = workdir("history");
    let etcd = Etcd::start(&etcd_3_4(), &dir, &[]);
    // Keys overwritten many times, deleted and created again (new generations), a lease
    // revoked with its keys, and a compaction in the middle of it.
    for round in 0..30 {
        let mut body = String::from("\n");
        for k in 0..20 {
            body.push_str(&format!("put h/{k:02} r{round}\n"));
        }
        body.push_str("\n\n");
        etcd.ctl_with_input(["txn"], Some(body.as_bytes()));
    }
    for k in 0..10 {
        etcd.ctl(["del", &format!("h/{k:02}")]);
    }
    let compact = etcd.json(["get", "h/19"])["header"]["revision"].as_i64().expect("revision");
    for k in 0..5 {
        etcd.ctl(["put", &format!("h/{k:02}"), "reborn"]);
    }
    etcd.ctl(["compact", &compact.to_string()]);
    let l = etcd.json(["lease", "grant", "100"])["ID"].as_i64().expect("lease");
    etcd.ctl(["put", "doomed", "x", &format!("--lease={l:x}")]);
    etcd.ctl(["lease", "revoke", &format!("{l:x}")]);
    let expected = collect(&etcd, Some(compact), false);
    let (snapshot, _, expected) = finish(etcd, &dir, expected, "history", true);
    let node = import_and_restore(&snapshot, &dir, false);
    compare(&node, &expected);
    let txn = snapply_core::backend::Backend::read(node.backend()).unwrap();
    let mut reborn = Vec::new();
    node.stores().kv.range(&txn, b"h/00", b"", 0, &mut |kv| reborn.push((kv.version, kv.create_revision))).unwrap();
    assert_eq!(reborn.len(), 1);
    assert_eq!(reborn[0].0, 1, "a key created again starts a new generation at version 1");
}
