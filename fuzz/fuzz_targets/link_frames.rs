//! Fuzzes the device link's frame receiver (`snapply-link`), which both a member and a device
//! run on whatever arrives on the line.
//!
//! The input is the line: every byte goes through one `Receiver`. Properties checked on every
//! input, beyond "no panic" and no read past the receiver's fixed buffer:
//! - a frame the receiver accepts encodes again, within `MAX_FRAME` bytes, and that encoding
//!   decodes to the same frame (so what a peer accepts is what the other side could have sent);
//! - an `Entry`'s request either decodes (`Request::decode`, as a device reads it) to a request whose encoding decodes to the same request, or is
//!   refused as a value.

#![no_main]

use libfuzzer_sys::fuzz_target;
use snapply_core::{Request, RequestBuf};
use snapply_link::{MAX_FRAME, Message, Receiver, decode, encode};

fuzz_target!(|line: &[u8]| {
    let mut rx = Receiver::new();
    for byte in line {
        let Some(Ok(frame)) = rx.push(*byte) else { continue };
        let mut out = [0u8; MAX_FRAME];
        let wire = encode(&frame, &mut out).expect("an accepted frame encodes again").to_vec();
        assert!(wire.len() <= MAX_FRAME);
        let mut body = wire[..wire.len() - 1].to_vec();
        assert_eq!(decode(&mut body), Ok(frame), "an accepted frame round-trips");
        if let Message::Entry { request, .. } = frame.message {
            if let Some(r) = Request::decode(request) {
                let bytes = RequestBuf::from(&r).encode();
                assert_eq!(Request::decode(&bytes), Some(r), "a decoded request encodes to the same request");
            }
        }
    }
});
