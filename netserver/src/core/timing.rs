//! Which receive window a Class-A downlink can still make.
//!
//! The gateway schedules a `PULL_RESP` at a `tmst` on its own µs counter; the network server only
//! knows local time. The uplink's `tmst` is mapped to local time by the instant its PUSH_DATA
//! arrived (`received_at`): window *n* opens at about `received_at + delay_n`. (The true end of
//! reception is a little earlier — the backhaul latency of the uplink — which makes this estimate
//! optimistic by that latency; the margin absorbs it.) A window is usable when the PULL_RESP can
//! leave at least `margin` before it opens, which covers the uplink and downlink backhaul and
//! the packet forwarder's just-in-time queue lead. RX1 is preferred; RX2 is the fallback; past
//! both, the answer is dropped and counted as `too_late`.

use std::time::{Duration, Instant};

/// A Class-A receive window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Window {
    /// The first window: uplink frequency, uplink DR minus RX1DROffset.
    Rx1,
    /// The second window: fixed frequency and DR (EU868: 869.525 MHz, DR0 by default).
    Rx2,
}

impl Window {
    /// Metric label.
    pub const fn label(self) -> &'static str {
        match self {
            Self::Rx1 => "rx1",
            Self::Rx2 => "rx2",
        }
    }
}

/// Delays of the two windows and the scheduling margin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowTiming {
    /// RX1 delay after the end of the uplink (JOIN_ACCEPT_DELAY1 for joins, RxDelay for data).
    pub rx1_delay: Duration,
    /// RX2 delay after the end of the uplink (RX1 delay + 1 s).
    pub rx2_delay: Duration,
    /// Least lead time between sending the PULL_RESP and the window opening.
    pub margin: Duration,
}

/// A window that can still be met.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scheduled {
    /// The window.
    pub window: Window,
    /// The gateway counter value to transmit at (`tmst` + delay, wrapping at 2^32).
    pub tmst: u32,
    /// Local estimate of when the window opens.
    pub opens_at: Instant,
}

/// Chooses RX1 if it can still be met at `now`, else RX2, else `None` (too late).
pub fn choose_window(
    now: Instant,
    uplink_tmst: u32,
    received_at: Instant,
    t: &WindowTiming,
) -> Option<Scheduled> {
    [(Window::Rx1, t.rx1_delay), (Window::Rx2, t.rx2_delay)]
        .into_iter()
        .find_map(|(window, delay)| {
            let opens_at = received_at + delay;
            let lead = opens_at.checked_duration_since(now)?;
            (lead >= t.margin).then(|| Scheduled {
                window,
                tmst: tmst_after(uplink_tmst, delay),
                opens_at,
            })
        })
}

/// `tmst + delay` on the gateway's 32-bit µs counter, with wrap-around.
pub fn tmst_after(tmst: u32, delay: Duration) -> u32 {
    // The delay is seconds at most; truncating its µs to u32 wraps exactly like the counter.
    tmst.wrapping_add(delay.as_micros() as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn join_timing() -> WindowTiming {
        WindowTiming {
            rx1_delay: 5000 * MS,
            rx2_delay: 6000 * MS,
            margin: 100 * MS,
        }
    }

    #[test]
    fn rx1_then_rx2_then_too_late() {
        let t0 = Instant::now();
        let t = join_timing();
        let cases = [
            (0, Some((Window::Rx1, 6_000_000))),
            (4_900, Some((Window::Rx1, 6_000_000))), // exactly the margin left
            (4_901, Some((Window::Rx2, 7_000_000))),
            (5_900, Some((Window::Rx2, 7_000_000))),
            (5_901, None),
            (7_000, None),
        ];
        for (after_ms, want) in cases {
            let got =
                choose_window(t0 + after_ms * MS, 1_000_000, t0, &t).map(|s| (s.window, s.tmst));
            assert_eq!(got, want, "answer {after_ms} ms after the uplink");
        }
        let s = choose_window(t0, 1_000_000, t0, &t).unwrap();
        assert_eq!(s.opens_at, t0 + 5000 * MS);
    }

    #[test]
    fn tmst_wraps_at_2_pow_32() {
        assert_eq!(tmst_after(u32::MAX - 999_999, 5000 * MS), 4_000_000);
        assert_eq!(tmst_after(1_000_000, 1000 * MS), 2_000_000); // ChirpStack bridge example
        let s = choose_window(Instant::now(), u32::MAX, Instant::now(), &join_timing()).unwrap();
        assert_eq!(s.tmst, 4_999_999);
    }
}
