//! The `qr` binary, run as an installer would, on real files.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

const SPEC: &str =
    "LW:D0:1122334455667788:AABBCCDDEEFF0011:AABB1122:OAABBCCDDEEFF:SYYWWNNNNNN:PFOOBAR:CAF2C";
const BAD_CRC: &str =
    "LW:D0:1122334455667788:AABBCCDDEEFF0011:AABB1122:OAABBCCDDEEFF:SYYWWNNNNNN:PFOOBAR:CAF2D";

fn qr(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_qr"))
        .args(args)
        .output()
        .expect("run qr")
}

fn qr_stdin(args: &[&str], input: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_qr"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run qr");
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

#[test]
fn parse_json_fields() {
    let o = qr(&["parse", "--json", SPEC]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["join_eui"], "1122334455667788");
    assert_eq!(v["dev_eui"], "AABBCCDDEEFF0011");
    assert_eq!(v["profile_id"], "AABB1122");
    assert_eq!(v["vendor_id"], "AABB");
    assert_eq!(v["vendor_profile_id"], "1122");
    assert_eq!(v["owner_token"], "AABBCCDDEEFF");
    assert_eq!(v["serial_number"], "YYWWNNNNNN");
    assert_eq!(v["proprietary"], "FOOBAR");
    assert_eq!(v["checksum"], "AF2C");
    assert_eq!(v["checksum_valid"], true);
    assert_eq!(v["schema"], "D0");
    assert_eq!(v["canonical"], SPEC);
    assert_eq!(v["unknown_extensions"], serde_json::json!([]));
}

#[test]
fn parse_json_without_checksum_and_with_unknown_tag() {
    let o = qr(&[
        "parse",
        "--json",
        "LW:D0:1111111111111111:2222222222222222:00000000:XABC",
    ]);
    assert!(o.status.success());
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["checksum"], Value::Null);
    assert_eq!(v["checksum_valid"], Value::Null);
    assert_eq!(v["owner_token"], Value::Null);
    assert_eq!(v["unknown_extensions"][0]["tag"], "X");
    assert_eq!(v["unknown_extensions"][0]["value"], "ABC");
}

#[test]
fn parse_human_output() {
    let o = qr(&["parse", SPEC]);
    assert!(o.status.success());
    let out = stdout(&o);
    assert!(out.starts_with("valid code (TR005 D0)\n"), "{out}");
    assert!(out.contains("  DevEUI           AABBCCDDEEFF0011\n"));
    assert!(out.contains("  ProfileID        AABB1122 (VendorID AABB, VendorProfileID 1122)\n"));
    assert!(out.contains("  CheckSum         AF2C (valid)\n"));
    let o = qr(&[
        "parse",
        "LW:D0:1111111111111111:2222222222222222:00000000:XABC",
    ]);
    let out = stdout(&o);
    assert!(out.contains("  CheckSum         none (the code cannot prove it was read correctly)\n"));
    assert!(out.contains("  warning: unknown extension X = ABC (kept)\n"));
}

#[test]
fn parse_draft_is_converted() {
    let o = qr(&[
        "parse",
        "--json",
        "URN:DEV:LW:42FFFFFFFFFFFFFF_4242FFFFFFFFFFFF_42FFFF42_V0102",
    ]);
    assert!(o.status.success());
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["schema"], "draft3");
    assert_eq!(v["owner_token"], "0102");
    assert!(v["canonical"]
        .as_str()
        .unwrap()
        .starts_with("LW:D0:42FFFFFFFFFFFFFF:4242FFFFFFFFFFFF:42FFFF42:O0102:C"));
    let o = qr(&[
        "parse",
        "URN:DEV:LW:42FFFFFFFFFFFFFF_4242FFFFFFFFFFFF_42FFFF42",
    ]);
    assert!(stdout(&o).starts_with("valid code (deprecated TR005 draft3, converted to D0)\n"));
}

#[test]
fn parse_invalid_exits_non_zero_with_the_error_and_a_caret() {
    let o = qr(&["parse", BAD_CRC]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stdout(&o), "");
    let err = stderr(&o);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(
        lines[0],
        "error: invalid code: wrong CheckSum (C) at position 84: expected AF2C (CRC-16/MODBUS of the text before \":C\"), found AF2D: the code was misread or altered"
    );
    assert_eq!(lines[1], format!("  {BAD_CRC}"));
    assert_eq!(lines[2], format!("  {}^", " ".repeat(84)));
}

#[test]
fn parse_invalid_json() {
    let o = qr(&[
        "parse",
        "--json",
        "LW:D0:11223344556677GG:AABBCCDDEEFF0011:AABB1122",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["valid"], false);
    assert_eq!(v["kind"], "bad_hex_digit");
    assert_eq!(v["field"], "JoinEUI");
    assert_eq!(v["position"], 20);
    assert_eq!(
        v["error"],
        "bad JoinEUI at position 20: expected a hex digit (0-9, A-F), found 'G'"
    );
}

#[test]
fn parse_from_stdin() {
    let o = qr_stdin(&["parse", "--json", "-"], format!("{SPEC}\r\n").as_bytes());
    assert!(o.status.success(), "{}", stderr(&o));
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["dev_eui"], "AABBCCDDEEFF0011");
    // Only one trailing newline is removed: anything else is part of the code.
    let o = qr_stdin(&["parse", "-"], format!("{SPEC} \n").as_bytes());
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o)
        .contains("bad CheckSum (C) at position 84: expected 4 hex digits, found \"AF2C \""));
    let o = qr_stdin(&["parse", "-"], b"LW:\xff\n");
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        "error: not text: invalid UTF-8 byte at position 3\n"
    );
    let o = qr_stdin(&["parse", "-"], b"\n");
    assert_eq!(
        stderr(&o),
        "error: invalid code: empty code: expected \"LW:D0:...\", found nothing\n"
    );
}

#[test]
fn encode_canonical_with_and_without_checksum() {
    let o = qr(&[
        "encode",
        "--join-eui",
        "1122334455667788",
        "--dev-eui",
        "aabbccddeeff0011",
        "--profile-id",
        "AABB1122",
        "--owner-token",
        "AABBCCDDEEFF",
        "--serial",
        "YYWWNNNNNN",
        "--proprietary",
        "FOOBAR",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), format!("{SPEC}\n"));
    let o = qr(&[
        "encode",
        "--join-eui",
        "42FFFFFFFFFFFFFF",
        "--dev-eui",
        "4242FFFFFFFFFFFF",
        "--profile-id",
        "42FFFF42",
        "--no-checksum",
    ]);
    assert_eq!(
        stdout(&o),
        "LW:D0:42FFFFFFFFFFFFFF:4242FFFFFFFFFFFF:42FFFF42\n"
    );
}

#[test]
fn encode_errors() {
    let base = [
        "encode",
        "--join-eui",
        "1122334455667788",
        "--dev-eui",
        "AABBCCDDEEFF0011",
        "--profile-id",
        "AABB1122",
    ];
    let mut args = base.to_vec();
    args.extend(["--owner-token", "AB:CD"]);
    let o = qr(&args);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        "error: bad OwnerToken (O) at position 2: expected printable ASCII (! to ~) other than ':', found ':'\n"
    );
    let mut args = base.to_vec();
    args.extend(["--serial", ""]);
    let o = qr(&args);
    assert_eq!(
        stderr(&o),
        "error: bad SerNum (S): expected a value of at least one character, found an empty value\n"
    );
    let mut args = base.to_vec();
    args[6] = "AABB11";
    let o = qr(&args);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains(
        "invalid value 'AABB11' for '--profile-id <PROFILE_ID>': bad ProfileID at position 0: expected 8 hex digits, found 6 (\"AABB11\")"
    ), "{}", stderr(&o));
    let mut args = base.to_vec();
    args[2] = "11223344";
    let o = qr(&args);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("invalid value '11223344' for '--join-eui <JOIN_EUI>'"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn render_formats_then_decode() {
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("code.png");
    let o = qr(&[
        "render",
        SPEC,
        "--format",
        "png",
        "--out",
        png.to_str().unwrap(),
        "--size",
        "400",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let img = image::open(&png).unwrap();
    assert_eq!(
        img.width(),
        41 * 9,
        "largest whole module size within 400 px"
    );
    let o = qr(&["decode", "--json", png.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(v["text"], SPEC);
    assert_eq!(v["checksum_valid"], true);

    let o = qr(&["render", SPEC, "--format", "svg"]);
    assert!(o.status.success());
    assert!(stdout(&o).starts_with("<?xml"));
    assert!(stdout(&o).contains("viewBox=\"0 0 41 41\""));

    let o = qr(&["render", SPEC, "--format", "ansi"]);
    assert!(o.status.success());
    assert_eq!(stdout(&o).lines().count(), 21);
}

#[test]
fn render_refuses_an_invalid_code() {
    let o = qr(&["render", BAD_CRC, "--format", "svg"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stdout(&o), "");
    assert!(stderr(&o).starts_with("error: invalid code: wrong CheckSum (C) at position 84"));
}

#[test]
fn render_write_error() {
    let o = qr(&[
        "render",
        SPEC,
        "--format",
        "svg",
        "--out",
        "/nonexistent-dir/x.svg",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).starts_with("error: cannot write /nonexistent-dir/x.svg: "),
        "{}",
        stderr(&o)
    );
}

#[test]
fn decode_fixtures() {
    let o = qr(&[
        "decode",
        fixture("plain.png").to_str().unwrap(),
        fixture("photo.jpg").to_str().unwrap(),
        fixture("multi.png").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains(&format!(
        "plain.png code 1 of 1: {SPEC}\nvalid code (TR005 D0)\n"
    )));
    assert!(out.contains(
        "photo.jpg code 1 of 1: LW:D0:42FFFFFFFFFFFFFF:4242FFFFFFFFFFFF:42FFFF42:CE4DE\n"
    ));
    assert!(out.contains("multi.png code 3 of 3: "));
    assert_eq!(out.matches("valid code (TR005 D0)").count(), 5);
}

#[test]
fn decode_json_lines() {
    let o = qr(&["decode", "--json", fixture("multi.png").to_str().unwrap()]);
    assert!(o.status.success());
    let rows: Vec<Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 3);
    assert!(rows
        .iter()
        .all(|r| r["valid"] == true && r["file"].as_str().unwrap().ends_with("multi.png")));
}

#[test]
fn decode_no_code_and_invalid_code() {
    let nocode = fixture("nocode.png");
    let bad = fixture("bad_checksum.png");
    let o = qr(&["decode", nocode.to_str().unwrap(), bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(err.contains(&format!(
        "error: no QR code found in {}: expected at least one QR code with its three finder patterns and a light border\n",
        nocode.display()
    )), "{err}");
    assert!(
        err.contains(&format!(
            "{}: code 1 of 1:\nerror: invalid code: wrong CheckSum (C) at position 84",
            bad.display()
        )),
        "{err}"
    );
    // The decoded text is still shown, so the installer sees what was read.
    assert!(stdout(&o).contains(&format!("code 1 of 1: {BAD_CRC}\n")));

    let o = qr(&["decode", "--json", nocode.to_str().unwrap()]);
    let v: Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(v["kind"], "no_code");
    assert_eq!(v["valid"], false);
}

#[test]
fn decode_unreadable_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("text.jpg");
    std::fs::write(&path, "not an image").unwrap();
    let o = qr(&["decode", path.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).starts_with(&format!("error: cannot decode image {}: ", path.display())));
    let o = qr(&["decode", "/nonexistent.png"]);
    assert!(stderr(&o).starts_with("error: cannot read /nonexistent.png: "));
}

#[test]
fn labels_svg_and_png_from_a_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("devices.csv");
    std::fs::write(
        &manifest,
        "dev_eui,join_eui,mac_version,app_key,nwk_key,home_net_id,owner_token\n\
         0004A30B001C0530,70B3D57ED0000001,1.0.3,2B7E151628AED2A6ABF7158809CF4F3C,,000013,OWNER1\n\
         0004A30B001C0531,70B3D57ED0000001,1.1,2B7E151628AED2A6ABF7158809CF4F3C,2B7E151628AED2A6ABF7158809CF4F3D,,\n",
    )
    .unwrap();
    let out = dir.path().join("labels");
    let o = qr(&[
        "labels",
        manifest.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--format",
        "png",
        "--profile-id",
        "AABB1122",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stderr(&o),
        format!(
            "wrote 2 png labels and {}\n",
            out.join("index.html").display()
        )
    );
    // The label's code reads back, validated, with the manifest's owner token.
    let o = qr(&[
        "decode",
        "--json",
        out.join("0004A30B001C0530.png").to_str().unwrap(),
    ]);
    let v: Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(v["dev_eui"], "0004A30B001C0530");
    assert_eq!(v["join_eui"], "70B3D57ED0000001");
    assert_eq!(v["profile_id"], "AABB1122");
    assert_eq!(v["owner_token"], "OWNER1");
    assert_eq!(v["checksum_valid"], true);

    let o = qr(&[
        "labels",
        manifest.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success());
    let svg = std::fs::read_to_string(out.join("0004A30B001C0531.svg")).unwrap();
    assert!(svg.contains(">0004A30B001C0531</text>"));
    assert!(!svg.contains("2B7E1516"), "no key on a label");
    let html = std::fs::read_to_string(out.join("index.html")).unwrap();
    assert!(html.contains("0004A30B001C0531.svg"));
}

#[test]
fn labels_errors() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("devices.csv");
    std::fs::write(
        &manifest,
        "dev_eui,join_eui\n0004A30B001C0530,70B3D57ED000000\n",
    )
    .unwrap();
    let out = dir.path().join("labels");
    let o = qr(&[
        "labels",
        manifest.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        "error: manifest line 2, column join_eui: bad JoinEUI at position 0: expected 16 hex digits, found 15 (\"70B3D57ED000000\")\n"
    );
    let o = qr(&["labels", "/nonexistent.csv", "--out", out.to_str().unwrap()]);
    assert!(stderr(&o).starts_with("error: cannot read manifest /nonexistent.csv: "));
}

#[test]
fn render_refuses_png_on_a_terminal() {
    // util-linux `script` gives the command a pseudo-terminal as standard output.
    let cmd = format!("{} render {SPEC} --format png", env!("CARGO_BIN_EXE_qr"));
    let o = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .expect("script (util-linux) runs");
    assert_eq!(o.status.code(), Some(1));
    let shown = String::from_utf8_lossy(&o.stdout).replace('\r', "");
    assert_eq!(
        shown,
        "error: refusing to write PNG to a terminal: use --out FILE or redirect standard output\n"
    );
}
