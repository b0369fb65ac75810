//! The data uplink pipeline's shell: the named steps of [`crate::core::data`] run against the
//! live sessions, then the write-ahead emit ([`crate::uplink_log`]).
//!
//! 1. wait for the collection window, so that every gateway's copy is in the de-duplication
//!    entry (held by the socket loop's [`Collecting`]; a window of 0 handles the first copy
//!    inline);
//! 2. parse; find the sessions at the DevAddr (current, and replaced ones kept until their
//!    successor is used);
//! 3. per candidate, under its lock: authenticate (FCnt inference, MIC 1.0/1.1, replay, gap);
//! 4. a repeat of the last frame is not delivered again; a confirmed one is ACKed again;
//! 5. MAC commands (FOpts or FPort 0, never both) → answers, ADR, DevStatusReq; a 1.1 session
//!    takes no frame without RekeyInd until a RekeyInd confirmed it;
//! 6. the downlink (ACK, MAC answers, a queued application payload, FPending), its counter
//!    taken, its window chosen (RX1 at `tmst` + RxDelay, else RX2);
//! 7. the new counters, the event and the downlink go to the emitter **while the session lock
//!    is held**, so that the emits of a session reach the write-ahead log in counter order.

use std::collections::VecDeque;
use std::num::NonZeroU64;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use prometheus::{Histogram, HistogramOpts, IntCounterVec, Opts, Registry};
use protocol::data::{Downlink, FramePayload, FrmPayload, SessionCrypto, UplinkMicParams};
use protocol::fcnt::FCntVerdict;
use protocol::gwmp::{Packet, PullResp, Token};
use protocol::mac::{self, MacCommand};
use serde::{Deserialize, Serialize};

use crate::core::adr::{self, AdrConfig, LinkSettings};
use crate::core::data::{self as steps, Auth, Candidate, DownCounter, UplinkResult};
use crate::core::mac_handler::{self, UplinkRadio};
use crate::core::reception::{self, Reception};
use crate::core::timing::{choose_window, WindowTiming};
use crate::downlink::{build_txpk, DownlinkRadio};
use crate::downlink_queue::{DownlinkQueue, QueuedDownlink};
use crate::integration::{self, AckEvent, JoinEvent, RxInfo, UplinkEvent};
use crate::live::{DataState, PendingConfirmed};
use crate::session::Session;
use crate::state::State;
use crate::uplink_log::{CounterRecord, Emit, Emitter, OutgoingDownlink};

/// `[data]`: the data path and the application integration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataConfig {
    /// Where application events go: empty (nowhere), `-` (stdout),
    /// `udp://HOST:PORT[?pack=BYTES]`, or a file path (appended).
    pub events: String,
    /// UDP address of the downlink input (JSON requests); empty: disabled.
    pub downlink_listen: String,
    /// HTTP address of the downlink input (`POST /downlink`); empty: disabled.
    pub downlink_http: String,
    /// How long after a frame's first copy the other gateways' copies are awaited, ms.
    pub collect_window_ms: u64,
    /// A copy of a frame arriving this long after its first copy is a new transmission (a
    /// confirmed retransmission, answered again), not another gateway's copy, ms.
    pub retransmission_after_ms: u64,
    /// ADR: send LinkADRReq to devices with the ADR bit set.
    pub adr: bool,
    /// ADR installation margin, dB.
    pub adr_installation_margin_db: f32,
    /// Send a DevStatusReq every this many uplinks of a device; 0: never.
    pub dev_status_interval: u32,
    /// Most application downlinks queued per device.
    pub queue_per_device: usize,
    /// Most emits (counter writes with their events and downlinks) per group commit.
    pub max_batch: usize,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            events: String::new(),
            downlink_listen: String::new(),
            downlink_http: String::new(),
            collect_window_ms: 200,
            retransmission_after_ms: 1000,
            adr: true,
            adr_installation_margin_db: 10.0,
            dev_status_interval: 100,
            queue_per_device: 16,
            max_batch: 4096,
        }
    }
}

impl DataConfig {
    /// Checks the settings that depend on each other.
    pub fn validate(&self) -> Result<(), String> {
        if self.collect_window_ms >= self.retransmission_after_ms {
            return Err(format!(
                "data.collect_window_ms ({}) must be below data.retransmission_after_ms ({}): a copy inside the window is another gateway's",
                self.collect_window_ms, self.retransmission_after_ms
            ));
        }
        if self.max_batch == 0 || self.queue_per_device == 0 {
            return Err("data.max_batch and data.queue_per_device must be at least 1".into());
        }
        Ok(())
    }
}

/// Metrics of the data path (registered with the others).
#[derive(Debug, Clone)]
pub struct DataMetrics {
    /// Uplinks by result (ok, mic_failed, replay, unknown_devaddr, duplicate, fcnt_gap,
    /// malformed).
    pub uplinks: IntCounterVec,
    /// PUSH_DATA received to event written, seconds.
    pub uplink_latency: Histogram,
    /// Data downlinks by result (sent, send_failed, commit_failed, too_late, no_gateway,
    /// build_failed).
    pub downlinks: IntCounterVec,
    /// Application events by result (written, write_failed).
    pub events: IntCounterVec,
    /// Counter group commits by result.
    pub counter_commits: IntCounterVec,
    /// Downlink requests on the integration input, by result (queued, refused).
    pub downlink_requests: IntCounterVec,
}

impl DataMetrics {
    /// Creates and registers the metrics in `r`.
    pub fn register(r: &Registry) -> Self {
        let cv = |name: &str, help: &str, label: &str| {
            let c = IntCounterVec::new(Opts::new(name, help), &[label])
                .expect("valid metric definition");
            r.register(Box::new(c.clone()))
                .expect("metric registered once");
            c
        };
        let h = Histogram::with_opts(
            HistogramOpts::new(
                "netserver_uplink_latency_seconds",
                "Time from a data uplink's PUSH_DATA arrival to its event being written.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
            ]),
        )
        .expect("valid metric definition");
        r.register(Box::new(h.clone()))
            .expect("metric registered once");
        let m = Self {
            uplinks: cv(
                "netserver_uplinks_total",
                "Data uplinks by result.",
                "result",
            ),
            uplink_latency: h,
            downlinks: cv(
                "netserver_downlinks_total",
                "Data downlinks by result.",
                "result",
            ),
            events: cv(
                "netserver_events_total",
                "Application events by result.",
                "result",
            ),
            counter_commits: cv(
                "netserver_counter_commits_total",
                "Frame counter group commits by result.",
                "result",
            ),
            downlink_requests: cv(
                "netserver_downlink_requests_total",
                "Downlink requests on the integration input, by result.",
                "result",
            ),
        };
        for r in UplinkResult::ALL {
            m.uplinks.with_label_values(&[r.label()]);
        }
        for d in [
            "sent",
            "send_failed",
            "commit_failed",
            "too_late",
            "no_gateway",
            "build_failed",
        ] {
            m.downlinks.with_label_values(&[d]);
        }
        m
    }
}

/// A data frame waiting for its collection window.
#[derive(Debug)]
pub struct PendingUplink {
    /// The PHYPayload.
    pub phy: Vec<u8>,
    /// Its first reception.
    pub first: Reception,
    /// Wall-clock arrival of the first copy.
    pub wall: SystemTime,
    /// When to handle it.
    pub due: Instant,
}

/// The data path's shared parts.
#[derive(Debug)]
pub struct DataPlane {
    /// Settings.
    pub config: DataConfig,
    /// Write-ahead emitter.
    pub emitter: Emitter,
    /// Application downlink queue.
    pub queue: DownlinkQueue,
    /// Next downlink id.
    pub next_id: AtomicU64,
}

impl DataPlane {
    /// Assembles the plane.
    pub fn new(config: DataConfig, emitter: Emitter) -> Self {
        Self {
            queue: DownlinkQueue::new(config.queue_per_device),
            config,
            emitter,
            next_id: AtomicU64::new(1),
        }
    }

    /// How long copies are awaited.
    pub fn collect_window(&self) -> Duration {
        Duration::from_millis(self.config.collect_window_ms)
    }
}

/// The frames one GWMP socket loop is holding for their collection window, in arrival order.
///
/// Each socket loop owns one and handles its frames when their windows end, on its own thread:
/// the data path runs on every loop, never on one shared collector thread (a single collector
/// capped the server at what one core can authenticate, and starved the join server link's
/// receive loop beside it). Every frame waits the same window, so the front is always due
/// first. The copies another loop receives still reach the frame through the shared
/// de-duplication table.
#[derive(Debug, Default)]
pub struct Collecting {
    queue: VecDeque<PendingUplink>,
}

impl Collecting {
    /// When the oldest frame's window ends.
    pub fn next_due(&self) -> Option<Instant> {
        self.queue.front().map(|p| p.due)
    }

    /// Handles every frame whose window has ended by `now`.
    pub fn handle_due(&mut self, state: &State, now: Instant) {
        let Some(plane) = state.data.get() else {
            return;
        };
        while self.queue.front().is_some_and(|p| p.due <= now) {
            if let Some(p) = self.queue.pop_front() {
                process(state, plane, &p.phy, &p.first, p.wall, Instant::now());
            }
        }
    }

    /// At shutdown: handles every frame still waiting, without waiting for its window.
    pub fn drain(&mut self, state: &State) {
        let Some(plane) = state.data.get() else {
            return;
        };
        for p in self.queue.drain(..) {
            process(state, plane, &p.phy, &p.first, p.wall, Instant::now());
        }
    }
}

/// Entry point from a socket loop for the first copy of a data frame: handled inline with no
/// collection window, else held in the loop's [`Collecting`] until the window ends.
pub fn on_first_copy(
    state: &State,
    collecting: &mut Collecting,
    phy: Vec<u8>,
    first: Reception,
    now: Instant,
) {
    let Some(plane) = state.data.get() else {
        return;
    };
    let wall = SystemTime::now();
    let window = plane.collect_window();
    if window.is_zero() {
        process(state, plane, &phy, &first, wall, now);
        return;
    }
    collecting.queue.push_back(PendingUplink {
        phy,
        first,
        wall,
        due: now + window,
    });
}

/// A join event for a newly installed session (called by the join path once it is durable).
pub fn on_join(state: &State, s: &Session) {
    let Some(plane) = state.data.get() else {
        return;
    };
    let ev = JoinEvent {
        kind: "join".into(),
        dev_eui: s.dev_eui,
        join_eui: s.join_eui,
        dev_addr: s.dev_addr,
        mac_version: s.reported_version.map(|v| v.as_str().to_owned()),
        received_at: integration::rfc3339(SystemTime::now()),
    };
    if let Ok(line) = serde_json::to_vec(&ev) {
        plane.emitter.emit(Emit {
            events: vec![line],
            ..Emit::default()
        });
    }
}

fn count(state: &State, r: UplinkResult) {
    state
        .metrics
        .data
        .uplinks
        .with_label_values(&[r.label()])
        .inc();
}

/// Runs the pipeline for one frame whose collection window ended.
pub fn process(
    state: &State,
    plane: &DataPlane,
    phy: &[u8],
    first: &Reception,
    wall: SystemTime,
    now: Instant,
) {
    // 1. Every gateway's copy, best first.
    let mut receptions = state.dedup.receptions(phy);
    if receptions.is_empty() {
        receptions.push(first.clone());
    }
    receptions.sort_by(|a, b| b.quality_cmp(a));

    // 2. Parse and find the sessions.
    let frame = match steps::parse(phy) {
        Ok(f) => f,
        Err(r) => return count(state, r),
    };
    let candidates = state.sessions.candidates(frame.dev_addr());
    if candidates.is_empty() {
        return count(state, UplinkResult::UnknownDevAddr);
    }

    // 3. Authenticate, one candidate at a time under its lock.
    let mut refusal = UplinkResult::MicFailed;
    let rank = |r: UplinkResult| match r {
        UplinkResult::Replay => 2,
        UplinkResult::FcntGap => 1,
        _ => 0,
    };
    for session in &candidates {
        let crypto = session.crypto();
        let mut st = session.live.lock();
        let mic_params = UplinkMicParams {
            conf_fcnt: st.pending_confirmed.map_or(0, |p| p.f_cnt),
            tx_dr: first.data_rate,
            tx_ch: steps::tx_channel(first.frequency_hz, &[]),
        };
        let cand = Candidate {
            version: session.mac_version(),
            last_accepted: st.last_accepted(),
            crypto: &crypto,
            mic_params,
        };
        match steps::authenticate(&frame, &[cand]) {
            Auth::Refused(r) => {
                if rank(r) > rank(refusal) {
                    refusal = r;
                }
            }
            Auth::Accepted {
                verdict, uplink, ..
            } => {
                let ctx = Ctx {
                    state,
                    plane,
                    session,
                    receptions: &receptions,
                    wall,
                    now,
                };
                accepted(&ctx, &crypto, &mut st, verdict, uplink);
                return;
            }
        }
    }
    count(state, refusal);
}

struct Ctx<'a> {
    state: &'a State,
    plane: &'a DataPlane,
    session: &'a Arc<Session>,
    receptions: &'a [Reception],
    wall: SystemTime,
    now: Instant,
}

/// Steps 4–7 for an authentic frame, with the session's lock held.
fn accepted(
    ctx: &Ctx<'_>,
    crypto: &SessionCrypto,
    st: &mut DataState,
    verdict: FCntVerdict,
    uplink: protocol::data::Uplink,
) {
    let (state, session) = (ctx.state, ctx.session);
    let dev_eui = session.dev_eui;
    let best = &ctx.receptions[0];

    // 4. A repeat: never delivered again; a confirmed one is ACKed again.
    let FCntVerdict::New { fcnt, .. } = verdict else {
        count(state, UplinkResult::Duplicate);
        if uplink.confirmed {
            let d = downlink(ctx, crypto, st, &uplink, Vec::new(), None);
            if let Some(d) = d {
                ctx.plane.emitter.emit(Emit {
                    record: Some(record(session, st)),
                    downlink: Some(d),
                    ..Emit::default()
                });
            }
        }
        return;
    };

    // 5. MAC commands.
    let cmds = match steps::mac_commands(&uplink) {
        Ok(c) => c,
        Err(r) => return count(state, r),
    };
    if let Err(r) = steps::rekey_gate(session.mac_version().is_1_1(), st.rekey_confirmed, &cmds) {
        return count(state, r);
    }
    st.counters.f_cnt_up = fcnt.wrapping_add(1);
    let mut events = Vec::with_capacity(2);
    if uplink.ack {
        if let Some(p) = st.pending_confirmed.take() {
            let ev = AckEvent {
                kind: "ack".into(),
                dev_eui,
                id: p.id.get(),
                f_cnt_down: p.f_cnt,
                received_at: integration::rfc3339(ctx.wall),
            };
            events.extend(serde_json::to_vec(&ev).ok());
        }
    }
    let radio = UplinkRadio {
        best_snr: best.snr,
        data_rate: best.data_rate,
        gateways: ctx.receptions.len(),
        received_at: ctx.wall,
        is_1_1: session.mac_version().is_1_1(),
    };
    let outcome = mac_handler::handle(&cmds, &radio);
    let mut answers = outcome.answers;
    if outcome.rekey_ind {
        st.rekey_confirmed = true;
    }
    // The replaced session is no longer needed once the new one is in use: at its first uplink
    // (1.0), at its RekeyInd (1.1, which confirms the new security context).
    if state.sessions.is_current(session)
        && (!radio.is_1_1 || st.rekey_confirmed)
        && state.sessions.drop_previous(dev_eui)
    {
        state.store.forget_previous(dev_eui);
    }
    if let Some((power, dr, mask)) = outcome.link_adr_ans {
        if let (true, true, true, Some(req)) = (power, dr, mask, st.adr_requested) {
            st.tx_power = req.tx_power;
            st.snr.clear();
        }
        st.adr_requested = None;
    }
    if let Some(s) = outcome.dev_status {
        st.dev_status = Some(s);
    }
    let cfg = &ctx.plane.config;
    st.snr.push(best.snr);
    if cfg.adr && uplink.adr {
        let cur = LinkSettings {
            data_rate: best.data_rate,
            tx_power: st.tx_power,
        };
        let adr_cfg = AdrConfig {
            installation_margin_db: cfg.adr_installation_margin_db,
        };
        if let Some(next) = adr::decide(&adr_cfg, cur, &st.snr) {
            if st.adr_requested != Some(next) || uplink.adr_ack_req {
                answers.push(adr::link_adr_req(next));
                st.adr_requested = Some(next);
            }
        }
    }
    if cfg.dev_status_interval > 0 {
        st.since_dev_status += 1;
        if st.since_dev_status >= cfg.dev_status_interval {
            st.since_dev_status = 0;
            answers.push(MacCommand::DevStatusReq);
        }
    }

    // The event.
    let (data, data_encrypted, app_s_key) = match &uplink.payload {
        FramePayload::Application { payload, .. } => {
            (Some(integration::b64(&payload.0)), None, None)
        }
        FramePayload::EncryptedApplication { ciphertext, .. } => (
            None,
            Some(integration::b64(ciphertext)),
            session.app_s_key.as_ref().map(|e| e.to_envelope()),
        ),
        FramePayload::None | FramePayload::MacCommands(_) => (None, None, None),
    };
    let ev = UplinkEvent {
        kind: "uplink".into(),
        dev_eui,
        dev_addr: session.dev_addr,
        f_cnt: fcnt,
        f_port: uplink.payload.f_port(),
        confirmed: uplink.confirmed,
        adr: uplink.adr,
        data,
        data_encrypted,
        app_s_key,
        rx: ctx.receptions.iter().map(RxInfo::from).collect(),
        received_at: integration::rfc3339(ctx.wall),
    };
    events.extend(serde_json::to_vec(&ev).ok());
    count(state, UplinkResult::Ok);

    // 6. The downlink.
    let queued = ctx.plane.queue.has(dev_eui);
    let dl = if steps::needs_downlink(&uplink, answers.len(), queued) {
        let app = ctx.plane.queue.pop(dev_eui);
        downlink(ctx, crypto, st, &uplink, answers, app)
    } else {
        None
    };

    // 7. Write-ahead emit, still under the lock.
    ctx.plane.emitter.emit(Emit {
        record: Some(record(session, st)),
        events,
        downlink: dl,
        started: Some(best_started(ctx.receptions)),
    });
}

fn best_started(receptions: &[Reception]) -> Instant {
    receptions
        .iter()
        .map(|r| r.received_at)
        .min()
        .unwrap_or_else(Instant::now)
}

fn record(session: &Session, st: &DataState) -> (protocol::ids::DevEui, CounterRecord) {
    (
        session.dev_eui,
        CounterRecord::of(session, st.counters, st.rekey_confirmed),
    )
}

/// Builds the downlink answering `uplink` (ACK if confirmed, MAC answers, an application
/// payload), takes its counter and chooses its window and gateway. `None` when it cannot go
/// out (counted); a queued payload that could not go is put back.
fn downlink(
    ctx: &Ctx<'_>,
    crypto: &SessionCrypto,
    st: &mut DataState,
    uplink: &protocol::data::Uplink,
    answers: Vec<MacCommand>,
    app: Option<(QueuedDownlink, bool)>,
) -> Option<OutgoingDownlink> {
    let (state, session) = (ctx.state, ctx.session);
    let m = &state.metrics.data;
    let dev_eui = session.dev_eui;
    let put_back = |app: Option<(QueuedDownlink, bool)>| {
        if let Some((d, _)) = app {
            ctx.plane.queue.push_front(dev_eui, d);
        }
    };

    // Window and gateway first: nothing is consumed for a downlink that cannot make it.
    let rx = &session.rx;
    let rx1 = Duration::from_secs(u64::from((rx.rx_delay_s & 0x0f).max(1)));
    let timing = WindowTiming {
        rx1_delay: rx1,
        rx2_delay: rx1 + Duration::from_secs(1),
        margin: Duration::from_millis(state.config.join.scheduling_margin_ms),
    };
    let route = reception::best(ctx.receptions, |r| {
        state.gateways.downlink_addr(r.gateway).is_some()
    })
    .and_then(|gw| Some((gw, state.gateways.downlink_addr(gw.gateway)?)));
    let Some((gw, to)) = route else {
        m.downlinks.with_label_values(&["no_gateway"]).inc();
        put_back(app);
        return None;
    };
    let Some(at) = choose_window(ctx.now, gw.tmst, gw.received_at, &timing) else {
        m.downlinks.with_label_values(&["too_late"]).inc();
        put_back(app);
        return None;
    };

    let mut fopts = mac::encode(protocol::data::Direction::Downlink, &answers).unwrap_or_default();
    let (payload, confirmed, f_pending, app_item) = match app {
        Some((d, more)) => {
            if fopts.len() > protocol::data::MAX_FOPTS_LEN {
                fopts.clear(); // answers are sent again on request; the payload goes now
            }
            (
                FramePayload::Application {
                    f_port: d.f_port,
                    payload: FrmPayload(d.payload.clone()),
                },
                d.confirmed,
                more,
                Some(d),
            )
        }
        None if fopts.len() > protocol::data::MAX_FOPTS_LEN => (
            FramePayload::MacCommands(FrmPayload(std::mem::take(&mut fopts))),
            false,
            false,
            None,
        ),
        None => (
            FramePayload::None,
            false,
            ctx.plane.queue.has(dev_eui),
            None,
        ),
    };
    let is_1_1 = session.mac_version().is_1_1();
    let slot = match steps::downlink_counter(is_1_1, payload.f_port()) {
        DownCounter::Network => &mut st.counters.n_f_cnt_down,
        DownCounter::Application => &mut st.counters.a_f_cnt_down,
    };
    let fcnt = *slot;
    let frame = Downlink {
        confirmed,
        dev_addr: session.dev_addr,
        fcnt,
        adr: ctx.plane.config.adr,
        ack: uplink.confirmed,
        f_pending,
        fopts,
        payload,
    };
    let bytes = match frame.build(crypto, uplink.fcnt) {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(error = %e, "data downlink not built");
            m.downlinks.with_label_values(&["build_failed"]).inc();
            put_back(app_item.map(|d| (d, false)));
            return None;
        }
    };
    *slot = fcnt.wrapping_add(1);
    if let Some(d) = &app_item {
        if d.confirmed {
            // Ids are handed out from 1 (`DataPlane::next_id`).
            st.pending_confirmed =
                NonZeroU64::new(d.id).map(|id| PendingConfirmed { f_cnt: fcnt, id });
        }
    }
    let radio = DownlinkRadio {
        rf_chain: state.config.join.tx_rf_chain,
        rx1_power_dbm: state.config.join.rx1_tx_power_dbm,
        rx2_power_dbm: state.config.join.rx2_tx_power_dbm,
    };
    let txpk = match build_txpk(gw, &at, rx.rx1_dr_offset, &radio, bytes) {
        Ok(t) => t,
        Err(_) => {
            m.downlinks.with_label_values(&["build_failed"]).inc();
            return None;
        }
    };
    let datagram = Packet::PullResp(PullResp {
        token: Token(rand::random()),
        txpk,
    })
    .to_bytes()
    .ok()?;
    state.gateways.on_pull_resp(gw.gateway, ctx.now);
    Some(OutgoingDownlink { datagram, to })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_are_valid_and_inconsistent_windows_are_refused() {
        assert_eq!(DataConfig::default().validate(), Ok(()));
        let c = DataConfig {
            collect_window_ms: 1000,
            ..DataConfig::default()
        };
        assert!(c.validate().unwrap_err().contains("collect_window_ms"));
        let c = DataConfig {
            max_batch: 0,
            ..DataConfig::default()
        };
        assert!(c.validate().is_err());
    }
}
