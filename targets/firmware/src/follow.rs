//! Following a host member over the link (`snapply-link` frames on UART0): the device says
//! `Hello` with its applied index; a snapshot's image is streamed through the pipeline into the
//! flash's inactive area as its chunks arrive (one chunk in RAM at a time) and acknowledged as
//! `Durable` once its commit record is written; each committed entry after it is applied and
//! acknowledged as `Applied`. A damaged frame is answered with `Nak` (the host sends it again),
//! a repeated one with the same answer as before. A `Connect` in the middle of an image drops
//! that transfer (the committed state is untouched) and starts over with `Hello`.

use core::cell::RefCell;

use defmt::{info, warn};
use snapply_core::image::{self, Source};
use snapply_core::memports::PeerTable;
use snapply_core::ports::{ImageStream, Ports};
use snapply_core::{Request, Snapshot, SnapshotMetadata};
use snapply_link::{Frame, MAX_PAYLOAD, Message, Receiver, Refusal, Seen, Sequence, encode};

use crate::shared::{Device, digests};
use crate::storage::{self, Chip, DeviceStore};
use crate::uart::Uart;
use crate::{DeviceNode, Failure, PhaseLog, phases};

/// A frame from the host, its payload copied out of the receiver.
#[derive(Clone, Copy)]
enum Got {
    Connect,
    Snapshot {
        index: u64,
        term: u64,
        len: u32,
    },
    Chunk {
        offset: u32,
        len: usize,
    },
    Entry {
        index: u64,
        term: u64,
        len: usize,
    },
    /// A message only a device sends.
    Other,
}

/// The UART, the frame receiver and the last sequence number taken.
struct Link {
    uart: Uart,
    rx: Receiver,
    seq: Sequence,
    /// Frames refused as damaged.
    bad: u32,
}

impl Link {
    fn send(&mut self, message: Message<'_>) {
        let mut out = [0u8; 48];
        // A frame without payload always fits 48 bytes.
        if let Ok(bytes) = encode(&Frame { seq: 0, message }, &mut out) {
            self.uart.write(bytes);
        }
    }

    /// The next good frame: damaged ones are answered with `Nak`; the payload goes to
    /// `payload`.
    fn recv(&mut self, payload: &mut [u8; MAX_PAYLOAD]) -> (u16, Seen, Got) {
        loop {
            let Some(byte) = self.uart.read() else {
                continue;
            };
            let frame = match self.rx.push(byte) {
                None => continue,
                Some(Err(e)) => {
                    self.bad = self.bad.saturating_add(1);
                    warn!("link: refused a frame: {}", e);
                    let seq = self.seq.next();
                    self.send(Message::Nak { seq });
                    continue;
                }
                Some(Ok(frame)) => frame,
            };
            let mut copy = |bytes: &[u8]| {
                let n = bytes.len().min(MAX_PAYLOAD);
                if let (Some(dst), Some(src)) = (payload.get_mut(..n), bytes.get(..n)) {
                    dst.copy_from_slice(src);
                }
                n
            };
            let got = match frame.message {
                Message::Connect => Got::Connect,
                Message::Snapshot { index, term, len } => Got::Snapshot { index, term, len },
                Message::Chunk { offset, bytes } => Got::Chunk { offset, len: copy(bytes) },
                Message::Entry { index, term, request } => Got::Entry { index, term, len: copy(request) },
                _ => Got::Other,
            };
            let seq = frame.seq;
            if matches!(got, Got::Connect) {
                self.seq.reset();
            }
            return (seq, self.seq.see(seq), got);
        }
    }
}

/// Why a streamed image stopped.
#[derive(Debug)]
enum Stop {
    /// The host connected again: the transfer is dropped.
    Connect,
    /// A chunk out of order, or a frame that is no chunk.
    Unexpected,
}

/// The image as it arrives: one chunk at a time in the follower's payload buffer, each chunk
/// acknowledged when the pipeline asks for the next (the last one once the snapshot is
/// durable).
struct LinkSource<'l> {
    link: &'l mut Link,
    chunk: &'l mut [u8; MAX_PAYLOAD],
    len: usize,
    pos: usize,
    /// Image bytes received.
    offset: u32,
    total: u32,
    /// The sequence number of the chunk being read, acknowledged when the next is wanted.
    unacked: Option<u16>,
    stop: Option<Stop>,
}

impl Source for LinkSource<'_> {
    type Error = ();

    fn read(&mut self, buf: &mut [u8]) -> Result<usize, ()> {
        if self.pos == self.len {
            if self.offset >= self.total {
                return Ok(0);
            }
            if let Some(seq) = self.unacked.take() {
                self.link.send(Message::Ack { seq });
            }
            loop {
                let (seq, seen, got) = self.link.recv(self.chunk);
                match (seen, got) {
                    (_, Got::Connect) => {
                        self.stop = Some(Stop::Connect);
                        return Err(());
                    }
                    (Seen::Repeat, _) => self.link.send(Message::Ack { seq }),
                    (Seen::New, Got::Chunk { offset, len }) if offset == self.offset && len > 0 => {
                        self.len = len;
                        self.pos = 0;
                        self.offset = self.offset.saturating_add(len as u32);
                        self.unacked = Some(seq);
                        break;
                    }
                    (Seen::New, _) => {
                        self.stop = Some(Stop::Unexpected);
                        return Err(());
                    }
                }
            }
        }
        let n = buf.len().min(self.len - self.pos);
        let (Some(dst), Some(src)) = (buf.get_mut(..n), self.chunk.get(self.pos..self.pos + n)) else {
            return Err(());
        };
        dst.copy_from_slice(src);
        self.pos += n;
        Ok(n)
    }
}

/// Logs the state's digest, for the host to compare with the member's.
#[inline(never)]
fn log_digest(node: &DeviceNode<'_>) -> Result<(), Failure> {
    let got = digests(node)?;
    info!(
        "link: state index={} records={} records-sha256={:02x}",
        node.progress().applied_index,
        got.record_count,
        got.records
    );
    info!("link: peak stack: {} of {} bytes", crate::stack::high_water(), crate::stack::size());
    Ok(())
}

/// Follows the host: returns only with an error of the device itself (its flash, its
/// digests); what the host sends that fails to apply resets the device.
#[inline(never)]
pub fn follow<'f>(
    node: &mut DeviceNode<'f>,
    store: &mut DeviceStore<'f, '_>,
    peers: &mut PeerTable<Device>,
    metadata: &mut SnapshotMetadata,
    chip: &RefCell<Chip>,
    mut cut: Option<u64>,
) -> Result<(), Failure> {
    let mut link = Link { uart: Uart::take(), rx: Receiver::new(), seq: Sequence::default(), bad: 0 };
    let mut payload = [0u8; MAX_PAYLOAD];
    let hello = |link: &mut Link, node: &DeviceNode<'_>| {
        let p = node.progress();
        info!("link: hello, applied index {}", p.applied_index);
        link.send(Message::Hello { applied_index: p.applied_index, applied_term: p.applied_term });
    };
    // Logged first: the host may stop the emulator once it has the answer.
    log_digest(node)?;
    hello(&mut link, node);
    loop {
        let (seq, seen, got) = link.recv(&mut payload);
        match (seen, got) {
            (_, Got::Connect) => hello(&mut link, node),
            (Seen::Repeat, Got::Entry { index, .. }) if index <= node.progress().applied_index => {
                link.send(Message::Applied { index });
            }
            (Seen::Repeat, _) => link.send(Message::Ack { seq }),
            (Seen::New, Got::Snapshot { index, term, len }) => {
                link.send(Message::Ack { seq });
                info!("link: receiving snapshot index={} term={} image-bytes={}", index, term, len);
                storage::with_flash(chip, |flash| {
                    flash.reset_stats();
                    // The power cut the host asked for counts from the run's first snapshot
                    // on, through the entries after it.
                    if let Some(bytes) = cut.take() {
                        flash.cut_after(Some(bytes));
                    }
                });
                match receive(node, store, peers, metadata, &mut link, &mut payload, len) {
                    Ok((applied, last)) => {
                        if let Some(seq) = last {
                            link.send(Message::Ack { seq });
                        }
                        let stats = storage::with_flash(chip, |flash| flash.stats()).unwrap_or_default();
                        info!(
                            "link: snapshot durable: index={} image-bytes={} programmed-bytes={} erases={}",
                            applied, len, stats.programmed, stats.erases
                        );
                        // Logged first: the host may stop the emulator once it has the answer.
                        log_digest(node)?;
                        link.send(Message::Durable { index: applied });
                    }
                    Err(Received::Stopped(Stop::Connect)) => {
                        warn!("link: the host connected again mid-image: transfer dropped");
                        // The pipeline stopped before its swap: the committed state serves on.
                        hello(&mut link, node);
                    }
                    Err(Received::Stopped(Stop::Unexpected)) => {
                        warn!("link: a frame out of order mid-image: transfer refused");
                        link.send(Message::Refused { reason: Refusal::OutOfOrder });
                    }
                    Err(Received::Failed(e)) => {
                        link.send(Message::Refused { reason: Refusal::Apply });
                        restart(e);
                    }
                }
            }
            (Seen::New, Got::Entry { index, term, len }) => {
                let applied = node.progress().applied_index;
                let request = payload.get(..len).and_then(Request::decode);
                match request {
                    Some(request) if index == applied + 1 => {
                        if let Err(e) = node.apply(index, term, &request) {
                            link.send(Message::Refused { reason: Refusal::Apply });
                            restart(Failure::Store(e));
                        }
                        let stats = storage::with_flash(chip, |flash| flash.stats()).unwrap_or_default();
                        info!(
                            "link: applied entry {} (flash since the snapshot: programmed-bytes={} erases={})",
                            index, stats.programmed, stats.erases
                        );
                        // Logged first: the host may stop the emulator once it has the answer.
                        log_digest(node)?;
                        link.send(Message::Applied { index });
                    }
                    // Applied already (a host that restarted sends from its own idea of the
                    // device's index): applied again it would change nothing, as in the core.
                    Some(_) if index <= applied => link.send(Message::Applied { index }),
                    Some(_) => link.send(Message::Refused { reason: Refusal::OutOfOrder }),
                    None => link.send(Message::Refused { reason: Refusal::Unexpected }),
                }
            }
            (Seen::New, _) => link.send(Message::Refused { reason: Refusal::Unexpected }),
        }
    }
}

/// A snapshot or an entry from the host failed to apply: the device resets and boots on what
/// its flash holds (the state before it), and says `Hello` again.
fn restart(e: Failure) -> ! {
    warn!("link: what the host sent failed to apply ({}): resetting", e);
    cortex_m::peripheral::SCB::sys_reset();
}

/// Why [`receive`] did not complete a restore.
enum Received {
    Stopped(Stop),
    Failed(Failure),
}

/// Streams one image from the link through the pipeline; the applied index and the last
/// chunk's sequence number (acknowledged once the snapshot is durable).
#[inline(never)]
fn receive<'f>(
    node: &mut DeviceNode<'f>,
    store: &mut DeviceStore<'f, '_>,
    peers: &mut PeerTable<Device>,
    metadata: &mut SnapshotMetadata,
    link: &mut Link,
    payload: &mut [u8; MAX_PAYLOAD],
    len: u32,
) -> Result<(u64, Option<u16>), Received> {
    let mut source =
        LinkSource { link, chunk: payload, len: 0, pos: 0, offset: 0, total: len, unacked: None, stop: None };
    // The first chunk holds the image's header frame (the metadata, a few dozen bytes): read
    // it from the chunk, which the pipeline then reads from its start.
    let mut first = [0u8; 1];
    if source.read(&mut first).is_err() {
        return Err(Received::Stopped(source.stop.take().unwrap_or(Stop::Unexpected)));
    }
    source.pos = 0;
    read_header(source.chunk.get(..source.len).unwrap_or(&[]), metadata).map_err(Received::Failed)?;
    let mut stream = ImageStream::new(&mut source);
    let ports = Ports { storage: store, transport: peers, observer: &mut PhaseLog };
    let result = phases::apply(node, ports, Snapshot::streamed(metadata, &mut stream));
    match result {
        Ok(Some(applied)) => Ok((applied, source.unacked)),
        Ok(None) => Err(Received::Failed(Failure::WrongSnapshot { index: metadata.index })),
        Err(e) => match source.stop.take() {
            Some(stop) => Err(Received::Stopped(stop)),
            None => Err(Received::Failed(Failure::Apply(e))),
        },
    }
}

/// Reads the metadata in the image's header frame (in `first`, the first chunk) into `out`.
#[inline(never)]
fn read_header(first: &[u8], out: &mut SnapshotMetadata) -> Result<(), Failure> {
    let mut header = [0u8; crate::HEADER_BUFFER];
    out.clone_from(image::Decoder::new(first, &mut header).map_err(|_| Failure::Header)?.metadata());
    Ok(())
}
