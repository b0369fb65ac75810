//! Labels from a join-server manifest.

use qr::decode::decode_image;
use qr::labels::{
    index_html, label_image, label_svg, read_manifest, write_labels, LabelError, LabelFormat,
};
use qr::{parse, DevEui, Field, JoinEui, ProfileId};

const HEADER: &str = "dev_eui,join_eui,mac_version,app_key,nwk_key,home_net_id,owner_token";
const KEY: &str = "2B7E151628AED2A6ABF7158809CF4F3C";

fn manifest(rows: &[&str]) -> String {
    let mut s = format!("{HEADER}\n");
    for r in rows {
        s.push_str(r);
        s.push('\n');
    }
    s
}

fn sample() -> String {
    manifest(&[
        &format!("0004A30B001C0530,70B3D57ED0000001,1.0.3,{KEY},,000013,OWNER1"),
        &format!("0004a30b001c0531,70b3d57ed0000001,1.1,{KEY},{KEY},,"),
        "",
        &format!("0004A30B001C0532,70B3D57ED0000002,1.0.4,{KEY},,,TOKEN-2"),
    ])
}

#[test]
fn reads_devices_and_never_keys() {
    let devices = read_manifest(&sample()).unwrap();
    assert_eq!(devices.len(), 3);
    assert_eq!(devices[0].line, 2);
    assert_eq!(devices[0].dev_eui, DevEui::new(0x0004A30B001C0530));
    assert_eq!(devices[0].join_eui, JoinEui::new(0x70B3D57ED0000001));
    assert_eq!(devices[0].owner_token.as_ref().unwrap().as_str(), "OWNER1");
    assert_eq!(devices[1].owner_token, None);
    assert_eq!(devices[2].line, 5);
    let code = devices[0].code(ProfileId::NONE).to_string();
    assert!(code.starts_with("LW:D0:70B3D57ED0000001:0004A30B001C0530:00000000:OOWNER1:C"));
    assert!(!format!("{:?}", devices).contains(KEY));
}

#[test]
fn short_rows_without_optional_columns_are_accepted() {
    let d = read_manifest("dev_eui,join_eui,mac_version,app_key,nwk_key,home_net_id,owner_token\n0000000000000001,0000000000000002,1.0.3\n").unwrap();
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].owner_token, None);
}

#[test]
fn png_label_decodes_to_the_code_and_shows_the_dev_eui() {
    let devices = read_manifest(&sample()).unwrap();
    let code = devices[0].code(ProfileId::new(0x1234, 0x5678));
    let img = label_image(&code).unwrap();
    let decoded = decode_image(&image::DynamicImage::ImageLuma8(img.clone()));
    assert_eq!(decoded.texts, vec![code.to_string()]);
    assert_eq!(parse(&decoded.texts[0]).unwrap().code, code);
    // Text is drawn beneath the code: dark pixels below the code's square.
    let qr_side = img.width().min(img.height());
    let below = (qr_side..img.height())
        .flat_map(|y| (0..img.width()).map(move |x| (x, y)))
        .filter(|&(x, y)| img.get_pixel(x, y)[0] == 0)
        .count();
    assert!(
        below > 100,
        "DevEUI text under the code ({below} dark pixels)"
    );
}

#[test]
fn svg_label_holds_the_code_and_dev_eui_but_no_key() {
    let devices = read_manifest(&sample()).unwrap();
    let code = devices[0].code(ProfileId::NONE);
    let svg = label_svg(&code).unwrap();
    assert!(svg.contains(&format!("<title>{code}</title>")));
    assert!(svg.contains(">0004A30B001C0530</text>"));
    assert!(svg.contains(">DevEUI</text>"));
    assert!(!svg.contains(KEY));
}

#[test]
fn writes_labels_and_an_a4_index() {
    let dir = tempfile::tempdir().unwrap();
    let devices = read_manifest(&sample()).unwrap();
    for format in [LabelFormat::Svg, LabelFormat::Png] {
        let out = dir.path().join(format.extension());
        let index = write_labels(&devices, ProfileId::NONE, format, &out, 2).unwrap();
        assert_eq!(index, out.join("index.html"));
        let html = std::fs::read_to_string(&index).unwrap();
        assert!(html.contains("@page { size: A4 portrait;"));
        for d in &devices {
            let name = format!("{}.{}", d.dev_eui, format.extension());
            assert!(out.join(&name).is_file(), "{name}");
            assert!(html.contains(&format!("src=\"{name}\"")));
        }
        assert_eq!(std::fs::read_dir(&out).unwrap().count(), devices.len() + 1);
    }
    assert_eq!(
        index_html(&devices, LabelFormat::Svg)
            .matches("<figure")
            .count(),
        3
    );
}

fn label_err(text: &str) -> LabelError {
    read_manifest(text).unwrap_err()
}

#[test]
fn error_empty_manifest() {
    let e = label_err("\n\n");
    assert_eq!(e.kind(), "empty_manifest");
    assert_eq!(
        e.to_string(),
        "manifest is empty: expected a header line with dev_eui and join_eui"
    );
}

#[test]
fn error_missing_column() {
    let e = label_err("deveui,join_eui\n");
    assert_eq!(e.kind(), "missing_column");
    assert_eq!(
        e.to_string(),
        "manifest line 1: expected a dev_eui column, found header \"deveui,join_eui\""
    );
}

#[test]
fn error_field_count() {
    let e = label_err(&manifest(&[
        "0000000000000001,0000000000000002,1.0.3,a,b,c,d,e",
    ]));
    assert_eq!(e.kind(), "field_count");
    assert_eq!(
        e.to_string(),
        "manifest line 2: expected 7 comma-separated fields, found 8"
    );
    let e = label_err(&manifest(&["0000000000000001"]));
    assert_eq!(
        e.to_string(),
        "manifest line 2: expected 7 comma-separated fields, found 1"
    );
}

#[test]
fn error_bad_field() {
    let e = label_err(&manifest(&["00000000000000G1,0000000000000002,1.0.3"]));
    assert_eq!(e.kind(), "bad_field");
    assert_eq!(
        e.to_string(),
        "manifest line 2, column dev_eui: bad DevEUI at position 14: expected a hex digit (0-9, A-F), found 'G'"
    );
    let e = label_err(&manifest(&["0000000000000001,00000002,1.0.3"]));
    assert_eq!(
        e.to_string(),
        "manifest line 2, column join_eui: bad JoinEUI at position 0: expected 16 hex digits, found 8 (\"00000002\")"
    );
    let e = label_err(&manifest(&[
        "0000000000000001,0000000000000002,1.0.3,k,,,OWN ER",
    ]));
    let LabelError::Field { reason, .. } = &e else {
        panic!("{e}")
    };
    assert_eq!(reason.field(), Some(Field::OwnerToken));
    assert_eq!(
        e.to_string(),
        "manifest line 2, column owner_token: bad OwnerToken (O) at position 3: expected printable ASCII (! to ~) other than ':', found ' '"
    );
}

#[test]
fn error_duplicate_dev_eui() {
    let e = label_err(&manifest(&[
        "0000000000000001,0000000000000002,1.0.3",
        "0000000000000003,0000000000000002,1.0.3",
        "0000000000000001,0000000000000005,1.0.3",
    ]));
    assert_eq!(e.kind(), "duplicate_dev_eui");
    assert_eq!(
        e.to_string(),
        "manifest line 4: DevEUI 0000000000000001 repeated, expected each device once (first on line 2)"
    );
}

#[test]
fn error_render() {
    let token = "T".repeat(4000);
    let d = read_manifest(&manifest(&[&format!(
        "0000000000000001,0000000000000002,1.0.3,k,,,{token}"
    )]))
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let e = write_labels(&d, ProfileId::NONE, LabelFormat::Svg, dir.path(), 1).unwrap_err();
    assert_eq!(e.kind(), "render");
    assert!(
        e.to_string()
            .starts_with("DevEUI 0000000000000001: cannot encode 4"),
        "{e}"
    );
}

#[test]
fn error_io() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let d = read_manifest(&manifest(&["0000000000000001,0000000000000002,1.0.3"])).unwrap();
    let e = write_labels(&d, ProfileId::NONE, LabelFormat::Svg, &file, 1).unwrap_err();
    assert_eq!(e.kind(), "io");
    assert!(
        e.to_string()
            .starts_with(&format!("cannot create {}: ", file.display())),
        "{e}"
    );
    // A label that cannot be written (its name is taken by a directory).
    let out = dir.path().join("out");
    std::fs::create_dir_all(out.join("0000000000000001.svg")).unwrap();
    let e = write_labels(&d, ProfileId::NONE, LabelFormat::Svg, &out, 1).unwrap_err();
    assert!(
        e.to_string().starts_with(&format!(
            "cannot write {}: ",
            out.join("0000000000000001.svg").display()
        )),
        "{e}"
    );
}
