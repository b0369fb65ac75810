//! Any bytes as an MQTT downlink command's topic and payload reaching the network server
//! (`integration::commands`), and as an event line shaped for ChirpStack
//! (`integration::chirpstack`) or a ChirpStack `up` event read by the simulator's
//! `--delivery mqtt://`. Beyond "no panic": an accepted command is within the limits, and the
//! same line always gives the same `deduplicationId`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use netserver::integration::chirpstack::{
    chirpstack_event, dedup_id, Applications, Shape, COMMAND_TOPIC,
};
use netserver::integration::commands::{match_topic, parse_command};
use protocol::ids::DevEui;

fuzz_target!(|data: &[u8]| {
    let (topic, payload) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&data[..0], data),
    };
    if let Ok(t) = std::str::from_utf8(topic) {
        let _ = match_topic(COMMAND_TOPIC, t);
    }
    let dev = DevEui::new(0x70B3_D5FF_0000_0001);
    if let Ok(r) = parse_command(dev, payload) {
        assert!((1..=223).contains(&r.f_port));
        assert!(r.payload.len() <= 242);
        assert_eq!(r.dev_eui, dev);
    }
    let shape = Shape {
        applications: Applications {
            default: "app".into(),
            by_tenant: Default::default(),
        },
        region: protocol::region::Region::Eu868,
    };
    if let Some(e) = chirpstack_event(payload, &shape) {
        // The body is JSON; where it carries a deduplicationId, it is the line's.
        let body: serde_json::Value = serde_json::from_slice(&e.body).expect("a JSON body");
        if let Some(id) = body.get("deduplicationId") {
            assert_eq!(id.as_str(), Some(dedup_id(payload).as_str()));
        }
    }
    let _ = simulator::delivery::uplink_of(payload);
});
