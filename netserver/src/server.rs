//! The shell: sockets, threads, timers and the start/stop sequence around the sans-IO core.
//!
//! - **GWMP socket loops**: `gwmp.workers` threads (default: one per core), each running a
//!   current-thread tokio runtime that owns one UDP socket. The sockets share the listen address
//!   with `SO_REUSEPORT`, so the kernel spreads gateways over them (a gateway's datagrams always
//!   reach the same socket). Each datagram is handled inline: acknowledged at once, parsed,
//!   classified, de-duplicated. Only the first copy of a Join-request becomes a task, because it
//!   waits for the join server.
//! - **Control runtime** (the main thread): the link receive loop, the `/metrics` endpoint,
//!   housekeeping (de-duplication sweep, idle gateways) and the signal handler.
//! - **Store thread**: group commits ([`crate::store::commit::SessionStore`]).
//!
//! Shutdown (SIGINT/SIGTERM): `/health` turns 503, the socket loops stop reading, joins in
//! flight finish (bounded by the RX2 delay), the store flushes, and the process exits 0.

use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use protocol::gwmp::{Packet, RxPk, Stat};
use protocol::ids::DevEui;
use protocol::link::PeerId;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::core::classify::{classify, UplinkKind};
use crate::core::dedup::Seen;
use crate::core::devaddr::AddrAllocator;
use crate::core::reception::Reception;
use crate::gateway::registry::{GatewayStatus, RxpkOutcome};
use crate::integration::emitter::Emitter;
use crate::integration::recover::{apply_delivered, recover_delivered};
use crate::integration::sink::EventSink;
use crate::join::link::LinkClient;
use crate::keys::NetworkKeys;
use crate::ops::config::Config;
use crate::ops::metrics::Metrics;
use crate::state::{Secrets, State};
use crate::store::commit::SessionStore;
use crate::store::counters::{restore_counters, CounterLog};
use crate::store::embedded::RedbBackend;
use crate::store::session::Session;
use crate::store::stored::StoredSession;
use crate::store::table::Sessions;
use crate::uplink::collect::Collecting;
use crate::uplink::plane::DataPlane;
use protocol::region;

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

/// How long a PUSH_DATA/PULL_DATA datagram may be: GWMP datagrams fit in one UDP datagram.
const MAX_DATAGRAM: usize = 65_536;

/// Runs the server until SIGINT/SIGTERM or until `stop` turns true. Calls `ready` once every
/// socket is bound.
pub fn run(
    config: Config,
    secrets: Secrets,
    stop: Option<watch::Receiver<bool>>,
    ready: impl FnOnce(&Addresses),
) -> anyhow::Result<()> {
    let block = config.validate()?;
    config.data.validate().map_err(anyhow::Error::msg)?;
    let metrics = Metrics::new();

    // Sessions: load, open the network keys, index.
    let backend = RedbBackend::open(&config.data_dir)
        .with_context(|| format!("opening the session store in {}", config.data_dir.display()))?;
    let (store, restored, store_thread) =
        SessionStore::start_all(backend, config.storage.max_batch, metrics.clone())?;
    let sessions = Sessions::new();
    let allocator = AddrAllocator::new(block);
    // Data path: the write-ahead frame counters, applied over the stored sessions.
    let counter_log = CounterLog::open(&config.data_dir)
        .with_context(|| format!("opening the counter log in {}", config.data_dir.display()))?;
    let counter_records = counter_log.load()?;
    let delivered = match EventSink::open(&config.data.events)
        .with_context(|| format!("opening the event sink {:?}", config.data.events))?
    {
        EventSink::File(_) => recover_delivered(
            Path::new(config.data.events.trim()),
            (config.data.max_batch as u64).max(64) * 8 * 1024,
        )
        .with_context(|| format!("reading the event file {}", config.data.events))?,
        _ => Default::default(),
    };
    // Replaced sessions (few: devices between a rejoin and their next uplink), by device.
    let mut previous: HashMap<DevEui, StoredSession> = restored
        .previous
        .into_iter()
        .map(|s| (s.dev_eui, s))
        .collect();
    let mut kept_previous = Vec::new();
    let restore = |mut stored: StoredSession| -> anyhow::Result<Session> {
        let rekey_confirmed = restore_counters(&counter_records, &mut stored);
        apply_delivered(&delivered, &mut stored);
        let keys = NetworkKeys::open(&stored.network_keys, &secrets.ns_kek).with_context(|| {
            format!(
                "session of {} cannot be opened with the configured ns.kek",
                stored.dev_eui
            )
        })?;
        let session = Session::new(&stored, keys, sessions.labels(), secrets.as_kek.as_ref())
            .with_context(|| format!("session of {}", stored.dev_eui))?;
        session.live.lock().rekey_confirmed = rekey_confirmed;
        Ok(session)
    };
    for stored in restored.current {
        let replaced = previous.remove(&stored.dev_eui);
        allocator.restore(stored.dev_addr, stored.dev_eui);
        let session = restore(stored)?;
        // A replaced session is kept only while its successor is unused (no uplink accepted,
        // 1.1: no RekeyInd); its removal may not have reached the store before a crash.
        let unused = {
            let st = session.live.lock();
            st.counters.f_cnt_up == 0 && !st.rekey_confirmed
        };
        sessions.insert(session);
        match replaced {
            Some(old) if unused => kept_previous.push(restore(old)?),
            Some(old) => store.forget_previous(old.dev_eui),
            None => {}
        }
    }
    for (dev_eui, _) in previous {
        store.forget_previous(dev_eui);
    }
    let replaced = kept_previous.len();
    for s in kept_previous {
        sessions.insert_previous(s);
    }
    drop(counter_records);
    tracing::info!(sessions = sessions.len(), replaced, "sessions restored");

    // Sockets.
    let workers = match config.gwmp.workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let first = gwmp_socket(
        config.gwmp.listen,
        config.gwmp.recv_buffer_bytes,
        workers > 1,
    )
    .with_context(|| format!("binding GWMP on {}", config.gwmp.listen))?;
    let gwmp_addr = first.local_addr()?;
    // Data downlinks leave from the GWMP port (forwarders accept PULL_RESP only from it). The
    // clone shares the non-blocking file description with the socket loop's socket.
    let downlink_socket = first.try_clone()?;
    let mut gwmp_sockets = vec![first];
    for _ in 1..workers {
        gwmp_sockets.push(
            gwmp_socket(gwmp_addr, config.gwmp.recv_buffer_bytes, true)
                .with_context(|| format!("binding GWMP worker socket on {gwmp_addr}"))?,
        );
    }
    let js_addr = resolve(&config.join_server.address)?;
    // The default bind address follows the join server's address family.
    let mut link_bind = config.join_server.bind;
    if link_bind.ip().is_unspecified() && link_bind.is_ipv4() != js_addr.is_ipv4() {
        link_bind.set_ip(match js_addr {
            SocketAddr::V4(_) => std::net::Ipv4Addr::UNSPECIFIED.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::UNSPECIFIED.into(),
        });
    }
    let link_socket = std::net::UdpSocket::bind(link_bind)
        .with_context(|| format!("binding the link socket on {link_bind}"))?;
    let link_addr = link_socket.local_addr()?;
    let link = Arc::new(LinkClient::new(
        link_socket.try_clone()?,
        js_addr,
        secrets.link_key.clone(),
        PeerId::from_net_id(block.net_id),
        metrics.clone(),
    )?);
    link_socket.set_nonblocking(true)?;

    let metrics_listener = match config.metrics.listen.trim() {
        "" => None,
        a => Some(
            std::net::TcpListener::bind(a).with_context(|| format!("binding metrics on {a}"))?,
        ),
    };
    let metrics_addr = metrics_listener
        .as_ref()
        .map(std::net::TcpListener::local_addr)
        .transpose()?;
    if let Some(l) = &metrics_listener {
        l.set_nonblocking(true)?;
    }

    // The control runtime, created before the socket loops so that everything fallible is
    // done before any thread starts; signal handlers are installed before `ready`.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (link_rx, metrics_listener, signals) = {
        let _in_runtime = rt.enter();
        let link_rx = UdpSocket::from_std(link_socket)?;
        let metrics_listener = metrics_listener
            .map(tokio::net::TcpListener::from_std)
            .transpose()?;
        (link_rx, metrics_listener, Signals::install()?)
    };

    let data_config = config.data.clone();
    let sink = EventSink::open(&data_config.events)
        .with_context(|| format!("opening the event sink {:?}", data_config.events))?;
    let downlink_input = match data_config.downlink_listen.trim() {
        "" => None,
        a => Some(
            std::net::UdpSocket::bind(a)
                .with_context(|| format!("binding the downlink input on {a}"))?,
        ),
    };
    let downlink_http = match data_config.downlink_http.trim() {
        "" => None,
        a => Some(
            std::net::TcpListener::bind(a)
                .with_context(|| format!("binding the HTTP downlink input on {a}"))?,
        ),
    };
    let (emitter, emitter_thread) = Emitter::start(
        counter_log,
        sink,
        downlink_socket,
        data_config.max_batch,
        metrics.clone(),
    )?;
    let plane = DataPlane::new(data_config, emitter);
    let state = Arc::new(State::new(
        config,
        block,
        metrics,
        sessions,
        allocator,
        store.clone(),
        secrets,
        gwmp_sockets
            .iter()
            .filter_map(udpstat::socket_inode)
            .collect(),
        plane,
    ));
    let (shutdown_tx, shutdown_rx) = watch::channel(false);

    // Socket loops.
    let mut threads = Vec::new();
    for (i, sock) in gwmp_sockets.into_iter().enumerate() {
        let state = Arc::clone(&state);
        let link = Arc::clone(&link);
        let shutdown = shutdown_rx.clone();
        threads.push(
            std::thread::Builder::new()
                .name(format!("netserver-gwmp-{i}"))
                .spawn(move || -> anyhow::Result<()> {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()?;
                    rt.block_on(async move {
                        let socket = UdpSocket::from_std(sock).inspect_err(|e| {
                            tracing::error!(error = %e, worker = i, "GWMP socket loop cannot start");
                        })?;
                        gwmp_loop(state, link, Arc::new(socket), shutdown).await;
                        Ok(())
                    })
                })?,
        );
    }

    let addrs = Addresses {
        gwmp: gwmp_addr,
        link: link_addr,
        metrics: metrics_addr,
    };
    tracing::info!(gwmp = %addrs.gwmp, link = %addrs.link, join_server = %js_addr, workers, "netserver serving");
    ready(&addrs);

    // Control runtime.
    let result = rt.block_on(async {
        let mut control = JoinSet::new();
        control.spawn(Arc::clone(&link).receive_loop(link_rx, shutdown_rx.clone()));
        if let Some(l) = metrics_listener {
            control.spawn(crate::ops::http::serve(
                l,
                Arc::clone(&state),
                shutdown_rx.clone(),
            ));
        }
        control.spawn(housekeeping(Arc::clone(&state), shutdown_rx.clone()));
        if let Some(l) = downlink_http {
            l.set_nonblocking(true)?;
            control.spawn(crate::integration::input::serve_http_downlinks(
                tokio::net::TcpListener::from_std(l)?,
                Arc::clone(&state),
                shutdown_rx.clone(),
            ));
        }
        if let Some(s) = downlink_input {
            s.set_nonblocking(true)?;
            let s = UdpSocket::from_std(s)?;
            control.spawn(crate::integration::input::downlink_input(
                Arc::clone(&state),
                s,
                shutdown_rx.clone(),
            ));
        }

        signals.wait(stop).await;
        tracing::info!("shutting down");
        state.begin_shutdown();
        let _ = shutdown_tx.send(true);
        // The socket loops drain their joins; the link receive loop stays up meanwhile.
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
        store.flush().await?;
        anyhow::Ok(())
    });
    // Dropping the runtime cancels what is left on it (idle keep-alive connections of the
    // metrics endpoint), releasing their handles on the state and so on the store.
    drop(rt);
    drop(state);
    drop(store);
    drop(link);
    store_thread.join();
    emitter_thread.join();
    result?;
    tracing::info!("stopped");
    Ok(())
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

fn gwmp_socket(
    addr: SocketAddr,
    recv_buffer: usize,
    reuse_port: bool,
) -> std::io::Result<std::net::UdpSocket> {
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    #[cfg(unix)]
    if reuse_port {
        s.set_reuse_port(true)?;
    }
    #[cfg(not(unix))]
    let _ = reuse_port;
    if let Err(e) = s.set_recv_buffer_size(recv_buffer) {
        tracing::warn!(error = %e, requested = recv_buffer, "cannot set SO_RCVBUF");
    }
    let effective = s.recv_buffer_size().unwrap_or(0);
    // Linux reports twice the usable size; it caps the request at net.core.rmem_max.
    if effective < recv_buffer {
        tracing::warn!(
            requested = recv_buffer,
            effective,
            "SO_RCVBUF capped by the kernel; raise net.core.rmem_max to absorb bursts"
        );
    } else {
        tracing::debug!(effective, "GWMP SO_RCVBUF");
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    Ok(s.into())
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

/// What one socket loop holds between datagrams: the joins it started (each waits for the
/// join server and its RX window) and the data frames in their collection window.
#[derive(Debug, Default)]
pub(crate) struct Held {
    joins: JoinSet<()>,
    collecting: Collecting,
}

/// One GWMP socket loop.
async fn gwmp_loop(
    state: Arc<State>,
    link: Arc<LinkClient>,
    socket: Arc<UdpSocket>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut held = Held::default();
    // One timer, re-armed only when the oldest held frame changes.
    let window_end = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(window_end);
    let mut armed: Option<Instant> = None;
    loop {
        held.collecting.handle_due(&state, Instant::now());
        let due = held.collecting.next_due();
        if due != armed {
            if let Some(d) = due {
                window_end.as_mut().reset(d.into());
            }
            armed = due;
        }
        let (n, from) = tokio::select! {
            r = socket.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(e) => {
                    // ICMP errors surface here on some systems; the socket stays usable.
                    tracing::debug!(error = %e, "GWMP receive error");
                    continue;
                }
            },
            () = &mut window_end, if armed.is_some() => {
                armed = None;
                continue;
            }
            _ = shutdown.changed() => break,
        };
        let now = Instant::now();
        handle_datagram(&state, &link, &socket, &buf[..n], from, now, &mut held).await;
        while held.joins.try_join_next().is_some() {}
    }
    // Frames still in their collection window are handled now rather than lost.
    held.collecting.drain(&state);
    // Let joins in flight finish: none can outlive its RX2 window.
    let bound = state.join_timing().rx2_delay + Duration::from_secs(1);
    let _ = tokio::time::timeout(bound, async {
        while held.joins.join_next().await.is_some() {}
    })
    .await;
}

/// Handles one GWMP datagram from `from`.
pub(crate) async fn handle_datagram(
    state: &Arc<State>,
    link: &Arc<LinkClient>,
    socket: &Arc<UdpSocket>,
    data: &[u8],
    from: SocketAddr,
    now: Instant,
    held: &mut Held,
) {
    let m = &state.metrics;
    let packet = match Packet::parse(data) {
        Ok(p) => p,
        Err(e) => {
            m.gwmp_dropped.with_label_values(&[e.kind()]).inc();
            tracing::debug!(%from, error = %e, "GWMP datagram dropped");
            return;
        }
    };
    if let Some(gw) = packet.gateway() {
        if !state.gateways.admits(gw) {
            m.gwmp_dropped.with_label_values(&["gateway_limit"]).inc();
            return;
        }
    }
    // PUSH_ACK / PULL_ACK first, before any processing.
    if let Some(ack) = packet.ack() {
        if let Err(e) = socket.send_to(&ack, from).await {
            tracing::debug!(%from, error = %e, "GWMP ack not sent");
        }
    }
    match packet {
        Packet::PushData(p) => {
            m.gwmp_datagrams.with_label_values(&["push_data"]).inc();
            state.gateways.on_push_data(p.gateway, now);
            if let Some(stat) = &p.stat {
                state.gateways.on_status(p.gateway, now, status_of(stat));
            }
            for rxpk in p.rxpk {
                handle_rxpk(state, link, socket, p.gateway, rxpk, now, held);
            }
        }
        Packet::PullData { gateway, .. } => {
            m.gwmp_datagrams.with_label_values(&["pull_data"]).inc();
            state.gateways.on_pull_data(gateway, from, now);
        }
        Packet::TxAck(ack) => {
            m.gwmp_datagrams.with_label_values(&["tx_ack"]).inc();
            let code = ack.error.as_ref().map_or("none", |e| e.kind());
            m.tx_ack.with_label_values(&[code]).inc();
            state.gateways.on_tx_ack(ack.gateway, now, code);
            if let Some(e) = &ack.error {
                // Counted in `netserver_tx_ack_total`; a line per refusal would flood the log
                // when a loaded gateway answers TOO_LATE by the thousand.
                tracing::debug!(gateway = %ack.gateway, error = e.as_str(), "downlink refused by the gateway");
            }
        }
        Packet::PushAck { .. } | Packet::PullAck { .. } | Packet::PullResp(_) => {
            m.gwmp_dropped.with_label_values(&["unexpected_type"]).inc();
        }
    }
}

fn status_of(s: &Stat) -> GatewayStatus {
    GatewayStatus {
        rxnb: s.rxnb.map(u64::from),
        rxok: s.rxok.map(u64::from),
        rxfw: s.rxfw.map(u64::from),
        ackr: s.ackr,
        dwnb: s.dwnb.map(u64::from),
        txnb: s.txnb.map(u64::from),
    }
}

fn handle_rxpk(
    state: &Arc<State>,
    link: &Arc<LinkClient>,
    socket: &Arc<UdpSocket>,
    gateway: protocol::ids::GatewayEui,
    rxpk: RxPk,
    now: Instant,
    held: &mut Held,
) {
    let m = &state.metrics;
    if !rxpk.crc_ok() {
        m.rxpk.with_label_values(&["crc_dropped"]).inc();
        state
            .gateways
            .on_rxpk(gateway, now, RxpkOutcome::CrcDropped);
        return;
    }
    let Some(data_rate) = region::dr_of(rxpk.datr) else {
        m.rxpk.with_label_values(&["invalid"]).inc();
        m.uplink_dropped
            .with_label_values(&["unknown_data_rate"])
            .inc();
        state.gateways.on_rxpk(gateway, now, RxpkOutcome::Invalid);
        return;
    };
    m.rxpk.with_label_values(&["ok"]).inc();
    state.gateways.on_rxpk(gateway, now, RxpkOutcome::Ok);
    let reception = Reception {
        gateway,
        tmst: rxpk.tmst,
        received_at: now,
        frequency_hz: rxpk.freq_hz,
        data_rate,
        rf_chain: rxpk.rfch.unwrap_or(0),
        // A forwarder that reports no signal quality ranks last.
        rssi: rxpk.best_rssi().unwrap_or(i32::MIN),
        snr: rxpk.best_snr().map_or(f32::MIN, |s| s as f32),
    };
    let kind = match classify(&rxpk.data) {
        Ok(k) => k,
        Err(e) => {
            m.uplink_dropped.with_label_values(&[e.kind()]).inc();
            return;
        }
    };
    let seen = match kind {
        // Data: a copy long after the first is the device sending the frame again.
        UplinkKind::Data { .. } => state.dedup.observe_within(
            now,
            &rxpk.data,
            reception.clone(),
            Duration::from_millis(state.data.config.retransmission_after_ms),
        ),
        UplinkKind::JoinRequest => state.dedup.observe(now, &rxpk.data, reception.clone()),
    };
    if seen == Seen::Unrecorded {
        m.dedup_full.inc();
    }
    match seen {
        Seen::Duplicate => m.dedup_duplicates.inc(),
        Seen::First | Seen::Unrecorded => match kind {
            UplinkKind::JoinRequest => {
                held.joins.spawn(crate::join::otaa::handle_join_request(
                    Arc::clone(state),
                    Arc::clone(link),
                    Arc::clone(socket),
                    rxpk.data,
                    reception,
                ));
            }
            UplinkKind::Data { .. } => {
                crate::uplink::collect::on_first_copy(
                    state,
                    &mut held.collecting,
                    rxpk.data,
                    reception,
                    now,
                );
            }
        },
    }
}
