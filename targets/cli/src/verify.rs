//! `snapply verify`: checks an image whole, as a follower does before it commits one: every
//! frame's CRC-32C, the record order, the trailer's counts and SHA-256, and that its backend's
//! consistent index is the snapshot index (the check snapply-fs makes when persisting).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args as ClapArgs;
use snapply_core::backend::Bucket;
use snapply_core::store::META_CONSISTENT_INDEX;

use crate::common::{Failure, Log, LogArgs, Visit, exit, hex, scan_image};

/// Arguments of `snapply verify`.
#[derive(Debug, ClapArgs)]
pub struct Args {
    /// The snapply image.
    pub image: PathBuf,
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
    log.info(
        "verified image",
        &[
            ("path", args.image.display().to_string().into()),
            ("index", scanned.metadata.index.into()),
            ("term", scanned.metadata.term.into()),
            ("records", scanned.summary.records.into()),
            ("sha256", hex(&scanned.summary.sha256).into()),
        ],
    );
    println!("ok {}", hex(&scanned.summary.sha256));
    Ok(())
}
