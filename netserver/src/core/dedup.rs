//! De-duplication: the same PHYPayload heard by several gateways is processed once, and the
//! metadata of every gateway that heard it is kept.
//!
//! Entries are keyed by the PHYPayload bytes themselves in a map with a keyed hasher, so there
//! are no hash collisions to get wrong and an attacker cannot aim at one bucket. The first
//! reception of a payload returns [`Seen::First`]: the caller processes the frame at once (a
//! join is forwarded to the join server without waiting for a collection window) and, when it
//! needs to answer, reads the receptions gathered by then with [`Dedup::receptions`]. Later
//! copies return [`Seen::Duplicate`] and only add their metadata. Entries are forgotten
//! `retention` after the first copy by [`Dedup::sweep`].
//!
//! The data path uses the same entries with a collection window: it processes the frame when
//! `first_seen + window` passes, from [`Dedup::receptions`] ([`crate::uplink::collect`]), and
//! with [`Dedup::observe_within`] a copy arriving after `data.retransmission_after_ms` starts a
//! new entry (the device sending a confirmed frame again).

use std::time::{Duration, Instant};

use dashmap::DashMap;

use super::reception::Reception;
use super::KeyedHasher;
use crate::ops::config::GwmpConfig;

/// The most receptions kept per payload. A payload heard by more gateways than this keeps the
/// best ones; this bounds the memory a flood of copies can take.
pub const MAX_RECEPTIONS: usize = 32;

/// Whether a reception was the first copy of its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// The first copy: process the frame.
    First,
    /// A copy of a payload already being processed: its metadata was recorded.
    Duplicate,
    /// The table is full (a flood of distinct payloads): process the frame, but it is not
    /// remembered, so its copies will be processed too. Counted; never silent.
    Unrecorded,
}

#[derive(Debug)]
struct Entry {
    first_seen: Instant,
    receptions: Vec<Reception>,
}

/// The de-duplication table. Shared by all socket loops; every update is one `entry()` call.
#[derive(Debug)]
pub struct Dedup {
    map: DashMap<Box<[u8]>, Entry, KeyedHasher>,
    retention: Duration,
    max_entries: usize,
}

impl Dedup {
    /// An empty table that remembers payloads for `retention`, at most `max_entries` at once
    /// The table `[gwmp]` describes (`dedup_retention_ms`, `dedup_max_entries`).
    pub fn of(gwmp: &GwmpConfig) -> Self {
        Self::new(
            Duration::from_millis(gwmp.dedup_retention_ms),
            gwmp.dedup_max_entries,
        )
    }

    /// (bounding the memory a flood of distinct payloads can take).
    pub fn new(retention: Duration, max_entries: usize) -> Self {
        Self {
            map: DashMap::with_hasher(KeyedHasher::default()),
            retention,
            max_entries,
        }
    }

    /// Records that `rx` heard `phy` at `now`.
    ///
    /// A gateway that reports the same payload twice keeps one reception (the better one). An
    /// entry older than the retention counts as new, even if the sweeper has not removed it.
    pub fn observe(&self, now: Instant, phy: &[u8], rx: Reception) -> Seen {
        self.observe_within(now, phy, rx, self.retention)
    }

    /// [`observe`](Self::observe) where a copy arriving `fresh_for` or more after the first
    /// one starts a new entry ([`Seen::First`]): the data path's rule, for which a copy that
    /// late is the device transmitting the same frame again (a confirmed frame that got no
    /// ACK), not another gateway's copy.
    pub fn observe_within(
        &self,
        now: Instant,
        phy: &[u8],
        rx: Reception,
        fresh_for: Duration,
    ) -> Seen {
        let fresh_for = fresh_for.min(self.retention);
        // Look up by slice first so that duplicates do not allocate a key.
        if let Some(mut e) = self.map.get_mut(phy) {
            if now.saturating_duration_since(e.first_seen) < fresh_for {
                add_reception(&mut e.receptions, rx);
                return Seen::Duplicate;
            }
            e.first_seen = now;
            e.receptions.clear();
            e.receptions.push(rx);
            return Seen::First;
        }
        if self.map.len() >= self.max_entries {
            return Seen::Unrecorded;
        }
        match self.map.entry(phy.into()) {
            dashmap::Entry::Occupied(mut o) => {
                // Another loop inserted it between the lookup and here.
                add_reception(&mut o.get_mut().receptions, rx);
                Seen::Duplicate
            }
            dashmap::Entry::Vacant(v) => {
                v.insert(Entry {
                    first_seen: now,
                    receptions: vec![rx],
                });
                Seen::First
            }
        }
    }

    /// The receptions of `phy` recorded so far (empty if unknown or swept).
    pub fn receptions(&self, phy: &[u8]) -> Vec<Reception> {
        self.map
            .get(phy)
            .map(|e| e.receptions.clone())
            .unwrap_or_default()
    }

    /// Forgets payloads first seen `retention` or longer before `now`; returns how many.
    pub fn sweep(&self, now: Instant) -> usize {
        let before = self.map.len();
        self.map
            .retain(|_, e| now.saturating_duration_since(e.first_seen) < self.retention);
        before.saturating_sub(self.map.len())
    }

    /// Number of payloads remembered.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether no payload is remembered.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

fn add_reception(list: &mut Vec<Reception>, rx: Reception) {
    if let Some(same_gw) = list.iter_mut().find(|r| r.gateway == rx.gateway) {
        if rx.quality_cmp(same_gw).is_gt() {
            *same_gw = rx;
        }
        return;
    }
    if list.len() < MAX_RECEPTIONS {
        list.push(rx);
        return;
    }
    if let Some(worst) = list.iter_mut().min_by(|a, b| a.quality_cmp(b)) {
        if rx.quality_cmp(worst).is_gt() {
            *worst = rx;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::reception::tests::rx;
    use super::*;
    use protocol::ids::GatewayEui;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn first_then_duplicates_keep_all_gateways() {
        let t0 = Instant::now();
        let d = Dedup::new(10_000 * MS, 1000);
        let phy = [0u8, 1, 2, 3];
        assert_eq!(d.observe(t0, &phy, rx(1, 1.0, -100, t0)), Seen::First);
        assert_eq!(
            d.observe(t0 + 20 * MS, &phy, rx(2, 9.0, -100, t0)),
            Seen::Duplicate
        );
        assert_eq!(
            d.observe(t0 + 400 * MS, &phy, rx(3, 2.0, -80, t0)),
            Seen::Duplicate
        );
        // Another payload is independent.
        assert_eq!(d.observe(t0, &[9u8, 9], rx(1, 1.0, -100, t0)), Seen::First);
        let got: Vec<u64> = d
            .receptions(&phy)
            .iter()
            .map(|r| r.gateway.as_u64())
            .collect();
        assert_eq!(got, [1, 2, 3]);
        assert!(d.receptions(&[7u8]).is_empty());
    }

    #[test]
    fn same_gateway_twice_keeps_the_better_copy() {
        let t0 = Instant::now();
        let d = Dedup::new(10_000 * MS, 1000);
        d.observe(t0, b"x", rx(1, 1.0, -100, t0));
        d.observe(t0, b"x", rx(1, 4.0, -100, t0));
        d.observe(t0, b"x", rx(1, 2.0, -100, t0));
        let r = d.receptions(b"x");
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].snr, 4.0);
    }

    #[test]
    fn receptions_are_bounded_and_keep_the_best() {
        let t0 = Instant::now();
        let d = Dedup::new(10_000 * MS, 1000);
        for gw in 0..(MAX_RECEPTIONS as u64 + 10) {
            d.observe(t0, b"p", rx(gw, gw as f32, -100, t0));
        }
        let r = d.receptions(b"p");
        assert_eq!(r.len(), MAX_RECEPTIONS);
        assert!(r.iter().all(|r| r.gateway.as_u64() >= 10));
        assert!(r
            .iter()
            .any(|r| r.gateway == GatewayEui::new(MAX_RECEPTIONS as u64 + 9)));
    }

    #[test]
    fn a_full_table_processes_without_remembering() {
        let t0 = Instant::now();
        let d = Dedup::new(10_000 * MS, 2);
        assert_eq!(d.observe(t0, b"a", rx(1, 1.0, -100, t0)), Seen::First);
        assert_eq!(d.observe(t0, b"b", rx(1, 1.0, -100, t0)), Seen::First);
        assert_eq!(d.observe(t0, b"c", rx(1, 1.0, -100, t0)), Seen::Unrecorded);
        assert_eq!(d.observe(t0, b"c", rx(2, 1.0, -100, t0)), Seen::Unrecorded);
        // Known payloads still de-duplicate.
        assert_eq!(d.observe(t0, b"a", rx(2, 1.0, -100, t0)), Seen::Duplicate);
        assert_eq!(d.len(), 2);
    }

    #[test]
    fn retention_expires_entries() {
        let t0 = Instant::now();
        let d = Dedup::new(1000 * MS, 1000);
        d.observe(t0, b"a", rx(1, 1.0, -100, t0));
        d.observe(t0 + 500 * MS, b"b", rx(1, 1.0, -100, t0));
        // Past retention, a copy counts as a new frame even before the sweep.
        assert_eq!(
            d.observe(t0 + 1000 * MS, b"a", rx(2, 1.0, -100, t0)),
            Seen::First
        );
        assert_eq!(d.receptions(b"a").len(), 1);
        assert_eq!(d.sweep(t0 + 1600 * MS), 1); // "b" goes, "a" was renewed at 1000 ms
        assert_eq!(d.len(), 1);
        assert_eq!(d.sweep(t0 + 2000 * MS), 1);
        assert!(d.is_empty());
    }
}
