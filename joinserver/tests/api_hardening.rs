//! The management API facing a network (issue 13), over real sockets on 127.0.0.1: bodies of
//! unauthenticated requests are never read, per-route body limits, failed authentications
//! limited and audited per source address, silent connections closed by the timeouts, HTTPS with
//! the self-signed certificate beside plain HTTP on loopback, and plain HTTP refused on an address
//! other hosts reach.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use joinserver::config::Config;
use joinserver::onboarding::db::Role;
use joinserver::server::{Server, StartError};

fn config() -> Config {
    let mut c = Config::default();
    c.link.listen = "127.0.0.1:0".parse().unwrap();
    c.metrics.listen = String::new();
    c.api.listen = "127.0.0.1:0".into();
    c
}

/// Sends `head` (completed here with its Content-Length and the blank line), then `body_sent`
/// bytes of a body that declares `declared` bytes; returns the status line the server answers
/// within 5 s, if any.
fn send_partial(addr: SocketAddr, head: &str, declared: usize, body_sent: usize) -> Option<String> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "{head}Content-Length: {declared}\r\nContent-Type: application/json\r\n\r\n"
    )
    .unwrap();
    s.write_all(&vec![b' '; body_sent]).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
        }
    }
    let text = String::from_utf8_lossy(&buf).into_owned();
    text.lines().next().map(str::to_owned)
}

fn get(addr: SocketAddr, path: &str, key: &str) -> (u16, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let mut r = agent
        .get(&format!("http://{addr}{path}"))
        .header("Authorization", &format!("Bearer {key}"))
        .call()
        .unwrap();
    (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
}

/// A claim declaring a 60 MiB body, without a key or with a wrong one, is answered 401 after
/// 1 KiB of it: the body is not read (before, the whole body was read into memory first). With
/// a valid key, a body over the route's limit is refused 413 unread too.
#[test]
fn unauthenticated_bodies_are_refused_before_they_are_read() {
    let tmp = tempfile::tempdir().unwrap();
    let s = common::provision(tmp.path());
    let keys = common::api_keys(tmp.path(), &s.master, &[(Role::Owner, "alice")]);
    let server = Server::start(tmp.path(), &config()).unwrap();
    let api = server.api_addr().unwrap();
    let claim = "PUT /api/v1/devices/0000000000000006/claim HTTP/1.1\r\nHost: x\r\n";
    for auth in ["", "Authorization: Bearer jsk_wrong\r\n"] {
        let started = Instant::now();
        let line = send_partial(api, &format!("{claim}{auth}"), 60 << 20, 1024);
        assert_eq!(
            line.as_deref(),
            Some("HTTP/1.1 401 Unauthorized"),
            "auth {auth:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(4));
    }
    let with_key = format!("{claim}Authorization: Bearer {}\r\n", keys[0]);
    let line = send_partial(api, &with_key, 60 << 20, 1024);
    assert_eq!(line.as_deref(), Some("HTTP/1.1 413 Payload Too Large"));
    server.shutdown();
}

/// Failed authentications are audited with the source address (never the key) and, past
/// `auth_failures_per_addr` in the window, answered 429 without checking even a valid key.
#[test]
fn failed_authentications_are_limited_and_audited_per_source_address() {
    let tmp = tempfile::tempdir().unwrap();
    let s = common::provision(tmp.path());
    let keys = common::api_keys(tmp.path(), &s.master, &[(Role::Admin, "ops")]);
    let mut c = config();
    c.api.auth_failures_per_addr = 3;
    let server = Server::start(tmp.path(), &c).unwrap();
    let api = server.api_addr().unwrap();
    assert_eq!(get(api, "/api/v1/devices", &keys[0]).0, 200);
    for _ in 0..3 {
        assert_eq!(get(api, "/api/v1/devices", "jsk_guess").0, 401);
    }
    let (st, body) = get(api, "/api/v1/devices", &keys[0]);
    assert_eq!(st, 429, "{body}");
    assert!(body.contains("auth_rate_limited"), "{body}");
    // The document stays public.
    assert_eq!(get(api, "/api/v1/openapi.json", "").0, 200);
    server.shutdown();

    // The audit log (read with the limit gone: a new server).
    let server = Server::start(tmp.path(), &config()).unwrap();
    let api = server.api_addr().unwrap();
    let (st, body) = get(
        api,
        "/api/v1/audit?action=authenticate&outcome=refused",
        &keys[0],
    );
    assert_eq!(st, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let records = v["records"].as_array().unwrap();
    assert_eq!(records.len(), 3, "{body}");
    for r in records {
        assert_eq!(r["actor"], "addr:127.0.0.1");
        assert_eq!(r["outcome"], "refused:unauthorized");
    }
    assert!(!body.contains("jsk_guess"), "{body}");
    server.shutdown();
}

/// Connections that send nothing, or half a request head, are closed by the header-read and
/// idle timeouts; before, 3,000 such connections were all still held after 5 s.
#[test]
fn silent_connections_are_closed_by_the_timeouts() {
    let tmp = tempfile::tempdir().unwrap();
    common::provision(tmp.path());
    let mut c = config();
    c.api.header_read_timeout_s = 1;
    c.api.idle_timeout_s = 1;
    let server = Server::start(tmp.path(), &c).unwrap();
    let api = server.api_addr().unwrap();
    let mut held: Vec<TcpStream> = (0..200).map(|_| TcpStream::connect(api).unwrap()).collect();
    let mut half = TcpStream::connect(api).unwrap();
    half.write_all(b"GET /api/v1/devices HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    held.push(half);
    for s in &mut held {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut b = [0u8; 16];
        let closed = match s.read(&mut b) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        };
        assert!(closed, "a silent connection is still open after 5 s");
    }
    let counters = server.api_counters().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while counters.open.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(counters.open.load(Ordering::Relaxed), 0);
    server.shutdown();
}

/// `joinserver init`'s certificate makes the API HTTPS; plain HTTP stays available on loopback
/// only, and on an address other hosts reach the server refuses to start in clear, saying why.
#[test]
fn https_by_default_and_plain_http_refused_off_loopback() {
    let tmp = tempfile::tempdir().unwrap();
    common::provision(tmp.path());
    let mut c = config();
    c.api.listen = "0.0.0.0:0".into();
    // No certificate yet (the library's init writes none): refused, with the reason.
    let e = Server::start(tmp.path(), &c).unwrap_err();
    assert!(matches!(e, StartError::Config(_)), "{e}");
    let m = e.to_string();
    assert!(
        m.contains("tls/api.crt") && m.contains("does not exist"),
        "{m}"
    );
    c.api.tls_cert = "".into();
    let m = Server::start(tmp.path(), &c).unwrap_err().to_string();
    assert!(
        m.contains("refusing to serve plain HTTP on 0.0.0.0:0") && m.contains("--insecure-http"),
        "{m}"
    );

    // With `joinserver init`'s certificate, on loopback: HTTPS, plain HTTP beside it.
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_joinserver"))
        .args(["init", "--data-dir"])
        .arg(tmp.path())
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success(), "{out}");
    let fp = out
        .lines()
        .find_map(|l| l.strip_prefix("api certificate sha256 "))
        .expect("the fingerprint is printed")
        .to_owned();
    let cert = tmp.path().join("tls/api.crt");
    assert_eq!(httpsec::tls::file_fingerprint(&cert).unwrap(), fp);
    use std::os::unix::fs::PermissionsExt;
    for p in [cert.clone(), tmp.path().join("tls/api.key")] {
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", p.display());
    }
    let mode = std::fs::metadata(tmp.path()).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "the data directory");
    let server = Server::start(tmp.path(), &config()).unwrap();
    assert_eq!(server.api_scheme(), Some("https"));
    let api = server.api_addr().unwrap();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .tls_config(
            ureq::tls::TlsConfig::builder()
                .root_certs(ureq::tls::RootCerts::new_with_certs(&[
                    ureq::tls::Certificate::from_pem(&std::fs::read(&cert).unwrap()).unwrap(),
                ]))
                .build(),
        )
        .build()
        .into();
    let r = agent
        .get(&format!(
            "https://localhost:{}/api/v1/openapi.json",
            api.port()
        ))
        .call()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(
        get(api, "/api/v1/openapi.json", "").0,
        200,
        "plain, on loopback"
    );
    server.shutdown();
}

fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    key: &str,
    body: Option<&str>,
) -> (u16, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let url = format!("http://{addr}{path}");
    let auth = format!("Bearer {key}");
    let mut r = match (method, body) {
        ("POST", Some(b)) => agent
            .post(&url)
            .header("Authorization", &auth)
            .header("Content-Type", "application/json")
            .send(b.as_bytes()),
        ("DELETE", _) => agent.delete(&url).header("Authorization", &auth).call(),
        _ => agent.get(&url).header("Authorization", &auth).call(),
    }
    .unwrap();
    (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
}

/// API keys over the API (admins only): created for a tenant with an optional expiry, listed
/// without secrets, revoked; a revoked or expired key authenticates nothing. The command line
/// lists and revokes the same keys.
#[test]
fn api_keys_are_listed_revoked_and_expire() {
    let tmp = tempfile::tempdir().unwrap();
    let s = common::provision(tmp.path());
    let keys = common::api_keys(
        tmp.path(),
        &s.master,
        &[(Role::Admin, "ops"), (Role::Owner, "alice")],
    );
    let (admin, alice) = (&keys[0], &keys[1]);
    let server = Server::start(tmp.path(), &config()).unwrap();
    let api = server.api_addr().unwrap();
    assert_eq!(send(api, "GET", "/api/v1/api-keys", alice, None).0, 403);
    let (st, body) = send(
        api,
        "POST",
        "/api/v1/api-keys",
        admin,
        Some(r#"{"role": "owner", "name": "bob"}"#),
    );
    assert_eq!(st, 201, "{body}");
    let created: serde_json::Value = serde_json::from_str(&body).unwrap();
    let bob = created["api_key"].as_str().unwrap().to_owned();
    let bob_id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(send(api, "GET", "/api/v1/devices", &bob, None).0, 200);
    let past = joinserver::onboarding::db::now_ms() - 1;
    let (st, _) = send(
        api,
        "POST",
        "/api/v1/api-keys",
        admin,
        Some(&format!(
            r#"{{"role": "owner", "name": "bob", "expires_ms": {past}}}"#
        )),
    );
    assert_eq!(st, 400, "an expiry in the past");
    let (st, body) = send(api, "GET", "/api/v1/api-keys", admin, None);
    assert_eq!(st, 200);
    assert!(
        !body.contains(&bob) && !body.contains(admin.as_str()),
        "no key listed"
    );
    let listed: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(listed["api_keys"].as_array().unwrap().len(), 3);
    let path = format!("/api/v1/api-keys/{bob_id}");
    assert_eq!(send(api, "DELETE", &path, alice, None).0, 403);
    assert_eq!(send(api, "DELETE", &path, admin, None).0, 204);
    assert_eq!(send(api, "DELETE", &path, admin, None).0, 404);
    assert_eq!(send(api, "GET", "/api/v1/devices", &bob, None).0, 401);

    // The command line: list, and revoke alice's key while the server runs.
    let js = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_joinserver"))
            .args(args)
            .arg("--data-dir")
            .arg(tmp.path())
            .output()
            .unwrap()
    };
    let o = js(&["api-keys", "list", "--json"]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success(), "{out}");
    let alice_id = out
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|k| k["name"] == "alice")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(out.contains(&format!("\"id\":\"{bob_id}\"")) && out.contains("\"revoked_ms\":1"));
    assert!(js(&["api-keys", "revoke", &alice_id]).status.success());
    assert!(
        !js(&["api-keys", "revoke", &alice_id]).status.success(),
        "once"
    );
    assert_eq!(send(api, "GET", "/api/v1/devices", alice, None).0, 401);
    // A key created to expire in a day works now.
    let o = js(&[
        "api-keys",
        "create",
        "--role",
        "owner",
        "--name",
        "carol",
        "--expires-in-days",
        "1",
    ]);
    let carol = String::from_utf8_lossy(&o.stdout).trim().to_owned();
    assert_eq!(send(api, "GET", "/api/v1/devices", &carol, None).0, 200);
    server.shutdown();
}
