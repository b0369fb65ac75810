//! The simulation core, without sockets or clocks: the fleet, the timer heap, the virtual
//! gateways' GWMP logic and the scenario driver. The socket loop ([`crate::net`]) feeds it the
//! time, the datagrams that arrive on each gateway's socket and the network server's application
//! events, and sends what it queues in [`Engine::take_outgoing`].
//!
//! # Time model
//! Run time is µs since the start, read from a monotonic clock. A device "transmits" when its
//! timer fires: the PUSH_DATA goes out at once, with `tmst` = the gateway's counter at that moment
//! (end of reception). The network server answers a Join-request with a PULL_RESP whose `tmst` is
//! `uplink tmst + 5 s` (RX1) or `+ 6 s` (RX2), and usually sends it well before that moment. The
//! gateway accepts it if it arrives before its `tmst` (else TX_ACK `TOO_LATE`), and the device
//! receives it if that `tmst` is exactly its RX1 or RX2 time; the device then behaves as if it had
//! received the frame at that window (its next uplink is scheduled from then). Latency is measured
//! in wall time from the Join-request (or confirmed uplink) sent to the PULL_RESP received, so a
//! storm does not wait five seconds per device.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

use protocol::ids::{DevAddr, DevEui, GatewayEui};
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::{ChaCha20Rng, ChaCha8Rng};

use crate::air::{Air, Hearing};
use crate::device::{
    Behaviour, Effect, Note, Phase, TxKind, Window, JOIN_ACCEPT_DELAY1_US, JOIN_ACCEPT_DELAY2_US,
};
use crate::fleet::Fleet;
use crate::gateway::{self, Forwarder, Gateway, Reception};
use crate::radio::bound::{self, Storm};
use crate::radio::transmitter::Refusal;
use crate::radio::RadioModel;
use crate::report::{DataRateStorm, Stats, TimeSeries};
use crate::scenario::{Scenario, Traffic};
use crate::sched::{Micros, Scheduler, TimerKind};
use protocol::gwmp::{Packet, TxPk, TxTiming};

/// How long a steady run waits after `--duration` for frames in flight to finish.
const DRAIN_US: Micros = 10_000_000;
/// How long a power-restore run waits for the first join phase before cutting the power anyway.
const FIRST_JOIN_GRACE_US: Micros = 60_000_000;
/// Outage length in power-restore.
const OUTAGE_US: Micros = 1_000_000;
/// Devices boot within this long after power returns.
const RESTORE_SPREAD_US: Micros = 1_000_000;

/// A fast hasher for the engine's internal maps, whose keys (times, device indices) never come
/// from the network.
#[derive(Default, Clone, Copy)]
pub struct FastHasher(u64);

impl Hasher for FastHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(0x517C_C1B7_2722_0A95);
    }
    fn write_u32(&mut self, v: u32) {
        self.write_u64(u64::from(v));
    }
}

type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FastHasher>>;

/// Devices waiting for a Join-accept, by the time their Join-request went out.
#[derive(Debug, Default)]
struct PendingJoins {
    one: FastMap<Micros, u32>,
    more: FastMap<Micros, Vec<u32>>,
}

impl PendingJoins {
    fn insert(&mut self, t: Micros, dev: u32) {
        if let Some(&first) = self.one.get(&t) {
            if first != dev {
                self.more.entry(t).or_default().push(dev);
            }
        } else {
            self.one.insert(t, dev);
        }
    }
    fn remove(&mut self, t: Micros, dev: u32) {
        if self.one.get(&t) == Some(&dev) {
            match self.more.get_mut(&t).and_then(|v| v.pop()) {
                Some(next) => {
                    self.one.insert(t, next);
                }
                None => {
                    self.one.remove(&t);
                }
            }
        } else if let Some(v) = self.more.get_mut(&t) {
            if let Some(i) = v.iter().position(|&d| d == dev) {
                v.swap_remove(i);
            }
        }
        if self.more.get(&t).is_some_and(|v| v.is_empty()) {
            self.more.remove(&t);
        }
    }
    fn at(&self, t: Micros) -> Vec<u32> {
        let mut v: Vec<u32> = self.one.get(&t).copied().into_iter().collect();
        if let Some(m) = self.more.get(&t) {
            v.extend_from_slice(m);
        }
        v.sort_unstable();
        v
    }
    /// Every pending device whose request went out in `from..=to`, in (time, device) order.
    fn between(&self, from: Micros, to: Micros) -> Vec<u32> {
        let mut v: Vec<(Micros, u32)> = self
            .one
            .iter()
            .filter(|(t, _)| (from..=to).contains(*t))
            .map(|(&t, &d)| (t, d))
            .collect();
        for (&t, m) in &self.more {
            if (from..=to).contains(&t) {
                v.extend(m.iter().map(|&d| (t, d)));
            }
        }
        v.sort_unstable();
        v.into_iter().map(|(_, d)| d).collect()
    }
    fn clear(&mut self) {
        self.one.clear();
        self.more.clear();
    }
}

/// Where the run is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Joining (and, in steady, reporting).
    Running,
    /// power-restore: the fleet is off.
    Outage {
        /// When power returns.
        until: Micros,
    },
    /// power-restore: rejoining after the outage.
    Restoring,
    /// steady: past `--duration`, waiting for frames in flight.
    Draining {
        /// Give up waiting at.
        until: Micros,
    },
    /// Finished.
    Done,
}

/// A datagram to send from one gateway's socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outgoing {
    /// Gateway index.
    pub gateway: u16,
    /// Bytes.
    pub bytes: Vec<u8>,
}

/// The simulation core.
#[derive(Debug)]
pub struct Engine {
    seed: u64,
    seed_bytes: [u8; 32],
    traffic: Traffic,
    behaviour: Behaviour,
    /// The fleet.
    pub fleet: Fleet,
    gateways: Vec<Gateway>,
    sched: Scheduler,
    pending_joins: PendingJoins,
    by_addr: HashMap<DevAddr, u32>,
    by_eui: HashMap<DevEui, u32>,
    /// `rekey`: the forced rejoins were asked for.
    rekey_requested: bool,
    /// Devices that took a new session from a rejoin.
    rejoined: HashSet<u32>,
    /// (device, DevAddr or 0, FCnt) of the uplinks delivered.
    delivered: HashSet<(u32, u32, u32)>,
    event_sink: bool,
    /// Counters.
    pub stats: Stats,
    /// Per-second counters.
    pub series: TimeSeries,
    out: Vec<Outgoing>,
    fx: Vec<Effect>,
    stage: Stage,
    joined: u64,
    frames_in_flight: u64,
    next_keepalive: Micros,
    last_stamp: Micros,
    run_deadline: Micros,
    stage_started: Micros,
    /// DevNonce write-ahead records not yet taken by the shell, when enabled.
    nonce_log: Option<NonceRecords>,
    /// The modelled radio (`--radio realistic`), when enabled.
    air: Option<Box<Air>>,
    /// How the gateways forward what they receive.
    forwarder: Forwarder,
    /// Per gateway, whether its receive FIFO holds a Join-request.
    join_in_fifo: Vec<bool>,
    /// Join-requests per device in the current join phase.
    join_attempts: Vec<u16>,
    /// When each device first joined in the current join phase, µs from its start
    /// (`u64::MAX`: not yet); [`Stats::joined_after_us`] is drawn from it.
    joined_after: Vec<u64>,
    /// When the last device of the current join phase boots, from the phase's start.
    last_boot: Micros,
    /// The longest Join-accept a gateway was asked to send (for the airtime bound).
    accept_len: usize,
    /// Per gateway, the RX1 and RX2 sub-bands' airtime already in the duty-cycle window when
    /// the current join phase began, and when the earliest of it leaves the window (for the
    /// airtime bound, [`bound::Prior`]).
    prior_airtime: (Vec<(Micros, Micros)>, Micros),
}

/// The Join-accept length the airtime bound assumes before any was seen: 17 bytes and a CFList.
const DEFAULT_ACCEPT_LEN: usize = 33;

/// Nonce-state changes for the DevNonce write-ahead log ([`crate::nonce_log`]).
#[derive(Debug, Default)]
pub struct NonceRecords {
    /// (DevEUI, the device's nonce state after the change), in order.
    pub records: Vec<(DevEui, crate::manifest::NonceState)>,
    /// Whether a datagram queued for [`Engine::take_outgoing`] carries a Join-request, whose
    /// DevNonce was recorded now or earlier: every record taken so far must then be durable
    /// before those datagrams are sent. (A gateway may forward a Join-request well after the
    /// device sent it: at the end of its time on air, or at its forwarder's next read.)
    pub before_send: bool,
}

/// Run settings the engine needs.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Traffic seed.
    pub seed: u64,
    /// Scenario and traffic shape.
    pub traffic: Traffic,
    /// Number of virtual gateways.
    pub gateways: u16,
    /// Whether an event sink counts deliveries.
    pub event_sink: bool,
    /// Whether `--duration` was given (storm and power-restore otherwise run until done).
    pub duration_given: bool,
    /// How the gateways' packet forwarders batch what they receive into PUSH_DATAs.
    pub forwarder: Forwarder,
}

impl Engine {
    /// Builds the engine; nothing happens until [`Engine::start`].
    pub fn new(cfg: EngineConfig, fleet: Fleet) -> Self {
        let mut seed_bytes = [0u8; 32];
        ChaCha20Rng::seed_from_u64(cfg.seed).fill_bytes(&mut seed_bytes);
        let mut grng = ChaCha20Rng::seed_from_u64(cfg.seed ^ 0x6A7E_3A75_0000_0001);
        let gateways = (0..cfg.gateways.max(1))
            .map(|i| {
                let eui = GatewayEui::new(
                    0x5349_4D00_0000_0000 | (u64::from(grng.gen::<u16>()) << 16) | u64::from(i),
                );
                Gateway::new(eui, grng.gen(), grng.gen())
            })
            .collect();
        let t = &cfg.traffic;
        let behaviour = Behaviour {
            uplinks: t.scenario.reports(),
            uplink_interval_us: t.uplink_interval_us,
            confirmed_ratio: t.confirmed_ratio,
            payload_size: t.payload_size,
            data_rate: t.data_rate,
            radio: t.radio,
        };
        let run_deadline = if cfg.duration_given || t.scenario.reports() {
            t.duration_us
        } else {
            Micros::MAX
        };
        let by_eui = fleet
            .devices
            .iter()
            .enumerate()
            .map(|(i, d)| (d.id.dev_eui, i as u32))
            .collect();
        Self {
            seed: cfg.seed,
            seed_bytes,
            traffic: cfg.traffic,
            behaviour,
            sched: Scheduler::with_capacity(fleet.len() * 2),
            fleet,
            gateways,
            pending_joins: PendingJoins::default(),
            by_addr: HashMap::new(),
            by_eui,
            rekey_requested: false,
            rejoined: HashSet::new(),
            delivered: HashSet::new(),
            event_sink: cfg.event_sink,
            stats: Stats::default(),
            series: TimeSeries::default(),
            out: Vec::new(),
            fx: Vec::new(),
            stage: Stage::Running,
            joined: 0,
            frames_in_flight: 0,
            next_keepalive: 0,
            last_stamp: 0,
            run_deadline,
            stage_started: 0,
            nonce_log: None,
            air: None,
            forwarder: cfg.forwarder,
            join_in_fifo: vec![false; usize::from(cfg.gateways.max(1))],
            join_attempts: Vec::new(),
            joined_after: Vec::new(),
            last_boot: 0,
            accept_len: 0,
            prior_airtime: (Vec::new(), 0),
        }
    }

    /// Models the radio (`--radio realistic`, `--city`): gateways transmit one frame at a time
    /// within their duty cycle and answer TX_ACK errors otherwise, uplinks collide, and in a
    /// city each meter reaches the gateways its link budget allows, at the data rate its link
    /// allows. Call before [`Engine::start`].
    pub fn enable_radio(&mut self, model: RadioModel) {
        let plan = self.traffic.radio;
        let air = Air::new(
            model,
            plan.region(),
            self.gateways.len() as u16,
            self.fleet.len(),
            self.seed,
        );
        for (i, d) in self.fleet.devices.iter_mut().enumerate() {
            if let Some(dr) = air.city_data_rate(i, &plan) {
                d.set_data_rate(dr);
            }
            d.alternate_join_data_rate();
            d.back_off_joins();
        }
        self.air = Some(Box::new(air));
    }

    /// Makes the engine record every nonce-state change (a DevNonce used, a JoinNonce accepted)
    /// for [`Engine::take_nonce_records`].
    pub fn enable_nonce_log(&mut self) {
        self.nonce_log = Some(NonceRecords::default());
    }

    /// The nonce-state changes since the last call. The shell must make them durable before it
    /// sends the datagrams queued so far when `before_send` is set.
    pub fn take_nonce_records(&mut self) -> NonceRecords {
        match &mut self.nonce_log {
            Some(l) => std::mem::take(l),
            None => NonceRecords::default(),
        }
    }

    fn log_nonces(&mut self, dev: u32) {
        if let Some(l) = &mut self.nonce_log {
            let d = &self.fleet.devices[dev as usize];
            l.records.push((d.id.dev_eui, d.nonces));
        }
    }

    /// A datagram carrying a Join-request is queued: the records must be durable first.
    fn join_request_queued(&mut self) {
        if let Some(l) = &mut self.nonce_log {
            l.before_send = true;
        }
    }

    /// The gateways (EUI and clock).
    pub fn gateways(&self) -> &[Gateway] {
        &self.gateways
    }

    /// `rekey`: true once, when the whole fleet has joined, for the shell to ask the network
    /// server to force the rejoins.
    pub fn rekey_due(&mut self) -> bool {
        let due = self.traffic.scenario == Scenario::Rekey
            && !self.rekey_requested
            && self.stage == Stage::Running
            && self.joined == self.fleet.len() as u64;
        self.rekey_requested |= due;
        due
    }

    /// The run's stage.
    pub fn stage(&self) -> Stage {
        self.stage
    }

    /// Devices holding a session.
    pub fn joined(&self) -> u64 {
        self.joined
    }

    /// The traffic seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Powers the fleet on at `now`: every device boots at a random moment in the join window.
    pub fn start(&mut self, now: Micros) {
        self.power_on_all(now, self.traffic.join_window_us.max(1));
        self.keepalive(now);
    }

    /// Powers every device on at `now`, each booting within `spread`: a new join phase.
    fn power_on_all(&mut self, now: Micros, spread: Micros) {
        self.prior_airtime = self.airtime_spent(now);
        self.stage_started = now;
        self.join_attempts = vec![0; self.fleet.len()];
        self.joined_after = vec![u64::MAX; self.fleet.len()];
        self.last_boot = 0;
        for i in 0..self.fleet.len() {
            let d = &mut self.fleet.devices[i];
            let mut rng = d.rng(&self.seed_bytes, i as u32);
            let boot = rng.gen_range(0..spread);
            self.last_boot = self.last_boot.max(boot);
            d.power_on(now, boot, &mut self.fx);
            self.apply(i as u32, now, &mut rng);
        }
    }

    /// With the radio modelled, what each gateway has spent of its RX1 and RX2 sub-bands'
    /// budgets by `now` (a new join phase), and when the earliest of it, sent no sooner than the
    /// previous phase began, leaves the duty-cycle window.
    fn airtime_spent(&self, now: Micros) -> (Vec<(Micros, Micros)>, Micros) {
        let Some(air) = &self.air else {
            return (Vec::new(), 0);
        };
        let (rx1, rx2) = bound::bands(self.traffic.radio.region(), self.join_freq_hz());
        let used = (0..self.gateways.len() as u16)
            .map(|g| (air.airtime_used(g, rx1, now), air.airtime_used(g, rx2, now)))
            .collect();
        let since = now.saturating_sub(self.stage_started);
        let leaves = air.model().duty_cycle_window_us.saturating_sub(since);
        (used, leaves)
    }

    /// The frequency of the first boot channel: the sub-band a join's RX1 is counted on.
    fn join_freq_hz(&self) -> u32 {
        self.traffic
            .radio
            .channels
            .enabled()
            .next()
            .map_or(0, |(_, c)| c.frequency_hz)
    }

    /// When the engine next needs [`Engine::poll`] (a timer, a keepalive or a stage change).
    pub fn next_wakeup(&self) -> Micros {
        let mut t = self.next_keepalive;
        if let Some(d) = self.sched.next_due() {
            t = t.min(d);
        }
        match self.stage {
            Stage::Outage { until } => t.min(until),
            Stage::Draining { until } => t.min(until),
            _ => t.min(self.run_deadline),
        }
    }

    /// Fires the timers due at `now` (at most `budget` of them, so that the output queue stays
    /// small when the simulator runs behind), sends keepalives, and advances the scenario.
    /// Returns whether due timers remain.
    pub fn poll_budget(&mut self, now: Micros, budget: usize) -> bool {
        if now >= self.next_keepalive {
            self.keepalive(now);
        }
        let mut fired = 0;
        while fired < budget {
            let Some(t) = self.sched.pop_due(now) else {
                break;
            };
            fired += 1;
            if self.stage == Stage::Done {
                break;
            }
            let i = t.device as usize;
            match t.kind {
                TimerKind::UplinkEnd => {
                    self.uplink_end(t.device);
                    continue;
                }
                TimerKind::GatewayFetch => {
                    self.fetch(t.device as u16);
                    continue;
                }
                _ => {}
            }
            let draining = matches!(self.stage, Stage::Draining { .. });
            if draining && t.kind != TimerKind::RxClosed {
                continue;
            }
            // Every event gets its own µs: no two transmissions share a `tmst`, as no two frames
            // end in the same µs at one gateway, so a PULL_RESP's `tmst` names one device.
            let at = now.max(t.due).max(self.last_stamp + 1);
            self.last_stamp = at;
            let d = &mut self.fleet.devices[i];
            let mut rng = d.rng(&self.seed_bytes, t.device);
            d.on_timer_at(t.kind, t.due, at, &self.behaviour, &mut rng, &mut self.fx);
            self.apply(t.device, at, &mut rng);
        }
        self.advance_stage(now);
        self.sched.next_due().is_some_and(|d| d <= now) && self.stage != Stage::Done
    }

    /// Fires every timer due at `now`, sends keepalives, and advances the scenario.
    pub fn poll(&mut self, now: Micros) {
        while self.poll_budget(now, usize::MAX) {}
    }

    fn advance_stage(&mut self, now: Micros) {
        let all = self.fleet.len() as u64;
        match self.stage {
            Stage::Running => match self.traffic.scenario {
                Scenario::Storm => {
                    if self.joined == all || now >= self.run_deadline {
                        self.stage = Stage::Done;
                    }
                }
                Scenario::Steady | Scenario::Rekey => {
                    if now >= self.run_deadline {
                        self.stage = Stage::Draining {
                            until: now + DRAIN_US,
                        };
                    }
                }
                Scenario::PowerRestore => {
                    let first_deadline = self.traffic.join_window_us + FIRST_JOIN_GRACE_US;
                    if now >= self.run_deadline {
                        self.stage = Stage::Done;
                    } else if self.joined == all || now >= first_deadline {
                        for d in &mut self.fleet.devices {
                            if let Some(s) = d.session() {
                                self.by_addr.remove(&s.dev_addr);
                            }
                            d.power_off();
                        }
                        self.pending_joins.clear();
                        self.joined = 0;
                        self.stage = Stage::Outage {
                            until: now + OUTAGE_US,
                        };
                    }
                }
            },
            Stage::Outage { until } => {
                if now >= until {
                    self.stage = Stage::Restoring;
                    self.power_on_all(now, RESTORE_SPREAD_US);
                }
            }
            Stage::Restoring => {
                if self.joined == all || now >= self.run_deadline {
                    self.stage = Stage::Done;
                }
            }
            Stage::Draining { until } => {
                if self.frames_in_flight == 0 || now >= until {
                    self.stage = Stage::Done;
                }
            }
            Stage::Done => {}
        }
    }

    fn keepalive(&mut self, now: Micros) {
        for (g, gw) in self.gateways.iter_mut().enumerate() {
            self.out.push(Outgoing {
                gateway: g as u16,
                bytes: gw.pull_data(),
            });
            self.stats.pull_data += 1;
        }
        self.next_keepalive = now + gateway::KEEPALIVE_US;
    }

    /// Datagrams to send, in order.
    pub fn take_outgoing(&mut self) -> Vec<Outgoing> {
        std::mem::take(&mut self.out)
    }

    /// Counts datagrams actually sent (for the time series) at `now`.
    pub fn count_sent(&mut self, now: Micros, n: u64, errors: u64) {
        self.series.at(now / 1_000_000).datagrams_out += n;
        self.stats.send_errors += errors;
        if n > 0 {
            self.stats.first_send_us.get_or_insert(now);
            self.stats.last_send_us = now;
        }
    }

    /// Applies the effects a device produced.
    fn apply(&mut self, dev: u32, now: Micros, rng: &mut ChaCha8Rng) {
        let mut fx = std::mem::take(&mut self.fx);
        for e in fx.drain(..) {
            match e {
                Effect::Arm(t, kind) => self.sched.push(t, dev, kind),
                Effect::Tx(tx) => self.transmit(dev, now, tx, rng),
                Effect::Note(n) => self.note(dev, now, n),
            }
        }
        self.fx = fx;
    }

    fn transmit(&mut self, dev: u32, now: Micros, tx: crate::device::Tx, rng: &mut ChaCha8Rng) {
        let sec = now / 1_000_000;
        let i = dev as usize;
        let airtime = self.traffic.radio.airtime_us(tx.dr, tx.phy.len());
        // With the radio modelled the frame ends `airtime` after it starts, and the device counts
        // its receive windows from there.
        let end = if self.air.is_some() {
            let closes = self.fleet.devices[i].frame_lasts(airtime);
            self.sched.push(closes, dev, TimerKind::RxClosed);
            now + airtime
        } else {
            now
        };
        match tx.kind {
            TxKind::Join { .. } => {
                self.log_nonces(dev);
                self.stats.joins_attempted += 1;
                self.series.at(sec).joins_sent += 1;
                self.pending_joins.insert(end, dev);
                if let Some(n) = self.join_attempts.get_mut(i) {
                    *n = n.saturating_add(1);
                }
            }
            TxKind::Rejoin { .. } => {
                // Its Join-accept is found like a join's (it carries no DevAddr).
                self.stats.rejoins_attempted += 1;
                self.pending_joins.insert(now, dev);
            }
            TxKind::Data {
                transmission,
                confirmed,
                ..
            } => {
                self.stats.uplink_transmissions += 1;
                if transmission == 1 {
                    self.stats.uplinks_sent += 1;
                    self.series.at(sec).uplinks_sent += 1;
                    self.frames_in_flight += 1;
                    self.fleet.links[i].frame_heard = false;
                    if confirmed {
                        self.stats.uplinks_confirmed += 1;
                    }
                }
            }
        }
        let radio = &self.traffic.radio;
        let listened = !radio.region().is_fixed_plan() || radio.channels.is_enabled(tx.chan);
        // A data rate without a GWMP `datr` (never sent: `RadioPlan::check` and LinkADRReq allow
        // LoRa only) would be heard by none.
        let lora = radio.lora(tx.dr).filter(|_| listened);
        let city = match (&self.air, lora) {
            (Some(air), Some((sf, bw))) => air.city_hearings(i, sf, bw, rng),
            _ => None,
        };
        let hearings = match city {
            Some(h) => h,
            None => self.heard_by_draw(dev, lora.is_some(), rng),
        };
        if let Some(air) = &mut self.air {
            let sf = lora.map_or(0, |l| l.0);
            air.start(dev, tx, now, airtime, sf, hearings);
            self.sched.push(end, dev, TimerKind::UplinkEnd);
            return;
        }
        self.received(dev, &tx, now, &hearings);
    }

    /// Without a city: the transmission is lost with probability `--loss`, else heard by 1..=K
    /// gateways (`--heard-by`), the device's nearest and the next ones, each 4 dB weaker.
    fn heard_by_draw(&mut self, dev: u32, on_air: bool, rng: &mut ChaCha8Rng) -> Vec<Hearing> {
        let g = self.gateways.len() as u16;
        let k = self.traffic.heard_by.clamp(1, g);
        let n = if rng.gen_bool(self.traffic.loss.clamp(0.0, 1.0)) {
            0
        } else {
            rng.gen_range(1..=k)
        };
        let n = if on_air { n } else { 0 };
        let link = self.fleet.links[dev as usize];
        (0..n)
            .map(|j| {
                let rssi = i16::from(link.rssi) - 4 * j as i16 + rng.gen_range(-3..=3);
                // SNR falls with RSSI: about +10 dB at -90 dBm, down to -15 dB near the SF7..12
                // floor.
                let lsnr = ((rssi + 100) * 10).clamp(-200, 135) + rng.gen_range(-10..=10);
                Hearing {
                    gateway: (link.base + j) % g,
                    rssi,
                    lsnr_tenths: lsnr,
                }
            })
            .collect()
    }

    /// Gateways `hearings` received `tx` of device `dev`, which ended at `end`: each forwards it
    /// in a PUSH_DATA, at once or at its forwarder's next read ([`Forwarder`]).
    fn received(&mut self, dev: u32, tx: &crate::device::Tx, end: Micros, hearings: &[Hearing]) {
        let link = &mut self.fleet.links[dev as usize];
        link.last_heard = hearings.len() as u8;
        if hearings.is_empty() {
            return;
        }
        link.frame_heard = true;
        self.stats.receptions += 1;
        let Ok(datr) = self.traffic.radio.region().data_rate(tx.dr) else {
            return;
        };
        let join = matches!(tx.kind, TxKind::Join { .. });
        for h in hearings {
            let gw = &mut self.gateways[usize::from(h.gateway)];
            let rx = Reception {
                tmst: gw.tmst_at(end),
                freq_hz: tx.freq_hz,
                chan: tx.chan % 8,
                datr,
                rssi: h.rssi,
                lsnr_tenths: h.lsnr_tenths,
                data: &tx.phy,
            };
            self.stats.rxpk += 1;
            let interval = self.forwarder.fetch_interval_us;
            if interval == 0 {
                let bytes = gw.push_data(&rx);
                self.stats.push_data += 1;
                self.out.push(Outgoing {
                    gateway: h.gateway,
                    bytes,
                });
                if join {
                    self.join_request_queued();
                }
                continue;
            }
            if gw.receive(&rx) {
                let at = gw.next_fetch(end, interval);
                self.sched
                    .push(at, u32::from(h.gateway), TimerKind::GatewayFetch);
            }
            self.join_in_fifo[usize::from(h.gateway)] |= join;
        }
    }

    /// Gateway `g`'s forwarder reads its receive FIFO and sends what it holds.
    fn fetch(&mut self, g: u16) {
        if std::mem::take(&mut self.join_in_fifo[usize::from(g)]) {
            self.join_request_queued();
        }
        let datagrams = self.gateways[usize::from(g)].fetch(self.forwarder.max_rxpk);
        self.stats.push_data += datagrams.len() as u64;
        self.out.extend(
            datagrams
                .into_iter()
                .map(|bytes| Outgoing { gateway: g, bytes }),
        );
    }

    /// Device `dev`'s frame has ended (radio modelled): the gateways that received it despite
    /// collisions and their own transmissions forward it.
    fn uplink_end(&mut self, dev: u32) {
        let Some(e) = self.air.as_mut().and_then(|a| a.end(dev)) else {
            return;
        };
        if e.collided {
            self.stats.uplinks_collided += 1;
        }
        self.received(dev, &e.tx, e.end, &e.received);
    }

    fn note(&mut self, dev: u32, now: Micros, n: Note) {
        let sec = now / 1_000_000;
        match n {
            Note::Joined {
                window,
                request_sent_at,
                dev_addr,
            } => {
                self.stats.joins_accepted += 1;
                match window {
                    Window::Rx1 => self.stats.joins_rx1 += 1,
                    Window::Rx2 => self.stats.joins_rx2 += 1,
                }
                self.stats
                    .join_latency
                    .record_us(now.saturating_sub(request_sent_at));
                self.series.at(sec).joins_accepted += 1;
                self.pending_joins.remove(request_sent_at, dev);
                self.by_addr.insert(dev_addr, dev);
                self.joined += 1;
                self.log_nonces(dev);
            }
            Note::JoinRejected(_) => self.stats.joins_failed += 1,
            Note::JoinAttemptOver { sent_at, timed_out } => {
                self.pending_joins.remove(sent_at, dev);
                if timed_out {
                    self.stats.joins_timed_out += 1;
                }
            }
            Note::DevNonceExhausted => self.stats.joins_failed += 1,
            Note::Acked { sent_at, .. } => {
                self.stats.uplinks_acked += 1;
                self.stats
                    .ack_latency
                    .record_us(now.saturating_sub(sent_at));
                self.series.at(sec).uplinks_acked += 1;
            }
            Note::FrameDone {
                confirmed, acked, ..
            } => {
                self.frames_in_flight = self.frames_in_flight.saturating_sub(1);
                let heard = self.fleet.links[dev as usize].frame_heard;
                if (confirmed && !acked) || !heard {
                    self.stats.uplinks_lost += 1;
                }
            }
            Note::Downlink => {
                self.stats.downlinks_received += 1;
                self.series.at(sec).downlinks += 1;
            }
            Note::DownlinkRejected(_) => self.stats.downlinks_unmatched += 1,
            Note::MacAnswered(k) => self.stats.mac_commands_answered += u64::from(k),
            Note::DutyCycleDeferred => self.stats.uplinks_duty_cycle_deferred += 1,
            Note::Rejoined {
                window,
                request_sent_at,
                old_addr,
                dev_addr,
            } => {
                self.stats.rejoins_accepted += 1;
                if self.rejoined.insert(dev) {
                    self.stats.devices_rejoined += 1;
                }
                if window == Window::Rx1 {
                    self.stats.rejoins_rx1 += 1;
                }
                self.pending_joins.remove(request_sent_at, dev);
                if self.by_addr.get(&old_addr) == Some(&dev) {
                    self.by_addr.remove(&old_addr);
                }
                self.by_addr.insert(dev_addr, dev);
                self.log_nonces(dev);
            }
            Note::RejoinMissed { sent_at } => {
                self.pending_joins.remove(sent_at, dev);
                self.stats.rejoins_missed += 1;
            }
        }
    }

    /// A datagram arrived on gateway `g`'s socket at `now`.
    pub fn on_datagram(&mut self, g: u16, now: Micros, data: &[u8]) {
        self.series.at(now / 1_000_000).datagrams_in += 1;
        let Some(gw) = self.gateways.get(usize::from(g)) else {
            return;
        };
        match Packet::parse(data) {
            Ok(Packet::PushAck { .. }) => self.stats.push_ack += 1,
            Ok(Packet::PullAck { .. }) => self.stats.pull_ack += 1,
            Ok(Packet::PullResp(r)) => {
                self.stats.pull_resp += 1;
                let (token, txpk) = (r.token, r.txpk);
                let target = match txpk.timing {
                    TxTiming::Tmst(t) => gw.run_time_of(t, now),
                    TxTiming::Immediate | TxTiming::Tmms(_) => None,
                };
                let refusal = self.gateway_transmits(g, now, target, &txpk);
                if let Some(r) = refusal {
                    self.stats.tx_ack_errors += 1;
                    match r {
                        Refusal::TooLate => self.stats.tx_refused_too_late += 1,
                        Refusal::Collision | Refusal::QueueFull => {
                            self.stats.tx_refused_collision += 1
                        }
                        Refusal::DutyCycle => self.stats.tx_refused_duty_cycle += 1,
                    }
                }
                let ack = self.gateways[usize::from(g)].tx_ack(token, refusal.map(Refusal::code));
                self.out.push(Outgoing {
                    gateway: g,
                    bytes: ack,
                });
                self.deliver(g, now, target, refusal.is_some(), &txpk);
            }
            Ok(_) | Err(_) => self.stats.bad_datagrams += 1,
        }
    }

    /// Whether gateway `g` sends `txpk`, asked at `now` for run time `target`, or why not. A
    /// concentrator cannot send in the past: TOO_LATE, as lora_pkt_fwd answers. With the radio
    /// modelled, its transmitter decides ([`crate::radio::transmitter`]).
    fn gateway_transmits(
        &mut self,
        g: u16,
        now: Micros,
        target: Option<Micros>,
        txpk: &TxPk,
    ) -> Option<Refusal> {
        let Some(t) = target.filter(|&t| t > now) else {
            return Some(Refusal::TooLate);
        };
        if crate::frames::is_join_accept(&txpk.data) {
            self.accept_len = self.accept_len.max(txpk.data.len());
        }
        let air = self.air.as_mut()?;
        let airtime = match txpk.datr {
            protocol::gwmp::DataRate::Lora {
                spreading_factor,
                bandwidth_khz,
            } => {
                crate::radio::downlink_airtime_us(spreading_factor, bandwidth_khz, txpk.data.len())
            }
            _ => 0,
        };
        air.transmit(g, now, t, airtime, txpk.freq_hz).err()
    }

    fn heard_by(&self, dev: u32, g: u16) -> bool {
        if let Some(air) = &self.air {
            return air.received_last(dev, g);
        }
        let l = &self.fleet.links[dev as usize];
        let n = self.gateways.len() as u16;
        (g + n - l.base) % n < u16::from(l.last_heard)
    }

    fn deliver(
        &mut self,
        g: u16,
        now: Micros,
        target: Option<Micros>,
        too_late: bool,
        txpk: &TxPk,
    ) {
        if crate::frames::is_join_accept(&txpk.data) {
            self.deliver_join_accept(g, now, target, too_late, txpk);
        } else {
            self.deliver_data(g, now, target, too_late, txpk);
        }
    }

    /// Whether `txpk` goes out on the frequency and data rate device `dev` listens on in
    /// `window`; counts it if not.
    fn on_air_for(&mut self, dev: u32, window: Window, txpk: &TxPk) -> bool {
        let expect = self.fleet.devices[dev as usize].rx_radio(window, &self.behaviour);
        let ok = expect == Some((txpk.freq_hz, txpk.datr));
        if !ok {
            self.stats.wrong_radio += 1;
        }
        ok
    }

    fn deliver_join_accept(
        &mut self,
        g: u16,
        now: Micros,
        target: Option<Micros>,
        too_late: bool,
        txpk: &TxPk,
    ) {
        let phy = &txpk.data[..];
        let Some(t) = target else {
            // Immediate or GPS-timed downlinks never hit a Class A window: find the owner to count it.
            if self.owner_of_accept(phy, 0, now).is_some() {
                self.stats.joins_missed_window += 1;
            } else {
                self.stats.downlinks_unmatched += 1;
            }
            return;
        };
        // Devices whose RX1 or RX2 opens exactly at t, and which this gateway heard.
        for (delay, window) in [
            (JOIN_ACCEPT_DELAY1_US, Window::Rx1),
            (JOIN_ACCEPT_DELAY2_US, Window::Rx2),
        ] {
            let Some(t_up) = t.checked_sub(delay) else {
                continue;
            };
            let candidates = self.pending_joins.at(t_up);
            for dev in candidates {
                if !self.heard_by(dev, g)
                    || !self.fleet.devices[dev as usize].join_accept_is_mine(phy)
                {
                    continue;
                }
                if too_late || !self.on_air_for(dev, window, txpk) {
                    self.stats.joins_missed_window += 1;
                    return;
                }
                let d = &mut self.fleet.devices[dev as usize];
                let mut rng = d.rng(&self.seed_bytes, dev);
                d.on_downlink(phy, window, t, &self.behaviour, &mut rng, &mut self.fx);
                self.apply(dev, now, &mut rng);
                if self.fleet.devices[dev as usize].phase() == Phase::Joined {
                    if let Some(a) = self.joined_after.get_mut(dev as usize) {
                        *a = (*a).min(t.saturating_sub(self.stage_started));
                    }
                }
                return;
            }
        }
        // Nobody's window: whose accept was it?
        if self
            .owner_of_accept(phy, t.saturating_sub(JOIN_ACCEPT_DELAY2_US + 2_000_000), t)
            .is_some()
        {
            self.stats.joins_missed_window += 1;
        } else {
            self.stats.downlinks_unmatched += 1;
        }
    }

    fn owner_of_accept(&self, phy: &[u8], from: Micros, to: Micros) -> Option<u32> {
        let to = to.max(from);
        self.pending_joins
            .between(from, to)
            .into_iter()
            .find(|&d| self.fleet.devices[d as usize].join_accept_is_mine(phy))
    }

    fn deliver_data(
        &mut self,
        g: u16,
        now: Micros,
        target: Option<Micros>,
        too_late: bool,
        txpk: &TxPk,
    ) {
        let phy = &txpk.data[..];
        let dev = crate::frames::peek_dev_addr(phy).and_then(|a| self.by_addr.get(&a).copied());
        let Some(dev) = dev else {
            self.stats.downlinks_unmatched += 1;
            return;
        };
        let d = &self.fleet.devices[dev as usize];
        let window = match target {
            Some(t)
                if d.phase() == Phase::Joined
                    && d.awaiting_downlink()
                    && self.heard_by(dev, g)
                    && !too_late =>
            {
                let (rx1, rx2) = d.rx_delays();
                let delay = t.checked_sub(d.last_tx_at());
                if delay == Some(rx1) {
                    Some((Window::Rx1, t))
                } else if delay == Some(rx2) {
                    Some((Window::Rx2, t))
                } else {
                    None
                }
            }
            _ => None,
        };
        let Some((window, t)) = window.filter(|&(w, _)| self.on_air_for(dev, w, txpk)) else {
            self.stats.downlinks_missed_window += 1;
            return;
        };
        let d = &mut self.fleet.devices[dev as usize];
        let mut rng = d.rng(&self.seed_bytes, dev);
        d.on_downlink(phy, window, t, &self.behaviour, &mut rng, &mut self.fx);
        self.apply(dev, now, &mut rng);
    }

    /// An application event from the network server's event sink: counts distinct
    /// (device, FCnt) uplinks delivered and repeats, received at `now`. Returns whether it was an
    /// uplink event.
    pub fn on_app_event(&mut self, now: Micros, dev_eui: DevEui, fcnt: u32) -> bool {
        self.on_app_uplink(now, dev_eui, None, fcnt)
    }

    /// [`Self::on_app_event`] for an event that names the session's DevAddr: the frame
    /// counters of a device restart with each session, which its DevAddr tells apart.
    pub fn on_app_uplink(
        &mut self,
        now: Micros,
        dev_eui: DevEui,
        dev_addr: Option<DevAddr>,
        fcnt: u32,
    ) -> bool {
        let Some(&dev) = self.by_eui.get(&dev_eui) else {
            return false;
        };
        let addr = dev_addr.map_or(0, DevAddr::as_u32);
        if self.delivered.insert((dev, addr, fcnt)) {
            self.stats.uplinks_delivered += 1;
            self.series.at(now / 1_000_000).uplinks_delivered += 1;
        } else {
            self.stats.uplinks_duplicates += 1;
        }
        true
    }

    /// Finalises counters at the end of the run: with an event sink, an uplink is lost unless
    /// the sink received it.
    pub fn finish(&mut self) {
        self.storm_summary();
        if self.event_sink {
            self.stats.uplinks_lost = self
                .stats
                .uplinks_sent
                .saturating_sub(self.stats.uplinks_delivered);
        }
    }

    /// The join phase against the radio's limits: attempts per device and the airtime lower
    /// bound ([`crate::radio::bound`]) for this fleet, its data rates and gateways.
    fn storm_summary(&mut self) {
        let n = self.join_attempts.len().max(1) as f64;
        self.stats.join_attempts_max = self.join_attempts.iter().copied().max().unwrap_or(0);
        self.stats.join_attempts_mean = self
            .join_attempts
            .iter()
            .map(|&a| f64::from(a))
            .sum::<f64>()
            / n;
        let drs: Vec<u8> = self
            .fleet
            .devices
            .iter()
            .map(|d| d.join_data_rate(&self.behaviour))
            .collect();
        self.stats.joined_after_us = self.join_times().collect();
        self.stats.storm_by_data_rate = self.by_data_rate(&drs);
        let plan = self.traffic.radio;
        let join_freq_hz = self.join_freq_hz();
        let window_us = self
            .air
            .as_ref()
            .map_or(crate::radio::duty_cycle::DUTY_CYCLE_WINDOW_US, |a| {
                a.model().duty_cycle_window_us
            });
        self.stats.airtime_bound_us = Some(bound::airtime_bound_us(&Storm {
            region: plan.region(),
            gateways: self.gateways.len() as u16,
            join_freq_hz,
            join_drs: &drs,
            accept_len: if self.accept_len == 0 {
                DEFAULT_ACCEPT_LEN
            } else {
                self.accept_len
            },
            last_first_request_us: self.last_boot,
            window_us,
            prior: bound::Prior {
                used_us: &self.prior_airtime.0,
                leaves_us: self.prior_airtime.1,
            },
        }));
    }

    /// When each device that joined in the current join phase first did, µs from its start.
    fn join_times(&self) -> impl Iterator<Item = u64> + '_ {
        self.joined_after.iter().copied().filter(|&a| a != u64::MAX)
    }

    /// The current join phase of the devices at each of their join data rates `drs`, slowest
    /// first.
    fn by_data_rate(&self, drs: &[u8]) -> Vec<DataRateStorm> {
        // (devices, join times, Join-requests) per data rate.
        let mut per: BTreeMap<u8, (u64, Vec<u64>, u64)> = BTreeMap::new();
        for (i, &dr) in drs.iter().enumerate() {
            let e = per.entry(dr).or_default();
            e.0 += 1;
            if let Some(&after) = self.joined_after.get(i).filter(|&&a| a != u64::MAX) {
                e.1.push(after);
            }
            e.2 += u64::from(self.join_attempts.get(i).copied().unwrap_or(0));
        }
        per.into_iter()
            .map(|(dr, (devices, times, attempts))| {
                DataRateStorm::new(dr, devices, times, attempts)
            })
            .collect()
    }

    /// Whether an event sink is counting deliveries.
    pub fn has_event_sink(&self) -> bool {
        self.event_sink
    }
}
