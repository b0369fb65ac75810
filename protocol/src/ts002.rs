//! LoRaWAN Backend Interfaces (TS002) `JoinReq`, `JoinAns` and `RejoinReq`, with the exact JSON
//! field names of TS002 (as brocaar/lorawan `backend`, ChirpStack `backend` and TTS
//! `pkg/interop` spell them; protocol-notes C).
//!
//! - Hex fields (`PHYPayload`, `DLSettings`, `CFList`, tokens, `SessionKeyID`, EUIs, DevAddr,
//!   `AESKey`) are read case-insensitively with an optional `0x` and written lowercase, except
//!   the identifiers, which [`crate::ids`] writes uppercase (TTS style). Both are accepted by
//!   every implementation named above.
//! - [`ResultCode`] reads both `UnkownReceiver` (the TS002-1.0 spelling) and `UnknownReceiver`,
//!   and writes the spec's `UnkownReceiver`, as TTS does. `MalformedRequest` (1.0) and
//!   `MalformedMessage` (1.1) are both read and kept apart; [`ResultCode::malformed`] picks the
//!   one of a protocol version.
//! - **Unknown result codes** are kept as [`ResultCode::Unrecognized`] rather than refused: a
//!   newer peer's answer still parses, reads as a failure (`is_success() == false`), and keeps
//!   its `Description`. TS002's own catch-all is the distinct value [`ResultCode::Other`].
//! - The `parse_*` functions check `MessageType` and give typed errors ([`Ts002Error::kind`]).
//!   The serde impls alone do not check `MessageType`.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::ids::{DevAddr, DevEui};
use crate::keywrap::KeyEnvelope;
use crate::version::MacVersion;

/// Why a TS002 message was refused. [`Ts002Error::kind`] is a short stable metrics label;
/// [`Ts002Error::result_code`] is the code to answer with.
#[derive(Debug, thiserror::Error)]
pub enum Ts002Error {
    /// Not UTF-8 (checked over the whole message, ignored fields included).
    #[error("TS002 message is not UTF-8: {0}")]
    Utf8(#[from] std::str::Utf8Error),
    /// Not valid JSON of the message's shape (missing mandatory field, bad hex, wrong type…).
    #[error("invalid TS002 JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// The `MessageType` is not the one expected.
    #[error("expected MessageType {expected}, found {found}")]
    MessageType {
        /// What the caller asked to parse.
        expected: MessageType,
        /// What the message says.
        found: MessageType,
    },
    /// A field the message needs is absent.
    #[error("missing {0}")]
    MissingField(&'static str),
    /// Fields that must not appear together, or a partial set of fields that go together.
    #[error("inconsistent fields: {0}")]
    Inconsistent(&'static str),
    /// A field has a value outside its range.
    #[error("invalid {field}: {reason}")]
    InvalidField {
        /// JSON field name.
        field: &'static str,
        /// What is wrong.
        reason: &'static str,
    },
}

impl Ts002Error {
    /// A short, stable label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Utf8(_) => "utf8",
            Self::Json(_) => "json",
            Self::MessageType { .. } => "message_type",
            Self::MissingField(_) => "missing_field",
            Self::Inconsistent(_) => "inconsistent_fields",
            Self::InvalidField { .. } => "invalid_field",
        }
    }

    /// The result code to answer a request that failed this way with.
    pub fn result_code(&self, version: ProtocolVersion) -> ResultCode {
        ResultCode::malformed(version)
    }
}

/// `ProtocolVersion`: the Backend Interfaces version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ProtocolVersion {
    /// `"1.0"`.
    #[serde(rename = "1.0")]
    V1_0,
    /// `"1.1"`.
    #[serde(rename = "1.1")]
    V1_1,
}

/// `MessageType`, every value TS002 defines.
#[allow(missing_docs)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum MessageType {
    JoinReq,
    JoinAns,
    RejoinReq,
    RejoinAns,
    AppSKeyReq,
    AppSKeyAns,
    PRStartReq,
    PRStartAns,
    PRStopReq,
    PRStopAns,
    HRStartReq,
    HRStartAns,
    HRStopReq,
    HRStopAns,
    HomeNSReq,
    HomeNSAns,
    ProfileReq,
    ProfileAns,
    XmitDataReq,
    XmitDataAns,
    XmitLocReq,
    XmitLocAns,
    ErrorNotif,
    /// Not in TS002: this project's own [`SessionInUseReq`].
    SessionInUseReq,
    /// Not in TS002: the answer to a [`SessionInUseReq`].
    SessionInUseAns,
}

impl fmt::Display for MessageType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// The header every TS002 message carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header {
    /// `ProtocolVersion`.
    #[serde(rename = "ProtocolVersion")]
    pub protocol_version: ProtocolVersion,
    /// `SenderID`: a NetID (6 hex digits), a JoinEUI (16 hex digits) or an AS-ID.
    #[serde(rename = "SenderID")]
    pub sender_id: String,
    /// `ReceiverID`.
    #[serde(rename = "ReceiverID")]
    pub receiver_id: String,
    /// `TransactionID`, echoed in the answer.
    #[serde(rename = "TransactionID")]
    pub transaction_id: u32,
    /// `MessageType`.
    #[serde(rename = "MessageType")]
    pub message_type: MessageType,
    /// `SenderToken` (hex), returned as `ReceiverToken` in the answer.
    #[serde(
        rename = "SenderToken",
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::hexser::opt_bytes"
    )]
    pub sender_token: Option<Vec<u8>>,
    /// `ReceiverToken` (hex).
    #[serde(
        rename = "ReceiverToken",
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::hexser::opt_bytes"
    )]
    pub receiver_token: Option<Vec<u8>>,
    /// `SenderNSID` (TS002-1.1).
    #[serde(
        rename = "SenderNSID",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub sender_ns_id: Option<String>,
    /// `ReceiverNSID` (TS002-1.1).
    #[serde(
        rename = "ReceiverNSID",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub receiver_ns_id: Option<String>,
    /// `VSExtension`: vendor-specific data, kept as JSON.
    #[serde(
        rename = "VSExtension",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub vs_extension: Option<serde_json::Value>,
}

impl Header {
    /// The header of the answer to a request with this header: sender and receiver (IDs,
    /// NSIDs and tokens) swapped, the same `TransactionID` and protocol version, no
    /// `VSExtension`.
    pub fn answer(&self, message_type: MessageType) -> Self {
        Self {
            protocol_version: self.protocol_version,
            sender_id: self.receiver_id.clone(),
            receiver_id: self.sender_id.clone(),
            transaction_id: self.transaction_id,
            message_type,
            sender_token: self.receiver_token.clone(),
            receiver_token: self.sender_token.clone(),
            sender_ns_id: self.receiver_ns_id.clone(),
            receiver_ns_id: self.sender_ns_id.clone(),
            vs_extension: None,
        }
    }
}

/// `DLSettings`: one byte, written as 2 hex digits.
mod hex_u8 {
    use super::*;

    pub fn serialize<S: Serializer>(v: &u8, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode([*v]))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u8, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        match crate::hexser::decode(&s).map_err(serde::de::Error::custom)?[..] {
            [b] => Ok(b),
            _ => Err(serde::de::Error::custom("DLSettings must be 1 byte of hex")),
        }
    }
}

/// Declares a message struct whose JSON carries the [`Header`]'s fields beside its own: it is
/// written with the header flattened into it, and read through a second struct (named by the
/// caller, with its name as a string for serde's `from`) that lists the header's fields inline.
/// serde's `#[serde(flatten)]` on the reading side buffers the whole message into a map of owned
/// keys and values before building the struct: reading the JoinReq and the JoinAns that way
/// was 7 % of the join server's and 3 % of the network server's CPU per join in a storm
/// profile (docs/benchmarks.md, issue 21). Both structs accept the same JSON.
macro_rules! ts002_message {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident read through $in_name:ident = $in_str:literal {
            $( $(#[$fmeta:meta])* $fvis:vis $field:ident : $ty:ty, )*
        }
    ) => {
        $(#[$meta])*
        #[serde(from = $in_str)]
        $vis struct $name {
            /// Common header.
            #[serde(flatten)]
            pub header: Header,
            $( $(#[$fmeta])* $fvis $field: $ty, )*
        }

        /// The reading side of the message above: the header's fields inline.
        #[derive(Deserialize)]
        struct $in_name {
            #[serde(rename = "ProtocolVersion")]
            protocol_version: ProtocolVersion,
            #[serde(rename = "SenderID")]
            sender_id: String,
            #[serde(rename = "ReceiverID")]
            receiver_id: String,
            #[serde(rename = "TransactionID")]
            transaction_id: u32,
            #[serde(rename = "MessageType")]
            message_type: MessageType,
            #[serde(rename = "SenderToken", default, with = "crate::hexser::opt_bytes")]
            sender_token: Option<Vec<u8>>,
            #[serde(rename = "ReceiverToken", default, with = "crate::hexser::opt_bytes")]
            receiver_token: Option<Vec<u8>>,
            #[serde(rename = "SenderNSID", default)]
            sender_ns_id: Option<String>,
            #[serde(rename = "ReceiverNSID", default)]
            receiver_ns_id: Option<String>,
            #[serde(rename = "VSExtension", default)]
            vs_extension: Option<serde_json::Value>,
            $( $(#[$fmeta])* $field: $ty, )*
        }

        impl From<$in_name> for $name {
            fn from(i: $in_name) -> Self {
                Self {
                    header: Header {
                        protocol_version: i.protocol_version,
                        sender_id: i.sender_id,
                        receiver_id: i.receiver_id,
                        transaction_id: i.transaction_id,
                        message_type: i.message_type,
                        sender_token: i.sender_token,
                        receiver_token: i.receiver_token,
                        sender_ns_id: i.sender_ns_id,
                        receiver_ns_id: i.receiver_ns_id,
                        vs_extension: i.vs_extension,
                    },
                    $( $field: i.$field, )*
                }
            }
        }
    };
}

ts002_message! {
/// `JoinReq`: network server to join server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JoinReq read through JoinReqIn = "JoinReqIn" {
    /// `MACVersion` of the device.
    #[serde(rename = "MACVersion")]
    pub mac_version: MacVersion,
    /// `PHYPayload`: the whole Join-request frame.
    #[serde(rename = "PHYPayload", with = "crate::hexser::bytes")]
    pub phy_payload: Vec<u8>,
    /// `DevEUI`.
    #[serde(rename = "DevEUI")]
    pub dev_eui: DevEui,
    /// `DevAddr` the network server assigned.
    #[serde(rename = "DevAddr")]
    pub dev_addr: DevAddr,
    /// `DLSettings` byte for the Join-accept (bit 7 OptNeg, 6..4 RX1DROffset, 3..0 RX2 DR).
    #[serde(rename = "DLSettings", with = "hex_u8")]
    pub dl_settings: u8,
    /// `RxDelay` for the Join-accept (0..=15; 0 means 1 s).
    #[serde(rename = "RxDelay")]
    pub rx_delay: u8,
    /// `CFList` (16 bytes), when the network sends one.
    #[serde(
        rename = "CFList",
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::hexser::opt_bytes"
    )]
    pub cf_list: Option<Vec<u8>>,
}
}

/// `RejoinReq`: network server to join server, for a Rejoin-request type 1 (LoRaWAN 1.1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RejoinReq {
    /// Common header (`MessageType` = `RejoinReq`).
    #[serde(flatten)]
    pub header: Header,
    /// `MACVersion` of the device.
    #[serde(rename = "MACVersion")]
    pub mac_version: MacVersion,
    /// `PHYPayload`: the whole Rejoin-request frame.
    #[serde(rename = "PHYPayload", with = "crate::hexser::bytes")]
    pub phy_payload: Vec<u8>,
    /// `DevEUI`.
    #[serde(rename = "DevEUI")]
    pub dev_eui: DevEui,
    /// `DevAddr`.
    #[serde(rename = "DevAddr")]
    pub dev_addr: DevAddr,
    /// `DLSettings` byte.
    #[serde(rename = "DLSettings", with = "hex_u8")]
    pub dl_settings: u8,
    /// `RxDelay`.
    #[serde(rename = "RxDelay")]
    pub rx_delay: u8,
    /// `CFList`, optional.
    #[serde(
        rename = "CFList",
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::hexser::opt_bytes"
    )]
    pub cf_list: Option<Vec<u8>>,
}

fn check_mac_fields(rx_delay: u8, cf_list: Option<&Vec<u8>>) -> Result<(), Ts002Error> {
    if rx_delay > 15 {
        return Err(Ts002Error::InvalidField {
            field: "RxDelay",
            reason: "must be 0..=15",
        });
    }
    if cf_list.is_some_and(|c| c.len() != 16) {
        return Err(Ts002Error::InvalidField {
            field: "CFList",
            reason: "must be 16 bytes",
        });
    }
    Ok(())
}

fn expect_type(found: MessageType, expected: MessageType) -> Result<(), Ts002Error> {
    if found == expected {
        Ok(())
    } else {
        Err(Ts002Error::MessageType { expected, found })
    }
}

impl JoinReq {
    /// Parses a `JoinReq`, checking `MessageType`, `RxDelay` (0..=15) and `CFList` (16 bytes).
    pub fn parse(json: &[u8]) -> Result<Self, Ts002Error> {
        let m: Self = serde_json::from_str(std::str::from_utf8(json)?)?;
        expect_type(m.header.message_type, MessageType::JoinReq)?;
        check_mac_fields(m.rx_delay, m.cf_list.as_ref())?;
        Ok(m)
    }
}

impl RejoinReq {
    /// Parses a `RejoinReq`, checking `MessageType`, `RxDelay` and `CFList`.
    pub fn parse(json: &[u8]) -> Result<Self, Ts002Error> {
        let m: Self = serde_json::from_str(std::str::from_utf8(json)?)?;
        expect_type(m.header.message_type, MessageType::RejoinReq)?;
        check_mac_fields(m.rx_delay, m.cf_list.as_ref())?;
        Ok(m)
    }
}

/// A TS002 `ResultCode`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ResultCode {
    /// `Success`.
    Success,
    /// `MICFailed`: MIC verification failed.
    MicFailed,
    /// `JoinReqFailed`: the join server failed to process the JoinReq (also DevNonce reuse).
    JoinReqFailed,
    /// `NoRoamingAgreement`.
    NoRoamingAgreement,
    /// `DevRoamingDisallowed`.
    DevRoamingDisallowed,
    /// `RoamingActDisallowed`.
    RoamingActDisallowed,
    /// `ActivationDisallowed`.
    ActivationDisallowed,
    /// `UnknownDevEUI`.
    UnknownDevEui,
    /// `UnknownDevAddr`.
    UnknownDevAddr,
    /// `UnknownSender`.
    UnknownSender,
    /// ReceiverID unknown: written `UnkownReceiver` (sic, TS002-1.0); `UnknownReceiver` is read too.
    UnknownReceiver,
    /// `Deferred`.
    Deferred,
    /// `XmitFailed`.
    XmitFailed,
    /// `InvalidFPort`.
    InvalidFPort,
    /// `InvalidProtocolVersion`.
    InvalidProtocolVersion,
    /// `StaleDeviceProfile`.
    StaleDeviceProfile,
    /// `MalformedRequest` (TS002-1.0).
    MalformedRequest,
    /// `FrameSizeError`.
    FrameSizeError,
    /// `Other`: TS002's own catch-all.
    Other,
    /// `NoAction` (TS002-1.1, TTS).
    NoAction,
    /// `FrameReplayed` (TS002-1.1, TTS).
    FrameReplayed,
    /// `MalformedMessage` (TS002-1.1; replaces `MalformedRequest`).
    MalformedMessage,
    /// A code this implementation does not know, kept verbatim. Never holds a known spelling.
    Unrecognized(String),
}

impl ResultCode {
    const KNOWN: [(&'static str, ResultCode); 22] = [
        ("Success", Self::Success),
        ("MICFailed", Self::MicFailed),
        ("JoinReqFailed", Self::JoinReqFailed),
        ("NoRoamingAgreement", Self::NoRoamingAgreement),
        ("DevRoamingDisallowed", Self::DevRoamingDisallowed),
        ("RoamingActDisallowed", Self::RoamingActDisallowed),
        ("ActivationDisallowed", Self::ActivationDisallowed),
        ("UnknownDevEUI", Self::UnknownDevEui),
        ("UnknownDevAddr", Self::UnknownDevAddr),
        ("UnknownSender", Self::UnknownSender),
        ("UnkownReceiver", Self::UnknownReceiver),
        ("Deferred", Self::Deferred),
        ("XmitFailed", Self::XmitFailed),
        ("InvalidFPort", Self::InvalidFPort),
        ("InvalidProtocolVersion", Self::InvalidProtocolVersion),
        ("StaleDeviceProfile", Self::StaleDeviceProfile),
        ("MalformedRequest", Self::MalformedRequest),
        ("FrameSizeError", Self::FrameSizeError),
        ("Other", Self::Other),
        ("NoAction", Self::NoAction),
        ("FrameReplayed", Self::FrameReplayed),
        ("MalformedMessage", Self::MalformedMessage),
    ];

    /// Every known code, in TS002 order (1.0 codes, then the 1.1 additions).
    pub fn known() -> impl Iterator<Item = ResultCode> {
        Self::KNOWN.into_iter().map(|(_, c)| c)
    }

    /// The code for a wire string: exact spelling, plus `UnknownReceiver` as an alias.
    pub fn from_wire(s: &str) -> Self {
        if s == "UnknownReceiver" {
            return Self::UnknownReceiver;
        }
        Self::KNOWN
            .iter()
            .find(|(name, _)| *name == s)
            .map_or_else(|| Self::Unrecognized(s.to_owned()), |(_, c)| c.clone())
    }

    /// The wire spelling.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Unrecognized(s) => s,
            known => Self::KNOWN
                .iter()
                .find(|(_, c)| c == known)
                .map_or("Other", |(name, _)| name),
        }
    }

    /// `Success`.
    pub fn is_success(&self) -> bool {
        *self == Self::Success
    }

    /// `MalformedRequest` or `MalformedMessage`.
    pub fn is_malformed(&self) -> bool {
        matches!(self, Self::MalformedRequest | Self::MalformedMessage)
    }

    /// The "malformed" code of a protocol version: `MalformedRequest` for 1.0,
    /// `MalformedMessage` for 1.1.
    pub fn malformed(version: ProtocolVersion) -> Self {
        match version {
            ProtocolVersion::V1_0 => Self::MalformedRequest,
            ProtocolVersion::V1_1 => Self::MalformedMessage,
        }
    }
}

impl fmt::Display for ResultCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ResultCode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ResultCode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Ok(Self::from_wire(&s))
    }
}

/// The `Result` object of an answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnsResult {
    /// `ResultCode`.
    #[serde(rename = "ResultCode")]
    pub result_code: ResultCode,
    /// `Description`: free text, optional.
    #[serde(
        rename = "Description",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub description: Option<String>,
}

/// The network session keys of a successful `JoinAns`, each wrapped (or in clear) for the
/// network server.
///
/// The TS002 JSON of a `JoinAns` spells them as separate fields (see [`JoinAns`]); the serde
/// form derived here is the network server's stored form,
/// `{"kind":"v1_0","nwk_s_key":{…}}` or `{"kind":"v1_1",…}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, tag = "kind", rename_all = "snake_case")]
pub enum NetworkKeys {
    /// LoRaWAN 1.0.x: `NwkSKey`.
    V1_0 {
        /// `NwkSKey`.
        nwk_s_key: KeyEnvelope,
    },
    /// LoRaWAN 1.1: `FNwkSIntKey`, `SNwkSIntKey`, `NwkSEncKey`.
    V1_1 {
        /// `FNwkSIntKey`.
        f_nwk_s_int_key: KeyEnvelope,
        /// `SNwkSIntKey`.
        s_nwk_s_int_key: KeyEnvelope,
        /// `NwkSEncKey`.
        nwk_s_enc_key: KeyEnvelope,
    },
}

/// `JoinAns`: join server to network server.
///
/// Invariants checked on parse: `NwkSKey` never appears with the 1.1 keys, the three 1.1 keys
/// appear together or not at all, and a `Success` answer carries `PHYPayload`, network keys,
/// and `AppSKey` or `SessionKeyID`. Serialising writes exactly the fields present.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "JoinAnsWire")]
pub struct JoinAns {
    /// Common header (`MessageType` = `JoinAns`).
    pub header: Header,
    /// `Result`.
    pub result: AnsResult,
    /// `PHYPayload`: the encrypted Join-accept, MHDR included.
    pub phy_payload: Option<Vec<u8>>,
    /// `Lifetime` of the session in seconds (TTS sends 0 for "no limit"; brocaar omits it).
    pub lifetime: Option<u32>,
    /// Network session keys.
    pub network_keys: Option<NetworkKeys>,
    /// `AppSKey`.
    pub app_s_key: Option<KeyEnvelope>,
    /// `SessionKeyID` (hex), when the application server fetches `AppSKey` later.
    pub session_key_id: Option<Vec<u8>>,
}

/// Written through `JoinAnsOut`, a view of its fields: serde's `into` would clone the whole
/// answer (keys, payload, `VSExtension`) into `JoinAnsWire` first, and `flatten` writes the
/// header through a map: without them a JoinAns is written in 1.33 µs instead of 1.56 µs
/// (`benches/ts002.rs`, docs/benchmarks.md).
impl Serialize for JoinAns {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let h = &self.header;
        let (nwk_s_key, f_nwk_s_int_key, s_nwk_s_int_key, nwk_s_enc_key) = match &self.network_keys
        {
            None => (None, None, None, None),
            Some(NetworkKeys::V1_0 { nwk_s_key }) => (Some(nwk_s_key), None, None, None),
            Some(NetworkKeys::V1_1 {
                f_nwk_s_int_key,
                s_nwk_s_int_key,
                nwk_s_enc_key,
            }) => (
                None,
                Some(f_nwk_s_int_key),
                Some(s_nwk_s_int_key),
                Some(nwk_s_enc_key),
            ),
        };
        JoinAnsOut {
            protocol_version: h.protocol_version,
            sender_id: &h.sender_id,
            receiver_id: &h.receiver_id,
            transaction_id: h.transaction_id,
            message_type: h.message_type,
            sender_token: h.sender_token.as_deref(),
            receiver_token: h.receiver_token.as_deref(),
            sender_ns_id: h.sender_ns_id.as_deref(),
            receiver_ns_id: h.receiver_ns_id.as_deref(),
            vs_extension: h.vs_extension.as_ref(),
            result: &self.result,
            phy_payload: self.phy_payload.as_deref(),
            lifetime: self.lifetime,
            nwk_s_key,
            f_nwk_s_int_key,
            s_nwk_s_int_key,
            nwk_s_enc_key,
            app_s_key: self.app_s_key.as_ref(),
            session_key_id: self.session_key_id.as_deref(),
        }
        .serialize(s)
    }
}

/// The JSON of a `JoinAns` as written: the [`Header`]'s fields (in its order), then the
/// answer's, each borrowed; absent ones are left out. [`JoinAnsWire`] reads the same JSON.
#[derive(Serialize)]
struct JoinAnsOut<'a> {
    #[serde(rename = "ProtocolVersion")]
    protocol_version: ProtocolVersion,
    #[serde(rename = "SenderID")]
    sender_id: &'a str,
    #[serde(rename = "ReceiverID")]
    receiver_id: &'a str,
    #[serde(rename = "TransactionID")]
    transaction_id: u32,
    #[serde(rename = "MessageType")]
    message_type: MessageType,
    #[serde(
        rename = "SenderToken",
        skip_serializing_if = "Option::is_none",
        serialize_with = "crate::hexser::opt_bytes::serialize"
    )]
    sender_token: Option<&'a [u8]>,
    #[serde(
        rename = "ReceiverToken",
        skip_serializing_if = "Option::is_none",
        serialize_with = "crate::hexser::opt_bytes::serialize"
    )]
    receiver_token: Option<&'a [u8]>,
    #[serde(rename = "SenderNSID", skip_serializing_if = "Option::is_none")]
    sender_ns_id: Option<&'a str>,
    #[serde(rename = "ReceiverNSID", skip_serializing_if = "Option::is_none")]
    receiver_ns_id: Option<&'a str>,
    #[serde(rename = "VSExtension", skip_serializing_if = "Option::is_none")]
    vs_extension: Option<&'a serde_json::Value>,
    #[serde(rename = "Result")]
    result: &'a AnsResult,
    #[serde(
        rename = "PHYPayload",
        skip_serializing_if = "Option::is_none",
        serialize_with = "crate::hexser::opt_bytes::serialize"
    )]
    phy_payload: Option<&'a [u8]>,
    #[serde(rename = "Lifetime", skip_serializing_if = "Option::is_none")]
    lifetime: Option<u32>,
    #[serde(rename = "NwkSKey", skip_serializing_if = "Option::is_none")]
    nwk_s_key: Option<&'a KeyEnvelope>,
    #[serde(rename = "FNwkSIntKey", skip_serializing_if = "Option::is_none")]
    f_nwk_s_int_key: Option<&'a KeyEnvelope>,
    #[serde(rename = "SNwkSIntKey", skip_serializing_if = "Option::is_none")]
    s_nwk_s_int_key: Option<&'a KeyEnvelope>,
    #[serde(rename = "NwkSEncKey", skip_serializing_if = "Option::is_none")]
    nwk_s_enc_key: Option<&'a KeyEnvelope>,
    #[serde(rename = "AppSKey", skip_serializing_if = "Option::is_none")]
    app_s_key: Option<&'a KeyEnvelope>,
    #[serde(
        rename = "SessionKeyID",
        skip_serializing_if = "Option::is_none",
        serialize_with = "crate::hexser::opt_bytes::serialize"
    )]
    session_key_id: Option<&'a [u8]>,
}

ts002_message! {
/// The flat JSON shape of `JoinAns`, as read.
#[derive(Deserialize)]
struct JoinAnsWire read through JoinAnsIn = "JoinAnsIn" {
    #[serde(rename = "Result")]
    result: AnsResult,
    #[serde(
        rename = "PHYPayload",
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::hexser::opt_bytes"
    )]
    phy_payload: Option<Vec<u8>>,
    #[serde(rename = "Lifetime", default, skip_serializing_if = "Option::is_none")]
    lifetime: Option<u32>,
    #[serde(rename = "NwkSKey", default, skip_serializing_if = "Option::is_none")]
    nwk_s_key: Option<KeyEnvelope>,
    #[serde(
        rename = "FNwkSIntKey",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    f_nwk_s_int_key: Option<KeyEnvelope>,
    #[serde(
        rename = "SNwkSIntKey",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    s_nwk_s_int_key: Option<KeyEnvelope>,
    #[serde(
        rename = "NwkSEncKey",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    nwk_s_enc_key: Option<KeyEnvelope>,
    #[serde(rename = "AppSKey", default, skip_serializing_if = "Option::is_none")]
    app_s_key: Option<KeyEnvelope>,
    #[serde(
        rename = "SessionKeyID",
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::hexser::opt_bytes"
    )]
    session_key_id: Option<Vec<u8>>,
}
}

impl TryFrom<JoinAnsWire> for JoinAns {
    type Error = Ts002Error;

    fn try_from(w: JoinAnsWire) -> Result<Self, Ts002Error> {
        let network_keys = match (
            w.nwk_s_key,
            w.f_nwk_s_int_key,
            w.s_nwk_s_int_key,
            w.nwk_s_enc_key,
        ) {
            (None, None, None, None) => None,
            (Some(nwk_s_key), None, None, None) => Some(NetworkKeys::V1_0 { nwk_s_key }),
            (None, Some(f), Some(s), Some(e)) => Some(NetworkKeys::V1_1 {
                f_nwk_s_int_key: f,
                s_nwk_s_int_key: s,
                nwk_s_enc_key: e,
            }),
            (Some(_), _, _, _) => {
                return Err(Ts002Error::Inconsistent(
                    "NwkSKey together with LoRaWAN 1.1 network keys",
                ))
            }
            _ => {
                return Err(Ts002Error::Inconsistent(
                    "FNwkSIntKey, SNwkSIntKey and NwkSEncKey must appear together",
                ))
            }
        };
        if w.result.result_code.is_success() {
            if w.phy_payload.is_none() {
                return Err(Ts002Error::MissingField("PHYPayload"));
            }
            if network_keys.is_none() {
                return Err(Ts002Error::MissingField("NwkSKey or FNwkSIntKey"));
            }
            if w.app_s_key.is_none() && w.session_key_id.is_none() {
                return Err(Ts002Error::MissingField("AppSKey or SessionKeyID"));
            }
        }
        Ok(Self {
            header: w.header,
            result: w.result,
            phy_payload: w.phy_payload,
            lifetime: w.lifetime,
            network_keys,
            app_s_key: w.app_s_key,
            session_key_id: w.session_key_id,
        })
    }
}

impl JoinAns {
    /// Parses a `JoinAns` with typed errors, checking `MessageType` and the key invariants.
    pub fn parse(json: &[u8]) -> Result<Self, Ts002Error> {
        Self::parse_as(json, MessageType::JoinAns)
    }

    /// Parses the answer to a request of type `request`: a `JoinAns` to a `JoinReq`, a
    /// `RejoinAns` (the same fields) to a `RejoinReq`.
    pub fn parse_answer_to(json: &[u8], request: MessageType) -> Result<Self, Ts002Error> {
        let expected = if request == MessageType::RejoinReq {
            MessageType::RejoinAns
        } else {
            MessageType::JoinAns
        };
        Self::parse_as(json, expected)
    }

    fn parse_as(json: &[u8], expected: MessageType) -> Result<Self, Ts002Error> {
        let w: JoinAnsWire = serde_json::from_str(std::str::from_utf8(json)?)?;
        expect_type(w.header.message_type, expected)?;
        Self::try_from(w)
    }

    /// A failure answer to `req`: no keys, no payload.
    pub fn failure(req: &Header, code: ResultCode, description: Option<String>) -> Self {
        Self {
            header: req.answer(MessageType::JoinAns),
            result: AnsResult {
                result_code: code,
                description,
            },
            phy_payload: None,
            lifetime: None,
            network_keys: None,
            app_s_key: None,
            session_key_id: None,
        }
    }
}

/// A message of the JS↔NS link, dispatched on its `MessageType`.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// `JoinReq`.
    JoinReq(JoinReq),
    /// `JoinAns` (boxed: it is much larger than the requests).
    JoinAns(Box<JoinAns>),
    /// `RejoinReq`.
    RejoinReq(RejoinReq),
}

impl Message {
    /// Parses any of the supported messages, choosing by `MessageType`. Other message types
    /// are refused with [`Ts002Error::MessageType`] (reported as expected `JoinReq`).
    pub fn parse(json: &[u8]) -> Result<Self, Ts002Error> {
        #[derive(Deserialize)]
        struct Peek {
            #[serde(rename = "MessageType")]
            message_type: MessageType,
        }
        let peek: Peek = serde_json::from_str(std::str::from_utf8(json)?)?;
        match peek.message_type {
            MessageType::JoinReq => JoinReq::parse(json).map(Self::JoinReq),
            MessageType::JoinAns => JoinAns::parse(json).map(|a| Self::JoinAns(Box::new(a))),
            MessageType::RejoinReq => RejoinReq::parse(json).map(Self::RejoinReq),
            found => Err(Ts002Error::MessageType {
                expected: MessageType::JoinReq,
                found,
            }),
        }
    }

    /// The JSON bytes.
    pub fn to_json(&self) -> Result<Vec<u8>, Ts002Error> {
        Ok(match self {
            Self::JoinReq(m) => serde_json::to_vec(m)?,
            Self::JoinAns(m) => serde_json::to_vec(m)?,
            Self::RejoinReq(m) => serde_json::to_vec(m)?,
        })
    }
}

/// The JoinReq `VSExtension` key by which a network server says it applies whatever LoRaWAN
/// version the join server answers with (in the JoinAns `VSExtension`): it knows no device's
/// version itself, so its `MACVersion` is not to be cross-checked against the device's. Our
/// network server sends `{"FollowsJoinServerMACVersion": true}`; other network servers do not.
pub const VS_FOLLOWS_JS_MAC_VERSION: &str = "FollowsJoinServerMACVersion";

/// The JoinAns (RejoinAns) `VSExtension` key by which our join server says the accepted join is
/// the first under the device's rotated root keys; its value is the rotation's number (its
/// audit record's sequence number). The network server then reports the first uplink under the
/// session with a [`SessionInUseReq`] naming that number.
pub const VS_ROOT_KEY_ROTATION: &str = "RootKeyRotation";

/// `SessionInUseReq`: **not in TS002**, which has no message for it; this project's own, in
/// TS002's shape, over either transport. The network server tells the join server that the
/// device sent its first uplink under the session of a join or rejoin whose JoinAns named a
/// root-key rotation ([`VS_ROOT_KEY_ROTATION`]), so that the join server's audit log ties the
/// rotation to the first uplink under the new keys. Answered with a `SessionInUseAns` of the
/// header and `Result` only ([`SessionInUseAns`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionInUseReq {
    /// Common header (`MessageType` = `SessionInUseReq`; `ReceiverID` the JoinEUI).
    #[serde(flatten)]
    pub header: Header,
    /// `DevEUI`.
    #[serde(rename = "DevEUI")]
    pub dev_eui: DevEui,
    /// `DevAddr` of the session.
    #[serde(rename = "DevAddr")]
    pub dev_addr: DevAddr,
    /// The rotation the JoinAns named.
    #[serde(rename = "RootKeyRotation")]
    pub root_key_rotation: i64,
    /// `FCntUp` of the first uplink accepted under the session.
    #[serde(rename = "FCntUp")]
    pub f_cnt_up: u32,
}

impl SessionInUseReq {
    /// Parses a `SessionInUseReq`, checking `MessageType`.
    pub fn parse(json: &[u8]) -> Result<Self, Ts002Error> {
        let m: Self = serde_json::from_str(std::str::from_utf8(json)?)?;
        expect_type(m.header.message_type, MessageType::SessionInUseReq)?;
        Ok(m)
    }
}

/// `SessionInUseAns`: the header and `Result`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionInUseAns {
    /// Common header (`MessageType` = `SessionInUseAns`).
    #[serde(flatten)]
    pub header: Header,
    /// `Result`.
    #[serde(rename = "Result")]
    pub result: AnsResult,
}

impl SessionInUseAns {
    /// Parses a `SessionInUseAns`, checking `MessageType`.
    pub fn parse(json: &[u8]) -> Result<Self, Ts002Error> {
        let m: Self = serde_json::from_str(std::str::from_utf8(json)?)?;
        expect_type(m.header.message_type, MessageType::SessionInUseAns)?;
        Ok(m)
    }
}

impl MessageType {
    /// The answer's type for a request type (`JoinReq` → `JoinAns`, …); `None` for an answer or
    /// a notification.
    pub fn answer(self) -> Option<Self> {
        Some(match self {
            Self::JoinReq => Self::JoinAns,
            Self::RejoinReq => Self::RejoinAns,
            Self::AppSKeyReq => Self::AppSKeyAns,
            Self::PRStartReq => Self::PRStartAns,
            Self::PRStopReq => Self::PRStopAns,
            Self::HRStartReq => Self::HRStartAns,
            Self::HRStopReq => Self::HRStopAns,
            Self::HomeNSReq => Self::HomeNSAns,
            Self::ProfileReq => Self::ProfileAns,
            Self::XmitDataReq => Self::XmitDataAns,
            Self::XmitLocReq => Self::XmitLocAns,
            Self::SessionInUseReq => Self::SessionInUseAns,
            _ => return None,
        })
    }
}

/// `HomeNSReq`: who is this device's home network? (the rendezvous step of roaming).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HomeNsReq {
    /// Common header (`MessageType` = `HomeNSReq`; `ReceiverID` the JoinEUI).
    #[serde(flatten)]
    pub header: Header,
    /// `DevEUI`.
    #[serde(rename = "DevEUI")]
    pub dev_eui: DevEui,
}

impl HomeNsReq {
    /// Parses a `HomeNSReq`, checking `MessageType`.
    pub fn parse(json: &[u8]) -> Result<Self, Ts002Error> {
        let m: Self = serde_json::from_str(std::str::from_utf8(json)?)?;
        expect_type(m.header.message_type, MessageType::HomeNSReq)?;
        Ok(m)
    }
}

/// `HomeNSAns`: the device's home NetID (`HNetID`, 6 hex digits) on success.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HomeNsAns {
    /// Common header (`MessageType` = `HomeNSAns`).
    #[serde(flatten)]
    pub header: Header,
    /// `Result`.
    #[serde(rename = "Result")]
    pub result: AnsResult,
    /// `HNetID`: the home network's NetID.
    #[serde(rename = "HNetID", default, skip_serializing_if = "Option::is_none")]
    pub h_net_id: Option<crate::ids::NetId>,
}

/// `AppSKeyReq`: an application server asks for the AppSKey of a session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppSKeyReq {
    /// Common header (`MessageType` = `AppSKeyReq`).
    #[serde(flatten)]
    pub header: Header,
    /// `DevEUI`.
    #[serde(rename = "DevEUI")]
    pub dev_eui: DevEui,
    /// `SessionKeyID` (hex), from the session's JoinAns.
    #[serde(rename = "SessionKeyID", with = "crate::hexser::bytes")]
    pub session_key_id: Vec<u8>,
}

impl AppSKeyReq {
    /// Parses an `AppSKeyReq`, checking `MessageType`.
    pub fn parse(json: &[u8]) -> Result<Self, Ts002Error> {
        let m: Self = serde_json::from_str(std::str::from_utf8(json)?)?;
        expect_type(m.header.message_type, MessageType::AppSKeyReq)?;
        Ok(m)
    }
}

/// `AppSKeyAns`: the session's AppSKey, wrapped, on success.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppSKeyAns {
    /// Common header (`MessageType` = `AppSKeyAns`).
    #[serde(flatten)]
    pub header: Header,
    /// `Result`.
    #[serde(rename = "Result")]
    pub result: AnsResult,
    /// `DevEUI`.
    #[serde(rename = "DevEUI")]
    pub dev_eui: DevEui,
    /// `AppSKey`.
    #[serde(rename = "AppSKey", default, skip_serializing_if = "Option::is_none")]
    pub app_s_key: Option<KeyEnvelope>,
    /// `SessionKeyID` (hex), echoed.
    #[serde(rename = "SessionKeyID", with = "crate::hexser::bytes")]
    pub session_key_id: Vec<u8>,
}

/// Any answer reduced to its header and `Result`: what a refusal of any request carries, and
/// what a client reads first to tell success from failure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ans {
    /// Common header.
    #[serde(flatten)]
    pub header: Header,
    /// `Result`.
    #[serde(rename = "Result")]
    pub result: AnsResult,
}

impl Ans {
    /// The refusal of a request with header `req`: the answer type of its `MessageType` (the
    /// request's own type when it has none), `code` and `description`.
    pub fn refusal(req: &Header, code: ResultCode, description: impl Into<String>) -> Self {
        let t = req.message_type.answer().unwrap_or(req.message_type);
        Self {
            header: req.answer(t),
            result: AnsResult {
                result_code: code,
                description: Some(description.into()),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_codes_round_trip_and_alias() {
        for c in ResultCode::known() {
            assert_eq!(ResultCode::from_wire(c.as_str()), c);
            let j = serde_json::to_string(&c).unwrap();
            assert_eq!(serde_json::from_str::<ResultCode>(&j).unwrap(), c);
        }
        assert_eq!(ResultCode::known().count(), 22);
        assert_eq!(
            ResultCode::from_wire("UnknownReceiver"),
            ResultCode::UnknownReceiver
        );
        assert_eq!(
            ResultCode::from_wire("UnkownReceiver"),
            ResultCode::UnknownReceiver
        );
        assert_eq!(ResultCode::UnknownReceiver.as_str(), "UnkownReceiver");
        assert!(ResultCode::from_wire("MalformedRequest").is_malformed());
        assert!(ResultCode::from_wire("MalformedMessage").is_malformed());
        assert_eq!(
            ResultCode::from_wire("RoamingActDisallowedA"),
            ResultCode::Unrecognized("RoamingActDisallowedA".into())
        );
        assert!(!ResultCode::from_wire("success").is_success());
    }

    #[test]
    fn answer_header_swaps_parties() {
        let h = Header {
            protocol_version: ProtocolVersion::V1_1,
            sender_id: "000001".into(),
            receiver_id: "0102030405060708".into(),
            transaction_id: 7,
            message_type: MessageType::JoinReq,
            sender_token: Some(vec![1]),
            receiver_token: None,
            sender_ns_id: Some("ns".into()),
            receiver_ns_id: None,
            vs_extension: None,
        };
        let a = h.answer(MessageType::JoinAns);
        assert_eq!(a.sender_id, "0102030405060708");
        assert_eq!(a.receiver_id, "000001");
        assert_eq!(a.transaction_id, 7);
        assert_eq!(a.receiver_token, Some(vec![1]));
        assert_eq!(a.sender_token, None);
        assert_eq!(a.receiver_ns_id.as_deref(), Some("ns"));
    }
}
