//! Spawning commands: the one place that starts processes, prints what it starts and turns a
//! failed command into an error that names it.

use std::env;
use std::ffi::OsStr;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A task failure, worded for the person reading the CI log.
#[derive(Debug)]
pub struct Error(String);

impl Error {
    pub fn new(message: impl Into<String>) -> Self {
        Error(message.into())
    }

    /// Appends what to do about the failure.
    pub fn hint(self, hint: &str) -> Self {
        Error(format!("{}\n  hint: {hint}", self.0))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Where and how commands run.
pub struct Ctx {
    /// The workspace root. Every command runs here unless it says otherwise.
    pub root: PathBuf,
    /// `CI=true` in the environment: cargo runs with `--locked`, so CI tests the committed
    /// lockfile instead of silently resolving a new one.
    pub ci: bool,
    /// `cargo xtask ci`: cargo builds without incremental state and with line tables as the only
    /// debug info, which keeps a cold run's target directory to about half its size (CI machines
    /// have run out of disk with the defaults).
    pub lean: bool,
}

impl Ctx {
    pub fn from_env() -> Self {
        // `cargo run` sets CARGO_MANIFEST_DIR to xtask/; the compile-time value covers running the
        // binary directly.
        let manifest_dir =
            env::var_os("CARGO_MANIFEST_DIR").map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
        let root = manifest_dir.parent().map_or_else(|| manifest_dir.clone(), Path::to_path_buf);
        let ci = env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1");
        Ctx { root, ci, lean: false }
    }

    /// `program`, run from the workspace root.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new(program);
        cmd.current_dir(&self.root);
        cmd
    }

    /// The cargo of the toolchain running this xtask (the one `rust-toolchain.toml` pins).
    pub fn cargo(&self) -> Command {
        let mut cmd = self.command(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
        // With TRYBUILD=overwrite the compile-fail tests rewrite their expected `.stderr` files
        // instead of comparing against them, and pass whatever the compiler says.
        cmd.env_remove("TRYBUILD");
        self.lean_env(&mut cmd);
        cmd
    }

    /// The same context, building lean (see [`Ctx::lean`]).
    pub fn leaned(&self) -> Self {
        Ctx { root: self.root.clone(), ci: self.ci, lean: true }
    }

    fn lean_env(&self, cmd: &mut Command) {
        if self.lean {
            cmd.env("CARGO_INCREMENTAL", "0").env("CARGO_PROFILE_DEV_DEBUG", "line-tables-only");
        }
    }

    /// `cargo +nightly`, through rustup's `cargo` proxy on PATH (the pinned toolchain's own cargo
    /// does not understand `+toolchain`).
    pub fn nightly_cargo(&self) -> Command {
        let mut cmd = self.command("cargo");
        cmd.arg("+nightly").env_remove("TRYBUILD");
        self.lean_env(&mut cmd);
        cmd
    }

    /// `--locked` under CI, nothing otherwise.
    pub fn locked(&self) -> &'static [&'static str] {
        if self.ci { &["--locked"] } else { &[] }
    }

    /// `path` relative to the workspace root, for messages.
    pub fn rel<'a>(&self, path: &'a Path) -> &'a Path {
        path.strip_prefix(&self.root).unwrap_or(path)
    }
}

/// Prints `cmd`, runs it with inherited stdio and fails if it does not exit successfully.
pub fn run(cmd: &mut Command) -> Result<()> {
    let line = display(cmd);
    println!("$ {line}");
    let status = cmd.status().map_err(|e| Error::new(format!("could not start `{line}`: {e}")))?;
    if status.success() { Ok(()) } else { Err(Error::new(format!("`{line}` failed ({status})"))) }
}

/// Prints `cmd`, runs it and returns its standard output; stderr is passed through.
pub fn output(cmd: &mut Command) -> Result<String> {
    let line = display(cmd);
    println!("$ {line}");
    let out =
        cmd.stderr(Stdio::inherit()).output().map_err(|e| Error::new(format!("could not start `{line}`: {e}")))?;
    if !out.status.success() {
        return Err(Error::new(format!("`{line}` failed ({})", out.status)));
    }
    String::from_utf8(out.stdout).map_err(|_| Error::new(format!("`{line}` printed something that is not UTF-8")))
}

/// Runs `cmd` silently and tells whether it started and succeeded: a probe such as
/// `cargo nextest --version`.
pub fn probe(cmd: &mut Command) -> bool {
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

/// The command as a shell line: `cargo clippy --workspace`, or `(cd dir && cargo build)` when it
/// runs somewhere other than the workspace root.
fn display(cmd: &Command) -> String {
    // CARGO is an absolute path into the toolchain; `cargo` reads better and means the same.
    let program = Path::new(cmd.get_program());
    let program = if Some(program.as_os_str()) == env::var_os("CARGO").as_deref() {
        "cargo".into()
    } else {
        program.to_string_lossy()
    };
    let mut line = quote(&program);
    for arg in cmd.get_args() {
        line.push(' ');
        line.push_str(&quote(&arg.to_string_lossy()));
    }
    let root = Ctx::from_env().root;
    match cmd.get_current_dir() {
        Some(dir) if dir != root => {
            format!("(cd {} && {line})", quote(&dir.strip_prefix(&root).unwrap_or(dir).to_string_lossy()))
        }
        _ => line,
    }
}

fn quote(word: &str) -> String {
    let plain = !word.is_empty() && word.chars().all(|c| c.is_ascii_alphanumeric() || "-_=+.,/:@%".contains(c));
    if plain { word.to_owned() } else { format!("'{}'", word.replace('\'', r"'\''")) }
}

/// Passed and failed test counts, read from the closing lines of the test runners.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub passed: u64,
    pub failed: u64,
}

impl Counts {
    /// Adds what one output line reports: libtest's `test result: ok. 3 passed; 0 failed; …` or
    /// nextest's `Summary [ 1.2s] 67 tests run: 65 passed, 2 failed, 0 skipped`.
    pub fn read_line(&mut self, line: &str) {
        if !(line.contains("test result:") || line.contains("tests run:")) {
            return;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        for pair in words.windows(2) {
            let [count, word] = pair else { continue };
            let Ok(n) = count.parse::<u64>() else { continue };
            match word.trim_end_matches([';', ',']) {
                "passed" => self.passed += n,
                "failed" => self.failed += n,
                _ => {}
            }
        }
    }
}

/// Like [`run`], and adds the test counts the command reports to `counts`; its output is passed
/// through line by line.
pub fn run_counting(cmd: &mut Command, counts: &mut Counts) -> Result<()> {
    use std::io::{BufRead, BufReader, Write};

    let line = display(cmd);
    println!("$ {line}");
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::new(format!("could not start `{line}`: {e}")))?;
    fn pump<R: std::io::Read + Send + 'static>(
        from: Option<R>,
        to: fn() -> Box<dyn Write>,
    ) -> std::thread::JoinHandle<Counts> {
        std::thread::spawn(move || {
            let mut counts = Counts::default();
            let Some(from) = from else { return counts };
            let mut out = to();
            for line in BufReader::new(from).split(b'\n').map_while(std::result::Result::ok) {
                let text = String::from_utf8_lossy(&line);
                counts.read_line(&text);
                let _ = writeln!(out, "{text}");
            }
            counts
        })
    }
    let stdout = pump(child.stdout.take(), || Box::new(std::io::stdout()));
    let stderr = pump(child.stderr.take(), || Box::new(std::io::stderr()));
    for pumped in [stdout, stderr] {
        let got = pumped.join().unwrap_or_default();
        counts.passed += got.passed;
        counts.failed += got.failed;
    }
    let status = child.wait().map_err(|e| Error::new(format!("could not wait for `{line}`: {e}")))?;
    if status.success() { Ok(()) } else { Err(Error::new(format!("`{line}` failed ({status})"))) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_only_what_the_shell_would_split() {
        assert_eq!(quote("--features"), "--features");
        assert_eq!(quote("std,log"), "std,log");
        assert_eq!(quote("-max_total_time=20"), "-max_total_time=20");
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's"), r"'it'\''s'");
        assert_eq!(quote(""), "''");
    }

    #[test]
    fn shows_the_directory_when_not_the_root() {
        let ctx = Ctx::from_env();
        let mut cmd = ctx.command("cargo");
        cmd.args(["build", "--release"]);
        assert_eq!(display(&cmd), "cargo build --release");
        cmd.current_dir(ctx.root.join("targets/firmware"));
        assert_eq!(display(&cmd), "(cd targets/firmware && cargo build --release)");
    }

    #[test]
    fn counts_libtest_and_nextest_closing_lines() {
        let mut c = Counts::default();
        c.read_line("test result: ok. 45 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 5.66s");
        c.read_line("     Summary [  38.260s] 67 tests run: 65 passed, 2 failed, 0 skipped");
        c.read_line("running 3 tests");
        c.read_line("test foo ... ok");
        assert_eq!(c, Counts { passed: 110, failed: 2 });
    }
}
