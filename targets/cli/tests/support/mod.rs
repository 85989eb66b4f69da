//! What the tests of `snapply serve` members share: members as child processes on loopback
//! (killed when dropped, their standard error kept in a file), signals, and a line client.

// Test scaffolding: a failure here is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, clippy::unreachable)]
#![allow(dead_code)] // Each test file uses its own part.

use std::fs::OpenOptions;
use std::io::{self, BufRead, BufReader, Write};
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

    /// A client connection whose answers wait at most `timeout`.
    pub fn connect(&self, timeout: Duration) -> io::Result<Conn> {
        Conn::new(self.client, timeout)
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

/// A line client of a member.
pub struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Conn {
    pub fn new(port: u16, timeout: Duration) -> io::Result<Conn> {
        let stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.set_read_timeout(Some(timeout))?;
        let reader = BufReader::new(stream.try_clone()?);
        Ok(Conn { reader, writer: stream })
    }

    /// Sends one request line, reads one answer line (an error if none came in time or the
    /// connection closed).
    pub fn request(&mut self, line: &str) -> io::Result<String> {
        self.writer.write_all(format!("{line}\n").as_bytes())?;
        self.line()
    }

    pub fn line(&mut self) -> io::Result<String> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(line.trim_end().to_string())
    }
}

/// Puts through `member` until a leader takes it (elections take a moment), at most 30 s.
pub fn put_until_ok(member: &Member, key: &str, value: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answer = member
            .connect(Duration::from_secs(12))
            .and_then(|mut c| c.request(&format!("put {key} {value}")))
            .unwrap_or_else(|e| format!("ERR {e}"));
        if answer.starts_with("OK ") {
            return answer;
        }
        assert!(Instant::now() < deadline, "put {key} through {} never succeeded: {answer}", member.name);
        std::thread::sleep(Duration::from_millis(100));
    }
}
