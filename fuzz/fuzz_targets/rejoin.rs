//! Any bytes as a LoRaWAN 1.1 Rejoin-request (types 0, 1 and 2) and as the Join-accept that
//! answers one, the way the network server and the join server read them. Beyond "no panic":
//! an accepted Rejoin-request re-encodes to exactly the input bytes, its MIC check under the
//! wrong key role is refused as such (never a panic or a pass), and a MIC rebuilt under the
//! right key verifies.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::join::{
    AnsweredRequest, EncryptedJoinAccept, JoinAcceptEncKey, JoinAcceptMicKey, RejoinBody,
    RejoinMicKey, RejoinRequest,
};
use protocol::keys::{JsEncKey, JsIntKey, KeyCipher, SNwkSIntKey};

fuzz_target!(|data: &[u8]| {
    let s = KeyCipher::new(&SNwkSIntKey::new([3; 16]));
    let j = KeyCipher::new(&JsIntKey::new([6; 16]));
    if let Ok(rj) = RejoinRequest::parse(data) {
        assert_eq!(rj.to_bytes(), data, "Rejoin-request re-encodes exactly");
        let (right, wrong) = match rj.body {
            RejoinBody::Type1 { .. } => (RejoinMicKey::JsIntKey(&j), RejoinMicKey::SNwkSIntKey(&s)),
            _ => (RejoinMicKey::SNwkSIntKey(&s), RejoinMicKey::JsIntKey(&j)),
        };
        assert_eq!(rj.verify_mic(wrong).unwrap_err().kind(), "key_role");
        let _ = rj.verify_mic(right);
        let rebuilt = RejoinRequest::build(rj.body, right).expect("right key role");
        assert!(rebuilt.verify_mic(right).is_ok());
    }
    if let Ok(ja) = EncryptedJoinAccept::from_bytes(data) {
        let enc = KeyCipher::new(&JsEncKey::new([5; 16]));
        for answered in [
            AnsweredRequest::Rejoin0 { rj_count0: 1 },
            AnsweredRequest::Rejoin1 { rj_count1: 1 },
            AnsweredRequest::Rejoin2 { rj_count0: 1 },
        ] {
            let mic = JoinAcceptMicKey::OptNeg {
                js_int_key: &j,
                join_eui: protocol::ids::JoinEui::new(1),
                answered,
            };
            let _ = ja.open(JoinAcceptEncKey::JsEncKey(&enc), mic);
        }
    }
});
