//! The per-gateway downlink scheduler: among the gateways that heard a frame and the two
//! receive windows, the first placement a gateway can transmit, booked on that gateway's
//! [`GatewayAirtime`].
//!
//! The candidates are ordered RX1 before RX2 (RX1 is a second earlier and, at the uplink's
//! data rate, far shorter on air), and within a window by link quality (SNR, then RSSI): the
//! first that fits its gateway (one transmission at a time, its queue, its sub-band's
//! duty-cycle budget) is booked. When none fits, nothing is sent. Switched off
//! (`[scheduler] enabled = false`), the first candidate is taken without looking at airtime:
//! the best gateway in the first window still reachable, the behaviour before the scheduler.
//!
//! Pure: `now` comes in; the shell books, sends, and feeds the gateways' TX_ACKs back.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use protocol::ids::GatewayEui;
use protocol::region::Region;

use super::airtime::{
    AirtimeSnapshot, Busy, GatewayAirtime, Limits, Purpose, Transmission, TxOutcome,
};
use super::reception::Reception;
use super::timing::{tmst_after, Scheduled, Window, WindowTiming};
use super::KeyedHasher;

/// An RX2 Join-accept more than this many times as long on air as the RX1 one (EU868: SF12 on
/// 869.525 MHz, 1.16 s for 17 bytes, against 46–185 ms at SF7–SF9) is a costly fallback
/// when RX1 is merely busy: see [`STORM_QUEUE`].
pub const COSTLY_RX2_RATIO: u32 = 4;

/// A gateway with this many downlinks queued ahead is in a join storm. There, a Join-accept
/// whose RX1 slot is taken by another is not moved to a costly RX2 ([`COSTLY_RX2_RATIO`]):
/// the second-long SF12 transmission would take the RX1 slots of the next five to ten
/// Join-requests the gateway hears (and leave it deaf to uplinks meanwhile), which then fall
/// back to RX2 in turn, until the gateway transmits SF12 Join-accepts back to back. The device
/// is not answered and retries (its Join-requests are random in time, so the next one likely
/// finds a free RX1 slot). RX2 stays the fallback when RX1's duty-cycle budget is spent, when
/// RX1 can no longer be reached in time, and on a quiet gateway.
pub const STORM_QUEUE: usize = 8;

/// One way to send a downlink: a gateway, a window, and what it costs there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    /// The gateway.
    pub gateway: GatewayEui,
    /// The window, its `tmst` on the gateway's counter and its local opening.
    pub at: Scheduled,
    /// The frequency it is sent on, Hz.
    pub frequency_hz: u32,
    /// Its time on air.
    pub airtime: Duration,
    /// The least lead the PULL_RESP needs before the window opens.
    pub margin: Duration,
}

impl Candidate {
    fn transmission(&self) -> Transmission {
        Transmission {
            tmst: self.at.tmst,
            starts_at: self.at.opens_at,
            airtime: self.airtime,
            frequency_hz: self.frequency_hz,
        }
    }
}

/// Why no candidate was placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unplaced {
    /// No gateway that heard the frame has a downlink route.
    NoGateway,
    /// Both windows are past (or too close) for every gateway.
    TooLate,
    /// No window has a radio setting for this downlink (its data rate, its frequency).
    Radio,
    /// Every reachable window of every gateway lacks airtime; the first choice's reason.
    Airtime(Busy),
}

impl Unplaced {
    /// Metric label.
    pub const fn label(self) -> &'static str {
        match self {
            Self::NoGateway => "no_gateway",
            Self::TooLate => "too_late",
            Self::Radio => "radio",
            Self::Airtime(b) => b.label(),
        }
    }
}

/// A booked placement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    /// What was booked.
    pub candidate: Candidate,
    /// The booking (0 when the scheduler is off: nothing to take back).
    pub id: u64,
    /// Why the first choice was not taken, if it was not.
    pub deferred: Option<Busy>,
}

/// The receive windows of `receptions` that can still be met at `now`, RX1 first, each
/// window's gateways best link first. `anchor` maps a reception to the local instant its
/// windows count from; `usable` says which gateways have a downlink route; `radio` gives a
/// window's frequency and time on air (`None`: no radio setting fits it).
pub fn candidates(
    now: Instant,
    receptions: &[Reception],
    timing: &WindowTiming,
    anchor: impl Fn(&Reception) -> Instant,
    mut usable: impl FnMut(&Reception) -> bool,
    radio: impl Fn(&Reception, Window) -> Option<(u32, Duration)>,
) -> Result<Vec<Candidate>, Unplaced> {
    let mut sorted: Vec<&Reception> = receptions.iter().filter(|r| usable(r)).collect();
    if sorted.is_empty() {
        return Err(Unplaced::NoGateway);
    }
    // Stable: equal links keep their arrival order.
    sorted.sort_by(|a, b| b.quality_cmp(a));
    let mut out = Vec::new();
    let mut reachable = false;
    for (window, delay) in [
        (Window::Rx1, timing.rx1_delay),
        (Window::Rx2, timing.rx2_delay),
    ] {
        for r in &sorted {
            let opens_at = anchor(r) + delay;
            if opens_at.saturating_duration_since(now) < timing.margin || opens_at <= now {
                continue;
            }
            reachable = true;
            let Some((frequency_hz, airtime)) = radio(r, window) else {
                continue;
            };
            let at = Scheduled {
                window,
                tmst: tmst_after(r.tmst, delay),
                opens_at,
            };
            out.push(Candidate {
                gateway: r.gateway,
                at,
                frequency_hz,
                airtime,
                margin: timing.margin,
            });
        }
    }
    match (out.is_empty(), reachable) {
        (false, _) => Ok(out),
        (true, false) => Err(Unplaced::TooLate),
        (true, true) => Err(Unplaced::Radio),
    }
}

/// Every gateway's airtime, shared by the socket loops and the join tasks.
#[derive(Debug)]
pub struct Scheduler {
    enabled: bool,
    region: Region,
    limits: Limits,
    gateways: DashMap<GatewayEui, GatewayAirtime, KeyedHasher>,
    next_id: AtomicU64,
}

impl Scheduler {
    /// A scheduler for `region` (`enabled`: airtime is checked and booked).
    pub fn new(enabled: bool, region: Region, limits: Limits) -> Self {
        Self {
            enabled,
            region,
            limits,
            gateways: DashMap::with_hasher(KeyedHasher::default()),
            next_id: AtomicU64::new(1),
        }
    }

    /// Whether airtime is checked.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Books the first of `candidates` (in preference order) whose gateway can transmit it at
    /// `now`. Each gateway's check and booking is one map-entry operation, so concurrent
    /// placements never book overlapping transmissions.
    pub fn place(
        &self,
        now: Instant,
        purpose: Purpose,
        candidates: &[Candidate],
    ) -> Result<Placement, Unplaced> {
        let first = candidates.first().ok_or(Unplaced::TooLate)?;
        if !self.enabled {
            return Ok(Placement {
                candidate: *first,
                id: 0,
                deferred: None,
            });
        }
        let ordered = self.preference(candidates);
        let first = ordered.first().unwrap_or(first);
        match self.book_first(now, purpose, &ordered) {
            Ok(p) => {
                if p.deferred.is_some() {
                    self.with(first.gateway, GatewayAirtime::count_deferred);
                }
                Ok(p)
            }
            Err(b) => {
                self.with(first.gateway, GatewayAirtime::count_dropped);
                Err(Unplaced::Airtime(b))
            }
        }
    }

    /// Moves `current` to a better candidate if one fits now: one before it in `candidates`
    /// (e.g. a gateway with a better link whose copy arrived after the booking). The old
    /// booking is taken back when the new one is made; `None`: `current` stays.
    pub fn improve(
        &self,
        now: Instant,
        purpose: Purpose,
        current: &Placement,
        candidates: &[Candidate],
    ) -> Option<Placement> {
        let same = |c: &Candidate| {
            c.gateway == current.candidate.gateway && c.at.window == current.candidate.at.window
        };
        let ordered = if self.enabled {
            self.preference(candidates)
        } else {
            candidates.to_vec()
        };
        let better = &ordered[..ordered.iter().position(same)?];
        if better.is_empty() {
            return None;
        }
        if !self.enabled {
            return Some(Placement {
                candidate: better[0],
                id: 0,
                deferred: None,
            });
        }
        let p = self.book_first(now, purpose, better).ok()?;
        self.release(current);
        Some(p)
    }

    /// The order candidates are tried in: as given (RX1, then RX2), except that in a region
    /// with duty-cycle sub-bands RX2 goes first when RX1 is no shorter on air (an uplink at
    /// the RX2 data rate, EU868 SF12): the same airtime then costs RX2's larger budget (10 %)
    /// rather than the 1 % that faster devices' RX1 Join-accepts need.
    fn preference(&self, candidates: &[Candidate]) -> Vec<Candidate> {
        let shortest = |w: Window| {
            candidates
                .iter()
                .filter(|c| c.at.window == w)
                .map(|c| c.airtime)
                .min()
        };
        let duty_cycled = !self.region.params().sub_bands.is_empty();
        let rx2_first = match (shortest(Window::Rx1), shortest(Window::Rx2)) {
            (Some(rx1), Some(rx2)) => duty_cycled && rx1 >= rx2,
            _ => false,
        };
        let mut out = candidates.to_vec();
        if rx2_first {
            // Stable: each window keeps its gateways' order.
            out.sort_by_key(|c| c.at.window != Window::Rx2);
        }
        out
    }

    /// Books the first candidate that fits; `Err`: the first choice's reason.
    fn book_first(
        &self,
        now: Instant,
        purpose: Purpose,
        candidates: &[Candidate],
    ) -> Result<Placement, Busy> {
        let mut first_refusal = None;
        let rx1_airtime = candidates
            .iter()
            .filter(|c| c.at.window == Window::Rx1)
            .map(|c| c.airtime)
            .min();
        let costly = |c: &Candidate| {
            purpose == Purpose::JoinAccept
                && c.at.window == Window::Rx2
                && rx1_airtime.is_some_and(|a| c.airtime > a * COSTLY_RX2_RATIO)
        };
        for c in candidates {
            let mut g = self
                .gateways
                .entry(c.gateway)
                .or_insert_with(|| GatewayAirtime::new(self.region));
            let lead = c.at.opens_at.saturating_duration_since(now);
            let rx1_busy = matches!(first_refusal, Some(Busy::Collision | Busy::QueueFull));
            let verdict = if rx1_busy && costly(c) && g.queued(now) >= STORM_QUEUE {
                Err(Busy::Collision)
            } else if lead < c.margin + g.extra_margin() {
                // This gateway answered TOO_LATE before: it needs more lead than is left.
                Err(Busy::Lead)
            } else {
                g.fits(now, &c.transmission(), purpose, &self.limits)
            };
            match verdict {
                Ok(()) => {
                    let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                    g.book(id, c.transmission());
                    return Ok(Placement {
                        candidate: *c,
                        id,
                        deferred: first_refusal,
                    });
                }
                Err(b) => {
                    first_refusal.get_or_insert(b);
                }
            }
        }
        Err(first_refusal.unwrap_or(Busy::Collision))
    }

    fn with(&self, gateway: GatewayEui, f: impl FnOnce(&mut GatewayAirtime)) {
        if let Some(mut g) = self.gateways.get_mut(&gateway) {
            f(&mut g);
        }
    }

    /// Names a booking by its PULL_RESP token.
    pub fn set_token(&self, p: &Placement, token: [u8; 2]) {
        if p.id != 0 {
            self.with(p.candidate.gateway, |g| g.set_token(p.id, token));
        }
    }

    /// Takes a booking back (its downlink is not sent).
    pub fn release(&self, p: &Placement) {
        if p.id != 0 {
            self.with(p.candidate.gateway, |g| g.release(p.id));
        }
    }

    /// A TX_ACK of `gateway` for the PULL_RESP of `token`; whether it named a booking.
    pub fn on_tx_ack(
        &self,
        now: Instant,
        gateway: GatewayEui,
        token: [u8; 2],
        outcome: TxOutcome,
    ) -> bool {
        self.gateways
            .get_mut(&gateway)
            .is_some_and(|mut g| g.on_tx_ack(now, token, outcome))
    }

    /// Each gateway's airtime as of `now`, by EUI (for `/gateways`).
    pub fn snapshot(&self, now: Instant) -> Vec<(GatewayEui, AirtimeSnapshot)> {
        let mut out: Vec<_> = self
            .gateways
            .iter_mut()
            .map(|mut e| (*e.key(), e.value_mut().snapshot(now, &self.limits)))
            .collect();
        out.sort_by_key(|(eui, _)| *eui);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::super::airtime::tests::limits;
    use super::super::reception::tests::rx;
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn join_timing() -> WindowTiming {
        WindowTiming {
            rx1_delay: 5000 * MS,
            rx2_delay: 6000 * MS,
            margin: 100 * MS,
        }
    }

    /// A 17-byte Join-accept: SF7 in RX1 (the uplink's DR5), SF12 on 869.525 MHz in RX2.
    fn join_accept_radio(r: &Reception, w: Window) -> Option<(u32, Duration)> {
        use protocol::region::{lora_time_on_air, LoraFrame};
        let (freq, sf) = match w {
            Window::Rx1 => (r.frequency_hz, 7),
            Window::Rx2 => (869_525_000, 12),
        };
        Some((
            freq,
            lora_time_on_air(&LoraFrame::downlink(sf, 125_000, 17))?,
        ))
    }

    /// A 17-byte Join-accept to an SF12 uplink: SF12 in RX1 too, as long on air as RX2.
    fn sf12_radio(r: &Reception, w: Window) -> Option<(u32, Duration)> {
        use protocol::region::{lora_time_on_air, LoraFrame};
        let f = if w == Window::Rx1 {
            r.frequency_hz
        } else {
            869_525_000
        };
        Some((f, lora_time_on_air(&LoraFrame::downlink(12, 125_000, 17))?))
    }

    fn join_candidates(now: Instant, heard: &[Reception]) -> Vec<Candidate> {
        candidates(
            now,
            heard,
            &join_timing(),
            |_| heard[0].received_at,
            |_| true,
            join_accept_radio,
        )
        .unwrap()
    }

    fn on(limits: Limits) -> Scheduler {
        Scheduler::new(true, Region::Eu868, limits)
    }

    /// The interval a placement occupies on its gateway's counter, µs.
    fn span(p: &Placement) -> (u64, u64) {
        let s = u64::from(p.candidate.at.tmst);
        (s, s + p.candidate.airtime.as_micros() as u64)
    }

    #[test]
    fn candidates_rx1_first_best_link_first_and_the_reasons_for_none() {
        let t0 = Instant::now();
        let heard = [rx(1, 3.0, -90, t0), rx(2, 9.0, -100, t0)];
        let c = join_candidates(t0, &heard);
        let order: Vec<_> = c
            .iter()
            .map(|c| (c.at.window, c.gateway.as_u64()))
            .collect();
        assert_eq!(
            order,
            [
                (Window::Rx1, 2),
                (Window::Rx1, 1),
                (Window::Rx2, 2),
                (Window::Rx2, 1)
            ]
        );
        assert_eq!(c[0].at.tmst, 6_000_000);
        assert_eq!(c[2].at.tmst, 7_000_000);
        assert_eq!(c[0].airtime, Duration::from_micros(46_336));
        // Past RX1: RX2 only; past both: too late.
        let c = join_candidates(t0 + 4950 * MS, &heard);
        assert!(c.iter().all(|c| c.at.window == Window::Rx2));
        let none = |now, usable: bool| {
            candidates(
                now,
                &heard,
                &join_timing(),
                |_| t0,
                |_| usable,
                join_accept_radio,
            )
        };
        assert_eq!(none(t0 + 5950 * MS, true), Err(Unplaced::TooLate));
        assert_eq!(none(t0, false), Err(Unplaced::NoGateway));
        let no_radio = candidates(t0, &heard, &join_timing(), |_| t0, |_| true, |_, _| None);
        assert_eq!(no_radio, Err(Unplaced::Radio));
    }

    /// Two Join-requests heard by the same single gateway within one Join-accept's airtime:
    /// their answers go in different windows or through different gateways, never overlapping.
    #[test]
    fn two_join_requests_within_one_join_accept_airtime_never_overlap() {
        let t0 = Instant::now();
        let s = on(limits());
        let a = rx(1, 5.0, -80, t0);
        let mut b = rx(1, 5.0, -80, t0 + 20 * MS);
        b.tmst = a.tmst + 20_000; // 20 ms later on the gateway's counter: within 46 ms
        let pa = s
            .place(
                t0,
                Purpose::JoinAccept,
                &join_candidates(t0, std::slice::from_ref(&a)),
            )
            .unwrap();
        let pb = s
            .place(
                t0 + 20 * MS,
                Purpose::JoinAccept,
                &join_candidates(t0, &[b]),
            )
            .unwrap();
        assert_eq!(pa.candidate.at.window, Window::Rx1);
        assert_eq!(pa.deferred, None);
        assert_eq!(
            pb.candidate.at.window,
            Window::Rx2,
            "RX1 is busy with the first"
        );
        assert_eq!(pb.deferred, Some(Busy::Collision));
        let (sa, sb) = (span(&pa), span(&pb));
        assert!(sa.1 <= sb.0 || sb.1 <= sa.0, "{sa:?} and {sb:?} overlap");
        // A third within the same 20 ms: both windows are taken, nothing is sent.
        let mut c = rx(1, 5.0, -80, t0 + 30 * MS);
        c.tmst = a.tmst + 30_000;
        assert_eq!(
            s.place(
                t0 + 30 * MS,
                Purpose::JoinAccept,
                &join_candidates(t0, &[c])
            ),
            Err(Unplaced::Airtime(Busy::Collision))
        );
        let snap = s.snapshot(t0 + 30 * MS);
        assert_eq!(snap[0].1.stats.scheduled, 2);
        assert_eq!((snap[0].1.stats.deferred, snap[0].1.stats.dropped), (1, 1));
    }

    #[test]
    fn a_gateway_heard_by_both_takes_the_second_in_rx1_through_the_other_gateway() {
        let t0 = Instant::now();
        let s = on(limits());
        let a = [rx(1, 9.0, -80, t0)];
        let mut b = [rx(1, 9.0, -80, t0), rx(2, 2.0, -100, t0)];
        b[0].tmst += 10_000;
        s.place(t0, Purpose::JoinAccept, &join_candidates(t0, &a))
            .unwrap();
        let p = s
            .place(t0, Purpose::JoinAccept, &join_candidates(t0, &b))
            .unwrap();
        assert_eq!(
            (p.candidate.gateway, p.candidate.at.window),
            (GatewayEui::new(2), Window::Rx1)
        );
    }

    #[test]
    fn a_better_gateway_heard_after_the_booking_takes_the_downlink() {
        let t0 = Instant::now();
        let s = on(limits());
        let weak = rx(1, 2.0, -100, t0);
        let strong = rx(2, 9.0, -90, t0);
        let p = s
            .place(
                t0,
                Purpose::JoinAccept,
                &join_candidates(t0, std::slice::from_ref(&weak)),
            )
            .unwrap();
        assert_eq!(p.candidate.gateway, GatewayEui::new(1));
        let all = join_candidates(t0, &[weak, strong]);
        let better = s.improve(t0, Purpose::JoinAccept, &p, &all).unwrap();
        assert_eq!(
            (better.candidate.gateway, better.candidate.at.window),
            (GatewayEui::new(2), Window::Rx1)
        );
        // The old booking was taken back; the best one is not improved on.
        assert_eq!(s.snapshot(t0)[0].1.stats.airtime_us, 0);
        assert_eq!(s.improve(t0, Purpose::JoinAccept, &better, &all), None);
    }

    /// In a join storm a busy RX1 slot does not send a fast device's Join-accept to SF12 RX2,
    /// which would take the RX1 slots of the next Join-requests; on a quiet gateway it does.
    #[test]
    fn a_storm_gateway_keeps_rx2_for_what_rx1_cannot_take() {
        let t0 = Instant::now();
        let s = on(limits());
        // STORM_QUEUE Join-accepts booked in RX1, 200 ms apart: the gateway is in a storm.
        let base = rx(1, 5.0, -80, t0);
        for i in 0..STORM_QUEUE as u32 {
            let mut r = base.clone();
            r.tmst += i * 200_000;
            let p = s
                .place(t0, Purpose::JoinAccept, &join_candidates(t0, &[r]))
                .unwrap();
            assert_eq!(p.candidate.at.window, Window::Rx1);
        }
        // One 20 ms after the first: its RX1 slot is taken, and SF12 RX2 (1.16 s against
        // 46 ms) is not worth it there.
        let mut late = base.clone();
        late.tmst += 20_000;
        assert_eq!(
            s.place(t0, Purpose::JoinAccept, &join_candidates(t0, &[late])),
            Err(Unplaced::Airtime(Busy::Collision))
        );
        // An SF12 device's RX2 is no costlier than its RX1: it still gets RX2.
        let mut slow = base.clone();
        slow.tmst += 2_000_000;
        slow.data_rate = 0;
        let c = candidates(t0, &[slow], &join_timing(), |_| t0, |_| true, sf12_radio).unwrap();
        let p = s.place(t0, Purpose::JoinAccept, &c).unwrap();
        assert_eq!(p.candidate.at.window, Window::Rx2);
    }

    #[test]
    fn a_gateway_out_of_budget_is_avoided() {
        let t0 = Instant::now();
        let mut lim = limits();
        // A window of 10 s: 1 % is 100 ms in g1, two SF7 Join-accepts (46 ms each, 90 % share).
        lim.duty_cycle_window = Duration::from_secs(10);
        let s = on(lim);
        let heard = |i: u32, gw_snr: [(u64, f32); 2]| {
            gw_snr.map(|(gw, snr)| {
                let mut r = rx(gw, snr, -90, t0);
                r.tmst += i * 100_000;
                r
            })
        };
        // Gateway 1 has the better link: it takes the first Join-accept in RX1.
        let p = s
            .place(
                t0,
                Purpose::JoinAccept,
                &join_candidates(t0, &heard(0, [(1, 9.0), (2, 1.0)])),
            )
            .unwrap();
        assert_eq!(p.candidate.gateway, GatewayEui::new(1));
        let p = s
            .place(
                t0,
                Purpose::JoinAccept,
                &join_candidates(t0, &heard(1, [(1, 9.0), (2, 1.0)])),
            )
            .unwrap();
        assert_eq!(
            (p.candidate.gateway, p.candidate.at.window),
            (GatewayEui::new(2), Window::Rx1),
            "gateway 1's g1 budget is spent: the other gateway, still RX1"
        );
        assert_eq!(p.deferred, Some(Busy::DutyCycle));
        let snap = s.snapshot(t0);
        let g1 = &snap[0].1;
        assert!(
            (g1.sub_bands[1].budget_left_s - 0.053_664).abs() < 1e-6,
            "{g1:?}"
        );
        assert_eq!(g1.stats.deferred, 1);
    }

    #[test]
    fn rx2_when_rx1_is_full() {
        let t0 = Instant::now();
        let mut lim = limits();
        // A window of 20 s: Join-accepts have 180 ms of g1 (three at SF7, 46 ms each) and 1.8 s
        // of g3 (one at SF12, 1.155 s).
        lim.duty_cycle_window = Duration::from_secs(20);
        let s = on(lim);
        let mut placed = Vec::new();
        for i in 0..5u32 {
            let mut r = rx(1, 5.0, -80, t0);
            r.tmst += i * 3_000_000; // far apart: no overlap, only the budget
            let c = join_candidates(t0, &[r]);
            placed.push(
                s.place(t0, Purpose::JoinAccept, &c)
                    .map(|p| p.candidate.at.window),
            );
        }
        let rx1 = Ok(Window::Rx1);
        assert_eq!(
            placed,
            [
                rx1,
                rx1,
                rx1,
                Ok(Window::Rx2),
                Err(Unplaced::Airtime(Busy::DutyCycle))
            ]
        );
    }

    #[test]
    fn an_sf12_join_accept_goes_in_rx2_where_the_same_airtime_costs_the_larger_budget() {
        let t0 = Instant::now();
        let s = on(limits());
        let mut r = rx(1, -15.0, -120, t0);
        r.data_rate = 0; // SF12: RX1 at SF12 too, as long on air as RX2
        let c = candidates(t0, &[r], &join_timing(), |_| t0, |_| true, sf12_radio).unwrap();
        assert_eq!(c[0].at.window, Window::Rx1, "candidates list RX1 first");
        let p = s.place(t0, Purpose::JoinAccept, &c).unwrap();
        assert_eq!((p.candidate.at.window, p.deferred), (Window::Rx2, None));
        // Switched off, the first candidate as before: RX1.
        let off = Scheduler::new(false, Region::Eu868, limits());
        let p = off.place(t0, Purpose::JoinAccept, &c).unwrap();
        assert_eq!(p.candidate.at.window, Window::Rx1);
        // Without duty-cycle sub-bands (US915) RX1 stays first.
        let us = Scheduler::new(true, Region::Us915, limits());
        let p = us.place(t0, Purpose::JoinAccept, &c).unwrap();
        assert_eq!(p.candidate.at.window, Window::Rx1);
    }

    #[test]
    fn switched_off_it_takes_the_first_candidate_and_books_nothing() {
        let t0 = Instant::now();
        let s = Scheduler::new(false, Region::Eu868, limits());
        let r = rx(1, 5.0, -80, t0);
        for _ in 0..3 {
            let p = s
                .place(
                    t0,
                    Purpose::JoinAccept,
                    &join_candidates(t0, std::slice::from_ref(&r)),
                )
                .unwrap();
            assert_eq!((p.candidate.at.window, p.id), (Window::Rx1, 0));
        }
        assert!(s.snapshot(t0).is_empty());
    }

    #[test]
    fn releases_and_tx_acks_reach_the_gateway() {
        let t0 = Instant::now();
        let s = on(limits());
        let r = rx(1, 5.0, -80, t0);
        let c = join_candidates(t0, &[r]);
        let p = s.place(t0, Purpose::JoinAccept, &c).unwrap();
        s.release(&p);
        let p = s.place(t0, Purpose::JoinAccept, &c).unwrap();
        assert_eq!(
            p.candidate.at.window,
            Window::Rx1,
            "released: RX1 is free again"
        );
        s.set_token(&p, [7, 7]);
        assert!(s.on_tx_ack(t0, GatewayEui::new(1), [7, 7], TxOutcome::TooLate));
        assert!(!s.on_tx_ack(t0, GatewayEui::new(2), [7, 7], TxOutcome::TooLate));
        // TOO_LATE asked for 50 ms more lead: 4.9 s after the uplink RX1 is out of reach now.
        let late = join_candidates(t0 + 4890 * MS, &[rx(1, 5.0, -80, t0)]);
        let p = s.place(t0 + 4890 * MS, Purpose::JoinAccept, &late).unwrap();
        assert_eq!(p.candidate.at.window, Window::Rx2);
    }
}
