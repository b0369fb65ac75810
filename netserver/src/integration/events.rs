//! The application events (JSON lines, see `docs/integration.md`): `uplink` (one per delivered
//! uplink), `join` (a new session), `ack` (the device acknowledged a confirmed downlink),
//! `status` (a DevStatusAns), `log` (something an operator must see about a device).
//! Identifiers are MSB-first hex, payloads base64, times RFC 3339 UTC with milliseconds.

use std::collections::BTreeMap;

use base64::Engine;
use protocol::ids::{DevAddr, DevEui, GatewayEui, JoinEui};
use protocol::keywrap::KeyEnvelope;
use serde::{Deserialize, Serialize};

use crate::core::reception::Reception;

/// Base64 (standard alphabet, padded), the encoding of every payload in events and requests.
pub const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

pub use protocol::time::rfc3339;

/// One gateway's reception, as reported in an uplink event.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RxInfo {
    /// Gateway EUI.
    pub gateway: GatewayEui,
    /// RSSI, dBm.
    pub rssi: i32,
    /// SNR, dB.
    pub snr: f32,
    /// Frequency, Hz.
    pub frequency: u32,
    /// EU868 data rate index.
    pub data_rate: u8,
    /// The gateway's `tmst`, µs.
    pub tmst: u32,
}

impl From<&Reception> for RxInfo {
    fn from(r: &Reception) -> Self {
        Self {
            gateway: r.gateway,
            rssi: r.rssi,
            snr: r.snr,
            frequency: r.frequency_hz,
            data_rate: r.data_rate,
            tmst: r.tmst,
        }
    }
}

/// `{"type":"uplink",…}`: a delivered uplink.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct UplinkEvent {
    /// Always `uplink`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The device.
    pub dev_eui: DevEui,
    /// Its address.
    pub dev_addr: DevAddr,
    /// The full 32-bit FCntUp.
    pub f_cnt: u32,
    /// FPort (absent without payload).
    pub f_port: Option<u8>,
    /// Confirmed data up.
    pub confirmed: bool,
    /// ADR bit.
    pub adr: bool,
    /// The application payload in clear, base64 (when this server holds the AppSKey).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub data: Option<String>,
    /// The FRMPayload as received, still encrypted under the AppSKey, base64 (when this
    /// server does not hold the AppSKey).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub data_encrypted: Option<String>,
    /// The AppSKey envelope (wrapped under the application server's KEK), with
    /// `data_encrypted`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub app_s_key: Option<KeyEnvelope>,
    /// Every gateway that heard the frame, best first.
    pub rx: Vec<RxInfo>,
    /// The tenant that owns the device (the join server's `Owner`): its events go to the
    /// tenant's application. Absent: the default application.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Arrival of the first copy.
    pub received_at: String,
}

/// `{"type":"join",…}`: a device joined and has a new session.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct JoinEvent {
    /// Always `join`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The device.
    pub dev_eui: DevEui,
    /// Its JoinEUI.
    pub join_eui: JoinEui,
    /// Its new address.
    pub dev_addr: DevAddr,
    /// LoRaWAN version, if reported.
    pub mac_version: Option<String>,
    /// The tenant that owns the device (the join server's `Owner`): its events go to the
    /// tenant's application. Absent: the default application.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// When the session was stored.
    pub received_at: String,
}

/// `{"type":"ack",…}`: the device acknowledged a confirmed downlink.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AckEvent {
    /// Always `ack`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The device.
    pub dev_eui: DevEui,
    /// The id the downlink was queued with.
    pub id: u64,
    /// The downlink's FCntDown (1.1: AFCntDown).
    pub f_cnt_down: u32,
    /// The tenant that owns the device (the join server's `Owner`): its events go to the
    /// tenant's application. Absent: the default application.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// The acknowledging uplink's arrival.
    pub received_at: String,
}

/// `{"type":"txack",…}`: a gateway acknowledged a downlink for transmission (its TX_ACK
/// without error). The network server makes it when it sends the downlink, with an empty
/// `received_at`, and emits it when the acknowledgement comes
/// ([`crate::integration::txack`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxAckLine {
    /// Always `txack`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The device.
    pub dev_eui: DevEui,
    /// The downlink's id: the PULL_RESP token in the low 16 bits, the FCntDown's low 16 bits
    /// above them.
    pub downlink_id: u32,
    /// The queued application payload it carries, if any (the id it was queued with).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_item_id: Option<u64>,
    /// Its FCntDown (1.1: NFCntDown or AFCntDown).
    pub f_cnt_down: u32,
    /// The gateway that acknowledged it.
    pub gateway: GatewayEui,
    /// Frequency, Hz.
    pub frequency: u32,
    /// Transmit power, dBm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power: Option<i8>,
    /// LoRa spreading factor (absent for FSK).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spreading_factor: Option<u8>,
    /// LoRa bandwidth, kHz (absent for FSK).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth_khz: Option<u16>,
    /// Seconds from the uplink to the transmission (the receive window's delay).
    pub delay_s: u8,
    /// The tenant that owns the device (the join server's `Owner`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// When the gateway acknowledged it.
    pub received_at: String,
}

/// `{"type":"log",…}` : something an operator must see about a device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogLine {
    /// Always `log`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The device.
    pub dev_eui: DevEui,
    /// INFO, WARNING or ERROR.
    pub level: String,
    /// ChirpStack's log code (UNKNOWN, DOWNLINK_PAYLOAD_SIZE, DOWNLINK_GATEWAY, UPLINK_F_CNT_RESET, ...).
    pub code: String,
    /// What happened, in words.
    pub description: String,
    /// Details.
    #[serde(default)]
    pub context: BTreeMap<String, String>,
    /// The tenant that owns the device (the join server's `Owner`): its events go to the
    /// tenant's application. Absent: the default application.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// When.
    pub received_at: String,
}

/// `{"type":"status",…}` : a DevStatusAns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusLine {
    /// Always `status`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The device.
    pub dev_eui: DevEui,
    /// DevStatusAns Battery: 0 external power, 1..=254 level, 255 unknown.
    pub battery: u8,
    /// DevStatusAns Margin, dB.
    pub margin: i8,
    /// The tenant that owns the device (the join server's `Owner`): its events go to the
    /// tenant's application. Absent: the default application.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// When.
    pub received_at: String,
}

/// Base64 of bytes.
pub fn b64(b: &[u8]) -> String {
    B64.encode(b)
}
