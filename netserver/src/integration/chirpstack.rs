//! ChirpStack v4's integration shapes: the MQTT topic and the camelCase JSON (protobuf JSON
//! mapping) of its `up`, `join`, `ack`, `txack`, `status` and `log` events, made from the lines of the
//! event log ([`crate::integration::events`]). Pure: the same line always gives the same bytes,
//! and its `deduplicationId` is derived from the line, so an event delivered again after a
//! restart carries the same id.

use std::collections::BTreeMap;

use protocol::ids::{DevEui, GatewayEui};
use protocol::region::Region;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use crate::integration::events::{
    b64, AckEvent, JoinEvent, LogLine, StatusLine, TxAckLine, UplinkEvent,
};

/// The application of each tenant (owner), with a default for the others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applications {
    /// The application of a device whose tenant has none of its own.
    pub default: String,
    /// Application per tenant.
    pub by_tenant: BTreeMap<String, String>,
}

impl Applications {
    /// The application of a device owned by `tenant`.
    pub fn of(&self, tenant: Option<&str>) -> &str {
        tenant
            .and_then(|t| self.by_tenant.get(t))
            .unwrap_or(&self.default)
    }
}

/// What shapes every event: the applications and the region.
#[derive(Debug, Clone)]
pub struct Shape {
    /// Tenants to applications.
    pub applications: Applications,
    /// The network's region (data rates to modulations, `regionConfigId`).
    pub region: Region,
}

/// One event in ChirpStack's shape.
#[derive(Debug, Clone, PartialEq)]
pub struct ChirpEvent {
    /// `up`, `join`, `ack`, `txack`, `status` or `log`.
    pub event: &'static str,
    /// The device.
    pub dev_eui: DevEui,
    /// Its application.
    pub application_id: String,
    /// The JSON body.
    pub body: Value,
}

impl ChirpEvent {
    /// The topic from a template with `{application_id}`, `{dev_eui}` (lower-case hex) and
    /// `{event}`.
    pub fn topic(&self, template: &str) -> String {
        template
            .replace("{application_id}", &self.application_id)
            .replace("{dev_eui}", &hex_lower(self.dev_eui))
            .replace("{event}", self.event)
    }
}

/// ChirpStack's default event topic.
pub const EVENT_TOPIC: &str = "application/{application_id}/device/{dev_eui}/event/{event}";
/// ChirpStack's downlink command topic (what the network server subscribes to, with `+` for
/// the application and the device).
pub const COMMAND_TOPIC: &str = "application/{application_id}/device/{dev_eui}/command/down";

#[derive(Deserialize)]
struct Kind<'a> {
    #[serde(rename = "type", borrow)]
    kind: &'a str,
    #[serde(default)]
    tenant: Option<String>,
}

/// The ChirpStack event of one event-log line; `None` for a line of no known type.
pub fn chirpstack_event(line: &[u8], shape: &Shape) -> Option<ChirpEvent> {
    let k: Kind<'_> = serde_json::from_slice(line).ok()?;
    let application_id = shape.applications.of(k.tenant.as_deref()).to_owned();
    let info = |dev_eui: DevEui| device_info(dev_eui, k.tenant.as_deref(), &application_id);
    let dedup = dedup_id(line);
    let (event, dev_eui, body) = match k.kind {
        "uplink" => {
            let u: UplinkEvent = serde_json::from_slice(line).ok()?;
            let body = up(&u, shape, info(u.dev_eui), dedup);
            ("up", u.dev_eui, body)
        }
        "join" => {
            let j: JoinEvent = serde_json::from_slice(line).ok()?;
            let body = json!({
                "deduplicationId": dedup,
                "time": j.received_at,
                "deviceInfo": info(j.dev_eui),
                "devAddr": format!("{}", j.dev_addr).to_lowercase(),
                "regionConfigId": region_config_id(shape.region),
            });
            ("join", j.dev_eui, body)
        }
        "ack" => {
            let a: AckEvent = serde_json::from_slice(line).ok()?;
            let body = json!({
                "deduplicationId": dedup,
                "time": a.received_at,
                "deviceInfo": info(a.dev_eui),
                "queueItemId": queue_item_id(a.id),
                "acknowledged": true,
                "fCntDown": a.f_cnt_down,
            });
            ("ack", a.dev_eui, body)
        }
        "txack" => {
            let t: TxAckLine = serde_json::from_slice(line).ok()?;
            let body = tx_ack(&t, info(t.dev_eui));
            ("txack", t.dev_eui, body)
        }
        "status" => {
            let s: StatusLine = serde_json::from_slice(line).ok()?;
            let body = json!({
                "deduplicationId": dedup,
                "time": s.received_at,
                "deviceInfo": info(s.dev_eui),
                "margin": s.margin,
                "externalPowerSource": s.battery == 0,
                "batteryLevelUnavailable": s.battery == 255,
                "batteryLevel": battery_percent(s.battery),
            });
            ("status", s.dev_eui, body)
        }
        "log" => {
            let l: LogLine = serde_json::from_slice(line).ok()?;
            let body = json!({
                "time": l.received_at,
                "deviceInfo": info(l.dev_eui),
                "level": l.level,
                "code": l.code,
                "description": l.description,
                "context": l.context,
            });
            ("log", l.dev_eui, body)
        }
        _ => return None,
    };
    Some(ChirpEvent {
        event,
        dev_eui,
        application_id,
        body,
    })
}

fn up(u: &UplinkEvent, shape: &Shape, device_info: Value, dedup: String) -> Value {
    let first = u.rx.first();
    let dr = first.map_or(0, |r| r.data_rate);
    let rx_info: Vec<Value> =
        u.rx.iter()
            .map(|r| {
                json!({
                    "gatewayId": gateway_id(r.gateway),
                    "uplinkId": r.tmst,
                    "nsTime": u.received_at,
                    "rssi": r.rssi,
                    "snr": r.snr,
                    "location": {},
                    "context": b64(&r.tmst.to_be_bytes()),
                    "crcStatus": "CRC_OK",
                })
            })
            .collect();
    let mut tx_info = Map::new();
    tx_info.insert("frequency".into(), json!(first.map_or(0, |r| r.frequency)));
    if let Ok(protocol::gwmp::DataRate::Lora {
        spreading_factor,
        bandwidth_khz,
    }) = shape.region.data_rate(dr)
    {
        tx_info.insert(
            "modulation".into(),
            json!({"lora": {
                "bandwidth": u32::from(bandwidth_khz) * 1000,
                "spreadingFactor": spreading_factor,
                "codeRate": "CR_4_5",
            }}),
        );
    }
    let mut body = json!({
        "deduplicationId": dedup,
        "time": u.received_at,
        "deviceInfo": device_info,
        "devAddr": format!("{}", u.dev_addr).to_lowercase(),
        "adr": u.adr,
        "dr": dr,
        "fCnt": u.f_cnt,
        "fPort": u.f_port.unwrap_or(0),
        "confirmed": u.confirmed,
        "data": u.data.as_deref().or(u.data_encrypted.as_deref()).unwrap_or(""),
        "rxInfo": rx_info,
        "txInfo": tx_info,
        "regionConfigId": region_config_id(shape.region),
    });
    if let (Some(env), Some(o)) = (&u.app_s_key, body.as_object_mut()) {
        // The join server kept the AppSKey: `data` is the FRMPayload as received, and the
        // envelope goes to the application (ChirpStack's end-to-end mode).
        o.insert(
            "joinServerContext".into(),
            json!({
                "sessionKeyId": "",
                "appSKey": {"kekLabel": env.kek_label, "aesKey": b64(&env.aes_key)},
            }),
        );
    }
    body
}

/// ChirpStack's `TxAckEvent`: `downlinkId`, `time`, `deviceInfo`, `queueItemId` (when the
/// downlink carried a queued payload), `fCntDown`, `gatewayId`, `txInfo` (its `DownlinkTxInfo`:
/// frequency, power, LoRa modulation with inverted polarity, the delay after the uplink).
fn tx_ack(t: &TxAckLine, device_info: Value) -> Value {
    let mut tx_info = Map::new();
    tx_info.insert("frequency".into(), json!(t.frequency));
    if let Some(p) = t.power {
        tx_info.insert("power".into(), json!(p));
    }
    if let (Some(sf), Some(bw)) = (t.spreading_factor, t.bandwidth_khz) {
        tx_info.insert(
            "modulation".into(),
            json!({"lora": {
                "bandwidth": u32::from(bw) * 1000,
                "spreadingFactor": sf,
                "codeRate": "CR_4_5",
                "polarizationInversion": true,
            }}),
        );
    }
    tx_info.insert(
        "timing".into(),
        json!({"delay": {"delay": format!("{}s", t.delay_s)}}),
    );
    let mut body = json!({
        "downlinkId": t.downlink_id,
        "time": t.received_at,
        "deviceInfo": device_info,
        "fCntDown": t.f_cnt_down,
        "gatewayId": gateway_id(t.gateway),
        "txInfo": tx_info,
    });
    if let (Some(q), Some(o)) = (t.queue_item_id, body.as_object_mut()) {
        o.insert("queueItemId".into(), json!(queue_item_id(q)));
    }
    body
}

fn device_info(dev_eui: DevEui, tenant: Option<&str>, application_id: &str) -> Value {
    let eui = hex_lower(dev_eui);
    json!({
        "tenantId": tenant.unwrap_or(""),
        "tenantName": tenant.unwrap_or(""),
        "applicationId": application_id,
        "applicationName": "",
        "deviceProfileId": "",
        "deviceProfileName": "",
        "deviceName": eui,
        "devEui": eui,
        "deviceClassEnabled": "CLASS_A",
        "tags": {},
    })
}

/// DevEUI as ChirpStack writes it: 16 lower-case hex digits.
pub fn hex_lower(dev_eui: DevEui) -> String {
    format!("{:016x}", dev_eui.as_u64())
}

fn gateway_id(g: GatewayEui) -> String {
    format!("{:016x}", g.as_u64())
}

fn region_config_id(r: Region) -> String {
    r.to_string().to_lowercase()
}

/// DevStatusAns Battery 1..=254 as a percentage (ChirpStack's `batteryLevel`); 0 otherwise.
fn battery_percent(b: u8) -> f32 {
    match b {
        1..=254 => (f32::from(b) / 254.0 * 10_000.0).round() / 100.0,
        _ => 0.0,
    }
}

/// A UUID-shaped id (version 8, RFC 9562's custom layout) from the SHA-256 of the line: the
/// same event always gets the same `deduplicationId`.
pub fn dedup_id(line: &[u8]) -> String {
    let h = Sha256::digest(line);
    let mut b = [0u8; 16];
    b.copy_from_slice(&h[..16]);
    b[6] = (b[6] & 0x0F) | 0x80;
    b[8] = (b[8] & 0x3F) | 0x80;
    uuid_string(b)
}

/// A downlink's id as a UUID-shaped `queueItemId`.
pub fn queue_item_id(id: u64) -> String {
    let mut b = [0u8; 16];
    b[8..].copy_from_slice(&id.to_be_bytes());
    uuid_string(b)
}

fn uuid_string(b: [u8; 16]) -> String {
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape() -> Shape {
        Shape {
            applications: Applications {
                default: "84c006ab-204f-418b-9896-075226b8a93d".into(),
                by_tenant: [(
                    "acme".to_owned(),
                    "11111111-2222-3333-4444-555555555555".to_owned(),
                )]
                .into(),
            },
            region: Region::Eu868,
        }
    }

    const UP: &str = r#"{"type":"uplink","dev_eui":"70B3D5FF00000001","dev_addr":"00600383","f_cnt":0,"f_port":10,"confirmed":false,"adr":false,"data":"AAECAwQFBgcICQoL","rx":[{"gateway":"AA555A0000000001","rssi":-60,"snr":7.5,"frequency":868300000,"data_rate":5,"tmst":20000000}],"received_at":"2026-12-06T07:44:53.801Z"}"#;

    #[test]
    fn an_uplink_has_chirpstacks_topic_and_fields() {
        let e = chirpstack_event(UP.as_bytes(), &shape()).unwrap();
        assert_eq!(
            e.topic(EVENT_TOPIC),
            "application/84c006ab-204f-418b-9896-075226b8a93d/device/70b3d5ff00000001/event/up"
        );
        let b = &e.body;
        assert_eq!(b["deviceInfo"]["devEui"], "70b3d5ff00000001");
        assert_eq!(
            b["deviceInfo"]["applicationId"],
            "84c006ab-204f-418b-9896-075226b8a93d"
        );
        assert_eq!(b["devAddr"], "00600383");
        assert_eq!(
            (b["dr"].as_u64(), b["fCnt"].as_u64(), b["fPort"].as_u64()),
            (Some(5), Some(0), Some(10))
        );
        assert_eq!(b["data"], "AAECAwQFBgcICQoL");
        assert_eq!(b["rxInfo"][0]["gatewayId"], "aa555a0000000001");
        assert_eq!(b["rxInfo"][0]["rssi"], -60);
        assert_eq!(
            b["txInfo"],
            json!({"frequency": 868300000, "modulation": {"lora": {"bandwidth": 125000, "spreadingFactor": 7, "codeRate": "CR_4_5"}}})
        );
        assert_eq!(b["regionConfigId"], "eu868");
        assert_eq!(b["time"], "2026-12-06T07:44:53.801Z");
        let id = b["deduplicationId"].as_str().unwrap();
        assert_eq!(id.len(), 36);
        assert_eq!(
            id,
            chirpstack_event(UP.as_bytes(), &shape()).unwrap().body["deduplicationId"]
        );
        let other = UP.replace("\"f_cnt\":0", "\"f_cnt\":1");
        assert_ne!(
            id,
            chirpstack_event(other.as_bytes(), &shape()).unwrap().body["deduplicationId"]
        );
    }

    #[test]
    fn a_tenant_maps_to_its_application_and_an_envelope_to_the_join_server_context() {
        let line = UP
            .replace("\"type\":\"uplink\"", "\"type\":\"uplink\",\"tenant\":\"acme\"")
            .replace(
                "\"data\":\"AAECAwQFBgcICQoL\"",
                "\"data_encrypted\":\"qrs=\",\"app_s_key\":{\"KEKLabel\":\"as-1\",\"AESKey\":\"000102030405060708090a0b0c0d0e0f1011121314151617\"}",
            );
        let e = chirpstack_event(line.as_bytes(), &shape()).unwrap();
        assert_eq!(e.application_id, "11111111-2222-3333-4444-555555555555");
        assert_eq!(e.body["deviceInfo"]["tenantId"], "acme");
        assert_eq!(e.body["data"], "qrs=");
        assert_eq!(e.body["joinServerContext"]["appSKey"]["kekLabel"], "as-1");
        assert_eq!(
            e.body["joinServerContext"]["appSKey"]["aesKey"],
            "AAECAwQFBgcICQoLDA0ODxAREhMUFRYX"
        );
    }

    #[test]
    fn join_ack_status_and_log_events() {
        let s = shape();
        let ev = |l: &str| chirpstack_event(l.as_bytes(), &s).unwrap();
        let j = ev(
            r#"{"type":"join","dev_eui":"0000000000000001","join_eui":"70B3D57ED0000001","dev_addr":"26000123","mac_version":"1.0.3","received_at":"2026-11-25T12:00:00.000Z"}"#,
        );
        assert_eq!((j.event, &j.body["devAddr"]), ("join", &json!("26000123")));
        let a = ev(
            r#"{"type":"ack","dev_eui":"00000000000000B1","id":2,"f_cnt_down":1,"received_at":"2026-11-25T12:00:52.100Z"}"#,
        );
        assert_eq!(a.event, "ack");
        assert_eq!(a.body["acknowledged"], true);
        assert_eq!(a.body["fCntDown"], 1);
        assert_eq!(
            a.body["queueItemId"],
            "00000000-0000-0000-0000-000000000002"
        );
        let st = ev(
            r#"{"type":"status","dev_eui":"00000000000000B1","battery":127,"margin":-3,"received_at":"2026-11-25T12:00:52.100Z"}"#,
        );
        assert_eq!(st.body["batteryLevel"], json!(50.0));
        assert_eq!(st.body["margin"], -3);
        assert_eq!(st.body["externalPowerSource"], false);
        let l = ev(
            r#"{"type":"log","dev_eui":"00000000000000B1","level":"ERROR","code":"DOWNLINK_PAYLOAD_SIZE","description":"too long","context":{"fPort":"2"},"received_at":"2026-11-25T12:00:52.100Z"}"#,
        );
        assert_eq!(
            l.topic(EVENT_TOPIC),
            "application/84c006ab-204f-418b-9896-075226b8a93d/device/00000000000000b1/event/log"
        );
        assert_eq!(l.body["context"]["fPort"], "2");
        assert!(l.body.get("deduplicationId").is_none());
        let t = ev(
            r#"{"type":"txack","dev_eui":"00000000000000B1","downlink_id":65538,"queue_item_id":2,"f_cnt_down":1,"gateway":"AA555A0000000001","frequency":869525000,"power":27,"spreading_factor":9,"bandwidth_khz":125,"delay_s":2,"tenant":"acme","received_at":"2026-11-25T12:00:52.100Z"}"#,
        );
        assert_eq!(
            t.topic(EVENT_TOPIC),
            "application/11111111-2222-3333-4444-555555555555/device/00000000000000b1/event/txack"
        );
        assert_eq!(
            t.body,
            json!({
                "downlinkId": 65538,
                "time": "2026-11-25T12:00:52.100Z",
                "deviceInfo": t.body["deviceInfo"].clone(),
                "queueItemId": "00000000-0000-0000-0000-000000000002",
                "fCntDown": 1,
                "gatewayId": "aa555a0000000001",
                "txInfo": {
                    "frequency": 869525000,
                    "power": 27,
                    "modulation": {"lora": {"bandwidth": 125000, "spreadingFactor": 9, "codeRate": "CR_4_5", "polarizationInversion": true}},
                    "timing": {"delay": {"delay": "2s"}},
                },
            })
        );
        assert_eq!(t.body["deviceInfo"]["tenantId"], "acme");
        assert!(chirpstack_event(b"{\"type\":\"other\"}", &s).is_none());
        assert!(chirpstack_event(b"not json", &s).is_none());
    }
}
