//! Every entry of `tests/vectors/data_frames.json`: full data frames (parse, MIC, decryption,
//! rebuild), raw MIC and encryption primitives, and the FCnt-inference table.
//!
//! Quirks of the source tests (protocol-notes E.12, flagged in the JSON notes) are handled
//! explicitly, each where it applies.

use protocol::data::{
    downlink_b0, downlink_mic, encrypt_fopts, encrypt_frm_payload, fopts_a_block,
    frm_payload_a_block, uplink_b0, uplink_b1, uplink_mic, DataFrame, Direction, FOptsCounter,
    FramePayload, NetworkSessionCrypto, NetworkSessionKeys, OpenError, PayloadCipher,
    SessionCrypto, UplinkMicParams,
};
use protocol::fcnt::infer_fcnt;
use protocol::ids::DevAddr;
use protocol::keys::{AppSKey, FNwkSIntKey, Mic, NwkSEncKey, NwkSKey, SNwkSIntKey};
use protocol::mac;
use serde_json::Value;

fn load() -> Value {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/vectors/data_frames.json"
    ))
    .expect("read data_frames.json");
    serde_json::from_str(&text).expect("parse data_frames.json")
}

fn hex(v: &Value) -> Vec<u8> {
    hex::decode(v.as_str().expect("hex string")).expect("valid hex")
}

fn key16(v: &Value) -> [u8; 16] {
    hex(v).try_into().expect("16-byte key")
}

fn dev_addr_wire(e: &Value) -> DevAddr {
    DevAddr::from_le_bytes(hex(&e["dev_addr_wire_hex"]).try_into().expect("4 bytes"))
}

fn u32_of(v: &Value) -> u32 {
    u32::try_from(v.as_u64().expect("integer")).expect("u32")
}

fn mic_of(v: &Value) -> Mic {
    Mic(hex(v).try_into().expect("4-byte MIC"))
}

/// A key from `keys`, or a filler where the source gives none (the value then does not matter
/// for what the entry checks: the test only compares what the source asserts).
fn key_or_filler(keys: &Value, name: &str) -> [u8; 16] {
    keys.get(name).map(key16).unwrap_or([0xEE; 16])
}

fn session_of(e: &Value) -> SessionCrypto {
    let keys = &e["keys"];
    let app = keys.get("app_s_key").map(|k| AppSKey::new(key16(k)));
    let network = match e["lorawan_version"].as_str() {
        Some("1.0") => NetworkSessionKeys::V1_0 {
            nwk_s_key: NwkSKey::new(key16(&keys["nwk_s_key"])),
        },
        Some("1.1") => NetworkSessionKeys::V1_1 {
            f_nwk_s_int_key: FNwkSIntKey::new(key_or_filler(keys, "f_nwk_s_int_key")),
            s_nwk_s_int_key: SNwkSIntKey::new(key16(&keys["s_nwk_s_int_key"])),
            nwk_s_enc_key: NwkSEncKey::new(key_or_filler(keys, "nwk_s_enc_key")),
        },
        other => panic!("{}: unknown lorawan_version {other:?}", e["id"]),
    };
    SessionCrypto::new(&network, app.as_ref())
}

fn uplink_params(e: &Value) -> UplinkMicParams {
    match e.get("mic_params") {
        // Pass ConfFCnt as the source passed it, even when ACK is clear (trap E.5).
        Some(p) => UplinkMicParams {
            conf_fcnt: u32_of(&p["conf_fcnt_passed"]),
            tx_dr: u8::try_from(p["tx_dr"].as_u64().expect("tx_dr")).expect("u8"),
            tx_ch: u8::try_from(p["tx_ch"].as_u64().expect("tx_ch")).expect("u8"),
        },
        None => UplinkMicParams::default(),
    }
}

fn conf_fcnt_passed(e: &Value) -> u32 {
    e.get("mic_params")
        .map(|p| u32_of(&p["conf_fcnt_passed"]))
        .unwrap_or(0)
}

fn check_full_frame(e: &Value) {
    let id = e["id"].as_str().expect("id");
    let phy = hex(&e["phy_payload_hex"]);
    let f = DataFrame::parse(&phy).unwrap_or_else(|err| panic!("{id}: parse: {err}"));

    // Structure.
    assert_eq!(f.mhdr().0, hex(&e["mhdr_hex"])[0], "{id}: MHDR");
    assert_eq!(format!("{:?}", f.mhdr().mtype()), e["mtype"], "{id}: MType");
    let uplink = e["uplink"].as_bool().expect("uplink");
    assert_eq!(
        f.direction() == Direction::Uplink,
        uplink,
        "{id}: direction"
    );
    assert_eq!(f.dev_addr(), dev_addr_wire(e), "{id}: DevAddr");
    assert_eq!(
        f.dev_addr().to_string().to_lowercase(),
        e["dev_addr"].as_str().expect("dev_addr").to_lowercase(),
        "{id}: DevAddr display"
    );
    assert_eq!(f.fctrl_byte(), hex(&e["fctrl_hex"])[0], "{id}: FCtrl");
    let d = &e["fctrl_decoded"];
    match f.fctrl() {
        protocol::data::FCtrl::Uplink(c) => {
            assert_eq!(Some(c.adr), d["adr"].as_bool(), "{id}: ADR");
            assert_eq!(Some(c.adr_ack_req), d["adr_ack_req"].as_bool(), "{id}");
            assert_eq!(Some(c.ack), d["ack"].as_bool(), "{id}: ACK");
            assert_eq!(Some(c.class_b), d["class_b"].as_bool(), "{id}: ClassB");
            assert_eq!(
                Some(u64::from(c.f_opts_len)),
                d["fopts_len"].as_u64(),
                "{id}"
            );
        }
        protocol::data::FCtrl::Downlink(c) => {
            assert_eq!(Some(c.adr), d["adr"].as_bool(), "{id}: ADR");
            assert_eq!(Some(c.ack), d["ack"].as_bool(), "{id}: ACK");
            assert_eq!(Some(c.f_pending), d["fpending"].as_bool(), "{id}: FPending");
            let rfu = f.fctrl_byte() & 0x40 != 0;
            assert_eq!(Some(rfu), d["rfu"].as_bool(), "{id}: RFU");
            assert_eq!(
                Some(u64::from(c.f_opts_len)),
                d["fopts_len"].as_u64(),
                "{id}"
            );
        }
    }
    assert_eq!(
        f.fcnt16().to_le_bytes().to_vec(),
        hex(&e["fcnt_wire_hex"]),
        "{id}: FCnt"
    );
    let fcnt = u32_of(&e["fcnt"]);
    assert_eq!(fcnt as u16, f.fcnt16(), "{id}: FCnt LSB");
    assert_eq!(f.fopts_on_air(), hex(&e["fopts_on_air_hex"]), "{id}: FOpts");
    assert_eq!(
        f.f_port().map(u64::from),
        e["fport"].as_u64(),
        "{id}: FPort"
    );
    assert_eq!(
        f.frm_payload().as_bytes(),
        hex(&e["frm_payload_on_air_hex"]),
        "{id}: FRMPayload"
    );
    assert_eq!(f.msg(), hex(&e["msg_hex"]), "{id}: msg");
    assert_eq!(f.mic(), mic_of(&e["mic_hex"]), "{id}: MIC on air");

    // MIC blocks.
    let msg_len = u8::try_from(f.msg().len()).expect("msg fits B0");
    let ack = f.fctrl().ack();
    let p = e.get("mic_params");
    let conf_used = p.map(|p| u32_of(&p["conf_fcnt_used"]) as u16).unwrap_or(0);
    assert_eq!(
        conf_used != 0,
        ack && conf_fcnt_passed(e) != 0,
        "{id}: ConfFCnt used iff ACK"
    );
    let b0 = if uplink {
        uplink_b0(f.dev_addr(), fcnt, msg_len)
    } else {
        downlink_b0(conf_used, f.dev_addr(), fcnt, msg_len)
    };
    assert_eq!(b0.to_vec(), hex(&e["mic_blocks"]["b0_hex"]), "{id}: B0");
    if let Some(b1) = e["mic_blocks"].get("b1_hex") {
        let p = p.expect("mic_params with B1");
        let b = uplink_b1(
            conf_used,
            u8::try_from(p["tx_dr"].as_u64().expect("tx_dr")).expect("u8"),
            u8::try_from(p["tx_ch"].as_u64().expect("tx_ch")).expect("u8"),
            f.dev_addr(),
            fcnt,
            msg_len,
        );
        assert_eq!(b.to_vec(), hex(b1), "{id}: B1");
    }
    if let Some(a) = e.get("fopts_a_block_hex") {
        let counter = match f.f_port() {
            Some(p) if p > 0 && !uplink => FOptsCounter::AFCntDown,
            _ => FOptsCounter::NetworkOrUp,
        };
        let dir = f.direction();
        assert_eq!(
            fopts_a_block(counter, dir, f.dev_addr(), fcnt).to_vec(),
            hex(a),
            "{id}: FOpts A block"
        );
    }
    if let Some(blocks) = e.get("a_blocks_hex").and_then(Value::as_array) {
        assert_eq!(
            blocks.len(),
            f.frm_payload().as_bytes().len().div_ceil(16),
            "{id}"
        );
        for (i, a) in blocks.iter().enumerate() {
            let i = u8::try_from(i + 1).expect("block index");
            let want = frm_payload_a_block(f.direction(), f.dev_addr(), fcnt, i);
            assert_eq!(want.to_vec(), hex(a), "{id}: A_{i}");
        }
    }

    // MIC.
    let session = session_of(e);
    let params = uplink_params(e);
    let conf = conf_fcnt_passed(e);
    let expected = if uplink {
        f.expected_uplink_mic(&session.network, fcnt, &params)
    } else {
        f.expected_downlink_mic(&session.network, fcnt, conf)
    };
    let opened = if uplink {
        f.open_uplink(&session, fcnt, &params)
            .map(|u| (u.fopts, u.payload))
    } else {
        f.open_downlink(&session, fcnt, conf)
            .map(|d| (d.fopts, d.payload))
    };
    if e["expected_mic_valid"] == Value::Bool(false) {
        assert_eq!(
            expected,
            mic_of(&e["computed_mic_hex"]),
            "{id}: computed MIC"
        );
        assert_eq!(opened, Err(OpenError::MicMismatch), "{id}: must be refused");
        assert_eq!(OpenError::MicMismatch.kind(), "mic_mismatch");
        return;
    }
    assert_eq!(e["expected_mic_valid"], Value::Bool(true), "{id}");
    assert_eq!(expected, f.mic(), "{id}: MIC");
    let (fopts, payload) = opened.unwrap_or_else(|err| panic!("{id}: open: {err}"));

    if let Some(p) = e.get("mic_params") {
        // ConfFCnt is used only with ACK: the value actually used gives the same MIC.
        let used = UplinkMicParams {
            conf_fcnt: u32_of(&p["conf_fcnt_used"]),
            ..params
        };
        let again = if uplink {
            f.expected_uplink_mic(&session.network, fcnt, &used)
        } else {
            f.expected_downlink_mic(&session.network, fcnt, used.conf_fcnt)
        };
        assert_eq!(again, f.mic(), "{id}: MIC with conf_fcnt_used");
    }
    if let Some(m) = e["mic_blocks"].get("mic_if_connected_to_1_0_ns_hex") {
        // A 1.1 device on a 1.0 network: MIC = cmacF[0..3].
        let f_key = NwkSKey::new(key16(&e["keys"]["f_nwk_s_int_key"]));
        let nwk10 = NetworkSessionCrypto::new(&NetworkSessionKeys::V1_0 { nwk_s_key: f_key });
        assert_eq!(
            f.expected_uplink_mic(&nwk10, fcnt, &params),
            mic_of(m),
            "{id}: 1.0-NS MIC"
        );
    }

    // FOpts.
    match e.get("fopts_encrypted").and_then(Value::as_bool) {
        Some(true) => {
            assert_eq!(
                fopts,
                hex(&e["fopts_plaintext_hex"]),
                "{id}: FOpts plaintext"
            );
        }
        Some(false) if e["lorawan_version"] == "1.1" => {
            // E.12: brocaar's "AFCntDown encryption flag" vector leaves FOpts unencrypted on
            // air, so decrypting them is not meaningful; the entry is a MIC vector only.
            assert_eq!(id, "data-brocaar-11-down-fport1-plain-fopts");
        }
        _ => assert_eq!(fopts, f.fopts_on_air(), "{id}: 1.0 FOpts are plain"),
    }

    // MAC commands in plaintext FOpts parse (every one here is a known command).
    if id != "data-brocaar-11-down-fport1-plain-fopts" && !fopts.is_empty() {
        let cmds = mac::parse(f.direction(), &fopts)
            .unwrap_or_else(|err| panic!("{id}: FOpts MAC commands: {err}"));
        assert!(!cmds.is_empty(), "{id}");
    }

    // FRMPayload.
    if let Some(plain) = e.get("frm_payload_plaintext_hex") {
        let plain = hex(plain);
        match e["frm_payload_key_role"].as_str() {
            Some("AppSKey") => assert_eq!(
                payload,
                FramePayload::Application {
                    f_port: u8::try_from(e["fport"].as_u64().expect("fport")).expect("u8"),
                    payload: protocol::data::FrmPayload(plain),
                },
                "{id}: application payload"
            ),
            Some("NwkSKey") => {
                mac::parse(f.direction(), &plain)
                    .unwrap_or_else(|err| panic!("{id}: FPort 0 MAC commands: {err}"));
                assert_eq!(
                    payload,
                    FramePayload::MacCommands(protocol::data::FrmPayload(plain)),
                    "{id}: FPort 0 payload"
                )
            }
            Some("override (see note)") => {
                // E.12: brocaar decrypts this 1.1 FPort-0 payload with the AppSKey value.
                let k = AppSKey::new(key16(&e["keys"]["frm_key_override"]));
                let mut data = f.frm_payload().as_bytes().to_vec();
                encrypt_frm_payload(
                    &PayloadCipher::from_app_s_key(&k),
                    f.direction(),
                    f.dev_addr(),
                    fcnt,
                    &mut data,
                );
                assert_eq!(data, plain, "{id}: override-key payload");
            }
            other => panic!("{id}: unknown frm_payload_key_role {other:?}"),
        }
    } else {
        // No plaintext in the source: the payload key was not given, or there is none.
        assert!(
            e.get("frm_payload_note").is_some() || f.frm_payload().as_bytes().is_empty(),
            "{id}: payload unchecked without a note"
        );
    }

    // Rebuild from the opened contents: the exact bytes again (except where the source frame
    // is not what a conforming sender produces).
    if id != "data-brocaar-11-down-fport1-plain-fopts" {
        let rebuilt = if uplink {
            f.open_uplink(&session, fcnt, &params)
                .expect("opened above")
                .build(&session, &params)
        } else {
            f.open_downlink(&session, fcnt, conf)
                .expect("opened above")
                .build(&session, conf)
        };
        assert_eq!(rebuilt.expect("build"), phy, "{id}: rebuild");
    }
}

fn check_raw_mic(e: &Value) {
    let id = e["id"].as_str().expect("id");
    let key = key16(&e["key_hex"]);
    let nwk = NetworkSessionCrypto::new(&match e["lorawan_version"].as_str() {
        Some("1.0") => NetworkSessionKeys::V1_0 {
            nwk_s_key: NwkSKey::new(key),
        },
        // "For 1.1 uplink S=F=same key, ConfFCnt=0, TxDr=0, TxCh=0."
        Some("1.1") => NetworkSessionKeys::V1_1 {
            f_nwk_s_int_key: FNwkSIntKey::new(key),
            s_nwk_s_int_key: SNwkSIntKey::new(key),
            nwk_s_enc_key: NwkSEncKey::new(key),
        },
        other => panic!("{id}: version {other:?}"),
    });
    let msg = hex(&e["msg_hex"]);
    let dev_addr = dev_addr_wire(e);
    let fcnt = u32_of(&e["fcnt"]);
    let mic = match e["direction"].as_str() {
        Some("uplink") => uplink_mic(
            &nwk,
            dev_addr,
            fcnt,
            false,
            &UplinkMicParams::default(),
            &msg,
        ),
        Some("downlink") => downlink_mic(&nwk, dev_addr, fcnt, false, 0, &msg),
        other => panic!("{id}: direction {other:?}"),
    };
    assert_eq!(mic, mic_of(&e["mic_hex"]), "{id}");
}

fn check_raw_encryption(e: &Value) {
    let id = e["id"].as_str().expect("id");
    let key = key16(&e["key_hex"]);
    let dev_addr = dev_addr_wire(e);
    let fcnt = u32_of(&e["fcnt"]);
    let mut data = hex(&e["plaintext_hex"]);
    let want = hex(&e["ciphertext_hex"]);
    match id {
        "enc-tts-frm-up" | "enc-tts-frm-down" => {
            let dir = if id.ends_with("up") {
                Direction::Uplink
            } else {
                Direction::Downlink
            };
            let c = PayloadCipher::from_app_s_key(&AppSKey::new(key));
            encrypt_frm_payload(&c, dir, dev_addr, fcnt, &mut data);
        }
        "enc-tts-fopts-up" | "enc-tts-fopts-down-nfcnt" => {
            let dir = if id == "enc-tts-fopts-up" {
                Direction::Uplink
            } else {
                Direction::Downlink
            };
            let c = PayloadCipher::from_nwk_s_enc_key(&NwkSEncKey::new(key));
            encrypt_fopts(
                &c,
                FOptsCounter::NetworkOrUp,
                dir,
                dev_addr,
                fcnt,
                &mut data,
            );
        }
        other => panic!("unknown raw encryption entry {other}"),
    }
    assert_eq!(data, want, "{id}");
    // And back.
    let mut back = want.clone();
    if id.starts_with("enc-tts-frm") {
        let dir = if id.ends_with("up") {
            Direction::Uplink
        } else {
            Direction::Downlink
        };
        let c = PayloadCipher::from_app_s_key(&AppSKey::new(key));
        encrypt_frm_payload(&c, dir, dev_addr, fcnt, &mut back);
        assert_eq!(back, hex(&e["plaintext_hex"]), "{id}: decrypt");
    }
}

#[test]
fn every_data_frames_entry() {
    let v = load();
    let frames = v["data_frames"].as_array().expect("data_frames");
    let inference = v["fcnt_inference"]["vectors"]
        .as_array()
        .expect("fcnt_inference.vectors");
    let total = frames.len() + inference.len();
    let mut checked = 0;
    let (mut full, mut raw_mic, mut raw_enc) = (0, 0, 0);

    for e in frames {
        assert!(e.get("source").is_some() || e.get("verified").is_some());
        if e.get("phy_payload_hex").is_some() {
            check_full_frame(e);
            full += 1;
        } else if e.get("msg_hex").is_some() {
            check_raw_mic(e);
            raw_mic += 1;
        } else if e.get("ciphertext_hex").is_some() {
            check_raw_encryption(e);
            raw_enc += 1;
        } else {
            panic!("unclassified entry {}", e["id"]);
        }
        checked += 1;
    }
    for t in inference {
        let next = u32_of(&t["next_expected_fcnt_up"]);
        let f16 = u16::try_from(t["received_fcnt_16"].as_u64().expect("fcnt16")).expect("u16");
        assert_eq!(
            infer_fcnt(next, f16),
            u32_of(&t["resolved_fcnt_32"]),
            "fcnt_inference {t}"
        );
        checked += 1;
    }
    println!(
        "data_frames.json: {checked} entries checked ({full} full frames, {raw_mic} raw MIC, \
         {raw_enc} raw encryption, {} FCnt inference)",
        inference.len()
    );
    assert_eq!(checked, total);
    assert_eq!(
        total, 39,
        "the file has 30 frame entries and 9 inference vectors"
    );
}
