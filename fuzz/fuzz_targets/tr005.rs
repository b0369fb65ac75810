//! TR005 strings: the parser never panics, and whatever it accepts re-encodes canonically to a
//! text that parses back to the same identity with a valid CheckSum. The JSON report of a check
//! (what `POST /api/v1/qr/parse` answers) never panics and agrees with the parser.
//!
//! Run: `cargo +nightly fuzz run tr005` from the workspace root.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let report = qr::report::check_json(text);
        assert_eq!(report["valid"].as_bool(), Some(qr::parse(text).is_ok()));
    }
    if let Ok(parsed) = qr::parse_bytes(data) {
        let canonical = parsed.code.to_string();
        let again = qr::parse(&canonical).expect("canonical form parses");
        assert_eq!(again.code, parsed.code);
        assert_eq!(again.checksum_valid(), Some(true));
        assert_eq!(again.code.to_string(), canonical);
    }
});
