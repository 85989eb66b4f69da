//! `snapply serve`: a one-member cluster answers put/get/range/del on its client port; bad
//! flags get a one-line error, exit code 1 and nothing written.

// Test scaffolding: a failure here is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, clippy::unreachable)]

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Kills the server when the test ends, however it ends.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    deadline: Instant,
}

impl Conn {
    fn line(&mut self) -> String {
        let mut line = String::new();
        self.reader.read_line(&mut line).unwrap();
        line.trim_end().to_string()
    }

    /// Sends `req` and reads the first answer line. The member elects itself first: until
    /// then a put is refused, so a put is retried.
    fn ask(&mut self, req: &str) -> String {
        loop {
            self.writer.write_all(format!("{req}\n").as_bytes()).unwrap();
            let line = self.line();
            if line.starts_with("ERR") && req.starts_with("put") && Instant::now() < self.deadline {
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            return line;
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn snapply() -> Command {
    Command::new(env!("CARGO_BIN_EXE_snapply"))
}

/// Starts a one-member `snapply serve` on `data` and connects to its client port.
fn serve(data: &std::path::Path, peer: u16, client: u16) -> (Server, Conn) {
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
    let stream = loop {
        match TcpStream::connect(("127.0.0.1", client)) {
            Ok(s) => break s,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => panic!("the server never listened: {e}"),
        }
    };
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let reader = BufReader::new(stream.try_clone().unwrap());
    (server, Conn { reader, writer: stream, deadline })
}

#[test]
fn one_member_serves_put_get_range_and_delete() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, mut conn) = serve(&dir.path().join("infra1"), free_port(), free_port());
    assert!(conn.ask("put /a hello world").starts_with("OK "));
    assert!(conn.ask("put /b second").starts_with("OK "));
    assert_eq!(conn.ask("get /a"), "VALUE hello world");
    assert_eq!(conn.ask("range /a /c"), "KV /a hello world");
    assert_eq!(conn.line(), "KV /b second");
    assert_eq!(conn.line(), "END");
    assert!(conn.ask("del /a").starts_with("OK "));
    assert_eq!(conn.ask("get /a"), "NOTFOUND");
    assert!(conn.ask("frobnicate").starts_with("ERR unknown request"));
}

/// The backend commits in batches (etcd's batch interval): a put is acknowledged once the raft
/// log holds it, before the backend's file does. Killed right after its acknowledgements, the
/// member replays from its log what the backend lost, and every acknowledged put is there.
#[test]
fn a_member_killed_right_after_acknowledging_puts_has_them_all_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("infra1");
    let (peer, client) = (free_port(), free_port());
    let (mut server, mut conn) = serve(&data, peer, client);
    const KEYS: usize = 300;
    for i in 0..KEYS {
        let reply = conn.ask(&format!("put /k{i:03} v{i}"));
        assert!(reply.starts_with("OK "), "put {i}: {reply}");
    }
    // SIGKILL: no destructor runs, nothing is closed cleanly.
    server.0.kill().unwrap();
    server.0.wait().unwrap();
    drop(server);

    let (_server, mut conn) = serve(&data, peer, client);
    // Once this put is applied, so is every entry before it.
    assert!(conn.ask("put /after restart").starts_with("OK "));
    let mut n = 0;
    assert_eq!(conn.ask("range /k /l"), "KV /k000 v0");
    loop {
        n += 1;
        let line = conn.line();
        if line == "END" {
            break;
        }
        assert_eq!(line, format!("KV /k{n:03} v{n}"));
    }
    assert_eq!(n, KEYS, "every acknowledged put survives the kill");
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
