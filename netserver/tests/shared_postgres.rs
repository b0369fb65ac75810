//! Two `netserver serve` processes on one PostgreSQL database (a real PostgreSQL 15,
//! `testkit::postgres`), the real join server, and gateways on loopback:
//!
//! - a device joins through either instance, and its session serves uplinks through the other;
//! - a frame heard by gateways attached to both instances is delivered once;
//! - a replay reaching the other instance is refused;
//! - the same Join-request into both instances at once gives one Join-accept and one session;
//! - kill -9 of one instance mid-stream: its gateway re-points to the other, and the stream goes
//!   on with nothing delivered twice and nothing lost (in the event log the instances write in
//!   their counters' transactions, `[store] event_log`; the per-instance event files never
//!   repeat a frame either, and may miss what the killed instance had committed but not yet
//!   written); a downlink queued through the killed instance is sent by the other;
//! - a gateway whose PULL_DATA one instance holds gets the Join-accept and the downlinks of the
//!   other instance, handed over (its owner instance); a downlink queued through one instance's
//!   input leaves with the uplink another handles, once.

mod common;

/// The simulator's two-by-two storm runs alone; the other tests side by side.
static ALONE: testkit::alone::Alone = testkit::alone::Alone::new();

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{events, netserver_serve, start_joinserver, Gateway, Proc, UPLINK_MIC};
use protocol::data::{FramePayload, FrmPayload, SessionCrypto, Uplink};
use protocol::derive;
use protocol::ids::{DevAddr, DevEui, DevNonce, JoinEui, NetId};
use protocol::join::{
    EncryptedJoinAccept, JoinAcceptEncKey, JoinAcceptMicKey, JoinRequest, JoinRootKey,
};
use protocol::keys::{AppKey, KeyCipher};
use serde_json::Value;

const APP_KEY: &str = "2B7E151628AED2A6ABF7158809CF4F3C";
const JOIN_EUI: u64 = 0x70B3_D57E_D000_0001;
const NET_ID: u32 = 0x000013;

fn manifest(devices: u64) -> String {
    let mut m =
        String::from("dev_eui,join_eui,mac_version,app_key,nwk_key,home_net_id,owner_token\n");
    for d in 1..=devices {
        m.push_str(&format!(
            "{d:016X},70B3D57ED0000001,1.0.3,{APP_KEY},,000013,\n"
        ));
    }
    m
}

/// The deployment: one database, one join server, two network-server instances, each with
/// its own data directory, event file and DevAddr sub-block of NetID 000013.
struct Deployment {
    root: tempfile::TempDir,
    url: String,
    js_link: String,
    secrets: PathBuf,
    _js: Proc,
    _pg: testkit::postgres::Postgres,
}

impl Deployment {
    fn new(devices: u64) -> Self {
        let pg = testkit::postgres::Postgres::start();
        let url = pg.create_database();
        let root = tempfile::tempdir().unwrap();
        let (js_dir, js) = start_joinserver(
            root.path(),
            &manifest(devices),
            &format!("{NET_ID:06X}"),
            "warn",
            None,
        );
        Self {
            url,
            js_link: js.addr("link").to_string(),
            secrets: js_dir.join("secrets"),
            root,
            _js: js,
            _pg: pg,
        }
    }

    fn events_path(&self, name: &str) -> PathBuf {
        self.root.path().join(format!("events-{name}.jsonl"))
    }

    /// Starts instance `name` allocating from `prefix` (ADDR/BITS).
    fn instance(&self, name: &str, prefix: &str) -> Proc {
        self.instance_with_input(name, prefix).0
    }

    /// [`Self::instance`], and the address of its UDP downlink input.
    fn instance_with_input(&self, name: &str, prefix: &str) -> (Proc, SocketAddr) {
        let input = std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let config = self.root.path().join(format!("{name}.toml"));
        // The scheduler off: the simulator's gateways here are ideal (no radio model) and
        // transmit anything; the duty-cycle budgets would rightly hold a 2,000-device storm on a
        // few gateways to what real ones may send, which is not what these tests measure.
        std::fs::write(
            &config,
            format!(
                "[network]\ndev_addr_prefix = \"{prefix}\"\n[gwmp]\nworkers = 1\n\
                 [join]\njoin_accept_delay1_s = 1\njoin_accept_delay2_s = 2\n\
                 [data]\ncollect_window_ms = 50\n[store]\nevent_log = true\n\
                 [scheduler]\nenabled = false\n"
            ),
        )
        .unwrap();
        let mut cmd = netserver_serve(
            &config,
            &self.root.path().join(name),
            &self.js_link,
            &self.secrets,
            &format!("{NET_ID:06X}"),
        );
        cmd.arg("--as-kek")
            .arg(self.secrets.join("as.kek"))
            .arg("--events")
            .arg(self.events_path(name))
            .args(["--store-url", &self.url])
            .args(["--downlink-listen", &input.to_string()]);
        (Proc::spawn(cmd, "netserver listening"), input)
    }
}

/// A device's session as the device derived it from its Join-accept.
struct Device {
    addr: DevAddr,
    crypto: SessionCrypto,
}

fn join_request(dev: u64, nonce: u16) -> Vec<u8> {
    let app = KeyCipher::new(&APP_KEY.parse::<AppKey>().unwrap());
    JoinRequest::build(
        JoinEui::new(JOIN_EUI),
        DevEui::new(dev),
        DevNonce(nonce),
        JoinRootKey::AppKey(&app),
    )
    .to_bytes()
    .to_vec()
}

/// Opens a Join-accept (LoRaWAN 1.0.3) and derives the session.
fn accept(data: &[u8], nonce: u16) -> Device {
    let app = KeyCipher::new(&APP_KEY.parse::<AppKey>().unwrap());
    let p = EncryptedJoinAccept::from_bytes(data)
        .unwrap()
        .open(
            JoinAcceptEncKey::AppKey(&app),
            JoinAcceptMicKey::Legacy(JoinRootKey::AppKey(&app)),
        )
        .expect("a Join-accept under the device's AppKey");
    let k = derive::session_keys_1_0(
        &app,
        p.join_nonce,
        NetId::new(NET_ID).unwrap(),
        DevNonce(nonce),
    );
    let (net, app_s) = derive::SessionKeys::V1_0(k).into_parts();
    Device {
        addr: p.dev_addr,
        crypto: SessionCrypto::new(&net, Some(&app_s)),
    }
}

/// Joins `dev` through `gw` alone.
fn join(gw: &Gateway, dev: u64, nonce: u16, tmst: u32) -> Device {
    gw.push(&join_request(dev, nonce), tmst, 8.0, -90);
    let (_, tx) = gw
        .pull_resp(Duration::from_secs(5))
        .unwrap_or_else(|| panic!("no Join-accept for {dev}"));
    accept(&tx.data, nonce)
}

/// Queues `data` on FPort 5 for `dev` through the UDP downlink input at `input`; the answer.
fn queue_downlink(input: SocketAddr, dev: u64, data: &[u8]) -> Value {
    queue_downlink_as(input, dev, data, false)
}

/// [`queue_downlink`], confirmed or not.
fn queue_downlink_as(input: SocketAddr, dev: u64, data: &[u8], confirmed: bool) -> Value {
    use base64::Engine;
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD.encode(data);
    let req =
        format!(r#"{{"dev_eui":"{dev:016X}","f_port":5,"data":"{b64}","confirmed":{confirmed}}}"#);
    s.send_to(req.as_bytes(), input).unwrap();
    let mut buf = [0u8; 2048];
    let n = s.recv(&mut buf).expect("an answer from the downlink input");
    serde_json::from_slice(&buf[..n]).unwrap()
}

/// The application payload of a downlink sent to `d` with FCntDown `fcnt`.
fn downlink_payload(d: &Device, data: &[u8], fcnt: u32) -> Option<(u8, Vec<u8>)> {
    let dl = protocol::data::DataFrame::parse(data)
        .expect("a data frame")
        .open_downlink(&d.crypto, fcnt, 0)
        .expect("a downlink under the device's keys");
    match dl.payload {
        FramePayload::Application { f_port, payload } => Some((f_port, payload.0)),
        _ => None,
    }
}

/// Rows of the shared downlink queue.
fn queued_rows(url: &str) -> i64 {
    use r2d2_postgres::postgres::{Client, NoTls};
    let mut c = Client::connect(url, NoTls).unwrap();
    c.query_one("SELECT count(*) FROM ns_downlink_queue", &[])
        .unwrap()
        .get(0)
}

/// Waits until the shared state records an owner instance for gateway `gw`.
fn wait_owner(url: &str, gw: u64) {
    use r2d2_postgres::postgres::{Client, NoTls};
    let mut c = Client::connect(url, NoTls).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while c
        .query_opt(
            "SELECT instance FROM ns_gateway_owners WHERE gateway_eui = $1",
            &[&(gw as i64)],
        )
        .unwrap()
        .is_none()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no owner recorded for {gw:016X}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Median and largest delay, in microseconds, of `n` notifications from one PostgreSQL
/// connection to another that `LISTEN`s (what a hand-off by LISTEN/NOTIFY would cost at least).
fn notify_latency_us(url: &str, n: usize) -> (u128, u128) {
    use r2d2_postgres::postgres::fallible_iterator::FallibleIterator;
    use r2d2_postgres::postgres::{Client, NoTls};
    let mut listen = Client::connect(url, NoTls).unwrap();
    listen.batch_execute("LISTEN handoff_probe").unwrap();
    let mut send = Client::connect(url, NoTls).unwrap();
    let mut us: Vec<u128> = (0..n)
        .map(|_| {
            let t = std::time::Instant::now();
            send.execute("SELECT pg_notify('handoff_probe', 'x')", &[])
                .unwrap();
            let got = listen
                .notifications()
                .timeout_iter(Duration::from_secs(5))
                .next()
                .unwrap();
            assert!(got.is_some());
            t.elapsed().as_micros()
        })
        .collect();
    us.sort_unstable();
    (us[n / 2], us[n - 1])
}

fn uplink(d: &Device, fcnt: u32) -> Vec<u8> {
    uplink_acking(d, fcnt, false)
}

/// An unconfirmed uplink, with its ACK bit set or not.
fn uplink_acking(d: &Device, fcnt: u32, ack: bool) -> Vec<u8> {
    Uplink {
        confirmed: false,
        dev_addr: d.addr,
        fcnt,
        adr: false,
        adr_ack_req: false,
        ack,
        class_b: false,
        fopts: Vec::new(),
        payload: FramePayload::Application {
            f_port: 2,
            payload: FrmPayload(format!("frame {fcnt}").into_bytes()),
        },
    }
    .build(&d.crypto, &UPLINK_MIC)
    .unwrap()
}

/// Pushes `phy` through every gateway at once (each waits for its PUSH_ACK).
fn hear(gws: &[&Gateway], phy: &[u8], tmst: u32) {
    let tokens: Vec<_> = gws
        .iter()
        .map(|g| g.send_push(phy, tmst, 8.0, -90, protocol::gwmp::CrcStatus::Ok))
        .collect();
    for (g, t) in gws.iter().zip(tokens) {
        g.wait_push_ack(t);
    }
}

/// Every (DevEUI, FCnt) of the uplink events in `events`, with how often it was delivered.
fn uplinks(events: impl IntoIterator<Item = Value>) -> BTreeMap<(String, u64), usize> {
    let mut out = BTreeMap::new();
    for e in events {
        if e["type"] == "uplink" {
            let key = (
                e["dev_eui"].as_str().unwrap().to_owned(),
                e["f_cnt"].as_u64().unwrap(),
            );
            *out.entry(key).or_default() += 1;
        }
    }
    out
}

/// The uplinks of the event files `paths`.
fn delivered(paths: &[&Path]) -> BTreeMap<(String, u64), usize> {
    uplinks(paths.iter().flat_map(|p| events(p)))
}

/// The uplinks of the shared event log (`ns_events`).
fn logged(url: &str) -> BTreeMap<(String, u64), usize> {
    use r2d2_postgres::postgres::{Client, NoTls};
    let mut c = Client::connect(url, NoTls).unwrap();
    let rows = c
        .query("SELECT event::text FROM ns_events ORDER BY id", &[])
        .unwrap();
    uplinks(
        rows.iter()
            .map(|r| serde_json::from_str(r.get::<_, &str>(0)).unwrap()),
    )
}

fn join_events(paths: &[&Path]) -> Vec<Value> {
    paths
        .iter()
        .flat_map(|p| events(p))
        .filter(|e| e["type"] == "join")
        .collect()
}

/// Waits up to 30 s (a loaded machine) for `want` to hold over the events of `paths`.
fn wait_until(paths: &[&Path], what: &str, want: impl Fn(&BTreeMap<(String, u64), usize>) -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let d = delivered(paths);
        if want(&d) {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{what}: {d:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn two_instances_share_sessions_counters_and_deduplication() {
    let _beside = ALONE.beside_others();
    let dep = Deployment::new(3);
    let a = dep.instance("a", "26000000/8");
    let b = dep.instance("b", "27000000/8");
    let (ea, eb) = (dep.events_path("a"), dep.events_path("b"));
    let files = [ea.as_path(), eb.as_path()];
    let ga = Gateway::new(0xAA55_0000_0000_00A1, a.addr("gwmp"));
    let gb = Gateway::new(0xAA55_0000_0000_00B1, b.addr("gwmp"));
    ga.pull_data();
    gb.pull_data();

    // Device 1 joins through A, device 2 through B.
    let d1 = join(&ga, 1, 1, 1_000_000);
    let d2 = join(&gb, 2, 1, 2_000_000);
    assert_eq!(d1.addr.as_u32() >> 24, 0x26, "A's sub-block");
    assert_eq!(d2.addr.as_u32() >> 24, 0x27, "B's sub-block");
    // Each instance has the other's session (its NOTIFY, then a load) before the device's
    // first uplink, as a real device's first uplink follows its Join-accept by seconds: under
    // load the load can take longer than this test takes to send its frames.
    let loaded = "netserver_shared_store_total{event=\"session_loaded\"}";
    common::wait_metric(b.addr("metrics"), loaded, 1.0);
    common::wait_metric(a.addr("metrics"), loaded, 1.0);

    // Heard by both gateways: delivered once.
    let mut tmst = 10_000_000;
    for f in 0..5 {
        hear(&[&ga, &gb], &uplink(&d1, f), tmst);
        hear(&[&ga, &gb], &uplink(&d2, f), tmst + 1000);
        tmst += 1_000_000;
    }
    // Each session serves uplinks through the other instance alone.
    hear(&[&gb], &uplink(&d1, 5), tmst);
    hear(&[&ga], &uplink(&d2, 5), tmst + 1000);
    tmst += 1_000_000;
    wait_until(&files, "12 uplinks", |d| d.len() == 12);
    // Replays (frames the other instance delivered) through either instance: refused.
    for f in [0, 3, 5] {
        hear(&[&ga], &uplink(&d1, f), tmst);
        hear(&[&gb], &uplink(&d2, f), tmst + 1000);
        tmst += 1_000_000;
    }
    hear(&[&ga], &uplink(&d1, 6), tmst);
    wait_until(&files, "the next frame", |d| d.len() == 13);
    let d = delivered(&files);
    assert!(d.values().all(|&n| n == 1), "each frame once: {d:?}");
    let mut expected: Vec<(String, u64)> = [1u64, 2]
        .iter()
        .flat_map(|dev| (0..=5).map(move |f| (format!("{dev:016X}"), f)))
        .chain([(format!("{:016X}", 1), 6)])
        .collect();
    expected.sort();
    assert_eq!(d.keys().cloned().collect::<Vec<_>>(), expected);
    assert_eq!(logged(&dep.url), d, "the shared event log holds the same");
    let refused = common::metric(
        a.addr("metrics"),
        "netserver_shared_store_total{event=\"uplink_counted\"}",
    ) + common::metric(
        b.addr("metrics"),
        "netserver_shared_store_total{event=\"uplink_counted\"}",
    );
    // Each of the ten frames heard through both instances was refused once by the store
    // (the replays were refused too, by the store or by the instance's own de-duplication
    // and counters: the events above show none delivered).
    assert!(refused >= 10.0, "refused {refused}");

    // Device 3's Join-request heard by both instances at once: one Join-accept, one session.
    hear(&[&ga, &gb], &join_request(3, 1), tmst);
    let accepts: Vec<_> = [&ga, &gb]
        .iter()
        .filter_map(|g| g.pull_resp(Duration::from_secs(4)))
        .collect();
    assert_eq!(accepts.len(), 1, "one Join-accept");
    let d3 = accept(&accepts[0].1.data, 1);
    let joins = join_events(&files);
    assert_eq!(
        joins
            .iter()
            .filter(|e| e["dev_eui"] == "0000000000000003")
            .count(),
        1,
        "{joins:?}"
    );
    tmst += 10_000_000;
    hear(&[&ga, &gb], &uplink(&d3, 0), tmst);
    wait_until(&files, "device 3's uplink", |d| {
        d.get(&(format!("{:016X}", 3), 0)) == Some(&1)
    });
}

/// A packet forwarder pulls (PULL_DATA, so PULL_RESP and TX_ACK) from one socket and pushes
/// (PUSH_DATA) from another; a load balancer keyed on the source address and port may give them
/// to two instances. The Join-accept and the data downlinks of the instance that handles the
/// uplinks (B) leave from the gateway's owner instance (A, which holds its PULL_DATA), handed
/// over; the TX_ACK reaches A. A downlink queued through A's input is sent with the device's
/// next uplink, which B handles, exactly once.
#[test]
fn a_gateway_pulling_from_one_instance_gets_the_downlinks_of_another_and_the_queue_is_shared() {
    let _beside = ALONE.beside_others();
    let dep = Deployment::new(2);
    let (a, a_input) = dep.instance_with_input("a", "26000000/8");
    let b = dep.instance("b", "27000000/8");
    let files = [dep.events_path("a"), dep.events_path("b")];
    let files = [files[0].as_path(), files[1].as_path()];
    const GW: u64 = 0xAA55_0000_0000_00C1;
    let down = Gateway::new(GW, a.addr("gwmp"));
    let up = Gateway::new(GW, b.addr("gwmp"));
    down.pull_data();
    wait_owner(&dep.url, GW);
    // B reads the owners every 250 ms.
    std::thread::sleep(Duration::from_millis(800));

    // Device 1's Join-request reaches B alone; its Join-accept leaves from A.
    let t = std::time::Instant::now();
    up.push(&join_request(1, 1), 1_000_000, 8.0, -90);
    let (token, tx) = down
        .pull_resp(Duration::from_secs(5))
        .expect("the Join-accept, handed to A");
    let handed = t.elapsed();
    let d1 = accept(&tx.data, 1);
    assert_eq!(d1.addr.as_u32() >> 24, 0x27, "B made the session");
    down.tx_ack(token, None);
    common::wait_metric(
        a.addr("metrics"),
        "netserver_tx_ack_total{error=\"none\"}",
        1.0,
    );
    let shared = |p: &Proc, e: &str| {
        common::metric(
            p.addr("metrics"),
            &format!("netserver_shared_store_total{{event=\"{e}\"}}"),
        )
    };
    assert_eq!(shared(&b, "handoff_sent"), 1.0);
    assert_eq!(shared(&a, "handoff_delivered"), 1.0);

    // For comparison: device 2 joins through a gateway A holds entirely.
    let direct = Gateway::new(0xAA55_0000_0000_00C2, a.addr("gwmp"));
    direct.pull_data();
    let t = std::time::Instant::now();
    join(&direct, 2, 1, 2_000_000);
    let straight = t.elapsed();
    let (notify_p50, notify_max) = notify_latency_us(&dep.url, 50);
    eprintln!(
        "Join-accept through a hand-off {handed:?}, straight {straight:?}; \
         a PostgreSQL notification: median {notify_p50} us, max {notify_max} us (50)"
    );

    // A downlink queued through A's input leaves with the next uplink, which B handles.
    let ans = queue_downlink(a_input, 1, b"from A");
    assert_eq!(ans["ok"], true, "{ans}");
    assert_eq!(queued_rows(&dep.url), 1);
    std::thread::sleep(Duration::from_millis(300));
    up.push(&uplink(&d1, 0), 10_000_000, 8.0, -90);
    let (_, tx) = down
        .pull_resp(Duration::from_secs(5))
        .expect("the queued downlink, through A");
    assert_eq!(
        downlink_payload(&d1, &tx.data, 0),
        Some((5, b"from A".to_vec()))
    );
    assert_eq!(queued_rows(&dep.url), 0, "taken off the shared queue");
    // Exactly once: the next uplink (unconfirmed) has nothing left to carry.
    up.push(&uplink(&d1, 1), 12_000_000, 8.0, -90);
    wait_until(&files, "two uplinks", |d| d.len() == 2);
    assert!(down.pull_resp(Duration::from_millis(1500)).is_none());
    assert!(
        up.pull_resp(Duration::from_millis(10)).is_none(),
        "nothing from B"
    );
}

/// A confirmed downlink sent through one instance, acknowledged by an uplink another instance
/// receives: that instance knows the downlink is pending (the counters' record carries it,
/// and a notification brings it over at once) and reports the `ack` event; the device's next
/// uplinks are not acknowledgements any more.
#[test]
fn a_confirmed_downlink_sent_by_one_instance_is_acknowledged_through_the_other() {
    let _beside = ALONE.beside_others();
    let dep = Deployment::new(1);
    let (a, a_input) = dep.instance_with_input("a", "26000000/8");
    let b = dep.instance("b", "27000000/8");
    let files = [dep.events_path("a"), dep.events_path("b")];
    let files = [files[0].as_path(), files[1].as_path()];
    let gw_a = Gateway::new(0xAA55_0000_0000_00D1, a.addr("gwmp"));
    let gw_b = Gateway::new(0xAA55_0000_0000_00D2, b.addr("gwmp"));
    gw_a.pull_data();
    gw_b.pull_data();
    let d = join(&gw_a, 1, 1, 1_000_000);
    // Wait until B has the session, as the device's first uplinks come seconds later.
    common::wait_metric(
        b.addr("metrics"),
        "netserver_shared_store_total{event=\"session_loaded\"}",
        1.0,
    );
    let ans = queue_downlink_as(a_input, 1, b"confirm me", true);
    assert_eq!(ans["ok"], true, "{ans}");
    let id = ans["id"].as_u64().expect("the queued item's id");
    std::thread::sleep(Duration::from_millis(300));
    gw_a.push(&uplink(&d, 0), 10_000_000, 8.0, -90);
    let (_, tx) = gw_a
        .pull_resp(Duration::from_secs(5))
        .expect("the confirmed downlink, through A");
    let frame = protocol::data::DataFrame::parse(&tx.data).unwrap();
    assert!(frame.is_confirmed(), "a confirmed data down frame");
    assert_eq!(
        downlink_payload(&d, &tx.data, 0),
        Some((5, b"confirm me".to_vec()))
    );
    // The device acknowledges it in its next uplink, which only B hears.
    std::thread::sleep(Duration::from_millis(500));
    gw_b.push(&uplink_acking(&d, 1, true), 20_000_000, 8.0, -90);
    wait_until(&files, "the acknowledging uplink", |u| u.len() == 2);
    let acks = |p: &Path| -> Vec<Value> {
        events(p)
            .into_iter()
            .filter(|e| e["type"] == "ack")
            .collect()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while acks(files[1]).is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let from_b = acks(files[1]);
    assert_eq!(from_b.len(), 1, "B reports the ack: {from_b:?}");
    assert_eq!(from_b[0]["id"].as_u64(), Some(id));
    assert_eq!(from_b[0]["f_cnt_down"].as_u64(), Some(0));
    assert_eq!(from_b[0]["dev_eui"], "0000000000000001");
    assert!(acks(files[0]).is_empty(), "A saw no acknowledgement");
    // Acknowledged once: a later uplink with the ACK bit (through A) reports nothing more.
    gw_a.push(&uplink_acking(&d, 2, true), 30_000_000, 8.0, -90);
    wait_until(&files, "a third uplink", |u| u.len() == 3);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(acks(files[0]).len() + acks(files[1]).len(), 1);
}

#[test]
fn kill_9_of_an_instance_mid_stream_its_gateway_moves_and_nothing_is_lost_or_repeated() {
    let _beside = ALONE.beside_others();
    let dep = Deployment::new(2);
    let (a, a_input) = dep.instance_with_input("a", "26000000/8");
    let b = dep.instance("b", "27000000/8");
    let (ea, eb) = (dep.events_path("a"), dep.events_path("b"));
    let files = [ea.as_path(), eb.as_path()];
    let mut ga = Gateway::new(0xAA55_0000_0000_00A1, a.addr("gwmp"));
    let gb = Gateway::new(0xAA55_0000_0000_00B1, b.addr("gwmp"));
    ga.pull_data();
    gb.pull_data();
    let d1 = join(&ga, 1, 1, 1_000_000);
    let d2 = join(&gb, 2, 1, 2_000_000);
    // A downlink for device 2 queued through A, which then dies: B sends it.
    let ans = queue_downlink(a_input, 2, b"queued at A");
    assert_eq!(ans["ok"], true, "{ans}");

    // A stream through A's gateway: sent without waiting for delivery, then kill -9.
    let mut tmst = 10_000_000;
    for f in 0..40 {
        ga.send_push(
            &uplink(&d1, f),
            tmst,
            8.0,
            -90,
            protocol::gwmp::CrcStatus::Ok,
        );
        tmst += 100_000;
        std::thread::sleep(Duration::from_millis(5));
    }
    a.kill9();
    // The gateway re-points to B (as a load balancer or DNS would make it) and sends again
    // what it is not sure was delivered, then goes on.
    ga.ns = b.addr("gwmp");
    ga.pull_data();
    for f in 0..60 {
        hear(&[&ga], &uplink(&d1, f), tmst);
        tmst += 100_000;
    }
    // B's own device is unaffected, and gets what was queued for it at A.
    hear(&[&gb], &uplink(&d2, 0), tmst);
    let (_, tx) = gb
        .pull_resp(Duration::from_secs(5))
        .expect("the downlink queued at A, sent by B");
    assert_eq!(
        downlink_payload(&d2, &tx.data, 0),
        Some((5, b"queued at A".to_vec()))
    );
    assert_eq!(queued_rows(&dep.url), 0);
    let all_sent = |d: &BTreeMap<(String, u64), usize>| {
        (0..60).all(|f| d.contains_key(&(format!("{:016X}", 1), f)))
            && d.contains_key(&(format!("{:016X}", 2), 0))
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let log = loop {
        let log = logged(&dep.url);
        if all_sent(&log) || std::time::Instant::now() > deadline {
            break log;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // The event log: every frame, each once.
    assert!(all_sent(&log), "every frame of the stream: {log:?}");
    assert!(log.values().all(|&n| n == 1), "each frame once: {log:?}");
    assert_eq!(log.len(), 61);
    // The event files: no frame twice, and every one B delivered is in the log.
    let in_files = delivered(&files);
    assert!(
        in_files.values().all(|&n| n == 1),
        "each frame once: {in_files:?}"
    );
    assert!(in_files.keys().all(|k| log.contains_key(k)));
    let by_a = delivered(&[ea.as_path()]).len();
    assert!(by_a > 0, "A delivered part of the stream before it died");
    // No rejoin: one join event per device.
    assert_eq!(join_events(&files).len(), 2);
}

/// The simulator against the two-by-two deployment (two join servers and two network servers
/// on one PostgreSQL, as separate processes: `netserver/scripts/pg-scaleout.sh`): the issue's
/// storm of 20,000 devices (`NETSERVER_2X2_DEVICES` sets another number), then steady uplinks
/// through four gateways, two per network server, each transmission heard by one or two of them:
/// every device joined, every uplink delivered once. The pace suits the debug build this test
/// runs in, with none of this file's other tests beside it (in debug, the file's other
/// deployments on the same two cores starve its storm): the storm offers 200 joins a second
/// (100 s for 20,000 devices), then each device reports every 50 s, about 400 uplinks a second,
/// until 55 s after the storm. A storm faster than the debug deployment answers is answered past
/// the 5 s receive window, and the repeated Join-requests keep it saturated: at 800 a second
/// 12,432 of 20,000 joined on a CI machine, at 400 a second 14,701 on the slower machine of
/// 2026-12-07 (p99 4.9 s) where 200 a second is answered within the window. This test is about
/// the shared state, not speed: the release rates are benchmarks (docs/benchmarks.md,
/// "Scale-out on PostgreSQL").
#[test]
fn simulator_storm_then_steady_uplinks_through_two_by_two() {
    let _alone = ALONE.alone();
    let bin = common::workspace_bin("simulator");
    common::joinserver_bin();
    let devices: u64 = std::env::var("NETSERVER_2X2_DEVICES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    // At least 10 s of storm and 7 s between a device's uplinks, at most 200 joins and 400
    // uplinks a second.
    let window_s = (devices / 200).max(10);
    let interval_s = (devices / 400).max(7);
    let out = std::process::Command::new("bash")
        .arg(common::workspace_root().join("netserver/scripts/pg-scaleout.sh"))
        .env("BIN", bin.parent().unwrap())
        .env("N", devices.to_string())
        .env("W", format!("{window_s}s"))
        // The simulator's ideal radio transmits whatever it is asked: this test is about the
        // shared state, so the network servers answer every Join-request in its first window
        // as they did before the downlink scheduler (which bounds a storm through four
        // gateways by their airtime: tested with the realistic radio in simulator/tests/e2e.rs).
        .env("SCHEDULER", "off")
        .env(
            "EXTRA",
            format!(
                "--uplink-interval {interval_s}s --duration {}s",
                window_s + interval_s + 5
            ),
        )
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = text
        .lines()
        .find(|l| l.starts_with("devices "))
        .unwrap_or_else(|| panic!("no summary in {text}"));
    let field = |name: &str| -> u64 {
        let words: Vec<&str> = summary.split_whitespace().collect();
        let i = words.iter().position(|w| *w == name).unwrap();
        words[i + 1].parse().unwrap()
    };
    assert_eq!(field("devices"), devices, "{summary}");
    assert_eq!(field("joined"), devices, "every device joined: {summary}");
    assert!(field("uplinks_sent") > 0, "{summary}");
    assert_eq!(
        field("delivered"),
        field("uplinks_sent"),
        "delivered = sent: {summary}"
    );
    assert_eq!(field("duplicates"), 0, "{summary}");
    // The run directory (logs, report) is kept only when the test fails.
    if let Some(dir) = text.lines().last().filter(|l| l.starts_with('/')) {
        let _ = std::fs::remove_dir_all(dir);
    }
}
