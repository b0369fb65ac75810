//! The socket shell around [`Engine`]: one current-thread tokio runtime, one UDP socket per virtual
//! gateway (each "connected" to the network server, as a packet forwarder is), an optional UDP
//! socket for the network server's application events, and one timer task. No task or socket per
//! device and no task per datagram: each gateway's task drains its socket into the engine, and
//! whoever ran the engine sends what it queued.

use std::cell::RefCell;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use protocol::ids::{DevAddr, DevEui};
use tokio::net::UdpSocket;
use tokio::sync::Notify;
use udpbatch::ReadPacing;

use crate::engine::{Engine, Stage};
use crate::manifest::NonceState;
use crate::nonce_log::NonceLog;
use crate::report;
use crate::sched::Micros;

/// Resolves `--netserver`'s `HOST:PORT` once, to an address of `bind`'s family (the gateway
/// sockets bind there and connect to it): `localhost:1700` is 127.0.0.1:1700 with the default
/// IPv4 `--bind`.
pub fn resolve(spec: &str, bind: IpAddr) -> anyhow::Result<SocketAddr> {
    use std::net::ToSocketAddrs;
    let addrs: Vec<SocketAddr> = spec
        .to_socket_addrs()
        .with_context(|| format!("--netserver {spec:?}: expected HOST:PORT"))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4() == bind.is_ipv4())
        .copied()
        .ok_or_else(|| {
            let family = if bind.is_ipv4() { "IPv4" } else { "IPv6" };
            anyhow::anyhow!(
                "--netserver {spec:?}: no {family} address (found {addrs:?}); --bind {bind} needs one"
            )
        })
}

/// Socket settings of a run.
#[derive(Clone, Debug)]
pub struct NetConfig {
    /// The network server's GWMP address.
    pub netserver: SocketAddr,
    /// Further instances of the network server (several on one shared store): gateway `i`
    /// sends to the `i mod n`-th of `netserver` and these, as a load balancer by gateway would
    /// spread them. Empty: every gateway sends to `netserver`.
    pub more_netservers: Vec<SocketAddr>,
    /// Local address the gateway sockets bind to (port 0 each).
    pub bind: IpAddr,
    /// Where to listen for the network server's application events (JSON objects, one or more
    /// per datagram, one per line).
    pub event_listen: Option<EventListen>,
    /// Print a progress line every second.
    pub progress: bool,
    /// After the run, wait up to this long for the event sink to catch up.
    pub sink_grace: Duration,
    /// `rekey`: how to ask the network server for the forced rejoins.
    pub rekey: Option<Rekey>,
}

/// `rekey`: the network server's HTTP downlink input, its token, and the request.
#[derive(Clone, Debug)]
pub struct Rekey {
    /// The HTTP downlink input's address (plain HTTP, loopback).
    pub http: SocketAddr,
    /// Its bearer token, if it has one.
    pub token: Option<String>,
    /// The rejoin type asked for and the window, as `POST /rejoin` takes them.
    pub request: netserver::integration::rejoin::ForceRejoinRequest,
}

impl NetConfig {
    /// The network server gateway `i` sends to.
    pub fn netserver_of(&self, i: usize) -> SocketAddr {
        match i % (self.more_netservers.len() + 1) {
            0 => self.netserver,
            k => self.more_netservers[k - 1],
        }
    }
}

/// Resolves `--netserver`'s comma-separated `HOST:PORT` list (several instances of the network
/// server), each as [`resolve`] does: the first, and the others.
pub fn resolve_list(spec: &str, bind: IpAddr) -> anyhow::Result<(SocketAddr, Vec<SocketAddr>)> {
    let mut all = spec
        .split(',')
        .map(|s| resolve(s.trim(), bind))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let first = all.remove(0);
    Ok((first, all))
}

/// Where the network server's application events arrive.
#[derive(Clone, Debug)]
pub enum EventListen {
    /// Bind this address when the run starts (`--event-listen ADDR`).
    Addr(SocketAddr),
    /// A socket bound earlier and kept bound since: its address can be handed to the network
    /// server before the run without another process taking the port in between.
    Socket(Arc<std::net::UdpSocket>),
    /// ChirpStack's `up` events from an MQTT broker (`--delivery mqtt://…`).
    Mqtt(crate::delivery::MqttDelivery),
}

impl EventListen {
    /// Binds `addr` now (port 0: an ephemeral port) and keeps the socket for the run.
    pub fn bind(addr: SocketAddr) -> anyhow::Result<Self> {
        let s = std::net::UdpSocket::bind(addr).with_context(|| format!("binding {addr}"))?;
        Ok(Self::Socket(Arc::new(s)))
    }

    /// The address events should be sent to.
    pub fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        match self {
            Self::Addr(a) => Ok(*a),
            Self::Socket(s) => Ok(s.local_addr()?),
            Self::Mqtt(m) => anyhow::bail!(
                "events come from the MQTT broker {}:{}, not to an address",
                m.host,
                m.port
            ),
        }
    }

    fn into_socket(self) -> anyhow::Result<UdpSocket> {
        match self {
            Self::Addr(a) => udp_socket(a, None),
            Self::Socket(s) => {
                let s = socket2::Socket::from(s.try_clone()?);
                let _ = s.set_recv_buffer_size(SOCKET_BUFFER);
                s.set_nonblocking(true)?;
                Ok(UdpSocket::from_std(s.into())?)
            }
            Self::Mqtt(_) => anyhow::bail!("an MQTT delivery counter has no socket"),
        }
    }
}

/// Socket buffer size asked of the kernel for every socket.
const SOCKET_BUFFER: usize = 8 << 20;

fn udp_socket(bind: SocketAddr, connect: Option<SocketAddr>) -> anyhow::Result<UdpSocket> {
    let domain = if bind.is_ipv4() {
        socket2::Domain::IPV4
    } else {
        socket2::Domain::IPV6
    };
    let s = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    // Best effort: the kernel caps these at net.core.{r,w}mem_max.
    let _ = s.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = s.set_send_buffer_size(SOCKET_BUFFER);
    s.set_nonblocking(true)?;
    s.bind(&bind.into())
        .with_context(|| format!("binding {bind}"))?;
    if let Some(c) = connect {
        s.connect(&c.into())
            .with_context(|| format!("connecting to {c}"))?;
    }
    Ok(UdpSocket::from_std(s.into())?)
}

/// Under load, the least time between two reads of a gateway's socket: a busy gateway wakes
/// once per interval and takes what arrived meanwhile (PUSH_ACKs, PULL_RESPs) in a few system
/// calls, as a packet forwarder's polling threads do, instead of waking for each datagram; the
/// simulator then leaves more of the machine to the servers it measures. A datagram after a
/// quiet spell is read at once; a Join-accept's latency as reported includes up to this much.
const GATEWAY_READ_INTERVAL: Duration = Duration::from_millis(1);

/// The least time from one DevNonce log commit's start to the next's: in a storm the
/// Join-requests of an interval share one `fdatasync` (a fifth of the simulator's CPU went to
/// committing every few hundred µs); each waits at most this much longer to be sent.
const NONCE_COMMIT_INTERVAL: Duration = Duration::from_millis(2);

/// Datagrams read by one `recvmmsg`.
const RECV_BATCH: usize = 64;
/// Receive buffer per datagram: a PULL_RESP for the largest LoRaWAN frame is about 600 bytes.
const RECV_BUF: usize = 4096;
/// Receive buffer per event datagram: a network server may pack many events into one
/// (`udp://HOST:PORT?pack=BYTES`), up to the largest UDP payload.
const EVENT_BUF: usize = 65_536;

/// Reads up to `bufs.len()` datagrams with one non-blocking `recvmmsg`; returns their lengths.
fn recv_batch<const N: usize>(
    sock: &UdpSocket,
    bufs: &mut [[u8; N]],
) -> std::io::Result<Vec<usize>> {
    use nix::sys::socket::{recvmmsg, MsgFlags, MultiHeaders, SockaddrStorage};
    use std::io::IoSliceMut;
    use std::os::fd::AsRawFd;
    let fd = sock.as_raw_fd();
    sock.try_io(tokio::io::Interest::READABLE, || {
        let mut slices: Vec<[IoSliceMut<'_>; 1]> = bufs
            .iter_mut()
            .map(|b| [IoSliceMut::new(&mut b[..])])
            .collect();
        let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(slices.len(), None);
        let r = recvmmsg(
            fd,
            &mut headers,
            slices.iter_mut(),
            MsgFlags::MSG_DONTWAIT,
            None,
        )
        .map_err(std::io::Error::from)?;
        Ok(r.map(|m| m.bytes).collect())
    })
}

/// Most datagrams handed to one `sendmmsg`.
const BATCH: usize = 256;

/// Sends `batch` on a connected socket; returns (sent, failed).
async fn send_batch(sock: &UdpSocket, batch: &[crate::engine::Outgoing]) -> (u64, u64) {
    use nix::sys::socket::{sendmmsg, ControlMessage, MsgFlags, MultiHeaders, SockaddrStorage};
    use std::io::IoSlice;
    use std::os::fd::AsRawFd;
    let fd = sock.as_raw_fd();
    let mut done = 0;
    let (mut sent, mut failed) = (0u64, 0u64);
    while done < batch.len() {
        let rest = &batch[done..];
        let iovs: Vec<[IoSlice<'_>; 1]> = rest.iter().map(|o| [IoSlice::new(&o.bytes)]).collect();
        let addrs: Vec<Option<SockaddrStorage>> = vec![None; rest.len()];
        let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(rest.len(), None);
        let cmsgs: [ControlMessage<'_>; 0] = [];
        // try_io clears tokio's cached readiness on EAGAIN, so `writable()` really waits.
        let r = sock.try_io(tokio::io::Interest::WRITABLE, || {
            sendmmsg(
                fd,
                &mut headers,
                &iovs,
                &addrs,
                cmsgs,
                MsgFlags::MSG_DONTWAIT,
            )
            .map(|res| res.count())
            .map_err(std::io::Error::from)
        });
        match r {
            Ok(0) => {
                tokio::task::yield_now().await;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if sock.writable().await.is_err() {
                    failed += rest.len() as u64;
                    break;
                }
            }
            Ok(n) => {
                sent += n as u64;
                done += n;
            }
            Err(_) => {
                // ECONNREFUSED (ICMP port unreachable) and the like hit one datagram: skip it.
                failed += 1;
                done += 1;
            }
        }
    }
    (sent, failed)
}

/// CPU time of the calling thread, seconds.
pub fn thread_cpu_s() -> f64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map_or(0.0, |t| t.tv_sec() as f64 + t.tv_nsec() as f64 / 1e9)
}

struct Shared {
    engine: RefCell<Engine>,
    /// The DevNonce write-ahead log, if the run keeps one.
    nonce_log: Option<Arc<Mutex<NonceLog>>>,
    /// Records for the next commit.
    log_pending: RefCell<Vec<(DevEui, NonceState)>>,
    /// Datagrams waiting for the next commit (they carry the DevNonces it makes durable).
    held: RefCell<Vec<crate::engine::Outgoing>>,
    /// Wakes the committer.
    commit_wake: Notify,
    /// Why the run must stop (the log could not be written).
    failed: RefCell<Option<anyhow::Error>>,
    /// Wall seconds the committer waited for the log (write and `fdatasync`).
    log_wait_s: std::cell::Cell<f64>,
    /// CPU seconds spent in `sendmmsg`.
    send_cpu: std::cell::Cell<f64>,
    sockets: Vec<UdpSocket>,
    start: Instant,
    wake: Notify,
}

impl Shared {
    fn now(&self) -> Micros {
        self.start.elapsed().as_micros() as Micros
    }

    /// Sends everything the engine queued, each gateway's datagrams in order, batched with
    /// `sendmmsg` (one system call for up to [`BATCH`] datagrams). With a DevNonce log, a batch
    /// that carries a Join-request is not sent here: it is handed, with its log records, to the
    /// committer ([`Shared::committer`]), which sends it once its DevNonces are durable, while
    /// this loop goes on. Never holds the engine across an await.
    async fn flush(&self) {
        loop {
            if self.failed.borrow().is_some() {
                return;
            }
            // The records and the datagrams they cover, taken together (no await in between).
            let (recs, out) = {
                let mut e = self.engine.borrow_mut();
                (e.take_nonce_records(), e.take_outgoing())
            };
            if self.nonce_log.is_some() {
                // Records that announce nothing to be sent (a JoinNonce accepted) ride along
                // with the next commit.
                self.log_pending.borrow_mut().extend(recs.records);
                if recs.before_send {
                    self.held.borrow_mut().extend(out);
                    self.commit_wake.notify_one();
                    continue;
                }
            }
            if out.is_empty() {
                return;
            }
            self.send_out(out).await;
        }
    }

    async fn send_out(&self, mut out: Vec<crate::engine::Outgoing>) {
        // One gateway's datagrams after another, each gateway's in their order (a stable
        // sort): in the engine's queue consecutive datagrams are mostly of different gateways,
        // which made `sendmmsg` batches of one or two datagrams, each with its two reads of the
        // thread's CPU clock (10 % of the simulator's CPU at 50,000 uplinks a second). Datagrams
        // of different gateways go on different sockets, whose order nothing relies on.
        out.sort_by_key(|o| o.gateway);
        let (mut sent, mut errors) = (0u64, 0u64);
        let mut i = 0;
        while i < out.len() {
            let g = out[i].gateway;
            let mut j = i + 1;
            while j < out.len() && j - i < BATCH && out[j].gateway == g {
                j += 1;
            }
            let c0 = thread_cpu_s();
            let (s, e) = send_batch(&self.sockets[usize::from(g)], &out[i..j]).await;
            self.send_cpu
                .set(self.send_cpu.get() + (thread_cpu_s() - c0));
            sent += s;
            errors += e;
            i = j;
        }
        let now = self.now();
        self.engine.borrow_mut().count_sent(now, sent, errors);
    }

    /// The group committer: takes every record and held datagram queued so far, makes the
    /// records durable (one `write` and one `fdatasync`, on a blocking thread), then sends the
    /// datagrams; meanwhile the socket loop runs timers and queues the next group. If the log
    /// fails, nothing more is sent and the run stops.
    async fn committer(&self, log: Arc<Mutex<NonceLog>>) {
        let mut last_start: Option<Instant> = None;
        loop {
            self.commit_wake.notified().await;
            loop {
                // Paced: too soon after the previous commit began, the rest of the interval
                // gathers more Join-requests for the same `fdatasync`.
                if let Some(due) = last_start.map(|t| t + NONCE_COMMIT_INTERVAL) {
                    tokio::time::sleep_until(due.into()).await;
                }
                let out = std::mem::take(&mut *self.held.borrow_mut());
                if out.is_empty() {
                    break;
                }
                let batch = std::mem::take(&mut *self.log_pending.borrow_mut());
                let log = log.clone();
                let t0 = Instant::now();
                last_start = Some(t0);
                let r = tokio::task::spawn_blocking(move || {
                    let mut l = log
                        .lock()
                        .map_err(|_| anyhow::anyhow!("DevNonce log poisoned"))?;
                    l.append(batch);
                    l.commit(true)
                })
                .await
                .map_err(anyhow::Error::from)
                .and_then(|r| r);
                self.log_wait_s
                    .set(self.log_wait_s.get() + t0.elapsed().as_secs_f64());
                if let Err(e) = r {
                    *self.failed.borrow_mut() = Some(e);
                    self.wake.notify_one();
                    return;
                }
                self.send_out(out).await;
            }
        }
    }
}

/// Parses one application event from the network server: a JSON object for an uplink with the
/// device's EUI and frame counter. Accepts `dev_eui`/`devEui`/`DevEUI` and
/// `f_cnt`/`fcnt`/`fCnt`/`FCnt`; when the object has a `type`/`event` field it must name an uplink
/// (`up`, `uplink`). Several events may share a datagram, one per line.
pub fn parse_app_events(datagram: &[u8]) -> Vec<(DevEui, u32)> {
    parse_app_uplinks(datagram)
        .into_iter()
        .map(|(d, _, f)| (d, f))
        .collect()
}

/// [`parse_app_events`], with each uplink's DevAddr when the event names it (`dev_addr`/
/// `devAddr`/`DevAddr`): a device's frame counters restart with each session, and the DevAddr
/// tells the sessions apart (a rekey forces type 0 rejoins, which give a new one).
pub fn parse_app_uplinks(datagram: &[u8]) -> Vec<(DevEui, Option<DevAddr>, u32)> {
    /// The fields the simulator reads; everything else is skipped without being built.
    #[derive(serde::Deserialize)]
    struct Event<'a> {
        #[serde(rename = "type", alias = "event", borrow, default)]
        kind: Option<std::borrow::Cow<'a, str>>,
        #[serde(alias = "devEui", alias = "DevEUI", borrow, default)]
        dev_eui: Option<std::borrow::Cow<'a, str>>,
        #[serde(alias = "devAddr", alias = "DevAddr", borrow, default)]
        dev_addr: Option<std::borrow::Cow<'a, str>>,
        #[serde(alias = "fcnt", alias = "fCnt", alias = "FCnt", default)]
        f_cnt: Option<u64>,
    }
    let mut out = Vec::new();
    for line in datagram.split(|&b| b == b'\n') {
        let Ok(e) = serde_json::from_slice::<Event<'_>>(line) else {
            continue;
        };
        if e.kind
            .as_deref()
            .is_some_and(|k| !matches!(k, "up" | "uplink"))
        {
            continue;
        }
        let dev_eui = e.dev_eui.and_then(|d| d.parse::<DevEui>().ok());
        // A frame counter is 32 bits: a larger number is not an uplink of ours.
        let f_cnt = e.f_cnt.and_then(|f| u32::try_from(f).ok());
        let dev_addr = e.dev_addr.and_then(|a| a.parse::<DevAddr>().ok());
        if let (Some(d), Some(f)) = (dev_eui, f_cnt) {
            out.push((d, dev_addr, f));
        }
    }
    out
}

/// Runs the engine against the network server until its scenario is done (or SIGINT/SIGTERM).
/// Returns the engine and the wall-clock length of the run in seconds.
pub fn run(engine: Engine, cfg: &NetConfig) -> anyhow::Result<(Engine, f64)> {
    run_logged(engine, cfg, None)
}

/// [`run`], with every DevNonce made durable in `nonce_log` before the Join-request that carries
/// it is sent (see [`crate::nonce_log`]).
pub fn run_logged(
    mut engine: Engine,
    cfg: &NetConfig,
    nonce_log: Option<NonceLog>,
) -> anyhow::Result<(Engine, f64)> {
    if nonce_log.is_some() {
        engine.enable_nonce_log();
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, run_async(engine, cfg.clone(), nonce_log))
}

/// Resolves at the first SIGINT or SIGTERM.
async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

async fn run_async(
    engine: Engine,
    mut cfg: NetConfig,
    nonce_log: Option<NonceLog>,
) -> anyhow::Result<(Engine, f64)> {
    let n = engine.gateways().len();
    let sockets = (0..n)
        .map(|i| udp_socket(SocketAddr::new(cfg.bind, 0), Some(cfg.netserver_of(i))))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let (sink, mqtt) = match cfg.event_listen.take() {
        Some(EventListen::Mqtt(m)) => (None, Some(m)),
        Some(e) => (Some(e.into_socket()?), None),
        None => (None, None),
    };
    let gateway_inodes: Vec<u64> = sockets.iter().filter_map(udpstat::socket_inode).collect();
    let sink_inode = sink.as_ref().and_then(udpstat::socket_inode);
    let shared = Rc::new(Shared {
        engine: RefCell::new(engine),
        nonce_log: nonce_log.map(|l| Arc::new(Mutex::new(l))),
        log_pending: RefCell::new(Vec::new()),
        held: RefCell::new(Vec::new()),
        commit_wake: Notify::new(),
        failed: RefCell::new(None),
        log_wait_s: std::cell::Cell::new(0.0),
        send_cpu: std::cell::Cell::new(0.0),
        sockets,
        start: Instant::now(),
        wake: Notify::new(),
    });
    let mut tasks = Vec::new();
    if let Some(log) = shared.nonce_log.clone() {
        let sh = shared.clone();
        tasks.push(tokio::task::spawn_local(async move {
            sh.committer(log).await;
        }));
    }
    for g in 0..n {
        tasks.push(tokio::task::spawn_local(read_gateway(shared.clone(), g)));
    }
    if let Some(sink) = sink {
        tasks.push(tokio::task::spawn_local(read_event_sink(
            shared.clone(),
            sink,
        )));
    }
    if let Some(m) = mqtt {
        // The subscriber's thread hands (DevEUI, FCnt) pairs to this task, which counts them.
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        m.subscribe(move |dev, fcnt| tx.send((dev, fcnt)).is_ok())?;
        tasks.push(tokio::task::spawn_local(count_mqtt_events(
            shared.clone(),
            rx,
        )));
    }
    shared.engine.borrow_mut().start(0);
    shared.flush().await;
    drive(&shared, &cfg).await;
    let elapsed = wind_down(&shared, &cfg).await;
    // Read while the sockets are open: a closed socket's line is gone.
    let gateway_socket_drops = udpstat::receive_drops(&gateway_inodes);
    let event_socket_drops = sink_inode.and_then(|i| udpstat::receive_drops(&[i]));
    for t in &tasks {
        t.abort();
    }
    drop(tasks);
    for _ in 0..100 {
        if Rc::strong_count(&shared) == 1 {
            break;
        }
        tokio::task::yield_now().await;
    }
    let shared =
        Rc::try_unwrap(shared).map_err(|_| anyhow::anyhow!("engine still shared after the run"))?;
    let mut engine = shared.into_engine()?;
    engine.stats.gateway_socket_drops = gateway_socket_drops;
    engine.stats.event_socket_drops = event_socket_drops;
    engine.finish();
    Ok((engine, elapsed))
}

/// Gateway `g`'s socket: drains what arrived (`recvmmsg` batches) into the engine, then lets
/// the engine's output go out, until the socket fails.
async fn read_gateway(sh: Rc<Shared>, g: usize) {
    let mut bufs = vec![[0u8; RECV_BUF]; RECV_BATCH];
    let mut pace = ReadPacing::new(GATEWAY_READ_INTERVAL);
    loop {
        if let Some(until) = pace.hold() {
            tokio::time::sleep_until(until.into()).await;
        }
        if sh.sockets[g].readable().await.is_err() {
            return;
        }
        let mut drained = false;
        for _ in 0..8 {
            match recv_batch(&sh.sockets[g], &mut bufs) {
                Ok(lens) if !lens.is_empty() => {
                    let now = sh.now();
                    let mut e = sh.engine.borrow_mut();
                    for (buf, &len) in bufs.iter().zip(&lens) {
                        e.on_datagram(g as u16, now, &buf[..len.min(RECV_BUF)]);
                    }
                }
                Ok(_) => {
                    drained = true;
                    break;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    drained = true;
                    break;
                }
                // ICMP port unreachable on a connected socket: the server is not (yet) up.
                Err(_) => break,
            }
        }
        pace.read(Instant::now(), !drained);
        sh.flush().await;
        sh.wake.notify_one();
    }
}

/// The application event socket (`--event-listen`): counts the uplinks it reports delivered.
async fn read_event_sink(sh: Rc<Shared>, sink: UdpSocket) {
    let mut bufs = vec![[0u8; EVENT_BUF]; RECV_BATCH];
    loop {
        if sink.readable().await.is_err() {
            return;
        }
        for _ in 0..8 {
            match recv_batch(&sink, &mut bufs) {
                Ok(lens) if !lens.is_empty() => {
                    let now = sh.now();
                    let mut e = sh.engine.borrow_mut();
                    for (buf, &len) in bufs.iter().zip(&lens) {
                        for (dev, addr, fcnt) in parse_app_uplinks(&buf[..len.min(EVENT_BUF)]) {
                            e.on_app_uplink(now, dev, addr, fcnt);
                        }
                    }
                }
                _ => break,
            }
        }
        tokio::task::yield_now().await;
    }
}

/// Counts the (DevEUI, FCnt) pairs the MQTT subscriber's thread hands over (`--delivery`).
async fn count_mqtt_events(
    sh: Rc<Shared>,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<(DevEui, u32)>,
) {
    let mut got = Vec::with_capacity(1024);
    while rx.recv_many(&mut got, 1024).await > 0 {
        let now = sh.now();
        let mut engine = sh.engine.borrow_mut();
        for (dev, fcnt) in got.drain(..) {
            engine.on_app_event(now, dev, fcnt);
        }
    }
}

/// Runs the engine's timers until its scenario is done, the DevNonce log fails, or SIGINT /
/// SIGTERM; prints the progress line once a second.
async fn drive(shared: &Shared, cfg: &NetConfig) {
    let mut progress = Progress {
        next: 1_000_000,
        last_uplinks: 0,
        warned_silent: false,
    };
    let mut interrupted = std::pin::pin!(stop_signal());
    loop {
        let wake = shared.engine.borrow().next_wakeup().min(progress.next);
        let at = shared.start + Duration::from_micros(wake);
        tokio::select! {
            _ = tokio::time::sleep_until(at.into()) => {}
            _ = shared.wake.notified() => {}
            _ = &mut interrupted => {
                eprintln!("interrupted: stopping the run");
                break;
            }
        }
        if shared.failed.borrow().is_some() {
            break;
        }
        let now = shared.now();
        // Behind schedule, work in slices so datagrams go out (and answers come in) steadily.
        loop {
            let more = shared.engine.borrow_mut().poll_budget(now, 512);
            shared.flush().await;
            if !more {
                break;
            }
            tokio::task::yield_now().await;
        }
        if now >= progress.next {
            progress.report(now, &shared.engine.borrow(), cfg);
        }
        if shared.engine.borrow_mut().rekey_due() {
            if let Some(r) = cfg.rekey.clone() {
                ask_for_rekey(r);
            }
        }
        if shared.engine.borrow().stage() == Stage::Done {
            break;
        }
    }
}

/// The once-a-second progress line, and the warning when the network server stays silent.
struct Progress {
    /// When the next line is due (µs since the start).
    next: Micros,
    /// Uplinks sent at the last line.
    last_uplinks: u64,
    warned_silent: bool,
}

impl Progress {
    fn report(&mut self, now: Micros, e: &Engine, cfg: &NetConfig) {
        if !self.warned_silent {
            if let Some(w) = report::silence_warning(now as f64 / 1e6, cfg.netserver, &e.stats) {
                eprintln!("warning: {w}");
                self.warned_silent = true;
            }
        }
        let sent = e.stats.uplinks_sent;
        if cfg.progress {
            report::print_progress(&report::progress_line(
                now as f64 / 1e6,
                e.joined(),
                e.fleet.len() as u64,
                sent - self.last_uplinks,
                &e.stats,
            ));
        }
        self.last_uplinks = sent;
        self.next = (now / 1_000_000 + 1) * 1_000_000;
    }
}

/// Asks the network server for the scenario's forced rejoins, off the socket loop (the answer
/// takes a moment for a large fleet).
fn ask_for_rekey(r: Rekey) {
    tokio::task::spawn_blocking(move || {
        match netserver::integration::rejoin::post(r.http, r.token.as_deref(), &r.request) {
            Ok(a) => eprintln!("rekey: forced rejoins asked for: {a}"),
            Err(e) => {
                eprintln!("warning: rekey: the network server refused the forced rejoins: {e}")
            }
        }
    });
}

/// After the scenario: lets the Join-requests still held for their DevNonce commit leave (up to
/// 2 s), and the event sink catch up with what the network server is still delivering (up to
/// `cfg.sink_grace`). Returns the run's length in seconds (without the sink's grace).
async fn wind_down(shared: &Shared, cfg: &NetConfig) -> f64 {
    let until = Instant::now() + Duration::from_secs(2);
    while !shared.held.borrow().is_empty()
        && shared.failed.borrow().is_none()
        && Instant::now() < until
    {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let elapsed = shared.start.elapsed().as_secs_f64();
    if shared.engine.borrow().has_event_sink() {
        let until = Instant::now() + cfg.sink_grace;
        while Instant::now() < until {
            {
                let e = shared.engine.borrow();
                if e.stats.uplinks_delivered >= e.stats.uplinks_sent {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    elapsed
}

impl Shared {
    /// The engine with the run's socket and DevNonce log figures, or the log's failure.
    fn into_engine(self) -> anyhow::Result<Engine> {
        if let Some(e) = self.failed.into_inner() {
            // The run stopped before sending what it could not log; the log keeps what was
            // sent.
            return Err(e.context("the DevNonce log failed: run stopped"));
        }
        let mut engine = self.engine.into_inner();
        engine.stats.send_cpu_s = self.send_cpu.get();
        if let Some(log) = &self.nonce_log {
            let log = log
                .lock()
                .map_err(|_| anyhow::anyhow!("DevNonce log poisoned"))?;
            engine.stats.nonce_log_records = log.records();
            engine.stats.nonce_log_syncs = log.commits();
            engine.stats.nonce_log_s = self.log_wait_s.get();
        }
        Ok(engine)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_events() {
        let d = br#"{"type":"up","dev_eui":"0102030405060708","f_cnt":7,"data":"AQ=="}
{"type":"join","dev_eui":"0102030405060708"}
{"devEui":"0A0B0C0D0E0F1011","fCnt":9}
not json"#;
        let ev = parse_app_events(d);
        assert_eq!(
            ev,
            vec![
                (DevEui::new(0x0102_0304_0506_0708), 7),
                (DevEui::new(0x0A0B_0C0D_0E0F_1011), 9)
            ]
        );
    }

    /// The network server's own uplink event for `(dev_eui, f_cnt)`.
    fn uplink_line(dev_eui: u64, f_cnt: u32) -> String {
        let ev = netserver::integration::events::UplinkEvent {
            kind: "uplink".into(),
            dev_eui: DevEui::new(dev_eui),
            dev_addr: DevAddr::new(0x2600_0000 | (dev_eui as u32 & 0xffff)),
            f_cnt,
            f_port: Some(7),
            confirmed: false,
            adr: true,
            data: Some("AQID".into()),
            data_encrypted: None,
            app_s_key: None,
            rx: Vec::new(),
            tenant: None,
            received_at: "2026-11-25T12:00:00.000Z".into(),
        };
        serde_json::to_string(&ev).unwrap()
    }

    proptest::proptest! {
        #[test]
        fn any_datagram_is_read_without_panic(d in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let lines = d.split(|&b| b == b'\n').count();
            proptest::prop_assert!(parse_app_events(&d).len() <= lines);
        }

        /// The network server's events, packed into datagrams at any line boundaries (as
        /// `udp://…?pack=BYTES` does) among join events, are read back in order.
        #[test]
        fn packed_events_are_read_back_in_order(
            events in proptest::collection::vec((proptest::num::u64::ANY, proptest::num::u32::ANY, proptest::bool::ANY), 1..40),
            cuts in proptest::collection::vec(proptest::bool::ANY, 40),
        ) {
            let mut datagrams = vec![String::new()];
            let mut want = Vec::new();
            for (i, &(dev, fcnt, is_uplink)) in events.iter().enumerate() {
                let line = if is_uplink {
                    want.push((DevEui::new(dev), fcnt));
                    uplink_line(dev, fcnt)
                } else {
                    format!("{{\"type\":\"join\",\"dev_eui\":\"{dev:016X}\",\"dev_addr\":\"26000001\"}}")
                };
                let d = datagrams.last_mut().unwrap();
                d.push_str(&line);
                d.push('\n');
                if cuts[i] {
                    datagrams.push(String::new());
                }
            }
            let got: Vec<_> = datagrams.iter().flat_map(|d| parse_app_events(d.as_bytes())).collect();
            proptest::prop_assert_eq!(got, want);
        }
    }

    #[test]
    fn a_counter_beyond_32_bits_is_not_an_uplink() {
        let d = br#"{"dev_eui":"0102030405060708","f_cnt":4294967296}"#;
        assert_eq!(parse_app_events(d), vec![]);
    }

    #[test]
    fn gateways_spread_over_the_network_server_instances() {
        let bind: IpAddr = "127.0.0.1".parse().unwrap();
        let (first, more) = resolve_list("127.0.0.1:1700, 127.0.0.1:1701", bind).unwrap();
        let cfg = NetConfig {
            netserver: first,
            more_netservers: more,
            bind,
            event_listen: None,
            progress: false,
            sink_grace: Duration::ZERO,
            rekey: None,
        };
        let ports: Vec<u16> = (0..4).map(|i| cfg.netserver_of(i).port()).collect();
        assert_eq!(ports, [1700, 1701, 1700, 1701]);
        let (one, none) = resolve_list("127.0.0.1:9", bind).unwrap();
        assert_eq!((one.port(), none.len()), (9, 0));
        assert!(resolve_list("127.0.0.1:9,nonsense", bind).is_err());
    }
}
