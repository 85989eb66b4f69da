//! `snapply restore`: a new node's data directory from a snapply image or an etcd snapshot,
//! as `etcdutl snapshot restore` makes one from an etcd snapshot.
//!
//! The directory is built beside the target under a temporary name and renamed into place
//! only once the snapshot is persisted and applied, so a failed restore leaves nothing behind.

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
    /// member.
    #[arg(long, value_parser = parse_id, default_value = "0")]
    pub member_id: u64,
    /// The minimum lease TTL in seconds (etcd's is 3/2 of the election timeout, 2 s with the
    /// default 1 s); shorter TTLs are raised to it, as etcd does on recovery.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(i64).range(1..))]
    pub min_lease_ttl: i64,
    #[command(flatten)]
    pub meta: import_etcd::MetaArgs,
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
        FsError::Full { .. } => Failure::new(exit::IO, format!("{e}: free some space and retry")),
        FsError::Io { .. } | FsError::Stream(_) => Failure::new(exit::IO, e.to_string()),
        FsError::Image { .. }
        | FsError::MetadataMismatch { .. }
        | FsError::IndexMismatch { .. }
        | FsError::Store { .. } => {
            Failure::new(exit::BAD_INPUT, format!("the snapshot cannot be restored: {e}; use an intact snapshot"))
        }
        e => Failure::new(exit::FAILED, e.to_string()),
    }
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
    let staging = Temp::beside(&args.data_dir, "restore");
    std::fs::create_dir_all(&staging.path).map_err(|e| Failure::io("creating", &staging.path, &e))?;

    let image_path = match kind {
        FileKind::Image => args.input.clone(),
        FileKind::EtcdDb => {
            let path = staging.path.join("import.snapply");
            let options = import_etcd::options(&args.meta)?;
            import_etcd::import_to_file(log, &args.input, &path, &options)?;
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

    let dir = DataDir::open(&staging.path).map_err(|e| fs_failure(&e))?;
    let mut buf = vec![0u8; scanned.buffer];
    let (file, _) = ImageFile::open(&image_path, Some(crate::common::progress(scanned.len, "persisting")))?;
    let mut source = PortSource(file);
    let persisted = snapply_fs::persist(&dir, &mut buf, &metadata, ImageData::Stream(&mut source));
    if let Some(bar) = &source.0.bar() {
        bar.finish_and_clear();
    }
    let info = persisted.map_err(|e| fs_failure(&e))?;
    drop(buf);
    if kind == FileKind::EtcdDb {
        std::fs::remove_file(&image_path).map_err(|e| Failure::io("removing", &image_path, &e))?;
    }

    // Apply it as a node does at start (etcd's RecoverSnapshotBackend): through every phase.
    let boot = dir.boot().map_err(|e| fs_failure(&e))?;
    let Some(pending) = boot.pending else {
        return Err(Failure::new(exit::FAILED, "the persisted snapshot was not found at boot"));
    };
    let config =
        Config { id: args.member_id, min_lease_ttl: args.min_lease_ttl, v2_deprecation: V2Deprecation::WriteOnly };
    let mut node = Node::<RedbBackend, Growable>::new(config, boot.backend);
    let mut store = FsSnapshotStore::new(dir);
    let mut peers = PeerTable::<Growable>::default();
    let mut observer = LogObserver { log: *log, start: Instant::now() };
    let ports = Ports { storage: &mut store, transport: &mut peers, observer: &mut observer };
    let outcome = apply_snapshot(&mut node, ports, pending.snapshot()).map_err(|e| {
        Failure::new(exit::BAD_INPUT, format!("the snapshot cannot be applied: {e}; use an intact snapshot"))
    })?;
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

    // rename(2) replaces an empty directory in one step, so an empty target is never removed
    // before the restored one is in place.
    staging.persist(&args.data_dir)?;
    log.info("restored snapshot", &fields);
    Ok(())
}
