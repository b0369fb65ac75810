//! The installer web app as the real `joinserver` binary serves it on its API listener: the
//! embedded files at `/install/` (exactly the committed build, with their media types, ETags
//! and confining headers), and `POST /api/v1/qr/parse`, which answers what `qr parse --json`
//! prints. The app itself is tested in a browser by `installer/tests/` (scripts/test.sh).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

struct Server {
    child: Child,
    api: String,
    key: String,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn joinserver(args: &[&str], dir: &Path) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_joinserver"))
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap().trim().to_owned()
}

fn serve() -> Server {
    let dir = tempfile::tempdir().unwrap();
    joinserver(&["init"], dir.path());
    let key = joinserver(
        &[
            "api-keys",
            "create",
            "--role",
            "owner",
            "--name",
            "installer",
        ],
        dir.path(),
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_joinserver"))
        .args(["serve", "--listen", "127.0.0.1:0", "--metrics", ""])
        .args(["--api-listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    while !line.contains("joinserver listening") {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "no listening line");
    }
    // `... api=ADDR api_scheme=https`: the address is the word after `api=` (loopback also
    // answers plain HTTP on the same port, which this test uses).
    let api = line
        .split(" api=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap()
        .to_owned();
    Server {
        child,
        api,
        key,
        _dir: dir,
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

fn header(r: &ureq::http::Response<ureq::Body>, name: &str) -> String {
    r.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

#[test]
fn serves_the_committed_build_at_install() {
    let s = serve();
    let a = agent();
    let url = |p: &str| format!("http://{}{p}", s.api);
    let r = a.get(&url("/install")).call().unwrap();
    assert_eq!(r.status(), 308);
    assert_eq!(header(&r, "location"), "/install/");

    let dist = Path::new(env!("CARGO_MANIFEST_DIR")).join("../installer/dist");
    for (path, file, media) in [
        ("/install/", "index.html", "text/html; charset=utf-8"),
        (
            "/install/index.html",
            "index.html",
            "text/html; charset=utf-8",
        ),
        (
            "/install/assets/app.js",
            "assets/app.js",
            "text/javascript; charset=utf-8",
        ),
        (
            "/install/assets/index.css",
            "assets/index.css",
            "text/css; charset=utf-8",
        ),
        (
            "/install/assets/zxing_reader.wasm",
            "assets/zxing_reader.wasm",
            "application/wasm",
        ),
    ] {
        let mut r = a.get(&url(path)).call().unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(header(&r, "content-type"), media, "{path}");
        assert_eq!(header(&r, "x-content-type-options"), "nosniff");
        assert_eq!(header(&r, "x-frame-options"), "DENY");
        let csp = header(&r, "content-security-policy");
        assert!(
            csp.starts_with("default-src 'none'; script-src 'self' 'wasm-unsafe-eval';"),
            "{csp}"
        );
        assert!(csp.contains("connect-src 'self'"), "{csp}");
        let etag = header(&r, "etag");
        let body = r
            .body_mut()
            .with_config()
            .limit(4 << 20)
            .read_to_vec()
            .unwrap();
        assert_eq!(body, std::fs::read(dist.join(file)).unwrap(), "{path}");
        // A phone that has the file gets 304 without the body.
        let r = a
            .get(&url(path))
            .header("If-None-Match", &etag)
            .call()
            .unwrap();
        assert_eq!(r.status(), 304, "{path}");
    }
    assert_eq!(
        a.get(&url("/install/nope.js")).call().unwrap().status(),
        404
    );
    // Only the table's files: nothing from the file system.
    for path in [
        "/install/assets/..%2F..%2FCargo.toml",
        "/install/%2E%2E/Cargo.toml",
    ] {
        assert_eq!(a.get(&url(path)).call().unwrap().status(), 404, "{path}");
    }
}

#[test]
fn qr_parse_answers_what_qr_parse_json_prints() {
    let s = serve();
    let a = agent();
    let url = format!("http://{}/api/v1/qr/parse", s.api);
    let post = |key: Option<&str>, body: &str| {
        let mut r = a.post(&url).header("Content-Type", "application/json");
        if let Some(k) = key {
            r = r.header("Authorization", &format!("Bearer {k}"));
        }
        let mut resp = r.send(body).unwrap();
        let st = resp.status().as_u16();
        let v: Value = serde_json::from_str(&resp.body_mut().read_to_string().unwrap()).unwrap();
        (st, v)
    };
    let valid =
        "LW:D0:1122334455667788:AABBCCDDEEFF0011:AABB1122:OAABBCCDDEEFF:SYYWWNNNNNN:PFOOBAR:CAF2C";
    for text in [
        valid,
        &valid.replace("AABBCCDDEEFF0011", "AABBCCDDEEFF0017"), // wrong CheckSum
        "LW:D0:1122334455667788:AABBCCDDEEFF00",                // DevEUI too short
        "MT:Y.K9042C00KA0648G00",                               // Matter
        "",
    ] {
        let (st, v) = post(
            Some(&s.key),
            &serde_json::json!({ "text": text }).to_string(),
        );
        assert_eq!(st, 200, "{text}: {v}");
        assert_eq!(v, qr::report::check_json(text), "{text}");
    }
    let (_, v) = post(Some(&s.key), r#"{"text": "MT:Y.K9042C00KA0648G00"}"#);
    assert_eq!(v["other_format"], "Matter onboarding code (MT:)");

    let (st, v) = post(None, r#"{"text": "x"}"#);
    assert_eq!((st, v["error"].as_str()), (401, Some("unauthorized")));
    let (st, v) = post(Some(&s.key), r#"{"txt": "x"}"#);
    assert_eq!(
        (st, v["message"].as_str()),
        (400, Some("unknown field `txt`, expected `text`"))
    );
    let big = serde_json::json!({ "text": "L".repeat(5000) }).to_string();
    let (st, v) = post(Some(&s.key), &big);
    assert_eq!(
        (st, v["message"].as_str()),
        (400, Some("the body is larger than 4096 bytes"))
    );
}
