//! `snapply verify`: checks an image whole, as a follower does before it commits one: every
//! frame's CRC-32C, the record order, the trailer's counts and SHA-256, and that its backend's
//! consistent index is the snapshot index (the check snapply-fs makes when persisting); with
//! `--stores`, that every store recovers from its records.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args as ClapArgs;
use snapply_core::backend::{Backend, Bucket, WriteTxn};
use snapply_core::collections::Growable;
use snapply_core::image::{self, MaterializeError};
use snapply_core::store::META_CONSISTENT_INDEX;
use snapply_core::store::check_backend;
use snapply_fs::RedbBackend;

use crate::common::{Failure, ImageFile, Log, LogArgs, Temp, Visit, exit, hex, image_failure, scan_image};

/// Arguments of `snapply verify`.
#[derive(Debug, ClapArgs)]
pub struct Args {
    /// The snapply image.
    pub image: PathBuf,
    /// Also materialise the image into a temporary backend and recover every store from it
    /// (leases, keys, alarms, auth, membership), as a follower does before it accepts a
    /// snapshot. Needs disk space for the backend in the system's temporary directory.
    #[arg(long)]
    pub stores: bool,
    #[command(flatten)]
    pub log: LogArgs,
}

pub fn run(args: &Args) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let log = Log::new(args.log, "snapply/verify");
    log.finish(verify(&log, args))
}

#[derive(Default)]
struct Index(Option<u64>);

impl Visit for Index {
    fn record(&mut self, bucket: Bucket, key: &[u8], value: &[u8]) {
        if bucket == Bucket::Meta && key == META_CONSISTENT_INDEX {
            self.0 = <[u8; 8]>::try_from(value).ok().map(u64::from_be_bytes);
        }
    }
}

fn verify(log: &Log, args: &Args) -> Result<(), Failure> {
    let scanned = scan_image::<Index>(&args.image, true)?;
    if scanned.visit.0 != Some(scanned.metadata.index) {
        return Err(Failure::new(
            exit::BAD_INPUT,
            format!(
                "{}: its backend's consistent index {:?} is not the snapshot index {}; the image cannot be restored",
                args.image.display(),
                scanned.visit.0,
                scanned.metadata.index
            ),
        ));
    }
    if args.stores {
        check_stores(&args.image, scanned.buffer)?;
    }
    log.info(
        "verified image",
        &[
            ("path", args.image.display().to_string().into()),
            ("index", scanned.metadata.index.into()),
            ("term", scanned.metadata.term.into()),
            ("records", scanned.summary.records.into()),
            ("stores-checked", args.stores.into()),
            ("sha256", hex(&scanned.summary.sha256).into()),
        ],
    );
    println!("ok {}", hex(&scanned.summary.sha256));
    Ok(())
}

/// Materialises the image into a redb file in the temporary directory and recovers every store
/// from it, as snapply-fs does when it persists a snapshot; the file is removed afterwards.
fn check_stores(image: &Path, buffer: usize) -> Result<(), Failure> {
    let tmp = Temp::beside(&std::env::temp_dir().join("snapply-verify.db"), "stores");
    let mut backend = RedbBackend::open(&tmp.path).map_err(|e| Failure::new(exit::IO, e.to_string()))?;
    let mut txn = backend.write().map_err(|e| Failure::new(exit::IO, e.to_string()))?;
    let (file, _) = ImageFile::open(image, None)?;
    let mut buf = vec![0u8; buffer];
    image::materialize(file, &mut buf, &mut txn, &mut |_| Ok(())).map_err(|e| match e {
        MaterializeError::Decode(e) => image_failure(image, &e),
        e => Failure::new(exit::IO, format!("materialising {} failed: {e}", image.display())),
    })?;
    txn.commit().map_err(|e| Failure::new(exit::IO, e.to_string()))?;
    check_backend::<Growable, _>(&backend).map_err(|e| {
        Failure::new(
            exit::BAD_INPUT,
            format!("{}: a store does not recover: {e}; the image cannot be restored", image.display()),
        )
    })
}
