//! Parsing behaviour (case, extensions, drafts) and the property tests.

use proptest::prelude::*;
use qr::{parse, ChecksumMode, DevEui, DeviceCode, JoinEui, ProfileId, Schema};

const SPEC: &str =
    "LW:D0:1122334455667788:AABBCCDDEEFF0011:AABB1122:OAABBCCDDEEFF:SYYWWNNNNNN:PFOOBAR:CAF2C";

#[test]
fn spec_example_fields_and_profile_halves() {
    let p = parse(SPEC).unwrap();
    assert_eq!(p.schema, Schema::D0);
    assert_eq!(p.code.join_eui, JoinEui::new(0x1122334455667788));
    assert_eq!(p.code.dev_eui, DevEui::new(0xAABBCCDDEEFF0011));
    assert_eq!(p.code.profile_id, ProfileId::new(0xAABB, 0x1122));
    assert_eq!(p.code.profile_id.as_u32(), 0xAABB1122);
    assert_eq!(p.checksum, Some(0xAF2C));
    assert_eq!(p.code.to_string(), SPEC);
}

#[test]
fn hex_is_case_insensitive_and_output_uppercase() {
    // The CheckSum covers the text as scanned (lowercase here).
    let lower = "LW:D0:1122334455667788:aabbccddeeff0011:aabb1122";
    let crc = qr::checksum(lower);
    let text = format!("{lower}:C{crc:04x}");
    let p = parse(&text).unwrap();
    assert_eq!(p.code.dev_eui, DevEui::new(0xAABBCCDDEEFF0011));
    assert_eq!(p.checksum, Some(crc));
    let canonical = p.code.to_string();
    assert!(canonical.starts_with("LW:D0:1122334455667788:AABBCCDDEEFF0011:AABB1122:C"));
    assert_eq!(parse(&canonical).unwrap().code, p.code);
}

#[test]
fn tag_only_extensions_are_ignored() {
    let p = parse("LW:D0:42FFFFFFFFFFFFFF:4242FFFFFFFFFFFF:42FFFF42:O:S:P").unwrap();
    assert_eq!(p.code.owner_token, None);
    assert_eq!(p.code.serial_number, None);
    assert_eq!(p.code.proprietary, None);
    assert!(p.code.unknown_extensions().is_empty());
}

#[test]
fn unknown_tags_are_kept_reported_and_re_encoded_before_the_checksum() {
    let base = "LW:D0:1111111111111111:2222222222222222:00000000:XHELLO:O1:ZW0RLD";
    let text = format!("{base}:C{:04X}", qr::checksum(base));
    let p = parse(&text).unwrap();
    let unknown: Vec<(char, &str)> = p
        .code
        .unknown_extensions()
        .iter()
        .map(|u| (u.tag, u.value.as_str()))
        .collect();
    assert_eq!(unknown, vec![('X', "HELLO"), ('Z', "W0RLD")]);
    let canonical = p.code.encode(ChecksumMode::Omit);
    assert_eq!(
        canonical,
        "LW:D0:1111111111111111:2222222222222222:00000000:O1:XHELLO:ZW0RLD"
    );
    assert_eq!(parse(&p.code.to_string()).unwrap().code, p.code);
}

#[test]
fn canonical_order_is_o_s_p_c() {
    let p = parse("LW:D0:1111111111111111:2222222222222222:ABCDABCD:PX:SY:OZ").unwrap();
    assert_eq!(
        p.code.to_string(),
        format!(
            "LW:D0:1111111111111111:2222222222222222:ABCDABCD:OZ:SY:PX:C{:04X}",
            qr::checksum("LW:D0:1111111111111111:2222222222222222:ABCDABCD:OZ:SY:PX")
        )
    );
}

#[test]
fn values_may_hold_any_printable_ascii_but_colon() {
    let p = parse("LW:D0:1111111111111111:2222222222222222:00000000:Oa-b_c%d/e+f=g").unwrap();
    assert_eq!(p.code.owner_token.unwrap().as_str(), "a-b_c%d/e+f=g");
}

#[test]
fn draft2_is_converted() {
    let p =
        parse("URN:LW:DP:42FFFFFFFFFFFFFF:4242FFFFFFFFFFFF:42FFFF42:%V0102%SSERIAL%PPROPRIETARY")
            .unwrap();
    assert_eq!(p.schema, Schema::Draft2);
    assert_eq!(p.checksum, None);
    assert_eq!(p.code.profile_id, ProfileId::new(0x42FF, 0xFF42));
    assert_eq!(p.code.owner_token.as_ref().unwrap().as_str(), "0102");
    assert_eq!(
        p.code.encode(ChecksumMode::Omit),
        "LW:D0:42FFFFFFFFFFFFFF:4242FFFFFFFFFFFF:42FFFF42:O0102:SSERIAL:PPROPRIETARY"
    );
    // Tag-only extensions and the "%25" escape, as in TTS's draft 2 tests.
    let p = parse("URN:LW:DP:42FFFFFFFFFFFFFF:4242FFFFFFFFFFFF:42FFFF42:%V%S%P").unwrap();
    assert_eq!(
        p.code.encode(ChecksumMode::Omit),
        "LW:D0:42FFFFFFFFFFFFFF:4242FFFFFFFFFFFF:42FFFF42"
    );
    let p = parse("URN:LW:DP:42FFFFFFFFFFFFFF:4242FFFFFFFFFFFF:42FFFF42:%25VABCD").unwrap();
    assert_eq!(p.code.owner_token.unwrap().as_str(), "ABCD");
    let p = parse("URN:LW:DP:42FFFFFFFFFFFFFF:4242FFFFFFFFFFFF:42FFFF42").unwrap();
    assert_eq!(p.code.owner_token, None);
}

#[test]
fn draft3_is_converted() {
    let p =
        parse("URN:DEV:LW:42FFFFFFFFFFFFFF_4242FFFFFFFFFFFF_42FFFF42_V0102_SSERIAL_PPROPRIETARY")
            .unwrap();
    assert_eq!(p.schema, Schema::Draft3);
    assert_eq!(
        p.code.encode(ChecksumMode::Omit),
        "LW:D0:42FFFFFFFFFFFFFF:4242FFFFFFFFFFFF:42FFFF42:O0102:SSERIAL:PPROPRIETARY"
    );
    let p = parse("URN:DEV:LW:42FFFFFFFFFFFFFF_4242FFFFFFFFFFFF_42FFFF42_V_S_P").unwrap();
    assert_eq!(
        p.code.encode(ChecksumMode::Omit),
        "LW:D0:42FFFFFFFFFFFFFF:4242FFFFFFFFFFFF:42FFFF42"
    );
}

#[test]
fn checksum_mode_omit() {
    let code = DeviceCode::new(JoinEui::new(0), DevEui::new(0), ProfileId::NONE);
    assert_eq!(
        code.encode(ChecksumMode::Omit),
        "LW:D0:0000000000000000:0000000000000000:00000000"
    );
    assert_eq!(
        code.to_string(),
        "LW:D0:0000000000000000:0000000000000000:00000000:C89C8"
    );
}

fn value() -> impl Strategy<Value = String> {
    // Printable ASCII other than ':'.
    proptest::collection::vec(
        prop_oneof![0x21u8..=0x39, 0x3Bu8..=0x7E].prop_map(char::from),
        1..24,
    )
    .prop_map(|v| v.into_iter().collect())
}

prop_compose! {
    fn device_code()(
        join in any::<u64>(),
        dev in any::<u64>(),
        profile in any::<u32>(),
        owner in proptest::option::of(value()),
        serial in proptest::option::of(value()),
        proprietary in proptest::option::of(value()),
        unknown in proptest::collection::btree_map(
            prop_oneof![Just('A'), Just('B'), Just('X'), Just('Z')], value(), 0..3),
    ) -> DeviceCode {
        let mut c = DeviceCode::new(JoinEui::new(join), DevEui::new(dev), ProfileId::from_u32(profile));
        if let Some(o) = owner { c = c.with_owner_token(&o).unwrap(); }
        if let Some(s) = serial { c = c.with_serial_number(&s).unwrap(); }
        if let Some(p) = proprietary { c = c.with_proprietary(&p).unwrap(); }
        for (tag, v) in unknown { c = c.with_unknown_extension(tag, &v).unwrap(); }
        c
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn parse_generate_round_trip(code in device_code()) {
        let with = parse(&code.to_string()).unwrap();
        prop_assert_eq!(&with.code, &code);
        prop_assert_eq!(with.checksum_valid(), Some(true));
        let without = parse(&code.encode(ChecksumMode::Omit)).unwrap();
        prop_assert_eq!(&without.code, &code);
        prop_assert_eq!(without.checksum, None);
    }

    #[test]
    fn any_single_character_change_is_caught(code in device_code(), at in any::<prop::sample::Index>(), c in 0x21u8..=0x7E) {
        // The CheckSum's whole point: a misread character of the content it covers is an error,
        // never another device. (A misread of the ":C" itself can only lose the CheckSum: the
        // code then reads as one without CheckSum, which `qr parse` says.)
        let text = code.to_string();
        let i = at.index(text.len() - ":CXXXX".len());
        let mut bytes = text.clone().into_bytes();
        prop_assume!(bytes[i] != c && !bytes[i].eq_ignore_ascii_case(&c));
        bytes[i] = c;
        let altered = String::from_utf8(bytes).unwrap();
        if let Ok(p) = parse(&altered) {
            // Only a change that keeps the same identity may pass (e.g. in the CheckSum's case).
            prop_assert_eq!(p.code, code, "{} accepted", altered);
        }
    }

    #[test]
    fn no_panic_on_arbitrary_strings(s in ".{0,120}") {
        let _ = parse(&s);
    }

    #[test]
    fn no_panic_on_code_like_strings(s in "(LW|URN:LW:DP|URN:DEV:LW|LX)[:_%A-Z0-9a-f]{0,90}") {
        if let Err(e) = parse(&s) {
            // Every error message is non-empty and its position is inside the text.
            prop_assert!(!e.to_string().is_empty());
            if let Some(p) = e.position() {
                prop_assert!(p <= s.chars().count());
            }
        }
    }

    #[test]
    fn no_panic_on_arbitrary_bytes(b in proptest::collection::vec(any::<u8>(), 0..120)) {
        let _ = qr::parse_bytes(&b);
    }
}
