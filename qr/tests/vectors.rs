//! Every entry of `tests/vectors/tr005_qr.json` (copied from the shared vectors, `source` fields
//! kept), checked against this crate's documented behaviour (docs/qr.md).

use qr::{checksum, parse, parse_bytes, ChecksumMode, Field, Parsed, QrError};
use serde_json::Value;

fn vectors() -> Value {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/vectors/tr005_qr.json"
    ))
    .expect("vector file");
    serde_json::from_str(&text).expect("vector JSON")
}

/// What this crate answers for each vector that must be rejected: the error kind, the field
/// and the position. Every invalid vector must be listed here.
fn expected_rejection(id: &str) -> Option<(&'static str, Option<Field>, usize)> {
    Some(match id {
        "qr-tr005-spec-example-bad-crc" => ("checksum_mismatch", Some(Field::CheckSum), 84),
        // TTS accepts this one; we reject it (docs/qr.md, "Where we differ from TTS"): the
        // CheckSum must be the last extension (and be 4 hex digits).
        "qr-tts-extensions-nonnumeric-checksum" => ("checksum_not_last", Some(Field::CheckSum), 49),
        "qr-tts-invalid-parts" => ("missing_field", Some(Field::ProfileId), 39),
        "qr-tts-invalid-eui" => ("bad_length", Some(Field::JoinEui), 6),
        "qr-tts-invalid-prodid" => ("bad_length", Some(Field::ProfileId), 40),
        "qr-tts-invalid-type" => ("not_utf8", None, 1),
        "qr-tts-grpc-invalid-deveui" => ("bad_length", Some(Field::DevEui), 23),
        "qr-derived-bad-schema" => ("bad_schema", Some(Field::SchemaId), 3),
        "qr-derived-bad-preface" => ("bad_preface", Some(Field::Preface), 0),
        "qr-derived-nonhex-eui" => ("bad_hex_digit", Some(Field::JoinEui), 20),
        "qr-derived-crc-short" => ("bad_checksum_format", Some(Field::CheckSum), 50),
        _ => return None,
    })
}

fn hex_bytes(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

fn parse_vector(v: &Value) -> Result<Parsed, QrError> {
    match (v["qr"].as_str(), v["qr_bytes_hex"].as_str()) {
        (Some(text), _) => parse(text),
        (None, Some(hex)) => parse_bytes(&hex_bytes(hex)),
        _ => panic!("vector {} has neither qr nor qr_bytes_hex", v["id"]),
    }
}

fn opt_str(v: &Value) -> Option<&str> {
    v.as_str()
}

fn check_expected(id: &str, p: &Parsed, e: &Value) {
    let c = &p.code;
    assert_eq!(
        c.join_eui.to_string(),
        e["join_eui"].as_str().unwrap(),
        "{id}"
    );
    assert_eq!(
        c.dev_eui.to_string(),
        e["dev_eui"].as_str().unwrap(),
        "{id}"
    );
    assert_eq!(
        format!("{:04X}", c.profile_id.vendor_id),
        e["vendor_id"].as_str().unwrap(),
        "{id}"
    );
    assert_eq!(
        format!("{:04X}", c.profile_id.vendor_profile_id),
        e["vendor_profile_id"].as_str().unwrap(),
        "{id}"
    );
    assert_eq!(
        c.owner_token.as_ref().map(|v| v.as_str()),
        opt_str(&e["owner_token"]),
        "{id}"
    );
    assert_eq!(
        c.serial_number.as_ref().map(|v| v.as_str()),
        opt_str(&e["serial_number"]),
        "{id}"
    );
    assert_eq!(
        c.proprietary.as_ref().map(|v| v.as_str()),
        opt_str(&e["proprietary"]),
        "{id}"
    );
    assert_eq!(
        p.checksum.map(|v| format!("{v:04X}")).as_deref(),
        opt_str(&e["checksum"]),
        "{id}"
    );
}

#[test]
fn crc16_modbus_check_value() {
    let v = vectors();
    let c = &v["crc16_modbus_check_value"];
    assert_eq!(
        format!("{:04X}", checksum(c["input_ascii"].as_str().unwrap())),
        c["crc_hex"].as_str().unwrap()
    );
}

#[test]
fn every_vector() {
    let v = vectors();
    let entries = v["vectors"].as_array().expect("vectors array");
    let mut checked = 0;
    let mut differs_from_tts = 0;
    for vector in entries {
        let id = vector["id"].as_str().expect("id");
        assert!(!vector["source"].is_null(), "{id}: source kept");
        if let (Some(input), Some(crc)) = (
            vector["checksum_input"].as_str(),
            vector["crc16_modbus_hex"].as_str(),
        ) {
            assert_eq!(format!("{:04X}", checksum(input)), crc, "{id}: checksum");
        }
        let result = parse_vector(vector);
        if vector["valid"].as_bool().expect("valid flag") {
            let p = result.unwrap_or_else(|e| panic!("{id}: rejected valid code: {e}"));
            assert!(expected_rejection(id).is_none(), "{id}: listed as rejected");
            if !vector["expected"].is_null() {
                check_expected(id, &p, &vector["expected"]);
            }
            let text = vector["qr"].as_str().unwrap();
            // Our canonical form: equal to the vector's own canonical form when it records one,
            // else to the input itself (every valid input here is already canonical).
            let mode = if p.checksum.is_some() {
                ChecksumMode::Include
            } else {
                ChecksumMode::Omit
            };
            let canonical = vector["canonical"].as_str().unwrap_or(text);
            assert_eq!(p.code.encode(mode), canonical, "{id}: canonical form");
            // And the canonical form with its CheckSum parses back to the same identity.
            let again = parse(&p.code.to_string()).expect("canonical parses");
            assert_eq!(again.code, p.code, "{id}: round trip");
            assert_eq!(again.checksum_valid(), Some(true), "{id}");
        } else {
            let e = match result {
                Ok(p) => panic!("{id}: accepted an invalid code: {p:?}"),
                Err(e) => e,
            };
            let (kind, field, position) = expected_rejection(id)
                .unwrap_or_else(|| panic!("{id}: no documented rejection for this vector"));
            assert_eq!(e.kind(), kind, "{id}: {e}");
            assert_eq!(e.field(), field, "{id}: {e}");
            assert_eq!(e.position(), Some(position), "{id}: {e}");
            if vector["tts_behaviour"]["accepted"].as_bool() == Some(true) {
                // TTS accepts it; our documented decision is to reject it (asserted above).
                differs_from_tts += 1;
            }
        }
        checked += 1;
    }
    println!(
        "checked {checked} of {} TR005 vectors ({differs_from_tts} rejected that TTS accepts)",
        entries.len()
    );
    assert_eq!(checked, entries.len());
    assert_eq!(entries.len(), 20, "the shared file has 20 entries");
    assert_eq!(differs_from_tts, 1);
}
