//! The hand-off of a downlink to the gateway's owner instance ([`crate::gateway::owner`]): one
//! authenticated UDP datagram from the instance that built the PULL_RESP to the instance that
//! holds the gateway's latest PULL_DATA, which sends it on from its GWMP socket (the gateway's
//! TX_ACK then comes back to that owner). This module is the datagram's codec; its sockets are
//! [`crate::gateway::relay`]'s.
//!
//! **Why UDP and not LISTEN/NOTIFY.** A Join-accept in RX1 at 1 s leaves a few hundred
//! milliseconds once the join server has answered, and a data downlink's RX1 is 1 s after its
//! uplink, less the collection window and the counter commit. A datagram between two instances
//! costs one `sendto` and one `recvfrom` (tens of microseconds on loopback, a LAN round trip
//! between hosts) and does not touch the database. A `NOTIFY` carrying the PULL_RESP is
//! delivered only when its transaction commits and reaches the owner through its listening
//! connection: a database round trip on the sender, the queue of notifications on the server,
//! and the receiver's poll, each growing with the database's load just when a join storm loads
//! it (the counter and session commits share that database). `netserver/tests/shared_postgres.rs`
//! (`a_gateway_pulling_from_one_instance_gets_the_downlinks_of_another`) measures both paths of
//! a Join-accept through the real binaries; docs/operations.md has the numbers.
//!
//! # Byte format (version 1)
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 1 | version, `0x01` |
//! | 1 | 8 | sender: the instance id (big-endian) |
//! | 9 | 8 | timestamp: ms since the Unix epoch by the sender's clock (big-endian) |
//! | 17 | 8 | gateway EUI (big-endian) |
//! | 25 | N | the PULL_RESP datagram, as the gateway receives it |
//! | 25+N | 32 | HMAC-SHA256 over bytes `0 .. 25+N` |
//!
//! The key is derived from the network server's KEK (`ns.kek`, which every instance of one
//! network server holds): HMAC-SHA256(KEK, `"netserver gateway hand-off v1"`). A hand-off older
//! or newer than [`FRESH_MS`] by the receiver's clock is refused (no window it could still meet),
//! and one already received within that time is refused as a replay: a forged or replayed
//! datagram cannot make a gateway transmit.

use std::collections::{HashSet, VecDeque};

use hmac::{Hmac, Mac};
use protocol::ids::GatewayEui;
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::keys::LabeledKek;

/// The format version.
pub const VERSION: u8 = 1;
const HEADER_LEN: usize = 25;
const TAG_LEN: usize = 32;
/// The largest hand-off accepted (a PULL_RESP is a few hundred bytes).
pub const MAX_DATAGRAM: usize = 4096;
/// How far a hand-off's timestamp may be from the receiver's clock.
pub const FRESH_MS: u64 = 2_000;
const KEY_LABEL: &[u8] = b"netserver gateway hand-off v1";

/// Why a hand-off was refused (a bounded metric label, [`HandoffError::kind`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HandoffError {
    /// Shorter than a header and a tag, or longer than [`MAX_DATAGRAM`].
    #[error("hand-off of {0} bytes has no valid length")]
    Length(usize),
    /// An unknown version byte.
    #[error("unknown hand-off version {0}")]
    Version(u8),
    /// The tag does not match: not from an instance of this network server.
    #[error("hand-off tag mismatch")]
    BadTag,
    /// Outside [`FRESH_MS`] of the receiver's clock.
    #[error("hand-off {0} ms away from this clock")]
    Stale(i64),
    /// Already received.
    #[error("hand-off received twice")]
    Replayed,
    /// The payload is not a GWMP PULL_RESP.
    #[error("hand-off payload is not a PULL_RESP")]
    NotPullResp,
}

impl HandoffError {
    /// Stable label.
    pub const fn kind(self) -> &'static str {
        match self {
            Self::Length(_) => "handoff_length",
            Self::Version(_) => "handoff_version",
            Self::BadTag => "handoff_bad_tag",
            Self::Stale(_) => "handoff_stale",
            Self::Replayed => "handoff_replayed",
            Self::NotPullResp => "handoff_not_pull_resp",
        }
    }
}

/// An authenticated hand-off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handoff<'a> {
    /// The sending instance.
    pub sender: u64,
    /// The sender's clock.
    pub timestamp_ms: u64,
    /// The gateway that transmits.
    pub gateway: GatewayEui,
    /// The PULL_RESP datagram.
    pub pull_resp: &'a [u8],
}

/// The hand-off key and this instance's id.
pub struct HandoffKey {
    key: Zeroizing<[u8; 32]>,
    instance: u64,
}

impl std::fmt::Debug for HandoffKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandoffKey")
            .field("instance", &self.instance)
            .finish_non_exhaustive()
    }
}

type HmacSha256 = Hmac<Sha256>;

impl HandoffKey {
    /// The key of the network server whose KEK is `ns_kek`, for instance `instance`.
    pub fn derive(ns_kek: &LabeledKek, instance: u64) -> Self {
        let mut mac = HmacSha256::new_from_slice(ns_kek.key.expose()).expect("any key length");
        mac.update(KEY_LABEL);
        let mut key = Zeroizing::new([0u8; 32]);
        key.copy_from_slice(&mac.finalize().into_bytes());
        Self { key, instance }
    }

    /// This instance's id.
    pub const fn instance(&self) -> u64 {
        self.instance
    }

    fn mac(&self) -> HmacSha256 {
        HmacSha256::new_from_slice(&self.key[..]).expect("any key length")
    }

    /// The hand-off of `pull_resp` for `gateway`, stamped `now_ms`.
    pub fn seal(&self, gateway: GatewayEui, pull_resp: &[u8], now_ms: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + pull_resp.len() + TAG_LEN);
        out.push(VERSION);
        out.extend_from_slice(&self.instance.to_be_bytes());
        out.extend_from_slice(&now_ms.to_be_bytes());
        out.extend_from_slice(&gateway.as_u64().to_be_bytes());
        out.extend_from_slice(pull_resp);
        let mut mac = self.mac();
        mac.update(&out);
        out.extend_from_slice(&mac.finalize().into_bytes());
        out
    }

    /// Authenticates `datagram` (constant-time), checks its freshness at `now_ms` and that it
    /// carries a PULL_RESP. Replays are [`ReplayWindow`]'s to refuse.
    pub fn open<'a>(&self, datagram: &'a [u8], now_ms: u64) -> Result<Handoff<'a>, HandoffError> {
        let n = datagram.len();
        if !(HEADER_LEN + 4 + TAG_LEN..=MAX_DATAGRAM).contains(&n) {
            return Err(HandoffError::Length(n));
        }
        if datagram[0] != VERSION {
            return Err(HandoffError::Version(datagram[0]));
        }
        let (signed, tag) = datagram.split_at(n - TAG_LEN);
        let mut mac = self.mac();
        mac.update(signed);
        mac.verify_slice(tag).map_err(|_| HandoffError::BadTag)?;
        let u64_at = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&signed[at..at + 8]);
            u64::from_be_bytes(b)
        };
        let timestamp_ms = u64_at(9);
        let skew = i128::from(timestamp_ms) - i128::from(now_ms);
        if skew.unsigned_abs() > u128::from(FRESH_MS) {
            return Err(HandoffError::Stale(
                skew.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64,
            ));
        }
        let pull_resp = &signed[HEADER_LEN..];
        // GWMP: protocol version 2, a token, identifier 0x03 (PULL_RESP).
        if pull_resp[0] != 2 || pull_resp[3] != 3 {
            return Err(HandoffError::NotPullResp);
        }
        Ok(Handoff {
            sender: u64_at(1),
            timestamp_ms,
            gateway: GatewayEui::new(u64_at(17)),
            pull_resp,
        })
    }
}

/// The hand-offs received within the last [`FRESH_MS`] (by sender timestamp), to refuse a
/// replay: a gateway must not transmit one PULL_RESP twice.
#[derive(Debug, Default)]
pub struct ReplayWindow {
    order: VecDeque<(u64, (u64, u64, GatewayEui, u64))>,
    seen: HashSet<(u64, u64, GatewayEui, u64)>,
}

impl ReplayWindow {
    /// Records `h` received at `now_ms`; `Err` if it was received before.
    pub fn check(&mut self, h: &Handoff<'_>, now_ms: u64) -> Result<(), HandoffError> {
        while self
            .order
            .front()
            .is_some_and(|(at, _)| at.saturating_add(2 * FRESH_MS) < now_ms)
        {
            if let Some((_, k)) = self.order.pop_front() {
                self.seen.remove(&k);
            }
        }
        // The token and the payload's digest stand for the PULL_RESP.
        let digest = h.pull_resp.iter().fold(0xcbf2_9ce4_8422_2325u64, |a, &b| {
            (a ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
        let key = (h.sender, h.timestamp_ms, h.gateway, digest);
        if !self.seen.insert(key) {
            return Err(HandoffError::Replayed);
        }
        self.order.push_back((now_ms, key));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::keys::Kek;

    fn kek(b: u8) -> LabeledKek {
        LabeledKek {
            label: "ns".into(),
            key: Kek::new([b; 16]),
        }
    }

    const PULL_RESP: &[u8] = b"\x02\x12\x34\x03{\"txpk\":{}}";

    #[test]
    fn a_sealed_hand_off_opens_under_the_same_kek_only() {
        let a = HandoffKey::derive(&kek(1), 0xA);
        let b = HandoffKey::derive(&kek(1), 0xB);
        let gw = GatewayEui::new(0xAA55_0000_0000_0001);
        let d = a.seal(gw, PULL_RESP, 1_000_000);
        assert_eq!(d.len(), HEADER_LEN + PULL_RESP.len() + TAG_LEN);
        let h = b.open(&d, 1_000_500).unwrap();
        assert_eq!(
            h,
            Handoff {
                sender: 0xA,
                timestamp_ms: 1_000_000,
                gateway: gw,
                pull_resp: PULL_RESP
            }
        );
        let other = HandoffKey::derive(&kek(2), 0xC);
        assert_eq!(other.open(&d, 1_000_000), Err(HandoffError::BadTag));
        // Every single-bit change is refused.
        for i in 0..d.len() {
            let mut x = d.clone();
            x[i] ^= 0x10;
            assert!(b.open(&x, 1_000_000).is_err(), "byte {i}");
        }
        assert_eq!(b.open(&d, 1_003_000), Err(HandoffError::Stale(-3000)));
        assert_eq!(b.open(&d[..40], 1_000_000), Err(HandoffError::Length(40)));
        let not = a.seal(gw, b"\x02\x00\x00\x01{}", 1_000_000);
        assert_eq!(b.open(&not, 1_000_000), Err(HandoffError::NotPullResp));
        assert!(!format!("{a:?}").contains(&format!("{:?}", &a.key[..4])));
    }

    #[test]
    fn a_replay_within_the_window_is_refused() {
        let k = HandoffKey::derive(&kek(1), 7);
        let gw = GatewayEui::new(1);
        let d1 = k.seal(gw, PULL_RESP, 10_000);
        let d2 = k.seal(gw, b"\x02\x99\x99\x03{}", 10_000);
        let mut w = ReplayWindow::default();
        let h1 = k.open(&d1, 10_000).unwrap();
        assert_eq!(w.check(&h1, 10_000), Ok(()));
        assert_eq!(w.check(&h1, 10_100), Err(HandoffError::Replayed));
        assert_eq!(w.check(&k.open(&d2, 10_000).unwrap(), 10_100), Ok(()));
        // Old entries are forgotten (by then the timestamp check refuses them anyway).
        assert_eq!(w.check(&h1, 20_000), Ok(()));
        assert_eq!(w.seen.len(), 1);
    }

    proptest::proptest! {
        #[test]
        fn open_never_panics(d in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let k = HandoffKey::derive(&kek(3), 1);
            let _ = k.open(&d, 0);
        }
    }
}
