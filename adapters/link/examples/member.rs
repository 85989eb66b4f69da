//! A member that serves devices over the link, in one process: it builds a leader's state in
//! memory with the core (`KEYS` keys, leases, members), takes a snapshot (image format 2),
//! commits `ENTRIES` more entries after it (puts, overwrites, deletes, a lease granted and
//! revoked), compacts its log up to the snapshot, and serves every device that connects:
//! the entries after its applied index, or the snapshot first when it is behind the log.
//!
//! ```sh
//! cargo run -p snapply-link --features host --example member -- 127.0.0.1:7070 [KEYS] [ENTRIES]
//! ```
//!
//! then point QEMU's first serial port at it (`-serial tcp:127.0.0.1:7070`) with the firmware's
//! `link` argument. It prints `member: listening on ADDR`, a line per device session with what
//! it sent, and the digest of its state (`member: state index=.. records=.. records-sha256=..`,
//! the digest the firmware logs, `targets/firmware/src/shared.rs`) to compare with the device's.
//! `cargo xtask qemu` runs it.

#[path = "../../../targets/firmware/src/shared.rs"]
#[allow(dead_code)]
mod shared;

use std::error::Error;
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use snapply_core::backend::Backend as _;
use snapply_core::image;
use snapply_core::mem::VecBackend;
use snapply_core::store::{NewMember, V2Deprecation};
use snapply_core::{Config, Node, Request};
use snapply_link::host::{Entry, Feed, Offer, Progress, Session};

use shared::{Device, digests};

/// The resend timer: how long the host waits for an answer before sending a frame again (a
/// restore's last chunk waits for the commit record, a few hundred milliseconds in QEMU).
const ANSWER_TIMEOUT: Duration = Duration::from_millis(1500);

struct Member {
    snapshot: Offer,
    entries: Vec<Entry>,
}

impl Feed for Member {
    fn snapshot(&mut self) -> Result<Option<Offer>, String> {
        Ok(Some(self.snapshot.clone()))
    }
    fn entries(&mut self, next: u64) -> Result<Option<Vec<Entry>>, String> {
        // The log is compacted up to the snapshot.
        if next <= self.snapshot.index {
            return Ok(None);
        }
        Ok(Some(self.entries.iter().filter(|e| e.index >= next).cloned().collect()))
    }
}

fn key(i: u32) -> Vec<u8> {
    let mut k = format!("/device/cfg/{i:05}/").into_bytes();
    k.resize(16 + (i % 17) as usize, b'k');
    k
}

/// The leader's state, its snapshot, and the entries committed after it (prints the digest of
/// the snapshot's state); the state's digest line at the last entry.
fn build(keys: u32, entries: u32) -> Result<(Member, String), Box<dyn Error>> {
    let config = Config { id: 1, min_lease_ttl: 5, v2_deprecation: V2Deprecation::WriteOnly };
    let mut leader = Node::<VecBackend, Device>::new(config, VecBackend::default());
    let term = 2u64;
    let mut index = 0u64;
    for id in 1..=3u64 {
        let name = format!("node-{id}").into_bytes();
        let peer = format!("http://10.0.0.{id}:2380").into_bytes();
        let peers = [peer.as_slice()];
        let member = NewMember { id, name: &name, peer_urls: &peers, client_urls: &[], is_learner: false };
        index += 1;
        leader.apply(index, term, &Request::MemberAdd(member))?;
    }
    for lease in 1..=4i64 {
        index += 1;
        leader.apply(index, term, &Request::LeaseGrant { id: lease * 100, ttl: 60 })?;
    }
    for i in 0..keys {
        let lease = if i < 8 { i64::from(i % 4 + 1) * 100 } else { 0 };
        index += 1;
        leader.apply(index, term, &Request::Put { key: &key(i), value: format!("v{i}").as_bytes(), lease })?;
    }
    let metadata = leader.snapshot_metadata()?;
    let mut v2 = Vec::new();
    leader.v2_snapshot_data(&mut v2)?;
    let mut image = Vec::new();
    image::encode(&metadata, &leader.backend().read()?, &v2, &mut image)?;
    let snapshot = Offer { index: metadata.index, term: metadata.term, image };
    let d = digests(&leader)?;
    println!(
        "member: snapshot state index={} records={} records-sha256={:02x?}",
        leader.progress().applied_index,
        d.record_count,
        d.records
    );

    // The entries after the snapshot: new keys, overwrites, deletes, a lease and its keys.
    let mut log = Vec::new();
    for n in 0..entries {
        let i = keys + n;
        let (k, v) = (key(i), format!("after-{n}").into_bytes());
        let old = key(n * 7 % keys.max(1));
        let request = match n % 10 {
            3 => Request::Put { key: &old, value: &v, lease: 0 },
            5 => Request::DeleteRange { key: &old, range_end: b"" },
            7 if n == 7 => Request::LeaseGrant { id: 900, ttl: 120 },
            8 if n == 8 => Request::Put { key: &k, value: &v, lease: 900 },
            9 if n == 19 => Request::LeaseRevoke { id: 900 },
            _ => Request::Put { key: &k, value: &v, lease: 0 },
        };
        index += 1;
        leader.apply(index, term, &request)?;
        let encoded = snapply_core::RequestBuf::from(&request).encode();
        if encoded.len() > snapply_link::MAX_PAYLOAD || Request::decode(&encoded).is_none() {
            return Err("a request the link does not carry".into());
        }
        log.push(Entry { index, term, request: encoded });
    }
    let d = digests(&leader)?;
    let line = format!(
        "member: state index={} records={} records-sha256={:02x?}",
        leader.progress().applied_index,
        d.record_count,
        d.records
    );
    Ok((Member { snapshot, entries: log }, line))
}

/// The device's address, for its progress bar.
fn session_peer(session: &Session<TcpStream>) -> String {
    session.stream().peer_addr().map_or_else(|_| "device".to_owned(), |a| a.to_string())
}

fn serve(stream: TcpStream, member: &mut Member) -> Result<(), Box<dyn Error>> {
    stream.set_read_timeout(Some(ANSWER_TIMEOUT))?;
    stream.set_nodelay(true)?;
    let started = Instant::now();
    let mut session = Session::new(stream);
    // When the device said hello, and when its snapshot was durable: the image's transfer,
    // from the `Snapshot` frame to the `Durable` answer (the restore's commit included).
    let (mut hello, mut durable) = (started, None);
    // One bar per device, on the standard error (drawn only on a terminal): the image's bytes,
    // then the entries up to the member's last index.
    let peer = session_peer(&session);
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{prefix} {msg:<9} [{bar:30}] {pos}/{len}")
            .map_or_else(|_| ProgressStyle::default_bar(), |s| s.progress_chars("=> ")),
    );
    bar.set_prefix(peer);
    let last = member.entries.last().map_or(0, |e| e.index);
    let mut progress = |p: Progress| match p {
        Progress::Hello { applied_index } => {
            hello = Instant::now();
            println!("member: device says applied index {applied_index}");
            bar.set_message("entries");
            bar.set_length(last.saturating_sub(applied_index));
        }
        Progress::Image { sent, total } => {
            bar.set_message("image");
            bar.set_length(total);
            bar.set_position(sent);
        }
        Progress::Durable { index } => {
            durable = Some(Instant::now());
            println!("member: snapshot {index} durable on the device");
            bar.set_message("entries");
            bar.set_length(last.saturating_sub(index));
            bar.set_position(0);
        }
        Progress::Applied { .. } => bar.inc(1),
    };
    let result = session.catch_up(member, &mut progress);
    bar.finish_and_clear();
    let r = session.report();
    let end = Instant::now();
    let image_secs = durable.map_or(0.0, |d| d.duration_since(hello).as_secs_f64());
    let entry_secs = end.duration_since(durable.unwrap_or(hello)).as_secs_f64();
    println!(
        "member: session: snapshots={} image-bytes={} entries={} resent={} bad-frames={} applied-index={} seconds={:.3} image-bytes-per-second={:.0} entries-per-second={:.0}",
        r.snapshots,
        r.image_bytes,
        r.entries,
        r.resent,
        r.bad_frames,
        r.applied_index,
        end.duration_since(started).as_secs_f64(),
        if image_secs > 0.0 { r.image_bytes as f64 / image_secs } else { 0.0 },
        if entry_secs > 0.0 { r.entries as f64 / entry_secs } else { 0.0 },
    );
    result?;
    println!("member: device up to date at index {}", r.applied_index);
    Ok(())
}

fn main() -> Result<(), Box<dyn Error>> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:0".to_owned());
    let keys: u32 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(120);
    let entries: u32 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(60);
    let (mut member, digest) = build(keys, entries)?;
    println!(
        "member: snapshot index={} image-bytes={}; {} entries after it",
        member.snapshot.index,
        member.snapshot.image.len(),
        member.entries.len()
    );
    println!("{digest}");
    let listener = TcpListener::bind(&addr)?;
    println!("member: listening on {}", listener.local_addr()?);
    for stream in listener.incoming() {
        // A device's failure ends its session, never the member.
        match stream.map_err(Box::<dyn Error>::from).and_then(|s| serve(s, &mut member)) {
            Ok(()) => {}
            Err(e) => println!("member: device dropped: {e}"),
        }
    }
    Ok(())
}
