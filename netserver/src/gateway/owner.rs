//! The gateway's owner instance (several instances on PostgreSQL): the instance that holds a
//! gateway's latest PULL_DATA is the one its downlinks leave from, since a packet forwarder
//! takes a PULL_RESP only from the address it pulls from. Each instance records the gateways it
//! holds, with an expiry, in the shared state ([`crate::store::owners`]), and learns the others'
//! records; a downlink for a gateway another instance owns is handed to that instance
//! ([`crate::gateway::handoff`]).
//!
//! This module is the pure part: where a downlink for a gateway goes ([`choose_route`]) and
//! which of the gateways this instance holds are due to be recorded ([`due_records`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use protocol::ids::GatewayEui;

/// Another instance's record of a gateway, as this instance last read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteOwner {
    /// The owner's instance id.
    pub instance: u64,
    /// Where the owner takes hand-offs.
    pub handoff: SocketAddr,
    /// When the owner received the gateway's PULL_DATA (on this instance's clock, give or take
    /// the recording delay).
    pub pulled_at: Instant,
    /// When the record expires (the gateway stopped pulling there).
    pub expires: Instant,
}

/// Where a downlink for a gateway goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DownlinkRoute {
    /// This instance holds the gateway's latest PULL_DATA: the PULL_RESP goes straight to it.
    Gateway(SocketAddr),
    /// Another instance does: the PULL_RESP is handed to it at this address.
    Owner(SocketAddr),
}

impl DownlinkRoute {
    /// The address the datagram is sent to.
    pub const fn addr(self) -> SocketAddr {
        match self {
            Self::Gateway(a) | Self::Owner(a) => a,
        }
    }

    /// Whether the PULL_RESP is handed to the owner instance.
    pub const fn via_owner(self) -> bool {
        matches!(self, Self::Owner(_))
    }
}

/// Where a downlink for a gateway goes at `now`: `local` is the gateway's PULL_DATA address
/// here and when it was last received, `remote` another instance's unexpired-or-not record.
///
/// - No valid remote record (none, or expired): the local route, if any (one instance alone
///   behaves as before: a route never expires).
/// - A remote record and a local route: whichever PULL_DATA is the more recent (a gateway that
///   came back to this instance is served at once, before its new record is written).
/// - A remote record alone: the owner.
pub fn choose_route(
    local: Option<(SocketAddr, Instant)>,
    remote: Option<RemoteOwner>,
    now: Instant,
) -> Option<DownlinkRoute> {
    let remote = remote.filter(|r| r.expires > now);
    match (local, remote) {
        (Some((addr, _)), None) => Some(DownlinkRoute::Gateway(addr)),
        (Some((addr, pulled)), Some(r)) if pulled >= r.pulled_at => {
            Some(DownlinkRoute::Gateway(addr))
        }
        (_, Some(r)) => Some(DownlinkRoute::Owner(r.handoff)),
        (None, None) => None,
    }
}

/// The gateways of `held` (each with its latest PULL_DATA here) whose record is due: never
/// written, or last written before that PULL_DATA and at least `refresh` ago, or shown by the
/// shared state (`owned_elsewhere`) as another instance's while this one has a newer PULL_DATA.
/// `written` is when each gateway's record was last written; one PULL_DATA a gateway every
/// 10 s (the packet forwarder's default) so costs one row write per `refresh`, not one per
/// PULL_DATA.
pub fn due_records(
    held: impl IntoIterator<Item = (GatewayEui, Instant)>,
    written: &HashMap<GatewayEui, Instant>,
    owned_elsewhere: impl Fn(GatewayEui, Instant) -> bool,
    now: Instant,
    refresh: Duration,
) -> Vec<GatewayEui> {
    let mut due: Vec<GatewayEui> = held
        .into_iter()
        .filter(|&(gw, pulled)| match written.get(&gw) {
            None => true,
            Some(&w) => {
                (pulled > w && now.saturating_duration_since(w) >= refresh)
                    || owned_elsewhere(gw, pulled)
            }
        })
        .map(|(gw, _)| gw)
        .collect();
    due.sort_unstable();
    due
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn the_latest_pull_data_decides_where_a_downlink_goes() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let remote = |pulled: Instant, expires: Instant| RemoteOwner {
            instance: 7,
            handoff: addr(9000),
            pulled_at: pulled,
            expires,
        };
        use DownlinkRoute::{Gateway, Owner};
        // (local PULL_DATA, remote record, now, route)
        let table = [
            (None, None, t0, None),
            (Some(t0), None, t0 + s(3600), Some(Gateway(addr(1700)))),
            (
                None,
                Some(remote(t0, t0 + s(30))),
                t0 + s(1),
                Some(Owner(addr(9000))),
            ),
            // The record expired: the gateway pulls nowhere any more.
            (None, Some(remote(t0, t0 + s(30))), t0 + s(30), None),
            // Moved away from this instance: the other's PULL_DATA is newer.
            (
                Some(t0),
                Some(remote(t0 + s(5), t0 + s(35))),
                t0 + s(6),
                Some(Owner(addr(9000))),
            ),
            // Came back here: this PULL_DATA is newer than the other's record.
            (
                Some(t0 + s(7)),
                Some(remote(t0 + s(5), t0 + s(35))),
                t0 + s(8),
                Some(Gateway(addr(1700))),
            ),
            // The other's record expired: the local route again, however old.
            (
                Some(t0),
                Some(remote(t0 + s(5), t0 + s(35))),
                t0 + s(40),
                Some(Gateway(addr(1700))),
            ),
        ];
        for (i, (local, r, now, want)) in table.into_iter().enumerate() {
            let got = choose_route(local.map(|p| (addr(1700), p)), r, now);
            assert_eq!(got, want, "row {i}");
        }
        assert!(Owner(addr(1)).via_owner() && !Gateway(addr(1)).via_owner());
        assert_eq!(Owner(addr(2)).addr(), addr(2));
    }

    #[test]
    fn records_are_written_when_new_stale_or_contested() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let (g1, g2, g3, g4) = (
            GatewayEui::new(1),
            GatewayEui::new(2),
            GatewayEui::new(3),
            GatewayEui::new(4),
        );
        let written = HashMap::from([(g2, t0), (g3, t0), (g4, t0)]);
        let held = [
            (g1, t0 + s(1)),  // never written
            (g2, t0 + s(11)), // pulled again, written 12 s ago: refresh
            (g3, t0 + s(2)),  // pulled again, written 2 s ago... at now = 12 s: refresh too
            (g4, t0),         // not pulled since the write
        ];
        let none = |_: GatewayEui, _: Instant| false;
        assert_eq!(
            due_records(held, &written, none, t0 + s(12), s(10)),
            vec![g1, g2, g3]
        );
        assert_eq!(
            due_records(held, &written, none, t0 + s(5), s(10)),
            vec![g1]
        );
        // Another instance's record is newer than this instance's write: written again at once.
        let contested = |g: GatewayEui, _: Instant| g == g4;
        assert_eq!(
            due_records(held, &written, contested, t0 + s(5), s(10)),
            vec![g1, g4]
        );
    }
}
