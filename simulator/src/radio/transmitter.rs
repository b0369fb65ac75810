//! A gateway's transmitter, as the Semtech packet forwarder (`lora_pkt_fwd`, its just-in-time
//! queue `jitqueue.c`) and a duty-cycle-enforcing forwarder (ChirpStack Concentratord) judge a
//! PULL_RESP: one transmission at a time, a bounded queue, a deadline to program the radio, and
//! the region's duty cycle per sub-band. Pure: the caller passes the time.
//!
//! | check, in order | refused with (TX_ACK `error`) |
//! |---|---|
//! | [`JIT_QUEUE_MAX`] transmissions already waiting | `COLLISION_PACKET` (what `lora_pkt_fwd` answers for `JIT_ERROR_FULL`) |
//! | starts less than [`TX_START_DELAY_US`] + [`TX_MARGIN_DELAY_US`] + [`TX_JIT_DELAY_US`] (32.5 ms) from now, or in the past | `TOO_LATE` |
//! | overlaps a queued transmission, each widened by the forwarder's pre-delay (31.5 ms before) and margin (1 ms) | `COLLISION_PACKET` |
//! | its sub-band's duty-cycle budget ([`super::duty_cycle`]) | `DUTY_CYCLE_OVERFLOW` (Concentratord's status, sent as is by the ChirpStack UDP forwarder) |

use protocol::gwmp::TxAckCode;
use protocol::region::Region;

use super::duty_cycle::DutyCycleTracker;
use crate::sched::Micros;

/// `lora_pkt_fwd`'s TX_START_DELAY: the radio needs the packet this long before it starts.
pub const TX_START_DELAY_US: Micros = 1_500;
/// `lora_pkt_fwd`'s TX_MARGIN_DELAY: margin between two transmissions.
pub const TX_MARGIN_DELAY_US: Micros = 1_000;
/// `lora_pkt_fwd`'s TX_JIT_DELAY: the just-in-time thread programs a packet this long ahead.
pub const TX_JIT_DELAY_US: Micros = 30_000;
/// `lora_pkt_fwd`'s JIT_QUEUE_MAX: downlinks waiting at most.
pub const JIT_QUEUE_MAX: usize = 32;
/// The TX_ACK error of a duty-cycle refusal.
pub const DUTY_CYCLE_OVERFLOW: &str = "DUTY_CYCLE_OVERFLOW";
/// How long past transmissions are remembered, to tell whether the gateway was deaf during an
/// uplink that ends later (longer than any LoRaWAN frame: 2.8 s at SF12).
const HISTORY_US: Micros = 5_000_000;

/// Why a gateway refused a downlink.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// Too close to now (or past) to be programmed.
    TooLate,
    /// Overlaps a transmission already queued.
    Collision,
    /// The queue is full.
    QueueFull,
    /// The sub-band's duty-cycle budget would be exceeded.
    DutyCycle,
}

impl Refusal {
    /// The TX_ACK error code a real forwarder sends.
    pub fn code(self) -> TxAckCode {
        match self {
            Self::TooLate => TxAckCode::TooLate,
            Self::Collision | Self::QueueFull => TxAckCode::CollisionPacket,
            Self::DutyCycle => TxAckCode::Other(DUTY_CYCLE_OVERFLOW.to_owned()),
        }
    }
}

/// A transmission the gateway accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Queued {
    start: Micros,
    airtime: Micros,
}

impl Queued {
    fn end(self) -> Micros {
        self.start + self.airtime
    }
}

/// One gateway's transmitter.
#[derive(Clone, Debug)]
pub struct Transmitter {
    region: Region,
    queue: Vec<Queued>,
    /// One tracker per sub-band of the region (none where RP002 sets no duty cycle).
    bands: Vec<DutyCycleTracker>,
}

/// `lora_pkt_fwd`'s `jit_collision_test`: whether two downlinks, each with its pre-delay before
/// and its time on air after, come closer than the margin.
fn jit_collision(a: Queued, b: Queued) -> bool {
    let pre = TX_START_DELAY_US + TX_JIT_DELAY_US;
    if a.start >= b.start {
        a.start - b.start <= pre + b.airtime + TX_MARGIN_DELAY_US
    } else {
        b.start - a.start <= pre + a.airtime + TX_MARGIN_DELAY_US
    }
}

impl Transmitter {
    /// A transmitter in `region`, with its duty cycles measured over `window` µs (see
    /// [`super::duty_cycle::DUTY_CYCLE_WINDOW_US`]).
    pub fn new(region: Region, window: Micros) -> Self {
        let bands = region
            .params()
            .sub_bands
            .iter()
            .map(|b| DutyCycleTracker::new(b.duty_cycle, window))
            .collect();
        Self {
            region,
            queue: Vec::new(),
            bands,
        }
    }

    fn band(&self, freq_hz: u32) -> Option<usize> {
        self.region
            .params()
            .sub_bands
            .iter()
            .position(|b| (b.range_hz.0..b.range_hz.1).contains(&freq_hz))
    }

    /// A PULL_RESP received at `now` asks for a transmission of `airtime` µs at `start` on
    /// `freq_hz`: accepts and queues it, or says why not.
    pub fn request(
        &mut self,
        now: Micros,
        start: Micros,
        airtime: Micros,
        freq_hz: u32,
    ) -> Result<(), Refusal> {
        self.prune(now);
        let new = Queued { start, airtime };
        if self.queue.iter().filter(|q| q.start > now).count() >= JIT_QUEUE_MAX {
            return Err(Refusal::QueueFull);
        }
        if start <= now + TX_START_DELAY_US + TX_MARGIN_DELAY_US + TX_JIT_DELAY_US {
            return Err(Refusal::TooLate);
        }
        if self.queue.iter().any(|&q| jit_collision(new, q)) {
            return Err(Refusal::Collision);
        }
        let band = self.band(freq_hz);
        if let Some(b) = band.and_then(|i| self.bands.get(i)) {
            if !b.fits(start, new.end()) {
                return Err(Refusal::DutyCycle);
            }
        }
        if let Some(b) = band.and_then(|i| self.bands.get_mut(i)) {
            b.insert(start, new.end());
        }
        self.queue.push(new);
        Ok(())
    }

    /// Whether the gateway transmits at any moment of `[from, to)` (it hears nothing then).
    pub fn transmitting(&self, from: Micros, to: Micros) -> bool {
        self.queue.iter().any(|q| q.start < to && q.end() > from)
    }

    /// Airtime used in the window ending at `at` and the budget, of the sub-band holding
    /// `freq_hz`; `None` where the region sets no duty cycle there.
    pub fn duty_cycle(&self, freq_hz: u32, at: Micros) -> Option<(Micros, Micros)> {
        let b = self.bands.get(self.band(freq_hz)?)?;
        Some((b.used(at), b.budget()))
    }

    fn prune(&mut self, now: Micros) {
        let keep_from = now.saturating_sub(HISTORY_US);
        self.queue.retain(|q| q.end() > keep_from);
        for b in &mut self.bands {
            b.prune(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::radio::duty_cycle::DUTY_CYCLE_WINDOW_US;

    const MS: Micros = 1_000;
    const S: Micros = 1_000_000;
    /// A 33-byte Join-accept at SF7/125 kHz: 70.25 symbols of 1.024 ms.
    const ACCEPT_SF7: Micros = 71_936;

    fn eu868() -> Transmitter {
        Transmitter::new(Region::Eu868, DUTY_CYCLE_WINDOW_US)
    }

    #[test]
    fn one_transmission_at_a_time() {
        let mut tx = eu868();
        assert_eq!(tx.request(0, 5 * S, ACCEPT_SF7, 868_100_000), Ok(()));
        // Same moment, and one starting while the first is on air: COLLISION_PACKET.
        assert_eq!(
            tx.request(0, 5 * S, ACCEPT_SF7, 868_300_000),
            Err(Refusal::Collision)
        );
        assert_eq!(
            tx.request(MS, 5 * S + 50 * MS, ACCEPT_SF7, 868_500_000),
            Err(Refusal::Collision)
        );
        // Another frequency or sub-band does not help: one radio. One ending just before the
        // first's pre-delay does not fit either; one after its end + pre-delay + margin does.
        assert_eq!(
            tx.request(MS, 5 * S - 100 * MS, ACCEPT_SF7, 869_525_000),
            Err(Refusal::Collision)
        );
        let gap = ACCEPT_SF7 + TX_START_DELAY_US + TX_JIT_DELAY_US + TX_MARGIN_DELAY_US;
        assert_eq!(
            tx.request(MS, 5 * S + gap, ACCEPT_SF7, 868_100_000),
            Err(Refusal::Collision),
            "exactly at the margin still collides"
        );
        assert_eq!(
            tx.request(MS, 5 * S + gap + 1, ACCEPT_SF7, 868_100_000),
            Ok(())
        );
        // The gateway is deaf while it transmits.
        assert!(tx.transmitting(5 * S - 10 * MS, 5 * S + MS));
        assert!(!tx.transmitting(5 * S + ACCEPT_SF7, 5 * S + gap));
        assert_eq!(
            Refusal::Collision.code().as_str(),
            "COLLISION_PACKET",
            "lora_pkt_fwd's code"
        );
    }

    #[test]
    fn too_late_and_queue_full() {
        let mut tx = eu868();
        let now = 10 * S;
        let limit = TX_START_DELAY_US + TX_MARGIN_DELAY_US + TX_JIT_DELAY_US;
        assert_eq!(limit, 32_500);
        assert_eq!(
            tx.request(now, now - 1, ACCEPT_SF7, 868_100_000),
            Err(Refusal::TooLate)
        );
        assert_eq!(
            tx.request(now, now + limit, ACCEPT_SF7, 868_100_000),
            Err(Refusal::TooLate)
        );
        assert_eq!(
            tx.request(now, now + limit + 1, ACCEPT_SF7, 868_100_000),
            Ok(())
        );
        assert_eq!(Refusal::TooLate.code().as_str(), "TOO_LATE");
        // 31 more, one every 200 ms on the 10 % RX2 sub-band: 32 waiting, the 33rd is refused.
        for k in 1..32 {
            let at = now + k * 200 * MS;
            assert_eq!(tx.request(now, at, ACCEPT_SF7, 869_525_000), Ok(()), "{k}");
        }
        assert_eq!(
            tx.request(now, now + 100 * S, ACCEPT_SF7, 869_525_000),
            Err(Refusal::QueueFull)
        );
        assert_eq!(Refusal::QueueFull.code().as_str(), "COLLISION_PACKET");
        // Once the first ones have gone out there is room again.
        assert_eq!(
            tx.request(now + 3 * S, now + 100 * S, ACCEPT_SF7, 869_525_000),
            Ok(())
        );
    }

    #[test]
    fn duty_cycle_budget_exhausted_then_restored() {
        let mut tx = eu868();
        // 868.1 MHz is in g1 (868.0–868.6 MHz, 1 %): 36 s per hour, i.e. 500 Join-accepts of
        // 71.936 ms (35.968 s); the 501st is refused, on any g1 channel, not on RX2 (g3, 10 %).
        let mut t = S;
        for k in 0..500 {
            assert_eq!(tx.request(t - S, t, ACCEPT_SF7, 868_100_000), Ok(()), "{k}");
            t += 200 * MS;
        }
        assert_eq!(tx.duty_cycle(868_300_000, t), Some((35_968_000, 36 * S)));
        for f in [868_100_000, 868_300_000, 868_500_000] {
            assert_eq!(
                tx.request(t - S, t, ACCEPT_SF7, f),
                Err(Refusal::DutyCycle),
                "{f}"
            );
        }
        assert_eq!(tx.request(t - S, t, ACCEPT_SF7, 869_525_000), Ok(()));
        assert_eq!(Refusal::DutyCycle.code().as_str(), "DUTY_CYCLE_OVERFLOW");
        // An hour after the first one, its airtime has left the window.
        let later = S + DUTY_CYCLE_WINDOW_US + ACCEPT_SF7;
        assert_eq!(
            tx.request(later - S, later, ACCEPT_SF7, 868_100_000),
            Ok(())
        );
        // US915 has no duty cycle.
        let us = Transmitter::new(Region::Us915, DUTY_CYCLE_WINDOW_US);
        assert_eq!(us.duty_cycle(923_300_000, 0), None);
    }
}
