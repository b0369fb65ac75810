//! The sans-IO end-device: a LoRaWAN Class A state machine driven by timers and received frames.
//!
//! A [`Device`] never touches a socket or a clock. The engine calls [`Device::on_timer`] when a
//! timer the device armed fires and [`Device::on_downlink`] when a frame lands in one of its
//! receive windows; the device answers with [`Effect`]s: transmit this frame, arm this timer,
//! count this event. Randomness comes from the caller's RNG, which the engine derives from the run
//! seed and the device, so a device's traffic does not depend on what other devices do.
//!
//! What it implements:
//! - OTAA per version: DevNonce is a persisted counter for 1.0.4 and 1.1 and random for 1.0.2 and
//!   1.0.3 (drawn without repetition, see [`random_dev_nonce`]). The Join-accept is decrypted, its
//!   MIC checked (1.1 OptNeg formula under JSIntKey when OptNeg is set), JoinNonce checked (1.1:
//!   strictly greater than the last one accepted), and the session keys derived on the device.
//! - Join retries back off to respect the join duty-cycle limits (LoRaWAN 1.0.4 §7 / RP002): at
//!   most 1 % transmit time in the first hour after power-up, 0.1 % in the next ten hours, 0.01 %
//!   after that, each retry dithered by up to one second.
//! - Periodic uplinks with ±10 % jitter; confirmed uplinks wait for an ACK in RX1/RX2 and are
//!   retransmitted up to NbTrans times (ACK_TIMEOUT 1..3 s), unconfirmed ones repeated NbTrans
//!   times unless a downlink arrives.
//! - MAC commands: LinkADRReq blocks (→ LinkADRAns; the channel masks with the region's
//!   ChMaskCntl meaning, DR, TXPower and NbTrans applied only when all are acceptable),
//!   DeviceTimeReq sent after a join and DeviceTimeAns taken, RekeyInd sent by 1.1 devices
//!   (OptNeg) until RekeyConf, RXParamSetupReq, NewChannelReq and (AS923, AU915)
//!   TxParamSetupReq checked and applied, and the answers to DevStatusReq, RXTimingSetupReq,
//!   DutyCycleReq, DlChannelReq, ADRParamSetupReq and RejoinParamSetupReq.
//! - LoRaWAN 1.1 rejoins: ForceRejoinReq makes the device send Rejoin-requests of the type it
//!   asks for (0 or 2; RJcount0 counting up within a session), up to Max_Retries + 1 of them
//!   32 s × 2^Period apart, instead of its next data frame; RejoinParamSetupReq makes it send a
//!   type 0 every 2^(MaxCountN+4) uplinks or 2^(MaxTimeN+10) s, whichever comes first (the
//!   time checked at its uplinks). The Join-accept that answers one (JSEncKey, the
//!   rejoin MIC) gives a new session at once, its first uplinks carrying RekeyInd; without one,
//!   the device keeps its session.
//! - The region ([`crate::radio::RadioPlan`]): channels drawn from the device's channel plan
//!   (the boot channels, then the Join-accept's CFList and LinkADRReq masks), time on air at the
//!   region's modulation, the sub-band duty cycle where the region has one (EU868), the
//!   dwell-time setting (AS923, AU915), and the frequency and data rate of RX1 and RX2.

use protocol::data::Direction;
use protocol::gwmp::DataRate;
use protocol::ids::{DevAddr, DevNonce, NetId};
use protocol::join::AnsweredRequest;
use protocol::mac::MacCommand;
use protocol::region::{ChannelPlan, DwellTime, Region};
use protocol::version::MacVersion;
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::frames::{self, Identity, Keys};
use crate::manifest::NonceState;
use crate::radio::RadioPlan;
use crate::sched::{Micros, TimerKind};

/// JOIN_ACCEPT_DELAY1.
pub const JOIN_ACCEPT_DELAY1_US: Micros = 5_000_000;
/// JOIN_ACCEPT_DELAY2.
pub const JOIN_ACCEPT_DELAY2_US: Micros = 6_000_000;
/// How long after the start of its RX2 window a device waits before it considers both windows
/// empty. A PULL_RESP that reaches the gateway after its `tmst` is too late anyway (TX_ACK
/// `TOO_LATE`), so this only covers one that arrived just before RX2 and is still being read; it
/// is about the length of an RX2 preamble search at SF12 (8 symbols of 32.8 ms would be 262 ms;
/// at the DR of a typical RX2 downlink, tens of ms). A Class A device sends nothing in between.
pub const RX_GRACE_US: Micros = 20_000;
/// FPort of the meter readings.
pub const APP_PORT: u8 = 1;

/// Which receive window a downlink landed in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Window {
    /// RX1.
    Rx1,
    /// RX2.
    Rx2,
}

/// What a device is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// No power.
    Off,
    /// Powered, trying to join.
    Joining,
    /// Holding a session.
    Joined,
}

/// Traffic settings a device needs.
#[derive(Clone, Copy, Debug)]
pub struct Behaviour {
    /// Whether joined devices send data uplinks.
    pub uplinks: bool,
    /// Mean interval between uplinks.
    pub uplink_interval_us: Micros,
    /// Fraction of confirmed uplinks.
    pub confirmed_ratio: f64,
    /// Application payload size.
    pub payload_size: usize,
    /// Data rate of joins and (until LinkADRReq changes it) uplinks.
    pub data_rate: u8,
    /// The region and the channels a device boots with.
    pub radio: RadioPlan,
}

/// A frame to put on air.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tx {
    /// The PHYPayload.
    pub phy: Vec<u8>,
    /// Data rate index in the region.
    pub dr: u8,
    /// Channel index in the device's channel plan (LoRaWAN 1.1's TxCh).
    pub chan: u8,
    /// The channel's frequency, Hz.
    pub freq_hz: u32,
    /// What the frame is.
    pub kind: TxKind,
}

/// What a transmitted frame is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxKind {
    /// A Join-request.
    Join {
        /// Its DevNonce.
        dev_nonce: u16,
    },
    /// A LoRaWAN 1.1 Rejoin-request (type 0 or 2).
    Rejoin {
        /// RejoinType.
        rejoin_type: u8,
        /// RJcount0.
        rj_count0: u16,
    },
    /// A data uplink.
    Data {
        /// Full FCntUp.
        fcnt: u32,
        /// Confirmed.
        confirmed: bool,
        /// 1 for the first transmission, 2.. for repeats of the same FCnt.
        transmission: u8,
    },
}

/// Something worth counting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Note {
    /// A Join-accept was accepted.
    Joined {
        /// Window it came in.
        window: Window,
        /// When the Join-request was sent.
        request_sent_at: Micros,
        /// Assigned address.
        dev_addr: DevAddr,
    },
    /// A Join-accept arrived in a window but was refused.
    JoinRejected(&'static str),
    /// The receive windows of a Join-request closed without a Join-accept being accepted.
    JoinAttemptOver {
        /// When that Join-request was sent.
        sent_at: Micros,
        /// Nothing usable arrived (counted as a timeout); `false` if an accept was refused.
        timed_out: bool,
    },
    /// The device cannot join any more (DevNonce space exhausted).
    DevNonceExhausted,
    /// A confirmed uplink was acknowledged.
    Acked {
        /// FCnt.
        fcnt: u32,
        /// When the acknowledged transmission was sent.
        sent_at: Micros,
    },
    /// A data frame is finished (acknowledged, or out of transmissions).
    FrameDone {
        /// FCnt.
        fcnt: u32,
        /// Confirmed.
        confirmed: bool,
        /// For confirmed frames: whether an ACK came.
        acked: bool,
    },
    /// A data downlink was received and authenticated.
    Downlink,
    /// A data downlink in a window was dropped.
    DownlinkRejected(&'static str),
    /// MAC commands answered.
    MacAnswered(u8),
    /// A data transmission had to wait for the sub-band duty cycle.
    DutyCycleDeferred,
    /// A Join-accept answering a Rejoin-request was accepted: a new session.
    Rejoined {
        /// Window it came in.
        window: Window,
        /// When the Rejoin-request was sent.
        request_sent_at: Micros,
        /// The session's address before.
        old_addr: DevAddr,
        /// The new session's address.
        dev_addr: DevAddr,
    },
    /// The receive windows of a Rejoin-request closed without a Join-accept: the device keeps
    /// its session.
    RejoinMissed {
        /// When that Rejoin-request was sent.
        sent_at: Micros,
    },
}

/// What the device asks of its environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Transmit.
    Tx(Tx),
    /// Wake me at this time.
    Arm(Micros, TimerKind),
    /// Count this.
    Note(Note),
}

/// Rejoin-requests the device has been told to send (ForceRejoinReq, or its periodic type 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct RejoinPlan {
    rejoin_type: u8,
    data_rate: u8,
    /// Rejoin-requests still to send.
    tries_left: u8,
    period_us: Micros,
    /// Not before this time.
    not_before: Micros,
}

/// A Rejoin-request waiting for its Join-accept.
#[derive(Clone, Copy, Debug)]
struct RejoinAttempt {
    answered: AnsweredRequest,
    sent_at: Micros,
    rejected: bool,
}

#[derive(Clone, Copy, Debug)]
struct JoinAttempt {
    dev_nonce: DevNonce,
    sent_at: Micros,
    rejected: bool,
}

#[derive(Clone, Debug)]
struct Frame {
    fcnt: u32,
    confirmed: bool,
    transmissions: u8,
    sent_at: Micros,
    acked: bool,
    got_downlink: bool,
    payload: Vec<u8>,
    fopts: Vec<u8>,
}

/// A session: what a Join-accept gives a device.
#[derive(Clone, Debug)]
pub struct Session {
    /// DevAddr.
    pub dev_addr: DevAddr,
    keys: Keys,
    /// Next FCntUp.
    pub fcnt_up: u32,
    last_nfcnt_down: Option<u32>,
    last_afcnt_down: Option<u32>,
    rx1_delay_us: Micros,
    nb_trans: u8,
    dr: u8,
    /// The uplink channels (boot channels, then CFList, LinkADRReq, NewChannelReq), only where
    /// they differ from the boot channels: most sessions keep those, and a plan is 160 bytes.
    channels: Option<Box<ChannelPlan>>,
    /// UplinkDwellTime / DownlinkDwellTime (TxParamSetupReq).
    dwell: DwellTime,
    rx1_dr_offset: u8,
    /// RX2 frequency (Hz) and data rate.
    rx2: (u32, u8),
    rekey_pending: bool,
    device_time_tries: u8,
    answers: Vec<u8>,
    ack_next: Option<u32>,
    /// The network's NetID (from the Join-accept), which Rejoin-requests type 0 and 2 name.
    net_id: NetId,
    /// RJcount0: the next Rejoin-request type 0 or 2 of this session carries it.
    rj_count0: u16,
    /// Rejoin-requests to send.
    rejoin: Option<RejoinPlan>,
    /// RejoinParamSetupReq: a type 0 every this many uplinks (0: none).
    rejoin_every: u32,
    /// RejoinParamSetupReq: a type 0 at least this often, µs (0: none)…
    rejoin_period_us: u64,
    /// …counted from this time (the last periodic rejoin planned; `None`: from the next uplink
    /// after the command).
    rejoin_period_from: Option<Micros>,
}

impl Session {
    /// The next new frame (FCnt, payload, FOpts with the pending MAC answers and the device's
    /// own requests), and when the periodic uplink after it is due.
    fn new_frame(
        &mut self,
        now: Micros,
        b: &Behaviour,
        rng: &mut impl RngCore,
    ) -> (Box<Frame>, Micros) {
        let fcnt = self.fcnt_up;
        self.fcnt_up = self.fcnt_up.wrapping_add(1);
        self.plan_periodic_rejoin(now);
        let confirmed = rng.gen_bool(b.confirmed_ratio.clamp(0.0, 1.0));
        let mut payload = vec![0u8; b.payload_size];
        rng.fill_bytes(&mut payload);
        let jitter = rng.gen_range(0.9..1.1);
        let next_periodic = now + (b.uplink_interval_us as f64 * jitter) as Micros;
        // FOpts: pending MAC answers, then the device's own requests, within 15 bytes.
        let mut fopts = std::mem::take(&mut self.answers);
        fopts.truncate(15);
        if self.rekey_pending && fopts.len() + 2 <= 15 {
            let _ = MacCommand::RekeyInd {
                dev_lorawan_minor: 1,
            }
            .encode_into(&mut fopts);
        }
        if self.device_time_tries > 0 && fopts.len() < 15 {
            let _ = MacCommand::DeviceTimeReq.encode_into(&mut fopts);
            self.device_time_tries -= 1;
        }
        let frame = Box::new(Frame {
            fcnt,
            confirmed,
            transmissions: 1,
            sent_at: now,
            acked: false,
            got_downlink: false,
            payload,
            fopts,
        });
        (frame, next_periodic)
    }

    /// RX1 delay.
    pub fn rx1_delay_us(&self) -> Micros {
        self.rx1_delay_us
    }
    /// NbTrans.
    pub fn nb_trans(&self) -> u8 {
        self.nb_trans
    }
    /// Current data rate.
    pub fn dr(&self) -> u8 {
        self.dr
    }
    /// Whether a 1.1 RekeyInd is still unconfirmed.
    pub fn rekey_pending(&self) -> bool {
        self.rekey_pending
    }
    /// Whether Rejoin-requests are still to be sent (ForceRejoinReq, periodic type 0).
    pub fn rejoin_pending(&self) -> bool {
        self.rejoin.is_some()
    }
    /// RejoinParamSetupReq: a type 0 after every MaxCountN-th uplink, or once 2^(MaxTimeN+10) s
    /// passed since the last one, whichever comes first (LoRaWAN 1.1 §5.13; called at `now` as
    /// an uplink is counted, so the time limit is checked at the device's uplinks).
    fn plan_periodic_rejoin(&mut self, now: Micros) {
        let by_count = self.rejoin_every > 0 && self.fcnt_up % self.rejoin_every == 0;
        let by_time = self.rejoin_period_us > 0
            && match self.rejoin_period_from {
                None => {
                    self.rejoin_period_from = Some(now);
                    false
                }
                Some(from) => now.saturating_sub(from) >= self.rejoin_period_us,
            };
        if (by_count || by_time) && self.rejoin.is_none() {
            if self.rejoin_period_us > 0 {
                self.rejoin_period_from = Some(now);
            }
            self.rejoin = Some(RejoinPlan {
                rejoin_type: 0,
                data_rate: self.dr,
                tries_left: 1,
                period_us: 0,
                not_before: 0,
            });
        }
    }

    /// ForceRejoinReq and RejoinParamSetupReq (1.1 sessions only; a 1.0 one takes neither and
    /// answers RejoinParamSetupReq as before). Returns the answer, if the command has one.
    fn rejoin_command(&mut self, c: MacCommand) -> Option<MacCommand> {
        match c {
            MacCommand::RejoinParamSetupReq {
                max_count_n,
                max_time_n,
            } => {
                if self.rejoins() {
                    self.rejoin_every = 1 << (u32::from(max_count_n.min(15)) + 4);
                    self.rejoin_period_us = 1_000_000 << (u32::from(max_time_n.min(15)) + 10);
                    self.rejoin_period_from = None;
                }
                Some(MacCommand::RejoinParamSetupAns { time_ok: true })
            }
            MacCommand::ForceRejoinReq {
                period,
                max_retries,
                rejoin_type,
                data_rate,
            } if self.rejoins() && (rejoin_type == 0 || rejoin_type == 2) => {
                self.rejoin = Some(RejoinPlan {
                    rejoin_type,
                    data_rate,
                    tries_left: max_retries.min(7) + 1,
                    period_us: 32_000_000 << period.min(7),
                    not_before: 0,
                });
                None
            }
            _ => None,
        }
    }

    /// Whether the session can rejoin: LoRaWAN 1.1 keys (with OptNeg), which have the
    /// SNwkSIntKey Rejoin-requests type 0 and 2 are signed with.
    fn rejoins(&self) -> bool {
        matches!(self.keys, Keys::V1_1 { .. })
    }
    /// The uplink channels, given the run's boot channels.
    pub fn channels<'a>(&'a self, boot: &'a ChannelPlan) -> &'a ChannelPlan {
        self.channels.as_deref().unwrap_or(boot)
    }
    fn set_channels(&mut self, plan: ChannelPlan, boot: &ChannelPlan) {
        self.channels = (plan != *boot).then(|| Box::new(plan));
    }
    /// The dwell-time setting.
    pub fn dwell(&self) -> DwellTime {
        self.dwell
    }
    /// RX1DROffset and the RX2 frequency (Hz) and data rate.
    pub fn rx_params(&self) -> (u8, (u32, u8)) {
        (self.rx1_dr_offset, self.rx2)
    }
}

/// One simulated end-device.
#[derive(Clone, Debug)]
pub struct Device {
    /// Provisioning.
    pub id: Identity,
    /// Non-volatile nonce state.
    pub nonces: NonceState,
    phase: Phase,
    join: Option<JoinAttempt>,
    rejoin: Option<RejoinAttempt>,
    session: Option<Box<Session>>,
    frame: Option<Box<Frame>>,
    /// Due time of the armed Join/Uplink timer (others are stale).
    wake_at: Micros,
    /// Due time of the armed RxClosed timer.
    rx_closes_at: Micros,
    /// The uplink the current receive windows belong to: when it was sent, its frequency and its
    /// data rate.
    last_tx_at: Micros,
    last_tx_freq: u32,
    last_tx_dr: u8,
    next_periodic: Micros,
    powered_at: Micros,
    /// The earliest time the sub-band duty cycle allows the next transmission of any kind (the
    /// region's, e.g. EU868's 1 %; none in US915), after any frame.
    next_tx_allowed: Micros,
    /// The earliest time the join duty cycle (LoRaWAN 1.0.4 §7 / 1.1 §6: 1 %, 0.1 %, 0.01 % by
    /// time since power-up, and never looser than the sub-band's) allows the next
    /// Join-request. It limits Join-requests only: a data uplink after the join waits for
    /// [`Self::next_tx_allowed`] alone.
    next_join_allowed: Micros,
    rng_blocks: u32,
    /// The data rate this device's link allows (a city meter), instead of the run's.
    link_dr: Option<u8>,
    /// Join-requests since power-up, and whether the join data rate alternates with them.
    join_trials: u16,
    alternate_join_dr: bool,
    /// Whether a failed Join-request's retry is also delayed by [`join_backoff_window_us`].
    join_backoff: bool,
}

/// The data rate of Join-request number `trial` (from 1) of a device that joins at `base`, as
/// LoRaMac-node (up to 4.4, and Mbed OS's `get_alternate_DR`) alternates it: DR4 every 8th
/// attempt, DR3 every 16th, DR2 every 24th, DR1 every 32nd, DR0 every 48th, never faster than
/// `base`; `usable` says which rates the region allows a device now.
pub fn alternate_join_dr(base: u8, trial: u16, usable: impl Fn(u8) -> bool) -> u8 {
    let alt = match trial {
        t if t % 48 == 0 => 0,
        t if t % 32 == 0 => 1,
        t if t % 24 == 0 => 2,
        t if t % 16 == 0 => 3,
        t if t % 8 == 0 => 4,
        _ => base,
    };
    Some(alt.min(base)).filter(|&d| usable(d)).unwrap_or(base)
}

/// The most a randomized join back-off delays a retry: [`join_backoff_window_us`]'s cap.
pub const JOIN_BACKOFF_CAP_US: Micros = 64_000_000;

/// The random delay window of the retry after Join-request number `trial` (from 1) went
/// unanswered, on top of what the join duty cycle requires: 1 s after the first, doubling with
/// each failure up to [`JOIN_BACKOFF_CAP_US`]. LoRaWAN 1.0.3/1.0.4 §7 (and TR007 §4.8) require
/// the interval between the end of RX2 and the retransmission to be random and different for
/// every device, and allow further back-off within the duty-cycle limits: a fleet that restarts
/// at once and retries as fast as the duty cycle allows keeps every channel loaded like pure
/// ALOHA past its capacity (almost every Join-request collides), while a binary exponential
/// back-off lowers the load as failures show it is too high, as LoRa Basics Modem and most
/// application-level join loops do.
pub fn join_backoff_window_us(trial: u16) -> Micros {
    let doublings = u32::from(trial.saturating_sub(1)).min(16);
    (1_000_000u64 << doublings).min(JOIN_BACKOFF_CAP_US)
}

/// The `index`-th random DevNonce of a 1.0.x device: a keyed 16-bit permutation (a four-round
/// Feistel network, round keys drawn from ChaCha8 seeded with the DevEUI), so the values look
/// random yet never repeat until all 65,536 have been used. This keeps "random DevNonce" (1.0.2,
/// 1.0.3) while letting the fleet state file hold a single counter per device.
pub fn random_dev_nonce(dev_eui: u64, index: u16) -> u16 {
    let mut rng = ChaCha8Rng::seed_from_u64(dev_eui ^ 0x5EED_DE71_C0DE_0001);
    let keys: [u32; 4] = rng.gen();
    let (mut l, mut r) = ((index >> 8) as u8, index as u8);
    for k in keys {
        let f = (u32::from(r).wrapping_mul(0x9E37_79B1) ^ k)
            .rotate_left(13)
            .wrapping_mul(0x85EB_CA6B);
        let f = (f ^ (f >> 16)) as u8;
        (l, r) = (r, l ^ f);
    }
    (u16::from(l) << 8) | u16::from(r)
}

pub use crate::radio::airtime_us;

/// Duty cycle of the EU868 sub-band that holds the default channels 868.1, 868.3 and 868.5 MHz
/// (ETSI EN 300 220 band g1, 868.0–868.6 MHz, as RP002 names it): 1 %, shared by all three, so
/// a device that transmits for T must stay silent on them for T / 1 % from the start of that
/// transmission (the simulator puts a frame on air and ends it at one instant). Other sub-bands
/// and regions: `protocol::region::Region::duty_cycle`.
pub const SUB_BAND_DUTY_CYCLE: f64 = 0.01;

/// When a device may transmit again after a frame of `airtime` µs sent at `now`, under duty
/// cycle `dc`. The device waits this long before transmitting on any channel, also one of
/// another sub-band: stricter than ETSI requires, never looser.
pub fn duty_cycle_free_at(now: Micros, airtime: Micros, dc: f64) -> Micros {
    now + (airtime as f64 / dc) as Micros
}

/// A channel of `plan` allowing `dr`, drawn uniformly: (index, frequency).
fn pick_channel(plan: &ChannelPlan, dr: u8, rng: &mut impl RngCore) -> Option<(u8, u32)> {
    let n = plan.enabled_for_dr(dr).count();
    if n == 0 {
        return None;
    }
    let k = rng.gen_range(0..n as u8);
    plan.enabled_for_dr(dr)
        .nth(usize::from(k))
        .map(|(i, c)| (i, c.frequency_hz))
}

/// The aggregated join duty cycle allowed `since_power_on` µs after power-up.
pub fn join_duty_cycle(since_power_on: Micros) -> f64 {
    const HOUR: Micros = 3_600_000_000;
    if since_power_on < HOUR {
        0.01
    } else if since_power_on < 11 * HOUR {
        0.001
    } else {
        0.0001
    }
}

impl Device {
    /// A powered-off device.
    pub fn new(id: Identity, nonces: NonceState) -> Self {
        Self {
            id,
            nonces,
            phase: Phase::Off,
            join: None,
            rejoin: None,
            session: None,
            frame: None,
            wake_at: Micros::MAX,
            rx_closes_at: Micros::MAX,
            last_tx_at: 0,
            last_tx_freq: 0,
            last_tx_dr: 0,
            next_periodic: 0,
            powered_at: 0,
            next_tx_allowed: 0,
            next_join_allowed: 0,
            rng_blocks: 0,
            link_dr: None,
            join_trials: 0,
            alternate_join_dr: false,
            join_backoff: false,
        }
    }

    /// Makes the device alternate its join data rate from attempt to attempt as real stacks do
    /// ([`alternate_join_dr`]); with the radio modelled (`--radio realistic`).
    pub fn alternate_join_data_rate(&mut self) {
        self.alternate_join_dr = true;
    }

    /// Makes the device back off its Join-request retries exponentially at random
    /// ([`join_backoff_window_us`]) instead of retrying within a second of what the join duty
    /// cycle allows; with the radio modelled (`--radio realistic`).
    pub fn back_off_joins(&mut self) {
        self.join_backoff = true;
    }

    /// Makes the device join, and report until a LinkADRReq says otherwise, at `dr` instead of
    /// the run's data rate: the rate its link allows (`--city`).
    pub fn set_data_rate(&mut self, dr: u8) {
        self.link_dr = Some(dr);
    }

    /// The data rate of this device's Join-requests (and first uplinks).
    pub fn join_data_rate(&self, b: &Behaviour) -> u8 {
        self.link_dr.unwrap_or(b.data_rate)
    }

    /// The frame just sent is `airtime` µs long and its timers counted from its start: with the
    /// radio modelled (`--radio realistic`) the device's clock for its receive windows starts at
    /// the frame's end, as a real device's does. Moves them and returns when the windows now
    /// close (the caller arms that timer; the earlier one becomes stale).
    pub fn frame_lasts(&mut self, airtime: Micros) -> Micros {
        self.last_tx_at += airtime;
        if let Some(j) = &mut self.join {
            j.sent_at += airtime;
        }
        if let Some(f) = self.frame.as_deref_mut() {
            f.sent_at += airtime;
        }
        self.rx_closes_at = self.rx_closes_at.saturating_add(airtime);
        self.rx_closes_at
    }

    /// The phase.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The session, if joined.
    pub fn session(&self) -> Option<&Session> {
        self.session.as_deref()
    }

    /// When the frame the current receive windows belong to was sent.
    pub fn last_tx_at(&self) -> Micros {
        self.last_tx_at
    }

    /// Whether `phy` is a Join-accept for this device's pending Join-request: it decrypts under the
    /// device's root key and its MIC verifies. Changes nothing.
    pub fn join_accept_is_mine(&self, phy: &[u8]) -> bool {
        let opened = match (self.phase, self.join, self.rejoin) {
            (Phase::Joining, Some(j), _) => {
                frames::open_join_accept(&self.id, phy, j.dev_nonce, None)
            }
            (Phase::Joined, _, Some(r)) => {
                frames::open_rejoin_accept(&self.id, phy, r.answered, None)
            }
            _ => return false,
        };
        !matches!(
            opened,
            Err(frames::AcceptError::Mic | frames::AcceptError::Malformed)
        )
    }

    /// Whether the device is waiting for a Join-accept (to a Join-request or a Rejoin-request).
    pub fn awaiting_join_accept(&self) -> bool {
        match self.phase {
            Phase::Joining => self.join.is_some_and(|j| !j.rejected),
            Phase::Joined => self.rejoin.is_some_and(|r| !r.rejected),
            Phase::Off => false,
        }
    }

    /// Whether the device's receive windows for its last data uplink are still pending.
    pub fn awaiting_downlink(&self) -> bool {
        self.phase == Phase::Joined && self.rejoin.is_none() && self.rx_closes_at != Micros::MAX
    }

    /// The RX1 and RX2 delays of the pending receive windows.
    pub fn rx_delays(&self) -> (Micros, Micros) {
        match (&self.phase, &self.session) {
            (Phase::Joined, Some(s)) if self.rejoin.is_none() => {
                (s.rx1_delay_us, s.rx1_delay_us + 1_000_000)
            }
            _ => (JOIN_ACCEPT_DELAY1_US, JOIN_ACCEPT_DELAY2_US),
        }
    }

    /// The frequency (Hz) and data rate the device listens on in `window` for its latest uplink:
    /// RX1 from the region's RX1 channel and data-rate rules (RX1DROffset and DownlinkDwellTime
    /// of the session, or the defaults while joining), RX2 from the session's or the region's
    /// RX2 settings. `None` if the region gives none.
    pub fn rx_radio(&self, window: Window, b: &Behaviour) -> Option<(u32, DataRate)> {
        let r = b.radio.region();
        // A Join-accept (also one answering a Rejoin-request) comes with the region's defaults.
        let (offset, rx2, downlink_dwell) = match (&self.phase, &self.session) {
            (Phase::Joined, Some(s)) if self.rejoin.is_none() => {
                (s.rx1_dr_offset, s.rx2, s.dwell.downlink)
            }
            _ => (0, r.rx2(), r.boot_dwell_time().downlink),
        };
        let (freq, dr) = match window {
            Window::Rx1 => (
                r.rx1_frequency(self.last_tx_freq).ok()?,
                r.rx1_dr(self.last_tx_dr, offset, downlink_dwell).ok()?,
            ),
            Window::Rx2 => rx2,
        };
        Some((freq, r.data_rate(dr).ok()?))
    }

    /// The per-event RNG: ChaCha8 keyed by the run's 256-bit seed with the device index and the
    /// device's event number mixed into the key's last 12 bytes, so each event of each device has
    /// its own stream (one key setup, no seek: cheaper than stream + word-position seeking).
    pub fn rng(&mut self, seed: &[u8; 32], index: u32) -> ChaCha8Rng {
        let mut key = *seed;
        for (k, b) in key[20..24].iter_mut().zip(index.to_le_bytes()) {
            *k ^= b;
        }
        for (k, b) in key[24..28].iter_mut().zip(self.rng_blocks.to_le_bytes()) {
            *k ^= b;
        }
        self.rng_blocks = self.rng_blocks.wrapping_add(1);
        ChaCha8Rng::from_seed(key)
    }

    /// Power on at `now`; the first Join-request goes out after `boot_delay`.
    pub fn power_on(&mut self, now: Micros, boot_delay: Micros, fx: &mut Vec<Effect>) {
        self.phase = Phase::Joining;
        self.session = None;
        self.frame = None;
        self.join = None;
        self.rejoin = None;
        self.powered_at = now;
        self.join_trials = 0;
        self.next_tx_allowed = now;
        self.next_join_allowed = now;
        self.rx_closes_at = Micros::MAX;
        self.wake_at = now + boot_delay;
        fx.push(Effect::Arm(self.wake_at, TimerKind::Join));
    }

    /// Power off: the session and everything volatile are lost; the nonce state is kept.
    pub fn power_off(&mut self) {
        self.phase = Phase::Off;
        self.session = None;
        self.frame = None;
        self.join = None;
        self.rejoin = None;
        self.wake_at = Micros::MAX;
        self.rx_closes_at = Micros::MAX;
    }

    /// A timer this device armed has fired, on time. Stale timers (re-armed or cancelled since)
    /// are ignored.
    pub fn on_timer(
        &mut self,
        kind: TimerKind,
        due: Micros,
        b: &Behaviour,
        rng: &mut impl RngCore,
        fx: &mut Vec<Effect>,
    ) {
        self.on_timer_at(kind, due, due, b, rng, fx);
    }

    /// A timer due at `due` is handled at `now` (≥ `due` when the simulator runs behind): what
    /// the device sends carries `now`, the time it really goes out.
    pub fn on_timer_at(
        &mut self,
        kind: TimerKind,
        due: Micros,
        now: Micros,
        b: &Behaviour,
        rng: &mut impl RngCore,
        fx: &mut Vec<Effect>,
    ) {
        let now = now.max(due);
        match kind {
            TimerKind::Join if due == self.wake_at && self.phase == Phase::Joining => {
                self.send_join(now, b, rng, fx);
            }
            TimerKind::Uplink if due == self.wake_at && self.phase == Phase::Joined => {
                self.send_uplink(now, b, rng, fx);
            }
            TimerKind::RxClosed if due == self.rx_closes_at => {
                self.rx_closes_at = Micros::MAX;
                self.rx_closed(now, b, rng, fx);
            }
            _ => {}
        }
    }

    fn send_join(
        &mut self,
        now: Micros,
        b: &Behaviour,
        rng: &mut impl RngCore,
        fx: &mut Vec<Effect>,
    ) {
        let dev_nonce = if self.id.version.dev_nonce_is_counter() {
            if self.nonces.dev_nonce > u32::from(u16::MAX) {
                fx.push(Effect::Note(Note::DevNonceExhausted));
                self.wake_at = Micros::MAX;
                return;
            }
            self.nonces.dev_nonce as u16
        } else {
            if self.nonces.dev_nonce > u32::from(u16::MAX) {
                fx.push(Effect::Note(Note::DevNonceExhausted));
                self.wake_at = Micros::MAX;
                return;
            }
            random_dev_nonce(self.id.dev_eui.as_u64(), self.nonces.dev_nonce as u16)
        };
        self.join_trials = self.join_trials.saturating_add(1);
        let base = self.join_data_rate(b);
        let dr = if self.alternate_join_dr {
            alternate_join_dr(base, self.join_trials, |d| b.radio.check(d, 0).is_ok())
        } else {
            base
        };
        let Some((chan, freq_hz)) = pick_channel(&b.radio.channels, dr, rng) else {
            // `RadioPlan::check` refuses such a data rate before a run starts.
            self.wake_at = Micros::MAX;
            return;
        };
        self.nonces.dev_nonce += 1;
        let dev_nonce = DevNonce(dev_nonce);
        let phy = frames::join_request(&self.id, dev_nonce);
        let airtime = b.radio.airtime_us(dr, phy.len());
        let band = b.radio.region().duty_cycle(freq_hz);
        let dc = join_duty_cycle(now.saturating_sub(self.powered_at));
        self.next_join_allowed = duty_cycle_free_at(now, airtime, band.map_or(dc, |d| d.min(dc)));
        self.next_tx_allowed = band.map_or(now, |d| duty_cycle_free_at(now, airtime, d));
        self.join = Some(JoinAttempt {
            dev_nonce,
            sent_at: now,
            rejected: false,
        });
        self.last_tx_at = now;
        self.last_tx_freq = freq_hz;
        self.last_tx_dr = dr;
        self.wake_at = Micros::MAX;
        self.rx_closes_at = now + JOIN_ACCEPT_DELAY2_US + RX_GRACE_US;
        fx.push(Effect::Tx(Tx {
            phy: phy.to_vec(),
            dr,
            chan,
            freq_hz,
            kind: TxKind::Join {
                dev_nonce: dev_nonce.0,
            },
        }));
        fx.push(Effect::Arm(self.rx_closes_at, TimerKind::RxClosed));
    }

    fn send_uplink(
        &mut self,
        now: Micros,
        b: &Behaviour,
        rng: &mut impl RngCore,
        fx: &mut Vec<Effect>,
    ) {
        let Some(s) = self.session.as_deref_mut() else {
            return;
        };
        if now < self.next_tx_allowed {
            // The sub-band is still closed to this device: send (this frame or its repeat) as
            // soon as the duty cycle allows, nothing drawn or built yet.
            self.wake_at = self.next_tx_allowed;
            fx.push(Effect::Note(Note::DutyCycleDeferred));
            fx.push(Effect::Arm(self.wake_at, TimerKind::Uplink));
            return;
        }
        if self.frame.is_none() && s.rejoin.is_some_and(|p| p.not_before <= now) {
            return self.send_rejoin(now, b, rng, fx);
        }
        let frame = match self.frame.take() {
            Some(mut f) => {
                f.transmissions += 1;
                f
            }
            None => {
                let (frame, next_periodic) = s.new_frame(now, b, rng);
                self.next_periodic = next_periodic;
                frame
            }
        };
        let Some((chan, freq_hz)) = pick_channel(s.channels(&b.radio.channels), s.dr, rng) else {
            // LinkADRReq never leaves the data rate without a channel.
            return self.skip_frame(now, fx);
        };
        let ack = s.ack_next.take();
        let phy = frames::build_uplink(
            &s.keys,
            &frames::UplinkSpec {
                dev_addr: s.dev_addr,
                fcnt: frame.fcnt,
                confirmed: frame.confirmed,
                ack,
                fopts: &frame.fopts,
                f_port: APP_PORT,
                payload: &frame.payload,
                tx_dr: s.dr,
                tx_ch: chan,
            },
        );
        let Ok(phy) = phy else {
            // Cannot happen with FOpts ≤ 15 bytes and FPort 1.
            return self.skip_frame(now, fx);
        };
        self.next_tx_allowed = b.radio.region().duty_cycle(freq_hz).map_or(now, |dc| {
            duty_cycle_free_at(now, b.radio.airtime_us(s.dr, phy.len()), dc)
        });
        let mut frame = frame;
        frame.sent_at = now;
        let transmission = frame.transmissions;
        let (fcnt, confirmed) = (frame.fcnt, frame.confirmed);
        self.frame = Some(frame);
        self.last_tx_at = now;
        self.last_tx_freq = freq_hz;
        self.last_tx_dr = s.dr;
        self.wake_at = Micros::MAX;
        self.rx_closes_at = now + s.rx1_delay_us + 1_000_000 + RX_GRACE_US;
        fx.push(Effect::Tx(Tx {
            phy,
            dr: s.dr,
            chan,
            freq_hz,
            kind: TxKind::Data {
                fcnt,
                confirmed,
                transmission,
            },
        }));
        fx.push(Effect::Arm(self.rx_closes_at, TimerKind::RxClosed));
    }

    /// Sends the Rejoin-request the session's plan asks for, in place of a data frame, and opens
    /// the Join-accept windows for it.
    fn send_rejoin(
        &mut self,
        now: Micros,
        b: &Behaviour,
        rng: &mut impl RngCore,
        fx: &mut Vec<Effect>,
    ) {
        let Some(s) = self.session.as_deref_mut() else {
            return;
        };
        let Some(mut plan) = s.rejoin.take() else {
            return;
        };
        // RJcount0 never wraps: at 65535 the device stops sending type 0 and 2.
        let rj_count0 = s.rj_count0;
        let dr = if b.radio.region().data_rate(plan.data_rate).is_ok() {
            plan.data_rate
        } else {
            s.dr
        };
        let phy = (rj_count0 < u16::MAX)
            .then(|| {
                frames::rejoin_request(&self.id, &s.keys, s.net_id, plan.rejoin_type, rj_count0)
            })
            .flatten();
        let channel = pick_channel(s.channels(&b.radio.channels), dr, rng);
        let (Some(phy), Some((chan, freq_hz))) = (phy, channel) else {
            return self.skip_frame(now, fx);
        };
        s.rj_count0 += 1;
        plan.tries_left = plan.tries_left.saturating_sub(1);
        if plan.tries_left > 0 {
            // The next one 32 s × 2^Period + 0..32 s later, if no Join-accept comes.
            plan.not_before = now + plan.period_us + rng.gen_range(0..32_000_000);
            s.rejoin = Some(plan);
        }
        self.next_tx_allowed = b.radio.region().duty_cycle(freq_hz).map_or(now, |dc| {
            duty_cycle_free_at(now, b.radio.airtime_us(dr, phy.len()), dc)
        });
        let answered = if plan.rejoin_type == 0 {
            AnsweredRequest::Rejoin0 { rj_count0 }
        } else {
            AnsweredRequest::Rejoin2 { rj_count0 }
        };
        self.rejoin = Some(RejoinAttempt {
            answered,
            sent_at: now,
            rejected: false,
        });
        self.last_tx_at = now;
        self.last_tx_freq = freq_hz;
        self.last_tx_dr = dr;
        self.wake_at = Micros::MAX;
        self.rx_closes_at = now + JOIN_ACCEPT_DELAY2_US + RX_GRACE_US;
        fx.push(Effect::Tx(Tx {
            phy,
            dr,
            chan,
            freq_hz,
            kind: TxKind::Rejoin {
                rejoin_type: plan.rejoin_type,
                rj_count0,
            },
        }));
        fx.push(Effect::Arm(self.rx_closes_at, TimerKind::RxClosed));
    }

    /// Drops the frame that cannot be sent (rather than panic) and waits for the next period.
    fn skip_frame(&mut self, now: Micros, fx: &mut Vec<Effect>) {
        self.wake_at = self.next_periodic.max(now + 1);
        fx.push(Effect::Arm(self.wake_at, TimerKind::Uplink));
    }

    fn rx_closed(
        &mut self,
        now: Micros,
        b: &Behaviour,
        rng: &mut impl RngCore,
        fx: &mut Vec<Effect>,
    ) {
        match self.phase {
            Phase::Joining => {
                if let Some(j) = self.join.take() {
                    fx.push(Effect::Note(Note::JoinAttemptOver {
                        sent_at: j.sent_at,
                        timed_out: !j.rejected,
                    }));
                }
                // Retry once the duty cycle allows, dithered by up to a second (or, backing
                // off, by up to the trial's window).
                let window = if self.join_backoff {
                    join_backoff_window_us(self.join_trials)
                } else {
                    1_000_000
                };
                let dither = rng.gen_range(0..window);
                let allowed = self.next_join_allowed.max(self.next_tx_allowed);
                self.wake_at = allowed.max(now) + dither;
                fx.push(Effect::Arm(self.wake_at, TimerKind::Join));
            }
            Phase::Joined => {
                let Some(s) = self.session.as_deref() else {
                    return;
                };
                if let Some(r) = self.rejoin.take() {
                    // No Join-accept: the session goes on; data resumes at its cadence (a
                    // retry of the rejoin waits for its time).
                    fx.push(Effect::Note(Note::RejoinMissed { sent_at: r.sent_at }));
                    self.wake_at = self.next_periodic.max(now);
                    if let Some(p) = s.rejoin {
                        self.wake_at = self.wake_at.min(p.not_before.max(now));
                    }
                    fx.push(Effect::Arm(self.wake_at, TimerKind::Uplink));
                    return;
                }
                let Some(f) = self.frame.as_deref() else {
                    return;
                };
                let more = f.transmissions < s.nb_trans.max(1)
                    && if f.confirmed {
                        !f.acked
                    } else {
                        !f.got_downlink
                    };
                if more {
                    // Retransmit the same FCnt after ACK_TIMEOUT (1..3 s) or, unconfirmed, soon.
                    let wait = if f.confirmed {
                        rng.gen_range(1_000_000..3_000_000)
                    } else {
                        rng.gen_range(0..100_000)
                    };
                    self.wake_at = now + wait;
                } else {
                    fx.push(Effect::Note(Note::FrameDone {
                        fcnt: f.fcnt,
                        confirmed: f.confirmed,
                        acked: f.acked,
                    }));
                    self.frame = None;
                    if !b.uplinks {
                        return;
                    }
                    self.wake_at = self.next_periodic.max(now);
                }
                fx.push(Effect::Arm(self.wake_at, TimerKind::Uplink));
            }
            Phase::Off => {}
        }
    }

    /// A downlink landed in receive window `window` of the device's last uplink. `now` is when it
    /// reached the simulator (wall clock); `rx_at` is the window time on the device's clock.
    pub fn on_downlink(
        &mut self,
        phy: &[u8],
        window: Window,
        rx_at: Micros,
        b: &Behaviour,
        rng: &mut impl RngCore,
        fx: &mut Vec<Effect>,
    ) {
        match self.phase {
            Phase::Joining => self.on_join_accept(phy, window, rx_at, b, rng, fx),
            Phase::Joined if self.rejoin.is_some() => {
                self.on_rejoin_accept(phy, window, rx_at, b, fx)
            }
            Phase::Joined => self.on_data_downlink(phy, b, fx),
            Phase::Off => {}
        }
    }

    /// The Join-accept answering the device's Rejoin-request: a new session at once (keys,
    /// address, counters, RJcount0 0), keeping the data rate and channels of the one it
    /// replaces; RekeyInd in its uplinks until RekeyConf.
    fn on_rejoin_accept(
        &mut self,
        phy: &[u8],
        window: Window,
        rx_at: Micros,
        b: &Behaviour,
        fx: &mut Vec<Effect>,
    ) {
        let Some(r) = self.rejoin.as_mut() else {
            return;
        };
        if r.rejected {
            return;
        }
        let a = match frames::open_rejoin_accept(&self.id, phy, r.answered, self.nonces.join_nonce)
        {
            Err(e) => {
                r.rejected = true;
                fx.push(Effect::Note(Note::JoinRejected(e.kind())));
                return;
            }
            Ok(a) => a,
        };
        let sent_at = r.sent_at;
        self.rejoin = None;
        let Some(old) = self.session.as_deref_mut() else {
            return;
        };
        self.nonces.join_nonce = Some(a.join_nonce.as_u32());
        let old_addr = old.dev_addr;
        old.dev_addr = a.dev_addr;
        old.keys = a.keys;
        old.fcnt_up = 0;
        old.last_nfcnt_down = None;
        old.last_afcnt_down = None;
        old.rx1_delay_us = u64::from(a.rx1_delay_s.max(1)) * 1_000_000;
        old.rx1_dr_offset = a.rx1_dr_offset;
        old.rx2 = (b.radio.region().rx2().0, a.rx2_dr);
        old.rekey_pending = true;
        old.answers.clear();
        old.ack_next = None;
        old.net_id = a.net_id;
        old.rj_count0 = 0;
        // Answered: no retry; a new session starts without periodic rejoins until told again.
        old.rejoin = None;
        old.rejoin_every = 0;
        old.rejoin_period_us = 0;
        old.rejoin_period_from = None;
        self.rx_closes_at = Micros::MAX;
        fx.push(Effect::Note(Note::Rejoined {
            window,
            request_sent_at: sent_at,
            old_addr,
            dev_addr: a.dev_addr,
        }));
        if b.uplinks {
            self.wake_at = self.next_periodic.max(rx_at);
            fx.push(Effect::Arm(self.wake_at, TimerKind::Uplink));
        }
    }

    fn on_join_accept(
        &mut self,
        phy: &[u8],
        window: Window,
        rx_at: Micros,
        b: &Behaviour,
        rng: &mut impl RngCore,
        fx: &mut Vec<Effect>,
    ) {
        let Some(j) = self.join.as_mut() else { return };
        if j.rejected {
            return;
        }
        match frames::open_join_accept(&self.id, phy, j.dev_nonce, self.nonces.join_nonce) {
            Err(e) => {
                j.rejected = true;
                fx.push(Effect::Note(Note::JoinRejected(e.kind())));
            }
            Ok(a) => {
                let sent_at = j.sent_at;
                self.join = None;
                self.nonces.join_nonce = Some(a.join_nonce.as_u32());
                let v11 = self.id.version.is_1_1() && a.opt_neg;
                let region = b.radio.region();
                self.session = Some(Box::new(Session {
                    dev_addr: a.dev_addr,
                    keys: a.keys,
                    fcnt_up: 0,
                    last_nfcnt_down: None,
                    last_afcnt_down: None,
                    rx1_delay_us: u64::from(a.rx1_delay_s.max(1)) * 1_000_000,
                    nb_trans: 1,
                    dr: self.link_dr.unwrap_or(b.data_rate),
                    channels: None,
                    dwell: region.boot_dwell_time(),
                    rx1_dr_offset: a.rx1_dr_offset,
                    rx2: (region.rx2().0, a.rx2_dr),
                    rekey_pending: v11,
                    device_time_tries: 3,
                    answers: Vec::new(),
                    ack_next: None,
                    net_id: a.net_id,
                    rj_count0: 0,
                    rejoin: None,
                    rejoin_every: 0,
                    rejoin_period_us: 0,
                    rejoin_period_from: None,
                }));
                if let Some(s) = self.session.as_deref_mut() {
                    let plan = joined_channels(b.radio.channels, a.cf_list, self.id.version);
                    s.set_channels(plan, &b.radio.channels);
                }
                self.phase = Phase::Joined;
                self.rx_closes_at = Micros::MAX;
                fx.push(Effect::Note(Note::Joined {
                    window,
                    request_sent_at: sent_at,
                    dev_addr: a.dev_addr,
                }));
                if b.uplinks {
                    // The device has the Join-accept at rx_at; it reports from then on.
                    let first = rng.gen_range(0..b.uplink_interval_us.max(1));
                    self.next_periodic = rx_at + first;
                    self.wake_at = self.next_periodic;
                    fx.push(Effect::Arm(self.wake_at, TimerKind::Uplink));
                } else {
                    self.wake_at = Micros::MAX;
                }
            }
        }
    }

    fn on_data_downlink(&mut self, phy: &[u8], b: &Behaviour, fx: &mut Vec<Effect>) {
        let Some(s) = self.session.as_deref_mut() else {
            return;
        };
        let conf_fcnt = self.frame.as_ref().map_or(0, |f| f.fcnt);
        let r = match frames::open_downlink(
            &s.keys,
            s.dev_addr,
            phy,
            s.last_nfcnt_down,
            s.last_afcnt_down,
            conf_fcnt,
        ) {
            Ok(r) => r,
            Err(e) => {
                fx.push(Effect::Note(Note::DownlinkRejected(match e {
                    frames::DownlinkError::Malformed => "malformed",
                    frames::DownlinkError::OtherDevice => "dev_addr",
                    frames::DownlinkError::Mic => "mic",
                    frames::DownlinkError::Replay => "replay",
                })));
                return;
            }
        };
        if r.app_counter {
            s.last_afcnt_down = Some(r.fcnt);
        } else {
            s.last_nfcnt_down = Some(r.fcnt);
        }
        if r.confirmed {
            s.ack_next = Some(r.fcnt);
        }
        fx.push(Effect::Note(Note::Downlink));
        if let Some(f) = self.frame.as_deref_mut() {
            f.got_downlink = true;
            if r.ack && f.confirmed && !f.acked {
                f.acked = true;
                fx.push(Effect::Note(Note::Acked {
                    fcnt: f.fcnt,
                    sent_at: f.sent_at,
                }));
            }
        }
        match answer_mac(s, &r.mac, b) {
            Some(0) => {}
            Some(n) => fx.push(Effect::Note(Note::MacAnswered(n))),
            None => fx.push(Effect::Note(Note::DownlinkRejected("mac_commands"))),
        }
    }
}

/// The channels a device has after its Join-accept: the boot channels with the CFList applied.
/// A CFList the region does not take (wrong type, out-of-band frequency) is ignored, as is a
/// channel-mask CFList (type 1) for a device older than LoRaWAN 1.0.3, which does not know it.
fn joined_channels(
    boot: ChannelPlan,
    cf_list: Option<protocol::join::CfList>,
    version: MacVersion,
) -> ChannelPlan {
    let mut channels = boot;
    if let Some(cf) = cf_list {
        if cf.cf_list_type() == 0 || version >= MacVersion::V1_0_3 {
            // On error the plan is unchanged.
            let _ = channels.apply_cf_list(&cf);
        }
    }
    channels
}

/// Processes downlink MAC commands (parsed by the `protocol` crate), queueing answers for the next
/// uplink's FOpts. Returns how many commands were answered or taken, or `None` if the bytes do not
/// parse (an unknown CID: the rest cannot be delimited, so nothing is applied). Commands the
/// region does not implement (TxParamSetupReq outside AS923 and AU915; NewChannelReq and
/// DlChannelReq in US915 and AU915) are ignored without an answer, as RP002 requires.
fn answer_mac(s: &mut Session, mac: &[u8], b: &Behaviour) -> Option<u8> {
    use protocol::mac::MacCommand as M;
    let cmds = protocol::mac::parse(Direction::Downlink, mac).ok()?;
    let region = b.radio.region();
    let mut answers = Vec::new();
    let mut i = 0;
    while i < cmds.len() {
        // A block of contiguous LinkADRReqs is one request, answered once per command.
        let block = cmds[i..]
            .iter()
            .take_while(|c| matches!(c, M::LinkADRReq { .. }))
            .count();
        if block > 0 {
            let ans = link_adr(s, &cmds[i..i + block], b);
            answers.extend(std::iter::repeat_n(ans, block));
            i += block;
            continue;
        }
        match cmds[i] {
            M::DutyCycleReq { .. } => answers.push(M::DutyCycleAns),
            M::RXParamSetupReq {
                rx1_dr_offset,
                rx2_data_rate,
                frequency,
            } => answers.push(rx_param_setup(
                s,
                region,
                rx1_dr_offset,
                rx2_data_rate,
                frequency,
            )),
            M::DevStatusReq => answers.push(M::DevStatusAns {
                battery: 255,
                margin: 20,
            }),
            M::NewChannelReq {
                ch_index,
                frequency,
                max_dr,
                min_dr,
            } if !region.is_fixed_plan() => {
                answers.push(new_channel(s, b, ch_index, frequency, (min_dr, max_dr)));
            }
            M::RXTimingSetupReq { delay } => {
                s.rx1_delay_us = u64::from(delay.max(1)) * 1_000_000;
                answers.push(M::RXTimingSetupAns);
            }
            M::TxParamSetupReq {
                downlink_dwell_time,
                uplink_dwell_time,
                ..
            } if region.has_tx_param_setup() => {
                s.dwell = DwellTime {
                    uplink: uplink_dwell_time,
                    downlink: downlink_dwell_time,
                };
                answers.push(M::TxParamSetupAns);
            }
            M::DlChannelReq { .. } if !region.is_fixed_plan() => answers.push(M::DlChannelAns {
                uplink_frequency_exists: true,
                channel_frequency_ok: true,
            }),
            M::RekeyConf { .. } => s.rekey_pending = false,
            M::ADRParamSetupReq { .. } => answers.push(M::ADRParamSetupAns),
            M::DeviceTimeAns { .. } => s.device_time_tries = 0,
            c @ (M::RejoinParamSetupReq { .. } | M::ForceRejoinReq { .. }) => {
                answers.extend(s.rejoin_command(c));
            }
            _ => {}
        }
        i += 1;
    }
    for a in &answers {
        // Answers are built from valid fields; one that would not encode is left out.
        let _ = a.encode_into(&mut s.answers);
    }
    Some(cmds.len().min(255) as u8)
}

/// One LinkADRReq block: the channel masks in order, then DataRate, TXPower and NbTrans of the
/// last command. All is applied only if the masks are valid for the region, the data rate is a
/// LoRa uplink rate that an enabled channel allows and that carries the run's payload (under
/// the device's dwell time), and TXPower exists; else nothing changes.
fn link_adr(s: &mut Session, block: &[MacCommand], b: &Behaviour) -> MacCommand {
    let r = b.radio.region();
    let mut masks = Vec::with_capacity(block.len());
    let mut last = (0x0F, 0x0F, 0);
    for c in block {
        if let MacCommand::LinkADRReq {
            data_rate,
            tx_power,
            ch_mask,
            ch_mask_cntl,
            nb_trans,
        } = *c
        {
            masks.push((ch_mask, ch_mask_cntl));
            last = (data_rate, tx_power, nb_trans);
        }
    }
    let (data_rate, tx_power, nb_trans) = last;
    let mut channels = *s.channels(&b.radio.channels);
    let mask_ok = channels.apply_link_adr(&masks).is_ok();
    let dr = if data_rate == 0x0F { s.dr } else { data_rate };
    let dr_ok = b.radio.lora(dr).is_some()
        && r.dr_def(dr).is_ok_and(|d| d.uplink)
        && channels.enabled_for_dr(dr).next().is_some()
        && r.max_payload(dr, s.dwell.uplink)
            .is_ok_and(|m| usize::from(m.frm_payload) >= b.payload_size);
    let power_ok = tx_power == 0x0F || r.tx_power_eirp_dbm(tx_power).is_some();
    if mask_ok && dr_ok && power_ok {
        s.set_channels(channels, &b.radio.channels);
        s.dr = dr;
        if nb_trans != 0 {
            s.nb_trans = nb_trans;
        }
    }
    MacCommand::LinkADRAns {
        power_ack: power_ok,
        data_rate_ack: dr_ok,
        channel_mask_ack: mask_ok,
    }
}

/// NewChannelReq (dynamic plans): defines or removes a channel if the index, frequency and
/// data-rate range are acceptable.
fn new_channel(s: &mut Session, b: &Behaviour, index: u8, freq: u32, drs: (u8, u8)) -> MacCommand {
    use protocol::region::RegionError as E;
    let mut plan = *s.channels(&b.radio.channels);
    let r = plan.set_channel(index, freq, drs.0, drs.1);
    s.set_channels(plan, &b.radio.channels);
    MacCommand::NewChannelAns {
        data_rate_range_ok: !matches!(r, Err(E::DataRate(_) | E::ChannelIndex(_))),
        channel_frequency_ok: !matches!(r, Err(E::Frequency(_) | E::ChannelIndex(_))),
    }
}

/// RXParamSetupReq: applied only if RX1DROffset is in the region's range, RX2DataRate is a
/// downlink LoRa/FSK rate and the frequency one the region allows for RX2.
fn rx_param_setup(s: &mut Session, r: Region, offset: u8, rx2_dr: u8, freq: u32) -> MacCommand {
    let rx1_dr_offset_ack = offset <= r.params().max_rx1_dr_offset;
    let rx2_data_rate_ack =
        r.data_rate(rx2_dr).is_ok() && r.dr_def(rx2_dr).is_ok_and(|d| d.downlink);
    let channel_ack = r.is_downlink_frequency(freq);
    if rx1_dr_offset_ack && rx2_data_rate_ack && channel_ack {
        s.rx1_dr_offset = offset;
        s.rx2 = (freq, rx2_dr);
    }
    MacCommand::RXParamSetupAns {
        rx1_dr_offset_ack,
        rx2_data_rate_ack,
        channel_ack,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_dev_nonces_never_repeat() {
        let mut seen = vec![false; 65536];
        for i in 0..=u16::MAX {
            let n = random_dev_nonce(0x0102_0304_0506_0708, i);
            assert!(!seen[n as usize], "DevNonce {n} repeated at index {i}");
            seen[n as usize] = true;
        }
        // Different devices get different sequences, and they do not look like a counter.
        let a: Vec<u16> = (0..8).map(|i| random_dev_nonce(1, i)).collect();
        let b: Vec<u16> = (0..8).map(|i| random_dev_nonce(2, i)).collect();
        assert_ne!(a, b);
        assert_ne!(a, (0..8).collect::<Vec<u16>>());
    }

    #[test]
    fn airtime_matches_known_values() {
        // 23-byte Join-request: SF7/125 61.696 ms, SF12/125 1482.752 ms (Semtech LoRa calculator).
        assert_eq!(airtime_us(7, 125, 23), 61_696);
        assert_eq!(airtime_us(12, 125, 23), 1_482_752);
        // 12-byte payload data uplink (25-byte PHYPayload) at SF7: 61.696 ms too (same symbols).
        assert_eq!(airtime_us(7, 125, 25), 61_696);
    }

    #[test]
    fn airtime_of_the_smallest_data_frame_matches_the_lora_calculator() {
        // A 13-byte PHYPayload (MHDR, FHDR without FOpts, FPort, MIC: an empty uplink), CR 4/5,
        // 8-symbol preamble, explicit header, CRC on, LDRO for SF11/12 at 125 kHz: SF7/125 kHz
        // 46.336 ms, the value Semtech's LoRa Calculator shows (the often-quoted "46.3 ms" for an
        // empty LoRaWAN uplink at SF7); SF9/125 164.864 ms, SF12/125 1155.072 ms and SF7/250
        // 23.168 ms worked by hand from AN1200.13's formula (45.25, 40.25, 35.25 and 45.25
        // symbols of 1.024, 4.096, 32.768 and 0.512 ms).
        assert_eq!(airtime_us(7, 125, 13), 46_336);
        assert_eq!(airtime_us(9, 125, 13), 164_864);
        assert_eq!(airtime_us(12, 125, 13), 1_155_072);
        assert_eq!(airtime_us(7, 250, 13), 23_168);
        // Under the sub-band's 1 %, SF7 13 bytes at t = 1 s frees the band at 1 s + 4.6336 s.
        assert_eq!(
            duty_cycle_free_at(1_000_000, airtime_us(7, 125, 13), SUB_BAND_DUTY_CYCLE),
            5_633_600
        );
    }

    #[test]
    fn join_data_rate_alternates_as_loramac_node() {
        let eu = RadioPlan::default();
        let usable = |d| eu.check(d, 0).is_ok();
        let seq: Vec<u8> = (1..=48).map(|t| alternate_join_dr(5, t, usable)).collect();
        for (t, dr) in (1..=48).zip(&seq) {
            let expect = match t {
                48 => 0,
                32 => 1,
                24 => 2,
                16 => 3,
                8 | 40 => 4,
                _ => 5,
            };
            assert_eq!(*dr, expect, "trial {t}");
        }
        // Never faster than the device's own rate.
        assert_eq!(alternate_join_dr(2, 8, usable), 2);
        assert_eq!(alternate_join_dr(2, 16, usable), 2);
        assert_eq!(alternate_join_dr(2, 32, usable), 1);
        // AS923 boots with UplinkDwellTime: DR0 and DR1 are not allowed, the base rate stays.
        let as923 = RadioPlan::new(Region::As923_1, &[]).unwrap();
        assert_eq!(alternate_join_dr(5, 48, |d| as923.check(d, 0).is_ok()), 5);
        assert_eq!(alternate_join_dr(5, 24, |d| as923.check(d, 0).is_ok()), 2);
    }

    #[test]
    fn join_duty_cycle_steps() {
        assert_eq!(join_duty_cycle(0), 0.01);
        assert_eq!(join_duty_cycle(3_600_000_000), 0.001);
        assert_eq!(join_duty_cycle(11 * 3_600_000_000), 0.0001);
    }
}

#[cfg(test)]
mod join_tests {
    use super::*;
    use protocol::derive::js_keys;
    use protocol::ids::{DevEui, JoinEui, JoinNonce, NetId};
    use protocol::join::{
        AnsweredRequest, CfList, DlSettings, JoinAcceptEncKey, JoinAcceptMicKey, JoinAcceptPayload,
        JoinRequest, JoinRootKey, RxDelay,
    };
    use protocol::keys::{AppKey, KeyCipher, NwkKey};
    use protocol::version::MacVersion;

    fn beh() -> Behaviour {
        Behaviour {
            uplinks: true,
            uplink_interval_us: 60_000_000,
            confirmed_ratio: 0.0,
            payload_size: 12,
            data_rate: 5,
            radio: RadioPlan::default(),
        }
    }

    fn device(version: MacVersion) -> Device {
        Device::new(
            Identity {
                dev_eui: DevEui::new(0x0004_A30B_001C_0530),
                join_eui: JoinEui::new(0x70B3_D5FF_FE00_0001),
                version,
                app_key: AppKey::new([0x2B; 16]),
                nwk_key: version.is_1_1().then(|| NwkKey::new([0x3C; 16])),
            },
            NonceState::default(),
        )
    }

    /// What a join server answers, built with the `protocol` crate's join-server side.
    fn accept(d: &Device, dev_nonce: u16, join_nonce: u32, opt_neg: bool) -> Vec<u8> {
        accept_with(d, dev_nonce, join_nonce, opt_neg, 0, None)
    }

    /// [`accept`] with an RX2 data rate and a CFList.
    fn accept_with(
        d: &Device,
        dev_nonce: u16,
        join_nonce: u32,
        opt_neg: bool,
        rx2_dr: u8,
        cf_list: Option<CfList>,
    ) -> Vec<u8> {
        let p = JoinAcceptPayload {
            join_nonce: JoinNonce::new(join_nonce).unwrap(),
            net_id: NetId::new(0x13).unwrap(),
            dev_addr: DevAddr::new(0x2601_0001),
            dl_settings: DlSettings::new(opt_neg, 0, rx2_dr).unwrap(),
            rx_delay: RxDelay::new(1).unwrap(),
            cf_list,
        };
        let app = KeyCipher::new(&d.id.app_key);
        match &d.id.nwk_key {
            Some(nwk_key) => {
                let nwk = KeyCipher::new(nwk_key);
                let js = js_keys(&nwk, d.id.dev_eui);
                let js_int = KeyCipher::new(&js.js_int_key);
                let mic = if opt_neg {
                    JoinAcceptMicKey::OptNeg {
                        js_int_key: &js_int,
                        join_eui: d.id.join_eui,
                        answered: AnsweredRequest::JoinRequest(DevNonce(dev_nonce)),
                    }
                } else {
                    JoinAcceptMicKey::Legacy(JoinRootKey::NwkKey(&nwk))
                };
                p.encrypt(mic, JoinAcceptEncKey::NwkKey(&nwk))
                    .as_bytes()
                    .to_vec()
            }
            None => p
                .encrypt(
                    JoinAcceptMicKey::Legacy(JoinRootKey::AppKey(&app)),
                    JoinAcceptEncKey::AppKey(&app),
                )
                .as_bytes()
                .to_vec(),
        }
    }

    fn rng() -> ChaCha8Rng {
        ChaCha8Rng::seed_from_u64(1)
    }

    /// Powers on and fires the first Join timer; returns the Join-request.
    fn first_join(d: &mut Device, fx: &mut Vec<Effect>) -> JoinRequest {
        d.power_on(0, 100, fx);
        assert_eq!(std::mem::take(fx), vec![Effect::Arm(100, TimerKind::Join)]);
        d.on_timer(TimerKind::Join, 100, &beh(), &mut rng(), fx);
        let Effect::Tx(tx) = &fx[0] else {
            panic!("{fx:?}")
        };
        let jr = JoinRequest::parse(&tx.phy).unwrap();
        assert_eq!(
            fx[1],
            Effect::Arm(
                100 + JOIN_ACCEPT_DELAY2_US + RX_GRACE_US,
                TimerKind::RxClosed
            )
        );
        fx.clear();
        jr
    }

    #[test]
    fn counter_dev_nonce_join_and_keys_on_device() {
        for (v, opt_neg) in [
            (MacVersion::V1_0_4, false),
            (MacVersion::V1_1, true),
            (MacVersion::V1_1, false),
        ] {
            let mut d = device(v);
            d.nonces.dev_nonce = 41;
            let mut fx = Vec::new();
            let jr = first_join(&mut d, &mut fx);
            assert_eq!(jr.dev_nonce, DevNonce(41), "{v}");
            assert_eq!(
                d.nonces.dev_nonce, 42,
                "the counter advances when the request is sent"
            );
            match &d.id.nwk_key {
                Some(k) => jr
                    .verify_mic(JoinRootKey::NwkKey(&KeyCipher::new(k)))
                    .unwrap(),
                None => jr
                    .verify_mic(JoinRootKey::AppKey(&KeyCipher::new(&d.id.app_key)))
                    .unwrap(),
            }
            let phy = accept(&d, 41, 7, opt_neg);
            assert!(d.join_accept_is_mine(&phy));
            d.on_downlink(&phy, Window::Rx1, 5_000_100, &beh(), &mut rng(), &mut fx);
            assert!(
                matches!(
                    fx[0],
                    Effect::Note(Note::Joined {
                        window: Window::Rx1,
                        request_sent_at: 100,
                        ..
                    })
                ),
                "{fx:?}"
            );
            let Effect::Arm(t, TimerKind::Uplink) = fx[1] else {
                panic!("{fx:?}")
            };
            assert!((5_000_100..5_000_100 + beh().uplink_interval_us).contains(&t));
            assert_eq!(d.phase(), Phase::Joined);
            assert_eq!(d.nonces.join_nonce, Some(7));
            assert_eq!(d.session().unwrap().dev_addr, DevAddr::new(0x2601_0001));
            assert_eq!(
                d.session().unwrap().rekey_pending(),
                opt_neg,
                "RekeyInd only for 1.1 with OptNeg"
            );
        }
    }

    #[test]
    fn data_uplinks_wait_for_the_sub_band_duty_cycle() {
        // Asked for every 2 s, but a 26-byte SF7 frame (61.696 ms) allows one every 6.17 s at 1 %.
        let b = Behaviour {
            uplink_interval_us: 2_000_000,
            ..beh()
        };
        let mut d = device(MacVersion::V1_0_4);
        let mut fx = Vec::new();
        let jr = first_join(&mut d, &mut fx);
        let phy = accept(&d, jr.dev_nonce.0, 1, false);
        d.on_downlink(&phy, Window::Rx1, 5_000_100, &b, &mut rng(), &mut fx);
        let Some(&Effect::Arm(mut t, TimerKind::Uplink)) = fx.last() else {
            panic!("{fx:?}")
        };
        // The Join-request (23 bytes at 100 µs) closed the band until 100 + 6.1696 s.
        let mut free_at = 100 + airtime_us(7, 125, 23) * 100;
        let (mut sent, mut deferred) = (Vec::new(), 0);
        while sent.len() < 4 {
            fx.clear();
            d.on_timer(TimerKind::Uplink, t, &b, &mut rng(), &mut fx);
            match fx.as_slice() {
                [Effect::Note(Note::DutyCycleDeferred), Effect::Arm(at, TimerKind::Uplink)] => {
                    assert!(
                        t < free_at,
                        "deferred at {t} though the band was free at {free_at}"
                    );
                    assert_eq!(*at, free_at, "sends as soon as it is allowed");
                    deferred += 1;
                    t = *at;
                }
                [Effect::Tx(tx), Effect::Arm(rx_closed, TimerKind::RxClosed)] => {
                    assert!(
                        t >= free_at,
                        "sent at {t} before the band was free at {free_at}"
                    );
                    assert!(matches!(tx.kind, TxKind::Data { .. }));
                    free_at = t + airtime_us(7, 125, tx.phy.len()) * 100;
                    sent.push(t);
                    let rx_closed = *rx_closed;
                    fx.clear();
                    d.on_timer(TimerKind::RxClosed, rx_closed, &b, &mut rng(), &mut fx);
                    let Some(&Effect::Arm(next, TimerKind::Uplink)) = fx.last() else {
                        panic!("{fx:?}")
                    };
                    t = next;
                }
                other => panic!("{other:?}"),
            }
        }
        // Every uplink after the first was due before the band was free and waited for it.
        assert!(deferred >= 3, "{deferred}");
        for w in sent.windows(2) {
            assert_eq!(w[1] - w[0], 6_169_600, "{sent:?}");
        }
    }

    #[test]
    fn random_dev_nonce_for_1_0_3() {
        let mut d = device(MacVersion::V1_0_3);
        let mut fx = Vec::new();
        let jr = first_join(&mut d, &mut fx);
        assert_eq!(jr.dev_nonce.0, random_dev_nonce(d.id.dev_eui.as_u64(), 0));
        assert_eq!(d.nonces.dev_nonce, 1);
        let phy = accept(&d, jr.dev_nonce.0, 1, false);
        d.on_downlink(&phy, Window::Rx2, 6_000_100, &beh(), &mut rng(), &mut fx);
        assert!(matches!(
            fx[0],
            Effect::Note(Note::Joined {
                window: Window::Rx2,
                ..
            })
        ));
    }

    #[test]
    fn refuses_bad_mic_wrong_nonce_and_replayed_join_nonce() {
        let mut d = device(MacVersion::V1_1);
        d.nonces.join_nonce = Some(7);
        let mut fx = Vec::new();
        let jr = first_join(&mut d, &mut fx);
        // An accept computed for another DevNonce fails the OptNeg MIC.
        let wrong = accept(&d, jr.dev_nonce.0.wrapping_add(1), 8, true);
        assert!(!d.join_accept_is_mine(&wrong));
        // JoinNonce 7 again: MIC fine, but not greater than the last one accepted.
        let replay = accept(&d, jr.dev_nonce.0, 7, true);
        assert!(d.join_accept_is_mine(&replay));
        d.on_downlink(&replay, Window::Rx1, 5_000_100, &beh(), &mut rng(), &mut fx);
        assert_eq!(fx, vec![Effect::Note(Note::JoinRejected("join_nonce"))]);
        assert_eq!(d.phase(), Phase::Joining);
        fx.clear();
        // The windows close: the attempt ends (not as a timeout) and a retry is armed.
        d.on_timer(
            TimerKind::RxClosed,
            100 + JOIN_ACCEPT_DELAY2_US + RX_GRACE_US,
            &beh(),
            &mut rng(),
            &mut fx,
        );
        assert_eq!(
            fx[0],
            Effect::Note(Note::JoinAttemptOver {
                sent_at: 100,
                timed_out: false
            })
        );
        assert!(matches!(fx[1], Effect::Arm(_, TimerKind::Join)));
    }

    #[test]
    fn timeout_backs_off_within_the_join_duty_cycle() {
        let mut d = device(MacVersion::V1_0_4);
        d.id.version = MacVersion::V1_0_4;
        let slow = Behaviour {
            data_rate: 0,
            ..beh()
        };
        let mut fx = Vec::new();
        d.power_on(0, 0, &mut fx);
        fx.clear();
        let mut sent = Vec::new();
        let mut t = 0;
        for _ in 0..5 {
            d.on_timer(TimerKind::Join, t, &slow, &mut rng(), &mut fx);
            assert!(matches!(fx[0], Effect::Tx(_)), "{fx:?}");
            sent.push(t);
            let close = t + JOIN_ACCEPT_DELAY2_US + RX_GRACE_US;
            fx.clear();
            d.on_timer(TimerKind::RxClosed, close, &slow, &mut rng(), &mut fx);
            assert_eq!(
                fx[0],
                Effect::Note(Note::JoinAttemptOver {
                    sent_at: t,
                    timed_out: true
                })
            );
            let Effect::Arm(next, TimerKind::Join) = fx[1] else {
                panic!("{fx:?}")
            };
            fx.clear();
            t = next;
        }
        // SF12 Join-requests take 1.48 s on air: at 1 % the next may start 148 s later at the earliest.
        let air = airtime_us(12, 125, 23);
        for w in sent.windows(2) {
            assert!(w[1] - w[0] >= air * 100, "{sent:?}");
            assert!(
                w[1] - w[0] < air * 100 + 1_000_000,
                "dither is at most a second: {sent:?}"
            );
        }
        assert_eq!(d.nonces.dev_nonce, 5, "each retry uses a new DevNonce");
    }

    #[test]
    fn stale_timers_and_power_cycles() {
        let mut d = device(MacVersion::V1_0_4);
        let mut fx = Vec::new();
        first_join(&mut d, &mut fx);
        d.power_off();
        d.on_timer(
            TimerKind::RxClosed,
            100 + JOIN_ACCEPT_DELAY2_US + RX_GRACE_US,
            &beh(),
            &mut rng(),
            &mut fx,
        );
        assert!(fx.is_empty(), "a powered-off device ignores its old timers");
        d.power_on(10_000_000, 5, &mut fx);
        fx.clear();
        d.on_timer(TimerKind::Join, 10_000_004, &beh(), &mut rng(), &mut fx);
        assert!(fx.is_empty(), "a timer that is not the armed one is stale");
        d.on_timer(TimerKind::Join, 10_000_005, &beh(), &mut rng(), &mut fx);
        let Effect::Tx(tx) = &fx[0] else { panic!() };
        assert_eq!(
            JoinRequest::parse(&tx.phy).unwrap().dev_nonce,
            DevNonce(1),
            "the counter survived the power cycle"
        );
    }

    /// A device of `version` joined in `b`'s region through a Join-accept carrying the region's
    /// RX2 data rate and `cf_list`, its Join-request sent on the channel the device drew.
    fn joined(version: MacVersion, b: &Behaviour, cf_list: Option<CfList>) -> Device {
        let mut d = device(version);
        let mut fx = Vec::new();
        d.power_on(0, 100, &mut fx);
        fx.clear();
        d.on_timer(TimerKind::Join, 100, b, &mut rng(), &mut fx);
        let Effect::Tx(tx) = &fx[0] else {
            panic!("{fx:?}")
        };
        assert!(b.radio.channels.is_enabled(tx.chan), "{tx:?}");
        let jr = JoinRequest::parse(&tx.phy).unwrap();
        fx.clear();
        let rx2_dr = b.radio.region().rx2().1;
        let phy = accept_with(&d, jr.dev_nonce.0, 1, version.is_1_1(), rx2_dr, cf_list);
        d.on_downlink(&phy, Window::Rx1, 5_000_100, b, &mut rng(), &mut fx);
        assert_eq!(d.phase(), Phase::Joined, "{fx:?}");
        d
    }

    /// A Join-accept answering the device's Rejoin-request `answered`, from the join server's
    /// side: JSIntKey MIC over the rejoin type, encrypted with JSEncKey.
    fn rejoin_accept(d: &Device, answered: AnsweredRequest, join_nonce: u32, addr: u32) -> Vec<u8> {
        let nwk = KeyCipher::new(d.id.nwk_key.as_ref().unwrap());
        let js = js_keys(&nwk, d.id.dev_eui);
        let (int, enc) = (
            KeyCipher::new(&js.js_int_key),
            KeyCipher::new(&js.js_enc_key),
        );
        JoinAcceptPayload {
            join_nonce: JoinNonce::new(join_nonce).unwrap(),
            net_id: NetId::new(0x13).unwrap(),
            dev_addr: DevAddr::new(addr),
            dl_settings: DlSettings::new(true, 0, 0).unwrap(),
            rx_delay: RxDelay::new(1).unwrap(),
            cf_list: None,
        }
        .encrypt(
            JoinAcceptMicKey::OptNeg {
                js_int_key: &int,
                join_eui: d.id.join_eui,
                answered,
            },
            JoinAcceptEncKey::JsEncKey(&enc),
        )
        .as_bytes()
        .to_vec()
    }

    #[test]
    fn force_rejoin_req_sends_rejoins_and_a_rejoin_accept_gives_a_new_session() {
        use protocol::join::{RejoinBody, RejoinMicKey, RejoinRequest};
        let b = beh();
        let mut d = joined(MacVersion::V1_1, &b, None);
        let force = MacCommand::ForceRejoinReq {
            period: 0,
            max_retries: 1,
            rejoin_type: 0,
            data_rate: 4,
        };
        assert!(mac(&mut d, &b, &[force]).is_empty(), "no answer");
        assert!(d.session().unwrap().rejoin_pending());
        // The next uplink timer sends a type 0 Rejoin-request (RJcount0 0, DR 4) instead of data.
        let mut fx = Vec::new();
        let t = 20_000_000;
        d.wake_at = t;
        d.on_timer(TimerKind::Uplink, t, &b, &mut rng(), &mut fx);
        let Effect::Tx(tx) = &fx[0] else {
            panic!("{fx:?}")
        };
        assert_eq!(
            (tx.kind, tx.dr),
            (
                TxKind::Rejoin {
                    rejoin_type: 0,
                    rj_count0: 0
                },
                4
            )
        );
        let rj = RejoinRequest::parse(&tx.phy).unwrap();
        let Keys::V1_1 { s, .. } = &d.session().unwrap().keys else {
            panic!()
        };
        assert!(rj
            .verify_mic(RejoinMicKey::SNwkSIntKey(&KeyCipher::new(s)))
            .is_ok());
        assert!(matches!(rj.body, RejoinBody::Type0 { rj_count0: 0, .. }));
        assert_eq!(
            d.rx_delays(),
            (JOIN_ACCEPT_DELAY1_US, JOIN_ACCEPT_DELAY2_US)
        );
        assert!(d.awaiting_join_accept() && !d.awaiting_downlink());
        // No Join-accept: the session goes on; the retry (Max_Retries 1) waits 32..64 s.
        fx.clear();
        let closes = d.rx_closes_at;
        d.on_timer(TimerKind::RxClosed, closes, &b, &mut rng(), &mut fx);
        assert!(
            fx.contains(&Effect::Note(Note::RejoinMissed { sent_at: t })),
            "{fx:?}"
        );
        let old_addr = d.session().unwrap().dev_addr;
        let plan = d.session().unwrap().rejoin.unwrap();
        assert!(
            (t + 32_000_000..t + 64_000_000).contains(&plan.not_before),
            "{plan:?}"
        );
        // The retry carries RJcount0 1; its Join-accept (JSEncKey) gives a new session.
        fx.clear();
        d.wake_at = plan.not_before;
        d.on_timer(TimerKind::Uplink, plan.not_before, &b, &mut rng(), &mut fx);
        let Effect::Tx(tx) = &fx[0] else {
            panic!("{fx:?}")
        };
        assert_eq!(
            tx.kind,
            TxKind::Rejoin {
                rejoin_type: 0,
                rj_count0: 1
            }
        );
        let answered = AnsweredRequest::Rejoin0 { rj_count0: 1 };
        assert!(!d.join_accept_is_mine(&rejoin_accept(
            &d,
            AnsweredRequest::Rejoin0 { rj_count0: 0 },
            2,
            0x2601_0002
        )));
        let phy = rejoin_accept(&d, answered, 2, 0x2601_0002);
        assert!(d.join_accept_is_mine(&phy));
        fx.clear();
        d.on_downlink(
            &phy,
            Window::Rx1,
            plan.not_before + JOIN_ACCEPT_DELAY1_US,
            &b,
            &mut rng(),
            &mut fx,
        );
        assert!(
            fx.iter().any(
                |e| matches!(e, Effect::Note(Note::Rejoined { old_addr: o, dev_addr, .. })
            if *o == old_addr && *dev_addr == DevAddr::new(0x2601_0002))
            ),
            "{fx:?}"
        );
        let s = d.session().unwrap();
        assert_eq!(
            (s.dev_addr, s.fcnt_up, s.rj_count0),
            (DevAddr::new(0x2601_0002), 0, 0)
        );
        assert!(
            s.rekey_pending() && !s.rejoin_pending(),
            "RekeyInd next; no more retries"
        );
        assert_eq!(d.nonces.join_nonce, Some(2));
        // A replayed Join-accept (same JoinNonce) is not taken again.
        assert!(!d.awaiting_join_accept());
    }

    /// What `d` transmits at `n` uplink timers `step_us` apart from 10 s (each answered
    /// at once: no frame or rejoin awaits its downlink, no duty cycle).
    fn uplink_kinds(d: &mut Device, b: &Behaviour, n: usize, step_us: Micros) -> Vec<TxKind> {
        let mut kinds = Vec::new();
        let mut t = 10_000_000;
        for _ in 0..n {
            let mut fx = Vec::new();
            d.wake_at = t;
            d.frame = None;
            d.rejoin = None;
            d.next_tx_allowed = 0;
            d.on_timer(TimerKind::Uplink, t, b, &mut rng(), &mut fx);
            if let Some(Effect::Tx(tx)) = fx.first() {
                kinds.push(tx.kind);
            }
            t += step_us;
        }
        kinds
    }

    #[test]
    fn rejoin_param_setup_req_makes_periodic_type_0_rejoins_and_1_0_sessions_never_rejoin() {
        let b = beh();
        let mut d = joined(MacVersion::V1_1, &b, None);
        let setup = MacCommand::RejoinParamSetupReq {
            max_time_n: 0,
            max_count_n: 0,
        };
        assert_eq!(
            mac(&mut d, &b, &[setup]),
            vec![MacCommand::RejoinParamSetupAns { time_ok: true }]
        );
        assert_eq!(d.session().unwrap().rejoin_every, 16);
        let kinds = uplink_kinds(&mut d, &b, 17, 60_000_000);
        assert!(
            matches!(kinds[15], TxKind::Data { fcnt: 15, .. }),
            "{kinds:?}"
        );
        assert_eq!(
            kinds[16],
            TxKind::Rejoin {
                rejoin_type: 0,
                rj_count0: 0
            },
            "after the 16th uplink"
        );
        // A 1.0 session takes neither command.
        let mut old = joined(MacVersion::V1_0_4, &b, None);
        let force = MacCommand::ForceRejoinReq {
            period: 0,
            max_retries: 0,
            rejoin_type: 2,
            data_rate: 5,
        };
        mac(&mut old, &b, &[force]);
        assert!(!old.session().unwrap().rejoin_pending());
    }

    /// MaxTimeN: a type 0 once 2^(MaxTimeN+10) s passed, though MaxCountN's uplinks did not.
    #[test]
    fn rejoin_param_setup_req_max_time_n_makes_a_type_0_rejoin_after_its_time() {
        let b = beh();
        let mut d = joined(MacVersion::V1_1, &b, None);
        let setup = MacCommand::RejoinParamSetupReq {
            max_time_n: 0,
            max_count_n: 15,
        };
        mac(&mut d, &b, &[setup]);
        let s = d.session().unwrap();
        assert_eq!(
            (s.rejoin_every, s.rejoin_period_us),
            (1 << 19, 1_024_000_000)
        );
        let kinds = uplink_kinds(&mut d, &b, 7, 300_000_000);
        // Counted from the first uplink after the command (t0): the uplink at t0 + 1,200 s is
        // the first past 1,024 s, and the next transmission is the Rejoin-request.
        for (i, k) in kinds.iter().enumerate().take(5) {
            assert!(
                matches!(k, TxKind::Data { fcnt, .. } if *fcnt == i as u32),
                "{kinds:?}"
            );
        }
        assert_eq!(
            kinds[5],
            TxKind::Rejoin {
                rejoin_type: 0,
                rj_count0: 0
            },
            "{kinds:?}"
        );
        assert!(
            matches!(kinds[6], TxKind::Data { fcnt: 5, .. }),
            "{kinds:?}"
        );
    }

    fn in_region(region: Region, sub_bands: &[u8], data_rate: u8) -> Behaviour {
        Behaviour {
            data_rate,
            radio: RadioPlan::new(region, sub_bands).unwrap(),
            ..beh()
        }
    }

    /// Runs `cmds` through the session's MAC handling; returns the uplink answers queued.
    fn mac(d: &mut Device, b: &Behaviour, cmds: &[MacCommand]) -> Vec<MacCommand> {
        let s = d.session.as_deref_mut().unwrap();
        s.answers.clear();
        let bytes = protocol::mac::encode(Direction::Downlink, cmds).unwrap();
        assert_eq!(answer_mac(s, &bytes, b), Some(cmds.len() as u8));
        protocol::mac::parse(Direction::Uplink, &s.answers).unwrap()
    }

    fn link_adr(data_rate: u8, tx_power: u8, ch_mask: u16, ch_mask_cntl: u8) -> MacCommand {
        MacCommand::LinkADRReq {
            data_rate,
            tx_power,
            ch_mask,
            ch_mask_cntl,
            nb_trans: 2,
        }
    }

    const ALL_ACK: MacCommand = MacCommand::LinkADRAns {
        power_ack: true,
        data_rate_ack: true,
        channel_mask_ack: true,
    };

    #[test]
    fn us915_link_adr_blocks_apply_masks_or_nothing() {
        let b = in_region(Region::Us915, &[2], 3);
        let mut d = joined(MacVersion::V1_0_4, &b, None);
        let on = |d: &Device| -> Vec<u8> {
            d.session()
                .unwrap()
                .channels(&b.radio.channels)
                .enabled()
                .map(|(i, _)| i)
                .collect()
        };
        assert_eq!(on(&d), [8, 9, 10, 11, 12, 13, 14, 15, 65]);
        // ChMaskCntl 7 (125 kHz off, channel 65 on), then ChMaskCntl 0 for 8..=11, DR2.
        let ans = mac(
            &mut d,
            &b,
            &[link_adr(2, 3, 0x0002, 7), link_adr(2, 3, 0x0F00, 0)],
        );
        assert_eq!(
            ans,
            [ALL_ACK, ALL_ACK],
            "one LinkADRAns per command of the block"
        );
        assert_eq!(on(&d), [8, 9, 10, 11, 65]);
        assert_eq!(
            (d.session().unwrap().dr(), d.session().unwrap().nb_trans()),
            (2, 2)
        );
        // DR4 (SF8/500 kHz) needs channel 65: with ChMaskCntl 7 and no 500 kHz channel the
        // mask itself is refused (no channel left), and nothing changes.
        let before = *d.session().unwrap().channels(&b.radio.channels);
        let ans = mac(&mut d, &b, &[link_adr(4, 3, 0x0000, 7)]);
        assert_eq!(
            ans,
            [MacCommand::LinkADRAns {
                power_ack: true,
                data_rate_ack: true,
                channel_mask_ack: false
            }]
        );
        assert_eq!(*d.session().unwrap().channels(&b.radio.channels), before);
        assert_eq!(d.session().unwrap().dr(), 2);
        // A downlink-only DR, LR-FHSS, a TXPower past 14: refused bit by bit, nothing applied.
        for (dr, power, want) in [
            (8, 3, (true, false)),
            (5, 3, (true, false)),
            (3, 15, (true, true)),
            (3, 14, (true, true)),
        ] {
            let ans = mac(&mut d, &b, &[link_adr(dr, power, 0x00FF, 6)]);
            let MacCommand::LinkADRAns {
                power_ack,
                data_rate_ack,
                channel_mask_ack,
            } = ans[0]
            else {
                panic!("{ans:?}")
            };
            assert_eq!(
                (power_ack, data_rate_ack, channel_mask_ack),
                (want.0, want.1, true),
                "DR{dr}"
            );
        }
        assert_eq!(
            on(&d).len(),
            64 + 8,
            "ChMaskCntl 6: all 125 kHz on, ChMask for 64..=71"
        );
        // ChMask bits 8..15 with ChMaskCntl 6 would be channels 72..79, which do not exist.
        let ans = mac(&mut d, &b, &[link_adr(3, 3, 0x01FF, 6)]);
        assert!(matches!(
            ans[0],
            MacCommand::LinkADRAns {
                channel_mask_ack: false,
                ..
            }
        ));
        // The data rate must carry the run's 12-byte payload: US915 DR0 carries 11.
        let ans = mac(&mut d, &b, &[link_adr(0, 0, 0xFFFF, 0)]);
        assert!(matches!(
            ans[0],
            MacCommand::LinkADRAns {
                data_rate_ack: false,
                ..
            }
        ));
        // TxParamSetupReq, NewChannelReq and DlChannelReq do not exist in US915: no answer.
        let ans = mac(
            &mut d,
            &b,
            &[
                MacCommand::TxParamSetupReq {
                    downlink_dwell_time: true,
                    uplink_dwell_time: true,
                    max_eirp: 5,
                },
                MacCommand::NewChannelReq {
                    ch_index: 3,
                    frequency: 903_100_000,
                    max_dr: 3,
                    min_dr: 0,
                },
            ],
        );
        assert!(ans.is_empty(), "{ans:?}");
    }

    #[test]
    fn eu868_link_adr_new_channel_and_rx_param_setup() {
        let b = beh();
        let mut d = joined(MacVersion::V1_0_3, &b, None);
        // NewChannelReq defines channel 3; a default channel or an out-of-band frequency not.
        let ans = mac(
            &mut d,
            &b,
            &[
                MacCommand::NewChannelReq {
                    ch_index: 3,
                    frequency: 867_100_000,
                    max_dr: 5,
                    min_dr: 0,
                },
                MacCommand::NewChannelReq {
                    ch_index: 1,
                    frequency: 867_300_000,
                    max_dr: 5,
                    min_dr: 0,
                },
                MacCommand::NewChannelReq {
                    ch_index: 4,
                    frequency: 915_000_000,
                    max_dr: 5,
                    min_dr: 0,
                },
            ],
        );
        let new_ch = |dr, f| MacCommand::NewChannelAns {
            data_rate_range_ok: dr,
            channel_frequency_ok: f,
        };
        assert_eq!(
            ans,
            [
                new_ch(true, true),
                new_ch(false, false),
                new_ch(true, false)
            ]
        );
        assert_eq!(
            d.session()
                .unwrap()
                .channels(&b.radio.channels)
                .index_of(867_100_000),
            Some(3)
        );
        // ChMaskCntl 0 enabling an undefined channel (4) is refused; 6 turns all four on.
        let ans = mac(&mut d, &b, &[link_adr(5, 1, 0b1_1000, 0)]);
        assert!(matches!(
            ans[0],
            MacCommand::LinkADRAns {
                channel_mask_ack: false,
                ..
            }
        ));
        assert_eq!(mac(&mut d, &b, &[link_adr(5, 7, 0, 6)]), [ALL_ACK]);
        assert_eq!(
            d.session()
                .unwrap()
                .channels(&b.radio.channels)
                .enabled()
                .count(),
            4
        );
        let ans = mac(&mut d, &b, &[link_adr(5, 8, 0x000F, 0)]);
        assert!(
            matches!(
                ans[0],
                MacCommand::LinkADRAns {
                    power_ack: false,
                    ..
                }
            ),
            "TXPower 8"
        );
        // RXParamSetupReq: applied when valid, and RX2 follows it.
        let ans = mac(
            &mut d,
            &b,
            &[MacCommand::RXParamSetupReq {
                rx1_dr_offset: 2,
                rx2_data_rate: 3,
                frequency: 869_525_000,
            }],
        );
        let rx_ans = |a, b_, c| MacCommand::RXParamSetupAns {
            rx1_dr_offset_ack: a,
            rx2_data_rate_ack: b_,
            channel_ack: c,
        };
        assert_eq!(ans, [rx_ans(true, true, true)]);
        assert_eq!(d.session().unwrap().rx_params(), (2, (869_525_000, 3)));
        assert_eq!(
            d.rx_radio(Window::Rx2, &b),
            Some((869_525_000, DataRate::lora(9, 125).unwrap()))
        );
        // The Join-request went out at DR5: RX1 is DR5 − 2 = DR3 on the same frequency.
        assert_eq!(
            d.rx_radio(Window::Rx1, &b),
            Some((d.last_tx_freq, DataRate::lora(9, 125).unwrap()))
        );
        let ans = mac(
            &mut d,
            &b,
            &[MacCommand::RXParamSetupReq {
                rx1_dr_offset: 6,
                rx2_data_rate: 9,
                frequency: 923_300_000,
            }],
        );
        assert_eq!(ans, [rx_ans(false, false, false)]);
        assert_eq!(d.session().unwrap().rx_params(), (2, (869_525_000, 3)));
        // TxParamSetupReq is not implemented in EU868: no answer.
        let ans = mac(
            &mut d,
            &b,
            &[MacCommand::TxParamSetupReq {
                downlink_dwell_time: true,
                uplink_dwell_time: true,
                max_eirp: 5,
            }],
        );
        assert!(ans.is_empty());
    }

    #[test]
    fn as923_dwell_time_and_rx1() {
        // AS923-2 boots with both dwell times on: RX1 of a DR2 uplink never goes below DR2.
        let b = in_region(Region::As923_2, &[], 2);
        let mut d = joined(MacVersion::V1_0_4, &b, None);
        assert_eq!(d.last_tx_dr, 2);
        assert!([921_400_000, 921_600_000].contains(&d.last_tx_freq));
        d.session.as_deref_mut().unwrap().rx1_dr_offset = 1;
        let sf = |d: &Device| match d.rx_radio(Window::Rx1, &b) {
            Some((
                _,
                DataRate::Lora {
                    spreading_factor, ..
                },
            )) => spreading_factor,
            other => panic!("{other:?}"),
        };
        assert_eq!(sf(&d), 10, "MinDR 2 under DownlinkDwellTime");
        let ans = mac(
            &mut d,
            &b,
            &[MacCommand::TxParamSetupReq {
                downlink_dwell_time: false,
                uplink_dwell_time: false,
                max_eirp: 5,
            }],
        );
        assert_eq!(ans, [MacCommand::TxParamSetupAns]);
        assert_eq!(d.session().unwrap().dwell(), DwellTime::default());
        assert_eq!(sf(&d), 11, "DR2 − 1 = DR1 without dwell time");
        // Without uplink dwell time DR0 is allowed (51 bytes); with it, not at all.
        assert_eq!(mac(&mut d, &b, &[link_adr(0, 1, 0, 6)]), [ALL_ACK]);
        d.session.as_deref_mut().unwrap().dwell.uplink = true;
        let ans = mac(&mut d, &b, &[link_adr(1, 1, 0, 6)]);
        assert!(matches!(
            ans[0],
            MacCommand::LinkADRAns {
                data_rate_ack: false,
                ..
            }
        ));
        assert_eq!(
            d.rx_radio(Window::Rx2, &b),
            Some((921_400_000, DataRate::lora(10, 125).unwrap())),
            "RX2: AS923-1 − 1.8 MHz, DR2"
        );
    }

    #[test]
    fn cf_lists_at_join() {
        // US915: a channel-mask CFList narrows sub-bands 2 and 3 to 2 for 1.0.3 and later; a
        // 1.0.2 device does not know it and keeps its boot channels.
        let b = in_region(Region::Us915, &[2, 3], 3);
        let sb2 = ChannelPlan::with_sub_bands(Region::Us915, &[2]).unwrap();
        let d = joined(MacVersion::V1_0_3, &b, sb2.cf_list());
        assert_eq!(*d.session().unwrap().channels(&b.radio.channels), sb2);
        let d = joined(MacVersion::V1_0_2, &b, sb2.cf_list());
        assert_eq!(
            *d.session().unwrap().channels(&b.radio.channels),
            b.radio.channels
        );
        // EU868: a frequency CFList adds channels 3..=7 for every version; one of the wrong
        // type is ignored.
        let eu = beh();
        let cf = CfList::from_frequencies_hz([867_100_000, 867_300_000, 0, 0, 0]);
        let d = joined(MacVersion::V1_0_2, &eu, cf);
        assert_eq!(
            d.session()
                .unwrap()
                .channels(&eu.radio.channels)
                .enabled()
                .count(),
            5
        );
        let d = joined(MacVersion::V1_1, &eu, sb2.cf_list());
        assert_eq!(
            *d.session().unwrap().channels(&eu.radio.channels),
            ChannelPlan::new(Region::Eu868)
        );
        assert!(
            d.session().unwrap().channels.is_none(),
            "a session on the boot channels keeps no copy of them"
        );
    }

    #[test]
    fn the_join_duty_cycle_limits_join_requests_only() {
        // US915 DR1 (SF9): a 23-byte Join-request is 206 ms on air, so the join duty cycle (1 %
        // in the first hour) holds the next Join-request back 20.6 s; the region has no
        // sub-band duty cycle, so the first data uplink after the Join-accept goes at once.
        let b = in_region(Region::Us915, &[2], 1);
        let air = airtime_us(9, 125, 23);
        assert_eq!(air, 205_824);
        let mut d = joined(MacVersion::V1_0_4, &b, None);
        assert_eq!(d.next_join_allowed, 100 + air * 100);
        assert_eq!(d.next_tx_allowed, 100, "no sub-band duty cycle in US915");
        let t = 5_000_100 + 1_000_000;
        d.wake_at = t;
        let mut fx = Vec::new();
        d.on_timer(TimerKind::Uplink, t, &b, &mut rng(), &mut fx);
        assert!(
            matches!(&fx[0], Effect::Tx(tx) if matches!(tx.kind, TxKind::Data { fcnt: 0, .. })),
            "the first uplink is not deferred: {fx:?}"
        );
        // Without an answer, the next Join-request waits for the join duty cycle.
        let mut d = device(MacVersion::V1_0_4);
        d.power_on(0, 0, &mut fx);
        fx.clear();
        d.on_timer(TimerKind::Join, 0, &b, &mut rng(), &mut fx);
        let Effect::Arm(closed, TimerKind::RxClosed) = fx[1] else {
            panic!("{fx:?}")
        };
        fx.clear();
        d.on_timer(TimerKind::RxClosed, closed, &b, &mut rng(), &mut fx);
        let Effect::Arm(next, TimerKind::Join) = fx[1] else {
            panic!("{fx:?}")
        };
        assert!((air * 100..air * 100 + 1_000_000).contains(&next), "{next}");
        // In EU868 the sub-band's 1 % also holds data frames back after a Join-request.
        let eu = beh();
        let d = joined(MacVersion::V1_0_4, &eu, None);
        let air = airtime_us(7, 125, 23);
        assert_eq!(d.next_tx_allowed, 100 + air * 100);
        assert_eq!(d.next_join_allowed, 100 + air * 100);
    }

    #[test]
    fn us915_uplinks_use_the_region_and_have_no_duty_cycle() {
        // Sub-band 2 at DR3: channels 8..=15, 902.3 + 0.2 × ch MHz; no sub-band duty cycle, so
        // the next uplink may go as soon as the receive windows close.
        let b = Behaviour {
            uplink_interval_us: 3_000_000,
            ..in_region(Region::Us915, &[2], 3)
        };
        let mut d = joined(MacVersion::V1_0_4, &b, None);
        let mut fx = Vec::new();
        let mut t = 5_000_100 + 3_000_000;
        for _ in 0..20 {
            d.wake_at = t;
            d.on_timer(TimerKind::Uplink, t, &b, &mut rng(), &mut fx);
            let Effect::Tx(tx) = &fx[0] else {
                panic!("{fx:?}")
            };
            assert!((8..16).contains(&tx.chan), "{tx:?}");
            assert_eq!(tx.freq_hz, 902_300_000 + 200_000 * u32::from(tx.chan));
            assert_eq!(tx.dr, 3);
            assert_eq!(
                d.rx_radio(Window::Rx1, &b),
                Some((
                    923_300_000 + 600_000 * u32::from(tx.chan % 8),
                    DataRate::lora(7, 500).unwrap()
                ))
            );
            assert_eq!(
                d.rx_radio(Window::Rx2, &b),
                Some((923_300_000, DataRate::lora(12, 500).unwrap()))
            );
            assert_eq!(d.next_tx_allowed, t, "no duty cycle in US915");
            let Effect::Arm(closed, TimerKind::RxClosed) = fx[1] else {
                panic!("{fx:?}")
            };
            fx.clear();
            d.on_timer(TimerKind::RxClosed, closed, &b, &mut rng(), &mut fx);
            fx.clear();
            t = closed + 3_000_000;
        }
    }
}
