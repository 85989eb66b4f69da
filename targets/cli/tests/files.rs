//! The file commands as a user runs them: `import-etcd`, `restore`, `status`, `inspect`,
//! `verify` and `create`, each with good input and with bad input (missing, corrupt, cut
//! short, a page loop, a data directory not empty or in use). A bad input must give a one-line
//! error, the documented exit code, and leave the disk as it was.
//!
//! The etcd snapshot comes from a real etcd (Debian's `etcd-server`/`etcd-client`; the tests
//! fail, not skip, without them).

#[path = "../../../adapters/etcd/tests/common/mod.rs"]
mod etcd;

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
        let server = etcd::Etcd::start(&dir, &[]);
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
    assert_eq!(status["conf_state"]["voters"], serde_json::json!([10, 11]));
    assert_eq!(status["conf_state"]["learners"], serde_json::json!([12]));
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
        let out = snapply(&[&"import-etcd", &dir.join(name), &"-o", &dir.join("out.snapply")]);
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
        refused(&snapply(&[&"restore", &dir.join(input), &"--data-dir", &target]), BAD_INPUT, words);
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
        refused(&snapply(&[&cmd, &fixture().snapshot]), BAD_INPUT, "not a valid snapply image");
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
