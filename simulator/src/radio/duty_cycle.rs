//! A gateway's duty-cycle accounting for one regulatory sub-band, as a forwarder that enforces it
//! does (ChirpStack Concentratord's regulation tracker, behind the ChirpStack UDP forwarder): the
//! time on air of the transmissions in any sliding window of [`DUTY_CYCLE_WINDOW_US`] (one hour,
//! ETSI EN 300 220's observation period) may not exceed the sub-band's duty cycle × the window
//! (EU868 g1 1 %: 36 s per hour; g3, the RX2 sub-band, 10 %: 360 s per hour). A transmission that
//! would exceed it, in its own window or in the window of one already accepted after it, is
//! refused (TX_ACK `DUTY_CYCLE_OVERFLOW`).

use std::collections::VecDeque;

use crate::sched::Micros;

/// The sliding window over which a duty cycle is measured: one hour.
pub const DUTY_CYCLE_WINDOW_US: Micros = 3_600_000_000;

/// The transmissions of one sub-band and its budget.
#[derive(Clone, Debug, PartialEq)]
pub struct DutyCycleTracker {
    window: Micros,
    max_airtime: Micros,
    /// (start, end) of each transmission still inside some window, in start order.
    items: VecDeque<(Micros, Micros)>,
}

/// Time on air of `[start, end)` inside `[from, to)`.
fn overlap((start, end): (Micros, Micros), from: Micros, to: Micros) -> Micros {
    end.min(to).saturating_sub(start.max(from))
}

impl DutyCycleTracker {
    /// A tracker for duty cycle `dc` (0..=1) over `window` µs.
    pub fn new(dc: f64, window: Micros) -> Self {
        Self {
            window,
            max_airtime: (dc.clamp(0.0, 1.0) * window as f64) as Micros,
            items: VecDeque::new(),
        }
    }

    /// The most time on air any window may hold, µs.
    pub fn budget(&self) -> Micros {
        self.max_airtime
    }

    /// Time on air in the window that ends at `at`.
    pub fn used(&self, at: Micros) -> Micros {
        let from = at.saturating_sub(self.window);
        self.items.iter().map(|&i| overlap(i, from, at)).sum()
    }

    /// Whether a transmission of `[start, end)` fits: its own window (ending at `end`) and the
    /// window of every transmission accepted after it stay within the budget.
    pub fn fits(&self, start: Micros, end: Micros) -> bool {
        let d = end.saturating_sub(start);
        if self.used(end) + d > self.max_airtime {
            return false;
        }
        self.items
            .iter()
            .filter(|i| i.0 > start)
            .all(|&(_, e)| self.used(e) + d <= self.max_airtime)
    }

    /// Records a transmission of `[start, end)` (after [`DutyCycleTracker::fits`]).
    pub fn insert(&mut self, start: Micros, end: Micros) {
        let at = self.items.partition_point(|i| i.0 <= start);
        self.items.insert(at, (start, end));
    }

    /// Forgets transmissions that no window ending at `now` or later can hold.
    pub fn prune(&mut self, now: Micros) {
        let from = now.saturating_sub(self.window);
        self.items.retain(|&(_, e)| e > from);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Micros = 1_000_000;

    #[test]
    fn one_percent_of_an_hour_is_36_s_and_comes_back_an_hour_later() {
        let mut t = DutyCycleTracker::new(0.01, DUTY_CYCLE_WINDOW_US);
        assert_eq!(t.budget(), 36 * S);
        // Twelve 3-second transmissions, one every 10 s: exactly the budget.
        for k in 0..12 {
            let start = k * 10 * S;
            assert!(t.fits(start, start + 3 * S), "transmission {k}");
            t.insert(start, start + 3 * S);
        }
        assert_eq!(t.used(120 * S), 36 * S);
        // Even 1 µs more is refused until the first one slides out of the window.
        assert!(!t.fits(200 * S, 200 * S + 1));
        assert!(
            !t.fits(3599 * S, 3600 * S),
            "the window ending at 3600 s holds all twelve"
        );
        assert!(
            t.fits(3600 * S, 3601 * S),
            "the first second of the first one has left the window"
        );
        assert!(
            t.fits(3600 * S, 3603 * S),
            "the first one is out of that window"
        );
        assert!(!t.fits(3600 * S, 3603 * S + 1));
        // After two hours everything is free again, and pruning forgets it.
        t.prune(2 * 3600 * S);
        assert!(t.items.is_empty());
        assert!(t.fits(7200 * S, 7236 * S));
    }

    #[test]
    fn an_earlier_transmission_may_not_overflow_a_later_ones_window() {
        let mut t = DutyCycleTracker::new(0.01, 100 * S); // 1 s per 100 s
        t.insert(50 * S, 51 * S);
        // Fits its own window ([−60 s, 40 s)), but the window ending at 51 s would hold 1.5 s.
        assert_eq!(t.used(40 * S + S / 2), 0);
        assert!(!t.fits(40 * S, 40 * S + S / 2));
        assert!(
            t.fits(150 * S, 151 * S),
            "the window ending at 151 s starts at 51 s"
        );
        assert!(!t.fits(149 * S + S / 2, 150 * S + S / 2));
    }
}
