//! Load generator for the data path (a measurement, not a test): steady uplinks from many
//! joined sessions through the real `netserver` binary, events written to a file.
//!
//! ```sh
//! cargo build --release -j2 -p netserver --bin netserver --example uplink_load
//! target/release/examples/uplink_load provision DIR 100000      # once: sessions + secrets
//! target/release/examples/uplink_load udp 5                     # raw UDP datagram rate
//! target/release/examples/uplink_load run DIR RATE SECS         # one measured run
//! target/release/examples/uplink_load restart DIR               # time to restart
//! ```
//!
//! `run` copies `DIR/ns` to a fresh data directory, starts `target/release/netserver` on it
//! (`collect_window_ms = 0`, two socket loops), sends `RATE` PUSH_DATA/s (one `rxpk` each,
//! device after device, each with its next FCnt) from two sender threads for `SECS` seconds
//! after a 5 s warm-up, and prints the delivered rate (`netserver_uplinks_total{result="ok"}`
//! over the window), the latency quantiles from `netserver_uplink_latency_seconds`, the kernel
//! drops, and the server's RSS.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use netserver::core::device::FrameCounters;
use netserver::keys::{LabeledKek, NetworkKeys};
use netserver::store::commit::SessionStore;
use netserver::store::session_journal::SessionJournal;
use netserver::store::stored::{RxParams, StoredSession, STORED_SESSION_VERSION};
use protocol::data::{FramePayload, FrmPayload, NetworkSessionKeys, SessionCrypto, Uplink};
use protocol::gwmp::{CodingRate, CrcStatus, DataRate, Packet, PushData, RxPk, Token};
use protocol::ids::{DevAddr, DevEui, DevNonce, GatewayEui, JoinEui};
use protocol::keys::{AppSKey, Kek, NwkSKey};
use protocol::keywrap::KeyEnvelope;
use protocol::version::MacVersion;

const NS_KEK: [u8; 16] = [0x11; 16];
const AS_KEK: [u8; 16] = [0x22; 16];

fn nwk_key(i: u32) -> NwkSKey {
    let mut k = [0x5Au8; 16];
    k[..4].copy_from_slice(&i.to_le_bytes());
    NwkSKey::new(k)
}

fn app_key(i: u32) -> AppSKey {
    let mut k = [0xA5u8; 16];
    k[..4].copy_from_slice(&i.to_le_bytes());
    AppSKey::new(k)
}

fn dev_addr(i: u32) -> DevAddr {
    DevAddr::new(0x2600_0000 | i)
}

fn write600(p: &Path, text: &str) {
    std::fs::write(p, text).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600)).unwrap();
}

fn provision(dir: &Path, n: u32) {
    let secrets = dir.join("secrets");
    std::fs::create_dir_all(&secrets).unwrap();
    write600(&secrets.join("link.key"), &hex::encode([0x55u8; 16]));
    let kek = |l: &str, k: [u8; 16]| format!("label = \"{l}\"\nkey = \"{}\"\n", hex::encode(k));
    write600(&secrets.join("ns.kek"), &kek("ns-1", NS_KEK));
    write600(&secrets.join("as.kek"), &kek("as-1", AS_KEK));
    let ns_kek = LabeledKek {
        label: "ns-1".into(),
        key: Kek::new(NS_KEK),
    };
    let t = Instant::now();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let (store, _, thread) = SessionStore::start(
            SessionJournal::open(&dir.join("ns")).unwrap(),
            4096,
            netserver::ops::metrics::Metrics::new(),
        )
        .unwrap();
        let mut pending = Vec::new();
        for i in 0..n {
            let s = StoredSession {
                version: STORED_SESSION_VERSION,
                dev_eui: DevEui::new(0x0100_0000_0000_0000 | u64::from(i)),
                join_eui: JoinEui::new(0x70B3_D57E_D000_0001),
                dev_addr: dev_addr(i),
                mac_version: Some(MacVersion::V1_0_3),
                dev_nonce: DevNonce(1),
                network_keys: NetworkKeys::V1_0(nwk_key(i)).seal(&ns_kek),
                app_s_key: Some(
                    KeyEnvelope::seal("as-1", Some(&Kek::new(AS_KEK)), &app_key(i)).unwrap(),
                ),
                session_key_id: None,
                rx: RxParams::region_default(protocol::region::Region::Eu868),
                counters: FrameCounters::default(),
                created_at_ms: 1_700_000_000_000,
                lifetime_s: None,
                last_rj_count0: None,
                owner: None,
            };
            let store = store.clone();
            pending.push(tokio::spawn(async move { store.put(s).await }));
            if pending.len() == 8192 {
                for p in pending.drain(..) {
                    p.await.unwrap().unwrap();
                }
            }
        }
        for p in pending {
            p.await.unwrap().unwrap();
        }
        drop(store);
        thread.join();
    });
    println!(
        "provisioned {n} sessions in {:.1} s",
        t.elapsed().as_secs_f64()
    );
}

fn bin() -> PathBuf {
    let me = std::env::current_exe().unwrap();
    me.parent().unwrap().parent().unwrap().join("netserver")
}

fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut t = String::new();
    s.read_to_string(&mut t).unwrap();
    t
}

fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Quantile from a Prometheus histogram (linear inside the bucket).
fn quantile(text: &str, q: f64) -> f64 {
    let mut buckets: Vec<(f64, f64)> = text
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("netserver_uplink_latency_seconds_bucket{le=\"")?;
            let (le, v) = rest.split_once("\"} ")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, v.trim().parse().ok()?))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last().map_or(0.0, |b| b.1);
    let want = q * total;
    let (mut lo, mut below) = (0.0, 0.0);
    for (le, c) in buckets {
        if c >= want {
            if le.is_infinite() {
                return lo;
            }
            let frac = if c > below {
                (want - below) / (c - below)
            } else {
                1.0
            };
            return lo + (le - lo) * frac;
        }
        lo = le;
        below = c;
    }
    lo
}

/// The kinds of resident memory (`RssAnon`, `RssFile`, `RssShmem` of /proc/PID/status).
fn rss_parts(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("Rss"))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join(", ")
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

struct Server {
    child: std::process::Child,
    gwmp: SocketAddr,
    metrics: SocketAddr,
}

fn start(dir: &Path, data: &Path, events: &Path) -> (Server, Duration) {
    let cfg = data.join("bench.toml");
    std::fs::write(
        &cfg,
        "[gwmp]\nworkers = 2\n[data]\ncollect_window_ms = 0\ndev_status_interval = 0\n",
    )
    .unwrap();
    let secrets = dir.join("secrets");
    let t = Instant::now();
    let mut child = Command::new(bin())
        .arg("serve")
        .arg("--config")
        .arg(&cfg)
        .arg("--data-dir")
        .arg(data.join("ns"))
        .args(["--join-server", "127.0.0.1:9"])
        .arg("--link-key")
        .arg(secrets.join("link.key"))
        .arg("--ns-kek")
        .arg(secrets.join("ns.kek"))
        .arg("--as-kek")
        .arg(secrets.join("as.kek"))
        .args(["--listen", "127.0.0.1:0", "--metrics", "127.0.0.1:0"])
        .arg("--events")
        .arg(events)
        .env("NETSERVER_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while out.read(&mut b).unwrap() == 1 && b[0] != b'\n' {
        line.push(b[0]);
    }
    let took = t.elapsed();
    let line = String::from_utf8(line).unwrap();
    let get = |k: &str| -> SocketAddr {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
            .unwrap()
            .parse()
            .unwrap()
    };
    let s = Server {
        gwmp: get("gwmp"),
        metrics: get("metrics"),
        child,
    };
    (s, took)
}

/// Copies the data directory `from` to `to`, with its journals' directories.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

fn run(dir: &Path, rate: u64, secs: u64) {
    let n = count_sessions(dir);
    let data = tempfile::tempdir_in(dir).unwrap();
    copy_dir(&dir.join("ns"), &data.path().join("ns"));
    let events = data.path().join("events.jsonl");
    let (mut srv, _) = start(dir, data.path(), &events);
    let rss_idle = rss_kb(srv.child.id());
    let stop = Arc::new(AtomicBool::new(false));
    let senders = 2u32;
    let mut handles = Vec::new();
    for t in 0..senders {
        let stop = Arc::clone(&stop);
        let to = srv.gwmp;
        handles.push(std::thread::spawn(move || {
            let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
            sock.set_nonblocking(true).unwrap();
            let per = rate / u64::from(senders);
            let gws: Vec<GatewayEui> = (0..8)
                .map(|g| GatewayEui::new(0xAA00 + u64::from(t) * 16 + g))
                .collect();
            // Devices t, t+senders, t+2·senders, …; each gets its next FCnt in turn.
            let mine: Vec<u32> = (t..n).step_by(senders as usize).collect();
            let cryptos: Vec<SessionCrypto> = mine
                .iter()
                .map(|&i| {
                    SessionCrypto::new(
                        &NetworkSessionKeys::V1_0 {
                            nwk_s_key: nwk_key(i),
                        },
                        Some(&app_key(i)),
                    )
                })
                .collect();
            let start = Instant::now();
            let mut sent: u64 = 0;
            let mut buf = [0u8; 64];
            while !stop.load(Ordering::Relaxed) {
                let due = (start.elapsed().as_secs_f64() * per as f64) as u64;
                if sent >= due {
                    while sock.recv(&mut buf).is_ok() {}
                    std::thread::sleep(Duration::from_micros(200));
                    continue;
                }
                let k = (sent % mine.len() as u64) as usize;
                let fcnt = (sent / mine.len() as u64) as u32;
                let i = mine[k];
                let phy = Uplink {
                    confirmed: false,
                    dev_addr: dev_addr(i),
                    fcnt,
                    adr: false,
                    adr_ack_req: false,
                    ack: false,
                    class_b: false,
                    fopts: Vec::new(),
                    payload: FramePayload::Application {
                        f_port: 1,
                        payload: FrmPayload(sent.to_le_bytes().to_vec()),
                    },
                }
                .build(&cryptos[k], &Default::default())
                .unwrap();
                let p = Packet::PushData(PushData {
                    token: Token([(sent >> 8) as u8, sent as u8]),
                    gateway: gws[(sent % 8) as usize],
                    rxpk: vec![RxPk {
                        tmst: (sent as u32).wrapping_mul(997),
                        time: None,
                        tmms: None,
                        chan: Some(1),
                        rfch: Some(0),
                        freq_hz: 868_300_000,
                        stat: CrcStatus::Ok,
                        datr: DataRate::lora(7, 125).unwrap(),
                        codr: Some(CodingRate::Cr4_5),
                        rssi: Some(-97),
                        lsnr: Some(6.5),
                        jver: None,
                        rsig: Vec::new(),
                        brd: None,
                        aesk: None,
                        data: phy,
                    }],
                    stat: None,
                })
                .to_bytes()
                .unwrap();
                let _ = sock.send_to(&p, to);
                sent += 1;
            }
            sent
        }));
    }
    let warmup = Duration::from_secs(5);
    std::thread::sleep(warmup);
    let t0 = http_get(srv.metrics, "/metrics");
    let w0 = Instant::now();
    std::thread::sleep(Duration::from_secs(secs));
    let t1 = http_get(srv.metrics, "/metrics");
    let window = w0.elapsed().as_secs_f64();
    let rss_busy = rss_kb(srv.child.id());
    stop.store(true, Ordering::Relaxed);
    let sent: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
    let ok = |t: &str| sample(t, "netserver_uplinks_total{result=\"ok\"}");
    let delivered = ok(&t1) - ok(&t0);
    // Latency of the measured window only: difference of the two histograms.
    let diff = diff_histograms(&t0, &t1);
    println!(
        "sessions={n} offered={rate}/s window={window:.1}s delivered={:.0}/s p50={:.2}ms p99={:.2}ms p999={:.2}ms kernel_drops={} other_results: mic_failed={} replay={} unknown={} rss_idle={}MB rss_busy={}MB sent_total={sent}",
        delivered / window,
        quantile(&diff, 0.5) * 1e3,
        quantile(&diff, 0.99) * 1e3,
        quantile(&diff, 0.999) * 1e3,
        sample(&t1, "netserver_gwmp_socket_drops"),
        sample(&t1, "netserver_uplinks_total{result=\"mic_failed\"}"),
        sample(&t1, "netserver_uplinks_total{result=\"replay\"}"),
        sample(&t1, "netserver_uplinks_total{result=\"unknown_devaddr\"}"),
        rss_idle / 1024,
        rss_busy / 1024,
    );
    let _ = srv.child.kill();
    let _ = srv.child.wait();
}

fn diff_histograms(a: &str, b: &str) -> String {
    let get = |t: &str, key: &str| sample(t, key);
    b.lines()
        .filter_map(|l| {
            let key = l.split_once(' ')?.0;
            key.starts_with("netserver_uplink_latency_seconds_bucket")
                .then(|| format!("{key} {}", get(b, key) - get(a, key)))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn count_sessions(dir: &Path) -> u32 {
    let (store, loaded, t) = SessionStore::start(
        SessionJournal::open(&dir.join("ns")).unwrap(),
        8,
        netserver::ops::metrics::Metrics::new(),
    )
    .unwrap();
    drop(store);
    t.join();
    loaded.len() as u32
}

fn udp_rate(secs: u64) {
    let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
    rx.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let to = rx.local_addr().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let s2 = Arc::clone(&stop);
    let payload = vec![0x42u8; 300];
    let tx = std::thread::spawn(move || {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut n = 0u64;
        while !s2.load(Ordering::Relaxed) {
            if s.send_to(&payload, to).is_ok() {
                n += 1;
            }
        }
        n
    });
    let t = Instant::now();
    let mut got = 0u64;
    let mut buf = [0u8; 2048];
    while t.elapsed() < Duration::from_secs(secs) {
        if rx.recv(&mut buf).is_ok() {
            got += 1;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let sent = tx.join().unwrap();
    let el = t.elapsed().as_secs_f64();
    println!(
        "raw UDP loopback, 300-byte datagrams, one sender thread and one receiver thread: received {:.0}/s (sent {:.0}/s)",
        got as f64 / el,
        sent as f64 / el
    );
}

fn restart(dir: &Path) {
    let data = tempfile::tempdir_in(dir).unwrap();
    copy_dir(&dir.join("ns"), &data.path().join("ns"));
    let events = data.path().join("events.jsonl");
    let (mut srv, took) = start(dir, data.path(), &events);
    let rss = rss_kb(srv.child.id());
    // What an idle server holds once the start's background work is done.
    std::thread::sleep(Duration::from_secs(10));
    let idle = rss_kb(srv.child.id());
    let parts = rss_parts(srv.child.id());
    let _ = srv.child.kill();
    let _ = srv.child.wait();
    // Counted in the copy, after the server: opening the store checkpoints its journals, so
    // counting in `dir` would change what the next restart replays.
    let n = count_sessions(data.path());
    println!(
        "restart: {n} sessions restored and serving in {:.2} s; RSS {} MB = {:.0} bytes/session",
        took.as_secs_f64(),
        rss / 1024,
        rss as f64 * 1024.0 / f64::from(n.max(1))
    );
    println!(
        "restart: RSS after 10 s idle {} MB = {:.0} bytes/session ({parts})",
        idle / 1024,
        idle as f64 * 1024.0 / f64::from(n.max(1)),
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("provision") => provision(Path::new(&args[2]), args[3].parse().unwrap()),
        Some("udp") => udp_rate(args.get(2).map_or(5, |s| s.parse().unwrap())),
        Some("run") => run(
            Path::new(&args[2]),
            args[3].parse().unwrap(),
            args[4].parse().unwrap(),
        ),
        Some("restart") => restart(Path::new(&args[2])),
        _ => eprintln!(
            "usage: uplink_load provision DIR N | udp SECS | run DIR RATE SECS | restart DIR"
        ),
    }
}
