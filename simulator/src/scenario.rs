//! Scenarios and their settings: what the fleet does during a run.
//!
//! Every scenario first joins the devices that have no session, each at a random moment within
//! `--join-window`. Then:
//! - `storm`: nothing else; the run ends when every device has joined (or at `--duration`).
//! - `steady`: every joined device reports every `--uplink-interval` (±10 % jitter) until
//!   `--duration`.
//! - `power-restore`: once the whole fleet has joined (or `--join-window` plus one minute has
//!   passed), every device loses power at once, keeping only its non-volatile DevNonce counter and
//!   last JoinNonce; a second later power returns and every device boots within one second and
//!   rejoins, backing off as the join duty-cycle rules require.
//! - `rekey`: `steady`, and once the whole fleet has joined, the network server is asked
//!   (`--rekey-http`, its HTTP downlink input) to force every device to rejoin over
//!   `--rekey-window`: LoRaWAN 1.1 devices get ForceRejoinReq at an uplink, send type 0
//!   Rejoin-requests and move to new keys while they keep reporting; the report counts the
//!   rejoins attempted, accepted and missed, and the uplinks lost (the target is none).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// Which scenario to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// The whole fleet joins within the join window.
    Storm,
    /// Join, then periodic reporting.
    Steady,
    /// Join, then a fleet-wide outage and a simultaneous rejoin.
    PowerRestore,
    /// Join, report, and re-key the fleet with forced rejoins over a window.
    Rekey,
}

impl Scenario {
    /// Whether joined devices report (`steady`, `rekey`).
    pub fn reports(self) -> bool {
        matches!(self, Self::Steady | Self::Rekey)
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Storm => "storm",
            Self::Steady => "steady",
            Self::PowerRestore => "power-restore",
            Self::Rekey => "rekey",
        })
    }
}

/// A duration written like `30s`, `5m`, `1h`, `250ms` or `1m30s`. A bare number means seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Dur(pub Duration);

impl Dur {
    /// In microseconds.
    pub fn as_micros(self) -> u64 {
        self.0.as_micros() as u64
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms % 1000 == 0 {
            write!(f, "{}s", ms / 1000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

/// A duration could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {0:?}: write it like 30s, 5m, 1h, 250ms or 1m30s")]
pub struct DurError(String);

impl FromStr for Dur {
    type Err = DurError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || DurError(s.to_owned());
        let t = s.trim();
        if t.is_empty() {
            return Err(err());
        }
        if let Ok(n) = t.parse::<u64>() {
            return Ok(Self(Duration::from_secs(n)));
        }
        let mut total = Duration::ZERO;
        let mut rest = t;
        while !rest.is_empty() {
            let digits = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .ok_or_else(err)?;
            if digits == 0 {
                return Err(err());
            }
            let value: f64 = rest[..digits].parse().map_err(|_| err())?;
            rest = &rest[digits..];
            let unit_len = rest
                .find(|c: char| c.is_ascii_digit())
                .unwrap_or(rest.len());
            let unit_s = match &rest[..unit_len] {
                "ms" => 0.001,
                "s" => 1.0,
                "m" | "min" => 60.0,
                "h" => 3600.0,
                _ => return Err(err()),
            };
            rest = &rest[unit_len..];
            total += Duration::try_from_secs_f64(value * unit_s).map_err(|_| err())?;
        }
        Ok(Self(total))
    }
}

/// Traffic settings of a run.
#[derive(Clone, Debug)]
pub struct Traffic {
    /// The scenario.
    pub scenario: Scenario,
    /// Joins are spread uniformly over this window.
    pub join_window_us: u64,
    /// Run length (for `storm`, an upper bound).
    pub duration_us: u64,
    /// Mean time between two uplinks of one device.
    pub uplink_interval_us: u64,
    /// Fraction of uplinks sent confirmed (0..=1).
    pub confirmed_ratio: f64,
    /// FRMPayload size in bytes.
    pub payload_size: usize,
    /// Probability that a transmission is heard by no gateway (0..=1).
    pub loss: f64,
    /// Each transmission is heard by 1..=K gateways.
    pub heard_by: u16,
    /// Data rate of joins and uplinks (until a LinkADRReq changes it); checked by
    /// [`crate::radio::RadioPlan::check`].
    pub data_rate: u8,
    /// The region and the channels devices boot with and gateways hear.
    pub radio: crate::radio::RadioPlan,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let ok = [
            ("30s", 30_000),
            ("5m", 300_000),
            ("1h", 3_600_000),
            ("250ms", 250),
            ("1m30s", 90_000),
            ("1.5s", 1_500),
            ("10", 10_000),
            ("2min", 120_000),
        ];
        for (s, ms) in ok {
            assert_eq!(s.parse::<Dur>().unwrap().0.as_millis(), ms, "{s}");
        }
        for bad in ["", "s", "5x", "-1s", "1s5", "m5"] {
            assert!(bad.parse::<Dur>().is_err(), "{bad:?} parsed");
        }
        assert_eq!("90s".parse::<Dur>().unwrap().to_string(), "90s");
        assert_eq!("1500ms".parse::<Dur>().unwrap().to_string(), "1500ms");
    }
}
