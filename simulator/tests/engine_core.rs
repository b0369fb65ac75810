//! The simulation core driven with a fake clock, against a join-server stand-in built from the
//! `protocol` crate's join-server functions (the real servers are exercised in `e2e.rs`). Checks
//! the window logic, `tmst` handling, GWMP datagrams and the counters. The stand-in answers in
//! the region's RX1 and RX2 (`protocol::region`), so the same tests run in US915 and EU868 with
//! a CFList, and a stand-in that answers EU868-style in US915 shows what the simulator reports.

use std::collections::{HashMap, HashSet};

use base64::Engine as _;
use protocol::data::{
    DataFrame, Direction, Downlink, FramePayload, NetworkSessionKeys, SessionCrypto,
    UplinkMicParams,
};
use protocol::derive::{js_keys, session_keys_1_0, session_keys_1_1};
use protocol::ids::{DevAddr, JoinNonce, NetId};
use protocol::join::CfList;
use protocol::join::{
    AnsweredRequest, DlSettings, JoinAcceptEncKey, JoinAcceptMicKey, JoinAcceptPayload,
    JoinRequest, JoinRootKey, RxDelay,
};
use protocol::keys::KeyCipher;
use protocol::mac::MacCommand;
use protocol::region::{ChannelPlan, Link, Region};
use simulator::engine::{Engine, EngineConfig, Stage};
use simulator::fleet::Fleet;
use simulator::gateway::Forwarder;
use simulator::manifest::{self, Entry, NonceState, Params, VersionMix};
use simulator::radio::{RadioModel, RadioPlan};
use simulator::scenario::{Scenario, Traffic};

fn traffic(scenario: Scenario) -> Traffic {
    Traffic {
        scenario,
        join_window_us: 2_000_000,
        duration_us: 120_000_000,
        uplink_interval_us: 10_000_000,
        confirmed_ratio: 0.0,
        payload_size: 12,
        loss: 0.0,
        heard_by: 2,
        data_rate: 5,
        radio: Default::default(),
    }
}

/// Answers Join-requests: one Join-accept per (DevEUI, DevNonce), via the first gateway that
/// reported it, at `tmst + delay`.
struct NsSession {
    dev_eui: protocol::ids::DevEui,
    crypto: SessionCrypto,
    last_up: Option<u32>,
    n_fcnt_down: u32,
    sent_mac: bool,
    v11: bool,
}

struct JoinAnswerer {
    keys: HashMap<u64, Entry>,
    sessions: HashMap<u32, NsSession>,
    /// Every data uplink opened: (DevEUI, FCnt, FOpts).
    uplinks: Vec<(protocol::ids::DevEui, u32, Vec<u8>)>,
    /// The channel index and data rate of each of those uplinks.
    uplink_channels: Vec<(u8, u8)>,
    /// The frequency of every Join-request heard.
    join_freqs: Vec<u32>,
    seen: HashSet<(u64, u16)>,
    next_addr: u32,
    join_nonce: HashMap<u64, u32>,
    delay_us: u32,
    /// Acknowledge confirmed uplinks (else only the first gets a downlink, without ACK).
    ack: bool,
    /// NbTrans sent in the LinkADRReq.
    nb_trans: u8,
    /// The region the stand-in answers in.
    region: Region,
    /// The CFList of every Join-accept.
    cf_list: Option<CfList>,
    /// The channel masks and data rate of the LinkADRReq block sent with the first ACK.
    link_adr: (Vec<(u16, u8)>, u8),
    /// Answer like a network server that knows only EU868: RX1 on the uplink's frequency and
    /// data rate, RX2 at 869.525 MHz SF12.
    eu868_only: bool,
}

/// RX1 or RX2.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Win {
    Rx1,
    Rx2,
}

impl JoinAnswerer {
    fn new(entries: &[Entry], delay_us: u32) -> Self {
        Self {
            keys: entries
                .iter()
                .map(|e| (e.dev_eui.as_u64(), e.clone()))
                .collect(),
            sessions: HashMap::new(),
            uplinks: Vec::new(),
            uplink_channels: Vec::new(),
            join_freqs: Vec::new(),
            seen: HashSet::new(),
            next_addr: 1,
            join_nonce: HashMap::new(),
            delay_us,
            ack: true,
            nb_trans: 1,
            region: Region::Eu868,
            cf_list: None,
            link_adr: (vec![(0x0007, 0)], 5),
            eu868_only: false,
        }
    }

    /// The frequency and `datr` of a downlink in `win` for an uplink on `freq` at `datr`
    /// (RX1DROffset 0, the region's boot DownlinkDwellTime, default RX2).
    fn radio(&self, win: Win, freq: u32, datr: &str) -> (u32, String) {
        let r = if self.eu868_only {
            Region::Eu868
        } else {
            self.region
        };
        if self.eu868_only && win == Win::Rx1 {
            return (freq, datr.to_owned());
        }
        let (f, dr) = match win {
            Win::Rx1 => {
                let up = r
                    .dr_of_datr(datr, Link::Uplink)
                    .expect("uplink datr of the region");
                let dwell = r.boot_dwell_time().downlink;
                (
                    r.rx1_frequency(freq).unwrap(),
                    r.rx1_dr(up, 0, dwell).unwrap(),
                )
            }
            Win::Rx2 => r.rx2(),
        };
        (f, r.data_rate(dr).unwrap().to_string())
    }

    /// A PUSH_DATA in; maybe a PULL_RESP out.
    fn on_push_data(&mut self, d: &[u8]) -> Option<Vec<u8>> {
        assert_eq!((d[0], d[3]), (2, 0), "PUSH_DATA");
        let v: serde_json::Value = serde_json::from_slice(&d[12..]).unwrap();
        let rx = &v["rxpk"][0];
        for f in [
            "tmst", "freq", "datr", "codr", "rssi", "lsnr", "size", "data", "modu", "stat", "chan",
            "rfch",
        ] {
            assert!(!rx[f].is_null(), "rxpk lacks {f}: {rx}");
        }
        let phy = base64::engine::general_purpose::STANDARD
            .decode(rx["data"].as_str().unwrap())
            .unwrap();
        assert_eq!(rx["size"].as_u64().unwrap() as usize, phy.len());
        let tmst = rx["tmst"].as_u64().unwrap() as u32;
        let freq = (rx["freq"].as_f64().unwrap() * 1e6).round() as u32;
        let datr = rx["datr"].as_str().unwrap().to_owned();
        if phy[0] & 0xE0 != 0 {
            // TxCh: the channel's index in the device's plan (defaults, then the CFList).
            let mut plan = ChannelPlan::new(self.region);
            if let Some(cf) = &self.cf_list {
                plan.apply_cf_list(cf).unwrap();
            }
            let tx_ch = plan
                .index_of(freq)
                .expect("uplink on a channel of the plan");
            let tx_dr = self.region.dr_of_datr(&datr, Link::Uplink).unwrap();
            let (f, d) = self.radio(Win::Rx1, freq, &datr);
            return self
                .on_data(&phy, tmst, tx_ch, tx_dr)
                .map(|(t, bytes)| pull_resp(t, &bytes, f, &d));
        }
        let jr = JoinRequest::parse(&phy).ok()?;
        self.join_freqs.push(freq);
        let e = self.keys.get(&jr.dev_eui.as_u64()).unwrap().clone();
        if !self.seen.insert((jr.dev_eui.as_u64(), jr.dev_nonce.0)) {
            return None;
        }
        let app = KeyCipher::new(&e.app_key);
        let jn = self.join_nonce.entry(e.dev_eui.as_u64()).or_insert(0);
        *jn += 1;
        let p = JoinAcceptPayload {
            join_nonce: JoinNonce::new(*jn).unwrap(),
            net_id: NetId::new(0).unwrap(),
            dev_addr: DevAddr::new(self.next_addr),
            dl_settings: DlSettings::new(e.mac_version.is_1_1(), 0, 0).unwrap(),
            rx_delay: RxDelay::new(1).unwrap(),
            cf_list: self.cf_list,
        };
        self.next_addr += 1;
        let addr = self.next_addr - 1;
        let phy = match &e.nwk_key {
            Some(k) => {
                let nwk = KeyCipher::new(k);
                jr.verify_mic(JoinRootKey::NwkKey(&nwk)).unwrap();
                let sk = session_keys_1_1(
                    &nwk,
                    &app,
                    p.join_nonce,
                    e.join_eui,
                    AnsweredRequest::JoinRequest(jr.dev_nonce),
                );
                self.sessions.insert(
                    addr,
                    NsSession {
                        dev_eui: e.dev_eui,
                        crypto: SessionCrypto::new(
                            &NetworkSessionKeys::V1_1 {
                                f_nwk_s_int_key: sk.f_nwk_s_int_key,
                                s_nwk_s_int_key: sk.s_nwk_s_int_key,
                                nwk_s_enc_key: sk.nwk_s_enc_key,
                            },
                            Some(&sk.app_s_key),
                        ),
                        last_up: None,
                        n_fcnt_down: 0,
                        sent_mac: false,
                        v11: true,
                    },
                );
                let js = KeyCipher::new(&js_keys(&nwk, e.dev_eui).js_int_key);
                p.encrypt(
                    JoinAcceptMicKey::OptNeg {
                        js_int_key: &js,
                        join_eui: e.join_eui,
                        answered: AnsweredRequest::JoinRequest(jr.dev_nonce),
                    },
                    JoinAcceptEncKey::NwkKey(&nwk),
                )
            }
            None => {
                jr.verify_mic(JoinRootKey::AppKey(&app)).unwrap();
                let sk = session_keys_1_0(&app, p.join_nonce, p.net_id, jr.dev_nonce);
                self.sessions.insert(
                    addr,
                    NsSession {
                        dev_eui: e.dev_eui,
                        crypto: SessionCrypto::new(
                            &NetworkSessionKeys::V1_0 {
                                nwk_s_key: sk.nwk_s_key,
                            },
                            Some(&sk.app_s_key),
                        ),
                        last_up: None,
                        n_fcnt_down: 0,
                        sent_mac: false,
                        v11: false,
                    },
                );
                p.encrypt(
                    JoinAcceptMicKey::Legacy(JoinRootKey::AppKey(&app)),
                    JoinAcceptEncKey::AppKey(&app),
                )
            }
        };
        let win = if self.delay_us == 6_000_000 {
            Win::Rx2
        } else {
            Win::Rx1
        };
        let (f, d) = self.radio(win, freq, &datr);
        Some(pull_resp(
            tmst.wrapping_add(self.delay_us),
            phy.as_bytes(),
            f,
            &d,
        ))
    }

    /// A data uplink: open it as a network server would; answer confirmed ones with an ACK and,
    /// the first time, LinkADRReq + DeviceTimeAns (+ RekeyConf for 1.1) in FOpts, in RX1.
    fn on_data(&mut self, phy: &[u8], tmst: u32, tx_ch: u8, tx_dr: u8) -> Option<(u32, Vec<u8>)> {
        let f = DataFrame::parse(phy).unwrap();
        let s = self
            .sessions
            .get_mut(&f.dev_addr().as_u32())
            .expect("uplink from a joined device");
        let fcnt = protocol::fcnt::infer_fcnt(s.last_up.map_or(0, |l| l + 1), f.fcnt16());
        let up = f
            .open_uplink(
                &s.crypto,
                fcnt,
                &UplinkMicParams {
                    conf_fcnt: 0,
                    tx_dr,
                    tx_ch,
                },
            )
            .expect("uplink MIC verifies with the keys the network derived");
        if s.last_up.is_some_and(|l| fcnt <= l) {
            return None; // a repeat heard by a second gateway
        }
        s.last_up = Some(fcnt);
        self.uplinks.push((s.dev_eui, fcnt, up.fopts.clone()));
        self.uplink_channels.push((tx_ch, tx_dr));
        if !up.confirmed || (!self.ack && s.sent_mac) {
            return None;
        }
        let mut fopts = Vec::new();
        if !s.sent_mac {
            s.sent_mac = true;
            let (masks, data_rate) = &self.link_adr;
            let mut cmds: Vec<MacCommand> = masks
                .iter()
                .map(|&(ch_mask, ch_mask_cntl)| MacCommand::LinkADRReq {
                    data_rate: *data_rate,
                    tx_power: 1,
                    ch_mask,
                    ch_mask_cntl,
                    nb_trans: self.nb_trans,
                })
                .collect();
            cmds.push(MacCommand::DeviceTimeAns {
                seconds: 1_000_000_000,
                fractional_second: 0,
            });
            if s.v11 {
                cmds.push(MacCommand::RekeyConf {
                    serv_lorawan_minor: 1,
                });
            }
            // FOpts holds 15 bytes: a long LinkADRReq block leaves out what follows it.
            fopts = protocol::mac::encode(Direction::Downlink, &cmds).unwrap();
            while fopts.len() > 15 {
                cmds.pop();
                fopts = protocol::mac::encode(Direction::Downlink, &cmds).unwrap();
            }
        }
        let down = Downlink {
            confirmed: false,
            dev_addr: f.dev_addr(),
            fcnt: s.n_fcnt_down,
            adr: false,
            ack: self.ack,
            f_pending: false,
            fopts,
            payload: FramePayload::None,
        };
        s.n_fcnt_down += 1;
        let bytes = down.build(&s.crypto, fcnt).unwrap();
        Some((tmst.wrapping_add(1_000_000), bytes))
    }
}

fn pull_resp(tmst: u32, phy: &[u8], freq_hz: u32, datr: &str) -> Vec<u8> {
    {
        let data = base64::engine::general_purpose::STANDARD.encode(phy);
        let freq = f64::from(freq_hz) / 1e6;
        let json = format!(
            r#"{{"txpk":{{"imme":false,"tmst":{},"freq":{freq},"rfch":0,"powe":14,"modu":"LORA","datr":"{datr}","codr":"4/5","ipol":true,"size":{},"data":"{data}"}}}}"#,
            tmst,
            phy.len()
        );
        let mut out = vec![2, 0x77, 0x88, 3];
        out.extend_from_slice(json.as_bytes());
        out
    }
}

fn fleet(n: u32, seed: u64) -> (Vec<Entry>, Fleet) {
    let entries = manifest::generate(&Params {
        devices: n,
        seed,
        versions: VersionMix::Mix,
        join_eui: manifest::DEFAULT_JOIN_EUI,
        home_net_id: NetId::new(0).unwrap(),
    });
    let f = Fleet::new(
        entries.clone(),
        &vec![NonceState::default(); n as usize],
        seed,
        3,
    );
    (entries, f)
}

/// Runs a storm with a fake clock; the answer reaches the gateway `answer_after` µs after the
/// PUSH_DATA. Returns the engine and the datagrams the gateways sent.
fn storm(n: u32, delay_us: u32, answer_after: u64) -> (Engine, Vec<Vec<u8>>) {
    storm_in(RadioPlan::default(), 5, n, delay_us, answer_after)
}

/// [`storm`] in `radio`'s region at `data_rate`.
fn storm_in(
    radio: RadioPlan,
    data_rate: u8,
    n: u32,
    delay_us: u32,
    answer_after: u64,
) -> (Engine, Vec<Vec<u8>>) {
    let t = Traffic {
        radio,
        data_rate,
        ..traffic(Scenario::Storm)
    };
    storm_modelled(t, n, delay_us, answer_after, None)
}

/// A storm of `t` with the radio modelled as `model` says (`--radio realistic`, `--city`).
fn storm_modelled(
    t: Traffic,
    n: u32,
    delay_us: u32,
    answer_after: u64,
    model: Option<RadioModel>,
) -> (Engine, Vec<Vec<u8>>) {
    let (entries, fleet) = fleet(n, 5);
    let radio = t.radio;
    let mut e = Engine::new(
        EngineConfig {
            seed: 9,
            traffic: t,
            gateways: 3,
            event_sink: false,
            duration_given: true,
            forwarder: Forwarder::IMMEDIATE,
        },
        fleet,
    );
    if let Some(m) = model {
        e.enable_radio(m);
    }
    let mut js = JoinAnswerer::new(&entries, delay_us);
    js.region = radio.region();
    let mut sent = Vec::new();
    let mut inbox: Vec<(u64, u16, Vec<u8>)> = Vec::new();
    e.start(0);
    let mut now = 0;
    for _ in 0..1_000_000 {
        for o in e.take_outgoing() {
            if o.bytes[3] == 0 {
                if let Some(resp) = js.on_push_data(&o.bytes) {
                    inbox.push((now + answer_after, o.gateway, resp));
                }
            }
            sent.push(o.bytes);
        }
        if e.stage() == Stage::Done {
            break;
        }
        inbox.sort_by_key(|m| m.0);
        let next_msg = inbox.first().map(|m| m.0);
        let next = next_msg.map_or(e.next_wakeup(), |m| m.min(e.next_wakeup()));
        now = now.max(next);
        if next_msg == Some(now) {
            let (_, g, d) = inbox.remove(0);
            e.on_datagram(g, now, &d);
        } else {
            e.poll(now);
        }
    }
    e.finish();
    (e, sent)
}

#[test]
fn storm_joins_every_device_in_rx1() {
    let (e, sent) = storm(300, 5_000_000, 20_000);
    let s = &e.stats;
    assert_eq!(e.stage(), Stage::Done);
    assert_eq!(s.joins_accepted, 300);
    assert_eq!(s.joins_rx1, 300);
    assert_eq!(
        (s.joins_failed, s.joins_timed_out, s.joins_missed_window),
        (0, 0, 0)
    );
    assert_eq!(s.joins_attempted, 300);
    assert_eq!(
        s.downlinks_unmatched, 0,
        "a second gateway's copy is answered once"
    );
    assert_eq!(s.tx_ack_errors, 0);
    // Latency is measured to the PULL_RESP (20 ms here), not to the RX1 window 5 s later.
    assert!(
        (s.join_latency.quantile_ms(0.99) - 20.0).abs() < 0.1,
        "{}",
        s.join_latency.quantile_ms(0.99)
    );
    // TX_ACK for every PULL_RESP, no JSON on success.
    let tx_acks: Vec<_> = sent.iter().filter(|d| d[3] == 5).collect();
    assert_eq!(tx_acks.len() as u64, s.pull_resp);
    assert!(tx_acks
        .iter()
        .all(|d| d.len() == 12 && d[1..3] == [0x77, 0x88]));
    // Each transmission was heard by 1 or 2 of the 3 gateways.
    assert!(s.push_data >= 300 && s.push_data <= 600, "{}", s.push_data);
    assert!(sent.iter().any(|d| d[3] == 2), "PULL_DATA keepalives");
}

#[test]
fn us915_storm_of_10000_devices_on_sub_band_2_joins_in_rx1() {
    // Every Join-request on sub-band 2 at DR3; every Join-accept on the 500 kHz RX1 channel at
    // DR13 (SF7/500 kHz), within the 2 s join window, no retry.
    let radio = RadioPlan::new(Region::Us915, &[2]).unwrap();
    let (e, sent) = storm_in(radio, 3, 10_000, 5_000_000, 20_000);
    let s = &e.stats;
    assert_eq!(e.stage(), Stage::Done);
    assert_eq!(
        (s.joins_attempted, s.joins_accepted, s.joins_rx1),
        (10_000, 10_000, 10_000)
    );
    assert_eq!(
        (s.joins_timed_out, s.joins_missed_window, s.wrong_radio),
        (0, 0, 0)
    );
    let plan = ChannelPlan::new(Region::Us915);
    for d in sent.iter().filter(|d| d[3] == 0) {
        let v: serde_json::Value = serde_json::from_slice(&d[12..]).unwrap();
        let rx = &v["rxpk"][0];
        let f = (rx["freq"].as_f64().unwrap() * 1e6).round() as u32;
        assert!((8..16).contains(&plan.index_of(f).unwrap()), "{rx}");
        assert_eq!(rx["datr"], "SF7BW125");
    }
}

#[test]
fn rx2_counts_and_wrong_tmst_misses_the_window() {
    let (e, _) = storm(50, 6_000_000, 1_000);
    assert_eq!((e.stats.joins_accepted, e.stats.joins_rx2), (50, 50));
    // US915: RX2 is 923.3 MHz DR8 (SF12/500 kHz).
    let radio = RadioPlan::new(Region::Us915, &[]).unwrap();
    let (e, _) = storm_in(radio, 3, 50, 6_000_000, 1_000);
    assert_eq!((e.stats.joins_accepted, e.stats.joins_rx2), (50, 50));
    assert_eq!(e.stats.wrong_radio, 0);

    // One microsecond off: the device's receiver is not open then. The device times out, backs
    // off and retries; the answerer answers each DevNonce once, always 1 µs off, so the storm
    // never completes and every answer counts as a missed window.
    let (entries, fleet) = fleet(5, 6);
    let mut e = Engine::new(
        EngineConfig {
            seed: 1,
            traffic: Traffic {
                duration_us: 30_000_000,
                ..traffic(Scenario::Storm)
            },
            gateways: 3,
            event_sink: false,
            duration_given: true,
            forwarder: Forwarder::IMMEDIATE,
        },
        fleet,
    );
    let mut js = JoinAnswerer::new(&entries, 5_000_001);
    e.start(0);
    let mut now = 0;
    while e.stage() != Stage::Done {
        for o in e.take_outgoing() {
            if o.bytes[3] == 0 {
                if let Some(r) = js.on_push_data(&o.bytes) {
                    e.on_datagram(o.gateway, now + 1000, &r);
                }
            }
        }
        now = e.next_wakeup().max(now);
        e.poll(now);
    }
    let s = &e.stats;
    assert_eq!(s.joins_accepted, 0);
    assert!(s.joins_missed_window >= 5, "{s:?}");
    // Every attempt timed out, except at most one per device still waiting when the run ended.
    assert!(
        s.joins_timed_out <= s.joins_attempted && s.joins_attempted - s.joins_timed_out <= 5,
        "{s:?}"
    );
    assert!(s.joins_attempted > 5, "devices retried");
}

#[test]
fn late_pull_resp_is_too_late() {
    // The answer arrives 5.2 s after the uplink, past the RX1 tmst: TX_ACK TOO_LATE.
    let (entries, fleet) = fleet(3, 7);
    let mut e = Engine::new(
        EngineConfig {
            seed: 1,
            traffic: Traffic {
                duration_us: 8_000_000,
                ..traffic(Scenario::Storm)
            },
            gateways: 3,
            event_sink: false,
            duration_given: true,
            forwarder: Forwarder::IMMEDIATE,
        },
        fleet,
    );
    let mut js = JoinAnswerer::new(&entries, 5_000_000);
    e.start(0);
    let mut now = 0;
    let mut acks = Vec::new();
    let mut late = Vec::new();
    while e.stage() != Stage::Done {
        for o in e.take_outgoing() {
            if o.bytes[3] == 0 {
                if let Some(r) = js.on_push_data(&o.bytes) {
                    late.push((now + 5_200_000, o.gateway, r));
                }
            }
            if o.bytes[3] == 5 {
                acks.push(o.bytes);
            }
        }
        late.sort_by_key(|m| m.0);
        let t = e
            .next_wakeup()
            .min(late.first().map_or(u64::MAX, |m| m.0))
            .max(now);
        now = t;
        if late.first().is_some_and(|m| m.0 == now) {
            let (_, g, d) = late.remove(0);
            e.on_datagram(g, now, &d);
        } else {
            e.poll(now);
        }
    }
    assert_eq!(e.stats.joins_missed_window, 3);
    assert_eq!(e.stats.tx_ack_errors, 3);
    assert!(acks
        .iter()
        .all(|a| a.ends_with(br#"{"txpk_ack":{"error":"TOO_LATE"}}"#)));
}

/// 300 devices within 2 s, three gateways, answers 20 ms after each uplink, the radio as `model`.
fn storm_of_300(model: RadioModel) -> (Engine, Vec<Vec<u8>>) {
    storm_modelled(
        traffic(Scenario::Storm),
        300,
        5_000_000,
        20_000,
        Some(model),
    )
}

/// TX_ACKs among `sent` with `error`.
fn tx_acks_with(sent: &[Vec<u8>], error: &str) -> u64 {
    let json = format!(r#"{{"txpk_ack":{{"error":"{error}"}}}}"#);
    sent.iter()
        .filter(|d| d[3] == 5 && d.ends_with(json.as_bytes()))
        .count() as u64
}

/// A naive network server (every Join-request answered in RX1 through the first gateway that
/// reported it, whatever else that gateway has to send) against the modelled radio: 300 devices
/// within 2 s on three channels and three gateways. Join-requests collide, gateways refuse
/// Join-accepts that overlap one already queued (TX_ACK COLLISION_PACKET), devices back off and
/// retry, and in the end every device joins, no sooner than the airtime bound.
#[test]
fn realistic_radio_collides_refuses_and_devices_retry_until_joined() {
    let model = RadioModel::default();
    let (e, sent) = storm_of_300(model);
    let s = &e.stats;
    assert_eq!(e.stage(), Stage::Done);
    assert_eq!(e.joined(), 300, "every device joins in the end");
    assert_eq!(s.joins_accepted, 300);
    assert!(s.uplinks_collided > 0, "Join-requests collided");
    assert!(
        s.tx_refused_collision > 0,
        "overlapping Join-accepts refused"
    );
    assert_eq!(s.tx_refused_duty_cycle, 0, "300 accepts fit three budgets");
    assert_eq!(
        s.tx_ack_errors,
        s.tx_refused_collision + s.tx_refused_too_late + s.tx_refused_duty_cycle
    );
    assert!(s.joins_attempted > 300 && s.join_attempts_max > 1);
    assert_eq!(u64::from(s.join_attempts_max) >= 2, s.joins_timed_out > 0);
    assert_eq!(
        tx_acks_with(&sent, "COLLISION_PACKET"),
        s.tx_refused_collision
    );
    // Every PUSH_DATA reports the end of its frame: its tmst lies a Join-request's airtime
    // (61.696 ms at SF7) after its start, so no answer is TOO_LATE with a 20 ms server.
    assert_eq!(s.tx_refused_too_late, 0);
    assert_eq!(s.joined_after_us.len(), 300);
    let bound = s.airtime_bound_us.unwrap();
    let last = *s.joined_after_us.iter().max().unwrap();
    assert!(last >= bound, "joined at {last} µs, bound {bound} µs");
    assert!(
        bound >= 5_000_000 + 1_900_000,
        "{bound}: the last boot is near 2 s"
    );
}

/// The same with gateways whose duty cycle is measured over 10 s instead of an hour: RX1's 1 %
/// is then 100 ms per 10 s, two 46.3 ms SF7 Join-accepts (17 bytes). The gateways refuse the
/// others with DUTY_CYCLE_OVERFLOW, and in the 120 s run (13 windows) each of the three sends at
/// most 26.
#[test]
fn realistic_radio_refuses_join_accepts_over_the_duty_cycle() {
    let model = RadioModel {
        duty_cycle_window_us: 10_000_000,
        ..Default::default()
    };
    let (e, sent) = storm_of_300(model);
    let s = &e.stats;
    assert!(s.tx_refused_duty_cycle > 0);
    assert_eq!(
        tx_acks_with(&sent, "DUTY_CYCLE_OVERFLOW"),
        s.tx_refused_duty_cycle
    );
    let mut per_gw: HashMap<Vec<u8>, u32> = HashMap::new();
    for d in sent.iter().filter(|d| d[3] == 5 && d.len() == 12) {
        *per_gw.entry(d[4..12].to_vec()).or_default() += 1;
    }
    assert_eq!(per_gw.len(), 3);
    for (gw, n) in &per_gw {
        assert!(*n <= 26, "gateway {gw:02X?} sent {n}");
    }
    assert!(s.joins_rx1 > 0 && s.joins_rx1 <= 3 * 26, "{}", s.joins_rx1);
    assert!(e.joined() < 300);
}

#[test]
fn realistic_radio_is_reproducible() {
    let run = || {
        storm_modelled(
            traffic(Scenario::Storm),
            100,
            5_000_000,
            10_000,
            Some(RadioModel::default()),
        )
        .1
    };
    assert_eq!(run(), run(), "same seed, same datagrams in the same order");
}

/// A city of three gateways: each meter joins at the data rate its link allows, reported with
/// an RSSI and SNR that follow from its distance.
#[test]
fn a_city_spreads_data_rates_and_every_meter_joins() {
    let model = RadioModel {
        city: true,
        ..Default::default()
    };
    // Meters at SF12 wait 148 s between attempts (the join duty cycle): give them time.
    let t = Traffic {
        duration_us: 3_600_000_000,
        ..traffic(Scenario::Storm)
    };
    let (e, sent) = storm_modelled(t, 300, 5_000_000, 20_000, Some(model));
    assert_eq!(e.joined(), 300);
    let mut datrs = HashSet::new();
    for d in sent.iter().filter(|d| d[3] == 0) {
        let v: serde_json::Value = serde_json::from_slice(&d[12..]).unwrap();
        let rx = &v["rxpk"][0];
        let sf: i64 = rx["datr"].as_str().unwrap()[2..]
            .split('B')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        // A frame is only received above its spreading factor's floor.
        let floor = -7.5 - 2.5 * (sf - 7) as f64;
        assert!(rx["lsnr"].as_f64().unwrap() >= floor - 0.05, "{rx}");
        assert!(rx["rssi"].as_i64().unwrap() < -60, "{rx}");
        datrs.insert(rx["datr"].as_str().unwrap().to_owned());
    }
    assert!(datrs.len() >= 2, "{datrs:?}");
    // The storm by data rate: every meter in one class, each class's times its own.
    let s = &e.stats;
    let by = &s.storm_by_data_rate;
    assert!(by.len() >= 2, "{by:?}");
    assert!(
        by.windows(2).all(|w| w[0].data_rate < w[1].data_rate),
        "slowest first: {by:?}"
    );
    assert_eq!(by.iter().map(|d| d.devices).sum::<u64>(), 300);
    assert_eq!(by.iter().map(|d| d.joined).sum::<u64>(), 300);
    let last_s = *s.joined_after_us.iter().max().unwrap() as f64 / 1e6;
    let latest = by.iter().filter_map(|d| d.joined_all_s).fold(0.0, f64::max);
    assert!((latest - last_s).abs() < 0.001, "{latest} vs {last_s}");
    for d in by {
        assert_eq!(d.joined, d.devices, "{d:?}");
        assert!(d.joined_p50_s <= d.joined_p99_s && d.joined_p99_s <= d.joined_all_s);
        assert!(d.attempts_mean >= 1.0, "{d:?}");
    }
    let attempts: f64 = by.iter().map(|d| d.attempts_mean * d.devices as f64).sum();
    assert!(
        (attempts - s.joins_attempted as f64).abs() <= 0.005 * 300.0,
        "{attempts} vs {}",
        s.joins_attempted
    );
}

/// `storm.*` measure the last join phase: after a power-restore, from the restore. Every device
/// boots within 1 s of it and is answered in RX1, 5 s after its Join-request.
#[test]
fn join_times_count_from_the_restore() {
    let t = traffic(Scenario::PowerRestore);
    let (e, _) = storm_modelled(t, 200, 5_000_000, 10_000, None);
    let s = &e.stats;
    assert_eq!(e.joined(), 200);
    assert_eq!(s.joins_accepted, 400, "both phases");
    assert_eq!(s.joined_after_us.len(), 200, "the restore's phase only");
    assert!(
        s.joined_after_us
            .iter()
            .all(|&t| (5_000_000..6_000_200).contains(&t)),
        "{:?}",
        (
            s.joined_after_us.iter().min(),
            s.joined_after_us.iter().max()
        )
    );
    assert_eq!(s.join_attempts_max, 1);
    assert!((s.join_attempts_mean - 1.0).abs() < 1e-9);
}

#[test]
fn same_seed_same_traffic() {
    let (_, a) = storm(100, 5_000_000, 10_000);
    let (_, b) = storm(100, 5_000_000, 10_000);
    assert_eq!(a, b, "same seed, same datagrams in the same order");
}

/// Runs `e` to the end against `ns`, every answer reaching the gateway 15 ms after the uplink,
/// with `ns`'s opened uplinks fed back as application events.
fn drive(e: &mut Engine, ns: &mut JoinAnswerer) {
    let mut inbox: Vec<(u64, u16, Vec<u8>)> = Vec::new();
    e.start(0);
    let mut now = 0;
    let mut delivered = 0;
    while e.stage() != Stage::Done {
        for o in e.take_outgoing() {
            if o.bytes[3] == 0 {
                if let Some(r) = ns.on_push_data(&o.bytes) {
                    inbox.push((now + 15_000, o.gateway, r));
                }
            }
        }
        // The event sink: each uplink the network opened, once.
        for (dev, fcnt, _) in &ns.uplinks[delivered..] {
            e.on_app_event(now, *dev, *fcnt);
        }
        delivered = ns.uplinks.len();
        inbox.sort_by_key(|m| m.0);
        let next_msg = inbox.first().map(|m| m.0);
        now = next_msg
            .map_or(e.next_wakeup(), |m| m.min(e.next_wakeup()))
            .max(now);
        if next_msg == Some(now) {
            let (_, g, d) = inbox.remove(0);
            e.on_datagram(g, now, &d);
        } else {
            e.poll(now);
        }
    }
    e.finish();
}

/// A steady run of `n` devices sending confirmed uplinks every 5 s for 30 s in `radio`.
fn confirmed_run(n: u32, seed: u64, radio: RadioPlan, data_rate: u8) -> (Vec<Entry>, Engine) {
    let (entries, fleet) = fleet(n, seed);
    let e = Engine::new(
        EngineConfig {
            seed: 3,
            traffic: Traffic {
                duration_us: 30_000_000,
                uplink_interval_us: 5_000_000,
                confirmed_ratio: 1.0,
                data_rate,
                radio,
                ..traffic(Scenario::Steady)
            },
            gateways: 3,
            event_sink: true,
            duration_given: true,
            forwarder: Forwarder::IMMEDIATE,
        },
        fleet,
    );
    (entries, e)
}

#[test]
fn us915_sub_bands_channel_mask_cf_list_link_adr_block_and_500_khz_downlinks() {
    // Devices boot on sub-bands 2 and 3 (and the gateways hear both); the network's CFList
    // narrows them to sub-band 2, then a LinkADRReq block (ChMaskCntl 7 for channel 65 only,
    // ChMaskCntl 0 for channels 8–11) to four channels at DR2.
    let radio = RadioPlan::new(Region::Us915, &[2, 3]).unwrap();
    let (entries, mut e) = confirmed_run(60, 11, radio, 3);
    let mut ns = JoinAnswerer::new(&entries, 5_000_000);
    ns.region = Region::Us915;
    ns.cf_list = ChannelPlan::with_sub_bands(Region::Us915, &[2])
        .unwrap()
        .cf_list();
    ns.link_adr = (vec![(0x0002, 7), (0x0F00, 0)], 2);
    drive(&mut e, &mut ns);
    let s = &e.stats;
    assert_eq!(s.joins_accepted, 60, "{s:?}");
    assert_eq!(s.joins_rx1, 60);
    assert_eq!((s.wrong_radio, s.joins_missed_window), (0, 0), "{s:?}");
    // Join-requests at DR3 went out on both sub-bands' 125 kHz channels (903.9–905.3 MHz and
    // 905.5–906.9 MHz), and nowhere else.
    let plan = ChannelPlan::new(Region::Us915);
    let join_ch: HashSet<u8> = ns
        .join_freqs
        .iter()
        .map(|&f| plan.index_of(f).unwrap())
        .collect();
    assert!(join_ch.iter().all(|c| (8..24).contains(c)), "{join_ch:?}");
    assert!(
        join_ch.iter().any(|&c| c >= 16),
        "sub-band 3 used before the CFList"
    );
    // Every confirmed uplink acknowledged in RX1: the ACKs went out on 923.3 + 0.6 × (ch mod 8)
    // MHz at the RX1 data rate (DR3 → DR13 SF7/500, DR2 → DR12 SF8/500), or the simulator would
    // have counted them as wrong radio.
    assert!(s.uplinks_sent > 150, "{s:?}");
    assert_eq!(s.uplinks_acked, s.uplinks_sent, "{s:?}");
    assert_eq!((s.downlinks_missed_window, s.uplinks_lost), (0, 0));
    // After the Join-accept only sub-band 2; after the LinkADRReq block only channels 8..=11
    // at DR2.
    let parse = |f: &[u8]| protocol::mac::parse(Direction::Uplink, f).unwrap();
    for x in &entries {
        let ups: Vec<usize> = (0..ns.uplinks.len())
            .filter(|&i| ns.uplinks[i].0 == x.dev_eui)
            .collect();
        assert!(ups.len() >= 3);
        let (ch0, dr0) = ns.uplink_channels[ups[0]];
        assert!((8..16).contains(&ch0) && dr0 == 3, "{ch0} DR{dr0}");
        let second = parse(&ns.uplinks[ups[1]].2);
        let ans = MacCommand::LinkADRAns {
            power_ack: true,
            data_rate_ack: true,
            channel_mask_ack: true,
        };
        assert_eq!(
            second.iter().filter(|c| **c == ans).count(),
            2,
            "one answer per command"
        );
        for &i in &ups[1..] {
            let (ch, dr) = ns.uplink_channels[i];
            assert!((8..12).contains(&ch) && dr == 2, "{ch} DR{dr}");
        }
    }
}

#[test]
fn eu868_cf_list_channels_are_used_and_tx_ch_verifies() {
    // A type 0 CFList adds 867.1–867.9 MHz as channels 3–7: devices use all eight, and the
    // 1.1 MICs (TxCh) verify with those indices.
    let (entries, mut e) = confirmed_run(40, 12, RadioPlan::default(), 5);
    let mut ns = JoinAnswerer::new(&entries, 5_000_000);
    ns.cf_list = CfList::from_frequencies_hz([
        867_100_000,
        867_300_000,
        867_500_000,
        867_700_000,
        867_900_000,
    ]);
    // ChMask 0x00FF: all eight channels stay on.
    ns.link_adr = (vec![(0x00FF, 0)], 5);
    drive(&mut e, &mut ns);
    let s = &e.stats;
    assert_eq!(s.joins_accepted, 40);
    assert_eq!(s.uplinks_acked, s.uplinks_sent, "{s:?}");
    assert_eq!(s.wrong_radio, 0);
    let used: HashSet<u8> = ns.uplink_channels.iter().map(|c| c.0).collect();
    assert_eq!(used, (0..8).collect::<HashSet<u8>>());
}

#[test]
fn eu868_answers_in_us915_are_counted_as_wrong_radio() {
    // What the simulator reports against a network server that knows only EU868: RX1 on the
    // uplink's frequency and data rate instead of the 500 kHz downlink channels.
    let radio = RadioPlan::new(Region::Us915, &[]).unwrap();
    let (entries, mut e) = confirmed_run(20, 13, radio, 3);
    let mut ns = JoinAnswerer::new(&entries, 5_000_000);
    ns.region = Region::Us915;
    ns.eu868_only = true;
    drive(&mut e, &mut ns);
    let s = &e.stats;
    assert_eq!(s.joins_accepted, 0);
    assert!(s.wrong_radio >= 20, "{s:?}");
    assert_eq!(s.joins_missed_window, s.wrong_radio);
}

#[test]
fn confirmed_uplinks_are_acked_and_mac_commands_answered() {
    let (entries, mut e) = confirmed_run(60, 8, RadioPlan::default(), 5);
    let mut ns = JoinAnswerer::new(&entries, 5_000_000);
    drive(&mut e, &mut ns);
    let s = &e.stats;
    assert_eq!(s.joins_accepted, 60);
    assert!(s.uplinks_sent > 200, "{s:?}");
    assert_eq!(s.uplinks_confirmed, s.uplinks_sent);
    assert_eq!(
        s.uplinks_acked, s.uplinks_sent,
        "every confirmed uplink acknowledged: {s:?}"
    );
    assert_eq!(
        s.uplink_transmissions, s.uplinks_sent,
        "no retransmission needed"
    );
    assert_eq!(
        (
            s.uplinks_lost,
            s.downlinks_missed_window,
            s.downlinks_unmatched
        ),
        (0, 0, 0)
    );
    assert_eq!(s.uplinks_delivered, s.uplinks_sent);
    assert_eq!(s.uplinks_duplicates, 0);
    // The time series spreads the same deliveries over the seconds they arrived in.
    let per_second: u64 = e.series.rows.iter().map(|r| r.uplinks_delivered).sum();
    assert_eq!(per_second, s.uplinks_delivered);
    assert!(
        e.series
            .rows
            .iter()
            .filter(|r| r.uplinks_delivered > 0)
            .count()
            > 1
    );
    assert_eq!(s.ack_latency.count(), s.uplinks_acked);
    // 60 devices × (LinkADRReq + DeviceTimeAns) + RekeyConf for the 1.1 devices.
    let v11 = entries.iter().filter(|x| x.mac_version.is_1_1()).count() as u64;
    assert_eq!(s.mac_commands_answered, 120 + v11);
    // Uplink FOpts: the first frame after a join asks for the time (and 1.1 sends RekeyInd);
    // the frame after the LinkADRReq answers it.
    let parse = |f: &[u8]| protocol::mac::parse(Direction::Uplink, f).unwrap();
    for x in &entries {
        let ups: Vec<_> = ns.uplinks.iter().filter(|u| u.0 == x.dev_eui).collect();
        assert!(ups.len() >= 2, "{}", x.dev_eui);
        let first = parse(&ups[0].2);
        assert!(first.contains(&MacCommand::DeviceTimeReq));
        assert_eq!(
            first.contains(&MacCommand::RekeyInd {
                dev_lorawan_minor: 1
            }),
            x.mac_version.is_1_1()
        );
        let second = parse(&ups[1].2);
        assert!(second.contains(&MacCommand::LinkADRAns {
            power_ack: true,
            data_rate_ack: true,
            channel_mask_ack: true
        }));
        assert!(
            !second.contains(&MacCommand::DeviceTimeReq),
            "DeviceTimeAns stops the requests"
        );
        assert!(
            !second
                .iter()
                .any(|c| matches!(c, MacCommand::RekeyInd { .. })),
            "RekeyConf stops RekeyInd"
        );
        assert!(
            ups.windows(2).all(|w| w[1].1 == w[0].1 + 1),
            "FCnt counts up by one"
        );
    }
}

#[test]
fn unacknowledged_confirmed_uplinks_are_retransmitted_nb_trans_times() {
    // The network raises NbTrans to 3 (LinkADRReq, no ACK) and then never acknowledges: every
    // confirmed frame goes out 3 times, with the same FCnt, and is counted lost.
    let (entries, fleet) = fleet(10, 9);
    let mut e = Engine::new(
        EngineConfig {
            seed: 4,
            traffic: Traffic {
                duration_us: 40_000_000,
                uplink_interval_us: 8_000_000,
                confirmed_ratio: 1.0,
                ..traffic(Scenario::Steady)
            },
            gateways: 3,
            event_sink: false,
            duration_given: true,
            forwarder: Forwarder::IMMEDIATE,
        },
        fleet,
    );
    let mut ns = JoinAnswerer::new(&entries, 5_000_000);
    ns.ack = false;
    ns.nb_trans = 3;
    let mut transmissions: HashMap<(u64, u32), u32> = HashMap::new();
    e.start(0);
    let mut now = 0;
    while e.stage() != Stage::Done {
        for o in e.take_outgoing() {
            if o.bytes[3] == 0 {
                let v: serde_json::Value = serde_json::from_slice(&o.bytes[12..]).unwrap();
                let phy = base64::engine::general_purpose::STANDARD
                    .decode(v["rxpk"][0]["data"].as_str().unwrap())
                    .unwrap();
                if phy[0] == 0x80 {
                    let f = DataFrame::parse(&phy).unwrap();
                    // Count transmissions, not receptions: the gateways report the same tmst.
                    let key = (
                        u64::from(f.dev_addr().as_u32()) << 32
                            | u64::from(
                                v["rxpk"][0]["tmst"].as_u64().unwrap() as u32
                                    - e.gateways()[usize::from(o.gateway)].tmst_offset,
                            ),
                        u32::from(f.fcnt16()),
                    );
                    transmissions.entry(key).or_insert(0);
                }
                if let Some(r) = ns.on_push_data(&o.bytes) {
                    e.on_datagram(o.gateway, now + 1000, &r);
                }
            }
        }
        now = e.next_wakeup().max(now);
        e.poll(now);
    }
    let s = &e.stats;
    assert_eq!(s.joins_accepted, 10);
    assert_eq!(s.uplinks_acked, 0);
    let mut per_frame: HashMap<(u32, u32), u32> = HashMap::new();
    for (dev_t, fcnt) in transmissions.keys() {
        *per_frame.entry(((dev_t >> 32) as u32, *fcnt)).or_default() += 1;
    }
    // FCnt 0 gets the LinkADRReq after its first transmission and is retransmitted to 3 too;
    // frames still in flight when the run ends may have fewer (at most one per device).
    let finished: Vec<_> = per_frame.values().copied().collect();
    assert!(finished.iter().all(|&n| n <= 3));
    assert!(
        finished.iter().filter(|&&n| n == 3).count() >= finished.len() - 10,
        "{per_frame:?}"
    );
    assert_eq!(s.uplink_transmissions, transmissions.len() as u64);
    assert_eq!(
        s.mac_commands_answered,
        20 + entries.iter().filter(|x| x.mac_version.is_1_1()).count() as u64
    );
    assert!(
        s.uplinks_lost >= s.uplinks_sent - 10 && s.uplinks_lost <= s.uplinks_sent,
        "{s:?}"
    );
}

/// `n` devices (fleet and traffic seeds `seeds`) joining within half a second through two
/// gateways forwarding as `forwarder` says; not started.
fn half_second_storm(n: u32, seeds: (u64, u64), forwarder: Forwarder) -> Engine {
    let (_, fleet) = fleet(n, seeds.0);
    Engine::new(
        EngineConfig {
            seed: seeds.1,
            traffic: Traffic {
                join_window_us: 500_000,
                ..traffic(Scenario::Storm)
            },
            gateways: 2,
            event_sink: false,
            duration_given: true,
            forwarder,
        },
        fleet,
    )
}

/// The `rxpk` entries of a datagram if it is a PUSH_DATA.
fn rxpk_entries(datagram: &[u8]) -> Vec<serde_json::Value> {
    if datagram[3] != 0 {
        return Vec::new();
    }
    let mut v: serde_json::Value = serde_json::from_slice(&datagram[12..]).unwrap();
    match v["rxpk"].take() {
        serde_json::Value::Array(a) => a,
        other => panic!("rxpk is not an array: {other}"),
    }
}

/// A PUSH_DATA sent: the run time it left, its gateway, its rxpk as (tmst, data).
type Push = (u64, u16, Vec<(u32, String)>);

/// The PUSH_DATAs a storm's gateways send in its first second, with `forwarder`, in the order
/// sent.
fn first_second_pushes(forwarder: Forwarder) -> (Engine, Vec<Push>) {
    let mut e = half_second_storm(2_000, (21, 4), forwarder);
    e.start(0);
    let mut now = 0;
    let mut pushes = Vec::new();
    loop {
        for o in e.take_outgoing().into_iter().filter(|o| o.bytes[3] == 0) {
            let rxpk = rxpk_entries(&o.bytes)
                .iter()
                .map(|r| {
                    let tmst = r["tmst"].as_u64().unwrap() as u32;
                    (tmst, r["data"].as_str().unwrap().to_owned())
                })
                .collect();
            pushes.push((now, o.gateway, rxpk));
        }
        if now > 1_000_000 {
            break;
        }
        now = e.next_wakeup();
        e.poll(now);
    }
    (e, pushes)
}

/// As lora_pkt_fwd does, each gateway sends what it received since its last read of the FIFO
/// together, at its own 10 ms ticks, at most 8 rxpk a PUSH_DATA; the receptions forwarded are
/// exactly those forwarded one by one, none lost, none twice, none delayed by more than a tick.
#[test]
fn gateways_forward_each_read_of_their_fifo_in_one_push_data() {
    let (_, alone) = first_second_pushes(Forwarder::IMMEDIATE);
    let (e, packed) = first_second_pushes(Forwarder::default());
    assert!(alone.iter().all(|(_, _, r)| r.len() == 1));
    let rxpk_of = |p: &[Push]| {
        let mut v: Vec<(u16, u32, String)> = p
            .iter()
            .flat_map(|(_, g, r)| r.iter().map(move |(t, d)| (*g, *t, d.clone())))
            .collect();
        v.sort();
        v
    };
    let forwarded = rxpk_of(&alone);
    assert!(forwarded.len() > 2_000, "{} receptions", forwarded.len());
    assert_eq!(rxpk_of(&packed), forwarded);
    assert_eq!(e.stats.rxpk, forwarded.len() as u64);
    assert_eq!(e.stats.push_data, packed.len() as u64);
    // 2,000 Join-requests in 0.5 s heard by 1 or 2 of 2 gateways: about 30 a gateway in 10 ms.
    assert!(packed.iter().all(|(_, _, r)| (1..=8).contains(&r.len())));
    assert!(packed.iter().filter(|(_, _, r)| r.len() == 8).count() > 100);
    assert!(
        packed.len() * 4 < forwarded.len(),
        "{} PUSH_DATA",
        packed.len()
    );
    for (sent, g, rxpk) in &packed {
        let gw = &e.gateways()[usize::from(*g)];
        // Sent at the gateway's own tick...
        assert_eq!(gw.next_fetch(*sent, 10_000), *sent);
        let mut last = None;
        for (tmst, _) in rxpk {
            // ...holding what it received since the tick before, in the order received.
            let at = gw.run_time_of(*tmst, *sent).unwrap();
            assert!(at <= *sent && at + 10_000 > *sent, "{at} sent at {sent}");
            assert!(last < Some(at));
            last = Some(at);
        }
    }
}

/// Plays the shell of `simulator run` with a DevNonce log (`net::Shared::flush` and `committer`)
/// through 20 s of a storm nobody answers (so devices retry): a batch of datagrams taken with
/// `before_send` is held, and every record taken so far is made durable before it is sent.
/// Returns the Join-requests sent; panics if one left before its DevNonce's record was durable.
fn join_requests_sent_after_their_records(forwarder: Forwarder, model: Option<RadioModel>) -> u64 {
    let mut e = half_second_storm(500, (23, 6), forwarder);
    if let Some(m) = model {
        e.enable_radio(m);
    }
    e.enable_nonce_log();
    e.start(0);
    let mut pending = Vec::new();
    // Per DevEUI, the DevNonces drawn according to the durable records.
    let mut durable: HashMap<u64, u32> = HashMap::new();
    let mut sent: HashSet<(u64, u16)> = HashSet::new();
    let mut sent_by: HashMap<u64, u32> = HashMap::new();
    let mut now = 0;
    loop {
        let recs = e.take_nonce_records();
        let out = e.take_outgoing();
        pending.extend(recs.records);
        // The committer commits when it has a held batch to send after it.
        if recs.before_send && !out.is_empty() {
            for (d, s) in pending.drain(..) {
                durable.insert(d.as_u64(), s.dev_nonce);
            }
        }
        for o in &out {
            for r in rxpk_entries(&o.bytes) {
                let phy = base64::engine::general_purpose::STANDARD
                    .decode(r["data"].as_str().unwrap())
                    .unwrap();
                let Ok(jr) = JoinRequest::parse(&phy) else {
                    continue;
                };
                let d = jr.dev_eui.as_u64();
                if sent.insert((d, jr.dev_nonce.0)) {
                    let n = sent_by.entry(d).or_default();
                    *n += 1;
                    let logged = durable.get(&d).copied().unwrap_or(0);
                    assert!(
                        *n <= logged,
                        "{}'s Join-request #{n} sent at {now} µs with {logged} DevNonces durable",
                        jr.dev_eui
                    );
                }
            }
        }
        if now > 20_000_000 {
            break;
        }
        now = e.next_wakeup();
        e.poll(now);
    }
    sent.len() as u64
}

/// Crash safety of `simulator run`'s DevNonce log wherever a gateway forwards a Join-request after
/// the device sent it: at its forwarder's next read, or at the end of its time on air.
#[test]
fn a_join_request_leaves_a_gateway_only_once_its_dev_nonce_is_durable() {
    for (forwarder, model) in [
        (Forwarder::IMMEDIATE, None),
        (Forwarder::default(), None),
        (Forwarder::IMMEDIATE, Some(RadioModel::default())),
        (Forwarder::default(), Some(RadioModel::default())),
    ] {
        let sent = join_requests_sent_after_their_records(forwarder, model);
        // Every device's first (with the radio modelled: those that did not collide), and the
        // retries of those not answered.
        let least = if model.is_some() { 100 } else { 1_000 };
        assert!(sent > least, "{forwarder:?} {model:?}: {sent}");
    }
}
