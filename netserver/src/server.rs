//! The shell: sockets, threads, timers and the start/stop sequence around the sans-IO core.
//!
//! - **GWMP socket loops** ([`crate::gateway::socket`]): `gwmp.workers` threads (default: one per core), each running a
//!   current-thread tokio runtime that owns one UDP socket. The sockets share the listen address
//!   with `SO_REUSEPORT`, so the kernel spreads gateways over them (a gateway's datagrams always
//!   reach the same socket). Datagrams are read in batches (`recvmmsg`), a batch's
//!   acknowledgements leave in one `sendmmsg`, and each datagram is handled inline: parsed,
//!   classified, de-duplicated. Only the first copy of a Join-request becomes a task, because it
//!   waits for the join server; each loop has its own link socket, so the JoinAns wakes that
//!   task on the same thread.
//! - **Control runtime** (the main thread): the receive loop of the control link socket (the
//!   network server's own requests, such as `SessionInUseReq`), the `/metrics` endpoint,
//!   housekeeping (de-duplication sweep, idle gateways) and the signal handler.
//! - **Store thread**: group commits ([`crate::store::commit::SessionStore`]).
//! - **Listener thread** (PostgreSQL only): loads the sessions other instances commit
//!   ([`crate::store::sync`]).
//!
//! Shutdown (SIGINT/SIGTERM): `/health` turns 503, the socket loops stop reading, joins in
//! flight finish (bounded by the RX2 delay), the store flushes, and the process exits 0.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use protocol::link::PeerId;
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::core::devaddr::AddrBlock;
use crate::gateway::allowed;
use crate::gateway::handoff::HandoffKey;
use crate::gateway::socket::{gwmp_loop, gwmp_socket, LoopLink};
use crate::integration::auth::{self, DownlinkToken};
use crate::integration::emitter::{Batching, CatchUp, Emitter, EmitterThread, Hooks, Requeue};
use crate::integration::log::{Logged, Position};
use crate::integration::mqtt::Broker;
use crate::integration::sink::ConfiguredSink;
use crate::integration::sinks::{open_log, Prepared};
use crate::join::link::LinkClient;
use crate::join::route::{JoinEuiPrefix, JoinServers, Route};
use crate::ops::config::{Config, DataConfig};
use crate::ops::listen::{HttpListener, HttpSecurity};
use crate::ops::metrics::Metrics;
use crate::state::SocketInodes;
use crate::state::{Secrets, State};
use crate::store::commit::SessionStore;
use crate::store::counters::CounterBackend;
use crate::store::owners::{OwnerThread, Ownership};
use crate::store::pg::PgStore;
use crate::store::restore::restore;
use crate::store::sync::Listener;
use crate::uplink::plane::DataPlane;

/// The addresses a started server listens on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addresses {
    /// GWMP (gateways).
    pub gwmp: SocketAddr,
    /// The local end of the join server link.
    pub link: SocketAddr,
    /// The metrics endpoint, if enabled.
    pub metrics: Option<SocketAddr>,
}

/// Runs the server until SIGINT/SIGTERM or until `stop` turns true. Calls `ready` once every
/// socket is bound.
pub fn run(
    mut config: Config,
    secrets: Secrets,
    stop: Option<watch::Receiver<bool>>,
    ready: impl FnOnce(&Addresses),
) -> anyhow::Result<()> {
    let (block, sinks) = checked(&mut config)?;
    let metrics = Metrics::new();
    let allowed_gateways = allowed_gateways(&config)?;
    let restored = restore(&config, &secrets, block, &metrics)?;
    let gwmp = GwmpSockets::bind(&config)?;
    let handoff = Handoff::bind_shared(&config, &secrets, restored.shared.as_ref(), &gwmp)?;
    let handoff_key = handoff.as_ref().map(|h| Arc::clone(&h.key));
    let mut link = Link::bind(&config, &secrets, (block, gwmp.workers), &metrics)?;
    let link_inodes = std::iter::once(&link.socket)
        .chain(link.loops.iter().map(|l| &l.socket))
        .filter_map(udpstat::socket_inode)
        .collect();
    let http = HttpSecurity::of(&config.http)?;
    let (metrics_listener, metrics_addr) = metrics_endpoint(&http, &config)?;
    // The control runtime, created before the socket loops so that everything fallible is
    // done before any thread starts; signal handlers are installed before `ready`.
    let (rt, link_rx, signals) = in_runtime(link.socket)?;
    let inputs = DownlinkInputs::bind(&config.data, &http)?;
    let shared = restored.shared.clone().map(|pg| (&restored.sessions, pg));
    let emitting = (restored.counter_log, (gwmp.downlink, handoff_key.clone()));
    let (plane, emitter_thread, written) = start_plane(&config, emitting, &metrics, shared)?;
    let data_dir = config.data_dir.clone();
    let store = restored.store;
    let inodes = SocketInodes {
        gwmp: gwmp
            .sockets
            .iter()
            .filter_map(udpstat::socket_inode)
            .collect(),
        link: link_inodes,
    };
    let state = Arc::new(State::new(
        config,
        block,
        metrics,
        restored.sessions,
        restored.allocator,
        store.clone(),
        secrets,
        inodes,
        plane,
        allowed_gateways,
        handoff_key,
    ));
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let delivery = sinks.start(&state, &data_dir, written.as_ref())?;
    let loops = std::mem::take(&mut link.loops);
    let threads = spawn_socket_loops(&state, loops, gwmp.sockets, &shutdown_rx)?;
    let shared = SharedThreads::start(&state, restored.shared, handoff.as_ref())?;
    let addrs = Addresses {
        gwmp: gwmp.addr,
        link: link.addr,
        metrics: metrics_addr,
    };
    tracing::info!(gwmp = %addrs.gwmp, link = %addrs.link, join_server = %link.peer, workers = gwmp.workers, "netserver serving");
    ready(&addrs);
    let control = Control {
        state: Arc::clone(&state),
        link: Arc::clone(&link.client),
        servers: Arc::clone(&link.servers),
        link_rx,
        metrics_listener,
        inputs,
        shutdown: (shutdown_tx, shutdown_rx),
        threads,
        store: store.clone(),
        handoff,
    };
    let result = rt.block_on(control.serve_until(signals, stop));
    // The sinks first: MQTT commands hold the state, and so the emitter the threads below
    // wait for. What they leave undelivered is in the event log for the next start.
    delivery.stop();
    // Dropping the runtime cancels what is left on it (idle keep-alive connections of the
    // metrics endpoint), releasing their handles on the state and so on the store.
    drop(rt);
    shared.join();
    // In this order: the state, the store's handle, the link.
    drop((state, store, link.client, link.servers));
    restored.store_thread.join();
    emitter_thread.join();
    result?;
    tracing::info!("stopped");
    Ok(())
}

/// The configuration checked: the DevAddr block, and the delivered sinks (MQTT, webhooks)
/// with their files read. `data.events = "mqtt://…"` (or `--events mqtt://…`) names the MQTT
/// sink.
fn checked(config: &mut Config) -> anyhow::Result<(AddrBlock, Prepared)> {
    let block = config.validate()?;
    config.data.validate().map_err(anyhow::Error::msg)?;
    if Broker::parse(config.data.events.trim()).is_ok() {
        config.integration.mqtt.url = std::mem::take(&mut config.data.events);
    }
    Ok((
        block,
        Prepared::new(&config.integration, config.network.region)?,
    ))
}

/// `[gwmp] allowed_gateways_file`, read (`None`: every gateway is allowed).
fn allowed_gateways(config: &Config) -> anyhow::Result<Option<allowed::AllowedGateways>> {
    match config.gwmp.allowed_gateways_file.as_str() {
        "" => Ok(None),
        path => Ok(Some(
            allowed::load(std::path::Path::new(path)).map_err(anyhow::Error::msg)?,
        )),
    }
}

/// The socket data downlinks leave from, and the key of the hand-off to another instance (a
/// shared store's).
type Downlinks = (std::net::UdpSocket, Option<Arc<HandoffKey>>);

/// The data path's shared parts, with the emitter thread started on the configured sink
/// (behind the event log, if delivered sinks are configured: its writes are watched by
/// them) and writing the counters to `counters`, its downlinks sent from `downlinks`. With a
/// shared store, `sessions` catch up on the counters other instances committed.
fn start_plane(
    config: &Config,
    (counters, downlinks): (Box<dyn CounterBackend>, Downlinks),
    metrics: &Metrics,
    shared: Option<(&Arc<crate::store::table::Sessions>, PgStore)>,
) -> anyhow::Result<(DataPlane, EmitterThread, Option<watch::Receiver<Position>>)> {
    let data = &config.data;
    let log = open_log(&config.integration, &config.data_dir, &metrics.integration)?;
    let (log, written) = log.unzip();
    let sink = ConfiguredSink::open(&data.events)
        .with_context(|| format!("opening the event sink {:?}", data.events))?;
    let sink = Logged { log, sink };
    let catch_up: Option<CatchUp> = shared
        .as_ref()
        .map(|(s, _)| crate::store::sync::catch_up(Arc::clone(s)));
    let shared = shared.map(|(_, pg)| pg);
    let queue = DataPlane::queue_for(data);
    let requeue: Requeue = match &shared {
        Some(pg) => {
            pg.reload_queue(&queue, None)
                .context("loading the shared downlink queue")?;
            crate::store::sync::requeue(pg.clone(), Arc::clone(&queue))
        }
        None => {
            let queue = Arc::clone(&queue);
            Box::new(move |items: Vec<_>| {
                for (d, item) in items.into_iter().rev() {
                    queue.push_front(d, item);
                }
            })
        }
    };
    let hooks = Hooks {
        catch_up,
        requeue: Some(requeue),
    };
    let (emitter, thread) = Emitter::start_with(
        counters,
        sink,
        downlinks,
        Batching {
            max: data.max_batch,
            interval: Duration::from_millis(data.commit_interval_ms),
        },
        metrics.clone(),
        hooks,
    )?;
    Ok((
        DataPlane::new(data.clone(), emitter, queue, shared),
        thread,
        written,
    ))
}

/// The control runtime, the link socket as its, and its signal handlers.
fn in_runtime(
    link: std::net::UdpSocket,
) -> std::io::Result<(tokio::runtime::Runtime, UdpSocket, Signals)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (link_rx, signals) = {
        let _in_runtime = rt.enter();
        (UdpSocket::from_std(link)?, Signals::install()?)
    };
    Ok((rt, link_rx, signals))
}

/// The metrics endpoint's listener and address, if `[metrics] listen` names one.
fn metrics_endpoint(
    http: &HttpSecurity,
    config: &Config,
) -> anyhow::Result<(Option<HttpListener>, Option<SocketAddr>)> {
    let listener = http.bind(&config.metrics.listen, "the metrics endpoint")?;
    let addr = listener
        .as_ref()
        .map(HttpListener::local_addr)
        .transpose()?;
    Ok((listener, addr))
}

/// The GWMP sockets: one per worker, sharing the listen address.
struct GwmpSockets {
    sockets: Vec<std::net::UdpSocket>,
    addr: SocketAddr,
    /// Data downlinks leave from the GWMP port (forwarders accept PULL_RESP only from it):
    /// a clone of the first socket, sharing its non-blocking file description.
    downlink: std::net::UdpSocket,
    workers: usize,
}

impl GwmpSockets {
    fn bind(config: &Config) -> anyhow::Result<Self> {
        let workers = match config.gwmp.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let recv_buffer = config.gwmp.recv_buffer_bytes;
        let first = gwmp_socket(config.gwmp.listen, recv_buffer, workers > 1)
            .with_context(|| format!("binding GWMP on {}", config.gwmp.listen))?;
        let addr = first.local_addr()?;
        let downlink = first.try_clone()?;
        let mut sockets = vec![first];
        for _ in 1..workers {
            sockets.push(
                gwmp_socket(addr, recv_buffer, true)
                    .with_context(|| format!("binding GWMP worker socket on {addr}"))?,
            );
        }
        Ok(Self {
            sockets,
            addr,
            downlink,
            workers,
        })
    }
}

/// Several instances (PostgreSQL): the hand-off socket other instances send this one the
/// downlinks of the gateways it holds, its key, and this instance's owner records.
struct Handoff {
    key: Arc<HandoffKey>,
    socket: std::net::UdpSocket,
    /// A clone of the GWMP downlink socket: hand-offs are sent on from it.
    gwmp: std::net::UdpSocket,
    ownership: Ownership,
}

impl Handoff {
    /// The hand-off of a shared store's instance (none with the embedded store).
    fn bind_shared(
        config: &Config,
        secrets: &Secrets,
        pg: Option<&PgStore>,
        gwmp: &GwmpSockets,
    ) -> anyhow::Result<Option<Self>> {
        pg.map(|pg| Self::bind(config, secrets, pg, &gwmp.downlink))
            .transpose()
    }

    fn bind(
        config: &Config,
        secrets: &Secrets,
        pg: &PgStore,
        gwmp: &std::net::UdpSocket,
    ) -> anyhow::Result<Self> {
        let listen = config.store.handoff_listen.trim();
        let socket = std::net::UdpSocket::bind(listen)
            .with_context(|| format!("binding store.handoff_listen {listen}"))?;
        let addr = socket.local_addr()?;
        if addr.ip().is_unspecified() {
            bail!(
                "store.handoff_listen {listen}: give an address the other instances reach, not {}",
                addr.ip()
            );
        }
        socket.set_nonblocking(true)?;
        Ok(Self {
            key: Arc::new(HandoffKey::derive(&secrets.ns_kek, pg.writer())),
            socket,
            gwmp: gwmp.try_clone()?,
            ownership: Ownership {
                instance: pg.writer(),
                handoff: addr,
                ttl: Duration::from_secs(config.store.gateway_owner_ttl_s),
            },
        })
    }
}

/// The threads of an instance on a shared store (PostgreSQL): the session and queue listener,
/// and the gateway owners' recorder.
struct SharedThreads {
    listener: Option<Listener>,
    owners: Option<OwnerThread>,
}

impl SharedThreads {
    fn start(
        state: &Arc<State>,
        shared: Option<PgStore>,
        handoff: Option<&Handoff>,
    ) -> std::io::Result<Self> {
        let owners = match (&shared, handoff) {
            (Some(pg), Some(h)) => Some(OwnerThread::start(
                Arc::clone(state),
                pg.clone(),
                h.ownership,
            )?),
            _ => None,
        };
        let listener = shared
            .map(|pg| Listener::start(Arc::clone(state), pg))
            .transpose()?;
        Ok(Self { listener, owners })
    }

    /// Waits for both (after the server began shutting down).
    fn join(self) {
        if let Some(l) = self.listener {
            l.join();
        }
        if let Some(o) = self.owners {
            o.join();
        }
    }
}

/// The join server link: the control runtime's client (its socket on `[join_server] bind`,
/// read by the control runtime's receive loop), one client per GWMP socket loop (each on an
/// ephemeral port of the same address, read by its loop), and the join servers by JoinEUI
/// prefix (`[[join_servers]]`) around each.
struct Link {
    client: Arc<LinkClient>,
    servers: Arc<JoinServers>,
    socket: std::net::UdpSocket,
    addr: SocketAddr,
    peer: SocketAddr,
    loops: Vec<LoopLinkParts>,
}

/// A socket loop's own link, before its runtime starts: its routes, client and socket.
struct LoopLinkParts {
    servers: Arc<JoinServers>,
    client: Arc<LinkClient>,
    socket: std::net::UdpSocket,
}

impl Link {
    fn bind(
        config: &Config,
        secrets: &Secrets,
        (block, workers): (AddrBlock, usize),
        metrics: &Metrics,
    ) -> anyhow::Result<Self> {
        let peer = resolve(&config.join_server.address)?;
        // The default bind address follows the join server's address family.
        let mut bind = config.join_server.bind;
        if bind.ip().is_unspecified() && bind.is_ipv4() != peer.is_ipv4() {
            bind.set_ip(match peer {
                SocketAddr::V4(_) => std::net::Ipv4Addr::UNSPECIFIED.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::UNSPECIFIED.into(),
            });
        }
        let socket = std::net::UdpSocket::bind(bind)
            .with_context(|| format!("binding the link socket on {bind}"))?;
        let addr = socket.local_addr()?;
        let client_on = |socket: &std::net::UdpSocket| -> anyhow::Result<Arc<LinkClient>> {
            Ok(Arc::new(LinkClient::new(
                socket.try_clone()?,
                peer,
                secrets.link_key.clone(),
                PeerId::from_net_id(block.net_id),
                metrics.clone(),
            )?))
        };
        let client = client_on(&socket)?;
        socket.set_nonblocking(true)?;
        let servers = Arc::new(join_servers(config, &client)?);
        let mut loops = Vec::new();
        for _ in 0..workers {
            // The join server answers a group commit's joins in one burst: the receive buffer
            // is raised as the GWMP sockets' is (the default holds about a hundred JoinAns).
            let own = SocketAddr::new(addr.ip(), 0);
            let socket = gwmp_socket(own, config.gwmp.recv_buffer_bytes, false)
                .with_context(|| format!("binding a socket loop's link socket on {own}"))?;
            let client = client_on(&socket)?;
            loops.push(LoopLinkParts {
                servers: Arc::new(join_servers(config, &client)?),
                client,
                socket,
            });
        }
        Ok(Self {
            client,
            servers,
            socket,
            addr,
            peer,
            loops,
        })
    }
}

/// The routing table of `[[join_servers]]` over the link client.
fn join_servers(config: &Config, link: &Arc<LinkClient>) -> anyhow::Result<JoinServers> {
    let mut routes = Vec::new();
    for r in &config.join_servers {
        let prefix = JoinEuiPrefix::parse(&r.join_eui_prefix).map_err(anyhow::Error::msg)?;
        let route = if r.url.trim().is_empty() {
            Route::Link
        } else {
            Route::Http(Arc::new(crate::join::http::HttpClient::new(r)?))
        };
        tracing::info!(prefix = %r.join_eui_prefix, url = %r.url, "join server route");
        routes.push((prefix, route));
    }
    Ok(JoinServers::new(routes, Arc::clone(link)))
}

/// The integration's downlink inputs (UDP and HTTP), each optional, and the token they
/// require (none: loopback addresses only).
struct DownlinkInputs {
    udp: Option<std::net::UdpSocket>,
    http: Option<HttpListener>,
    token: Option<Arc<DownlinkToken>>,
}

impl DownlinkInputs {
    fn bind(data: &DataConfig, security: &HttpSecurity) -> anyhow::Result<Self> {
        let token = match data.downlink_token_file.trim() {
            "" => None,
            path => Some(Arc::new(crate::keys::read_secret(
                std::path::Path::new(path),
                DownlinkToken::new,
            )?)),
        };
        let exposed = |what: &str, a: &str| -> anyhow::Result<()> {
            for addr in a
                .to_socket_addrs()
                .with_context(|| format!("{what}: {a}"))?
            {
                auth::check_exposure(what, addr, token.as_deref()).map_err(anyhow::Error::msg)?;
            }
            Ok(())
        };
        let udp = match data.downlink_listen.trim() {
            "" => None,
            a => {
                exposed("the UDP downlink input", a)?;
                Some(
                    std::net::UdpSocket::bind(a)
                        .with_context(|| format!("binding the downlink input on {a}"))?,
                )
            }
        };
        if !data.downlink_http.trim().is_empty() {
            exposed("the HTTP downlink input", data.downlink_http.trim())?;
        }
        let http = security.bind(&data.downlink_http, "the HTTP downlink input")?;
        Ok(Self { udp, http, token })
    }
}

/// Starts one thread per GWMP socket, each with its current-thread runtime and its own link.
fn spawn_socket_loops(
    state: &Arc<State>,
    links: Vec<LoopLinkParts>,
    sockets: Vec<std::net::UdpSocket>,
    shutdown: &watch::Receiver<bool>,
) -> std::io::Result<Vec<JoinHandle<anyhow::Result<()>>>> {
    let mut threads = Vec::new();
    for (i, (sock, link)) in sockets.into_iter().zip(links).enumerate() {
        let state = Arc::clone(state);
        let shutdown = shutdown.clone();
        threads.push(
            std::thread::Builder::new()
                .name(format!("netserver-gwmp-{i}"))
                .spawn(move || -> anyhow::Result<()> {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()?;
                    rt.block_on(async move {
                        let sockets = UdpSocket::from_std(sock).and_then(|gwmp| {
                            Ok((gwmp, UdpSocket::from_std(link.socket)?))
                        });
                        let (socket, link_socket) = sockets.inspect_err(|e| {
                            tracing::error!(error = %e, worker = i, "GWMP socket loop cannot start");
                        })?;
                        let own = LoopLink {
                            client: link.client,
                            socket: link_socket,
                        };
                        gwmp_loop(state, (link.servers, own), Arc::new(socket), shutdown).await;
                        Ok(())
                    })
                })?,
        );
    }
    Ok(threads)
}

/// What the control runtime (the main thread) runs until the stop signal, then shuts down.
struct Control {
    state: Arc<State>,
    link: Arc<LinkClient>,
    servers: Arc<JoinServers>,
    link_rx: UdpSocket,
    metrics_listener: Option<HttpListener>,
    inputs: DownlinkInputs,
    shutdown: (watch::Sender<bool>, watch::Receiver<bool>),
    threads: Vec<JoinHandle<anyhow::Result<()>>>,
    store: SessionStore,
    handoff: Option<Handoff>,
}

impl Control {
    /// The link receive loop, `/metrics`, housekeeping and the downlink inputs, until SIGINT,
    /// SIGTERM or `stop`; then the socket loops drain and the store flushes.
    async fn serve_until(
        self,
        signals: Signals,
        stop: Option<watch::Receiver<bool>>,
    ) -> anyhow::Result<()> {
        let (state, shutdown) = (&self.state, &self.shutdown.1);
        let mut control = JoinSet::new();
        control.spawn(Arc::clone(&self.link).receive_loop(self.link_rx, shutdown.clone()));
        if let Some(l) = self.metrics_listener {
            control.spawn(crate::ops::http::serve(
                l,
                Arc::clone(state),
                shutdown.clone(),
            ));
        }
        control.spawn(housekeeping(Arc::clone(state), shutdown.clone()));
        if let Some(reports) = state.data.key_use.take_reports() {
            let s = Arc::clone(state);
            control.spawn(crate::join::key_use::report_loop(
                reports,
                Arc::clone(&self.servers),
                (state.block.net_id, move || s.next_transaction_id()),
                state.metrics.key_use_reports.clone(),
                shutdown.clone(),
            ));
        }
        if let Some(l) = self.inputs.http {
            control.spawn(crate::integration::input::serve_http_downlinks(
                l,
                Arc::clone(state),
                self.inputs.token.clone(),
                shutdown.clone(),
            ));
        }
        if let Some(h) = self.handoff {
            control.spawn(crate::gateway::relay::serve(
                Arc::clone(state),
                h.key,
                UdpSocket::from_std(h.socket)?,
                UdpSocket::from_std(h.gwmp)?,
                shutdown.clone(),
            ));
        }
        if let Some(s) = self.inputs.udp {
            s.set_nonblocking(true)?;
            let s = UdpSocket::from_std(s)?;
            control.spawn(crate::integration::input::downlink_input(
                Arc::clone(state),
                s,
                self.inputs.token.clone(),
                shutdown.clone(),
            ));
        }

        signals.wait(stop).await;
        tracing::info!("shutting down");
        state.begin_shutdown();
        let _ = self.shutdown.0.send(true);
        // The socket loops drain their joins; the link receive loop stays up meanwhile.
        let threads = self.threads;
        let joined = tokio::task::spawn_blocking(move || {
            for t in threads {
                match t.join() {
                    Ok(Err(e)) => tracing::error!(error = %e, "socket loop failed"),
                    Err(_) => tracing::error!("socket loop panicked"),
                    Ok(Ok(())) => {}
                }
            }
        });
        let _ = joined.await;
        control.shutdown().await;
        self.store.flush().await?;
        Ok(())
    }
}

/// SIGINT and SIGTERM handlers, installed before the server reports ready.
struct Signals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    /// Installs the handlers (inside the control runtime's context).
    fn install() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Self {
                interrupt: signal(SignalKind::interrupt())?,
                terminate: signal(SignalKind::terminate())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    /// Resolves on SIGINT, SIGTERM, or `stop` turning true.
    async fn wait(mut self, stop: Option<watch::Receiver<bool>>) {
        let external = async move {
            match stop {
                Some(mut s) => {
                    while !*s.borrow_and_update() {
                        if s.changed().await.is_err() {
                            std::future::pending::<()>().await;
                        }
                    }
                }
                None => std::future::pending().await,
            }
        };
        #[cfg(unix)]
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
            _ = external => {}
        }
        #[cfg(not(unix))]
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = external => {}
        }
    }
}

fn resolve(addr: &str) -> anyhow::Result<SocketAddr> {
    if addr.trim().is_empty() {
        bail!("no join server address: give --join-server HOST:PORT or [join_server] address");
    }
    addr.to_socket_addrs()
        .with_context(|| format!("resolving the join server address {addr}"))?
        .next()
        .with_context(|| format!("the join server address {addr} resolves to nothing"))
}

async fn housekeeping(state: Arc<State>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    // Gateways silent for a day are forgotten: bounds the registry against made-up EUIs.
    let forget_after = Duration::from_secs(24 * 3600).max(Duration::from_secs(
        state.config.gwmp.gateway_offline_after_s,
    ));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        let now = Instant::now();
        state.dedup.sweep(now);
        state.gateways.forget_idle(now, forget_after);
    }
}
