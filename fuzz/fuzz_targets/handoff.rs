//! Any bytes as a datagram at a network-server instance's hand-off address →
//! `netserver::gateway::handoff::HandoffKey::open`. Beyond "no panic": whatever opens is what
//! sealing its fields gives back, byte for byte, and any PULL_RESP-shaped payload sealed opens
//! to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use netserver::gateway::handoff::HandoffKey;
use protocol::ids::GatewayEui;
use protocol::keys::Kek;
use protocol::keywrap::LabeledKek;

fuzz_target!(|data: &[u8]| {
    let kek = LabeledKek {
        label: "ns".into(),
        key: Kek::new([7; 16]),
    };
    let key = HandoffKey::derive(&kek, 7);
    let now = 1_000_000;
    if let Ok(h) = key.open(data, now) {
        if h.sender == key.instance() {
            assert_eq!(key.seal(h.gateway, h.pull_resp, h.timestamp_ms), data);
        }
    }
    if (4..2000).contains(&data.len()) {
        let mut p = data.to_vec();
        p[0] = 2;
        p[3] = 3;
        let sealed = key.seal(GatewayEui::new(1), &p, now);
        assert_eq!(key.open(&sealed, now).unwrap().pull_resp, &p[..]);
    }
});
