//! `snapply create`: a snapshot image of a stopped node's data directory, at the index and
//! term its backend reflects.

use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::Args as ClapArgs;
use snapply_core::SnapshotMetadata;
use snapply_core::backend::Backend;
use snapply_core::collections::Growable;
use snapply_core::image::{self, EncodeError, Sink};
use snapply_core::store::{ConsistentIndex, Membership, V2Store, load_conf_state, member_key};
use snapply_fs::{FsError, RedbReadOnly};

use crate::common::{Failure, Log, LogArgs, Temp, check_outside, create_private_file, exit, hex};

/// Arguments of `snapply create`.
#[derive(Debug, ClapArgs)]
pub struct Args {
    /// The data directory of a stopped node.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Where to write the image (replaced atomically if it exists).
    #[arg(short, long)]
    pub output: PathBuf,
    #[command(flatten)]
    pub log: LogArgs,
}

pub fn run(args: &Args) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let log = Log::new(args.log, "snapply/create");
    log.finish(create(&log, args))
}

struct IoSink<W>(W);

impl<W: Write> Sink for IoSink<W> {
    type Error = io::Error;

    fn write_all(&mut self, bytes: &[u8]) -> Result<(), io::Error> {
        self.0.write_all(bytes)
    }
}

/// Opens the data directory's backend read-only: `create` never writes to what it reads, and
/// works on a read-only copy.
fn open_backend(args: &Args) -> Result<RedbReadOnly, Failure> {
    let db = args.data_dir.join("member").join("db");
    let not_a_node = || {
        Failure::new(
            exit::BAD_INPUT,
            format!(
                "{} is not a snapply data directory (no member/db): give the --data-dir of a node",
                args.data_dir.display()
            ),
        )
    };
    match std::fs::metadata(&db) {
        Ok(m) if m.is_file() => {}
        Ok(_) => return Err(not_a_node()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(not_a_node()),
        Err(e) => return Err(Failure::io("reading", &db, &e)),
    }
    RedbReadOnly::open(&db).map_err(|e| match &e {
        FsError::Db { source, .. } if matches!(**source, redb::Error::DatabaseAlreadyOpen) => Failure::new(
            exit::DATA_DIR,
            format!("data directory {} is in use by another process: stop the node first", args.data_dir.display()),
        ),
        FsError::Db { source, .. } if matches!(**source, redb::Error::RepairAborted) => Failure::new(
            exit::BAD_INPUT,
            format!(
                "{}'s backend was not closed cleanly and needs recovery, which a read-only open does not do: start the node once, stop it, then create",
                args.data_dir.display()
            ),
        ),
        FsError::Db { .. } => Failure::new(
            exit::BAD_INPUT,
            format!("{}'s backend is not readable ({e}): restore the node from a snapshot", args.data_dir.display()),
        ),
        FsError::Io { source, .. } => Failure::io("opening", &db, source),
        _ => Failure::new(exit::IO, e.to_string()),
    })
}

/// The highest index of a `member/snap/<term>-<index>.snap` above `applied`, if any.
fn pending_snapshot(args: &Args, applied: u64) -> Result<Option<u64>, Failure> {
    let snap = args.data_dir.join("member").join("snap");
    let entries = match std::fs::read_dir(&snap) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Failure::io("listing", &snap, &e)),
    };
    let mut newest = None;
    for entry in entries {
        let name = entry.map_err(|e| Failure::io("listing", &snap, &e))?.file_name();
        let index = name
            .to_str()
            .and_then(|n| n.strip_suffix(".snap"))
            .and_then(|n| n.split_once('-'))
            .filter(|(t, i)| t.len() == 16 && i.len() == 16)
            .and_then(|(_, i)| u64::from_str_radix(i, 16).ok());
        if let Some(index) = index.filter(|i| *i > applied) {
            newest = newest.max(Some(index));
        }
    }
    Ok(newest)
}

fn create(log: &Log, args: &Args) -> Result<(), Failure> {
    let started = Instant::now();
    check_outside(&args.output, &args.data_dir)?;
    let backend = open_backend(args)?;
    let corrupt = |e: &dyn std::fmt::Display| {
        Failure::new(exit::BAD_INPUT, format!("{}'s backend does not read: {e}", args.data_dir.display()))
    };
    let txn = backend.read().map_err(|e| corrupt(&e))?;
    let cindex = ConsistentIndex::load(&txn).map_err(|e| corrupt(&e))?;
    let conf_state = load_conf_state(&txn).map_err(|e| corrupt(&e))?.unwrap_or_default();
    let metadata = SnapshotMetadata { index: cindex.index(), term: cindex.term(), conf_state };
    // A snapshot persisted but not yet applied (a restore cut short) is applied when the node
    // starts (etcd's RecoverSnapshotBackend); until then the backend is the old state.
    if let Some(pending) = pending_snapshot(args, metadata.index)? {
        return Err(Failure::new(
            exit::BAD_INPUT,
            format!(
                "{} holds a snapshot at index {pending} its backend (at {}) has not applied yet: start the node once so it applies it, then create",
                args.data_dir.display(),
                metadata.index
            ),
        ));
    }
    if metadata.index == 0 {
        return Err(Failure::new(
            exit::BAD_INPUT,
            format!(
                "{} has applied nothing (consistent index 0): there is nothing to snapshot",
                args.data_dir.display()
            ),
        ));
    }

    // The v2 data is the membership tree, kept in step with the members by every node
    // (`/0/members/<id>/raftAttributes`, `/0/removed_members/<id>`).
    let membership = Membership::<Growable>::recover(&backend).map_err(|e| corrupt(&e))?;
    let mut tree = V2Store::<Growable>::default();
    for m in membership.members() {
        let path = [b"/0/members/".as_slice(), &member_key(m.id), b"/raftAttributes"].concat();
        let first = m.peer_urls.first().map(Vec::as_slice).unwrap_or_default();
        tree.set(&path, first).map_err(|e| corrupt(&e))?;
    }
    for id in membership.removed() {
        let path = [b"/0/removed_members/".as_slice(), &member_key(*id)].concat();
        tree.set(&path, b"removed").map_err(|e| corrupt(&e))?;
    }
    let mut v2 = Vec::new();
    tree.save(&mut v2).map_err(|e| corrupt(&e))?;

    let tmp = Temp::beside(&args.output, "create");
    let file = create_private_file(&tmp.path)?;
    let mut sink = IoSink(BufWriter::with_capacity(1 << 20, file));
    let summary = image::encode(&metadata, &txn, &v2, &mut sink).map_err(|e| match e {
        EncodeError::Sink(e) => Failure::io("writing", &tmp.path, &e),
        e => corrupt(&e),
    })?;
    let file = sink.0.into_inner().map_err(|e| Failure::io("writing", &tmp.path, e.error()))?;
    file.sync_all().map_err(|e| Failure::io("syncing", &tmp.path, &e))?;
    drop(file);
    tmp.persist(&args.output)?;
    log.info(
        "created snapshot image",
        &[
            ("data-dir", args.data_dir.display().to_string().into()),
            ("path", args.output.display().to_string().into()),
            ("index", metadata.index.into()),
            ("term", metadata.term.into()),
            ("records", summary.records.into()),
            ("sha256", hex(&summary.sha256).into()),
            ("took-ms", (started.elapsed().as_secs_f64() * 1000.0).into()),
        ],
    );
    Ok(())
}
