//! End to end over real UDP sockets on 127.0.0.1: virtual gateways built on `protocol` join
//! LoRaWAN 1.0.3, 1.0.4 and 1.1 devices through the real `netserver` binary and the real
//! `joinserver` binary (provisioned with `joinserver init` and `joinserver devices import`).
//!
//! The join server link passes through a small UDP relay in the test, which can drop a JoinAns
//! to exercise the retry and records every JoinAns it relays.
//!
//! The `joinserver` binary lives in another crate of the workspace, so Cargo does not build it
//! for this test: [`common::joinserver_bin`] runs a nested `cargo test --workspace --no-run`
//! (same Cargo, same profile, same target directory) once per test run.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{
    http_get, metric, netserver_serve, start_joinserver, wait_metric, workspace_root, Gateway, Proc,
};

use netserver::keys::{read_labeled_kek, NetworkKeys};
use netserver::store::commit::SessionStore;
use netserver::store::session_journal::SessionJournal;
use netserver::store::stored::StoredNetworkKeys;
use protocol::derive;
use protocol::gwmp::{
    CodingRate, CrcStatus, DataRate, Packet, PushData, RxPk, Token, TxAckCode, TxPk, TxTiming,
};
use protocol::ids::{DevEui, DevNonce, GatewayEui, JoinEui, NetId};
use protocol::join::{
    AnsweredRequest, EncryptedJoinAccept, JoinAcceptEncKey, JoinAcceptMicKey, JoinAcceptPayload,
    JoinRequest, JoinRootKey,
};
use protocol::keys::{AppKey, KeyCipher, NwkKey};
use protocol::link;

const APP_KEY: &str = "2B7E151628AED2A6ABF7158809CF4F3C";
const NWK_KEY: &str = "000102030405060708090A0B0C0D0E0F";
const JOIN_EUI: u64 = 0x70B3_D57E_D000_0001;
const NET_ID: u32 = 0x000013;
/// Warnings and errors only: the garbage phase makes info logs very long.
const QUIET_NS: &str = "warn,netserver::join::otaa=error";
/// Devices: 1 is 1.0.3, 2 is 1.0.4, 3 is 1.1, all homed in this network's NetID 000013 (the
/// join server refuses unclaimed devices); 5 is 1.0.4 homed in NetID 000042; 9 is unknown.
const MANIFEST: &str = "dev_eui,join_eui,mac_version,app_key,nwk_key,home_net_id,owner_token\n\
0000000000000001,70B3D57ED0000001,1.0.3,2B7E151628AED2A6ABF7158809CF4F3C,,000013,\n\
0000000000000002,70B3D57ED0000001,1.0.4,2B7E151628AED2A6ABF7158809CF4F3C,,000013,\n\
0000000000000003,70B3D57ED0000001,1.1,2B7E151628AED2A6ABF7158809CF4F3C,000102030405060708090A0B0C0D0E0F,000013,\n\
0000000000000005,70B3D57ED0000001,1.0.4,2B7E151628AED2A6ABF7158809CF4F3C,,000042,\n";

// ------------------------------------------------------------------------------------------
// The link relay: NS ↔ relay ↔ JS, dropping the next JoinAns on request.

struct Relay {
    addr: SocketAddr,
    drop_next_answer: Arc<AtomicBool>,
    delay_answers: Arc<Mutex<Duration>>,
    answers: Arc<Mutex<Vec<Vec<u8>>>>,
}

fn relay(js: SocketAddr) -> Relay {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = sock.local_addr().unwrap();
    let drop_next_answer = Arc::new(AtomicBool::new(false));
    let delay_answers = Arc::new(Mutex::new(Duration::ZERO));
    let answers = Arc::new(Mutex::new(Vec::new()));
    let (d, a, delay) = (
        Arc::clone(&drop_next_answer),
        Arc::clone(&answers),
        Arc::clone(&delay_answers),
    );
    std::thread::spawn(move || {
        let mut ns: Option<SocketAddr> = None;
        let mut buf = [0u8; 2048];
        loop {
            let Ok((n, from)) = sock.recv_from(&mut buf) else {
                return;
            };
            if from == js {
                a.lock().unwrap().push(buf[..n].to_vec());
                if d.swap(false, Ordering::SeqCst) {
                    continue;
                }
                let wait = *delay.lock().unwrap();
                std::thread::sleep(wait);
                if let Some(ns) = ns {
                    let _ = sock.send_to(&buf[..n], ns);
                }
            } else {
                ns = Some(from);
                let _ = sock.send_to(&buf[..n], js);
            }
        }
    });
    Relay {
        addr,
        drop_next_answer,
        delay_answers,
        answers,
    }
}

// ------------------------------------------------------------------------------------------
// Devices

fn app_key() -> KeyCipher<AppKey> {
    KeyCipher::new(&APP_KEY.parse::<AppKey>().unwrap())
}
fn nwk_key() -> KeyCipher<NwkKey> {
    KeyCipher::new(&NWK_KEY.parse::<NwkKey>().unwrap())
}

fn join_request(dev: u64, dev_nonce: u16) -> Vec<u8> {
    let (a, n) = (app_key(), nwk_key());
    let root = if dev == 3 {
        JoinRootKey::NwkKey(&n)
    } else {
        JoinRootKey::AppKey(&a)
    };
    JoinRequest::build(
        JoinEui::new(JOIN_EUI),
        DevEui::new(dev),
        DevNonce(dev_nonce),
        root,
    )
    .to_bytes()
    .to_vec()
}

/// Device side: decrypts the Join-accept and checks its MIC with the device's own keys.
fn open_accept(dev: u64, dev_nonce: u16, phy: &[u8]) -> JoinAcceptPayload {
    let accept = EncryptedJoinAccept::from_bytes(phy).expect("a Join-accept PHYPayload");
    let (a, n) = (app_key(), nwk_key());
    if dev == 3 {
        let js = derive::js_keys(&n, DevEui::new(dev));
        let js_int = KeyCipher::new(&js.js_int_key);
        let d = accept.decrypt(JoinAcceptEncKey::NwkKey(&n));
        assert!(d.payload.dl_settings.opt_neg(), "a 1.1 device gets OptNeg");
        d.verify_mic(JoinAcceptMicKey::OptNeg {
            js_int_key: &js_int,
            join_eui: JoinEui::new(JOIN_EUI),
            answered: AnsweredRequest::JoinRequest(DevNonce(dev_nonce)),
        })
        .expect("1.1 Join-accept MIC");
        d.payload
    } else {
        accept
            .open(
                JoinAcceptEncKey::AppKey(&a),
                JoinAcceptMicKey::Legacy(JoinRootKey::AppKey(&a)),
            )
            .expect("1.0 Join-accept MIC")
    }
}

// ------------------------------------------------------------------------------------------
// Metrics

fn joins(result: &str, reason: &str) -> String {
    format!("netserver_joins_total{{reason=\"{reason}\",result=\"{result}\"}}")
}

// ------------------------------------------------------------------------------------------

struct System {
    _dir: tempfile::TempDir,
    js_dir: PathBuf,
    ns_dir: PathBuf,
    config: PathBuf,
    js: Proc,
    relay: Relay,
    link_target: SocketAddr,
    ns: Option<Proc>,
}

fn start_netserver(s: &System) -> Proc {
    let secrets = s.js_dir.join("secrets");
    let cmd = netserver_serve(
        &s.config,
        &s.ns_dir,
        &s.link_target.to_string(),
        &secrets,
        &format!("{NET_ID:06X}"),
    );
    Proc::spawn_logging(cmd, "netserver listening", QUIET_NS, Some("warn"))
}

fn start() -> System {
    // A short de-duplication retention, so that a replayed Join-request reaches the join
    // server (and its DevNonce check) instead of being absorbed as a duplicate.
    start_with(
        MANIFEST,
        "[gwmp]\nworkers = 2\ndedup_retention_ms = 300\n",
        true,
    )
}

/// Provisions `manifest`, starts the join server, the relay and the network server with the
/// TOML `config`; the network server talks to the relay or, with `via_relay` false, directly to
/// the join server.
fn start_with(manifest_csv: &str, ns_config: &str, via_relay: bool) -> System {
    let dir = tempfile::tempdir().unwrap();
    let ns_dir = dir.path().join("ns");
    let (js_dir, js) = start_joinserver(
        dir.path(),
        manifest_csv,
        &format!("{NET_ID:06X}"),
        QUIET_NS,
        Some("warn"),
    );
    let relay = relay(js.addr("link"));
    let link_target = if via_relay {
        relay.addr
    } else {
        js.addr("link")
    };
    let config = dir.path().join("netserver.toml");
    std::fs::write(&config, ns_config).unwrap();
    let mut s = System {
        _dir: dir,
        js_dir,
        ns_dir,
        config,
        js,
        relay,
        link_target,
        ns: None,
    };
    s.ns = Some(start_netserver(&s));
    s
}

fn check_rx1_txpk(tx: &TxPk, uplink_tmst: u32) {
    assert_eq!(
        tx.timing,
        TxTiming::Tmst(uplink_tmst.wrapping_add(5_000_000)),
        "RX1 timing"
    );
    assert_eq!(tx.freq_hz, 868_100_000, "RX1 uses the uplink frequency");
    assert_eq!(
        tx.datr,
        DataRate::lora(7, 125).unwrap(),
        "RX1 DR = uplink DR5"
    );
    assert_eq!(tx.codr, Some(CodingRate::Cr4_5));
    assert_eq!(tx.ipol, Some(true));
    assert_eq!(tx.rfch, 0);
    assert_eq!(tx.powe, Some(14));
    assert!(tx.data.len() == 17 || tx.data.len() == 33);
}

#[test]
fn otaa_end_to_end() {
    let s = start();
    let ns = s.ns.as_ref().unwrap();
    let gwmp = ns.addr("gwmp");
    let m = ns.addr("metrics");
    assert_eq!(http_get(m, "/health").0, 200);

    // Two gateways hear every frame; B has the better SNR, so it must carry the downlink.
    let gw_a = Gateway::new(0xAA55_5A00_0000_000A, gwmp).on_868_1();
    let gw_b = Gateway::new(0xAA55_5A00_0000_000B, gwmp).on_868_1();
    gw_a.pull_data();
    gw_b.pull_data();

    // 1.0.3, 1.0.4 and 1.1 devices join: JoinAccept decrypts, its MIC is right, RX1 timing.
    let mut tmst = 1_000_000u32;
    let mut joined = Vec::new();
    for (dev, nonce) in [(1u64, 0x1234u16), (2, 1), (3, 1)] {
        tmst = tmst.wrapping_add(50_000_000);
        let phy = join_request(dev, nonce);
        // Both copies leave together (as from two gateways in the field); the first to arrive
        // starts the join, the better one must carry the Join-accept.
        let ta = gw_a.send_push(&phy, tmst.wrapping_add(17), 2.5, -100, CrcStatus::Ok);
        let tb = gw_b.send_push(&phy, tmst, 9.0, -105, CrcStatus::Ok);
        gw_a.wait_push_ack(ta);
        gw_b.wait_push_ack(tb);
        let (token, tx) = gw_b
            .pull_resp(Duration::from_secs(4))
            .unwrap_or_else(|| panic!("no Join-accept for device {dev}"));
        check_rx1_txpk(&tx, tmst);
        let payload = open_accept(dev, nonce, &tx.data);
        assert_eq!(payload.net_id, NetId::new(NET_ID).unwrap());
        assert!(
            payload.dev_addr.is_in(NetId::new(NET_ID).unwrap()),
            "DevAddr in our NetID"
        );
        assert!(
            !joined.iter().any(|(_, a, _, _)| *a == payload.dev_addr),
            "DevAddr reused"
        );
        joined.push((dev, payload.dev_addr, nonce, payload.join_nonce));
        gw_b.tx_ack(token, None);
        assert!(
            gw_a.pull_resp(Duration::from_millis(50)).is_none(),
            "the worse gateway got it"
        );
    }
    wait_metric(m, &joins("accepted", "rx1"), 3.0);
    wait_metric(m, "netserver_tx_ack_total{error=\"none\"}", 3.0);
    wait_metric(m, "netserver_dedup_duplicates_total", 3.0);
    wait_metric(m, "netserver_join_latency_seconds_count", 3.0);

    // No Join-accept for: a replayed DevNonce, a wrong MIC, an unknown DevEUI, another home NetID.
    std::thread::sleep(Duration::from_millis(400)); // past the de-duplication retention
    let mut bad_mic = join_request(1, 0x4321);
    bad_mic[22] ^= 0xff;
    let cases: [(&str, Vec<u8>); 4] = [
        ("JoinReqFailed", join_request(2, 1)),
        ("MICFailed", bad_mic),
        ("UnknownDevEUI", join_request(9, 1)),
        ("ActivationDisallowed", join_request(5, 1)),
    ];
    for (code, phy) in cases {
        let before = metric(m, &joins("rejected", code));
        tmst = tmst.wrapping_add(50_000_000);
        gw_b.push_with(&phy, tmst, 9.0, -105, CrcStatus::Ok);
        wait_metric(m, &joins("rejected", code), before + 1.0);
        assert!(
            gw_b.pull_resp(Duration::from_millis(100)).is_none(),
            "a Join-accept for {code}"
        );
    }
    // rxpk with a bad CRC are dropped and counted, never forwarded.
    gw_b.push_with(&join_request(2, 7), tmst, 9.0, -105, CrcStatus::Bad);
    wait_metric(m, "netserver_rxpk_total{result=\"crc_dropped\"}", 1.0);
    assert!(gw_b.pull_resp(Duration::from_millis(300)).is_none());

    // A dropped JoinAns is retried, and the retry gets the identical answer.
    let answers_before = s.relay.answers.lock().unwrap().len();
    s.relay.drop_next_answer.store(true, Ordering::SeqCst);
    tmst = tmst.wrapping_add(50_000_000);
    gw_b.push_with(&join_request(2, 2), tmst, 9.0, -105, CrcStatus::Ok);
    let (token, tx) = gw_b
        .pull_resp(Duration::from_secs(4))
        .expect("Join-accept after a retry");
    check_rx1_txpk(&tx, tmst);
    open_accept(2, 2, &tx.data);
    // TX_ACKs are counted by error code.
    gw_b.tx_ack(token, Some(TxAckCode::TooLate));
    wait_metric(m, "netserver_tx_ack_total{error=\"too_late\"}", 1.0);
    wait_metric(m, "netserver_link_requests_total{type=\"retry\"}", 1.0);
    let answers = s.relay.answers.lock().unwrap()[answers_before..].to_vec();
    // One dropped answer and at least one relayed (more if the join server was slower than a
    // request timeout): every answer to the retries is the identical JoinAns.
    assert!(answers.len() >= 2, "{} answers", answers.len());
    let body = |d: &[u8]| d[link::HEADER_LEN..d.len() - link::TAG_LEN].to_vec();
    for a in &answers[1..] {
        assert_eq!(body(&answers[0]), body(a), "a retry's JoinAns differs");
    }

    // Garbage on every port leaves both servers serving.
    garbage(&[gwmp, s.js.addr("link"), ns.addr("link")]);
    tmst = tmst.wrapping_add(50_000_000);
    gw_b.pull_data();
    gw_b.push_with(&join_request(3, 2), tmst, 9.0, -105, CrcStatus::Ok);
    let (_, tx) = gw_b
        .pull_resp(Duration::from_secs(4))
        .expect("serving after garbage");
    open_accept(3, 2, &tx.data);
    assert!(
        metric(m, "netserver_gwmp_dropped_total{reason=\"version\"}") >= 1.0
            || metric(m, "netserver_gwmp_dropped_total{reason=\"truncated\"}") >= 1.0
    );
    // Per-gateway statistics.
    let (code, gws) = http_get(m, "/gateways");
    assert_eq!(code, 200);
    let gws: serde_json::Value = serde_json::from_str(&gws).unwrap();
    let b = gws
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["gateway_eui"] == "AA555A000000000B")
        .expect("gateway B listed");
    assert_eq!(b["stats"]["rxpk_crc_dropped"], 1, "{b}");
    assert_eq!(b["stats"]["pull_resp"], 5, "{b}");
    assert_eq!(b["stats"]["tx_ack"]["too_late"], 1, "{b}");
    assert_eq!(b["stats"]["tx_ack"]["none"], 3, "{b}");
    assert_eq!(b["online"], true);

    // Graceful stop, then the sessions are restored at start.
    let mut s = s;
    let status = s.ns.take().unwrap().terminate();
    assert!(status.success(), "netserver exit status {status}");
    let ns = start_netserver(&s);
    let (code, health) = http_get(ns.addr("metrics"), "/health");
    assert_eq!(code, 200);
    let health: serde_json::Value = serde_json::from_str(&health).unwrap();
    assert_eq!(health["sessions"], 3, "{health}");

    // A session is durable before its Join-accept leaves: join again, then SIGKILL.
    let gw = Gateway::new(0xAA55_5A00_0000_000C, ns.addr("gwmp")).on_868_1();
    gw.pull_data();
    tmst = tmst.wrapping_add(50_000_000);
    gw.push_with(&join_request(1, 0x5555), tmst, 5.0, -90, CrcStatus::Ok);
    let (_, tx) = gw
        .pull_resp(Duration::from_secs(4))
        .expect("Join-accept after restart");
    let accept = open_accept(1, 0x5555, &tx.data);
    let mut ns = ns;
    ns.child.kill().unwrap();
    ns.child.wait().unwrap();
    drop(ns);

    // The store holds the new session, with the network key the device derived, wrapped.
    let (store, loaded, thread) = SessionStore::start(
        SessionJournal::open(&s.ns_dir).unwrap(),
        8,
        netserver::ops::metrics::Metrics::new(),
    )
    .unwrap();
    drop(store);
    thread.join();
    assert_eq!(loaded.len(), 3);
    let one = loaded.iter().find(|x| x.dev_eui == DevEui::new(1)).unwrap();
    assert_eq!(one.dev_addr, accept.dev_addr);
    assert_eq!(one.dev_nonce, DevNonce(0x5555));
    // The network KEK of the network server (NetID 000013's own, from `peers add`).
    let (_, ns_kek_file) =
        common::peer_secret_files(&s.js_dir.join("secrets"), &format!("{NET_ID:06X}"));
    let ns_kek = read_labeled_kek(&ns_kek_file).unwrap();
    let StoredNetworkKeys::V1_0 { nwk_s_key } = &one.network_keys else {
        panic!("a 1.0.3 device has a 1.0 session");
    };
    assert_eq!(
        nwk_s_key.kek_label, ns_kek.label,
        "stored wrapped under ns.kek"
    );
    let device = derive::session_keys_1_0(
        &app_key(),
        accept.join_nonce,
        NetId::new(NET_ID).unwrap(),
        DevNonce(0x5555),
    );
    assert_eq!(
        NetworkKeys::open(&one.network_keys, &ns_kek).unwrap(),
        NetworkKeys::V1_0(device.nwk_s_key)
    );
    assert!(one
        .app_s_key
        .as_ref()
        .is_some_and(|e| !e.kek_label.is_empty()));
    let three = loaded.iter().find(|x| x.dev_eui == DevEui::new(3)).unwrap();
    assert!(matches!(three.network_keys, StoredNetworkKeys::V1_1 { .. }));
    assert_eq!(three.mac_version, Some(protocol::version::MacVersion::V1_1));
}

/// A JoinAns too late for RX1 goes out in RX2 (869.525 MHz, DR0, `tmst` + RX2 delay); one too
/// late for both windows is dropped and counted. The network server runs with 1 s / 2 s join
/// delays here so that the test waits seconds, not minutes; the decision is the same as with
/// the 5 s / 6 s defaults.
#[test]
fn late_answers_use_rx2_or_are_dropped() {
    let s = start_with(
        MANIFEST,
        "[join]\njoin_accept_delay1_s = 1\njoin_accept_delay2_s = 2\nscheduling_margin_ms = 100\n\
         [join_server]\nrequest_timeout_ms = 3000\n",
        true,
    );
    let ns = s.ns.as_ref().unwrap();
    let m = ns.addr("metrics");
    let gw = Gateway::new(0xAA55_5A00_0000_0D0D, ns.addr("gwmp")).on_868_1();
    gw.pull_data();

    // Answer after 1.2 s: RX1 (opening at 1 s) is gone, RX2 (2 s) is still ahead.
    *s.relay.delay_answers.lock().unwrap() = Duration::from_millis(1200);
    let counter_start = Instant::now();
    gw.push_with(&join_request(1, 0x0A01), 7_000_000, 5.0, -90, CrcStatus::Ok);
    let (_, tx) = gw
        .pull_resp(Duration::from_secs(4))
        .expect("an RX2 Join-accept");
    assert_eq!(
        tx.timing,
        TxTiming::Tmst(9_000_000),
        "RX2 = tmst + 2 s here"
    );
    assert_eq!(tx.freq_hz, 869_525_000);
    assert_eq!(tx.datr, DataRate::lora(12, 125).unwrap(), "RX2 is DR0");
    assert_eq!(
        (tx.ipol, tx.codr, tx.powe),
        (Some(true), Some(CodingRate::Cr4_5), Some(27))
    );
    open_accept(1, 0x0A01, &tx.data);
    wait_metric(m, &joins("accepted", "rx2"), 1.0);

    // Answer after 1.95 s: less than the 100 ms margin before RX2.
    *s.relay.delay_answers.lock().unwrap() = Duration::from_millis(1950);
    // The gateway's counter moves with time (the downlink scheduler checks the first
    // Join-accept's RX2, still on air, against this one's windows on that counter).
    let tmst = 7_000_000 + counter_start.elapsed().as_micros() as u32;
    gw.push_with(&join_request(1, 0x0A02), tmst, 5.0, -90, CrcStatus::Ok);
    wait_metric(m, &joins("dropped", "too_late"), 1.0);
    assert!(
        gw.pull_resp(Duration::from_millis(200)).is_none(),
        "a too-late Join-accept was sent"
    );
}

/// A deterministic fuzz corpus: random datagrams, truncations and bit flips of valid GWMP and
/// link datagrams, valid headers with broken JSON, plus the fuzz crate's seeds and corpus files.
fn garbage(targets: &[SocketAddr]) {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let valid_push = Packet::PushData(PushData {
        token: Token([1, 2]),
        gateway: GatewayEui::new(0xDEAD),
        rxpk: vec![RxPk {
            tmst: 1,
            time: None,
            tmms: None,
            chan: None,
            rfch: None,
            freq_hz: 868_100_000,
            stat: CrcStatus::Ok,
            datr: DataRate::lora(12, 125).unwrap(),
            codr: None,
            rssi: None,
            lsnr: None,
            jver: None,
            rsig: Vec::new(),
            brd: None,
            aesk: None,
            data: join_request(1, 1),
        }],
        stat: None,
    })
    .to_bytes()
    .unwrap();
    let mut corpus: Vec<Vec<u8>> = vec![
        Vec::new(),
        vec![2],
        vec![2, 0, 0, 0],
        vec![2, 0, 0, 2, 1, 2, 3],
        b"\x02\x00\x00\x00AAAAAAAA{\"rxpk\":[{".to_vec(),
        b"\x02\x00\x00\x00AAAAAAAA{\"rxpk\":[{\"data\":\"!!!\"}]}".to_vec(),
        b"\x02\x00\x00\x05AAAAAAAA{\"txpk_ack\":7}".to_vec(),
        vec![0xff; 1500],
        vec![1; 42],
    ];
    for len in 0..valid_push.len() {
        corpus.push(valid_push[..len].to_vec());
    }
    for _ in 0..300 {
        let mut d = valid_push.clone();
        let i = (next() as usize) % d.len();
        d[i] ^= 1 << (next() % 8);
        corpus.push(d);
        let len = (next() % 1300) as usize;
        corpus.push((0..len).map(|_| next() as u8).collect());
    }
    // The fuzz crate's committed seeds and any local corpus (`fuzz/corpus/` is git-ignored).
    for base in ["fuzz/seeds", "fuzz/corpus"] {
        let Ok(dirs) = std::fs::read_dir(workspace_root().join(base)) else {
            continue;
        };
        for d in dirs.flatten() {
            for f in std::fs::read_dir(d.path()).into_iter().flatten().flatten() {
                if let Ok(b) = std::fs::read(f.path()) {
                    if b.len() <= 65_000 {
                        corpus.push(b);
                    }
                }
            }
        }
    }
    for t in targets {
        for d in &corpus {
            let _ = sock.send_to(d, t);
        }
    }
}

/// A join storm through both real servers, for measurement (no timing assertion):
///
/// ```sh
/// cargo test --release -p netserver --test otaa -- --ignored --nocapture join_storm
/// ```
///
/// `NETSERVER_STORM_DEVICES` (default 2000) LoRaWAN 1.0.3 devices each send one Join-request,
/// heard by one gateway, as fast as the gateway socket sends; the test waits for every
/// Join-accept and prints the throughput and the network server's latency histogram.
#[test]
#[ignore = "measurement; run with --ignored --nocapture"]
fn join_storm() {
    let n: u64 = std::env::var("NETSERVER_STORM_DEVICES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let mut csv = String::from("dev_eui,join_eui,mac_version,app_key,nwk_key,home_net_id\n");
    for d in 0..n {
        csv.push_str(&format!(
            "{:016X},{JOIN_EUI:016X},1.0.3,{APP_KEY},,{NET_ID:06X}\n",
            0x1000 + d
        ));
    }
    let s = start_with(&csv, "[gwmp]\nworkers = 2\n", false);
    let ns = s.ns.as_ref().unwrap();
    let m = ns.addr("metrics");
    let gw = Gateway::new(0xAA55_5A00_0000_5707, ns.addr("gwmp")).on_868_1();
    gw.pull_data();
    let frames: Vec<Vec<u8>> = (0..n).map(|d| join_request(0x1000 + d, 7)).collect();

    // The gateway's own socket must hold the burst of PULL_RESPs (and PUSH_ACKs).
    socket2::SockRef::from(&gw.sock)
        .set_recv_buffer_size(16 << 20)
        .unwrap();
    let rx = gw.sock.try_clone().unwrap();
    let counter = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        let mut accepts = 0u64;
        let mut last = Instant::now();
        let deadline = Instant::now() + Duration::from_secs(60);
        while accepts < n && Instant::now() < deadline {
            if let Ok(len) = rx.recv(&mut buf) {
                if let Ok(Packet::PullResp(_)) = Packet::parse(&buf[..len]) {
                    accepts += 1;
                    last = Instant::now();
                }
            }
        }
        (accepts, last)
    });
    let started = Instant::now();
    for (i, phy) in frames.iter().enumerate() {
        let p = Packet::PushData(PushData {
            token: Token([(i >> 8) as u8, i as u8]),
            gateway: gw.eui,
            rxpk: vec![RxPk {
                tmst: (i as u32).wrapping_mul(1000),
                time: None,
                tmms: None,
                chan: Some(0),
                rfch: Some(0),
                freq_hz: 868_100_000,
                stat: CrcStatus::Ok,
                datr: DataRate::lora(7, 125).unwrap(),
                codr: Some(CodingRate::Cr4_5),
                rssi: Some(-90),
                lsnr: Some(7.0),
                jver: None,
                rsig: Vec::new(),
                brd: None,
                aesk: None,
                data: phy.clone(),
            }],
            stat: None,
        });
        gw.send(&p);
    }
    let sent = started.elapsed();
    let (accepts, done) = counter.join().unwrap();
    let took = done - started;
    let (_, text) = http_get(m, "/metrics");
    let interesting: Vec<&str> = text
        .lines()
        .filter(|l| {
            !l.starts_with('#')
                && (l.starts_with("netserver_join_latency_seconds")
                    || l.starts_with("netserver_joins_total")
                    || l.starts_with("netserver_link_requests_total")
                    || l.starts_with("netserver_gwmp_socket_drops")
                    || l.starts_with("netserver_store_commits_total"))
        })
        .collect();
    println!(
        "join storm: {n} Join-requests sent in {:.3} s; {accepts} Join-accepts in {:.3} s = {:.0} joins/s",
        sent.as_secs_f64(),
        took.as_secs_f64(),
        accepts as f64 / took.as_secs_f64()
    );
    for l in interesting {
        println!("  {l}");
    }
    assert_eq!(accepts, n, "every device got its Join-accept");
}

/// US915 through the real binaries: a network server configured with `[network] region =
/// "US915"` and sub-band 2 hears 1.0.3 and 1.1 Join-requests on channel 8 (903.9 MHz, DR3) and
/// answers in RX1 on the 500 kHz downlink channel `923.3 + 0.6 × (8 mod 8)` MHz at DR13
/// (SF7BW500), with a type 1 CFList that enables sub-band 2 (channels 8–15 and 65).
#[test]
fn us915_joins_through_the_binaries_on_the_500_khz_rx1_channel_with_the_sub_band_mask() {
    use protocol::region::{ChannelPlan, Region};
    let s = start_with(
        MANIFEST,
        "[network]\nregion = \"US915\"\nenabled_sub_bands = [2]\n",
        false,
    );
    let ns = s.ns.as_ref().unwrap();
    let (gwmp, m) = (ns.addr("gwmp"), ns.addr("metrics"));
    let mut gw = Gateway::new(0xAA55_5A00_0000_0915, gwmp);
    gw.channel = (8, 903_900_000);
    gw.pull_data();
    let expected_masks = ChannelPlan::with_sub_bands(Region::Us915, &[2])
        .unwrap()
        .cf_list()
        .and_then(|c| c.channel_masks());
    assert_eq!(expected_masks, Some([0xFF00, 0, 0, 0, 0x0002]));
    let mut tmst = 7_000_000u32;
    for (dev, nonce) in [(1u64, 0x0915u16), (3, 0x0916)] {
        tmst = tmst.wrapping_add(50_000_000);
        let token = gw.send_push(&join_request(dev, nonce), tmst, 9.0, -100, CrcStatus::Ok);
        gw.wait_push_ack(token);
        let (token, tx) = gw
            .pull_resp(Duration::from_secs(4))
            .unwrap_or_else(|| panic!("no Join-accept for device {dev}"));
        assert_eq!(
            tx.timing,
            TxTiming::Tmst(tmst.wrapping_add(5_000_000)),
            "RX1 (JoinAcceptDelay1 5 s)"
        );
        assert_eq!(tx.freq_hz, 923_300_000, "US915 RX1 channel 8 mod 8 = 0");
        assert_eq!(tx.datr, DataRate::lora(7, 500).unwrap(), "DR3 → DR13");
        assert_eq!(tx.ipol, Some(true));
        let payload = open_accept(dev, nonce, &tx.data);
        assert_eq!(payload.net_id, NetId::new(NET_ID).unwrap());
        assert_eq!(
            payload.cf_list.and_then(|c| c.channel_masks()),
            expected_masks,
            "the CFList enables sub-band 2 for device {dev}"
        );
        gw.tx_ack(token, None);
    }
    wait_metric(m, &joins("accepted", "rx1"), 2.0);
}
