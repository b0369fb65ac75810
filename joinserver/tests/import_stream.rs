//! The streamed bulk import over real HTTP on 127.0.0.1: a body in many tiny chunks (lines split
//! across them), a tampered byte at the end of a large signed manifest, a duplicate DevEUI on the
//! last line, an oversized body, and a join answered (its DevNonce committed) while an upload is
//! half-way: all or nothing, every refusal audited, and the database never locked by an upload.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{phy, Client, APP_KEY, JOIN_EUI};
use ed25519_dalek::{Signer, SigningKey};
use joinserver::config::Config;
use joinserver::onboarding::db::Role;
use joinserver::secrets::{self, Secrets};
use joinserver::server::Server;
use protocol::ts002::ResultCode;
use serde_json::Value;

const HEADER: &str = "dev_eui,join_eui,mac_version,app_key,nwk_key,home_net_id\n";

fn row(dev: u64) -> String {
    format!("{dev:016X},{JOIN_EUI:016X},1.0.4,{APP_KEY},,000013\n")
}

fn manifest(devs: impl Iterator<Item = u64>) -> String {
    let mut m = String::from(HEADER);
    devs.for_each(|d| m.push_str(&row(d)));
    m
}

struct Fixture {
    _tmp: tempfile::TempDir,
    secrets: Secrets,
    server: Server,
    signer: SigningKey,
    acme: String,
    ops: String,
}

fn start(max_manifest_bytes: usize) -> Fixture {
    start_with(|c| c.api.max_manifest_bytes = max_manifest_bytes)
}

fn start_with(tweak: impl FnOnce(&mut Config)) -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    secrets::init(dir).unwrap();
    // The network server of NetID 000013 joins the devices: a peer, with its own key.
    let peer = common::add_peer(dir, common::NET_ID);
    let mut s = Secrets::load(dir).unwrap();
    s.link = peer.link;
    let signer = SigningKey::from_bytes(&[77; 32]);
    let other = SigningKey::from_bytes(&[78; 32]);
    let mut config = common::config(dir);
    config.link.listen = "127.0.0.1:0".parse().unwrap();
    config.metrics.listen = String::new();
    config.api.listen = "127.0.0.1:0".into();
    // Two trusted keys: the manifest does not say which one signed it.
    config.api.trusted_manifest_keys = vec![
        hex::encode(other.verifying_key().as_bytes()),
        hex::encode(signer.verifying_key().as_bytes()),
    ];
    tweak(&mut config);
    let keys = common::api_keys(
        dir,
        &s.master,
        &[(Role::Manufacturer, "acme"), (Role::Admin, "ops")],
    );
    let (acme, ops) = (keys[0].clone(), keys[1].clone());
    let server = Server::start(dir, &config).unwrap();
    Fixture {
        _tmp: tmp,
        secrets: s,
        server,
        signer,
        acme,
        ops,
    }
}

impl Fixture {
    fn api(&self) -> SocketAddr {
        self.server.api_addr().unwrap()
    }

    fn sign(&self, m: &str) -> String {
        hex::encode(self.signer.sign(m.as_bytes()).to_bytes())
    }

    /// Every DevEUI the admin sees.
    fn devices(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut after = String::new();
        loop {
            let (st, v) = get(
                self.api(),
                &format!("/api/v1/devices?limit=1000{after}"),
                &self.ops,
            );
            assert_eq!(st, 200, "{v}");
            out.extend(
                v["devices"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|d| d["dev_eui"].as_str().unwrap().to_owned()),
            );
            match v["next_after"].as_str() {
                Some(a) => after = format!("&after={a}"),
                None => return out,
            }
        }
    }

    /// The import records of the audit log: (outcome, detail).
    fn import_audit(&self) -> Vec<(String, String)> {
        let (st, v) = get(
            self.api(),
            "/api/v1/audit?action=import&limit=1000",
            &self.ops,
        );
        assert_eq!(st, 200);
        v["records"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["outcome"].as_str().unwrap().to_owned(),
                    r["detail"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    }
}

fn read_response(s: TcpStream) -> (u16, Value) {
    let mut r = BufReader::new(s);
    let mut status = String::new();
    r.read_line(&mut status).unwrap();
    let code = status.split_whitespace().nth(1).unwrap().parse().unwrap();
    let mut len = None;
    loop {
        let mut h = String::new();
        r.read_line(&mut h).unwrap();
        if h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse::<usize>().ok();
            }
        }
    }
    let mut body = vec![0; len.unwrap_or(0)];
    r.read_exact(&mut body).unwrap();
    let v = serde_json::from_slice(&body).unwrap_or(Value::Null);
    (code, v)
}

fn get(addr: SocketAddr, path: &str, key: &str) -> (u16, Value) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {key}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    read_response(s)
}

/// POSTs `body` to the import with chunked transfer encoding, `chunk` bytes per HTTP chunk, each
/// written and flushed on its own; `midway` runs after half of the chunks.
fn post_chunked(
    addr: SocketAddr,
    key: &str,
    sig: Option<&str>,
    body: &[u8],
    chunk: usize,
    midway: &mut dyn FnMut(),
) -> (u16, Value) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_nodelay(true).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let sig = sig.map_or_else(String::new, |v| format!("X-Manifest-Signature: {v}\r\n"));
    write!(
        s,
        "POST /api/v1/devices/import HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: text/csv\r\n{sig}Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let chunks: Vec<&[u8]> = body.chunks(chunk).collect();
    // A write may fail once the server has answered (a refusal before the end of the body).
    let mut send = || -> std::io::Result<()> {
        for (i, c) in chunks.iter().enumerate() {
            if i == chunks.len() / 2 {
                midway();
            }
            write!(s, "{:x}\r\n", c.len())?;
            s.write_all(c)?;
            s.write_all(b"\r\n")?;
            s.flush()?;
        }
        s.write_all(b"0\r\n\r\n")
    };
    let _ = send();
    read_response(s)
}

fn post(addr: SocketAddr, key: &str, sig: Option<&str>, body: &[u8]) -> (u16, Value) {
    post_chunked(addr, key, sig, body, 64 * 1024, &mut || {})
}

#[test]
fn a_body_in_tiny_chunks_imports_and_an_upload_does_not_lock_the_store() {
    let f = start(64 << 20);
    // A device to join while the next upload is half-way.
    let first = manifest(std::iter::once(0x10));
    let (st, r) = post(f.api(), &f.acme, Some(&f.sign(&first)), first.as_bytes());
    assert_eq!((st, r["imported"].as_u64()), (201, Some(1)), "{r}");

    let devs = 0x0004_A30B_0000_0100..0x0004_A30B_0000_0100 + 60;
    let m = manifest(devs.clone());
    let sig = f.sign(&m);
    let link = Client::new(f.server.link_addr(), f.secrets.link.clone());
    let mut joined = None;
    // 7-byte HTTP chunks: every line (58 bytes) spans several of them.
    let (st, r) = post_chunked(f.api(), &f.acme, Some(&sig), m.as_bytes(), 7, &mut || {
        let t = Instant::now();
        let ans = link.join_ans(1, 0x10, &phy(0x10, 1));
        joined = Some((ans.result.result_code, t.elapsed()));
    });
    assert_eq!(st, 201, "{r}");
    assert_eq!(r["imported"].as_u64(), Some(60));
    assert_eq!(r["signed_by"].as_str().map(str::len), Some(16));
    assert_eq!(r["generated_owner_tokens"].as_array().unwrap().len(), 60);
    let (code, took) = joined.unwrap();
    assert_eq!(code, ResultCode::Success, "a join commits during an upload");
    assert!(took < Duration::from_secs(2), "the join waited {took:?}");
    let listed = f.devices();
    for d in devs {
        assert!(listed.contains(&format!("{d:016X}")), "{d:016X} missing");
    }
    // The running server knows them at once.
    let ans = link.join_ans(2, 0x0004_A30B_0000_0100, &phy(0x0004_A30B_0000_0100, 1));
    assert_eq!(ans.result.result_code, ResultCode::Success);
}

#[test]
fn a_tampered_end_a_duplicate_at_the_end_or_an_oversized_body_imports_nothing() {
    let f = start(2 << 20);
    let n = 20_000u64;
    let base = 0x0004_A30B_0001_0000;
    let m = manifest(base..base + n);
    assert!(m.len() > 1 << 20, "a large manifest: {} bytes", m.len());
    let sig = f.sign(&m);

    // One hex digit of the last row's AppKey changed: the row is still valid, only the
    // signature can tell.
    let mut tampered = m.clone().into_bytes();
    let at = tampered.len() - 12;
    tampered[at] = if tampered[at] == b'0' { b'1' } else { b'0' };
    let (st, e) = post(f.api(), &f.acme, Some(&sig), &tampered);
    assert_eq!(
        (st, e["error"].as_str()),
        (422, Some("signature_invalid")),
        "{e}"
    );
    assert!(
        f.devices().is_empty(),
        "nothing of a tampered manifest is stored"
    );
    let link = Client::new(f.server.link_addr(), f.secrets.link.clone());
    let last = base + n - 1;
    assert_eq!(
        link.join_ans(1, last, &phy(last, 1)).result.result_code,
        ResultCode::UnknownDevEui,
        "nor known to the running server"
    );

    // A duplicate DevEUI on the last line, correctly signed: refused whole.
    let mut dup = m.clone();
    dup.push_str(&row(base + 5));
    let (st, e) = post(f.api(), &f.acme, Some(&f.sign(&dup)), dup.as_bytes());
    assert_eq!(
        (st, e["error"].as_str()),
        (400, Some("bad_manifest")),
        "{e}"
    );
    let rows = e["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{e}");
    assert_eq!(rows[0]["line"].as_u64(), Some(n + 2));
    assert_eq!(
        rows[0]["message"].as_str().unwrap(),
        format!("DevEUI {:016X} already appears on line 7", base + 5)
    );
    assert!(f.devices().is_empty(), "nothing of it is stored");

    // Over max_manifest_bytes (2 MiB), streamed without a length: 413, nothing stored; and
    // declared too long: 413 before reading it.
    let big = manifest(base..base + 40_000);
    let (st, e) = post(f.api(), &f.acme, Some(&f.sign(&big)), big.as_bytes());
    assert_eq!(
        (st, e["error"].as_str()),
        (413, Some("payload_too_large")),
        "{e}"
    );
    let mut s = TcpStream::connect(f.api()).unwrap();
    write!(
        s,
        "POST /api/v1/devices/import HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {}\r\n\
         X-Manifest-Signature: {sig}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        f.acme,
        3 << 20
    )
    .unwrap();
    let (st, e) = read_response(s);
    assert_eq!(
        (st, e["error"].as_str()),
        (413, Some("payload_too_large")),
        "{e}"
    );
    assert!(f.devices().is_empty());

    // The genuine manifest imports; then the same devices again are already provisioned.
    let (st, r) = post(f.api(), &f.acme, Some(&sig), m.as_bytes());
    assert_eq!((st, r["imported"].as_u64()), (201, Some(n)), "{r}");
    assert_eq!(f.devices().len(), n as usize);
    let again = manifest(std::iter::once(base + 1));
    let (st, e) = post(f.api(), &f.acme, Some(&f.sign(&again)), again.as_bytes());
    assert_eq!(
        (st, e["error"].as_str()),
        (400, Some("bad_manifest")),
        "{e}"
    );
    assert!(e["rows"][0]["message"]
        .as_str()
        .unwrap()
        .ends_with("is already provisioned (remove it first)"));

    // Every refusal is audited, with the manifest's SHA-256 prefix and size as received.
    let audit = f.import_audit();
    let outcomes: Vec<&str> = audit.iter().map(|(o, _)| o.as_str()).collect();
    assert_eq!(
        outcomes,
        [
            "refused:signature_invalid",
            "refused:bad_manifest",
            "refused:payload_too_large",
            "refused:payload_too_large",
            "ok",
            "refused:bad_manifest",
        ]
    );
    let sha = |b: &[u8]| {
        use sha2::Digest;
        hex::encode(&sha2::Sha256::digest(b)[..8])
    };
    assert!(
        audit[0].1.starts_with(&format!(
            "manifest sha256 {}…, {} bytes",
            sha(&tampered),
            m.len()
        )),
        "{:?}",
        audit[0]
    );
    assert!(audit[1].1.ends_with("; 1 bad row(s)"), "{:?}", audit[1]);
    assert!(
        audit[4].1.contains("20000 device(s); signed by key"),
        "{:?}",
        audit[4]
    );
}

#[test]
fn a_stalled_upload_times_out_and_imports_beyond_the_limit_wait_their_turn() {
    let f = start_with(|c| {
        c.api.max_concurrent_imports = 1;
        c.api.import_idle_timeout_s = 2;
    });
    let base = 0x0070_0000_0000_0000u64;
    let m = manifest(base..base + 50);
    let sig = f.sign(&m);

    // A: an upload that sends its headers and a first chunk, then nothing.
    let mut stalled = TcpStream::connect(f.api()).unwrap();
    stalled
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(
        stalled,
        "POST /api/v1/devices/import HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {}\r\n\
         X-Manifest-Signature: {sig}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
         {:x}\r\n{}\r\n",
        f.acme,
        100,
        &m[..100]
    )
    .unwrap();
    stalled.flush().unwrap();
    std::thread::sleep(Duration::from_millis(500));

    // B, while A holds the only import slot: 429, told to retry.
    let (st, e) = post(f.api(), &f.acme, Some(&sig), m.as_bytes());
    assert_eq!((st, e["error"].as_str()), (429, Some("busy")), "{e}");

    // A is refused once it has sent nothing for 2 s; nothing of it is stored.
    let (st, e) = read_response(stalled);
    assert_eq!((st, e["error"].as_str()), (400, Some("bad_request")), "{e}");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("nothing received for 2 s"),
        "{e}"
    );
    assert!(f.devices().is_empty());

    // The slot is free again: B imports.
    let (st, r) = post(f.api(), &f.acme, Some(&sig), m.as_bytes());
    assert_eq!((st, r["imported"].as_u64()), (201, Some(50)), "{r}");
    assert_eq!(f.devices().len(), 50);

    // Both refusals are in the audit log.
    let outcomes: Vec<String> = f.import_audit().into_iter().map(|(o, _)| o).collect();
    assert!(outcomes.iter().any(|o| o == "refused:busy"), "{outcomes:?}");
    assert!(
        outcomes.iter().any(|o| o == "refused:bad_request"),
        "{outcomes:?}"
    );
}
