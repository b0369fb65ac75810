//! LoRaWAN 1.1 Rejoin-requests end to end through the real `joinserver` and `netserver`
//! binaries, with a device built on `protocol` behind a virtual gateway on 127.0.0.1:
//!
//! - types 0, 1 and 2 each give a working new session: the Join-accept (decrypted with JSEncKey,
//!   its MIC over the rejoin type, JoinEUI and RJcount) gives keys the network server uses;
//!   type 0 and 1 a new DevAddr, type 2 the same;
//! - the session the device used keeps working until the first uplink under the new one
//!   (its RekeyInd), then stops;
//! - a replayed Rejoin-request (same RJcount) is refused: type 0/2 by the network server,
//!   type 1 by the join server;
//! - `kill -9` of the network server after a type 0 and of the join server after a type 1 loses
//!   neither RJcount0 nor RJcount1: the replays are still refused after the restarts.

mod common;

use std::path::Path;
use std::time::Duration;

use base64::Engine;
use common::{
    metric, netserver_serve, serve_joinserver, start_joinserver, wait_events, wait_metric, Gateway,
    Proc, UPLINK_MIC,
};
use protocol::data::{DataFrame, FramePayload, FrmPayload, SessionCrypto, Uplink};
use protocol::derive;
use protocol::ids::{DevAddr, DevEui, DevNonce, JoinEui, NetId};
use protocol::join::{
    AnsweredRequest, EncryptedJoinAccept, JoinAcceptEncKey, JoinAcceptMicKey, JoinRequest,
    JoinRootKey, RejoinBody, RejoinMicKey, RejoinRequest,
};
use protocol::keys::{AppKey, KeyCipher, NwkKey, SNwkSIntKey};

const APP_KEY: &str = "2B7E151628AED2A6ABF7158809CF4F3C";
const NWK_KEY: &str = "000102030405060708090A0B0C0D0E0F";
const JOIN_EUI: u64 = 0x70B3_D57E_D000_0001;
const NET_ID: u32 = 0x000013;
const DEV: u64 = 3;
const MANIFEST: &str = "dev_eui,join_eui,mac_version,app_key,nwk_key,home_net_id,owner_token\n\
0000000000000003,70B3D57ED0000001,1.1,2B7E151628AED2A6ABF7158809CF4F3C,000102030405060708090A0B0C0D0E0F,000013,\n";
/// A short de-duplication retention, so that a replay a second later is processed (a copy
/// within the retention would be taken for another gateway's copy of the same frame).
const NS_CONFIG: &str =
    "[gwmp]\nworkers = 2\ndedup_retention_ms = 400\n[data]\ncollect_window_ms = 50\n";

/// The device side of one session: its address, its data-frame crypto and the SNwkSIntKey
/// its type 0 and 2 Rejoin-requests are signed with.
struct Session {
    addr: DevAddr,
    crypto: SessionCrypto,
    s_nwk_s_int_key: KeyCipher<SNwkSIntKey>,
    next_fcnt: u32,
}

fn root_keys() -> (KeyCipher<NwkKey>, KeyCipher<AppKey>) {
    (
        KeyCipher::new(&NWK_KEY.parse::<NwkKey>().unwrap()),
        KeyCipher::new(&APP_KEY.parse::<AppKey>().unwrap()),
    )
}

/// Opens a Join-accept on the device side: NwkKey for a Join-request's, JSEncKey for a
/// Rejoin-request's; the MIC with JSIntKey over the request type, JoinEUI and nonce; the keys
/// from the new JoinNonce and that nonce.
fn open_accept(phy: &[u8], answered: AnsweredRequest) -> Session {
    open_accept_with(phy, answered, root_keys())
}

/// [`open_accept`] under the root keys `(nwk, app)`.
fn open_accept_with(
    phy: &[u8],
    answered: AnsweredRequest,
    (nwk, app): (KeyCipher<NwkKey>, KeyCipher<AppKey>),
) -> Session {
    let js = derive::js_keys(&nwk, DevEui::new(DEV));
    let js_enc = KeyCipher::new(&js.js_enc_key);
    let enc = match answered {
        AnsweredRequest::JoinRequest(_) => JoinAcceptEncKey::NwkKey(&nwk),
        _ => JoinAcceptEncKey::JsEncKey(&js_enc),
    };
    let payload = EncryptedJoinAccept::from_bytes(phy)
        .unwrap()
        .open(
            enc,
            JoinAcceptMicKey::OptNeg {
                js_int_key: &KeyCipher::new(&js.js_int_key),
                join_eui: JoinEui::new(JOIN_EUI),
                answered,
            },
        )
        .unwrap_or_else(|e| panic!("{answered:?}: {e}"));
    let k = derive::session_keys_1_1(
        &nwk,
        &app,
        payload.join_nonce,
        JoinEui::new(JOIN_EUI),
        answered,
    );
    let s_nwk_s_int_key = KeyCipher::new(&k.s_nwk_s_int_key);
    let (net, app_s) = derive::SessionKeys::V1_1(k).into_parts();
    Session {
        addr: payload.dev_addr,
        crypto: SessionCrypto::new(&net, Some(&app_s)),
        s_nwk_s_int_key,
        next_fcnt: 0,
    }
}

fn rejoin(t: u8, count: u16, s: &Session) -> Vec<u8> {
    rejoin_with(t, count, s, &root_keys().0)
}

/// [`rejoin`] by a device whose NwkKey is `nwk` (type 1's JSIntKey comes from it).
fn rejoin_with(t: u8, count: u16, s: &Session, nwk: &KeyCipher<NwkKey>) -> Vec<u8> {
    let dev_eui = DevEui::new(DEV);
    let net_id = NetId::new(NET_ID).unwrap();
    let js_int = KeyCipher::new(&derive::js_keys(nwk, dev_eui).js_int_key);
    let (body, key) = match t {
        0 => (
            RejoinBody::Type0 {
                net_id,
                dev_eui,
                rj_count0: count,
            },
            RejoinMicKey::SNwkSIntKey(&s.s_nwk_s_int_key),
        ),
        2 => (
            RejoinBody::Type2 {
                net_id,
                dev_eui,
                rj_count0: count,
            },
            RejoinMicKey::SNwkSIntKey(&s.s_nwk_s_int_key),
        ),
        _ => (
            RejoinBody::Type1 {
                join_eui: JoinEui::new(JOIN_EUI),
                dev_eui,
                rj_count1: count,
            },
            RejoinMicKey::JsIntKey(&js_int),
        ),
    };
    RejoinRequest::build(body, key).unwrap().to_bytes()
}

/// The test's radio side: one gateway and a running tmst.
struct Radio {
    gw: Gateway,
    tmst: u32,
}

impl Radio {
    /// A gateway of `eui` talking to the network server `ns`.
    fn new(eui: u64, ns: &Proc) -> Self {
        let gw = Gateway::new(eui, ns.addr("gwmp"));
        gw.pull_data();
        Self {
            gw,
            tmst: 1_000_000,
        }
    }

    /// The device joins (DevNonce 1, the first root keys) and sends "A1" with its RekeyInd:
    /// session A.
    fn join(&mut self) -> Session {
        let (nwk, _) = root_keys();
        let jr = JoinRequest::build(
            JoinEui::new(JOIN_EUI),
            DevEui::new(DEV),
            DevNonce(1),
            JoinRootKey::NwkKey(&nwk),
        );
        let accept = self.exchange(&jr.to_bytes(), "the join");
        let mut a = open_accept(&accept, AnsweredRequest::JoinRequest(DevNonce(1)));
        self.uplink(&mut a, "A1", true);
        a
    }

    fn send(&mut self, phy: &[u8]) {
        self.tmst = self.tmst.wrapping_add(10_000_000);
        self.gw.push(phy, self.tmst, 8.0, -90);
    }

    /// Sends `phy` (a Join-request or a Rejoin-request) and returns the Join-accept sent back.
    fn exchange(&mut self, phy: &[u8], what: &str) -> Vec<u8> {
        self.send(phy);
        let (_, tx) = self
            .gw
            .pull_resp(Duration::from_secs(8))
            .unwrap_or_else(|| panic!("no Join-accept for {what}"));
        tx.data
    }

    /// An unconfirmed uplink carrying `text` under `s`; `rekey_ind`: with RekeyInd in FOpts,
    /// and the RekeyConf expected back.
    fn uplink(&mut self, s: &mut Session, text: &str, rekey_ind: bool) {
        let fopts = if rekey_ind { vec![0x0B, 0x01] } else { vec![] };
        self.send(&data_frame(s, text, fopts));
        if rekey_ind {
            let (_, tx) = self
                .gw
                .pull_resp(Duration::from_secs(3))
                .unwrap_or_else(|| panic!("no RekeyConf for {text}"));
            let d = DataFrame::parse(&tx.data).unwrap();
            let d = d
                .open_downlink(&s.crypto, 0, 0)
                .expect("RekeyConf under the new keys");
            assert_eq!(d.fopts, vec![0x0B, 0x01], "RekeyConf");
        }
    }

    /// Sends `phy` and expects no downlink for it.
    fn refused(&mut self, phy: &[u8], what: &str) {
        self.send(phy);
        assert!(
            self.gw.pull_resp(Duration::from_millis(1500)).is_none(),
            "{what}: answered"
        );
    }
}

/// The next unconfirmed data frame of `s` carrying `text` (FPort 2) with `fopts`.
fn data_frame(s: &mut Session, text: &str, fopts: Vec<u8>) -> Vec<u8> {
    let phy = Uplink {
        confirmed: false,
        dev_addr: s.addr,
        fcnt: s.next_fcnt,
        adr: false,
        adr_ack_req: false,
        ack: false,
        class_b: false,
        fopts,
        payload: FramePayload::Application {
            f_port: 2,
            payload: FrmPayload(text.as_bytes().to_vec()),
        },
    }
    .build(&s.crypto, &UPLINK_MIC)
    .unwrap();
    s.next_fcnt += 1;
    phy
}

/// The uplink texts delivered for the device, in order.
fn delivered(events: &Path, n: usize) -> Vec<String> {
    wait_events(events, n)
        .iter()
        .filter(|e| e["type"] == "uplink")
        .map(|e| {
            let b = base64::engine::general_purpose::STANDARD
                .decode(e["data"].as_str().expect("decrypted data"))
                .unwrap();
            String::from_utf8(b).unwrap()
        })
        .collect()
}

fn start_netserver(dir: &Path, js: &Proc, secrets: &Path) -> Proc {
    let mut cmd = netserver_serve(
        &dir.join("ns.toml"),
        &dir.join("ns"),
        &js.addr("link").to_string(),
        secrets,
        &format!("{NET_ID:06X}"),
    );
    cmd.arg("--as-kek")
        .arg(secrets.join("as.kek"))
        .arg("--events")
        .arg(dir.join("events.jsonl"));
    Proc::spawn(cmd, "netserver listening")
}

#[test]
fn rejoins_of_each_type_replays_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let (js_dir, mut js) =
        start_joinserver(dir.path(), MANIFEST, &format!("{NET_ID:06X}"), "warn", None);
    let secrets = js_dir.join("secrets");
    std::fs::write(dir.path().join("ns.toml"), NS_CONFIG).unwrap();
    let events = dir.path().join("events.jsonl");
    let mut ns = start_netserver(dir.path(), &js, &secrets);
    let mut radio = Radio::new(0xAA55_0000_0000_0003, &ns);
    let metrics = |ns: &Proc, sample: &str| metric(ns.addr("metrics"), sample);

    // A join: session A.
    let mut a = radio.join();

    // Type 0 (RJcount0 0) under A: session B, a new DevAddr.
    let rj0 = rejoin(0, 0, &a);
    let accept = radio.exchange(&rj0, "type 0");
    let mut b = open_accept(&accept, AnsweredRequest::Rejoin0 { rj_count0: 0 });
    assert_ne!(b.addr, a.addr, "type 0: a new DevAddr");
    // A keeps working until B is used; B's first uplink (RekeyInd) ends A.
    radio.uplink(&mut a, "A2", false);
    assert_eq!(delivered(&events, 4), ["A1", "A2"]);
    radio.uplink(&mut b, "B1", true);
    assert_eq!(delivered(&events, 5), ["A1", "A2", "B1"]);
    radio.uplink(&mut a, "A3", false);
    wait_metric(
        ns.addr("metrics"),
        "netserver_uplinks_total{result=\"unknown_devaddr\"}",
        1.0,
    );

    // The type 0 replayed (under A, RJcount0 0): refused by the network server, also after a
    // kill -9 (its RJcount0 was stored with the replaced session... which B's use dropped, so
    // the replay fails on the MIC; and under B, RJcount0 must still increase).
    radio.refused(&rj0, "type 0 replayed");
    let rj0_b = rejoin(0, 5, &b);
    let accept = radio.exchange(&rj0_b, "type 0 under B");
    let mut c = open_accept(&accept, AnsweredRequest::Rejoin0 { rj_count0: 5 });
    ns.kill9();
    ns = start_netserver(dir.path(), &js, &secrets);
    radio.gw = Gateway::new(0xAA55_0000_0000_0003, ns.addr("gwmp"));
    radio.gw.pull_data();
    // Still under B (C not used yet): the replay (RJcount0 5) and a smaller one are refused
    // after the restart; B still carries uplinks.
    radio.refused(&rj0_b, "type 0 replayed after kill -9");
    radio.refused(&rejoin(0, 4, &b), "type 0 with a smaller RJcount0");
    wait_metric(
        ns.addr("metrics"),
        "netserver_rejoins_total{reason=\"rj_count0_replayed\",result=\"dropped\",type=\"0\"}",
        2.0,
    );
    radio.uplink(&mut b, "B2", false);
    radio.uplink(&mut c, "C1", true);

    // Type 2 (RJcount0 restarts at 0 in a new session) under C: session D, same DevAddr.
    let rj2 = rejoin(2, 0, &c);
    let accept = radio.exchange(&rj2, "type 2");
    let mut d = open_accept(&accept, AnsweredRequest::Rejoin2 { rj_count0: 0 });
    assert_eq!(d.addr, c.addr, "type 2 keeps the DevAddr");
    radio.uplink(&mut c, "C2", false);
    radio.uplink(&mut d, "D1", true);
    radio.refused(&rj2, "type 2 replayed");

    // Type 1 (RJcount1 1): checked by the join server; session E.
    let rj1 = rejoin(1, 1, &d);
    let accept = radio.exchange(&rj1, "type 1");
    let mut e = open_accept(&accept, AnsweredRequest::Rejoin1 { rj_count1: 1 });
    radio.uplink(&mut e, "E1", true);
    // kill -9 of the join server: RJcount1 1 was committed before its answer left.
    js.kill9();
    js = serve_joinserver(&js_dir, &[], "warn", None);
    drop(ns);
    let ns = start_netserver(dir.path(), &js, &secrets);
    radio.gw = Gateway::new(0xAA55_0000_0000_0003, ns.addr("gwmp"));
    radio.gw.pull_data();
    radio.refused(&rj1, "type 1 replayed after the join server's kill -9");
    wait_metric(
        ns.addr("metrics"),
        "netserver_rejoins_total{reason=\"JoinReqFailed\",result=\"rejected\",type=\"1\"}",
        1.0,
    );
    let accept = radio.exchange(&rejoin(1, 2, &e), "type 1, RJcount1 2");
    let mut f = open_accept(&accept, AnsweredRequest::Rejoin1 { rj_count1: 2 });
    radio.uplink(&mut f, "F1", true);

    assert_eq!(
        delivered(&events, 15),
        ["A1", "A2", "B1", "B2", "C1", "C2", "D1", "E1", "F1"]
    );
    assert!(
        metrics(
            &ns,
            "netserver_rejoins_total{reason=\"rx1\",result=\"accepted\",type=\"1\"}"
        ) >= 1.0
    );
}

/// The operator forces a rejoin (`netserver force-rejoin --dev-eui`): the device's next uplink
/// is answered with ForceRejoinReq (type 2, its DR, retries and period as asked); the device's
/// type 2 Rejoin-request gets a new session, used at once. A JoinEUI filter with a window
/// answers with the spread of due times. The downlink input speaks TLS (`--tls-cert`): the
/// command reaches it over HTTPS (`--downlink-url https://… --ca-file`), refuses a server whose
/// certificate it cannot verify, and plain HTTP still works on loopback.
#[test]
fn an_operator_forced_rejoin_reaches_the_device_and_rekeys_it() {
    let dir = tempfile::tempdir().unwrap();
    let (js_dir, js) =
        start_joinserver(dir.path(), MANIFEST, &format!("{NET_ID:06X}"), "warn", None);
    let secrets = js_dir.join("secrets");
    std::fs::write(dir.path().join("ns.toml"), NS_CONFIG).unwrap();
    let http = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let token = dir.path().join("downlink.token");
    common::write600(&token, "0123456789abcdef0123456789abcdef");
    let (cert, key) = (dir.path().join("tls/ns.crt"), dir.path().join("tls/ns.key"));
    httpsec::tls::ensure_self_signed(
        &cert,
        &key,
        &["localhost".to_owned(), "127.0.0.1".to_owned()],
    )
    .unwrap();
    let mut cmd = netserver_serve(
        &dir.path().join("ns.toml"),
        &dir.path().join("ns"),
        &js.addr("link").to_string(),
        &secrets,
        &format!("{NET_ID:06X}"),
    );
    cmd.arg("--as-kek")
        .arg(secrets.join("as.kek"))
        .arg("--downlink-http")
        .arg(http.to_string())
        .arg("--downlink-token-file")
        .arg(&token)
        .arg("--tls-cert")
        .arg(&cert)
        .arg("--tls-key")
        .arg(&key)
        .arg("--events")
        .arg(dir.path().join("events.jsonl"));
    let ns = Proc::spawn(cmd, "netserver listening");
    let mut radio = Radio::new(0xAA55_0000_0000_0004, &ns);
    let mut a = radio.join();

    let https = format!("https://127.0.0.1:{}", http.port());
    let force_rejoin = |extra: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_netserver"))
            .arg("force-rejoin")
            .arg("--downlink-url")
            .arg(&https)
            .arg("--ca-file")
            .arg(&cert)
            .arg("--token-file")
            .arg(&token)
            .args(extra)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    // Without the token: refused.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_netserver"))
        .args(["force-rejoin", "--all", "--downlink-http"])
        .arg(http.to_string())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"));
    // Over HTTPS without the server's CA: the certificate is not trusted, nothing is asked.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_netserver"))
        .args([
            "force-rejoin",
            "--all",
            "--downlink-url",
            &https,
            "--token-file",
        ])
        .arg(&token)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("certificate"), "{err}");
    // A JoinEUI filter over a window, then an unknown device: the answers say so.
    let ans = force_rejoin(&["--join-eui", "70B3D57ED0000002", "--window-s", "60"]);
    assert_eq!(ans["devices"], 0);
    let ans = force_rejoin(&[
        "--dev-eui",
        "0000000000000009",
        "--dev-eui",
        "0000000000000003",
        "--data-rate",
        "3",
        "--max-retries",
        "2",
        "--period",
        "1",
    ]);
    assert_eq!(ans["ok"], true);
    assert_eq!(ans["devices"], 1);
    assert_eq!(ans["unknown"][0], "0000000000000009");

    // The next uplink gets ForceRejoinReq.
    let phy = data_frame(&mut a, "A2", vec![]);
    radio.send(&phy);
    let (_, tx) = radio
        .gw
        .pull_resp(Duration::from_secs(3))
        .expect("a downlink with ForceRejoinReq");
    let d = DataFrame::parse(&tx.data)
        .unwrap()
        .open_downlink(&a.crypto, 1, 0)
        .expect("under the session's keys, NFCntDown 1");
    let cmds = protocol::mac::parse(protocol::data::Direction::Downlink, &d.fopts).unwrap();
    assert_eq!(
        cmds,
        vec![protocol::mac::MacCommand::ForceRejoinReq {
            period: 1,
            max_retries: 2,
            rejoin_type: 2,
            data_rate: 3
        }]
    );
    // The device obeys: a type 2 rejoin, a new session with the same DevAddr.
    let accept = radio.exchange(&rejoin(2, 0, &a), "the forced type 2");
    let mut b = open_accept(&accept, AnsweredRequest::Rejoin2 { rj_count0: 0 });
    assert_eq!(b.addr, a.addr);
    radio.uplink(&mut b, "B1", true);
    assert_eq!(
        delivered(&dir.path().join("events.jsonl"), 5),
        ["A1", "A2", "B1"]
    );
}

/// Root-key rotation end to end through the real binaries: the operator replaces the device's
/// root keys (`PUT /api/v1/devices/{dev_eui}/root-keys`); a type 1 Rejoin-request under the old
/// keys is refused, one under the new keys gives a new session; its first uplink (RekeyInd) is
/// reported by the network server to the join server (`SessionInUseReq`). The join server's
/// audit log ties the three together: `GET /api/v1/audit?refers_to=<rotation>` lists the
/// rotation, the rejoin that put the new keys into use, and the first uplink under them.
#[test]
fn a_root_key_rotation_is_audited_with_its_rejoin_and_first_uplink() {
    const NEW_APP: &str = "00112233445566778899AABBCCDDEEFF";
    const NEW_NWK: &str = "F0E0D0C0B0A090807060504030201000";
    let dir = tempfile::tempdir().unwrap();
    let js_dir = dir.path().join("js");
    let js_cli = |args: &[&str]| {
        common::run_ok(
            std::process::Command::new(common::joinserver_bin())
                .args(args)
                .arg("--data-dir")
                .arg(&js_dir),
        )
    };
    js_cli(&["init"]);
    common::add_peer(&js_dir, &format!("{NET_ID:06X}"));
    std::fs::write(dir.path().join("devices.csv"), MANIFEST).unwrap();
    common::run_ok(
        std::process::Command::new(common::joinserver_bin())
            .args(["devices", "import", "--data-dir"])
            .arg(&js_dir)
            .arg(dir.path().join("devices.csv")),
    );
    let admin = js_cli(&["api-keys", "create", "--role", "admin", "--name", "ops"]);
    let auth = format!("Bearer {}", String::from_utf8(admin.stdout).unwrap().trim());
    let js = serve_joinserver(&js_dir, &["--api-listen", "127.0.0.1:0"], "warn", None);
    let api = |method: &str, path: &str, body: &str| {
        let (st, text) = common::http(
            js.addr("api"),
            method,
            path,
            &[
                ("Authorization", &auth),
                ("Content-Type", "application/json"),
            ],
            body.as_bytes(),
        );
        (
            st,
            serde_json::from_str::<serde_json::Value>(&text).unwrap_or_default(),
        )
    };
    let secrets = js_dir.join("secrets");
    std::fs::write(dir.path().join("ns.toml"), NS_CONFIG).unwrap();
    let ns = start_netserver(dir.path(), &js, &secrets);
    let mut radio = Radio::new(0xAA55_0000_0000_0005, &ns);

    // Session A under the first keys.
    let a = radio.join();

    // The rotation.
    let (st, v) = api(
        "PUT",
        &format!("/api/v1/devices/{DEV:016X}/root-keys"),
        &format!(r#"{{"app_key":"{NEW_APP}","nwk_key":"{NEW_NWK}"}}"#),
    );
    assert_eq!(st, 200, "{v}");
    let (_, v) = api("GET", "/api/v1/audit?action=root_key_rotation", "");
    let rotation = v["records"][0]["seq"]
        .as_i64()
        .expect("the rotation is audited");

    // A type 1 under the old keys: refused (its MIC is under the old JSIntKey).
    radio.refused(&rejoin(1, 1, &a), "type 1 under the old keys");
    // Under the new keys: session B, whose first uplink (RekeyInd) is reported.
    let new = (
        KeyCipher::new(&NEW_NWK.parse::<NwkKey>().unwrap()),
        KeyCipher::new(&NEW_APP.parse::<AppKey>().unwrap()),
    );
    let accept = radio.exchange(&rejoin_with(1, 0, &a, &new.0), "type 1 under the new keys");
    let mut b = open_accept_with(&accept, AnsweredRequest::Rejoin1 { rj_count1: 0 }, new);
    radio.uplink(&mut b, "B1", true);
    radio.uplink(&mut b, "B2", false);
    assert_eq!(
        delivered(&dir.path().join("events.jsonl"), 5),
        ["A1", "B1", "B2"]
    );
    wait_metric(
        ns.addr("metrics"),
        "netserver_key_use_reports_total{result=\"reported\"}",
        1.0,
    );

    let (st, v) = api("GET", &format!("/api/v1/audit?refers_to={rotation}"), "");
    assert_eq!(st, 200, "{v}");
    let records = v["records"].as_array().unwrap();
    let trail: Vec<(&str, Option<i64>)> = records
        .iter()
        .map(|r| (r["action"].as_str().unwrap(), r["refers_to"].as_i64()))
        .collect();
    assert_eq!(
        trail,
        [
            ("root_key_rotation", None),
            ("root_keys_join", Some(rotation)),
            ("root_keys_in_use", Some(rotation)),
        ],
        "{v}"
    );
    let detail = |i: usize| records[i]["detail"].as_str().unwrap();
    assert!(detail(1).contains("rejoin type 1"), "{}", detail(1));
    assert!(
        detail(2).contains(&format!("DevAddr {}", b.addr)) && detail(2).contains("FCntUp 0"),
        "{}",
        detail(2)
    );
    for r in &records[1..] {
        assert_eq!(r["actor"], format!("ns:{NET_ID:06X}"));
        assert_eq!(r["dev_eui"], format!("{DEV:016X}"));
    }
}
