//! Join-storm protection per device: a DevEUI's Join-requests are answered at most at the rate
//! the specification allows a device to send them.
//!
//! LoRaWAN 1.0.4 §7 and 1.1 §6.2.7 (retransmission back-off) bound a device's Join-request
//! airtime: at most 36 s aggregated in the first hour after power-up, 36 s in the next ten
//! hours, and 8.7 s per 24 hours after that. The first-hour allowance is the loosest, so a
//! device is never faster than a token bucket holding `burst` of airtime (36 s) and refilled
//! at `duty_cycle` (1 %, 36 s an hour). Each Join-request costs its time on air; one that
//! finds the bucket empty is not answered (and the join server is not asked). The bucket is
//! kept as one instant per DevEUI (GCRA: the theoretical arrival time), forgotten once full
//! again.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use protocol::ids::DevEui;

use super::KeyedHasher;

/// Per-DevEUI Join-request rate limit.
#[derive(Debug)]
pub struct JoinRateLimit {
    /// The long-run share of time a device may spend sending Join-requests.
    duty_cycle: f64,
    /// The Join-request airtime a device may spend at once.
    burst: Duration,
    /// Per device: when its bucket is full again (GCRA theoretical arrival time).
    full_at: DashMap<DevEui, Instant, KeyedHasher>,
    /// Above this many devices tracked, full buckets are swept out.
    sweep_above: usize,
    checks: AtomicUsize,
}

impl JoinRateLimit {
    /// A limit of `burst` airtime refilled at `duty_cycle` (0 or less: no limit).
    pub fn new(duty_cycle: f64, burst: Duration, sweep_above: usize) -> Self {
        Self {
            duty_cycle,
            burst,
            full_at: DashMap::with_hasher(KeyedHasher::default()),
            sweep_above,
            checks: AtomicUsize::new(0),
        }
    }

    /// Whether a Join-request of `dev_eui` that took `airtime` on air, received at `now`, is
    /// within the device's allowance; if so it is charged.
    pub fn check(&self, now: Instant, dev_eui: DevEui, airtime: Duration) -> bool {
        if self.duty_cycle <= 0.0 {
            return true;
        }
        self.sweep(now);
        // The bucket in time units: `burst / duty_cycle` of time holds `burst` of airtime.
        let cost = airtime.div_f64(self.duty_cycle);
        let depth = self.burst.div_f64(self.duty_cycle);
        let mut e = self.full_at.entry(dev_eui).or_insert(now);
        let next = (*e).max(now) + cost;
        if next.saturating_duration_since(now) > depth {
            return false;
        }
        *e = next;
        true
    }

    /// Devices tracked.
    pub fn len(&self) -> usize {
        self.full_at.len()
    }

    /// Whether no device is tracked.
    pub fn is_empty(&self) -> bool {
        self.full_at.is_empty()
    }

    /// Every 1,024 checks above the size bound, forgets the devices whose bucket is full.
    fn sweep(&self, now: Instant) {
        if self.checks.fetch_add(1, Ordering::Relaxed) % 1024 == 0
            && self.full_at.len() > self.sweep_above
        {
            self.full_at.retain(|_, full_at| *full_at > now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_device_is_answered_at_most_at_the_allowed_rate() {
        let t0 = Instant::now();
        let l = JoinRateLimit::new(0.01, Duration::from_secs(36), 0);
        let d = DevEui::new(1);
        // SF12 Join-requests (1.48 s): 24 fit in 36 s of airtime at once...
        let sf12 = Duration::from_micros(1_482_752);
        let sent = (0..30).filter(|_| l.check(t0, d, sf12)).count();
        assert_eq!(sent, 24);
        // ... then one per 148 s (1 %).
        assert!(!l.check(t0 + 100_000 * MS, d, sf12));
        assert!(l.check(t0 + 148_300 * MS, d, sf12));
        assert!(!l.check(t0 + 148_400 * MS, d, sf12));
        // Other devices have their own allowance.
        assert!(l.check(t0, DevEui::new(2), sf12));
        assert_eq!(l.len(), 2);
    }

    #[test]
    fn a_compliant_storm_is_never_limited_and_full_buckets_are_forgotten() {
        let t0 = Instant::now();
        let l = JoinRateLimit::new(0.01, Duration::from_secs(36), 10);
        let sf7 = Duration::from_micros(61_696);
        // A device retrying every 10 s (well under 1 %) for an hour.
        for i in 0..360u64 {
            assert!(
                l.check(t0 + Duration::from_secs(10 * i), DevEui::new(7), sf7),
                "try {i}"
            );
        }
        for i in 0..2000 {
            assert!(l.check(t0, DevEui::new(100 + i), sf7));
        }
        // Much later, a sweep forgets every full bucket.
        let later = t0 + Duration::from_secs(7200);
        for i in 0..1024 {
            l.check(later, DevEui::new(1_000_000 + i), sf7);
        }
        assert!(l.len() < 2000, "{} tracked", l.len());
        let off = JoinRateLimit::new(0.0, Duration::ZERO, 0);
        assert!((0..100).all(|_| off.check(t0, DevEui::new(1), sf7)));
        assert!(off.is_empty());
    }
}
