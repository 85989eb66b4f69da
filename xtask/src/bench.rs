//! `cargo xtask bench`: the criterion benchmarks of every workspace crate that has some.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};

use crate::cmd::{Ctx, Result, output, run};

mod cluster;
mod etcd;
pub use cluster::{CLUSTER_KEYS, bench_cluster};
pub use etcd::bench_etcd;

/// The sizes `cargo xtask bench --etcd` measures unless `--keys` says otherwise.
pub const ETCD_KEYS: [u64; 2] = [100_000, 1_000_000];

const CORE: &str = "snapply-core";

pub fn bench(ctx: &Ctx) -> Result<()> {
    let metadata = output(ctx.cargo().args(["metadata", "--no-deps", "--format-version", "1"]))?;
    let mut with_benches: Vec<String> = json_strings(&metadata, "manifest_path")
        .iter()
        .map(PathBuf::from)
        .filter(|manifest| has_benches(manifest))
        .filter_map(|manifest| package_name(&manifest))
        .collect();
    with_benches.sort();

    if with_benches.is_empty() {
        println!("no workspace crate has benchmarks yet (no benches/ directory or [[bench]] target)");
        return Ok(());
    }
    // The core's benchmarks measure the host profile (growable collections); the others are the
    // crates' own business.
    if with_benches.iter().any(|p| p == CORE) {
        run(ctx.cargo().args(["bench", "-p", CORE, "--features", "std"]).args(ctx.locked()))?;
    } else {
        println!("{CORE} has no benchmarks yet");
    }
    for package in with_benches.iter().filter(|p| *p != CORE) {
        run(ctx.cargo().args(["bench", "-p", package]).args(ctx.locked()))?;
    }

    // Where criterion writes: CRITERION_HOME, else `<target dir>/criterion`.
    let reports = env::var_os("CRITERION_HOME").map(PathBuf::from).unwrap_or_else(|| {
        let target =
            json_strings(&metadata, "target_directory").pop().map_or_else(|| ctx.root.join("target"), PathBuf::from);
        target.join("criterion")
    });
    println!("\ncriterion results: {}", reports.display());
    let html = reports.join("report/index.html");
    if html.is_file() {
        println!("HTML report: {}", html.display());
    }
    Ok(())
}

/// Whether cargo would find a bench target in the package: `benches/` or an explicit `[[bench]]`.
fn has_benches(manifest: &Path) -> bool {
    let dir_has_benches = manifest.parent().is_some_and(|dir| dir.join("benches").is_dir());
    dir_has_benches || fs::read_to_string(manifest).is_ok_and(|toml| toml.contains("[[bench]]"))
}

/// `name` from the `[package]` table of a manifest. A line scan is enough for the manifests this
/// workspace writes, and keeps a TOML parser out of the xtask's build.
fn package_name(manifest: &Path) -> Option<String> {
    let toml = fs::read_to_string(manifest).ok()?;
    let mut in_package = false;
    for line in toml.lines().map(str::trim) {
        if line.starts_with('[') {
            in_package = line == "[package]";
        } else if in_package && let Some(rest) = line.strip_prefix("name") {
            let value = rest.trim_start().strip_prefix('=')?.trim();
            return Some(value.trim_matches('"').to_owned());
        }
    }
    None
}

/// Every string value of `"key":"…"` in cargo's compact JSON. Only `\\` and `\"` escapes are
/// undone, which is all a path can contain.
fn json_strings(json: &str, key: &str) -> Vec<String> {
    let needle = format!("\"{key}\":\"");
    let mut values = Vec::new();
    let mut rest = json;
    while let Some(start) = rest.find(&needle) {
        rest = &rest[start + needle.len()..];
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let mut end = rest.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => {
                    end = i + 1;
                    break;
                }
                '\\' => {
                    if let Some((_, escaped)) = chars.next() {
                        value.push(escaped);
                    }
                }
                _ => value.push(c),
            }
        }
        values.push(value);
        rest = &rest[end..];
    }
    values
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_json_strings_with_escapes() {
        let json = r#"{"packages":[{"name":"a","manifest_path":"/w/a/Cargo.toml"},{"manifest_path":"C:\\w\\b\\Cargo.toml"}],"target_directory":"/w/target"}"#;
        assert_eq!(json_strings(json, "manifest_path"), ["/w/a/Cargo.toml", r"C:\w\b\Cargo.toml"]);
        assert_eq!(json_strings(json, "target_directory"), ["/w/target"]);
        assert!(json_strings(json, "missing").is_empty());
    }

    #[test]
    fn reads_this_crates_name() {
        assert_eq!(package_name(&Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml")).as_deref(), Some("xtask"));
    }
}
