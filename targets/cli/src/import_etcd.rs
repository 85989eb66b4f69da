//! `snapply import-etcd`: convert an etcd snapshot (`etcdctl snapshot save` output or a
//! member's `member/snap/db`) into a snapply image.

use std::cell::Cell;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use clap::Args as ClapArgs;
use snapply_core::{ConfState, IdList};
use snapply_etcd::bbolt::BoltError;
use snapply_etcd::{Digest, EtcdSnapshot, ImportError, ImportOptions, Imported, Options};

use crate::common::{
    CountingFile, Failure, Log, LogArgs, Temp, check_not_input, create_private_file, exit, hex, progress,
};

/// Arguments of `snapply import-etcd`.
#[derive(Debug, ClapArgs)]
pub struct Args {
    /// The etcd snapshot: `etcdctl snapshot save` output or a member's `member/snap/db`.
    pub snapshot: PathBuf,
    /// Where to write the snapply image (replaced atomically if it exists).
    #[arg(short, long)]
    pub output: PathBuf,
    #[command(flatten)]
    pub etcd: EtcdArgs,
    #[command(flatten)]
    pub log: LogArgs,
}

/// How an etcd snapshot is read: its hash check, and the snapshot metadata an etcd 3.4 backend
/// does not store.
#[derive(Debug, Clone, clap::Args)]
pub struct EtcdArgs {
    /// Read a snapshot without a SHA-256 trailer (a member's `member/snap/db`), and do not check
    /// the trailer of one that has it, as `etcdutl snapshot restore --skip-hash-check`. Damage
    /// then goes unnoticed unless the B+tree or a record shows it: use only a copy you trust.
    #[arg(long)]
    pub skip_hash_check: bool,
    /// The term of the snapshot, for an etcd 3.4 backend that does not store one (default: 1,
    /// as `etcdutl snapshot restore` starts a new cluster).
    #[arg(long)]
    pub term: Option<u64>,
    /// The voters (hexadecimal member ids, comma-separated), for an etcd 3.4 backend that does
    /// not store its conf state (default: the members that are not learners).
    #[arg(long, value_delimiter = ',', value_parser = parse_id)]
    pub voters: Option<Vec<u64>>,
    /// The learners (hexadecimal member ids), with `--voters`.
    #[arg(long, value_delimiter = ',', value_parser = parse_id, requires = "voters")]
    pub learners: Option<Vec<u64>>,
}

fn parse_id(s: &str) -> Result<u64, String> {
    u64::from_str_radix(s, 16).map_err(|e| format!("`{s}` is not a hexadecimal member id: {e}"))
}

pub fn run(args: &Args) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let log = Log::new(args.log, "snapply/import-etcd");
    let result = check_not_input(&args.output, &args.snapshot)
        .and_then(|()| import_to_file(&log, &args.snapshot, &args.output, &args.etcd))
        .map(drop);
    log.finish(result)
}

/// The import options the arguments give.
fn options(args: &EtcdArgs) -> Result<ImportOptions, Failure> {
    let usage = |what: &str| Failure::new(exit::USAGE, format!("{what}: give at most 16 ids"));
    let conf_state = match &args.voters {
        None => None,
        Some(voters) => Some(ConfState {
            voters: IdList::from_slice(voters).map_err(|_| usage("too many voters"))?,
            learners: IdList::from_slice(args.learners.as_deref().unwrap_or_default())
                .map_err(|_| usage("too many learners"))?,
            ..ConfState::default()
        }),
    };
    Ok(ImportOptions { term: args.term, conf_state })
}

/// The failure of an etcd snapshot that does not import.
pub fn etcd_failure(path: &Path, e: &ImportError) -> Failure {
    use snapply_etcd::Error;
    let corrupt = |what: String| {
        Failure::new(
            exit::BAD_INPUT,
            format!("{} {what}; save a new snapshot with `etcdctl snapshot save`", path.display()),
        )
    };
    match e {
        ImportError::Etcd(Error::Open { source, .. }) => Failure::io("opening", path, source),
        ImportError::Etcd(Error::Bolt(BoltError::Io { source, .. })) => Failure::io("reading", path, source),
        ImportError::Etcd(e) => corrupt(format!("is not a readable etcd snapshot: {e}")),
        ImportError::Write(e) => Failure::new(exit::IO, format!("writing the image failed: {e}")),
        e @ (ImportError::NoConsistentIndex | ImportError::Unsupported { .. } | ImportError::Encode(_)) => {
            corrupt(format!("cannot be imported: {e}"))
        }
        e => corrupt(format!("cannot be imported: {e}")),
    }
}

/// Converts the etcd snapshot at `input` into the image at `output` (through a temporary
/// file beside it, renamed into place once complete and synced), logging what it did.
pub fn import_to_file(log: &Log, input: &Path, output: &Path, args: &EtcdArgs) -> Result<Imported, Failure> {
    let started = Instant::now();
    let options = &options(args)?;
    let file = File::open(input).map_err(|e| Failure::io("opening", input, &e))?;
    let len = file.metadata().map_err(|e| Failure::io("reading", input, &e))?.len();
    log.info("opening etcd snapshot", &[("path", input.display().to_string().into()), ("size-bytes", len.into())]);
    let source = CountingFile { file, read: Cell::new(0) };
    let read = Options { verify_digest: !args.skip_hash_check, ..Options::default() };
    let snap = EtcdSnapshot::from_source(&source, read).map_err(|e| etcd_failure(input, &ImportError::Etcd(e)))?;
    // etcdutl's check (`snapshot missing hash but --skip-hash-check=false`): without a trailer
    // nothing shows whether the bytes are intact (a file cut at a page boundary reads as a
    // smaller database).
    if !args.skip_hash_check && snap.digest() == Digest::Absent {
        return Err(Failure::new(
            exit::BAD_INPUT,
            format!(
                "{}: snapshot missing hash but --skip-hash-check=false: it has no SHA-256 trailer (a member's db, or a file cut short); give an `etcdctl snapshot save` file, or --skip-hash-check for a copy you trust",
                input.display()
            ),
        ));
    }
    let digest = match snap.digest() {
        Digest::Verified(d) => format!("verified {}", hex(&d)),
        Digest::Unchecked(d) => format!("unchecked {}", hex(&d)),
        Digest::Absent => "absent".to_owned(),
    };
    let hashed = source.read.get();
    log.info("opened etcd snapshot", &[("sha256-trailer", digest.into()), ("db-size-bytes", snap.db().len().into())]);

    let tmp = Temp::beside(output, "import");
    let out = create_private_file(&tmp.path)?;
    let bar = progress(snap.db().len(), "importing");
    let mut writer = BufWriter::with_capacity(1 << 20, out);
    let imported = snapply_etcd::import(&snap, options, &mut writer, &mut |_| {
        bar.set_position(source.read.get().saturating_sub(hashed).min(snap.db().len()));
    });
    bar.finish_and_clear();
    let imported = imported.map_err(|e| etcd_failure(input, &e))?;
    let out = writer.into_inner().map_err(|e| Failure::io("writing", &tmp.path, e.error()))?;
    out.sync_all().map_err(|e| Failure::io("syncing", &tmp.path, &e))?;
    drop(out);
    tmp.persist(output)?;

    let secs = started.elapsed().as_secs_f64().max(1e-9);
    let m = &imported.metadata;
    if m.term != snapply_etcd::Origin::Backend || m.conf_state != snapply_etcd::Origin::Backend {
        log.warn(
            "etcd backend has no term or conf state (etcd 3.4 layout); using given or derived values",
            &[("term-from", m.term.to_string().into()), ("conf-state-from", m.conf_state.to_string().into())],
        );
    }
    log.info(
        "imported etcd snapshot",
        &[
            ("path", output.display().to_string().into()),
            ("index", m.metadata.index.into()),
            ("term", m.metadata.term.into()),
            ("voters", format!("{:x?}", m.metadata.conf_state.voters.as_slice()).into()),
            ("learners", format!("{:x?}", m.metadata.conf_state.learners.as_slice()).into()),
            ("revisions", imported.records[0].into()),
            ("tombstones", imported.tombstones.into()),
            ("records", imported.summary.records.into()),
            ("image-bytes", imported.bytes.into()),
            ("sha256", hex(&imported.summary.sha256).into()),
            ("took-ms", (secs * 1000.0).into()),
            ("revisions-per-sec", (imported.records[0] as f64 / secs).round().into()),
            ("db-mb-per-sec", (snap.db().len() as f64 / secs / 1e6).into()),
        ],
    );
    let _ = std::io::stderr().flush();
    Ok(imported)
}
