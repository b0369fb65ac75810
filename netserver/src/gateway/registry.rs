//! The gateway registry: which gateways are admitted (the allowed list, a limit on how many),
//! where each gateway's downlinks go (the source address of its PULL_DATA, held against a
//! change of address for `addr_change_block`) and per-gateway statistics, served as JSON on
//! `/gateways`.
//!
//! Gateway EUIs are not Prometheus labels (operators may run thousands of gateways); the
//! per-gateway view is this registry instead.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use protocol::ids::GatewayEui;
use serde::Serialize;

use crate::core::KeyedHasher;
use crate::gateway::allowed::AllowedGateways;
use crate::gateway::owner::{choose_route, DownlinkRoute, RemoteOwner};
use crate::ops::config::GwmpConfig;

/// Counters of one gateway.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct GatewayStats {
    /// PUSH_DATA datagrams received.
    pub push_data: u64,
    /// PULL_DATA datagrams received.
    pub pull_data: u64,
    /// `rxpk` entries with `stat` = 1 accepted.
    pub rxpk_ok: u64,
    /// `rxpk` entries dropped because `stat` ≠ 1 (bad or no CRC).
    pub rxpk_crc_dropped: u64,
    /// `rxpk` entries dropped as malformed or not usable (bad base64, unknown data rate, …).
    pub rxpk_invalid: u64,
    /// `stat` reports received.
    pub stat_reports: u64,
    /// PULL_RESP datagrams sent.
    pub pull_resp: u64,
    /// TX_ACKs received, by error label (`none` for success, else `too_late`, `collision_packet`, …).
    pub tx_ack: BTreeMap<&'static str, u64>,
}

/// The last `stat` object a gateway sent, as numbers (fields absent or `null` are `None`).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct GatewayStatus {
    /// Radio packets received.
    pub rxnb: Option<u64>,
    /// Radio packets received with a valid CRC.
    pub rxok: Option<u64>,
    /// Radio packets forwarded.
    pub rxfw: Option<u64>,
    /// Percentage of upstream datagrams acknowledged.
    pub ackr: Option<f64>,
    /// Downlink datagrams received.
    pub dwnb: Option<u64>,
    /// Packets emitted.
    pub txnb: Option<u64>,
}

#[derive(Debug, Clone)]
struct Gateway {
    pull_addr: Option<SocketAddr>,
    last_pull: Option<Instant>,
    last_seen: Instant,
    stats: GatewayStats,
    status: Option<GatewayStatus>,
}

/// A gateway's state as served on `/gateways`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GatewaySnapshot {
    /// The gateway EUI.
    pub gateway_eui: GatewayEui,
    /// Where downlinks go, if a PULL_DATA was seen.
    pub downlink_addr: Option<SocketAddr>,
    /// Whether it was heard within the offline threshold.
    pub online: bool,
    /// Seconds since anything was heard from it.
    pub last_seen_s_ago: f64,
    /// Counters.
    pub stats: GatewayStats,
    /// Its last `stat` report.
    pub status: Option<GatewayStatus>,
}

/// The registry. Shared by the socket loops; each update is one short map operation.
#[derive(Debug)]
pub struct GatewayRegistry {
    map: DashMap<GatewayEui, Gateway, KeyedHasher>,
    offline_after: Duration,
    max_gateways: usize,
    allowed: Option<AllowedGateways>,
    addr_change_block: Duration,
    /// Other instances' records of the gateways they hold (several instances on PostgreSQL,
    /// [`crate::store::owners`]); empty otherwise.
    owners: DashMap<GatewayEui, RemoteOwner, KeyedHasher>,
}

impl GatewayRegistry {
    /// The registry `[gwmp]` describes (`gateway_offline_after_s`, `max_gateways`,
    /// `addr_change_block_s`), admitting only `allowed` when given (the shell reads
    /// `allowed_gateways_file`).
    pub fn of(gwmp: &GwmpConfig, allowed: Option<AllowedGateways>) -> Self {
        let mut r = Self::new(
            Duration::from_secs(gwmp.gateway_offline_after_s),
            gwmp.max_gateways,
        );
        r.allowed = allowed;
        r.addr_change_block = Duration::from_secs(gwmp.addr_change_block_s);
        r
    }

    /// An empty registry for at most `max_gateways` gateways, any gateway admitted, the
    /// downlink address following every PULL_DATA; a gateway silent for `offline_after` is
    /// reported offline.
    pub fn new(offline_after: Duration, max_gateways: usize) -> Self {
        Self {
            map: DashMap::with_hasher(KeyedHasher::default()),
            offline_after,
            max_gateways,
            allowed: None,
            addr_change_block: Duration::ZERO,
            owners: DashMap::with_hasher(KeyedHasher::default()),
        }
    }

    /// Whether datagrams of `eui` are accepted: an allowed gateway (when a list is set) that
    /// is known, or for which there is room; `Err` is the drop reason. (Socket loops check
    /// concurrently, so the registry may exceed the limit by a few.)
    pub fn admit(&self, eui: GatewayEui) -> Result<(), &'static str> {
        if self.allowed.as_ref().is_some_and(|a| !a.contains(&eui)) {
            return Err("unknown_gateway");
        }
        if self.map.contains_key(&eui) || self.map.len() < self.max_gateways {
            Ok(())
        } else {
            Err("gateway_limit")
        }
    }

    /// Whether a PULL_DATA of `eui` from `addr` at `now` is refused as a downlink route: the
    /// gateway has another host address (IP) whose last PULL_DATA is more recent than the block.
    /// A new port on the same IP is followed at once: a restarted packet forwarder, or a NAT
    /// that remapped its port, would otherwise get no downlinks for the whole block, while a
    /// forger elsewhere cannot use it (a forger behind the same public address, a carrier-grade
    /// NAT, can: docs/security.md).
    pub fn route_blocked(&self, eui: GatewayEui, addr: SocketAddr, now: Instant) -> bool {
        self.map
            .get(&eui)
            .is_some_and(|g| self.blocks(&g, addr, now))
    }

    fn blocks(&self, g: &Gateway, addr: SocketAddr, now: Instant) -> bool {
        match (g.pull_addr, g.last_pull) {
            (Some(current), Some(last)) => {
                current.ip() != addr.ip()
                    && now.saturating_duration_since(last) < self.addr_change_block
            }
            _ => false,
        }
    }

    fn update(&self, eui: GatewayEui, now: Instant, f: impl FnOnce(&mut Gateway)) {
        let mut g = self.map.entry(eui).or_insert_with(|| Gateway {
            pull_addr: None,
            last_pull: None,
            last_seen: now,
            stats: GatewayStats::default(),
            status: None,
        });
        g.last_seen = g.last_seen.max(now);
        f(&mut g);
    }

    /// A PULL_DATA from `addr`: downlinks for `eui` now go there, unless the route is blocked
    /// ([`Self::route_blocked`], checked again here under the entry's lock): then nothing
    /// changes.
    pub fn on_pull_data(&self, eui: GatewayEui, addr: SocketAddr, now: Instant) {
        let block = |g: &Gateway| self.blocks(g, addr, now);
        self.update(eui, now, |g| {
            if block(g) {
                return;
            }
            g.stats.pull_data += 1;
            g.pull_addr = Some(addr);
            g.last_pull = Some(now);
        });
    }

    /// A PUSH_DATA arrived.
    pub fn on_push_data(&self, eui: GatewayEui, now: Instant) {
        self.update(eui, now, |g| g.stats.push_data += 1);
    }

    /// Per-`rxpk` outcome of a PUSH_DATA.
    pub fn on_rxpk(&self, eui: GatewayEui, now: Instant, outcome: RxpkOutcome) {
        self.update(eui, now, |g| match outcome {
            RxpkOutcome::Ok => g.stats.rxpk_ok += 1,
            RxpkOutcome::CrcDropped => g.stats.rxpk_crc_dropped += 1,
            RxpkOutcome::Invalid => g.stats.rxpk_invalid += 1,
        });
    }

    /// A `stat` report.
    pub fn on_status(&self, eui: GatewayEui, now: Instant, status: GatewayStatus) {
        self.update(eui, now, |g| {
            g.stats.stat_reports += 1;
            g.status = Some(status);
        });
    }

    /// A PULL_RESP was sent to the gateway.
    pub fn on_pull_resp(&self, eui: GatewayEui, now: Instant) {
        if let Some(mut g) = self.map.get_mut(&eui) {
            g.stats.pull_resp += 1;
            g.last_seen = g.last_seen.max(now);
        }
    }

    /// A TX_ACK with error code `code` (a bounded label: `none` on success).
    pub fn on_tx_ack(&self, eui: GatewayEui, now: Instant, code: &'static str) {
        self.update(eui, now, |g| *g.stats.tx_ack.entry(code).or_default() += 1);
    }

    /// Where to send a downlink for `eui`: the source of its latest PULL_DATA.
    pub fn downlink_addr(&self, eui: GatewayEui) -> Option<SocketAddr> {
        self.map.get(&eui).and_then(|g| g.pull_addr)
    }

    /// Where a downlink for `eui` goes at `now`: straight to the gateway if this instance
    /// holds its latest PULL_DATA, else handed to the instance that does
    /// ([`crate::gateway::owner::choose_route`]).
    pub fn downlink_route(&self, eui: GatewayEui, now: Instant) -> Option<DownlinkRoute> {
        let local = self
            .map
            .get(&eui)
            .and_then(|g| Some((g.pull_addr?, g.last_pull?)));
        let remote = self.owners.get(&eui).map(|o| *o);
        choose_route(local, remote, now)
    }

    /// The gateways whose PULL_DATA this instance holds, with the latest one's time.
    pub fn held(&self) -> Vec<(GatewayEui, Instant)> {
        self.map
            .iter()
            .filter_map(|g| Some((*g.key(), g.last_pull?)))
            .collect()
    }

    /// Another instance's record of `eui` as read from the shared state; `None`: this instance
    /// is the owner, or no record is left.
    pub fn set_remote_owner(&self, eui: GatewayEui, owner: Option<RemoteOwner>) {
        match owner {
            Some(o) => {
                self.owners.insert(eui, o);
            }
            None => {
                self.owners.remove(&eui);
            }
        }
    }

    /// Another instance's record of `eui`, if one is known.
    pub fn remote_owner(&self, eui: GatewayEui) -> Option<RemoteOwner> {
        self.owners.get(&eui).map(|o| *o)
    }

    /// Number of gateways known.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether no gateway is known.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Gateways heard within the offline threshold.
    pub fn online(&self, now: Instant) -> usize {
        self.map
            .iter()
            .filter(|g| now.saturating_duration_since(g.last_seen) < self.offline_after)
            .count()
    }

    /// Forgets gateways silent for `idle`; returns how many. Bounds the registry against
    /// datagrams with made-up EUIs.
    pub fn forget_idle(&self, now: Instant, idle: Duration) -> usize {
        let before = self.map.len();
        self.map
            .retain(|_, g| now.saturating_duration_since(g.last_seen) < idle);
        self.owners.retain(|_, o| o.expires > now);
        before.saturating_sub(self.map.len())
    }

    /// Every gateway's state, sorted by EUI.
    pub fn snapshot(&self, now: Instant) -> Vec<GatewaySnapshot> {
        let mut v: Vec<GatewaySnapshot> = self
            .map
            .iter()
            .map(|e| {
                let g = e.value();
                let ago = now.saturating_duration_since(g.last_seen);
                GatewaySnapshot {
                    gateway_eui: *e.key(),
                    downlink_addr: g.pull_addr,
                    online: ago < self.offline_after,
                    last_seen_s_ago: ago.as_secs_f64(),
                    stats: g.stats.clone(),
                    status: g.status.clone(),
                }
            })
            .collect();
        v.sort_by_key(|s| s.gateway_eui);
        v
    }
}

/// What became of one `rxpk`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RxpkOutcome {
    /// Accepted for processing.
    Ok,
    /// Dropped: `stat` ≠ 1.
    CrcDropped,
    /// Dropped: malformed or unusable.
    Invalid,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn downlink_address_follows_the_latest_pull_data() {
        let t0 = Instant::now();
        let r = GatewayRegistry::new(Duration::from_secs(60), 100);
        let gw = GatewayEui::new(0xAA555A0102030405);
        assert_eq!(r.downlink_addr(gw), None);
        r.on_push_data(gw, t0);
        assert_eq!(r.downlink_addr(gw), None);
        let a1: SocketAddr = "10.0.0.1:40000".parse().unwrap();
        let a2: SocketAddr = "10.0.0.1:40001".parse().unwrap();
        r.on_pull_data(gw, a1, t0);
        assert_eq!(r.downlink_addr(gw), Some(a1));
        r.on_pull_data(gw, a2, t0 + Duration::from_secs(5));
        assert_eq!(r.downlink_addr(gw), Some(a2));
    }

    #[test]
    fn stats_and_snapshot() {
        let t0 = Instant::now();
        let r = GatewayRegistry::new(Duration::from_secs(60), 100);
        let g1 = GatewayEui::new(1);
        let g2 = GatewayEui::new(2);
        r.on_push_data(g2, t0);
        r.on_rxpk(g2, t0, RxpkOutcome::Ok);
        r.on_rxpk(g2, t0, RxpkOutcome::CrcDropped);
        r.on_rxpk(g2, t0, RxpkOutcome::CrcDropped);
        r.on_rxpk(g2, t0, RxpkOutcome::Invalid);
        r.on_tx_ack(g2, t0, "none");
        r.on_tx_ack(g2, t0, "too_late");
        r.on_tx_ack(g2, t0, "none");
        r.on_pull_resp(g2, t0);
        r.on_status(
            g2,
            t0,
            GatewayStatus {
                rxnb: Some(4),
                ..Default::default()
            },
        );
        r.on_pull_data(g1, "127.0.0.1:9".parse().unwrap(), t0);
        let later = t0 + Duration::from_secs(61);
        r.on_push_data(g1, later);
        let s = r.snapshot(later);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].gateway_eui, g1);
        assert!(s[0].online);
        assert!(!s[1].online);
        let st = &s[1].stats;
        assert_eq!(
            (
                st.push_data,
                st.rxpk_ok,
                st.rxpk_crc_dropped,
                st.rxpk_invalid,
                st.pull_resp
            ),
            (1, 1, 2, 1, 1)
        );
        assert_eq!(st.tx_ack.get("none"), Some(&2));
        assert_eq!(st.tx_ack.get("too_late"), Some(&1));
        assert_eq!(s[1].status.as_ref().unwrap().rxnb, Some(4));
        assert_eq!(r.online(later), 1);
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json[1]["gateway_eui"], "0000000000000002");
        assert_eq!(r.forget_idle(later, Duration::from_secs(30)), 1);
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn admits_known_gateways_and_new_ones_up_to_the_limit() {
        let t0 = Instant::now();
        let r = GatewayRegistry::new(Duration::from_secs(60), 2);
        for eui in [1, 2] {
            assert_eq!(r.admit(GatewayEui::new(eui)), Ok(()));
            r.on_push_data(GatewayEui::new(eui), t0);
        }
        assert_eq!(r.admit(GatewayEui::new(1)), Ok(()));
        assert_eq!(r.admit(GatewayEui::new(3)), Err("gateway_limit"));
    }

    #[test]
    fn admits_only_allowed_gateways_when_a_list_is_set() {
        let gwmp = GwmpConfig::default();
        let r = GatewayRegistry::of(&gwmp, Some(AllowedGateways::from([GatewayEui::new(7)])));
        assert_eq!(r.admit(GatewayEui::new(7)), Ok(()));
        assert_eq!(r.admit(GatewayEui::new(8)), Err("unknown_gateway"));
        assert_eq!(
            GatewayRegistry::of(&gwmp, None).admit(GatewayEui::new(8)),
            Ok(())
        );
    }

    #[test]
    fn downlink_address_is_held_against_a_new_source_during_the_block() {
        let gwmp = GwmpConfig {
            addr_change_block_s: 30,
            ..GwmpConfig::default()
        };
        let r = GatewayRegistry::of(&gwmp, None);
        let gw = GatewayEui::new(1);
        let (home, other): (SocketAddr, SocketAddr) = (
            "10.0.0.1:40000".parse().unwrap(),
            "10.9.9.9:1700".parse().unwrap(),
        );
        let restarted: SocketAddr = "10.9.9.9:1701".parse().unwrap();
        let t0 = Instant::now();
        let s = Duration::from_secs;
        // (time, source, blocked?, downlink address after it)
        let table = [
            (t0, home, false, home),                   // first PULL_DATA: taken
            (t0 + s(5), other, true, home),            // new source inside the block
            (t0 + s(10), home, false, home),           // the gateway keeps pulling
            (t0 + s(39), other, true, home),           // still inside 30 s of the last pull
            (t0 + s(40), other, false, other),         // 30 s of silence: the gateway moved
            (t0 + s(41), home, true, other),           // and the old address is now the new one
            (t0 + s(42), restarted, false, restarted), // same host, new port: followed at once
        ];
        for (i, (at, from, blocked, after)) in table.into_iter().enumerate() {
            assert_eq!(r.route_blocked(gw, from, at), blocked, "row {i}");
            r.on_pull_data(gw, from, at);
            assert_eq!(r.downlink_addr(gw), Some(after), "row {i}");
        }
        assert_eq!(r.snapshot(t0 + s(42))[0].stats.pull_data, 4);
    }
}
