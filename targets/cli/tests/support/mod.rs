//! What the tests of `snapply serve` members share: members as child processes on loopback
//! (killed when dropped, their standard error kept in a file), signals, and a blocking client of the gRPC API.

// Test scaffolding: a failure here is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, clippy::unreachable)]
#![allow(dead_code)] // Each test file uses its own part.

use std::fs::OpenOptions;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub fn snapply() -> Command {
    Command::new(env!("CARGO_BIN_EXE_snapply"))
}

/// One `snapply serve` process. Dropping it kills it (a stopped one too).
pub struct Member {
    child: Option<Child>,
    pub name: String,
    pub data: PathBuf,
    pub client: u16,
    /// Standard error of every run, appended.
    pub log: PathBuf,
    args: Vec<String>,
}

impl Member {
    /// A member of `cluster` (name=URL,...) listening for clients on `client`. Not started.
    pub fn new(root: &Path, name: &str, cluster: &str, client: u16) -> Member {
        let data = root.join(name);
        let args = vec![
            "serve".into(),
            "--name".into(),
            name.into(),
            "--data-dir".into(),
            data.display().to_string(),
            "--initial-cluster".into(),
            cluster.into(),
            "--listen-client-urls".into(),
            format!("http://127.0.0.1:{client}"),
        ];
        Member { child: None, name: name.into(), data, client, log: root.join(format!("{name}.log")), args }
    }

    /// Adds `args` (flags of `serve`) to the member's command line.
    pub fn add_args(&mut self, args: &[&str]) {
        self.args.extend(args.iter().map(|a| a.to_string()));
    }

    /// Starts the process, waits until its client port answers.
    pub fn start(&mut self) {
        self.start_with(snapply());
        self.wait_listening();
    }

    /// Starts `command` with this member's arguments, its standard error appended to the log.
    pub fn start_with(&mut self, mut command: Command) {
        assert!(self.child.is_none(), "{} is running", self.name);
        let log = OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let child = command.args(&self.args).stdout(Stdio::null()).stderr(Stdio::from(log)).spawn().unwrap();
        self.child = Some(child);
    }

    pub fn wait_listening(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", self.client)).is_err() {
            assert!(Instant::now() < deadline, "{} never listened for clients", self.name);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Sends `signal` (a name `kill` takes: TERM, INT, STOP, CONT).
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill").arg(format!("-{signal}")).arg(self.pid().to_string()).status().unwrap();
        assert!(status.success(), "kill -{signal} {}", self.name);
    }

    /// SIGKILL, and waits for the process to be gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits for the process to exit on its own, at most `within`.
    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        let child = self.child.as_mut().expect("running");
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return status;
            }
            assert!(Instant::now() < deadline, "{} did not exit within {within:?}", self.name);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A client of this member's gRPC API whose requests wait at most `timeout`.
    pub fn kv(&self, timeout: Duration) -> Result<Kv, KvError> {
        Kv::new(self.client, timeout)
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Members `infra1..=infraN` of one new cluster on free ports, not started.
pub fn cluster(root: &Path, n: usize) -> Vec<Member> {
    let peers: Vec<u16> = (0..n).map(|_| free_port()).collect();
    let cluster: Vec<String> =
        peers.iter().enumerate().map(|(i, p)| format!("infra{}=http://127.0.0.1:{p}", i + 1)).collect();
    let cluster = cluster.join(",");
    (0..n).map(|i| Member::new(root, &format!("infra{}", i + 1), &cluster, free_port())).collect()
}

/// A blocking client of a member's gRPC API (etcd's v3 KV service, through the `etcd-client`
/// crate): every request waits at most the client's timeout, and a failed one is an error with
/// etcd's message (`etcdserver: no leader`, ...).
pub struct Kv {
    runtime: tokio::runtime::Runtime,
    kv: etcd_client::KvClient,
    timeout: Duration,
    /// Holds the connection that `kv` uses.
    _client: etcd_client::Client,
}

/// Why a request of a [`Kv`] failed: the gRPC status (its code and message), or no answer in
/// time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvError {
    /// The member answered with this status.
    Status(tonic::Code, String),
    /// No answer within the client's timeout, or the connection failed.
    NoAnswer(String),
}

impl std::fmt::Display for KvError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KvError::Status(code, message) => write!(f, "{code:?}: {message}"),
            KvError::NoAnswer(why) => write!(f, "no answer: {why}"),
        }
    }
}

impl From<etcd_client::Error> for KvError {
    fn from(e: etcd_client::Error) -> Self {
        match e {
            etcd_client::Error::GRpcStatus(s) => KvError::Status(s.code(), s.message().to_string()),
            e => KvError::NoAnswer(e.to_string()),
        }
    }
}

impl Kv {
    /// A client of the member listening on `port`, whose requests wait at most `timeout`.
    pub fn new(port: u16, timeout: Duration) -> Result<Kv, KvError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| KvError::NoAnswer(e.to_string()))?;
        let options = etcd_client::ConnectOptions::new().with_connect_timeout(timeout).with_timeout(timeout);
        let client = runtime.block_on(async {
            tokio::time::timeout(timeout, etcd_client::Client::connect([format!("127.0.0.1:{port}")], Some(options)))
                .await
                .map_err(|_| KvError::NoAnswer("connecting timed out".into()))?
                .map_err(KvError::from)
        })?;
        // A range of every key of a test may exceed tonic's default 4 MiB.
        let kv = client.kv_client().max_decoding_message_size(usize::MAX);
        Ok(Kv { runtime, kv, timeout, _client: client })
    }

    fn run<T>(
        &mut self,
        request: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, KvError> {
        let timeout = self.timeout;
        self.runtime.block_on(async move {
            match tokio::time::timeout(timeout, request).await {
                Ok(answer) => answer.map_err(KvError::from),
                Err(_) => Err(KvError::NoAnswer(format!("nothing within {timeout:?}"))),
            }
        })
    }

    /// Puts `key`; the revision after the put.
    pub fn put(&mut self, key: &str, value: &str) -> Result<i64, KvError> {
        let mut kv = self.kv.clone();
        let (key, value) = (key.to_string(), value.to_string());
        let r = self.run(async move { kv.put(key, value, None).await })?;
        Ok(r.header().map_or(0, |h| h.revision()))
    }

    /// Deletes `key`; the revision after the delete and how many keys it deleted.
    pub fn delete(&mut self, key: &str) -> Result<(i64, i64), KvError> {
        let mut kv = self.kv.clone();
        let key = key.to_string();
        let r = self.run(async move { kv.delete(key, None).await })?;
        Ok((r.header().map_or(0, |h| h.revision()), r.deleted()))
    }

    /// `key`'s value (`None`: not found), read linearizably or, if `serializable`, from this
    /// member's local state.
    pub fn get(&mut self, key: &str, serializable: bool) -> Result<Option<String>, KvError> {
        let mut kvs = self.range(key, "", serializable)?;
        Ok(kvs.pop().map(|(_, v)| v))
    }

    /// Every key and value in `[start, end)` (only `start` if `end` is empty), in key order.
    pub fn range(&mut self, start: &str, end: &str, serializable: bool) -> Result<Vec<(String, String)>, KvError> {
        let mut kv = self.kv.clone();
        let mut options = etcd_client::GetOptions::new();
        if !end.is_empty() {
            options = options.with_range(end);
        }
        if serializable {
            options = options.with_serializable();
        }
        let start = start.to_string();
        let r = self.run(async move { kv.get(start, Some(options)).await })?;
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        Ok(r.kvs().iter().map(|kv| (text(kv.key()), text(kv.value()))).collect())
    }
}

/// Puts through `member` until a leader takes it (elections take a moment), at most 30 s; the
/// revision after the put.
pub fn put_until_ok(member: &Member, key: &str, value: &str) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answer = member.kv(Duration::from_secs(12)).and_then(|mut c| c.put(key, value));
        match answer {
            Ok(revision) => return revision,
            Err(e) => assert!(Instant::now() < deadline, "put {key} through {} never succeeded: {e}", member.name),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
