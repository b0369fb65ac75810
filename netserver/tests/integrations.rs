//! The application integrations through the real `netserver` binary and a real Mosquitto
//! broker (testkit's starter: a free loopback port, a password file, TLS in one test), and a
//! local webhook receiver: ChirpStack v4's topics and JSON, decoded by a subscriber written only
//! from ChirpStack's documented shapes; downlink commands; the broker stopped for 10 s; the
//! network server killed with SIGKILL mid-stream; a webhook that fails its first answers.
//!
//! Sessions are put in the store directly (as `rejoin_restart.rs` does): the join path has
//! tests of its own, and the `join` event's shape is checked in `integration::chirpstack`.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{
    data_uplink, events, metric, netserver_serve, wait_metric, write_secrets, Gateway, Proc,
};
use netserver::core::device::FrameCounters;
use netserver::keys::{LabeledKek, NetworkKeys};
use netserver::store::commit::SessionStore;
use netserver::store::session_journal::SessionJournal;
use netserver::store::stored::{RxParams, StoredSession, STORED_SESSION_VERSION};
use protocol::data::{DataFrame, FramePayload, FrmPayload, NetworkSessionKeys, SessionCrypto};
use protocol::ids::{DevAddr, DevEui, DevNonce, JoinEui};
use protocol::keys::{AppSKey, Kek, NwkSKey};
use protocol::keywrap::KeyEnvelope;
use protocol::version::MacVersion;
use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
use serde::Deserialize;
use testkit::mosquitto::{Mosquitto, PASSWORD, USER};

const NS_KEK: [u8; 16] = [0x11; 16];
const AS_KEK: [u8; 16] = [0x22; 16];
const APP: &str = "84c006ab-204f-418b-9896-075226b8a93d";

/// A device with a 1.0.3 session: (DevEUI, DevAddr, key byte).
#[derive(Clone, Copy)]
struct Device(u64, u32, u8);

const A: Device = Device(0x70B3_D5FF_0000_0001, 0x2600_0001, 0x0A);
const B: Device = Device(0x70B3_D5FF_0000_0002, 0x2600_0002, 0x0B);

impl Device {
    fn crypto(self) -> SessionCrypto {
        SessionCrypto::new(
            &NetworkSessionKeys::V1_0 {
                nwk_s_key: NwkSKey::new([self.2; 16]),
            },
            Some(&AppSKey::new([self.2 ^ 0xF0; 16])),
        )
    }

    fn eui_hex(self) -> String {
        format!("{:016x}", self.0)
    }

    fn stored(self, ns_kek: &LabeledKek) -> StoredSession {
        StoredSession {
            version: STORED_SESSION_VERSION,
            dev_eui: DevEui::new(self.0),
            join_eui: JoinEui::new(0x70B3_D57E_D000_0001),
            dev_addr: DevAddr::new(self.1),
            mac_version: Some(MacVersion::V1_0_3),
            dev_nonce: DevNonce(1),
            network_keys: NetworkKeys::V1_0(NwkSKey::new([self.2; 16])).seal(ns_kek),
            app_s_key: Some(
                KeyEnvelope::seal(
                    "as-1",
                    Some(&Kek::new(AS_KEK)),
                    &AppSKey::new([self.2 ^ 0xF0; 16]),
                )
                .unwrap(),
            ),
            session_key_id: None,
            rx: RxParams::region_default(protocol::region::Region::Eu868),
            counters: FrameCounters::default(),
            created_at_ms: 1_700_000_000_000,
            lifetime_s: None,
            last_rj_count0: None,
            owner: None,
        }
    }

    fn uplink(self, fcnt: u32, ack: bool, payload: &[u8]) -> Vec<u8> {
        data_uplink(
            &self.crypto(),
            DevAddr::new(self.1),
            (fcnt, ack),
            10,
            payload,
        )
    }
}

// ChirpStack v4's event shapes, written from its documentation (integration.proto, JSON
// mapping): what an application built for ChirpStack decodes.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DeviceInfo {
    tenant_id: String,
    application_id: String,
    dev_eui: String,
    device_class_enabled: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct UplinkEvent {
    deduplication_id: String,
    time: String,
    device_info: DeviceInfo,
    dev_addr: String,
    adr: bool,
    dr: u32,
    f_cnt: u32,
    f_port: u32,
    confirmed: bool,
    data: String,
    rx_info: Vec<UplinkRxInfo>,
    tx_info: UplinkTxInfo,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct UplinkRxInfo {
    gateway_id: String,
    rssi: i32,
    snr: f32,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct UplinkTxInfo {
    frequency: u32,
    modulation: Modulation,
}

#[derive(Debug, Deserialize)]
struct Modulation {
    lora: LoraModulationInfo,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct LoraModulationInfo {
    bandwidth: u32,
    spreading_factor: u32,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AckEvent {
    device_info: DeviceInfo,
    acknowledged: bool,
    f_cnt_down: u32,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct LogEvent {
    device_info: DeviceInfo,
    level: String,
    code: String,
    description: String,
    #[serde(default)]
    context: HashMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct TxAckEvent {
    downlink_id: u32,
    device_info: DeviceInfo,
    queue_item_id: String,
    f_cnt_down: u32,
    gateway_id: String,
    tx_info: DownlinkTxInfo,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DownlinkTxInfo {
    frequency: u32,
    power: i32,
    modulation: Modulation,
    timing: Timing,
}

#[derive(Debug, Deserialize)]
struct Timing {
    delay: DelayTimingInfo,
}

#[derive(Debug, Deserialize)]
struct DelayTimingInfo {
    delay: String,
}

/// A plain MQTT subscriber (persistent session, QoS 1): every message it received, in order.
struct Subscriber {
    client: Client,
    got: Arc<Mutex<Vec<(String, serde_json::Value)>>>,
}

impl Subscriber {
    fn connect(broker: &Mosquitto, id: &str, filter: &str) -> Self {
        let mut o = MqttOptions::new(id, "127.0.0.1", broker.port);
        o.set_credentials(USER, PASSWORD);
        o.set_clean_session(false);
        o.set_keep_alive(Duration::from_secs(5));
        if let Some(ca) = &broker.ca_file {
            let cfg = httpsec::tls::client_config(ca).unwrap();
            o.set_transport(rumqttc::Transport::tls_with_config(
                rumqttc::TlsConfiguration::Rustls(cfg),
            ));
        }
        let (client, mut conn) = Client::new(o, 64);
        client.subscribe(filter, QoS::AtLeastOnce).unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let (subscribed, wait) = mpsc::channel();
        let sink = Arc::clone(&got);
        std::thread::spawn(move || {
            for ev in conn.iter() {
                match ev {
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = subscribed.send(());
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let v = serde_json::from_slice(&p.payload).expect("every event is JSON");
                        sink.lock().unwrap().push((p.topic.clone(), v));
                    }
                    Ok(_) => {}
                    // The broker is away: the iterator reconnects on the next call.
                    Err(_) => std::thread::sleep(Duration::from_millis(100)),
                }
            }
        });
        wait.recv_timeout(Duration::from_secs(10))
            .expect("subscribed");
        Self { client, got }
    }

    fn messages(&self) -> Vec<(String, serde_json::Value)> {
        self.got.lock().unwrap().clone()
    }

    /// Waits (up to `secs`) until `n` messages on topics ending in `/event/{event}` arrived.
    fn wait(&self, event: &str, n: usize, secs: u64) -> Vec<(String, serde_json::Value)> {
        let suffix = format!("/event/{event}");
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let m: Vec<_> = self
                .messages()
                .into_iter()
                .filter(|(t, _)| t.ends_with(&suffix))
                .collect();
            if m.len() >= n {
                return m;
            }
            assert!(
                Instant::now() < deadline,
                "{} `{event}` events of {n}: {m:?}",
                m.len()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The distinct uplinks received per device, in the order first received, each with its
    /// `deduplicationId`; panics if one `fCnt` came with two ids.
    fn uplinks(&self) -> HashMap<String, Vec<u32>> {
        let mut ids: HashMap<(String, u64), String> = HashMap::new();
        let mut out: HashMap<String, Vec<u32>> = HashMap::new();
        for (t, v) in self.messages() {
            if !t.ends_with("/event/up") {
                continue;
            }
            let dev = v["deviceInfo"]["devEui"].as_str().unwrap().to_owned();
            let f = v["fCnt"].as_u64().unwrap();
            let id = v["deduplicationId"].as_str().unwrap().to_owned();
            match ids.get(&(dev.clone(), f)) {
                Some(first) => assert_eq!(
                    first, &id,
                    "a repeat of {dev} fCnt {f} with another deduplicationId"
                ),
                None => {
                    ids.insert((dev.clone(), f), id);
                    out.entry(dev).or_default().push(f as u32);
                }
            }
        }
        out
    }
}

struct Setup {
    _dir: tempfile::TempDir,
    root: PathBuf,
    broker: Mosquitto,
}

/// The secrets, the store with devices A and B, a broker, and the network server's config.
fn setup(tls: bool, extra_config: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_owned();
    write_secrets(&root, NS_KEK, AS_KEK);
    let ns_kek = LabeledKek {
        label: "ns-1".into(),
        key: Kek::new(NS_KEK),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let (store, _, thread) = SessionStore::start(
            SessionJournal::open(&root.join("ns")).unwrap(),
            8,
            netserver::ops::metrics::Metrics::new(),
        )
        .unwrap();
        for d in [A, B] {
            store.put(d.stored(&ns_kek)).await.unwrap();
        }
        drop(store);
        thread.join();
    });
    let broker_dir = root.join("broker");
    std::fs::create_dir(&broker_dir).unwrap();
    let broker = Mosquitto::start(&broker_dir, tls);
    let ca = broker
        .ca_file
        .as_ref()
        .map(|c| format!("ca_file = {:?}\n", c.display().to_string()))
        .unwrap_or_default();
    std::fs::write(
        root.join("netserver.toml"),
        format!(
            "[gwmp]\nworkers = 1\n[data]\ncollect_window_ms = 0\n\
             [integration.application_id]\ndefault = \"{APP}\"\n\
             [integration.mqtt]\nusername = \"{USER}\"\npassword_file = {:?}\n{ca}{extra_config}",
            broker.password_file().display().to_string()
        ),
    )
    .unwrap();
    Setup {
        _dir: dir,
        root,
        broker,
    }
}

impl Setup {
    /// The network server with MQTT events and an audit file (two sinks at once).
    fn start(&self) -> (Proc, Gateway) {
        let mut cmd = netserver_serve(
            &self.root.join("netserver.toml"),
            &self.root.join("ns"),
            "127.0.0.1:9",
            &self.root.join("secrets"),
            "000013",
        );
        cmd.arg("--as-kek")
            .arg(self.root.join("secrets/as.kek"))
            .arg("--events")
            .arg(self.broker.url())
            .arg("--events")
            .arg(self.audit());
        let ns = Proc::spawn(cmd, "netserver listening");
        let gw = Gateway::new(0xAA55_5A00_0000_0001, ns.addr("gwmp"));
        gw.pull_data();
        (ns, gw)
    }

    fn audit(&self) -> PathBuf {
        self.root.join("events.jsonl")
    }

    /// The (device, fCnt) of every uplink in the audit file.
    fn audited_uplinks(&self) -> HashMap<String, Vec<u32>> {
        let mut out: HashMap<String, Vec<u32>> = HashMap::new();
        for e in events(&self.audit()) {
            if e["type"] == "uplink" {
                out.entry(e["dev_eui"].as_str().unwrap().to_lowercase())
                    .or_default()
                    .push(e["f_cnt"].as_u64().unwrap() as u32);
            }
        }
        out
    }
}

const OK: &str = "netserver_uplinks_total{result=\"ok\"}";

#[test]
fn uplinks_arrive_in_chirpstacks_topics_and_shapes_and_commands_go_down() {
    let s = setup(false, "");
    let sub = Subscriber::connect(&s.broker, "app-1", "application/+/device/+/event/+");
    let (ns, gw) = s.start();
    for f in 0..3 {
        gw.push(&A.uplink(f, false, b"meter"), 1_000_000 * (f + 1), 7.5, -60);
    }
    let ups = sub.wait("up", 3, 15);
    let (topic, v) = &ups[2];
    assert_eq!(
        topic,
        &format!("application/{APP}/device/{}/event/up", A.eui_hex())
    );
    let up: UplinkEvent = serde_json::from_value(v.clone()).expect("ChirpStack's uplink shape");
    assert_eq!(up.device_info.application_id, APP);
    assert_eq!(up.device_info.dev_eui, A.eui_hex());
    assert_eq!(up.device_info.tenant_id, "");
    assert_eq!(up.device_info.device_class_enabled, "CLASS_A");
    assert_eq!(up.dev_addr, "26000001");
    assert_eq!((up.f_cnt, up.f_port, up.dr), (2, 10, 5));
    assert!(!up.confirmed && !up.adr);
    assert_eq!(up.data, "bWV0ZXI=", "the payload decrypted, base64");
    assert_eq!(up.rx_info.len(), 1);
    assert_eq!(up.rx_info[0].gateway_id, "aa555a0000000001");
    assert_eq!((up.rx_info[0].rssi, up.rx_info[0].snr), (-60, 7.5));
    assert_eq!(up.tx_info.frequency, 868_300_000);
    assert_eq!(
        (
            up.tx_info.modulation.lora.spreading_factor,
            up.tx_info.modulation.lora.bandwidth
        ),
        (7, 125_000)
    );
    assert_eq!(up.deduplication_id.len(), 36);
    assert!(
        up.time.starts_with("20") && up.time.ends_with('Z'),
        "{}",
        up.time
    );

    // A confirmed downlink command: sent in the device's next receive window.
    let cmd_topic = format!("application/{APP}/device/{}/command/down", A.eui_hex());
    let body = format!(
        r#"{{"devEui":"{}","confirmed":true,"fPort":7,"data":"AQID"}}"#,
        A.eui_hex()
    );
    let (token, tx) = command_and_poll(&sub, &ns, &gw, (&cmd_topic, body), (1, 3));
    // The gateway acknowledges it for transmission: a `txack` event (checked below).
    gw.tx_ack(token, None);
    let d = DataFrame::parse(&tx.data)
        .unwrap()
        .open_downlink(&A.crypto(), 0, 0)
        .expect("MIC under the device's keys");
    assert!(d.confirmed);
    assert_eq!(
        d.payload,
        FramePayload::Application {
            f_port: 7,
            payload: FrmPayload(vec![1, 2, 3])
        }
    );
    // The device acknowledges it: an `ack` event.
    gw.push(&A.uplink(4, true, b"ack"), 20_000_000, 7.5, -60);
    let acks = sub.wait("ack", 1, 15);
    assert_eq!(
        acks[0].0,
        format!("application/{APP}/device/{}/event/ack", A.eui_hex())
    );
    let ack: AckEvent = serde_json::from_value(acks[0].1.clone()).expect("ChirpStack's ack shape");
    assert!(ack.acknowledged);
    assert_eq!(ack.f_cnt_down, 0);
    assert_eq!(ack.device_info.dev_eui, A.eui_hex());

    // A refused command (FPort 0; another device's EUI): `log` events of the device.
    let bad = format!(r#"{{"devEui":"{}","fPort":0,"data":"AQID"}}"#, A.eui_hex());
    sub.client
        .publish(&cmd_topic, QoS::AtLeastOnce, false, bad.into_bytes())
        .unwrap();
    let logs = sub.wait("log", 1, 15);
    let log: LogEvent = serde_json::from_value(logs[0].1.clone()).expect("ChirpStack's log shape");
    assert_eq!(log.device_info.dev_eui, A.eui_hex());
    assert_eq!(
        (log.level.as_str(), log.code.as_str()),
        ("ERROR", "UNKNOWN")
    );
    assert!(log.description.contains("fPort"), "{}", log.description);
    assert_eq!(
        metric(
            ns.addr("metrics"),
            "netserver_integration_commands_total{result=\"refused\"}"
        ),
        1.0
    );
    assert_eq!(sub.uplinks()[&A.eui_hex()], vec![0, 1, 2, 3, 4]);
    assert_eq!(
        s.audited_uplinks()[&A.eui_hex()],
        vec![0, 1, 2, 3, 4],
        "the audit file too"
    );

    // The gateway's TX_ACK of the commanded downlink: ChirpStack's `txack` event.
    let txacks = sub.wait("txack", 1, 15);
    assert_eq!(
        txacks[0].0,
        format!("application/{APP}/device/{}/event/txack", A.eui_hex())
    );
    let t: TxAckEvent =
        serde_json::from_value(txacks[0].1.clone()).expect("ChirpStack's txack shape");
    assert_eq!(t.device_info.dev_eui, A.eui_hex());
    assert_eq!(t.f_cnt_down, 0);
    assert_eq!(t.queue_item_id, "00000000-0000-0000-0000-000000000001");
    assert_eq!(t.gateway_id, "aa555a0000000001");
    assert_eq!(
        t.downlink_id & 0xFFFF,
        u32::from(u16::from_be_bytes(token.0))
    );
    assert_eq!(
        t.tx_info.frequency, 868_300_000,
        "RX1 on the uplink's channel"
    );
    assert_eq!(t.tx_info.modulation.lora.spreading_factor, 7);
    assert_eq!(t.tx_info.timing.delay.delay, "1s");
    assert!(t.tx_info.power > 0);

    // A second command, which the gateway refuses (TOO_LATE): a `log` event, DOWNLINK_GATEWAY.
    let body = format!(r#"{{"devEui":"{}","fPort":8,"data":"BAU="}}"#, A.eui_hex());
    let (token, _) = command_and_poll(&sub, &ns, &gw, (&cmd_topic, body), (2, 5));
    gw.tx_ack(token, Some(protocol::gwmp::TxAckCode::TooLate));
    let log = wait_log(&sub, 2, "DOWNLINK_GATEWAY");
    assert_eq!(log.level, "ERROR");
    assert!(log.description.contains("TOO_LATE"), "{}", log.description);
    assert_eq!(log.context["queueItemId"], "2");
    assert_eq!(log.context["fCntDown"], "1");

    // An uplink with an old counter (fCnt 2 again, as a device that reset its counters
    // sends; other bytes than the first, which the de-duplication would drop): refused, and
    // the operator sees a `log` event.
    gw.push(&A.uplink(2, false, b"reset"), 40_000_000, 7.5, -60);
    let log = wait_log(&sub, 3, "UPLINK_F_CNT_RESET");
    assert_eq!(
        (log.level.as_str(), log.device_info.dev_eui.as_str()),
        ("WARNING", A.eui_hex().as_str())
    );
    assert_eq!(log.context["reason"], "replay");
    assert_eq!(log.context["lastFCnt"], "5");
    assert_eq!(
        metric(
            ns.addr("metrics"),
            "netserver_uplinks_total{result=\"replay\"}"
        ),
        1.0
    );
    // A counter past MAX_FCNT_GAP (16,384 for this 1.0.3 device): refused, and logged too.
    gw.push(&A.uplink(5 + 20_000, false, b"gap"), 50_000_000, 7.5, -60);
    let logs = sub.wait("log", 4, 15);
    let gap = logs
        .iter()
        .find(|(_, v)| v["context"]["reason"] == "fcnt_gap")
        .expect("the counter gap's log event");
    let log: LogEvent = serde_json::from_value(gap.1.clone()).unwrap();
    assert_eq!(
        (log.level.as_str(), log.code.as_str()),
        ("WARNING", "UNKNOWN")
    );
    assert!(
        log.description.contains("MAX_FCNT_GAP"),
        "{}",
        log.description
    );
}

/// Publishes the downlink command `body` on `topic`, waits until it is the `n`th queued, and
/// sends device A's uplink `fcnt`: the PULL_RESP of the downlink that answers it.
fn command_and_poll(
    sub: &Subscriber,
    ns: &Proc,
    gw: &Gateway,
    (topic, body): (&str, String),
    (n, fcnt): (u32, u32),
) -> (protocol::gwmp::Token, protocol::gwmp::TxPk) {
    sub.client
        .publish(topic, QoS::AtLeastOnce, false, body.into_bytes())
        .unwrap();
    wait_metric(
        ns.addr("metrics"),
        "netserver_integration_commands_total{result=\"queued\"}",
        f64::from(n),
    );
    gw.push(&A.uplink(fcnt, false, b"poll"), 10_000_000 * fcnt, 7.5, -60);
    gw.pull_resp(Duration::from_secs(5))
        .expect("the commanded downlink")
}

/// Waits until `n` `log` events arrived; the one with `code`.
fn wait_log(sub: &Subscriber, n: usize, code: &str) -> LogEvent {
    let logs = sub.wait("log", n, 15);
    let (_, v) = logs
        .iter()
        .find(|(_, v)| v["code"] == code)
        .unwrap_or_else(|| panic!("no {code} in {logs:?}"));
    serde_json::from_value(v.clone()).expect("ChirpStack's log shape")
}

#[test]
fn events_go_over_tls_to_a_broker_that_requires_it() {
    let s = setup(true, "qos = 0\n");
    assert!(s.broker.url().starts_with("mqtts://"));
    let sub = Subscriber::connect(&s.broker, "app-tls", "application/+/device/+/event/up");
    let (_ns, gw) = s.start();
    gw.push(&B.uplink(0, false, b"tls"), 1_000_000, 5.0, -80);
    let ups = sub.wait("up", 1, 15);
    let up: UplinkEvent = serde_json::from_value(ups[0].1.clone()).unwrap();
    assert_eq!(
        (up.device_info.dev_eui, up.data),
        (B.eui_hex(), "dGxz".to_owned())
    );
}

/// Sends uplinks `from..to` of A and B, each once the previous one was accepted.
fn stream(ns: &Proc, gw: &Gateway, from: u32, to: u32, ok_before: f64) {
    for f in from..to {
        for (i, d) in [A, B].into_iter().enumerate() {
            gw.push(
                &d.uplink(f, false, b"x"),
                1_000_000 * (2 * f + i as u32 + 1),
                7.0,
                -70,
            );
        }
        wait_metric(
            ns.addr("metrics"),
            OK,
            ok_before + f64::from(2 * (f - from + 1)),
        );
    }
}

#[test]
fn a_broker_stopped_for_10_s_gets_every_uplink_in_order_when_it_returns() {
    let mut s = setup(false, "");
    let sub = Subscriber::connect(&s.broker, "app-stop", "application/+/device/+/event/up");
    let (ns, gw) = s.start();
    stream(&ns, &gw, 0, 5, 0.0);
    sub.wait("up", 10, 15);
    s.broker.stop();
    let stopped = Instant::now();
    // The radio side goes on while the broker is away; the backlog builds in the event log.
    stream(&ns, &gw, 5, 15, 10.0);
    wait_metric(
        ns.addr("metrics"),
        "netserver_integration_backlog_bytes{sink=\"mqtt\"}",
        1.0,
    );
    std::thread::sleep(Duration::from_secs(10).saturating_sub(stopped.elapsed()));
    assert!(
        metric(
            ns.addr("metrics"),
            "netserver_integration_failures_total{reason=\"io\",sink=\"mqtt\"}"
        ) >= 1.0
    );
    s.broker.resume();
    stream(&ns, &gw, 15, 20, 30.0);
    sub.wait("up", 40, 30);
    let got = sub.uplinks();
    let all: Vec<u32> = (0..20).collect();
    assert_eq!(got[&A.eui_hex()], all, "every uplink of A, in order");
    assert_eq!(got[&B.eui_hex()], all, "every uplink of B, in order");
    wait_metric(
        ns.addr("metrics"),
        "netserver_integration_publishes_total{result=\"acked\",sink=\"mqtt\"}",
        40.0,
    );
}

#[test]
fn a_broker_that_stops_answering_is_left_by_keep_alive_and_gets_every_uplink_back() {
    let s = setup(false, "keep_alive_s = 5\n");
    let sub = Subscriber::connect(&s.broker, "app-freeze", "application/+/device/+/event/up");
    let (ns, gw) = s.start();
    stream(&ns, &gw, 0, 5, 0.0);
    sub.wait("up", 10, 15);
    // The broker's process stops: no connection breaks, the kernel still takes what is
    // written; only the PINGREQ left without its PINGRESP tells the sink it is talking to
    // nobody (two keep-alive periods at the most), and it connects again.
    s.broker.freeze();
    let frozen = Instant::now();
    stream(&ns, &gw, 5, 15, 10.0);
    wait_metric(
        ns.addr("metrics"),
        "netserver_integration_failures_total{reason=\"timeout\",sink=\"mqtt\"}",
        1.0,
    );
    assert!(
        frozen.elapsed() < Duration::from_secs(20),
        "noticed after {:?}",
        frozen.elapsed()
    );
    s.broker.thaw();
    stream(&ns, &gw, 15, 20, 30.0);
    sub.wait("up", 40, 60);
    // Every uplink, in order; what was written to the frozen broker and published again
    // came with the same deduplicationId (checked by `uplinks`).
    let all: Vec<u32> = (0..20).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = sub.uplinks();
        if [A, B].iter().all(|d| got.get(&d.eui_hex()) == Some(&all)) {
            break;
        }
        assert!(Instant::now() < deadline, "{got:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn after_kill_9_delivery_resumes_where_the_broker_acknowledged() {
    let s = setup(false, "");
    let sub = Subscriber::connect(&s.broker, "app-kill", "application/+/device/+/event/up");
    let (ns, gw) = s.start();
    // A burst, and SIGKILL while its events are still being published.
    for f in 0..30u32 {
        for (i, d) in [A, B].into_iter().enumerate() {
            gw.push(
                &d.uplink(f, false, b"x"),
                1_000_000 * (2 * f + i as u32 + 1),
                7.0,
                -70,
            );
        }
    }
    wait_metric(ns.addr("metrics"), OK, 20.0);
    ns.kill9();
    let (ns, gw) = s.start();
    for f in 30..35u32 {
        for (i, d) in [A, B].into_iter().enumerate() {
            gw.push(
                &d.uplink(f, false, b"x"),
                1_000_000 * (2 * f + i as u32 + 1),
                7.0,
                -70,
            );
        }
    }
    wait_metric(ns.addr("metrics"), OK, 10.0);
    // The audit file is written after the uplinks are counted: wait for their last lines.
    let deadline = Instant::now() + Duration::from_secs(20);
    let audited = loop {
        let a = s.audited_uplinks();
        if [A, B]
            .iter()
            .all(|d| a.get(&d.eui_hex()).and_then(|f| f.last()) == Some(&34))
        {
            break a;
        }
        assert!(Instant::now() < deadline, "audit file: {a:?}");
        std::thread::sleep(Duration::from_millis(50));
    };
    loop {
        let got = sub.uplinks();
        let complete = [A, B].iter().all(|d| {
            let g = got.get(&d.eui_hex()).cloned().unwrap_or_default();
            audited[&d.eui_hex()].iter().all(|f| g.contains(f))
        });
        if complete {
            break;
        }
        assert!(Instant::now() < deadline, "{got:?} of {audited:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Nothing the network server accepted is missing (the audit file written beside the event
    // log may lack the last batch before the kill, never more), in order; repeats carried the
    // same deduplicationId (checked by `uplinks`).
    let got = sub.uplinks();
    for d in [A, B] {
        let g = &got[&d.eui_hex()];
        assert!(g.windows(2).all(|w| w[0] < w[1]), "in order: {g:?}");
        assert!(g.len() >= audited[&d.eui_hex()].len(), "{g:?} {audited:?}");
        assert_eq!(g.last(), Some(&34));
    }
}

/// A local webhook receiver that answers 500 to its first `fail` requests: every request it
/// got (path with query, signature header, body).
fn webhook_receiver(fail: usize) -> (String, mpsc::Receiver<(String, String, Vec<u8>)>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", l.local_addr().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for (n, conn) in l.incoming().enumerate() {
            let Ok(mut c) = conn else { continue };
            let mut r = BufReader::new(c.try_clone().unwrap());
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            let path = line.split_whitespace().nth(1).unwrap_or("").to_owned();
            let (mut len, mut sig) = (0, String::new());
            loop {
                let mut h = String::new();
                r.read_line(&mut h).unwrap();
                if h.trim().is_empty() {
                    break;
                }
                let (k, v) = h.split_once(':').unwrap();
                match k.to_ascii_lowercase().as_str() {
                    "content-length" => len = v.trim().parse().unwrap(),
                    "x-signature-256" => sig = v.trim().to_owned(),
                    _ => {}
                }
            }
            let mut body = vec![0; len];
            r.read_exact(&mut body).unwrap();
            let status = if n < fail {
                "500 Internal Server Error"
            } else {
                "200 OK"
            };
            let _ = write!(
                c,
                "HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            );
            if n >= fail {
                let _ = tx.send((path, sig, body));
            }
        }
    });
    (url, rx)
}

#[test]
fn a_webhook_that_fails_its_first_answers_gets_every_event_signed() {
    let (url, rx) = webhook_receiver(3);
    let secret = "webhook-secret-0123456789";
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("webhook.secret");
    common::write600(&secret_file, secret);
    let s = setup(
        false,
        &format!(
            "[[integration.http]]\nurl = {url:?}\nsecret_file = {:?}\nretry_initial_ms = 50\nretry_max_ms = 200\nevents = [\"up\"]\n",
            secret_file.display().to_string()
        ),
    );
    let (ns, gw) = s.start();
    stream(&ns, &gw, 0, 3, 0.0);
    let mut got = Vec::new();
    while got.len() < 6 {
        got.push(
            rx.recv_timeout(Duration::from_secs(15))
                .expect("every event reaches the webhook"),
        );
    }
    let mut per_device: HashMap<String, Vec<u64>> = HashMap::new();
    for (path, sig, body) in &got {
        assert_eq!(path, "/hook?event=up");
        assert_eq!(
            sig,
            &netserver::integration::webhook::signature(secret.as_bytes(), body),
            "signed"
        );
        let up: UplinkEvent = serde_json::from_slice(body).unwrap();
        per_device
            .entry(up.device_info.dev_eui)
            .or_default()
            .push(u64::from(up.f_cnt));
    }
    assert_eq!(per_device[&A.eui_hex()], [0, 1, 2]);
    assert_eq!(per_device[&B.eui_hex()], [0, 1, 2]);
    assert!(
        metric(
            ns.addr("metrics"),
            "netserver_integration_failures_total{reason=\"status\",sink=\"http-0\"}"
        ) >= 3.0
    );
}

/// Applications from the join server's owner, through the real binaries: devices claimed by
/// two tenants join through the real `joinserver`, whose JoinAns names each device's owner;
/// `[integration] application_id` maps each tenant to its application, so their `join` and
/// `up` events go to their application's topics with `tenantId` set. The owner is kept with
/// the session: after a restart it still decides the application.
#[test]
fn devices_of_two_owners_go_to_their_applications() {
    use common::{http, run_ok, serve_joinserver, workspace_bin};
    use protocol::derive;
    use protocol::gwmp::CrcStatus;
    use protocol::ids::NetId;
    use protocol::join::{
        EncryptedJoinAccept, JoinAcceptEncKey, JoinAcceptMicKey, JoinRequest, JoinRootKey,
    };
    use protocol::keys::{AppKey, KeyCipher};
    use std::process::Command;

    const APP_KEY: &str = "2B7E151628AED2A6ABF7158809CF4F3C";
    const JOIN_EUI: u64 = 0x70B3_D57E_D000_0001;
    const APP_ALICE: &str = "a11ce000-0000-4000-8000-000000000001";
    const APP_BOB: &str = "b0b00000-0000-4000-8000-000000000002";
    let devices = [
        (
            0x0004_A30B_0000_0A01u64,
            "alice",
            "A1A1A1A1A1A1A1A1",
            APP_ALICE,
        ),
        (0x0004_A30B_0000_0B02u64, "bob", "B2B2B2B2B2B2B2B2", APP_BOB),
    ];
    let tmp = tempfile::tempdir().unwrap();
    let js_bin = workspace_bin("joinserver");
    let js_dir = tmp.path().join("js");
    run_ok(
        Command::new(&js_bin)
            .arg("init")
            .arg("--data-dir")
            .arg(&js_dir),
    );
    common::add_peer(&js_dir, "000013");
    let mut manifest =
        "dev_eui,join_eui,mac_version,app_key,nwk_key,home_net_id,owner_token\n".to_owned();
    for (dev, _, token, _) in devices {
        manifest.push_str(&format!(
            "{dev:016X},{JOIN_EUI:016X},1.0.3,{APP_KEY},,,{token}\n"
        ));
    }
    let manifest_file = tmp.path().join("devices.csv");
    std::fs::write(&manifest_file, manifest).unwrap();
    run_ok(
        Command::new(&js_bin)
            .args(["devices", "import", "--data-dir"])
            .arg(&js_dir)
            .arg(&manifest_file),
    );
    let api_key = |tenant: &str| {
        let o = run_ok(
            Command::new(&js_bin)
                .args(["api-keys", "create", "--role", "owner", "--name", tenant])
                .arg("--data-dir")
                .arg(&js_dir),
        );
        String::from_utf8(o.stdout).unwrap().trim().to_owned()
    };
    let keys: Vec<String> = devices.iter().map(|d| api_key(d.1)).collect();
    let js = serve_joinserver(
        &js_dir,
        &["--api-listen", "127.0.0.1:0"],
        "warn",
        Some("warn"),
    );
    for ((dev, _, token, _), key) in devices.iter().zip(&keys) {
        let (st, body) = http(
            js.addr("api"),
            "PUT",
            &format!("/api/v1/devices/{dev:016X}/claim"),
            &[
                ("Authorization", &format!("Bearer {key}")),
                ("Content-Type", "application/json"),
            ],
            format!(r#"{{"owner_token": "{token}", "home_net_id": "000013"}}"#).as_bytes(),
        );
        assert_eq!(st, 200, "{body}");
    }

    let broker_dir = tmp.path().join("broker");
    std::fs::create_dir(&broker_dir).unwrap();
    let broker = Mosquitto::start(&broker_dir, false);
    let config = tmp.path().join("netserver.toml");
    std::fs::write(
        &config,
        format!(
            "[gwmp]\nworkers = 1\n[data]\ncollect_window_ms = 0\n\
             [integration.application_id]\ndefault = \"{APP}\"\nalice = \"{APP_ALICE}\"\n\
             bob = \"{APP_BOB}\"\n\
             [integration.mqtt]\nusername = \"{USER}\"\npassword_file = {:?}\n",
            broker.password_file().display().to_string()
        ),
    )
    .unwrap();
    let start = || {
        let mut cmd = netserver_serve(
            &config,
            &tmp.path().join("ns"),
            &js.addr("link").to_string(),
            &js_dir.join("secrets"),
            "000013",
        );
        cmd.arg("--events").arg(broker.url());
        let ns = Proc::spawn(cmd, "netserver listening");
        let gw = Gateway::new(0xAA55_5A00_0000_00A0, ns.addr("gwmp"));
        gw.pull_data();
        (ns, gw)
    };
    let sub = Subscriber::connect(&broker, "app-owners", "application/+/device/+/event/+");
    let (ns, gw) = start();
    let app_key = KeyCipher::new(&APP_KEY.parse::<AppKey>().unwrap());
    let net_id = NetId::new(0x13).unwrap();
    let mut sessions = Vec::new();
    for (i, (dev, ..)) in devices.iter().enumerate() {
        let phy = JoinRequest::build(
            JoinEui::new(JOIN_EUI),
            DevEui::new(*dev),
            DevNonce(1),
            JoinRootKey::AppKey(&app_key),
        );
        gw.send_push(
            &phy.to_bytes(),
            1_000_000 * (i as u32 + 1),
            7.0,
            -70,
            CrcStatus::Ok,
        );
        let (_, tx) = gw.pull_resp(Duration::from_secs(5)).expect("a Join-accept");
        let accept = EncryptedJoinAccept::from_bytes(&tx.data)
            .unwrap()
            .open(
                JoinAcceptEncKey::AppKey(&app_key),
                JoinAcceptMicKey::Legacy(JoinRootKey::AppKey(&app_key)),
            )
            .expect("Join-accept MIC");
        let keys = derive::session_keys_1_0(&app_key, accept.join_nonce, net_id, DevNonce(1));
        let crypto = SessionCrypto::new(
            &NetworkSessionKeys::V1_0 {
                nwk_s_key: keys.nwk_s_key,
            },
            Some(&keys.app_s_key),
        );
        sessions.push((accept.dev_addr, crypto));
    }
    let uplink = |i: usize, fcnt: u32| {
        let (dev_addr, crypto) = &sessions[i];
        data_uplink(crypto, *dev_addr, (fcnt, false), 10, b"own")
    };
    for i in 0..devices.len() {
        gw.push(&uplink(i, 0), 10_000_000 * (i as u32 + 1), 7.0, -70);
    }
    let check = |event: &str, n: usize| {
        let got = sub.wait(event, n, 15);
        for (dev, tenant, _, app) in devices {
            let topic = format!("application/{app}/device/{dev:016x}/event/{event}");
            let mine: Vec<_> = got.iter().filter(|(t, _)| *t == topic).collect();
            assert_eq!(mine.len(), n / devices.len(), "{topic} in {got:?}");
            for (_, v) in mine {
                let info: DeviceInfo = serde_json::from_value(v["deviceInfo"].clone()).unwrap();
                assert_eq!(
                    (info.tenant_id.as_str(), info.application_id.as_str()),
                    (tenant, app)
                );
                assert_eq!(info.dev_eui, format!("{dev:016x}"));
            }
        }
    };
    check("join", 2);
    check("up", 2);
    // The owner is stored with the session: a restarted network server files the devices'
    // uplinks under the same applications.
    assert!(ns.terminate().success());
    let (_ns, gw) = start();
    for i in 0..devices.len() {
        gw.push(&uplink(i, 1), 20_000_000 * (i as u32 + 1), 7.0, -70);
    }
    check("up", 4);
}
