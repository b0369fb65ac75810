//! Any bytes as a stored session record of the embedded store (`sessions.redb` values and the
//! session journal's records) → `netserver::store::record::decode`. Not network-facing, but a
//! data directory's bytes are read at every start, a damaged one included. Beyond "no panic":
//! whatever reads writes back to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use netserver::store::record::{decode, encode, RECORD_TAG};

fuzz_target!(|data: &[u8]| {
    let mut bytes = data.to_vec();
    // Most inputs start with the tag, so the fuzzer explores the fields.
    if let Some(first) = bytes.first_mut() {
        if *first & 1 == 0 {
            *first = RECORD_TAG;
        }
    }
    if let Ok(s) = decode(&bytes) {
        let mut again = Vec::new();
        encode(&s, &mut again).expect("a record that reads writes");
        assert_eq!(again, bytes);
    }
});
