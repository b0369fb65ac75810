//! Scenarios of the network server's cores in memory (`harness`): fake clock, fake gateways,
//! fake devices and a fake join server, no sockets. What only sockets can show (real
//! datagrams, kill -9, kernel drops) stays in the socket tests (`uplink.rs`, `otaa.rs`,
//! `gwmp.rs`, `rejoin_restart.rs`).

mod common;
mod harness;

use std::time::{Duration, UNIX_EPOCH};

use harness::{DeviceRadio, FakeDevice, FakeGateway, FakeJoinServer, Harness, UplinkFrame};
use netserver::core::data::UplinkResult;
use netserver::core::gateway::{Action, Count, Path};
use netserver::core::join::JoinFailure;
use netserver::core::timing::Window;
use netserver::core::uplink::DownlinkFailure;
use protocol::data::{Direction, FramePayload, FrmPayload};
use protocol::gwmp::{DataRate, Packet, TxTiming};
use protocol::mac::{self, MacCommand};
use protocol::region::Region;
use protocol::version::MacVersion;

/// Three gateways, best first: gw1 (SNR 8), gw2 (SNR 2), gw3 (SNR −3), each with a downlink
/// route.
fn three_gateways(h: &mut Harness) -> [FakeGateway; 3] {
    let gws = [
        FakeGateway::new(1, 8.0, -80),
        FakeGateway::new(2, 2.0, -100),
        FakeGateway::new(3, -3.0, -110),
    ];
    for g in &gws {
        h.pull_data(g);
    }
    gws
}

fn count(h: &Harness, c: Count) -> usize {
    h.actions.iter().filter(|a| **a == Action::Count(c)).count()
}

/// The `tmst` of a scheduled downlink's `txpk`.
fn txpk_tmst(d: &netserver::core::uplink::ScheduledDownlink) -> u32 {
    let Packet::PullResp(p) = Packet::parse(&d.datagram).unwrap() else {
        panic!("not a PULL_RESP")
    };
    let TxTiming::Tmst(t) = p.txpk.timing else {
        panic!("not tmst timing")
    };
    t
}

/// The MAC commands of a downlink's FOpts (or FPort 0 payload).
fn downlink_commands(d: &protocol::data::Downlink) -> Vec<MacCommand> {
    let bytes = match &d.payload {
        FramePayload::MacCommands(p) => p.0.clone(),
        _ => d.fopts.clone(),
    };
    mac::parse(Direction::Downlink, &bytes).unwrap()
}

/// A Join-request PHYPayload (the cores classify and de-duplicate it; the join server, faked
/// here, would check its MIC).
fn join_request(dev_nonce: u16) -> Vec<u8> {
    let mut phy = vec![0x00];
    phy.extend_from_slice(&0x70B3_D57E_D000_0001u64.to_le_bytes());
    phy.extend_from_slice(&0x0200_0000_0000_0009u64.to_le_bytes());
    phy.extend_from_slice(&dev_nonce.to_le_bytes());
    phy.extend_from_slice(&[1, 2, 3, 4]);
    phy
}

#[test]
fn a_join_heard_by_three_gateways_is_forwarded_once_and_answered_through_the_best() {
    let mut h = Harness::new();
    let [gw1, gw2, gw3] = three_gateways(&mut h);
    let phy = join_request(1);
    // The weakest gateway reports first; the others within 60 ms.
    h.hear(&gw3, &phy);
    let t_first = h.now();
    h.advance(Duration::from_millis(30));
    h.hear(&gw1, &phy);
    h.advance(Duration::from_millis(30));
    h.hear(&gw2, &phy);
    assert_eq!(h.joins.len(), 1, "one forward to the join path");
    assert_eq!(h.joins[0].1.gateway, gw3.eui, "with its first reception");
    assert_eq!(count(&h, Count::Duplicate), 2);
    assert_eq!(h.dedup.receptions(&phy).len(), 3);
    assert!(!h.actions.iter().any(|a| matches!(
        a,
        Action::Forward {
            path: Path::Data,
            ..
        }
    )));

    // The fake join server answers in 300 ms: RX1 (5 s after the first copy) through gw1.
    let (gw, at) = h
        .answer_join(FakeJoinServer {
            latency: Duration::from_millis(300),
        })
        .unwrap();
    assert_eq!(gw.gateway, gw1.eui, "the best SNR");
    assert_eq!(at.window, Window::Rx1);
    assert_eq!(at.tmst, gw.tmst.wrapping_add(5_000_000));
    assert_eq!(at.opens_at, t_first + Duration::from_secs(5));
}

#[test]
fn a_late_join_answer_goes_in_rx2_or_not_at_all_and_only_through_a_routed_gateway() {
    // Answer after 4.95 s: RX1 is 50 ms away, inside the 100 ms margin: RX2.
    let mut h = Harness::new();
    let [gw1, _, gw3] = three_gateways(&mut h);
    let phy = join_request(2);
    h.hear(&gw1, &phy);
    h.hear(&gw3, &phy);
    let (gw, at) = h
        .answer_join(FakeJoinServer {
            latency: Duration::from_millis(4_950),
        })
        .unwrap();
    assert_eq!((gw.gateway, at.window), (gw1.eui, Window::Rx2));
    assert_eq!(at.tmst, gw.tmst.wrapping_add(6_000_000));

    // After 5.95 s both windows are past.
    let mut h = Harness::new();
    let [gw1, ..] = three_gateways(&mut h);
    h.hear(&gw1, &phy);
    let late = h.answer_join(FakeJoinServer {
        latency: Duration::from_millis(5_950),
    });
    assert_eq!(late.unwrap_err(), JoinFailure::TooLate);

    // The best gateway has no downlink route (no PULL_DATA yet): the next best answers.
    let mut h = Harness::new();
    let unrouted = FakeGateway::new(9, 12.0, -60);
    let [_, gw2, _] = three_gateways(&mut h);
    h.hear(&unrouted, &phy);
    h.hear(&gw2, &phy);
    let (gw, _) = h
        .answer_join(FakeJoinServer {
            latency: Duration::from_millis(300),
        })
        .unwrap();
    assert_eq!(gw.gateway, gw2.eui);
}

#[test]
fn a_confirmed_uplink_is_acked_in_rx1_then_rx2_then_too_late() {
    let mut h = Harness::new();
    let [gw1, gw2, _] = three_gateways(&mut h);
    let mut d = FakeDevice::new(1, MacVersion::V1_0_3);
    h.install(&d);
    let confirmed = UplinkFrame {
        confirmed: true,
        payload: Some(b"reading".to_vec()),
        ..UplinkFrame::default()
    };

    // Heard by two gateways, handled after the 200 ms collection window: RX1 (1 s) via gw1.
    let phy = d.frame(confirmed.clone());
    h.hear(&gw2, &phy);
    h.hear(&gw1, &phy);
    let out = h.flush().pop().unwrap();
    assert_eq!(out.result, UplinkResult::Ok);
    let dl = out.downlink.as_ref().expect("an ACK");
    assert_eq!(
        (dl.window, dl.gateway, dl.to),
        (Window::Rx1, gw1.eui, gw1.addr)
    );
    let gw1_tmst = h
        .dedup
        .receptions(&phy)
        .iter()
        .find(|r| r.gateway == gw1.eui)
        .unwrap()
        .tmst;
    assert_eq!(txpk_tmst(dl), gw1_tmst.wrapping_add(1_000_000));
    let down = d.open(dl, 0, 0);
    assert!(down.ack && !down.confirmed && !down.f_pending);
    assert_eq!(down.payload, FramePayload::None);
    let ev = &out.events_of("uplink")[0];
    assert_eq!(ev["f_cnt"], 0);
    assert_eq!(ev["confirmed"], true);
    assert_eq!(ev["rx"].as_array().unwrap().len(), 2);
    assert_eq!(ev["rx"][0]["gateway"], gw1.eui.to_string(), "best first");
    let (dev_eui, rec) = out.record.unwrap();
    assert_eq!(dev_eui, d.dev_eui);
    assert_eq!((rec.counters.f_cnt_up, rec.counters.n_f_cnt_down), (1, 1));

    // Handled 1.2 s after the first copy: RX1 is past, RX2 (2 s) is still ahead.
    let phy = d.frame(confirmed.clone());
    h.hear(&gw1, &phy);
    h.advance(Duration::from_millis(1_000));
    let out = h.flush().pop().unwrap();
    let dl = out.downlink.as_ref().unwrap();
    assert_eq!(dl.window, Window::Rx2);
    assert_eq!(
        txpk_tmst(dl),
        h.dedup.receptions(&phy)[0].tmst.wrapping_add(2_000_000)
    );
    assert!(d.open(dl, 1, 0).ack);

    // Handled 2.2 s after: both windows are past; the uplink is still delivered and counted,
    // its counters persisted, and no FCntDown is spent.
    let phy = d.frame(confirmed);
    h.hear(&gw1, &phy);
    h.advance(Duration::from_millis(2_000));
    let out = h.flush().pop().unwrap();
    assert_eq!(out.result, UplinkResult::Ok);
    assert!(out.downlink.is_none());
    assert_eq!(out.failure, Some(DownlinkFailure::TooLate));
    assert_eq!(out.events_of("uplink").len(), 1);
    let rec = out.record.unwrap().1;
    assert_eq!((rec.counters.f_cnt_up, rec.counters.n_f_cnt_down), (3, 2));
}

#[test]
fn no_downlink_route_is_counted_and_the_uplink_still_delivered() {
    let mut h = Harness::new();
    let unrouted = FakeGateway::new(9, 8.0, -80);
    let mut d = FakeDevice::new(2, MacVersion::V1_0_3);
    h.install(&d);
    let phy = d.frame(UplinkFrame {
        confirmed: true,
        ..UplinkFrame::default()
    });
    h.hear(&unrouted, &phy);
    let out = h.flush().pop().unwrap();
    assert_eq!(out.result, UplinkResult::Ok);
    assert_eq!(out.failure, Some(DownlinkFailure::NoGateway));
    assert_eq!(out.record.unwrap().1.counters.n_f_cnt_down, 0);
}

#[test]
fn mac_commands_are_answered_link_check_device_time_and_adr() {
    let mut h = Harness::new();
    let [gw1, gw2, gw3] = three_gateways(&mut h);
    let mut d = FakeDevice::new(3, MacVersion::V1_0_3);
    h.install(&d);

    // LinkCheckReq and DeviceTimeReq, heard by all three gateways.
    h.advance(Duration::from_millis(1_250));
    let phy = d.frame(UplinkFrame {
        fopts: vec![MacCommand::LinkCheckReq, MacCommand::DeviceTimeReq],
        ..UplinkFrame::default()
    });
    let wall = h.wall();
    for g in [&gw3, &gw2, &gw1] {
        h.hear(g, &phy);
    }
    let out = h.flush().pop().unwrap();
    let down = d.open(out.downlink.as_ref().unwrap(), 0, 0);
    assert!(!down.ack, "unconfirmed uplink");
    let unix = wall.duration_since(UNIX_EPOCH).unwrap();
    assert_eq!(
        downlink_commands(&down),
        vec![
            // SNR 8 dB above DR5's −7.5 dB floor: 15 dB of margin, three gateways.
            MacCommand::LinkCheckAns {
                margin: 15,
                gw_cnt: 3
            },
            MacCommand::DeviceTimeAns {
                seconds: (unix.as_secs() - 315_964_800 + 18) as u32,
                fractional_second: 64, // .25 s
            },
        ]
    );

    // ADR: once 20 uplinks are in the SNR history, at DR5 with SNR 8 dB (5.5 dB of margin
    // beyond the 10 dB installation margin: one 3 dB step), the device is asked to lower its
    // power by one step; the uplinks before get no downlink (nothing to answer).
    let adr = UplinkFrame {
        adr: true,
        ..UplinkFrame::default()
    };
    let mut request = None;
    for i in 0..20 {
        let phy = d.frame(adr.clone());
        h.hear(&gw1, &phy);
        let out = h.flush().pop().unwrap();
        assert_eq!(out.result, UplinkResult::Ok);
        assert!(out.failure.is_none());
        // The LinkCheck uplink above counts in the SNR history: it is full at the 19th.
        if i == 18 {
            request = out.downlink;
        } else {
            assert!(out.downlink.is_none(), "uplink {i}");
        }
    }
    let down = d.open(request.as_ref().expect("a LinkADRReq"), 1, 0);
    assert!(down.adr);
    assert_eq!(
        downlink_commands(&down),
        vec![MacCommand::LinkADRReq {
            data_rate: 5,
            tx_power: 1,
            ch_mask: 0x0007,
            ch_mask_cntl: 0,
            nb_trans: 1,
        }]
    );
    // Asked once: the next uplinks repeat no request while it is unanswered.
    let phy = d.frame(adr);
    h.hear(&gw1, &phy);
    assert!(h.flush().pop().unwrap().downlink.is_none());
}

#[test]
fn a_1_1_session_takes_no_frame_before_its_rekey_ind_and_answers_it() {
    let mut h = Harness::new();
    let [gw1, ..] = three_gateways(&mut h);
    let mut d = FakeDevice::new(4, MacVersion::V1_1);
    h.install(&d);

    // Without RekeyInd: discarded, counter not advanced, nothing persisted.
    let phy = d.frame(UplinkFrame::default());
    h.hear(&gw1, &phy);
    let out = h.flush().pop().unwrap();
    assert_eq!(out.result, UplinkResult::SessionUnconfirmed);
    assert!(out.record.is_none() && out.events.is_empty() && !out.in_use);

    // With it: accepted, the session is in use, RekeyConf answers (FOpts encrypted in 1.1).
    let phy = d.frame(UplinkFrame {
        fopts: vec![MacCommand::RekeyInd {
            dev_lorawan_minor: 1,
        }],
        payload: Some(vec![1, 2, 3]),
        ..UplinkFrame::default()
    });
    h.hear(&gw1, &phy);
    let out = h.flush().pop().unwrap();
    assert_eq!(out.result, UplinkResult::Ok);
    assert!(out.in_use);
    let rec = out.record.unwrap().1;
    assert!(rec.rekey_confirmed);
    assert_eq!(rec.counters.f_cnt_up, 2);
    let down = d.open(out.downlink.as_ref().unwrap(), 0, 0);
    assert_eq!(
        downlink_commands(&down),
        vec![MacCommand::RekeyConf {
            serv_lorawan_minor: 1
        }]
    );
    assert_eq!(out.events_of("uplink")[0]["data"], "AQID");
}

#[test]
fn nb_trans_repeats_and_gateway_copies_are_delivered_once() {
    let mut h = Harness::new();
    let [gw1, gw2, _] = three_gateways(&mut h);
    let mut d = FakeDevice::new(5, MacVersion::V1_0_3);
    h.install(&d);
    let phy = d.frame(UplinkFrame {
        payload: Some(b"x".to_vec()),
        ..UplinkFrame::default()
    });
    h.hear(&gw1, &phy);
    h.advance(Duration::from_millis(50));
    h.hear(&gw2, &phy);
    let out = h.flush();
    assert_eq!(out.len(), 1, "another gateway's copy is not a frame");
    assert_eq!(out[0].result, UplinkResult::Ok);
    assert_eq!(count(&h, Count::Duplicate), 1);

    // NbTrans: the device sends the same frame again 1.5 s later (past the 1 s
    // retransmission threshold): a new transmission, judged a repeat by the counter.
    h.advance(Duration::from_millis(1_500));
    h.hear(&gw1, &phy);
    let out = h.flush().pop().unwrap();
    assert_eq!(out.result, UplinkResult::Duplicate);
    assert!(out.events.is_empty() && out.record.is_none() && out.downlink.is_none());
}

#[test]
fn replays_bad_mics_and_unknown_addresses_are_refused_with_the_most_specific_reason() {
    let mut h = Harness::new();
    let [gw1, ..] = three_gateways(&mut h);
    let mut d = FakeDevice::new(6, MacVersion::V1_0_3);
    h.install(&d);
    let mut frames = Vec::new();
    for _ in 0..6 {
        let phy = d.frame(UplinkFrame::default());
        h.hear(&gw1, &phy);
        assert_eq!(h.flush().pop().unwrap().result, UplinkResult::Ok);
        frames.push(phy);
        h.advance(Duration::from_secs(2));
    }
    // An old frame played again.
    h.hear(&gw1, &frames[3]);
    let out = h.flush().pop().unwrap();
    assert_eq!(out.result, UplinkResult::Replay);
    assert!(out.record.is_none() && out.events.is_empty());

    // A frame whose MIC does not validate (its last byte changed).
    let mut forged = d.frame_at(6, UplinkFrame::default());
    let n = forged.len();
    forged[n - 1] ^= 0xFF;
    h.hear(&gw1, &forged);
    assert_eq!(h.flush().pop().unwrap().result, UplinkResult::MicFailed);

    // An address no session holds.
    let mut stranger = FakeDevice::new(7, MacVersion::V1_0_3);
    let phy = stranger.frame(UplinkFrame::default());
    h.hear(&gw1, &phy);
    assert_eq!(
        h.flush().pop().unwrap().result,
        UplinkResult::UnknownDevAddr
    );

    // The device's genuine next frame is still accepted after all of that.
    let phy = d.frame(UplinkFrame::default());
    h.hear(&gw1, &phy);
    let out = h.flush().pop().unwrap();
    assert_eq!(out.result, UplinkResult::Ok);
    assert_eq!(out.events_of("uplink")[0]["f_cnt"], 6);
}

#[test]
fn the_16_bit_counter_rolls_over_into_the_32_bit_one() {
    let mut h = Harness::new();
    let [gw1, ..] = three_gateways(&mut h);
    let mut d = FakeDevice::new(8, MacVersion::V1_0_3);
    let s = h.install(&d);
    // 65,535 frames accepted so far: the next is 0x10000, 0x0000 on air.
    s.live.lock().counters.f_cnt_up = 0xFFFF;
    d.f_cnt_up = 0xFFFF;
    for expected in [0xFFFFu32, 0x1_0000, 0x1_0001] {
        let phy = d.frame(UplinkFrame::default());
        assert_eq!(u16::from_le_bytes([phy[6], phy[7]]), expected as u16);
        h.hear(&gw1, &phy);
        let out = h.flush().pop().unwrap();
        assert_eq!(out.result, UplinkResult::Ok);
        assert_eq!(out.events_of("uplink")[0]["f_cnt"], expected);
        assert_eq!(out.record.unwrap().1.counters.f_cnt_up, expected + 1);
        h.advance(Duration::from_secs(2));
    }
}

#[test]
fn a_retransmitted_confirmed_uplink_is_acked_again_but_delivered_once() {
    let mut h = Harness::new();
    let [gw1, ..] = three_gateways(&mut h);
    let mut d = FakeDevice::new(9, MacVersion::V1_0_3);
    h.install(&d);
    let phy = d.frame(UplinkFrame {
        confirmed: true,
        payload: Some(b"alarm".to_vec()),
        ..UplinkFrame::default()
    });
    h.hear(&gw1, &phy);
    let first = h.flush().pop().unwrap();
    assert_eq!(first.result, UplinkResult::Ok);
    assert!(d.open(first.downlink.as_ref().unwrap(), 0, 0).ack);

    // The ACK was lost: the device sends the frame again 3 s later.
    h.advance(Duration::from_secs(3));
    h.hear(&gw1, &phy);
    let again = h.flush().pop().unwrap();
    assert_eq!(again.result, UplinkResult::Duplicate);
    assert!(again.events.is_empty(), "not delivered twice");
    let down = d.open(again.downlink.as_ref().unwrap(), 1, 0);
    assert!(down.ack, "ACKed again, with the next FCntDown");
    let rec = again.record.unwrap().1;
    assert_eq!((rec.counters.f_cnt_up, rec.counters.n_f_cnt_down), (1, 2));
}

#[test]
fn queued_downlinks_go_one_per_uplink_with_fpending_and_a_confirmed_one_is_acked() {
    let mut h = Harness::new();
    let [gw1, ..] = three_gateways(&mut h);
    let mut d = FakeDevice::new(10, MacVersion::V1_0_3);
    h.install(&d);
    h.queue_downlink(&d, 1, b"first", false);
    h.queue_downlink(&d, 2, b"second", true);

    // Unconfirmed uplink, nothing to answer but the queue: the first item, FPending set.
    let phy = d.frame(UplinkFrame::default());
    h.hear(&gw1, &phy);
    let out = h.flush().pop().unwrap();
    let down = d.open(out.downlink.as_ref().unwrap(), 0, 0);
    assert!(down.f_pending && !down.confirmed);
    assert_eq!(
        down.payload,
        FramePayload::Application {
            f_port: 2,
            payload: FrmPayload(b"first".to_vec())
        }
    );

    // The next uplink takes the second, confirmed, with nothing left pending.
    h.advance(Duration::from_secs(2));
    let phy = d.frame(UplinkFrame::default());
    h.hear(&gw1, &phy);
    let out = h.flush().pop().unwrap();
    let down = d.open(out.downlink.as_ref().unwrap(), 1, 0);
    assert!(!down.f_pending && down.confirmed);
    assert!(!h.queue.has(d.dev_eui));

    // The device acknowledges it: an `ack` event with the downlink's id and FCntDown.
    h.advance(Duration::from_secs(2));
    let phy = d.frame(UplinkFrame {
        ack: true,
        ..UplinkFrame::default()
    });
    h.hear(&gw1, &phy);
    let out = h.flush().pop().unwrap();
    let acks = out.events_of("ack");
    assert_eq!(acks.len(), 1);
    assert_eq!(
        (acks[0]["id"].as_u64(), acks[0]["f_cnt_down"].as_u64()),
        (Some(2), Some(1))
    );
    assert!(out.downlink.is_none(), "nothing more to send");

    // A queued item that cannot go (no route) is put back, not lost.
    let mut h2 = Harness::new();
    let unrouted = FakeGateway::new(9, 8.0, -80);
    let mut d2 = FakeDevice::new(11, MacVersion::V1_0_3);
    h2.install(&d2);
    h2.queue_downlink(&d2, 5, b"later", false);
    let phy = d2.frame(UplinkFrame::default());
    h2.hear(&unrouted, &phy);
    let out = h2.flush().pop().unwrap();
    assert_eq!(out.failure, Some(DownlinkFailure::NoGateway));
    assert!(h2.queue.has(d2.dev_eui));
}

/// One region's uplink and the downlink radio RP002 gives it.
struct RegionCase {
    region: Region,
    sub_bands: &'static [u8],
    uplink: DeviceRadio,
    /// RX1: frequency, SF, bandwidth (kHz), powe.
    rx1: (u32, u8, u16, i8),
    /// RX2: frequency, SF, bandwidth (kHz), powe.
    rx2: (u32, u8, u16, i8),
}

const fn lora(freq_hz: u32, tx_ch: u8, tx_dr: u8, sf: u8, bw: u16) -> DeviceRadio {
    DeviceRadio {
        freq_hz,
        tx_ch,
        tx_dr,
        datr: DataRate::Lora {
            spreading_factor: sf,
            bandwidth_khz: bw,
        },
    }
}

/// RP002-1.0.3: EU868 §2.4.7/2.4.8, US915 §2.5.7/2.5.8 (RX1 on 923.3 + 0.6 × (channel mod 8)
/// MHz at 500 kHz, RX2 923.3 MHz DR8), AU915 §2.7.7/2.7.8 (the same layout from 915.2 MHz),
/// AS923 §2.8.7/2.8.8 (RX1 on the uplink frequency, RX2 923.2 MHz DR2); `powe` 14/27 in EU868
/// (this server's defaults), the region's downlink EIRP elsewhere.
const REGION_CASES: [RegionCase; 4] = [
    RegionCase {
        region: Region::Eu868,
        sub_bands: &[],
        uplink: lora(868_300_000, 1, 5, 7, 125),
        rx1: (868_300_000, 7, 125, 14),
        rx2: (869_525_000, 12, 125, 27),
    },
    RegionCase {
        region: Region::Us915,
        sub_bands: &[2],
        // Channel 10 = 902.3 + 0.2 × 10 MHz at DR3 (SF7BW125) → DR13 on channel 10 mod 8 = 2.
        uplink: lora(904_300_000, 10, 3, 7, 125),
        rx1: (924_500_000, 7, 500, 21),
        rx2: (923_300_000, 12, 500, 21),
    },
    RegionCase {
        region: Region::Au915,
        sub_bands: &[2],
        // Channel 10 = 915.2 + 0.2 × 10 MHz at DR2 (SF10BW125) → DR10 (SF10BW500).
        uplink: lora(917_200_000, 10, 2, 10, 125),
        rx1: (924_500_000, 10, 500, 30),
        rx2: (923_300_000, 12, 500, 30),
    },
    RegionCase {
        region: Region::As923_1,
        sub_bands: &[],
        // Default channel 1 (923.4 MHz) at DR4 (SF8BW125).
        uplink: lora(923_400_000, 1, 4, 8, 125),
        rx1: (923_400_000, 8, 125, 16),
        rx2: (923_200_000, 10, 125, 16),
    },
];

/// The `txpk` radio of a scheduled downlink: frequency, SF, bandwidth, powe.
fn txpk_radio(d: &netserver::core::uplink::ScheduledDownlink) -> (u32, u8, u16, i8) {
    let Packet::PullResp(p) = Packet::parse(&d.datagram).unwrap() else {
        panic!("not a PULL_RESP");
    };
    let DataRate::Lora {
        spreading_factor,
        bandwidth_khz,
    } = p.txpk.datr
    else {
        panic!("not LoRa");
    };
    (
        p.txpk.freq_hz,
        spreading_factor,
        bandwidth_khz,
        p.txpk.powe.unwrap(),
    )
}

#[test]
fn confirmed_uplinks_are_acked_on_each_regions_rx1_then_rx2_radio_with_its_tx_ch_in_the_mic() {
    for c in &REGION_CASES {
        let name = c.region.name();
        let mut h = Harness::in_region(c.region, c.sub_bands);
        let [gw1, ..] = three_gateways(&mut h);
        for (n, version) in [(1, MacVersion::V1_0_3), (2, MacVersion::V1_1)] {
            let mut d = FakeDevice::in_region(n, version, c.region, c.uplink);
            h.install(&d);
            let rekey = if version.is_1_1() {
                vec![MacCommand::RekeyInd {
                    dev_lorawan_minor: 1,
                }]
            } else {
                Vec::new()
            };
            let confirmed = UplinkFrame {
                confirmed: true,
                fopts: rekey,
                payload: Some(b"reading".to_vec()),
                ..UplinkFrame::default()
            };
            // In time for RX1. A 1.1 frame is accepted only if the server's TxDr and TxCh
            // (from the rxpk's datr and frequency, through the region) match the device's.
            let phy = d.frame(confirmed.clone());
            h.hear_on(&gw1, &phy, c.uplink);
            let out = h.flush().pop().unwrap();
            assert_eq!(out.result, UplinkResult::Ok, "{name} {version}");
            let dl = out.downlink.as_ref().expect("an ACK");
            assert_eq!(dl.window, Window::Rx1, "{name}");
            assert_eq!(txpk_radio(dl), c.rx1, "{name} {version} RX1");
            assert!(d.open(dl, 0, 0).ack);

            // Handled after RX1: RX2 on the region's RX2 radio.
            let phy = d.frame(confirmed);
            h.hear_on(&gw1, &phy, c.uplink);
            h.advance(Duration::from_millis(1_000));
            let out = h.flush().pop().unwrap();
            assert_eq!(out.result, UplinkResult::Ok, "{name} {version}");
            let dl = out.downlink.as_ref().unwrap();
            assert_eq!(dl.window, Window::Rx2, "{name}");
            assert_eq!(txpk_radio(dl), c.rx2, "{name} {version} RX2");
            assert!(d.open(dl, 1, 1).ack);
            // The gateway transmits one downlink at a time: the next device's RX1 comes after
            // this RX2 ACK (up to 1.2 s on air at SF12) is over.
            h.advance(Duration::from_secs(3));
        }
    }
}

#[test]
fn a_1_1_uplink_on_another_channel_than_its_mic_says_is_refused() {
    // US915: the device computed its MIC for channel 9, the gateway heard it on channel 10.
    let mut h = Harness::in_region(Region::Us915, &[2]);
    let [gw1, ..] = three_gateways(&mut h);
    let radio = REGION_CASES[1].uplink;
    let mut d = FakeDevice::in_region(
        3,
        MacVersion::V1_1,
        Region::Us915,
        DeviceRadio { tx_ch: 9, ..radio },
    );
    h.install(&d);
    let phy = d.frame(UplinkFrame {
        fopts: vec![MacCommand::RekeyInd {
            dev_lorawan_minor: 1,
        }],
        ..UplinkFrame::default()
    });
    h.hear_on(&gw1, &phy, radio);
    let out = h.flush().pop().unwrap();
    assert_ne!(out.result, UplinkResult::Ok);
}

#[test]
fn a_payload_longer_than_the_windows_data_rate_allows_waits_and_the_ack_goes_alone() {
    // EU868 RX2 is DR0: M = 59 (RP002 Table 12). A 100-byte payload cannot go there; in RX1
    // at DR5 (M = 230) it can.
    let mut h = Harness::new();
    let [gw1, ..] = three_gateways(&mut h);
    let mut d = FakeDevice::new(5, MacVersion::V1_0_3);
    h.install(&d);
    h.queue_downlink(&d, 1, &[0x42; 100], false);
    let confirmed = UplinkFrame {
        confirmed: true,
        ..UplinkFrame::default()
    };
    let phy = d.frame(confirmed.clone());
    h.hear(&gw1, &phy);
    h.advance(Duration::from_millis(1_000));
    let out = h.flush().pop().unwrap();
    let dl = out.downlink.as_ref().unwrap();
    assert_eq!(dl.window, Window::Rx2);
    let down = d.open(dl, 0, 0);
    assert!(
        down.ack && down.f_pending,
        "the ACK, with the payload pending"
    );
    assert_eq!(down.payload, FramePayload::None);
    assert!(h.queue.has(d.dev_eui), "the payload waits");

    // The next uplink comes after the RX2 ACK (1.2 s on air at SF12) is over: the gateway
    // transmits one downlink at a time.
    h.advance(Duration::from_secs(3));
    let phy = d.frame(confirmed);
    h.hear(&gw1, &phy);
    let out = h.flush().pop().unwrap();
    let dl = out.downlink.as_ref().unwrap();
    assert_eq!(dl.window, Window::Rx1);
    let down = d.open(dl, 1, 0);
    assert_eq!(
        down.payload,
        FramePayload::Application {
            f_port: 2,
            payload: FrmPayload(vec![0x42; 100])
        }
    );
    assert!(!h.queue.has(d.dev_eui));
}

/// A ForceRejoinReq put for a device (what the operator's force-rejoin request does) waits for
/// its time and for a confirmed 1.1 session, rides the first downlink after that, and is sent
/// again 20 s later until the device has rejoined.
#[test]
fn a_forced_rejoin_rides_the_first_downlink_after_its_time_until_the_device_rejoins() {
    use netserver::store::pending_mac::PendingMac;
    let mut h = Harness::new();
    let gw = FakeGateway::new(1, 8.0, -80);
    let mut d = FakeDevice::new(5, MacVersion::V1_1);
    h.install(&d);
    let force = MacCommand::ForceRejoinReq {
        period: 1,
        max_retries: 2,
        rejoin_type: 0,
        data_rate: 3,
    };
    let now_ms = protocol::time::unix_ms(h.wall());
    h.pending_mac.put(
        d.dev_eui,
        PendingMac {
            not_before_ms: now_ms + 60_000,
            command: force,
        },
    );
    let rekey_ind = UplinkFrame {
        fopts: vec![MacCommand::RekeyInd {
            dev_lorawan_minor: 1,
        }],
        ..UplinkFrame::default()
    };
    // Before its time (and before the gateway has a downlink route): nothing is taken.
    let phy = d.frame(rekey_ind.clone());
    h.hear(&gw, &phy);
    let out = h.flush().pop().unwrap();
    assert!(out.downlink.is_none());
    h.pull_data(&gw);
    h.advance(Duration::from_secs(61));
    // Due: the next uplink's downlink carries it.
    let phy = d.frame(UplinkFrame::default());
    h.hear(&gw, &phy);
    let out = h.flush().pop().unwrap();
    let down = d.open(
        out.downlink.as_ref().expect("a downlink for the command"),
        0,
        0,
    );
    assert_eq!(downlink_commands(&down), vec![force]);
    let phy = d.frame(UplinkFrame::default());
    h.hear(&gw, &phy);
    let out = h.flush().pop().unwrap();
    assert!(out.downlink.is_none(), "not again at the next uplink");
    // No rejoin came: sent again after RESEND_AFTER_MS, until the device rejoins.
    h.advance(Duration::from_millis(
        netserver::store::pending_mac::RESEND_AFTER_MS,
    ));
    let phy = d.frame(UplinkFrame::default());
    h.hear(&gw, &phy);
    let out = h.flush().pop().unwrap();
    let down = d.open(out.downlink.as_ref().expect("sent again"), 1, 0);
    assert_eq!(downlink_commands(&down), vec![force]);
    h.pending_mac.done(d.dev_eui);
    assert!(h.pending_mac.is_empty(), "done once the device rejoined");

    // A 1.0 session never gets one (ForceRejoinReq is LoRaWAN 1.1).
    let mut old = FakeDevice::new(6, MacVersion::V1_0_3);
    h.install(&old);
    h.pending_mac.put(
        old.dev_eui,
        PendingMac {
            not_before_ms: 0,
            command: MacCommand::ForceRejoinReq {
                period: 0,
                max_retries: 0,
                rejoin_type: 2,
                data_rate: 0,
            },
        },
    );
    let phy = old.frame(UplinkFrame::default());
    h.hear(&gw, &phy);
    let out = h.flush().pop().unwrap();
    assert_eq!(out.result, UplinkResult::Ok);
    assert!(out.downlink.is_none());
    assert_eq!(h.pending_mac.len(), 1);
}
