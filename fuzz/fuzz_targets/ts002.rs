//! Any bytes as a TS002 JoinReq / JoinAns / RejoinReq, or our SessionInUseReq / Ans (the JS↔NS
//! link payload). Accepted
//! messages must serialise and parse back to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::ts002::{JoinAns, JoinReq, Message, RejoinReq, SessionInUseAns, SessionInUseReq};

fuzz_target!(|data: &[u8]| {
    let _ = JoinReq::parse(data);
    let _ = JoinAns::parse(data);
    let _ = RejoinReq::parse(data);
    if let Ok(m) = SessionInUseReq::parse(data) {
        let json = serde_json::to_vec(&m).expect("a parsed message serialises");
        assert_eq!(SessionInUseReq::parse(&json).expect("and parses back"), m);
    }
    let _ = SessionInUseAns::parse(data);
    if let Ok(m) = Message::parse(data) {
        let json = m.to_json().expect("a parsed message serialises");
        assert_eq!(Message::parse(&json).expect("and parses back"), m);
    }
});
