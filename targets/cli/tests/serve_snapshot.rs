//! `snapply serve` clusters of separate processes on loopback take snapshots on their own
//! policy (`--snapshot-count`), keep their raft logs bounded, and catch lagging members up by a
//! snapshot sent out of band, also when the receiver or the sender is killed during the
//! transfer.

// Test scaffolding: a failure here is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, clippy::unreachable)]

mod support;

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::{Kv, KvError};

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

    /// A gRPC client of the member, once it listens.
    fn connect(&self) -> Conn {
        let deadline = Instant::now() + WAIT;
        loop {
            match Kv::new(self.client, Duration::from_secs(30)) {
                Ok(kv) => return Conn(kv),
                Err(e) => {
                    assert!(Instant::now() < deadline, "{} never listened: {e}", self.name);
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }
}

/// A client of a member's gRPC API (etcd's KV service).
struct Conn(Kv);

impl Conn {
    /// Puts until the member acknowledges it (it refuses while there is no leader).
    fn put(&mut self, key: &str, value: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            match self.0.put(key, value) {
                Ok(_) => return,
                Err(e) => assert!(Instant::now() < deadline, "put {key}: {e}"),
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Every key and value in `[start, end)`, read linearizably.
    fn range(&mut self, start: &str, end: &str) -> BTreeMap<String, String> {
        self.read(false, start, end).unwrap()
    }

    /// Every key and value in `[start, end)`, read serializably if `serializable`; an error if
    /// the member goes away or refuses.
    fn read(&mut self, serializable: bool, start: &str, end: &str) -> Result<BTreeMap<String, String>, KvError> {
        Ok(self.0.range(start, end, serializable)?.into_iter().collect())
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
        let writers = writers(keys, value_len);
        self.write_from(via, &writers);
        writers.into_iter().flatten().collect()
    }

    /// Puts each of `writers`' writes through member `via`, the writers at once, each one's
    /// writes one after another (each once the one before it was acknowledged).
    fn write_from(&self, via: usize, writers: &[Vec<(String, String)>]) {
        let member = &self.members[via];
        std::thread::scope(|s| {
            for writes in writers {
                s.spawn(move || {
                    let mut conn = member.connect();
                    for (key, value) in writes {
                        conn.put(key, value);
                    }
                });
            }
        });
    }

    /// Member `i`'s keys once it has applied everything acknowledged so far: a put through it
    /// returns once it applied the put, so every earlier entry too.
    fn keys_on(&self, i: usize) -> BTreeMap<String, String> {
        let mut conn = self.members[i].connect();
        conn.put("/sync", &format!("m{i}"));
        conn.range("/k", "/l")
    }
}

/// The puts of `/k<i>` for every `i` in `keys`, `value_len`-byte values, split among four
/// writers, each writer's in order.
fn writers(keys: std::ops::Range<usize>, value_len: usize) -> Vec<Vec<(String, String)>> {
    let writes: Vec<(String, String)> = keys.map(|i| kv(i, value_len)).collect();
    writes.chunks(writes.len().div_ceil(4).max(1)).map(<[_]>::to_vec).collect()
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
    }
    // Images are built only for the follower that needed one (the policy's snapshots write
    // none), and no more than --max-snapshots are kept.
    let images: Vec<usize> = cluster
        .members
        .iter()
        .map(|m| {
            std::fs::read_dir(m.data.join("member/snap"))
                .unwrap()
                .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".image"))
                .count()
        })
        .collect();
    assert!(images.iter().all(|&n| n <= 2), "images kept with --max-snapshots 2: {images:?}");
    assert!(images.iter().sum::<usize>() >= 1, "the image member 2 was sent: {images:?}");
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

/// Whether `state` is exactly the effect of a prefix of each writer's writes (each writer makes
/// its writes one after another; writers write different keys): how many of each writer's
/// writes it shows, or what is out of place. A state where a writer's later write is visible
/// and its earlier one is not, or that holds a value no such prefix leaves, is a mix.
fn prefix_of(state: &BTreeMap<String, String>, writers: &[Vec<(String, String)>]) -> Result<Vec<usize>, String> {
    let mut expected = BTreeMap::new();
    let mut shown = Vec::new();
    for writes in writers {
        // The writer's last write whose effect is visible.
        let p = writes.iter().rposition(|(key, value)| state.get(key) == Some(value)).map_or(0, |last| last + 1);
        let prefix = &writes[..p];
        if let Some((key, _)) = prefix.iter().find(|(key, _)| !state.contains_key(key)) {
            return Err(format!("{key} is missing while the later write of {} is visible", writes[p - 1].0));
        }
        expected.extend(prefix.iter().cloned());
        shown.push(p);
    }
    match state.iter().find(|(key, value)| expected.get(*key) != Some(value)) {
        Some((key, value)) => Err(format!("{key} = {value:.20}…, which no prefix of the writes leaves")),
        None => Ok(shown),
    }
}

#[test]
fn prefix_of_takes_every_prefix_and_refuses_a_gap_or_a_stale_value() {
    // The first writer writes /k000001 twice: the effect of a prefix of four or more of its
    // writes has the second value.
    let first: Vec<(String, String)> =
        (0..3).map(|i| kv(i, 8)).chain([("/k000001".into(), "new".into()), kv(3, 8)]).collect();
    let writers = [first.clone(), vec![kv(10, 8), kv(11, 8)]];
    let state =
        |writes: &[&[(String, String)]]| writes.iter().flat_map(|w| w.iter().cloned()).collect::<BTreeMap<_, _>>();
    for p in 0..=first.len() {
        for q in 0..=2 {
            assert_eq!(prefix_of(&state(&[&first[..p], &writers[1][..q]]), &writers), Ok(vec![p, q]));
        }
    }
    // /k000002 visible, /k000001 not.
    let gap = state(&[&first[..1], &first[2..3]]);
    assert!(prefix_of(&gap, &writers).unwrap_err().contains("/k000001 is missing"), "{gap:?}");
    // The second writer's second write without its first.
    let gap = state(&[&first, &writers[1][1..]]);
    assert!(prefix_of(&gap, &writers).unwrap_err().contains("/k000010 is missing"), "{gap:?}");
    // The first writer's last write visible, with /k000001's first value: old and new mixed.
    let mut stale = state(&[&first]);
    stale.insert(first[1].0.clone(), first[1].1.clone());
    assert!(prefix_of(&stale, &writers).unwrap_err().contains("/k000001 = v1-"), "{stale:?}");
    // A key nobody wrote.
    let mut foreign = state(&[&first[..2]]);
    foreign.insert("/k9".into(), "x".into());
    assert!(prefix_of(&foreign, &writers).is_err());
}

/// What a member served to serializable reads of all its keys, made over and over on a thread of
/// their own (reconnecting while the member restarts) until `stop`: each state checked against
/// the writes as it is read.
#[derive(Default)]
struct Served {
    reads: usize,
    /// Every distinct state served, as how many of each writer's writes it shows.
    prefixes: std::collections::BTreeSet<Vec<usize>>,
    /// The first state that was not the effect of a prefix.
    mix: Option<String>,
}

fn watch(
    member: &Member,
    pause: Duration,
    writers: std::sync::Arc<Vec<Vec<(String, String)>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<Served> {
    let (name, port) = (member.name.clone(), member.client);
    std::thread::spawn(move || {
        let mut served = Served::default();
        let mut conn = None;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) && served.mix.is_none() {
            let Some(c) = conn.as_mut() else {
                conn = Kv::new(port, Duration::from_secs(30)).ok().map(Conn);
                std::thread::sleep(Duration::from_millis(5));
                continue;
            };
            match c.read(true, "/k", "/l") {
                Ok(state) => {
                    std::thread::sleep(pause);
                    served.reads += 1;
                    match prefix_of(&state, &writers) {
                        Ok(p) => _ = served.prefixes.insert(p),
                        Err(e) => served.mix = Some(format!("{name} served a mix: {e}")),
                    }
                }
                // Killed, or not serving yet.
                Err(_) => conn = None,
            }
        }
        served
    })
}

/// The follower is SIGKILLed at 12 seeded moments after it starts receiving the leader's
/// snapshot (while the image arrives, is persisted, is applied), and the leader once while it
/// sends; after restarts every acknowledged write is on every member. Every member is read
/// serializably all along (while it runs, restarts, receives and catches up), and each state it
/// serves is the effect of a prefix of each writer's writes: never a mix of old and new state.
#[test]
fn killing_the_receiver_or_the_sender_during_a_transfer_loses_no_acknowledged_write() {
    const ROUNDS: usize = 12;
    let mut cluster = Cluster::start(3, &policy());
    // The writes of each phase of the test, split among four writers: ten small ones, then in
    // each round enough bytes that the transfer and its persist take a while, then the writes
    // around the sender's kill.
    let rounds_end = 10 + ROUNDS * 3 * COUNT;
    let phases: Vec<Vec<Vec<(String, String)>>> = std::iter::once(writers(0..10, 32))
        .chain((0..ROUNDS).map(|r| writers(10 + r * 3 * COUNT..10 + (r + 1) * 3 * COUNT, 4096)))
        .chain([
            writers(rounds_end..rounds_end + 3 * COUNT, 1024),
            writers(rounds_end + 3 * COUNT..rounds_end + 3 * COUNT + 10, 32),
        ])
        .collect();
    // Each writer's writes over the whole test: a phase starts once the one before it was
    // acknowledged.
    let whole: Vec<Vec<(String, String)>> =
        (0..4).map(|w| phases.iter().flat_map(|phase| phase[w].iter().cloned()).collect()).collect();
    let whole = std::sync::Arc::new(whole);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // The receiver densely, while it restarts; the others now and then.
    let pauses = [Duration::from_millis(100), Duration::from_millis(100), Duration::ZERO];
    let watches: Vec<_> =
        cluster.members.iter().zip(pauses).map(|(m, pause)| watch(m, pause, whole.clone(), stop.clone())).collect();
    cluster.write_from(0, &phases[0]);
    // A seeded xorshift: the kill delays, in milliseconds after the follower logged that the
    // snapshot is arriving.
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for round in 0..ROUNDS {
        cluster.members[2].kill();
        cluster.write_from(0, &phases[1 + round]);
        let from = cluster.members[2].log_text().len();
        cluster.start_member(2);
        cluster.members[2].wait_log(from, "receiving database snapshot");
        // Up to 40, 80, 160 or 320 ms: while the image arrives, while it is persisted, while
        // it is applied, after (a 15 MB image takes about 200 ms to arrive and persist here).
        let delay = next() % (40 << (round % 4));
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
    cluster.write_from(0, &phases[1 + ROUNDS]);
    let from = cluster.members[2].log_text().len();
    let sent_from = [cluster.members[0].log_text().len(), cluster.members[1].log_text().len()];
    cluster.start_member(2);
    cluster.members[2].wait_log(from, "receiving database snapshot");
    let leader = (0..2).find(|&i| {
        cluster.members[i].log_text().get(sent_from[i]..).is_some_and(|t| t.contains("sending database snapshot"))
    });
    let leader = leader.expect("a member sent the snapshot");
    cluster.members[leader].kill();
    cluster.write_from(1 - leader, &phases[2 + ROUNDS]);
    cluster.start_member(leader);
    cluster.members[2].wait_log(from, "applied snapshot at index");
    let held: Vec<BTreeMap<String, String>> = (0..3).map(|i| cluster.keys_on(i)).collect();
    // Every member, the restarted ones too, served only prefixes of the writes, and was seen
    // serving several of them: the check was made while it caught up, not only at the end.
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for (m, watch) in cluster.members.iter().zip(watches) {
        let served = watch.join().unwrap();
        eprintln!("{}: {} serializable reads, {} distinct states", m.name, served.reads, served.prefixes.len());
        assert_eq!(served.mix, None);
        assert!(served.prefixes.len() > 2, "{} served {:?}", m.name, served.prefixes);
    }
    let acked: BTreeMap<String, String> = whole.iter().flatten().cloned().collect();
    for (m, held) in cluster.members.iter().zip(held) {
        assert_eq!(held, acked, "every acknowledged key is on {}", m.name);
    }
}
