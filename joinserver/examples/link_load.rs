//! Link load tool (a benchmark, not a test): JoinReqs over UDP on 127.0.0.1 to a join server
//! with N provisioned devices and durable nonce state (SQLite WAL, synchronous=FULL, group
//! commit), next to the raw UDP request/response rate of the same machine measured in the same
//! run.
//!
//! ```sh
//! cargo run --release -p joinserver --example link_load -- --devices 100000 --rate 30000 --seconds 60
//! ```
//!
//! Phases:
//! 1. raw: a plain `recv_from`/`send_to` echo thread and a closed-loop client (window 64) for a
//!    few seconds: the machine's UDP request/response ceiling.
//! 2. joins, open loop: JoinReqs paced at `--rate` for `--seconds`; every answer is
//!    authenticated and its ResultCode checked; latency is send → answer received.
//! 3. joins, closed loop (window 64) for a few seconds: the join server's ceiling.
//!
//! Each device is 1.0.4 and joins repeatedly with increasing DevNonces, so every join is a real
//! success that commits its nonces before its answer leaves.
//!
//! On PostgreSQL (`--postgres` starts a private PostgreSQL 15 on a temporary directory with
//! `testkit::postgres`, default settings: `fsync` and `synchronous_commit` on; or `--store-url`)
//! with `--instances N` join servers on the one database: each device's joins go to instance
//! `device % N` (as a network server that picks a join server by device would), the closed loop
//! runs one client per instance, and the CPU of PostgreSQL's processes is reported beside the join
//! servers'.
//!
//! ```sh
//! cargo run --release -p joinserver --example link_load -- --devices 20000 --seconds 10 --postgres --instances 2
//! ```

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use joinserver::config::Config;
use joinserver::devices::{self, Format};
use joinserver::secrets::{self, Secrets};
use joinserver::server::Server;
use joinserver::store::postgres::PgStore;
use joinserver::store::{SqliteStore, Store};
use protocol::ids::{DevEui, DevNonce, JoinEui, NetId};
use protocol::join::{JoinRequest, JoinRootKey};
use protocol::keys::{AppKey, KeyCipher, LinkKey};
use protocol::link::{self, Header, MessageType, PeerId};

const JOIN_EUI: u64 = 0x70B3_D57E_D000_0001;
/// The first peer, which `joinserver init` creates (secrets/link.key): the tool is that network
/// server (NetID 000013 is no peer unless `peers add` made it one).
const NET_ID: u32 = 0x00_0000;
/// A prime larger than any device count used, so `i * PERMUTE mod n` permutes `0..n` when
/// `n` is not a multiple of it.
const PERMUTE: u64 = 1_000_003;

/// Command line of the link load tool.
#[derive(clap::Parser)]
#[command(
    about = "JoinReqs over UDP on 127.0.0.1 against an in-process join server, open loop then closed loop"
)]
struct Args {
    /// Devices provisioned (all LoRaWAN 1.0.4).
    #[arg(long, default_value_t = 100_000)]
    devices: u64,
    /// Offered JoinReqs per second in the open-loop phase.
    #[arg(long, default_value_t = 30_000)]
    rate: u64,
    /// Length of the open-loop phase, s.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Length of the raw UDP echo phase, s.
    #[arg(long, default_value_t = 5)]
    raw_seconds: u64,
    /// Data directory (default: a temporary one).
    #[arg(long)]
    data_dir: Option<std::path::PathBuf>,
    /// SQLite synchronous mode of the nonce store.
    #[arg(long, value_enum, default_value_t = SyncMode::Full)]
    synchronous: SyncMode,
    /// Join the devices in a pseudo-random order instead of round robin (one instance only).
    #[arg(long)]
    random_order: bool,
    /// Run on a private PostgreSQL 15 (`testkit::postgres`, a temporary directory) instead of
    /// the embedded SQLite store.
    #[arg(long)]
    postgres: bool,
    /// Run on this PostgreSQL database (an empty one: the tool provisions it).
    #[arg(long)]
    store_url: Option<String>,
    /// Join server instances on the one store (PostgreSQL only beyond 1).
    #[arg(long, default_value_t = 1)]
    instances: usize,
    /// `[store] commit_interval_ms` of the join server (default: the configuration's default).
    #[arg(long)]
    commit_interval_ms: Option<u64>,
    /// `[store] commit_enough` of the join server (default: the configuration's default).
    #[arg(long)]
    commit_enough: Option<usize>,
}

/// `--synchronous` values.
#[derive(Clone, Copy, clap::ValueEnum)]
enum SyncMode {
    /// Every commit flushed (the production default).
    Full,
    /// WAL without a flush per commit.
    Normal,
}

impl From<SyncMode> for joinserver::config::Synchronous {
    fn from(m: SyncMode) -> Self {
        match m {
            SyncMode::Full => Self::Full,
            SyncMode::Normal => Self::Normal,
        }
    }
}

fn parse_args() -> Args {
    <Args as clap::Parser>::parse()
}

fn app_key(i: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&i.to_be_bytes());
    k[8..].copy_from_slice(&(i ^ 0x5A5A_5A5A_5A5A_5A5A).to_be_bytes());
    k
}

fn manifest(n: u64) -> String {
    // Every device is homed in the load generator's network: an unclaimed device (no home
    // NetID) is refused with ActivationDisallowed.
    let mut csv = String::from("dev_eui,join_eui,mac_version,app_key,nwk_key,home_net_id\n");
    for i in 1..=n {
        csv.push_str(&format!(
            "{i:016X},{JOIN_EUI:016X},1.0.4,{},,{NET_ID:06X}\n",
            hex::encode(app_key(i))
        ));
    }
    csv
}

fn provision(dir: &std::path::Path, n: u64, url: Option<&str>) -> Secrets {
    secrets::init(dir).unwrap();
    let s = Secrets::load(dir).unwrap();
    if let Some(url) = url {
        let mut store = PgStore::connect(url, 2).unwrap();
        store
            .check_master(&joinserver::atrest::check_value(&s.master))
            .unwrap();
        if store.load_devices().unwrap().len() as u64 >= n {
            return s;
        }
        let t = Instant::now();
        devices::import_postgres(&mut store, &s.master, manifest(n).as_bytes(), None, 0).unwrap();
        eprintln!(
            "imported {n} devices into PostgreSQL in {:.2} s",
            t.elapsed().as_secs_f64()
        );
        return s;
    }
    let mut store = SqliteStore::open(dir).unwrap();
    if store.load_devices().unwrap().len() as u64 >= n {
        return s;
    }
    let t = Instant::now();
    devices::import(&mut store, &s.master, &manifest(n), Format::Csv).unwrap();
    eprintln!("imported {n} devices in {:.2} s", t.elapsed().as_secs_f64());
    s
}

/// Builds the datagram of join number `seq`: device `seq % n + 1`, DevNonce `seq / n + 1`.
#[derive(Clone)]
struct Gen {
    random_order: bool,
    key: LinkKey,
    n: u64,
    ciphers: Arc<Vec<KeyCipher<AppKey>>>,
    buf: Vec<u8>,
}

impl Gen {
    /// The device index (0-based) of join number `seq`: sequential device order, or a fixed
    /// pseudo-random permutation of the devices in every round (so each device still joins once
    /// per round, with DevNonce = round + 1).
    fn index(&self, seq: u64) -> u64 {
        if self.random_order {
            (seq % self.n).wrapping_mul(PERMUTE) % self.n
        } else {
            seq % self.n
        }
    }

    fn datagram(&mut self, seq: u64) -> &[u8] {
        let i = self.index(seq);
        let dn = (seq / self.n + 1) as u16;
        let dev = i + 1;
        let jr = JoinRequest::build(
            JoinEui::new(JOIN_EUI),
            DevEui::new(dev),
            DevNonce(dn),
            JoinRootKey::AppKey(&self.ciphers[i as usize]),
        );
        let body = format!(
            r#"{{"ProtocolVersion":"1.0","SenderID":"{NET_ID:06X}","ReceiverID":"{JOIN_EUI:016X}","TransactionID":{},"MessageType":"JoinReq","MACVersion":"1.0.4","PHYPayload":"{}","DevEUI":"{dev:016X}","DevAddr":"26011BDA","DLSettings":"12","RxDelay":1}}"#,
            seq as u32,
            hex::encode(jr.to_bytes())
        );
        link::seal(
            &self.key,
            &Header {
                msg_type: MessageType::JoinReq,
                sender: PeerId::from_net_id(NetId::new(NET_ID).unwrap()),
                timestamp_ms: joinserver::link::now_ms(),
                nonce: seq,
            },
            body.as_bytes(),
            &mut self.buf,
        )
        .unwrap();
        &self.buf
    }
}

/// CPU time (user + system, in clock ticks of 10 ms) of the private PostgreSQL: its server
/// process `server` and the server's children (backends, background workers), with the time of
/// the children that ended (in the server's `cutime`/`cstime` once it reaped them). 0 without one.
fn postgres_cpu_ticks(server: Option<u32>) -> u64 {
    let Some(server) = server else {
        return 0;
    };
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    dir.flatten()
        .filter_map(|p| {
            let pid: u32 = p.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(p.path().join("stat")).ok()?;
            let rest = stat.rsplit(')').next()?.to_owned();
            let f: Vec<&str> = rest.split_whitespace().collect();
            let field = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
            // After the command: state, ppid, ..., utime 11, stime 12, cutime 13, cstime 14.
            (pid == server || field(1)? == u64::from(server))
                .then(|| (11..=14).filter_map(field).sum::<u64>())
        })
        .sum()
}

/// CPU time (user + system, in clock ticks of 10 ms) of this process's threads named `js-*`:
/// the join server's own threads.
fn server_cpu_ticks() -> u64 {
    let mut total = 0;
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    for t in dir.flatten() {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if !comm.starts_with("js-") {
            continue;
        }
        let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
        // Fields after the ")" that ends the command name: utime and stime are 14 and 15.
        if let Some(rest) = stat.rsplit(')').next() {
            let f: Vec<&str> = rest.split_whitespace().collect();
            total += f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            total += f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        }
    }
    total
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[i]) / 1000.0
}

/// Closed loop with `window` requests in flight for `secs`: completed pairs per second.
fn closed_loop(
    server: SocketAddr,
    secs: u64,
    window: u64,
    mut make: impl FnMut(u64) -> Vec<u8>,
    check: impl Fn(&[u8]) -> bool,
) -> (f64, u64) {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut seq = 0u64;
    for _ in 0..window {
        sock.send_to(&make(seq), server).unwrap();
        seq += 1;
    }
    let mut buf = [0u8; 2048];
    let (mut done, mut bad) = (0u64, 0u64);
    let start = Instant::now();
    let end = start + Duration::from_secs(secs);
    while Instant::now() < end {
        match sock.recv_from(&mut buf) {
            Ok((n, _)) => {
                done += 1;
                if !check(&buf[..n]) {
                    bad += 1;
                }
                sock.send_to(&make(seq), server).unwrap();
                seq += 1;
            }
            Err(_) => {
                // Lost datagram(s): refill the window.
                sock.send_to(&make(seq), server).unwrap();
                seq += 1;
            }
        }
    }
    (done as f64 / start.elapsed().as_secs_f64(), bad)
}

fn main() {
    let args = parse_args();
    assert!(args.instances >= 1, "--instances: at least 1");
    assert!(
        args.instances == 1 || !args.random_order,
        "--random-order: one instance only"
    );
    assert!(
        args.devices % args.instances as u64 == 0,
        "--devices: a multiple of --instances"
    );
    let tmp = tempfile::tempdir().unwrap();
    let dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| tmp.path().to_owned());
    let pg = args.postgres.then(testkit::postgres::Postgres::start);
    let url = args.store_url.clone().or_else(|| {
        pg.as_ref()
            .map(testkit::postgres::Postgres::create_database)
    });
    assert!(
        args.instances == 1 || url.is_some(),
        "--instances > 1 needs --postgres or --store-url"
    );
    let s = provision(&dir, args.devices, url.as_deref());

    // Phase 1: raw UDP request/response on this machine.
    let echo = UdpSocket::bind("127.0.0.1:0").unwrap();
    echo.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let echo_addr = echo.local_addr().unwrap();
    let stop_echo = Arc::new(AtomicBool::new(false));
    let se = stop_echo.clone();
    let echo_thread = std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while !se.load(Ordering::Relaxed) {
            if let Ok((n, a)) = echo.recv_from(&mut buf) {
                let _ = echo.send_to(&buf[..n], a);
            }
        }
    });
    let payload = vec![0x42u8; 350];
    let (raw_rate, _) = closed_loop(
        echo_addr,
        args.raw_seconds,
        64,
        |_| payload.clone(),
        |_| true,
    );
    stop_echo.store(true, Ordering::Relaxed);
    echo_thread.join().unwrap();
    println!("raw UDP request/response (350-byte datagrams, window 64): {raw_rate:.0} pairs/s");

    // The join server, in release, same machine.
    let mut config = Config::default();
    config.link.listen = "127.0.0.1:0".parse().unwrap();
    config.metrics.listen = String::new();
    config.store.synchronous = args.synchronous.into();
    config.store.url = url.clone().unwrap_or_default();
    if let Some(ms) = args.commit_interval_ms {
        config.store.commit_interval_ms = ms;
    }
    if let Some(n) = args.commit_enough {
        config.store.commit_enough = n;
    }
    let servers: Vec<Server> = (0..args.instances)
        .map(|_| Server::start(&dir, &config).unwrap())
        .collect();
    let addrs: Vec<SocketAddr> = servers.iter().map(Server::link_addr).collect();
    println!(
        "store: {}, {} instance(s)",
        if url.is_some() {
            "PostgreSQL 15"
        } else {
            "SQLite (embedded)"
        },
        args.instances
    );
    let ciphers: Arc<Vec<KeyCipher<AppKey>>> = Arc::new(
        (1..=args.devices)
            .map(|i| KeyCipher::new(&AppKey::new(app_key(i))))
            .collect(),
    );
    let key = s.link.clone();
    let success = |d: &[u8]| -> bool {
        link::open(&key, d).is_ok_and(|(_, body)| body.windows(9).any(|w| w == b"\"Success\""))
    };

    // Phase 2: open loop at --rate for --seconds.
    let total = args.rate * args.seconds;
    let sent_at: Arc<Vec<AtomicU64>> = Arc::new((0..total).map(|_| AtomicU64::new(0)).collect());
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let _ = socket2::SockRef::from(&sock).set_recv_buffer_size(8 << 20);
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let rsock = sock.try_clone().unwrap();
    let origin = Instant::now();
    let sa = sent_at.clone();
    let rkey = s.link.clone();
    let receiver = std::thread::spawn(move || {
        let mut lat: Vec<u32> = Vec::with_capacity(total as usize);
        let (mut ok, mut failed) = (0u64, 0u64);
        let mut rx = udpbatch::BatchReceiver::new(32, 2048);
        let mut last = Instant::now();
        loop {
            match rx.recv(&rsock) {
                Ok(k) => {
                    let now = origin.elapsed().as_nanos() as u64;
                    last = Instant::now();
                    for i in 0..k {
                        match link::open(&rkey, rx.get(i).0) {
                            Ok((h, body)) if body.windows(9).any(|w| w == b"\"Success\"") => {
                                ok += 1;
                                if let Some(t) = sa.get(h.nonce as usize) {
                                    let t0 = t.load(Ordering::Relaxed);
                                    lat.push(((now.saturating_sub(t0)) / 1000) as u32);
                                }
                            }
                            _ => failed += 1,
                        }
                    }
                    if ok + failed == total {
                        break;
                    }
                }
                Err(_) if last.elapsed() > Duration::from_secs(2) => break,
                Err(_) => {}
            }
        }
        (lat, ok, failed)
    });
    let mut g = Gen {
        random_order: args.random_order,
        key: s.link.clone(),
        n: args.devices,
        ciphers,
        buf: Vec::new(),
    };
    let batch = udpbatch::BatchSender::new(64);
    let cpu_before = server_cpu_ticks();
    let pgrp = pg.as_ref().and_then(testkit::postgres::Postgres::pid);
    let pg_cpu_before = postgres_cpu_ticks(pgrp);
    let start = Instant::now();
    let mut seq = 0u64;
    while seq < total {
        // Send everything due by now (1 ms granularity pacing).
        let due = ((start.elapsed().as_secs_f64() * args.rate as f64) as u64).min(total);
        let mut burst: Vec<(Vec<u8>, SocketAddr)> = Vec::new();
        while seq < due {
            let t = origin.elapsed().as_nanos() as u64;
            sent_at[seq as usize].store(t, Ordering::Relaxed);
            let to = addrs[(g.index(seq) % addrs.len() as u64) as usize];
            burst.push((g.datagram(seq).to_vec(), to));
            seq += 1;
        }
        let msgs: Vec<(&[u8], SocketAddr)> =
            burst.iter().map(|(d, a)| (d.as_slice(), *a)).collect();
        batch.send(&sock, &msgs);
        std::thread::sleep(Duration::from_micros(500));
    }
    let send_secs = start.elapsed().as_secs_f64();
    let (mut lat, ok, failed) = receiver.join().unwrap();
    let recv_secs = start.elapsed().as_secs_f64();
    let cpu_secs = (server_cpu_ticks() - cpu_before) as f64 / 100.0;
    let pg_cpu_secs = postgres_cpu_ticks(pgrp).saturating_sub(pg_cpu_before) as f64 / 100.0;
    lat.sort_unstable();
    println!(
        "joins open loop: offered {} joins/s for {:.1} s; {ok} successes, {failed} other answers, {} unanswered; achieved {:.0} joins/s",
        args.rate,
        send_secs,
        total - ok - failed,
        ok as f64 / recv_secs.max(send_secs)
    );
    println!(
        "  latency ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
        percentile(&lat, 0.50),
        percentile(&lat, 0.90),
        percentile(&lat, 0.99),
        percentile(&lat, 0.999),
        percentile(&lat, 1.0)
    );

    println!(
        "  join server CPU (its link and writer threads, user+system): {cpu_secs:.1} s = {:.1} µs per join = {:.0} joins per CPU-second",
        cpu_secs * 1e6 / ok.max(1) as f64,
        ok as f64 / cpu_secs.max(0.01)
    );
    if pgrp.is_some() {
        println!(
            "  PostgreSQL CPU (all its processes): {pg_cpu_secs:.1} s = {:.1} µs per join",
            pg_cpu_secs * 1e6 / ok.max(1) as f64
        );
    }

    // Phase 3: closed loop, the ceiling, one client per instance (each on its devices).
    // DevNonces continue after phase 2.
    let base = total;
    let n_inst = addrs.len() as u64;
    let cpu_before = server_cpu_ticks();
    let pg_cpu_before = postgres_cpu_ticks(pgrp);
    let results: Vec<(f64, u64)> = std::thread::scope(|scope| {
        let handles: Vec<_> = addrs
            .iter()
            .enumerate()
            .map(|(k, &addr)| {
                let mut g = g.clone();
                let success = &success;
                let secs = args.raw_seconds;
                scope.spawn(move || {
                    closed_loop(
                        addr,
                        secs,
                        64,
                        |i| g.datagram(base + i * n_inst + k as u64).to_vec(),
                        success,
                    )
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let join_rate: f64 = results.iter().map(|r| r.0).sum();
    let bad: u64 = results.iter().map(|r| r.1).sum();
    let cpu = (server_cpu_ticks() - cpu_before) as f64 / 100.0;
    let pg_cpu = postgres_cpu_ticks(pgrp).saturating_sub(pg_cpu_before) as f64 / 100.0;
    let joins = join_rate * args.raw_seconds as f64;
    println!(
        "joins closed loop (window 64 per instance): {join_rate:.0} joins/s ({bad} non-success); \
         join server CPU {:.1} µs per join{}",
        cpu * 1e6 / joins.max(1.0),
        if pgrp.is_some() {
            format!(
                ", PostgreSQL CPU {:.1} µs per join",
                pg_cpu * 1e6 / joins.max(1.0)
            )
        } else {
            String::new()
        }
    );
    for (k, server) in servers.into_iter().enumerate() {
        let m = server.metrics.clone();
        println!(
            "instance {k}: {} group commits for {} joins, {} stale, {} store errors",
            m.store_commits.get(),
            m.joins.with_label_values(&["success"]).get(),
            m.store_stale.get(),
            m.store_errors.get()
        );
        server.shutdown();
    }
}
