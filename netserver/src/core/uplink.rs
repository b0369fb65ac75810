//! The data uplink core: one pure, deterministic entry point, [`handle`], from a frame, its
//! receptions and the sessions holding its DevAddr to a [`Decision`]. Everything it needs is
//! an argument: `now` and the wall-clock time, the frame and every gateway's reception of it,
//! each candidate session with its state, the configuration, the gateway registry (downlink
//! routes), the application downlink queue, and an RNG (the PULL_RESP token). It reads no
//! clock, touches no socket and writes no file.
//!
//! Its steps (protocol-notes A.7, A.8; the pure steps of [`crate::core::data`]):
//!
//! 1. per candidate, with its state: authenticate (FCnt inference, MIC 1.0/1.1, replay, gap);
//!    the first that accepts wins, else the most specific refusal ([`Refusal`]);
//! 2. a repeat of the last frame is not delivered again; a confirmed one is ACKed again;
//! 3. MAC commands (FOpts or FPort 0, never both) → answers, ADR, DevStatusReq; a 1.1 session
//!    takes no frame without RekeyInd until a RekeyInd confirmed it;
//! 4. the `ack` and `uplink` events;
//! 5. the downlink (ACK, MAC answers, a queued application payload, FPending), its window and
//!    gateway chosen first (RX1 at `tmst` + RxDelay, else RX2), then its counter taken;
//! 6. the counter record to persist.
//!
//! The shell ([`crate::uplink::path`]) looks the sessions up, hands each one's lock guard in,
//! and with the guard of the accepting session still held (returned in the decision) persists
//! the counters and emits the events and the downlink, so that the emits of a session reach
//! the write-ahead log in counter order.

use std::net::SocketAddr;
use std::num::NonZeroU64;
use std::ops::DerefMut;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use protocol::data::{
    DataFrame, Downlink, FramePayload, FrmPayload, SessionCrypto, Uplink, UplinkMicParams,
};
use protocol::fcnt::FCntVerdict;
use protocol::gwmp::DataRate;
use protocol::ids::{DevEui, GatewayEui};
use protocol::mac::{self, MacCommand};
use rand::RngCore;

use crate::core::adr::{self, AdrConfig, LinkSettings};
use crate::core::airtime::Purpose;
use crate::core::data::{self as steps, Auth, Candidate, DownCounter, Refusal, UplinkResult};
use crate::core::device::{DataState, PendingConfirmed};
use crate::core::mac_handler::{self, UplinkRadio};
use crate::core::reception::Reception;
use crate::core::scheduler::{candidates, Placement, Scheduler, Unplaced};
use crate::core::timing::{Window, WindowTiming};
use crate::gateway::owner::DownlinkRoute;
use crate::gateway::registry::GatewayRegistry;
use crate::gateway::txpk::{build_txpk, max_mac_payload, pull_resp, window_airtime, DownlinkRadio};
use crate::integration::events::{
    b64, rfc3339, AckEvent, LogLine, RxInfo, StatusLine, TxAckLine, UplinkEvent,
};
use crate::ops::config::Config;
use crate::store::counters::CounterRecord;
use crate::store::pending_mac::PendingMacs;
use crate::store::queue::{DownlinkQueue, QueuedDownlink};
use crate::store::session::Session;

/// One frame whose collection window ended, as the core sees it.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    /// The parsed frame.
    pub frame: &'a DataFrame<'a>,
    /// The first copy's reception (its data rate and channel enter the 1.1 MIC).
    pub first: &'a Reception,
    /// Every gateway's reception, best first (at least one).
    pub receptions: &'a [Reception],
    /// Now, on the monotonic clock the receptions' `received_at` use.
    pub now: Instant,
    /// The first copy's wall-clock arrival (event times, DeviceTimeAns).
    pub wall: SystemTime,
}

/// The state the core reads beside the sessions.
#[derive(Debug, Clone, Copy)]
pub struct Env<'a> {
    /// The configuration in force (`[data]`, and `[join]` for the downlink radio settings).
    pub config: &'a Config,
    /// Where each gateway's downlinks go.
    pub gateways: &'a GatewayRegistry,
    /// The application downlinks waiting for their device: the core pops one when it answers,
    /// and puts it back when it cannot go.
    pub queue: &'a DownlinkQueue,
    /// Network-initiated MAC commands waiting for their device (LoRaWAN 1.1 sessions only):
    /// the core takes a due one into the downlink, and puts it back when it cannot go.
    pub pending_mac: &'a PendingMacs,
    /// Each gateway's downlink airtime: a downlink is booked where a gateway can transmit it.
    pub scheduler: &'a Scheduler,
}

/// A downlink to send once its counter is durable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduledDownlink {
    /// The PULL_RESP datagram.
    pub datagram: Vec<u8>,
    /// The gateway that transmits it.
    pub gateway: GatewayEui,
    /// Its PULL_DATA address, or the hand-off address of the instance that holds it
    /// ([`Self::via_owner`]).
    pub to: SocketAddr,
    /// The gateway's latest PULL_DATA is another instance's: the PULL_RESP is handed to it
    /// ([`crate::gateway::handoff`]).
    pub via_owner: bool,
    /// The receive window it is scheduled in.
    pub window: Window,
    /// Its time on air.
    pub airtime: Duration,
    /// The queued application downlink it carries: taken off the queue (a shared one: in the
    /// counters' transaction) when the downlink leaves, put back when it does not.
    pub queued: Option<Box<(DevEui, QueuedDownlink)>>,
    /// The PULL_RESP's token, which the gateway's TX_ACK repeats.
    pub token: [u8; 2],
    /// Its `txack` event, emitted when the gateway acknowledges it (`received_at` empty
    /// until then).
    pub tx_ack: Box<TxAckLine>,
}

/// Why an answer the device needed did not go out (a bounded metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DownlinkFailure {
    /// No gateway that heard the frame has a downlink route (no PULL_DATA yet).
    NoGateway,
    /// Both windows are past (or too close) by now.
    TooLate,
    /// The frame or its `txpk` could not be built.
    BuildFailed,
    /// No gateway that heard the frame has airtime for it in either window.
    NoAirtime,
}

impl DownlinkFailure {
    /// Stable metric label (`netserver_downlinks_total{result}`).
    pub const fn label(self) -> &'static str {
        match self {
            Self::NoGateway => "no_gateway",
            Self::TooLate => "too_late",
            Self::BuildFailed => "build_failed",
            Self::NoAirtime => "no_airtime",
        }
    }
}

/// The decision on one frame.
#[derive(Debug)]
pub enum Decision<'s, G> {
    /// No session accepted the frame; the reason is counted. A frame authentic under a
    /// session but refused for its counter (`replay`, `fcnt_gap`) comes with that device's
    /// `log` event: the operator must see it.
    Dropped(UplinkResult, Option<Vec<u8>>),
    /// A session accepted the frame as authentic.
    Accepted(Accepted<'s, G>),
}

/// What the shell carries out for an authentic frame.
#[derive(Debug)]
pub struct Accepted<'s, G> {
    /// The session that accepted it.
    pub session: &'s Arc<Session>,
    /// Its state's lock guard, held until the shell has emitted.
    pub state: G,
    /// The result to count: `ok`, `duplicate`, or a refusal after authentication
    /// (`malformed`, `session_unconfirmed`).
    pub result: UplinkResult,
    /// The session is in use (a frame accepted under it; 1.1: its RekeyInd seen): the session
    /// it replaced, if any, is no longer needed.
    pub in_use: bool,
    /// JSON event lines (`ack`, `uplink`).
    pub events: Vec<Vec<u8>>,
    /// The counters to persist, before anything of this frame leaves.
    pub record: Option<(DevEui, CounterRecord)>,
    /// The downlink to send once the record is durable.
    pub downlink: Option<ScheduledDownlink>,
    /// Why a downlink the device needed was not scheduled.
    pub downlink_failure: Option<DownlinkFailure>,
}

/// What the accepted-frame steps produce (without the session and its guard).
#[derive(Debug, Default)]
struct Outcome {
    result: Option<UplinkResult>,
    in_use: bool,
    events: Vec<Vec<u8>>,
    persist: bool,
    downlink: Option<ScheduledDownlink>,
    downlink_failure: Option<DownlinkFailure>,
}

impl Outcome {
    fn refused(r: UplinkResult) -> Self {
        Self {
            result: Some(r),
            ..Self::default()
        }
    }
}

/// The entry point: authenticates the frame against each candidate in turn (its state handed
/// in as a lock guard, taken only when the candidate is tried), and decides everything for
/// the first that accepts it. No candidate: `unknown_devaddr`.
pub fn handle<'s, G, R>(
    input: &Input<'_>,
    env: &Env<'_>,
    candidates: impl IntoIterator<Item = (&'s Arc<Session>, G)>,
    rng: &mut R,
) -> Decision<'s, G>
where
    G: DerefMut<Target = DataState>,
    R: RngCore + ?Sized,
{
    let mut refusal = None::<Refusal>;
    // The first session that refused the frame for its counter, and its last counter.
    let mut counter_refusal = None::<(UplinkResult, &'s Arc<Session>, Option<u32>)>;
    let plan = env.config.network.plan_or_default();
    for (session, mut st) in candidates {
        let crypto = session.crypto();
        let mic_params = UplinkMicParams {
            conf_fcnt: st.pending_confirmed.map_or(0, |p| p.f_cnt),
            tx_dr: input.first.data_rate,
            tx_ch: steps::tx_channel(&plan, input.first.frequency_hz),
        };
        let cand = Candidate {
            version: session.mac_version(),
            last_accepted: st.last_accepted(),
            crypto: &crypto,
            mic_params,
        };
        match steps::authenticate(input.frame, &[cand]) {
            Auth::Refused(r) => {
                refusal.get_or_insert_with(Refusal::default).keep(r);
                let counter = matches!(r, UplinkResult::Replay | UplinkResult::FcntGap);
                let kept = counter_refusal.is_some_and(|(k, ..)| k == UplinkResult::Replay);
                if counter && !kept {
                    counter_refusal = Some((r, session, st.last_accepted()));
                }
            }
            Auth::Accepted {
                verdict, uplink, ..
            } => {
                let d = Device {
                    input,
                    env,
                    session,
                    crypto: &crypto,
                };
                let out = d.accepted(&mut st, verdict, &uplink, rng);
                let persist = out.persist.then(|| d.record(&st));
                return Decision::Accepted(Accepted {
                    session,
                    state: st,
                    result: out.result.unwrap_or(UplinkResult::Ok),
                    in_use: out.in_use,
                    events: out.events,
                    record: persist,
                    downlink: out.downlink,
                    downlink_failure: out.downlink_failure,
                });
            }
        }
    }
    let reason = refusal.map_or(UplinkResult::UnknownDevAddr, Refusal::reason);
    let log = counter_refusal
        .filter(|(r, ..)| *r == reason)
        .and_then(|(r, session, last)| counter_log_event(input, session, r, last));
    Decision::Dropped(reason, log)
}

/// The `log` event of a frame authentic under `session` but refused for its counter: a
/// replay (an old counter again: the device reset its counters without rejoining, or someone
/// replays its frames) or, LoRaWAN 1.0.x, a counter past MAX_FCNT_GAP. The device's uplinks
/// are lost until it rejoins (or its counter catches up): the operator must see it.
fn counter_log_event(
    input: &Input<'_>,
    session: &Session,
    r: UplinkResult,
    last: Option<u32>,
) -> Option<Vec<u8>> {
    let fcnt16 = input.frame.fcnt16();
    let (code, description) = if r == UplinkResult::Replay {
        (
            "UPLINK_F_CNT_RESET",
            format!(
                "uplink refused: its frame counter (16 LSB {fcnt16}) is not above the last \
                 accepted one; the device reset its counters without rejoining, or the frame \
                 is replayed"
            ),
        )
    } else {
        (
            "UNKNOWN",
            format!(
                "uplink refused: its frame counter (16 LSB {fcnt16}) is more than \
                 MAX_FCNT_GAP ahead of the last accepted one; the device must rejoin"
            ),
        )
    };
    let mut context = std::collections::BTreeMap::from([
        ("reason".to_owned(), r.label().to_owned()),
        ("fCnt16".to_owned(), fcnt16.to_string()),
        (
            "devAddr".to_owned(),
            format!("{}", session.dev_addr).to_lowercase(),
        ),
    ]);
    if let Some(l) = last {
        context.insert("lastFCnt".to_owned(), l.to_string());
    }
    let ev = LogLine {
        kind: "log".into(),
        dev_eui: session.dev_eui,
        level: "WARNING".into(),
        code: code.into(),
        description,
        context,
        tenant: session.owner.as_deref().cloned(),
        received_at: rfc3339(input.wall),
    };
    serde_json::to_vec(&ev).ok()
}

/// The frame and the session that accepted it.
struct Device<'a> {
    input: &'a Input<'a>,
    env: &'a Env<'a>,
    session: &'a Session,
    crypto: &'a SessionCrypto,
}

impl Device<'_> {
    fn best(&self) -> &Reception {
        &self.input.receptions[0]
    }

    fn is_1_1(&self) -> bool {
        self.session.mac_version().is_1_1()
    }

    /// The device's tenant, for its events.
    fn tenant(&self) -> Option<String> {
        self.session.owner.as_deref().cloned()
    }

    fn record(&self, st: &DataState) -> (DevEui, CounterRecord) {
        (self.session.dev_eui, CounterRecord::of(self.session, st))
    }

    /// Steps 2–5 for an authentic frame.
    fn accepted<R: RngCore + ?Sized>(
        &self,
        st: &mut DataState,
        verdict: FCntVerdict,
        uplink: &Uplink,
        rng: &mut R,
    ) -> Outcome {
        // 2. A repeat: never delivered again; a confirmed one is ACKed again.
        let FCntVerdict::New { fcnt, .. } = verdict else {
            let mut out = Outcome::refused(UplinkResult::Duplicate);
            if uplink.confirmed {
                self.answer(st, uplink, Vec::new(), None, rng, &mut out);
                out.persist = out.downlink.is_some();
            }
            return out;
        };

        // 3. MAC commands.
        let cmds = match steps::mac_commands(uplink) {
            Ok(c) => c,
            Err(r) => return Outcome::refused(r),
        };
        if let Err(r) = steps::rekey_gate(self.is_1_1(), st.rekey_confirmed, &cmds) {
            return Outcome::refused(r);
        }
        st.counters.f_cnt_up = fcnt.wrapping_add(1);
        let mut out = Outcome {
            persist: true,
            events: Vec::with_capacity(2),
            ..Outcome::default()
        };
        if uplink.ack {
            if let Some(p) = st.pending_confirmed.take() {
                out.events.extend(self.ack_event(p));
            }
        }
        let mut status = None;
        let mut answers = self.mac_answers(st, uplink, &cmds, &mut status);
        out.in_use = !self.is_1_1() || st.rekey_confirmed;
        // A forced rejoin or rejoin parameters, once the session is confirmed (1.1 only).
        let forced = (self.is_1_1() && st.rekey_confirmed)
            .then(|| {
                let now_ms = protocol::time::unix_ms(self.input.wall);
                self.env.pending_mac.take_due(self.session.dev_eui, now_ms)
            })
            .flatten();
        answers.extend(forced);

        // 4. The events.
        out.events.extend(self.uplink_event(uplink, fcnt));
        out.events.extend(status.and_then(|s| self.status_event(s)));

        // 5. The downlink.
        let queued = self.env.queue.has(self.session.dev_eui);
        if steps::needs_downlink(uplink, answers.len(), queued) {
            let app = self.env.queue.pop(self.session.dev_eui);
            self.answer(st, uplink, answers, app, rng, &mut out);
        }
        if let (Some(cmd), None) = (forced, &out.downlink) {
            self.env.pending_mac.put_back(self.session.dev_eui, cmd);
        }
        out
    }

    /// The MAC answers and the state they change: RekeyInd, LinkADRAns, DevStatusAns, the SNR
    /// history, the ADR decision and the periodic DevStatusReq.
    fn mac_answers(
        &self,
        st: &mut DataState,
        uplink: &Uplink,
        cmds: &[MacCommand],
        status: &mut Option<(u8, i8)>,
    ) -> Vec<MacCommand> {
        let best = self.best();
        let radio = UplinkRadio {
            best_snr: best.snr,
            data_rate: best.data_rate,
            region: self.env.config.network.region,
            gateways: self.input.receptions.len(),
            received_at: self.input.wall,
            is_1_1: self.is_1_1(),
        };
        let outcome = mac_handler::handle(cmds, &radio);
        let mut answers = outcome.answers;
        if outcome.rekey_ind {
            st.rekey_confirmed = true;
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
            *status = Some(s);
        }
        let cfg = &self.env.config.data;
        st.snr.push(best.snr);
        if cfg.adr && uplink.adr {
            let cur = LinkSettings {
                data_rate: best.data_rate,
                tx_power: st.tx_power,
            };
            let adr_cfg = AdrConfig {
                installation_margin_db: cfg.adr_installation_margin_db,
            };
            let network = &self.env.config.network;
            if let Some(next) = adr::decide(&adr_cfg, network.region, cur, &st.snr) {
                if st.adr_requested != Some(next) || uplink.adr_ack_req {
                    answers.extend(adr::link_adr_req(next, &network.plan_or_default()));
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
        answers
    }

    fn ack_event(&self, p: PendingConfirmed) -> Option<Vec<u8>> {
        let ev = AckEvent {
            kind: "ack".into(),
            dev_eui: self.session.dev_eui,
            id: p.id.get(),
            f_cnt_down: p.f_cnt,
            tenant: self.tenant(),
            received_at: rfc3339(self.input.wall),
        };
        serde_json::to_vec(&ev).ok()
    }

    /// The `log` event of a queued downlink that could not go in this uplink's windows.
    fn downlink_log_event(&self, f: DownlinkFailure, id: u64) -> Option<Vec<u8>> {
        let ev = LogLine {
            kind: "log".into(),
            dev_eui: self.session.dev_eui,
            level: "WARNING".into(),
            code: "DOWNLINK_GATEWAY".into(),
            description: format!(
                "queued downlink {id} could not be scheduled ({}); it stays queued for the next uplink",
                f.label()
            ),
            context: [("queueItemId".to_owned(), id.to_string())].into(),
            tenant: self.tenant(),
            received_at: rfc3339(self.input.wall),
        };
        serde_json::to_vec(&ev).ok()
    }

    /// The `status` event of a DevStatusAns (battery, margin).
    fn status_event(&self, (battery, margin): (u8, i8)) -> Option<Vec<u8>> {
        let ev = StatusLine {
            kind: "status".into(),
            dev_eui: self.session.dev_eui,
            battery,
            margin,
            tenant: self.tenant(),
            received_at: rfc3339(self.input.wall),
        };
        serde_json::to_vec(&ev).ok()
    }

    fn uplink_event(&self, uplink: &Uplink, fcnt: u32) -> Option<Vec<u8>> {
        let (data, data_encrypted, app_s_key) = match &uplink.payload {
            FramePayload::Application { payload, .. } => (Some(b64(&payload.0)), None, None),
            FramePayload::EncryptedApplication { ciphertext, .. } => (
                None,
                Some(b64(ciphertext)),
                self.session.app_s_key.as_ref().map(|e| e.to_envelope()),
            ),
            FramePayload::None | FramePayload::MacCommands(_) => (None, None, None),
        };
        let ev = UplinkEvent {
            kind: "uplink".into(),
            dev_eui: self.session.dev_eui,
            dev_addr: self.session.dev_addr,
            f_cnt: fcnt,
            f_port: uplink.payload.f_port(),
            confirmed: uplink.confirmed,
            adr: uplink.adr,
            data,
            data_encrypted,
            app_s_key,
            rx: self.input.receptions.iter().map(RxInfo::from).collect(),
            tenant: self.tenant(),
            received_at: rfc3339(self.input.wall),
        };
        serde_json::to_vec(&ev).ok()
    }

    /// Schedules the downlink answering `uplink` into `out`, or says why it cannot go; a
    /// queued payload that could not go is put back.
    fn answer<R: RngCore + ?Sized>(
        &self,
        st: &mut DataState,
        uplink: &Uplink,
        answers: Vec<MacCommand>,
        app: Option<(QueuedDownlink, bool)>,
        rng: &mut R,
        out: &mut Outcome,
    ) {
        let put_back = |d: QueuedDownlink| self.env.queue.push_front(self.session.dev_eui, d);
        match self.downlink(st, uplink, answers, app, rng) {
            Ok(d) => out.downlink = Some(d),
            Err((failure, app)) => {
                if let Some(d) = app {
                    if let Some(f) = failure {
                        // The application's payload waits for the next uplink: tell it why.
                        out.events.extend(self.downlink_log_event(f, d.id));
                    }
                    put_back(d);
                }
                out.downlink_failure = failure;
            }
        }
    }

    /// Where and when the downlink goes: the first window still reachable (RX1 first) on the
    /// best gateway with a route that has airtime for `len_of(window)` bytes there, booked.
    /// Chosen before anything is consumed.
    fn route(
        &self,
        len_of: impl Fn(Window) -> usize,
    ) -> Result<(&Reception, DownlinkRoute, Placement), DownlinkFailure> {
        let gateways = self.env.gateways;
        let rx = &self.session.rx;
        let rx1 = Duration::from_secs(u64::from((rx.rx_delay_s & 0x0f).max(1)));
        let timing = WindowTiming {
            rx1_delay: rx1,
            rx2_delay: rx1 + Duration::from_secs(1),
            margin: Duration::from_millis(self.env.config.join.scheduling_margin_ms),
        };
        let region = self.env.config.network.region;
        let now = self.input.now;
        let placed = candidates(
            now,
            self.input.receptions,
            &timing,
            |r| r.received_at,
            |r| gateways.downlink_route(r.gateway, now).is_some(),
            |r, w| window_airtime(region, r, w, rx, len_of(w)),
        )
        .and_then(|c| self.env.scheduler.place(now, Purpose::Data, &c))
        .map_err(|u| match u {
            Unplaced::NoGateway => DownlinkFailure::NoGateway,
            Unplaced::TooLate => DownlinkFailure::TooLate,
            Unplaced::Radio => DownlinkFailure::BuildFailed,
            Unplaced::Airtime(_) => DownlinkFailure::NoAirtime,
        })?;
        let gw = self
            .input
            .receptions
            .iter()
            .find(|r| r.gateway == placed.candidate.gateway)
            .ok_or(DownlinkFailure::NoGateway)?;
        let to = gateways
            .downlink_route(gw.gateway, now)
            .ok_or(DownlinkFailure::NoGateway)?;
        Ok((gw, to, placed))
    }

    /// The PHYPayload length of the downlink in each window: with the queued payload where
    /// RP002's M of the window's data rate allows it, else without.
    fn len_of<'x>(
        &'x self,
        uplink: &'x Uplink,
        answers: &'x [MacCommand],
        app: Option<&'x (QueuedDownlink, bool)>,
    ) -> impl Fn(Window) -> usize + 'x {
        // MHDR and MIC around the MACPayload.
        let phy = |f: &Downlink| 1 + mac_payload_len(f) + 4;
        let full = phy(&self.frame(uplink, answers.to_vec(), app.cloned()).0);
        let bare = phy(&self.frame(uplink, answers.to_vec(), None).0);
        let region = self.env.config.network.region;
        move |w| {
            let max_m = max_mac_payload(region, self.best(), w, &self.session.rx);
            match max_m {
                Ok(m) if full - 5 <= m => full,
                _ => bare,
            }
        }
    }

    /// Builds the downlink (ACK if confirmed, MAC answers, an application payload), takes its
    /// counter. On failure, the queued payload to put back (if it was not sent) and the
    /// failure to count (`None`: not counted, as when the PULL_RESP cannot be encoded).
    #[allow(clippy::type_complexity)]
    fn downlink<R: RngCore + ?Sized>(
        &self,
        st: &mut DataState,
        uplink: &Uplink,
        answers: Vec<MacCommand>,
        app: Option<(QueuedDownlink, bool)>,
        rng: &mut R,
    ) -> Result<ScheduledDownlink, (Option<DownlinkFailure>, Option<QueuedDownlink>)> {
        let routed = self.route(self.len_of(uplink, &answers, app.as_ref()));
        let (gw, to, placed) = match routed {
            Ok(r) => r,
            Err(f) => return Err((Some(f), app.map(|(d, _)| d))),
        };
        let built = self.build(st, uplink, answers, app, gw, &placed, rng);
        match built {
            Ok((datagram, token, queued, tx_ack)) => {
                let tx_ack = Box::new(tx_ack);
                self.env.scheduler.set_token(&placed, token);
                Ok(ScheduledDownlink {
                    datagram,
                    gateway: gw.gateway,
                    to: to.addr(),
                    via_owner: to.via_owner(),
                    window: placed.candidate.at.window,
                    airtime: placed.candidate.airtime,
                    queued: queued.map(|q| Box::new((self.session.dev_eui, q))),
                    token,
                    tx_ack,
                })
            }
            Err(e) => {
                self.env.scheduler.release(&placed);
                Err(e)
            }
        }
    }

    /// The PULL_RESP of the downlink placed at `placed` through `gw`, its token and its
    /// `txack` event; the counter is taken once the frame is built.
    #[allow(clippy::type_complexity, clippy::too_many_arguments)]
    fn build<R: RngCore + ?Sized>(
        &self,
        st: &mut DataState,
        uplink: &Uplink,
        answers: Vec<MacCommand>,
        app: Option<(QueuedDownlink, bool)>,
        gw: &Reception,
        placed: &Placement,
        rng: &mut R,
    ) -> Result<
        (Vec<u8>, [u8; 2], Option<QueuedDownlink>, TxAckLine),
        (Option<DownlinkFailure>, Option<QueuedDownlink>),
    > {
        let at = placed.candidate.at;
        let dev_eui = self.session.dev_eui;
        let region = self.env.config.network.region;
        let Ok(max_m) = max_mac_payload(region, gw, at.window, &self.session.rx) else {
            return Err((Some(DownlinkFailure::BuildFailed), app.map(|(d, _)| d)));
        };
        let (frame, app_item) = self.frame(uplink, answers.clone(), app);
        // A queued payload too long for this window's data rate (RP002's M) waits for a faster
        // one; the ACK and MAC answers go without it.
        let (frame, app_item) = match app_item {
            Some(d) if mac_payload_len(&frame) > max_m => {
                self.env.queue.push_front(dev_eui, d);
                let (mut f, _) = self.frame(uplink, answers, None);
                f.f_pending = true;
                (f, None)
            }
            other => (frame, other),
        };
        if mac_payload_len(&frame) > max_m {
            return Err((Some(DownlinkFailure::BuildFailed), app_item));
        }
        let slot = match steps::downlink_counter(self.is_1_1(), frame.payload.f_port()) {
            DownCounter::Network => &mut st.counters.n_f_cnt_down,
            DownCounter::Application => &mut st.counters.a_f_cnt_down,
        };
        let fcnt = *slot;
        let frame = Downlink { fcnt, ..frame };
        let bytes = match frame.build(self.crypto, uplink.fcnt) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, %dev_eui, "data downlink not built");
                return Err((Some(DownlinkFailure::BuildFailed), app_item));
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
        let radio = DownlinkRadio::of(&self.env.config.join, self.env.config.network.region);
        let txpk = build_txpk(gw, &at, &self.session.rx, &radio, bytes)
            .map_err(|_| (Some(DownlinkFailure::BuildFailed), None))?;
        let mut token = [0u8; 2];
        rng.fill_bytes(&mut token);
        let (spreading_factor, bandwidth_khz) = match txpk.datr {
            DataRate::Lora {
                spreading_factor,
                bandwidth_khz,
            } => (Some(spreading_factor), Some(bandwidth_khz)),
            DataRate::Fsk { .. } => (None, None),
        };
        let rx1_delay = self.session.rx.rx_delay_s.max(1);
        let tx_ack = TxAckLine {
            kind: "txack".into(),
            dev_eui,
            downlink_id: (fcnt & 0xFFFF) << 16 | u32::from(u16::from_be_bytes(token)),
            queue_item_id: app_item.as_ref().map(|d| d.id),
            f_cnt_down: fcnt,
            gateway: gw.gateway,
            frequency: txpk.freq_hz,
            power: txpk.powe,
            spreading_factor,
            bandwidth_khz,
            delay_s: match at.window {
                Window::Rx1 => rx1_delay,
                Window::Rx2 => rx1_delay + 1,
            },
            tenant: self.tenant(),
            received_at: String::new(),
        };
        let datagram = pull_resp(token, txpk).map_err(|_| (None, None))?;
        Ok((datagram, token, app_item, tx_ack))
    }

    /// The downlink frame (its counter still 0): FOpts with the MAC answers, or the answers as
    /// an FPort 0 payload when they do not fit; a queued payload goes before answers that do
    /// not fit in FOpts (they are sent again on request); FPending while more are queued.
    fn frame(
        &self,
        uplink: &Uplink,
        answers: Vec<MacCommand>,
        app: Option<(QueuedDownlink, bool)>,
    ) -> (Downlink, Option<QueuedDownlink>) {
        let mut fopts =
            mac::encode(protocol::data::Direction::Downlink, &answers).unwrap_or_default();
        let too_long = fopts.len() > protocol::data::MAX_FOPTS_LEN;
        let (payload, confirmed, f_pending, app_item) = match app {
            Some((d, more)) => {
                if too_long {
                    fopts.clear();
                }
                let payload = FramePayload::Application {
                    f_port: d.f_port,
                    payload: FrmPayload(d.payload.clone()),
                };
                (payload, d.confirmed, more, Some(d))
            }
            None if too_long => (
                FramePayload::MacCommands(FrmPayload(std::mem::take(&mut fopts))),
                false,
                false,
                None,
            ),
            None => (
                FramePayload::None,
                false,
                self.env.queue.has(self.session.dev_eui),
                None,
            ),
        };
        let frame = Downlink {
            confirmed,
            dev_addr: self.session.dev_addr,
            fcnt: 0,
            adr: self.env.config.data.adr,
            ack: uplink.confirmed,
            f_pending,
            fopts,
            payload,
        };
        (frame, app_item)
    }
}

/// The MACPayload length of `frame` (FHDR, FPort, FRMPayload), what RP002's M limits.
fn mac_payload_len(frame: &Downlink) -> usize {
    let port_and_payload = match &frame.payload {
        FramePayload::None => 0,
        FramePayload::MacCommands(p) => 1 + p.0.len(),
        FramePayload::Application { payload, .. } => 1 + payload.0.len(),
        FramePayload::EncryptedApplication { ciphertext, .. } => 1 + ciphertext.len(),
    };
    7 + frame.fopts.len() + port_and_payload
}
