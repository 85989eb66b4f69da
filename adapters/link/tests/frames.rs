//! Frames through encode and decode, damaged on the wire, and garbage on the line.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, clippy::unreachable)]

use proptest::prelude::*;
use snapply_core::Request;
use snapply_link::{
    Frame, FrameError, MAX_FRAME, MAX_PAYLOAD, Message, Receiver, Refusal, Seen, Sequence, decode, encode,
};

fn wire(frame: &Frame<'_>) -> Vec<u8> {
    let mut out = [0u8; MAX_FRAME];
    encode(frame, &mut out).unwrap().to_vec()
}

/// Every frame the receiver completes from `bytes`.
fn receive(rx: &mut Receiver, bytes: &[u8]) -> Vec<Result<(u16, String), FrameError>> {
    let mut got = Vec::new();
    for b in bytes {
        if let Some(r) = rx.push(*b) {
            got.push(r.map(|f| (f.seq, format!("{:?}", f.message))));
        }
    }
    got
}

fn every_message(payload: &[u8]) -> Vec<Message<'_>> {
    vec![
        Message::Hello { applied_index: 7, applied_term: 2 },
        Message::Ack { seq: 9 },
        Message::Nak { seq: 10 },
        Message::Durable { index: 1 << 40 },
        Message::Applied { index: 12 },
        Message::Refused { reason: Refusal::TooLarge },
        Message::Connect,
        Message::Snapshot { index: 300, term: 4, len: 26_802 },
        Message::Chunk { offset: 4096, bytes: payload },
        Message::Entry { index: 301, term: 4, request: payload },
    ]
}

#[test]
fn every_message_comes_back_as_it_was_sent() {
    let payload: Vec<u8> = (0..MAX_PAYLOAD).map(|i| i as u8).collect();
    for (seq, message) in every_message(&payload).into_iter().enumerate() {
        let frame = Frame { seq: seq as u16, message };
        let mut bytes = wire(&frame);
        assert_eq!(bytes.last(), Some(&0), "a frame ends with a zero");
        assert!(!bytes[..bytes.len() - 1].contains(&0), "and has no zero inside");
        let end = bytes.len() - 1;
        assert_eq!(decode(&mut bytes[..end]), Ok(frame));
    }
}

#[test]
fn a_changed_byte_is_refused_and_the_next_frame_still_arrives() {
    let payload = [0x5Au8; MAX_PAYLOAD];
    let first = wire(&Frame { seq: 1, message: Message::Chunk { offset: 0, bytes: &payload } });
    let second = wire(&Frame { seq: 2, message: Message::Ack { seq: 1 } });
    for at in 0..first.len() - 1 {
        let mut damaged = first.clone();
        damaged[at] ^= 0x10;
        damaged.extend_from_slice(&second);
        let mut rx = Receiver::new();
        let got = receive(&mut rx, &damaged);
        let (last, before) = got.split_last().unwrap();
        assert_eq!(last, &Ok((2, "Ack { seq: 1 }".to_owned())), "byte {at}");
        assert!(!before.is_empty() && before.iter().all(Result::is_err), "byte {at}: {before:?}");
    }
}

#[test]
fn a_crc_mismatch_is_named() {
    let mut out = [0u8; MAX_FRAME];
    let bytes = encode(&Frame { seq: 3, message: Message::Applied { index: 5 } }, &mut out).unwrap().to_vec();
    // Decode, change a body byte, and encode the body again with COBS: only the CRC can tell.
    let mut body = vec![0u8; bytes.len()];
    let n = cobs::decode(&bytes[..bytes.len() - 1], &mut body).unwrap();
    body[1] ^= 1;
    let mut again = vec![0u8; cobs::max_encoding_length(n)];
    let m = cobs::encode(&body[..n], &mut again);
    assert!(matches!(decode(&mut again[..m]), Err(FrameError::Crc { .. })));
}

#[test]
fn an_endless_frame_is_dropped_up_to_the_next_zero() {
    let mut rx = Receiver::new();
    let mut line = vec![0x41u8; MAX_FRAME * 3];
    line.push(0);
    line.extend(wire(&Frame { seq: 4, message: Message::Durable { index: 3 } }));
    let got = receive(&mut rx, &line);
    assert_eq!(got, vec![Err(FrameError::TooLong), Ok((4, "Durable { index: 3 }".to_owned()))]);
}

#[test]
fn idle_zeros_and_short_frames_are_not_frames() {
    let mut rx = Receiver::new();
    assert_eq!(receive(&mut rx, &[0, 0, 0]), vec![]);
    assert_eq!(receive(&mut rx, &[1, 0]), vec![Err(FrameError::Short)]);
    assert_eq!(receive(&mut rx, &[9, 0]), vec![Err(FrameError::Cobs)]);
}

#[test]
fn a_repeated_frame_is_a_repeat_and_a_new_one_is_new() {
    let mut seq = Sequence::default();
    assert_eq!(seq.next(), 0);
    assert_eq!(seq.see(0), Seen::New);
    assert_eq!(seq.see(0), Seen::Repeat);
    assert_eq!(seq.next(), 1);
    assert_eq!(seq.see(1), Seen::New);
    assert_eq!(seq.see(u16::MAX), Seen::New);
    assert_eq!(seq.next(), 0, "sequence numbers wrap");
    seq.reset();
    assert_eq!(seq.see(u16::MAX), Seen::New);
}

#[test]
fn every_op_carries_its_request_and_others_have_none() {
    let requests = [
        Request::Put { key: b"/k", value: b"v", lease: 7 },
        Request::DeleteRange { key: b"/a", range_end: b"/b" },
        Request::Compact { revision: 12 },
        Request::LeaseGrant { id: 3, ttl: 60 },
        Request::LeaseRevoke { id: 3 },
    ];
    for request in requests {
        // The host's encoding, carried in an entry's frame, read back as the device reads it.
        let bytes = snapply_core::RequestBuf::from(&request).encode();
        let frame = Frame { seq: 1, message: Message::Entry { index: 9, term: 2, request: &bytes } };
        let mut wire = wire(&frame);
        let end = wire.len() - 1;
        let Ok(Frame { message: Message::Entry { request: got, .. }, .. }) = decode(&mut wire[..end]) else {
            panic!("the entry's frame does not decode")
        };
        assert_eq!(Request::decode(got), Some(request));
    }
}

fn message() -> impl Strategy<Value = (u16, u8, u64, u64, Vec<u8>)> {
    (any::<u16>(), 0u8..10, any::<u64>(), any::<u64>(), proptest::collection::vec(any::<u8>(), 0..=MAX_PAYLOAD))
}

fn build(kind: u8, a: u64, b: u64, payload: &[u8]) -> Message<'_> {
    match kind {
        0 => Message::Hello { applied_index: a, applied_term: b },
        1 => Message::Ack { seq: a as u16 },
        2 => Message::Nak { seq: a as u16 },
        3 => Message::Durable { index: a },
        4 => Message::Applied { index: a },
        5 => Message::Refused { reason: Refusal::Apply },
        6 => Message::Snapshot { index: a, term: b, len: b as u32 },
        7 => Message::Chunk { offset: a as u32, bytes: payload },
        8 => Message::Connect,
        _ => Message::Entry { index: a, term: b, request: payload },
    }
}

proptest! {
    #[test]
    fn garbage_never_panics_and_never_overflows(line in proptest::collection::vec(any::<u8>(), 0..4 * MAX_FRAME)) {
        let mut rx = Receiver::new();
        for b in &line {
            if let Some(Ok(frame)) = rx.push(*b) {
                // Whatever decodes is a frame within the bounds, and encodes again.
                let mut out = [0u8; MAX_FRAME];
                prop_assert!(encode(&frame, &mut out).is_ok());
            }
        }
        let mut copy = line.clone();
        let _ = decode(&mut copy);
    }

    #[test]
    fn any_frame_round_trips((seq, kind, a, b, payload) in message()) {
        let frame = Frame { seq, message: build(kind, a, b, &payload) };
        let mut bytes = wire(&frame);
        prop_assert!(bytes.len() <= MAX_FRAME);
        let mut rx = Receiver::new();
        let mut got = None;
        for byte in bytes.clone() {
            if let Some(r) = rx.push(byte) {
                got = Some(r.map(|f| f == frame));
            }
        }
        prop_assert_eq!(got, Some(Ok(true)));
        let end = bytes.len() - 1;
        prop_assert_eq!(decode(&mut bytes[..end]), Ok(frame));
    }

    #[test]
    fn a_flipped_bit_is_never_taken_for_a_frame((seq, kind, a, b, payload) in message(), at in any::<prop::sample::Index>(), bit in 0u8..8) {
        let frame = Frame { seq, message: build(kind, a, b, &payload) };
        let mut bytes = wire(&frame);
        let i = at.index(bytes.len() - 1);
        bytes[i] ^= 1 << bit;
        let mut rx = Receiver::new();
        for byte in bytes {
            if let Some(r) = rx.push(byte) {
                prop_assert!(r.is_err(), "a damaged frame was taken: {:?}", r);
            }
        }
    }
}
