//! Any bytes as an application-event datagram reaching the simulator's `--event-listen`
//! → `simulator::net::parse_app_events`. Beyond "no panic": at most one uplink per line, and
//! the datagram's lines read one at a time give the same uplinks in the same order.
#![no_main]

use libfuzzer_sys::fuzz_target;
use simulator::net::parse_app_events;

fuzz_target!(|data: &[u8]| {
    let all = parse_app_events(data);
    let lines: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();
    assert!(all.len() <= lines.len());
    let one_by_one: Vec<_> = lines.iter().flat_map(|l| parse_app_events(l)).collect();
    assert_eq!(all, one_by_one);
});
