//! The GWMP side of the network server on real sockets, in process, with a join server that
//! never answers: acknowledgements, statistics, drops, and a join that times out after its
//! retries without holding its DevAddr.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use netserver::keys::LabeledKek;
use netserver::ops::config::Config;
use netserver::server::{run, Addresses};
use netserver::state::Secrets;
use protocol::gwmp::{CrcStatus, DataRate, Packet, PushData, RxPk, Stat, Token};
use protocol::ids::{DevEui, DevNonce, GatewayEui, JoinEui};
use protocol::join::{JoinRequest, JoinRootKey};
use protocol::keys::{AppKey, Kek, KeyCipher, LinkKey};
use tokio::sync::watch;

fn metrics(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text
}

fn value(text: &str, sample: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(sample)?.trim().parse().ok())
        .unwrap_or(0.0)
}

fn wait_for(addr: SocketAddr, sample: &str, at_least: f64, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let text = metrics(addr);
        if value(&text, sample) >= at_least {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{sample} never reached {at_least}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn rxpk(data: Vec<u8>, stat: CrcStatus, datr: DataRate) -> RxPk {
    RxPk {
        tmst: 3_000_000,
        time: None,
        tmms: None,
        chan: Some(1),
        rfch: Some(0),
        freq_hz: 868_300_000,
        stat,
        datr,
        codr: None,
        rssi: Some(-70),
        lsnr: Some(8.5),
        jver: None,
        rsig: Vec::new(),
        brd: None,
        aesk: None,
        data,
    }
}

#[test]
fn gwmp_acks_counts_drops_and_a_join_that_times_out() {
    let dir = tempfile::tempdir().unwrap();
    // A "join server" that receives and never answers.
    let silent_js = UdpSocket::bind("127.0.0.1:0").unwrap();
    silent_js
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut config: Config = toml::from_str(
        "[gwmp]\nlisten = \"127.0.0.1:0\"\nworkers = 1\n\
         [join]\njoin_accept_delay1_s = 1\njoin_accept_delay2_s = 2\n\
         [join_server]\nrequest_timeout_ms = 300\ntries = 3\n\
         [metrics]\nlisten = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    config.data_dir = dir.path().to_owned();
    config.join_server.address = silent_js.local_addr().unwrap().to_string();
    let secrets = Secrets {
        link_key: LinkKey::new([1; 16]),
        ns_kek: LabeledKek {
            label: "ns-test".into(),
            key: Kek::new([2; 16]),
        },
        as_kek: None,
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let (addr_tx, addr_rx) = mpsc::channel::<Addresses>();
    let server = std::thread::spawn(move || {
        run(config, secrets, Some(stop_rx), |a| {
            addr_tx.send(*a).unwrap()
        })
    });
    let addrs = addr_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    let m = addrs.metrics.unwrap();

    let gw = UdpSocket::bind("127.0.0.1:0").unwrap();
    gw.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let eui = GatewayEui::new(0x0102_0304_0506_0708);
    let mut buf = [0u8; 2048];

    // PULL_DATA → PULL_ACK with the same token, at once.
    let pull = Packet::PullData {
        token: Token([0xAB, 0xCD]),
        gateway: eui,
    };
    gw.send_to(&pull.to_bytes().unwrap(), addrs.gwmp).unwrap();
    let n = gw.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], &[2, 0xAB, 0xCD, 4]);

    // PUSH_DATA with a stat report, a bad-CRC rxpk, a no-CRC rxpk, an rxpk at a data rate EU868
    // lacks, a downlink frame, and a Join-request → PUSH_ACK at once.
    let app_key = KeyCipher::new(&AppKey::new([3; 16]));
    let join = JoinRequest::build(
        JoinEui::new(1),
        DevEui::new(2),
        DevNonce(3),
        JoinRootKey::AppKey(&app_key),
    )
    .to_bytes()
    .to_vec();
    let push = Packet::PushData(PushData {
        token: Token([0x11, 0x22]),
        gateway: eui,
        rxpk: vec![
            rxpk(
                join.clone(),
                CrcStatus::Bad,
                DataRate::lora(7, 125).unwrap(),
            ),
            rxpk(
                join.clone(),
                CrcStatus::NoCrc,
                DataRate::lora(7, 125).unwrap(),
            ),
            rxpk(join.clone(), CrcStatus::Ok, DataRate::lora(7, 500).unwrap()),
            rxpk(
                vec![0x60; 12],
                CrcStatus::Ok,
                DataRate::lora(9, 125).unwrap(),
            ),
            rxpk(join.clone(), CrcStatus::Ok, DataRate::lora(9, 125).unwrap()),
        ],
        stat: Some(Stat {
            rxnb: Some(5),
            rxok: Some(3),
            ..Stat::default()
        }),
    });
    gw.send_to(&push.to_bytes().unwrap(), addrs.gwmp).unwrap();
    let n = gw.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], &[2, 0x11, 0x22, 1]);

    // The join server never answers: the same JoinReq is sent three times...
    let mut requests = Vec::new();
    while requests.len() < 3 {
        let (n, _) = silent_js.recv_from(&mut buf).expect("a JoinReq");
        requests.push(buf[..n].to_vec());
    }
    let body = |d: &[u8]| d[protocol::link::HEADER_LEN..d.len() - protocol::link::TAG_LEN].to_vec();
    assert_eq!(
        body(&requests[0]),
        body(&requests[2]),
        "retries carry the same JoinReq"
    );
    // ...and the join ends as a timeout once RX2 (2 s here) is out of reach.
    let text = wait_for(
        m,
        "netserver_joins_total{reason=\"timeout\",result=\"dropped\"}",
        1.0,
        Duration::from_secs(5),
    );
    assert_eq!(
        value(&text, "netserver_link_requests_total{type=\"first\"}"),
        1.0
    );
    assert_eq!(
        value(&text, "netserver_link_requests_total{type=\"retry\"}"),
        2.0
    );
    assert_eq!(
        value(&text, "netserver_rxpk_total{result=\"crc_dropped\"}"),
        2.0
    );
    assert_eq!(
        value(&text, "netserver_rxpk_total{result=\"invalid\"}"),
        1.0
    );
    assert_eq!(value(&text, "netserver_rxpk_total{result=\"ok\"}"), 2.0);
    assert_eq!(
        value(
            &text,
            "netserver_uplink_dropped_total{reason=\"not_uplink\"}"
        ),
        1.0
    );
    assert_eq!(
        value(&text, "netserver_gwmp_datagrams_total{type=\"push_data\"}"),
        1.0
    );
    assert_eq!(value(&text, "netserver_sessions"), 0.0);
    gw.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    assert!(
        gw.recv(&mut buf).is_err(),
        "nothing is sent to the gateway for a join without an answer"
    );

    // Datagrams a server never accepts from a gateway are counted, not answered.
    gw.send_to(&[2, 0, 0, 1], addrs.gwmp).unwrap(); // PUSH_ACK
    gw.send_to(&[1, 0, 0, 0], addrs.gwmp).unwrap(); // protocol version 1
    wait_for(
        m,
        "netserver_gwmp_dropped_total{reason=\"unexpected_type\"}",
        1.0,
        Duration::from_secs(2),
    );

    // Stop through the library's stop channel: the server exits cleanly.
    stop_tx.send(true).unwrap();
    server.join().unwrap().unwrap();
}

#[test]
fn cli_prints_the_default_config_and_refuses_exposed_secrets() {
    let bin = env!("CARGO_BIN_EXE_netserver");
    let out = std::process::Command::new(bin)
        .arg("config")
        .output()
        .unwrap();
    assert!(out.status.success());
    let printed: Config = toml::from_str(&String::from_utf8(out.stdout).unwrap()).unwrap();
    assert_eq!(printed, Config::default());

    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("link.key");
    let kek = dir.path().join("ns.kek");
    std::fs::write(&link, "000102030405060708090a0b0c0d0e0f\n").unwrap();
    std::fs::write(
        &kek,
        "label = \"ns-1\"\nkey = \"000102030405060708090a0b0c0d0e0f\"\n",
    )
    .unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&link, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::set_permissions(&kek, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let out = std::process::Command::new(bin)
        .arg("serve")
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--join-server", "127.0.0.1:9", "--listen", "127.0.0.1:0"])
        .arg("--link-key")
        .arg(&link)
        .arg("--ns-kek")
        .arg(&kek)
        .env("NETSERVER_LOG", "off")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("link.key") && err.contains("readable by other users"),
        "{err}"
    );
    assert!(
        !err.contains("0a0b0c"),
        "the key leaked into the error: {err}"
    );
}
