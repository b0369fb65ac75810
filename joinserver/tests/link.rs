//! Socket tests of the join server on 127.0.0.1: real UDP datagrams in the real link format.

mod common;

use std::time::Duration;

use common::*;
use joinserver::server::Server;
use protocol::join::{EncryptedJoinAccept, JoinAcceptEncKey, JoinAcceptMicKey, JoinRootKey};
use protocol::keys::{AppKey, KeyCipher, LinkKey};
use protocol::link::{self, Header, MessageType, PeerId};
use protocol::ts002::{JoinAns, ResultCode};

fn start(dir: &std::path::Path) -> Server {
    let mut c = config(dir);
    c.link.listen = "127.0.0.1:0".parse().unwrap();
    c.metrics.listen = "127.0.0.1:0".into();
    Server::start(dir, &c).unwrap()
}

const NO_ANSWER: Duration = Duration::from_millis(300);

#[test]
fn join_over_udp_and_retries_get_the_identical_answer() {
    let tmp = tempfile::tempdir().unwrap();
    let s = provision(tmp.path());
    let server = start(tmp.path());
    let c = Client::new(server.link_addr(), s.link.clone());

    let p = phy(1, 0x1234);
    let (h1, first) = c.join(100, 1, &p, 1);
    let ans = JoinAns::parse(&first).unwrap();
    assert_eq!(ans.result.result_code, ResultCode::Success);
    assert_eq!(ans.header.transaction_id, 100);
    assert_eq!(h1.sender, PeerId(0));
    // The Join-accept decrypts and verifies device-side.
    let app = KeyCipher::new(&APP_KEY.parse::<AppKey>().unwrap());
    let pl = EncryptedJoinAccept::from_bytes(ans.phy_payload.as_ref().unwrap())
        .unwrap()
        .open(
            JoinAcceptEncKey::AppKey(&app),
            JoinAcceptMicKey::Legacy(JoinRootKey::AppKey(&app)),
        )
        .unwrap();
    assert_eq!(pl.join_nonce.as_u32(), 1);

    // A retry (same TransactionID, new datagram nonce and timestamp) gets the identical JoinAns.
    let (_, retry) = c.join(100, 1, &p, 2);
    assert_eq!(retry, first);
    // So does a replay of the very same datagram.
    let d = datagram(
        &c.key,
        NET_ID,
        now_ms(),
        3,
        &join_req_json(100, NET_ID, 1, &p),
    );
    let a = c.exchange_raw(&d, Duration::from_secs(5)).unwrap();
    let b = c.exchange_raw(&d, Duration::from_secs(5)).unwrap();
    assert_eq!(link::open(&c.key, &a).unwrap().1, &first[..]);
    assert_eq!(link::open(&c.key, &b).unwrap().1, &first[..]);
    // The DevNonce was consumed once: a new transaction with it is refused.
    let again = c.join_ans(101, 1, &p);
    assert_eq!(again.result.result_code, ResultCode::JoinReqFailed);
    // A TransactionID reused for another request is not a retry.
    let other = c.join_ans(100, 1, &phy(1, 0x9999));
    assert!(
        other.result.result_code.is_malformed(),
        "{:?}",
        other.result
    );

    let (status, text) = http_get(server.metrics_addr().unwrap(), "/metrics");
    assert_eq!(status, 200);
    assert_eq!(
        metric(&text, "joinserver_joins_total{result=\"success\"}"),
        1
    );
    assert_eq!(
        metric(
            &text,
            "joinserver_joins_total{result=\"dev_nonce_replayed\"}"
        ),
        1
    );
    assert_eq!(metric(&text, "joinserver_answers_replayed_total"), 3);
    assert!(metric(&text, "joinserver_store_commits_total") >= 1);
    assert_eq!(http_get(server.metrics_addr().unwrap(), "/health").0, 200);
    server.shutdown();
}

#[test]
fn result_codes_over_udp() {
    let tmp = tempfile::tempdir().unwrap();
    let s = provision(tmp.path());
    let server = start(tmp.path());
    let c = Client::new(server.link_addr(), s.link.clone());
    let code = |tid, dev, p: &[u8]| c.join_ans(tid, dev, p).result.result_code;
    assert_eq!(
        code(1, 3, &phy(3, 0)),
        ResultCode::Success,
        "1.1, first DevNonce 0"
    );
    assert_eq!(code(2, 9, &phy(9, 1)), ResultCode::UnknownDevEui);
    let mut bad_mic = phy(2, 1);
    bad_mic[22] ^= 1;
    assert_eq!(code(3, 2, &bad_mic), ResultCode::MicFailed);
    assert_eq!(code(4, 5, &phy(5, 1)), ResultCode::ActivationDisallowed);
    assert_eq!(
        code(9, 6, &phy(6, 1)),
        ResultCode::ActivationDisallowed,
        "an unclaimed device joins nowhere"
    );
    let (_, text) = http_get(server.metrics_addr().unwrap(), "/metrics");
    assert_eq!(
        metric(
            &text,
            "joinserver_joins_total{result=\"activation_disallowed\"}"
        ),
        1
    );
    assert_eq!(
        metric(&text, "joinserver_joins_total{result=\"unclaimed\"}"),
        1
    );
    assert_eq!(
        code(5, 4, &phy(4, 1)),
        ResultCode::Success,
        "home NetID matches"
    );
    assert_eq!(
        code(6, 4, &phy(4, 1)),
        ResultCode::JoinReqFailed,
        "DevNonce not increasing"
    );
    assert!(code(7, 2, &[0u8; 5]).is_malformed());
    let ans = c.join_ans(8, 3, &phy(3, 1));
    let ext = ans.header.vs_extension.clone().unwrap();
    assert_eq!(ext["MACVersion"], "1.1");
    assert_eq!(ext["DLSettings"], "92", "OptNeg set for the 1.1 device");
    assert!(matches!(
        ans.network_keys,
        Some(protocol::ts002::NetworkKeys::V1_1 { .. })
    ));
    server.shutdown();
}

#[test]
fn unauthenticated_stale_and_oversized_datagrams_get_no_answer_and_are_counted() {
    let tmp = tempfile::tempdir().unwrap();
    let s = provision(tmp.path());
    let server = start(tmp.path());
    let c = Client::new(server.link_addr(), s.link.clone());
    let body = join_req_json(1, NET_ID, 2, &phy(2, 1));
    let now = now_ms();
    let good = datagram(&c.key, NET_ID, now, 1, &body);

    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    let mut t = good.clone();
    t[30] ^= 1;
    cases.push(("bad_tag", t));
    cases.push((
        "bad_tag",
        datagram(&LinkKey::new([7; 16]), NET_ID, now, 1, &body),
    ));
    cases.push(("stale", datagram(&c.key, NET_ID, now - 60_000, 1, &body)));
    cases.push(("stale", datagram(&c.key, NET_ID, now + 60_000, 1, &body)));
    cases.push(("too_large", vec![1u8; link::MAX_DATAGRAM + 1]));
    cases.push(("too_short", good[..20].to_vec()));
    let mut v = good.clone();
    v[0] = 9;
    cases.push(("bad_version", v));
    let mut wrong_type = Vec::new();
    link::seal(
        &c.key,
        &Header {
            msg_type: MessageType::JoinAns,
            sender: PeerId(u64::from(NET_ID)),
            timestamp_ms: now,
            nonce: 1,
        },
        &body,
        &mut wrong_type,
    )
    .unwrap();
    cases.push(("unexpected_type", wrong_type));
    let mut unknown = Vec::new();
    link::seal(
        &c.key,
        &Header {
            msg_type: MessageType::JoinReq,
            sender: PeerId(1 << 40),
            timestamp_ms: now,
            nonce: 1,
        },
        &body,
        &mut unknown,
    )
    .unwrap();
    cases.push(("unknown_sender", unknown));
    cases.push((
        "malformed_body",
        datagram(&c.key, NET_ID, now, 1, b"not json"),
    ));

    for (reason, d) in &cases {
        assert!(c.exchange_raw(d, NO_ANSWER).is_none(), "{reason}: answered");
    }
    // The genuine datagram is still answered. One thread receives, in order: once this is
    // answered, every datagram before it has been counted.
    assert!(c.exchange_raw(&good, Duration::from_secs(5)).is_some());
    let (_, text) = http_get(server.metrics_addr().unwrap(), "/metrics");
    for reason in [
        "bad_tag",
        "stale",
        "too_large",
        "too_short",
        "bad_version",
        "unexpected_type",
        "unknown_sender",
        "malformed_body",
    ] {
        let want = cases.iter().filter(|(r, _)| *r == reason).count() as u64;
        assert_eq!(
            metric(
                &text,
                &format!("joinserver_link_drops_total{{reason=\"{reason}\"}}")
            ),
            want,
            "{reason}"
        );
    }
    server.shutdown();
}

/// A small fuzz corpus: random datagrams and mutations of valid ones. The server must keep
/// serving and never answer an unauthenticated datagram.
#[test]
fn garbage_datagrams_leave_it_serving() {
    let tmp = tempfile::tempdir().unwrap();
    let s = provision(tmp.path());
    let server = start(tmp.path());
    let c = Client::new(server.link_addr(), s.link.clone());
    let good = datagram(
        &c.key,
        NET_ID,
        now_ms(),
        1,
        &join_req_json(1, NET_ID, 2, &phy(2, 1)),
    );
    // A deterministic xorshift generator: reproducible corpus without extra dependencies.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let fuzz = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    fuzz.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    for i in 0..3000 {
        let d: Vec<u8> = match i % 3 {
            0 => (0..(next() % 1400) as usize)
                .map(|_| next() as u8)
                .collect(),
            1 => {
                let mut d = good.clone();
                for _ in 0..1 + next() % 4 {
                    let at = (next() as usize) % d.len();
                    d[at] = next() as u8;
                }
                d
            }
            _ => {
                let mut d = good.clone();
                d.truncate((next() as usize) % d.len());
                d
            }
        };
        if d == good {
            continue;
        }
        fuzz.send_to(&d, server.link_addr()).unwrap();
        if i % 200 == 0 {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    let mut buf = [0u8; 2048];
    assert!(
        fuzz.recv_from(&mut buf).is_err(),
        "a garbage datagram was answered"
    );
    let ans = c.join_ans(77, 2, &phy(2, 1));
    assert_eq!(ans.result.result_code, ResultCode::Success);
    assert!(server.is_healthy());
    assert_eq!(http_get(server.metrics_addr().unwrap(), "/health").0, 200);
    server.shutdown();
}

/// Provisioning by another process (the CLI) reaches a running server, change after change.
/// Each change is a `joinserver devices` process that opens the store, commits and exits: closing the last
/// connection of a process lets SQLite checkpoint and delete the WAL, which it must not do
/// while the server holds the store (the server once dropped its own file locks by opening the
/// database file outside SQLite, and from the second change on saw nothing).
#[test]
fn devices_imported_or_removed_while_running_are_picked_up() {
    let tmp = tempfile::tempdir().unwrap();
    let s = provision(tmp.path());
    let server = start(tmp.path());
    let c = Client::new(server.link_addr(), s.link.clone());
    assert_eq!(
        c.join_ans(1, 9, &phy(9, 1)).result.result_code,
        ResultCode::UnknownDevEui
    );
    let csv = format!(
        "dev_eui,join_eui,mac_version,app_key,nwk_key,home_net_id\n0000000000000009,{JOIN_EUI:016X},1.0.4,{APP_KEY},,000013\n"
    );
    let mut tid = 1;
    let mut dev_nonce = 1;
    let mut wait_for = |want: ResultCode, what: &str| {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            tid += 1;
            dev_nonce += 1;
            let code = c.join_ans(tid, 9, &phy(9, dev_nonce)).result.result_code;
            if code == want {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{what} not picked up: {code:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let manifest = tmp.path().join("one.csv");
    std::fs::write(&manifest, csv).unwrap();
    let cli = |args: &[&std::ffi::OsStr]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_joinserver"))
            .arg("devices")
            .args(args)
            .arg("--data-dir")
            .arg(tmp.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
    };
    for round in 0..2 {
        cli(&["import".as_ref(), manifest.as_os_str()]);
        wait_for(ResultCode::Success, &format!("import {round}"));
        cli(&["remove".as_ref(), "0000000000000009".as_ref()]);
        wait_for(ResultCode::UnknownDevEui, &format!("removal {round}"));
    }
    server.shutdown();
}
