//! The GWMP socket loop: one per worker thread, owning one UDP socket. Each datagram is
//! handled inline through the gateway core ([`crate::gateway::gwmp::Gwmp`]): acknowledged at
//! once, then dispatched; this shell carries out the core's actions (registry updates,
//! metrics, a join task, the data path's collection window).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::core::airtime::TxOutcome;
use crate::core::gateway::{
    Action, Actions, Count, GatewayEnv, GatewayEvent, GatewayProtocol, Path,
};
use crate::gateway::gwmp::Gwmp;
use crate::integration::emitter::Emit;
use crate::integration::txack;
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
}

/// One GWMP socket loop.
pub async fn gwmp_loop(
    state: Arc<State>,
    link: Arc<JoinServers>,
    socket: Arc<UdpSocket>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
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
        let datagram = Datagram {
            gwmp,
            data: &buf[..n],
            from,
            now,
        };
        handle_datagram(&state, &link, &socket, datagram, &mut held).await;
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

/// One datagram received, with the protocol (and its limits) it is read with.
struct Datagram<'a> {
    gwmp: Gwmp,
    data: &'a [u8],
    from: SocketAddr,
    now: Instant,
}

/// Handles one GWMP datagram: the acknowledgement first, then the dispatch.
async fn handle_datagram(
    state: &Arc<State>,
    link: &Arc<JoinServers>,
    socket: &Arc<UdpSocket>,
    datagram: Datagram<'_>,
    held: &mut Held,
) {
    let Datagram {
        gwmp,
        data,
        from,
        now,
    } = datagram;
    let received = match gwmp.receive(data, &state.gateways) {
        Ok(r) => r,
        Err(reason) => {
            state
                .metrics
                .gwmp_dropped
                .with_label_values(&[reason])
                .inc();
            tracing::debug!(%from, reason, "GWMP datagram dropped");
            return;
        }
    };
    if let Some(ack) = &received.ack {
        if let Err(e) = socket.send_to(ack, from).await {
            tracing::debug!(%from, error = %e, "GWMP ack not sent");
        }
    }
    let env = GatewayEnv {
        gateways: &state.gateways,
        dedup: &state.dedup,
        retransmission_after: Duration::from_millis(state.data.config.retransmission_after_ms),
        region: state.config.network.region,
    };
    let mut shell = Dispatcher {
        state,
        link,
        socket,
        held,
        now,
    };
    gwmp.dispatch(now, from, received.message, &env, &mut shell);
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
