//! The Semtech UDP packet-forwarder protocol, version 2 (GWMP), as described in
//! `Lora-net/packet_forwarder/PROTOCOL.TXT` and implemented by `lora_pkt_fwd.c`
//! (protocol-notes B).
//!
//! ```text
//! PUSH_DATA  GW->NS  0x02 | token(2) | 0x00 | GatewayEUI(8) | JSON {"rxpk":[..],"stat":{..}}
//! PUSH_ACK   NS->GW  0x02 | token(2) | 0x01
//! PULL_DATA  GW->NS  0x02 | token(2) | 0x02 | GatewayEUI(8)
//! PULL_RESP  NS->GW  0x02 | token(2) | 0x03 | JSON {"txpk":{..}}        (no gateway EUI)
//! PULL_ACK   NS->GW  0x02 | token(2) | 0x04
//! TX_ACK     GW->NS  0x02 | token(2) | 0x05 | GatewayEUI(8) | [JSON {"txpk_ack":{..}}]
//! ```
//!
//! # Why a codec of our own rather than `semtech-udp`
//!
//! The issue asked to adopt `semtech-udp` 0.12 if it parsed every vector of
//! `tests/vectors/gwmp_datagrams.json` and reached 1,000,000 PUSH_DATA parses/s on one core.
//! Evaluated on this 2-core machine (release build, outside the workspace):
//! - vectors: 14 of 16 parse. `gwmp-helium-push-data-partial-stat` fails (its `Stat` requires
//!   `time`, so a stat with only `lati`/`long` is refused: "missing field `time`");
//!   `gwmp-csgb-pull-resp-min` fails (`{}` has no `txpk`; this codec refuses it too, as
//!   `lora_pkt_fwd` does). jver 2 `rsig`, missing rssi/lsnr, NUL TX_ACK and `ackr:null` pass.
//! - it does not check `size` against the decoded `data` (`size` 99 with 3 decoded bytes is
//!   accepted), and reads the opaque token as a big-endian `u16`.
//! - rate, same 264-byte single-rxpk PUSH_DATA, 1,000,000 parses, CPU time of the thread
//!   (`/proc/thread-self/schedstat`, so other builds on the machine do not count), 3 rounds:
//!   `semtech-udp` 1023–1034 ns/parse = 0.97–0.98 M/s per core (below the goal; its rxpk is an
//!   `untagged` enum that buffers each rxpk before trying each variant); this codec
//!   574–583 ns/parse = 1.71–1.74 M/s per core. An earlier version of this codec built on
//!   serde-derived structs measured about 1 µs too; hence the hand-written PUSH_DATA reader.
//!
//! So this module is a direct codec: PUSH_DATA bodies go through a strict zero-copy JSON
//! reader (private module `scan`, fuzzed against serde_json's notion of valid JSON), the other bodies through
//! serde_json with borrowed strings; `data` is decoded from the borrowed base64 text; errors are
//! a typed [`GwmpError`] with a stable [`GwmpError::kind`]. `benches/gwmp.rs` measures it.
//!
//! # Tolerance and strictness
//! Accepted, because real forwarders send it: `"jver":2` rxpk with per-antenna `rsig` and no
//! top-level `rssi`/`lsnr`/`chan`/`rfch`; unknown fields anywhere; `"ackr":null` and partial
//! `stat` objects; trailing NUL bytes after the JSON; a TX_ACK with no body, a single NUL,
//! `"error":"NONE"` or only a `warn` (all success).
//!
//! Refused with a typed error: a datagram shorter than its header, a version byte other than 2,
//! an identifier other than 0..=5, bytes after a fixed-length datagram, invalid UTF-8 or JSON,
//! `data` that is not strict standard base64 (padded, canonical) in an rxpk, a `size` different
//! from the decoded length, a `modu` that contradicts `datr`, an rxpk `stat` outside -1..=1, a
//! frequency that is not a positive number of MHz, and a PULL_RESP whose txpk lacks what
//! `lora_pkt_fwd` requires (timing, `codr` for LoRa, `fdev` for FSK). In a txpk the base64
//! padding is optional, as PROTOCOL.TXT allows.
//!
//! Known limit: an rxpk whose `modu`/`datr` is outside LoRa SF5–12 at 125/250/500 kHz and FSK
//! (e.g. SX1302 `"LR-FHSS"`, or LoRa at narrower bandwidths) makes the whole PUSH_DATA fail with
//! kind `json`; EU868 LoRaWAN gateways do not send those.

use std::borrow::Cow;
use std::fmt;

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use serde::de::{self, Deserializer, Visitor};
use serde::ser::Serializer;
use serde::{Deserialize, Serialize};

use crate::ids::GatewayEui;

mod scan;

/// The protocol version byte this codec reads and writes.
pub const PROTOCOL_VERSION: u8 = 2;

/// Length of the header common to every datagram: version, token, identifier.
pub const HEADER_LEN: usize = 4;

/// Length of the header of datagrams that carry a gateway EUI (PUSH_DATA, PULL_DATA, TX_ACK).
pub const HEADER_WITH_EUI_LEN: usize = HEADER_LEN + 8;

/// Standard base64 that accepts input with or without padding (txpk `data`, PROTOCOL.TXT §6).
const BASE64_PAD_OPTIONAL: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Why a datagram was refused. [`GwmpError::kind`] gives a short, stable label for metrics.
#[derive(Debug, thiserror::Error)]
pub enum GwmpError {
    /// The datagram is shorter than its header.
    #[error("datagram of {len} bytes is shorter than the {need}-byte header")]
    Truncated {
        /// Bytes received.
        len: usize,
        /// Bytes the header needs.
        need: usize,
    },
    /// The protocol version byte is not 2.
    #[error("unsupported protocol version {0}")]
    Version(u8),
    /// The identifier byte is not one of the six datagram types.
    #[error("unknown datagram identifier {0:#04x}")]
    Identifier(u8),
    /// A fixed-length datagram (PUSH_ACK, PULL_DATA, PULL_ACK) has extra bytes.
    #[error("{identifier:?} must be {expected} bytes, got {len}")]
    TrailingBytes {
        /// The datagram type.
        identifier: Identifier,
        /// Its fixed length.
        expected: usize,
        /// Bytes received.
        len: usize,
    },
    /// The JSON body is not UTF-8 (checked over the whole body, ignored fields included).
    #[error("JSON body is not UTF-8: {0}")]
    Utf8(#[from] std::str::Utf8Error),
    /// The JSON body is not valid JSON of the expected shape.
    #[error("invalid JSON body: {0}")]
    Json(#[from] serde_json::Error),
    /// The JSON body is not valid JSON, or a value has the wrong type (PUSH_DATA reader).
    #[error("invalid JSON body at byte {offset}: {reason}")]
    Malformed {
        /// Byte offset in the JSON body.
        offset: usize,
        /// What was expected.
        reason: &'static str,
    },
    /// A mandatory rxpk field is absent.
    #[error("missing field {0}")]
    MissingField(&'static str),
    /// A `data` field is not valid base64.
    #[error("invalid base64 in data: {0}")]
    Base64(#[from] base64::DecodeError),
    /// `size` differs from the number of bytes `data` decodes to.
    #[error("size {size} does not match the {decoded} bytes of data")]
    SizeMismatch {
        /// The `size` field.
        size: u64,
        /// The decoded length of `data`.
        decoded: usize,
    },
    /// A field has a value outside its range or contradicts another field.
    #[error("invalid {field}: {reason}")]
    InvalidField {
        /// JSON field name.
        field: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A value cannot be written (a non-finite float, a reserved TX_ACK code, a frequency that
    /// cannot be represented).
    #[error("cannot encode: {0}")]
    Encode(String),
}

impl GwmpError {
    /// A short, stable label for metrics (`reason="..."`).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Truncated { .. } => "truncated",
            Self::Version(_) => "version",
            Self::Identifier(_) => "identifier",
            Self::TrailingBytes { .. } => "trailing_bytes",
            Self::Utf8(_) => "utf8",
            Self::Json(_) | Self::Malformed { .. } => "json",
            Self::MissingField(_) => "missing_field",
            Self::Base64(_) => "base64",
            Self::SizeMismatch { .. } => "size_mismatch",
            Self::InvalidField { .. } => "invalid_field",
            Self::Encode(_) => "encode",
        }
    }
}

/// The datagram type (byte 3 of every datagram).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Identifier {
    /// 0x00, gateway to server: received packets and status.
    PushData = 0,
    /// 0x01, server to gateway: acknowledges a PUSH_DATA.
    PushAck = 1,
    /// 0x02, gateway to server: keep-alive that opens the downlink route.
    PullData = 2,
    /// 0x03, server to gateway: a packet to transmit.
    PullResp = 3,
    /// 0x04, server to gateway: acknowledges a PULL_DATA.
    PullAck = 4,
    /// 0x05, gateway to server: result of a PULL_RESP.
    TxAck = 5,
}

impl Identifier {
    /// The identifier for a byte, if it names one.
    pub const fn from_byte(b: u8) -> Option<Self> {
        Some(match b {
            0 => Self::PushData,
            1 => Self::PushAck,
            2 => Self::PullData,
            3 => Self::PullResp,
            4 => Self::PullAck,
            5 => Self::TxAck,
            _ => return None,
        })
    }
}

/// The 2-byte token. Opaque: an acknowledgement echoes it byte for byte.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Token(pub [u8; 2]);

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Token({:02x}{:02x})", self.0[0], self.0[1])
    }
}

/// One GWMP datagram.
#[derive(Debug, Clone, PartialEq)]
pub enum Packet {
    /// Received radio packets and/or gateway status.
    PushData(PushData),
    /// Acknowledgement of a PUSH_DATA.
    PushAck {
        /// The PUSH_DATA's token.
        token: Token,
    },
    /// Keep-alive from a gateway; the server sends PULL_RESPs to its source address.
    PullData {
        /// Token to echo in the PULL_ACK.
        token: Token,
        /// The gateway.
        gateway: GatewayEui,
    },
    /// Acknowledgement of a PULL_DATA.
    PullAck {
        /// The PULL_DATA's token.
        token: Token,
    },
    /// A packet for the gateway to transmit.
    PullResp(PullResp),
    /// The gateway's answer to a PULL_RESP.
    TxAck(TxAck),
}

/// PUSH_DATA: `{"rxpk":[..],"stat":{..}}`, either part optional.
#[derive(Debug, Clone, PartialEq)]
pub struct PushData {
    /// Token to echo in the PUSH_ACK.
    pub token: Token,
    /// The gateway.
    pub gateway: GatewayEui,
    /// Received packets (empty when the datagram has no `rxpk`).
    pub rxpk: Vec<RxPk>,
    /// Gateway status, when present.
    pub stat: Option<Stat>,
}

/// PULL_RESP: `{"txpk":{..}}`.
#[derive(Debug, Clone, PartialEq)]
pub struct PullResp {
    /// Token the gateway echoes in its TX_ACK.
    pub token: Token,
    /// The packet to transmit.
    pub txpk: TxPk,
}

/// TX_ACK: the gateway's verdict on a PULL_RESP.
///
/// Success is `error == None`: no body, a NUL byte, `"error":"NONE"` and a `warn` alone all
/// mean the packet was accepted.
#[derive(Debug, Clone, PartialEq)]
pub struct TxAck {
    /// The PULL_RESP's token.
    pub token: Token,
    /// The gateway.
    pub gateway: GatewayEui,
    /// Why the packet was refused; `None` when it was accepted.
    pub error: Option<TxAckCode>,
    /// A warning about an accepted packet (SX1302 forwarders: `"warn":"TX_POWER"` when the power
    /// was reduced, with the power used in `value`).
    pub warning: Option<TxWarning>,
}

impl TxAck {
    /// The packet was accepted for transmission.
    pub fn is_success(&self) -> bool {
        self.error.is_none()
    }
}

/// A TX_ACK `warn` and its optional `value`.
#[derive(Debug, Clone, PartialEq)]
pub struct TxWarning {
    /// The condition reported.
    pub code: TxAckCode,
    /// The accompanying value (dBm for `TX_POWER`).
    pub value: Option<i32>,
}

/// TX_ACK `error` / `warn` codes other than `NONE`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TxAckCode {
    /// `TOO_LATE`: the packet arrived too late to be sent at its `tmst`.
    TooLate,
    /// `TOO_EARLY`: the `tmst` is too far in the future.
    TooEarly,
    /// `COLLISION_PACKET`: another packet is already scheduled then.
    CollisionPacket,
    /// `COLLISION_BEACON`: a Class-B beacon is scheduled then.
    CollisionBeacon,
    /// `TX_FREQ`: the frequency is not supported by the TX RF chain.
    TxFreq,
    /// `TX_POWER`: the power is not supported.
    TxPower,
    /// `GPS_UNLOCKED`: GPS timing requested but the GPS is not locked.
    GpsUnlocked,
    /// `UNKNOWN`: the forwarder's catch-all.
    Unknown,
    /// Any other code, kept verbatim. Never holds one of the names above or `NONE`.
    Other(String),
}

impl TxAckCode {
    /// The code for a wire string; `None` for `NONE` (success).
    pub fn from_wire(s: &str) -> Option<Self> {
        Some(match s {
            "NONE" => return None,
            "TOO_LATE" => Self::TooLate,
            "TOO_EARLY" => Self::TooEarly,
            "COLLISION_PACKET" => Self::CollisionPacket,
            "COLLISION_BEACON" => Self::CollisionBeacon,
            "TX_FREQ" => Self::TxFreq,
            "TX_POWER" => Self::TxPower,
            "GPS_UNLOCKED" => Self::GpsUnlocked,
            "UNKNOWN" => Self::Unknown,
            other => Self::Other(other.to_owned()),
        })
    }

    /// The wire string.
    pub fn as_str(&self) -> &str {
        match self {
            Self::TooLate => "TOO_LATE",
            Self::TooEarly => "TOO_EARLY",
            Self::CollisionPacket => "COLLISION_PACKET",
            Self::CollisionBeacon => "COLLISION_BEACON",
            Self::TxFreq => "TX_FREQ",
            Self::TxPower => "TX_POWER",
            Self::GpsUnlocked => "GPS_UNLOCKED",
            Self::Unknown => "UNKNOWN",
            Self::Other(s) => s,
        }
    }

    /// A short stable label for metrics (`other` for unrecognised codes).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::TooLate => "too_late",
            Self::TooEarly => "too_early",
            Self::CollisionPacket => "collision_packet",
            Self::CollisionBeacon => "collision_beacon",
            Self::TxFreq => "tx_freq",
            Self::TxPower => "tx_power",
            Self::GpsUnlocked => "gps_unlocked",
            Self::Unknown => "unknown",
            Self::Other(_) => "other",
        }
    }
}

/// Modulation of a packet (`modu`), implied by the shape of `datr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Modulation {
    /// `"LORA"`.
    #[serde(rename = "LORA")]
    Lora,
    /// `"FSK"`.
    #[serde(rename = "FSK")]
    Fsk,
}

/// A GWMP `datr`: the string `"SF<sf>BW<khz>"` for LoRa, a number (bits/s) for FSK.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DataRate {
    /// LoRa: spreading factor 5..=12, bandwidth 125, 250 or 500 kHz.
    Lora {
        /// Spreading factor, 5..=12.
        spreading_factor: u8,
        /// Bandwidth in kHz: 125, 250 or 500.
        bandwidth_khz: u16,
    },
    /// FSK at this bit rate (bits/s).
    Fsk {
        /// Bit rate in bits/s.
        bitrate: u32,
    },
}

impl DataRate {
    /// The modulation this data rate belongs to.
    pub const fn modulation(self) -> Modulation {
        match self {
            Self::Lora { .. } => Modulation::Lora,
            Self::Fsk { .. } => Modulation::Fsk,
        }
    }

    /// A LoRa data rate, or `None` outside SF5..=12 and 125/250/500 kHz.
    pub const fn lora(spreading_factor: u8, bandwidth_khz: u16) -> Option<Self> {
        if spreading_factor >= 5
            && spreading_factor <= 12
            && matches!(bandwidth_khz, 125 | 250 | 500)
        {
            Some(Self::Lora {
                spreading_factor,
                bandwidth_khz,
            })
        } else {
            None
        }
    }

    /// Parses a LoRa `datr` string such as `"SF7BW125"` (exact case, as forwarders write it).
    pub fn parse_lora(s: &str) -> Option<Self> {
        let rest = s.strip_prefix("SF")?;
        let (sf, bw) = rest.split_once("BW")?;
        // Reject signs, leading zeros and empty parts that `parse` would accept or mis-read.
        let plain = |t: &str| !t.is_empty() && !t.starts_with('0') && t.len() <= 3;
        if !plain(sf) || !plain(bw) || !sf.bytes().chain(bw.bytes()).all(|b| b.is_ascii_digit()) {
            return None;
        }
        Self::lora(sf.parse().ok()?, bw.parse().ok()?)
    }
}

impl fmt::Display for DataRate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Lora {
                spreading_factor,
                bandwidth_khz,
            } => write!(f, "SF{spreading_factor}BW{bandwidth_khz}"),
            Self::Fsk { bitrate } => write!(f, "{bitrate}"),
        }
    }
}

impl Serialize for DataRate {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Lora { .. } => s.collect_str(self),
            Self::Fsk { bitrate } => s.serialize_u32(*bitrate),
        }
    }
}

impl<'de> Deserialize<'de> for DataRate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = DataRate;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a LoRa datr string like \"SF7BW125\" or an FSK bit rate")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<DataRate, E> {
                DataRate::parse_lora(v)
                    .ok_or_else(|| E::invalid_value(de::Unexpected::Str(v), &self))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<DataRate, E> {
                match u32::try_from(v) {
                    Ok(bitrate) if bitrate > 0 => Ok(DataRate::Fsk { bitrate }),
                    _ => Err(E::invalid_value(de::Unexpected::Unsigned(v), &self)),
                }
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<DataRate, E> {
                match u64::try_from(v) {
                    Ok(u) => self.visit_u64(u),
                    Err(_) => Err(E::invalid_value(de::Unexpected::Signed(v), &self)),
                }
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<DataRate, E> {
                // Some forwarders print the FSK rate as 50000.0.
                if v.fract() == 0.0 && v > 0.0 && v <= f64::from(u32::MAX) {
                    self.visit_u64(v as u64)
                } else {
                    Err(E::invalid_value(de::Unexpected::Float(v), &self))
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// LoRa coding rate (`codr`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CodingRate {
    /// `"4/5"`, the LoRaWAN coding rate.
    #[serde(rename = "4/5")]
    Cr4_5,
    /// `"4/6"`.
    #[serde(rename = "4/6")]
    Cr4_6,
    /// `"4/7"`.
    #[serde(rename = "4/7")]
    Cr4_7,
    /// `"4/8"`.
    #[serde(rename = "4/8")]
    Cr4_8,
    /// `"OFF"`: no forward error correction.
    #[serde(rename = "OFF")]
    Off,
}

/// CRC status of a received packet (rxpk `stat`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CrcStatus {
    /// `1`: CRC present and correct.
    Ok,
    /// `-1`: CRC present and wrong. Servers normally drop these.
    Bad,
    /// `0`: no CRC.
    NoCrc,
}

impl CrcStatus {
    const fn to_wire(self) -> i8 {
        match self {
            Self::Ok => 1,
            Self::Bad => -1,
            Self::NoCrc => 0,
        }
    }
}

/// One per-antenna signal report of a `"jver":2` rxpk (`rsig`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RSig {
    /// Antenna number.
    pub ant: u8,
    /// IF channel.
    pub chan: u8,
    /// Channel RSSI, dBm.
    pub rssic: i32,
    /// Signal RSSI, dBm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rssis: Option<i32>,
    /// SNR, dB (absent when the CRC failed).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "finite_opt"
    )]
    pub lsnr: Option<f64>,
    /// Frequency offset, Hz.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub foff: Option<i32>,
}

/// One received packet (an element of `rxpk`).
#[derive(Debug, Clone, PartialEq)]
pub struct RxPk {
    /// `tmst`: concentrator microsecond counter at the end of reception; Class-A downlinks are
    /// scheduled relative to it.
    pub tmst: u32,
    /// `time`: UTC reception time (ISO 8601), when the gateway has GPS or NTP time.
    pub time: Option<String>,
    /// `tmms`: GPS time in milliseconds since 1980-01-06.
    pub tmms: Option<u64>,
    /// `chan`: IF channel (absent at top level in `"jver":2` rxpk).
    pub chan: Option<u8>,
    /// `rfch`: RF chain.
    pub rfch: Option<u8>,
    /// `freq` in Hz (the JSON carries MHz with Hz precision).
    pub freq_hz: u32,
    /// `stat`: CRC status.
    pub stat: CrcStatus,
    /// `datr` (and, implied by it, `modu`).
    pub datr: DataRate,
    /// `codr`: LoRa coding rate.
    pub codr: Option<CodingRate>,
    /// `rssi`: RSSI in dBm (may be absent with `"jver":2`; see [`RxPk::best_rssi`]).
    pub rssi: Option<i32>,
    /// `lsnr`: LoRa SNR in dB (see [`RxPk::best_snr`]).
    pub lsnr: Option<f64>,
    /// `jver`: JSON version of SX1302 forwarders.
    pub jver: Option<u8>,
    /// `rsig`: per-antenna reports (empty when absent).
    pub rsig: Vec<RSig>,
    /// `brd`: concentrator board.
    pub brd: Option<u32>,
    /// `aesk`: AES key index of fine timestamp encryption.
    pub aesk: Option<u32>,
    /// `data`, decoded: the PHYPayload. `size` is its length.
    pub data: Vec<u8>,
}

impl RxPk {
    /// The CRC was present and correct.
    pub fn crc_ok(&self) -> bool {
        self.stat == CrcStatus::Ok
    }

    /// The RSSI: top-level `rssi`, else the strongest `rsig` channel RSSI.
    pub fn best_rssi(&self) -> Option<i32> {
        self.rssi
            .or_else(|| self.rsig.iter().map(|r| r.rssic).max())
    }

    /// The SNR: top-level `lsnr`, else the best `rsig` SNR.
    pub fn best_snr(&self) -> Option<f64> {
        self.lsnr
            .or_else(|| self.rsig.iter().filter_map(|r| r.lsnr).reduce(f64::max))
    }
}

/// Gateway status (`stat`). Every field is optional: forwarders differ, and partial objects
/// occur in the wild.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Stat {
    /// `time`: "YYYY-MM-DD hh:mm:ss GMT".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    /// `lati`: latitude, degrees.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "finite_opt"
    )]
    pub lati: Option<f64>,
    /// `long`: longitude, degrees.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "finite_opt"
    )]
    pub long: Option<f64>,
    /// `alti`: altitude, metres.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alti: Option<i32>,
    /// `rxnb`: packets received.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rxnb: Option<u32>,
    /// `rxok`: packets received with a valid CRC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rxok: Option<u32>,
    /// `rxfw`: packets forwarded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rxfw: Option<u32>,
    /// `ackr`: percentage of upstream datagrams acknowledged (`null` in the wild → `None`).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "finite_opt"
    )]
    pub ackr: Option<f64>,
    /// `dwnb`: downlink datagrams received.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dwnb: Option<u32>,
    /// `txnb`: packets emitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub txnb: Option<u32>,
}

/// When a txpk is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TxTiming {
    /// `"imme":true`: as soon as possible (Class C).
    Immediate,
    /// `"tmst"`: at this concentrator counter value (Class A).
    Tmst(u32),
    /// `"tmms"`: at this GPS time in ms (Class B).
    Tmms(u64),
}

/// A packet to transmit (`txpk`).
#[derive(Debug, Clone, PartialEq)]
pub struct TxPk {
    /// `imme` / `tmst` / `tmms`.
    pub timing: TxTiming,
    /// `freq` in Hz.
    pub freq_hz: u32,
    /// `rfch`: RF chain to transmit on.
    pub rfch: u8,
    /// `powe`: TX power, dBm.
    pub powe: Option<i8>,
    /// `datr` (and the `modu` it implies).
    pub datr: DataRate,
    /// `codr`: required for LoRa by `lora_pkt_fwd`.
    pub codr: Option<CodingRate>,
    /// `fdev`: FSK frequency deviation, Hz; required for FSK.
    pub fdev: Option<u32>,
    /// `ipol`: invert polarity (true for LoRaWAN downlinks).
    pub ipol: Option<bool>,
    /// `prea`: preamble length in symbols.
    pub prea: Option<u16>,
    /// `ncrc`: disable the physical CRC.
    pub ncrc: Option<bool>,
    /// `data`, decoded. `size` is its length.
    pub data: Vec<u8>,
}

// ---------------------------------------------------------------------------------------------
// Wire structs

/// An rxpk as read by [`scan`], before validation.
struct RxPkIn<'a> {
    tmst: u32,
    time: Option<String>,
    tmms: Option<u64>,
    chan: Option<u8>,
    rfch: Option<u8>,
    freq: f64,
    stat: i8,
    modu: Modulation,
    datr: DataRate,
    codr: Option<CodingRate>,
    rssi: Option<i32>,
    lsnr: Option<f64>,
    jver: Option<u8>,
    rsig: Option<Vec<RSig>>,
    brd: Option<u32>,
    aesk: Option<u32>,
    size: u64,
    data: Cow<'a, str>,
}

#[derive(Serialize)]
struct PushDataOut<'a> {
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    rxpk: Vec<RxPkOut<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stat: Option<&'a Stat>,
}

/// Field order as `lora_pkt_fwd` emits it, then the SX1302 additions.
#[derive(Serialize)]
struct RxPkOut<'a> {
    tmst: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    time: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tmms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    chan: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rfch: Option<u8>,
    freq: f64,
    stat: i8,
    modu: Modulation,
    datr: DataRate,
    #[serde(skip_serializing_if = "Option::is_none")]
    codr: Option<CodingRate>,
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "finite_opt")]
    lsnr: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rssi: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    jver: Option<u8>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    rsig: &'a [RSig],
    #[serde(skip_serializing_if = "Option::is_none")]
    brd: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aesk: Option<u32>,
    size: usize,
    data: String,
}

#[derive(Deserialize)]
struct PullRespIn<'a> {
    #[serde(borrow)]
    txpk: TxPkIn<'a>,
}

#[derive(Deserialize)]
struct TxPkIn<'a> {
    #[serde(default)]
    imme: Option<bool>,
    #[serde(default)]
    tmst: Option<u32>,
    #[serde(default)]
    tmms: Option<u64>,
    freq: f64,
    rfch: u8,
    #[serde(default)]
    powe: Option<i8>,
    modu: Modulation,
    datr: DataRate,
    #[serde(default)]
    codr: Option<CodingRate>,
    #[serde(default)]
    fdev: Option<u32>,
    #[serde(default)]
    ipol: Option<bool>,
    #[serde(default)]
    prea: Option<u16>,
    #[serde(default)]
    ncrc: Option<bool>,
    size: u64,
    #[serde(borrow)]
    data: Cow<'a, str>,
}

#[derive(Serialize)]
struct PullRespOut<'a> {
    txpk: TxPkOut<'a>,
}

#[derive(Serialize)]
struct TxPkOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    imme: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tmst: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tmms: Option<u64>,
    freq: f64,
    rfch: u8,
    #[serde(skip_serializing_if = "Option::is_none")]
    powe: Option<i8>,
    modu: Modulation,
    datr: DataRate,
    #[serde(skip_serializing_if = "Option::is_none")]
    codr: Option<CodingRate>,
    #[serde(skip_serializing_if = "Option::is_none")]
    fdev: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ipol: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    prea: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ncrc: Option<bool>,
    size: usize,
    data: &'a str,
}

#[derive(Deserialize)]
struct TxAckIn<'a> {
    #[serde(borrow, default)]
    txpk_ack: Option<TxPkAckIn<'a>>,
}

#[derive(Deserialize)]
struct TxPkAckIn<'a> {
    #[serde(borrow, default)]
    error: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    warn: Option<Cow<'a, str>>,
    #[serde(default)]
    value: Option<i32>,
}

#[derive(Serialize)]
struct TxAckOut<'a> {
    txpk_ack: TxPkAckOut<'a>,
}

#[derive(Serialize)]
struct TxPkAckOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    warn: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<i32>,
}

/// Refuses to write NaN or infinity (serde_json would write `null`, which reads back as absent).
fn finite_opt<S: Serializer>(v: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(x) if x.is_finite() => s.serialize_f64(*x),
        Some(_) => Err(serde::ser::Error::custom("non-finite number")),
        None => s.serialize_none(),
    }
}

// ---------------------------------------------------------------------------------------------
// Parsing

/// MHz (JSON) to Hz, refusing what is not a positive frequency representable in a `u32`.
fn mhz_to_hz(mhz: f64) -> Result<u32, GwmpError> {
    let hz = (mhz * 1e6).round();
    if hz.is_finite() && hz > 0.0 && hz <= f64::from(u32::MAX) {
        Ok(hz as u32)
    } else {
        Err(GwmpError::InvalidField {
            field: "freq",
            reason: "not a frequency in MHz between 0 and 4294.967295",
        })
    }
}

fn hz_to_mhz(hz: u32) -> f64 {
    f64::from(hz) / 1e6
}

fn check_modu(modu: Modulation, datr: DataRate) -> Result<(), GwmpError> {
    if modu == datr.modulation() {
        Ok(())
    } else {
        Err(GwmpError::InvalidField {
            field: "modu",
            reason: "contradicts datr (LORA needs a string, FSK a number)",
        })
    }
}

fn check_size(size: u64, data: &[u8]) -> Result<(), GwmpError> {
    if size == data.len() as u64 {
        Ok(())
    } else {
        Err(GwmpError::SizeMismatch {
            size,
            decoded: data.len(),
        })
    }
}

/// The body after the header, without the trailing NUL bytes some forwarders append, checked
/// to be UTF-8 as a whole (serde_json does not check the strings of ignored fields).
fn body(rest: &[u8]) -> Result<&str, GwmpError> {
    let end = rest.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    Ok(std::str::from_utf8(&rest[..end])?)
}

fn gateway_at(buf: &[u8]) -> Result<GatewayEui, GwmpError> {
    match buf.get(HEADER_LEN..HEADER_WITH_EUI_LEN) {
        Some(eui) => {
            let mut b = [0u8; 8];
            b.copy_from_slice(eui);
            Ok(GatewayEui::from_be_bytes(b))
        }
        None => Err(GwmpError::Truncated {
            len: buf.len(),
            need: HEADER_WITH_EUI_LEN,
        }),
    }
}

fn exact_len(buf: &[u8], identifier: Identifier, expected: usize) -> Result<(), GwmpError> {
    if buf.len() == expected {
        Ok(())
    } else {
        Err(GwmpError::TrailingBytes {
            identifier,
            expected,
            len: buf.len(),
        })
    }
}

fn rxpk_from_wire(w: RxPkIn<'_>) -> Result<RxPk, GwmpError> {
    check_modu(w.modu, w.datr)?;
    let stat = match w.stat {
        1 => CrcStatus::Ok,
        -1 => CrcStatus::Bad,
        0 => CrcStatus::NoCrc,
        _ => {
            return Err(GwmpError::InvalidField {
                field: "stat",
                reason: "not -1, 0 or 1",
            })
        }
    };
    let freq_hz = mhz_to_hz(w.freq)?;
    let data = STANDARD.decode(w.data.as_bytes())?;
    check_size(w.size, &data)?;
    Ok(RxPk {
        tmst: w.tmst,
        time: w.time,
        tmms: w.tmms,
        chan: w.chan,
        rfch: w.rfch,
        freq_hz,
        stat,
        datr: w.datr,
        codr: w.codr,
        rssi: w.rssi,
        lsnr: w.lsnr,
        jver: w.jver,
        rsig: w.rsig.unwrap_or_default(),
        brd: w.brd,
        aesk: w.aesk,
        data,
    })
}

fn txpk_from_wire(w: TxPkIn<'_>) -> Result<TxPk, GwmpError> {
    check_modu(w.modu, w.datr)?;
    let timing = match (w.imme, w.tmst, w.tmms) {
        (Some(true), _, _) => TxTiming::Immediate,
        (_, Some(t), _) => TxTiming::Tmst(t),
        (_, None, Some(t)) => TxTiming::Tmms(t),
        _ => {
            return Err(GwmpError::InvalidField {
                field: "tmst",
                reason: "txpk has neither imme:true, tmst nor tmms",
            })
        }
    };
    match w.datr {
        DataRate::Lora { .. } if w.codr.is_none() => {
            return Err(GwmpError::InvalidField {
                field: "codr",
                reason: "required for LoRa",
            })
        }
        DataRate::Fsk { .. } if w.fdev.is_none() => {
            return Err(GwmpError::InvalidField {
                field: "fdev",
                reason: "required for FSK",
            })
        }
        _ => {}
    }
    let freq_hz = mhz_to_hz(w.freq)?;
    let data = BASE64_PAD_OPTIONAL.decode(w.data.as_bytes())?;
    check_size(w.size, &data)?;
    Ok(TxPk {
        timing,
        freq_hz,
        rfch: w.rfch,
        powe: w.powe,
        datr: w.datr,
        codr: w.codr,
        fdev: w.fdev,
        ipol: w.ipol,
        prea: w.prea,
        ncrc: w.ncrc,
        data,
    })
}

impl Packet {
    /// Parses one datagram.
    pub fn parse(buf: &[u8]) -> Result<Self, GwmpError> {
        let header = buf.get(..HEADER_LEN).ok_or(GwmpError::Truncated {
            len: buf.len(),
            need: HEADER_LEN,
        })?;
        if header[0] != PROTOCOL_VERSION {
            return Err(GwmpError::Version(header[0]));
        }
        let token = Token([header[1], header[2]]);
        let identifier =
            Identifier::from_byte(header[3]).ok_or(GwmpError::Identifier(header[3]))?;
        match identifier {
            Identifier::PushAck => {
                exact_len(buf, identifier, HEADER_LEN)?;
                Ok(Self::PushAck { token })
            }
            Identifier::PullAck => {
                exact_len(buf, identifier, HEADER_LEN)?;
                Ok(Self::PullAck { token })
            }
            Identifier::PullData => {
                let gateway = gateway_at(buf)?;
                exact_len(buf, identifier, HEADER_WITH_EUI_LEN)?;
                Ok(Self::PullData { token, gateway })
            }
            Identifier::PushData => {
                let gateway = gateway_at(buf)?;
                let (rxpk, stat) =
                    scan::push_data(body(&buf[HEADER_WITH_EUI_LEN..])?, rxpk_from_wire)?;
                Ok(Self::PushData(PushData {
                    token,
                    gateway,
                    rxpk,
                    stat,
                }))
            }
            Identifier::PullResp => {
                let wire: PullRespIn<'_> = serde_json::from_str(body(&buf[HEADER_LEN..])?)?;
                Ok(Self::PullResp(PullResp {
                    token,
                    txpk: txpk_from_wire(wire.txpk)?,
                }))
            }
            Identifier::TxAck => {
                let gateway = gateway_at(buf)?;
                let json = body(&buf[HEADER_WITH_EUI_LEN..])?;
                let ack = if json.is_empty() {
                    None
                } else {
                    serde_json::from_str::<TxAckIn<'_>>(json)?.txpk_ack
                };
                let (error, warning) = match ack {
                    None => (None, None),
                    Some(a) => (
                        a.error.as_deref().and_then(TxAckCode::from_wire),
                        a.warn
                            .as_deref()
                            .and_then(TxAckCode::from_wire)
                            .map(|code| TxWarning {
                                code,
                                value: a.value,
                            }),
                    ),
                };
                Ok(Self::TxAck(TxAck {
                    token,
                    gateway,
                    error,
                    warning,
                }))
            }
        }
    }

    /// The datagram type.
    pub fn identifier(&self) -> Identifier {
        match self {
            Self::PushData(_) => Identifier::PushData,
            Self::PushAck { .. } => Identifier::PushAck,
            Self::PullData { .. } => Identifier::PullData,
            Self::PullAck { .. } => Identifier::PullAck,
            Self::PullResp(_) => Identifier::PullResp,
            Self::TxAck(_) => Identifier::TxAck,
        }
    }

    /// The token.
    pub fn token(&self) -> Token {
        match self {
            Self::PushData(p) => p.token,
            Self::PushAck { token } | Self::PullData { token, .. } | Self::PullAck { token } => {
                *token
            }
            Self::PullResp(p) => p.token,
            Self::TxAck(t) => t.token,
        }
    }

    /// The gateway EUI, for the datagrams that carry one (PUSH_DATA, PULL_DATA, TX_ACK).
    pub fn gateway(&self) -> Option<GatewayEui> {
        match self {
            Self::PushData(p) => Some(p.gateway),
            Self::PullData { gateway, .. } => Some(*gateway),
            Self::TxAck(t) => Some(t.gateway),
            _ => None,
        }
    }

    /// The acknowledgement a server sends at once: PUSH_ACK for a PUSH_DATA, PULL_ACK for a
    /// PULL_DATA (4 bytes, the token echoed verbatim); `None` for the other types.
    pub fn ack(&self) -> Option<[u8; HEADER_LEN]> {
        let id = match self {
            Self::PushData(_) => Identifier::PushAck,
            Self::PullData { .. } => Identifier::PullAck,
            _ => return None,
        };
        let t = self.token().0;
        Some([PROTOCOL_VERSION, t[0], t[1], id as u8])
    }

    /// The datagram's bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>, GwmpError> {
        let mut out = Vec::with_capacity(64);
        self.write_to(&mut out)?;
        Ok(out)
    }

    /// Appends the datagram's bytes to `out`. On error `out` may hold a partial datagram.
    pub fn write_to(&self, out: &mut Vec<u8>) -> Result<(), GwmpError> {
        let t = self.token().0;
        out.extend_from_slice(&[PROTOCOL_VERSION, t[0], t[1], self.identifier() as u8]);
        if let Some(g) = self.gateway() {
            out.extend_from_slice(&g.to_be_bytes());
        }
        match self {
            Self::PushAck { .. } | Self::PullAck { .. } | Self::PullData { .. } => Ok(()),
            Self::PushData(p) => write_push_data(p, out),
            Self::PullResp(p) => write_pull_resp(p, out),
            Self::TxAck(a) => write_tx_ack(a, out),
        }
    }
}

fn encode_error(e: serde_json::Error) -> GwmpError {
    GwmpError::Encode(e.to_string())
}

/// A PUSH_DATA's JSON body.
fn write_push_data(p: &PushData, out: &mut Vec<u8>) -> Result<(), GwmpError> {
    let rxpk = p
        .rxpk
        .iter()
        .map(|r| RxPkOut {
            tmst: r.tmst,
            time: r.time.as_deref(),
            tmms: r.tmms,
            chan: r.chan,
            rfch: r.rfch,
            freq: hz_to_mhz(r.freq_hz),
            stat: r.stat.to_wire(),
            modu: r.datr.modulation(),
            datr: r.datr,
            codr: r.codr,
            lsnr: r.lsnr,
            rssi: r.rssi,
            jver: r.jver,
            rsig: &r.rsig,
            brd: r.brd,
            aesk: r.aesk,
            size: r.data.len(),
            data: STANDARD.encode(&r.data),
        })
        .collect();
    let body = PushDataOut {
        rxpk,
        stat: p.stat.as_ref(),
    };
    serde_json::to_writer(&mut *out, &body).map_err(encode_error)
}

/// A PULL_RESP's JSON body.
fn write_pull_resp(p: &PullResp, out: &mut Vec<u8>) -> Result<(), GwmpError> {
    let x = &p.txpk;
    let (imme, tmst, tmms) = match x.timing {
        TxTiming::Immediate => (Some(true), None, None),
        TxTiming::Tmst(t) => (None, Some(t), None),
        TxTiming::Tmms(t) => (None, None, Some(t)),
    };
    let data = STANDARD.encode(&x.data);
    let body = PullRespOut {
        txpk: TxPkOut {
            imme,
            tmst,
            tmms,
            freq: hz_to_mhz(x.freq_hz),
            rfch: x.rfch,
            powe: x.powe,
            modu: x.datr.modulation(),
            datr: x.datr,
            codr: x.codr,
            fdev: x.fdev,
            ipol: x.ipol,
            prea: x.prea,
            ncrc: x.ncrc,
            size: x.data.len(),
            data: &data,
        },
    };
    serde_json::to_writer(&mut *out, &body).map_err(encode_error)
}

/// A TX_ACK's JSON body: none on success, as lora_pkt_fwd sends.
fn write_tx_ack(a: &TxAck, out: &mut Vec<u8>) -> Result<(), GwmpError> {
    for code in a.error.iter().chain(a.warning.iter().map(|w| &w.code)) {
        if let TxAckCode::Other(s) = code {
            if TxAckCode::from_wire(s).as_ref() != Some(code) {
                return Err(GwmpError::Encode(format!(
                    "TxAckCode::Other({s:?}) would read back as another code"
                )));
            }
        }
    }
    if a.error.is_none() && a.warning.is_none() {
        return Ok(());
    }
    let body = TxAckOut {
        txpk_ack: TxPkAckOut {
            error: a.error.as_ref().map(TxAckCode::as_str),
            warn: a.warning.as_ref().map(|w| w.code.as_str()),
            value: a.warning.as_ref().and_then(|w| w.value),
        },
    };
    serde_json::to_writer(&mut *out, &body).map_err(encode_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }

    #[test]
    fn datr_strings() {
        for (s, sf, bw) in [
            ("SF7BW125", 7, 125),
            ("SF12BW125", 12, 125),
            ("SF7BW250", 7, 250),
            ("SF5BW500", 5, 500),
        ] {
            let d = DataRate::parse_lora(s).unwrap();
            assert_eq!(d, DataRate::lora(sf, bw).unwrap());
            assert_eq!(d.to_string(), s);
        }
        for bad in [
            "SF13BW125",
            "SF4BW125",
            "SF7BW126",
            "sf7bw125",
            "SF07BW125",
            "SF+7BW125",
            "SFBW125",
            "SF7BW",
            "SF7",
            "SF7BW125 ",
            "",
        ] {
            assert_eq!(DataRate::parse_lora(bad), None, "{bad}");
        }
    }

    #[test]
    fn header_errors_have_kinds() {
        let cases: [(&[u8], &str); 8] = [
            (&[], "truncated"),
            (&[2, 0, 0], "truncated"),
            (&[1, 0, 0, 1], "version"),
            (&[2, 0, 0, 6], "identifier"),
            (&[2, 0, 0, 1, 0], "trailing_bytes"),
            (&[2, 0, 0, 2, 1, 2, 3, 4, 5, 6, 7], "truncated"),
            (&[2, 0, 0, 2, 1, 2, 3, 4, 5, 6, 7, 8, 9], "trailing_bytes"),
            (&[2, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8], "json"),
        ];
        for (buf, kind) in cases {
            assert_eq!(Packet::parse(buf).unwrap_err().kind(), kind, "{buf:?}");
        }
    }

    #[test]
    fn ack_echoes_token() {
        let p = Packet::parse(&hex("029f9202aa555a0102030405")).unwrap();
        assert_eq!(p.ack(), Some([2, 0x9f, 0x92, 4]));
        assert_eq!(p.gateway(), Some(GatewayEui::new(0xaa555a0102030405)));
        assert_eq!(
            Packet::PushAck {
                token: Token([1, 2])
            }
            .ack(),
            None
        );
    }

    #[test]
    fn tx_ack_forms() {
        let gw = "0102030405060708";
        let ok = |body: &str| {
            let mut b = hex(&format!("02abcd05{gw}"));
            b.extend_from_slice(body.as_bytes());
            match Packet::parse(&b).unwrap() {
                Packet::TxAck(a) => a,
                p => panic!("{p:?}"),
            }
        };
        assert!(ok("").is_success());
        assert!(ok("\0").is_success());
        assert!(ok("{}").is_success());
        assert!(ok(r#"{"txpk_ack":{"error":"NONE"}}"#).is_success());
        let w = ok(r#"{"txpk_ack":{"warn":"TX_POWER","value":14}}"#);
        assert!(w.is_success());
        assert_eq!(
            w.warning,
            Some(TxWarning {
                code: TxAckCode::TxPower,
                value: Some(14)
            })
        );
        let e = ok(r#"{"txpk_ack":{"error":"TOO_LATE"}}"#);
        assert_eq!(e.error, Some(TxAckCode::TooLate));
        let x = ok(r#"{"txpk_ack":{"error":"NEW_THING"}}"#);
        assert_eq!(x.error, Some(TxAckCode::Other("NEW_THING".into())));
        assert_eq!(x.error.unwrap().kind(), "other");
    }

    #[test]
    fn tx_ack_other_with_known_name_is_not_encoded() {
        let a = Packet::TxAck(TxAck {
            token: Token([0, 0]),
            gateway: GatewayEui::new(1),
            error: Some(TxAckCode::Other("TOO_LATE".into())),
            warning: None,
        });
        assert_eq!(a.to_bytes().unwrap_err().kind(), "encode");
    }

    #[test]
    fn non_finite_floats_are_not_encoded() {
        let p = Packet::PushData(PushData {
            token: Token([0, 0]),
            gateway: GatewayEui::new(1),
            rxpk: vec![],
            stat: Some(Stat {
                ackr: Some(f64::NAN),
                ..Stat::default()
            }),
        });
        assert_eq!(p.to_bytes().unwrap_err().kind(), "encode");
    }

    #[test]
    fn freq_is_exact_in_hz() {
        assert_eq!(mhz_to_hz(868.1).unwrap(), 868_100_000);
        assert_eq!(mhz_to_hz(866.349812).unwrap(), 866_349_812);
        assert_eq!(mhz_to_hz(869.525).unwrap(), 869_525_000);
        assert!(mhz_to_hz(0.0).is_err());
        assert!(mhz_to_hz(-868.1).is_err());
        assert!(mhz_to_hz(5000.0).is_err());
        assert_eq!(hz_to_mhz(868_100_000).to_string(), "868.1");
    }
}
