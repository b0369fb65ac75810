//! The OTAA join pipeline: the named steps from a Join-request's first copy to its PULL_RESP,
//! around the sans-IO [`JoinFlow`].
//!
//! 1. parse the Join-request;
//! 2. join-storm protection, before anything is spent: the device's Join-request allowance
//!    ([`crate::core::joinlimit`]), then a gateway and window with airtime for the Join-accept,
//!    booked ([`crate::core::scheduler`]; if none, after the other gateways' copies had time to
//!    arrive, none again: no Join-accept, and the join server is not asked);
//! 3. reserve a DevAddr;
//! 4. send the TS002 JoinReq over the link, retrying per the flow (same TransactionID);
//! 5. read the JoinAns: refused → done (the booking is taken back); success → open the network
//!    key envelopes;
//! 6. keep the booked window if it can still be met, else place the Join-accept again;
//! 7. store the session durably (network keys wrapped under the NS KEK, AppSKey envelope as
//!    received), together with the session it replaces (kept until the first uplink under the
//!    new one), then emit the `join` event, install it and free the device's previous address;
//! 8. send the PULL_RESP (its token names the booking for the gateway's TX_ACK) and record the
//!    latency.
//!
//! Each Join-request runs as one task on the socket loop that received it: it waits on the
//! link for up to a few seconds, which must not stall the loop. Data uplinks are handled
//! inline, without a task ([`crate::uplink`]). A LoRaWAN 1.1 Rejoin-request takes a task of its
//! own ([`crate::join::rejoin`]) and, after its first steps (its own airtime booking), the same
//! steps 4 to 8 (`answer_and_send`).

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use protocol::gwmp::GwmpError;
use protocol::ids::{DevAddr, DevEui, DevNonce, GatewayEui, JoinEui};
use protocol::join::{DlSettings, EncryptedJoinAccept, JoinFrameError, JoinRequest};
use protocol::ts002::{self, JoinAns, JoinReq, MessageType, ResultCode, Ts002Error};
use protocol::version::MacVersion;
use tokio::net::UdpSocket;
use tracing::Instrument;

use crate::core::airtime::Purpose;
use crate::core::devaddr::Exhausted;
use crate::core::device::FrameCounters;
use crate::core::join::{JoinFailure, JoinFlow, Step};
use crate::core::reception::Reception;
use crate::core::rejoin::RejoinRefusal;
use crate::core::scheduler::{candidates, Candidate, Placement, Unplaced};
use crate::core::timing::Window;
use crate::gateway::owner::DownlinkRoute;
use crate::gateway::relay::hand_off;
use crate::gateway::txpk::{
    build_txpk, pull_resp, time_on_air, window_airtime, DownlinkError, DownlinkRadio,
};
use crate::integration::emitter::Emit;
use crate::integration::events::{rfc3339, JoinEvent};
use crate::join::client::{JoinServerClient, JoinTransaction};
use crate::keys::{EnvelopeError, NetworkKeys};
use crate::ops::config::JoinConfig;
use crate::ops::metrics::Metrics;
use crate::state::State;
use crate::store::backend::StoreError;
use crate::store::session::Session;
use crate::store::stored::{RxParams, StoredNetworkKeys, StoredSession, STORED_SESSION_VERSION};
use protocol::region::Region;
use protocol::time::unix_ms;

/// Why a join ended without a Join-accept.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// The Join-request (or Rejoin-request) is malformed.
    #[error("malformed request: {0}")]
    Parse(#[from] JoinFrameError),
    /// The device sends Join-requests faster than the specification allows.
    #[error("join-requests faster than the device's allowance")]
    RateLimited,
    /// A Rejoin-request type 0 or 2 was refused before the join server was asked.
    #[error(transparent)]
    Rejoin(#[from] RejoinRefusal),
    /// No DevAddr is free.
    #[error(transparent)]
    Exhausted(#[from] Exhausted),
    /// The JoinReq could not be sent (the join server client's error).
    #[error(transparent)]
    Link(Box<dyn std::error::Error + Send + Sync>),
    /// The JoinReq could not be encoded.
    #[error("cannot encode the JoinReq: {0}")]
    Encode(Ts002Error),
    /// The flow ended (timeout, too late, no gateway).
    #[error(transparent)]
    Flow(#[from] JoinFailure),
    /// The JoinAns is malformed or does not answer this JoinReq.
    #[error("malformed join answer: {0}")]
    Answer(String),
    /// The join server refused the request.
    #[error("join server refused: {code}{}", description.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
    Rejected {
        /// Its ResultCode.
        code: ResultCode,
        /// Its description.
        description: Option<String>,
    },
    /// A network key could not be opened.
    #[error(transparent)]
    Keys(#[from] EnvelopeError),
    /// The session could not be stored.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The downlink could not be built.
    #[error(transparent)]
    Downlink(#[from] DownlinkError),
    /// The PULL_RESP could not be encoded.
    #[error("cannot encode the PULL_RESP: {0}")]
    Gwmp(#[from] GwmpError),
    /// The PULL_RESP could not be sent.
    #[error("cannot send the PULL_RESP: {0}")]
    Send(std::io::Error),
}

impl JoinError {
    /// `(result, reason)` labels of `netserver_joins_total`: `rejected` with the ResultCode
    /// for the join server's refusals, `dropped` with a stable reason otherwise.
    pub fn labels(&self) -> (&'static str, Cow<'static, str>) {
        let dropped = |r: &'static str| ("dropped", Cow::Borrowed(r));
        match self {
            Self::Rejected { code, .. } => {
                let known = ResultCode::known().any(|k| &k == code);
                let reason = if known {
                    Cow::Owned(code.as_str().to_owned())
                } else {
                    Cow::Borrowed("Other")
                };
                ("rejected", reason)
            }
            Self::Parse(_) => dropped("malformed"),
            Self::Rejoin(r) => dropped(r.kind()),
            Self::RateLimited => dropped("rate_limited"),
            Self::Exhausted(_) => dropped("devaddr_exhausted"),
            Self::Link(_) => dropped("link_send"),
            Self::Encode(_) => dropped("encode"),
            Self::Flow(f) => dropped(f.kind()),
            Self::Answer(_) => dropped("malformed_answer"),
            Self::Keys(e) => dropped(e.kind()),
            Self::Store(_) => dropped("store_failed"),
            Self::Downlink(_) => dropped("downlink"),
            Self::Gwmp(_) => dropped("encode"),
            Self::Send(_) => dropped("gwmp_send"),
        }
    }
}

/// Releases a reserved DevAddr unless the join completed.
pub(crate) struct Reservation<'a> {
    state: &'a State,
    addr: DevAddr,
    dev_eui: DevEui,
    armed: bool,
}

impl<'a> Reservation<'a> {
    /// Reserves a DevAddr for `dev_eui` until the flow has certainly ended.
    pub(crate) fn new(
        state: &'a State,
        dev_eui: DevEui,
        flow: &JoinFlow,
    ) -> Result<Self, JoinError> {
        let until = flow.give_up_at() + Duration::from_secs(1);
        let addr =
            state
                .allocator
                .allocate(Instant::now(), dev_eui, until, &mut rand::thread_rng())?;
        tracing::Span::current().record("dev_addr", tracing::field::display(addr));
        Ok(Self {
            state,
            addr,
            dev_eui,
            armed: true,
        })
    }

    /// The address reserved (or kept).
    pub(crate) fn addr(&self) -> DevAddr {
        self.addr
    }

    /// The address the device already holds (a Rejoin-request type 2 keeps it): nothing to
    /// reserve or release.
    pub(crate) fn kept(state: &'a State, dev_eui: DevEui, addr: DevAddr) -> Self {
        tracing::Span::current().record("dev_addr", tracing::field::display(addr));
        Self {
            state,
            addr,
            dev_eui,
            armed: false,
        }
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.state.allocator.release(self.addr, self.dev_eui);
        }
    }
}

/// Runs one join from the first copy of its Join-request, and counts the outcome.
///
/// The join's span is at debug level: at thousands of joins a second an enabled span per join
/// (its allocation and formatted fields) cost more than the CMAC of the Join-request; the
/// warnings carry the device and gateway themselves.
pub async fn handle_join_request<C: JoinServerClient>(
    state: Arc<State>,
    link: Arc<C>,
    gwmp: Arc<UdpSocket>,
    phy: Vec<u8>,
    first: Reception,
) {
    let req = match JoinRequest::parse(&phy) {
        Ok(r) => r,
        Err(e) => {
            let e = JoinError::from(e);
            count_outcome(&state, &Err(e), &first, None);
            return;
        }
    };
    let span = tracing::debug_span!(
        "join",
        first_gateway = %first.gateway,
        dev_eui = %req.dev_eui,
        dev_addr = tracing::field::Empty
    );
    let outcome = run(&state, &link, &gwmp, (&phy, req), &first)
        .instrument(span.clone())
        .await;
    let _enter = span.enter();
    count_outcome(&state, &outcome, &first, Some(req.dev_eui));
}

/// Counts a join's outcome; logs a refusal that is not expected by the thousand in a storm.
fn count_outcome(
    state: &State,
    outcome: &Result<(Window, GatewayEui), JoinError>,
    first: &Reception,
    dev_eui: Option<DevEui>,
) {
    match outcome {
        Ok((window, via)) => {
            state
                .metrics
                .joins
                .with_label_values(&["accepted", window.label()])
                .inc();
            // Per-join lines are debug: at thousands of joins/s they would cost more than the join
            // (the outcome is counted in `netserver_joins_total`).
            tracing::debug!(window = window.label(), %via, "join-accept sent");
        }
        Err(e) => {
            let (result, reason) = e.labels();
            state
                .metrics
                .joins
                .with_label_values(&[result, &reason])
                .inc();
            match e {
                // Expected by the thousand in a storm: counted, not logged at warn.
                JoinError::Rejected { .. }
                | JoinError::RateLimited
                | JoinError::Flow(JoinFailure::TooLate | JoinFailure::NoAirtime) => {
                    tracing::debug!(error = %e, "no join-accept")
                }
                _ => match dev_eui {
                    Some(d) => {
                        tracing::warn!(first_gateway = %first.gateway, dev_eui = %d, error = %e, "no join-accept")
                    }
                    None => {
                        tracing::warn!(first_gateway = %first.gateway, error = %e, "no join-accept")
                    }
                },
            }
        }
    }
}

async fn run<C: JoinServerClient>(
    state: &State,
    link: &Arc<C>,
    gwmp: &UdpSocket,
    (phy, req): (&[u8], JoinRequest),
    first: &Reception,
) -> Result<(Window, GatewayEui), JoinError> {
    let t0 = first.received_at;

    // 1. Parsed by the caller. 2. Join-storm protection: the device's allowance, then airtime
    // for its Join-accept.
    within_allowance(state, &req, first)?;
    let cf_list = cf_list(state);
    let flow = JoinFlow::new(t0, state.retry_policy(), state.join_timing());
    let booking = book(state, &flow, phy, first, accept_len(cf_list.as_ref())).await?;

    // 3. Reserve a DevAddr until the flow has certainly ended.
    let reservation = Reservation::new(state, req.dev_eui, &flow)?;
    let join_req = join_req(
        state,
        MessageType::JoinReq,
        (req.join_eui, req.dev_eui),
        phy,
        reservation.addr,
        cf_list,
    );
    let activation = Activation {
        dev_eui: req.dev_eui,
        join_eui: req.join_eui,
        dev_nonce: req.dev_nonce,
        keep: None,
    };
    answer_and_send(
        state,
        link,
        gwmp,
        (phy, first),
        flow,
        &join_req,
        activation,
        reservation,
        booking,
    )
    .await
}

/// What a Join-accept activates: the device, its JoinEUI, the nonce of the request it answers
/// (a Join-request's DevNonce, or a Rejoin-request's RJcount, which takes its place), and, for a
/// rejoin verified under a session, that session: the one to keep until the new one is used.
pub(crate) struct Activation {
    pub(crate) dev_eui: DevEui,
    pub(crate) join_eui: JoinEui,
    pub(crate) dev_nonce: DevNonce,
    pub(crate) keep: Option<Arc<Session>>,
}

/// Steps 4 to 8, shared by joins and rejoins: the request over the link (with retries), its
/// answer, the booked window (or another), the durable session, the PULL_RESP.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn answer_and_send<C: JoinServerClient>(
    state: &State,
    link: &Arc<C>,
    gwmp: &UdpSocket,
    (phy, first): (&[u8], &Reception),
    mut flow: JoinFlow,
    join_req: &JoinReq,
    activation: Activation,
    mut reservation: Reservation<'_>,
    booking: Booking<'_>,
) -> Result<(Window, GatewayEui), JoinError> {
    let t0 = first.received_at;
    let addr = reservation.addr;

    // 4. JoinReq (or RejoinReq) with retries.
    let answer = exchange(state, link, activation.join_eui, join_req, &mut flow).await?;

    // 5. Read the answer.
    let ans = read_answer(state, &answer, join_req)?;

    // 6. The booked window, or another if it can no longer be met.
    let mut booking = confirm(state, &mut flow, booking, phy, first)?;
    let placed = booking.placement.candidate;
    let receptions = receptions(state, phy, first);
    let gw = receptions
        .iter()
        .find(|r| r.gateway == placed.gateway)
        .ok_or(JoinFailure::NoGateway)?;
    let route = state
        .gateways
        .downlink_route(gw.gateway, Instant::now())
        .ok_or(JoinFailure::NoGateway)?;
    let region = state.config.network.region;
    let radio = DownlinkRadio::of(&state.config.join, region);
    // The Join-accept itself is received with the device's defaults (RX1DROffset 0, the
    // region's RX2).
    let defaults = RxParams::region_default(region);
    let at = placed.at;
    let txpk = build_txpk(gw, &at, &defaults, &radio, ans.accept.as_bytes().to_vec())?;
    let token: [u8; 2] = rand::random();
    let pull_resp = pull_resp(token, txpk)?;

    // 7. Store durably, then install.
    install(state, activation, addr, ans).await?;
    reservation.armed = false;

    // 8. Send (or hand to the instance that holds the gateway's PULL_DATA).
    match (route, &state.handoff) {
        (DownlinkRoute::Gateway(to), _) => gwmp.send_to(&pull_resp, to).await.map(drop),
        (DownlinkRoute::Owner(to), Some(key)) => {
            hand_off(state, key, gwmp, (gw.gateway, to), &pull_resp).await
        }
        (DownlinkRoute::Owner(_), None) => return Err(JoinFailure::NoGateway.into()),
    }
    .map_err(JoinError::Send)?;
    state.scheduler.set_token(&booking.placement, token);
    booking.armed = false;
    count_sent(state, &placed, t0);
    Ok((at.window, gw.gateway))
}

/// Counts a Join-accept sent as `placed`, for a Join-request that arrived at `t0`.
fn count_sent(state: &State, placed: &Candidate, t0: Instant) {
    let now = Instant::now();
    let m = &state.metrics;
    state.gateways.on_pull_resp(placed.gateway, now);
    m.pull_resp.inc();
    m.join_accepts
        .with_label_values(&[placed.at.window.label()])
        .inc();
    if state.scheduler.enabled() {
        m.airtime
            .booked_seconds
            .with_label_values(&[Purpose::JoinAccept.label()])
            .inc_by(placed.airtime.as_secs_f64());
    }
    Metrics::observe(&m.join_latency, now.saturating_duration_since(t0));
}

/// Bytes of a Join-accept without CFList: MHDR 1, JoinNonce 3, NetID 3, DevAddr 4, DLSettings
/// 1, RxDelay 1, MIC 4.
const JOIN_ACCEPT_LEN: usize = 17;
/// Bytes of a Join-request: MHDR 1, JoinEUI 8, DevEUI 8, DevNonce 2, MIC 4.
const JOIN_REQUEST_LEN: usize = 23;

/// Every gateway's copy of `phy` received so far (at least `first`).
fn receptions(state: &State, phy: &[u8], first: &Reception) -> Vec<Reception> {
    let receptions = state.dedup.receptions(phy);
    if receptions.is_empty() {
        vec![first.clone()]
    } else {
        receptions
    }
}

/// The per-DevEUI join-storm limit: whether this Join-request is within the device's allowance
/// (its time on air charged to it).
fn within_allowance(state: &State, req: &JoinRequest, first: &Reception) -> Result<(), JoinError> {
    let region = state.config.network.region;
    let airtime = time_on_air(region, first.data_rate, JOIN_REQUEST_LEN, true).unwrap_or_default();
    if state
        .join_limit
        .check(first.received_at, req.dev_eui, airtime)
    {
        return Ok(());
    }
    state
        .metrics
        .airtime
        .join_storm_limited
        .with_label_values(&["dev_eui_rate"])
        .inc();
    Err(JoinError::RateLimited)
}

/// A Join-accept's booked transmission, taken back unless it was sent.
pub(crate) struct Booking<'a> {
    state: &'a State,
    placement: Placement,
    /// The Join-accept's length in bytes.
    len: usize,
    armed: bool,
}

impl Drop for Booking<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.state.scheduler.release(&self.placement);
        }
    }
}

/// The candidates for a `len`-byte Join-accept among the receptions of `phy` so far, at `now`.
fn join_candidates(
    state: &State,
    flow: &JoinFlow,
    phy: &[u8],
    first: &Reception,
    len: usize,
    now: Instant,
) -> Result<Vec<Candidate>, Unplaced> {
    let receptions = receptions(state, phy, first);
    let region = state.config.network.region;
    let defaults = RxParams::region_default(region);
    let anchor = flow.received_at();
    candidates(
        now,
        &receptions,
        flow.timing(),
        |_| anchor,
        |r| state.gateways.downlink_route(r.gateway, now).is_some(),
        |r, w| window_airtime(region, r, w, &defaults, len),
    )
}

/// Places a `len`-byte Join-accept among the receptions of `phy` so far, at `now`.
fn place(
    state: &State,
    flow: &JoinFlow,
    phy: &[u8],
    first: &Reception,
    len: usize,
    now: Instant,
) -> Result<Placement, Unplaced> {
    let c = join_candidates(state, flow, phy, first, len, now)?;
    let placed = state.scheduler.place(now, Purpose::JoinAccept, &c);
    count_placement(&state.metrics, Purpose::JoinAccept, &placed);
    placed
}

/// Counts a placement deferred from its first choice, or dropped for lack of airtime.
fn count_placement(m: &Metrics, purpose: Purpose, placed: &Result<Placement, Unplaced>) {
    let a = &m.airtime;
    match placed {
        Ok(Placement {
            deferred: Some(b), ..
        }) => a
            .deferred
            .with_label_values(&[purpose.label(), b.label()])
            .inc(),
        Err(Unplaced::Airtime(b)) => a
            .dropped
            .with_label_values(&[purpose.label(), b.label()])
            .inc(),
        _ => {}
    }
}

/// Books the Join-accept before the join server is asked. When no gateway has airtime among
/// the copies in so far, the others get the data path's collection window to arrive, then one
/// more try; still none: no Join-accept (`no_airtime`), and the join server is not asked.
pub(crate) async fn book<'a>(
    state: &'a State,
    flow: &JoinFlow,
    phy: &[u8],
    first: &Reception,
    len: usize,
) -> Result<Booking<'a>, JoinError> {
    let placed = match place(state, flow, phy, first, len, Instant::now()) {
        Err(Unplaced::Airtime(_)) => {
            let collect = Duration::from_millis(state.data.config.collect_window_ms);
            tokio::time::sleep_until((first.received_at + collect).into()).await;
            place(state, flow, phy, first, len, Instant::now())
        }
        other => other,
    };
    match placed {
        Ok(placement) => Ok(Booking {
            state,
            placement,
            len,
            armed: true,
        }),
        Err(u) => {
            if matches!(u, Unplaced::Airtime(_)) {
                state
                    .metrics
                    .airtime
                    .join_storm_limited
                    .with_label_values(&["gateway_airtime"])
                    .inc();
            }
            Err(JoinFailure::from(u).into())
        }
    }
}

/// After the JoinAns: a better placement if one fits now (a gateway with a better link whose
/// copy arrived after the booking), else the booked window if it can still be met, else the
/// Join-accept placed again (a later window); the flow checks the outcome.
fn confirm<'a>(
    state: &'a State,
    flow: &mut JoinFlow,
    mut booking: Booking<'a>,
    phy: &[u8],
    first: &Reception,
) -> Result<Booking<'a>, JoinError> {
    let now = Instant::now();
    let len = booking.len;
    let margin = flow.timing().margin;
    let reachable = |p: &Placement| {
        p.candidate
            .at
            .opens_at
            .checked_duration_since(now)
            .is_some_and(|lead| lead >= margin)
    };
    if reachable(&booking.placement) {
        let all = join_candidates(state, flow, phy, first, len, now).unwrap_or_default();
        let current = &booking.placement;
        if let Some(better) = state
            .scheduler
            .improve(now, Purpose::JoinAccept, current, &all)
        {
            booking.placement = better;
        }
    }
    let booking = if reachable(&booking.placement) {
        Ok(booking)
    } else {
        drop(booking);
        place(state, flow, phy, first, len, now)
            .map(|placement| Booking {
                state,
                placement,
                len,
                armed: true,
            })
            .map_err(JoinFailure::from)
    };
    let placed = booking.as_ref().map(|b| b.placement.candidate.at);
    flow.on_placed(now, placed.map_err(|e| *e))?;
    Ok(booking?)
}

/// The CFList of this server's Join-accepts: the channel mask of the enabled sub-bands
/// (US915/AU915) or the extra channels' frequencies (EU868-like regions; none configured: no
/// CFList). A 1.0.2 device ignores a type-1 CFList (RP 1.0.2 has none in US915/AU915): ADR's
/// LinkADRReq block narrows it later.
pub(crate) fn cf_list(state: &State) -> Option<Vec<u8>> {
    state
        .config
        .network
        .channel_plan()
        .ok()
        .and_then(|p| p.cf_list())
        .map(|c| c.0.to_vec())
}

/// The length of this server's Join-accepts, with `cf_list`.
pub(crate) fn accept_len(cf_list: Option<&Vec<u8>>) -> usize {
    JOIN_ACCEPT_LEN + cf_list.map_or(0, Vec::len)
}

/// The TS002 JoinReq for the request `phy` of `(join_eui, dev_eui)`, with a fresh
/// TransactionID, the DevAddr reserved for it and the server's CFList. With `message_type`
/// `RejoinReq` it is a TS002 RejoinReq, which has the same fields.
pub(crate) fn join_req(
    state: &State,
    message_type: MessageType,
    (join_eui, dev_eui): (JoinEui, DevEui),
    phy: &[u8],
    addr: DevAddr,
    cf_list: Option<Vec<u8>>,
) -> JoinReq {
    let j = &state.config.join;
    JoinReq {
        header: ts002::Header {
            // TS002 1.0, which every join server reads (1.1 requires a SenderNSID).
            protocol_version: ts002::ProtocolVersion::V1_0,
            sender_id: state.block.net_id.to_string(),
            receiver_id: join_eui.to_string(),
            transaction_id: state.next_transaction_id(),
            message_type,
            sender_token: None,
            receiver_token: None,
            sender_ns_id: None,
            receiver_ns_id: None,
            // This server runs each device at the version the join server answers with (its
            // JoinAns VSExtension): our join server need not cross-check `MACVersion`.
            vs_extension: Some(serde_json::json!({ ts002::VS_FOLLOWS_JS_MAC_VERSION: true })),
        },
        // The network supports 1.1; the join server answers with the device's own version.
        mac_version: MacVersion::V1_1,
        phy_payload: phy.to_vec(),
        dev_eui,
        dev_addr: addr,
        dl_settings: requested_dl_settings(j, state.config.network.region).0,
        rx_delay: j.rx_delay_s,
        cf_list,
    }
}

/// The DLSettings this server asks for (`[join]`).
fn requested_dl_settings(j: &JoinConfig, region: Region) -> DlSettings {
    let rx2 = j.rx2_data_rate.unwrap_or(region.rx2().1);
    DlSettings::new(true, j.rx1_dr_offset, rx2).unwrap_or(DlSettings(0x80))
}

/// Sends the JoinReq and re-sends it as the flow says (same TransactionID) until its answer.
async fn exchange<C: JoinServerClient>(
    state: &State,
    link: &Arc<C>,
    join_eui: JoinEui,
    join_req: &JoinReq,
    flow: &mut JoinFlow,
) -> Result<Vec<u8>, JoinError> {
    let body = serde_json::to_vec(join_req).map_err(|e| JoinError::Encode(e.into()))?;
    let mut txn = link.begin(join_eui, body);
    let sent_at = Instant::now();
    let mut step = flow.start(sent_at);
    let answer = loop {
        let wait_until = match step {
            Step::SendJoinReq {
                try_no, wait_until, ..
            } => {
                if let Err(e) = txn.send() {
                    // A full send buffer is transient: the next try covers it.
                    tracing::warn!(error = %e, try_no, "JoinReq send failed");
                    if C::Transaction::is_permanent(&e) {
                        return Err(JoinError::Link(Box::new(e)));
                    }
                }
                wait_until
            }
            Step::Wait { wait_until } => wait_until,
            Step::Fail(f) => return Err(f.into()),
        };
        match txn.answer_until(wait_until.into()).await {
            Some(body) => break body,
            None => step = flow.on_timeout(Instant::now()),
        }
    };
    Metrics::observe(&state.metrics.link_rtt, sent_at.elapsed());
    Ok(answer)
}

/// A successful JoinAns, read.
struct Answer {
    accept: EncryptedJoinAccept,
    keys: NetworkKeys,
    applied: AppliedSettings,
    app_s_key: Option<protocol::keywrap::KeyEnvelope>,
    session_key_id: Option<Vec<u8>>,
    lifetime: Option<u32>,
    /// The root-key rotation the join puts into use, as the JoinAns names it.
    rotation: Option<i64>,
    owner: Option<String>,
}

/// Reads the JoinAns to `join_req`: a refusal, or the Join-accept with the network keys
/// opened and the settings the device applies.
fn read_answer(state: &State, answer: &[u8], join_req: &JoinReq) -> Result<Answer, JoinError> {
    let ans = JoinAns::parse_answer_to(answer, join_req.header.message_type)
        .map_err(|e| JoinError::Answer(e.to_string()))?;
    if ans.header.transaction_id != join_req.header.transaction_id {
        return Err(JoinError::Answer(format!(
            "TransactionID {} answers another request",
            ans.header.transaction_id
        )));
    }
    if !ans.result.result_code.is_success() {
        return Err(JoinError::Rejected {
            code: ans.result.result_code,
            description: ans.result.description,
        });
    }
    let accept = ans
        .phy_payload
        .as_deref()
        .ok_or_else(|| JoinError::Answer("success without PHYPayload".into()))?;
    let accept =
        EncryptedJoinAccept::from_bytes(accept).map_err(|e| JoinError::Answer(e.to_string()))?;
    let received: StoredNetworkKeys = ans
        .network_keys
        .ok_or_else(|| JoinError::Answer("success without network keys".into()))?;
    let j = &state.config.join;
    Ok(Answer {
        accept,
        keys: NetworkKeys::open(&received, &state.secrets.ns_kek)?,
        applied: AppliedSettings::from_answer(
            ans.header.vs_extension.as_ref(),
            requested_dl_settings(j, state.config.network.region),
            j.rx_delay_s,
        ),
        rotation: ans
            .header
            .vs_extension
            .as_ref()
            .and_then(|v| v.get(ts002::VS_ROOT_KEY_ROTATION)?.as_i64()),
        owner: owner_of(ans.header.vs_extension.as_ref()),
        app_s_key: ans.app_s_key,
        session_key_id: ans.session_key_id,
        lifetime: ans.lifetime,
    })
}

/// Stores the new session durably (with the session it replaces), then emits the `join` event,
/// installs it and frees the device's previous address.
async fn install(
    state: &State,
    act: Activation,
    addr: DevAddr,
    ans: Answer,
) -> Result<(), JoinError> {
    let applied = ans.applied;
    let stored = StoredSession {
        version: STORED_SESSION_VERSION,
        dev_eui: act.dev_eui,
        join_eui: act.join_eui,
        dev_addr: addr,
        mac_version: applied.mac_version,
        dev_nonce: act.dev_nonce,
        network_keys: ans.keys.seal(&state.secrets.ns_kek),
        app_s_key: ans.app_s_key,
        session_key_id: ans.session_key_id,
        rx: RxParams {
            rx1_dr_offset: applied.dl_settings.rx1_dr_offset(),
            rx2_data_rate: applied.dl_settings.rx2_data_rate(),
            rx2_frequency_hz: state.config.network.region.rx2().0,
            rx_delay_s: applied.rx_delay,
        },
        counters: FrameCounters::default(),
        created_at_ms: unix_ms(SystemTime::now()),
        lifetime_s: ans.lifetime.filter(|&l| l > 0),
        last_rj_count0: None,
        owner: ans.owner,
    };
    let as_kek = state.secrets.as_kek.as_ref();
    let session = Session::new(&stored, ans.keys, state.sessions.labels(), as_kek)
        .map_err(|e| JoinError::Answer(format!("AppSKey envelope: {e}")))?;
    // The session this join replaces stays usable until the first uplink under the new one
    // (the device may miss the Join-accept), so it is stored with it, in the same commit. A
    // rejoin names the session it was verified under: the one the device uses.
    let dev_eui = act.dev_eui;
    match act.keep.clone().or_else(|| state.sessions.get(dev_eui)) {
        Some(old) => {
            let replaced = old.to_stored(&state.secrets.ns_kek);
            state.store.put_replacing(stored, replaced).await?;
        }
        None => state.store.put(stored).await?,
    }
    if !state.allocator.confirm(addr, dev_eui) {
        // Only if the store took longer than the reservation (RX2 + 1 s) and another join
        // took the address meanwhile: claim it for the stored session regardless, and say so.
        tracing::error!("DevAddr reservation expired during the store commit; address reclaimed");
        state.allocator.restore(addr, dev_eui);
    }
    emit_join_event(state, &session);
    if let Some(rotation) = ans.rotation {
        let key_use = &state.data.key_use;
        key_use.watch(dev_eui, act.join_eui, addr, rotation);
    }
    let displaced = match act.keep {
        Some(keep) => state.sessions.insert_keeping(session, keep),
        None => state.sessions.insert(session),
    };
    if let Some(old) = displaced {
        if old.dev_addr != addr {
            state.allocator.release(old.dev_addr, dev_eui);
        }
    }
    Ok(())
}

/// What the device applies after the Join-accept: the join server is authoritative and reports
/// it in the JoinAns `VSExtension` (`MACVersion`, `DLSettings` as hex, `RxDelay`); without it
/// the values requested in the JoinReq are assumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct AppliedSettings {
    mac_version: Option<MacVersion>,
    dl_settings: DlSettings,
    rx_delay: u8,
}

impl AppliedSettings {
    fn from_answer(vs: Option<&serde_json::Value>, requested: DlSettings, rx_delay: u8) -> Self {
        let get = |k: &str| vs.and_then(|v| v.get(k));
        Self {
            mac_version: get("MACVersion")
                .and_then(|v| v.as_str())
                .and_then(|s| s.parse().ok()),
            dl_settings: get("DLSettings")
                .and_then(|v| v.as_str())
                .and_then(|s| u8::from_str_radix(s, 16).ok())
                .map(DlSettings)
                .unwrap_or(requested),
            rx_delay: get("RxDelay")
                .and_then(|v| v.as_u64())
                .and_then(|d| u8::try_from(d).ok())
                .filter(|&d| d <= 15)
                .unwrap_or(rx_delay),
        }
    }
}

/// The longest owner (tenant) name taken from a JoinAns.
const MAX_OWNER_LEN: usize = 128;

/// The device's owner (tenant) from the JoinAns `VSExtension` (`"Owner": "…"`): our join
/// server names the tenant that claimed the device. A value that is not a plain name (empty,
/// over [`MAX_OWNER_LEN`] bytes, control characters, or the topic separators `/`, `+`, `#`
/// that would change the MQTT topic of its events) is ignored: the default application.
fn owner_of(vs: Option<&serde_json::Value>) -> Option<String> {
    let owner = vs?.get("Owner")?.as_str()?;
    let plain = !owner.is_empty()
        && owner.len() <= MAX_OWNER_LEN
        && !owner
            .chars()
            .any(|c| c.is_control() || matches!(c, '/' | '+' | '#'));
    plain.then(|| owner.to_owned())
}

/// The `join` event of a newly installed session (once it is durable), through the write-ahead
/// emitter so that it is ordered with the device's uplink events.
fn emit_join_event(state: &State, s: &Session) {
    let ev = JoinEvent {
        kind: "join".into(),
        dev_eui: s.dev_eui,
        join_eui: s.join_eui,
        dev_addr: s.dev_addr,
        mac_version: s.reported_version.map(|v| v.as_str().to_owned()),
        tenant: s.owner.as_deref().cloned(),
        received_at: rfc3339(SystemTime::now()),
    };
    if let Ok(line) = serde_json::to_vec(&ev) {
        state.data.emitter.emit(Emit {
            events: vec![line],
            ..Emit::default()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn applied_settings_come_from_the_vs_extension() {
        let vs = serde_json::json!({"MACVersion": "1.0.3", "DLSettings": "12", "RxDelay": 3});
        let a = AppliedSettings::from_answer(Some(&vs), DlSettings(0x80), 1);
        assert_eq!(a.mac_version, Some(MacVersion::V1_0_3));
        assert_eq!(a.dl_settings.rx1_dr_offset(), 1);
        assert_eq!(a.dl_settings.rx2_data_rate(), 2);
        assert_eq!(a.rx_delay, 3);
        let a = AppliedSettings::from_answer(None, DlSettings(0x80), 1);
        assert_eq!(
            (a.mac_version, a.dl_settings, a.rx_delay),
            (None, DlSettings(0x80), 1)
        );
        let bad = serde_json::json!({"MACVersion": 11, "DLSettings": "zz", "RxDelay": 99});
        let a = AppliedSettings::from_answer(Some(&bad), DlSettings(0x80), 1);
        assert_eq!(
            (a.mac_version, a.dl_settings, a.rx_delay),
            (None, DlSettings(0x80), 1)
        );
    }

    #[test]
    fn the_owner_comes_from_the_vs_extension_and_must_be_a_plain_name() {
        let vs = |o: serde_json::Value| serde_json::json!({"MACVersion": "1.0.3", "Owner": o});
        assert_eq!(owner_of(Some(&vs("acme".into()))).as_deref(), Some("acme"));
        assert_eq!(owner_of(None), None);
        assert_eq!(owner_of(Some(&serde_json::json!({"RxDelay": 1}))), None);
        for bad in [
            serde_json::json!(7),
            "".into(),
            "a/b".into(),
            "+".into(),
            "x#".into(),
            "a\nb".into(),
            "x".repeat(MAX_OWNER_LEN + 1).into(),
        ] {
            assert_eq!(owner_of(Some(&vs(bad.clone()))), None, "{bad}");
        }
        let longest = "x".repeat(MAX_OWNER_LEN);
        assert_eq!(owner_of(Some(&vs(longest.clone().into()))), Some(longest));
    }

    #[test]
    fn rejection_labels_are_bounded() {
        let e = JoinError::Rejected {
            code: ResultCode::MicFailed,
            description: None,
        };
        assert_eq!(e.labels(), ("rejected", Cow::Borrowed("MICFailed")));
        let e = JoinError::Rejected {
            code: ResultCode::from_wire("SomethingNew"),
            description: None,
        };
        assert_eq!(e.labels().1, "Other");
        assert_eq!(
            JoinError::Flow(JoinFailure::TooLate).labels(),
            ("dropped", Cow::Borrowed("too_late"))
        );
    }
}
