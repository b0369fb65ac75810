//! The join flow as a state machine: received → JoinReq sent (with retries) → JoinAns →
//! downlink scheduled, or a failure with a reason.
//!
//! The shell owns the socket and the timer: it calls [`JoinFlow::start`], sends what the returned
//! [`Step`] says, waits until the step's deadline or an answer, and feeds the outcome back with
//! [`JoinFlow::on_timeout`] or [`JoinFlow::on_placed`]. Every retry reuses the same
//! TransactionID, so the join server answers it from its cache (the DevNonce is not checked
//! twice). After the last try the flow keeps waiting for a late answer while RX2 can still be
//! met, and then for one more request timeout (the grace period): a JoinAns arriving in the
//! grace period is recognised and dropped as `too_late`; with none by its end the join failed
//! with `timeout`.

use std::time::{Duration, Instant};

use super::scheduler::Unplaced;
use super::timing::{Scheduled, WindowTiming};

/// Where the flow is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinState {
    /// Created; nothing sent.
    Received,
    /// JoinReq sent `tries` times; waiting for the JoinAns.
    JoinReqSent {
        /// Transmissions so far.
        tries: u32,
    },
    /// JoinAns received and a window chosen.
    Scheduled(Scheduled),
    /// Finished without a downlink.
    Failed(JoinFailure),
}

/// What the shell must do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Send the JoinReq (transmission number `try_no`, from 1), then wait for the answer until
    /// `wait_until` and call [`JoinFlow::on_timeout`] if none came.
    SendJoinReq {
        /// Transmission number, from 1.
        try_no: u32,
        /// When to give up waiting for this transmission's answer.
        wait_until: Instant,
    },
    /// All tries are sent: keep waiting for a late answer until `wait_until`.
    Wait {
        /// When to give up.
        wait_until: Instant,
    },
    /// The flow is over without a downlink.
    Fail(JoinFailure),
}

/// Why a join produced no Join-accept. Each has a stable metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum JoinFailure {
    /// No JoinAns after every try, until RX2 could no longer be met.
    #[error("join server did not answer")]
    Timeout,
    /// The JoinAns came after both windows could be met.
    #[error("join answer too late for RX1 and RX2")]
    TooLate,
    /// No gateway that heard the request can take a downlink (no PULL_DATA seen).
    #[error("no gateway with a downlink path")]
    NoGateway,
    /// No gateway that heard the request has airtime for the Join-accept in either window.
    #[error("no gateway has airtime for the join-accept")]
    NoAirtime,
    /// No receive window has a radio setting for the Join-accept (its data rate, its
    /// frequency).
    #[error("no radio setting for the join-accept")]
    NoRadio,
    /// An answer arrived in a state that does not expect one.
    #[error("unexpected join answer")]
    Unexpected,
}

impl JoinFailure {
    /// Stable metric label.
    pub const fn kind(self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::TooLate => "too_late",
            Self::NoGateway => "no_gateway",
            Self::NoAirtime => "no_airtime",
            Self::NoRadio => "no_radio",
            Self::Unexpected => "unexpected",
        }
    }
}

impl From<Unplaced> for JoinFailure {
    fn from(u: Unplaced) -> Self {
        match u {
            Unplaced::NoGateway => Self::NoGateway,
            Unplaced::TooLate => Self::TooLate,
            Unplaced::Radio => Self::NoRadio,
            Unplaced::Airtime(_) => Self::NoAirtime,
        }
    }
}

/// Retry policy of the JoinReq.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Wait per transmission.
    pub timeout: Duration,
    /// Transmissions in all.
    pub tries: u32,
}

/// One join in progress.
#[derive(Debug, Clone)]
pub struct JoinFlow {
    received_at: Instant,
    retry: RetryPolicy,
    timing: WindowTiming,
    state: JoinState,
}

impl JoinFlow {
    /// A flow for a Join-request whose first copy arrived at `received_at`.
    pub fn new(received_at: Instant, retry: RetryPolicy, timing: WindowTiming) -> Self {
        Self {
            received_at,
            retry,
            timing,
            state: JoinState::Received,
        }
    }

    /// The current state.
    pub fn state(&self) -> JoinState {
        self.state
    }

    /// The last instant at which an answer can still make RX2.
    pub fn last_useful(&self) -> Instant {
        (self.received_at + self.timing.rx2_delay)
            .checked_sub(self.timing.margin)
            .unwrap_or(self.received_at)
    }

    /// When the flow stops waiting: the last useful instant plus one request timeout, so that
    /// an answer just too late is still recognised (and counted) as such.
    pub fn give_up_at(&self) -> Instant {
        self.last_useful() + self.retry.timeout
    }

    /// Sends the first JoinReq.
    pub fn start(&mut self, now: Instant) -> Step {
        debug_assert_eq!(self.state, JoinState::Received);
        self.send(now, 1)
    }

    fn send(&mut self, now: Instant, try_no: u32) -> Step {
        self.state = JoinState::JoinReqSent { tries: try_no };
        Step::SendJoinReq {
            try_no,
            wait_until: (now + self.retry.timeout).min(self.last_useful()),
        }
    }

    /// The wait of the last step ended with no answer.
    pub fn on_timeout(&mut self, now: Instant) -> Step {
        let JoinState::JoinReqSent { tries } = self.state else {
            return Step::Fail(JoinFailure::Unexpected);
        };
        if now >= self.give_up_at() {
            self.state = JoinState::Failed(JoinFailure::Timeout);
            return Step::Fail(JoinFailure::Timeout);
        }
        if tries < self.retry.tries && now < self.last_useful() {
            return self.send(now, tries + 1);
        }
        Step::Wait {
            wait_until: self.give_up_at(),
        }
    }

    /// A successful JoinAns arrived at `now`, and the downlink scheduler
    /// ([`crate::core::scheduler`]) placed the Join-accept at `placed` (a gateway's window), or
    /// could not: it goes if the window can still be met, else the join ends `too_late`.
    pub fn on_placed(
        &mut self,
        now: Instant,
        placed: Result<Scheduled, JoinFailure>,
    ) -> Result<Scheduled, JoinFailure> {
        if !matches!(self.state, JoinState::JoinReqSent { .. }) {
            return Err(JoinFailure::Unexpected);
        }
        let outcome = placed.and_then(|at| {
            let lead = at.opens_at.checked_duration_since(now);
            match lead {
                Some(l) if l >= self.timing.margin => Ok(at),
                _ => Err(JoinFailure::TooLate),
            }
        });
        self.state = match &outcome {
            Ok(s) => JoinState::Scheduled(*s),
            Err(e) => JoinState::Failed(*e),
        };
        outcome
    }

    /// The anchor of the windows: the local arrival of the first copy (the earliest estimate of
    /// the end of the uplink, hence the conservative one); each gateway's own `tmst` gives the
    /// window on its counter.
    pub fn received_at(&self) -> Instant {
        self.received_at
    }

    /// The window timing.
    pub fn timing(&self) -> &WindowTiming {
        &self.timing
    }
}

#[cfg(test)]
mod tests {
    use super::super::airtime::{Limits, Purpose};
    use super::super::reception::tests::rx;
    use super::super::reception::Reception;
    use super::super::scheduler::{candidates, Scheduler};
    use super::super::timing::Window;
    use super::*;
    use protocol::ids::GatewayEui;
    use protocol::region::Region;

    /// What the shell does with a JoinAns at `now`: the scheduler (switched off: the best
    /// usable gateway in the first reachable window) places the Join-accept among `heard`, and
    /// the flow checks the placement.
    fn answer(
        f: &mut JoinFlow,
        now: Instant,
        heard: &[Reception],
        usable: impl FnMut(&Reception) -> bool,
    ) -> Result<(GatewayEui, Scheduled), JoinFailure> {
        let t0 = f.received_at();
        let limits = Limits {
            duty_cycle_window: Duration::from_secs(3600),
            join_accept_share: 1.0,
            max_queued: 32,
            guard: Duration::ZERO,
        };
        let off = Scheduler::new(false, Region::Eu868, limits);
        let placed = candidates(
            now,
            heard,
            f.timing(),
            |_| t0,
            usable,
            |r, _| Some((r.frequency_hz, 50 * MS)),
        )
        .and_then(|c| off.place(now, Purpose::JoinAccept, &c))
        .map_err(JoinFailure::from);
        let gw = placed.as_ref().ok().map(|p| p.candidate.gateway);
        let at = f.on_placed(now, placed.map(|p| p.candidate.at))?;
        Ok((gw.expect("placed"), at))
    }

    const MS: Duration = Duration::from_millis(1);

    fn flow(t0: Instant) -> JoinFlow {
        JoinFlow::new(
            t0,
            RetryPolicy {
                timeout: 300 * MS,
                tries: 3,
            },
            WindowTiming {
                rx1_delay: 5000 * MS,
                rx2_delay: 6000 * MS,
                margin: 100 * MS,
            },
        )
    }

    #[test]
    fn retries_then_waits_then_times_out() {
        let t0 = Instant::now();
        let mut f = flow(t0);
        assert_eq!(
            f.start(t0),
            Step::SendJoinReq {
                try_no: 1,
                wait_until: t0 + 300 * MS
            }
        );
        assert_eq!(
            f.on_timeout(t0 + 300 * MS),
            Step::SendJoinReq {
                try_no: 2,
                wait_until: t0 + 600 * MS
            }
        );
        assert_eq!(
            f.on_timeout(t0 + 600 * MS),
            Step::SendJoinReq {
                try_no: 3,
                wait_until: t0 + 900 * MS
            }
        );
        assert_eq!(
            f.on_timeout(t0 + 900 * MS),
            Step::Wait {
                wait_until: t0 + 6200 * MS
            }
        );
        assert_eq!(
            f.on_timeout(t0 + 6200 * MS),
            Step::Fail(JoinFailure::Timeout)
        );
        assert_eq!(f.state(), JoinState::Failed(JoinFailure::Timeout));
    }

    #[test]
    fn answer_picks_best_usable_gateway_and_rx1() {
        let t0 = Instant::now();
        let mut f = flow(t0);
        f.start(t0);
        let mut heard = vec![
            rx(1, 3.0, -90, t0),
            rx(2, 9.0, -100, t0),
            rx(3, 9.0, -95, t0),
        ];
        heard[2].tmst = 4_000_000; // gateways have their own counters
        let (gw, s) = answer(&mut f, t0 + 40 * MS, &heard, |r| {
            r.gateway != GatewayEui::new(2)
        })
        .unwrap();
        assert_eq!(gw, GatewayEui::new(3));
        assert_eq!(s.window, Window::Rx1);
        assert_eq!(s.tmst, 9_000_000);
        assert!(matches!(f.state(), JoinState::Scheduled(_)));
        // A second answer to a finished flow is refused.
        assert_eq!(
            answer(&mut f, t0 + 50 * MS, &heard, |_| true),
            Err(JoinFailure::Unexpected)
        );
    }

    #[test]
    fn late_answers_go_to_rx2_or_are_dropped() {
        let t0 = Instant::now();
        let heard = [rx(1, 3.0, -90, t0)];
        let mut f = flow(t0);
        f.start(t0);
        let (_, s) = answer(&mut f, t0 + 5000 * MS, &heard, |_| true).unwrap();
        assert_eq!((s.window, s.tmst), (Window::Rx2, 7_000_000));

        let mut f = flow(t0);
        f.start(t0);
        assert_eq!(
            answer(&mut f, t0 + 5950 * MS, &heard, |_| true),
            Err(JoinFailure::TooLate)
        );
        assert_eq!(f.state(), JoinState::Failed(JoinFailure::TooLate));

        let mut f = flow(t0);
        f.start(t0);
        assert_eq!(
            answer(&mut f, t0, &heard, |_| false),
            Err(JoinFailure::NoGateway)
        );
    }

    #[test]
    fn retry_waits_never_pass_the_last_useful_instant() {
        let t0 = Instant::now();
        let mut f = flow(t0);
        // The request was first handled late (e.g. a slow queue): 5.8 s after the uplink.
        let now = t0 + 5800 * MS;
        assert_eq!(
            f.start(now),
            Step::SendJoinReq {
                try_no: 1,
                wait_until: t0 + 5900 * MS
            }
        );
        // No retry after the last useful instant; the grace period, then the end.
        assert_eq!(
            f.on_timeout(t0 + 5900 * MS),
            Step::Wait {
                wait_until: t0 + 6200 * MS
            }
        );
        assert_eq!(
            f.on_timeout(t0 + 6200 * MS),
            Step::Fail(JoinFailure::Timeout)
        );
    }

    #[test]
    fn an_answer_in_the_grace_period_is_too_late() {
        let t0 = Instant::now();
        let mut f = flow(t0);
        f.start(t0);
        f.on_timeout(t0 + 300 * MS);
        f.on_timeout(t0 + 600 * MS);
        assert!(matches!(f.on_timeout(t0 + 900 * MS), Step::Wait { .. }));
        assert_eq!(
            answer(&mut f, t0 + 6000 * MS, &[rx(1, 1.0, -90, t0)], |_| true),
            Err(JoinFailure::TooLate)
        );
    }
}
