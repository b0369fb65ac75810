//! One gateway's downlink airtime, as the network server sees it: the transmissions it has
//! scheduled on the gateway (each on the gateway's own µs counter, the `tmst` of its
//! PULL_RESP, so that overlaps are judged exactly as the gateway's just-in-time queue judges
//! them) and what they cost each regulatory sub-band's duty-cycle budget.
//!
//! A gateway transmits one downlink at a time: a transmission overlapping another (with a
//! guard time) would be refused with `TX_ACK` `COLLISION_PACKET`, as would one beyond its queue
//! of scheduled downlinks (the SX1301 packet forwarder's just-in-time queue holds 32). In a
//! region with duty-cycle sub-bands (EU868: RP002 §2.4, ETSI EN 300 220), the airtime scheduled
//! in a sub-band over the observation window (ETSI: one hour) stays within the sub-band's duty
//! cycle of that window; Join-accepts may use only a share of it, so that a join storm leaves
//! room for data downlinks (ACKs of confirmed uplinks, MAC answers).
//!
//! Pure: every method takes `now`; the tests drive it with a fake clock.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use protocol::region::Region;
use serde::Serialize;

/// What a downlink is (Join-accepts have only a share of each duty-cycle budget).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// A Join-accept.
    JoinAccept,
    /// A data downlink (ACK, MAC answers, application payload).
    Data,
}

impl Purpose {
    /// Metric label.
    pub const fn label(self) -> &'static str {
        match self {
            Self::JoinAccept => "join_accept",
            Self::Data => "data",
        }
    }
}

/// The scheduler's limits (`[scheduler]`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// The duty-cycle observation window (ETSI EN 300 220: one hour).
    pub duty_cycle_window: Duration,
    /// The share of each sub-band's budget Join-accepts may use, 0..=1.
    pub join_accept_share: f64,
    /// Most downlinks scheduled ahead on one gateway (its just-in-time queue).
    pub max_queued: usize,
    /// Least idle time between two transmissions of one gateway.
    pub guard: Duration,
}

/// A transmission to place on a gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transmission {
    /// When it starts on the gateway's counter (the PULL_RESP's `tmst`).
    pub tmst: u32,
    /// When it starts, estimated on the local clock.
    pub starts_at: Instant,
    /// Its time on air.
    pub airtime: Duration,
    /// Its frequency, Hz (which sub-band pays for it).
    pub frequency_hz: u32,
}

/// Why a gateway cannot take a transmission.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Busy {
    /// It overlaps another transmission of the gateway (`COLLISION_PACKET`).
    Collision,
    /// The sub-band's duty-cycle budget (or the Join-accepts' share of it) is spent.
    DutyCycle,
    /// The gateway's queue of scheduled downlinks is full.
    QueueFull,
    /// The window opens too soon for this gateway (it answered `TOO_LATE` before and needs
    /// more lead than is left).
    Lead,
}

impl Busy {
    /// Metric label.
    pub const fn label(self) -> &'static str {
        match self {
            Self::Collision => "busy",
            Self::DutyCycle => "duty_cycle",
            Self::QueueFull => "queue_full",
            Self::Lead => "lead",
        }
    }
}

/// How a gateway answered one of its transmissions (GWMP `TX_ACK`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxOutcome {
    /// Accepted for transmission.
    Sent,
    /// `TOO_LATE`: the PULL_RESP reached the gateway after its deadline.
    TooLate,
    /// `COLLISION_PACKET`: something the scheduler did not know occupies that time.
    Collision,
    /// The gateway's own duty-cycle accounting refused it (`DUTY_CYCLE_OVERFLOW`, ...).
    DutyCycle,
    /// Any other refusal (frequency, power, GPS): not transmitted.
    Refused,
}

impl TxOutcome {
    /// Metric label.
    pub const fn label(self) -> &'static str {
        match self {
            Self::Sent => "none",
            Self::TooLate => "too_late",
            Self::Collision => "collision",
            Self::DutyCycle => "duty_cycle",
            Self::Refused => "refused",
        }
    }
}

/// A transmission booked on the gateway.
#[derive(Debug, Clone, Copy)]
struct Booked {
    id: u64,
    tx: Transmission,
    band: Option<usize>,
    token: Option<[u8; 2]>,
}

/// Counters of one gateway's scheduling.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AirtimeStats {
    /// Downlinks booked on it.
    pub scheduled: u64,
    /// Their airtime, µs (refused ones taken back).
    pub airtime_us: u64,
    /// Downlinks for which it was the first choice but that went in another window or
    /// through another gateway, for lack of airtime here.
    pub deferred: u64,
    /// Downlinks for which it was the first choice and that no gateway could transmit.
    pub dropped: u64,
    /// Its transmissions it refused (TX_ACK error), each taken back from the schedule.
    pub refused: u64,
}

/// One sub-band's budget, as served on `/gateways`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BandSnapshot {
    /// `[low, high)`, Hz.
    pub range_hz: (u32, u32),
    /// Its duty cycle.
    pub duty_cycle: f64,
    /// Airtime booked in the current observation window, s.
    pub used_s: f64,
    /// Airtime left in the observation window, s.
    pub budget_left_s: f64,
}

/// A gateway's airtime state, as served on `/gateways`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AirtimeSnapshot {
    /// Downlinks scheduled and not yet started.
    pub queued: usize,
    /// Extra lead added to its windows after `TOO_LATE` refusals, ms.
    pub extra_margin_ms: u64,
    /// Per duty-cycle sub-band (none in regions without duty cycle).
    pub sub_bands: Vec<BandSnapshot>,
    /// Counters.
    pub stats: AirtimeStats,
}

/// Where a `TOO_LATE` moves a gateway's extra lead, and its ceiling.
const TOO_LATE_STEP: Duration = Duration::from_millis(50);
const TOO_LATE_MAX: Duration = Duration::from_secs(1);
/// How much each transmission the gateway accepts takes back of the extra lead.
const SENT_DECAY: Duration = Duration::from_millis(5);

/// One gateway's schedule and budgets.
#[derive(Debug, Clone)]
pub struct GatewayAirtime {
    region: Region,
    booked: VecDeque<Booked>,
    /// Sub-bands the gateway itself declared spent (a duty-cycle TX_ACK), until when.
    blocked: Vec<(usize, Instant)>,
    extra_margin: Duration,
    stats: AirtimeStats,
}

/// The duty-cycle sub-band of `freq_hz` in `region`: its index and duty cycle.
pub fn sub_band(region: Region, freq_hz: u32) -> Option<(usize, f64)> {
    region
        .params()
        .sub_bands
        .iter()
        .position(|b| (b.range_hz.0..b.range_hz.1).contains(&freq_hz))
        .map(|i| (i, region.params().sub_bands[i].duty_cycle))
}

/// Whether `a` and `b` overlap on the gateway's wrapping µs counter, `guard` apart at least.
fn overlaps(a: &Transmission, b: &Transmission, guard: Duration) -> bool {
    let us = |d: Duration| i64::try_from(d.as_micros()).unwrap_or(i64::MAX / 4);
    // Signed distance from b's start to a's start, within ±35 minutes of the counter.
    let x = i64::from(a.tmst.wrapping_sub(b.tmst) as i32);
    x < us(b.airtime) + us(guard) && -x < us(a.airtime) + us(guard)
}

impl GatewayAirtime {
    /// An idle gateway in `region`.
    pub fn new(region: Region) -> Self {
        Self {
            region,
            booked: VecDeque::new(),
            blocked: Vec::new(),
            extra_margin: Duration::ZERO,
            stats: AirtimeStats::default(),
        }
    }

    /// The extra lead its windows need (after `TOO_LATE` refusals).
    pub fn extra_margin(&self) -> Duration {
        self.extra_margin
    }

    /// Forgets transmissions that ended longer than the observation window ago.
    fn prune(&mut self, now: Instant, limits: &Limits) {
        let keep = |b: &Booked| b.tx.starts_at + b.tx.airtime + limits.duty_cycle_window > now;
        self.booked.retain(keep);
        self.blocked.retain(|&(_, until)| until > now);
    }

    /// Airtime booked in sub-band `band` that counts against a transmission starting at `at`.
    fn used(&self, band: usize, at: Instant, limits: &Limits) -> Duration {
        self.booked
            .iter()
            .filter(|b| b.band == Some(band) && b.tx.starts_at + limits.duty_cycle_window > at)
            .map(|b| b.tx.airtime)
            .sum()
    }

    /// Whether the gateway can take `tx` for `purpose`, as of `now`.
    pub fn fits(
        &mut self,
        now: Instant,
        tx: &Transmission,
        purpose: Purpose,
        limits: &Limits,
    ) -> Result<(), Busy> {
        self.prune(now, limits);
        if self.queued(now) >= limits.max_queued {
            return Err(Busy::QueueFull);
        }
        // Only transmissions not yet over can collide. Their local end is estimated from the
        // uplink's arrival, later than the true end of the uplink by the backhaul latency:
        // the estimate errs on the side of "not over". (This also keeps gateways whose counter
        // jumps, as test gateways' do, from colliding with transmissions long past.)
        let pending = |b: &&Booked| b.tx.starts_at + b.tx.airtime + limits.guard > now;
        if self
            .booked
            .iter()
            .filter(pending)
            .any(|b| overlaps(tx, &b.tx, limits.guard))
        {
            return Err(Busy::Collision);
        }
        let Some((band, duty_cycle)) = sub_band(self.region, tx.frequency_hz) else {
            return Ok(());
        };
        if self
            .blocked
            .iter()
            .any(|&(b, until)| b == band && until > tx.starts_at)
        {
            return Err(Busy::DutyCycle);
        }
        let share = match purpose {
            Purpose::JoinAccept => limits.join_accept_share,
            Purpose::Data => 1.0,
        };
        let budget = limits.duty_cycle_window.mul_f64(duty_cycle * share);
        if self.used(band, tx.starts_at, limits) + tx.airtime > budget {
            return Err(Busy::DutyCycle);
        }
        Ok(())
    }

    /// Downlinks booked that have not started by `now`.
    pub fn queued(&self, now: Instant) -> usize {
        self.booked.iter().filter(|b| b.tx.starts_at > now).count()
    }

    /// Books `tx` as transmission `id` (after [`Self::fits`]).
    pub fn book(&mut self, id: u64, tx: Transmission) {
        let band = sub_band(self.region, tx.frequency_hz).map(|(b, _)| b);
        self.booked.push_back(Booked {
            id,
            tx,
            band,
            token: None,
        });
        self.stats.scheduled += 1;
        self.stats.airtime_us += tx.airtime.as_micros() as u64;
    }

    /// Names transmission `id` by the token of its PULL_RESP (what its TX_ACK echoes).
    pub fn set_token(&mut self, id: u64, token: [u8; 2]) {
        if let Some(b) = self.booked.iter_mut().find(|b| b.id == id) {
            b.token = Some(token);
        }
    }

    /// Takes transmission `id` back (its downlink is not sent after all).
    pub fn release(&mut self, id: u64) {
        if let Some(i) = self.booked.iter().position(|b| b.id == id) {
            let b = self.booked.remove(i).expect("index found");
            self.stats.airtime_us = self
                .stats
                .airtime_us
                .saturating_sub(b.tx.airtime.as_micros() as u64);
        }
    }

    /// Counts a downlink that went elsewhere although this gateway was the first choice.
    pub fn count_deferred(&mut self) {
        self.stats.deferred += 1;
    }

    /// Counts a downlink that could not go anywhere although this gateway was the first choice.
    pub fn count_dropped(&mut self) {
        self.stats.dropped += 1;
    }

    /// The gateway's TX_ACK for the PULL_RESP of `token`, at `now`: a refusal takes the
    /// transmission back and updates the view of the gateway (`TOO_LATE`: more lead for its
    /// windows; duty cycle: the sub-band is taken as spent for the off-time the transmission
    /// would have cost; `COLLISION_PACKET`: the interval stays occupied, by whatever the gateway
    /// has there). Returns whether the token named a booked transmission.
    pub fn on_tx_ack(&mut self, now: Instant, token: [u8; 2], outcome: TxOutcome) -> bool {
        let Some(i) = self.booked.iter().position(|b| b.token == Some(token)) else {
            return false;
        };
        let b = self.booked[i];
        match outcome {
            TxOutcome::Sent => {
                self.extra_margin = self.extra_margin.saturating_sub(SENT_DECAY);
                return true;
            }
            TxOutcome::TooLate => {
                self.extra_margin = (self.extra_margin + TOO_LATE_STEP).min(TOO_LATE_MAX);
            }
            TxOutcome::DutyCycle => {
                if let Some((band, dc)) = sub_band(self.region, b.tx.frequency_hz) {
                    let off = b.tx.airtime.div_f64(dc.max(1e-6));
                    self.blocked.push((band, now.max(b.tx.starts_at) + off));
                }
            }
            TxOutcome::Collision => {
                // Occupied by something else: keep the interval, but it is not ours.
                self.booked[i].token = None;
                self.stats.refused += 1;
                return true;
            }
            TxOutcome::Refused => {}
        }
        self.stats.refused += 1;
        self.release(b.id);
        true
    }

    /// The gateway's budgets and counters as of `now`.
    pub fn snapshot(&mut self, now: Instant, limits: &Limits) -> AirtimeSnapshot {
        self.prune(now, limits);
        let sub_bands = self
            .region
            .params()
            .sub_bands
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let budget = limits.duty_cycle_window.mul_f64(b.duty_cycle);
                let used = self.used(i, now, limits);
                BandSnapshot {
                    range_hz: b.range_hz,
                    duty_cycle: b.duty_cycle,
                    used_s: used.as_secs_f64(),
                    budget_left_s: budget.saturating_sub(used).as_secs_f64(),
                }
            })
            .collect();
        AirtimeSnapshot {
            queued: self.booked.iter().filter(|b| b.tx.starts_at > now).count(),
            extra_margin_ms: self.extra_margin.as_millis() as u64,
            sub_bands,
            stats: self.stats.clone(),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// The default limits with a 5 ms guard (the scheduler's tests use them too).
    pub(crate) fn limits() -> Limits {
        Limits {
            duty_cycle_window: Duration::from_secs(3600),
            join_accept_share: 0.9,
            max_queued: 32,
            guard: 5 * MS,
        }
    }

    fn tx(t0: Instant, at_ms: u64, airtime_ms: u64, freq: u32) -> Transmission {
        Transmission {
            tmst: 1_000_000 + (at_ms * 1000) as u32,
            starts_at: t0 + Duration::from_millis(at_ms),
            airtime: Duration::from_millis(airtime_ms),
            frequency_hz: freq,
        }
    }

    #[test]
    fn overlap_on_the_wrapping_counter() {
        let t0 = Instant::now();
        let a = tx(t0, 0, 100, 868_100_000);
        let g = 5 * MS;
        assert!(overlaps(&a, &tx(t0, 50, 100, 868_100_000), g));
        assert!(overlaps(&a, &tx(t0, 104, 10, 868_100_000), g)); // inside the guard
        assert!(!overlaps(&a, &tx(t0, 105, 10, 868_100_000), g));
        assert!(!overlaps(&tx(t0, 105, 10, 868_100_000), &a, g));
        assert!(overlaps(&tx(t0, 0, 1, 0), &tx(t0, 0, 1, 0), Duration::ZERO));
        // Across the counter's wrap: 100 µs before 2^32 and 50 µs after.
        let w = |tmst| Transmission { tmst, ..a };
        assert!(overlaps(&w(u32::MAX - 100), &w(50), Duration::ZERO));
        assert!(!overlaps(&w(u32::MAX - 200_000), &w(50), Duration::ZERO));
    }

    #[test]
    fn one_transmission_at_a_time() {
        let t0 = Instant::now();
        let mut g = GatewayAirtime::new(Region::Eu868);
        let first = tx(t0, 5000, 62, 868_100_000);
        assert_eq!(g.fits(t0, &first, Purpose::JoinAccept, &limits()), Ok(()));
        g.book(1, first);
        let second = tx(t0, 5030, 62, 868_300_000);
        assert_eq!(
            g.fits(t0, &second, Purpose::JoinAccept, &limits()),
            Err(Busy::Collision)
        );
        // After the first and its guard: fine.
        let later = tx(t0, 5067, 62, 868_300_000);
        assert_eq!(g.fits(t0, &later, Purpose::JoinAccept, &limits()), Ok(()));
        // Once the first is over (local time), its counter interval no longer matters.
        let over = t0 + Duration::from_millis(5070);
        assert_eq!(
            g.fits(over, &second, Purpose::JoinAccept, &limits()),
            Ok(())
        );
        // Taken back: the time is free again.
        g.release(1);
        assert_eq!(g.fits(t0, &second, Purpose::Data, &limits()), Ok(()));
        assert_eq!(g.snapshot(t0, &limits()).stats.airtime_us, 0);
    }

    #[test]
    fn duty_cycle_budget_spent_then_restored_over_the_window() {
        let t0 = Instant::now();
        let mut lim = limits();
        lim.duty_cycle_window = Duration::from_secs(100); // 1 % of it: 1 s in g1
        lim.join_accept_share = 1.0;
        let mut g = GatewayAirtime::new(Region::Eu868);
        for i in 0..4 {
            let t = tx(t0, 1000 * i, 250, 868_100_000);
            assert_eq!(g.fits(t0, &t, Purpose::JoinAccept, &lim), Ok(()), "#{i}");
            g.book(i, t);
        }
        let fifth = tx(t0, 5000, 250, 868_500_000);
        assert_eq!(
            g.fits(t0, &fifth, Purpose::JoinAccept, &lim),
            Err(Busy::DutyCycle)
        );
        // Another sub-band has its own budget: RX2 on 869.525 MHz (10 %).
        let rx2 = tx(t0, 5000, 250, 869_525_000);
        assert_eq!(g.fits(t0, &rx2, Purpose::JoinAccept, &lim), Ok(()));
        let snap = g.snapshot(t0 + 4000 * MS, &lim);
        assert_eq!(snap.sub_bands[1].used_s, 1.0);
        assert_eq!(snap.sub_bands[1].budget_left_s, 0.0);
        assert!((snap.sub_bands[3].budget_left_s - 10.0).abs() < 1e-9);
        // Once the first transmission is out of the window, its airtime is available again.
        let later = tx(t0, 100_001, 250, 868_100_000);
        assert_eq!(
            g.fits(t0 + 100_001 * MS, &later, Purpose::Data, &lim),
            Ok(())
        );
    }

    #[test]
    fn join_accepts_leave_a_share_for_data() {
        let t0 = Instant::now();
        let mut lim = limits();
        lim.duty_cycle_window = Duration::from_secs(100); // 1 s in g1
        let mut g = GatewayAirtime::new(Region::Eu868);
        g.book(1, tx(t0, 0, 850, 868_100_000));
        let t = tx(t0, 2000, 100, 868_100_000);
        // 0.85 + 0.1 > 0.9 s for a Join-accept, within 1 s for data.
        assert_eq!(
            g.fits(t0, &t, Purpose::JoinAccept, &lim),
            Err(Busy::DutyCycle)
        );
        assert_eq!(g.fits(t0, &t, Purpose::Data, &lim), Ok(()));
    }

    #[test]
    fn no_duty_cycle_outside_sub_bands_but_one_at_a_time_and_a_queue_limit() {
        let t0 = Instant::now();
        let mut lim = limits();
        lim.max_queued = 3;
        let mut g = GatewayAirtime::new(Region::Us915);
        for i in 0..3 {
            let t = tx(t0, 1000 + 3000 * i, 2000, 923_300_000);
            assert_eq!(g.fits(t0, &t, Purpose::JoinAccept, &lim), Ok(()));
            g.book(i, t);
        }
        let t = tx(t0, 20_000, 100, 923_300_000);
        assert_eq!(
            g.fits(t0, &t, Purpose::JoinAccept, &lim),
            Err(Busy::QueueFull)
        );
        // Once the first has started, the queue has room.
        assert_eq!(
            g.fits(t0 + 1500 * MS, &t, Purpose::JoinAccept, &lim),
            Ok(())
        );
    }

    #[test]
    fn tx_ack_refusals_update_the_view() {
        let t0 = Instant::now();
        let lim = limits();
        let mut g = GatewayAirtime::new(Region::Eu868);
        let a = tx(t0, 5000, 100, 868_100_000);
        g.book(1, a);
        g.set_token(1, [1, 1]);
        assert!(
            !g.on_tx_ack(t0, [9, 9], TxOutcome::TooLate),
            "unknown token"
        );
        // TOO_LATE: taken back, more lead asked of this gateway.
        assert!(g.on_tx_ack(t0, [1, 1], TxOutcome::TooLate));
        assert_eq!(g.extra_margin(), 50 * MS);
        assert_eq!(g.fits(t0, &a, Purpose::Data, &lim), Ok(()));
        // Duty cycle: taken back, and the sub-band is spent for the airtime's off-time (100 ×).
        g.book(2, a);
        g.set_token(2, [2, 2]);
        assert!(g.on_tx_ack(t0, [2, 2], TxOutcome::DutyCycle));
        let b = tx(t0, 6000, 100, 868_300_000);
        assert_eq!(g.fits(t0, &b, Purpose::Data, &lim), Err(Busy::DutyCycle));
        let after = tx(t0, 15_001, 100, 868_300_000);
        assert_eq!(g.fits(t0, &after, Purpose::Data, &lim), Ok(()));
        assert_eq!(
            g.fits(t0, &tx(t0, 6000, 100, 869_525_000), Purpose::Data, &lim),
            Ok(())
        );
        // COLLISION_PACKET: the interval stays occupied.
        g.book(3, a);
        g.set_token(3, [3, 3]);
        assert!(g.on_tx_ack(t0, [3, 3], TxOutcome::Collision));
        assert_eq!(g.fits(t0, &a, Purpose::Data, &lim), Err(Busy::Collision));
        assert_eq!(g.snapshot(t0, &lim).stats.refused, 3);
        // Accepted transmissions let the extra lead decay.
        g.book(4, tx(t0, 9000, 10, 869_525_000));
        g.set_token(4, [4, 4]);
        assert!(g.on_tx_ack(t0, [4, 4], TxOutcome::Sent));
        assert_eq!(g.extra_margin(), 45 * MS);
    }
}
