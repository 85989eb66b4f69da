//! `snapply inspect`: `status`, and per bucket the record count and sizes, the key bucket's
//! revisions and tombstones, and the `meta` bucket's values.

use std::process::ExitCode;

use serde_json::{Map, Value, json};
use snapply_core::backend::Bucket;
use snapply_core::store::{META_CONSISTENT_INDEX, META_FINISHED_COMPACT, META_SCHEDULED_COMPACT, META_TERM};

use crate::common::{Failure, ImageArgs, Log, Visit, scan_image};
use crate::status::summary_json;

/// Arguments of `snapply inspect`.
pub type Args = ImageArgs;

pub fn run(args: &Args) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let log = Log::new(args.log, "snapply/inspect");
    log.finish(inspect(args))
}

#[derive(Clone, Copy, Default)]
struct BucketStats {
    records: u64,
    key_bytes: u64,
    value_bytes: u64,
    largest_value: u64,
}

#[derive(Default)]
struct Stats {
    buckets: [BucketStats; 10],
    tombstones: u64,
    meta: Map<String, Value>,
}

impl Visit for Stats {
    fn record(&mut self, bucket: Bucket, key: &[u8], value: &[u8]) {
        if let Some(b) = self.buckets.get_mut(bucket as usize) {
            b.records += 1;
            b.key_bytes += key.len() as u64;
            b.value_bytes += value.len() as u64;
            b.largest_value = b.largest_value.max(value.len() as u64);
        }
        if bucket == Bucket::Key && key.len() == 18 {
            self.tombstones += 1;
        }
        if bucket == Bucket::Meta
            && let Ok(v) = <[u8; 8]>::try_from(value)
        {
            let name = match key {
                k if k == META_CONSISTENT_INDEX => "consistent_index",
                k if k == META_TERM => "term",
                k if k == META_SCHEDULED_COMPACT => "scheduled_compact_revision",
                k if k == META_FINISHED_COMPACT => "finished_compact_revision",
                _ => return,
            };
            self.meta.insert(name.into(), u64::from_be_bytes(v).into());
        }
    }
}

fn inspect(args: &Args) -> Result<(), Failure> {
    let scanned = scan_image::<Stats>(&args.image, true)?;
    let mut v = summary_json(&scanned);
    let stats = &scanned.visit;
    let mut buckets = Map::new();
    for bucket in Bucket::ALL {
        let b = stats.buckets.get(usize::from(bucket.id())).copied().unwrap_or_default();
        buckets.insert(
            bucket.name().into(),
            json!({
                "records": b.records,
                "key_bytes": b.key_bytes,
                "value_bytes": b.value_bytes,
                "largest_value": b.largest_value,
            }),
        );
    }
    if let Value::Object(map) = &mut v {
        map.insert("revisions".into(), stats.buckets[0].records.into());
        map.insert("tombstones".into(), stats.tombstones.into());
        map.insert("meta".into(), Value::Object(stats.meta.clone()));
        map.insert("buckets".into(), Value::Object(buckets.clone()));
    }
    if args.json {
        println!("{v}");
        return Ok(());
    }
    if let Value::Object(map) = &mut v {
        map.remove("buckets");
    }
    crate::status::print_table(&v);
    println!();
    println!("{:<16} {:>10} {:>14} {:>16} {:>14}", "bucket", "records", "key bytes", "value bytes", "largest value");
    for bucket in Bucket::ALL {
        let b = stats.buckets.get(usize::from(bucket.id())).copied().unwrap_or_default();
        println!(
            "{:<16} {:>10} {:>14} {:>16} {:>14}",
            bucket.name(),
            b.records,
            b.key_bytes,
            b.value_bytes,
            b.largest_value
        );
    }
    Ok(())
}
