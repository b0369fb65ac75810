//! `simulator bench`: the simulator alone, without servers. Builds a fleet in memory (no
//! manifest file), reports its memory, then runs a join storm against a local UDP sink that only
//! counts, to measure how many GWMP datagrams the simulator generates per second on its one
//! thread. Nothing answers, so no device joins: this measures the generating side only.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use protocol::ids::NetId;
use serde::Serialize;

use crate::engine::{Engine, EngineConfig};
use crate::fleet::Fleet;
use crate::manifest::{self, NonceState, Params, VersionMix};
use crate::net::{self, NetConfig};
use crate::radio::RadioModel;
use crate::scenario::{Scenario, Traffic};

/// What `simulator bench` measured.
#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    /// Devices in the fleet.
    pub devices: u64,
    /// Seconds to generate the fleet (keys, EUIs) and build the state machines.
    pub build_s: f64,
    /// Resident memory after building the fleet, MiB.
    pub rss_fleet_mib: f64,
    /// Peak resident memory of the process, MiB.
    pub rss_peak_mib: f64,
    /// Bytes of one device's state machine (without its boxed session).
    pub device_bytes: usize,
    /// Bytes of one session (boxed; allocated while a device is joined).
    pub session_bytes: usize,
    /// Estimated resident memory of the fleet with every device joined, MiB: the measured fleet
    /// plus one session allocation (rounded up to 16 bytes, plus 16 of allocator overhead) each.
    pub rss_fleet_joined_estimate_mib: f64,
    /// Datagrams generated.
    pub datagrams: u64,
    /// Seconds from the first to the last datagram.
    pub generate_s: f64,
    /// Datagrams per second of wall time.
    pub datagrams_per_s: f64,
    /// CPU seconds the simulator's thread used while generating (user + system).
    pub cpu_s: f64,
    /// Datagrams per CPU second of the simulator's one thread: the rate on one dedicated core.
    pub datagrams_per_cpu_s: f64,
    /// Of `cpu_s`, the part spent sending (`sendmmsg`, where loopback also charges the receiving
    /// side's kernel work to the sender).
    pub send_cpu_s: f64,
    /// Datagrams per CPU second outside the send calls: what the simulation itself (device state
    /// machines, crypto, GWMP encoding, scheduling) generates.
    pub generated_per_engine_cpu_s: f64,
    /// Datagrams the sink received (the kernel may drop some when the sink falls behind).
    pub sink_received: u64,
    /// With `--nonce-log`: DevNonce log `fdatasync` calls (group commits), else 0.
    pub nonce_log_syncs: u64,
    /// With `--nonce-log`: wall seconds the committer spent in `write` + `fdatasync`.
    pub nonce_log_wait_s: f64,
    /// `ideal`, `realistic` or `city` (`--radio`, `--city`).
    pub radio: &'static str,
    /// Seconds to set the radio model up (the city: placing meters, their reach and data rates).
    pub radio_setup_s: f64,
    /// Transmissions every gateway in reach lost to collisions (`--radio realistic`).
    pub uplinks_collided: u64,
}

/// Reads a `/proc/self/status` field in kB, as MiB.
fn proc_status_mib(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

use crate::net::thread_cpu_s;

/// Receives up to `bufs.len()` datagrams with one `recvmmsg` (waiting for the first only).
fn recv_batch(sock: &UdpSocket, bufs: &mut [[u8; 512]]) -> Option<usize> {
    use nix::sys::socket::{recvmmsg, MsgFlags, MultiHeaders, SockaddrStorage};
    use std::io::IoSliceMut;
    use std::os::fd::AsRawFd;
    let mut slices: Vec<[IoSliceMut<'_>; 1]> = bufs
        .iter_mut()
        .map(|b| [IoSliceMut::new(&mut b[..])])
        .collect();
    let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(slices.len(), None);
    recvmmsg(
        sock.as_raw_fd(),
        &mut headers,
        slices.iter_mut(),
        MsgFlags::MSG_WAITFORONE,
        None,
    )
    .ok()
    .map(|r| r.count())
}

/// Runs the benchmark: `devices` devices all sending a Join-request within `window`; the run
/// stops 6 s after the window (retries of the earliest devices may start before that).
pub fn run(
    devices: u32,
    window: Duration,
    gateways: u16,
    seed: u64,
    nonce_log: bool,
    radio_model: Option<RadioModel>,
) -> anyhow::Result<BenchReport> {
    let t0 = Instant::now();
    let fleet = storm_fleet(devices, seed, gateways);
    let build_s = t0.elapsed().as_secs_f64();
    let rss_fleet_mib = proc_status_mib("VmRSS:");

    let sink = CountingSink::start()?;
    let window_us = window.as_micros() as u64;
    let mut engine = storm_engine(seed, window_us, gateways, fleet);
    let t_radio = Instant::now();
    if let Some(m) = radio_model {
        engine.enable_radio(m);
    }
    let radio_setup_s = t_radio.elapsed().as_secs_f64();
    let device_bytes = size_of::<crate::device::Device>();
    let session_bytes = size_of::<crate::device::Session>();
    let per_session = session_bytes.div_ceil(16) * 16 + 16;
    let rss_fleet_joined_estimate_mib =
        rss_fleet_mib + (per_session as f64 * f64::from(devices)) / (1024.0 * 1024.0);
    let cpu0 = thread_cpu_s();
    // With `nonce_log`, every DevNonce goes through the write-ahead log of `simulator run`, in
    // a temporary directory.
    let log_dir = tempfile::Builder::new()
        .prefix("bench-nonce-log-")
        .tempdir()?;
    let log = nonce_log
        .then(|| crate::nonce_log::NonceLog::open(&log_dir.path().join("fleet.csv.state"), &[]))
        .transpose()?
        .map(|(_, log)| log);
    let (engine, _) = net::run_logged(
        engine,
        &NetConfig {
            netserver: sink.addr,
            more_netservers: Vec::new(),
            bind: "127.0.0.1".parse()?,
            event_listen: None,
            progress: false,
            sink_grace: Duration::ZERO,
            rekey: None,
        },
        log,
    )?;
    let cpu_s = thread_cpu_s() - cpu0;
    std::thread::sleep(Duration::from_millis(300));
    let sink_received = sink.stop();
    let datagrams = engine.stats.push_data + engine.stats.pull_data;
    let generate_s = engine.stats.generate_span_s();
    Ok(BenchReport {
        radio: match radio_model {
            None => "ideal",
            Some(m) if m.city => "city",
            Some(_) => "realistic",
        },
        radio_setup_s,
        uplinks_collided: engine.stats.uplinks_collided,
        devices: u64::from(devices),
        build_s,
        rss_fleet_mib,
        rss_peak_mib: proc_status_mib("VmHWM:"),
        device_bytes,
        session_bytes,
        rss_fleet_joined_estimate_mib,
        datagrams,
        generate_s,
        datagrams_per_s: per_s(datagrams, generate_s),
        cpu_s,
        datagrams_per_cpu_s: per_s(datagrams, cpu_s),
        send_cpu_s: engine.stats.send_cpu_s,
        generated_per_engine_cpu_s: per_s(datagrams, cpu_s - engine.stats.send_cpu_s),
        sink_received,
        nonce_log_syncs: engine.stats.nonce_log_syncs,
        nonce_log_wait_s: engine.stats.nonce_log_s,
    })
}

/// `devices` fresh devices of every MAC version (the manifest `simulator manifest` writes).
fn storm_fleet(devices: u32, seed: u64, gateways: u16) -> Fleet {
    let entries = manifest::generate(&Params {
        devices,
        seed,
        versions: VersionMix::Mix,
        join_eui: manifest::DEFAULT_JOIN_EUI,
        home_net_id: NetId::new(0).expect("NetID 0"),
    });
    Fleet::new(
        entries,
        &vec![NonceState::default(); devices as usize],
        seed,
        gateways,
    )
}

/// `n` per second of `s` seconds (0 when no time passed).
fn per_s(n: u64, s: f64) -> f64 {
    if s > 0.0 {
        n as f64 / s
    } else {
        0.0
    }
}

/// A UDP socket on loopback that only counts the datagrams it receives, on its own thread.
struct CountingSink {
    addr: SocketAddr,
    received: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl CountingSink {
    fn start() -> anyhow::Result<Self> {
        let sink = UdpSocket::bind("127.0.0.1:0")?;
        let _ = socket2::SockRef::from(&sink).set_recv_buffer_size(8 << 20);
        sink.set_read_timeout(Some(Duration::from_millis(100)))?;
        let addr = sink.local_addr()?;
        let received = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (received, stop) = (received.clone(), stop.clone());
            std::thread::Builder::new()
                .name("bench-sink".into())
                .spawn(move || {
                    let mut bufs = vec![[0u8; 512]; 256];
                    while !stop.load(Ordering::Relaxed) {
                        if let Some(n) = recv_batch(&sink, &mut bufs) {
                            received.fetch_add(n as u64, Ordering::Relaxed);
                        }
                    }
                })?
        };
        Ok(Self {
            addr,
            received,
            stop,
            thread,
        })
    }

    /// Stops the thread; the datagrams received.
    fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
        self.received.load(Ordering::Relaxed)
    }
}

/// The storm the benchmark plays: every device joins within `window_us`, then sends
/// uplinks every minute for 6 s more.
fn storm_engine(seed: u64, window_us: u64, gateways: u16, fleet: Fleet) -> Engine {
    Engine::new(
        EngineConfig {
            seed,
            traffic: Traffic {
                scenario: Scenario::Storm,
                join_window_us: window_us,
                duration_us: window_us + 6_000_000,
                uplink_interval_us: 60_000_000,
                confirmed_ratio: 0.0,
                payload_size: 12,
                loss: 0.0,
                heard_by: 1,
                data_rate: 5,
                radio: Default::default(),
            },
            gateways,
            event_sink: false,
            duration_given: true,
            // One PUSH_DATA per Join-request, as this benchmark has always counted datagrams.
            forwarder: crate::gateway::Forwarder::IMMEDIATE,
        },
        fleet,
    )
}
