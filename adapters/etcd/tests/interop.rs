//! Interop with a real etcd: a workload through `etcdctl`, `etcdctl snapshot save`, then the
//! snapshot read by this crate must say what etcdctl says about the same server.
//!
//! Needs `etcd` and `etcdctl` (Debian: `apt-get install -y etcd-server etcd-client`); the tests
//! fail, not skip, without them.

// Test scaffolding: a failure here is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, clippy::unreachable)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::OnceLock;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::Value;
use snapply_etcd::bbolt::BoltError;
use snapply_etcd::proto::{KeyValue, PermissionType};
use snapply_etcd::{Digest, Error, EtcdSnapshot, Layout, Options, Version};
use snapply_testkit::etcd::{Etcd, etcd_3_4};

/// What the workload left and what etcdctl reported about it.
struct Fixture {
    snapshot: PathBuf,
    member_db: PathBuf,
    get_all: Value,
    compact_revision: i64,
    leases: Vec<(i64, i64)>,
    revoked_lease: i64,
    role: Value,
    alice: Value,
    root: Value,
    members: Value,
    removed_member: u64,
    status: Value,
    snapshot_status: Value,
    binary_key: Vec<u8>,
    binary_value: Vec<u8>,
    big_value_len: usize,
}

static FIXTURE: OnceLock<Fixture> = OnceLock::new();

fn fixture() -> &'static Fixture {
    FIXTURE.get_or_init(run_workload)
}

fn revision(v: &Value) -> i64 {
    v["header"]["revision"].as_i64().expect("header.revision")
}

fn run_workload() -> Fixture {
    // One directory per test process (a runner may start one process per test); those of
    // processes that are gone are removed.
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    for stale in std::fs::read_dir(&root).into_iter().flatten().flatten() {
        let name = stale.file_name().to_string_lossy().into_owned();
        if let Some(pid) = name.strip_prefix("etcd-interop-")
            && !std::path::Path::new("/proc").join(pid).exists()
        {
            let _ = std::fs::remove_dir_all(stale.path());
        }
    }
    let dir = root.join(format!("etcd-interop-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("fixture dir");
    let mut etcd = Etcd::start(&etcd_3_4(), &dir, &[]);

    // Puts, an overwrite, a delete.
    etcd.ctl(["put", "foo", "bar"]);
    etcd.ctl(["put", "foo", "baz"]);
    etcd.ctl(["put", "gone", "x"]);
    etcd.ctl(["del", "gone"]);
    etcd.ctl(["put", "keep", "1"]);
    // A key of non-UTF-8 bytes, and a value with NUL and high bytes read from standard input.
    let binary_key = vec![0x01, 0xfe, 0xff, b'k'];
    let binary_value = vec![0x00, 0xff, 0x10, 0x00, b'v'];
    {
        use std::os::unix::ffi::OsStrExt;
        let key = std::ffi::OsStr::from_bytes(&binary_key);
        etcd.ctl_with_input([std::ffi::OsStr::new("put"), key], Some(&binary_value));
    }
    // A value spanning overflow pages.
    let big_value: Vec<u8> = (0..300_000u32).map(|i| b"abcdefghijklmnopqrstuvwxyz"[(i % 26) as usize]).collect();
    etcd.ctl_with_input(["put", "big"], Some(&big_value));
    // A compaction, then more history on a compacted key.
    let compact_revision = revision(&etcd.json(["get", "foo"]));
    etcd.ctl(["compact", &compact_revision.to_string()]);
    etcd.ctl(["put", "foo", "qux"]);

    // Leases: one with two keys, one revoked (its key goes), one with no keys.
    let grant = |ttl: &str| etcd.json(["lease", "grant", ttl])["ID"].as_i64().expect("lease ID");
    let l1 = grant("600");
    etcd.ctl(["put", "lk1", "a", &format!("--lease={l1:x}")]);
    etcd.ctl(["put", "lk2", "b", &format!("--lease={l1:x}")]);
    let l2 = grant("500");
    etcd.ctl(["put", "lk3", "c", &format!("--lease={l2:x}")]);
    etcd.ctl(["lease", "revoke", &format!("{l2:x}")]);
    let l3 = grant("300");

    // Auth: root, a role with permissions, a user with the role, then auth on.
    etcd.ctl(["role", "add", "root"]);
    etcd.ctl(["user", "add", "root:rootpw"]);
    etcd.ctl(["user", "grant-role", "root", "root"]);
    etcd.ctl(["role", "add", "reader"]);
    etcd.ctl(["role", "grant-permission", "reader", "readwrite", "/app/", "--prefix"]);
    etcd.ctl(["role", "grant-permission", "reader", "read", "k1"]);
    etcd.ctl(["user", "add", "alice:alicepw"]);
    etcd.ctl(["user", "grant-role", "alice", "reader"]);

    // Members: a learner that is added and removed, then one that stays (etcd allows one
    // learner at a time). Their peer URLs are loopback ports nothing listens on.
    let peer = |n: u16| format!("--peer-urls=http://127.0.0.1:{n}");
    let s3 = etcd.json(["member", "add", "s3", "--learner", &peer(2)]);
    let removed_member = s3["member"]["ID"].as_u64().expect("member ID");
    etcd.ctl(["member", "remove", &format!("{removed_member:x}")]);
    let s2 = etcd.json(["member", "add", "s2", "--learner", &peer(1)]);
    assert_eq!(s2["member"]["isLearner"], Value::Bool(true), "{s2}");

    etcd.ctl(["auth", "enable"]);
    etcd.credentials = Some("root:rootpw".into());
    etcd.ctl(["put", "after-auth", "yes"]);

    let get_all = etcd.json(["get", "", "--prefix"]);
    let lease_ids: Vec<i64> = etcd.json(["lease", "list"])["leases"]
        .as_array()
        .expect("leases")
        .iter()
        .map(|l| l["id"].as_i64().expect("lease id"))
        .collect();
    let leases = lease_ids
        .iter()
        .map(|&id| (id, etcd.json(["lease", "timetolive", &format!("{id:x}")])["granted-ttl"].as_i64().expect("ttl")))
        .collect();
    assert_eq!(lease_ids.len(), 2, "l1 and l3 remain");
    assert!(lease_ids.contains(&l1) && lease_ids.contains(&l3));
    let role = etcd.json(["role", "get", "reader"]);
    let alice = etcd.json(["user", "get", "alice"]);
    let root = etcd.json(["user", "get", "root"]);
    let members = etcd.json(["member", "list"]);
    let alarms = etcd.json(["alarm", "list"]);
    assert!(alarms.get("alarms").is_none(), "no alarm expected: {alarms}");

    let snapshot = dir.join("snapshot.db");
    etcd.ctl(["snapshot", "save", snapshot.to_str().expect("utf-8 path")]);
    let status = etcd.json(["endpoint", "status"]);
    let snapshot_status = etcd.json(["snapshot", "status", snapshot.to_str().expect("utf-8 path")]);
    let member_db_live = etcd.data_dir.join("member/snap/db");
    let data_dir = etcd.data_dir.clone();
    etcd.stop();
    let member_db = dir.join("member.db");
    std::fs::copy(member_db_live, &member_db).expect("copy the member's db");
    // The data directory holds a preallocated 64 MB WAL; only the two databases are kept.
    let _ = std::fs::remove_dir_all(data_dir);

    Fixture {
        snapshot,
        member_db,
        get_all,
        compact_revision,
        leases,
        revoked_lease: l2,
        role,
        alice,
        root,
        members,
        removed_member,
        status: status[0]["Status"].clone(),
        snapshot_status,
        binary_key,
        binary_value,
        big_value_len: big_value.len(),
    }
}

fn b64(v: &Value) -> Vec<u8> {
    v.as_str().map(|s| B64.decode(s).expect("base64")).unwrap_or_default()
}

/// The latest live revision of every key, as a range at the current revision sees it.
fn live_keys<S: snapply_etcd::bbolt::ReadAt>(snap: &EtcdSnapshot<S>) -> (BTreeMap<Vec<u8>, KeyValue>, i64) {
    let mut live = BTreeMap::new();
    let mut last = (0, 0);
    for item in snap.revisions() {
        let (rev, kv) = item.expect("revision");
        assert!((rev.revision.main, rev.revision.sub) > last, "revisions in order");
        last = (rev.revision.main, rev.revision.sub);
        if rev.tombstone {
            live.remove(&kv.key);
        } else {
            assert_eq!(kv.mod_revision, rev.revision.main, "a put's mod revision is its revision");
            live.insert(kv.key.clone(), kv);
        }
    }
    (live, last.0)
}

#[test]
fn the_snapshot_says_what_etcdctl_says() {
    let f = fixture();
    let snap = EtcdSnapshot::open(&f.snapshot).expect("open the snapshot");
    assert!(matches!(snap.digest(), Digest::Verified(_)), "etcdctl appends a SHA-256 trailer");
    assert_eq!(snap.db().meta().freelist, None, "etcd runs bbolt with NoFreelistSync");

    // Keys: every live key with its value, revisions, version and lease.
    let (live, current) = live_keys(&snap);
    assert_eq!(current, revision(&f.get_all), "the last revision is etcd's current revision");
    let expected: BTreeMap<Vec<u8>, KeyValue> = f.get_all["kvs"]
        .as_array()
        .expect("kvs")
        .iter()
        .map(|kv| {
            let key = b64(&kv["key"]);
            let value = KeyValue {
                key: key.clone(),
                create_revision: kv["create_revision"].as_i64().unwrap_or(0),
                mod_revision: kv["mod_revision"].as_i64().unwrap_or(0),
                version: kv["version"].as_i64().unwrap_or(0),
                value: b64(&kv["value"]),
                lease: kv["lease"].as_i64().unwrap_or(0),
            };
            (key, value)
        })
        .collect();
    assert_eq!(live.keys().collect::<Vec<_>>(), expected.keys().collect::<Vec<_>>());
    assert_eq!(live, expected);
    assert_eq!(live[&f.binary_key].value, f.binary_value);
    assert_eq!(live[b"big".as_slice()].value.len(), f.big_value_len);
    assert!(!live.contains_key(b"gone".as_slice()) && !live.contains_key(b"lk3".as_slice()));
    let mut tombstones = Vec::new();
    snap.for_each_revision(|rev, kv| {
        if rev.tombstone {
            tombstones.push(kv.key);
        }
        std::ops::ControlFlow::Continue(())
    })
    .expect("revisions");
    assert!(tombstones.contains(&b"lk3".to_vec()), "revoking a lease deletes its key: {tombstones:?}");

    // Meta: etcd 3.4 layout, the compaction, the consistent index etcd reports as applied.
    let meta = snap.meta().expect("meta");
    assert_eq!(meta.layout(), Layout::V3_4, "{meta:?}");
    assert_eq!((meta.term, &meta.conf_state), (None, &None));
    assert_eq!(meta.scheduled_compact_revision, Some(f.compact_revision));
    assert_eq!(meta.finished_compact_revision, Some(f.compact_revision));
    let applied = f.status["raftAppliedIndex"].as_u64().expect("raftAppliedIndex");
    let index = meta.consistent_index.expect("consistent_index");
    assert!(index > 0 && index <= applied, "consistent index {index}, applied {applied}");

    // Leases.
    let mut leases: Vec<(i64, i64)> = snap.leases().expect("leases").iter().map(|l| (l.id, l.ttl)).collect();
    let mut expected = f.leases.clone();
    leases.sort();
    expected.sort();
    assert_eq!(leases, expected);
    assert!(!leases.iter().any(|l| l.0 == f.revoked_lease));

    // Auth.
    let auth = snap.auth().expect("auth");
    assert!(auth.enabled && auth.revision > 0, "{auth:?}");
    let users = snap.users().expect("users");
    let roles_of = |name: &[u8]| users.iter().find(|u| u.name == name).map(|u| u.roles.clone());
    let json_roles = |v: &Value| -> Vec<String> {
        v["roles"].as_array().expect("roles").iter().map(|r| r.as_str().expect("role").to_owned()).collect()
    };
    assert_eq!(roles_of(b"alice"), Some(json_roles(&f.alice)));
    assert_eq!(roles_of(b"root"), Some(json_roles(&f.root)));
    assert!(users.iter().all(|u| u.password.starts_with(b"$2a$")), "bcrypt hashes");
    let roles = snap.roles().expect("roles");
    let names: Vec<&[u8]> = roles.iter().map(|r| r.name.as_slice()).collect();
    assert_eq!(names, [&b"reader"[..], b"root"]);
    let perms: Vec<(i32, Vec<u8>, Vec<u8>)> =
        roles[0].key_permission.iter().map(|p| (p.perm_type, p.key.clone(), p.range_end.clone())).collect();
    let expected: Vec<(i32, Vec<u8>, Vec<u8>)> = f.role["perm"]
        .as_array()
        .expect("perm")
        .iter()
        .map(|p| (p["permType"].as_i64().unwrap_or(0) as i32, b64(&p["key"]), b64(&p["range_end"])))
        .collect();
    assert_eq!(perms, expected);
    assert_eq!(perms[0].0, PermissionType::Readwrite as i32);

    // Membership.
    let mut members = snap.members().expect("members");
    members.sort_by_key(|m| m.id);
    let mut expected: Vec<Value> = f.members["members"].as_array().expect("members").clone();
    expected.sort_by_key(|m| m["ID"].as_u64());
    assert_eq!(members.len(), expected.len());
    for (m, e) in members.iter().zip(&expected) {
        let strings = |v: &Value| -> Vec<String> {
            v.as_array()
                .map(|a| a.iter().map(|s| s.as_str().unwrap_or_default().to_owned()).collect())
                .unwrap_or_default()
        };
        assert_eq!(m.id, e["ID"].as_u64().expect("ID"));
        assert_eq!(m.name, e["name"].as_str().unwrap_or_default());
        assert_eq!(m.peer_urls, strings(&e["peerURLs"]));
        assert_eq!(m.client_urls, strings(&e["clientURLs"]));
        assert_eq!(m.is_learner, e["isLearner"].as_bool().unwrap_or(false));
    }
    assert_eq!(members.iter().filter(|m| m.is_learner).count(), 1);
    assert_eq!(snap.removed_members().expect("removed"), vec![f.removed_member]);

    // Cluster version: the server's major.minor, patch 0; no downgrade in 3.4; no alarm.
    let server = Version::parse(f.status["version"].as_str().expect("version")).expect("server version");
    assert_eq!(snap.cluster_version().expect("cluster version"), Some(Version { patch: 0, ..server }));
    assert_eq!(snap.downgrade().expect("downgrade"), None);
    assert_eq!(snap.alarms().expect("alarms"), vec![]);
}

#[test]
fn a_member_db_without_a_trailer_reads_the_same() {
    let f = fixture();
    let snap = EtcdSnapshot::open(&f.snapshot).expect("open the snapshot");
    let db = EtcdSnapshot::open(&f.member_db).expect("open the member's db");
    assert_eq!(db.digest(), Digest::Absent);
    assert_eq!(live_keys(&db), live_keys(&snap));
    assert_eq!(db.members().expect("members"), snap.members().expect("members"));
    assert!(db.meta().expect("meta").consistent_index >= snap.meta().expect("meta").consistent_index);
}

#[test]
fn a_flipped_byte_is_refused() {
    let f = fixture();
    let bytes = std::fs::read(&f.snapshot).expect("read the snapshot");
    let db_len = bytes.len() - 32;
    let page_size = EtcdSnapshot::open(&f.snapshot).expect("open").db().meta().page_size as usize;

    // Anywhere in the database, the trailer catches it.
    for at in [page_size * 2 + 40, db_len / 2, db_len - 1, 20] {
        let mut damaged = bytes.clone();
        damaged[at] ^= 0x04;
        let err = EtcdSnapshot::from_source(damaged, Options::default()).expect_err("damage must be caught");
        assert!(matches!(err, Error::DigestMismatch { .. }), "flip at {at}: {err}");
        assert!(err.to_string().contains("SHA-256"), "{err}");
    }
    // In the trailer itself.
    let mut damaged = bytes.clone();
    damaged[db_len + 5] ^= 0x80;
    let err = EtcdSnapshot::from_source(damaged, Options::default()).expect_err("damage must be caught");
    assert!(matches!(err, Error::DigestMismatch { .. }), "{err}");

    // Without the trailer's help, a flip in each meta's txid is caught by the meta checksums.
    let mut damaged = bytes[..db_len].to_vec();
    damaged[16 + 48] ^= 0x01;
    damaged[page_size + 16 + 48] ^= 0x01;
    let err = EtcdSnapshot::from_source(damaged, Options::default()).expect_err("damage must be caught");
    assert!(
        matches!(
            err,
            Error::Bolt(BoltError::NoValidMeta {
                meta0: snapply_etcd::bbolt::MetaFault::BadChecksum { .. },
                meta1: snapply_etcd::bbolt::MetaFault::BadChecksum { .. }
            })
        ),
        "{err}"
    );
}

#[test]
fn a_snapshot_cut_short_is_refused() {
    let f = fixture();
    let bytes = std::fs::read(&f.snapshot).expect("read the snapshot");
    // One byte short, the trailer no longer parses and the file is not whole pages either.
    let err = EtcdSnapshot::from_source(bytes[..bytes.len() - 1].to_vec(), Options::default()).expect_err("cut");
    assert!(matches!(err, Error::Bolt(BoltError::PartialPage { .. })), "{err}");
    for keep in [bytes.len() - 1, bytes.len() - 32 - 4096, bytes.len() / 2, 4096 * 2 + 32] {
        let err = EtcdSnapshot::from_source(bytes[..keep].to_vec(), Options::default()).expect_err("cut short");
        assert!(
            matches!(err, Error::Bolt(BoltError::Truncated { .. } | BoltError::PartialPage { .. })),
            "cut to {keep}: {err}"
        );
        assert!(err.to_string().contains("cut short"), "{err}");
    }
    let err = EtcdSnapshot::from_source(bytes[..100].to_vec(), Options::default()).expect_err("cut short");
    assert!(matches!(err, Error::Bolt(BoltError::Truncated { .. } | BoltError::NoValidMeta { .. })), "{err}");
}

/// `etcdctl snapshot status` (etcd 3.4) hashes every bucket name, key and value with CRC-32C in
/// the order bbolt walks them and counts every entry: reading every byte of every bucket the
/// way bbolt does gives the same hash.
#[test]
fn every_bucket_reads_byte_for_byte_as_etcdctl_snapshot_status_sees_it() {
    let f = fixture();
    let snap = EtcdSnapshot::open(&f.snapshot).expect("open the snapshot");
    let db = snap.db();
    let mut buckets = Vec::new();
    db.for_each::<BoltError>(&db.root(), |e| {
        buckets.push((e.key().to_vec(), e.bucket()?.expect("a top-level bucket")));
        Ok(std::ops::ControlFlow::Continue(()))
    })
    .expect("root bucket");
    let (mut hash, mut total) = (0u32, 0u64);
    for (name, bucket) in &buckets {
        hash = crc32c::crc32c_append(hash, name);
        db.for_each::<BoltError>(bucket, |e| {
            hash = crc32c::crc32c_append(hash, e.key());
            hash = crc32c::crc32c_append(hash, e.value());
            total += 1;
            Ok(std::ops::ControlFlow::Continue(()))
        })
        .expect("bucket");
    }
    let status = &f.snapshot_status;
    assert_eq!(u64::from(hash), status["hash"].as_u64().expect("hash"), "{status}");
    assert_eq!(total, status["totalKey"].as_u64().expect("totalKey"), "{status}");
    assert_eq!(db.len(), status["totalSize"].as_u64().expect("totalSize"), "{status}");
    let last = snap.revisions().last().expect("a revision").expect("decodes").0.revision.main;
    assert_eq!(last, status["revision"].as_i64().expect("revision"), "{status}");
}
