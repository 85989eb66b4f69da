//! `cargo xtask qemu`: builds the firmware (`targets/firmware`, its own workspace) twice, blocking
//! and on embassy-executor with an async flash driver (feature `async`), runs each under QEMU's
//! mps2-an385 with a time bound, decodes its defmt log on the host with `defmt-print`, checks
//! that it went through every phase of both restores and both digest checks, before and after
//! each reset, within the RAM budget, and that both builds logged the same phases and digests.
//! The flash is a file on the host: a second QEMU on it must find the last state, QEMU killed
//! mid-restore must leave the old state or the new one (`crate::qemu_cuts`), and a device
//! follows a member over the link (`crate::qemu_link`). Installs what it needs when missing.

use std::path::{Path, PathBuf};

use crate::cmd::{Ctx, Error, Result, run};

/// The firmware's target (the Cortex-M3 of mps2-an385).
pub const TARGET: &str = "thumbv7m-none-eabi";
/// What the firmware's ELF is called under `target/<TARGET>/release`.
const BIN: &str = "snapply-firmware";
/// RAM for the whole restore (peak stack, `.data`, `.bss`) with the core's reference profile:
/// the target of the flash and firmware issue, and the RAM length in the firmware's `memory.x`
/// (where `flip-link` turns an overflow into a fault; this checks the painted mark as well).
const RAM_BUDGET: u64 = 48 * 1024;

/// The pipeline's phases as the firmware logs them (`phase done: <state>`), in order.
const PHASES: [&str; 13] = [
    "Validated",
    "Persisted",
    "BackendOpened",
    "IndexBound",
    "LeaseRestored",
    "MvccRestored",
    "BackendSwapped",
    "AlarmsRestored",
    "AuthRestored",
    "V2Restored",
    "ClusterRestored",
    "PeersUpdated",
    "Applied",
];

/// The whole task.
pub fn qemu(ctx: &Ctx) -> Result<()> {
    let firmware = ctx.root.join("targets/firmware");
    if !firmware.join("Cargo.toml").is_file() {
        return Err(Error::new(format!(
            "the firmware target does not exist ({} is missing)",
            ctx.rel(&firmware.join("Cargo.toml")).display()
        )));
    }
    ensure_tools(ctx)?;
    // The firmware is not a member of the workspace, so the workspace's fmt and clippy skip it.
    run(ctx.cargo().args(["fmt", "--", "--check"]).current_dir(&firmware))
        .map_err(|e| e.hint("run `cargo fmt` in targets/firmware"))?;
    let mut runs = Vec::new();
    for build in &BUILDS {
        runs.push(build_and_run(ctx, &firmware, build)?);
    }
    compare_builds(&runs).map_err(|e| Error::new(format!("the firmware's builds disagree: {e}")))?;
    println!();
    for (build, run) in BUILDS.iter().zip(&runs) {
        println!(
            "qemu ({}): whole restore {} B of RAM (peak stack {} B of every run + .data and .bss {} B), budget {RAM_BUDGET} B",
            build.name,
            run.peak_stack + run.statics,
            run.peak_stack,
            run.statics
        );
    }
    println!("qemu: both builds went through the same phases in the same order and reached the same digests");
    Ok(())
}

/// A build of the firmware: its name, its cargo features, the line its log opens with.
struct Build {
    name: &'static str,
    features: &'static [&'static str],
    executor_line: &'static str,
}

/// The blocking firmware, and the one on embassy-executor with an async flash driver.
const BUILDS: [Build; 2] = [
    Build { name: "blocking", features: &[], executor_line: "executor: none (blocking flash)" },
    Build { name: "async", features: &["--features", "async"], executor_line: "executor: embassy (async flash)" },
];

/// What a build's run gave.
struct Run {
    /// The peak stack of every run of the build: the scenario, the power cuts, the link.
    peak_stack: u64,
    statics: u64,
    lines: Vec<String>,
}

/// Lints, builds and runs one build, and checks its log and its RAM.
fn build_and_run(ctx: &Ctx, firmware: &Path, build: &Build) -> Result<Run> {
    println!("\nqemu: the {} build", build.name);
    run(ctx
        .cargo()
        .args(["clippy", "--release"])
        .args(build.features)
        .args(ctx.locked())
        .args(["--", "-D", "warnings"])
        .current_dir(firmware))?;
    // The build script makes the snapshot images and the expected digests on the host.
    // The target directory is named, so a `CARGO_TARGET_DIR` in the environment does not move
    // the ELF away from where it is read; each build has its own, so neither overwrites the
    // other's ELF.
    let target_dir =
        if build.features.is_empty() { firmware.join("target") } else { firmware.join("target").join(build.name) };
    run(ctx
        .cargo()
        .args(["build", "--release"])
        .args(build.features)
        .args(ctx.locked())
        .arg("--target-dir")
        .arg(&target_dir)
        .current_dir(firmware))?;
    let elf = target_dir.join(TARGET).join("release").join(BIN);
    let statics = print_sizes(&elf)?;
    // The flash files (`crate::qemu_cuts`) live next to the ELF; the scenario starts blank.
    let flash_dir = target_dir.join("qemu-flash");
    let flash = flash_dir.join("scenario.bin");
    let _ = std::fs::remove_file(&flash);
    std::fs::create_dir_all(&flash_dir)
        .map_err(|e| Error::new(format!("creating {}: {e}", ctx.rel(&flash_dir).display())))?;
    let flash_arg = ["flash=scenario.bin".to_owned()];
    let lines =
        crate::qemu_cuts::run_qemu(&elf, &flash_dir, &flash_arg, None, &crate::qemu_cuts::Stop::Exit, true)?.lines;
    let summary = check_log(&lines)
        .map_err(|e| Error::new(format!("the {} firmware's log is not what it should be: {e}", build.name)))?;
    if !lines.iter().any(|l| l.contains(build.executor_line)) {
        return Err(Error::new(format!("the {} firmware's log lacks `{}`", build.name, build.executor_line)));
    }
    // QEMU has exited: a new QEMU on the same file boots from what the file holds.
    let again =
        crate::qemu_cuts::run_qemu(&elf, &flash_dir, &flash_arg, None, &crate::qemu_cuts::Stop::Exit, false)?.lines;
    if again.iter().any(|l| l.contains("applying snapshot"))
        || !again.iter().any(|l| l.contains("all snapshots restored and checked after reboot"))
    {
        return Err(Error::new(format!(
            "a second QEMU on the same flash file did not find the {} firmware's last state:\n{}",
            build.name,
            again.join("\n")
        )));
    }
    println!("qemu ({}): a second QEMU on the same flash file re-opened the last state and checked it", build.name);
    let cost = crate::qemu_cuts::first_restore_cost(&lines).map_err(Error::new)?;
    let cuts = crate::qemu_cuts::power_cuts(ctx, &elf, &flash_dir, cost)?;
    println!(
        "qemu ({}): {} power cuts (QEMU killed mid-restore): {} runs after them booted on the old state, {} on the new, all completed",
        build.name,
        cuts.old + cuts.new,
        cuts.old,
        cuts.new
    );
    println!(
        "\nqemu ({}): {} restores with every phase in order; digest checks: {} after a restore, {} after entries on top, {} after a reset",
        build.name, summary.restores, summary.checks_before, summary.checks_written, summary.checks_after
    );
    let link = crate::qemu_link::link(ctx, &elf, &flash_dir)?;
    println!(
        "qemu ({}): link: transfers={} cuts={} entries-applied={} peak-ram={} B (stack {} B + statics {statics} B) image-bytes-per-second={} programmed-per-image-byte={}.{:03}",
        build.name,
        link.transfers,
        link.cuts,
        link.entries,
        link.peak_stack + statics,
        link.peak_stack,
        link.image_bytes_per_second,
        link.programmed_per_image_milli / 1000,
        link.programmed_per_image_milli % 1000
    );
    let peak_stack = summary.peak_stack.max(cuts.peak_stack).max(link.peak_stack);
    let whole = peak_stack + statics;
    println!(
        "qemu ({}): whole restore {whole} B of RAM (peak stack {peak_stack} B of every run + .data and .bss {statics} B), budget {RAM_BUDGET} B",
        build.name
    );
    if whole > RAM_BUDGET {
        return Err(Error::new(format!(
            "the {} firmware's whole restore takes {whole} B of RAM, over the {RAM_BUDGET} B budget",
            build.name
        )));
    }
    Ok(Run { peak_stack, statics, lines })
}

/// The lines two builds must share: every phase and every digest check, in order.
fn milestones(lines: &[String]) -> Vec<&str> {
    lines
        .iter()
        .filter_map(|l| {
            let at = l.find("phase done: ").or_else(|| l.find("digest check passed"))?;
            l.get(at..)
        })
        .collect()
}

/// Checks that the builds went through the same phases in the same order and reached the same
/// digests (the digest lines carry the index, the record count and the records' SHA-256).
fn compare_builds(runs: &[Run]) -> std::result::Result<(), String> {
    let Some((first, rest)) = runs.split_first() else { return Ok(()) };
    let want = milestones(&first.lines);
    for (n, run) in rest.iter().enumerate() {
        let got = milestones(&run.lines);
        if got != want {
            let at = want.iter().zip(&got).position(|(a, b)| a != b).unwrap_or(want.len().min(got.len()));
            return Err(format!(
                "build {} differs from build 0 at milestone {at}: `{}` against `{}`",
                n + 1,
                got.get(at).copied().unwrap_or("(none)"),
                want.get(at).copied().unwrap_or("(none)")
            ));
        }
    }
    Ok(())
}

/// Whether `tool` is an executable file in a directory of `PATH` (some tools, flip-link among
/// them, have no `--version` to probe with).
fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(tool).is_file()))
}

/// Installs what is missing: the rustup target, `qemu-system-arm` (Debian's `qemu-system-arm`),
/// `flip-link` (the firmware's linker) and `defmt-print`.
pub fn ensure_tools(ctx: &Ctx) -> Result<()> {
    let installed = crate::cmd::output(ctx.command("rustup").args(["target", "list", "--installed"]))
        .map_err(|e| e.hint("the firmware needs rustup (https://rustup.rs) to install its target"))?;
    if !installed.lines().any(|line| line.trim() == TARGET) {
        run(ctx.command("rustup").args(["target", "add", TARGET]))?;
    }
    if on_path("qemu-system-arm") {
        println!("qemu-system-arm is installed");
    } else {
        crate::ci::apt_install(&["qemu-system-arm"], "the firmware runs under QEMU: apt-get install qemu-system-arm")?;
    }
    for tool in ["flip-link", "defmt-print"] {
        if on_path(tool) {
            println!("{tool} is installed");
        } else {
            run(ctx.cargo().args(["install", "--locked", tool]))
                .map_err(|e| e.hint(&format!("install it with `cargo install --locked {tool}`")))?;
        }
    }
    Ok(())
}

/// What a good log contained.
#[derive(Debug, PartialEq, Eq)]
pub struct Summary {
    /// Restores that went through every phase to `applied snapshot`.
    pub restores: usize,
    /// Digest checks passed right after a restore.
    pub checks_before: usize,
    /// Digest checks passed after the entries applied on top of a restore.
    pub checks_written: usize,
    /// Digest checks passed after a reset and re-open.
    pub checks_after: usize,
    /// The highest painted stack mark of any boot (`peak stack: N of M bytes`).
    pub peak_stack: u64,
}

/// The lines the firmware must print, in this order (other lines may come between them): two
/// restores, each through every phase to `applied snapshot` and a digest check, then a digest
/// check after a few ordinary entries, a reset and a digest check of the re-opened node, then
/// the closing line.
fn expected_sequence() -> Vec<String> {
    let mut restore = vec!["applying snapshot".to_owned()];
    restore.extend(PHASES.iter().map(|p| format!("phase done: {p}")));
    restore.push("applied snapshot".to_owned());
    restore.push("digest check passed (before reboot)".to_owned());
    restore.push("digest check passed (after writes)".to_owned());
    restore.push("rebooting".to_owned());
    restore.push("digest check passed (after reboot)".to_owned());
    let mut all = restore.clone();
    all.extend(restore);
    all.push("all snapshots restored and checked after reboot".to_owned());
    all
}

/// Checks the decoded log: no error line, and [`expected_sequence`] in order.
pub fn check_log(lines: &[String]) -> std::result::Result<Summary, String> {
    if let Some(error) = lines.iter().find(|l| l.trim_start().starts_with("ERROR")) {
        return Err(format!("the firmware logged an error: `{error}`"));
    }
    let mut rest = lines.iter();
    for want in expected_sequence() {
        if !rest.any(|line| line.contains(&want)) {
            return Err(format!("`{want}` is missing (or out of order)"));
        }
    }
    let count = |needle: &str| lines.iter().filter(|l| l.contains(needle)).count();
    let peaks = lines.iter().filter_map(|l| {
        let rest = l.split_once("peak stack: ")?.1;
        rest.split_once(" of ")?.0.parse::<u64>().ok()
    });
    let Some(peak_stack) = peaks.max() else {
        return Err("no `peak stack: N of M bytes` line".to_owned());
    };
    Ok(Summary {
        peak_stack,
        restores: count("applied snapshot:"),
        checks_before: count("digest check passed (before reboot)"),
        checks_written: count("digest check passed (after writes)"),
        checks_after: count("digest check passed (after reboot)"),
    })
}

/// Prints the sizes of the ELF's allocated sections, read from its section headers, and
/// returns the RAM its statics take (`.data`, `.bss`, `.uninit`).
fn print_sizes(elf: &Path) -> Result<u64> {
    let bytes = std::fs::read(elf).map_err(|e| Error::new(format!("reading {}: {e}", elf.display())))?;
    let sections = elf32_sections(&bytes).map_err(|e| Error::new(format!("reading {}: {e}", elf.display())))?;
    let size = |name: &str| sections.iter().filter(|(n, _)| n == name).map(|(_, s)| *s).sum::<u64>();
    println!(
        "firmware sizes: .text {} B, .rodata {} B, .data {} B, .bss {} B, .uninit {} B ({})",
        size(".text"),
        size(".rodata"),
        size(".data"),
        size(".bss"),
        size(".uninit"),
        PathBuf::from(elf).display()
    );
    Ok(size(".data") + size(".bss") + size(".uninit"))
}

/// The names and sizes of the sections of a little-endian 32-bit ELF file. Hand-written: the
/// xtask has no dependencies (see its Cargo.toml), and these are a few fixed offsets.
pub fn elf32_sections(elf: &[u8]) -> std::result::Result<Vec<(String, u64)>, String> {
    let u16_at = |at: usize| -> std::result::Result<usize, String> {
        elf.get(at..at + 2)
            .map(|b| usize::from(u16::from_le_bytes([b[0], b[1]])))
            .ok_or_else(|| format!("truncated at offset {at}"))
    };
    let u32_at = |at: usize| -> std::result::Result<usize, String> {
        elf.get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
            .ok_or_else(|| format!("truncated at offset {at}"))
    };
    if elf.get(..6) != Some(b"\x7fELF\x01\x01") {
        return Err("not a little-endian 32-bit ELF file".into());
    }
    let (shoff, shentsize, shnum, shstrndx) = (u32_at(0x20)?, u16_at(0x2e)?, u16_at(0x30)?, u16_at(0x32)?);
    let header = |i: usize| shoff + i * shentsize;
    let strtab = u32_at(header(shstrndx) + 16)?;
    let mut sections = Vec::with_capacity(shnum);
    for i in 0..shnum {
        let name_at = strtab + u32_at(header(i))?;
        let name = elf
            .get(name_at..)
            .and_then(|s| s.split(|b| *b == 0).next())
            .ok_or_else(|| format!("section {i}'s name is out of the file"))?;
        sections.push((String::from_utf8_lossy(name).into_owned(), u32_at(header(i) + 20)? as u64));
    }
    Ok(sections)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good_log() -> Vec<String> {
        let mut lines = vec!["INFO  boot 1".to_owned()];
        for _ in 0..2 {
            lines.push("INFO  applying snapshot: current-snapshot-index=0".into());
            for p in PHASES {
                lines.push(format!("INFO  phase done: {p}"));
                lines.push("INFO  restoring something".into());
            }
            lines.push("INFO  applied snapshot: current-snapshot-index=65".into());
            lines.push("INFO  digest check passed (before reboot): index=65".into());
            lines.push("INFO  digest check passed (after writes): index=68".into());
            lines.push("INFO  applied entries up to index 68 after the restore; rebooting".into());
            lines.push("INFO  boot 2".into());
            lines.push("INFO  digest check passed (after reboot): index=65".into());
            lines.push("INFO  peak stack: 46832 of 49128 bytes".into());
        }
        lines.push("INFO  peak stack: 44520 of 49128 bytes".into());
        lines.push("INFO  all snapshots restored and checked after reboot".into());
        lines
    }

    #[test]
    fn a_complete_log_passes_and_is_counted() {
        assert_eq!(
            check_log(&good_log()),
            Ok(Summary { restores: 2, checks_before: 2, checks_written: 2, checks_after: 2, peak_stack: 46_832 })
        );
    }

    #[test]
    fn a_log_without_a_stack_mark_fails() {
        let lines: Vec<String> = good_log().into_iter().filter(|l| !l.contains("peak stack")).collect();
        assert!(check_log(&lines).unwrap_err().contains("peak stack"));
    }

    #[test]
    fn a_missing_phase_fails() {
        let lines: Vec<String> = good_log().into_iter().filter(|l| !l.contains("phase done: AuthRestored")).collect();
        let err = check_log(&lines).unwrap_err();
        assert!(err.contains("phase done: AuthRestored"), "{err}");
    }

    #[test]
    fn phases_out_of_order_fail() {
        let mut lines = good_log();
        let swapped = lines.iter().position(|l| l.contains("phase done: Persisted")).unwrap();
        lines.swap(swapped, swapped - 2);
        assert!(check_log(&lines).is_err());
    }

    #[test]
    fn a_log_cut_after_the_first_reset_fails() {
        let lines = good_log();
        let cut = lines.iter().position(|l| l.contains("boot 2")).unwrap();
        let err = check_log(&lines[..cut]).unwrap_err();
        assert!(err.contains("after reboot"), "{err}");
    }

    fn run_of(lines: Vec<String>) -> Run {
        let summary = check_log(&lines).unwrap();
        Run { peak_stack: summary.peak_stack, statics: 24, lines }
    }

    #[test]
    fn builds_with_the_same_phases_and_digests_agree() {
        let mut other = good_log();
        // Sizes, stack marks and other lines may differ between builds.
        other.insert(1, "INFO  executor: embassy (async flash)".into());
        other.push("INFO  peak stack: 47000 of 49128 bytes".into());
        assert_eq!(compare_builds(&[run_of(good_log()), run_of(other)]), Ok(()));
    }

    #[test]
    fn builds_with_other_digests_disagree() {
        let mut other = good_log();
        let at = other.iter().position(|l| l.contains("digest check passed (after writes)")).unwrap();
        other[at] = "INFO  digest check passed (after writes): index=69".into();
        let err = compare_builds(&[run_of(good_log()), run_of(other)]).unwrap_err();
        assert!(err.contains("index=69"), "{err}");
    }

    #[test]
    fn an_error_line_fails() {
        let mut lines = good_log();
        lines.insert(3, "ERROR firmware failed: Digest".into());
        assert!(check_log(&lines).unwrap_err().contains("firmware failed"));
    }

    #[test]
    fn reads_section_sizes_of_a_minimal_elf() {
        // Header, then a string table and three section headers (null, .text, .shstrtab).
        let names = b"\0.text\0.shstrtab\0";
        let mut elf = vec![0u8; 52];
        elf[..6].copy_from_slice(b"\x7fELF\x01\x01");
        let strtab_at = elf.len();
        elf.extend_from_slice(names);
        let shoff = elf.len();
        let section = |name: u32, offset: u32, size: u32| {
            let mut h = [0u8; 40];
            h[..4].copy_from_slice(&name.to_le_bytes());
            h[16..20].copy_from_slice(&offset.to_le_bytes());
            h[20..24].copy_from_slice(&size.to_le_bytes());
            h
        };
        elf.extend_from_slice(&section(0, 0, 0));
        elf.extend_from_slice(&section(1, 0, 1234));
        elf.extend_from_slice(&section(7, strtab_at as u32, names.len() as u32));
        elf[0x20..0x24].copy_from_slice(&(shoff as u32).to_le_bytes());
        elf[0x2e..0x30].copy_from_slice(&40u16.to_le_bytes());
        elf[0x30..0x32].copy_from_slice(&3u16.to_le_bytes());
        elf[0x32..0x34].copy_from_slice(&2u16.to_le_bytes());
        let sections = elf32_sections(&elf).unwrap();
        assert_eq!(sections[1], (".text".to_owned(), 1234));
        assert_eq!(sections[2].0, ".shstrtab");
        assert!(elf32_sections(&elf[..40]).is_err());
        assert!(elf32_sections(b"not an elf").is_err());
    }
}
