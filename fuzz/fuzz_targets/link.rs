//! Any bytes as a JS↔NS link datagram: the header is peeked (as the join server does before it
//! looks up the sender's key), the tag checked under a fixed link key, and a body that passes is
//! decoded as the TS002 messages the link carries. Beyond "no panic": the peeked header equals
//! the authenticated one.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::keys::LinkKey;
use protocol::link;
use protocol::ts002::{JoinAns, JoinReq};

fuzz_target!(|data: &[u8]| {
    let Ok(peeked) = link::peek_header(data) else {
        return;
    };
    let _ = link::check_fresh(&peeked, 1_700_000_000_000, link::DEFAULT_WINDOW_MS);
    let key = LinkKey::new([0x11; 16]);
    if let Ok((header, body)) = link::open(&key, data) {
        assert_eq!(header, peeked);
        let _ = link::decode_body::<JoinReq>(body);
        let _ = link::decode_body::<JoinAns>(body);
    }
});
