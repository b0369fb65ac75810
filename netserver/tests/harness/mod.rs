//! An in-memory harness for the network server's cores, in the style of quinn-proto's `Pair`:
//! the gateway core ([`Gwmp`]) and the uplink core ([`uplink::handle`]) driven with a fake
//! clock, fake gateways (GWMP datagrams built in memory), fake devices (the protocol crate's
//! device-side framing) and a fake join server (an answer delay on the fake clock), no sockets
//! and no threads. It does what the shells do between the cores: hold a data frame for its
//! collection window, gather its receptions, hand each candidate session's lock in, and
//! forget a replaced session once its successor is in use.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use netserver::core::data::{self as steps, UplinkResult};
use netserver::core::dedup::Dedup;
use netserver::core::device::FrameCounters;
use netserver::core::gateway::{Action, GatewayEnv, GatewayProtocol, Path};
use netserver::core::reception::Reception;
use netserver::core::scheduler::Scheduler;
use netserver::core::uplink::{self, Decision, DownlinkFailure, Env, Input, ScheduledDownlink};
use netserver::gateway::gwmp::Gwmp;
use netserver::gateway::registry::GatewayRegistry;
use netserver::keys::{LabeledKek, NetworkKeys};
use netserver::ops::config::Config;
use netserver::store::counters::CounterRecord;
use netserver::store::pending_mac::PendingMacs;
use netserver::store::queue::{DownlinkQueue, QueuedDownlink};
use netserver::store::session::Session;
use netserver::store::stored::{RxParams, StoredSession, STORED_SESSION_VERSION};
use netserver::store::table::Sessions;
use protocol::data::{
    DataFrame, Downlink, FramePayload, FrmPayload, NetworkSessionKeys, SessionCrypto, Uplink,
    UplinkMicParams,
};
use protocol::gwmp::{CrcStatus, DataRate, Packet, PushData, RxPk, Token, TxTiming};
use protocol::ids::{DevAddr, DevEui, DevNonce, GatewayEui, JoinEui};
use protocol::keys::{AppSKey, FNwkSIntKey, Kek, NwkSEncKey, NwkSKey, SNwkSIntKey};
use protocol::keywrap::KeyEnvelope;
use protocol::mac::{self, MacCommand};
use protocol::region::Region;
use protocol::version::MacVersion;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// A fake gateway: an EUI, the address its datagrams come from, and its radio report.
#[derive(Debug, Clone, Copy)]
pub struct FakeGateway {
    /// Its EUI.
    pub eui: GatewayEui,
    /// Where its datagrams come from (never written to: there is no socket).
    pub addr: SocketAddr,
    /// The SNR it reports, dB.
    pub snr: f64,
    /// The RSSI it reports, dBm.
    pub rssi: i32,
    /// Its `tmst` counter at the harness's start, µs.
    pub tmst0: u32,
}

impl FakeGateway {
    /// Gateway `n` (1, 2, ...) with the given signal quality.
    pub fn new(n: u8, snr: f64, rssi: i32) -> Self {
        Self {
            eui: GatewayEui::new(0xAA55_0000_0000_0000 | u64::from(n)),
            addr: SocketAddr::from(([127, 0, 0, 1], 40_000 + u16::from(n))),
            snr,
            rssi,
            tmst0: u32::from(n) * 1_000_000,
        }
    }
}

/// A fake device with an active session: it frames uplinks and opens downlinks.
#[derive(Debug)]
pub struct FakeDevice {
    /// Its DevEUI.
    pub dev_eui: DevEui,
    /// Its DevAddr.
    pub dev_addr: DevAddr,
    /// Its LoRaWAN version.
    pub version: MacVersion,
    keys: NetworkSessionKeys,
    app: AppSKey,
    /// The next FCntUp.
    pub f_cnt_up: u32,
    /// Its uplink radio (what the gateways hear and the 1.1 MIC covers).
    pub radio: DeviceRadio,
    /// The receive parameters its session has (the region's defaults).
    pub rx: RxParams,
}

/// A device's uplink channel and data rate.
#[derive(Debug, Clone, Copy)]
pub struct DeviceRadio {
    /// The uplink frequency, Hz.
    pub freq_hz: u32,
    /// Its channel index in the region's plan (LoRaWAN 1.1's TxCh).
    pub tx_ch: u8,
    /// The uplink data rate index (TxDr).
    pub tx_dr: u8,
    /// The `datr` the gateways report.
    pub datr: DataRate,
}

impl DeviceRadio {
    /// EU868 channel 0 (868.1 MHz) at DR5 (SF7BW125), what the fake gateways report by default.
    pub const EU868: Self = Self {
        freq_hz: 868_100_000,
        tx_ch: 0,
        tx_dr: 5,
        datr: DataRate::Lora {
            spreading_factor: 7,
            bandwidth_khz: 125,
        },
    };
}

impl FakeDevice {
    /// Device `n`: LoRaWAN `version`, its own keys (1.1 keys for a 1.1 device).
    pub fn new(n: u32, version: MacVersion) -> Self {
        let k = |b: u8| {
            let mut k = [b; 16];
            k[..4].copy_from_slice(&n.to_le_bytes());
            k
        };
        let keys = if version.is_1_1() {
            NetworkSessionKeys::V1_1 {
                f_nwk_s_int_key: FNwkSIntKey::new(k(2)),
                s_nwk_s_int_key: SNwkSIntKey::new(k(3)),
                nwk_s_enc_key: NwkSEncKey::new(k(4)),
            }
        } else {
            NetworkSessionKeys::V1_0 {
                nwk_s_key: NwkSKey::new(k(1)),
            }
        };
        Self {
            dev_eui: DevEui::new(0x0200_0000_0000_0000 | u64::from(n)),
            dev_addr: DevAddr::new(0x2600_0000 | n),
            version,
            keys,
            app: AppSKey::new(k(0xA5)),
            f_cnt_up: 0,
            radio: DeviceRadio::EU868,
            rx: RxParams::region_default(Region::Eu868),
        }
    }

    /// Device `n` in `region`, sending on `radio`.
    pub fn in_region(n: u32, version: MacVersion, region: Region, radio: DeviceRadio) -> Self {
        Self {
            radio,
            rx: RxParams::region_default(region),
            ..Self::new(n, version)
        }
    }

    /// The device's session crypto.
    pub fn crypto(&self) -> SessionCrypto {
        SessionCrypto::new(&self.keys, Some(&self.app))
    }

    /// The session the network server holds for it, counters from 0 (the AppSKey in clear, so
    /// payloads are delivered decrypted).
    pub fn session(&self, labels: &netserver::store::labels::KekLabels) -> Session {
        let ns_kek = LabeledKek {
            label: "ns".into(),
            key: Kek::new([0x11; 16]),
        };
        let keys = NetworkKeys::from(self.keys.clone());
        let stored = StoredSession {
            version: STORED_SESSION_VERSION,
            dev_eui: self.dev_eui,
            join_eui: JoinEui::new(0x70B3_D57E_D000_0001),
            dev_addr: self.dev_addr,
            mac_version: Some(self.version),
            dev_nonce: DevNonce(1),
            network_keys: keys.seal(&ns_kek),
            app_s_key: Some(KeyEnvelope::seal("", None, &self.app).unwrap()),
            session_key_id: None,
            rx: self.rx,
            counters: FrameCounters::default(),
            created_at_ms: 1_700_000_000_000,
            lifetime_s: None,
            last_rj_count0: None,
            owner: None,
        };
        Session::new(&stored, keys, labels, None).unwrap()
    }

    /// Frames an uplink with counter `fcnt` (the device's own counter is not changed).
    pub fn frame_at(&self, fcnt: u32, f: UplinkFrame) -> Vec<u8> {
        let fopts = mac::encode(protocol::data::Direction::Uplink, &f.fopts).unwrap();
        Uplink {
            confirmed: f.confirmed,
            dev_addr: self.dev_addr,
            fcnt,
            adr: f.adr,
            adr_ack_req: false,
            ack: f.ack,
            class_b: false,
            fopts,
            payload: match f.payload {
                Some(p) => FramePayload::Application {
                    f_port: 1,
                    payload: FrmPayload(p),
                },
                None => FramePayload::None,
            },
        }
        .build(
            &self.crypto(),
            &UplinkMicParams {
                conf_fcnt: f.conf_fcnt,
                tx_dr: self.radio.tx_dr,
                tx_ch: self.radio.tx_ch,
            },
        )
        .unwrap()
    }

    /// Frames the next uplink and advances the counter.
    pub fn frame(&mut self, f: UplinkFrame) -> Vec<u8> {
        let phy = self.frame_at(self.f_cnt_up, f);
        self.f_cnt_up += 1;
        phy
    }

    /// Opens a scheduled downlink: checks that it is a PULL_RESP whose `txpk` is a Class-A
    /// downlink, and decrypts it with the session's keys (`f_cnt_down`: the counter the device
    /// expects; `conf_fcnt`: the confirmed uplink it may acknowledge).
    pub fn open(&self, d: &ScheduledDownlink, f_cnt_down: u32, conf_fcnt: u32) -> Downlink {
        let Packet::PullResp(p) = Packet::parse(&d.datagram).unwrap() else {
            panic!("not a PULL_RESP");
        };
        assert_eq!(p.txpk.ipol, Some(true), "downlinks use inverted polarity");
        assert!(matches!(p.txpk.timing, TxTiming::Tmst(_)));
        DataFrame::parse(&p.txpk.data)
            .unwrap()
            .open_downlink(&self.crypto(), f_cnt_down, conf_fcnt)
            .unwrap()
    }
}

/// What goes into one uplink.
#[derive(Debug, Clone, Default)]
pub struct UplinkFrame {
    /// Confirmed data up.
    pub confirmed: bool,
    /// The ACK bit (acknowledges a confirmed downlink).
    pub ack: bool,
    /// The ADR bit.
    pub adr: bool,
    /// MAC commands in FOpts.
    pub fopts: Vec<MacCommand>,
    /// An FPort 1 payload.
    pub payload: Option<Vec<u8>>,
    /// 1.1: the ConfFCnt the MIC covers when `ack` is set.
    pub conf_fcnt: u32,
}

/// The fake join server: it answers a JoinReq this long after it was sent.
#[derive(Debug, Clone, Copy)]
pub struct FakeJoinServer {
    /// Its answer delay.
    pub latency: Duration,
}

/// What the uplink core decided on one frame, owned (its session lock released).
#[derive(Debug)]
pub struct Handled {
    /// The result counted.
    pub result: UplinkResult,
    /// The session is in use.
    pub in_use: bool,
    /// The events, as JSON.
    pub events: Vec<serde_json::Value>,
    /// The counter record to persist.
    pub record: Option<(DevEui, CounterRecord)>,
    /// The downlink.
    pub downlink: Option<ScheduledDownlink>,
    /// Why a needed downlink did not go.
    pub failure: Option<DownlinkFailure>,
}

impl Handled {
    /// The events of `kind` (`uplink`, `ack`).
    pub fn events_of(&self, kind: &str) -> Vec<&serde_json::Value> {
        self.events.iter().filter(|e| e["type"] == kind).collect()
    }
}

/// A data frame in its collection window.
struct Collecting {
    phy: Vec<u8>,
    first: Reception,
    wall: SystemTime,
    due: Instant,
}

/// The network server's cores and their state, with a fake clock.
pub struct Harness {
    /// The configuration.
    pub config: Config,
    /// The gateway registry.
    pub gateways: GatewayRegistry,
    /// The de-duplication table.
    pub dedup: Dedup,
    /// The sessions.
    pub sessions: Sessions,
    /// The application downlink queue.
    pub queue: DownlinkQueue,
    /// Network-initiated MAC commands (forced rejoins).
    pub pending_mac: PendingMacs,
    /// Each gateway's downlink airtime (`[scheduler]`).
    pub scheduler: Scheduler,
    /// Every action the gateway core took, in order.
    pub actions: Vec<Action>,
    /// Join-request first copies forwarded to the join path.
    pub joins: Vec<(Vec<u8>, Reception)>,
    start: Instant,
    now: Instant,
    wall_start: SystemTime,
    rng: ChaCha8Rng,
    collecting: Vec<Collecting>,
}

impl Harness {
    /// A harness on the default configuration, at 2026-01-01T00:00:00Z.
    pub fn new() -> Self {
        Self::with_config(Config::default())
    }

    /// A harness whose network is in `region` with `sub_bands` enabled (US915/AU915).
    pub fn in_region(region: Region, sub_bands: &[u8]) -> Self {
        let mut config = Config::default();
        config.network.region = region;
        config.network.enabled_sub_bands = sub_bands.to_vec();
        config.validate().unwrap();
        Self::with_config(config)
    }

    /// A harness on `config`.
    pub fn with_config(config: Config) -> Self {
        let start = Instant::now();
        Self {
            gateways: GatewayRegistry::of(&config.gwmp, None),
            dedup: Dedup::of(&config.gwmp),
            queue: DownlinkQueue::new(config.data.queue_per_device),
            pending_mac: PendingMacs::new(),
            scheduler: Scheduler::new(
                config.scheduler.enabled,
                config.network.region,
                config.scheduler.limits(),
            ),
            sessions: Sessions::new(),
            config,
            actions: Vec::new(),
            joins: Vec::new(),
            start,
            now: start,
            wall_start: UNIX_EPOCH + Duration::from_secs(1_767_225_600),
            rng: ChaCha8Rng::seed_from_u64(7),
            collecting: Vec::new(),
        }
    }

    /// The fake monotonic clock.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// The fake wall clock.
    pub fn wall(&self) -> SystemTime {
        self.wall_start + (self.now - self.start)
    }

    /// Advances the fake clock.
    pub fn advance(&mut self, d: Duration) {
        self.now += d;
    }

    /// Installs the device's session.
    pub fn install(&mut self, d: &FakeDevice) -> Arc<Session> {
        let s = d.session(self.sessions.labels());
        self.sessions.insert(s);
        self.sessions.get(d.dev_eui).unwrap()
    }

    fn datagram(&mut self, from: SocketAddr, bytes: &[u8]) {
        let received = Gwmp::default().receive(bytes, &self.gateways).unwrap();
        let env = GatewayEnv {
            gateways: &self.gateways,
            dedup: &self.dedup,
            retransmission_after: Duration::from_millis(self.config.data.retransmission_after_ms),
            region: self.config.network.region,
        };
        let mut out = Vec::new();
        Gwmp::default().dispatch(self.now, from, received.message, &env, &mut out);
        for a in &out {
            self.apply(a);
        }
        self.actions.extend(out);
    }

    /// What the socket loop's shell does with an action.
    fn apply(&mut self, a: &Action) {
        use netserver::core::gateway::GatewayEvent as E;
        let now = self.now;
        match a {
            Action::Gateway(gw, E::DownlinkRoute(addr)) => {
                self.gateways.on_pull_data(*gw, *addr, now)
            }
            Action::Gateway(gw, E::Uplinks) => self.gateways.on_push_data(*gw, now),
            Action::Gateway(gw, E::Reception(o)) => self.gateways.on_rxpk(*gw, now, *o),
            Action::Gateway(_, _) | Action::Count(_) => {}
            Action::Forward {
                path: Path::Join,
                phy,
                reception,
            } => self.joins.push((phy.clone(), reception.clone())),
            Action::Forward {
                path: Path::Data,
                phy,
                reception,
            } => {
                let window = Duration::from_millis(self.config.data.collect_window_ms);
                self.collecting.push(Collecting {
                    phy: phy.clone(),
                    first: reception.clone(),
                    wall: self.wall(),
                    due: now + window,
                });
            }
        }
    }

    /// The gateway sends PULL_DATA: its downlink route.
    pub fn pull_data(&mut self, gw: &FakeGateway) {
        let p = Packet::PullData {
            token: Token([0, 1]),
            gateway: gw.eui,
        };
        self.datagram(gw.addr, &p.to_bytes().unwrap());
    }

    /// The gateway hears `phy` now (DR5, 868.1 MHz) and sends it in a PUSH_DATA.
    pub fn hear(&mut self, gw: &FakeGateway, phy: &[u8]) {
        self.hear_on(gw, phy, DeviceRadio::EU868);
    }

    /// The gateway hears `phy` now on `radio`'s frequency and `datr`.
    pub fn hear_on(&mut self, gw: &FakeGateway, phy: &[u8], radio: DeviceRadio) {
        let tmst = gw
            .tmst0
            .wrapping_add((self.now - self.start).as_micros() as u32);
        let p = Packet::PushData(PushData {
            token: Token([0, 2]),
            gateway: gw.eui,
            rxpk: vec![RxPk {
                datr: radio.datr,
                ..crate::common::rxpk(
                    phy,
                    tmst,
                    (0, radio.freq_hz),
                    gw.snr,
                    gw.rssi,
                    CrcStatus::Ok,
                )
            }],
            stat: None,
        });
        self.datagram(gw.addr, &p.to_bytes().unwrap());
    }

    /// Every gateway's reception of `phy` gathered so far, best first (the shell's step).
    pub fn receptions(&self, phy: &[u8], first: &Reception) -> Vec<Reception> {
        let mut r = self.dedup.receptions(phy);
        if r.is_empty() {
            r.push(first.clone());
        }
        r.sort_by(|a, b| b.quality_cmp(a));
        r
    }

    /// Advances the clock to the end of the collection window of every frame held, and runs
    /// the uplink core on each, in arrival order.
    pub fn flush(&mut self) -> Vec<Handled> {
        let window = Duration::from_millis(self.config.data.collect_window_ms);
        self.advance(window);
        self.run_due()
    }

    /// Runs the uplink core on every frame whose collection window has ended.
    pub fn run_due(&mut self) -> Vec<Handled> {
        let (due, held): (Vec<_>, Vec<_>) = std::mem::take(&mut self.collecting)
            .into_iter()
            .partition(|c| c.due <= self.now);
        self.collecting = held;
        due.into_iter()
            .map(|c| self.process(&c.phy, &c.first, c.wall))
            .collect()
    }

    /// The uplink shell's step for one frame: gather, parse, look up, lock, call the core.
    fn process(&mut self, phy: &[u8], first: &Reception, wall: SystemTime) -> Handled {
        let receptions = self.receptions(phy, first);
        let frame = match steps::parse(phy) {
            Ok(f) => f,
            Err(r) => return self.dropped(r),
        };
        let candidates = self.sessions.candidates(frame.dev_addr());
        let input = Input {
            frame: &frame,
            first,
            receptions: &receptions,
            now: self.now,
            wall,
        };
        let env = Env {
            config: &self.config,
            gateways: &self.gateways,
            queue: &self.queue,
            pending_mac: &self.pending_mac,
            scheduler: &self.scheduler,
        };
        let locked = candidates.iter().map(|s| (s, s.live.lock()));
        let handled = match uplink::handle(&input, &env, locked, &mut self.rng) {
            Decision::Dropped(r, _) => return self.dropped(r),
            Decision::Accepted(a) => {
                let dev_eui = a.session.dev_eui;
                if a.in_use && self.sessions.is_current(a.session) {
                    self.sessions.drop_previous(dev_eui);
                }
                Handled {
                    result: a.result,
                    in_use: a.in_use,
                    events: a
                        .events
                        .iter()
                        .map(|e| serde_json::from_slice(e).unwrap())
                        .collect(),
                    record: a.record,
                    downlink: a.downlink,
                    failure: a.downlink_failure,
                }
            }
        };
        handled
    }

    fn dropped(&self, r: UplinkResult) -> Handled {
        Handled {
            result: r,
            in_use: false,
            events: Vec::new(),
            record: None,
            downlink: None,
            failure: None,
        }
    }

    /// The fake join server answers the first Join-request forwarded: the downlink scheduler
    /// places the 17-byte Join-accept among the receptions gathered by the time the answer
    /// comes (RX1 first, best link first, on an idle schedule), and the join flow checks it.
    pub fn answer_join(
        &mut self,
        js: FakeJoinServer,
    ) -> Result<(Reception, netserver::core::timing::Scheduled), netserver::core::join::JoinFailure>
    {
        use netserver::core::airtime::Purpose;
        use netserver::core::join::{JoinFlow, RetryPolicy};
        use netserver::core::scheduler::candidates;
        use netserver::core::timing::WindowTiming;
        use netserver::gateway::txpk::window_airtime;
        let (phy, first) = self.joins.first().cloned().expect("a forwarded join");
        let j = &self.config.join;
        let timing = WindowTiming {
            rx1_delay: Duration::from_secs(u64::from(j.join_accept_delay1_s)),
            rx2_delay: Duration::from_secs(u64::from(j.join_accept_delay2_s)),
            margin: Duration::from_millis(j.scheduling_margin_ms),
        };
        let retry = RetryPolicy {
            timeout: self.config.request_timeout(),
            tries: self.config.join_server.tries,
        };
        let mut flow = JoinFlow::new(first.received_at, retry, timing);
        flow.start(self.now);
        self.advance(js.latency);
        let receptions = self.dedup.receptions(&phy);
        let gateways = &self.gateways;
        let region = self.config.network.region;
        let defaults = RxParams::region_default(region);
        let scheduler = &self.scheduler;
        let placed = candidates(
            self.now,
            &receptions,
            &timing,
            |_| first.received_at,
            |r| gateways.downlink_addr(r.gateway).is_some(),
            |r, w| window_airtime(region, r, w, &defaults, 17),
        )
        .and_then(|c| scheduler.place(self.now, Purpose::JoinAccept, &c))
        .map_err(netserver::core::join::JoinFailure::from);
        let gw = placed.as_ref().ok().map(|p| p.candidate.gateway);
        let at = flow.on_placed(self.now, placed.map(|p| p.candidate.at))?;
        let gw = receptions.into_iter().find(|r| Some(r.gateway) == gw);
        Ok((gw.expect("the placed gateway heard the frame"), at))
    }

    /// Queues an application downlink for the device.
    pub fn queue_downlink(&self, d: &FakeDevice, id: u64, payload: &[u8], confirmed: bool) {
        self.queue
            .push(
                d.dev_eui,
                QueuedDownlink {
                    id,
                    f_port: 2,
                    payload: payload.to_vec(),
                    confirmed,
                },
            )
            .unwrap();
    }
}
