//! Every error the library can report, with its exact message, kind, field and position.

use qr::{
    parse, parse_bytes, DevEui, DeviceCode, ExtensionValue, Field, JoinEui, ProfileId, QrError,
};

const BASE: &str = "LW:D0:1122334455667788:AABBCCDDEEFF0011:AABB1122";

fn err(text: &str) -> QrError {
    match parse(text) {
        Ok(p) => panic!("accepted {text:?}: {p:?}"),
        Err(e) => e,
    }
}

fn check(e: &QrError, kind: &str, field: Option<Field>, position: Option<usize>, message: &str) {
    assert_eq!(e.kind(), kind, "{e}");
    assert_eq!(e.field(), field, "{e}");
    assert_eq!(e.position(), position, "{e}");
    assert_eq!(e.to_string(), message);
}

#[test]
fn not_utf8() {
    let e = parse_bytes(b"LW:D0:\xff").unwrap_err();
    check(
        &e,
        "not_utf8",
        None,
        Some(6),
        "not text: invalid UTF-8 byte at position 6",
    );
}

#[test]
fn empty() {
    check(
        &err(""),
        "empty",
        None,
        None,
        "empty code: expected \"LW:D0:...\", found nothing",
    );
}

#[test]
fn bad_preface() {
    check(
        &err("lw:D0:1122334455667788:AABBCCDDEEFF0011:AABB1122"),
        "bad_preface",
        Some(Field::Preface),
        Some(0),
        "bad preface at position 0: expected \"LW\" (or the deprecated \"URN:LW:DP\" / \"URN:DEV:LW\"), found \"lw\"",
    );
    // Long junk is shortened in the message.
    let e = err("https://example.com/device/1122334455667788");
    assert_eq!(e.kind(), "bad_preface");
    assert!(e.to_string().ends_with("found \"https\""), "{e}");
    let e = err("0123456789012345678901234567890");
    assert!(
        e.to_string()
            .ends_with("found \"012345678901234567890123…\""),
        "{e}"
    );
}

#[test]
fn bad_schema() {
    check(
        &err("LW:d0:1122334455667788:AABBCCDDEEFF0011:AABB1122"),
        "bad_schema",
        Some(Field::SchemaId),
        Some(3),
        "bad SchemaID at position 3: expected \"D0\", found \"d0\"",
    );
}

#[test]
fn missing_fields() {
    check(
        &err("LW"),
        "missing_field",
        Some(Field::SchemaId),
        Some(2),
        "SchemaID missing at position 2: expected \"D0\", found end of text",
    );
    check(
        &err("LW:D0"),
        "missing_field",
        Some(Field::JoinEui),
        Some(5),
        "JoinEUI missing at position 5: expected 16 hex digits, found end of text",
    );
    check(
        &err("LW:D0:1122334455667788"),
        "missing_field",
        Some(Field::DevEui),
        Some(22),
        "DevEUI missing at position 22: expected 16 hex digits, found end of text",
    );
    check(
        &err("LW:D0:1122334455667788:AABBCCDDEEFF0011"),
        "missing_field",
        Some(Field::ProfileId),
        Some(39),
        "ProfileID missing at position 39: expected 8 hex digits, found end of text",
    );
}

#[test]
fn bad_hex_digit() {
    check(
        &err("LW:D0:1122334455667788:AABBCCDDEEFF00X1:AABB1122"),
        "bad_hex_digit",
        Some(Field::DevEui),
        Some(37),
        "bad DevEUI at position 37: expected a hex digit (0-9, A-F), found 'X'",
    );
    check(
        &err("LW:D0:1122334455667788:AABBCCDDEEFF0011:AABB 122"),
        "bad_hex_digit",
        Some(Field::ProfileId),
        Some(44),
        "bad ProfileID at position 44: expected a hex digit (0-9, A-F), found ' '",
    );
    // Positions count characters, not bytes.
    let e = err("LW:D0:é122334455667788:AABBCCDDEEFF0011:AABB1122");
    assert_eq!(e.position(), Some(6));
    assert_eq!(e.field(), Some(Field::JoinEui));
}

#[test]
fn bad_length() {
    check(
        &err("LW:D0:1122334455667788:AABBCCDDEEFF0011:AABB11"),
        "bad_length",
        Some(Field::ProfileId),
        Some(40),
        "bad ProfileID at position 40: expected 8 hex digits, found 6 (\"AABB11\")",
    );
    check(
        &err("LW:D0::AABBCCDDEEFF0011:AABB1122"),
        "bad_length",
        Some(Field::JoinEui),
        Some(6),
        "bad JoinEUI at position 6: expected 16 hex digits, found 0 (\"\")",
    );
    // A long field is counted in full and quoted shortened.
    check(
        &err("LW:D0:112233445566778899AABBCCDDEEFF:AABBCCDDEEFF0011:AABB1122"),
        "bad_length",
        Some(Field::JoinEui),
        Some(6),
        "bad JoinEUI at position 6: expected 16 hex digits, found 30 (\"112233445566778899AABBCC…\")",
    );
}

#[test]
fn empty_extension() {
    let message = "empty extension at position 49: expected a tag letter and a value, found nothing (doubled or trailing separator)";
    check(
        &err(&format!("{BASE}:")),
        "empty_extension",
        None,
        Some(49),
        message,
    );
    check(
        &err(&format!("{BASE}::O12")),
        "empty_extension",
        None,
        Some(49),
        message,
    );
}

#[test]
fn bad_tag() {
    check(
        &err(&format!("{BASE}:o123")),
        "bad_tag",
        None,
        Some(49),
        "bad extension tag at position 49: expected an uppercase letter (O, S, P, C), found 'o'",
    );
    assert_eq!(err(&format!("{BASE}:1X")).kind(), "bad_tag");
}

#[test]
fn duplicate_tag() {
    check(
        &err(&format!("{BASE}:O12:S34:O56")),
        "duplicate_tag",
        Some(Field::OwnerToken),
        Some(57),
        "repeated OwnerToken (O) at position 57: expected each tag at most once, already at position 49",
    );
    // A tag-only extension still counts, and so do unknown tags.
    assert_eq!(err(&format!("{BASE}:S:S12")).kind(), "duplicate_tag");
    let e = err(&format!("{BASE}:X1:X2"));
    assert_eq!(e.field(), Some(Field::Unknown('X')));
    assert_eq!(
        e.to_string(),
        "repeated extension X at position 52: expected each tag at most once, already at position 49"
    );
}

#[test]
fn bad_value_char() {
    check(
        &err(&format!("{BASE}:SAB CD")),
        "bad_value_char",
        Some(Field::SerialNumber),
        Some(52),
        "bad SerNum (S) at position 52: expected printable ASCII (! to ~) other than ':', found ' '",
    );
    let e = err(&format!("{BASE}:PAB\u{7}"));
    assert_eq!((e.kind(), e.position()), ("bad_value_char", Some(52)));
    let e = err(&format!("{BASE}:Oäb"));
    assert_eq!((e.kind(), e.position()), ("bad_value_char", Some(50)));
}

#[test]
fn empty_value_when_building() {
    let e = ExtensionValue::new(Field::OwnerToken, "").unwrap_err();
    check(
        &e,
        "empty_value",
        Some(Field::OwnerToken),
        None,
        "bad OwnerToken (O): expected a value of at least one character, found an empty value",
    );
}

#[test]
fn bad_value_when_building() {
    let code = DeviceCode::new(JoinEui::new(1), DevEui::new(2), ProfileId::NONE);
    let e = code.clone().with_serial_number("AB:CD").unwrap_err();
    check(
        &e,
        "bad_value_char",
        Some(Field::SerialNumber),
        Some(2),
        "bad SerNum (S) at position 2: expected printable ASCII (! to ~) other than ':', found ':'",
    );
    let e = code.clone().with_unknown_extension('O', "1").unwrap_err();
    assert_eq!(e.kind(), "bad_tag");
    let e = code
        .with_unknown_extension('X', "1")
        .unwrap()
        .with_unknown_extension('X', "2")
        .unwrap_err();
    assert_eq!(e.kind(), "duplicate_tag");
}

#[test]
fn bad_checksum_format() {
    check(
        &err(&format!("{BASE}:CAF2G")),
        "bad_checksum_format",
        Some(Field::CheckSum),
        Some(50),
        "bad CheckSum (C) at position 50: expected 4 hex digits, found \"AF2G\"",
    );
    // A tag-only CheckSum is not ignored: a code that claims a CheckSum must carry one.
    check(
        &err(&format!("{BASE}:C")),
        "bad_checksum_format",
        Some(Field::CheckSum),
        Some(50),
        "bad CheckSum (C) at position 50: expected 4 hex digits, found \"\"",
    );
}

#[test]
fn checksum_mismatch() {
    check(
        &err("LW:D0:0000000000000000:0000000000000000:00000000:C89C9"),
        "checksum_mismatch",
        Some(Field::CheckSum),
        Some(50),
        "wrong CheckSum (C) at position 50: expected 89C8 (CRC-16/MODBUS of the text before \":C\"), found 89C9: the code was misread or altered",
    );
    // One mistyped digit anywhere is caught.
    let e = err("LW:D0:0000000000000000:0000000000000001:00000000:C89C8");
    assert_eq!(e.kind(), "checksum_mismatch");
}

#[test]
fn checksum_not_last() {
    check(
        &err(&format!("{BASE}:C1234:O12")),
        "checksum_not_last",
        Some(Field::CheckSum),
        Some(49),
        "misplaced CheckSum (C) at position 49: expected it to be the last extension, found \":O12\" after it",
    );
}

#[test]
fn draft_errors() {
    // Draft 2: extension characters restricted to the QR alphanumeric set minus ": %" and space.
    let e = err("URN:LW:DP:42FFFFFFFFFFFFFF:4242FFFFFFFFFFFF:42FFFF42:%P#_");
    check(
        &e,
        "bad_value_char",
        Some(Field::Proprietary),
        Some(55),
        "bad Proprietary (P) at position 55: expected 0-9, A-Z or one of $ * + - . /, found '#'",
    );
    // Draft 3: alphanumeric only.
    let e = err("URN:DEV:LW:42FFFFFFFFFFFFFF_4242FFFFFFFFFFFF_42FFFF42_P#");
    check(
        &e,
        "bad_value_char",
        Some(Field::Proprietary),
        Some(55),
        "bad Proprietary (P) at position 55: expected 0-9 or A-Z, found '#'",
    );
    let e = err("URN:DEV:LW:42FFFFFFFFFFFFFF_4242FFFFFFFFFFFF");
    assert_eq!(
        (e.kind(), e.field()),
        ("missing_field", Some(Field::ProfileId))
    );
    let e = err("URN:DEV:LW:42FFFFFFFF_4242FFFFFFFFFFFF_42FFFF42");
    assert_eq!(
        (e.kind(), e.field(), e.position()),
        ("bad_length", Some(Field::JoinEui), Some(11))
    );
    let e = err("URN:LW:DP:42FFFFFFFFFFFFFF:4242FFFFFFFFFFFF:42FFFF42AABB");
    assert_eq!(
        (e.kind(), e.field()),
        ("bad_length", Some(Field::ProfileId))
    );
    let e = err("URN:LW:DP:42FFFFFFFFFFFFFF:4242FFFFFFFFFFFF:42FFFF42:%V1%V2");
    assert_eq!(
        (e.kind(), e.field()),
        ("duplicate_tag", Some(Field::ValidationCode))
    );
    assert_eq!(
        e.to_string(),
        "repeated validation code (V) at position 57: expected each tag at most once, already at position 54"
    );
    // Drafts have no O or C tags.
    let e = err("URN:DEV:LW:42FFFFFFFFFFFFFF_4242FFFFFFFFFFFF_42FFFF42_CABCD");
    assert_eq!((e.kind(), e.position()), ("bad_tag", Some(54)));
}

#[test]
fn profile_id_from_str_errors() {
    let e = "AABB112".parse::<ProfileId>().unwrap_err();
    assert_eq!(
        e.to_string(),
        "bad ProfileID at position 0: expected 8 hex digits, found 7 (\"AABB112\")"
    );
}
