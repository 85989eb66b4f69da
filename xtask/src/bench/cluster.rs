//! `cargo xtask bench --cluster`: a 3-member etcd cluster and a 3-member `snapply serve` cluster
//! loaded by the same `etcd-client` code, side by side.
//!
//! The measuring is done by snapply-cli's `bench_cluster` example (it needs tokio and the
//! etcd-client crate, which this crate does not build): this builds it and the `snapply` binary
//! in release, runs it with Debian's etcd 3.4 (`/usr/bin/etcd` or `$SNAPPLY_ETCD`), and writes
//! its table with the machine and the command to `<target dir>/bench-cluster/report.md`.

use std::fs;
use std::path::PathBuf;
use std::process::Command;

use crate::cmd::{Ctx, Error, Result, output, run};

/// The sizes measured unless `--keys` says otherwise.
pub const CLUSTER_KEYS: [u64; 1] = [100_000];

pub fn bench_cluster(ctx: &Ctx, keys: &[u64], snapply_only: bool) -> Result<()> {
    let etcd = super::etcd::binary();
    if !snapply_only && !etcd.is_file() {
        return Err(Error::new(format!("no etcd at {}", etcd.display()))
            .hint("`cargo xtask ci` installs Debian's etcd-server, or set SNAPPLY_ETCD"));
    }
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| ctx.root.join("target"), PathBuf::from);
    let work = target.join("bench-cluster");
    fs::create_dir_all(&work).map_err(|e| Error::new(format!("creating {}: {e}", work.display())))?;
    run(ctx
        .cargo()
        .args(["build", "--release", "-p", "snapply-cli", "--bin", "snapply", "--example", "bench_cluster"])
        .args(ctx.locked()))?;

    let list: Vec<String> = keys.iter().map(u64::to_string).collect();
    let list = list.join(",");
    let machine = machine();
    let mut driver = ctx.command(target.join("release/examples/bench_cluster"));
    driver
        .arg("--etcd")
        .arg(&etcd)
        .arg("--snapply")
        .arg(target.join("release/snapply"))
        .arg("--dir")
        .arg(&work)
        .args(["--keys", &list]);
    if snapply_only {
        driver.args(["--sides", "snapply"]);
    }
    let table = output(&mut driver)?;
    let only = if snapply_only { " --snapply-only" } else { "" };
    let report = format!("Command: `cargo xtask bench --cluster --keys {list}{only}`\n\nMachine: {machine}\n\n{table}");
    println!("\n{report}");
    let path = work.join("report.md");
    fs::write(&path, &report).map_err(|e| Error::new(format!("writing {}: {e}", path.display())))?;
    println!("written to {}", ctx.rel(&path).display());
    Ok(())
}

/// CPUs, model, memory and the load when the run started.
fn machine() -> String {
    let text = |cmd: &mut Command| cmd.output().ok().and_then(|o| String::from_utf8(o.stdout).ok()).unwrap_or_default();
    let cpus = text(&mut Command::new("nproc"));
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo.lines().find_map(|l| l.strip_prefix("model name")?.split_once(':')).map_or("", |(_, m)| m);
    let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory = meminfo.lines().find_map(|l| l.strip_prefix("MemTotal:")).unwrap_or_default();
    let uptime = text(&mut Command::new("uptime"));
    format!(
        "{} CPUs ({}), {} of memory; `uptime` at the start: {}",
        cpus.trim(),
        model.trim(),
        memory.trim(),
        uptime.trim()
    )
}
