//! Any bytes as a device manifest (the body of the join server's `POST /devices/import`, or a
//! file given to `joinserver devices import`) → `joinserver::manifest::ManifestParser`. Beyond
//! "no panic": the first two input bytes choose where the rest is cut in two, and the parser
//! must yield the same rows and row errors as for the whole, in line order, and every error must
//! say what is wrong.
#![no_main]

use joinserver::manifest::{Item, ManifestParser};
use libfuzzer_sys::fuzz_target;

fn parse(pieces: &[&[u8]]) -> Vec<Item> {
    let mut p = ManifestParser::new(None);
    let mut items = Vec::new();
    for piece in pieces {
        p.feed(piece, &mut |i| items.push(i));
    }
    p.finish(&mut |i| items.push(i));
    items
}

fuzz_target!(|data: &[u8]| {
    let (cut, manifest) = match data {
        [a, b, rest @ ..] => (
            usize::from(u16::from_le_bytes([*a, *b])) % (rest.len() + 1),
            rest,
        ),
        _ => (0, data),
    };
    let whole = parse(&[manifest]);
    let (head, tail) = manifest.split_at(cut);
    assert_eq!(parse(&[head, tail]), whole, "cut at {cut}");
    for w in whole.windows(2) {
        assert!(w[0].line() <= w[1].line(), "lines go forward");
    }
    for i in &whole {
        if let Item::Error(e) = i {
            assert!(!e.message.is_empty() && !e.column.is_empty());
        }
    }
});
