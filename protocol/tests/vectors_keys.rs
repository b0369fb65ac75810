//! Every entry of `vectors/session_keys.json` and `vectors/rfc3394_keywrap.json` (including the
//! KeyEnvelope and negative cases), checked to the byte.

use protocol::derive::{
    js_keys, session_keys_1_0, session_keys_1_1, session_keys_1_1_opt_neg_0, SessionKeys,
};
use protocol::ids::{DevEui, DevNonce, JoinEui, JoinNonce, NetId};
use protocol::join::AnsweredRequest;
use protocol::keys::{AppKey, AppSKey, Kek, Key128, KeyCipher, NwkKey, NwkSKey};
use protocol::keywrap::{unwrap, unwrap_key, wrap, wrap_key, KeyEnvelope, KeyWrapError};
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

fn hex_of<K: Key128>(k: &K) -> String {
    hex::encode(k.expose())
}

/// Returns the number of keys compared.
fn check_session_keys(v: &Value) -> usize {
    let id = s(v, "id");
    let scheme = s(v, "scheme");
    if scheme.starts_with("LoRaWAN 1.0.x") {
        let join_nonce = JoinNonce::new(int(v, "join_nonce") as u32).unwrap();
        assert_eq!(
            join_nonce.to_le_bytes(),
            arr(v, "join_nonce_wire_hex"),
            "{id}"
        );
        let net_id: NetId = s(v, "net_id").parse().unwrap();
        assert_eq!(net_id.to_le_bytes(), arr(v, "net_id_wire_hex"), "{id}");
        let dev_nonce = DevNonce(int(v, "dev_nonce") as u16);
        assert_eq!(
            dev_nonce.to_le_bytes(),
            arr(v, "dev_nonce_wire_hex"),
            "{id}"
        );
        let root: [u8; 16] = arr(v, "root_key_hex");
        // The documented input blocks, which the derivation encrypts under the root key.
        let block = |t: u8| {
            let mut b = [0u8; 16];
            b[0] = t;
            b[1..4].copy_from_slice(&join_nonce.to_le_bytes());
            b[4..7].copy_from_slice(&net_id.to_le_bytes());
            b[7..9].copy_from_slice(&dev_nonce.to_le_bytes());
            hex::encode(b)
        };
        assert_eq!(block(1), s(v, "nwk_s_key_input_block_hex"), "{id}");
        assert_eq!(block(2), s(v, "app_s_key_input_block_hex"), "{id}");

        let k = session_keys_1_0(
            &KeyCipher::new(&AppKey::new(root)),
            join_nonce,
            net_id,
            dev_nonce,
        );
        assert_eq!(hex_of(&k.nwk_s_key), s(v, "nwk_s_key_hex"), "{id}: NwkSKey");
        assert_eq!(hex_of(&k.app_s_key), s(v, "app_s_key_hex"), "{id}: AppSKey");
        // The scheme also covers a 1.1 device joined with OptNeg = 0, root NwkKey.
        let k11 = session_keys_1_1_opt_neg_0(
            &KeyCipher::new(&NwkKey::new(root)),
            join_nonce,
            net_id,
            dev_nonce,
        );
        for (name, got) in [
            ("FNwkSIntKey", hex_of(&k11.f_nwk_s_int_key)),
            ("SNwkSIntKey", hex_of(&k11.s_nwk_s_int_key)),
            ("NwkSEncKey", hex_of(&k11.nwk_s_enc_key)),
        ] {
            assert_eq!(got, s(v, "nwk_s_key_hex"), "{id}: OptNeg=0 {name}");
        }
        assert_eq!(hex_of(&k11.app_s_key), s(v, "app_s_key_hex"), "{id}");
        // What the network server holds is the same key whatever the version.
        let (net, _) = SessionKeys::V1_1(k11).into_parts();
        assert_eq!(
            hex_of(&net.f_nwk_s_int_key()),
            s(v, "nwk_s_key_hex"),
            "{id}"
        );
        6
    } else if scheme.starts_with("LoRaWAN 1.1 (OptNeg=1)") {
        let join_nonce = JoinNonce::new(int(v, "join_nonce") as u32).unwrap();
        assert_eq!(
            join_nonce.to_le_bytes(),
            arr(v, "join_nonce_wire_hex"),
            "{id}"
        );
        let join_eui: JoinEui = s(v, "join_eui").parse().unwrap();
        assert_eq!(join_eui.to_le_bytes(), arr(v, "join_eui_wire_hex"), "{id}");
        let dev_nonce = DevNonce(int(v, "dev_nonce") as u16);
        assert_eq!(
            dev_nonce.to_le_bytes(),
            arr(v, "dev_nonce_wire_hex"),
            "{id}"
        );
        let k = session_keys_1_1(
            &KeyCipher::new(&NwkKey::new(arr(v, "nwk_key_hex"))),
            &KeyCipher::new(&AppKey::new(arr(v, "app_key_hex"))),
            join_nonce,
            join_eui,
            AnsweredRequest::JoinRequest(dev_nonce),
        );
        assert_eq!(
            hex_of(&k.f_nwk_s_int_key),
            s(v, "f_nwk_s_int_key_hex"),
            "{id}"
        );
        assert_eq!(
            hex_of(&k.s_nwk_s_int_key),
            s(v, "s_nwk_s_int_key_hex"),
            "{id}"
        );
        assert_eq!(hex_of(&k.nwk_s_enc_key), s(v, "nwk_s_enc_key_hex"), "{id}");
        assert_eq!(hex_of(&k.app_s_key), s(v, "app_s_key_hex"), "{id}");
        // RJcount takes the place of DevNonce when answering a Rejoin: same bytes, same keys.
        let rejoin = session_keys_1_1(
            &KeyCipher::new(&NwkKey::new(arr(v, "nwk_key_hex"))),
            &KeyCipher::new(&AppKey::new(arr(v, "app_key_hex"))),
            join_nonce,
            join_eui,
            AnsweredRequest::Rejoin1 {
                rj_count1: dev_nonce.0,
            },
        );
        assert_eq!(rejoin, k, "{id}");
        4
    } else if scheme == "LoRaWAN 1.1 JS keys" {
        let dev_eui: DevEui = s(v, "dev_eui").parse().unwrap();
        assert_eq!(dev_eui.to_le_bytes(), arr(v, "dev_eui_wire_hex"), "{id}");
        let block = |t: u8| {
            let mut b = [0u8; 16];
            b[0] = t;
            b[1..9].copy_from_slice(&dev_eui.to_le_bytes());
            hex::encode(b)
        };
        assert_eq!(block(6), s(v, "js_int_key_input_block_hex"), "{id}");
        assert_eq!(block(5), s(v, "js_enc_key_input_block_hex"), "{id}");
        let k = js_keys(
            &KeyCipher::new(&NwkKey::new(arr(v, "nwk_key_hex"))),
            dev_eui,
        );
        assert_eq!(
            hex_of(&k.js_int_key),
            s(v, "js_int_key_hex"),
            "{id}: JSIntKey"
        );
        assert_eq!(
            hex_of(&k.js_enc_key),
            s(v, "js_enc_key_hex"),
            "{id}: JSEncKey"
        );
        2
    } else {
        panic!("{id}: unknown scheme {scheme}");
    }
}

fn check_wrap(v: &Value) {
    let id = s(v, "id");
    let kek = bytes(v, "kek_hex");
    let data = bytes(v, "key_data_hex");
    let ct = bytes(v, "ciphertext_hex");
    assert_eq!(wrap(&kek, &data), Ok(ct.clone()), "{id}: wrap");
    assert_eq!(
        unwrap(&kek, &ct).map(|z| z.to_vec()),
        Ok(data.clone()),
        "{id}: unwrap"
    );

    if kek.len() == 16 && data.len() == 16 {
        // The typed path for LoRaWAN keys.
        let kek = Kek::new(arr(v, "kek_hex"));
        let key = AppSKey::new(arr(v, "key_data_hex"));
        assert_eq!(wrap_key(&kek, &key).to_vec(), ct, "{id}: wrap_key");
        assert_eq!(unwrap_key::<AppSKey>(&kek, &ct), Ok(key.clone()), "{id}");
        if let Some(label) = v["kek_label"].as_str() {
            let env = KeyEnvelope::seal(label, Some(&kek), &key).unwrap();
            assert_eq!(
                serde_json::to_value(&env).unwrap(),
                v["key_envelope_json"],
                "{id}: KeyEnvelope JSON"
            );
            let parsed: KeyEnvelope =
                serde_json::from_value(v["key_envelope_json"].clone()).unwrap();
            assert_eq!(parsed, env, "{id}");
            assert_eq!(parsed.open::<AppSKey>(Some(&kek)), Ok(key.clone()), "{id}");
            // The same key as another role: the envelope does not carry the role.
            assert_eq!(
                parsed.open::<NwkSKey>(Some(&kek)).map(|k| *k.expose()),
                Ok(*key.expose())
            );
            // Uppercase hex with 0x, as TTS writes it, opens the same.
            let upper = serde_json::json!({
                "KEKLabel": label,
                "AESKey": format!("0x{}", s(v, "ciphertext_hex").to_uppercase()),
            });
            let upper: KeyEnvelope = serde_json::from_value(upper).unwrap();
            assert_eq!(upper.open::<AppSKey>(Some(&kek)), Ok(key.clone()), "{id}");
            // The clear form: empty label, the key itself.
            let clear = KeyEnvelope::seal("", None, &key).unwrap();
            assert_eq!(
                serde_json::to_value(&clear).unwrap(),
                serde_json::json!({"KEKLabel": "", "AESKey": s(v, "key_data_hex")})
            );
            let absent: KeyEnvelope =
                serde_json::from_value(serde_json::json!({"AESKey": s(v, "key_data_hex")}))
                    .unwrap();
            assert_eq!(
                absent.open::<AppSKey>(None),
                Ok(key),
                "{id}: absent KEKLabel"
            );
        }
    }
}

/// Returns the number of cases checked.
fn check_negative(v: &Value) -> usize {
    let id = s(v, "id");
    if let Some(cases) = v["cases"].as_array() {
        for c in cases {
            let op = s(c, "op");
            let e = match op {
                "wrap" => {
                    let kek = c
                        .get("kek_hex")
                        .map(|_| bytes(c, "kek_hex"))
                        .unwrap_or_else(|| vec![0u8; 16]);
                    let data = c
                        .get("key_data_hex")
                        .map(|_| bytes(c, "key_data_hex"))
                        .unwrap_or_else(|| vec![0u8; 16]);
                    wrap(&kek, &data).expect_err(id)
                }
                "unwrap" => unwrap(&[0u8; 16], &bytes(c, "ciphertext_hex")).expect_err(id),
                other => panic!("{id}: unknown op {other}"),
            };
            let expected = s(c, "expected");
            let kind = if expected.contains("KEK") {
                "kek_length"
            } else if op == "wrap" {
                "data_length"
            } else {
                "ciphertext_length"
            };
            assert_eq!(e.kind(), kind, "{id}: {op} {expected}");
        }
        cases.len()
    } else {
        let kek = bytes(v, "kek_hex");
        let ct = bytes(v, "ciphertext_hex");
        assert_eq!(
            unwrap(&kek, &ct).map(|z| z.to_vec()),
            Err(KeyWrapError::Integrity),
            "{id}"
        );
        // And through the typed path and a KeyEnvelope.
        let kek = Kek::new(arr(v, "kek_hex"));
        assert_eq!(
            unwrap_key::<AppSKey>(&kek, &ct),
            Err(KeyWrapError::Integrity)
        );
        let env = KeyEnvelope {
            kek_label: "kek".into(),
            aes_key: ct,
        };
        assert_eq!(
            env.open::<AppSKey>(Some(&kek)),
            Err(KeyWrapError::Integrity)
        );
        1
    }
}

#[test]
fn every_session_key_vector() {
    let file = load("session_keys.json");
    let entries = file["session_keys"].as_array().unwrap();
    let mut checked = 0;
    let mut keys = 0;
    for v in entries {
        keys += check_session_keys(v);
        checked += 1;
    }
    eprintln!("vectors_keys: checked {checked} session-key entries ({keys} keys compared)");
    assert_eq!(checked, entries.len());
    assert_eq!(checked, 10, "protocol-notes A.5 documents 10 entries");
}

#[test]
fn every_keywrap_vector() {
    let file = load("rfc3394_keywrap.json");
    let positive = file["vectors"].as_array().unwrap();
    let negative = file["negative"].as_array().unwrap();
    let mut checked = 0;
    let mut negative_cases = 0;
    for v in positive {
        check_wrap(v);
        checked += 1;
    }
    for v in negative {
        negative_cases += check_negative(v);
        checked += 1;
    }
    eprintln!(
        "vectors_keys: checked {checked} keywrap entries ({} wrap/unwrap, {} negative with {negative_cases} cases)",
        positive.len(),
        negative.len()
    );
    assert_eq!(checked, positive.len() + negative.len());
    assert_eq!((positive.len(), negative.len(), negative_cases), (8, 3, 6));
}
