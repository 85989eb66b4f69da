//! `snapply serve`: a one-member cluster answers put/get/range/delete through etcd's gRPC API on
//! its client port, and closes a connection that speaks neither HTTP/2 nor HTTP/1; bad
//! flags get a one-line error, exit code 1 and nothing written.

// Test scaffolding: a failure here is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, clippy::unreachable)]

mod support;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::{Kv, KvError};

/// Kills the server when the test ends, however it ends.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn snapply() -> Command {
    Command::new(env!("CARGO_BIN_EXE_snapply"))
}

/// Starts a one-member `snapply serve` on `data` and connects a gRPC client to its client port,
/// once the member elected itself (until then a put is refused: the first one is retried).
fn serve(data: &std::path::Path, peer: u16, client: u16) -> (Server, Kv) {
    let child = snapply()
        .args(["serve", "--name", "infra1", "--data-dir"])
        .arg(data)
        .arg("--initial-cluster")
        .arg(format!("infra1=http://127.0.0.1:{peer}"))
        .arg("--listen-client-urls")
        .arg(format!("http://127.0.0.1:{client}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let server = Server(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match Kv::new(client, Duration::from_secs(30)).and_then(|mut kv| kv.put("/ready", "").map(|_| kv)) {
            Ok(kv) => return (server, kv),
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => panic!("the server never took a put: {e}"),
        }
    }
}

#[test]
fn one_member_serves_put_get_range_and_delete() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, mut kv) = serve(&dir.path().join("infra1"), free_port(), free_port());
    let first = kv.put("/a", "hello world").unwrap();
    assert_eq!(kv.put("/b", "second").unwrap(), first + 1, "each put is one revision");
    assert_eq!(kv.get("/a", false).unwrap().as_deref(), Some("hello world"));
    assert_eq!(kv.get("/a", true).unwrap().as_deref(), Some("hello world"));
    let both = vec![("/a".to_string(), "hello world".to_string()), ("/b".into(), "second".into())];
    assert_eq!(kv.range("/a", "/c", false).unwrap(), both);
    assert_eq!(kv.range("/a", "/c", true).unwrap(), both);
    assert_eq!(kv.delete("/a").unwrap(), (first + 2, 1));
    assert_eq!(kv.get("/a", false).unwrap(), None);
    assert_eq!(kv.delete("/a").unwrap(), (first + 2, 0), "deleting nothing makes no revision");
    assert_eq!(
        kv.put("", "v"),
        Err(KvError::Status(tonic::Code::InvalidArgument, "etcdserver: key is not provided".into()))
    );
}

/// A connection on the client URL that speaks neither HTTP/2 (gRPC) nor HTTP/1 (`/metrics`,
/// `/health`) is closed without an answer.
#[test]
fn a_connection_that_is_not_http_is_closed() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let client = free_port();
    let (_server, mut kv) = serve(&dir.path().join("infra1"), free_port(), client);
    kv.put("/k", "v").unwrap();
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", client)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    stream.write_all(b"get /k\n").unwrap();
    let mut answer = Vec::new();
    let read = stream.read_to_end(&mut answer);
    assert!(read.is_ok() || answer.is_empty(), "{read:?}");
    assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));
    // The member goes on serving.
    assert_eq!(kv.get("/k", false).unwrap().as_deref(), Some("v"));
}

/// The backend commits in batches (etcd's batch interval): a put is acknowledged once the raft
/// log holds it, before the backend's file does. Killed right after its acknowledgements, the
/// member replays from its log what the backend lost, and every acknowledged put is there.
#[test]
fn a_member_killed_right_after_acknowledging_puts_has_them_all_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("infra1");
    let (peer, client) = (free_port(), free_port());
    let (mut server, mut kv) = serve(&data, peer, client);
    const KEYS: usize = 300;
    for i in 0..KEYS {
        kv.put(&format!("/k{i:03}"), &format!("v{i}")).unwrap_or_else(|e| panic!("put {i}: {e}"));
    }
    // SIGKILL: no destructor runs, nothing is closed cleanly.
    server.0.kill().unwrap();
    server.0.wait().unwrap();
    drop(server);
    drop(kv);

    let (_server, mut kv) = serve(&data, peer, client);
    // Once this put is applied, so is every entry before it.
    kv.put("/after", "restart").unwrap();
    let held = kv.range("/k", "/l", false).unwrap();
    let want: Vec<(String, String)> = (0..KEYS).map(|n| (format!("/k{n:03}"), format!("v{n}"))).collect();
    assert_eq!(held.len(), KEYS, "every acknowledged put survives the kill");
    assert_eq!(held, want);
}

#[test]
fn bad_flags_get_a_one_line_error_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_port = busy.local_addr().unwrap().port();
    let free = free_port();
    // Bad flags exit with 2, a port already in use with 5 (the CLI's exit codes).
    let cases: [(Vec<String>, &str, i32); 3] = [
        (
            vec![
                "--name".into(),
                "infra9".into(),
                "--initial-cluster".into(),
                format!("infra1=http://127.0.0.1:{free}"),
            ],
            "not in --initial-cluster",
            2,
        ),
        (
            vec!["--name".into(), "infra1".into(), "--initial-cluster".into(), "infra1=localhost".into()],
            "is not http://IP:PORT",
            2,
        ),
        (
            vec![
                "--name".into(),
                "infra1".into(),
                "--initial-cluster".into(),
                format!("infra1=http://127.0.0.1:{busy_port}"),
            ],
            "is another member running there?",
            5,
        ),
    ];
    for (args, want, code) in cases {
        let out = snapply().arg("serve").arg("--data-dir").arg(&data).args(&args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.starts_with("error: ") && stderr.contains(want), "{args:?}: {stderr}");
        assert!(!data.exists(), "nothing written for {args:?}");
    }
    // With --log-format json the refusal is one JSON log line, as etcd's zap logger writes.
    let out = snapply()
        .args(["serve", "--log-format", "json", "--name", "infra9", "--initial-cluster"])
        .arg(format!("infra1=http://127.0.0.1:{free}"))
        .arg("--data-dir")
        .arg(&data)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let line: serde_json::Value = serde_json::from_str(stderr.trim()).expect("one JSON line");
    assert_eq!(line["level"], "error", "{stderr}");
    assert!(line["msg"].as_str().is_some_and(|m| m.contains("not in --initial-cluster")), "{stderr}");
    assert!(!data.exists());
    drop(busy);
}
