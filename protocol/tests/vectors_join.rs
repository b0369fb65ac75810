//! Every entry of `vectors/join_request_mic.json` (Join-request and Rejoin-request) and
//! `vectors/join_accept.json`, checked to the byte. Negative entries must fail exactly as stated.

use protocol::ids::{DevAddr, DevEui, DevNonce, JoinEui, JoinNonce, NetId};
use protocol::join::{
    AnsweredRequest, CfList, DlSettings, EncryptedJoinAccept, JoinAcceptEncKey, JoinAcceptMicKey,
    JoinAcceptPayload, JoinRequest, JoinRootKey, RejoinBody, RejoinMicKey, RejoinRequest, RxDelay,
};
use protocol::keys::{AppKey, JsEncKey, JsIntKey, Key128, KeyCipher, Mic, NwkKey, SNwkSIntKey};
use serde_json::Value;

fn load(name: &str) -> Value {
    let path = format!("{}/tests/vectors/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn s<'a>(v: &'a Value, field: &str) -> &'a str {
    v[field]
        .as_str()
        .unwrap_or_else(|| panic!("{}: missing string {field}", v["id"]))
}

fn bytes(v: &Value, field: &str) -> Vec<u8> {
    hex::decode(s(v, field)).unwrap_or_else(|e| panic!("{}: {field}: {e}", v["id"]))
}

fn arr<const N: usize>(v: &Value, field: &str) -> [u8; N] {
    bytes(v, field)
        .try_into()
        .unwrap_or_else(|_| panic!("{}: {field} is not {N} bytes", v["id"]))
}

fn int(v: &Value, field: &str) -> u64 {
    v[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{}: missing integer {field}", v["id"]))
}

fn key<K: Key128>(v: &Value, field: &str) -> KeyCipher<K> {
    KeyCipher::new(&K::new(arr(v, field)))
}

fn entries<'a>(file: &'a Value, section: &str) -> &'a Vec<Value> {
    file[section]
        .as_array()
        .unwrap_or_else(|| panic!("missing array {section}"))
}

fn check_join_request(v: &Value) {
    let id = s(v, "id");
    let phy = bytes(v, "phy_payload_hex");
    let req = JoinRequest::parse(&phy).unwrap_or_else(|e| panic!("{id}: {e}"));
    // Fields in both forms: MSB-first display and on-air little-endian.
    assert_eq!(
        req.join_eui,
        s(v, "join_eui").parse::<JoinEui>().unwrap(),
        "{id}"
    );
    assert_eq!(
        req.join_eui.to_le_bytes(),
        arr(v, "join_eui_wire_hex"),
        "{id}"
    );
    assert_eq!(
        req.dev_eui,
        s(v, "dev_eui").parse::<DevEui>().unwrap(),
        "{id}"
    );
    assert_eq!(
        req.dev_eui.to_le_bytes(),
        arr(v, "dev_eui_wire_hex"),
        "{id}"
    );
    assert_eq!(req.dev_nonce, DevNonce(int(v, "dev_nonce") as u16), "{id}");
    assert_eq!(
        req.dev_nonce.to_le_bytes(),
        arr(v, "dev_nonce_wire_hex"),
        "{id}"
    );
    assert_eq!(req.mhdr.0, arr::<1>(v, "mhdr_hex")[0], "{id}");
    assert_eq!(req.mic, Mic(arr(v, "mic_hex")), "{id}");
    assert_eq!(req.to_bytes()[..19], bytes(v, "mic_input_hex")[..], "{id}");
    assert_eq!(req.to_bytes()[..], phy[..], "{id}");

    // The key roles the entry says it may be checked with.
    let role = s(v, "key_role");
    let app = key::<AppKey>(v, "key_hex");
    let nwk = key::<NwkKey>(v, "key_hex");
    let roots: Vec<JoinRootKey<'_>> = match role {
        "AppKey/NwkKey" => vec![JoinRootKey::AppKey(&app), JoinRootKey::NwkKey(&nwk)],
        r if r.starts_with("NwkKey") => vec![JoinRootKey::NwkKey(&nwk)],
        r if r.starts_with("AppKey") => vec![JoinRootKey::AppKey(&app)],
        r => panic!("{id}: unknown key role {r}"),
    };
    let valid = v["expected_valid"]
        .as_bool()
        .unwrap_or_else(|| panic!("{id}: expected_valid"));
    for root in roots {
        if valid {
            assert_eq!(req.verify_mic(root), Ok(()), "{id}");
            let built = JoinRequest::build(req.join_eui, req.dev_eui, req.dev_nonce, root);
            assert_eq!(built.to_bytes()[..], phy[..], "{id}: build");
        } else {
            let e = req.verify_mic(root).expect_err(id);
            assert_eq!(e.kind(), "mic", "{id}");
            if let Some(m) = v["computed_mic_with_this_key_hex"].as_str() {
                assert_eq!(hex::encode(req.compute_mic(root).0), m, "{id}");
            }
        }
    }
}

fn check_rejoin_request(v: &Value) {
    let id = s(v, "id");
    let phy = bytes(v, "phy_payload_hex");
    let req = RejoinRequest::parse(&phy).unwrap_or_else(|e| panic!("{id}: {e}"));
    let dev_eui: DevEui = s(v, "dev_eui").parse().unwrap();
    assert_eq!(
        req.body.dev_eui().to_le_bytes(),
        arr(v, "dev_eui_wire_hex"),
        "{id}"
    );
    let rejoin_type = int(v, "rejoin_type") as u8;
    assert_eq!(req.body.rejoin_type(), rejoin_type, "{id}");
    let expected = match rejoin_type {
        1 => RejoinBody::Type1 {
            join_eui: s(v, "join_eui").parse().unwrap(),
            dev_eui,
            rj_count1: int(v, "rj_count1") as u16,
        },
        t => {
            let net_id: NetId = s(v, "net_id").parse().unwrap();
            assert_eq!(net_id.to_le_bytes(), arr(v, "net_id_wire_hex"), "{id}");
            let rj_count0 = int(v, "rj_count0") as u16;
            if t == 0 {
                RejoinBody::Type0 {
                    net_id,
                    dev_eui,
                    rj_count0,
                }
            } else {
                RejoinBody::Type2 {
                    net_id,
                    dev_eui,
                    rj_count0,
                }
            }
        }
    };
    assert_eq!(req.body, expected, "{id}");
    assert_eq!(req.mhdr.0, arr::<1>(v, "mhdr_hex")[0], "{id}");
    assert_eq!(req.mic, Mic(arr(v, "mic_hex")), "{id}");
    let out = req.to_bytes();
    assert_eq!(out, phy, "{id}");
    assert_eq!(out[..out.len() - 4], bytes(v, "mic_input_hex")[..], "{id}");

    let s_key = key::<SNwkSIntKey>(v, "key_hex");
    let j_key = key::<JsIntKey>(v, "key_hex");
    let (right, wrong) = match s(v, "key_role") {
        "SNwkSIntKey" => (
            RejoinMicKey::SNwkSIntKey(&s_key),
            RejoinMicKey::JsIntKey(&j_key),
        ),
        "JSIntKey" => (
            RejoinMicKey::JsIntKey(&j_key),
            RejoinMicKey::SNwkSIntKey(&s_key),
        ),
        r => panic!("{id}: unknown key role {r}"),
    };
    assert_eq!(req.verify_mic(right), Ok(()), "{id}");
    assert_eq!(
        req.verify_mic(wrong).unwrap_err().kind(),
        "key_role",
        "{id}"
    );
    let built = RejoinRequest::build(expected, right).unwrap_or_else(|e| panic!("{id}: {e}"));
    assert_eq!(built.to_bytes(), phy, "{id}: build");
    // A corrupted MIC fails.
    let mut bad = phy.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    let bad = RejoinRequest::parse(&bad).unwrap();
    assert_eq!(bad.verify_mic(right).unwrap_err().kind(), "mic", "{id}");
}

fn check_join_accept(v: &Value) {
    let id = s(v, "id");
    let dl_settings = DlSettings(arr::<1>(v, "dl_settings_hex")[0]);
    let decoded = &v["dl_settings_decoded"];
    assert_eq!(
        (
            dl_settings.opt_neg(),
            u64::from(dl_settings.rx1_dr_offset()),
            u64::from(dl_settings.rx2_data_rate())
        ),
        (
            decoded["opt_neg"].as_bool().unwrap(),
            decoded["rx1_dr_offset"].as_u64().unwrap(),
            decoded["rx2_data_rate"].as_u64().unwrap()
        ),
        "{id}: DLSettings"
    );
    let cf_list = v.get("cf_list_hex").map(|_| CfList(arr(v, "cf_list_hex")));
    if let Some(cf) = &cf_list {
        let d = &v["cf_list_decoded"];
        assert_eq!(
            u64::from(cf.cf_list_type()),
            d["cflist_type"].as_u64().unwrap()
        );
        let want: Vec<u32> = d["frequencies_hz"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f.as_u64().unwrap() as u32)
            .collect();
        let freqs = cf.frequencies_hz().unwrap();
        assert_eq!(freqs.to_vec(), want, "{id}: CFList");
        assert_eq!(CfList::from_frequencies_hz(freqs), Some(*cf), "{id}");
    }
    let payload = JoinAcceptPayload {
        join_nonce: JoinNonce::new(int(v, "join_nonce") as u32).unwrap(),
        net_id: s(v, "net_id").parse().unwrap(),
        dev_addr: s(v, "dev_addr").parse().unwrap(),
        dl_settings,
        rx_delay: RxDelay(int(v, "rx_delay") as u8),
        cf_list,
    };
    assert_eq!(
        payload.join_nonce.to_le_bytes(),
        arr(v, "join_nonce_wire_hex")
    );
    assert_eq!(payload.net_id.to_le_bytes(), arr(v, "net_id_wire_hex"));
    assert_eq!(payload.dev_addr.to_le_bytes(), arr(v, "dev_addr_wire_hex"));
    assert_eq!(
        payload.dev_addr,
        DevAddr::from_le_bytes(arr(v, "dev_addr_wire_hex"))
    );

    // Keys, by the roles the entry names.
    let app = key::<AppKey>(v, "mic_key_hex");
    let js_int = key::<JsIntKey>(v, "mic_key_hex");
    let mic_key = match s(v, "mic_key_role") {
        "AppKey" => JoinAcceptMicKey::Legacy(JoinRootKey::AppKey(&app)),
        "JSIntKey" => {
            let join_eui: JoinEui = s(v, "join_eui").parse().unwrap();
            assert_eq!(join_eui.to_le_bytes(), arr(v, "join_eui_wire_hex"));
            let dev_nonce = DevNonce(int(v, "dev_nonce") as u16);
            assert_eq!(dev_nonce.to_le_bytes(), arr(v, "dev_nonce_wire_hex"));
            let answered = AnsweredRequest::JoinRequest(dev_nonce);
            assert_eq!(
                answered.join_req_type(),
                arr::<1>(v, "join_req_type_hex")[0]
            );
            JoinAcceptMicKey::OptNeg {
                js_int_key: &js_int,
                join_eui,
                answered,
            }
        }
        r => panic!("{id}: unknown MIC key role {r}"),
    };
    let enc_app = key::<AppKey>(v, "encryption_key_hex");
    let enc_nwk = key::<NwkKey>(v, "encryption_key_hex");
    let enc_key = match s(v, "encryption_key_role") {
        "AppKey" => JoinAcceptEncKey::AppKey(&enc_app),
        "NwkKey" => JoinAcceptEncKey::NwkKey(&enc_nwk),
        r => panic!("{id}: unknown encryption key role {r}"),
    };

    let mic = Mic(arr(v, "mic_hex"));
    assert_eq!(payload.mic(mic_key), mic, "{id}: MIC");

    // Join server: MIC then encrypt, to the byte.
    let encrypted = bytes(v, "encrypted_phy_payload_hex");
    let built = payload.encrypt(mic_key, enc_key);
    assert_eq!(
        built.as_bytes(),
        &encrypted[..],
        "{id}: encrypted PHYPayload"
    );

    // Device: parse, decrypt, check the MIC.
    let parsed =
        EncryptedJoinAccept::from_bytes(&encrypted).unwrap_or_else(|e| panic!("{id}: {e}"));
    let decrypted = parsed.decrypt(enc_key);
    assert_eq!(decrypted.payload, payload, "{id}");
    assert_eq!(decrypted.mic, mic, "{id}");
    assert_eq!(decrypted.mhdr.0, arr::<1>(v, "mhdr_hex")[0], "{id}");
    let plain = bytes(v, "plaintext_phy_payload_hex");
    assert_eq!(decrypted.to_bytes(), plain, "{id}: plaintext PHYPayload");
    assert_eq!(decrypted.verify_mic(mic_key), Ok(()), "{id}");
    assert_eq!(parsed.open(enc_key, mic_key), Ok(payload), "{id}");

    // The MIC input the entry documents: `[JoinReqType | JoinEUI | DevNonce |] MHDR | payload`.
    let mic_input = bytes(v, "mic_input_hex");
    assert!(
        mic_input.ends_with(&plain[..plain.len() - 4]),
        "{id}: MIC input"
    );

    // The other formula, and a tampered frame, fail as MIC errors (protocol-notes E.3: the
    // formula is the caller's, whatever DLSettings says).
    let other = match mic_key {
        JoinAcceptMicKey::Legacy(_) => JoinAcceptMicKey::OptNeg {
            js_int_key: &js_int,
            join_eui: JoinEui::new(0),
            answered: AnsweredRequest::JoinRequest(DevNonce(0)),
        },
        JoinAcceptMicKey::OptNeg { .. } => JoinAcceptMicKey::Legacy(JoinRootKey::AppKey(&app)),
        #[allow(unreachable_patterns)]
        _ => unreachable!(),
    };
    assert_eq!(
        decrypted.verify_mic(other).unwrap_err().kind(),
        "mic",
        "{id}"
    );
    let mut tampered = encrypted.clone();
    tampered[1] ^= 0x80;
    let tampered = EncryptedJoinAccept::from_bytes(&tampered).unwrap();
    assert_eq!(
        tampered.open(enc_key, mic_key).unwrap_err().kind(),
        "mic",
        "{id}"
    );
    // Decrypting with a different key does not yield this payload with a valid MIC.
    let js_enc = KeyCipher::new(&JsEncKey::new([0xEE; 16]));
    assert!(parsed
        .open(JoinAcceptEncKey::JsEncKey(&js_enc), mic_key)
        .is_err());
}

#[test]
fn every_join_vector() {
    let jr = load("join_request_mic.json");
    let ja = load("join_accept.json");
    let requests = entries(&jr, "join_request");
    let rejoins = entries(&jr, "rejoin_request");
    let accepts = entries(&ja, "join_accept");
    let mut checked = 0;
    for v in requests {
        check_join_request(v);
        checked += 1;
    }
    for v in rejoins {
        check_rejoin_request(v);
        checked += 1;
    }
    for v in accepts {
        check_join_accept(v);
        checked += 1;
    }
    eprintln!(
        "vectors_join: checked {checked} entries ({} join-request, {} rejoin-request, {} join-accept)",
        requests.len(),
        rejoins.len(),
        accepts.len()
    );
    assert_eq!(checked, requests.len() + rejoins.len() + accepts.len());
    // The files as documented in protocol-notes (8 + 5 + 8): a truncated copy fails here.
    assert_eq!((requests.len(), rejoins.len(), accepts.len()), (8, 5, 8));
}
