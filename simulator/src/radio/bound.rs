//! The airtime lower bound of a join storm: the least time in which the Join-accepts a fleet needs
//! fit into its gateways' transmitters and duty-cycle budgets, printed beside the measured result.
//!
//! It is a relaxation, so a true lower bound: the gateways' capacity is pooled (as if every device
//! were heard by every gateway), each Join-accept goes out in RX1 (at the device's RX1 data rate,
//! on its uplink's sub-band) or in RX2 (the region's RX2 frequency and data rate), a Join-accept may
//! be split between the two, and nothing is lost: no collision, no retry. Within time T a gateway
//! transmits at most T (one transmission at a time) and, on a sub-band of duty cycle dc measured
//! over a sliding window W, at most dc·W·⌊T/W⌋ + min(T mod W, dc·W). RX1 is filled with the
//! shortest Join-accepts first (they save the most), the rest goes to RX2; T is the least time at
//! which both budgets and the transmitter hold (found by bisection to 1 ms). The bound is then
//! JOIN_ACCEPT_DELAY1 (5 s) + max(T, the moment the last device first transmits).

use protocol::region::Region;

use crate::sched::Micros;

/// The fleet and gateways a bound is computed for.
#[derive(Clone, Debug)]
pub struct Storm<'a> {
    /// The region.
    pub region: Region,
    /// Number of gateways.
    pub gateways: u16,
    /// The frequency of the channel devices join on (its sub-band holds RX1).
    pub join_freq_hz: u32,
    /// Each device's Join-request data rate.
    pub join_drs: &'a [u8],
    /// The Join-accept PHYPayload length (17 bytes, 33 with a CFList).
    pub accept_len: usize,
    /// When the last device sends its first Join-request, from the start of the storm.
    pub last_first_request_us: Micros,
    /// The duty-cycle window (see [`super::duty_cycle::DUTY_CYCLE_WINDOW_US`]).
    pub window_us: Micros,
    /// What the gateways had already spent of their budgets when the storm began, for the
    /// [`Prior::default`] none: a power-restore follows the first join phase by seconds, and
    /// the Join-accepts of that phase are still inside the duty-cycle window.
    pub prior: Prior<'a>,
}

/// Duty-cycle budget the gateways spent before the storm began ([`Storm::prior`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct Prior<'a> {
    /// Per gateway, the time on air already in its window on the RX1 sub-band and on the RX2
    /// sub-band ([`bands`]), µs.
    pub used_us: &'a [(Micros, Micros)],
    /// From the start of the storm, the earliest moment that airtime begins to leave the
    /// window (the window's length after the earliest of those transmissions). The bound
    /// counts it in full until then and not at all afterwards: a relaxation, so still a lower
    /// bound.
    pub leaves_us: Micros,
}

/// The RX1 and RX2 frequencies of Join-accepts to Join-requests on `join_freq_hz` in `region`:
/// the sub-bands whose budgets the bound counts.
pub fn bands(region: Region, join_freq_hz: u32) -> (u32, u32) {
    let rx1 = region.rx1_frequency(join_freq_hz).unwrap_or(join_freq_hz);
    (rx1, region.rx2().0)
}

/// Time on air of a downlink of `len` bytes at data rate `dr` of `region`, µs.
pub fn downlink_airtime_us(region: Region, dr: u8, len: usize) -> Option<Micros> {
    match region.data_rate(dr).ok()? {
        protocol::gwmp::DataRate::Lora {
            spreading_factor,
            bandwidth_khz,
        } => Some(super::downlink_airtime_us(
            spreading_factor,
            bandwidth_khz,
            len,
        )),
        _ => None,
    }
}

/// The most time on air a sub-band of duty cycle `dc` (`None`: unlimited) allows within `t`,
/// `prior` of its first window already spent.
fn budget(dc: Option<f64>, window: Micros, t: Micros, prior: Micros) -> f64 {
    match dc {
        None => f64::INFINITY,
        Some(dc) => {
            let per = dc * window as f64;
            let w = window.max(1);
            let first = (per - prior as f64).max(0.0);
            per * (t / w) as f64 + ((t % w) as f64).min(if t < w { first } else { per })
        }
    }
}

/// The pooled budgets of the sub-bands within `t`: (RX1, RX2), µs.
fn pooled(s: &Storm<'_>, dcs: (Option<f64>, Option<f64>), t: Micros) -> (f64, f64) {
    let w = s.window_us;
    let g = usize::from(s.gateways.max(1));
    let counted = t < s.prior.leaves_us;
    let used = |i: usize| {
        s.prior
            .used_us
            .get(i)
            .copied()
            .filter(|_| counted)
            .unwrap_or_default()
    };
    (0..g).fold((0.0, 0.0), |(a, b), i| {
        let (u1, u2) = used(i);
        (a + budget(dcs.0, w, t, u1), b + budget(dcs.1, w, t, u2))
    })
}

/// Whether the accepts fit within `t` on `g` gateways of budgets `caps` (RX1, RX2): `rx1`
/// sorted ascending, RX2 accepts of `a2` each.
fn fits(rx1: &[Micros], a2: Micros, caps: (f64, f64), g: f64, t: Micros) -> bool {
    let (cap1, cap2) = caps;
    let mut used1 = 0.0;
    let mut in_rx1 = 0.0;
    for &a in rx1 {
        let a = a as f64;
        if used1 + a <= cap1 {
            used1 += a;
            in_rx1 += 1.0;
        } else {
            let part = (cap1 - used1) / a;
            used1 = cap1;
            in_rx1 += part;
            break;
        }
    }
    let rx2 = (rx1.len() as f64 - in_rx1) * a2 as f64;
    rx2 <= cap2 && used1 + rx2 <= g * t as f64
}

/// The airtime lower bound of `s`, µs from the start of the storm.
pub fn airtime_bound_us(s: &Storm<'_>) -> Micros {
    let r = s.region;
    let rx2_dr = r.rx2().1;
    let (rx1_freq, rx2_freq) = bands(r, s.join_freq_hz);
    let a2 = downlink_airtime_us(r, rx2_dr, s.accept_len).unwrap_or(0);
    let mut rx1: Vec<Micros> = s
        .join_drs
        .iter()
        .map(|&dr| {
            r.rx1_dr(dr, 0, false)
                .ok()
                .and_then(|d| downlink_airtime_us(r, d, s.accept_len))
                .unwrap_or(a2)
        })
        .collect();
    rx1.sort_unstable();
    let dcs = (r.duty_cycle(rx1_freq), r.duty_cycle(rx2_freq));
    let g = f64::from(s.gateways.max(1));
    let fit = |t| fits(&rx1, a2, pooled(s, dcs, t), g, t);
    // Serially on one gateway, every accept in RX2, fits in any case within this long.
    let mut hi: Micros = 1_000;
    while !fit(hi) {
        hi = hi.saturating_mul(2);
        if hi == Micros::MAX {
            break;
        }
    }
    let mut lo = 0;
    while hi - lo > 1_000 {
        let mid = lo + (hi - lo) / 2;
        if fit(mid) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    crate::device::JOIN_ACCEPT_DELAY1_US + hi.max(s.last_first_request_us)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::radio::duty_cycle::DUTY_CYCLE_WINDOW_US;

    const S: Micros = 1_000_000;

    fn storm(gateways: u16, drs: &[u8], last: Micros) -> Storm<'_> {
        Storm {
            region: Region::Eu868,
            gateways,
            join_freq_hz: 868_100_000,
            join_drs: drs,
            accept_len: 33,
            last_first_request_us: last,
            window_us: DUTY_CYCLE_WINDOW_US,
            prior: Prior::default(),
        }
    }

    #[test]
    fn budget_spent_before_the_storm_counts_until_it_leaves_the_window() {
        // 200 SF7 devices, one gateway: 14.4 s of RX1 accepts fit the 36 s budget; with 30 s
        // of it already spent, 6 s remain (83.4 accepts), the rest goes to RX2 at 1.81 s each.
        let drs = [5u8; 200];
        let fresh = airtime_bound_us(&storm(1, &drs, 0));
        assert!(
            (5 * S + 14_387_200..=5 * S + 14_388_200).contains(&fresh),
            "{fresh}"
        );
        let used = [(30 * S, 0)];
        let spent = Storm {
            prior: Prior {
                used_us: &used,
                leaves_us: DUTY_CYCLE_WINDOW_US - 60 * S,
            },
            ..storm(1, &drs, 0)
        };
        // RX1 6 s + RX2 (200 − 83.4) × 1.810 s = 217.08 s on one transmitter.
        let b = airtime_bound_us(&spent);
        assert!(
            (5 * S + 217_082_000..=5 * S + 217_084_000).contains(&b),
            "{b}"
        );
        // Had it left the window at once, nothing would change.
        let gone = Storm {
            prior: Prior {
                used_us: &used,
                leaves_us: 0,
            },
            ..storm(1, &drs, 0)
        };
        assert_eq!(airtime_bound_us(&gone), fresh);
    }

    #[test]
    fn hand_computed_bounds() {
        // A 33-byte Join-accept: 71.936 ms at SF7 (RX1), 1810.432 ms at SF12 (55.25 symbols of 32.768 ms) (RX2, 869.525 MHz).
        assert_eq!(downlink_airtime_us(Region::Eu868, 5, 33), Some(71_936));
        assert_eq!(downlink_airtime_us(Region::Eu868, 0, 33), Some(1_810_432));
        // 100 SF7 devices, one gateway: 7.19 s on air in RX1, within the 36 s budget: the
        // transmitter is the limit. Bisection stops within 1 ms above it.
        let drs = [5u8; 100];
        let b = airtime_bound_us(&storm(1, &drs, 0));
        assert!((5 * S + 7_193_600..=5 * S + 7_194_600).contains(&b), "{b}");
        // Ten gateways share it; a late last device dominates.
        let b = airtime_bound_us(&storm(10, &drs, 0));
        assert!((5 * S + 719_360..=5 * S + 720_360).contains(&b), "{b}");
        assert_eq!(airtime_bound_us(&storm(10, &drs, 10 * S)), 15 * S);
        // 1000 SF7 devices on one gateway: in the first hour RX1 holds 36 s / 71.936 ms = 500.4
        // accepts and RX2 360 s / 1810.432 ms = 198.8: 699.3 in all. The rest waits for the
        // next hour: T is past 3600 s (by about 300.7 / (13.9 + 0.55) per s = 21 s).
        let drs = [5u8; 1000];
        let b = airtime_bound_us(&storm(1, &drs, 0));
        assert!(b > 3600 * S, "{b}");
        assert!(b < 7200 * S, "{b}");
        // Without a duty cycle (US915), only the transmitter limits.
        let us = Storm {
            region: Region::Us915,
            join_freq_hz: 903_900_000,
            ..storm(1, &[3u8; 10], 0)
        };
        let a = downlink_airtime_us(Region::Us915, 13, 33).unwrap();
        let b = airtime_bound_us(&us);
        assert!(
            b >= 5 * S + 10 * a && b <= 5 * S + 10 * a + 1_000,
            "{b} vs {a}"
        );
    }
}
