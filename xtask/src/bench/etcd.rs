//! `cargo xtask bench --etcd`: a snapshot restore in snapply beside the same restore in a real
//! 3-member etcd cluster on loopback.
//!
//! For each size N: N keys `/bench/key-<i>` of 256-byte values.
//! - etcd (Debian's etcd 3.4, `/usr/bin/etcd` or `$SNAPPLY_ETCD`): three members with
//!   `--snapshot-count 1000`; the third is stopped, the keys are written through the HTTP
//!   gateway in 10,000 transactions (so the leader's log moves more than etcd's 5,000 catch-up
//!   entries past the stopped member, and it must be sent a snapshot), the third is restarted,
//!   and its log gives the times: `receiving database snapshot` (rafthttp, first byte),
//!   `applying snapshot` and `applied snapshot` (etcdserver's `applySnapshot`). Its peak RSS is
//!   its `VmHWM` once the snapshot is applied.
//! - snapply (`snapply-fs`'s `beside_etcd` example): the image of the same keys, streamed from
//!   a file into a fresh data directory, then applied through the async driver; it reports
//!   first byte -> `Applied`, persisted -> `Applied` and its own `VmHWM`.
//!
//! Every process started is killed when the scenario ends, however it ends.

use std::fmt::Write as _;
use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::cmd::{Ctx, Error, Result, output, run};

const VALUE_LEN: usize = 256;
const SNAPSHOT_COUNT: u32 = 1000;
/// Raft entries written while the follower is down: above etcd's 5,000 catch-up entries plus
/// two snapshot intervals.
const ENTRIES: u64 = 10_000;
const WRITERS: u64 = 8;

/// One size's measurements.
struct Row {
    keys: u64,
    etcd: EtcdTimes,
    snapply: SnapplyTimes,
}

struct EtcdTimes {
    receive_to_applied_ms: u64,
    apply_ms: u64,
    peak_rss_kib: u64,
    load_s: f64,
}

/// snapply's restore is run [`SNAPPLY_RUNS`] times on the same image (a fresh data directory
/// each): the host is shared, and one run can land on a busy moment. The times are the
/// medians, with the fastest and slowest run; the peak RSS is the highest.
struct SnapplyTimes {
    first_byte_us: u64,
    first_byte_range_us: (u64, u64),
    apply_us: u64,
    peak_rss_kib: u64,
    image_bytes: u64,
}

/// How many times snapply's restore runs per size.
const SNAPPLY_RUNS: usize = 5;

/// The median of `values` (the upper one of an even count); 0 for none.
fn median(values: &mut [u64]) -> u64 {
    values.sort_unstable();
    values.get(values.len() / 2).copied().unwrap_or(0)
}

/// Debian's etcd 3.4, or the binary `SNAPPLY_ETCD` names.
pub(super) fn binary() -> PathBuf {
    std::env::var_os("SNAPPLY_ETCD").map_or_else(|| PathBuf::from("/usr/bin/etcd"), PathBuf::from)
}

pub fn bench_etcd(ctx: &Ctx, sizes: &[u64]) -> Result<()> {
    let etcd = binary();
    if !etcd.is_file() {
        return Err(Error::new(format!("no etcd at {}", etcd.display()))
            .hint("`cargo xtask ci` installs Debian's etcd-server, or set SNAPPLY_ETCD"));
    }
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| ctx.root.join("target"), PathBuf::from);
    let work = target.join("bench-etcd");
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work).map_err(|e| Error::new(format!("creating {}: {e}", work.display())))?;
    run(ctx.cargo().args(["build", "--release", "-p", "snapply-fs", "--example", "beside_etcd"]).args(ctx.locked()))?;
    let example = target.join("release/examples/beside_etcd");

    let mut rows = Vec::new();
    for &keys in sizes {
        println!("\n== {keys} keys of {VALUE_LEN} bytes");
        let snapply = snapply_side(ctx, &example, &work, keys)?;
        let etcd = etcd_side(&etcd, &work.join(format!("etcd-{keys}")), keys)?;
        rows.push(Row { keys, etcd, snapply });
    }
    let report = report(&rows, sizes);
    println!("\n{report}");
    let path = work.join("report.md");
    fs::write(&path, &report).map_err(|e| Error::new(format!("writing {}: {e}", path.display())))?;
    println!("written to {}", ctx.rel(&path).display());
    Ok(())
}

fn snapply_side(ctx: &Ctx, example: &Path, work: &Path, keys: u64) -> Result<SnapplyTimes> {
    let image = work.join(format!("image-{keys}"));
    let image_arg = image.to_string_lossy().into_owned();
    run(ctx.command(example).args(["image", &keys.to_string(), &VALUE_LEN.to_string(), &image_arg]))?;
    let field = |line: &str, name: &str| -> Result<u64> {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
            .ok_or_else(|| Error::new(format!("no {name} in snapply's output: {line}")))
    };
    let (mut first_byte, mut apply, mut rss, mut image_bytes) = (Vec::new(), Vec::new(), 0, 0);
    for _ in 0..SNAPPLY_RUNS {
        let line = output(ctx.command(example).args(["restore", &image_arg]))?;
        print!("{line}");
        first_byte.push(field(&line, "first_byte_us")?);
        apply.push(field(&line, "apply_us")?);
        rss = rss.max(field(&line, "peak_rss_kib")?);
        image_bytes = field(&line, "image_bytes")?;
    }
    let _ = fs::remove_file(&image);
    let range = (first_byte.iter().copied().min().unwrap_or(0), first_byte.iter().copied().max().unwrap_or(0));
    Ok(SnapplyTimes {
        first_byte_us: median(&mut first_byte),
        first_byte_range_us: range,
        apply_us: median(&mut apply),
        peak_rss_kib: rss,
        image_bytes,
    })
}

fn free_port() -> Result<u16> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| Error::new(format!("finding a free port: {e}")))
}

struct Member {
    name: String,
    client: u16,
    peer: u16,
    child: Option<Child>,
}

/// Three etcd members; every running one is killed when this is dropped.
struct Cluster {
    etcd: PathBuf,
    dir: PathBuf,
    members: Vec<Member>,
}

impl Cluster {
    fn start(etcd: &Path, dir: &Path) -> Result<Cluster> {
        let mut members = Vec::new();
        for i in 1..=3 {
            members.push(Member { name: format!("m{i}"), client: free_port()?, peer: free_port()?, child: None });
        }
        let mut cluster = Cluster { etcd: etcd.to_path_buf(), dir: dir.to_path_buf(), members };
        for i in 0..3 {
            cluster.spawn(i, "start")?;
        }
        for i in 0..3 {
            cluster.wait_healthy(i)?;
        }
        Ok(cluster)
    }

    fn log(&self, i: usize, run: &str) -> PathBuf {
        self.dir.join(format!("{}-{run}.log", self.members[i].name))
    }

    fn spawn(&mut self, i: usize, run: &str) -> Result<()> {
        let initial: Vec<String> =
            self.members.iter().map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer)).collect();
        let log_path = self.log(i, run);
        let log =
            fs::File::create(&log_path).map_err(|e| Error::new(format!("creating {}: {e}", log_path.display())))?;
        let m = &self.members[i];
        let client = format!("http://127.0.0.1:{}", m.client);
        let peer = format!("http://127.0.0.1:{}", m.peer);
        let data = self.dir.join(&m.name);
        let child = Command::new(&self.etcd)
            .args(["--name", &m.name, "--data-dir"])
            .arg(&data)
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &initial.join(","), "--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", "snapply-bench", "--snapshot-count", &SNAPSHOT_COUNT.to_string()])
            .args(["--quota-backend-bytes", "8589934592", "--logger", "zap", "--log-outputs", "stderr"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| Error::new(format!("starting {}: {e}", self.etcd.display())))?;
        self.members[i].child = Some(child);
        Ok(())
    }

    fn stop(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn wait_healthy(&self, i: usize) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok((200, body)) = http(self.members[i].client, "GET", "/health", "")
                && body.contains("\"true\"")
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(Error::new(format!("etcd member {} never became healthy", self.members[i].name)));
            }
            thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.stop(i);
        }
    }
}

fn etcd_side(etcd: &Path, dir: &Path, keys: u64) -> Result<EtcdTimes> {
    fs::create_dir_all(dir).map_err(|e| Error::new(format!("creating {}: {e}", dir.display())))?;
    let mut cluster = Cluster::start(etcd, dir)?;
    // The third member misses the writes and must be sent a snapshot.
    cluster.stop(2);
    let ports = [cluster.members[0].client, cluster.members[1].client];
    let load = Instant::now();
    load_keys(&ports, keys)?;
    let load_s = load.elapsed().as_secs_f64();
    println!("etcd: {keys} keys written in {ENTRIES} transactions in {load_s:.1} s; restarting the stopped member");

    cluster.spawn(2, "restart")?;
    let log = cluster.log(2, "restart");
    let deadline = Instant::now() + Duration::from_secs(1800);
    let text = loop {
        let text = fs::read_to_string(&log).unwrap_or_default();
        if text.contains("\"msg\":\"applied snapshot\"") {
            break text;
        }
        if Instant::now() > deadline {
            return Err(Error::new(format!("the restarted member applied no snapshot; see {}", log.display())));
        }
        if let Some(child) = cluster.members[2].child.as_mut()
            && let Ok(Some(status)) = child.try_wait()
        {
            return Err(Error::new(format!("the restarted member exited ({status}); see {}", log.display())));
        }
        thread::sleep(Duration::from_millis(50));
    };
    let pid = cluster.members[2].child.as_ref().map(Child::id).unwrap_or(0);
    let peak_rss_kib = peak_rss_kib(pid).unwrap_or(0);
    let at = |msg: &str| -> Result<u64> {
        let needle = format!("\"msg\":\"{msg}\"");
        text.lines()
            .find(|l| l.contains(&needle))
            .and_then(ts_millis)
            .ok_or_else(|| Error::new(format!("no `{msg}` line with a timestamp in {}", log.display())))
    };
    let receiving = at("receiving database snapshot")?;
    let applying = at("applying snapshot")?;
    let applied = at("applied snapshot")?;
    let count = count_keys(cluster.members[2].client)?;
    if count != keys {
        return Err(Error::new(format!("the restarted member holds {count} keys, not {keys}")));
    }
    // The members' data (gigabytes at a million keys) goes; their logs stay beside the report.
    let data: Vec<PathBuf> = cluster.members.iter().map(|m| dir.join(&m.name)).collect();
    drop(cluster);
    for d in data {
        let _ = fs::remove_dir_all(d);
    }
    Ok(EtcdTimes {
        receive_to_applied_ms: applied.saturating_sub(receiving),
        apply_ms: applied.saturating_sub(applying),
        peak_rss_kib,
        load_s,
    })
}

/// Writes the keys in `ENTRIES` transactions (at least), from `WRITERS` threads.
fn load_keys(ports: &[u16; 2], keys: u64) -> Result<()> {
    let per_txn = keys.div_ceil(ENTRIES).max(1);
    let value = base64(&[b'v'; VALUE_LEN]);
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let value = value.clone();
            let port = ports[(w % 2) as usize];
            thread::spawn(move || -> Result<()> {
                let mut txn = w;
                while txn < ENTRIES || txn * per_txn < keys {
                    let mut puts = Vec::new();
                    for i in txn * per_txn..((txn + 1) * per_txn).min(keys) {
                        let key = base64(format!("/bench/key-{i:08}").as_bytes());
                        puts.push(format!("{{\"requestPut\":{{\"key\":\"{key}\",\"value\":\"{value}\"}}}}"));
                    }
                    if puts.is_empty() {
                        // Fewer keys than entries: the rest of the entries overwrite a key outside
                        // the counted `/bench/` range.
                        let key = base64(b"/bench-pad");
                        puts.push(format!("{{\"requestPut\":{{\"key\":\"{key}\",\"value\":\"cA==\"}}}}"));
                    }
                    let body = format!("{{\"success\":[{}]}}", puts.join(","));
                    post_retrying(port, "/v3/kv/txn", &body)?;
                    txn += WRITERS;
                }
                Ok(())
            })
        })
        .collect();
    for w in writers {
        w.join().map_err(|_| Error::new("a writer thread panicked"))??;
    }
    Ok(())
}

fn post_retrying(port: u16, path: &str, body: &str) -> Result<()> {
    let mut last = String::new();
    for _ in 0..100 {
        match http(port, "POST", path, body) {
            Ok((200, _)) => return Ok(()),
            Ok((status, text)) => last = format!("HTTP {status}: {}", text.chars().take(200).collect::<String>()),
            Err(e) => last = e.to_string(),
        }
        thread::sleep(Duration::from_millis(100));
    }
    Err(Error::new(format!("POST {path} on port {port} kept failing: {last}")))
}

/// How many `/bench/` keys a member holds, read locally (serializable).
fn count_keys(port: u16) -> Result<u64> {
    let body = format!(
        "{{\"key\":\"{}\",\"range_end\":\"{}\",\"count_only\":true,\"serializable\":true}}",
        base64(b"/bench/"),
        base64(b"/bench0")
    );
    let (status, text) = http(port, "POST", "/v3/kv/range", &body)?;
    if status != 200 {
        return Err(Error::new(format!("counting keys: HTTP {status}: {text}")));
    }
    // The gateway renders int64 as a JSON string; an empty range omits the field.
    Ok(text
        .split("\"count\":\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0))
}

/// One HTTP/1.1 request on a fresh loopback connection, read to its close: enough for etcd's
/// gateway, and no HTTP client to build.
fn http(port: u16, method: &str, path: &str, body: &str) -> Result<(u16, String)> {
    let io = |e: std::io::Error| Error::new(format!("{method} {path} on port {port}: {e}"));
    let mut stream = TcpStream::connect(("127.0.0.1", port)).map_err(io)?;
    stream.set_read_timeout(Some(Duration::from_secs(120))).map_err(io)?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).map_err(io)?;
    let mut response = String::new();
    stream.read_to_string(&mut response).map_err(io)?;
    let status = response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned();
    Ok((status, body))
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], chunk.get(1).copied().unwrap_or(0), chunk.get(2).copied().unwrap_or(0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The `ts` of a zap JSON log line (`"ts":"2026-01-02T03:04:05.678Z"`), in milliseconds since
/// the epoch.
fn ts_millis(line: &str) -> Option<u64> {
    let ts = line.split("\"ts\":\"").nth(1)?.split('"').next()?;
    let (date, time) = ts.trim_end_matches('Z').split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.split(':');
    let (h, min) = (t.next()?.parse::<u64>().ok()?, t.next()?.parse::<u64>().ok()?);
    let secs: f64 = t.next()?.parse().ok()?;
    let days = u64::try_from(days_from_civil(y, m, day)).ok()?;
    Some(days * 86_400_000 + h * 3_600_000 + min * 60_000 + (secs * 1000.0).round() as u64)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find(|l| l.starts_with("VmHWM:"))?.split_whitespace().nth(1)?.parse().ok()
}

fn report(rows: &[Row], sizes: &[u64]) -> String {
    let list: Vec<String> = sizes.iter().map(u64::to_string).collect();
    let mut out = String::new();
    let _ = writeln!(out, "Command: `cargo xtask bench --etcd --keys {}`", list.join(","));
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "| keys × 256 B | etcd receive→applied | snapply first byte→Applied (median; fastest–slowest of {SNAPPLY_RUNS}) | ratio | etcd apply | snapply apply | ratio | etcd peak RSS | snapply peak RSS | image | etcd load |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        let ms = |us: u64| us as f64 / 1000.0;
        let ratio = |a: f64, b: u64| if b == 0 { f64::NAN } else { a / b as f64 };
        let _ = writeln!(
            out,
            "| {} | {} ms | {:.1} ms ({:.0}–{:.0}) | {:.3} | {} ms | {:.1} ms | {:.3} | {:.0} MiB | {:.0} MiB | {:.1} MiB | {:.0} s |",
            r.keys,
            r.etcd.receive_to_applied_ms,
            ms(r.snapply.first_byte_us),
            ms(r.snapply.first_byte_range_us.0),
            ms(r.snapply.first_byte_range_us.1),
            ratio(ms(r.snapply.first_byte_us), r.etcd.receive_to_applied_ms),
            r.etcd.apply_ms,
            ms(r.snapply.apply_us),
            ratio(ms(r.snapply.apply_us), r.etcd.apply_ms),
            r.etcd.peak_rss_kib as f64 / 1024.0,
            r.snapply.peak_rss_kib as f64 / 1024.0,
            r.snapply.image_bytes as f64 / (1024.0 * 1024.0),
            r.etcd.load_s,
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_standard_alphabet_with_padding() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"/bench/"), "L2JlbmNoLw==");
    }

    #[test]
    fn median_takes_the_middle_run() {
        assert_eq!(median(&mut [300, 100, 200]), 200);
        assert_eq!(median(&mut [5]), 5);
        assert_eq!(median(&mut []), 0);
    }

    #[test]
    fn reads_zap_timestamps() {
        let a = r#"{"level":"info","ts":"2026-11-25T23:59:59.950Z","msg":"applying snapshot"}"#;
        let b = r#"{"level":"info","ts":"2026-11-26T00:00:00.075Z","msg":"applied snapshot"}"#;
        assert_eq!(ts_millis(b).unwrap() - ts_millis(a).unwrap(), 125);
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert!(ts_millis("no timestamp").is_none());
    }
}
