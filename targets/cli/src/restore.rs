//! `snapply restore`: a new node's data directory from a snapply image or an etcd snapshot,
//! as `etcdutl snapshot restore` makes one from an etcd snapshot.
//!
//! The directory is built beside the target under a temporary name and renamed into place
//! only once the snapshot is persisted and applied, so a failed restore leaves nothing behind.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use clap::Args as ClapArgs;
use snapply_core::backend::Bucket;
use snapply_core::collections::Growable;
use snapply_core::memports::PeerTable;
use snapply_core::ports::{PortError, PortErrorKind, Ports};
use snapply_core::store::{META_CONSISTENT_INDEX, V2Deprecation};
use snapply_core::{Config, ImageData, Node, apply_snapshot, image};
use snapply_fs::{DataDir, FsError, FsSnapshotStore, RedbBackend};

use crate::common::{Failure, FileKind, ImageFile, Log, LogArgs, LogObserver, Temp, Visit, exit, file_kind, hex};
use crate::import_etcd;
use snapply_raft::InitialCluster;

/// Arguments of `snapply restore`.
#[derive(Debug, ClapArgs)]
pub struct Args {
    /// A snapply image, or an etcd snapshot (`etcdctl snapshot save` output or a member's
    /// `member/snap/db`), told apart by their first bytes.
    pub input: PathBuf,
    /// The data directory to create. It must not exist or be empty.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// This node's member id (hexadecimal): the restored transport has a peer for every other
    /// member. Without --initial-cluster, the snapshot's members are kept, as in a copy of a
    /// member's data directory.
    #[arg(long, value_parser = parse_id, default_value = "0", conflicts_with = "initial_cluster")]
    pub member_id: u64,
    /// Start a new cluster from the snapshot, as `etcdutl snapshot restore` does: every member
    /// as name=peer-URL, comma-separated. The members are these (with etcd's ids), none is
    /// removed, and the directory holds a new raft log at term 1; start each member with the
    /// same --initial-cluster and --initial-cluster-token.
    #[arg(long)]
    pub initial_cluster: Option<String>,
    /// The member this directory is for, in --initial-cluster.
    #[arg(long, default_value = "default", requires = "initial_cluster")]
    pub name: String,
    /// The new cluster's token (etcd's --initial-cluster-token): with the peer URLs, it makes
    /// the member and cluster ids.
    #[arg(long, default_value = snapply_raft::DEFAULT_CLUSTER_TOKEN, requires = "initial_cluster")]
    pub initial_cluster_token: String,
    /// This member's peer URLs, comma-separated: they must be its URLs in --initial-cluster
    /// (default: those).
    #[arg(long, value_delimiter = ',', requires = "initial_cluster")]
    pub initial_advertise_peer_urls: Vec<String>,
    /// The minimum lease TTL in seconds (etcd's is 3/2 of the election timeout, 2 s with the
    /// default 1 s); shorter TTLs are raised to it, as etcd does on recovery.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(i64).range(1..))]
    pub min_lease_ttl: i64,
    #[command(flatten)]
    pub etcd: import_etcd::EtcdArgs,
    #[command(flatten)]
    pub log: LogArgs,
}

fn parse_id(s: &str) -> Result<u64, String> {
    u64::from_str_radix(s, 16).map_err(|e| format!("`{s}` is not a hexadecimal member id: {e}"))
}

pub fn run(args: &Args) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let log = Log::new(args.log, "snapply/restore");
    log.finish(restore(&log, args))
}

/// Checks the image's `meta` bucket while it is scanned: the consistent index must be there.
#[derive(Default)]
struct Meta {
    consistent_index: Option<u64>,
    records: u64,
}

impl Visit for Meta {
    fn record(&mut self, bucket: Bucket, key: &[u8], value: &[u8]) {
        self.records += 1;
        if bucket == Bucket::Meta && key == META_CONSISTENT_INDEX {
            self.consistent_index = <[u8; 8]>::try_from(value).ok().map(u64::from_be_bytes);
        }
    }
}

/// Refuses a data directory that exists and is not empty, as etcdutl does.
pub fn check_empty(dir: &Path) -> Result<(), Failure> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(Failure::new(
                    exit::DATA_DIR,
                    format!("data directory {} is not empty: restore into a new or empty directory", dir.display()),
                ));
            }
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotADirectory => Err(Failure::new(
            exit::DATA_DIR,
            format!("{} exists and is not a directory: choose another --data-dir", dir.display()),
        )),
        Err(e) => Err(Failure::io("listing", dir, &e)),
    }
}

fn fs_failure(e: &FsError) -> Failure {
    match e {
        _ if e.is_full() => Failure::new(exit::IO, format!("{e}: the disk is full; free some space and retry")),
        FsError::Io { .. } | FsError::Stream(_) => Failure::new(exit::IO, e.to_string()),
        FsError::Image { .. }
        | FsError::MetadataMismatch { .. }
        | FsError::IndexMismatch { .. }
        | FsError::Store { .. } => {
            Failure::new(exit::BAD_INPUT, format!("the snapshot cannot be restored: {e}; use an intact snapshot"))
        }
        // A backend or redb failure: by its kind (a full disk is I/O).
        e => Failure::port(e.to_port().kind, e.to_string()),
    }
}

/// The failure of the pipeline: by the kind of the port or store error that stopped it (a
/// full disk is I/O, not bad input).
fn apply_failure(e: &snapply_core::ApplyError) -> Failure {
    use snapply_core::ApplyErrorKind;
    use snapply_core::store::StoreError;
    let message = |what: &str| format!("the snapshot cannot be applied: {e}{what}");
    match e.kind() {
        ApplyErrorKind::Port(p) | ApplyErrorKind::Store(StoreError::Backend(p)) => Failure::port(
            p.kind,
            message(if p.kind == PortErrorKind::Full { "; the disk is full; free some space and retry" } else { "" }),
        ),
        _ => Failure::new(exit::BAD_INPUT, message("; use an intact snapshot")),
    }
}

/// The directory a restore builds beside its target (`.<name>.restore.<pid>`), locked (flock)
/// while this process builds it: a later run into the same parent directory removes those
/// whose lock it can take (their process is gone: killed, or the machine restarted), and
/// refuses to start while another run into the same target holds its lock.
struct Staging {
    temp: Temp,
    /// Holds the lock until the process ends, also once the directory is renamed into place.
    _lock: File,
}

/// What a restore calls its staging directory: `what` in `.<name>.<what>.<pid>`.
const STAGING: &str = "restore";

impl Staging {
    fn create(log: &Log, target: &Path) -> Result<Self, Failure> {
        let parent = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        std::fs::create_dir_all(parent).map_err(|e| Failure::io("creating", parent, &e))?;
        let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        remove_stale(log, parent, &name)?;
        // A run cleaning up at this moment may take the new directory's lock before this one
        // does, and remove it: then it is made again.
        for _ in 0..8 {
            let temp = Temp::beside(target, STAGING);
            match crate::common::create_private_dir(&temp.path) {
                Ok(()) => {}
                // Ours from a previous attempt, being removed by that run: again.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(Failure::io("creating", &temp.path, &e)),
            }
            let lock = File::open(&temp.path).map_err(|e| Failure::io("opening", &temp.path, &e))?;
            match lock.try_lock() {
                Ok(()) if same_inode(&lock, &temp.path) => return Ok(Staging { temp, _lock: lock }),
                Ok(()) | Err(std::fs::TryLockError::WouldBlock) => {}
                // A file system without locks: the directory is built unlocked, and no run
                // takes it for stale (none can lock it either).
                Err(std::fs::TryLockError::Error(_)) => return Ok(Staging { temp, _lock: lock }),
            }
        }
        Err(Failure::new(exit::DATA_DIR, format!("{} is being cleaned up by another process: retry", parent.display())))
    }
}

fn same_inode(file: &File, path: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        match (file.metadata(), std::fs::metadata(path)) {
            (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
            _ => false,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (file, path);
        true
    }
}

/// Removes the staging directories in `parent` whose process is gone, and refuses to start if
/// a live one builds `target_name`: two restores into one directory, one of them must lose.
fn remove_stale(log: &Log, parent: &Path, target_name: &str) -> Result<(), Failure> {
    let entries = std::fs::read_dir(parent).map_err(|e| Failure::io("listing", parent, &e))?;
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some((target, pid)) = file_name.to_str().and_then(parse_staging) else { continue };
        let path = entry.path();
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let Ok(dir) = File::open(&path) else { continue };
        match dir.try_lock() {
            Ok(()) => {
                match std::fs::remove_dir_all(&path) {
                    Ok(()) => {}
                    // Another run removed it first.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(Failure::io("removing a stale restore directory", &path, &e)),
                }
                log.warn(
                    "removed the directory of a restore that did not finish",
                    &[("path", path.display().to_string().into()), ("pid", pid.into())],
                );
            }
            Err(std::fs::TryLockError::WouldBlock) if target == target_name => {
                return Err(Failure::new(
                    exit::DATA_DIR,
                    format!(
                        "another restore into {} is running (process {pid}): wait for it, or choose another --data-dir",
                        parent.join(target_name).display()
                    ),
                ));
            }
            Err(_) => {}
        }
    }
    crate::common::sync_parent(&parent.join(target_name))
}

/// `(target name, process id)` of a staging directory's name `.<target>.restore.<pid>`.
fn parse_staging(name: &str) -> Option<(&str, u32)> {
    let (rest, pid) = name.strip_prefix('.')?.rsplit_once('.')?;
    let target = rest.strip_suffix(STAGING)?.strip_suffix('.')?;
    Some((target, pid.parse().ok()?))
}

/// An image file as the snapshot store's stream.
struct PortSource(ImageFile);

impl image::Source for PortSource {
    type Error = PortError;

    fn read(&mut self, buf: &mut [u8]) -> Result<usize, PortError> {
        image::Source::read(&mut self.0, buf).map_err(|_| PortError::new(PortErrorKind::Io, "reading the image file"))
    }
}

fn restore(log: &Log, args: &Args) -> Result<(), Failure> {
    let started = Instant::now();
    let kind = file_kind(&args.input)?;
    check_empty(&args.data_dir)?;
    let staging = Staging::create(log, &args.data_dir)?;

    let image_path = match kind {
        FileKind::Image => args.input.clone(),
        FileKind::EtcdDb => {
            let path = staging.temp.path.join("import.snapply");
            import_etcd::import_to_file(log, &args.input, &path, &args.etcd)?;
            path
        }
        FileKind::Unknown => {
            return Err(Failure::new(
                exit::BAD_INPUT,
                format!(
                    "{} is neither a snapply image nor an etcd snapshot: give a file made by `snapply create`, `snapply import-etcd` or `etcdctl snapshot save`",
                    args.input.display()
                ),
            ));
        }
    };

    // A new cluster (etcdutl's restore): the image is checked whole, then rewritten with the new
    // members, index and term, and that is what is restored.
    let new_cluster = match &args.initial_cluster {
        None => None,
        Some(initial) => {
            let usage = |message: String| Failure::new(exit::USAGE, message);
            let cluster = InitialCluster::parse(initial, &args.initial_cluster_token).map_err(usage)?;
            for url in &args.initial_advertise_peer_urls {
                snapply_raft::check_peer_url(url).map_err(|e| usage(format!("--initial-advertise-peer-urls: {e}")))?;
            }
            let (id, _) = *cluster.member(&args.name, &args.initial_advertise_peer_urls).map_err(usage)?;
            Some((cluster, id))
        }
    };
    let image_path = match &new_cluster {
        None => image_path,
        Some((cluster, id)) => {
            let scanned = crate::common::scan_image::<()>(&image_path, true)?;
            let rewritten = staging.temp.path.join("new-cluster.snapply");
            let config =
                Config { id: *id, min_lease_ttl: args.min_lease_ttl, v2_deprecation: V2Deprecation::WriteOnly };
            crate::new_cluster::rewrite(&image_path, scanned.buffer, &rewritten, cluster, config)?;
            if kind == FileKind::EtcdDb {
                std::fs::remove_file(&image_path).map_err(|e| Failure::io("removing", &image_path, &e))?;
            }
            log.info(
                "starting a new cluster",
                &[
                    ("name", args.name.clone().into()),
                    ("member-id", format!("{id:016x}").into()),
                    ("cluster-id", format!("{:016x}", cluster.id()).into()),
                    ("members", (cluster.members().len() as u64).into()),
                    ("snapshot-revisions-kept", true.into()),
                ],
            );
            rewritten
        }
    };
    let temporary = kind == FileKind::EtcdDb || new_cluster.is_some();

    // A first pass checks the whole image and finds the buffer its largest record needs.
    let scanned = crate::common::scan_image::<Meta>(&image_path, true)?;
    let metadata = scanned.metadata;
    if scanned.visit.consistent_index != Some(metadata.index) {
        return Err(Failure::new(
            exit::BAD_INPUT,
            format!(
                "{}: its backend's consistent index {:?} is not the snapshot index {}; use an intact snapshot",
                args.input.display(),
                scanned.visit.consistent_index,
                metadata.index
            ),
        ));
    }
    log.info(
        "restoring snapshot",
        &[
            ("path", args.input.display().to_string().into()),
            ("data-dir", args.data_dir.display().to_string().into()),
            ("snap-index", metadata.index.into()),
            ("snap-term", metadata.term.into()),
            ("records", scanned.summary.records.into()),
        ],
    );

    let dir = DataDir::open(&staging.temp.path).map_err(|e| fs_failure(&e))?;
    let mut buf = vec![0u8; scanned.buffer];
    let (file, _) = ImageFile::open(&image_path, Some(crate::common::progress(scanned.len, "persisting")))?;
    let mut source = PortSource(file);
    let persisted = snapply_fs::persist(&dir, &mut buf, &metadata, ImageData::Stream(&mut source));
    if let Some(bar) = &source.0.bar() {
        bar.finish_and_clear();
    }
    let info = persisted.map_err(|e| fs_failure(&e))?;
    drop(buf);
    if temporary {
        std::fs::remove_file(&image_path).map_err(|e| Failure::io("removing", &image_path, &e))?;
    }

    // Apply it as a node does at start (etcd's RecoverSnapshotBackend): through every phase.
    let boot = dir.boot().map_err(|e| fs_failure(&e))?;
    let Some(pending) = boot.pending else {
        return Err(Failure::new(exit::FAILED, "the persisted snapshot was not found at boot"));
    };
    let member_id = new_cluster.as_ref().map_or(args.member_id, |(_, id)| *id);
    let config = Config { id: member_id, min_lease_ttl: args.min_lease_ttl, v2_deprecation: V2Deprecation::WriteOnly };
    let mut node = Node::<RedbBackend, Growable>::new(config, boot.backend);
    let mut store = FsSnapshotStore::new(dir);
    let mut peers = PeerTable::<Growable>::default();
    let mut observer = LogObserver { log: *log, start: Instant::now() };
    let ports = Ports { storage: &mut store, transport: &mut peers, observer: &mut observer };
    let outcome = apply_snapshot(&mut node, ports, pending.snapshot()).map_err(|e| apply_failure(&e))?;
    let progress = outcome.map(|o| o.progress).unwrap_or_default();
    let stores = node.stores();
    let fields = [
        ("data-dir", args.data_dir.display().to_string().into()),
        ("applied-index", progress.applied_index.into()),
        ("applied-term", progress.applied_term.into()),
        ("current-revision", stores.kv.current_revision().into()),
        ("compact-revision", stores.kv.compact_revision().into()),
        ("indexed-revisions", (stores.kv.index_len() as u64).into()),
        ("leases", (stores.lessor.leases().len() as u64).into()),
        ("members", (stores.membership.members().len() as u64).into()),
        ("peers", (peers.peers().len() as u64).into()),
        ("image-sha256", hex(&info.image_sha256).into()),
        ("took-ms", (started.elapsed().as_secs_f64() * 1000.0).into()),
    ];
    drop(node);
    drop(store);
    if let Some((cluster, id)) = &new_cluster {
        // etcdutl's WAL: the new members' additions at term 1, committed, and the ids.
        snapply_raft::init_raft_log(&staging.temp.path, cluster, *id)
            .map_err(|e| Failure::new(exit::IO, format!("writing the raft log: {e}")))?;
    }

    // rename(2) replaces an empty directory in one step, so an empty target is never removed
    // before the restored one is in place.
    staging.temp.persist(&args.data_dir)?;
    log.info("restored snapshot", &fields);
    Ok(())
}
