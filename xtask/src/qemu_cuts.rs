//! The firmware's flash outlives QEMU (it is a file on the host, reached through semihosting),
//! so killing QEMU is a power cut. This module runs QEMU on a flash file with a command line
//! (`flash=NAME`, `cut=BYTES`), stops it when the firmware reports the cut, and checks the
//! runs that follow on the same file: each boots on the old state or on the new one, never a
//! mix, and then completes the whole scenario.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::cmd::{Ctx, Error, Result};

/// How long one run may take: a run takes about a second; anything longer is a hang.
const TIME_BOUND: Duration = Duration::from_secs(120);

/// Power cuts per `cargo xtask qemu`, each followed by a run on the same flash file.
pub const CUTS: usize = 12;

/// The cut points' seed (`SNAPPLY_QEMU_SEED` overrides it; the points are printed).
const SEED: u64 = 0x5eed_f1a5_0000_0020;

/// The line the firmware logs when the power it was told to cut is gone.
const CUT_LINE: &str = "power cut during";

/// Kills and reaps a child process when dropped, however the task ends.
struct Reaper(Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// When a run ends.
pub enum Stop {
    /// When QEMU exits (the firmware's semihosting exit).
    Exit,
    /// When the firmware logs its power cut: QEMU is killed.
    Cut,
    /// When the flag is set (by whoever watches the other end of the link): QEMU is killed.
    Flag(std::sync::Arc<std::sync::atomic::AtomicBool>),
}

/// One run of QEMU: its decoded log.
pub struct Run {
    /// The decoded defmt lines.
    pub lines: Vec<String>,
}

/// Runs the firmware under QEMU in `dir` (where the flash file is) with the semihosting command
/// line `args` and UART0 connected to the TCP server `serial` if given, its standard output
/// (the defmt frames) piped into `defmt-print`. [`Stop`] says when the run ends: QEMU is
/// killed (SIGKILL) at a power cut or when the flag is set. Prints the decoded lines when
/// `echo`. Fails if QEMU fails, or does not end within [`TIME_BOUND`].
pub fn run_qemu(elf: &Path, dir: &Path, args: &[String], serial: Option<&str>, stop: &Stop, echo: bool) -> Result<Run> {
    let mut semihosting = String::from("enable=on,target=native,arg=snapply-firmware");
    for arg in args {
        semihosting.push_str(",arg=");
        semihosting.push_str(arg);
    }
    let mut qemu = Command::new("qemu-system-arm");
    qemu.args(["-cpu", "cortex-m3", "-machine", "mps2-an385", "-nographic"])
        .args(["-semihosting-config", &semihosting]);
    if let Some(chardev) = serial {
        // `-nographic` would put the monitor on the standard output, among the defmt frames.
        qemu.args(["-monitor", "none", "-serial", chardev]);
    }
    qemu.arg("-kernel").arg(elf).current_dir(dir).stdin(Stdio::null()).stdout(Stdio::piped());
    if echo {
        println!("$ (cd {}; {} | defmt-print -e {})", dir.display(), show(&qemu), elf.display());
    }
    let mut qemu = Reaper(qemu.spawn().map_err(|e| Error::new(format!("could not start qemu-system-arm: {e}")))?);
    let frames = qemu.0.stdout.take().ok_or_else(|| Error::new("qemu-system-arm's output was not piped"))?;
    let mut decoder = Command::new("defmt-print");
    decoder.arg("-e").arg(elf).stdin(Stdio::from(frames)).stdout(Stdio::piped());
    let mut decoder = Reaper(decoder.spawn().map_err(|e| Error::new(format!("could not start defmt-print: {e}")))?);
    let decoded = decoder.0.stdout.take().ok_or_else(|| Error::new("defmt-print's output was not piped"))?;
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(decoded).lines().map_while(std::result::Result::ok) {
            if echo {
                println!("{line}");
            }
            if tx.send(line).is_err() {
                break;
            }
        }
    });

    let started = Instant::now();
    let mut lines = Vec::new();
    let status = loop {
        while let Ok(line) = rx.try_recv() {
            lines.push(line);
        }
        let kill = match stop {
            Stop::Exit => false,
            Stop::Cut => lines.iter().any(|l| l.contains(CUT_LINE)),
            Stop::Flag(flag) => flag.load(std::sync::atomic::Ordering::Acquire),
        };
        if kill {
            // The power cut, or the end of a run that never exits: SIGKILL, nothing of QEMU's
            // shutdown runs.
            let _ = qemu.0.kill();
            let _ = qemu.0.wait();
            // defmt-print decodes what QEMU wrote before it died, then sees the end of its input.
            let _ = decoder.0.wait();
            let _ = reader.join();
            lines.extend(rx.try_iter());
            return Ok(Run { lines });
        }
        match qemu.0.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() > TIME_BOUND => {
                return Err(Error::new(format!(
                    "the firmware did not finish within {} s: it hangs (QEMU was killed)",
                    TIME_BOUND.as_secs()
                )));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(Error::new(format!("could not wait for qemu-system-arm: {e}"))),
        }
    };
    // QEMU closed its end of the pipe: defmt-print ends once it has decoded the rest.
    let decoder_status = decoder.0.wait().map_err(|e| Error::new(format!("could not wait for defmt-print: {e}")))?;
    reader.join().map_err(|_| Error::new("the thread reading defmt-print's output panicked"))?;
    lines.extend(rx.try_iter());
    if !status.success() {
        return Err(Error::new(format!(
            "the firmware failed: qemu-system-arm exited with {status} (semihosting exit with failure, or a lockup); its log:\n{}",
            lines.join("\n")
        )));
    }
    if !decoder_status.success() {
        return Err(Error::new(format!("defmt-print failed ({decoder_status})")));
    }
    if !matches!(stop, Stop::Exit) {
        return Err(Error::new(format!(
            "the firmware exited before the run's end ({args:?}); its log:\n{}",
            lines.join("\n")
        )));
    }
    Ok(Run { lines })
}

fn show(cmd: &Command) -> String {
    let mut line = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        line.push(' ');
        line.push_str(&arg.to_string_lossy());
    }
    line
}

/// The value of `key=` in `line` (up to the next space).
fn field<'l>(line: &'l str, key: &str) -> Option<&'l str> {
    let rest = line.split_once(key)?.1;
    Some(rest.split(' ').next().unwrap_or(rest))
}

/// Bytes the first restore of a run programs and erases (what a cut counts), from its
/// `flash: image-bytes=.. programmed-bytes=.. erases=.. (erase unit .. bytes)` line.
pub fn first_restore_cost(lines: &[String]) -> std::result::Result<u64, String> {
    let line = lines.iter().find(|l| l.contains("flash: image-bytes=")).ok_or("no `flash: image-bytes=` line")?;
    let number = |key: &str| -> std::result::Result<u64, String> {
        field(line, key).and_then(|v| v.parse().ok()).ok_or_else(|| format!("no `{key}` number in `{line}`"))
    };
    Ok(number("programmed-bytes=")? + number("erases=")? * number("(erase unit ")?)
}

/// The state a boot logged (`state (<what>): index=.. records=.. records-sha256=[..]`), without
/// what it calls it: the part two runs' lines must share to be the same state.
fn state_of<'l>(lines: &'l [String], what: &str) -> Option<&'l str> {
    let tag = format!("state ({what}): ");
    lines.iter().find_map(|l| l.split_once(tag.as_str()).map(|(_, s)| s))
}

/// A splitmix64 step: the cut points' generator (the xtask has no dependencies).
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// [`CUTS`] cut points in `0..cost`: the first and the last byte (the commit record is among
/// the last bytes written), and one seeded point in each of the equal strata between.
pub fn cut_points(cost: u64, seed: u64) -> Vec<u64> {
    let mut state = seed;
    let inner = CUTS as u64 - 2;
    let mut points = vec![0];
    for i in 0..inner {
        let lo = cost * i / inner;
        let hi = (cost * (i + 1) / inner).max(lo + 1);
        points.push(lo + splitmix(&mut state) % (hi - lo));
    }
    points.push(cost.saturating_sub(1));
    points
}

/// What the power cuts found.
#[derive(Debug, Default)]
pub struct Cuts {
    /// Cuts after which the next run booted on the old state.
    pub old: usize,
    /// Cuts after which the next run booted on the new state (a persisted snapshot completed,
    /// or the restore committed).
    pub new: usize,
    /// The highest painted stack mark of any run.
    pub peak_stack: u64,
}

/// Cuts the power at [`cut_points`] of the first restore (`cost` bytes programmed and erased),
/// each on a fresh flash file in `dir`, and runs the firmware again on that file: the boot
/// must find the old state (the same records as logged before the cut) or the new one (the
/// firmware checks its digests), and the run must complete the scenario.
pub fn power_cuts(ctx: &Ctx, elf: &Path, dir: &Path, cost: u64) -> Result<Cuts> {
    let seed = std::env::var("SNAPPLY_QEMU_SEED").ok().and_then(|s| s.parse::<u64>().ok()).unwrap_or(SEED);
    let points = cut_points(cost, seed);
    println!(
        "qemu: power cuts at {points:?} of the first restore's {cost} bytes (seed {seed}; SNAPPLY_QEMU_SEED sets it)"
    );
    let mut cuts = Cuts::default();
    for (n, point) in points.iter().enumerate() {
        let name = format!("cut-{n}.bin");
        let file = dir.join(&name);
        if file.exists() {
            std::fs::remove_file(&file)
                .map_err(|e| Error::new(format!("removing {}: {e}", ctx.rel(&file).display())))?;
        }
        let flash = format!("flash={name}");
        let cut = run_qemu(elf, dir, &[flash.clone(), format!("cut={point}")], None, &Stop::Cut, false)?;
        let old = state_of(&cut.lines, "old state").ok_or_else(|| {
            Error::new(format!("cut {n} at byte {point}: no `state (old state)` line before the cut"))
        })?;
        let after = run_qemu(elf, dir, &[flash], None, &Stop::Exit, false)?;
        let fail = |why: String| {
            Error::new(format!("cut {n} at byte {point}: {why}; the run after it:\n{}", after.lines.join("\n")))
        };
        let found =
            state_of(&after.lines, "found on flash").ok_or_else(|| fail("no `state (found on flash)` line".into()))?;
        let on_new = after.lines.iter().any(|l| l.contains("digest check passed (restored before the power cut)"));
        let verdict = if found == old {
            cuts.old += 1;
            "the old state"
        } else if on_new {
            cuts.new += 1;
            "the new state"
        } else {
            return Err(fail(format!("the boot found `{found}`, neither the old state `{old}` nor the new one")));
        };
        if !after.lines.iter().any(|l| l.contains("all snapshots restored and checked after reboot")) {
            return Err(fail("the run did not complete the scenario".into()));
        }
        if let Some(error) = after.lines.iter().find(|l| l.trim_start().starts_with("ERROR")) {
            return Err(fail(format!("the firmware logged an error: `{error}`")));
        }
        let peak = crate::qemu::check_log(&after.lines).map(|s| s.peak_stack).unwrap_or(0);
        cuts.peak_stack = cuts.peak_stack.max(peak);
        println!("qemu: cut {n} at byte {point} of {cost}: killed; the next run booted on {verdict} and completed");
        std::fs::remove_file(&file).map_err(|e| Error::new(format!("removing {}: {e}", ctx.rel(&file).display())))?;
    }
    Ok(cuts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cut_points_cover_the_ends_and_every_stratum() {
        let points = cut_points(10_000, SEED);
        assert_eq!(points.len(), CUTS);
        assert_eq!(points.first(), Some(&0));
        assert_eq!(points.last(), Some(&9_999));
        for (i, p) in points[1..CUTS - 1].iter().enumerate() {
            let i = i as u64;
            assert!((10_000 * i / 10..10_000 * (i + 1) / 10).contains(p), "{p} outside stratum {i}");
        }
        assert_eq!(points, cut_points(10_000, SEED), "the same seed gives the same points");
    }

    #[test]
    fn the_restore_cost_counts_programmed_and_erased_bytes() {
        let lines =
            vec!["INFO  flash: image-bytes=9445 programmed-bytes=9208 erases=4 (erase unit 4096 bytes)".to_owned()];
        assert_eq!(first_restore_cost(&lines), Ok(9_208 + 4 * 4_096));
        assert!(first_restore_cost(&["INFO  boot 1".to_owned()]).is_err());
    }

    #[test]
    fn a_state_line_is_compared_without_its_name() {
        let lines = vec![
            "INFO  state (old state): index=33 records=70 records-sha256=[01, 02]".to_owned(),
            "INFO  state (found on flash): index=33 records=70 records-sha256=[01, 02]".to_owned(),
        ];
        assert_eq!(state_of(&lines, "old state"), state_of(&lines, "found on flash"));
        assert_eq!(state_of(&lines, "missing"), None);
    }
}
