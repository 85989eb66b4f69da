//! `snapply status`: what an image holds (metadata, record count, v2 size, digest), after
//! checking it whole.

use std::process::ExitCode;

use serde_json::{Value, json};
use snapply_core::ConfState;

use crate::common::{Failure, ImageArgs, Log, Scanned, Visit, hex, scan_image};

/// Arguments of `snapply status`.
pub type Args = ImageArgs;

pub fn run(args: &Args) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let log = Log::new(args.log, "snapply/status");
    log.finish(status(args))
}

/// Member ids in hexadecimal, as etcd prints them and as `--voters` and `--member-id` take them.
fn ids(ids: &[u64]) -> Value {
    ids.iter().map(|id| Value::String(format!("{id:x}"))).collect()
}

fn conf_json(c: &ConfState) -> Value {
    json!({
        "voters": ids(c.voters.as_slice()),
        "learners": ids(c.learners.as_slice()),
        "voters_outgoing": ids(c.voters_outgoing.as_slice()),
        "learners_next": ids(c.learners_next.as_slice()),
        "auto_leave": c.auto_leave,
    })
}

/// What the image's digest covers: not the file's `sha256sum`, which includes the trailer
/// frame that holds the digest (docs/format.md).
const SHA256_COVERS: &str = "the image's bytes before its trailer frame (not the file's sha256sum)";

/// The fields `status` prints, and `inspect` prints first.
pub fn summary_json<V: Visit>(s: &Scanned<V>) -> Value {
    json!({
        "index": s.metadata.index,
        "term": s.metadata.term,
        "conf_state": conf_json(&s.metadata.conf_state),
        "records": s.summary.records,
        "v2_bytes": s.summary.v2_len,
        "size_bytes": s.len,
        "sha256": hex(&s.summary.sha256),
        "sha256_covers": SHA256_COVERS,
        "integrity": "ok",
    })
}

/// Prints a flat JSON object as an aligned table.
pub fn print_table(v: &Value) {
    if let Value::Object(map) = v {
        for (k, v) in map {
            match v {
                Value::String(s) => println!("{k:<22} {s}"),
                Value::Object(_) => {
                    let inner: Vec<String> = match v {
                        Value::Object(m) => m.iter().map(|(k, v)| format!("{k}={v}")).collect(),
                        _ => vec![],
                    };
                    println!("{k:<22} {}", inner.join(" "));
                }
                other => println!("{k:<22} {other}"),
            }
        }
    }
}

fn status(args: &Args) -> Result<(), Failure> {
    let scanned = scan_image::<()>(&args.image, true)?;
    let v = summary_json(&scanned);
    if args.json {
        println!("{v}");
    } else {
        print_table(&v);
    }
    Ok(())
}
