//! The network server's hardening on real sockets, in process.
//!
//! - GWMP: a forged PULL_DATA from a new source does not take a gateway's downlink address
//!   during the block; oversized datagrams, too many `rxpk`, PHYPayloads over 255 bytes,
//!   unknown gateways and joins past the in-flight limit are dropped and counted; a
//!   65,000-byte PUSH_DATA carrying a valid Join-request reaches no join server.
//! - Downlink inputs: only requests with the bearer token are served; an unauthenticated UDP
//!   datagram gets no answer; without a token an input refuses a non-loopback address.

use std::net::{SocketAddr, UdpSocket};
use std::sync::mpsc;
use std::time::Duration;

use netserver::integration::input::AUTH_FAILURES_PER_ADDR;
use netserver::keys::LabeledKek;
use netserver::ops::config::Config;
use netserver::server::{run, Addresses};
use netserver::state::Secrets;
use protocol::gwmp::{CrcStatus, Packet, PushData, Token};
use protocol::ids::{DevEui, DevNonce, GatewayEui, JoinEui};
use protocol::join::{JoinRequest, JoinRootKey};
use protocol::keys::{AppKey, Kek, KeyCipher, LinkKey};
use tokio::sync::watch;

mod common;
use common::{http, http_get, metric, wait_metric, write600};

fn secrets() -> Secrets {
    Secrets {
        link_key: LinkKey::new([1; 16]),
        ns_kek: LabeledKek {
            label: "ns-test".into(),
            key: Kek::new([2; 16]),
        },
        as_kek: None,
    }
}

type Server = std::thread::JoinHandle<anyhow::Result<()>>;

/// Runs the server on `config` in a thread; its stop switch, the thread, its addresses.
fn start(config: Config) -> (watch::Sender<bool>, Server, Addresses) {
    let (stop_tx, stop_rx) = watch::channel(false);
    let (addr_tx, addr_rx) = mpsc::channel::<Addresses>();
    let server = std::thread::spawn(move || {
        run(config, secrets(), Some(stop_rx), |a| {
            addr_tx.send(*a).unwrap()
        })
    });
    let addrs = addr_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    (stop_tx, server, addrs)
}

fn push(gateway: GatewayEui, frames: Vec<Vec<u8>>) -> Vec<u8> {
    Packet::PushData(PushData {
        token: Token([0x11, 0x22]),
        gateway,
        rxpk: frames
            .iter()
            .map(|f| common::rxpk(f, 3_000_000, (1, 868_300_000), 8.5, -70, CrcStatus::Ok))
            .collect(),
        stat: None,
    })
    .to_bytes()
    .unwrap()
}

/// `bytes` padded with JSON whitespace to `len` bytes (still a valid datagram).
fn padded(mut bytes: Vec<u8>, len: usize) -> Vec<u8> {
    assert!(bytes.len() <= len);
    bytes.resize(len, b' ');
    bytes
}

fn join_request(nonce: u16) -> Vec<u8> {
    let app_key = KeyCipher::new(&AppKey::new([3; 16]));
    JoinRequest::build(
        JoinEui::new(1),
        DevEui::new(2),
        DevNonce(nonce),
        JoinRootKey::AppKey(&app_key),
    )
    .to_bytes()
    .to_vec()
}

/// Whether a datagram arrives on `s` within 300 ms (the acknowledgement, when there is one,
/// is sent at once).
fn answered(s: &UdpSocket) -> Option<Vec<u8>> {
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut buf = [0u8; 512];
    s.recv(&mut buf).ok().map(|n| buf[..n].to_vec())
}

#[test]
fn gwmp_hardening_on_real_sockets() {
    let dir = tempfile::tempdir().unwrap();
    let eui = GatewayEui::new(0x0102_0304_0506_0708);
    let stranger = GatewayEui::new(0x0909_0909_0909_0909);
    let allowed = dir.path().join("gateways.txt");
    std::fs::write(&allowed, format!("# the one gateway\n{eui}\n")).unwrap();
    // A "join server" that receives and never answers.
    let silent_js = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut config: Config = toml::from_str(
        "[gwmp]\nlisten = \"127.0.0.1:0\"\nworkers = 1\naddr_change_block_s = 30\n\
         max_rxpk_per_datagram = 4\nmax_joins_in_flight = 1\n\
         [join]\njoin_accept_delay1_s = 1\njoin_accept_delay2_s = 2\n\
         [metrics]\nlisten = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    config.gwmp.allowed_gateways_file = allowed.to_str().unwrap().to_owned();
    config.data_dir = dir.path().join("data");
    config.join_server.address = silent_js.local_addr().unwrap().to_string();
    let (stop_tx, server, addrs) = start(config);
    let m = addrs.metrics.unwrap();
    let gw = UdpSocket::bind("127.0.0.1:0").unwrap();
    // Another host (the block is per IP address: a new port on the gateway's own address is a
    // restarted forwarder and is followed at once).
    let forger = UdpSocket::bind("127.0.0.2:0").unwrap();
    let pull = Packet::PullData {
        token: Token([0xAB, 0xCD]),
        gateway: eui,
    }
    .to_bytes()
    .unwrap();

    // The gateway pulls: its address is the downlink route.
    gw.send_to(&pull, addrs.gwmp).unwrap();
    assert_eq!(answered(&gw), Some(vec![2, 0xAB, 0xCD, 4]));
    // A forged PULL_DATA with its EUI from another source: the route stays with the gateway.
    forger.send_to(&pull, addrs.gwmp).unwrap();
    wait_metric(
        m,
        "netserver_gwmp_dropped_total{reason=\"addr_change_blocked\"}",
        1.0,
    );
    let (_, gateways) = http_get(m, "/gateways");
    let json: serde_json::Value = serde_json::from_str(&gateways).unwrap();
    assert_eq!(
        json[0]["downlink_addr"],
        gw.local_addr().unwrap().to_string(),
        "{gateways}"
    );
    assert_eq!(json[0]["stats"]["pull_data"], 1);

    // A gateway not on the allowed list: dropped, not acknowledged.
    gw.send_to(&push(stranger, vec![vec![0x40; 12]]), addrs.gwmp)
        .unwrap();
    assert_eq!(answered(&gw), None);
    wait_metric(
        m,
        "netserver_gwmp_dropped_total{reason=\"unknown_gateway\"}",
        1.0,
    );

    // 16 KiB is accepted; one byte more is dropped; so is a 65,000-byte datagram carrying a
    // valid Join-request, which never reaches the join server.
    let small = push(eui, vec![vec![0x40; 12]]);
    gw.send_to(&padded(small.clone(), 16 << 10), addrs.gwmp)
        .unwrap();
    assert_eq!(answered(&gw), Some(vec![2, 0x11, 0x22, 1]));
    gw.send_to(&padded(small, (16 << 10) + 1), addrs.gwmp)
        .unwrap();
    assert_eq!(answered(&gw), None);
    gw.send_to(
        &padded(push(eui, vec![join_request(1)]), 65_000),
        addrs.gwmp,
    )
    .unwrap();
    assert_eq!(answered(&gw), None);
    wait_metric(
        m,
        "netserver_gwmp_dropped_total{reason=\"datagram_too_large\"}",
        2.0,
    );
    silent_js
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut buf = [0u8; 1024];
    assert!(
        silent_js.recv(&mut buf).is_err(),
        "the oversized datagram's Join-request reached the join server"
    );

    // More rxpk than allowed: dropped whole.
    gw.send_to(&push(eui, vec![vec![0x40; 12]; 5]), addrs.gwmp)
        .unwrap();
    assert_eq!(answered(&gw), None);
    wait_metric(
        m,
        "netserver_gwmp_dropped_total{reason=\"too_many_rxpk\"}",
        1.0,
    );

    // A 256-byte PHYPayload: acknowledged (the datagram is fine), the frame dropped.
    gw.send_to(&push(eui, vec![vec![0x40; 256]]), addrs.gwmp)
        .unwrap();
    assert_eq!(answered(&gw), Some(vec![2, 0x11, 0x22, 1]));
    wait_metric(
        m,
        "netserver_uplink_dropped_total{reason=\"phy_too_long\"}",
        1.0,
    );

    // Two Join-requests with one join allowed in flight: the first goes to the join server,
    // the second is dropped and counted.
    gw.send_to(
        &push(eui, vec![join_request(2), join_request(3)]),
        addrs.gwmp,
    )
    .unwrap();
    assert_eq!(answered(&gw), Some(vec![2, 0x11, 0x22, 1]));
    wait_metric(
        m,
        "netserver_uplink_dropped_total{reason=\"joins_in_flight\"}",
        1.0,
    );
    silent_js
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    assert!(silent_js.recv(&mut buf).is_ok(), "the first join's JoinReq");
    assert_eq!(
        metric(m, "netserver_link_requests_total{type=\"first\"}"),
        1.0
    );

    stop_tx.send(true).unwrap();
    server.join().unwrap().unwrap();
}

/// A free port on 127.0.0.1 (bound, then released for the server).
fn free_udp() -> SocketAddr {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn free_tcp() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// `POST /downlink` with an optional `Authorization` header; the status code and the body.
fn post(to: SocketAddr, authorization: Option<&str>, body: &str) -> (u16, String) {
    let headers: Vec<(&str, &str)> = authorization
        .map(|a| ("Authorization", a))
        .into_iter()
        .collect();
    http(to, "POST", "/downlink", &headers, body.as_bytes())
}

const TOKEN: &str = "0123456789abcdef0123456789abcdef";

#[test]
fn downlink_inputs_serve_only_requests_with_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("downlink.token");
    write600(&token_file, &format!("{TOKEN}\n"));
    let (udp_in, http_in) = (free_udp(), free_tcp());
    let mut config: Config = toml::from_str(
        "[gwmp]\nlisten = \"127.0.0.1:0\"\nworkers = 1\n[metrics]\nlisten = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    config.data_dir = dir.path().join("data");
    config.join_server.address = "127.0.0.1:9".into();
    config.data.downlink_listen = udp_in.to_string();
    config.data.downlink_http = http_in.to_string();
    config.data.downlink_token_file = token_file.to_str().unwrap().to_owned();
    let (stop_tx, server, addrs) = start(config.clone());
    let m = addrs.metrics.unwrap();

    // UDP: no token, a wrong one, unparsable: no answer at all. With the token: the answer.
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    let req = |token: &str| {
        format!(r#"{{"token":"{token}","dev_eui":"0000000000000999","f_port":1,"data":"AA=="}}"#)
    };
    for body in [
        r#"{"dev_eui":"0000000000000999","f_port":1,"data":"AA=="}"#.to_owned(),
        req("0123456789abcdef0123456789abcdee"),
        "not json".to_owned(),
    ] {
        client.send_to(body.as_bytes(), udp_in).unwrap();
        assert_eq!(answered(&client), None, "{body}");
    }
    client.send_to(req(TOKEN).as_bytes(), udp_in).unwrap();
    let answer: serde_json::Value = serde_json::from_slice(&answered(&client).unwrap()).unwrap();
    assert_eq!(answer["ok"], false);
    assert!(
        answer["error"].as_str().unwrap().contains("no session"),
        "{answer}"
    );

    // HTTP: 401 before the body is read, unless the bearer token is right.
    let body = r#"{"dev_eui":"0000000000000999","f_port":1,"data":"AA=="}"#;
    let (code, text) = post(http_in, None, body);
    assert_eq!(code, 401, "{text}");
    assert!(!text.contains("session"), "{text}");
    assert_eq!(
        post(http_in, Some("Bearer wrong-token-0123456789"), body).0,
        401
    );
    assert_eq!(post(http_in, Some(&format!("Basic {TOKEN}")), body).0, 401);
    let (code, text) = post(http_in, Some(&format!("Bearer {TOKEN}")), body);
    assert_eq!(code, 400, "{text}");
    assert!(text.contains("no session"), "{text}");
    let unauthenticated = "netserver_downlink_requests_total{result=\"unauthenticated\"}";
    assert_eq!(metric(m, unauthenticated), 6.0);
    assert_eq!(
        metric(m, "netserver_downlink_requests_total{result=\"refused\"}"),
        2.0
    );
    // Failed authentications are limited per source address: three so far from 127.0.0.1;
    // after the tenth, even the right token is refused (429) without being checked.
    for _ in 3..AUTH_FAILURES_PER_ADDR {
        assert_eq!(post(http_in, Some("Bearer wrong"), body).0, 401);
    }
    let (code, text) = post(http_in, Some(&format!("Bearer {TOKEN}")), body);
    assert_eq!(code, 429, "{text}");
    assert!(text.contains("too many failed authentications"), "{text}");
    assert_eq!(
        metric(
            m,
            "netserver_downlink_requests_total{result=\"rate_limited\"}"
        ),
        1.0
    );
    assert_eq!(metric(m, unauthenticated), 13.0);
    stop_tx.send(true).unwrap();
    server.join().unwrap().unwrap();

    // Without a token, an input on a non-loopback address is refused at start, with the reason.
    config.data.downlink_token_file = String::new();
    config.data.downlink_listen = String::new();
    config.data.downlink_http = "0.0.0.0:0".into();
    let err = run(config, secrets(), None, |_| {}).unwrap_err();
    assert!(
        format!("{err:#}").contains("downlink_token_file"),
        "{err:#}"
    );
}

#[cfg(unix)]
#[test]
fn data_directory_store_files_and_event_file_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let dir = tempfile::tempdir().unwrap();
    let mut config: Config =
        toml::from_str("[gwmp]\nlisten = \"127.0.0.1:0\"\nworkers = 1\n").unwrap();
    config.data_dir = dir.path().join("ns/data");
    config.join_server.address = "127.0.0.1:9".into();
    let events = dir.path().join("events.jsonl");
    config.data.events = events.to_str().unwrap().to_owned();
    let (stop_tx, server, _) = start(config.clone());
    assert_eq!(mode(&config.data_dir), 0o700);
    for file in ["sessions.redb", "uplinks.redb"] {
        assert_eq!(mode(&config.data_dir.join(file)), 0o600, "{file}");
    }
    // The journals in front of them: their directories 0700, each segment 0600.
    for journal in ["sessions-journal", "uplinks-journal"] {
        let jdir = config.data_dir.join(journal);
        assert_eq!(mode(&jdir), 0o700, "{journal}");
        let segments: Vec<_> = std::fs::read_dir(&jdir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert!(!segments.is_empty(), "{journal} has its first segment");
        for seg in segments {
            assert_eq!(mode(&seg), 0o600, "{}", seg.display());
        }
    }
    assert_eq!(mode(&events), 0o600);
    stop_tx.send(true).unwrap();
    server.join().unwrap().unwrap();
}

#[test]
fn http_endpoints_speak_tls_and_refuse_plain_http_on_a_public_address() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (
        dir.path().join("tls/cert.pem"),
        dir.path().join("tls/key.pem"),
    );
    httpsec::tls::ensure_self_signed(&cert, &key, &["localhost".to_owned()]).unwrap();
    let token_file = dir.path().join("downlink.token");
    write600(&token_file, TOKEN);
    let http_in = free_tcp();
    let mut config: Config = toml::from_str(
        "[gwmp]\nlisten = \"127.0.0.1:0\"\nworkers = 1\n[metrics]\nlisten = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    config.data_dir = dir.path().join("data");
    config.join_server.address = "127.0.0.1:9".into();
    config.http.tls_cert = cert.clone();
    config.http.tls_key = key;
    config.data.downlink_http = http_in.to_string();
    config.data.downlink_token_file = token_file.to_str().unwrap().to_owned();
    let (stop_tx, server, addrs) = start(config.clone());
    let m = addrs.metrics.unwrap();
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
    // HTTPS: /health, /metrics, and the downlink input with its token.
    let r = agent
        .get(&format!("https://localhost:{}/health", m.port()))
        .call()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let mut r = agent
        .get(&format!("https://localhost:{}/metrics", m.port()))
        .call()
        .unwrap();
    assert!(r
        .body_mut()
        .read_to_string()
        .unwrap()
        .contains("netserver_"));
    let body = r#"{"dev_eui":"0000000000000999","f_port":1,"data":"AA=="}"#;
    let url = format!("https://localhost:{}/downlink", http_in.port());
    let r = agent.post(&url).send(body).unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert_eq!(r.headers().get("www-authenticate").unwrap(), "Bearer");
    let mut r = agent
        .post(&url)
        .header("Authorization", &format!("Bearer {TOKEN}"))
        .send(body)
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert!(r
        .body_mut()
        .read_to_string()
        .unwrap()
        .contains("no session"));
    // On a loopback address plain HTTP still works (local tools, the demo).
    assert_eq!(http_get(m, "/health").0, 200);
    stop_tx.send(true).unwrap();
    server.join().unwrap().unwrap();

    // Without a certificate, plain HTTP on a non-loopback address is refused, with the reason.
    config.http.tls_cert = Default::default();
    config.http.tls_key = Default::default();
    config.data.downlink_http = String::new();
    config.metrics.listen = "0.0.0.0:0".into();
    let err = format!(
        "{:#}",
        run(config.clone(), secrets(), None, |_| {}).unwrap_err()
    );
    assert!(err.contains("refusing to serve plain HTTP"), "{err}");
    assert!(err.contains("--insecure-http"), "{err}");
}
