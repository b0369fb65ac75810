//! The gateway side of the core, protocol-neutral: what a gateway message leads to, as
//! [`Action`]s a shell carries out (update the gateway registry, forward a frame to the join or
//! the uplink path, count a drop), and the seam a gateway protocol plugs into,
//! [`GatewayProtocol`]. GWMP is its one implementation today
//! ([`crate::gateway::gwmp::Gwmp`]); Basic Station is added as another, producing the same
//! actions.
//!
//! [`uplink`] is the step every protocol shares once it has a PHYPayload and its reception:
//! classify it, record the copy in the de-duplication table, and forward the first copy.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use protocol::ids::GatewayEui;
use protocol::region::Region;

use crate::core::airtime::TxOutcome;
use crate::core::classify::{classify, UplinkKind};
use crate::core::dedup::{Dedup, Seen};
use crate::core::reception::Reception;
use crate::gateway::registry::{GatewayRegistry, GatewayStatus, RxpkOutcome};

/// What a gateway message tells about its gateway (applied to the registry).
#[derive(Debug, Clone, PartialEq)]
pub enum GatewayEvent {
    /// It sent uplinks (PUSH_DATA).
    Uplinks,
    /// It reported its status.
    Status(GatewayStatus),
    /// One of its receptions, and what became of it.
    Reception(RxpkOutcome),
    /// Its downlinks go to this address (GWMP: where its PULL_DATA came from).
    DownlinkRoute(SocketAddr),
    /// It reported a downlink's fate (GWMP TX_ACK error code, `none` when sent).
    TxAck(&'static str),
    /// The same fate, for the downlink scheduler: the PULL_RESP's token and what became of
    /// the transmission.
    TxOutcome {
        /// The token of the PULL_RESP the TX_ACK answers.
        token: [u8; 2],
        /// Sent, or why not.
        outcome: TxOutcome,
        /// The TX_ACK's error label (`none` when sent), as in [`GatewayEvent::TxAck`].
        code: &'static str,
    },
}

/// A metric the dispatch increments (each a bounded label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Count {
    /// A message of this type was received (`netserver_gwmp_datagrams_total{type}`).
    Message(&'static str),
    /// A message was dropped (`netserver_gwmp_dropped_total{reason}`).
    Dropped(&'static str),
    /// A reception by result (`netserver_rxpk_total{result}`).
    Reception(&'static str),
    /// An uplink dropped before its pipeline (`netserver_uplink_dropped_total{reason}`).
    UplinkDropped(&'static str),
    /// A TX acknowledgement by error code (`netserver_tx_ack_total{error}`).
    TxAck(&'static str),
    /// A copy of a frame already seen.
    Duplicate,
    /// The de-duplication table was full: the frame is processed but not recorded.
    DedupFull,
}

/// Where a frame's first copy goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// The join path (a Join-request).
    Join,
    /// The data uplink path.
    Data,
}

/// One thing the shell does for a gateway message, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Update the gateway's registry entry.
    Gateway(GatewayEui, GatewayEvent),
    /// Forward a frame's first copy to its path.
    Forward {
        /// The join or the data path.
        path: Path,
        /// The PHYPayload.
        phy: Vec<u8>,
        /// Its first reception.
        reception: Reception,
    },
    /// Increment a metric.
    Count(Count),
}

/// The shell's side of the dispatch: it carries out each action as the core decides it (no
/// list is built on the hot path; the in-memory harness collects them in a `Vec`).
pub trait Actions {
    /// Carries out `a`.
    fn act(&mut self, a: Action);
}

impl Actions for Vec<Action> {
    fn act(&mut self, a: Action) {
        self.push(a);
    }
}

/// The state the gateway core reads.
#[derive(Debug, Clone, Copy)]
pub struct GatewayEnv<'a> {
    /// The known gateways (the limit on how many are admitted).
    pub gateways: &'a GatewayRegistry,
    /// The de-duplication table (a frame's copies from several gateways).
    pub dedup: &'a Dedup,
    /// A data frame's copy arriving this long after the first is a new transmission.
    pub retransmission_after: Duration,
    /// The network's region: how an rxpk `datr` reads as an uplink data rate.
    pub region: Region,
}

/// A message received from a gateway, accepted for dispatch.
#[derive(Debug)]
pub struct Received<M> {
    /// The acknowledgement to send back at once, before anything else (GWMP PUSH_ACK and
    /// PULL_ACK).
    pub ack: Option<Vec<u8>>,
    /// The message.
    pub message: M,
}

/// The gateway protocol seam: from the bytes a gateway sent to the protocol-neutral actions.
/// Two steps, so that the shell sends the acknowledgement before the dispatch runs.
pub trait GatewayProtocol {
    /// One parsed message.
    type Message;
    /// Parses and admits a message; `Err` is the drop reason to count.
    fn receive(
        &self,
        bytes: &[u8],
        gateways: &GatewayRegistry,
    ) -> Result<Received<Self::Message>, &'static str>;
    /// Dispatches an admitted message from `from`, received at `now`.
    fn dispatch(
        &self,
        now: Instant,
        from: SocketAddr,
        message: Self::Message,
        env: &GatewayEnv<'_>,
        out: &mut impl Actions,
    );
}

/// The longest PHYPayload LoRa carries (the radio's length field is one byte); a longer one
/// from a gateway is forged or broken.
pub const MAX_PHY_PAYLOAD: usize = 255;

/// The shared step for one reception of `phy`: drop it if longer than [`MAX_PHY_PAYLOAD`],
/// classify, de-duplicate, forward the first copy.
pub fn uplink(
    now: Instant,
    phy: Vec<u8>,
    reception: Reception,
    env: &GatewayEnv<'_>,
    out: &mut impl Actions,
) {
    if phy.len() > MAX_PHY_PAYLOAD {
        return out.act(Action::Count(Count::UplinkDropped("phy_too_long")));
    }
    let kind = match classify(&phy) {
        Ok(k) => k,
        Err(e) => return out.act(Action::Count(Count::UplinkDropped(e.kind()))),
    };
    let seen = match kind {
        // Data: a copy long after the first is the device sending the frame again.
        UplinkKind::Data { .. } => {
            env.dedup
                .observe_within(now, &phy, reception.clone(), env.retransmission_after)
        }
        UplinkKind::JoinRequest | UplinkKind::RejoinRequest => {
            env.dedup.observe(now, &phy, reception.clone())
        }
    };
    if seen == Seen::Unrecorded {
        out.act(Action::Count(Count::DedupFull));
    }
    let path = match (seen, kind) {
        (Seen::Duplicate, _) => return out.act(Action::Count(Count::Duplicate)),
        (_, UplinkKind::JoinRequest | UplinkKind::RejoinRequest) => Path::Join,
        (_, UplinkKind::Data { .. }) => Path::Data,
    };
    out.act(Action::Forward {
        path,
        phy,
        reception,
    });
}
