//! Per-network-server link keys over real UDP on 127.0.0.1: a NetID spoofed with another peer's
//! key is refused and counted; a key rotates with an overlap (old and new both accepted, each
//! answer sealed with its request's key); a clock skew that drops datagrams is a metric.

mod common;

use std::time::Duration;

use common::*;
use joinserver::config::{Config, PeerConfig};
use joinserver::server::Server;
use protocol::keys::LinkKey;
use protocol::link;
use protocol::ts002::{JoinAns, ResultCode};

const NET_Y: u32 = 0x000042;
const NO_ANSWER: Duration = Duration::from_millis(300);

fn write_key(path: &std::path::Path, key: [u8; 16]) -> LinkKey {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .unwrap();
    writeln!(f, "{}", hex::encode(key)).unwrap();
    LinkKey::new(key)
}

#[test]
fn per_peer_keys_refuse_a_spoofed_net_id_and_rotate_with_an_overlap() {
    let tmp = tempfile::tempdir().unwrap();
    provision(tmp.path());
    let secrets = tmp.path().join("secrets");
    let x_new = write_key(&secrets.join("link-000013.key"), [0x13; 16]);
    let x_old = write_key(&secrets.join("link-000013.old.key"), [0x31; 16]);
    let y = write_key(&secrets.join("link-000042.key"), [0x42; 16]);
    let mut c = Config::default();
    c.link.listen = "127.0.0.1:0".parse().unwrap();
    c.metrics.listen = "127.0.0.1:0".into();
    c.link.peers = vec![
        PeerConfig {
            net_id: "000013".into(),
            key_file: "secrets/link-000013.key".into(),
            old_key_files: vec!["secrets/link-000013.old.key".into()],
        },
        PeerConfig {
            net_id: "000042".into(),
            key_file: "secrets/link-000042.key".into(),
            old_key_files: vec![],
        },
    ];
    let server = Server::start(tmp.path(), &c).unwrap();
    let metrics = server.metrics_addr().unwrap();

    // NetID 000013 with its new key, then with its old one: both answered, each sealed with
    // the key of its request.
    let x = Client::new(server.link_addr(), x_new.clone());
    let ans = JoinAns::parse(&x.join(1, 1, &phy(1, 1), 11).1).unwrap();
    assert_eq!(ans.result.result_code, ResultCode::Success);
    let x_rotating = Client::new(server.link_addr(), x_old.clone());
    let ans = JoinAns::parse(&x_rotating.join(2, 2, &phy(2, 1), 12).1).unwrap();
    assert_eq!(ans.result.result_code, ResultCode::Success);

    // NetID 000042's server claims NetID 000013 with its own key: no answer, counted.
    let spoof = datagram(
        &y,
        NET_ID,
        now_ms(),
        13,
        &join_req_json(3, NET_ID, 1, &phy(1, 2)),
    );
    assert!(x.exchange_raw(&spoof, NO_ANSWER).is_none());
    // Nor with the shared secrets/link.key that every network server had before.
    let legacy = Client::new(server.link_addr(), provision_link_key(tmp.path()));
    let d = datagram(
        &legacy.key,
        NET_ID,
        now_ms(),
        14,
        &join_req_json(4, NET_ID, 1, &phy(1, 3)),
    );
    assert!(legacy.exchange_raw(&d, NO_ANSWER).is_none());
    // Its own NetID works.
    let own = datagram(
        &y,
        NET_Y,
        now_ms(),
        15,
        &join_req_json(5, NET_Y, 5, &phy(5, 1)),
    );
    let raw = x
        .exchange_raw(&own, Duration::from_secs(5))
        .expect("an answer");
    assert!(link::open(&y, &raw).is_ok());

    // A datagram ten minutes behind: dropped, and the skew is a metric.
    let stale = datagram(
        &x_new,
        NET_ID,
        now_ms() - 600_000,
        16,
        &join_req_json(6, NET_ID, 1, &phy(1, 4)),
    );
    assert!(x.exchange_raw(&stale, NO_ANSWER).is_none());
    let (_, text) = http_get(metrics, "/metrics");
    assert_eq!(
        metric(&text, "joinserver_link_drops_total{reason=\"bad_tag\"}"),
        2,
        "{text}"
    );
    assert_eq!(
        metric(&text, "joinserver_link_drops_total{reason=\"stale\"}"),
        1
    );
    let skew = text
        .lines()
        .find_map(|l| l.strip_prefix("joinserver_link_clock_skew_ms "))
        .and_then(|v| v.trim().parse::<i64>().ok())
        .unwrap();
    assert!((-601_000..=-599_000).contains(&skew), "{skew}");
    server.shutdown();
}

fn provision_link_key(dir: &std::path::Path) -> LinkKey {
    joinserver::secrets::Secrets::load(dir).unwrap().link
}
