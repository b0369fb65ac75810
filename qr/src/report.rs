//! What a check of a scanned text reports, as JSON: the shape of `qr parse --json`, shared by
//! the CLI and the join server's `POST /api/v1/qr/parse` (which the installer web app calls), so
//! both say exactly the same thing about the same text.

use serde_json::{json, Value};

use crate::{ExtensionValue, Parsed, QrError};

/// A code of another kind that installers meet on the same devices, recognised by its prefix
/// so that it can be named instead of only refused: (prefix, name).
const OTHER_FORMATS: &[(&str, &str)] = &[
    ("MT:", "Matter onboarding code (MT:)"),
    ("https://", "web address"),
    ("http://", "web address"),
];

/// The name of the kind of code `text` is, when it is a known code that is not TR005 (a
/// Matter `MT:` code, a web address); `None` otherwise.
pub fn other_format(text: &str) -> Option<&'static str> {
    OTHER_FORMATS
        .iter()
        .find(|(prefix, _)| {
            text.get(..prefix.len())
                .is_some_and(|p| p.eq_ignore_ascii_case(prefix))
        })
        .map(|(_, name)| *name)
}

fn opt(v: &Option<ExtensionValue>) -> Value {
    v.as_ref().map_or(Value::Null, |v| Value::from(v.as_str()))
}

/// A valid code: `{"valid": true, "schema", "join_eui", "dev_eui", ...}`.
pub fn parsed_json(p: &Parsed) -> Value {
    let c = &p.code;
    json!({
        "valid": true,
        "schema": p.schema.as_str(),
        "join_eui": c.join_eui.to_string(),
        "dev_eui": c.dev_eui.to_string(),
        "profile_id": c.profile_id.to_string(),
        "vendor_id": format!("{:04X}", c.profile_id.vendor_id),
        "vendor_profile_id": format!("{:04X}", c.profile_id.vendor_profile_id),
        "owner_token": opt(&c.owner_token),
        "serial_number": opt(&c.serial_number),
        "proprietary": opt(&c.proprietary),
        "checksum": p.checksum.map(|v| format!("{v:04X}")),
        "checksum_valid": p.checksum_valid(),
        "unknown_extensions": c.unknown_extensions().iter().map(|u| json!({
            "tag": u.tag.to_string(),
            "value": u.value.as_str(),
        })).collect::<Vec<_>>(),
        "canonical": c.to_string(),
    })
}

/// A refused text: `{"valid": false, "error", "kind", "field", "position", "other_format"}`;
/// `error` is the message `qr parse` prints after `error: invalid code: `.
pub fn error_json(text: &str, e: &QrError) -> Value {
    json!({
        "valid": false,
        "error": e.to_string(),
        "kind": e.kind(),
        "field": e.field().map(|f| f.to_string()),
        "position": e.position(),
        "other_format": other_format(text),
    })
}

/// The JSON report of checking `text` by the rules of [`crate::parse`].
pub fn check_json(text: &str) -> Value {
    match crate::parse(text) {
        Ok(p) => parsed_json(&p),
        Err(e) => error_json(text, &e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Any text gets a report, never a panic, and the report agrees with the parser.
        #[test]
        fn every_text_gets_a_report_that_agrees_with_parse(text in "\\PC{0,120}|LW:D0:[0-9A-F:]{0,60}|MT:.{0,20}") {
            let v = check_json(&text);
            prop_assert_eq!(v["valid"].as_bool(), Some(crate::parse(&text).is_ok()));
            if v["valid"] == false {
                prop_assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()));
                prop_assert_eq!(v["other_format"].as_str(), other_format(&text));
            }
        }
    }

    #[test]
    fn names_other_formats_by_prefix() {
        for (text, want) in [
            (
                "MT:Y.K9042C00KA0648G00",
                Some("Matter onboarding code (MT:)"),
            ),
            (
                "mt:Y.K9042C00KA0648G00",
                Some("Matter onboarding code (MT:)"),
            ),
            ("https://example.com/d/1", Some("web address")),
            ("HTTP://example.com", Some("web address")),
            ("LW:D0:1122334455667788", None),
            ("MT", None),
            ("", None),
            ("é", None),
        ] {
            assert_eq!(other_format(text), want, "{text:?}");
        }
    }

    #[test]
    fn check_json_reports_a_matter_code_as_another_format() {
        let v = check_json("MT:Y.K9042C00KA0648G00");
        assert_eq!(v["valid"], false);
        assert_eq!(v["kind"], "bad_preface");
        assert_eq!(v["other_format"], "Matter onboarding code (MT:)");
        assert!(v["error"]
            .as_str()
            .unwrap()
            .starts_with("bad preface at position 0"));
    }

    #[test]
    fn check_json_of_a_valid_code_has_its_fields() {
        let text = "LW:D0:1122334455667788:AABBCCDDEEFF0011:AABB1122:OAABBCCDDEEFF:SYYWWNNNNNN:PFOOBAR:CAF2C";
        let v = check_json(text);
        assert_eq!(v["valid"], true);
        assert_eq!(v["dev_eui"], "AABBCCDDEEFF0011");
        assert_eq!(v["owner_token"], "AABBCCDDEEFF");
        assert_eq!(v["checksum_valid"], true);
        assert_eq!(v["canonical"], text);
    }
}
