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
    AnsResult, Header, JoinAns, JoinReq, MessageType, ResultCode, SessionInUseAns, SessionInUseReq,
    VS_ROOT_KEY_ROTATION,
};

use crate::core::DeviceMap;
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

/// Which request a join was, for the audit log: `join` or `rejoin type N`, and the DevAddr the
/// network server assigned.
pub fn what(req: &JoinReq) -> String {
    match crate::wire::rejoin_type(req) {
        Some(t) => format!("rejoin type {t} (DevAddr {})", req.dev_addr),
        None => format!("join (DevAddr {})", req.dev_addr),
    }
}

/// Names `rotation` in a successful answer's `VSExtension` ([`VS_ROOT_KEY_ROTATION`]).
pub fn name_rotation(ans: &mut JoinAns, rotation: Option<i64>) {
    let Some(rotation) = rotation else {
        return;
    };
    if !ans.result.result_code.is_success() {
        return;
    }
    let ext = ans
        .header
        .vs_extension
        .get_or_insert_with(|| serde_json::json!({}));
    if let Some(map) = ext.as_object_mut() {
        map.insert(VS_ROOT_KEY_ROTATION.to_owned(), rotation.into());
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
