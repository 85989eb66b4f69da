//! The host's side of the link (feature `host`, std): serves one device over a byte stream
//! (a TCP socket to QEMU's `-serial`, a serial port) from a [`Feed`] of snapshots and committed
//! entries. Stop-and-wait: each frame is sent, then sent again on `Nak` or when no answer comes
//! within the stream's read timeout, up to [`TRIES`] times. Nothing the device sends can make
//! it panic: damaged frames are counted and skipped, and a device that sends more than
//! [`GARBAGE_LIMIT`] damaged frames in a row is dropped with [`HostError::Garbage`].

extern crate std;

use std::io::{self, Read, Write};
use std::string::String;
use std::vec::Vec;

use crate::{Frame, FrameError, MAX_FRAME, MAX_PAYLOAD, Message, Receiver, Refusal};

/// Sends of one frame before the device counts as gone.
pub const TRIES: u32 = 8;
/// Damaged frames in a row after which a device is dropped.
pub const GARBAGE_LIMIT: u32 = 16;

/// A snapshot to send: its index, term and image (format 2).
#[derive(Clone, Debug)]
pub struct Offer {
    /// The snapshot's index.
    pub index: u64,
    /// The snapshot's term.
    pub term: u64,
    /// The image.
    pub image: Vec<u8>,
}

/// A committed entry to send: index, term and its request (`snapply_core::RequestBuf::encode`d).
#[derive(Clone, Debug)]
pub struct Entry {
    /// The entry's index.
    pub index: u64,
    /// The entry's term.
    pub term: u64,
    /// The encoded request.
    pub request: Vec<u8>,
}

/// Where the host's snapshots and committed entries come from (a member's snapshot files and
/// raft log).
pub trait Feed {
    /// The newest snapshot, if any.
    ///
    /// # Errors
    /// The source's error, as text for the log.
    fn snapshot(&mut self) -> Result<Option<Offer>, String>;
    /// The committed entries from index `next` on, in order (empty when there are none yet), or
    /// `None` when the log no longer holds `next` (compacted past it: a snapshot is due), or it
    /// holds an entry the link cannot carry.
    ///
    /// # Errors
    /// The source's error, as text for the log.
    fn entries(&mut self, next: u64) -> Result<Option<Vec<Entry>>, String>;
}

/// What the host reports as a transfer goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// The device said hello: its applied index.
    Hello {
        /// The device's applied index.
        applied_index: u64,
    },
    /// Image bytes acknowledged of a snapshot's total.
    Image {
        /// Bytes acknowledged.
        sent: u64,
        /// Bytes of the image.
        total: u64,
    },
    /// The snapshot is durable on the device.
    Durable {
        /// Its index.
        index: u64,
    },
    /// The device applied an entry.
    Applied {
        /// Its index.
        index: u64,
    },
}

/// Why a device's session ended.
#[derive(Debug)]
#[non_exhaustive]
pub enum HostError {
    /// The stream failed (the device went away).
    Io(io::Error),
    /// No answer to a frame after [`TRIES`] sends.
    NoAnswer {
        /// The frame's sequence number.
        seq: u16,
    },
    /// More than [`GARBAGE_LIMIT`] damaged frames in a row.
    Garbage {
        /// The last one's fault.
        last: FrameError,
    },
    /// The device refused a transfer.
    Refused(Refusal),
    /// The device answered something that makes no sense here.
    Unexpected(String),
    /// The feed failed, or has nothing the device can start from.
    Feed(String),
}

impl core::fmt::Display for HostError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            HostError::Io(e) => write!(f, "the device's stream failed: {e}"),
            HostError::NoAnswer { seq } => write!(f, "the device did not answer frame {seq} after {TRIES} sends"),
            HostError::Garbage { last } => {
                write!(f, "the device sends garbage: {GARBAGE_LIMIT} damaged frames in a row (the last: {last})")
            }
            HostError::Refused(r) => write!(f, "the device refused the transfer: {r:?}"),
            HostError::Unexpected(what) => write!(f, "the device answered out of protocol: {what}"),
            HostError::Feed(e) => write!(f, "the member's snapshots and entries: {e}"),
        }
    }
}

impl std::error::Error for HostError {}

/// What a session did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Snapshots made durable on the device.
    pub snapshots: u64,
    /// Image bytes acknowledged.
    pub image_bytes: u64,
    /// Entries applied by the device.
    pub entries: u64,
    /// Frames sent again (after a `Nak` or no answer).
    pub resent: u64,
    /// Damaged frames received.
    pub bad_frames: u64,
    /// The device's applied index at the end.
    pub applied_index: u64,
}

/// A device's answer, owned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reply {
    Hello { applied_index: u64 },
    Ack { seq: u16 },
    Nak,
    Durable { index: u64 },
    Applied { index: u64 },
    Refused(Refusal),
    Other,
}

/// One device's session on `stream` (with a read timeout set: it is the resend timer).
pub struct Session<S> {
    stream: S,
    /// Bytes read from the stream and not yet pushed into the receiver.
    inbox: [u8; 512],
    inbox_at: usize,
    inbox_len: usize,
    rx: Receiver,
    seq: u16,
    bad_in_a_row: u32,
    report: Report,
}

impl<S: Read + Write> Session<S> {
    /// A session on `stream`.
    pub fn new(stream: S) -> Self {
        Session {
            stream,
            inbox: [0; 512],
            inbox_at: 0,
            inbox_len: 0,
            rx: Receiver::new(),
            seq: 0,
            bad_in_a_row: 0,
            report: Report::default(),
        }
    }

    /// The stream.
    pub fn stream(&self) -> &S {
        &self.stream
    }

    /// What the session did so far.
    pub fn report(&self) -> Report {
        self.report
    }

    /// The next answer, or `None` when the read timed out.
    fn answer(&mut self) -> Result<Option<Reply>, HostError> {
        loop {
            if self.inbox_at == self.inbox_len {
                match self.stream.read(&mut self.inbox) {
                    Ok(0) => return Err(HostError::Io(io::ErrorKind::UnexpectedEof.into())),
                    Ok(n) => (self.inbox_at, self.inbox_len) = (0, n),
                    Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                        return Ok(None);
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(HostError::Io(e)),
                }
            }
            let Some(&b) = self.inbox.get(self.inbox_at) else {
                self.inbox_len = 0;
                self.inbox_at = 0;
                continue;
            };
            self.inbox_at += 1;
            match self.rx.push(b) {
                None => {}
                Some(Err(e)) => {
                    self.report.bad_frames += 1;
                    self.bad_in_a_row += 1;
                    log::warn!("device link: refused a damaged frame from the device: {e}");
                    if self.bad_in_a_row >= GARBAGE_LIMIT {
                        return Err(HostError::Garbage { last: e });
                    }
                }
                Some(Ok(frame)) => {
                    self.bad_in_a_row = 0;
                    return Ok(Some(match frame.message {
                        Message::Hello { applied_index, .. } => Reply::Hello { applied_index },
                        Message::Ack { seq } => Reply::Ack { seq },
                        Message::Nak { .. } => Reply::Nak,
                        Message::Durable { index } => Reply::Durable { index },
                        Message::Applied { index } => Reply::Applied { index },
                        Message::Refused { reason } => Reply::Refused(reason),
                        _ => Reply::Other,
                    }));
                }
            }
        }
    }

    /// Sends `message` as a new frame until `accept` takes an answer (others are stale answers
    /// to frames sent again, and skipped).
    fn exchange<T>(&mut self, message: Message<'_>, accept: impl Fn(Reply, u16) -> Option<T>) -> Result<T, HostError> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let mut out = [0u8; MAX_FRAME];
        let bytes = crate::encode(&Frame { seq, message }, &mut out)
            .map_err(|e| HostError::Feed(std::format!("a frame does not encode: {e}")))?;
        for attempt in 0..TRIES {
            if attempt > 0 {
                self.report.resent += 1;
            }
            self.stream.write_all(bytes).map_err(HostError::Io)?;
            self.stream.flush().map_err(HostError::Io)?;
            loop {
                match self.answer()? {
                    None | Some(Reply::Nak) => break,
                    Some(Reply::Refused(r)) => return Err(HostError::Refused(r)),
                    Some(reply) => {
                        if let Some(t) = accept(reply, seq) {
                            return Ok(t);
                        }
                    }
                }
            }
        }
        Err(HostError::NoAnswer { seq })
    }

    /// Asks the device for its applied index (it drops any transfer in progress).
    ///
    /// # Errors
    /// See [`HostError`].
    pub fn connect(&mut self) -> Result<u64, HostError> {
        let applied = self.exchange(Message::Connect, |r, _| match r {
            Reply::Hello { applied_index } => Some(applied_index),
            _ => None,
        })?;
        self.report.applied_index = applied;
        Ok(applied)
    }

    /// Sends a snapshot; returns once the device says it is durable.
    ///
    /// # Errors
    /// See [`HostError`].
    pub fn send_snapshot(&mut self, offer: &Offer, progress: &mut dyn FnMut(Progress)) -> Result<(), HostError> {
        let total = offer.image.len();
        let len = u32::try_from(total).map_err(|_| HostError::Feed("a snapshot image over 4 GiB".into()))?;
        self.exchange(Message::Snapshot { index: offer.index, term: offer.term, len }, |r, seq| {
            (r == Reply::Ack { seq }).then_some(())
        })?;
        let chunks = offer.image.chunks(MAX_PAYLOAD);
        let last = chunks.len().saturating_sub(1);
        let mut offset = 0usize;
        for (n, bytes) in chunks.enumerate() {
            let message = Message::Chunk { offset: offset as u32, bytes };
            if n == last {
                // The last chunk is acknowledged once the snapshot is durable: its `Durable`.
                let index = offer.index;
                let durable = self.exchange(message, |r, _| match r {
                    Reply::Durable { index: i } => Some(i),
                    _ => None,
                })?;
                if durable != index {
                    return Err(HostError::Unexpected(std::format!("snapshot {durable} durable, {index} was sent")));
                }
            } else {
                self.exchange(message, |r, seq| (r == Reply::Ack { seq }).then_some(()))?;
            }
            offset += bytes.len();
            self.report.image_bytes += bytes.len() as u64;
            progress(Progress::Image { sent: offset as u64, total: total as u64 });
        }
        self.report.snapshots += 1;
        self.report.applied_index = offer.index;
        progress(Progress::Durable { index: offer.index });
        Ok(())
    }

    /// Sends one committed entry; returns once the device applied it.
    ///
    /// # Errors
    /// See [`HostError`].
    pub fn send_entry(&mut self, entry: &Entry, progress: &mut dyn FnMut(Progress)) -> Result<(), HostError> {
        let index = entry.index;
        let message = Message::Entry { index, term: entry.term, request: &entry.request };
        self.exchange(message, |r, _| (r == Reply::Applied { index }).then_some(()))?;
        self.report.entries += 1;
        self.report.applied_index = index;
        progress(Progress::Applied { index });
        Ok(())
    }

    /// Brings the device up to date with `feed`: asks its applied index, sends the entries
    /// after it, or the newest snapshot first when the log no longer holds them.
    ///
    /// # Errors
    /// See [`HostError`].
    pub fn catch_up(&mut self, feed: &mut dyn Feed, progress: &mut dyn FnMut(Progress)) -> Result<Report, HostError> {
        let applied = self.connect()?;
        progress(Progress::Hello { applied_index: applied });
        let mut next = applied + 1;
        let entries = match feed.entries(next).map_err(HostError::Feed)? {
            Some(entries) => entries,
            None => {
                let offer = feed.snapshot().map_err(HostError::Feed)?.ok_or_else(|| {
                    HostError::Feed(std::format!("the log does not hold index {next} and there is no snapshot"))
                })?;
                self.send_snapshot(&offer, progress)?;
                next = offer.index + 1;
                feed.entries(next).map_err(HostError::Feed)?.ok_or_else(|| {
                    HostError::Feed(std::format!("the log does not hold index {next}, right after the newest snapshot"))
                })?
            }
        };
        for entry in &entries {
            self.send_entry(entry, progress)?;
        }
        Ok(self.report)
    }
}
