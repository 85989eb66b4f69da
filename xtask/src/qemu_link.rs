//! The device link under QEMU: the firmware (`link` on its command line) follows a member (the
//! `snapply-link` example `member`, a leader's state built in memory with the core, served
//! over loopback TCP to QEMU's UART0). A blank device is sent the snapshot and the entries
//! after it and must reach the member's state digest at the member's last index; then QEMU is
//! killed at seeded points of the transfer (in the image, around the commit record, in the
//! entries) and started again on the same flash file: each boot is on the empty state or the
//! snapshot's (never a mix), and the device then catches up to the member's digest.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use crate::cmd::{Ctx, Error, Result, run};
use crate::qemu_cuts::{Stop, run_qemu};

/// Keys of the member's state: a few hundred, within the reference profile the firmware holds
/// (500 keys; two 48 KiB areas, a record index of 560).
const KEYS: u32 = 400;
/// Entries the member commits after its snapshot.
const ENTRIES: u32 = 60;
/// The erase unit of the firmware's flash (`targets/firmware/src/storage.rs`): what a cut
/// counts for each erase.
const ERASE: u64 = 4096;
/// The link cut points' seed.
const SEED: u64 = 0x11e7_0000_0020;
/// How long the member may take to start listening (it is built before).
const START_BOUND: Duration = Duration::from_secs(60);

/// Kills and reaps the member when dropped.
struct Reaper(Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The member process and what it printed.
struct Member {
    _child: Reaper,
    addr: String,
    lines: Arc<Mutex<Vec<String>>>,
    /// Set when the member prints that a device is up to date; cleared before each run.
    done: Arc<AtomicBool>,
}

impl Member {
    fn lines(&self) -> Vec<String> {
        self.lines.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// The part after `tag` of the first line holding it.
    fn find(&self, tag: &str) -> Option<String> {
        self.lines().iter().find_map(|l| l.split_once(tag).map(|(_, s)| s.to_owned()))
    }
}

/// Builds and starts the member on a free loopback port.
fn start_member(ctx: &Ctx) -> Result<Member> {
    run(ctx
        .cargo()
        .args(["build", "-p", "snapply-link", "--features", "host", "--example", "member"])
        .args(ctx.locked()))?;
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| ctx.root.join("target"), PathBuf::from);
    let bin = target.join("debug").join("examples").join("member");
    let mut child = Command::new(&bin)
        .args(["127.0.0.1:0", &KEYS.to_string(), &ENTRIES.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| Error::new(format!("could not start {}: {e}", bin.display())))?;
    let out = child.stdout.take().ok_or_else(|| Error::new("the member's output was not piped"))?;
    let child = Reaper(child);
    let lines = Arc::new(Mutex::new(Vec::new()));
    let done = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel();
    {
        let (lines, done) = (lines.clone(), done.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(std::result::Result::ok) {
                println!("{line}");
                if let Some(addr) = line.strip_prefix("member: listening on ") {
                    let _ = tx.send(addr.to_owned());
                }
                if line.starts_with("member: device up to date") {
                    done.store(true, Ordering::Release);
                }
                if let Ok(mut l) = lines.lock() {
                    l.push(line);
                }
            }
        });
    }
    let addr =
        rx.recv_timeout(START_BOUND).map_err(|_| Error::new("the member did not print `member: listening on ADDR`"))?;
    Ok(Member { _child: child, addr, lines, done })
}

/// QEMU's character device for UART0: a TCP client of `addr`. Without `nodelay`, Nagle's
/// algorithm holds each small answer of the stop-and-wait exchange back until the host's
/// delayed ACK, tens of milliseconds per frame. `reconnect` makes QEMU connect again a second
/// after the host closed the link.
fn chardev(addr: &str, reconnect: bool) -> String {
    let mut spec = format!("tcp:{addr},nodelay=on");
    if reconnect {
        spec.push_str(",reconnect=1");
    }
    spec
}

/// What the proxy between QEMU and the member does to the first connection's bytes from the
/// member to the device.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// Flips a bit of the byte at this offset: a frame damaged on the wire.
    Corrupt(u64),
    /// Closes both sides when this many bytes have passed: the link dropped.
    Drop(u64),
}

/// A loopback proxy from QEMU to the member that applies `fault` to the first connection;
/// returns its address. Its threads end with the connections (the listener's with the xtask).
fn proxy(member: &str, fault: Fault) -> Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| Error::new(format!("proxy: {e}")))?;
    let addr = listener.local_addr().map_err(|e| Error::new(format!("proxy: {e}")))?.to_string();
    let member = member.to_owned();
    std::thread::spawn(move || {
        let mut fault = Some(fault);
        for device in listener.incoming() {
            let (Ok(device), Ok(host)) = (device, TcpStream::connect(&member)) else { continue };
            let _ = (device.set_nodelay(true), host.set_nodelay(true));
            let (Ok(mut from_device), Ok(mut to_host)) = (device.try_clone(), host.try_clone()) else { continue };
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut from_device, &mut to_host);
                let _ = to_host.shutdown(Shutdown::Both);
            });
            let fault = fault.take();
            std::thread::spawn(move || forward(host, device, fault));
        }
    });
    Ok(addr)
}

/// Copies the member's bytes to the device, applying `fault`.
fn forward(mut host: TcpStream, mut device: TcpStream, fault: Option<Fault>) {
    let mut buf = [0u8; 4096];
    let mut offset = 0u64;
    loop {
        let n = match host.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let Some(chunk) = buf.get_mut(..n) else { break };
        let end = offset + n as u64;
        match fault {
            Some(Fault::Corrupt(at)) if (offset..end).contains(&at) => {
                if let Some(b) = chunk.get_mut((at - offset) as usize) {
                    *b ^= 0x08;
                }
            }
            Some(Fault::Drop(at)) if (offset..end).contains(&at) => {
                let _ = device.write_all(chunk.get(..(at - offset) as usize).unwrap_or_default());
                break;
            }
            _ => {}
        }
        if device.write_all(chunk).is_err() {
            break;
        }
        offset = end;
    }
    let _ = device.shutdown(Shutdown::Both);
    let _ = host.shutdown(Shutdown::Both);
}

/// `index=.. records=.. records-sha256=[..]` of the device's last `link: state` line.
fn device_state(lines: &[String]) -> Option<&str> {
    lines.iter().rev().find_map(|l| l.split_once("link: state ").map(|(_, s)| s))
}

/// The device's first `link: state` line: the state it booted on.
fn boot_state(lines: &[String]) -> Option<&str> {
    lines.iter().find_map(|l| l.split_once("link: state ").map(|(_, s)| s))
}

/// The highest `peak stack: N of M bytes` of a log.
fn peak_stack(lines: &[String]) -> u64 {
    lines.iter().filter_map(|l| number(l, "peak stack: ")).max().unwrap_or(0)
}

/// A number after `key` in `line`.
fn number(line: &str, key: &str) -> Option<u64> {
    line.split_once(key)?.1.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

/// What the link runs measured.
#[derive(Debug, Default)]
pub struct LinkSummary {
    /// Transfers (QEMU runs served by the member).
    pub transfers: usize,
    /// Power cuts.
    pub cuts: usize,
    /// Entries the device applied over all runs.
    pub entries: u64,
    /// The highest painted stack mark the device logged.
    pub peak_stack: u64,
    /// Image bytes per second over the link (the blank device's transfer, as the member timed it).
    pub image_bytes_per_second: u64,
    /// Flash bytes programmed per image byte, in thousandths.
    pub programmed_per_image_milli: u64,
}

/// Runs the firmware on `file` (in `dir`) against the member until the member says the device
/// is up to date, and checks the device's last state digest against the member's.
fn follow_once(elf: &Path, dir: &Path, file: &str, member: &Member, want: &str, peak: &mut u64) -> Result<Vec<String>> {
    follow_via(elf, dir, file, member, &chardev(&member.addr, false), want, peak)
}

/// [`follow_once`] with UART0 on `serial`.
fn follow_via(
    elf: &Path,
    dir: &Path,
    file: &str,
    member: &Member,
    serial: &str,
    want: &str,
    peak: &mut u64,
) -> Result<Vec<String>> {
    member.done.store(false, Ordering::Release);
    let args = [format!("flash={file}"), "link".to_owned()];
    let run = run_qemu(elf, dir, &args, Some(serial), &Stop::Flag(member.done.clone()), false)?;
    *peak = (*peak).max(peak_stack(&run.lines));
    let got = device_state(&run.lines);
    if got != Some(want) {
        return Err(Error::new(format!(
            "the device's state {got:?} is not the member's `{want}`; the device's log:\n{}",
            run.lines.join("\n")
        )));
    }
    Ok(run.lines)
}

/// The whole link test.
pub fn link(ctx: &Ctx, elf: &Path, dir: &Path) -> Result<LinkSummary> {
    let member = start_member(ctx)?;
    let want = member.find("member: state ").ok_or_else(|| Error::new("the member printed no state digest"))?;
    let snapshot =
        member.find("member: snapshot state ").ok_or_else(|| Error::new("the member printed no snapshot digest"))?;
    let snapshot_index = number(&snapshot, "index=").unwrap_or(0);
    let last_index = number(&want, "index=").unwrap_or(0);
    let mut summary = LinkSummary::default();

    // A blank device: the snapshot, then every entry.
    let file = "link.bin";
    let _ = std::fs::remove_file(dir.join(file));
    let lines = follow_once(elf, dir, file, &member, &want, &mut summary.peak_stack)?;
    summary.transfers += 1;
    summary.entries += lines.iter().filter(|l| l.contains("link: applied entry")).count() as u64;
    let durable = lines
        .iter()
        .find(|l| l.contains("link: snapshot durable"))
        .ok_or_else(|| Error::new("the blank device made no snapshot durable"))?;
    let (image, programmed, erases) = (
        number(durable, "image-bytes=").unwrap_or(0),
        number(durable, "programmed-bytes=").unwrap_or(0),
        number(durable, "erases=").unwrap_or(0),
    );
    summary.programmed_per_image_milli = programmed * 1000 / image.max(1);
    if let Some(rate) = member.lines().iter().rev().find_map(|l| number(l, "image-bytes-per-second=")) {
        summary.image_bytes_per_second = rate;
    }
    // What a cut counts: bytes programmed and erased from the snapshot on, through the entries.
    let last = lines.iter().rev().find(|l| l.contains("link: applied entry")).cloned().unwrap_or_default();
    let restore = programmed + erases * ERASE;
    let total =
        number(&last, "programmed-bytes=").unwrap_or(programmed) + number(&last, "erases=").unwrap_or(erases) * ERASE;
    println!(
        "qemu link: a blank device reached the member's state ({want}); image {image} B, programmed {programmed} B, {erases} erases"
    );

    // A device already up to date is sent nothing and stays there.
    let again = follow_once(elf, dir, file, &member, &want, &mut summary.peak_stack)?;
    if again.iter().any(|l| l.contains("link: receiving snapshot") || l.contains("link: applied entry")) {
        return Err(Error::new("a device already up to date was sent a snapshot or entries"));
    }
    summary.transfers += 1;

    // Power cuts at seeded points of the transfer (`crate::qemu_cuts::CUTS` of them: the first
    // and last byte, one in each stratum between), each on a fresh flash file.
    // The restore's points: its first and last byte (the commit record is among the last
    // written) and one in each stratum between; then four in the entries after it.
    let mut points = crate::qemu_cuts::cut_points(restore, SEED);
    let entries = crate::qemu_cuts::cut_points(total.saturating_sub(restore).max(1), SEED ^ 1);
    points.extend(entries.into_iter().skip(1).step_by(3).map(|p| restore + p));
    for (n, point) in points.iter().enumerate() {
        let file = format!("link-cut-{n}.bin");
        let _ = std::fs::remove_file(dir.join(&file));
        let args = [format!("flash={file}"), "link".to_owned(), format!("cut={point}")];
        member.done.store(false, Ordering::Release);
        let cut = run_qemu(elf, dir, &args, Some(&chardev(&member.addr, false)), &Stop::Cut, false)?;
        summary.entries += cut.lines.iter().filter(|l| l.contains("link: applied entry")).count() as u64;
        let after = follow_once(elf, dir, &file, &member, &want, &mut summary.peak_stack)?;
        let booted = boot_state(&after).unwrap_or("");
        let index = number(booted, "index=").unwrap_or(u64::MAX);
        let verdict = if index == 0 {
            "the empty state"
        } else if booted == snapshot {
            "the snapshot's state"
        } else if index > snapshot_index && index <= last_index {
            // Each entry is one flash transaction: a cut in the entries leaves a prefix of them.
            "the snapshot and a prefix of the entries"
        } else {
            return Err(Error::new(format!(
                "cut {n} at byte {point}: the device booted on `{booted}`, neither empty nor the snapshot's `{snapshot}`"
            )));
        };
        summary.entries += after.iter().filter(|l| l.contains("link: applied entry")).count() as u64;
        summary.transfers += 2;
        summary.cuts += 1;
        println!(
            "qemu link: cut {n} at byte {point} of {total}: the next boot was on {verdict} and caught up to the member"
        );
        let _ = std::fs::remove_file(dir.join(&file));
    }
    let _ = std::fs::remove_file(dir.join(file));

    // A frame damaged on the wire, in the image: the device refuses it and it is sent again.
    let file = "link-corrupt.bin";
    let _ = std::fs::remove_file(dir.join(file));
    let via = proxy(&member.addr, Fault::Corrupt(3000))?;
    let lines = follow_via(elf, dir, file, &member, &chardev(&via, false), &want, &mut summary.peak_stack)?;
    if !lines.iter().any(|l| l.contains("link: refused a frame")) {
        return Err(Error::new("a byte flipped on the wire reached the device unnoticed"));
    }
    summary.transfers += 1;
    summary.entries += lines.iter().filter(|l| l.contains("link: applied entry")).count() as u64;
    println!(
        "qemu link: a frame damaged on the wire was refused, sent again, and the device reached the member's state"
    );
    let _ = std::fs::remove_file(dir.join(file));

    // The link dropped mid-image: QEMU connects again, the member sends a fresh transfer.
    let file = "link-drop.bin";
    let _ = std::fs::remove_file(dir.join(file));
    let via = proxy(&member.addr, Fault::Drop(5000))?;
    let lines = follow_via(elf, dir, file, &member, &chardev(&via, true), &want, &mut summary.peak_stack)?;
    if !lines.iter().any(|l| l.contains("transfer dropped")) {
        return Err(Error::new(format!(
            "the device did not drop the transfer the link lost; its log:\n{}",
            lines.join("\n")
        )));
    }
    if lines.iter().any(|l| l.contains("boot 2")) {
        return Err(Error::new("the device reset when the link dropped"));
    }
    summary.transfers += 2;
    summary.entries += lines.iter().filter(|l| l.contains("link: applied entry")).count() as u64;
    println!(
        "qemu link: the link dropped mid-image; the device kept its state and took a fresh transfer to the member's state"
    );
    let _ = std::fs::remove_file(dir.join(file));
    Ok(summary)
}
