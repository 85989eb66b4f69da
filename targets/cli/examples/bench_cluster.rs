//! A 3-member etcd cluster and a 3-member `snapply serve` cluster loaded by the same client:
//! the driver of `cargo xtask bench --cluster` (BENCHMARKS.md, "A cluster beside etcd's").
//!
//! ```text
//! bench_cluster --etcd PATH --snapply PATH --dir DIR [--keys N[,N...]] [--sides etcd,snapply]
//!               [--snapshot-count C] [--concurrency K]
//! ```
//!
//! For each size N and each side, in its own directory under DIR: three members as separate
//! processes on loopback, on free ports, all started with `--snapshot-count C` (etcd 3.4's
//! snapshot catch-up entries are 5,000, snapply's `--snapshot-catchup-entries` default too).
//! Then, through one `etcd-client` connection to the leader with K puts in flight:
//! 1. the first N/10 keys `/bench/key-<i>` of 256-byte values are put;
//! 2. a follower's `VmHWM` is read, and it is stopped (SIGTERM);
//! 3. the other keys are put: load throughput is N over the time of steps 1 and 3;
//! 4. the follower is restarted; caught up is when it serves all N keys to a serializable count
//!    (polled every 20 ms); its log gives `receiving database snapshot` and `applied snapshot`
//!    (etcd's zap lines, snapply's events, both in etcd's JSON layout);
//! 5. the restarted follower's `VmHWM` is read (also when its log first shows `applied
//!    snapshot`), and the leader's (also read before the restart),
//!    and each member's data directory is measured (allocated blocks);
//! 6. with the three members up, N single-key ranges (etcd's default, linearizable) of keys
//!    spread over the N put, K in flight through the same connection to the leader: range
//!    throughput; then every member is stopped.
//!
//! Every put of steps 1 and 3 and every range of step 6 is timed from its first try to its
//! answer: their p50 and p99 latencies at concurrency K go beside the throughputs.
//!
//! One Markdown table row per side and size goes to standard output; progress to standard
//! error. Every process started is killed however the run ends.

// The members indexed here are the three this harness started itself (0..3).
#![allow(clippy::indexing_slicing)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use etcd_client::{Client, ConnectOptions, GetOptions};

const VALUE_LEN: usize = 256;
/// etcd 3.6's and snapply's default `--snapshot-count` (etcd 3.4's is 100,000).
const SNAPSHOT_COUNT: u64 = 10_000;
const CONCURRENCY: usize = 64;
/// How long any one step may take.
const STEP: Duration = Duration::from_secs(1800);

type Result<T> = std::result::Result<T, String>;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Side {
    Etcd,
    Snapply,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Etcd => "etcd",
            Side::Snapply => "snapply",
        }
    }
}

struct Options {
    etcd: PathBuf,
    snapply: PathBuf,
    dir: PathBuf,
    keys: Vec<u64>,
    sides: Vec<Side>,
    snapshot_count: u64,
    concurrency: usize,
}

fn parse(mut args: impl Iterator<Item = String>) -> Result<Options> {
    let mut o = Options {
        etcd: PathBuf::from("/usr/bin/etcd"),
        snapply: PathBuf::from("target/release/snapply"),
        dir: std::env::temp_dir().join("snapply-bench-cluster"),
        keys: vec![100_000],
        sides: vec![Side::Etcd, Side::Snapply],
        snapshot_count: SNAPSHOT_COUNT,
        concurrency: CONCURRENCY,
    };
    let number = |flag: &str, v: &str| v.trim().parse::<u64>().ok().filter(|&n| n > 0).ok_or(format!("{flag}: `{v}`"));
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--etcd" => o.etcd = value.into(),
            "--snapply" => o.snapply = value.into(),
            "--dir" => o.dir = value.into(),
            "--keys" => o.keys = value.split(',').map(|n| number("--keys", n)).collect::<Result<_>>()?,
            "--snapshot-count" => o.snapshot_count = number("--snapshot-count", &value)?,
            "--concurrency" => {
                o.concurrency = usize::try_from(number("--concurrency", &value)?).map_err(|e| e.to_string())?;
            }
            "--sides" => {
                o.sides = value
                    .split(',')
                    .map(|s| match s {
                        "etcd" => Ok(Side::Etcd),
                        "snapply" => Ok(Side::Snapply),
                        other => Err(format!("--sides: `{other}` is neither etcd nor snapply")),
                    })
                    .collect::<Result<_>>()?;
            }
            other => return Err(format!("unexpected argument `{other}`")),
        }
    }
    Ok(o)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> std::process::ExitCode {
    let options = match parse(std::env::args().skip(1)) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    println!("{}", Outcome::HEADER);
    for &keys in &options.keys {
        for &side in &options.sides {
            eprintln!("== {} with {keys} keys", side.name());
            match run(&options, side, keys).await {
                Ok(outcome) => println!("{}", outcome.row(side, keys)),
                Err(e) => {
                    eprintln!("error: {} with {keys} keys: {e}", side.name());
                    return std::process::ExitCode::FAILURE;
                }
            }
        }
    }
    std::process::ExitCode::SUCCESS
}

/// What one side measured at one size.
struct Outcome {
    load: Duration,
    /// Each put's latency (first try to answer).
    put_latency: Latencies,
    /// The ranges of step 6: how long they took, and each one's latency.
    ranges: Duration,
    range_latency: Latencies,
    /// Restart -> `receiving database snapshot` and -> `applied snapshot`, from the log; `None`
    /// if the follower was caught up without a snapshot.
    restart_to_receiving: Option<Duration>,
    restart_to_snapshot: Option<Duration>,
    restart_to_caught_up: Duration,
    /// After the load (before the follower is restarted), and after the follower caught up:
    /// the growth is what sending the snapshot cost, unless the load peaked higher.
    leader_rss_kib: (u64, u64),
    /// Before it was stopped; after its restart, when its log first showed `applied snapshot`
    /// (polled with the count, `None` without a snapshot) and when it had caught up.
    follower_rss_kib: (u64, Option<u64>, u64),
    disk_bytes: [u64; 3],
    /// `/proc/loadavg`'s 1-minute average before and after the run.
    load_average: (f64, f64),
}

impl Outcome {
    const HEADER: &str = "| side | keys × 256 B | load (puts/s) | put p50 / p99 | range (gets/s) | range p50 / p99 | restart → receiving snapshot | restart → applied snapshot | restart → caught up | leader peak RSS (after load / after catch-up) | follower peak RSS (before stop / at applied snapshot / caught up) | disk per member after load | host load (1 min) |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|";

    fn row(&self, side: Side, keys: u64) -> String {
        let ms = |d: Option<Duration>| d.map_or_else(|| "(no snapshot)".into(), |d| format!("{} ms", d.as_millis()));
        let mib = |kib: u64| format!("{:.0} MiB", kib as f64 / 1024.0);
        let disk: Vec<String> = self.disk_bytes.iter().map(|b| format!("{:.0}", *b as f64 / 1048576.0)).collect();
        format!(
            "| {} | {keys} | {:.0} | {} | {:.0} | {} | {} | {} | {} ms | {} / {} | {} / {} / {} | {} MiB | {:.1} → {:.1} |",
            side.name(),
            keys as f64 / self.load.as_secs_f64(),
            self.put_latency,
            self.range_latency.count() as f64 / self.ranges.as_secs_f64(),
            self.range_latency,
            ms(self.restart_to_receiving),
            ms(self.restart_to_snapshot),
            self.restart_to_caught_up.as_millis(),
            mib(self.leader_rss_kib.0),
            mib(self.leader_rss_kib.1),
            mib(self.follower_rss_kib.0),
            self.follower_rss_kib.1.map_or_else(|| "-".into(), mib),
            mib(self.follower_rss_kib.2),
            disk.join(" / "),
            self.load_average.0,
            self.load_average.1,
        )
    }
}

/// Request latencies, in microseconds.
#[derive(Default)]
struct Latencies(Vec<u64>);

impl Latencies {
    fn record(&mut self, took: Duration) {
        self.0.push(u64::try_from(took.as_micros()).unwrap_or(u64::MAX));
    }

    fn extend(&mut self, other: Latencies) {
        self.0.extend(other.0);
    }

    fn count(&self) -> usize {
        self.0.len()
    }

    /// The `p`-quantile (0 < p ≤ 1): the smallest latency at least a fraction `p` of them do
    /// not exceed.
    fn quantile(&mut self, p: f64) -> Duration {
        self.0.sort_unstable();
        let rank = ((p * self.0.len() as f64).ceil() as usize).clamp(1, self.0.len().max(1));
        Duration::from_micros(self.0.get(rank - 1).copied().unwrap_or(0))
    }
}

impl std::fmt::Display for Latencies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut sorted = Latencies(self.0.clone());
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        write!(f, "{:.2} / {:.2} ms", ms(sorted.quantile(0.5)), ms(sorted.quantile(0.99)))
    }
}

/// One member: its ports, data directory, log, and process while it runs (killed on drop).
struct Member {
    name: String,
    client: u16,
    peer: u16,
    data: PathBuf,
    child: Option<Child>,
}

impl Member {
    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client)
    }

    fn log(&self, run: usize) -> PathBuf {
        self.data.with_extension(format!("{run}.log"))
    }

    fn pid(&self) -> Result<u32> {
        self.child.as_ref().map(Child::id).ok_or_else(|| format!("{} is not running", self.name))
    }

    /// SIGTERM, then SIGKILL if it is still there after 30 s.
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

struct Cluster {
    side: Side,
    binary: PathBuf,
    snapshot_count: u64,
    members: Vec<Member>,
}

impl Cluster {
    fn new(options: &Options, side: Side, dir: &Path) -> Result<Cluster> {
        let binary = match side {
            Side::Etcd => options.etcd.clone(),
            Side::Snapply => options.snapply.clone(),
        };
        if !binary.is_file() {
            return Err(format!("no {} binary at {}", side.name(), binary.display()));
        }
        let members = (1..=3)
            .map(|i| {
                Ok(Member {
                    name: format!("m{i}"),
                    client: free_port()?,
                    peer: free_port()?,
                    data: dir.join(format!("m{i}")),
                    child: None,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Cluster { side, binary, snapshot_count: options.snapshot_count, members })
    }

    /// Starts member `i`, its standard error into its log of `run`.
    fn start(&mut self, i: usize, run: usize) -> Result<()> {
        let initial: Vec<String> =
            self.members.iter().map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer)).collect();
        let initial = initial.join(",");
        let count = self.snapshot_count.to_string();
        let m = &self.members[i];
        let log = std::fs::File::create(m.log(run)).map_err(|e| format!("{}: {e}", m.log(run).display()))?;
        let mut command = Command::new(&self.binary);
        match self.side {
            Side::Etcd => {
                let peer = format!("http://127.0.0.1:{}", m.peer);
                command
                    .args(["--name", &m.name, "--data-dir"])
                    .arg(&m.data)
                    .args(["--listen-client-urls", &m.endpoint(), "--advertise-client-urls", &m.endpoint()])
                    .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
                    .args(["--initial-cluster", &initial, "--initial-cluster-state", "new"])
                    .args(["--initial-cluster-token", "bench", "--snapshot-count", &count])
                    .args(["--quota-backend-bytes", "8589934592", "--logger", "zap", "--log-outputs", "stderr"]);
            }
            Side::Snapply => {
                command
                    .args(["serve", "--name", &m.name, "--data-dir"])
                    .arg(&m.data)
                    .args(["--initial-cluster", &initial, "--listen-client-urls", &m.endpoint()])
                    .args(["--snapshot-count", &count, "--log-format", "json"]);
            }
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", self.binary.display()))?;
        self.members[i].child = Some(child);
        Ok(())
    }
}

fn free_port() -> Result<u16> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("a free port: {e}"))
}

async fn connect(endpoint: &str) -> Result<Client> {
    let options =
        ConnectOptions::new().with_connect_timeout(Duration::from_secs(2)).with_timeout(Duration::from_secs(60));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match Client::connect([endpoint], Some(options.clone())).await {
            Ok(c) => return Ok(c),
            Err(e) if Instant::now() > deadline => return Err(format!("connecting to {endpoint}: {e}")),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// The leader's index once every member reports the same one.
async fn leader(cluster: &Cluster) -> Result<usize> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut ids = Vec::new();
        for m in &cluster.members {
            let mut client = connect(&m.endpoint()).await?;
            if let Ok(s) = client.status().await {
                ids.push((s.leader(), s.header().map_or(0, |h| h.member_id())));
            }
        }
        if let Some(&(lead, _)) = ids.first()
            && ids.len() == 3
            && lead != 0
            && ids.iter().all(|(l, _)| *l == lead)
            && let Some(i) = ids.iter().position(|(_, me)| *me == lead)
        {
            return Ok(i);
        }
        if Instant::now() > deadline {
            return Err(format!("no leader all members agree on: {ids:?}"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Puts keys `range` with `concurrency` puts in flight, over clones of one client; each put's
/// latency.
async fn load(client: &Client, range: std::ops::Range<u64>, concurrency: usize) -> Result<Latencies> {
    let next = Arc::new(AtomicU64::new(range.start));
    let value = vec![b'v'; VALUE_LEN];
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (mut kv, next, value, end) = (client.kv_client(), next.clone(), value.clone(), range.end);
        tasks.spawn(async move {
            let mut latencies = Latencies::default();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= end {
                    return Ok(latencies);
                }
                let key = key_of(i);
                let mut tries = 0;
                let asked = Instant::now();
                while let Err(e) = kv.put(key.as_bytes(), value.clone(), None).await {
                    tries += 1;
                    if tries == 20 {
                        return Err(format!("put {key}: {e}"));
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                latencies.record(asked.elapsed());
            }
        });
    }
    let mut all = Latencies::default();
    while let Some(done) = tasks.join_next().await {
        all.extend(done.map_err(|e| e.to_string())??);
    }
    Ok(all)
}

fn key_of(i: u64) -> String {
    format!("/bench/key-{i:010}")
}

/// `requests` single-key ranges (linearizable, etcd's default) of keys spread over the first
/// `keys`, with `concurrency` in flight over clones of one client; each one's latency. Every
/// range must find its key.
async fn ranges(client: &Client, keys: u64, requests: u64, concurrency: usize) -> Result<Latencies> {
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (mut kv, next) = (client.kv_client(), next.clone());
        tasks.spawn(async move {
            let mut latencies = Latencies::default();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= requests {
                    return Ok(latencies);
                }
                // A stride coprime with any key count that is not its multiple spreads the
                // reads over the key space instead of walking it in order.
                let key = key_of(n.wrapping_mul(7_919) % keys);
                let asked = Instant::now();
                let got = kv.get(key.as_bytes(), None).await.map_err(|e| format!("range {key}: {e}"))?;
                latencies.record(asked.elapsed());
                if got.kvs().len() != 1 {
                    return Err(format!("range {key}: {} keys", got.kvs().len()));
                }
            }
        });
    }
    let mut all = Latencies::default();
    while let Some(done) = tasks.join_next().await {
        all.extend(done.map_err(|e| e.to_string())??);
    }
    Ok(all)
}

/// How many `/bench/` keys `endpoint` serves from its own state (a serializable count).
async fn count(client: &mut Client) -> Option<u64> {
    let options = GetOptions::new().with_prefix().with_count_only().with_serializable();
    let got = client.get("/bench/", Some(options)).await.ok()?;
    u64::try_from(got.count()).ok()
}

fn peak_rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(|e| format!("/proc/{pid}: {e}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| format!("no VmHWM for {pid}"))
}

/// Bytes allocated on disk under `path`.
fn disk_bytes(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(path) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => disk_bytes(&e.path()),
            Ok(m) => m.blocks() * 512,
            Err(_) => 0,
        })
        .sum()
}

fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

/// When the first line of `log` whose `msg` satisfies `wanted` was written (its `ts`).
fn logged_at(log: &Path, wanted: impl Fn(&str) -> bool) -> Option<SystemTime> {
    let text = std::fs::read_to_string(log).ok()?;
    text.lines().find_map(|line| {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        if !wanted(v.get("msg")?.as_str()?) {
            return None;
        }
        humantime::parse_rfc3339_weak(v.get("ts")?.as_str()?).ok()
    })
}

async fn run(options: &Options, side: Side, keys: u64) -> Result<Outcome> {
    let dir = options.dir.join(format!("{}-{keys}", side.name()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let load_before = load_average();
    let mut cluster = Cluster::new(options, side, &dir)?;
    for i in 0..3 {
        cluster.start(i, 0)?;
    }
    let lead = leader(&cluster).await?;
    let follower = (lead + 1) % 3;
    let client = connect(&cluster.members[lead].endpoint()).await?;

    let stop_at = keys / 10;
    let started = Instant::now();
    let mut put_latency = load(&client, 0..stop_at, options.concurrency).await?;
    let mut loading = started.elapsed();
    let follower_before = peak_rss_kib(cluster.members[follower].pid()?)?;
    cluster.members[follower].stop();
    eprintln!("{}: {stop_at} keys in {loading:?}; {} stopped", side.name(), cluster.members[follower].name);
    let started = Instant::now();
    put_latency.extend(load(&client, stop_at..keys, options.concurrency).await?);
    loading += started.elapsed();
    eprintln!("{}: {keys} keys in {loading:?}; restarting {}", side.name(), cluster.members[follower].name);

    let leader_before = peak_rss_kib(cluster.members[lead].pid()?)?;
    let restarted = SystemTime::now();
    let clock = Instant::now();
    cluster.start(follower, 1)?;
    let mut reader = connect(&cluster.members[follower].endpoint()).await?;
    let log = cluster.members[follower].log(1);
    // etcd's message alone; snapply's is followed by etcd's fields (`applied snapshot: …`).
    let applied = |m: &str| m == "applied snapshot" || m.starts_with("applied snapshot:");
    let mut follower_at_snapshot = None;
    loop {
        if follower_at_snapshot.is_none() && logged_at(&log, applied).is_some() {
            follower_at_snapshot = Some(peak_rss_kib(cluster.members[follower].pid()?)?);
        }
        if count(&mut reader).await == Some(keys) {
            break;
        }
        if clock.elapsed() > STEP {
            return Err(format!("the restarted follower did not serve {keys} keys within {STEP:?}"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let caught_up = clock.elapsed();
    let follower_after = peak_rss_kib(cluster.members[follower].pid()?)?;
    let leader_rss = peak_rss_kib(cluster.members[lead].pid()?)?;
    let since = |t: Option<SystemTime>| t.and_then(|t| t.duration_since(restarted).ok());
    let restart_to_receiving = since(logged_at(&log, |m| m.contains("receiving database snapshot")));
    let restart_to_snapshot = since(logged_at(&log, applied));
    let disk_bytes = [0, 1, 2].map(|i| disk_bytes(&cluster.members[i].data));
    let started = Instant::now();
    let range_latency = ranges(&client, keys, keys, options.concurrency).await?;
    let ranging = started.elapsed();
    eprintln!("{}: {keys} ranges in {ranging:?}", side.name());
    for m in &mut cluster.members {
        m.stop();
    }
    drop(cluster);
    // The data (gigabytes at a million keys) goes; the logs stay.
    for i in 1..=3 {
        let _ = std::fs::remove_dir_all(dir.join(format!("m{i}")));
    }
    Ok(Outcome {
        load: loading,
        put_latency,
        ranges: ranging,
        range_latency,
        restart_to_receiving,
        restart_to_snapshot,
        restart_to_caught_up: caught_up,
        leader_rss_kib: (leader_before, leader_rss),
        // Caught up within one poll of the snapshot: its peak then is the one at catching up.
        follower_rss_kib: (
            follower_before,
            follower_at_snapshot.or(restart_to_snapshot.map(|_| follower_after)),
            follower_after,
        ),
        disk_bytes,
        load_average: (load_before, load_average()),
    })
}
