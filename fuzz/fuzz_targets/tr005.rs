//! TR005 strings: the parser never panics, and whatever it accepts re-encodes canonically to a
//! text that parses back to the same identity with a valid CheckSum.
//!
//! Run: `cargo +nightly fuzz run tr005` from the workspace root.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(parsed) = qr::parse_bytes(data) {
        let canonical = parsed.code.to_string();
        let again = qr::parse(&canonical).expect("canonical form parses");
        assert_eq!(again.code, parsed.code);
        assert_eq!(again.checksum_valid(), Some(true));
        assert_eq!(again.code.to_string(), canonical);
    }
});
