//! After a real OTAA join (the real `joinserver` and `netserver` binaries), a LoRaWAN 1.0.3 and
//! a 1.1 device send unconfirmed and confirmed uplinks with the session keys they derived
//! themselves from the Join-accept: the events carry the right plaintext (the network server
//! opens the AppSKey envelope with the join server's `as.kek`), the confirmed ones are ACKed
//! with a MIC valid under the device's keys (1.1: with ConfFCnt), and the join events are there.

mod common;

use std::time::Duration;

use base64::Engine;
use common::{
    netserver_serve, peer_token, start_joinserver_with, wait_events, Gateway, Proc, UPLINK_MIC,
};
use protocol::data::{DataFrame, FramePayload, FrmPayload, SessionCrypto, Uplink, UplinkMicParams};
use protocol::derive;
use protocol::gwmp::{DataRate, TxPk, TxTiming};
use protocol::ids::{DevAddr, DevEui, DevNonce, JoinEui, NetId};
use protocol::join::{
    AnsweredRequest, EncryptedJoinAccept, JoinAcceptEncKey, JoinAcceptMicKey, JoinRequest,
    JoinRootKey,
};
use protocol::keys::{AppKey, KeyCipher, NwkKey};
use serde_json::Value;

const APP_KEY: &str = "2B7E151628AED2A6ABF7158809CF4F3C";
const NWK_KEY: &str = "000102030405060708090A0B0C0D0E0F";
const JOIN_EUI: u64 = 0x70B3_D57E_D000_0001;
const NET_ID: u32 = 0x000013;
/// Both devices are homed in this network's NetID (the join server refuses unclaimed devices).
const MANIFEST: &str = "dev_eui,join_eui,mac_version,app_key,nwk_key,home_net_id,owner_token\n\
0000000000000001,70B3D57ED0000001,1.0.3,2B7E151628AED2A6ABF7158809CF4F3C,,000013,\n\
0000000000000003,70B3D57ED0000001,1.1,2B7E151628AED2A6ABF7158809CF4F3C,000102030405060708090A0B0C0D0E0F,000013,\n";

/// Joins `dev` and returns its DevAddr and session crypto, derived on the device side; `rx1`
/// checks the Join-accept's radio.
fn join(gw: &Gateway, dev: u64, tmst: u32, rx1: impl Fn(&TxPk)) -> (DevAddr, SessionCrypto) {
    let app = KeyCipher::new(&APP_KEY.parse::<AppKey>().unwrap());
    let nwk = KeyCipher::new(&NWK_KEY.parse::<NwkKey>().unwrap());
    let nonce = DevNonce(7);
    let root = if dev == 3 {
        JoinRootKey::NwkKey(&nwk)
    } else {
        JoinRootKey::AppKey(&app)
    };
    let req = JoinRequest::build(JoinEui::new(JOIN_EUI), DevEui::new(dev), nonce, root)
        .to_bytes()
        .to_vec();
    gw.push(&req, tmst, 8.0, -90);
    let (_, tx) = gw
        .pull_resp(Duration::from_secs(8))
        .unwrap_or_else(|| panic!("no Join-accept for {dev}"));
    rx1(&tx);
    let accept = EncryptedJoinAccept::from_bytes(&tx.data).unwrap();
    if dev == 3 {
        let js = derive::js_keys(&nwk, DevEui::new(dev));
        let d = accept.decrypt(JoinAcceptEncKey::NwkKey(&nwk));
        d.verify_mic(JoinAcceptMicKey::OptNeg {
            js_int_key: &KeyCipher::new(&js.js_int_key),
            join_eui: JoinEui::new(JOIN_EUI),
            answered: AnsweredRequest::JoinRequest(nonce),
        })
        .unwrap();
        let k = derive::session_keys_1_1(
            &nwk,
            &app,
            d.payload.join_nonce,
            JoinEui::new(JOIN_EUI),
            AnsweredRequest::JoinRequest(nonce),
        );
        let (net, app_s) = derive::SessionKeys::V1_1(k).into_parts();
        (d.payload.dev_addr, SessionCrypto::new(&net, Some(&app_s)))
    } else {
        let p = accept
            .open(
                JoinAcceptEncKey::AppKey(&app),
                JoinAcceptMicKey::Legacy(JoinRootKey::AppKey(&app)),
            )
            .unwrap();
        let k = derive::session_keys_1_0(&app, p.join_nonce, NetId::new(NET_ID).unwrap(), nonce);
        let (net, app_s) = derive::SessionKeys::V1_0(k).into_parts();
        (p.dev_addr, SessionCrypto::new(&net, Some(&app_s)))
    }
}

/// Where the tests' gateway hears its devices and where RX1 must answer, per region.
struct Radio {
    /// `[network]` settings of the network server (empty: the EU868 default).
    config: &'static str,
    /// The reception's `chan` and frequency (Hz); its data rate is SF7BW125.
    channel: (u8, u32),
    /// TxDr and TxCh of the 1.1 uplink MIC: the region's index of SF7BW125 and of the channel.
    mic: UplinkMicParams,
    /// RX1: frequency (Hz) and data rate.
    rx1: (u32, DataRate),
}

/// EU868 as the other tests use it: channel 1, 868.3 MHz, DR5; RX1 on the same.
const EU868: Radio = Radio {
    config: "",
    channel: (1, 868_300_000),
    mic: UPLINK_MIC,
    rx1: (
        868_300_000,
        DataRate::Lora {
            spreading_factor: 7,
            bandwidth_khz: 125,
        },
    ),
};

fn uplink(
    c: &SessionCrypto,
    mic: &UplinkMicParams,
    addr: DevAddr,
    fcnt: u32,
    confirmed: bool,
    data: &[u8],
) -> Vec<u8> {
    uplink_with(c, mic, addr, fcnt, confirmed, Vec::new(), data)
}

fn uplink_with(
    c: &SessionCrypto,
    mic: &UplinkMicParams,
    addr: DevAddr,
    fcnt: u32,
    confirmed: bool,
    fopts: Vec<u8>,
    data: &[u8],
) -> Vec<u8> {
    Uplink {
        confirmed,
        dev_addr: addr,
        fcnt,
        adr: false,
        adr_ack_req: false,
        ack: false,
        class_b: false,
        fopts,
        payload: FramePayload::Application {
            f_port: 2,
            payload: FrmPayload(data.to_vec()),
        },
    }
    .build(c, mic)
    .unwrap()
}

/// How the network server reaches the join server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    /// Our UDP link (`[join_server]`).
    Link,
    /// LoRaWAN Backend Interfaces over HTTPS (`[[join_servers]]` with the join server's
    /// listener as `url`, its certificate as `ca_file`, a bearer token from `joinserver peers
    /// token`), the link pointing nowhere.
    Https,
}

#[test]
fn uplinks_after_a_real_join() {
    uplinks_after_a_real_join_in(&EU868, Transport::Link);
}

/// The same joins and uplinks with the join server reached over Backend Interfaces (HTTPS).
#[test]
fn uplinks_after_a_real_join_over_backend_interfaces() {
    uplinks_after_a_real_join_in(&EU868, Transport::Https);
}

/// The same through the real binaries in US915 and AU915 (sub-band 2: channel 8, RX1 on the
/// 500 kHz channel 923.3 + 0.6 × (8 mod 8) MHz at DR13) and AS923-1 (channel 0, 923.2 MHz; RX1
/// on the uplink channel at DR5, the boot dwell time allowing it): the Join-accepts, RekeyConf
/// and ACKs go out on the region's RX1 radio, and the 1.1 MICs use its TxDr and TxCh.
#[test]
fn uplinks_after_a_real_join_in_us915_au915_and_as923() {
    let bw500 = DataRate::Lora {
        spreading_factor: 7,
        bandwidth_khz: 500,
    };
    for radio in [
        Radio {
            config: "[network]\nregion = \"US915\"\nenabled_sub_bands = [2]\n",
            channel: (8, 903_900_000),
            mic: UplinkMicParams {
                conf_fcnt: 0,
                tx_dr: 3,
                tx_ch: 8,
            },
            rx1: (923_300_000, bw500),
        },
        Radio {
            config: "[network]\nregion = \"AU915\"\nenabled_sub_bands = [2]\n",
            channel: (8, 916_800_000),
            mic: UplinkMicParams {
                conf_fcnt: 0,
                tx_dr: 5,
                tx_ch: 8,
            },
            rx1: (923_300_000, bw500),
        },
        Radio {
            config: "[network]\nregion = \"AS923-1\"\n",
            channel: (0, 923_200_000),
            mic: UplinkMicParams {
                conf_fcnt: 0,
                tx_dr: 5,
                tx_ch: 0,
            },
            rx1: (
                923_200_000,
                DataRate::Lora {
                    spreading_factor: 7,
                    bandwidth_khz: 125,
                },
            ),
        },
    ] {
        uplinks_after_a_real_join_in(&radio, Transport::Link);
    }
}

fn uplinks_after_a_real_join_in(radio: &Radio, transport: Transport) {
    let dir = tempfile::tempdir().unwrap();
    let net_id = format!("{NET_ID:06X}");
    let (js_dir, js) = start_joinserver_with(
        dir.path(),
        MANIFEST,
        &net_id,
        &["--bi-listen", "127.0.0.1:0"],
        ("warn", None),
    );
    let secrets = js_dir.join("secrets");
    let config = dir.path().join("ns.toml");
    let (link, join_servers) = match transport {
        Transport::Link => (js.addr("link").to_string(), String::new()),
        Transport::Https => {
            let token = dir.path().join("js-token");
            peer_token(&js_dir, &net_id, &token);
            // Nothing answers there: every join must go over HTTPS.
            let nowhere = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            let routes = format!(
                "[[join_servers]]\njoin_eui_prefix = \"70b3d57ed0000000/40\"\n\
                 url = \"https://127.0.0.1:{}/\"\nca_file = \"{}\"\n\
                 authorization_file = \"{}\"\n",
                js.addr("bi").port(),
                js_dir.join("tls/api.crt").display(),
                token.display()
            );
            (nowhere.local_addr().unwrap().to_string(), routes)
        }
    };
    std::fs::write(
        &config,
        format!(
            "[gwmp]\nworkers = 2\n[data]\ncollect_window_ms = 100\n{}{join_servers}",
            radio.config
        ),
    )
    .unwrap();
    let events_path = dir.path().join("events.jsonl");
    let mut cmd = netserver_serve(&config, &dir.path().join("ns"), &link, &secrets, &net_id);
    cmd.arg("--as-kek")
        .arg(secrets.join("as.kek"))
        .arg("--events")
        .arg(&events_path);
    let ns = Proc::spawn(cmd, "netserver listening");
    let mut gw = Gateway::new(0xAA55_0000_0000_0001, ns.addr("gwmp"));
    gw.channel = radio.channel;
    gw.pull_data();
    let rx1 = |tx: &TxPk| {
        assert_eq!(
            (tx.freq_hz, tx.datr),
            radio.rx1,
            "RX1 radio ({})",
            radio.config
        );
    };

    let (a10, c10) = join(&gw, 1, 1_000_000, rx1);
    let (a11, c11) = join(&gw, 3, 50_000_000, rx1);
    let mic = &radio.mic;
    let b64 = |v: &Value| {
        base64::engine::general_purpose::STANDARD
            .decode(v.as_str().expect("decrypted data"))
            .unwrap()
    };
    let mut tmst = 100_000_000u32;
    let mut firsts = Vec::new();
    for (dev, addr, c) in [
        ("0000000000000001", a10, &c10),
        ("0000000000000003", a11, &c11),
    ] {
        let is_1_1 = dev.ends_with('3');
        // Unconfirmed, then confirmed with FCnt 3: both delivered in clear, the second ACKed.
        let first = if is_1_1 {
            // 1.1: a frame without RekeyInd before the session is confirmed is discarded; the
            // next one carries RekeyInd (FOpts) and gets RekeyConf.
            gw.push(
                &uplink(c, mic, addr, 0, false, b"too early"),
                tmst,
                8.0,
                -90,
            );
            tmst += 10_000_000;
            common::wait_metric(
                ns.addr("metrics"),
                "netserver_uplinks_total{result=\"session_unconfirmed\"}",
                1.0,
            );
            let rekey_ind = vec![0x0B, 0x01];
            gw.push(
                &uplink_with(c, mic, addr, 1, false, rekey_ind, b"reading 17.5"),
                tmst,
                8.0,
                -90,
            );
            let (_, tx) = gw.pull_resp(Duration::from_secs(3)).expect("RekeyConf");
            rx1(&tx);
            let d = DataFrame::parse(&tx.data)
                .unwrap()
                .open_downlink(c, 0, 0)
                .unwrap();
            assert_eq!(
                d.fopts,
                vec![0x0B, 0x01],
                "RekeyConf, serv minor 1 (decrypted)"
            );
            1
        } else {
            gw.push(
                &uplink(c, mic, addr, 0, false, b"reading 17.5"),
                tmst,
                8.0,
                -90,
            );
            0
        };
        firsts.push(first);
        tmst += 10_000_000;
        gw.push(&uplink(c, mic, addr, 3, true, b"alarm"), tmst, 8.0, -90);
        let (_, tx) = gw.pull_resp(Duration::from_secs(3)).expect("an ACK");
        rx1(&tx);
        assert_eq!(tx.timing, TxTiming::Tmst(tmst + 1_000_000), "RX1 delay 1 s");
        let f = DataFrame::parse(&tx.data).unwrap();
        // 1.0: FCntDown 0. 1.1: NFCntDown 1 (after the RekeyConf), with ConfFCnt = 3 in the
        // MIC (0 fails).
        let down = u32::from(is_1_1);
        if is_1_1 {
            assert!(f.open_downlink(c, down, 0).is_err(), "ConfFCnt ignored");
        }
        let d = f
            .open_downlink(c, down, 3)
            .expect("ACK MIC valid under the device's keys");
        assert!(d.ack);
        tmst += 10_000_000;
    }
    let all = wait_events(&events_path, 6);
    let joins: Vec<&Value> = all.iter().filter(|e| e["type"] == "join").collect();
    assert_eq!(joins.len(), 2, "join events");
    assert_eq!(joins[1]["mac_version"], "1.1");
    for (dev, first) in ["0000000000000001", "0000000000000003"]
        .into_iter()
        .zip(firsts)
    {
        let ups: Vec<&Value> = all
            .iter()
            .filter(|e| e["type"] == "uplink" && e["dev_eui"] == dev)
            .collect();
        assert_eq!(ups.len(), 2, "{dev}");
        assert_eq!(
            (ups[0]["f_cnt"].as_u64(), ups[1]["f_cnt"].as_u64()),
            (Some(first), Some(3))
        );
        assert_eq!(b64(&ups[0]["data"]), b"reading 17.5");
        assert_eq!(b64(&ups[1]["data"]), b"alarm");
        assert_eq!(ups[1]["confirmed"], true);
    }
}
