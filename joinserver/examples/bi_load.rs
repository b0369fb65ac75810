//! Backend Interfaces load tool (a benchmark, not a test): joins over HTTPS (TS002, keep-alive
//! connections, as ChirpStack's pooled client keeps them) against the same joins over the UDP
//! link, in the same run, against one in-process join server with durable nonce state (SQLite
//! WAL, synchronous=FULL, group commit).
//!
//! ```sh
//! cargo run --release -p joinserver --example bi_load -- --devices 10000 --clients 32 --seconds 10
//! ```
//!
//! Each phase is a closed loop of `--clients` threads, each with one request outstanding: over
//! the link, its own UDP socket; over HTTPS, its own keep-alive connection (TLS 1.3, bearer
//! token). Every join is a real success (1.0.4 devices, increasing DevNonces) that commits its
//! nonces before its answer leaves; every answer's ResultCode is checked. Latency is request
//! sent → answer received.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use joinserver::devices::{self, Format};
use joinserver::secrets::{self, Secrets};
use joinserver::server::Server;
use joinserver::store::SqliteStore;
use protocol::ids::{DevEui, DevNonce, JoinEui, NetId};
use protocol::join::{JoinRequest, JoinRootKey};
use protocol::keys::{AppKey, KeyCipher, LinkKey};
use protocol::link::{self, Header, MessageType, PeerId};

const JOIN_EUI: u64 = 0x70B3_D57E_D000_0001;
/// NetID 000000: the peer `joinserver init` creates, with `secrets/link.key`.
const NET_ID: u32 = 0;
const APP_KEY: [u8; 16] = [0x2B; 16];

/// Command line of the Backend Interfaces load tool.
#[derive(clap::Parser)]
#[command(about = "Joins over TS002 HTTPS (keep-alive) and over the UDP link, same run")]
struct Args {
    /// Devices provisioned (all LoRaWAN 1.0.4).
    #[arg(long, default_value_t = 10_000)]
    devices: u64,
    /// Requests outstanding at once (threads, each with its socket or connection).
    #[arg(long, default_value_t = 32)]
    clients: u64,
    /// Length of each phase, s.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
}

fn provision(dir: &std::path::Path, n: u64) -> Secrets {
    secrets::init(dir).unwrap();
    let s = Secrets::load(dir).unwrap();
    let mut store = SqliteStore::open(dir).unwrap();
    let mut csv = String::from("dev_eui,join_eui,mac_version,app_key,nwk_key,home_net_id\n");
    for i in 1..=n {
        csv.push_str(&format!(
            "{i:016X},{JOIN_EUI:016X},1.0.4,{},,{NET_ID:06X}\n",
            hex::encode(APP_KEY)
        ));
    }
    devices::import(&mut store, &s.master, &csv, Format::Csv).unwrap();
    s
}

/// The JoinReq JSON of device `dev` with DevNonce `dn`.
fn join_req(cipher: &KeyCipher<AppKey>, tid: u32, dev: u64, dn: u16) -> String {
    let jr = JoinRequest::build(
        JoinEui::new(JOIN_EUI),
        DevEui::new(dev),
        DevNonce(dn),
        JoinRootKey::AppKey(cipher),
    );
    format!(
        r#"{{"ProtocolVersion":"1.0","SenderID":"{NET_ID:06x}","ReceiverID":"{JOIN_EUI:016x}","TransactionID":{tid},"MessageType":"JoinReq","MACVersion":"1.0.4","PHYPayload":"{}","DevEUI":"{dev:016x}","DevAddr":"26011bda","DLSettings":"00","RxDelay":1,"CFList":"184f84e85684b85e84886684586e8400"}}"#,
        hex::encode(jr.to_bytes())
    )
}

/// Makes a phase's transport, once per client thread.
type MakeTransport<'a> = &'a (dyn Fn() -> Box<dyn Transport> + Sync);

/// Sends one JoinReq body and returns its answer's JSON.
trait Transport: Send {
    fn exchange(&mut self, seq: u64, body: &str) -> String;
}

struct Udp {
    socket: UdpSocket,
    key: LinkKey,
    buf: Vec<u8>,
}

impl Transport for Udp {
    fn exchange(&mut self, seq: u64, body: &str) -> String {
        let header = Header {
            msg_type: MessageType::JoinReq,
            sender: PeerId::from_net_id(NetId::new(NET_ID).unwrap()),
            timestamp_ms: joinserver::link::now_ms(),
            nonce: seq,
        };
        self.buf.clear();
        link::seal(&self.key, &header, body.as_bytes(), &mut self.buf).unwrap();
        self.socket.send(&self.buf).unwrap();
        let mut rx = [0u8; 2048];
        let n = self.socket.recv(&mut rx).expect("a JoinAns within 5 s");
        let (_, body) = link::open(&self.key, &rx[..n]).unwrap();
        String::from_utf8(body.to_vec()).unwrap()
    }
}

struct Https {
    agent: ureq::Agent,
    url: String,
    authorization: String,
}

impl Transport for Https {
    fn exchange(&mut self, _seq: u64, body: &str) -> String {
        self.agent
            .post(&self.url)
            .header("Content-Type", "application/json")
            .header("Authorization", &self.authorization)
            .send(body)
            .unwrap()
            .body_mut()
            .read_to_string()
            .unwrap()
    }
}

/// One phase: `clients` threads, each joining its own devices in turn for `seconds`. Returns
/// (joins, joins/s, p50 ms, p99 ms).
fn phase(
    name: &str,
    args: &Args,
    round: &AtomicU64,
    make: MakeTransport<'_>,
) -> (u64, f64, f64, f64) {
    let cipher = KeyCipher::new(&AppKey::new(APP_KEY));
    let start = Instant::now();
    let until = start + Duration::from_secs(args.seconds);
    let per = args.devices / args.clients;
    // DevNonces above those of earlier phases.
    let base = round.fetch_add(1_000, Ordering::Relaxed) as u16;
    let mut lat: Vec<u32> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..args.clients)
            .map(|c| {
                let cipher = &cipher;
                s.spawn(move || {
                    let mut t = make();
                    let mut lat = Vec::new();
                    let mut i = 0u64;
                    while Instant::now() < until {
                        let dev = c * per + (i % per) + 1;
                        let dn = base + (i / per) as u16 + 1;
                        let body = join_req(cipher, (c << 24 | i) as u32, dev, dn);
                        let t0 = Instant::now();
                        let ans = t.exchange(c << 32 | i, &body);
                        lat.push(t0.elapsed().as_micros() as u32);
                        assert!(ans.contains(r#""ResultCode":"Success""#), "{name}: {ans}");
                        i += 1;
                    }
                    lat
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let secs = start.elapsed().as_secs_f64();
    lat.sort_unstable();
    let pct = |p: f64| {
        let i = ((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1;
        f64::from(lat[i]) / 1000.0
    };
    let n = lat.len() as u64;
    (n, n as f64 / secs, pct(0.50), pct(0.99))
}

fn main() {
    let args = <Args as clap::Parser>::parse();
    assert!(args.clients > 0 && args.devices >= args.clients);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let s = provision(dir, args.devices);
    let (cert, key) = (dir.join("tls/api.crt"), dir.join("tls/api.key"));
    httpsec::tls::ensure_self_signed(&cert, &key, &["localhost".into()]).unwrap();
    let token = {
        let mut store = SqliteStore::open(dir).unwrap();
        let t = joinserver::bi::tokens::create(&mut store, NetId::new(NET_ID).unwrap(), 0);
        format!("Bearer {}", t.unwrap().expose())
    };
    let mut config = joinserver::config::Config::default();
    config.link.listen = "127.0.0.1:0".parse().unwrap();
    config.metrics.listen = String::new();
    config.backend_interfaces.listen = "127.0.0.1:0".into();
    let server = Server::start(dir, &config).unwrap();
    let link_addr: SocketAddr = server.link_addr();
    let bi = server.bi_addr().unwrap();
    let root = ureq::tls::Certificate::from_pem(&std::fs::read(&cert).unwrap())
        .unwrap()
        .to_owned();
    let round = AtomicU64::new(0);
    let udp = || -> Box<dyn Transport> {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.connect(link_addr).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        Box::new(Udp {
            socket,
            key: s.link.clone(),
            buf: Vec::new(),
        })
    };
    let https = || -> Box<dyn Transport> {
        let tls = ureq::tls::TlsConfig::builder()
            .root_certs(ureq::tls::RootCerts::new_with_certs(std::slice::from_ref(
                &root,
            )))
            .build();
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .tls_config(tls)
            .timeout_global(Some(Duration::from_secs(5)))
            .build()
            .into();
        Box::new(Https {
            agent,
            url: format!("https://localhost:{}/", bi.port()),
            authorization: token.clone(),
        })
    };
    println!(
        "devices {} clients {} seconds {} (each phase)",
        args.devices, args.clients, args.seconds
    );
    println!("transport     joins   joins/s   p50 ms   p99 ms");
    let phases: [(&str, MakeTransport<'_>); 2] = [("udp-link", &udp), ("https-bi", &https)];
    for (name, make) in phases {
        let (n, rate, p50, p99) = phase(name, &args, &round, make);
        println!("{name:<10} {n:>8} {rate:>9.0} {p50:>8.2} {p99:>8.2}");
    }
    server.shutdown();
}
