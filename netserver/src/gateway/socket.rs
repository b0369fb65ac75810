//! The GWMP socket loop: one per worker thread, owning one GWMP socket and its own link socket
//! to the join server. Datagrams are read in batches (`recvmmsg`) and handled inline through
//! the gateway core ([`crate::gateway::gwmp::Gwmp`]): a batch's acknowledgements leave at once
//! in one `sendmmsg`, then each datagram is dispatched; this shell carries out the core's
//! actions (registry updates, metrics, a join task, the data path's collection window). The
//! link socket's JoinAns datagrams wake the join tasks of this same thread.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::task::JoinSet;
use udpbatch::{BatchReceiver, BatchSender};

use crate::core::airtime::TxOutcome;
use crate::core::gateway::{
    Action, Actions, Count, GatewayEnv, GatewayEvent, GatewayProtocol, Path,
};
use crate::gateway::gwmp::Gwmp;
use crate::integration::emitter::Emit;
use crate::integration::txack;
use crate::join::link::LinkClient;
use crate::join::route::JoinServers;
use crate::ops::metrics::Metrics;
use crate::state::State;
use crate::uplink::collect::Collecting;

/// How long a PUSH_DATA/PULL_DATA datagram may be: GWMP datagrams fit in one UDP datagram.
const MAX_DATAGRAM: usize = 65_536;

/// A GWMP socket: `SO_REUSEPORT` when several loops share the address, the receive buffer
/// raised to `recv_buffer` (a burst of a few hundred datagrams overflows the default).
pub fn gwmp_socket(
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

/// What one socket loop holds between datagrams: the joins it started (each waits for the
/// join server and its RX window) and the data frames in their collection window.
#[derive(Debug, Default)]
pub(crate) struct Held {
    joins: JoinSet<()>,
    collecting: Collecting,
    /// The lists the last batch was read into, kept for the next.
    batch: Scratch,
}

/// Datagrams taken per system call (`recvmmsg`) on a GWMP or link socket.
const RECV_BATCH: usize = 32;
/// The largest link datagram (a JoinAns with its keys fits well within it).
const MAX_LINK_DATAGRAM: usize = 4096;

/// This loop's own link to the join server: a client whose socket only this loop reads, so a
/// JoinAns wakes the join task on the thread that sent its JoinReq (no hop through another
/// thread).
pub struct LoopLink {
    /// The client (its pending requests).
    pub client: Arc<LinkClient>,
    /// Its socket, read by this loop.
    pub socket: UdpSocket,
}

impl LoopLink {
    /// Reads every datagram queued on the link socket (batched) and hands each to the client.
    fn drain(&self, rx: &mut BatchReceiver) {
        loop {
            match self
                .socket
                .try_io(Interest::READABLE, || rx.recv(&self.socket))
            {
                Ok(n) => {
                    let now_ms = protocol::time::unix_ms(SystemTime::now());
                    for i in 0..n {
                        // The source address is not checked: the tag authenticates the answer.
                        self.client.on_datagram(rx.get(i).0, now_ms);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    tracing::warn!(error = %e, "link receive failed");
                    return;
                }
            }
        }
    }
}

/// What woke the loop.
enum Wake {
    Gwmp,
    Link,
    WindowEnd,
    Shutdown,
}

/// One GWMP socket loop: reads its GWMP socket and its link socket in batches (`recvmmsg`),
/// acknowledges each batch's datagrams in one `sendmmsg`, then dispatches them.
pub async fn gwmp_loop(
    state: Arc<State>,
    (link, own): (Arc<JoinServers>, LoopLink),
    socket: Arc<UdpSocket>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut gwmp_rx = BatchReceiver::new(RECV_BATCH, MAX_DATAGRAM);
    let mut link_rx = BatchReceiver::new(RECV_BATCH, MAX_LINK_DATAGRAM);
    let acks = BatchSender::new(RECV_BATCH);
    let mut held = Held::default();
    let gwmp = Gwmp::of(&state.config.gwmp);
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
        let wake = tokio::select! {
            r = socket.readable() => match r {
                Ok(()) => Wake::Gwmp,
                Err(e) => {
                    tracing::debug!(error = %e, "GWMP socket not readable");
                    continue;
                }
            },
            r = own.socket.readable() => match r {
                Ok(()) => Wake::Link,
                Err(e) => {
                    tracing::debug!(error = %e, "link socket not readable");
                    continue;
                }
            },
            () = &mut window_end, if armed.is_some() => Wake::WindowEnd,
            _ = shutdown.changed() => Wake::Shutdown,
        };
        match wake {
            Wake::Gwmp => {
                let n = match socket.try_io(Interest::READABLE, || gwmp_rx.recv(&*socket)) {
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                    Err(e) => {
                        // ICMP errors surface here on some systems; the socket stays usable.
                        tracing::debug!(error = %e, "GWMP receive error");
                        continue;
                    }
                };
                let batch = Batch {
                    gwmp,
                    rx: &gwmp_rx,
                    n,
                    now: Instant::now(),
                };
                handle_batch(&state, &link, (&socket, &acks), batch, &mut held);
                while held.joins.try_join_next().is_some() {}
                // Each datagram spends a unit of the task budget, as one `recv_from` did: under a
                // flood the loop yields to the join tasks every 128 datagrams, not every 128
                // batches (joins then sat at their in-flight limit while uplinks kept coming).
                for _ in 0..n {
                    tokio::task::consume_budget().await;
                }
            }
            Wake::Link => own.drain(&mut link_rx),
            Wake::WindowEnd => armed = None,
            Wake::Shutdown => break,
        }
    }
    wind_down(&state, &mut held, &own, &mut link_rx).await;
}

/// At shutdown: frames still in their collection window are handled now rather than lost, and
/// the joins in flight finish (their answers still arrive on `own`'s socket); none can outlive
/// its RX2 window.
async fn wind_down(state: &State, held: &mut Held, own: &LoopLink, link_rx: &mut BatchReceiver) {
    held.collecting.drain(state);
    let bound = state.join_timing().rx2_delay + Duration::from_secs(1);
    let _ = tokio::time::timeout(bound, async {
        loop {
            tokio::select! {
                j = held.joins.join_next() => if j.is_none() { break },
                r = own.socket.readable() => if r.is_ok() { own.drain(link_rx) },
            }
        }
    })
    .await;
}

/// The datagrams of one `recvmmsg`, with the protocol (and its limits) they are read with.
struct Batch<'a> {
    gwmp: Gwmp,
    rx: &'a BatchReceiver,
    n: usize,
    now: Instant,
}

/// What one batch's datagrams were read into: kept by the socket loop from batch to batch, so
/// that a batch allocates neither list (the messages' list was 1.7 % of the network server's CPU
/// in malloc under a join storm, being too large for the allocator's per-thread cache).
#[derive(Debug, Default)]
struct Scratch {
    received: Vec<(protocol::gwmp::Packet, SocketAddr)>,
    acks: Vec<(Vec<u8>, SocketAddr)>,
}

/// Handles the GWMP datagrams of one batch: each read, their acknowledgements sent in one
/// system call, then each dispatched.
fn handle_batch(
    state: &Arc<State>,
    link: &Arc<JoinServers>,
    (socket, sender): (&Arc<UdpSocket>, &BatchSender),
    batch: Batch<'_>,
    held: &mut Held,
) {
    let Batch { gwmp, rx, n, now } = batch;
    // Taken out of `held` (which the dispatch below needs) and put back at the end; neither
    // move allocates.
    let Scratch {
        mut received,
        mut acks,
    } = std::mem::take(&mut held.batch);
    for i in 0..n {
        let (data, from) = rx.get(i);
        let Some(from) = from else { continue };
        match gwmp.receive(data, &state.gateways) {
            Ok(r) => {
                if let Some(ack) = r.ack {
                    acks.push((ack, from));
                }
                received.push((r.message, from));
            }
            Err(reason) => {
                state
                    .metrics
                    .gwmp_dropped
                    .with_label_values(&[reason])
                    .inc();
                tracing::debug!(%from, reason, "GWMP datagram dropped");
            }
        }
    }
    if !acks.is_empty() {
        let msgs: Vec<(&[u8], SocketAddr)> = acks.iter().map(|(a, to)| (&a[..], *to)).collect();
        let sent = sender.send(&**socket, &msgs);
        if sent < msgs.len() {
            tracing::debug!(unsent = msgs.len() - sent, "GWMP acks not sent");
        }
    }
    let env = GatewayEnv {
        gateways: &state.gateways,
        dedup: &state.dedup,
        retransmission_after: Duration::from_millis(state.data.config.retransmission_after_ms),
        region: state.config.network.region,
    };
    for (message, from) in received.drain(..) {
        let mut shell = Dispatcher {
            state,
            link,
            socket,
            held,
            now,
        };
        gwmp.dispatch(now, from, message, &env, &mut shell);
    }
    acks.clear();
    held.batch = Scratch { received, acks };
}

/// Carries out the gateway core's actions for one datagram.
struct Dispatcher<'a> {
    state: &'a Arc<State>,
    link: &'a Arc<JoinServers>,
    socket: &'a Arc<UdpSocket>,
    held: &'a mut Held,
    now: Instant,
}

impl Actions for Dispatcher<'_> {
    fn act(&mut self, a: Action) {
        let state = self.state;
        match a {
            Action::Count(c) => count(&state.metrics, c),
            Action::Gateway(gw, e) => {
                let g = &state.gateways;
                match e {
                    GatewayEvent::Uplinks => g.on_push_data(gw, self.now),
                    GatewayEvent::Status(s) => g.on_status(gw, self.now, s),
                    GatewayEvent::Reception(o) => g.on_rxpk(gw, self.now, o),
                    GatewayEvent::DownlinkRoute(addr) => g.on_pull_data(gw, addr, self.now),
                    GatewayEvent::TxOutcome {
                        token,
                        outcome,
                        code,
                    } => {
                        if let Some(sent) = state.data.sent.take(self.now, gw, token) {
                            let line = txack::event_line(sent, code, SystemTime::now());
                            state.data.emitter.emit(Emit {
                                events: line.into_iter().collect(),
                                ..Emit::default()
                            });
                        }
                        let booked = state.scheduler.on_tx_ack(self.now, gw, token, outcome);
                        if booked && outcome != TxOutcome::Sent {
                            let m = &state.metrics.airtime;
                            m.tx_refused.with_label_values(&[outcome.label()]).inc();
                        }
                    }
                    GatewayEvent::TxAck(code) => {
                        g.on_tx_ack(gw, self.now, code);
                        if code != "none" {
                            // Counted in `netserver_tx_ack_total`; a line per refusal would
                            // flood the log when a loaded gateway answers TOO_LATE by the
                            // thousand.
                            tracing::debug!(gateway = %gw, error = code, "downlink refused by the gateway");
                        }
                    }
                }
            }
            Action::Forward {
                path: Path::Join,
                phy,
                reception,
            } => {
                if self.held.joins.len() >= state.config.gwmp.max_joins_in_flight {
                    tracing::debug!("Join-request dropped: joins in flight at the limit");
                    return count(&state.metrics, Count::UplinkDropped("joins_in_flight"));
                }
                let (state, link, socket) = (
                    Arc::clone(state),
                    Arc::clone(self.link),
                    Arc::clone(self.socket),
                );
                if crate::join::rejoin::rejoin_type(&phy).is_some() {
                    self.held
                        .joins
                        .spawn(crate::join::rejoin::handle_rejoin_request(
                            state, link, socket, phy, reception,
                        ));
                } else {
                    self.held
                        .joins
                        .spawn(crate::join::otaa::handle_join_request(
                            state, link, socket, phy, reception,
                        ));
                }
            }
            Action::Forward {
                path: Path::Data,
                phy,
                reception,
            } => crate::uplink::collect::on_first_copy(
                state,
                &mut self.held.collecting,
                phy,
                reception,
                self.now,
            ),
        }
    }
}

fn count(m: &Metrics, c: Count) {
    match c {
        Count::Message(t) => m.gwmp_datagrams.with_label_values(&[t]).inc(),
        Count::Dropped(r) => m.gwmp_dropped.with_label_values(&[r]).inc(),
        Count::Reception(r) => m.rxpk.with_label_values(&[r]).inc(),
        Count::UplinkDropped(r) => m.uplink_dropped.with_label_values(&[r]).inc(),
        Count::TxAck(e) => m.tx_ack.with_label_values(&[e]).inc(),
        Count::Duplicate => m.dedup_duplicates.inc(),
        Count::DedupFull => m.dedup_full.inc(),
    }
}
