//! The file commands as a user runs them: `import-etcd`, `restore`, `status`, `inspect`,
//! `verify` and `create`, each with good input and with bad input (missing, corrupt, cut
//! short, a page loop, a data directory not empty or in use). A bad input must give a one-line
//! error, the documented exit code, and leave the disk as it was.
//!
//! The etcd snapshot comes from a real etcd (Debian's `etcd-server`/`etcd-client`; the tests
//! fail, not skip, without them).

// Test scaffolding: a failure here is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, clippy::unreachable)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use assert_cmd::Command;
use serde_json::Value;

const BAD_INPUT: i32 = 3;
const DATA_DIR: i32 = 4;

struct Fixture {
    dir: PathBuf,
    snapshot: PathBuf,
}

static FIXTURE: OnceLock<Fixture> = OnceLock::new();

/// A snapshot of a small etcd: puts, an overwrite, a compaction, a delete, a lease with a key,
/// and enough revisions (two transactions of 100 puts) that the `key` bucket's root is a
/// branch page.
fn fixture() -> &'static Fixture {
    FIXTURE.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("cli-files-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("fixture dir");
        let server = snapply_testkit::etcd::Etcd::start(&snapply_testkit::etcd::etcd_3_4(), &dir, &[]);
        server.ctl(["put", "a", "1"]);
        server.ctl(["put", "a", "2"]);
        server.ctl(["put", "b", "x"]);
        let compact = server.json(["get", "a"])["header"]["revision"].as_i64().expect("revision");
        server.ctl(["compact", &compact.to_string()]);
        server.ctl(["del", "b"]);
        let lease = server.json(["lease", "grant", "600"])["ID"].as_i64().expect("lease");
        server.ctl(["put", "leased", "v", &format!("--lease={lease:x}")]);
        for batch in 0..2 {
            let mut txn = String::from("\n");
            for i in 0..100 {
                txn.push_str(&format!("put bulk/{batch}/{i:03} {}\n", "v".repeat(200)));
            }
            txn.push_str("\n\n");
            server.ctl_with_input(["txn"], Some(txn.as_bytes()));
        }
        let snapshot = dir.join("snapshot.db");
        server.ctl(["snapshot", "save", snapshot.to_str().expect("utf-8")]);
        let data = server.data_dir.clone();
        server.stop();
        let _ = std::fs::remove_dir_all(data);
        Fixture { dir, snapshot }
    })
}

/// A fresh directory for one test.
fn scratch(name: &str) -> PathBuf {
    let dir = fixture().dir.join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

fn snapply(args: &[&dyn AsRef<std::ffi::OsStr>]) -> std::process::Output {
    let mut cmd = Command::cargo_bin("snapply").expect("the snapply binary");
    for a in args {
        cmd.arg(a);
    }
    cmd.timeout(std::time::Duration::from_secs(120)).output().expect("running snapply")
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn ok(out: &std::process::Output) -> String {
    assert_eq!(out.status.code(), Some(0), "stderr:\n{}", stderr(out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Asserts a refusal: the exit code, one `error:` line naming `words`.
fn refused(out: &std::process::Output, code: i32, words: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(code), "stderr:\n{err}");
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(errors.len(), 1, "one error line expected:\n{err}");
    assert!(errors[0].contains(words), "`{}` should mention `{words}`", errors[0]);
}

fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = walk(dir).iter().map(|p| p.strip_prefix(dir).unwrap().display().to_string()).collect();
    names.sort();
    names
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        }
        out.push(path);
    }
    out
}

fn image_of_fixture(dir: &Path) -> PathBuf {
    let image = dir.join("snapshot.snapply");
    ok(&snapply(&[&"import-etcd", &fixture().snapshot, &"-o", &image]));
    image
}

/// The page of the newest valid bbolt meta's root, and the page size.
fn bbolt_root(db: &[u8]) -> (usize, usize) {
    let u32_at = |at: usize| u32::from_le_bytes(db[at..at + 4].try_into().unwrap()) as usize;
    let u64_at = |at: usize| u64::from_le_bytes(db[at..at + 8].try_into().unwrap()) as usize;
    let page_size = u32_at(16 + 8);
    // Meta: header (16), magic, version, page size, flags, root {pgid, seq}, freelist, pgid, txid.
    let txid = |page: usize| u64_at(page * page_size + 16 + 56);
    let meta = if txid(1) > txid(0) { 1 } else { 0 };
    (u64_at(meta * page_size + 16 + 16), page_size)
}

/// Makes the `key` bucket's root branch page point back at itself, and drops the SHA-256
/// trailer so that only the tree walk can find it (a member's `db` has no trailer).
fn with_page_loop(snapshot: &[u8]) -> Vec<u8> {
    let mut db = snapshot[..snapshot.len() - 32].to_vec();
    let (root, ps) = bbolt_root(&db);
    let u16_at = |db: &[u8], at: usize| u16::from_le_bytes(db[at..at + 2].try_into().unwrap()) as usize;
    let u32_at = |db: &[u8], at: usize| u32::from_le_bytes(db[at..at + 4].try_into().unwrap()) as usize;
    // The root bucket's leaf: elements of (flags, pos, ksize, vsize), 16 bytes each.
    let page = root * ps;
    assert_eq!(u16_at(&db, page + 8), 0x02, "the root bucket is a leaf page");
    let count = u16_at(&db, page + 10);
    let key_root = (0..count)
        .find_map(|i| {
            let e = page + 16 + i * 16;
            let (pos, ksize) = (u32_at(&db, e + 4), u32_at(&db, e + 8));
            let k = e + pos;
            (&db[k..k + ksize] == b"key").then(|| u64::from_le_bytes(db[k + ksize..k + ksize + 8].try_into().unwrap()))
        })
        .expect("a `key` bucket") as usize;
    let branch = key_root * ps;
    assert_eq!(u16_at(&db, branch + 8), 0x01, "the `key` bucket's root is a branch page");
    // Branch elements are (pos u32, ksize u32, pgid u64): the second child becomes the page.
    let at = branch + 16 + 16 + 8;
    db[at..at + 8].copy_from_slice(&(key_root as u64).to_le_bytes());
    db
}

#[test]
fn import_etcd_writes_an_image_that_verifies() {
    let dir = scratch("import-good");
    let image = dir.join("out.snapply");
    let out = snapply(&[&"import-etcd", &fixture().snapshot, &"-o", &image, &"--log-format", &"json"]);
    ok(&out);
    let logs: Vec<Value> = stderr(&out).lines().map(|l| serde_json::from_str(l).expect("a JSON log line")).collect();
    let done = logs.iter().find(|l| l["msg"] == "imported etcd snapshot").expect("the import's log line");
    assert_eq!(done["revisions"].as_u64().unwrap(), 204, "a@3, b@4, its deletion, leased, 200 bulk: {done}");
    assert!(logs.iter().all(|l| l["level"].is_string() && l["ts"].is_string() && l["caller"].is_string()));
    let verified = ok(&snapply(&[&"verify", &image]));
    assert_eq!(verified.trim(), format!("ok {}", done["sha256"].as_str().unwrap()));
    assert_eq!(listing(&dir), ["out.snapply"], "no temporary file is left");

    // etcd 3.4 stores no term or conf state: by default term 1 and the members as voters, as
    // etcdutl's restore; or what the arguments give.
    let status: Value = serde_json::from_str(&ok(&snapply(&[&"status", &image, &"--json"]))).unwrap();
    assert_eq!(status["term"], 1);
    assert_eq!(status["conf_state"]["voters"].as_array().unwrap().len(), 1);
    let given = dir.join("given.snapply");
    let out = snapply(&[
        &"import-etcd",
        &fixture().snapshot,
        &"-o",
        &given,
        &"--term",
        &"7",
        &"--voters",
        &"a,b",
        &"--learners",
        &"c",
    ]);
    ok(&out);
    assert!(stderr(&out).contains("no term or conf state"), "the import says where they came from");
    let status: Value = serde_json::from_str(&ok(&snapply(&[&"status", &given, &"--json"]))).unwrap();
    assert_eq!(status["term"], 7);
    // Member ids in hexadecimal, as the flags take them and etcd prints them.
    assert_eq!(status["conf_state"]["voters"], serde_json::json!(["a", "b"]));
    assert_eq!(status["conf_state"]["learners"], serde_json::json!(["c"]));
}

#[test]
fn import_etcd_refuses_a_flipped_byte_a_cut_a_page_loop_and_a_missing_file() {
    let dir = scratch("import-bad");
    let bytes = std::fs::read(&fixture().snapshot).unwrap();
    let mut flipped = bytes.clone();
    flipped[bytes.len() / 2] ^= 0x10;
    let cut = bytes[..bytes.len() / 2].to_vec();
    let looped = with_page_loop(&bytes);
    for (name, data, words) in [
        ("flipped.db", &flipped, "SHA-256"),
        ("cut.db", &cut, "cut short"),
        ("loop.db", &looped, "loop"),
        ("text.db", &b"not a database at all".to_vec(), "etcd snapshot"),
    ] {
        std::fs::write(dir.join(name), data).unwrap();
        let before = listing(&dir);
        // The page loop is in a file without its trailer: only the tree walk can find it.
        let out = if name == "loop.db" {
            snapply(&[&"import-etcd", &dir.join(name), &"-o", &dir.join("out.snapply"), &"--skip-hash-check"])
        } else {
            snapply(&[&"import-etcd", &dir.join(name), &"-o", &dir.join("out.snapply")])
        };
        refused(&out, BAD_INPUT, words);
        assert_eq!(listing(&dir), before, "{name}: nothing written");
    }
    let out = snapply(&[&"import-etcd", &dir.join("missing.db"), &"-o", &dir.join("out.snapply")]);
    refused(&out, BAD_INPUT, "does not exist");
    assert!(!dir.join("out.snapply").exists());
}

#[test]
fn restore_makes_a_data_directory_from_an_image_and_from_an_etcd_snapshot() {
    let dir = scratch("restore-good");
    let image = image_of_fixture(&dir);
    let sha = ok(&snapply(&[&"verify", &image]));
    for (input, target) in [(&image, dir.join("from-image")), (&fixture().snapshot, dir.join("from-etcd"))] {
        ok(&snapply(&[&"restore", input, &"--data-dir", &target]));
        assert!(target.join("member/db").is_file(), "{}", target.display());
        // The restored node's state, snapshotted again, is the image byte for byte.
        let again = dir.join("again.snapply");
        ok(&snapply(&[&"create", &"--data-dir", &target, &"-o", &again]));
        assert_eq!(ok(&snapply(&[&"verify", &again])), sha, "{}", target.display());
        // It boots as a node: the live backend is at the snapshot, nothing is pending.
        let data = snapply_fs::DataDir::open(&target).unwrap();
        let boot = data.boot().unwrap();
        assert!(boot.pending.is_none());
        assert!(boot.consistent_index > 0);
    }
    // An empty directory is fine too.
    let empty = dir.join("empty");
    std::fs::create_dir(&empty).unwrap();
    ok(&snapply(&[&"restore", &image, &"--data-dir", &empty]));
    assert!(empty.join("member/db").is_file());
}

#[test]
fn restore_refuses_a_non_empty_directory_and_bad_snapshots_changing_nothing() {
    let dir = scratch("restore-bad");
    let image = image_of_fixture(&dir);
    let busy = dir.join("busy");
    std::fs::create_dir(&busy).unwrap();
    std::fs::write(busy.join("keep"), b"mine").unwrap();
    let before = listing(&dir);
    refused(&snapply(&[&"restore", &image, &"--data-dir", &busy]), DATA_DIR, "not empty");
    assert_eq!(listing(&dir), before);
    assert_eq!(std::fs::read(busy.join("keep")).unwrap(), b"mine");

    let bytes = std::fs::read(&image).unwrap();
    let mut flipped = bytes.clone();
    flipped[bytes.len() / 2] ^= 0x01;
    std::fs::write(dir.join("flipped.snapply"), &flipped).unwrap();
    std::fs::write(dir.join("cut.snapply"), &bytes[..bytes.len() - 10]).unwrap();
    let etcd = std::fs::read(&fixture().snapshot).unwrap();
    let mut flipped_db = etcd.clone();
    flipped_db[etcd.len() / 3] ^= 0x01;
    std::fs::write(dir.join("flipped.db"), &flipped_db).unwrap();
    std::fs::write(dir.join("loop.db"), with_page_loop(&etcd)).unwrap();
    std::fs::write(dir.join("other"), b"hello").unwrap();
    let before = listing(&dir);
    for (input, words) in [
        ("flipped.snapply", "not a valid snapply image"),
        ("cut.snapply", "not a valid snapply image"),
        ("flipped.db", "SHA-256"),
        ("loop.db", "loop"),
        ("other", "neither a snapply image nor an etcd snapshot"),
        ("missing", "does not exist"),
    ] {
        let target = dir.join("new");
        let out = if input == "loop.db" {
            snapply(&[&"restore", &dir.join(input), &"--data-dir", &target, &"--skip-hash-check"])
        } else {
            snapply(&[&"restore", &dir.join(input), &"--data-dir", &target])
        };
        refused(&out, BAD_INPUT, words);
        assert_eq!(listing(&dir), before, "{input}: nothing created");
    }
}

#[test]
fn status_and_inspect_describe_an_image_and_refuse_a_damaged_one() {
    let dir = scratch("status");
    let image = image_of_fixture(&dir);
    let status: Value = serde_json::from_str(&ok(&snapply(&[&"status", &image, &"--json"]))).unwrap();
    assert_eq!(status["integrity"], "ok");
    assert!(status["index"].as_u64().unwrap() > 0);
    assert_eq!(status["size_bytes"].as_u64().unwrap(), std::fs::metadata(&image).unwrap().len());
    let table = ok(&snapply(&[&"status", &image]));
    assert!(table.contains("sha256") && table.contains(status["sha256"].as_str().unwrap()), "{table}");

    let inspect: Value = serde_json::from_str(&ok(&snapply(&[&"inspect", &image, &"--json"]))).unwrap();
    assert_eq!(inspect["sha256"], status["sha256"]);
    let buckets = &inspect["buckets"];
    assert_eq!(buckets["key"]["records"], 204, "{buckets}");
    assert_eq!(buckets["lease"]["records"], 1);
    assert_eq!(buckets["members"]["records"], 1);
    assert_eq!(inspect["tombstones"], 1, "b was deleted");
    assert!(inspect["meta"]["finished_compact_revision"].as_u64().unwrap() > 0);
    let total: u64 = buckets.as_object().unwrap().values().map(|b| b["records"].as_u64().unwrap()).sum();
    assert_eq!(total, inspect["records"].as_u64().unwrap());
    let table = ok(&snapply(&[&"inspect", &image]));
    assert!(table.lines().any(|l| l.starts_with("members_removed")), "{table}");

    let bytes = std::fs::read(&image).unwrap();
    std::fs::write(dir.join("cut.snapply"), &bytes[..bytes.len() / 2]).unwrap();
    for cmd in ["status", "inspect"] {
        refused(&snapply(&[&cmd, &dir.join("cut.snapply")]), BAD_INPUT, "truncated");
        refused(&snapply(&[&cmd, &dir.join("missing")]), BAD_INPUT, "does not exist");
        // An etcd snapshot is pointed at the command that reads it.
        refused(&snapply(&[&cmd, &fixture().snapshot]), BAD_INPUT, "`snapply import-etcd`");
    }
}

#[test]
fn verify_accepts_an_intact_image_and_names_the_damage_in_a_bad_one() {
    let dir = scratch("verify");
    let image = image_of_fixture(&dir);
    assert!(ok(&snapply(&[&"verify", &image])).starts_with("ok "));
    let bytes = std::fs::read(&image).unwrap();
    let mut flipped = bytes.clone();
    flipped[bytes.len() - 100] ^= 0x80;
    std::fs::write(dir.join("flipped.snapply"), &flipped).unwrap();
    refused(&snapply(&[&"verify", &dir.join("flipped.snapply")]), BAD_INPUT, "corrupt image at byte");
    let mut extra = bytes.clone();
    extra.push(0);
    std::fs::write(dir.join("extra.snapply"), &extra).unwrap();
    refused(&snapply(&[&"verify", &dir.join("extra.snapply")]), BAD_INPUT, "corrupt image");
    refused(&snapply(&[&"verify", &dir.join("missing")]), BAD_INPUT, "does not exist");
    // `--stores` recovers every store: an image whose frames are intact but whose lease record
    // does not decode passes the format checks and fails that one.
    assert!(ok(&snapply(&[&"verify", &"--stores", &image])).starts_with("ok "));
    let bad_record = dir.join("bad-record.snapply");
    {
        use snapply_core::backend::{Backend, Bucket, WriteTxn};
        let mut backend = snapply_core::mem::VecBackend::new();
        let mut txn = backend.write().unwrap();
        txn.put(Bucket::Meta, b"consistent_index", &5u64.to_be_bytes()).unwrap();
        txn.put(Bucket::Lease, &7i64.to_be_bytes(), &[0xff; 3]).unwrap();
        txn.commit().unwrap();
        let metadata = snapply_core::SnapshotMetadata { index: 5, term: 1, ..Default::default() };
        let mut bytes = Vec::new();
        snapply_core::image::encode(&metadata, &backend.read().unwrap(), &[], &mut bytes).unwrap();
        std::fs::write(&bad_record, bytes).unwrap();
    }
    assert!(ok(&snapply(&[&"verify", &bad_record])).starts_with("ok "));
    refused(&snapply(&[&"verify", &"--stores", &bad_record]), BAD_INPUT, "a store does not recover");
    // In JSON, the error is one JSON line too.
    let out = snapply(&[&"verify", &dir.join("missing"), &"--log-format", &"json"]);
    assert_eq!(out.status.code(), Some(BAD_INPUT));
    let lines: Vec<Value> = stderr(&out).lines().map(|l| serde_json::from_str(l).expect("JSON")).collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!((lines[0]["level"].as_str(), lines[0]["exit-code"].as_i64()), (Some("error"), Some(3)));
    assert!(lines[0]["msg"].as_str().unwrap().contains("does not exist"));
}

#[test]
fn create_refuses_a_directory_that_is_not_a_node_or_is_in_use() {
    let dir = scratch("create");
    let image = image_of_fixture(&dir);
    let node = dir.join("node");
    ok(&snapply(&[&"restore", &image, &"--data-dir", &node]));
    let out = dir.join("created.snapply");
    ok(&snapply(&[&"create", &"--data-dir", &node, &"-o", &out]));
    assert_eq!(ok(&snapply(&[&"verify", &out])), ok(&snapply(&[&"verify", &image])));
    std::fs::remove_file(&out).unwrap();

    let before = listing(&dir);
    refused(
        &snapply(&[&"create", &"--data-dir", &dir.join("nothing"), &"-o", &out]),
        BAD_INPUT,
        "not a snapply data directory",
    );
    assert_eq!(listing(&dir), before, "nothing created");
    // A snapshot persisted but not yet applied: the backend is not the node's state.
    let pending = node.join("member/snap/0000000000000009-00000000000fffff.snap");
    std::fs::write(&pending, b"").unwrap();
    let before_pending = listing(&dir);
    refused(&snapply(&[&"create", &"--data-dir", &node, &"-o", &out]), BAD_INPUT, "has not applied yet");
    assert_eq!(listing(&dir), before_pending, "nothing created");
    std::fs::remove_file(&pending).unwrap();
    // A running node holds its backend open.
    let held = snapply_fs::RedbBackend::open(&node.join("member/db")).unwrap();
    refused(&snapply(&[&"create", &"--data-dir", &node, &"-o", &out]), DATA_DIR, "in use");
    drop(held);
    assert_eq!(listing(&dir), before, "nothing created");
}

#[test]
fn bad_arguments_exit_2_and_help_documents_the_exit_codes() {
    for args in
        [&["import-etcd"][..], &["restore", "x"], &["import-etcd", "a", "-o", "b", "--voters", "zz"], &["status"]]
    {
        let out = snapply(&args.iter().map(|a| a as &dyn AsRef<std::ffi::OsStr>).collect::<Vec<_>>());
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
    }
    let help = ok(&snapply(&[&"restore", &"--help"]));
    for line in ["3  bad input", "4  data directory not empty", "5  I/O error"] {
        assert!(help.contains(line), "{help}");
    }
}

const USAGE: i32 = 2;
const IO: i32 = 5;

/// Every file and directory under `dir` (and `dir` itself) with its permission bits.
fn modes(dir: &Path) -> Vec<(String, u32)> {
    use std::os::unix::fs::PermissionsExt;
    let mut all = walk(dir);
    all.push(dir.to_path_buf());
    let mut modes: Vec<(String, u32)> = all
        .iter()
        .map(|p| (p.display().to_string(), std::fs::metadata(p).unwrap().permissions().mode() & 0o777))
        .collect();
    modes.sort();
    modes
}

/// Every file under `dir` with its bytes.
fn contents(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files: Vec<(PathBuf, Vec<u8>)> =
        walk(dir).into_iter().filter(|p| p.is_file()).map(|p| (p.clone(), std::fs::read(&p).unwrap())).collect();
    files.sort();
    files
}

/// Runs `script` with `sh` as root of a new user and mount namespace: its mounts are private to
/// it and vanish with it, so the test needs no privilege and leaves no mount behind. `$1` is the
/// snapply binary, the rest are `args`.
fn in_namespace(script: &str, args: &[&dyn AsRef<std::ffi::OsStr>]) -> std::process::Output {
    let mut cmd = Command::new("unshare");
    cmd.args(["--map-root-user", "--mount", "sh", "-c", script, "sh"]).arg(assert_cmd::cargo::cargo_bin("snapply"));
    for a in args {
        cmd.arg(a);
    }
    let out = cmd.timeout(std::time::Duration::from_secs(120)).output().expect("running unshare (util-linux)");
    assert_ne!(out.status.code(), Some(99), "the namespace could not mount: {}", stderr(&out));
    out
}

#[test]
fn an_output_that_is_the_input_or_inside_the_data_directory_is_refused() {
    let dir = scratch("output-is-input");
    let image = image_of_fixture(&dir);
    let node = dir.join("node");
    ok(&snapply(&[&"restore", &image, &"--data-dir", &node]));
    let db = std::fs::copy(&fixture().snapshot, dir.join("x.db")).map(|_| dir.join("x.db")).unwrap();
    std::os::unix::fs::symlink(&db, dir.join("link.db")).unwrap();
    std::os::unix::fs::symlink(&node, dir.join("node-link")).unwrap();
    let before = contents(&dir);
    for (args, words) in [
        (vec!["create", "--data-dir", "node", "-o", "node/member/db"], "inside the data directory"),
        (vec!["create", "--data-dir", "node", "-o", "node/member/snap/new.snapply"], "inside the data directory"),
        (vec!["create", "--data-dir", "node", "-o", "node-link/x.snapply"], "inside the data directory"),
        (vec!["create", "--data-dir", "node/../node", "-o", "node"], "inside the data directory"),
        (vec!["import-etcd", "x.db", "-o", "x.db"], "is the input"),
        (vec!["import-etcd", "x.db", "-o", "link.db"], "is the input"),
        (vec!["import-etcd", "link.db", "-o", "./x.db"], "is the input"),
    ] {
        let mut cmd = Command::cargo_bin("snapply").unwrap();
        let out = cmd.current_dir(&dir).args(&args).timeout(std::time::Duration::from_secs(120)).output().unwrap();
        refused(&out, USAGE, words);
        assert!(contents(&dir) == before, "{args:?}: the input is intact, nothing written");
    }
}

#[test]
fn an_etcd_db_without_its_hash_trailer_is_refused_unless_the_check_is_skipped() {
    let dir = scratch("missing-hash");
    let bytes = std::fs::read(&fixture().snapshot).unwrap();
    assert_eq!(bytes.len() % 512, 32, "`etcdctl snapshot save` appends a SHA-256");
    // Cut at the page boundary before the trailer, a value's byte flipped: nothing shows the
    // damage but the missing trailer.
    let mut cut = bytes[..bytes.len() - 32].to_vec();
    let at = cut.windows(200).position(|w| w.iter().all(|&b| b == b'v')).expect("a bulk value") + 100;
    cut[at] = b'w';
    let db = dir.join("cut.db");
    std::fs::write(&db, &cut).unwrap();
    let before = listing(&dir);
    refused(&snapply(&[&"import-etcd", &db, &"-o", &dir.join("out.snapply")]), BAD_INPUT, "snapshot missing hash");
    refused(&snapply(&[&"restore", &db, &"--data-dir", &dir.join("node")]), BAD_INPUT, "snapshot missing hash");
    assert_eq!(listing(&dir), before, "nothing written");
    // etcdutl's `--skip-hash-check` reads it (a member's db has no trailer either).
    let image = dir.join("out.snapply");
    ok(&snapply(&[&"import-etcd", &db, &"-o", &image, &"--skip-hash-check"]));
    ok(&snapply(&[&"restore", &db, &"--data-dir", &dir.join("node"), &"--skip-hash-check"]));
}

#[test]
fn a_directory_given_as_the_input_file_is_bad_input() {
    let dir = scratch("input-is-dir");
    let input = dir.join("a-directory");
    std::fs::create_dir(&input).unwrap();
    let before = listing(&dir);
    for args in [
        vec![&"restore" as &dyn AsRef<std::ffi::OsStr>, &input, &"--data-dir", &dir.join("node")],
        vec![&"import-etcd", &input, &"-o", &dir.join("out.snapply")],
        vec![&"status", &input],
        vec![&"inspect", &input],
        vec![&"verify", &input],
    ] {
        refused(&snapply(&args), BAD_INPUT, "is a directory");
        assert_eq!(listing(&dir), before, "nothing written");
    }
}

#[test]
fn a_full_disk_during_restore_exits_5_and_leaves_nothing() {
    let dir = scratch("full-disk");
    let image = image_of_fixture(&dir);
    let mount = dir.join("small");
    std::fs::create_dir(&mount).unwrap();
    // A tmpfs of `$2` KiB on `$3`; the restore into it, then what it left there.
    let script = r#"mount -t tmpfs -o "size=$2k" tmpfs "$3" || exit 99
"$1" restore "$4" --data-dir "$3/node"
code=$?
echo "left: $(ls -A "$3" | tr '\n' ' ')"
exit $code"#;
    let mut codes = Vec::new();
    for input in [&image, &fixture().snapshot] {
        for kib in [4, 12, 24, 48, 96, 192, 512, 4096] {
            let out = in_namespace(script, &[&kib.to_string(), &mount, input]);
            let code = out.status.code();
            let left = String::from_utf8_lossy(&out.stdout).into_owned();
            match code {
                Some(0) => assert_eq!(left.trim(), "left: node", "{kib} KiB: the node only"),
                Some(IO) => {
                    refused(&out, IO, "space");
                    assert_eq!(left.trim(), "left:", "{kib} KiB: a failed restore leaves nothing");
                }
                _ => panic!("{kib} KiB of {}: exit {code:?}, expected 0 or 5:\n{}", input.display(), stderr(&out)),
            }
            codes.push(code);
        }
    }
    assert!(codes.contains(&Some(IO)) && codes.contains(&Some(0)), "both outcomes were reached: {codes:?}");
}

#[test]
fn create_without_permission_on_the_data_directory_exits_5() {
    use std::os::unix::fs::PermissionsExt;
    let dir = scratch("create-denied");
    let image = image_of_fixture(&dir);
    let node = dir.join("node");
    ok(&snapply(&[&"restore", &image, &"--data-dir", &node]));
    let outputs = dir.join("outputs");
    std::fs::create_dir(&outputs).unwrap();
    std::fs::set_permissions(&outputs, std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::set_permissions(&node, std::fs::Permissions::from_mode(0o000)).unwrap();
    // Root reads any file: the command then runs as another user, for whom the data directory
    // (0700, root's) is closed.
    let mut cmd = std::process::Command::new(assert_cmd::cargo::cargo_bin("snapply"));
    cmd.args(["create", "--data-dir"]).arg(&node).arg("-o").arg(outputs.join("x.snapply"));
    if std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&dir).unwrap()) == 0 {
        std::os::unix::process::CommandExt::uid(&mut cmd, 65534);
        std::os::unix::process::CommandExt::gid(&mut cmd, 65534);
    }
    let out = Command::from_std(cmd).timeout(std::time::Duration::from_secs(120)).output().unwrap();
    std::fs::set_permissions(&node, std::fs::Permissions::from_mode(0o700)).unwrap();
    refused(&out, IO, "Permission denied");
    assert_eq!(listing(&outputs), Vec::<String>::new(), "nothing written");
}

#[test]
fn a_restore_into_a_directory_another_restore_is_building_exits_4() {
    let dir = scratch("restore-race");
    let image = image_of_fixture(&dir);
    // A restore into `node` is running: this process builds `.node.restore.<pid>` and holds
    // its lock, as a running `snapply restore` does.
    let running = dir.join(format!(".node.restore.{}", std::process::id()));
    std::fs::create_dir(&running).unwrap();
    std::fs::write(running.join("member-db-being-written"), b"x").unwrap();
    let lock = std::fs::File::open(&running).unwrap();
    lock.lock().unwrap();
    let before = contents(&dir);
    refused(&snapply(&[&"restore", &image, &"--data-dir", &dir.join("node")]), DATA_DIR, "another restore");
    assert!(contents(&dir) == before, "the running restore's directory is untouched, nothing created");
    // A restore into another directory of the same parent is not held up.
    ok(&snapply(&[&"restore", &image, &"--data-dir", &dir.join("other")]));
    assert!(running.exists());
    drop(lock);
}

#[test]
fn a_restore_removes_the_directories_of_restores_that_were_killed() {
    let dir = scratch("restore-stale");
    let image = image_of_fixture(&dir);
    // What a `restore` killed with SIGKILL leaves: its hidden directory, as large as the image.
    let stale = [dir.join(".node.restore.4000000"), dir.join(".other.restore.17")];
    for s in &stale {
        std::fs::create_dir_all(s.join("member/snap")).unwrap();
        std::fs::write(s.join("member/snap/0000000000000010.snap.db"), vec![7u8; 1 << 20]).unwrap();
    }
    let kept = dir.join(".node.restore.notapid");
    std::fs::create_dir(&kept).unwrap();
    let out = snapply(&[&"restore", &image, &"--data-dir", &dir.join("node")]);
    ok(&out);
    for s in &stale {
        assert!(!s.exists(), "{} is removed", s.display());
    }
    assert!(stderr(&out).contains("removed the directory of a restore that did not finish"), "{}", stderr(&out));
    assert!(kept.exists(), "a name that is not a restore's is not touched");
    let mut names = listing(&dir);
    names.retain(|n| !n.starts_with("node/"));
    assert_eq!(names, [".node.restore.notapid", "node", "snapshot.snapply"]);
}

#[test]
fn data_files_are_0600_and_directories_0700_whatever_the_umask() {
    let dir = scratch("modes");
    let umask0 = |args: &[&dyn AsRef<std::ffi::OsStr>]| {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "umask 000; exec \"$@\"", "sh"]).arg(assert_cmd::cargo::cargo_bin("snapply"));
        for a in args {
            cmd.arg(a);
        }
        ok(&cmd.timeout(std::time::Duration::from_secs(120)).output().unwrap());
    };
    let image = dir.join("image.snapply");
    umask0(&[&"import-etcd", &fixture().snapshot, &"-o", &image]);
    let node = dir.join("node");
    umask0(&[&"restore", &image, &"--data-dir", &node]);
    let from_etcd = dir.join("from-etcd");
    umask0(&[&"restore", &fixture().snapshot, &"--data-dir", &from_etcd]);
    let again = dir.join("again.snapply");
    umask0(&[&"create", &"--data-dir", &node, &"-o", &again]);
    let mut got = modes(&node);
    got.extend(modes(&from_etcd));
    for file in [&image, &again] {
        let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(file).unwrap().permissions());
        got.push((file.display().to_string(), mode & 0o777));
    }
    let want: Vec<(String, u32)> =
        got.iter().map(|(p, _)| (p.clone(), if Path::new(p).is_dir() { 0o700 } else { 0o600 })).collect();
    assert_eq!(got, want);
}

#[test]
fn create_reads_the_data_directory_without_writing_to_it() {
    let dir = scratch("create-read-only");
    let image = image_of_fixture(&dir);
    let node = dir.join("node");
    ok(&snapply(&[&"restore", &image, &"--data-dir", &node]));
    let before = contents(&node);
    let out = dir.join("created.snapply");
    ok(&snapply(&[&"create", &"--data-dir", &node, &"-o", &out]));
    assert!(contents(&node) == before, "not a byte of the data directory changed");
    assert_eq!(ok(&snapply(&[&"verify", &out])), ok(&snapply(&[&"verify", &image])));
    // On a read-only mount too.
    let script = r#"mount --bind "$2" "$2" && mount -o remount,bind,ro "$2" || exit 99
exec "$1" create --data-dir "$2" -o "$3""#;
    let again = dir.join("again.snapply");
    ok(&in_namespace(script, &[&node, &again]));
    assert_eq!(ok(&snapply(&[&"verify", &again])), ok(&snapply(&[&"verify", &image])));
}

#[test]
fn status_says_what_its_digest_covers_and_demo_documents_its_exit_codes() {
    let dir = scratch("status-digest");
    let image = image_of_fixture(&dir);
    let status: Value = serde_json::from_str(&ok(&snapply(&[&"status", &image, &"--json"]))).unwrap();
    let covers = status["sha256_covers"].as_str().expect("what the digest covers");
    assert!(covers.contains("before its trailer frame") && covers.contains("not the file's sha256sum"), "{covers}");
    let table = ok(&snapply(&[&"status", &image]));
    assert!(table.lines().any(|l| l.starts_with("sha256_covers")), "{table}");
    let help = ok(&snapply(&[&"demo", &"--help"]));
    assert!(help.contains("Exit codes:") && help.contains("1  the states differ"), "{help}");
}

#[test]
fn an_image_with_valid_frames_and_a_wrong_digest_is_refused_by_every_command() {
    let dir = scratch("wrong-digest");
    let image = image_of_fixture(&dir);
    // Every frame's CRC is right: only the SHA-256 check can refuse it.
    let forged = dir.join("forged.snapply");
    std::fs::write(&forged, snapply_tests::forge::with_wrong_digest(&std::fs::read(&image).unwrap())).unwrap();
    let before = listing(&dir);
    refused(&snapply(&[&"restore", &forged, &"--data-dir", &dir.join("node")]), BAD_INPUT, "SHA-256 mismatch");
    for cmd in ["verify", "status", "inspect"] {
        refused(&snapply(&[&cmd, &forged]), BAD_INPUT, "SHA-256 mismatch");
    }
    assert_eq!(listing(&dir), before, "nothing created");
}
