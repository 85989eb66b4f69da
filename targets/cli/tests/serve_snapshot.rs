//! `snapply serve` clusters of separate processes on loopback take snapshots on their own
//! policy (`--snapshot-count`), keep their raft logs bounded, and catch lagging members up by a
//! snapshot sent out of band, also when the receiver or the sender is killed during the
//! transfer.

// Test scaffolding: a failure here is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, clippy::unreachable)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long any one step may take before the test fails.
const WAIT: Duration = Duration::from_secs(90);

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// One member: its ports, data directory and log file; its process while it runs.
struct Member {
    name: String,
    peer: u16,
    client: u16,
    data: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Member {
    /// SIGKILL: nothing is closed cleanly.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The member's log so far (every run's, appended).
    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the member's log has a line with `pattern` after byte `from`; returns it.
    fn wait_log(&self, from: usize, pattern: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let text = self.log_text();
            if let Some(line) = text.get(from..).and_then(|t| t.lines().find(|l| l.contains(pattern))) {
                return line.to_string();
            }
            assert!(Instant::now() < deadline, "{} never logged `{pattern}`:\n{text}", self.name);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn connect(&self) -> Conn {
        let deadline = Instant::now() + WAIT;
        let stream = loop {
            match TcpStream::connect(("127.0.0.1", self.client)) {
                Ok(s) => break s,
                Err(e) => {
                    assert!(Instant::now() < deadline, "{} never listened: {e}", self.name);
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        };
        stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        Conn { reader: BufReader::new(stream.try_clone().unwrap()), writer: stream }
    }
}

struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Conn {
    fn ask(&mut self, req: &str) -> std::io::Result<String> {
        self.writer.write_all(format!("{req}\n").as_bytes())?;
        let mut line = String::new();
        self.reader.read_line(&mut line)?;
        if line.is_empty() {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        Ok(line.trim_end().to_string())
    }

    /// Puts until the member acknowledges it (it refuses while there is no leader).
    fn put(&mut self, key: &str, value: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            let reply = self.ask(&format!("put {key} {value}")).unwrap();
            if reply.starts_with("OK ") {
                return;
            }
            assert!(Instant::now() < deadline, "put {key}: {reply}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Every key and value in `[start, end)`.
    fn range(&mut self, start: &str, end: &str) -> BTreeMap<String, String> {
        self.writer.write_all(format!("range {start} {end}\n").as_bytes()).unwrap();
        let mut out = BTreeMap::new();
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line).unwrap();
            let line = line.trim_end();
            if line == "END" {
                return out;
            }
            let mut words = line.splitn(3, ' ');
            assert_eq!(words.next(), Some("KV"), "{line}");
            let key = words.next().unwrap().to_string();
            out.insert(key, words.next().unwrap_or_default().to_string());
        }
    }
}

struct Cluster {
    members: Vec<Member>,
    flags: Vec<String>,
    _root: tempfile::TempDir,
}

impl Cluster {
    /// `n` members on free ports with `flags` (the snapshot policy), all started.
    fn start(n: usize, flags: &[&str]) -> Self {
        let root = tempfile::tempdir().unwrap();
        let members = (1..=n)
            .map(|i| Member {
                name: format!("infra{i}"),
                peer: free_port(),
                client: free_port(),
                data: root.path().join(format!("infra{i}")),
                log: root.path().join(format!("infra{i}.log")),
                child: None,
            })
            .collect();
        let mut cluster = Cluster { members, flags: flags.iter().map(|f| f.to_string()).collect(), _root: root };
        for i in 0..n {
            cluster.start_member(i);
        }
        cluster
    }

    fn initial_cluster(&self) -> String {
        let urls: Vec<String> =
            self.members.iter().map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer)).collect();
        urls.join(",")
    }

    fn start_member(&mut self, i: usize) {
        let initial = self.initial_cluster();
        let m = &mut self.members[i];
        assert!(m.child.is_none());
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&m.log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_snapply"))
            .args(["serve", "--name", &m.name, "--data-dir"])
            .arg(&m.data)
            .args(["--initial-cluster", &initial])
            .arg("--listen-client-urls")
            .arg(format!("http://127.0.0.1:{}", m.client))
            .args(&self.flags)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        m.child = Some(child);
    }

    /// Puts `/k<i>` for every `i` in `keys` through member `via`, from four connections at once;
    /// returns what was acknowledged.
    fn write(&self, via: usize, keys: std::ops::Range<usize>, value_len: usize) -> BTreeMap<String, String> {
        let member = &self.members[via];
        let keys: Vec<usize> = keys.collect();
        std::thread::scope(|s| {
            let handles: Vec<_> = keys
                .chunks(keys.len().div_ceil(4).max(1))
                .map(|part| {
                    s.spawn(move || {
                        let mut conn = member.connect();
                        let mut acked = BTreeMap::new();
                        for &i in part {
                            let (key, value) = kv(i, value_len);
                            conn.put(&key, &value);
                            acked.insert(key, value);
                        }
                        acked
                    })
                })
                .collect();
            handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
        })
    }

    /// Member `i`'s keys once it has applied everything acknowledged so far: a put through it
    /// returns once it applied the put, so every earlier entry too.
    fn keys_on(&self, i: usize) -> BTreeMap<String, String> {
        let mut conn = self.members[i].connect();
        conn.put("/sync", &format!("m{i}"));
        conn.range("/k", "/l")
    }
}

/// Key `i` and its value, `value_len` bytes long.
fn kv(i: usize, value_len: usize) -> (String, String) {
    let mut value = format!("v{i}-");
    while value.len() < value_len {
        value.push((b'a' + (i % 26) as u8) as char);
    }
    (format!("/k{i:06}"), value)
}

/// The index of a line `... at index N ...`.
fn index_in(line: &str) -> u64 {
    let rest = line.split("at index ").nth(1).unwrap_or_else(|| panic!("no index in {line}"));
    rest.split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap()
}

/// The indexes of the snapshots a member saved.
fn saved_snapshots(log: &str) -> Vec<u64> {
    log.lines().filter(|l| l.contains("saved snapshot at index")).map(index_in).collect()
}

/// Asserts that member `i` applied a snapshot some member saved, logged after byte `from` of its
/// log; returns its index.
fn assert_caught_up_by_snapshot(cluster: &Cluster, i: usize, from: usize) -> u64 {
    let line = cluster.members[i].wait_log(from, "applied snapshot at index");
    let index = index_in(&line);
    let saved: Vec<u64> = cluster.members.iter().flat_map(|m| saved_snapshots(&m.log_text())).collect();
    assert!(saved.contains(&index), "{} applied snapshot {index}, none saved it: {saved:?}", cluster.members[i].name);
    index
}

const COUNT: usize = 100;

fn policy() -> Vec<&'static str> {
    vec!["--snapshot-count", "100", "--snapshot-catchup-entries", "50", "--max-snapshots", "2"]
}

#[test]
fn a_restarted_member_catches_up_by_snapshot_and_raft_logs_stay_bounded() {
    let mut cluster = Cluster::start(3, &policy());
    let mut acked = cluster.write(0, 0..20, 32);
    cluster.members[2].kill();
    let from = cluster.members[2].log_text().len();
    // Ten times the snapshot count, while the member is down: its log would have to replay
    // them all without a snapshot.
    acked.extend(cluster.write(0, 20..10 * COUNT, 32));
    cluster.start_member(2);
    let index = assert_caught_up_by_snapshot(&cluster, 2, from);
    assert!(index > 20, "the snapshot covers the writes made while it was down: {index}");
    for i in 0..3 {
        assert_eq!(cluster.keys_on(i), acked, "every acknowledged key reads back from {}", cluster.members[i].name);
    }
    // Bounded logs: each member compacted its log again and again, and after every compaction
    // it held at most the catch-up entries and what was applied while the image was built.
    for m in &cluster.members[..2] {
        let log = m.log_text();
        let compactions: Vec<(u64, u64)> = log
            .lines()
            .filter_map(|l| l.split("log holds entries ").nth(1))
            .map(|r| {
                let mut it = r.split(" to ");
                let first: u64 = it.next().unwrap().parse().unwrap();
                let last: u64 = it.next().unwrap().trim().parse().unwrap();
                (first, last)
            })
            .collect();
        assert!(compactions.len() >= 8, "{} compacted its log {} times:\n{log}", m.name, compactions.len());
        for (first, last) in compactions {
            assert!(last + 1 - first <= 2 * COUNT as u64, "{}: log holds {first}..={last}", m.name);
        }
        let images = std::fs::read_dir(m.data.join("member/snap"))
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".image"))
            .count();
        assert!((1..=2).contains(&images), "{}: {images} images kept with --max-snapshots 2", m.name);
    }
}

#[test]
fn two_lagging_followers_are_both_caught_up_by_snapshot() {
    let mut cluster = Cluster::start(5, &policy());
    let mut acked = cluster.write(0, 0..10, 32);
    cluster.members[3].kill();
    cluster.members[4].kill();
    let from = [cluster.members[3].log_text().len(), cluster.members[4].log_text().len()];
    acked.extend(cluster.write(0, 10..3 * COUNT + 10, 256));
    cluster.start_member(3);
    cluster.start_member(4);
    for (i, from) in [(3, from[0]), (4, from[1])] {
        assert_caught_up_by_snapshot(&cluster, i, from);
        assert_eq!(cluster.keys_on(i), acked, "{}", cluster.members[i].name);
    }
}

/// The follower is SIGKILLed at 12 seeded moments after it starts receiving the leader's
/// snapshot (while the image arrives, is persisted, is applied), and the leader once while it
/// sends;
/// after restarts every acknowledged write is on every member.
#[test]
fn killing_the_receiver_or_the_sender_during_a_transfer_loses_no_acknowledged_write() {
    let mut cluster = Cluster::start(3, &policy());
    let mut acked = cluster.write(0, 0..10, 32);
    // A seeded xorshift: the kill delays, in milliseconds after the follower logged that the
    // snapshot is arriving.
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut key = 10;
    for round in 0..12 {
        cluster.members[2].kill();
        // Enough bytes that the transfer and its persist take a while.
        acked.extend(cluster.write(0, key..key + 3 * COUNT, 4096));
        key += 3 * COUNT;
        let from = cluster.members[2].log_text().len();
        cluster.start_member(2);
        cluster.members[2].wait_log(from, "receiving database snapshot");
        // Up to 20, 40, 80 or 160 ms: while the image arrives, while it is persisted, while
        // it is applied, after.
        let delay = next() % (20 << (round % 4));
        std::thread::sleep(Duration::from_millis(delay));
        cluster.members[2].kill();
        let log = cluster.members[2].log_text();
        let reached = ["applied snapshot at index", "received and saved database snapshot", "receiving database"]
            .into_iter()
            .find(|p| log.get(from..).is_some_and(|t| t.contains(p)))
            .unwrap_or_default();
        eprintln!("round {round}: receiver killed {delay} ms into a transfer, after `{reached}`");
    }
    // The sender killed while it sends: the follower is caught up by the new leader.
    acked.extend(cluster.write(0, key..key + 3 * COUNT, 1024));
    let from = cluster.members[2].log_text().len();
    let sent_from = [cluster.members[0].log_text().len(), cluster.members[1].log_text().len()];
    cluster.start_member(2);
    cluster.members[2].wait_log(from, "receiving database snapshot");
    let leader = (0..2).find(|&i| {
        cluster.members[i].log_text().get(sent_from[i]..).is_some_and(|t| t.contains("sending database snapshot"))
    });
    let leader = leader.expect("a member sent the snapshot");
    cluster.members[leader].kill();
    acked.extend(cluster.write(1 - leader, key + 3 * COUNT..key + 3 * COUNT + 10, 32));
    cluster.start_member(leader);
    cluster.members[2].wait_log(from, "applied snapshot at index");
    for i in 0..3 {
        assert_eq!(cluster.keys_on(i), acked, "every acknowledged key is on {}", cluster.members[i].name);
    }
}
