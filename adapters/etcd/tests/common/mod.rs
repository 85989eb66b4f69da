//! Runs a real etcd on loopback for the interop tests: free ports, a temporary data directory,
//! bounded waits, and a guard that kills the server however the test ends.

// Test scaffolding: a failure here is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, clippy::unreachable)]
#![allow(dead_code)] // Each test binary uses part of this module.

use std::ffi::OsStr;
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const INSTALL_HINT: &str = "the etcd interop tests need etcd and etcdctl (Debian: `apt-get update && apt-get install -y etcd-server etcd-client`, etcd 3.4); set SNAPPLY_ETCD and SNAPPLY_ETCDCTL to use other binaries";

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

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free loopback port")
}

/// A running single-member etcd, killed on drop.
pub struct Etcd {
    child: Child,
    pub data_dir: PathBuf,
    pub client_url: String,
    pub peer_url: String,
    etcdctl: PathBuf,
    /// `user:password` once auth is on.
    pub credentials: Option<String>,
    log: PathBuf,
}

impl Etcd {
    /// Starts etcd with its data in `dir/data` and waits (at most 20 s) until it serves.
    pub fn start(dir: &Path, extra: &[&str]) -> Etcd {
        let etcd = binary("SNAPPLY_ETCD", "etcd");
        let etcdctl = binary("SNAPPLY_ETCDCTL", "etcdctl");
        let data_dir = dir.join("data");
        let (client, peer) = (free_port(), free_port());
        let client_url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let log = dir.join("etcd.log");
        let log_file = std::fs::File::create(&log).expect("etcd log file");
        let child = Command::new(etcd)
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
            .unwrap_or_else(|e| panic!("cannot start etcd: {e}; {INSTALL_HINT}"));
        let server = Etcd { child, data_dir, client_url, peer_url, etcdctl, credentials: None, log };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = server.try_ctl(["endpoint", "health"], None);
            if out.status.success() {
                return server;
            }
            assert!(Instant::now() < deadline, "etcd did not become healthy in 20 s; log:\n{}", server.log_tail());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        log.lines().rev().take(20).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    /// Runs etcdctl (API v3) against this server; `stdin` feeds its standard input.
    pub fn try_ctl<I, A>(&self, args: I, stdin: Option<&[u8]>) -> Output
    where
        I: IntoIterator<Item = A>,
        A: AsRef<OsStr>,
    {
        let mut cmd = Command::new(&self.etcdctl);
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

    /// Kills the server and waits for it.
    pub fn stop(mut self) {
        self.kill();
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}
