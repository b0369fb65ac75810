//! Any bytes as a Backend Interfaces (TS002 over HTTPS) request body: the header every request
//! is read for, `HomeNSReq`, `AppSKeyReq`, any answer's header and `Result`, and a
//! `SessionKeyID`. Accepted messages must serialise and parse back to the same value.
#![no_main]

use joinserver::bi::session::SessionKeyId;
use libfuzzer_sys::fuzz_target;
use protocol::ts002::{Ans, AppSKeyReq, Header, HomeNsReq};

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = serde_json::from_slice::<Header>(data) {
        let json = serde_json::to_vec(&h).expect("a parsed header serialises");
        assert_eq!(
            serde_json::from_slice::<Header>(&json).expect("and parses back"),
            h
        );
        // A refusal of it is always writable.
        let a = Ans::refusal(&h, protocol::ts002::ResultCode::MalformedRequest, "x");
        serde_json::to_vec(&a).expect("a refusal serialises");
    }
    if let Ok(m) = HomeNsReq::parse(data) {
        let json = serde_json::to_vec(&m).expect("serialises");
        assert_eq!(HomeNsReq::parse(&json).expect("parses back"), m);
    }
    if let Ok(m) = AppSKeyReq::parse(data) {
        let json = serde_json::to_vec(&m).expect("serialises");
        assert_eq!(AppSKeyReq::parse(&json).expect("parses back"), m);
    }
    if let Some(id) = SessionKeyId::parse(data) {
        assert_eq!(id.to_bytes(), data, "a SessionKeyID is its own bytes");
    }
});
