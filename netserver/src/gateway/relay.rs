//! The sockets of the hand-off ([`crate::gateway::handoff`]): a PULL_RESP sent to the gateway's
//! owner instance ([`hand_off`]), and the hand-off socket that sends what other instances hand
//! this one on to its gateways ([`serve`]).

use std::net::SocketAddr;
use std::sync::Arc;

use protocol::ids::GatewayEui;
use tokio::net::UdpSocket;
use tokio::sync::watch;

use crate::gateway::handoff::{HandoffKey, ReplayWindow, MAX_DATAGRAM};
use crate::ops::listen::recv_or_shutdown;
use crate::state::State;

fn count(state: &State, event: &str) {
    state.metrics.data.shared.with_label_values(&[event]).inc();
}

/// Sends `pull_resp` for `gateway` to its owner instance at `owner` (from `socket`, any of this
/// instance's UDP sockets); counted as `handoff_sent`.
pub async fn hand_off(
    state: &State,
    key: &HandoffKey,
    socket: &UdpSocket,
    (gateway, owner): (GatewayEui, SocketAddr),
    pull_resp: &[u8],
) -> std::io::Result<()> {
    let now_ms = protocol::time::unix_ms(std::time::SystemTime::now());
    socket
        .send_to(&key.seal(gateway, pull_resp, now_ms), owner)
        .await?;
    count(state, "handoff_sent");
    Ok(())
}

/// Serves the hand-off socket until shutdown: each authenticated, fresh, first hand-off's
/// PULL_RESP goes to its gateway's PULL_DATA address here, from `gwmp` (a GWMP socket: the
/// forwarder takes PULL_RESP only from the address it pulls from). Counted as
/// `handoff_delivered`, `handoff_no_route` (this instance no longer holds the gateway) or the
/// refusal's kind.
pub async fn serve(
    state: Arc<State>,
    key: Arc<HandoffKey>,
    socket: UdpSocket,
    gwmp: UdpSocket,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM + 1];
    let mut replays = ReplayWindow::default();
    loop {
        let Some((n, from)) = recv_or_shutdown(&socket, &mut buf, &mut shutdown).await else {
            return;
        };
        let now_ms = protocol::time::unix_ms(std::time::SystemTime::now());
        let h = match key
            .open(&buf[..n], now_ms)
            .and_then(|h| replays.check(&h, now_ms).map(|()| h))
        {
            Ok(h) => h,
            Err(e) => {
                tracing::debug!(%from, error = %e, "hand-off refused");
                count(&state, e.kind());
                continue;
            }
        };
        let Some(to) = state.gateways.downlink_addr(h.gateway) else {
            count(&state, "handoff_no_route");
            continue;
        };
        match gwmp.send_to(h.pull_resp, to).await {
            Ok(_) => {
                state
                    .gateways
                    .on_pull_resp(h.gateway, std::time::Instant::now());
                state.metrics.pull_resp.inc();
                count(&state, "handoff_delivered");
            }
            Err(e) => tracing::debug!(gateway = %h.gateway, error = %e, "hand-off not sent on"),
        }
    }
}
