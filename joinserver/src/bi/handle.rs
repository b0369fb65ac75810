//! One Backend Interfaces request, from its body and credentials to its answer's JSON.
//!
//! The steps of [`Bi::handle`]:
//! 1. read the header (an unreadable body still gets a `MalformedRequest` answer);
//! 2. authenticate the caller as a peer ([`super::auth`]) and check that the `SenderID` is that
//!    peer's NetID (its application server's id for `AppSKeyReq`);
//! 3. dispatch on `MessageType`: `JoinReq` through the same join pipeline, rules and group
//!    commit as the UDP link ([`crate::core::process`], the answer leaving only once its nonces
//!    are durable), `HomeNSReq`, `AppSKeyReq`, `RejoinReq` ([`crate::core::process_rejoin`],
//!    the same way), our own `SessionInUseReq` ([`crate::rekey::answer_session_in_use`]), and
//!    anything else `MalformedRequest`.
//!
//! Every refusal is a TS002 1.0 `ResultCode` with a `Description`, in an HTTP 200: ChirpStack
//! drops the body of any other status and knows only the 1.0 codes.

use std::sync::Arc;
use std::time::Instant;

use protocol::ids::{JoinEui, NetId};
use protocol::keys::AppSKey;
use protocol::keywrap::KeyEnvelope;
use protocol::ts002::{
    Ans, AnsResult, AppSKeyAns, AppSKeyReq, Header, HomeNsAns, HomeNsReq, JoinAns, JoinReq,
    MessageType, ProtocolVersion, ResultCode,
};
use rustls_pki_types::CertificateDer;
use serde::Serialize;
use tokio::sync::oneshot;

use super::auth::{PeerOptions, Peers};
use super::session::{self, SessionKeyId};
use crate::core::{self, DeviceMap, JoinContext, Outcome};
use crate::metrics::Metrics;
use crate::queue::Queued;
use crate::store::{GroupCommit, Job, JoinCommit};
use crate::wire;

/// Everything the listener's requests need.
pub struct Bi {
    /// Join processing context (KEKs, rules): the link's.
    pub ctx: JoinContext,
    /// Devices in memory: the link's.
    pub devices: Arc<DeviceMap>,
    /// The store writer shared with the link.
    pub writer: GroupCommit<Queued>,
    /// Who may call.
    pub peers: Peers,
    /// Metrics.
    pub metrics: Metrics,
    /// The root-key rotation trail: the link's.
    pub rekey: Option<Arc<crate::rekey::RekeyTrail>>,
}

impl std::fmt::Debug for Bi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bi")
            .field("peers", &self.peers)
            .finish_non_exhaustive()
    }
}

/// What a request brings besides its body.
#[derive(Debug, Clone, Copy, Default)]
pub struct Credentials<'a> {
    /// The `Authorization` header's value.
    pub authorization: Option<&'a str>,
    /// The client certificate chain, leaf first.
    pub chain: Option<&'a [CertificateDer<'static>]>,
}

/// An answer, and whether the caller failed to authenticate (the listener limits those).
#[derive(Debug)]
pub struct Answer {
    /// The JSON body (HTTP 200).
    pub json: Vec<u8>,
    /// The caller is no peer.
    pub auth_failed: bool,
}

fn json<T: Serialize>(v: &T) -> Vec<u8> {
    // Serialising these plain structs into a Vec cannot fail.
    serde_json::to_vec(v).unwrap_or_default()
}

/// A refusal of the request with `header`.
fn refusal(header: &Header, code: ResultCode, description: impl Into<String>) -> Vec<u8> {
    json(&Ans::refusal(header, code, description))
}

/// The header of a body that has none readable: what is known of it, for the refusal.
fn unreadable_header(body: &[u8]) -> Header {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let text = |k: &str| {
        v.get(k)
            .and_then(|x| x.as_str())
            .unwrap_or_default()
            .to_owned()
    };
    let message_type = serde_json::from_value::<MessageType>(v["MessageType"].clone())
        .unwrap_or(MessageType::ErrorNotif);
    Header {
        protocol_version: ProtocolVersion::V1_0,
        sender_id: text("SenderID"),
        receiver_id: text("ReceiverID"),
        transaction_id: v["TransactionID"]
            .as_u64()
            .and_then(|t| u32::try_from(t).ok())
            .unwrap_or(0),
        message_type,
        sender_token: None,
        receiver_token: None,
        sender_ns_id: None,
        receiver_ns_id: None,
        vs_extension: None,
    }
}

/// Refusals answer with TS002 1.0 codes only (`MalformedMessage` is 1.1's).
fn as_1_0(code: ResultCode) -> ResultCode {
    if code.is_malformed() {
        ResultCode::MalformedRequest
    } else {
        code
    }
}

impl Bi {
    fn count(&self, message_type: MessageType, result: &str) {
        let t = message_type.to_string();
        self.metrics
            .bi_requests
            .with_label_values(&[t.as_str(), result])
            .inc();
    }

    fn refuse(
        &self,
        header: &Header,
        reason: &'static str,
        code: ResultCode,
        d: String,
    ) -> Vec<u8> {
        self.metrics.bi_refused.with_label_values(&[reason]).inc();
        self.count(header.message_type, reason);
        refusal(header, code, d)
    }

    /// Answers one request.
    pub async fn handle(&self, body: &[u8], creds: Credentials<'_>) -> Answer {
        let answer = |json| Answer {
            json,
            auth_failed: false,
        };
        let header = match serde_json::from_slice::<Header>(body) {
            Ok(h) => h,
            Err(e) => {
                let h = unreadable_header(body);
                let d = format!("not a TS002 message: {e}");
                return answer(self.refuse(&h, "malformed", ResultCode::MalformedRequest, d));
            }
        };
        let peer = match self.peers.identify(creds.authorization, creds.chain) {
            Ok(p) => p,
            Err(e) => {
                tracing::info!(reason = e.kind(), sender = %header.sender_id, "backend interfaces: caller refused");
                let d = format!("authentication failed: {e}");
                return Answer {
                    json: self.refuse(&header, e.kind(), ResultCode::UnknownSender, d),
                    auth_failed: true,
                };
            }
        };
        let options = self.peers.options.get(&peer).cloned().unwrap_or_default();
        if let Err(d) = check_sender(&header, peer, &options) {
            tracing::warn!(peer = %peer, sender = %header.sender_id, "backend interfaces: SenderID is not the authenticated peer");
            return answer(self.refuse(&header, "sender_mismatch", ResultCode::UnknownSender, d));
        }
        if header.protocol_version == ProtocolVersion::V1_1 && header.sender_ns_id.is_none() {
            let d = "ProtocolVersion 1.1 requires SenderNSID".to_owned();
            return answer(self.refuse(&header, "malformed", ResultCode::MalformedRequest, d));
        }
        let json = match header.message_type {
            MessageType::JoinReq | MessageType::RejoinReq => {
                self.join(body, &header, peer, &options).await
            }
            MessageType::HomeNSReq => self.home_ns(body, &header),
            MessageType::SessionInUseReq => {
                let json = crate::rekey::answer_session_in_use(
                    self.rekey.as_deref(),
                    &self.devices,
                    peer,
                    body,
                );
                self.count(header.message_type, "answered");
                json
            }
            MessageType::AppSKeyReq => self.app_s_key(body, &header, peer, &options),
            other => self.refuse(
                &header,
                "unsupported",
                ResultCode::MalformedRequest,
                format!("MessageType {other} is not served by this join server"),
            ),
        };
        answer(json)
    }

    /// A `JoinReq` or a `RejoinReq`: the link's pipeline, then the answer once its nonces are
    /// durable.
    async fn join(
        &self,
        body: &[u8],
        header: &Header,
        peer: NetId,
        options: &PeerOptions,
    ) -> Vec<u8> {
        let received = Instant::now();
        let req = match wire::parse_request(body) {
            Ok(r) => r,
            Err(e) => {
                let d = e.to_string();
                return self.refuse(header, "malformed", ResultCode::MalformedRequest, d);
            }
        };
        if let Err(d) = check_mac_version(&self.devices, &req) {
            return self.refuse(header, "mac_version", ResultCode::JoinReqFailed, d);
        }
        let fields = wire::fields(&req, peer, crate::link::now_ms());
        let outcome = if wire::is_rejoin(&req) {
            core::process_rejoin(&self.ctx, &self.devices, &fields)
        } else {
            core::process(&self.ctx, &self.devices, &fields)
        };
        let mut ans = wire::answer(&req, &outcome);
        ans.result.result_code = as_1_0(ans.result.result_code);
        let rotation = crate::rekey::rotation(self.rekey.as_deref(), &outcome);
        wire::name_rotation(&mut ans, rotation);
        let rejoin = wire::is_rejoin(&req);
        if let Err(e) = self.complete_success(&mut ans, &outcome, peer, options, rejoin) {
            tracing::error!(error = %e, "backend interfaces: AppSKey envelope");
            ans = JoinAns::failure(&req.header, ResultCode::Other, Some(e));
        }
        let mut result = outcome.kind();
        if let (Some(update), Some(previous)) = (outcome.update, outcome.previous) {
            let (tx, rx) = oneshot::channel();
            // No answer kept beside the commit: a retried JoinReq over HTTP is answered by
            // the DevNonce rule, whichever instance it reaches.
            let job = Job::Join(JoinCommit {
                update,
                previous,
                answer: None,
            });
            let committed =
                self.writer.submit(job, Queued::Http(tx)).is_ok() && rx.await.unwrap_or(false);
            if !committed {
                result = "store_failed";
                let d = "the join server could not store the nonces; try again".to_owned();
                ans = JoinAns::failure(&req.header, ResultCode::JoinReqFailed, Some(d));
            }
        }
        if let (Some(t), Some(_), "success") = (&self.rekey, rotation, result) {
            t.joined(&self.devices, req.dev_eui, peer, &crate::rekey::what(&req));
        }
        self.metrics.count_join(wire::rejoin_type(&req), result);
        self.count(header.message_type, result);
        self.metrics
            .join_latency
            .observe(received.elapsed().as_secs_f64());
        json(&ans)
    }

    /// A success answer gets its `SessionKeyID`, and its AppSKey in clear when the device's
    /// owner lets this peer decrypt.
    fn complete_success(
        &self,
        ans: &mut JoinAns,
        outcome: &Outcome,
        peer: NetId,
        options: &PeerOptions,
        rejoin: bool,
    ) -> Result<(), String> {
        let (Ok(accepted), Some(update)) = (&outcome.result, &outcome.update) else {
            return Ok(());
        };
        // A rejoin's keys come from its RJcount, not a DevNonce: its session gets no
        // SessionKeyID (an AppSKeyReq re-derives keys from a join's DevNonce).
        if let (false, Some(dev_nonce)) = (rejoin, update.state.last_dev_nonce) {
            let id = SessionKeyId {
                net_id: peer,
                join_nonce: accepted.join_nonce,
                dev_nonce: protocol::ids::DevNonce(dev_nonce),
            };
            ans.session_key_id = Some(id.to_bytes());
        }
        let owner = self
            .devices
            .get(&update.dev_eui)
            .and_then(|d| d.owner.clone());
        if clear_for(options, owner.as_deref()) {
            let kek = core::app_kek(&self.ctx, owner.as_deref());
            let key: AppSKey = accepted
                .app_s_key
                .open(Some(&kek.key))
                .map_err(|e| e.to_string())?;
            ans.app_s_key = Some(self.app_s_key_envelope(options, owner.as_deref(), &key)?);
        }
        Ok(())
    }

    /// The AppSKey for `options`' peer: in clear if the owner lets it decrypt, otherwise wrapped
    /// under the owner's application KEK.
    fn app_s_key_envelope(
        &self,
        options: &PeerOptions,
        owner: Option<&str>,
        key: &AppSKey,
    ) -> Result<KeyEnvelope, String> {
        let sealed = if clear_for(options, owner) {
            KeyEnvelope::seal("", None, key)
        } else {
            let kek = core::app_kek(&self.ctx, owner);
            KeyEnvelope::seal(&kek.label, Some(&kek.key), key)
        };
        sealed.map_err(|e| e.to_string())
    }

    /// A `HomeNSReq`: the home NetID of a claimed device, nothing more.
    fn home_ns(&self, body: &[u8], header: &Header) -> Vec<u8> {
        let req = match HomeNsReq::parse(body) {
            Ok(r) => r,
            Err(e) => {
                let d = e.to_string();
                return self.refuse(header, "malformed", ResultCode::MalformedRequest, d);
            }
        };
        let receiver = req.header.receiver_id.parse::<JoinEui>().ok();
        let home = self
            .devices
            .get(&req.dev_eui)
            .filter(|d| receiver.is_none_or(|j| j == d.join_eui))
            .map(|d| d.home_net_id);
        let h_net_id = match home {
            None => {
                let d = "unknown device".to_owned();
                return self.refuse(header, "unknown_dev_eui", ResultCode::UnknownDevEui, d);
            }
            Some(None) => {
                let d = "device is not claimed: it has no home network".to_owned();
                return self.refuse(header, "unclaimed", ResultCode::ActivationDisallowed, d);
            }
            Some(Some(n)) => n,
        };
        self.count(MessageType::HomeNSReq, "success");
        json(&HomeNsAns {
            header: req.header.answer(MessageType::HomeNSAns),
            result: success(),
            h_net_id: Some(h_net_id),
        })
    }

    /// An `AppSKeyReq`: the AppSKey of the device's current session, for its home network.
    fn app_s_key(
        &self,
        body: &[u8],
        header: &Header,
        peer: NetId,
        options: &PeerOptions,
    ) -> Vec<u8> {
        let req = match AppSKeyReq::parse(body) {
            Ok(r) => r,
            Err(e) => {
                let d = e.to_string();
                return self.refuse(header, "malformed", ResultCode::MalformedRequest, d);
            }
        };
        let found = session::app_s_key(&self.devices, req.dev_eui, &req.session_key_id, peer);
        let envelope = found.map_err(|e| (e.kind(), e.result_code(), e.to_string()));
        let envelope = envelope.and_then(|(key, owner)| {
            self.app_s_key_envelope(options, owner.as_deref(), &key)
                .map_err(|e| ("key_wrap", ResultCode::Other, e))
        });
        match envelope {
            Err((reason, code, d)) => self.refuse(header, reason, code, d),
            Ok(env) => {
                self.count(MessageType::AppSKeyReq, "success");
                json(&AppSKeyAns {
                    header: req.header.answer(MessageType::AppSKeyAns),
                    result: success(),
                    dev_eui: req.dev_eui,
                    app_s_key: Some(env),
                    session_key_id: req.session_key_id,
                })
            }
        }
    }
}

fn success() -> AnsResult {
    AnsResult {
        result_code: ResultCode::Success,
        description: None,
    }
}

/// Whether the owner lets this peer decrypt its devices' payloads.
fn clear_for(options: &PeerOptions, owner: Option<&str>) -> bool {
    owner.is_some_and(|o| options.clear_app_s_key_owners.contains(o))
}

/// The `SenderID` must be the authenticated peer's NetID (its application server's id for an
/// `AppSKeyReq`).
fn check_sender(header: &Header, peer: NetId, options: &PeerOptions) -> Result<(), String> {
    let sender = header.sender_id.as_str();
    let is_peer = sender.parse::<NetId>() == Ok(peer);
    let is_as = header.message_type == MessageType::AppSKeyReq
        && options.as_id.as_deref().is_some_and(|a| a == sender);
    if is_peer || is_as {
        Ok(())
    } else {
        Err(format!(
            "SenderID {sender:?} is not the authenticated network server (NetID {peer})"
        ))
    }
}

/// The JoinReq's `MACVersion` must be of the device's LoRaWAN family (1.0.x or 1.1): a network
/// server that runs a 1.1 device as 1.0.x (or the reverse) would build a session other than the
/// device's. An unknown device is left to the pipeline (`UnknownDevEUI`).
fn check_mac_version(devices: &DeviceMap, req: &JoinReq) -> Result<(), String> {
    let follows = req
        .header
        .vs_extension
        .as_ref()
        .and_then(|v| v.get(protocol::ts002::VS_FOLLOWS_JS_MAC_VERSION))
        .and_then(serde_json::Value::as_bool)
        == Some(true);
    match devices.get(&req.dev_eui) {
        Some(d) if !follows && d.mac_version.is_1_1() != req.mac_version.is_1_1() => Err(format!(
            "MACVersion {} differs from the device's LoRaWAN {}",
            req.mac_version, d.mac_version
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreadable_bodies_keep_what_can_be_read() {
        let h = unreadable_header(
            br#"{"MessageType":"HomeNSReq","TransactionID":7,"SenderID":"000013"}"#,
        );
        assert_eq!(
            (h.message_type, h.transaction_id, h.sender_id.as_str()),
            (MessageType::HomeNSReq, 7, "000013")
        );
        let a = Ans::refusal(&h, ResultCode::MalformedRequest, "x");
        assert_eq!(a.header.message_type, MessageType::HomeNSAns);
        assert_eq!(a.header.receiver_id, "000013");
        let h = unreadable_header(b"\xff not json");
        assert_eq!(
            (h.message_type, h.transaction_id),
            (MessageType::ErrorNotif, 0)
        );
        let h = unreadable_header(br#"{"TransactionID":99999999999}"#);
        assert_eq!(h.transaction_id, 0);
    }

    #[test]
    fn sender_must_be_the_peer_or_its_application_server() {
        let peer = NetId::new(0x13).unwrap();
        let mut h = unreadable_header(br#"{"MessageType":"JoinReq","SenderID":"000013"}"#);
        let opts = PeerOptions {
            as_id: Some("as-1".into()),
            ..PeerOptions::default()
        };
        assert!(check_sender(&h, peer, &opts).is_ok());
        h.sender_id = "000014".into();
        assert!(check_sender(&h, peer, &opts).is_err());
        h.sender_id = "as-1".into();
        assert!(
            check_sender(&h, peer, &opts).is_err(),
            "a JoinReq comes from the NS"
        );
        h.message_type = MessageType::AppSKeyReq;
        assert!(check_sender(&h, peer, &opts).is_ok());
        assert_eq!(
            as_1_0(ResultCode::MalformedMessage),
            ResultCode::MalformedRequest
        );
        assert_eq!(as_1_0(ResultCode::MicFailed), ResultCode::MicFailed);
    }
}
