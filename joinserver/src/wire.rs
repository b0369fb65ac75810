//! TS002 JSON ↔ the join pipeline: reading a `JoinReq` body and writing the `JoinAns`.
//!
//! The answer follows TS002: `Result`, `PHYPayload`, `Lifetime`, `NwkSKey` (1.0.x) or
//! `FNwkSIntKey`/`SNwkSIntKey`/`NwkSEncKey` (1.1), `AppSKey`. The join server is authoritative
//! for what the network server must apply, which TS002's JoinAns has no fields for, so a
//! successful answer also carries them in the header's `VSExtension`:
//! `{"MACVersion": "1.1", "DLSettings": "82", "RxDelay": 1}` (the device's LoRaWAN version, and
//! the DLSettings and RxDelay sent in the Join-accept, DLSettings as 2 hex digits like TS002's),
//! and `"Owner": "tenant"` for a claimed device: the tenant the network server files its
//! application events under (an identifier, never a secret).
//!
//! A TS002 `RejoinReq` (LoRaWAN 1.1 Rejoin-request) has the JoinReq's fields: it is read into the
//! same [`JoinReq`] shape with its header's `MessageType` kept as `RejoinReq`, which is what
//! routes it to [`crate::core::process_rejoin`] ([`is_rejoin`]), and it is answered with a
//! `RejoinAns` of the JoinAns's shape.

use protocol::ids::NetId;
use protocol::link::LinkError;
use protocol::ts002::{
    AnsResult, Header, JoinAns, JoinReq, MessageType, RejoinReq, ResultCode, Ts002Error,
    VS_ROOT_KEY_ROTATION,
};

use crate::core::{JoinReqFields, Outcome};

/// A decoded request body.
#[derive(Debug)]
pub enum Parsed {
    /// A well-formed JoinReq.
    Request(Box<JoinReq>),
    /// The header is readable but the message is not a valid JoinReq: answer MalformedRequest.
    Malformed {
        /// Its TransactionID.
        transaction_id: u32,
        /// The JoinAns JSON.
        answer: Vec<u8>,
    },
    /// A `SessionInUseReq` (ours, [`crate::rekey::answer_session_in_use`] reads it).
    SessionInUse,
}

fn to_json(ans: &JoinAns) -> Vec<u8> {
    // Serialising these plain structs into a Vec cannot fail.
    serde_json::to_vec(ans).unwrap_or_default()
}

/// Whether a request read by [`parse_body`] is a RejoinReq.
pub fn is_rejoin(req: &JoinReq) -> bool {
    req.header.message_type == MessageType::RejoinReq
}

/// The rejoin type of a RejoinReq, as a metric label (`0`, `1`, `2`, or `other` for a byte
/// no Rejoin-request carries); `None` for a JoinReq.
pub fn rejoin_type(req: &JoinReq) -> Option<&'static str> {
    is_rejoin(req).then(|| match req.phy_payload.get(1) {
        Some(0) => "0",
        Some(1) => "1",
        Some(2) => "2",
        _ => "other",
    })
}

/// The MessageType of the answer to a request of type `request`.
fn answer_type(request: MessageType) -> MessageType {
    if request == MessageType::RejoinReq {
        MessageType::RejoinAns
    } else {
        MessageType::JoinAns
    }
}

/// A failure answer (JoinAns, or RejoinAns to a RejoinReq).
fn failure(header: &Header, code: ResultCode, description: String) -> JoinAns {
    let mut ans = JoinAns::failure(header, code, Some(description));
    ans.header.message_type = answer_type(header.message_type);
    ans
}

fn malformed(header: &Header, description: String) -> Vec<u8> {
    to_json(&failure(
        header,
        ResultCode::malformed(header.protocol_version),
        description,
    ))
}

/// A JoinReq, or a RejoinReq read into the JoinReq shape (its MessageType kept).
/// Reads a JoinReq, or a RejoinReq (the same fields) as a JoinReq whose header keeps its
/// MessageType ([`is_rejoin`]).
pub fn parse_request(body: &[u8]) -> Result<JoinReq, Ts002Error> {
    match JoinReq::parse(body) {
        Err(Ts002Error::MessageType {
            found: MessageType::RejoinReq,
            ..
        }) => RejoinReq::parse(body).map(|r| JoinReq {
            header: r.header,
            mac_version: r.mac_version,
            phy_payload: r.phy_payload,
            dev_eui: r.dev_eui,
            dev_addr: r.dev_addr,
            dl_settings: r.dl_settings,
            rx_delay: r.rx_delay,
            cf_list: r.cf_list,
        }),
        other => other,
    }
}

/// Decodes an authenticated body from the network server `sender`. A body without even a
/// readable TS002 header cannot be answered (there is no TransactionID): it is an error, and
/// the datagram is dropped.
pub fn parse_body(body: &[u8], sender: NetId) -> Result<Parsed, LinkError> {
    match parse_request(body) {
        Ok(req) => {
            if req.header.sender_id.parse::<NetId>().ok() != Some(sender) {
                return Ok(Parsed::Malformed {
                    transaction_id: req.header.transaction_id,
                    answer: malformed(
                        &req.header,
                        format!(
                            "SenderID {:?} is not the link sender {sender}",
                            req.header.sender_id
                        ),
                    ),
                });
            }
            Ok(Parsed::Request(Box::new(req)))
        }
        Err(e) => match serde_json::from_slice::<Header>(body) {
            Ok(header)
                if matches!(
                    header.message_type,
                    MessageType::JoinReq | MessageType::RejoinReq
                ) =>
            {
                Ok(Parsed::Malformed {
                    transaction_id: header.transaction_id,
                    answer: malformed(&header, e.to_string()),
                })
            }
            Ok(header) if header.message_type == MessageType::SessionInUseReq => {
                Ok(Parsed::SessionInUse)
            }
            Ok(header) => Err(LinkError::Body(format!(
                "unsupported MessageType {}",
                header.message_type
            ))),
            Err(_) => Err(LinkError::Body(e.to_string())),
        },
    }
}

/// The pipeline's input from a JoinReq.
pub fn fields(req: &JoinReq, sender: NetId, received_ms: u64) -> JoinReqFields {
    JoinReqFields {
        sender,
        phy_payload: req.phy_payload.clone(),
        dev_eui: req.dev_eui,
        dev_addr: req.dev_addr,
        dl_settings: req.dl_settings,
        rx_delay: req.rx_delay,
        cf_list: req.cf_list.clone(),
        received_ms,
    }
}

/// The JoinAns JSON for a refused request that reused a TransactionID.
pub fn conflict_answer(req: &JoinReq, description: &str) -> Vec<u8> {
    malformed(&req.header, description.to_owned())
}

/// The JoinAns JSON refusing a join accepted here whose nonce state another instance moved
/// first (a shared store): `JoinReqFailed`, the device may retry.
pub fn stale_answer(req: &Header) -> Vec<u8> {
    to_json(&failure(
        req,
        ResultCode::from_wire("JoinReqFailed"),
        "another join server instance changed the device's nonce state first".into(),
    ))
}

/// The JoinAns JSON for the pipeline's outcome; a success names the root-key `rotation` it
/// puts into use, if any ([`name_rotation`]).
pub fn answer_json(req: &JoinReq, outcome: &Outcome, rotation: Option<i64>) -> Vec<u8> {
    let mut ans = answer(req, outcome);
    name_rotation(&mut ans, rotation);
    to_json(&ans)
}

/// Names `rotation` in a successful answer's `VSExtension` ([`VS_ROOT_KEY_ROTATION`]), the
/// root-key rotation the join puts into use ([`crate::rekey`]).
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

/// The JoinAns for the pipeline's outcome (both transports start from it).
pub fn answer(req: &JoinReq, outcome: &Outcome) -> JoinAns {
    match &outcome.result {
        Err(e) => {
            let code = if e.result_code() == "MalformedRequest" {
                ResultCode::malformed(req.header.protocol_version)
            } else {
                ResultCode::from_wire(e.result_code())
            };
            failure(&req.header, code, e.to_string())
        }
        Ok(a) => {
            let mut header = req.header.answer(answer_type(req.header.message_type));
            let mut vs = serde_json::json!({
                "MACVersion": a.mac_version.as_str(),
                "DLSettings": format!("{:02x}", a.dl_settings),
                "RxDelay": a.rx_delay,
            });
            if let (Some(owner), Some(o)) = (&a.owner, vs.as_object_mut()) {
                o.insert("Owner".into(), serde_json::Value::from(&**owner));
            }
            header.vs_extension = Some(vs);
            JoinAns {
                header,
                result: AnsResult {
                    result_code: ResultCode::Success,
                    description: None,
                },
                phy_payload: Some(a.phy_payload.clone()),
                lifetime: Some(a.lifetime),
                network_keys: Some(a.network.clone()),
                app_s_key: Some(a.app_s_key.clone()),
                session_key_id: None,
            }
        }
    }
}
