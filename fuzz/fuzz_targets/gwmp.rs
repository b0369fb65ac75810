//! Any datagram through the GWMP parser. Beyond "no panic", every accepted datagram must
//! re-encode and parse back to the same value, and an accepted PUSH_DATA body must be
//! syntactically valid JSON by serde_json's reading too (the PUSH_DATA reader is hand-written).
//! `IgnoredAny` checks syntax only: like RFC 8259, it accepts numbers beyond f64 range, which
//! `serde_json::Value` would refuse.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::gwmp::{Packet, HEADER_WITH_EUI_LEN};

fuzz_target!(|data: &[u8]| {
    let Ok(p) = Packet::parse(data) else { return };
    if let Packet::PushData(_) = p {
        let body = &data[HEADER_WITH_EUI_LEN..];
        let end = body.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
        assert!(
            serde_json::from_slice::<serde::de::IgnoredAny>(&body[..end]).is_ok(),
            "PUSH_DATA reader accepted a body serde_json refuses"
        );
    }
    let bytes = p.to_bytes().expect("a parsed datagram re-encodes");
    let again = Packet::parse(&bytes).expect("a re-encoded datagram parses");
    assert_eq!(again, p);
});
