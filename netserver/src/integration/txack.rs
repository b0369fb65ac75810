//! The gateways' TX_ACKs as the devices' events: a downlink sent to a gateway waits here, by
//! gateway and PULL_RESP token, until the gateway's TX_ACK names it. An acknowledgement becomes
//! the device's `txack` event; a refusal (`TOO_LATE`, `COLLISION_PACKET`, a duty-cycle
//! refusal, ...) its `log` event with ChirpStack's `DOWNLINK_GATEWAY` code, so that the
//! application learns that the payload it queued was not transmitted.
//!
//! Bounded: at most [`SentDownlinks::CAPACITY`] downlinks wait, each at most
//! [`SentDownlinks::TTL`] (a gateway acknowledges within the second the PULL_RESP arrives;
//! forwarders that send no TX_ACK leave entries that expire). Pure: time is passed in.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use protocol::ids::GatewayEui;

use crate::integration::events::{rfc3339, LogLine, TxAckLine};

/// Each waiting downlink by gateway and PULL_RESP token: when it was sent, its event.
type Waiting = HashMap<(GatewayEui, [u8; 2]), (Instant, TxAckLine)>;

/// The downlinks sent and not yet acknowledged, by gateway and token.
#[derive(Debug, Default)]
pub struct SentDownlinks {
    waiting: Mutex<Waiting>,
}

impl SentDownlinks {
    /// The most downlinks that wait for their TX_ACK at once.
    pub const CAPACITY: usize = 65_536;
    /// How long a downlink waits for its TX_ACK.
    pub const TTL: Duration = Duration::from_secs(30);

    /// Remembers the downlink sent through `gateway` with PULL_RESP `token` at `now`. A full
    /// table first forgets the expired ones; if it is still full, the downlink is not
    /// remembered (its TX_ACK makes no event) and `false` is returned.
    pub fn insert(
        &self,
        now: Instant,
        gateway: GatewayEui,
        token: [u8; 2],
        line: TxAckLine,
    ) -> bool {
        let mut w = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        if w.len() >= Self::CAPACITY {
            w.retain(|_, (at, _)| now.saturating_duration_since(*at) < Self::TTL);
            if w.len() >= Self::CAPACITY {
                return false;
            }
        }
        w.insert((gateway, token), (now, line));
        true
    }

    /// The downlink `gateway`'s TX_ACK for `token` names, if it was sent less than
    /// [`Self::TTL`] before `now`; it is forgotten.
    pub fn take(&self, now: Instant, gateway: GatewayEui, token: [u8; 2]) -> Option<TxAckLine> {
        let mut w = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        let (at, line) = w.remove(&(gateway, token))?;
        (now.saturating_duration_since(at) < Self::TTL).then_some(line)
    }

    /// How many downlinks wait.
    pub fn len(&self) -> usize {
        self.waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Whether none waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The event line of a TX_ACK for `sent`, at `wall`: its `txack` event when `error` is `none`,
/// else its `log` event (`DOWNLINK_GATEWAY`, the TX_ACK's error label in upper case).
pub fn event_line(mut sent: TxAckLine, error: &str, wall: SystemTime) -> Option<Vec<u8>> {
    let received_at = rfc3339(wall);
    if error == "none" {
        sent.received_at = received_at;
        return serde_json::to_vec(&sent).ok();
    }
    let code = error.to_ascii_uppercase();
    let mut context = std::collections::BTreeMap::from([
        (
            "gatewayId".to_owned(),
            format!("{:016x}", sent.gateway.as_u64()),
        ),
        ("fCntDown".to_owned(), sent.f_cnt_down.to_string()),
        ("downlinkId".to_owned(), sent.downlink_id.to_string()),
        ("error".to_owned(), code.clone()),
    ]);
    if let Some(q) = sent.queue_item_id {
        context.insert("queueItemId".to_owned(), q.to_string());
    }
    let line = LogLine {
        kind: "log".into(),
        dev_eui: sent.dev_eui,
        level: "ERROR".into(),
        code: "DOWNLINK_GATEWAY".into(),
        description: format!(
            "the gateway did not transmit the downlink (FCntDown {}): {code}",
            sent.f_cnt_down
        ),
        context,
        tenant: sent.tenant,
        received_at,
    };
    serde_json::to_vec(&line).ok()
}

#[cfg(test)]
mod tests {
    use protocol::ids::DevEui;

    use super::*;

    fn line(f_cnt_down: u32) -> TxAckLine {
        TxAckLine {
            kind: "txack".into(),
            dev_eui: DevEui::new(0xB1),
            downlink_id: 0x0001_0203,
            queue_item_id: Some(4),
            f_cnt_down,
            gateway: GatewayEui::new(0xAA),
            frequency: 869_525_000,
            power: Some(27),
            spreading_factor: Some(9),
            bandwidth_khz: Some(125),
            delay_s: 2,
            tenant: Some("acme".into()),
            received_at: String::new(),
        }
    }

    #[test]
    fn a_tx_ack_takes_its_downlink_once_within_the_ttl() {
        let t = SentDownlinks::default();
        let (now, gw) = (Instant::now(), GatewayEui::new(0xAA));
        assert!(t.insert(now, gw, [1, 2], line(1)));
        assert!(t.insert(now, gw, [3, 4], line(2)));
        assert_eq!(
            t.take(now, GatewayEui::new(0xAB), [1, 2]),
            None,
            "another gateway"
        );
        assert_eq!(t.take(now, gw, [1, 2]), Some(line(1)));
        assert_eq!(t.take(now, gw, [1, 2]), None, "once");
        let late = now + SentDownlinks::TTL;
        assert_eq!(t.take(late, gw, [3, 4]), None, "expired");
        assert!(t.is_empty());
    }

    #[test]
    fn a_full_table_forgets_the_expired_then_refuses() {
        let t = SentDownlinks::default();
        let now = Instant::now();
        for i in 0..SentDownlinks::CAPACITY {
            let gw = GatewayEui::new(i as u64 >> 16);
            assert!(t.insert(now, gw, (i as u16).to_be_bytes(), line(0)));
        }
        assert!(!t.insert(now, GatewayEui::new(9_999), [0, 0], line(0)));
        let later = now + SentDownlinks::TTL;
        assert!(t.insert(later, GatewayEui::new(9_999), [0, 0], line(0)));
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn an_acknowledgement_is_a_txack_and_a_refusal_a_downlink_gateway_log() {
        let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let ack: serde_json::Value =
            serde_json::from_slice(&event_line(line(7), "none", wall).unwrap()).unwrap();
        assert_eq!(ack["type"], "txack");
        assert_eq!(ack["f_cnt_down"], 7);
        assert_eq!(ack["queue_item_id"], 4);
        assert_eq!(ack["tenant"], "acme");
        assert_eq!(ack["received_at"], "2027-01-15T08:00:00.000Z");
        let log: LogLine =
            serde_json::from_slice(&event_line(line(7), "too_late", wall).unwrap()).unwrap();
        assert_eq!(
            (log.level.as_str(), log.code.as_str()),
            ("ERROR", "DOWNLINK_GATEWAY")
        );
        assert!(log.description.contains("TOO_LATE"), "{}", log.description);
        assert_eq!(log.context["gatewayId"], "00000000000000aa");
        assert_eq!(log.context["queueItemId"], "4");
        assert_eq!(log.context["fCntDown"], "7");
        assert_eq!(log.tenant.as_deref(), Some("acme"));
    }
}
