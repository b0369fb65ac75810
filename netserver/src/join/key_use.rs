//! Reporting the first uplink under rotated root keys to the join server.
//!
//! A JoinAns (RejoinAns) whose `VSExtension` names a root-key rotation
//! ([`protocol::ts002::VS_ROOT_KEY_ROTATION`]) makes the join path watch the session it
//! installs ([`KeyUse::watch`]). The session's first uplink in use (the first accepted under it;
//! LoRaWAN 1.1: its RekeyInd) ends the watch ([`KeyUse::used`]) and queues a report, which
//! [`report_loop`] sends to the device's join server as a `SessionInUseReq` (our own message in
//! TS002's shape) over the same client as joins, retried like a join, so that the join server's
//! audit log ties the rotation to the first uplink under the new keys.
//!
//! Watches live in memory: a restart of the network server between the Join-accept and the
//! first uplink loses that report (the join server's log then shows the join, not the use).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use dashmap::DashMap;
use protocol::ids::{DevAddr, DevEui, JoinEui, NetId};
use protocol::ts002::{Header, MessageType, ProtocolVersion, SessionInUseAns, SessionInUseReq};
use tokio::sync::{mpsc, watch};

use crate::join::client::{JoinServerClient, JoinTransaction};

/// A session whose first uplink is to be reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Watched {
    join_eui: JoinEui,
    dev_addr: DevAddr,
    rotation: i64,
}

/// A report to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    /// The device.
    pub dev_eui: DevEui,
    /// Its JoinEUI (which join server).
    pub join_eui: JoinEui,
    /// The session's DevAddr.
    pub dev_addr: DevAddr,
    /// The rotation the JoinAns named.
    pub rotation: i64,
    /// FCntUp of the first uplink in use.
    pub f_cnt_up: u32,
}

/// The watched sessions and the queue of reports.
#[derive(Debug)]
pub struct KeyUse {
    watched: DashMap<DevEui, Watched>,
    tx: mpsc::UnboundedSender<Report>,
    rx: Mutex<Option<mpsc::UnboundedReceiver<Report>>>,
}

impl Default for KeyUse {
    fn default() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Self {
            watched: DashMap::new(),
            tx,
            rx: Mutex::new(Some(rx)),
        }
    }
}

impl KeyUse {
    /// Watches the session at `dev_addr` that a join under `rotation` gave `dev_eui` (replacing
    /// any earlier watch of the device).
    pub fn watch(&self, dev_eui: DevEui, join_eui: JoinEui, dev_addr: DevAddr, rotation: i64) {
        self.watched.insert(
            dev_eui,
            Watched {
                join_eui,
                dev_addr,
                rotation,
            },
        );
    }

    /// The session of `dev_eui` at `dev_addr` is in use (`f_cnt_up`: the frame's FCntUp): if it
    /// is watched, the watch ends and its report is queued. Cheap when nothing is watched.
    pub fn used(&self, dev_eui: DevEui, dev_addr: DevAddr, f_cnt_up: u32) {
        if self.watched.is_empty() {
            return;
        }
        let Some((_, w)) = self
            .watched
            .remove_if(&dev_eui, |_, w| w.dev_addr == dev_addr)
        else {
            return;
        };
        let _ = self.tx.send(Report {
            dev_eui,
            join_eui: w.join_eui,
            dev_addr,
            rotation: w.rotation,
            f_cnt_up,
        });
    }

    /// The queue's receiving end, once.
    pub fn take_reports(&self) -> Option<mpsc::UnboundedReceiver<Report>> {
        self.rx.lock().ok()?.take()
    }
}

/// The `SessionInUseReq` JSON of `r` from the network server `net_id`.
pub fn request(r: &Report, net_id: NetId, transaction_id: u32) -> Vec<u8> {
    let req = SessionInUseReq {
        header: Header {
            protocol_version: ProtocolVersion::V1_1,
            sender_id: net_id.to_string(),
            receiver_id: r.join_eui.to_string(),
            transaction_id,
            message_type: MessageType::SessionInUseReq,
            sender_token: None,
            receiver_token: None,
            sender_ns_id: Some(net_id.to_string()),
            receiver_ns_id: None,
            vs_extension: None,
        },
        dev_eui: r.dev_eui,
        dev_addr: r.dev_addr,
        root_key_rotation: r.rotation,
        f_cnt_up: r.f_cnt_up,
    };
    serde_json::to_vec(&req).unwrap_or_default()
}

/// How many times a report is sent, and how long each waits for its answer.
const TRIES: u32 = 4;
const ANSWER_WAIT: Duration = Duration::from_secs(2);

/// Sends one report, retried (same TransactionID) until answered; the answer's result.
async fn send<C: JoinServerClient>(
    client: &Arc<C>,
    r: &Report,
    body: Vec<u8>,
) -> Result<(), String> {
    let mut t = client.begin(r.join_eui, body);
    for _ in 0..TRIES {
        t.send().map_err(|e| e.to_string())?;
        let deadline = tokio::time::Instant::now() + ANSWER_WAIT;
        if let Some(answer) = t.answer_until(deadline).await {
            let ans = SessionInUseAns::parse(&answer).map_err(|e| e.to_string())?;
            return if ans.result.result_code.is_success() {
                Ok(())
            } else {
                Err(format!(
                    "{}: {}",
                    ans.result.result_code,
                    ans.result.description.unwrap_or_default()
                ))
            };
        }
    }
    Err("no answer".into())
}

/// Sends the queued reports until `stop`, one at a time (they are rare: one per rotated
/// device), each counted by result in `counter` (`netserver_key_use_reports_total{result}`).
pub async fn report_loop<C: JoinServerClient>(
    mut reports: mpsc::UnboundedReceiver<Report>,
    client: Arc<C>,
    (net_id, next_tid): (NetId, impl Fn() -> u32 + Send),
    counter: prometheus::IntCounterVec,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let r = tokio::select! {
            r = reports.recv() => match r { Some(r) => r, None => return },
            _ = stop.changed() => return,
        };
        let body = request(&r, net_id, next_tid());
        match send(&client, &r, body).await {
            Ok(()) => {
                tracing::info!(dev_eui = %r.dev_eui, rotation = r.rotation, "first uplink under rotated root keys reported");
                counter.with_label_values(&["reported"]).inc();
            }
            Err(e) => {
                tracing::warn!(dev_eui = %r.dev_eui, rotation = r.rotation, error = %e, "first uplink under rotated root keys not reported");
                counter.with_label_values(&["failed"]).inc();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_watched_session_is_reported_once_at_its_address_only() {
        let k = KeyUse::default();
        let mut rx = k.take_reports().unwrap();
        assert!(k.take_reports().is_none(), "one receiver");
        let dev = DevEui::new(3);
        let (a, b) = (DevAddr::new(0x2600_0001), DevAddr::new(0x2600_0002));
        k.used(dev, a, 0);
        assert!(rx.try_recv().is_err(), "nothing watched");
        k.watch(dev, JoinEui::new(1), b, 42);
        k.used(dev, a, 7);
        assert!(
            rx.try_recv().is_err(),
            "the old session's uplink is not the new one's"
        );
        k.used(dev, b, 0);
        let r = rx.try_recv().unwrap();
        assert_eq!((r.dev_addr, r.rotation, r.f_cnt_up), (b, 42, 0));
        k.used(dev, b, 1);
        assert!(rx.try_recv().is_err(), "once");
        let json = request(&r, NetId::new(0x13).unwrap(), 9);
        let parsed = SessionInUseReq::parse(&json).unwrap();
        assert_eq!(parsed.root_key_rotation, 42);
        assert_eq!(parsed.header.sender_id, "000013");
        assert_eq!(parsed.header.receiver_id, "0000000000000001");
    }
}
