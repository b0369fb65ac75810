//! Any bytes as a body of the network server's downlink input (UDP datagram or HTTP
//! `POST /downlink`) → `netserver::integration::input::parse_downlink_request`. Beyond "no panic": an
//! accepted request has an FPort in 1..=223 and a payload of at most 242 bytes, and a refusal
//! says what is wrong (a non-empty message).
#![no_main]

use libfuzzer_sys::fuzz_target;
use netserver::integration::input::{parse_downlink_request, MAX_DOWNLINK_PAYLOAD};

fuzz_target!(|data: &[u8]| {
    match parse_downlink_request(data) {
        Ok(r) => {
            assert!((1..=223).contains(&r.f_port));
            assert!(r.payload.len() <= MAX_DOWNLINK_PAYLOAD);
        }
        Err(e) => assert!(!e.is_empty()),
    }
});
