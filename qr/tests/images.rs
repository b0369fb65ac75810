//! Rendering and decoding: the 1,000-code round trip, fixtures from another generator, and the
//! render/decode errors.

use std::path::{Path, PathBuf};

use image::{GrayImage, Luma};
use qr::decode::{decode_file, decode_image, decode_once, DecodeError};
use qr::render::{self, Matrix, RenderError, QUIET_ZONE};
use qr::{parse, DevEui, DeviceCode, JoinEui, ProfileId};
use rand::{Rng, SeedableRng};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

const SPEC: &str =
    "LW:D0:1122334455667788:AABBCCDDEEFF0011:AABB1122:OAABBCCDDEEFF:SYYWWNNNNNN:PFOOBAR:CAF2C";

fn random_value(rng: &mut impl Rng, alphabet: &[u8]) -> String {
    let n = rng.gen_range(1..=12);
    (0..n)
        .map(|_| char::from(alphabet[rng.gen_range(0..alphabet.len())]))
        .collect()
}

fn random_code(rng: &mut impl Rng) -> DeviceCode {
    const ALNUM: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";
    const PRINTABLE: &[u8] =
        b"!\"#$%&'()*+,-./0123456789;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[\\]^_`abcdefghijklmnopqrstuvwxyz{|}~";
    let mut c = DeviceCode::new(
        JoinEui::new(rng.gen()),
        DevEui::new(rng.gen()),
        ProfileId::from_u32(rng.gen()),
    );
    // Mostly installer-realistic alphanumeric values; some with any printable character, which
    // forces the QR byte mode.
    let alphabet = if rng.gen_bool(0.8) { ALNUM } else { PRINTABLE };
    if rng.gen_bool(0.7) {
        c = c.with_owner_token(&random_value(rng, alphabet)).unwrap();
    }
    if rng.gen_bool(0.5) {
        c = c.with_serial_number(&random_value(rng, alphabet)).unwrap();
    }
    if rng.gen_bool(0.3) {
        c = c.with_proprietary(&random_value(rng, alphabet)).unwrap();
    }
    c
}

#[test]
fn render_then_decode_1000_random_codes() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0x7205);
    let codes: Vec<DeviceCode> = (0..1000).map(|_| random_code(&mut rng)).collect();
    // rqrr's grid fitting dominates (about 10 ms a code): spread the codes over the cores.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let checked: usize = std::thread::scope(|s| {
        let handles: Vec<_> = codes
            .chunks(codes.len().div_ceil(threads))
            .map(|part| {
                s.spawn(move || {
                    for code in part {
                        let text = code.to_string();
                        // 2 pixels per module: the smallest image rqrr reads reliably.
                        let img = Matrix::encode(&text).unwrap().to_image(2);
                        let decoded = decode_once(&img);
                        assert_eq!(decoded.texts, vec![text.clone()], "{text}");
                        assert_eq!(&parse(&decoded.texts[0]).unwrap().code, code);
                    }
                    part.len()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    assert_eq!(checked, 1000);
}

#[test]
fn png_and_svg_output() {
    let png = render::png(SPEC, None).unwrap();
    let img = image::load_from_memory(&png).unwrap().to_luma8();
    let m = Matrix::encode(SPEC).unwrap();
    // Version 4 (33 modules) at level M for this 87-character alphanumeric text.
    assert_eq!(m.width(), 33);
    assert_eq!(
        img.width(),
        (33 + 2 * QUIET_ZONE as u32) * render::DEFAULT_MODULE_PX
    );
    // The quiet zone is light all round.
    let q = QUIET_ZONE as u32 * render::DEFAULT_MODULE_PX;
    for i in 0..img.width() {
        for j in 0..q {
            assert_eq!(img.get_pixel(i, j)[0], 255);
            assert_eq!(img.get_pixel(j, i)[0], 255);
        }
    }
    assert_eq!(
        decode_image(&image::DynamicImage::ImageLuma8(img)).texts,
        vec![SPEC]
    );
    // --size picks the largest whole module size that fits.
    let small = image::load_from_memory(&render::png(SPEC, Some(300)).unwrap()).unwrap();
    assert_eq!(small.width(), 41 * 7);
    let svg = render::svg(SPEC, Some(300)).unwrap();
    assert!(svg.contains("width=\"300\" height=\"300\" viewBox=\"0 0 41 41\""));
    assert!(svg.contains(&format!("<title>{SPEC}</title>")));
    assert!(
        svg.contains("<path fill=\"#000\" d=\"M4,4h7v1h-7z"),
        "finder pattern first"
    );
}

#[test]
fn ansi_output_draws_two_modules_per_cell() {
    let out = render::ansi(SPEC).unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 41_usize.div_ceil(2));
    assert!(lines.iter().all(|l| l.ends_with("\x1b[0m")));
    assert_eq!(lines[0].matches('▀').count(), 41);
    // Read the drawing back: each cell is "ESC[<fg>;<bg>m▀", fg = upper module, bg = lower.
    let m = Matrix::encode(SPEC).unwrap();
    let n = m.width_with_quiet_zone();
    let dark = |x: usize, y: usize| {
        x >= QUIET_ZONE && y >= QUIET_ZONE && m.is_dark(x - QUIET_ZONE, y - QUIET_ZONE)
    };
    for (row, line) in lines.iter().enumerate() {
        let cells: Vec<&str> = line
            .trim_end_matches("\x1b[0m")
            .split('▀')
            .filter(|c| !c.is_empty())
            .collect();
        assert_eq!(cells.len(), n);
        for (x, cell) in cells.iter().enumerate() {
            let codes = cell.trim_start_matches("\x1b[").trim_end_matches('m');
            let (fg, bg) = codes.split_once(';').unwrap();
            assert_eq!(
                fg == "30",
                dark(x, 2 * row),
                "upper module ({x}, {})",
                2 * row
            );
            assert_eq!(
                bg == "40",
                dark(x, 2 * row + 1),
                "lower module ({x}, {})",
                2 * row + 1
            );
            assert!(
                matches!(fg, "30" | "97") && matches!(bg, "40" | "107"),
                "{cell:?}"
            );
        }
    }
}

#[test]
fn fixture_plain_png_and_jpeg() {
    assert_eq!(
        decode_file(&fixture("plain.png")).unwrap().texts,
        vec![SPEC]
    );
    assert_eq!(
        decode_file(&fixture("plain.jpg")).unwrap().texts,
        vec![SPEC]
    );
}

#[test]
fn fixture_rotated() {
    assert_eq!(
        decode_file(&fixture("rotated.png")).unwrap().texts,
        vec!["LW:D0:1111111111111111:2222222222222222:ABCDABCD:O123456:S12345678:C7A4D"]
    );
}

#[test]
fn fixture_photo_needs_grayscale_and_scaling() {
    let img = image::open(fixture("photo.jpg")).unwrap();
    assert!(img.color().has_color(), "a colour photo");
    assert!(
        img.width() > qr::decode::MAX_SIDE,
        "larger than the working size"
    );
    let d = decode_file(&fixture("photo.jpg")).unwrap();
    assert_eq!(
        d.texts,
        vec!["LW:D0:42FFFFFFFFFFFFFF:4242FFFFFFFFFFFF:42FFFF42:CE4DE"]
    );
    assert_eq!(d.unreadable, 0);
}

#[test]
fn fixture_several_codes_in_one_image() {
    let mut texts = decode_file(&fixture("multi.png")).unwrap().texts;
    texts.sort();
    assert_eq!(
        texts,
        vec![
            "LW:D0:0000000000000000:0000000000000000:00000000:C89C8",
            SPEC,
            "LW:D0:42FFFFFFFFFFFFFF:4242FFFFFFFFFFFF:42FFFF42:CE4DE",
        ]
    );
}

#[test]
fn fixture_bad_checksum_decodes_but_does_not_validate() {
    let texts = decode_file(&fixture("bad_checksum.png")).unwrap().texts;
    assert_eq!(texts.len(), 1);
    assert_eq!(parse(&texts[0]).unwrap_err().kind(), "checksum_mismatch");
}

#[test]
fn fixture_without_code_is_an_error() {
    let e = decode_file(&fixture("nocode.png")).unwrap_err();
    assert_eq!(e.kind(), "no_code");
    assert_eq!(
        e.to_string(),
        format!(
            "no QR code found in {}: expected at least one QR code with its three finder patterns and a light border",
            fixture("nocode.png").display()
        )
    );
}

#[test]
fn inverted_code_is_read() {
    let mut img = Matrix::encode(SPEC).unwrap().to_image(4);
    image::imageops::invert(&mut img);
    assert_eq!(
        decode_image(&image::DynamicImage::ImageLuma8(img)).texts,
        vec![SPEC]
    );
}

#[test]
fn decode_error_read() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.png");
    let e = decode_file(&missing).unwrap_err();
    assert_eq!(e.kind(), "read");
    assert!(
        e.to_string()
            .starts_with(&format!("cannot read {}: ", missing.display())),
        "{e}"
    );
}

#[test]
fn decode_error_image() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.png");
    std::fs::write(&path, "LW:D0:this is text, not an image").unwrap();
    let e = decode_file(&path).unwrap_err();
    assert_eq!(e.kind(), "image");
    let msg = e.to_string();
    assert!(
        msg.starts_with(&format!("cannot decode image {}: ", path.display())),
        "{msg}"
    );
    assert!(msg.ends_with("(expected a PNG or JPEG file)"), "{msg}");
}

#[test]
fn decode_error_unreadable() {
    // A code whose finder patterns are intact but whose data area is wiped beyond what
    // error correction can repair.
    let m = Matrix::encode(SPEC).unwrap();
    let px = 4;
    let mut img = m.to_image(px);
    let q = QUIET_ZONE as u32 * px;
    for y in 10 * px..24 * px {
        for x in 10 * px..30 * px {
            img.put_pixel(
                q + x,
                q + y,
                Luma([if (x / px + y / px) % 2 == 0 { 0 } else { 255 }]),
            );
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("damaged.png");
    img.save(&path).unwrap();
    let e = decode_file(&path).unwrap_err();
    assert_eq!(e.kind(), "unreadable", "{e}");
    let DecodeError::Unreadable { count, .. } = &e else {
        unreachable!()
    };
    assert!(e.to_string().starts_with(&format!(
        "{count} QR code(s) found in {} but none could be read (",
        path.display()
    )));
    assert!(e
        .to_string()
        .ends_with("): the image may be blurred, cut or damaged"));
}

#[test]
fn render_error_encode() {
    let long = "A".repeat(5000);
    let e = Matrix::encode(&long).unwrap_err();
    assert_eq!(e.kind(), "encode");
    assert_eq!(
        e.to_string(),
        "cannot encode 5000 characters in a QR code at error-correction level M: data too long"
    );
}

#[test]
fn render_error_png() {
    let e = render::encode_png(&GrayImage::new(0, 0)).unwrap_err();
    assert_eq!(e.kind(), "png");
    assert!(matches!(e, RenderError::Png(_)));
    assert!(e.to_string().starts_with("cannot write PNG: "), "{e}");
}

#[test]
fn small_code_in_a_large_image_is_read_at_full_resolution() {
    // 2 px per module in a 3000 px image: scaled down to 1600 px it is about 1 px per module,
    // too small; the full-resolution retry reads it.
    let code = Matrix::encode(SPEC).unwrap().to_image(2);
    let mut big = GrayImage::from_pixel(3000, 2000, Luma([255]));
    image::imageops::overlay(&mut big, &code, 2100, 1300);
    let d = decode_image(&image::DynamicImage::ImageLuma8(big));
    assert_eq!(d.texts, vec![SPEC]);
}

#[test]
fn a_sheet_of_sixteen_labels_is_read_whole() {
    // Codes in a regular grid, as on a printed label sheet: their finder patterns line up
    // with their neighbours', which is where a single detection pass loses most of them.
    let mut sheet = GrayImage::from_pixel(4 * 200, 4 * 200, Luma([255]));
    let mut expected = Vec::new();
    for k in 0..16u64 {
        let code = DeviceCode::new(
            JoinEui::new(0x70B3D57ED0000001),
            DevEui::new(0x0004A30B00000000 + k),
            ProfileId::NONE,
        );
        let img = Matrix::encode(&code.to_string()).unwrap().to_image(4);
        image::imageops::overlay(
            &mut sheet,
            &img,
            (k % 4) as i64 * 200 + 10,
            (k / 4) as i64 * 200 + 10,
        );
        expected.push(code.to_string());
    }
    expected.sort();
    let mut texts = decode_once(&sheet).texts;
    texts.sort();
    assert_eq!(texts, expected);
    let mut texts = decode_image(&image::DynamicImage::ImageLuma8(sheet)).texts;
    texts.sort();
    assert_eq!(texts, expected);
}
