//! What the file commands share: exit codes, etcd-style structured logs, the one-line error,
//! progress bars, and reading an image through a buffer that grows to its largest record.

use std::cell::Cell;
use std::fmt;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Map, Value};
use snapply_core::SnapshotMetadata;
use snapply_core::backend::Bucket;
use snapply_core::image::{self, BASE_BUFFER, DecodeError, Decoder, Item, Summary};
use snapply_core::ports::PortErrorKind;
use snapply_core::{Event, Observer, Phase};
use snapply_etcd::bbolt::ReadAt;

/// Exit codes scripts can rely on (documented in the README and in `--help`).
pub mod exit {
    /// The command did what it was asked.
    pub const OK: u8 = 0;
    /// An unexpected failure (a bug): the message says what.
    pub const FAILED: u8 = 1;
    /// Bad arguments (clap's usage errors).
    pub const USAGE: u8 = 2;
    /// The input is missing, not the expected format, corrupt or truncated.
    pub const BAD_INPUT: u8 = 3;
    /// The data directory is not empty, or another process is using it.
    pub const DATA_DIR: u8 = 4;
    /// Reading or writing failed (permissions, a full disk).
    pub const IO: u8 = 5;
}

/// The table printed at the end of `--help`.
pub const EXIT_CODES_HELP: &str = "Exit codes:
  0  success
  1  unexpected failure (a bug)
  2  bad arguments
  3  bad input: missing, not the expected format, corrupt or truncated
  4  data directory not empty, or in use by another process
  5  I/O error (permissions, disk full)";

/// How logs are written (to standard error).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// etcd's console layout: time, level, caller, message, fields as JSON.
    #[default]
    Text,
    /// etcd's JSON layout (zap): one object per line with `level`, `ts`, `caller`, `msg`.
    Json,
}

/// The arguments of the commands that read one image (`status`, `inspect`).
#[derive(Debug, Args)]
pub struct ImageArgs {
    /// The snapply image.
    pub image: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub log: LogArgs,
}

/// The logging options every file command takes.
#[derive(Clone, Copy, Debug, Args)]
pub struct LogArgs {
    /// Log format on standard error.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// A logger writing etcd's layouts. Hand-written rather than `tracing-subscriber`: its JSON
/// layout nests fields under `fields` and names the time `timestamp`, while etcd operators
/// read `ts`, `level`, `caller`, `msg` and flat fields (zap's production encoder).
#[derive(Clone, Copy, Debug)]
pub struct Log {
    format: LogFormat,
    caller: &'static str,
}

impl Log {
    pub fn new(args: LogArgs, caller: &'static str) -> Self {
        Log { format: args.log_format, caller }
    }

    pub fn info(&self, msg: &str, fields: &[(&str, Value)]) {
        self.write("info", msg, fields);
    }

    pub fn warn(&self, msg: &str, fields: &[(&str, Value)]) {
        self.write("warn", msg, fields);
    }

    fn write(&self, level: &str, msg: &str, fields: &[(&str, Value)]) {
        let ts = humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string();
        let mut map = Map::new();
        for (k, v) in fields {
            map.insert((*k).to_owned(), v.clone());
        }
        let line = match self.format {
            LogFormat::Json => {
                let mut obj = Map::new();
                obj.insert("level".into(), level.into());
                obj.insert("ts".into(), ts.into());
                obj.insert("caller".into(), self.caller.into());
                obj.insert("msg".into(), msg.into());
                obj.extend(map);
                Value::Object(obj).to_string()
            }
            LogFormat::Text if map.is_empty() => format!("{ts}\t{level}\t{}\t{msg}", self.caller),
            LogFormat::Text => format!("{ts}\t{level}\t{}\t{msg}\t{}", self.caller, Value::Object(map)),
        };
        eprintln!("{line}");
    }

    /// Reports `failure` as one line and returns its exit code.
    pub fn fail(&self, failure: &Failure) -> ExitCode {
        match self.format {
            LogFormat::Text => eprintln!("error: {}", failure.message),
            LogFormat::Json => self.write("error", &failure.message, &[("exit-code", failure.code.into())]),
        }
        ExitCode::from(failure.code)
    }

    /// Ends a command: its exit code, the failure reported if there is one.
    pub fn finish(&self, result: Result<(), Failure>) -> Result<ExitCode, Box<dyn std::error::Error>> {
        Ok(match result {
            Ok(()) => ExitCode::from(exit::OK),
            Err(f) => self.fail(&f),
        })
    }
}

/// A command failed: the exit code and a one-line message that says what to do.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    pub fn new(code: u8, message: impl Into<String>) -> Self {
        Failure { code, message: message.into() }
    }

    /// A failed file operation: a missing input, or a directory where a file is expected, is
    /// bad input; the rest (permissions, a full disk) is I/O.
    pub fn io(what: &str, path: &Path, e: &io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::NotFound => {
                Failure::new(exit::BAD_INPUT, format!("{} does not exist: check the path ({what})", path.display()))
            }
            io::ErrorKind::IsADirectory => {
                Failure::new(exit::BAD_INPUT, format!("{} is a directory: give a file ({what})", path.display()))
            }
            _ => Failure::new(exit::IO, format!("{what} {} failed: {e}", path.display())),
        }
    }

    /// The failure of a port (a backend, the snapshot store) by its kind: a medium that failed
    /// or is full is I/O, corrupt data is bad input, the rest is a bug.
    pub fn port(kind: PortErrorKind, message: String) -> Self {
        let code = match kind {
            PortErrorKind::Io | PortErrorKind::Full => exit::IO,
            PortErrorKind::Corrupt => exit::BAD_INPUT,
            _ => exit::FAILED,
        };
        Failure::new(code, message)
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// A byte-counting progress bar on standard error (hidden when it is not a terminal).
pub fn progress(len: u64, what: &'static str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    if let Ok(style) =
        ProgressStyle::with_template("{msg:>10} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what);
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// Hex of a digest.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Which kind of file a path holds, from its first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    /// A snapply image (`SNAPPLY\0`).
    Image,
    /// A bbolt database: etcd's `snapshot.db` or `member/snap/db` (bbolt's magic `0xED0CDAED`
    /// in the first meta page, after the 16-byte page header).
    EtcdDb,
    /// Neither.
    Unknown,
}

pub fn file_kind(path: &Path) -> Result<FileKind, Failure> {
    let mut head = [0u8; 24];
    let mut file = File::open(path).map_err(|e| Failure::io("opening", path, &e))?;
    let mut n = 0;
    while n < head.len() {
        let Some(rest) = head.get_mut(n..) else { break };
        match file.read(rest) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) => return Err(Failure::io("reading", path, &e)),
        }
    }
    if head.starts_with(&image::MAGIC) {
        Ok(FileKind::Image)
    } else if n >= 20 && head[16..20] == 0xED0C_DAEDu32.to_le_bytes() {
        Ok(FileKind::EtcdDb)
    } else {
        Ok(FileKind::Unknown)
    }
}

/// An image file read front to back, counting the bytes for a progress bar. A file that
/// `etcdctl snapshot save` wrote from a member (the image, then padding, its length and a
/// SHA-256: see [`crate::saved`]) reads as its image, its digest checked at the image's end.
pub struct ImageFile {
    reader: BufReader<File>,
    pub read: u64,
    bar: Option<ProgressBar>,
    saved: Option<crate::saved::Check>,
}

impl ImageFile {
    pub fn open(path: &Path, bar: Option<ProgressBar>) -> Result<(Self, u64), Failure> {
        let mut file = File::open(path).map_err(|e| Failure::io("opening", path, &e))?;
        let len = file.metadata().map_err(|e| Failure::io("reading", path, &e))?.len();
        let saved = crate::saved::detect(&file, len).map_err(|e| Failure::io("reading", path, &e))?;
        io::Seek::rewind(&mut file).map_err(|e| Failure::io("reading", path, &e))?;
        let reader = BufReader::with_capacity(1 << 20, file);
        Ok((ImageFile { reader, read: 0, bar, saved: saved.map(crate::saved::Check::new) }, len))
    }

    /// The progress bar, if any.
    pub fn bar(&self) -> Option<&ProgressBar> {
        self.bar.as_ref()
    }
}

impl image::Source for ImageFile {
    type Error = io::Error;

    fn read(&mut self, buf: &mut [u8]) -> Result<usize, io::Error> {
        let n = match &mut self.saved {
            None => self.reader.read(buf)?,
            Some(check) => {
                let allowed = check.allowed(buf.len());
                let n = match buf.get_mut(..allowed) {
                    Some(part) if !part.is_empty() => self.reader.read(part)?,
                    _ => 0,
                };
                match buf.get(..n) {
                    Some(got) if n > 0 => check.read(got),
                    // The image's end (or the file's, if it was cut short): the digest says
                    // whether what was read is what was saved.
                    _ => check.end()?,
                }
                n
            }
        };
        self.read += n as u64;
        if let Some(bar) = &self.bar {
            bar.set_position(self.read);
        }
        Ok(n)
    }
}

/// The largest decode buffer the commands grow to: 256 MiB, far above etcd's default request
/// limit (1.5 MiB). An image with a larger record is refused with what it needs.
pub const MAX_BUFFER: usize = 256 << 20;

/// What a scan of an image sees, item by item; reset when the scan restarts with a larger
/// buffer.
pub trait Visit: Default {
    fn record(&mut self, bucket: Bucket, key: &[u8], value: &[u8]);
    fn v2(&mut self, chunk: &[u8]) {
        let _ = chunk;
    }
}

impl Visit for () {
    fn record(&mut self, _: Bucket, _: &[u8], _: &[u8]) {}
}

/// A whole image read and checked: its metadata, its trailer, the buffer that decodes it.
pub struct Scanned<V> {
    pub metadata: SnapshotMetadata,
    pub summary: Summary,
    pub visit: V,
    pub buffer: usize,
    pub len: u64,
}

/// Reads the image at `path` through the core's decoder, checking every frame and the
/// trailer, starting with a 1 MiB buffer and restarting with a larger one if a record needs it.
pub fn scan_image<V: Visit>(path: &Path, show_progress: bool) -> Result<Scanned<V>, Failure> {
    let mut size = BASE_BUFFER.max(1 << 20);
    loop {
        let mut visit = V::default();
        let (_, len) = ImageFile::open(path, None)?;
        let bar = show_progress.then(|| progress(len, "reading"));
        let (file, _) = ImageFile::open(path, bar.clone())?;
        let mut buf = vec![0u8; size];
        let result = (|| {
            let mut decoder = Decoder::new(file, &mut buf)?;
            let metadata = decoder.metadata().clone();
            while let Some(item) = decoder.next()? {
                match item {
                    Item::Record { bucket, key, value } => visit.record(bucket, key, value),
                    Item::V2(chunk) => visit.v2(chunk),
                }
            }
            Ok::<_, DecodeError<io::Error>>((metadata, decoder.summary().copied()))
        })();
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
        match result {
            Ok((metadata, Some(summary))) => return Ok(Scanned { metadata, summary, visit, buffer: size, len }),
            Ok((_, None)) => {
                return Err(Failure::new(exit::BAD_INPUT, format!("{}: image has no trailer", path.display())));
            }
            Err(DecodeError::BufferTooSmall { needed, .. }) if needed <= MAX_BUFFER => size = needed,
            Err(e) => return Err(image_failure(path, &e)),
        }
    }
}

/// The failure of an image that did not decode.
pub fn image_failure(path: &Path, e: &DecodeError<io::Error>) -> Failure {
    match e {
        DecodeError::Source(e) if e.kind() == io::ErrorKind::InvalidData => {
            Failure::new(exit::BAD_INPUT, format!("{}: {e}; save a new snapshot", path.display()))
        }
        DecodeError::Source(e) => Failure::io("reading", path, e),
        DecodeError::Corrupt { .. } if matches!(file_kind(path), Ok(FileKind::EtcdDb)) => Failure::new(
            exit::BAD_INPUT,
            format!(
                "{} is an etcd snapshot, not a snapply image: convert it with `snapply import-etcd`, or give it to `snapply restore` as it is",
                path.display()
            ),
        ),
        DecodeError::Corrupt { .. } => Failure::new(
            exit::BAD_INPUT,
            format!("{} is not a valid snapply image ({e}); use an intact copy", path.display()),
        ),
        DecodeError::BufferTooSmall { needed, .. } => Failure::new(
            exit::BAD_INPUT,
            format!(
                "{}: a record of {needed} bytes is larger than this tool's {MAX_BUFFER}-byte limit",
                path.display()
            ),
        ),
        _ => Failure::new(exit::BAD_INPUT, format!("{}: {e}", path.display())),
    }
}

/// `path` with symbolic links and `..` resolved; a path that does not exist yet is resolved
/// through its nearest existing ancestor. `None` if even that cannot be resolved.
fn resolved(path: &Path) -> Option<PathBuf> {
    match path.canonicalize() {
        Ok(p) => Some(p),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let name = path.file_name()?;
            let parent = match path.parent() {
                Some(p) if !p.as_os_str().is_empty() => p,
                _ => Path::new("."),
            };
            Some(resolved(parent)?.join(name))
        }
        Err(_) => None,
    }
}

/// Whether `a` and `b` are one file (the same inode: a hard link or a symbolic link too).
fn same_file(a: &Path, b: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if let (Ok(a), Ok(b)) = (std::fs::metadata(a), std::fs::metadata(b)) {
            return (a.dev(), a.ino()) == (b.dev(), b.ino());
        }
    }
    resolved(a).is_some_and(|a| resolved(b).is_some_and(|b| a == b))
}

/// Refuses an `output` that is the input file: replacing it would destroy what is read.
pub fn check_not_input(output: &Path, input: &Path) -> Result<(), Failure> {
    if same_file(output, input) {
        return Err(Failure::new(
            exit::USAGE,
            format!(
                "the output {} is the input {}: writing it would destroy the input; give another -o",
                output.display(),
                input.display()
            ),
        ));
    }
    Ok(())
}

/// Refuses an `output` inside the directory `dir` being read (or `dir` itself): writing it
/// would change or destroy what is read.
pub fn check_outside(output: &Path, dir: &Path) -> Result<(), Failure> {
    if let (Some(out), Some(dir_path)) = (resolved(output), resolved(dir))
        && out.starts_with(&dir_path)
    {
        return Err(Failure::new(
            exit::USAGE,
            format!(
                "the output {} is inside the data directory {} being read: write it elsewhere",
                output.display(),
                dir.display()
            ),
        ));
    }
    Ok(())
}

/// Creates `path` as a file only its owner can read and write (0600, whatever the umask), as
/// etcd creates its data files (`fileutil.PrivateFileMode`).
pub fn create_private_file(path: &Path) -> Result<File, Failure> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        options.mode(0o600);
        let file = options.open(path).map_err(|e| Failure::io("creating", path, &e))?;
        // The mode given to open(2) applies only to a file it creates: an existing one (a stale
        // temporary with our process id) keeps its own, so it is set here too.
        file.set_permissions(std::fs::Permissions::from_mode(0o600)).map_err(|e| Failure::io("creating", path, &e))?;
        Ok(file)
    }
    #[cfg(not(unix))]
    options.open(path).map_err(|e| Failure::io("creating", path, &e))
}

/// Creates the directory `path` (not its parents) with mode 0700, whatever the umask, as etcd
/// creates its data directories (`fileutil.PrivateDirMode`).
pub fn create_private_dir(path: &Path) -> io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(path)
}

/// A sibling path of `path` for a temporary file or directory, removed on drop unless kept.
pub struct Temp {
    pub path: PathBuf,
    keep: bool,
}

impl Temp {
    pub fn beside(path: &Path, what: &str) -> Self {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let tmp = path.with_file_name(format!(".{name}.{what}.{}", std::process::id()));
        Temp { path: tmp, keep: false }
    }

    /// Moves the temporary into place, durably: rename, then sync the directory. A directory
    /// renamed onto one another process filled meanwhile (the loser of two concurrent
    /// restores) is refused as a data directory in use.
    pub fn persist(mut self, to: &Path) -> Result<(), Failure> {
        std::fs::rename(&self.path, to).map_err(|e| match e.kind() {
            io::ErrorKind::DirectoryNotEmpty | io::ErrorKind::AlreadyExists => Failure::new(
                exit::DATA_DIR,
                format!("{} was filled by another process meanwhile: nothing was written to it", to.display()),
            ),
            _ => Failure::io("renaming into", to, &e),
        })?;
        self.keep = true;
        sync_parent(to)
    }
}

impl Drop for Temp {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_file(&self.path);
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Syncs the directory holding `path`, so a rename into it survives a crash.
pub fn sync_parent(path: &Path) -> Result<(), Failure> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(parent).and_then(|d| d.sync_all()).map_err(|e| Failure::io("syncing", parent, &e))
}

/// A file read at offsets, counting the bytes read for a progress bar.
pub struct CountingFile {
    pub file: File,
    pub read: Cell<u64>,
}

impl ReadAt for CountingFile {
    fn size(&self) -> io::Result<u64> {
        self.file.size()
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.read.set(self.read.get() + buf.len() as u64);
        self.file.read_exact_at(buf, offset)
    }
}

/// The pipeline's observer for the CLI: etcd's messages and fields, each phase's duration.
pub struct LogObserver {
    pub log: Log,
    pub start: std::time::Instant,
}

impl Observer for LogObserver {
    fn event(&mut self, event: &Event) {
        let fields: Vec<(&str, Value)> = match event {
            Event::ApplyingSnapshot(f) | Event::AppliedSnapshot(f) | Event::OutdatedSnapshot(f) => vec![
                ("current-snapshot-index", f.current_snapshot_index.into()),
                ("current-applied-index", f.current_applied_index.into()),
                ("incoming-leader-snapshot-index", f.incoming_leader_snapshot_index.into()),
                ("incoming-leader-snapshot-term", f.incoming_leader_snapshot_term.into()),
            ],
            Event::RestoredMvccStore { consistent_index } => vec![("consistent-index", (*consistent_index).into())],
            Event::Failed { phase, fatal } => vec![("phase", phase.state().into()), ("fatal", (*fatal).into())],
            _ => vec![],
        };
        if matches!(event, Event::Failed { .. } | Event::OutdatedSnapshot(_)) {
            self.log.warn(event.message(), &fields);
        } else {
            self.log.info(event.message(), &fields);
        }
    }

    fn now_micros(&mut self) -> Option<u64> {
        u64::try_from(self.start.elapsed().as_micros()).ok()
    }

    fn phase_done(&mut self, phase: Phase, micros: Option<u64>) {
        let ms = micros.unwrap_or(0) as f64 / 1000.0;
        self.log.info("phase done", &[("phase", phase.state().into()), ("took-ms", ms.into())]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Of two restores that both found the target empty, the second to rename its directory
    /// into place finds it filled: that is the data directory in use (4), not an I/O error.
    #[test]
    fn a_directory_renamed_onto_one_filled_meanwhile_is_a_data_directory_in_use() {
        let root = tempfile::tempdir().unwrap();
        let target = root.path().join("node");
        let loser = Temp::beside(&target, "restore");
        std::fs::create_dir(&loser.path).unwrap();
        std::fs::write(loser.path.join("mine"), b"loser").unwrap();
        std::fs::create_dir(&target).unwrap();
        std::fs::write(target.join("theirs"), b"winner").unwrap();
        let failure = loser.persist(&target).unwrap_err();
        assert_eq!(failure.code, exit::DATA_DIR, "{failure}");
        assert_eq!(std::fs::read(target.join("theirs")).unwrap(), b"winner");
        let left: Vec<_> = std::fs::read_dir(root.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left, ["node"], "the loser's directory is removed");
    }
}
