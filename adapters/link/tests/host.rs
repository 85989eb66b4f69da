//! The host's side against a device written here, over a loopback socket: a snapshot and the
//! entries after it arrive whole and in order, damaged frames either way are sent again, a
//! device that says it is behind the log's start gets a snapshot, and a device that sends
//! garbage is dropped.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, clippy::unreachable)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::thread;
use std::time::Duration;

use snapply_core::{Request, RequestBuf};
use snapply_link::host::{Entry, Feed, HostError, Offer, Progress, Session};
use snapply_link::{Frame, MAX_FRAME, Message, Receiver, Seen, Sequence, encode};

/// A log that holds entries `first..=last` and one snapshot at `first - 1`.
struct Log {
    first: u64,
    last: u64,
    image: Vec<u8>,
}

impl Feed for Log {
    fn snapshot(&mut self) -> Result<Option<Offer>, String> {
        Ok(Some(Offer { index: self.first - 1, term: 2, image: self.image.clone() }))
    }
    fn entries(&mut self, next: u64) -> Result<Option<Vec<Entry>>, String> {
        if next < self.first {
            return Ok(None);
        }
        let mut out = Vec::new();
        for index in next..=self.last {
            let key = format!("/k/{index}");
            let request = RequestBuf::Put { key: key.into_bytes(), value: b"v".to_vec(), lease: 0 }.encode();
            out.push(Entry { index, term: 2, request });
        }
        Ok(Some(out))
    }
}

/// What the device here took.
#[derive(Debug, Default)]
struct Took {
    image: Vec<u8>,
    snapshot: Option<u64>,
    applied: Vec<u64>,
}

fn send(stream: &mut TcpStream, message: Message<'_>) {
    let mut out = [0u8; MAX_FRAME];
    stream.write_all(encode(&Frame { seq: 0, message }, &mut out).unwrap()).unwrap();
}

/// A device at `applied`: answers as the firmware does; damages the `damage_in`-th frame it
/// sends (its ack is lost on the wire) and Naks the `nak_at`-th frame it receives.
fn device(mut stream: TcpStream, mut applied: u64, damage_out: usize, nak_at: usize) -> Took {
    let mut took = Took::default();
    let mut rx = Receiver::new();
    let mut seq = Sequence::default();
    let (mut sent, mut received) = (0usize, 0usize);
    let mut byte = [0u8; 1];
    let mut image_len = 0u32;
    let mut snapshot_index = 0;
    let reply = |stream: &mut TcpStream, message: Message<'_>, sent: &mut usize| {
        *sent += 1;
        if *sent == damage_out {
            let mut out = [0u8; MAX_FRAME];
            let mut bytes = encode(&Frame { seq: 0, message }, &mut out).unwrap().to_vec();
            bytes[1] ^= 0x40;
            stream.write_all(&bytes).unwrap();
        } else {
            send(stream, message);
        }
    };
    while stream.read(&mut byte).map(|n| n == 1).unwrap_or(false) {
        let Some(frame) = rx.push(byte[0]) else { continue };
        let frame = frame.unwrap();
        received += 1;
        if received == nak_at {
            reply(&mut stream, Message::Nak { seq: seq.next() }, &mut sent);
            continue;
        }
        if frame.message == Message::Connect {
            seq.reset();
        }
        let seen = seq.see(frame.seq);
        match (seen, frame.message) {
            (_, Message::Connect) => {
                reply(&mut stream, Message::Hello { applied_index: applied, applied_term: 2 }, &mut sent)
            }
            (Seen::Repeat, Message::Entry { index, .. }) => reply(&mut stream, Message::Applied { index }, &mut sent),
            (Seen::Repeat, Message::Chunk { .. }) if took.snapshot == Some(snapshot_index) => {
                reply(&mut stream, Message::Durable { index: snapshot_index }, &mut sent)
            }
            (Seen::Repeat, _) => reply(&mut stream, Message::Ack { seq: frame.seq }, &mut sent),
            (Seen::New, Message::Snapshot { index, len, .. }) => {
                image_len = len;
                snapshot_index = index;
                took.image.clear();
                reply(&mut stream, Message::Ack { seq: frame.seq }, &mut sent);
            }
            (Seen::New, Message::Chunk { offset, bytes }) => {
                assert_eq!(offset as usize, took.image.len(), "chunks arrive in order, once");
                took.image.extend_from_slice(bytes);
                if took.image.len() == image_len as usize {
                    took.snapshot = Some(snapshot_index);
                    applied = snapshot_index;
                    reply(&mut stream, Message::Ack { seq: frame.seq }, &mut sent);
                    reply(&mut stream, Message::Durable { index: snapshot_index }, &mut sent);
                } else {
                    reply(&mut stream, Message::Ack { seq: frame.seq }, &mut sent);
                }
            }
            (Seen::New, Message::Entry { index, request, .. }) => {
                assert_eq!(index, applied + 1, "entries arrive in order, once");
                Request::decode(request).unwrap();
                applied = index;
                took.applied.push(index);
                reply(&mut stream, Message::Applied { index }, &mut sent);
            }
            (Seen::New, other) => panic!("the device here got {other:?}"),
        }
    }
    took
}

fn pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let host = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (device, _) = listener.accept().unwrap();
    host.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    (host, device)
}

fn serve(
    applied: u64,
    damage_out: usize,
    nak_at: usize,
) -> (Result<snapply_link::host::Report, HostError>, Took, Vec<Progress>) {
    let (host, dev) = pair();
    let device = thread::spawn(move || device(dev, applied, damage_out, nak_at));
    let image: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
    let mut log = Log { first: 11, last: 70, image };
    let mut events = Vec::new();
    let mut session = Session::new(host);
    let report = session.catch_up(&mut log, &mut |p| events.push(p));
    drop(session);
    (report, device.join().unwrap(), events)
}

#[test]
fn a_device_behind_the_log_gets_the_snapshot_then_every_entry() {
    let (report, took, events) = serve(0, 0, 0);
    let report = report.unwrap();
    let image: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
    assert_eq!(took.image, image);
    assert_eq!(took.snapshot, Some(10));
    assert_eq!(took.applied, (11..=70).collect::<Vec<_>>());
    assert_eq!((report.snapshots, report.image_bytes, report.entries, report.applied_index), (1, 1000, 60, 70));
    assert_eq!(events.first(), Some(&Progress::Hello { applied_index: 0 }));
    assert!(events.contains(&Progress::Durable { index: 10 }));
    assert_eq!(events.last(), Some(&Progress::Applied { index: 70 }));
}

#[test]
fn a_device_within_the_log_gets_only_the_entries_after_its_index() {
    let (report, took, _) = serve(40, 0, 0);
    assert_eq!(took.snapshot, None);
    assert_eq!(took.applied, (41..=70).collect::<Vec<_>>());
    assert_eq!(report.unwrap().snapshots, 0);
}

#[test]
fn damaged_frames_either_way_are_sent_again_and_nothing_is_taken_twice() {
    // The device's fourth answer is damaged on the wire, and it refuses the seventh frame.
    let (report, took, _) = serve(0, 4, 7);
    let report = report.unwrap();
    assert_eq!(took.applied, (11..=70).collect::<Vec<_>>());
    assert!(report.resent >= 2, "{report:?}");
    assert_eq!(report.bad_frames, 1);
}

#[test]
fn a_device_that_sends_garbage_is_dropped() {
    let (host, mut dev) = pair();
    let garbage = thread::spawn(move || {
        let junk: Vec<u8> = (0..4000u32).map(|i| if i % 7 == 0 { 0 } else { (i * 31 % 255 + 1) as u8 }).collect();
        let _ = dev.write_all(&junk);
        // Keep the socket open until the host hangs up.
        let mut sink = [0u8; 64];
        while dev.read(&mut sink).map(|n| n > 0).unwrap_or(false) {}
    });
    let mut log = Log { first: 1, last: 3, image: vec![1, 2, 3] };
    let mut session = Session::new(host);
    let result = session.catch_up(&mut log, &mut |_| {});
    drop(session);
    garbage.join().unwrap();
    assert!(matches!(result, Err(HostError::Garbage { .. })), "{result:?}");
}

#[test]
fn a_silent_device_is_given_up_on() {
    let (host, dev) = pair();
    let mut log = Log { first: 1, last: 3, image: vec![1, 2, 3] };
    let mut session = Session::new(host);
    let result = session.catch_up(&mut log, &mut |_| {});
    drop(dev);
    assert!(matches!(result, Err(HostError::NoAnswer { .. })), "{result:?}");
}
