//! Property tests of the radio model (`simulator::radio`): whatever the network server asks, a
//! gateway never transmits two frames at once, never past its duty-cycle budget in any window,
//! never sooner than it can program its radio; of overlapping uplinks at most one survives, and
//! only by the capture margin; the airtime bound grows with the fleet and shrinks with gateways.

use proptest::prelude::*;
use protocol::region::Region;
use simulator::radio::bound::{airtime_bound_us, Storm};
use simulator::radio::reception::{Air, Heard, Outcome};
use simulator::radio::transmitter::{Transmitter, TX_JIT_DELAY_US};

const FREQS: [u32; 4] = [868_100_000, 868_300_000, 869_525_000, 867_100_000];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn a_gateway_never_overlaps_never_overspends_never_programs_late(
        reqs in prop::collection::vec((0u64..400_000, 0u64..3_000_000, 1u64..2_000_000, 0usize..4), 1..300),
        window_s in 1u64..100,
    ) {
        let window = window_s * 1_000_000;
        let mut tx = Transmitter::new(Region::Eu868, window);
        let mut now = 0u64;
        let mut accepted: Vec<(u64, u64, u32)> = Vec::new();
        for (step, lead, airtime, f) in reqs {
            now += step;
            let start = now + lead;
            if tx.request(now, start, airtime, FREQS[f]).is_ok() {
                prop_assert!(start > now + TX_JIT_DELAY_US);
                accepted.push((start, start + airtime, FREQS[f]));
            }
        }
        for (i, a) in accepted.iter().enumerate() {
            for b in &accepted[i + 1..] {
                prop_assert!(a.1 <= b.0 || b.1 <= a.0, "{a:?} overlaps {b:?}");
            }
        }
        // In every sub-band, the window ending at each transmission's end holds at most the
        // budget.
        for b in Region::Eu868.params().sub_bands {
            let budget = (b.duty_cycle * window as f64) as u64;
            let inside: Vec<_> = accepted
                .iter()
                .filter(|t| (b.range_hz.0..b.range_hz.1).contains(&t.2))
                .collect();
            for t in &inside {
                let from = t.1.saturating_sub(window);
                let used: u64 = inside
                    .iter()
                    .map(|u| u.1.min(t.1).saturating_sub(u.0.max(from)))
                    .sum();
                prop_assert!(used <= budget, "{used} > {budget} in the window ending at {}", t.1);
            }
        }
    }

    #[test]
    fn of_overlapping_uplinks_only_the_captured_survive(
        frames in prop::collection::vec((0u64..2_000_000, 1u64..1_500_000, 0usize..2, 7u8..9, -130i32..-60), 1..40),
        margin in 0.0f64..12.0,
    ) {
        let mut air = Air::default();
        let hs: Vec<Heard> = frames
            .iter()
            .enumerate()
            .map(|(i, &(start, airtime, f, sf, rssi))| Heard {
                id: i as u64,
                start,
                end: start + airtime,
                freq_hz: FREQS[f],
                sf,
                rssi_dbm: f64::from(rssi),
            })
            .collect();
        let mut sorted = hs.clone();
        sorted.sort_by_key(|h| h.start);
        for h in &sorted {
            air.add(*h);
        }
        let fate: Vec<Outcome> = hs.iter().map(|h| air.judge(h, margin, false).unwrap()).collect();
        for (i, a) in hs.iter().enumerate() {
            let rivals: Vec<&Heard> = hs
                .iter()
                .filter(|b| b.id != a.id && a.start < b.end && b.start < a.end && a.freq_hz == b.freq_hz && a.sf == b.sf)
                .collect();
            let captured = rivals.iter().all(|b| a.rssi_dbm - b.rssi_dbm >= margin);
            prop_assert_eq!(fate[i] == Outcome::Received, captured);
            prop_assert_eq!(air.judge(a, margin, true), Some(Outcome::Deaf));
        }
    }

    #[test]
    fn the_bound_grows_with_the_fleet_and_shrinks_with_gateways(
        drs in prop::collection::vec(0u8..6, 1..400),
        extra in prop::collection::vec(0u8..6, 1..100),
        gateways in 1u16..20,
        last_s in 0u64..30,
    ) {
        let storm = |drs: &[u8], gateways: u16| {
            airtime_bound_us(&Storm {
                region: Region::Eu868,
                gateways,
                join_freq_hz: 868_100_000,
                join_drs: drs,
                accept_len: 33,
                last_first_request_us: last_s * 1_000_000,
                window_us: 3_600_000_000,
                prior: Default::default(),
            })
        };
        let b = storm(&drs, gateways);
        let more: Vec<u8> = drs.iter().chain(&extra).copied().collect();
        prop_assert!(storm(&more, gateways) + 1_000 >= b);
        prop_assert!(storm(&drs, gateways + 1) <= b + 1_000);
        prop_assert!(b >= 5_000_000 + last_s * 1_000_000);
    }
}
