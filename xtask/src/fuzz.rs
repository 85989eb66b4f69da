//! Running the cargo-fuzz targets in `fuzz/` for a fixed time each (`cargo xtask fuzz`, and the
//! smoke step of `cargo xtask ci`).

use crate::ci::Outcome;
use crate::cmd::{Ctx, Error, Result, output, probe, run};

/// Whether a missing prerequisite (nightly, `fuzz/`) fails the run or skips it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// `cargo xtask ci`: fuzzing is a bonus where a nightly toolchain is available.
    Optional,
    /// `cargo xtask fuzz`: fuzzing is what was asked for.
    Required,
}

pub fn run_targets(ctx: &Ctx, seconds: u64, requested: &[String], need: Need) -> Result<Outcome> {
    let unavailable = |why: &str| match need {
        Need::Optional => Ok(Outcome::Skipped(why.to_owned())),
        Need::Required => Err(Error::new(why)),
    };
    if !ctx.root.join("fuzz/Cargo.toml").is_file() {
        return unavailable("fuzz/Cargo.toml does not exist, so there are no fuzz targets yet");
    }
    if !probe(ctx.nightly_cargo().arg("--version")) {
        return unavailable(
            "no nightly toolchain (`cargo +nightly --version` failed); cargo-fuzz needs one: \
             `rustup toolchain install nightly`",
        );
    }
    ensure_cargo_fuzz(ctx)?;

    let list = output(ctx.nightly_cargo().args(["fuzz", "list"]))?;
    let available: Vec<&str> = list.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    let targets: Vec<&str> = if requested.is_empty() {
        available.clone()
    } else {
        if let Some(unknown) = requested.iter().find(|t| !available.contains(&t.as_str())) {
            return Err(Error::new(format!(
                "no fuzz target `{unknown}`; `cargo +nightly fuzz list` lists: {}",
                available.join(", ")
            )));
        }
        requested.iter().map(String::as_str).collect()
    };
    if targets.is_empty() {
        return unavailable("`cargo +nightly fuzz list` lists no fuzz targets");
    }

    println!("fuzzing {} target(s) for {seconds}s each: {}", targets.len(), targets.join(", "));
    let max_total_time = format!("-max_total_time={seconds}");
    for target in targets {
        run(ctx.nightly_cargo().args(["fuzz", "run", target, "--", &max_total_time]))?;
    }
    Ok(Outcome::Done)
}

fn ensure_cargo_fuzz(ctx: &Ctx) -> Result<()> {
    if !probe(ctx.nightly_cargo().args(["fuzz", "--version"])) {
        println!("cargo-fuzz is not installed; installing it");
        run(ctx.cargo().args(["install", "cargo-fuzz", "--locked"]))?;
    }
    let version = output(ctx.nightly_cargo().args(["fuzz", "--version"]))?;
    println!("{}", version.trim());
    Ok(())
}
