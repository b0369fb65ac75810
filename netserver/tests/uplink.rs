//! Data uplinks end to end through the real `netserver` binary over UDP on 127.0.0.1, with
//! virtual gateways and devices built on `protocol`, and the events read from the real event
//! file.
//!
//! Sessions are provisioned the way the join path leaves them (network keys wrapped under
//! `ns.kek` in `sessions.redb`, the AppSKey envelope as a join server sends it, counters at 0)
//! by writing them with the library's own `SessionStore` before the server starts, so that the
//! keys, versions and KEK labels are chosen by the test. `join_uplink.rs` runs the same path
//! after a real OTAA join through the `joinserver` binary.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use common::{
    events, metric, netserver_serve, wait_metric, write_secrets, Gateway, Proc, UPLINK_MIC,
};
use netserver::core::device::FrameCounters;
use netserver::keys::{LabeledKek, NetworkKeys};
use netserver::store::commit::SessionStore;
use netserver::store::session_journal::SessionJournal;
use netserver::store::stored::{RxParams, StoredSession, STORED_SESSION_VERSION};
use protocol::data::{
    DataFrame, Downlink, FramePayload, FrmPayload, NetworkSessionKeys, SessionCrypto, Uplink,
    UplinkMicParams,
};
use protocol::gwmp::{DataRate, TxPk, TxTiming};
use protocol::ids::{DevAddr, DevEui, DevNonce, JoinEui};
use protocol::keys::{AppSKey, FNwkSIntKey, Kek, NwkSEncKey, NwkSKey, SNwkSIntKey};
use protocol::keywrap::KeyEnvelope;
use protocol::mac::{self, MacCommand};
use protocol::version::MacVersion;
use serde_json::Value;

const NS_KEK: [u8; 16] = [0x11; 16];
const AS_KEK: [u8; 16] = [0x22; 16];
const OTHER_AS_KEK: [u8; 16] = [0x33; 16];

/// A device and its side of the session.
struct Device {
    dev_eui: u64,
    dev_addr: u32,
    version: MacVersion,
    net: NetworkSessionKeys,
    app: AppSKey,
    /// The KEK label its AppSKey envelope is wrapped under.
    app_kek: (&'static str, [u8; 16]),
}

impl Device {
    fn v10(dev_eui: u64, dev_addr: u32, version: MacVersion, b: u8) -> Self {
        Self {
            dev_eui,
            dev_addr,
            version,
            net: NetworkSessionKeys::V1_0 {
                nwk_s_key: NwkSKey::new([b; 16]),
            },
            app: AppSKey::new([b ^ 0xF0; 16]),
            app_kek: ("as-1", AS_KEK),
        }
    }

    fn v11(dev_eui: u64, dev_addr: u32) -> Self {
        Self {
            dev_eui,
            dev_addr,
            version: MacVersion::V1_1,
            net: NetworkSessionKeys::V1_1 {
                f_nwk_s_int_key: FNwkSIntKey::new([0x41; 16]),
                s_nwk_s_int_key: SNwkSIntKey::new([0x42; 16]),
                nwk_s_enc_key: NwkSEncKey::new([0x43; 16]),
            },
            app: AppSKey::new([0x44; 16]),
            app_kek: ("as-1", AS_KEK),
        }
    }

    fn crypto(&self) -> SessionCrypto {
        SessionCrypto::new(&self.net, Some(&self.app))
    }

    fn stored(&self, ns_kek: &LabeledKek) -> StoredSession {
        let keys = match &self.net {
            NetworkSessionKeys::V1_0 { nwk_s_key } => NetworkKeys::V1_0(nwk_s_key.clone()),
            NetworkSessionKeys::V1_1 {
                f_nwk_s_int_key,
                s_nwk_s_int_key,
                nwk_s_enc_key,
            } => NetworkKeys::V1_1 {
                f_nwk_s_int_key: f_nwk_s_int_key.clone(),
                s_nwk_s_int_key: s_nwk_s_int_key.clone(),
                nwk_s_enc_key: nwk_s_enc_key.clone(),
            },
        };
        let (label, kek) = self.app_kek;
        StoredSession {
            version: STORED_SESSION_VERSION,
            dev_eui: DevEui::new(self.dev_eui),
            join_eui: JoinEui::new(0x70B3_D57E_D000_0001),
            dev_addr: DevAddr::new(self.dev_addr),
            mac_version: Some(self.version),
            dev_nonce: DevNonce(1),
            network_keys: keys.seal(ns_kek),
            app_s_key: Some(KeyEnvelope::seal(label, Some(&Kek::new(kek)), &self.app).unwrap()),
            session_key_id: None,
            rx: RxParams::region_default(protocol::region::Region::Eu868),
            counters: FrameCounters::default(),
            created_at_ms: 1_700_000_000_000,
            lifetime_s: None,
            last_rj_count0: None,
            owner: None,
        }
    }

    /// Builds an uplink (868.3 MHz = default channel 1, DR5).
    #[allow(clippy::too_many_arguments)]
    fn uplink(
        &self,
        fcnt: u32,
        confirmed: bool,
        ack: Option<u32>,
        fopts: Vec<u8>,
        payload: FramePayload,
    ) -> Vec<u8> {
        Uplink {
            confirmed,
            dev_addr: DevAddr::new(self.dev_addr),
            fcnt,
            adr: false,
            adr_ack_req: false,
            ack: ack.is_some(),
            class_b: false,
            fopts,
            payload,
        }
        .build(
            &self.crypto(),
            &UplinkMicParams {
                conf_fcnt: ack.unwrap_or(0),
                ..UPLINK_MIC
            },
        )
        .unwrap()
    }

    /// An unconfirmed uplink with the ADR bit, and ADRACKReq if asked.
    fn adr_uplink(&self, fcnt: u32, adr_ack_req: bool) -> Vec<u8> {
        Uplink {
            confirmed: false,
            dev_addr: DevAddr::new(self.dev_addr),
            fcnt,
            adr: true,
            adr_ack_req,
            ack: false,
            class_b: false,
            fopts: Vec::new(),
            payload: app(1, b"adr"),
        }
        .build(&self.crypto(), &UPLINK_MIC)
        .unwrap()
    }

    /// A 1.0 frame with LinkCheckReq both in FOpts and on FPort 0 (which no builder makes):
    /// the FPort 0 frame with one FOpts byte inserted and the MIC computed again.
    fn mixed_mac_frame(&self, fcnt: u32) -> Vec<u8> {
        let port0 = self.uplink(
            fcnt,
            false,
            None,
            vec![],
            FramePayload::MacCommands(FrmPayload(vec![0x02])),
        );
        let mut msg = port0[..port0.len() - 4].to_vec();
        msg[5] |= 0x01; // FOptsLen = 1
        msg.insert(8, 0x02);
        let mic = protocol::data::uplink_mic(
            &self.crypto().network,
            DevAddr::new(self.dev_addr),
            fcnt,
            false,
            &UplinkMicParams::default(),
            &msg,
        );
        msg.extend_from_slice(&mic.0);
        msg
    }

    /// Opens a downlink with the device's keys.
    fn open(&self, tx: &TxPk, fcnt: u32, conf_fcnt: u32) -> Downlink {
        DataFrame::parse(&tx.data)
            .expect("a data frame")
            .open_downlink(&self.crypto(), fcnt, conf_fcnt)
            .expect("downlink MIC valid under the device's keys")
    }
}

fn app(port: u8, b: &[u8]) -> FramePayload {
    FramePayload::Application {
        f_port: port,
        payload: FrmPayload(b.to_vec()),
    }
}

struct Net {
    _dir: tempfile::TempDir,
    data_dir: PathBuf,
    config: PathBuf,
    secrets: PathBuf,
    events: PathBuf,
    downlink_input: SocketAddr,
    downlink_http: SocketAddr,
}

fn provision(devices: &[&Device], config: &str) -> Net {
    let dir = tempfile::tempdir().unwrap();
    let secrets = write_secrets(dir.path(), NS_KEK, AS_KEK);
    let ns_kek = LabeledKek {
        label: "ns-1".into(),
        key: Kek::new(NS_KEK),
    };
    let data_dir = dir.path().join("ns");
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let (store, _, thread) = SessionStore::start(
            SessionJournal::open(&data_dir).unwrap(),
            64,
            netserver::ops::metrics::Metrics::new(),
        )
        .unwrap();
        for d in devices {
            store.put(d.stored(&ns_kek)).await.unwrap();
        }
        drop(store);
        thread.join();
    });
    let cfg = dir.path().join("netserver.toml");
    std::fs::write(&cfg, config).unwrap();
    let downlink_input = {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.local_addr().unwrap()
    };
    let downlink_http = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    Net {
        downlink_http,
        events: dir.path().join("events.jsonl"),
        _dir: dir,
        data_dir,
        config: cfg,
        secrets,
        downlink_input,
    }
}

fn start(net: &Net) -> Proc {
    // The join server is never contacted: these tests make no joins.
    let mut cmd = netserver_serve(
        &net.config,
        &net.data_dir,
        "127.0.0.1:9",
        &net.secrets,
        "000013",
    );
    cmd.arg("--as-kek")
        .arg(net.secrets.join("as.kek"))
        .arg("--events")
        .arg(&net.events)
        .arg("--downlink-listen")
        .arg(net.downlink_input.to_string())
        .arg("--downlink-http")
        .arg(net.downlink_http.to_string());
    Proc::spawn(cmd, "netserver listening")
}

/// A PUSH_DATA with one `rxpk` (868.3 MHz, DR5), as `Gateway::push` sends it.
fn push_data(gateway: protocol::ids::GatewayEui, phy: &[u8], tmst: u32) -> protocol::gwmp::Packet {
    use protocol::gwmp::{CodingRate, CrcStatus, Packet, PushData, RxPk, Token};
    Packet::PushData(PushData {
        token: Token([(tmst >> 8) as u8, tmst as u8]),
        gateway,
        rxpk: vec![RxPk {
            tmst,
            time: None,
            tmms: None,
            chan: Some(1),
            rfch: Some(0),
            freq_hz: 868_300_000,
            stat: CrcStatus::Ok,
            datr: DataRate::lora(7, 125).unwrap(),
            codr: Some(CodingRate::Cr4_5),
            rssi: Some(-90),
            lsnr: Some(5.0),
            jver: None,
            rsig: Vec::new(),
            brd: None,
            aesk: None,
            data: phy.to_vec(),
        }],
        stat: None,
    })
}

fn b64(s: &Value) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(s.as_str().expect("a base64 string"))
        .unwrap()
}

/// Whether `e` is the `log` event of an uplink refused for its counter (a replay, a counter
/// gap: `docs/integration.md`), which the tests below count apart from the other events.
fn is_counter_log(e: &Value) -> bool {
    e["type"] == "log" && e["context"]["reason"].is_string()
}

/// The events of `path` but the counter refusals' `log` events.
fn events_but_counter_logs(path: &std::path::Path) -> Vec<Value> {
    let mut all = events(path);
    all.retain(|e| !is_counter_log(e));
    all
}

/// [`wait_events`] not counting the counter refusals' `log` events.
fn wait_events_but_counter_logs(path: &std::path::Path, n: usize) -> Vec<Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let e = events_but_counter_logs(path);
        if e.len() >= n {
            return e;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} events, expected {n}",
            e.len()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn uplink_events(all: &[Value], dev_eui: &str) -> Vec<Value> {
    all.iter()
        .filter(|e| e["type"] == "uplink" && e["dev_eui"] == dev_eui)
        .cloned()
        .collect()
}

/// An HTTP/1.1 request; the status code and the JSON answer.
fn http(to: SocketAddr, method: &str, path: &str, body: &str) -> (u16, Value) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(to).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let code = text.split_whitespace().nth(1).unwrap().parse().unwrap();
    let json = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (code, serde_json::from_str(json).unwrap_or(Value::Null))
}

fn request(to: SocketAddr, body: &str) -> Value {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.send_to(body.as_bytes(), to).unwrap();
    let mut buf = [0u8; 2048];
    let n = s.recv(&mut buf).expect("an answer from the downlink input");
    serde_json::from_slice(&buf[..n]).unwrap()
}

const CONFIG: &str =
    "[gwmp]\nworkers = 2\n[data]\ncollect_window_ms = 100\nretransmission_after_ms = 600\n";

#[test]
fn uplinks_downlinks_and_mac_commands() {
    let a = Device::v10(0xA1, 0x2600_00A1, MacVersion::V1_0_3, 0x0A);
    let b = Device::v11(0xB1, 0x2600_00B1);
    // Its AppSKey is wrapped for another application server: forwarded encrypted.
    let mut c = Device::v10(0xC1, 0x2600_00C1, MacVersion::V1_0_4, 0x0C);
    c.app_kek = ("as-other", OTHER_AS_KEK);
    let e_adr = Device::v10(0xE1, 0x2600_00E1, MacVersion::V1_0_4, 0x0E);
    let net = provision(&[&a, &b, &c, &e_adr], CONFIG);
    let ns = start(&net);
    let m = ns.addr("metrics");
    let gws: Vec<Gateway> = [(0xAA01u64), 0xAA02, 0xAA03]
        .iter()
        .map(|&e| Gateway::new(e, ns.addr("gwmp")))
        .collect();
    for g in &gws {
        g.pull_data();
    }
    let snrs = [2.0, 9.0, 5.5];
    let hear_all = |phy: &[u8], tmst: u32| {
        for (g, snr) in gws.iter().zip(snrs) {
            g.push(phy, tmst, snr, -80 - snr as i32);
        }
    };

    // Unconfirmed, heard by three gateways: delivered once, with the three receptions.
    hear_all(
        &a.uplink(0, false, None, vec![], app(7, b"meter 0001")),
        10_000_000,
    );
    let ev = wait_events_but_counter_logs(&net.events, 1);
    assert_eq!(ev.len(), 1);
    let e = &ev[0];
    assert_eq!(e["type"], "uplink");
    assert_eq!(e["dev_eui"], "00000000000000A1");
    assert_eq!(e["dev_addr"], "260000A1");
    assert_eq!(
        (e["f_cnt"].as_u64(), e["f_port"].as_u64()),
        (Some(0), Some(7))
    );
    assert_eq!(e["confirmed"], false);
    assert_eq!(b64(&e["data"]), b"meter 0001");
    let rx = e["rx"].as_array().unwrap();
    assert_eq!(rx.len(), 3, "{e}");
    assert_eq!(rx[0]["gateway"], "000000000000AA02", "best SNR first");
    assert_eq!(rx[0]["snr"].as_f64(), Some(9.0));
    assert_eq!(rx[0]["frequency"], 868_300_000);
    assert_eq!(rx[0]["data_rate"], 5);
    assert!(e["received_at"].as_str().unwrap().ends_with('Z'));
    for g in &gws {
        assert!(
            g.pull_resp(Duration::from_millis(30)).is_none(),
            "no downlink was due"
        );
    }

    // Confirmed: delivered, and ACKed in RX1 through the best gateway with a valid MIC.
    hear_all(
        &a.uplink(1, true, None, vec![], app(7, b"meter 0002")),
        20_000_000,
    );
    let (_, tx) = gws[1].pull_resp(Duration::from_secs(3)).expect("an ACK");
    assert_eq!(
        tx.timing,
        TxTiming::Tmst(21_000_000),
        "RX1 = tmst + RxDelay 1 s"
    );
    assert_eq!(tx.freq_hz, 868_300_000);
    assert_eq!(tx.datr, DataRate::lora(7, 125).unwrap());
    let d = a.open(&tx, 0, 0);
    assert!(d.ack && !d.confirmed && !d.f_pending);
    assert_eq!(d.payload, FramePayload::None);
    let ev = wait_events_but_counter_logs(&net.events, 2);
    assert_eq!(ev[1]["f_cnt"], 1);
    assert_eq!(ev[1]["confirmed"], true);
    assert_eq!(b64(&ev[1]["data"]), b"meter 0002");

    // A replay of an older frame is not delivered (sent after the window in which a copy counts
    // as another gateway's).
    std::thread::sleep(Duration::from_millis(700));
    gws[0].push(
        &a.uplink(0, false, None, vec![], app(7, b"meter 0001")),
        30_000_000,
        3.0,
        -90,
    );
    wait_metric(m, "netserver_uplinks_total{result=\"replay\"}", 1.0);
    // The confirmed frame sent again (no ACK heard) is not delivered again but ACKed again,
    // with the next FCntDown.
    gws[1].push(
        &a.uplink(1, true, None, vec![], app(7, b"meter 0002")),
        40_000_000,
        9.0,
        -80,
    );
    let (_, tx) = gws[1]
        .pull_resp(Duration::from_secs(3))
        .expect("a second ACK");
    let d = a.open(&tx, 1, 0);
    assert!(d.ack);
    wait_metric(m, "netserver_uplinks_total{result=\"duplicate\"}", 1.0);
    // A wrong MIC: not delivered.
    let mut bad = a.uplink(2, false, None, vec![], app(7, b"x"));
    let n = bad.len();
    bad[n - 1] ^= 1;
    gws[0].push(&bad, 41_000_000, 3.0, -90);
    wait_metric(m, "netserver_uplinks_total{result=\"mic_failed\"}", 1.0);
    // Unknown DevAddr.
    let stranger = Device::v10(0xEE, 0x2600_00EE, MacVersion::V1_0_3, 0x0E);
    gws[0].push(
        &stranger.uplink(0, false, None, vec![], app(1, b"?")),
        42_000_000,
        3.0,
        -90,
    );
    wait_metric(
        m,
        "netserver_uplinks_total{result=\"unknown_devaddr\"}",
        1.0,
    );
    // MAC commands in FOpts and on FPort 0 at once: malformed, not delivered.
    let mixed = a.mixed_mac_frame(2);
    gws[0].push(&mixed, 43_000_000, 3.0, -90);
    wait_metric(m, "netserver_uplinks_total{result=\"malformed\"}", 1.0);

    // LinkCheckReq and DeviceTimeReq (FOpts) → answers in the ACK-less downlink.
    let sent_at = SystemTime::now();
    hear_all(
        &a.uplink(2, false, None, vec![0x02, 0x0D], app(7, b"t")),
        50_000_000,
    );
    let (_, tx) = gws[1]
        .pull_resp(Duration::from_secs(3))
        .expect("MAC answers");
    let d = a.open(&tx, 2, 0);
    assert!(!d.ack);
    let answers = mac::parse(protocol::data::Direction::Downlink, &d.fopts).unwrap();
    // Best SNR 9.0 at SF7 (floor −7.5 dB): margin 16 dB; three gateways.
    assert_eq!(
        answers[0],
        MacCommand::LinkCheckAns {
            margin: 16,
            gw_cnt: 3
        }
    );
    let MacCommand::DeviceTimeAns {
        seconds,
        fractional_second: _,
    } = answers[1]
    else {
        panic!("{answers:?}");
    };
    let gps_now = sent_at.duration_since(UNIX_EPOCH).unwrap().as_secs() - 315_964_800 + 18;
    assert!(
        (gps_now..=gps_now + 2).contains(&u64::from(seconds)),
        "GPS {seconds} vs {gps_now}"
    );

    // LoRaWAN 1.1: confirmed uplink with RekeyInd → ACK with RekeyConf, MIC with ConfFCnt.
    let rekey = mac::encode(
        protocol::data::Direction::Uplink,
        &[MacCommand::RekeyInd {
            dev_lorawan_minor: 1,
        }],
    )
    .unwrap();
    hear_all(&b.uplink(0, true, None, rekey, app(3, b"v1.1")), 60_000_000);
    let (_, tx) = gws[1].pull_resp(Duration::from_secs(3)).expect("1.1 ACK");
    // NFCntDown 0; the MIC covers ConfFCnt = the acknowledged uplink's FCnt (0 here: check
    // with a later one too, below).
    let d = b.open(&tx, 0, 0);
    assert!(d.ack);
    assert_eq!(
        mac::parse(protocol::data::Direction::Downlink, &d.fopts).unwrap(),
        vec![MacCommand::RekeyConf {
            serv_lorawan_minor: 1
        }],
        "FOpts decrypted with NwkSEncKey"
    );
    // A confirmed 1.1 uplink with FCnt 5: the ACK's MIC needs ConfFCnt 5.
    hear_all(&b.uplink(5, true, None, vec![], app(3, b"c5")), 70_000_000);
    let (_, tx) = gws[1].pull_resp(Duration::from_secs(3)).expect("1.1 ACK 2");
    let f = DataFrame::parse(&tx.data).unwrap();
    assert!(
        f.open_downlink(&b.crypto(), 1, 0).is_err(),
        "ConfFCnt must enter the MIC"
    );
    let d = b.open(&tx, 1, 5);
    assert!(d.ack);

    // Application downlink to the 1.1 device, confirmed: served in the next window on
    // AFCntDown; the device's ACK uplink (ConfFCnt = AFCntDown in its MIC) yields an ack event.
    let ans = request(
        net.downlink_input,
        r#"{"dev_eui":"00000000000000B1","f_port":9,"data":"BAU="}"#,
    );
    assert_eq!(
        (&ans["ok"], &ans["queued"]),
        (&Value::from(true), &Value::from(1)),
        "{ans}"
    );
    let ans = request(
        net.downlink_input,
        r#"{"dev_eui":"00000000000000B1","f_port":9,"data":"AQID","confirmed":true}"#,
    );
    assert_eq!(ans["queued"], 2, "{ans}");
    let id = ans["id"].as_u64().unwrap();
    for bad in [
        "not json",
        r#"{"dev_eui":"00000000000000B1","f_port":0,"data":"AA=="}"#,
        r#"{"dev_eui":"00000000000000B1","f_port":1,"data":"***"}"#,
        r#"{"dev_eui":"0000000000000999","f_port":1,"data":"AA=="}"#,
        r#"{"dev_eui":"00000000000000C1","f_port":1,"data":"AA=="}"#,
    ] {
        let ans = request(net.downlink_input, bad);
        assert_eq!(ans["ok"], false, "{bad}: {ans}");
        assert!(
            ans["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{ans}"
        );
    }
    hear_all(
        &b.uplink(6, false, None, vec![], app(3, b"poll")),
        80_000_000,
    );
    let (_, tx) = gws[1]
        .pull_resp(Duration::from_secs(3))
        .expect("app downlink");
    let d = b.open(&tx, 0, 0); // AFCntDown 0
    assert!(!d.confirmed && d.f_pending, "one more is waiting");
    assert_eq!(d.payload, app(9, &[4, 5]));
    hear_all(
        &b.uplink(7, false, None, vec![], app(3, b"poll")),
        85_000_000,
    );
    let (_, tx) = gws[1]
        .pull_resp(Duration::from_secs(3))
        .expect("second app downlink");
    let d = b.open(&tx, 1, 0); // AFCntDown 1
    assert!(d.confirmed && !d.f_pending);
    assert_eq!(d.payload, app(9, &[1, 2, 3]));
    // The device's ACK: its MIC carries ConfFCnt = 1 (a wrong one fails).
    gws[0].push(
        &b.uplink(8, false, Some(0), vec![], app(3, b"ack")),
        89_000_000,
        1.0,
        -99,
    );
    wait_metric(m, "netserver_uplinks_total{result=\"mic_failed\"}", 2.0);
    hear_all(
        &b.uplink(8, false, Some(1), vec![], app(3, b"ack")),
        90_000_000,
    );
    let all = wait_events_but_counter_logs(&net.events, 9);
    let acks: Vec<&Value> = all.iter().filter(|e| e["type"] == "ack").collect();
    assert_eq!(acks.len(), 1, "{all:?}");
    assert_eq!(acks[0]["id"].as_u64(), Some(id));
    assert_eq!(acks[0]["f_cnt_down"], 1);
    let bs = uplink_events(&all, "00000000000000B1");
    assert_eq!(
        bs.iter()
            .map(|e| e["f_cnt"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        vec![0, 5, 6, 7, 8]
    );
    assert_eq!(b64(&bs[0]["data"]), b"v1.1");

    // Without the application's KEK: the event carries the encrypted FRMPayload and the
    // AppSKey envelope, which the application opens with its own KEK to decrypt.
    hear_all(
        &c.uplink(0, false, None, vec![], app(4, b"end to end")),
        100_000_000,
    );
    let all = wait_events_but_counter_logs(&net.events, 10);
    let ce = &uplink_events(&all, "00000000000000C1")[0];
    assert!(ce.get("data").is_none(), "{ce}");
    let env: KeyEnvelope = serde_json::from_value(ce["app_s_key"].clone()).unwrap();
    assert_eq!(env.kek_label, "as-other");
    let key: AppSKey = env.open(Some(&Kek::new(OTHER_AS_KEK))).unwrap();
    let mut bytes = b64(&ce["data_encrypted"]);
    assert_ne!(bytes, b"end to end");
    protocol::data::encrypt_frm_payload(
        &protocol::data::PayloadCipher::from_app_s_key(&key),
        protocol::data::Direction::Uplink,
        DevAddr::new(c.dev_addr),
        0,
        &mut bytes,
    );
    assert_eq!(bytes, b"end to end");

    // ADR: an ADRACKReq gets a downlink at once (empty: no decision before 20 uplinks); after
    // 20 uplinks at SNR 9 dB on DR5 (margin 9 + 7.5 − 10 = 6.5 dB: two 3 dB steps, DR5 is the
    // ADR maximum, so two power steps) the device gets LinkADRReq(DR5, TXPower 2).
    gws[1].push(&e_adr.adr_uplink(0, true), 110_000_000, 9.0, -80);
    let (_, tx) = gws[1]
        .pull_resp(Duration::from_secs(3))
        .expect("answer to ADRACKReq");
    let d = e_adr.open(&tx, 0, 0);
    assert!(d.fopts.is_empty() && !d.ack);
    for f in 1..19u32 {
        gws[1].push(
            &e_adr.adr_uplink(f, false),
            110_000_000 + f * 100_000,
            9.0,
            -80,
        );
    }
    assert!(
        gws[1].pull_resp(Duration::from_millis(300)).is_none(),
        "no decision before 20 uplinks"
    );
    gws[1].push(&e_adr.adr_uplink(19, false), 120_000_000, 9.0, -80);
    let (_, tx) = gws[1]
        .pull_resp(Duration::from_secs(3))
        .expect("LinkADRReq");
    let d = e_adr.open(&tx, 1, 0);
    assert_eq!(
        mac::parse(protocol::data::Direction::Downlink, &d.fopts).unwrap(),
        vec![MacCommand::LinkADRReq {
            data_rate: 5,
            tx_power: 2,
            ch_mask: 0x0007,
            ch_mask_cntl: 0,
            nb_trans: 1
        }]
    );

    // The HTTP downlink input: queued (202), refused with the reason (400, 404, 405); the
    // payload goes out after the device's next uplink, on FCntDown 3.
    let (code, ans) = http(
        net.downlink_http,
        "POST",
        "/downlink",
        r#"{"dev_eui":"00000000000000A1","f_port":5,"data":"qrs="}"#,
    );
    assert_eq!((code, &ans["ok"]), (202, &Value::from(true)), "{ans}");
    let (code, ans) = http(
        net.downlink_http,
        "POST",
        "/downlink",
        r#"{"dev_eui":"00000000000000A1"}"#,
    );
    assert_eq!(code, 400);
    assert!(
        ans["error"].as_str().unwrap().contains("invalid request"),
        "{ans}"
    );
    assert_eq!(http(net.downlink_http, "GET", "/downlink", "").0, 405);
    assert_eq!(http(net.downlink_http, "POST", "/other", "{}").0, 404);
    hear_all(
        &a.uplink(3, false, None, vec![], app(7, b"poll")),
        130_000_000,
    );
    let (_, tx) = gws[1]
        .pull_resp(Duration::from_secs(3))
        .expect("HTTP-queued downlink");
    let d = a.open(&tx, 3, 0);
    assert_eq!(d.payload, app(5, &[0xAA, 0xBB]));

    // Metrics: results and latency.
    wait_metric(m, "netserver_uplinks_total{result=\"ok\"}", 30.0);
    assert_eq!(metric(m, "netserver_uplinks_total{result=\"ok\"}"), 30.0);
    wait_metric(m, "netserver_uplink_latency_seconds_count", 9.0);
    wait_metric(m, "netserver_downlinks_total{result=\"sent\"}", 10.0);
    assert_eq!(
        metric(m, "netserver_downlinks_total{result=\"sent\"}"),
        10.0
    );
    let status = ns.terminate();
    assert!(status.success(), "{status}");
}

/// SIGKILL in the middle of a stream of uplinks, then a restart and the whole stream again:
/// nothing is delivered twice, the frames not delivered before the crash are delivered after
/// it, and the session goes on without a rejoin.
#[test]
fn sigkill_mid_stream_delivers_nothing_twice() {
    let a = Device::v10(0xD1, 0x2600_00D1, MacVersion::V1_0_3, 0x0D);
    let net = provision(
        &[&a],
        "[gwmp]\nworkers = 2\n[data]\ncollect_window_ms = 20\n",
    );
    let frames: Vec<Vec<u8>> = (0..1000u32)
        .map(|f| a.uplink(f, false, None, vec![], app(1, &f.to_le_bytes())))
        .collect();
    let ns = start(&net);
    let events_path = net.events.clone();
    // A sender thread streams the frames (about one per millisecond, without waiting for the
    // PUSH_ACKs); once 100 events are written, the server is killed while it keeps streaming.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sender = {
        let (stop, frames, to) = (stop.clone(), frames.clone(), ns.addr("gwmp"));
        std::thread::spawn(move || {
            let gw = Gateway::new(0xBB01, to);
            let mut sent = 0;
            for (i, f) in frames.iter().enumerate() {
                if stop.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                gw.send(&push_data(gw.eui, f, 1_000 * i as u32));
                sent = i + 1;
                std::thread::sleep(Duration::from_millis(1));
            }
            sent
        })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while events_but_counter_logs(&events_path).len() < 100 {
        assert!(std::time::Instant::now() < deadline, "no progress");
        std::thread::sleep(Duration::from_millis(5));
    }
    ns.kill9();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let sent = sender.join().unwrap();
    let before = events_but_counter_logs(&events_path).len();
    assert!(
        before >= 100 && sent < frames.len(),
        "{before} events, {sent} sent"
    );

    let ns = start(&net);
    let gw = Gateway::new(0xBB01, ns.addr("gwmp"));
    // The whole stream again: the delivered part is refused, the rest delivered once.
    for (i, f) in frames.iter().enumerate() {
        gw.push(f, 10_000_000 + 1_000 * i as u32, 5.0, -90);
    }
    wait_events_but_counter_logs(&events_path, frames.len());
    std::thread::sleep(Duration::from_millis(300));
    let all = events_but_counter_logs(&events_path);
    eprintln!(
        "{sent} frames sent and {before} events written before SIGKILL; {} events in all",
        all.len()
    );
    let mut fcnts: Vec<u64> = all.iter().map(|e| e["f_cnt"].as_u64().unwrap()).collect();
    let n = fcnts.len();
    fcnts.sort_unstable();
    fcnts.dedup();
    assert_eq!(fcnts.len(), n, "an uplink was delivered twice");
    // And none is lost: the event file is read back at start (docs/operations.md).
    let missing: Vec<u64> = (0..frames.len() as u64)
        .filter(|f| fcnts.binary_search(f).is_err())
        .collect();
    assert!(missing.is_empty(), "missing {missing:?}");
    // Payloads are right.
    for e in &all {
        let f = e["f_cnt"].as_u64().unwrap() as u32;
        assert_eq!(b64(&e["data"]), f.to_le_bytes());
    }
    let m = ns.addr("metrics");
    assert!(
        metric(m, "netserver_uplinks_total{result=\"replay\"}")
            + metric(m, "netserver_uplinks_total{result=\"duplicate\"}")
            >= (before - 1) as f64
    );
    // And the session goes on.
    gw.push(
        &a.uplink(1000, false, None, vec![], app(1, b"after")),
        99_000_000,
        5.0,
        -90,
    );
    let all = wait_events_but_counter_logs(&events_path, n + 1);
    assert_eq!(all.last().unwrap()["f_cnt"], 1000);
    // Each replayed frame refused after the restart is the operator's `log` event.
    let logs = events(&events_path)
        .iter()
        .filter(|e| is_counter_log(e))
        .count();
    assert_eq!(
        logs as f64,
        metric(m, "netserver_uplinks_total{result=\"replay\"}")
    );
    assert!(logs > 0);
}

/// `netserver_gwmp_socket_drops` is the kernel's count for this server's GWMP sockets: stopped
/// (SIGSTOP) with a small receive buffer and sent more than it holds, the server reports the
/// datagrams the kernel dropped (at least 100) once it runs again, every other datagram of the
/// flood is acknowledged, and it goes on serving.
#[test]
fn a_full_gwmp_socket_shows_in_the_drop_gauge() {
    let net = provision(&[], "[gwmp]\nworkers = 1\nrecv_buffer_bytes = 4096\n");
    let ns = start(&net);
    let m = ns.addr("metrics");
    assert_eq!(metric(m, "netserver_gwmp_socket_drops"), 0.0);
    let pid = ns.child.id();
    let stopped = testkit::Stopped::stop(pid);
    let gw = UdpSocket::bind("127.0.0.1:0").unwrap();
    // PULL_DATA from an unknown gateway: 12 bytes each, far more than 4 KiB of buffer holds
    // (the kernel charges each datagram's whole buffer, several hundred bytes, not its payload).
    for i in 0..500u16 {
        let [a, b] = i.to_be_bytes();
        let pull = [2, a, b, 2, 1, 2, 3, 4, 5, 6, 7, 8];
        gw.send_to(&pull, ns.addr("gwmp")).unwrap();
    }
    // The kernel may still hold the flood in its loopback backlog: wait until it has dropped
    // what the buffer could not take, before the server may read again.
    testkit::wait_receive_drops(pid, 100);
    stopped.resume();
    // Every datagram of the flood is either acknowledged or dropped by the kernel.
    gw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 64];
    let mut acked = 0;
    while acked + testkit::receive_drops(pid) < 500 {
        let (n, _) = gw.recv_from(&mut buf).expect("a PULL_ACK of the flood");
        if n == 4 && buf[0] == 2 && buf[3] == 4 && u16::from_be_bytes([buf[1], buf[2]]) < 500 {
            acked += 1;
        }
    }
    let kernel = testkit::receive_drops(pid);
    assert_eq!(
        acked + kernel,
        500,
        "{acked} acknowledged, {kernel} dropped"
    );
    assert!(kernel >= 100, "{kernel} drops");
    assert_eq!(metric(m, "netserver_gwmp_socket_drops"), kernel as f64);
    // Still serving: a new PULL_DATA is acknowledged.
    gw.send_to(&[2, 0xAB, 0xCD, 2, 1, 2, 3, 4, 5, 6, 7, 8], ns.addr("gwmp"))
        .unwrap();
    loop {
        let (n, _) = gw.recv_from(&mut buf).expect("the PULL_ACK");
        if buf[..n] == [2, 0xAB, 0xCD, 4] {
            break;
        }
    }
}
