//! The root-key rotation trail: after `PUT …/root-keys` (audited `root_key_rotation`), the join
//! server audits each join or rejoin accepted under the rotated keys (`root_keys_join`) and the
//! first uplink under the session one of them gave (`root_keys_in_use`, which the network server
//! reports with a `SessionInUseReq`, our own message in TS002's shape), both with `refers_to` =
//! the rotation's sequence number: `GET /api/v1/audit?refers_to=N` lists the three together.
//!
//! The JoinAns (RejoinAns) of a join accepted under rotated keys names the rotation in its
//! `VSExtension` ([`protocol::ts002::VS_ROOT_KEY_ROTATION`]), so the network server knows which
//! session's first uplink to report. Each device's stage is kept in memory, restored from the
//! audit log at start ([`OnboardStore::rotation_trails`]); only the embedded store has an audit
//! log (and a management API that rotates keys), so a join server on PostgreSQL has no trail.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use dashmap::DashMap;
use protocol::ids::{DevEui, NetId};
use protocol::ts002::{
    AnsResult, Header, JoinReq, MessageType, ResultCode, SessionInUseAns, SessionInUseReq,
};

use crate::core::{DeviceMap, Outcome};
use crate::onboarding::db::{Actor, AuditEntry, OnboardStore, Role};
use crate::store::StoreError;

/// How far a device's last rotation got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Rotated; no join accepted under the new keys yet.
    Rotated(i64),
    /// A join accepted under the new keys for the network server `net_id`, which has not
    /// reported a first uplink yet.
    Joined { rotation: i64, net_id: NetId },
    /// The first uplink reported (kept to answer a retried report alike).
    InUse { rotation: i64, net_id: NetId },
}

/// The trail's state: its own connection to the audit log, and each rotated device's stage.
pub struct RekeyTrail {
    db: Mutex<OnboardStore>,
    stages: DashMap<DevEui, Stage>,
}

impl std::fmt::Debug for RekeyTrail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RekeyTrail")
            .field("devices", &self.stages.len())
            .finish_non_exhaustive()
    }
}

/// The audit actor of a network server: `ns:<NetID>`, acting for the device's owner.
fn ns_actor(net_id: NetId, owner: Option<&str>) -> Actor {
    Actor {
        id: format!("ns:{net_id}"),
        tenant: owner.map(str::to_owned),
        role: Role::Owner,
    }
}

impl RekeyTrail {
    /// Opens the audit log of `data_dir` and restores each device's stage from it.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        let mut db = OnboardStore::open(data_dir)?;
        let stages = DashMap::new();
        for t in db.rotation_trails()? {
            let joined_by = t.joined.as_ref().and_then(|(_, actor)| {
                actor
                    .strip_prefix("ns:")
                    .and_then(|n| n.parse::<NetId>().ok())
            });
            let stage = match (joined_by, t.in_use) {
                (None, _) => Stage::Rotated(t.rotation),
                (Some(net_id), false) => Stage::Joined {
                    rotation: t.rotation,
                    net_id,
                },
                (Some(net_id), true) => Stage::InUse {
                    rotation: t.rotation,
                    net_id,
                },
            };
            stages.insert(t.dev_eui, stage);
        }
        Ok(Self {
            db: Mutex::new(db),
            stages,
        })
    }

    fn db(&self) -> MutexGuard<'_, OnboardStore> {
        self.db.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The device's root keys were rotated, audited as `rotation`: its next joins are tied to it.
    pub fn rotated(&self, dev_eui: DevEui, rotation: i64) {
        self.stages.insert(dev_eui, Stage::Rotated(rotation));
    }

    /// The rotation whose keys a join of `dev_eui` accepted now puts into use: until the first
    /// uplink under one is reported, every accepted join is (the device may have missed an
    /// earlier Join-accept).
    pub fn pending(&self, dev_eui: DevEui) -> Option<i64> {
        if self.stages.is_empty() {
            return None;
        }
        match *self.stages.get(&dev_eui)? {
            Stage::Rotated(rotation) | Stage::Joined { rotation, .. } => Some(rotation),
            Stage::InUse { .. } => None,
        }
    }

    /// A join or rejoin of `dev_eui` for `net_id` (`what`: which request, no secrets) was
    /// accepted and its nonces are durable: if it puts rotated keys into use, it is audited as
    /// `root_keys_join`, referring to the rotation.
    pub fn joined(&self, devices: &DeviceMap, dev_eui: DevEui, net_id: NetId, what: &str) {
        let Some(rotation) = self.pending(dev_eui) else {
            return;
        };
        let owner = devices.get(&dev_eui).and_then(|d| d.owner.clone());
        let actor = ns_actor(net_id, owner.as_deref());
        let detail = format!("rotation {rotation}: {what} accepted under the new root keys");
        let entry = AuditEntry {
            actor: &actor,
            action: "root_keys_join",
            dev_eui: Some(dev_eui),
            outcome: "ok",
            detail: &detail,
        };
        match self.db().audit_append_referring(&entry, Some(rotation)) {
            Ok(_) => {
                self.stages
                    .insert(dev_eui, Stage::Joined { rotation, net_id });
            }
            Err(e) => tracing::error!(%dev_eui, error = %e, "root_keys_join not audited"),
        }
    }

    /// The network server `sender` reports the first uplink under a session whose JoinAns named
    /// a rotation: audited as `root_keys_in_use` once (a retried report is answered alike).
    /// Refused when the device has no join under that rotation accepted for `sender`.
    fn in_use(
        &self,
        devices: &DeviceMap,
        sender: NetId,
        req: &SessionInUseReq,
    ) -> Result<(), (ResultCode, String)> {
        let dev_eui = req.dev_eui;
        let rotation = req.root_key_rotation;
        let stage = self.stages.get(&dev_eui).map(|s| *s);
        match stage {
            Some(Stage::InUse {
                rotation: r,
                net_id,
            }) if r == rotation && net_id == sender => return Ok(()),
            Some(Stage::Joined {
                rotation: r,
                net_id,
            }) if r == rotation && net_id == sender => {}
            _ => {
                return Err((
                    ResultCode::UnknownDevEui,
                    format!("no join of this device under rotation {rotation} for this network"),
                ))
            }
        }
        let owner = devices.get(&dev_eui).and_then(|d| d.owner.clone());
        let actor = ns_actor(sender, owner.as_deref());
        let detail = format!(
            "rotation {rotation}: first uplink under the new keys (DevAddr {}, FCntUp {})",
            req.dev_addr, req.f_cnt_up
        );
        let entry = AuditEntry {
            actor: &actor,
            action: "root_keys_in_use",
            dev_eui: Some(dev_eui),
            outcome: "ok",
            detail: &detail,
        };
        self.db()
            .audit_append_referring(&entry, Some(rotation))
            .map_err(|e| (ResultCode::Other, format!("not audited: {e}")))?;
        self.stages.insert(
            dev_eui,
            Stage::InUse {
                rotation,
                net_id: sender,
            },
        );
        Ok(())
    }
}

/// The rotation an accepted join puts into use, for its answer ([`crate::wire::name_rotation`]).
pub fn rotation(trail: Option<&RekeyTrail>, outcome: &Outcome) -> Option<i64> {
    match (trail, &outcome.result, outcome.dev_eui) {
        (Some(t), Ok(_), Some(dev_eui)) => t.pending(dev_eui),
        _ => None,
    }
}

/// Which request a join was, for the audit log: `join` or `rejoin type N`, and the DevAddr the
/// network server assigned.
pub fn what(req: &JoinReq) -> String {
    match crate::wire::rejoin_type(req) {
        Some(t) => format!("rejoin type {t} (DevAddr {})", req.dev_addr),
        None => format!("join (DevAddr {})", req.dev_addr),
    }
}

/// The `SessionInUseAns` JSON for a `SessionInUseReq` (`body`) from the authenticated network
/// server `sender`, over either transport: `SenderID` must be `sender`; without a trail (a
/// PostgreSQL store) every report is refused.
pub fn answer_session_in_use(
    trail: Option<&RekeyTrail>,
    devices: &DeviceMap,
    sender: NetId,
    body: &[u8],
) -> Vec<u8> {
    let (header, result) = match SessionInUseReq::parse(body) {
        Err(e) => match serde_json::from_slice::<Header>(body) {
            Ok(h) => (h, Err((ResultCode::MalformedRequest, e.to_string()))),
            Err(_) => return Vec::new(),
        },
        Ok(req) => {
            let result = if req.header.sender_id.parse::<NetId>().ok() != Some(sender) {
                Err((
                    ResultCode::UnknownSender,
                    format!("SenderID {:?} is not the caller", req.header.sender_id),
                ))
            } else {
                match trail {
                    Some(t) => t.in_use(devices, sender, &req),
                    None => Err((
                        ResultCode::Other,
                        "this join server keeps no root-key rotation trail".to_owned(),
                    )),
                }
            };
            (req.header, result)
        }
    };
    let (result_code, description) = match result {
        Ok(()) => (ResultCode::Success, None),
        Err((code, d)) => (code, Some(d)),
    };
    let ans = SessionInUseAns {
        header: header.answer(MessageType::SessionInUseAns),
        result: AnsResult {
            result_code,
            description,
        },
    };
    serde_json::to_vec(&ans).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onboarding::backend::OnboardBackend;
    use crate::onboarding::db::AuditFilter;
    use protocol::ids::DevAddr;

    const DEV: DevEui = DevEui::new(3);

    fn net(n: u32) -> NetId {
        NetId::new(n).unwrap()
    }

    fn report(from: NetId, rotation: i64) -> Vec<u8> {
        let req = SessionInUseReq {
            header: Header {
                protocol_version: protocol::ts002::ProtocolVersion::V1_1,
                sender_id: from.to_string(),
                receiver_id: "70B3D57ED0000001".into(),
                transaction_id: 1,
                message_type: MessageType::SessionInUseReq,
                sender_token: None,
                receiver_token: None,
                sender_ns_id: None,
                receiver_ns_id: None,
                vs_extension: None,
            },
            dev_eui: DEV,
            dev_addr: DevAddr::new(0x2601_0002),
            root_key_rotation: rotation,
            f_cnt_up: 0,
        };
        serde_json::to_vec(&req).unwrap()
    }

    fn result(trail: &RekeyTrail, from: NetId, body: &[u8]) -> ResultCode {
        let json = answer_session_in_use(Some(trail), &DeviceMap::default(), from, body);
        SessionInUseAns::parse(&json).unwrap().result.result_code
    }

    /// Rotation → join → first uplink, each stage surviving a restart (the trail is restored
    /// from the audit log), and a report only from the network server the join was for.
    #[test]
    fn the_trail_follows_a_rotation_across_restarts() {
        let tmp = tempfile::tempdir().unwrap();
        let devices = DeviceMap::default();
        let trail = RekeyTrail::open(tmp.path()).unwrap();
        assert_eq!(trail.pending(DEV), None);
        let cli = Actor::cli();
        let rotation = trail
            .db()
            .audit_append_referring(
                &AuditEntry {
                    actor: &cli,
                    action: "root_key_rotation",
                    dev_eui: Some(DEV),
                    outcome: "ok",
                    detail: "",
                },
                None,
            )
            .unwrap();
        trail.rotated(DEV, rotation);
        drop(trail);
        let trail = RekeyTrail::open(tmp.path()).unwrap();
        assert_eq!(trail.pending(DEV), Some(rotation), "restored: rotated");
        // No join yet: a report is refused.
        let body = report(net(0x13), rotation);
        assert_eq!(result(&trail, net(0x13), &body), ResultCode::UnknownDevEui);
        trail.joined(&devices, DEV, net(0x13), "rejoin type 1");
        drop(trail);
        let trail = RekeyTrail::open(tmp.path()).unwrap();
        assert_eq!(trail.pending(DEV), Some(rotation), "restored: joined");
        // Another network's report, a report naming another rotation, a SenderID that is not
        // the caller: refused.
        let other = report(net(0x14), rotation);
        assert_eq!(result(&trail, net(0x14), &other), ResultCode::UnknownDevEui);
        let wrong = report(net(0x13), rotation + 1);
        assert_eq!(result(&trail, net(0x13), &wrong), ResultCode::UnknownDevEui);
        assert_eq!(result(&trail, net(0x14), &body), ResultCode::UnknownSender);
        // The report, and its retry: one record.
        assert_eq!(result(&trail, net(0x13), &body), ResultCode::Success);
        assert_eq!(result(&trail, net(0x13), &body), ResultCode::Success);
        assert_eq!(trail.pending(DEV), None);
        drop(trail);
        let trail = RekeyTrail::open(tmp.path()).unwrap();
        assert_eq!(trail.pending(DEV), None, "restored: in use");
        assert_eq!(result(&trail, net(0x13), &body), ResultCode::Success);
        let filter = AuditFilter {
            refers_to: Some(rotation),
            ..AuditFilter::default()
        };
        let records = trail.db().audit(&filter, None).unwrap();
        let actions: Vec<_> = records.iter().map(|r| r.action.as_str()).collect();
        assert_eq!(
            actions,
            ["root_key_rotation", "root_keys_join", "root_keys_in_use"]
        );
        assert_eq!(records[2].actor, "ns:000013");
        // Without a trail (PostgreSQL), reports are refused; garbage gets no answer.
        let json = answer_session_in_use(None, &devices, net(0x13), &body);
        let ans = SessionInUseAns::parse(&json).unwrap();
        assert_eq!(ans.result.result_code, ResultCode::Other);
        assert!(answer_session_in_use(Some(&trail), &devices, net(0x13), b"{").is_empty());
    }
}
