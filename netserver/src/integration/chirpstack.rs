//! ChirpStack v4's integration shapes: the MQTT topic and the camelCase JSON (protobuf JSON
//! mapping) of its `up`, `join`, `ack`, `txack`, `status` and `log` events, made from the lines of the
//! event log ([`crate::integration::events`]). Pure: the same line always gives the same bytes,
//! and its `deduplicationId` is derived from the line, so an event delivered again after a
//! restart carries the same id. The `up` and `join` events, one per uplink and per join, are
//! written from borrowed, typed structs (no `serde_json::Value` tree: building one took most
//! of the MQTT sink's CPU per event); the rarer kinds from JSON values.

use std::collections::BTreeMap;

use protocol::ids::{DevEui, GatewayEui};
use protocol::region::Region;
use serde::{Deserialize, Serialize};
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
    pub body: Vec<u8>,
}

impl ChirpEvent {
    /// The topic from a template with `{application_id}`, `{dev_eui}` (lower-case hex) and
    /// `{event}`.
    pub fn topic(&self, template: &str) -> String {
        use std::fmt::Write;
        let mut topic = String::with_capacity(template.len() + 48);
        let mut rest = template;
        // The earliest placeholder left, replaced in one pass.
        while let Some((at, p)) = ["{application_id}", "{dev_eui}", "{event}"]
            .into_iter()
            .filter_map(|p| rest.find(p).map(|at| (at, p)))
            .min()
        {
            topic.push_str(&rest[..at]);
            match p {
                "{application_id}" => topic.push_str(&self.application_id),
                "{dev_eui}" => {
                    let _ = write!(topic, "{:016x}", self.dev_eui.as_u64());
                }
                _ => topic.push_str(self.event),
            }
            rest = &rest[at + p.len()..];
        }
        topic.push_str(rest);
        topic
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
    #[serde(default, borrow)]
    tenant: Option<std::borrow::Cow<'a, str>>,
}

/// How the event log starts an uplink's line: its `type` field first (the opening brace
/// written as `\x7b`).
const UPLINK_LINE_START: &[u8] = b"\x7b\"type\":\"uplink\",";

/// The ChirpStack event of one event-log line; `None` for a line of no known type.
pub fn chirpstack_event(line: &[u8], shape: &Shape) -> Option<ChirpEvent> {
    // The event log writes an event's type first: an uplink, nearly every line, is parsed
    // once (the general path reads the type, then the event).
    if line.starts_with(UPLINK_LINE_START) {
        return up_event(line, &serde_json::from_slice(line).ok()?, shape);
    }
    let k: Kind<'_> = serde_json::from_slice(line).ok()?;
    if k.kind == "uplink" {
        return up_event(line, &serde_json::from_slice(line).ok()?, shape);
    }
    let application_id = shape.applications.of(k.tenant.as_deref()).to_owned();
    let tenant = k.tenant.as_deref().unwrap_or("");
    let info = |dev_eui: DevEui| device_info(dev_eui, k.tenant.as_deref(), &application_id);
    let dedup = dedup_id(line);
    let (event, dev_eui, body) = match k.kind {
        "join" => {
            let j: JoinEvent = serde_json::from_slice(line).ok()?;
            let eui = hex_lower(j.dev_eui);
            let body = serde_json::to_vec(&Join {
                deduplication_id: &dedup,
                time: &j.received_at,
                device_info: DeviceInfo::new(tenant, &application_id, &eui),
                dev_addr: hex_addr(j.dev_addr),
                region_config_id: region_config_id(shape.region),
            })
            .ok()?;
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
            ("ack", a.dev_eui, serde_json::to_vec(&body).ok()?)
        }
        "txack" => {
            let t: TxAckLine = serde_json::from_slice(line).ok()?;
            let body = tx_ack(&t, info(t.dev_eui));
            ("txack", t.dev_eui, serde_json::to_vec(&body).ok()?)
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
            ("status", s.dev_eui, serde_json::to_vec(&body).ok()?)
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
            ("log", l.dev_eui, serde_json::to_vec(&body).ok()?)
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

/// ChirpStack's `up` event of an uplink line.
fn up_event(line: &[u8], u: &UplinkEvent, shape: &Shape) -> Option<ChirpEvent> {
    let application_id = shape.applications.of(u.tenant.as_deref());
    let eui = hex_lower(u.dev_eui);
    let dedup = dedup_id(line);
    let info = DeviceInfo::new(u.tenant.as_deref().unwrap_or(""), application_id, &eui);
    // One allocation: the body is about the line's size plus ChirpStack's names.
    let mut body = Vec::with_capacity(line.len() + 768);
    serde_json::to_writer(&mut body, &Up::new(u, shape, info, &dedup)).ok()?;
    Some(ChirpEvent {
        event: "up",
        dev_eui: u.dev_eui,
        application_id: application_id.to_owned(),
        body,
    })
}

/// ChirpStack's `UplinkEvent` (the protobuf JSON mapping: camelCase, empty objects for unset
/// messages), borrowing from the event-log line.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Up<'a> {
    deduplication_id: &'a str,
    time: &'a str,
    device_info: DeviceInfo<'a>,
    dev_addr: String,
    adr: bool,
    dr: u8,
    f_cnt: u32,
    f_port: u8,
    confirmed: bool,
    data: &'a str,
    rx_info: Vec<UplinkRxInfo<'a>>,
    tx_info: UplinkTxInfo,
    region_config_id: String,
    /// Where the join server kept the AppSKey: `data` is the FRMPayload as received, and the
    /// envelope goes to the application (ChirpStack's end-to-end mode).
    #[serde(skip_serializing_if = "Option::is_none")]
    join_server_context: Option<JoinServerContext<'a>>,
}

impl<'a> Up<'a> {
    fn new(u: &'a UplinkEvent, shape: &Shape, device_info: DeviceInfo<'a>, dedup: &'a str) -> Self {
        let first = u.rx.first();
        let dr = first.map_or(0, |r| r.data_rate);
        let modulation = match shape.region.data_rate(dr) {
            Ok(protocol::gwmp::DataRate::Lora {
                spreading_factor,
                bandwidth_khz,
            }) => Some(Modulation {
                lora: Lora {
                    bandwidth: u32::from(bandwidth_khz) * 1000,
                    spreading_factor,
                    code_rate: "CR_4_5",
                    polarization_inversion: None,
                },
            }),
            _ => None,
        };
        Self {
            deduplication_id: dedup,
            time: &u.received_at,
            device_info,
            dev_addr: hex_addr(u.dev_addr),
            adr: u.adr,
            dr,
            f_cnt: u.f_cnt,
            f_port: u.f_port.unwrap_or(0),
            confirmed: u.confirmed,
            data: u
                .data
                .as_deref()
                .or(u.data_encrypted.as_deref())
                .unwrap_or(""),
            rx_info: u
                .rx
                .iter()
                .map(|r| UplinkRxInfo {
                    gateway_id: gateway_id(r.gateway),
                    uplink_id: r.tmst,
                    ns_time: &u.received_at,
                    rssi: r.rssi,
                    snr: r.snr,
                    location: Empty {},
                    context: b64(&r.tmst.to_be_bytes()),
                    crc_status: "CRC_OK",
                })
                .collect(),
            tx_info: UplinkTxInfo {
                frequency: first.map_or(0, |r| r.frequency),
                modulation,
            },
            region_config_id: region_config_id(shape.region),
            join_server_context: u.app_s_key.as_ref().map(|env| JoinServerContext {
                session_key_id: "",
                app_s_key: AppSKeyEnvelope {
                    kek_label: &env.kek_label,
                    aes_key: b64(&env.aes_key),
                },
            }),
        }
    }
}

/// ChirpStack's `JoinEvent`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Join<'a> {
    deduplication_id: &'a str,
    time: &'a str,
    device_info: DeviceInfo<'a>,
    dev_addr: String,
    region_config_id: String,
}

/// ChirpStack's `DeviceInfo` (profile and names: what this network server has of them).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct DeviceInfo<'a> {
    tenant_id: &'a str,
    tenant_name: &'a str,
    application_id: &'a str,
    application_name: &'a str,
    device_profile_id: &'a str,
    device_profile_name: &'a str,
    device_name: &'a str,
    dev_eui: &'a str,
    device_class_enabled: &'a str,
    tags: Empty,
}

impl<'a> DeviceInfo<'a> {
    fn new(tenant: &'a str, application_id: &'a str, dev_eui: &'a str) -> Self {
        Self {
            tenant_id: tenant,
            tenant_name: tenant,
            application_id,
            application_name: "",
            device_profile_id: "",
            device_profile_name: "",
            device_name: dev_eui,
            dev_eui,
            device_class_enabled: "CLASS_A",
            tags: Empty {},
        }
    }
}

/// An empty JSON object (`location`, `tags`).
#[derive(Serialize)]
struct Empty {}

/// ChirpStack's `UplinkRxInfo`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct UplinkRxInfo<'a> {
    gateway_id: String,
    uplink_id: u32,
    ns_time: &'a str,
    rssi: i32,
    snr: f32,
    location: Empty,
    context: String,
    crc_status: &'static str,
}

/// ChirpStack's `UplinkTxInfo`.
#[derive(Serialize)]
struct UplinkTxInfo {
    frequency: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    modulation: Option<Modulation>,
}

/// ChirpStack's `Modulation` (LoRa only).
#[derive(Serialize)]
struct Modulation {
    lora: Lora,
}

/// ChirpStack's `LoraModulationInfo`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Lora {
    bandwidth: u32,
    spreading_factor: u8,
    code_rate: &'static str,
    /// Downlinks only.
    #[serde(skip_serializing_if = "Option::is_none")]
    polarization_inversion: Option<bool>,
}

/// ChirpStack's `JoinServerContext`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JoinServerContext<'a> {
    session_key_id: &'static str,
    app_s_key: AppSKeyEnvelope<'a>,
}

/// ChirpStack's `KeyEnvelope`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct AppSKeyEnvelope<'a> {
    kek_label: &'a str,
    aes_key: String,
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

/// [`DeviceInfo`] as a JSON value, for the kinds built as values.
fn device_info(dev_eui: DevEui, tenant: Option<&str>, application_id: &str) -> Value {
    let eui = hex_lower(dev_eui);
    serde_json::to_value(DeviceInfo::new(tenant.unwrap_or(""), application_id, &eui))
        .unwrap_or_default()
}

/// A DevAddr as ChirpStack writes it: 8 lower-case hex digits.
fn hex_addr(a: protocol::ids::DevAddr) -> String {
    format!("{:08x}", a.as_u32())
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

    /// The event's body as JSON.
    fn json_of(e: &ChirpEvent) -> Value {
        serde_json::from_slice(&e.body).expect("a JSON body")
    }

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
    fn an_uplink_line_whose_type_is_not_first_gives_the_same_event() {
        // serde_json's map writes keys in order: "type" is no longer first.
        let v: Value = serde_json::from_str(UP).unwrap();
        let reordered = serde_json::to_vec(&v).unwrap();
        assert!(!reordered.starts_with(b"{\"type\""));
        let (a, b) = (
            chirpstack_event(UP.as_bytes(), &shape()).unwrap(),
            chirpstack_event(&reordered, &shape()).unwrap(),
        );
        let (mut ja, mut jb) = (json_of(&a), json_of(&b));
        // The id is the line's hash: another line, another id.
        assert_ne!(ja["deduplicationId"], jb["deduplicationId"]);
        ja["deduplicationId"] = Value::Null;
        jb["deduplicationId"] = Value::Null;
        assert_eq!((a.event, a.dev_eui), (b.event, b.dev_eui));
        assert_eq!(ja, jb);
    }

    #[test]
    fn an_uplink_has_chirpstacks_topic_and_fields() {
        let e = chirpstack_event(UP.as_bytes(), &shape()).unwrap();
        assert_eq!(
            e.topic(EVENT_TOPIC),
            "application/84c006ab-204f-418b-9896-075226b8a93d/device/70b3d5ff00000001/event/up"
        );
        assert_eq!(
            e.topic("{event}/{dev_eui}/{unknown}/{application_id}{event}{"),
            "up/70b3d5ff00000001/{unknown}/84c006ab-204f-418b-9896-075226b8a93dup{"
        );
        let b = &json_of(&e);
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
            json_of(&chirpstack_event(UP.as_bytes(), &shape()).unwrap())["deduplicationId"]
        );
        let other = UP.replace("\"f_cnt\":0", "\"f_cnt\":1");
        assert_ne!(
            id,
            json_of(&chirpstack_event(other.as_bytes(), &shape()).unwrap())["deduplicationId"]
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
        assert_eq!(json_of(&e)["deviceInfo"]["tenantId"], "acme");
        assert_eq!(json_of(&e)["data"], "qrs=");
        assert_eq!(
            json_of(&e)["joinServerContext"]["appSKey"]["kekLabel"],
            "as-1"
        );
        assert_eq!(
            json_of(&e)["joinServerContext"]["appSKey"]["aesKey"],
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
        assert_eq!(
            (j.event, &json_of(&j)["devAddr"]),
            ("join", &json!("26000123"))
        );
        let a = ev(
            r#"{"type":"ack","dev_eui":"00000000000000B1","id":2,"f_cnt_down":1,"received_at":"2026-11-25T12:00:52.100Z"}"#,
        );
        assert_eq!(a.event, "ack");
        assert_eq!(json_of(&a)["acknowledged"], true);
        assert_eq!(json_of(&a)["fCntDown"], 1);
        assert_eq!(
            json_of(&a)["queueItemId"],
            "00000000-0000-0000-0000-000000000002"
        );
        let st = ev(
            r#"{"type":"status","dev_eui":"00000000000000B1","battery":127,"margin":-3,"received_at":"2026-11-25T12:00:52.100Z"}"#,
        );
        assert_eq!(json_of(&st)["batteryLevel"], json!(50.0));
        assert_eq!(json_of(&st)["margin"], -3);
        assert_eq!(json_of(&st)["externalPowerSource"], false);
        let l = ev(
            r#"{"type":"log","dev_eui":"00000000000000B1","level":"ERROR","code":"DOWNLINK_PAYLOAD_SIZE","description":"too long","context":{"fPort":"2"},"received_at":"2026-11-25T12:00:52.100Z"}"#,
        );
        assert_eq!(
            l.topic(EVENT_TOPIC),
            "application/84c006ab-204f-418b-9896-075226b8a93d/device/00000000000000b1/event/log"
        );
        assert_eq!(json_of(&l)["context"]["fPort"], "2");
        assert!(json_of(&l).get("deduplicationId").is_none());
        let t = ev(
            r#"{"type":"txack","dev_eui":"00000000000000B1","downlink_id":65538,"queue_item_id":2,"f_cnt_down":1,"gateway":"AA555A0000000001","frequency":869525000,"power":27,"spreading_factor":9,"bandwidth_khz":125,"delay_s":2,"tenant":"acme","received_at":"2026-11-25T12:00:52.100Z"}"#,
        );
        assert_eq!(
            t.topic(EVENT_TOPIC),
            "application/11111111-2222-3333-4444-555555555555/device/00000000000000b1/event/txack"
        );
        assert_eq!(
            json_of(&t),
            json!({
                "downlinkId": 65538,
                "time": "2026-11-25T12:00:52.100Z",
                "deviceInfo": json_of(&t)["deviceInfo"].clone(),
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
        assert_eq!(json_of(&t)["deviceInfo"]["tenantId"], "acme");
        assert!(chirpstack_event(b"{\"type\":\"other\"}", &s).is_none());
        assert!(chirpstack_event(b"not json", &s).is_none());
    }
}
