//! The region tables against RP002-1.0.3's tables, value by value, and against ChirpStack's
//! independent transcription of the same tables (`lrwn::region`), plus property tests of the
//! channel plan (index ↔ frequency, CFList build ↔ parse, LinkADRReq masks).

use protocol::gwmp::DataRate;
use protocol::join::CfList;
use protocol::region::{
    CfListType, ChannelPlan, DrModulation, DwellTime, Link, LrFhssCodingRate, Region, RegionError,
};

use lrwn::region as cs;

fn lora(sf: u8, bw: u16) -> DataRate {
    DataRate::Lora {
        spreading_factor: sf,
        bandwidth_khz: bw,
    }
}

/// `datr` of each DR, "" for RFU, "LR-FHSS" for LR-FHSS.
fn datr_row(r: Region) -> Vec<String> {
    (0..16)
        .map(|dr| match r.dr_def(dr) {
            Err(_) => String::new(),
            Ok(d) => match d.modulation {
                DrModulation::Radio(x) => x.to_string(),
                DrModulation::LrFhss { .. } => "LR-FHSS".into(),
            },
        })
        .collect()
}

#[test]
fn data_rate_tables() {
    // RP002-1.0.3 §2.4.3 Table 8 (EU868), §2.5.3 (US915), §2.8.3 (AU915), §2.10.3 (AS923),
    // §2.11.3 (KR920), §2.12.3 (IN865).
    let s = |v: &[&str]| {
        let mut v: Vec<String> = v.iter().map(|x| x.to_string()).collect();
        v.resize(16, String::new());
        v
    };
    let eu = s(&[
        "SF12BW125",
        "SF11BW125",
        "SF10BW125",
        "SF9BW125",
        "SF8BW125",
        "SF7BW125",
        "SF7BW250",
        "50000",
        "LR-FHSS",
        "LR-FHSS",
        "LR-FHSS",
        "LR-FHSS",
    ]);
    let us = s(&[
        "SF10BW125",
        "SF9BW125",
        "SF8BW125",
        "SF7BW125",
        "SF8BW500",
        "LR-FHSS",
        "LR-FHSS",
        "",
        "SF12BW500",
        "SF11BW500",
        "SF10BW500",
        "SF9BW500",
        "SF8BW500",
        "SF7BW500",
    ]);
    let au = s(&[
        "SF12BW125",
        "SF11BW125",
        "SF10BW125",
        "SF9BW125",
        "SF8BW125",
        "SF7BW125",
        "SF8BW500",
        "LR-FHSS",
        "SF12BW500",
        "SF11BW500",
        "SF10BW500",
        "SF9BW500",
        "SF8BW500",
        "SF7BW500",
    ]);
    let as923 = s(&[
        "SF12BW125",
        "SF11BW125",
        "SF10BW125",
        "SF9BW125",
        "SF8BW125",
        "SF7BW125",
        "SF7BW250",
        "50000",
    ]);
    let kr = s(&[
        "SF12BW125",
        "SF11BW125",
        "SF10BW125",
        "SF9BW125",
        "SF8BW125",
        "SF7BW125",
    ]);
    let inn = s(&[
        "SF12BW125",
        "SF11BW125",
        "SF10BW125",
        "SF9BW125",
        "SF8BW125",
        "SF7BW125",
        "",
        "50000",
    ]);
    assert_eq!(datr_row(Region::Eu868), eu);
    assert_eq!(datr_row(Region::Us915), us);
    assert_eq!(datr_row(Region::Au915), au);
    for r in [
        Region::As923_1,
        Region::As923_2,
        Region::As923_3,
        Region::As923_4,
    ] {
        assert_eq!(datr_row(r), as923, "{r}");
    }
    assert_eq!(datr_row(Region::Kr920), kr);
    assert_eq!(datr_row(Region::In865), inn);
    // LR-FHSS is named, not modelled.
    assert_eq!(
        Region::Eu868.dr_def(10).unwrap().modulation,
        DrModulation::LrFhss {
            occupied_channel_width_khz: 336,
            coding_rate: LrFhssCodingRate::Cr1_3
        }
    );
    assert_eq!(Region::Us915.data_rate(5), Err(RegionError::NotModelled(5)));
    assert_eq!(Region::Us915.data_rate(7), Err(RegionError::DataRate(7)));
    assert_eq!(Region::Us915.data_rate(14), Err(RegionError::DataRate(14)));
}

#[test]
fn datr_to_dr_depends_on_the_link() {
    // SF8/500 kHz is DR4 up and DR12 down in US915, DR6 up and DR12 down in AU915.
    assert_eq!(Region::Us915.dr_of_datr("SF8BW500", Link::Uplink), Some(4));
    assert_eq!(
        Region::Us915.dr_of_datr("SF8BW500", Link::Downlink),
        Some(12)
    );
    assert_eq!(Region::Au915.dr_of_datr("SF8BW500", Link::Uplink), Some(6));
    assert_eq!(
        Region::Au915.dr_of_datr("SF8BW500", Link::Downlink),
        Some(12)
    );
    assert_eq!(Region::Us915.dr_of_datr("SF10BW125", Link::Uplink), Some(0));
    assert_eq!(Region::Us915.dr_of_datr("SF10BW125", Link::Downlink), None);
    assert_eq!(Region::Us915.dr_of_datr("SF12BW125", Link::Uplink), None);
    assert_eq!(
        Region::Us915.dr_of_datr("SF7BW500", Link::Downlink),
        Some(13)
    );
    assert_eq!(Region::Eu868.dr_of_datr("SF8BW500", Link::Uplink), None);
    assert_eq!(
        Region::Eu868.dr_of_datr("SF7BW250", Link::Downlink),
        Some(6)
    );
    assert_eq!(
        Region::Eu868.dr_of(DataRate::Fsk { bitrate: 50_000 }, Link::Uplink),
        Some(7)
    );
    assert_eq!(
        Region::In865.dr_of(DataRate::Fsk { bitrate: 50_000 }, Link::Uplink),
        Some(7)
    );
    assert_eq!(
        Region::Kr920.dr_of(DataRate::Fsk { bitrate: 50_000 }, Link::Uplink),
        None
    );
    assert_eq!(
        Region::As923_2.dr_of_datr("SF10BW125", Link::Downlink),
        Some(2)
    );
    // Every defined radio DR maps back to itself on its own link.
    for r in Region::ALL {
        for dr in 0..16 {
            let Ok(d) = r.dr_def(dr) else { continue };
            let DrModulation::Radio(m) = d.modulation else {
                continue;
            };
            if d.uplink {
                assert_eq!(r.dr_of(m, Link::Uplink), Some(dr), "{r} DR{dr}");
            }
            if d.downlink {
                assert_eq!(r.dr_of(m, Link::Downlink), Some(dr), "{r} DR{dr}");
            }
        }
    }
}

#[test]
fn channel_frequencies() {
    let freqs = |r: Region| -> Vec<u32> {
        (0..80)
            .filter_map(|i| ChannelPlan::new(r).channel(i).map(|c| c.frequency_hz))
            .collect()
    };
    // RP002-1.0.3 §2.4.2 Table 6; §2.10.2 (AS923 groups); §2.11.2; §2.12.2.
    assert_eq!(
        freqs(Region::Eu868),
        [868_100_000, 868_300_000, 868_500_000]
    );
    assert_eq!(freqs(Region::As923_1), [923_200_000, 923_400_000]);
    assert_eq!(freqs(Region::As923_2), [921_400_000, 921_600_000]);
    assert_eq!(freqs(Region::As923_3), [916_600_000, 916_800_000]);
    assert_eq!(freqs(Region::As923_4), [917_300_000, 917_500_000]);
    assert_eq!(
        freqs(Region::Kr920),
        [922_100_000, 922_300_000, 922_500_000]
    );
    assert_eq!(
        freqs(Region::In865),
        [865_062_500, 865_402_500, 865_985_000]
    );
    // US915 §2.5.2: 902.3 + 0.2·n MHz (n 0..63), 903.0 + 1.6·n MHz (64..71).
    let us = freqs(Region::Us915);
    assert_eq!(us.len(), 72);
    assert_eq!(&us[..3], [902_300_000, 902_500_000, 902_700_000]);
    assert_eq!(us[8], 903_900_000, "sub-band 2 starts at 903.9 MHz");
    assert_eq!(us[15], 905_300_000);
    assert_eq!(us[63], 914_900_000);
    assert_eq!(us[64], 903_000_000);
    assert_eq!(us[65], 904_600_000);
    assert_eq!(us[71], 914_200_000);
    for (n, f) in us.iter().enumerate() {
        let want = if n < 64 {
            902_300_000 + 200_000 * n as u32
        } else {
            903_000_000 + 1_600_000 * (n as u32 - 64)
        };
        assert_eq!(*f, want, "US915 channel {n}");
    }
    // AU915 §2.8.2: 915.2 + 0.2·n MHz, 915.9 + 1.6·n MHz.
    let au = freqs(Region::Au915);
    assert_eq!(au.len(), 72);
    for (n, f) in au.iter().enumerate() {
        let want = if n < 64 {
            915_200_000 + 200_000 * n as u32
        } else {
            915_900_000 + 1_600_000 * (n as u32 - 64)
        };
        assert_eq!(*f, want, "AU915 channel {n}");
    }
    assert_eq!(au[63], 927_800_000);
    assert_eq!(au[71], 927_100_000);
    // Data-rate ranges: US915 125 kHz DR0–3, 500 kHz DR4 (and LR-FHSS DR5–6); AU915 DR0–5,
    // and DR6 (and LR-FHSS DR7).
    let p = ChannelPlan::new(Region::Us915);
    assert_eq!(
        (p.channel(0).unwrap().min_dr, p.channel(0).unwrap().max_dr),
        (0, 3)
    );
    assert_eq!(
        (p.channel(64).unwrap().min_dr, p.channel(64).unwrap().max_dr),
        (4, 6)
    );
    let p = ChannelPlan::new(Region::Au915);
    assert_eq!(
        (p.channel(0).unwrap().min_dr, p.channel(0).unwrap().max_dr),
        (0, 5)
    );
    assert_eq!(
        (p.channel(71).unwrap().min_dr, p.channel(71).unwrap().max_dr),
        (6, 7)
    );
}

#[test]
fn rx1_frequency_for_every_uplink_channel() {
    for r in Region::ALL {
        let plan = ChannelPlan::new(r);
        for (i, c) in plan.enabled() {
            let want = if r.is_fixed_plan() {
                // §2.5.7 / §2.8.7: 923.3 + 0.6 × (channel mod 8) MHz.
                923_300_000 + 600_000 * u32::from(i % 8)
            } else {
                c.frequency_hz
            };
            assert_eq!(r.rx1_frequency(c.frequency_hz), Ok(want), "{r} channel {i}");
        }
    }
    assert_eq!(Region::Us915.rx1_frequency(904_600_000), Ok(923_900_000)); // ch 65 → 1
    assert_eq!(Region::Us915.rx1_frequency(903_900_000), Ok(923_300_000)); // ch 8 → 0
    assert_eq!(Region::Us915.rx1_frequency(905_300_000), Ok(927_500_000)); // ch 15 → 7
    assert_eq!(
        Region::Us915.rx1_frequency(902_400_000),
        Err(RegionError::Frequency(902_400_000))
    );
    // Downlink frequencies a device accepts (RXParamSetupReq).
    assert!(Region::Us915.is_downlink_frequency(927_500_000));
    assert!(!Region::Us915.is_downlink_frequency(927_600_000));
    assert!(!Region::Au915.is_downlink_frequency(915_200_000));
    assert!(Region::Eu868.is_downlink_frequency(869_525_000));
    assert!(!Region::Eu868.is_downlink_frequency(923_300_000));
    assert!(Region::As923_3.is_downlink_frequency(916_600_000));
}

#[test]
fn rx1_data_rate_for_every_uplink_dr_and_offset() {
    // (region, uplink DR, RX1 DR per RX1DROffset 0..), from RP002-1.0.3's RX1 tables.
    let subtract = |dr: u8| -> Vec<u8> { (0..6).map(|o| dr.saturating_sub(o)).collect() };
    let mut expect: Vec<(Region, u8, Vec<u8>)> = Vec::new();
    for dr in 0..=7 {
        expect.push((Region::Eu868, dr, subtract(dr)));
    }
    expect.push((Region::Eu868, 8, vec![1, 0, 0, 0, 0, 0]));
    expect.push((Region::Eu868, 9, vec![2, 1, 0, 0, 0, 0]));
    expect.push((Region::Eu868, 10, vec![1, 0, 0, 0, 0, 0]));
    expect.push((Region::Eu868, 11, vec![2, 1, 0, 0, 0, 0]));
    for dr in 0..=5 {
        expect.push((Region::Kr920, dr, subtract(dr)));
    }
    // §2.5.7: US902-928 downlink RX1 data rate mapping.
    for (dr, row) in [
        (0, [10, 9, 8, 8]),
        (1, [11, 10, 9, 8]),
        (2, [12, 11, 10, 9]),
        (3, [13, 12, 11, 10]),
        (4, [13, 13, 12, 11]),
        (5, [10, 9, 8, 8]),
        (6, [11, 10, 9, 8]),
    ] {
        expect.push((Region::Us915, dr, row.to_vec()));
    }
    // §2.8.7: AU915-928.
    for (dr, row) in [
        (0, [8, 8, 8, 8, 8, 8]),
        (1, [9, 8, 8, 8, 8, 8]),
        (2, [10, 9, 8, 8, 8, 8]),
        (3, [11, 10, 9, 8, 8, 8]),
        (4, [12, 11, 10, 9, 8, 8]),
        (5, [13, 12, 11, 10, 9, 8]),
        (6, [13, 13, 12, 11, 10, 9]),
        (7, [9, 8, 8, 8, 8, 8]),
    ] {
        expect.push((Region::Au915, dr, row.to_vec()));
    }
    // §2.12.7: IN865-867, offsets 6 and 7 raise the rate.
    for (dr, row) in [
        (0, [0, 0, 0, 0, 0, 0, 1, 2]),
        (1, [1, 0, 0, 0, 0, 0, 2, 3]),
        (2, [2, 1, 0, 0, 0, 0, 3, 4]),
        (3, [3, 2, 1, 0, 0, 0, 4, 5]),
        (4, [4, 3, 2, 1, 0, 0, 5, 5]),
        (5, [5, 4, 3, 2, 1, 0, 5, 5]),
        (7, [7, 6, 5, 4, 3, 2, 7, 7]),
    ] {
        expect.push((Region::In865, dr, row.to_vec()));
    }
    for (r, dr, row) in &expect {
        for (o, want) in row.iter().enumerate() {
            assert_eq!(
                r.rx1_dr(*dr, o as u8, false),
                Ok(*want),
                "{r} DR{dr} offset {o}"
            );
        }
        let past = row.len() as u8;
        assert_eq!(
            r.rx1_dr(*dr, past, false),
            Err(RegionError::Rx1DrOffset(past))
        );
    }
    assert_eq!(
        Region::Us915.rx1_dr(8, 0, false),
        Err(RegionError::DataRate(8))
    );
    assert_eq!(
        Region::Us915.rx1_dr(7, 0, false),
        Err(RegionError::DataRate(7))
    );
}

#[test]
fn as923_rx1_data_rate_with_and_without_downlink_dwell_time() {
    // §2.10.7: min(5, max(MinDR, DR − Effective_RX1DROffset)), offsets 0..7 = 0..5, −1, −2;
    // MinDR = 2 under DownlinkDwellTime = 1, else 0.
    let no_dwell: [[u8; 8]; 8] = [
        [0, 0, 0, 0, 0, 0, 1, 2],
        [1, 0, 0, 0, 0, 0, 2, 3],
        [2, 1, 0, 0, 0, 0, 3, 4],
        [3, 2, 1, 0, 0, 0, 4, 5],
        [4, 3, 2, 1, 0, 0, 5, 5],
        [5, 4, 3, 2, 1, 0, 5, 5],
        [5, 5, 4, 3, 2, 1, 5, 5],
        [5, 5, 5, 4, 3, 2, 5, 5],
    ];
    let dwell: [[u8; 8]; 8] = [
        [2, 2, 2, 2, 2, 2, 2, 2],
        [2, 2, 2, 2, 2, 2, 2, 3],
        [2, 2, 2, 2, 2, 2, 3, 4],
        [3, 2, 2, 2, 2, 2, 4, 5],
        [4, 3, 2, 2, 2, 2, 5, 5],
        [5, 4, 3, 2, 2, 2, 5, 5],
        [5, 5, 4, 3, 2, 2, 5, 5],
        [5, 5, 5, 4, 3, 2, 5, 5],
    ];
    for r in [
        Region::As923_1,
        Region::As923_2,
        Region::As923_3,
        Region::As923_4,
    ] {
        for dr in 0..8u8 {
            for o in 0..8u8 {
                let (d, o_, w) = (usize::from(dr), usize::from(o), true);
                assert_eq!(
                    r.rx1_dr(dr, o, false),
                    Ok(no_dwell[d][o_]),
                    "{r} DR{dr} o{o}"
                );
                assert_eq!(
                    r.rx1_dr(dr, o, w),
                    Ok(dwell[d][o_]),
                    "{r} DR{dr} o{o} dwell"
                );
            }
        }
        assert_eq!(r.rx1_dr(0, 8, false), Err(RegionError::Rx1DrOffset(8)));
        assert_eq!(r.rx1_dr(8, 0, false), Err(RegionError::DataRate(8)));
    }
}

#[test]
fn payload_limits() {
    // M per DR (0: not allowed), not repeater compatible: RP002-1.0.3 Table 13 (EU868),
    // §2.5.6, §2.8.6, §2.10.6, §2.11.6, §2.12.6; with dwell time where TxParamSetupReq exists.
    let cases: [(Region, bool, &[u8]); 8] = [
        (
            Region::Eu868,
            false,
            &[59, 59, 59, 123, 250, 250, 250, 250, 58, 123, 58, 123],
        ),
        (
            Region::Us915,
            false,
            &[
                19, 61, 133, 250, 250, 58, 133, 0, 61, 137, 250, 250, 250, 250,
            ],
        ),
        (
            Region::Au915,
            false,
            &[
                59, 59, 59, 123, 250, 250, 250, 58, 61, 137, 250, 250, 250, 250,
            ],
        ),
        (
            Region::Au915,
            true,
            &[0, 0, 19, 61, 133, 250, 250, 58, 61, 137, 250, 250, 250, 250],
        ),
        (
            Region::As923_1,
            false,
            &[59, 59, 123, 123, 250, 250, 250, 250],
        ),
        (Region::As923_3, true, &[0, 0, 19, 61, 133, 250, 250, 250]),
        (Region::Kr920, false, &[59, 59, 59, 123, 250, 250]),
        (Region::In865, false, &[59, 59, 59, 123, 250, 250, 0, 250]),
    ];
    for (r, dwell, ms) in cases {
        for dr in 0..16u8 {
            let got = r.max_payload(dr, dwell);
            match ms.get(usize::from(dr)) {
                Some(&m) if m > 0 => {
                    let p = got.unwrap_or_else(|e| panic!("{r} DR{dr}: {e}"));
                    assert_eq!((p.mac_payload, p.frm_payload), (m, m - 8), "{r} DR{dr}");
                    assert_eq!(p.repeater_compatible().mac_payload, m.min(230));
                }
                _ => assert_eq!(
                    got,
                    Err(RegionError::DataRate(dr)),
                    "{r} DR{dr} dwell {dwell}"
                ),
            }
        }
    }
    // Regions without TxParamSetupReq ignore the dwell flag (US915's table has it built in).
    assert_eq!(
        Region::Us915.max_payload(0, true),
        Region::Us915.max_payload(0, false)
    );
    assert_eq!(
        Region::Eu868.max_payload(5, true),
        Region::Eu868.max_payload(5, false)
    );
    // RP002-1.0.3 Table 12 (repeater compatible) for EU868.
    let m = Region::Eu868
        .max_payload(5, false)
        .unwrap()
        .repeater_compatible();
    assert_eq!((m.mac_payload, m.frm_payload), (230, 222));
}

#[test]
fn defaults_power_dwell_duty_cycle_and_cf_list_type() {
    let rx2 = [
        (Region::Eu868, (869_525_000, 0)),
        (Region::Us915, (923_300_000, 8)),
        (Region::Au915, (923_300_000, 8)),
        (Region::As923_1, (923_200_000, 2)),
        (Region::As923_2, (921_400_000, 2)),
        (Region::As923_3, (916_600_000, 2)),
        (Region::As923_4, (917_300_000, 2)),
        (Region::Kr920, (921_900_000, 0)),
        (Region::In865, (866_550_000, 2)),
    ];
    for (r, want) in rx2 {
        assert_eq!(r.rx2(), want, "{r}");
        let d = r.delays();
        assert_eq!(d.receive_delay1.as_secs(), 1);
        assert_eq!(d.receive_delay2.as_secs(), 2);
        assert_eq!(d.join_accept_delay1.as_secs(), 5);
        assert_eq!(d.join_accept_delay2.as_secs(), 6);
        let fixed = matches!(r, Region::Us915 | Region::Au915);
        assert_eq!(r.cf_list_type() == CfListType::ChannelMask, fixed, "{r}");
        assert_eq!(r.name().parse::<Region>(), Ok(r));
        assert_eq!(r.to_string(), r.name());
    }
    assert_eq!("as923".parse::<Region>(), Ok(Region::As923_1));
    assert_eq!("us902-928".parse::<Region>(), Ok(Region::Us915));
    assert_eq!("XX123".parse::<Region>(), Err(RegionError::UnknownRegion));
    // TXPower: MaxEIRP − 2·TXPower.
    assert_eq!(Region::Eu868.tx_power_eirp_dbm(0), Some(16));
    assert_eq!(Region::Eu868.tx_power_eirp_dbm(7), Some(2));
    assert_eq!(Region::Eu868.tx_power_eirp_dbm(8), None);
    assert_eq!(Region::Us915.tx_power_eirp_dbm(14), Some(2));
    assert_eq!(Region::Us915.tx_power_eirp_dbm(15), None);
    assert_eq!(Region::Kr920.tx_power_eirp_dbm(0), Some(14));
    // TxParamSetupReq MaxEIRP encoding: 0 → 8 dBm … 5 → 16 dBm … 15 → 36 dBm.
    use protocol::region::tables::TX_PARAM_MAX_EIRP_DBM as EIRP;
    assert_eq!((EIRP[0], EIRP[5], EIRP[13], EIRP[15]), (8, 16, 30, 36));
    assert!(EIRP.windows(2).all(|w| w[0] < w[1]));
    // Downlink powe: EU868 29 dBm in g3 (RX2 869.525 MHz), 16 elsewhere.
    assert_eq!(Region::Eu868.downlink_eirp_dbm(869_525_000), 29);
    assert_eq!(Region::Eu868.downlink_eirp_dbm(868_100_000), 16);
    assert_eq!(Region::Us915.downlink_eirp_dbm(923_300_000), 21);
    // Dwell time: US915 always; AU915 and AS923 per TxParamSetupReq; EU868 never.
    let on = DwellTime {
        uplink: true,
        downlink: true,
    };
    let off = DwellTime::default();
    assert!(Region::Us915.uplink_dwell_limit(off).is_some());
    assert!(Region::Au915.uplink_dwell_limit(on).is_some());
    assert!(Region::Au915.uplink_dwell_limit(off).is_none());
    assert!(Region::As923_1.uplink_dwell_limit(on).is_some());
    assert!(Region::Eu868.uplink_dwell_limit(on).is_none());
    assert!(
        Region::Au915.boot_dwell_time().uplink,
        "RP002: AU915 boots with UplinkDwellTime 1"
    );
    assert!(Region::Au915.has_tx_param_setup() && Region::As923_4.has_tx_param_setup());
    assert!(!Region::Us915.has_tx_param_setup() && !Region::Eu868.has_tx_param_setup());
    // Duty cycle: EU868 sub-bands.
    assert_eq!(Region::Eu868.duty_cycle(868_100_000), Some(0.01));
    assert_eq!(Region::Eu868.duty_cycle(867_100_000), Some(0.01));
    assert_eq!(Region::Eu868.duty_cycle(868_900_000), Some(0.001));
    assert_eq!(Region::Eu868.duty_cycle(869_525_000), Some(0.1));
    assert_eq!(Region::Eu868.duty_cycle(869_300_000), None);
    assert_eq!(Region::Us915.duty_cycle(903_900_000), None);
}

#[test]
fn us915_ch_mask_cntl() {
    let mut p = ChannelPlan::new(Region::Us915);
    // ChMaskCntl 7: all 125 kHz off, ChMask for 64..71; then 0..3 per block of 16.
    p.apply_link_adr(&[(0x0002, 7), (0xFF00, 0)]).unwrap();
    let on: Vec<u8> = p.enabled().map(|(i, _)| i).collect();
    assert_eq!(on, [8, 9, 10, 11, 12, 13, 14, 15, 65]);
    assert_eq!(p, ChannelPlan::with_sub_bands(Region::Us915, &[2]).unwrap());
    // ChMaskCntl 6: all 125 kHz on.
    p.apply_link_adr(&[(0x0000, 6)]).unwrap();
    assert_eq!(p.enabled().count(), 64);
    // ChMaskCntl 5: banks of eight 125 kHz channels and their 500 kHz channel.
    p.apply_link_adr(&[(0b1000_0001, 5)]).unwrap();
    let on: Vec<u8> = p.enabled().map(|(i, _)| i).collect();
    assert_eq!(
        on,
        [0, 1, 2, 3, 4, 5, 6, 7, 56, 57, 58, 59, 60, 61, 62, 63, 64, 71]
    );
    // ChMaskCntl 4: channels 64..71 only, the 125 kHz ones unchanged.
    p.apply_link_adr(&[(0x0000, 4)]).unwrap();
    assert_eq!(p.enabled().count(), 16);
    // Refused: RFU bits in ChMaskCntl 4–7, and a block that leaves nothing; nothing changes.
    let before = p;
    assert_eq!(
        p.apply_link_adr(&[(0x0100, 7)]),
        Err(RegionError::ChannelMask)
    );
    assert_eq!(p.apply_link_adr(&[(0, 7)]), Err(RegionError::ChannelMask));
    assert_eq!(p, before);
    // The network side: the block for sub-band 2, and it applies from any state.
    let sb2 = ChannelPlan::with_sub_bands(Region::Us915, &[2]).unwrap();
    assert_eq!(sb2.link_adr_masks(), [(0x0002, 7), (0xFF00, 0)]);
    assert_eq!(
        ChannelPlan::with_sub_bands(Region::Eu868, &[1]),
        Err(RegionError::SubBand(1))
    );
    assert_eq!(
        ChannelPlan::with_sub_bands(Region::Au915, &[9]),
        Err(RegionError::SubBand(9))
    );
}

#[test]
fn eu868_ch_mask_cntl_and_new_channels() {
    let mut p = ChannelPlan::new(Region::Eu868);
    p.set_channel(3, 867_100_000, 0, 5).unwrap();
    p.set_channel(4, 867_300_000, 0, 5).unwrap();
    assert_eq!(p.enabled().count(), 5);
    // ChMaskCntl 0 masks channels 0..15.
    p.apply_link_adr(&[(0b1_1000, 0)]).unwrap();
    let on: Vec<u8> = p.enabled().map(|(i, _)| i).collect();
    assert_eq!(on, [3, 4]);
    // Enabling an undefined channel is refused.
    assert_eq!(
        p.apply_link_adr(&[(0b10_0000, 0)]),
        Err(RegionError::ChannelMask)
    );
    // ChMaskCntl 6: every defined channel on, whatever ChMask says.
    p.apply_link_adr(&[(0, 6)]).unwrap();
    assert_eq!(p.enabled().count(), 5);
    // 1..5 and 7 are RFU.
    for cntl in [1, 2, 3, 4, 5, 7] {
        assert_eq!(
            p.apply_link_adr(&[(1, cntl)]),
            Err(RegionError::ChannelMask)
        );
    }
    // Default channels cannot be changed; frequencies outside the band are refused.
    assert_eq!(
        p.set_channel(2, 867_500_000, 0, 5),
        Err(RegionError::ChannelIndex(2))
    );
    assert_eq!(
        p.set_channel(5, 902_300_000, 0, 5),
        Err(RegionError::Frequency(902_300_000))
    );
    // TxCh: the index of a frequency.
    assert_eq!(p.index_of(867_300_000), Some(4));
    assert_eq!(p.index_of(868_500_000), Some(2));
    assert_eq!(p.index_of(869_525_000), None);
    // NewChannelReq with frequency 0 removes the channel.
    p.set_channel(4, 0, 0, 0).unwrap();
    assert_eq!(p.index_of(867_300_000), None);
}

#[test]
fn cf_lists() {
    // EU868: channels 3..7 from a type 0 CFList (the usual 867.1–867.9 MHz).
    let cf = CfList::from_frequencies_hz([
        867_100_000,
        867_300_000,
        867_500_000,
        867_700_000,
        867_900_000,
    ])
    .unwrap();
    let mut p = ChannelPlan::new(Region::Eu868);
    p.apply_cf_list(&cf).unwrap();
    let freqs: Vec<u32> = p.enabled().map(|(_, c)| c.frequency_hz).collect();
    assert_eq!(
        freqs[3..],
        [
            867_100_000,
            867_300_000,
            867_500_000,
            867_700_000,
            867_900_000
        ]
    );
    assert_eq!(p.cf_list(), Some(cf));
    assert_eq!(ChannelPlan::new(Region::Eu868).cf_list(), None);
    // AS923: channels 2..6.
    let mut p = ChannelPlan::new(Region::As923_1);
    p.apply_cf_list(&CfList::from_frequencies_hz([922_000_000, 922_200_000, 0, 0, 0]).unwrap())
        .unwrap();
    assert_eq!(p.index_of(922_200_000), Some(3));
    // US915 sub-band 2: ChMask0 0xFF00, ChMask4 0x0002; bytes as on air.
    let sb2 = ChannelPlan::with_sub_bands(Region::Us915, &[2]).unwrap();
    let cf = sb2.cf_list().unwrap();
    assert_eq!(
        cf.0,
        [0x00, 0xFF, 0, 0, 0, 0, 0, 0, 0x02, 0, 0, 0, 0, 0, 0, 1]
    );
    let mut p = ChannelPlan::new(Region::Us915);
    p.apply_cf_list(&cf).unwrap();
    assert_eq!(p, sb2);
    // Wrong type for the region, bits past channel 71, an empty mask: refused, nothing changes.
    let before = p;
    let eu_cf = ChannelPlan::new(Region::Eu868);
    assert!(eu_cf.cf_list().is_none());
    let type0 = CfList::from_frequencies_hz([867_100_000, 0, 0, 0, 0]).unwrap();
    assert_eq!(p.apply_cf_list(&type0), Err(RegionError::CfListType(0)));
    assert_eq!(
        p.apply_cf_list(&CfList::from_channel_masks([0, 0, 0, 0, 0x0100])),
        Err(RegionError::ChannelMask)
    );
    assert_eq!(
        p.apply_cf_list(&CfList::from_channel_masks([0; 5])),
        Err(RegionError::ChannelMask)
    );
    assert_eq!(p, before);
    let mut eu = ChannelPlan::new(Region::Eu868);
    assert_eq!(eu.apply_cf_list(&cf), Err(RegionError::CfListType(1)));
    // An out-of-band frequency in a type 0 CFList is refused as a whole.
    let bad = CfList::from_frequencies_hz([867_100_000, 915_000_000, 0, 0, 0]).unwrap();
    assert_eq!(
        eu.apply_cf_list(&bad),
        Err(RegionError::Frequency(915_000_000))
    );
    assert_eq!(eu, ChannelPlan::new(Region::Eu868));
}

/// ChirpStack's `lrwn` region for ours, with dwell time as asked.
fn chirpstack(r: Region, dwell: bool) -> Box<dyn cs::Region + Sync + Send> {
    let name = match r {
        Region::Eu868 => cs::CommonName::EU868,
        Region::Us915 => cs::CommonName::US915,
        Region::Au915 => cs::CommonName::AU915,
        Region::As923_1 => cs::CommonName::AS923,
        Region::As923_2 => cs::CommonName::AS923_2,
        Region::As923_3 => cs::CommonName::AS923_3,
        Region::As923_4 => cs::CommonName::AS923_4,
        Region::Kr920 => cs::CommonName::KR920,
        Region::In865 => cs::CommonName::IN865,
    };
    cs::get(name, false, dwell)
}

#[test]
fn agrees_with_chirpstack_lrwn() {
    for r in Region::ALL {
        for dwell in [false, true] {
            let c = chirpstack(r, dwell);
            // Data rates.
            for dr in 0..16u8 {
                let theirs = c.get_data_rate(dr).ok();
                let ours = r.dr_def(dr).ok().map(|d| d.modulation);
                let mapped = theirs.map(|m| match m {
                    cs::DataRateModulation::Lora(l) => {
                        DrModulation::Radio(lora(l.spreading_factor, (l.bandwidth / 1000) as u16))
                    }
                    cs::DataRateModulation::Fsk(f) => {
                        DrModulation::Radio(DataRate::Fsk { bitrate: f.bitrate })
                    }
                    cs::DataRateModulation::LrFhss(l) => DrModulation::LrFhss {
                        occupied_channel_width_khz: (l.occupied_channel_width / 1000) as u16,
                        coding_rate: if l.coding_rate == "2/6" {
                            LrFhssCodingRate::Cr1_3
                        } else {
                            LrFhssCodingRate::Cr2_3
                        },
                    },
                });
                assert_eq!(ours, mapped, "{r} DR{dr}");
                // Maximum MACPayload of each defined DR (lrwn also lists one for IN865's RFU
                // DR6, and its N has typos in places; M is compared).
                if mapped.is_none() {
                    continue;
                }
                let theirs = c
                    .get_max_payload_size(
                        cs::MacVersion::LORAWAN_1_0_4,
                        cs::Revision::RP002_1_0_3,
                        dr,
                    )
                    .ok()
                    .map(|p| p.m as u8)
                    .filter(|&m| m > 0);
                let ours = r.max_payload(dr, dwell).ok().map(|p| p.mac_payload);
                assert_eq!(ours, theirs, "{r} DR{dr} dwell {dwell} payload");
            }
            // RX1 data rates, every uplink DR and offset we define (lrwn's KR920 row has
            // offsets 6 and 7, which RP002 does not define for KR920).
            for dr in 0..16u8 {
                for o in 0..=7u8 {
                    let Ok(ours) = r.rx1_dr(dr, o, dwell) else {
                        continue;
                    };
                    let theirs = c.get_rx1_data_rate_index(dr, usize::from(o)).ok();
                    assert_eq!(
                        Some(ours),
                        theirs,
                        "{r} RX1 DR{dr} offset {o} dwell {dwell}"
                    );
                }
            }
        }
        let c = chirpstack(r, false);
        // Channels, RX1 frequency.
        let plan = ChannelPlan::new(r);
        for (i, ch) in plan.enabled() {
            let theirs = c.get_uplink_channel(usize::from(i)).unwrap();
            assert_eq!(
                (ch.frequency_hz, ch.min_dr, ch.max_dr),
                (theirs.frequency, theirs.min_dr, theirs.max_dr),
                "{r} channel {i}"
            );
            assert_eq!(
                r.rx1_frequency(ch.frequency_hz).ok(),
                c.get_rx1_frequency_for_uplink_frequency(ch.frequency_hz)
                    .ok(),
                "{r} channel {i}"
            );
        }
        assert_eq!(
            plan.enabled().count(),
            c.get_uplink_channel_indices().len(),
            "{r}"
        );
        // RX2, delays, downlink power, TxParamSetupReq, TX power steps.
        let d = c.get_defaults();
        assert_eq!(r.rx2(), (d.rx2_frequency, d.rx2_dr), "{r}");
        assert_eq!(r.delays().join_accept_delay1, d.join_accept_delay1);
        assert_eq!(r.delays().receive_delay2, d.rx2_delay);
        let rx1 = r
            .rx1_frequency(plan.enabled().next().unwrap().1.frequency_hz)
            .unwrap();
        for f in [rx1, r.rx2().0] {
            assert_eq!(
                isize::from(r.downlink_eirp_dbm(f)),
                c.get_downlink_tx_power_eirp(f),
                "{r} {f}"
            );
        }
        assert_eq!(
            r.has_tx_param_setup(),
            c.implements_tx_param_setup(cs::MacVersion::LORAWAN_1_0_4),
            "{r}"
        );
        for p in 0..=15u8 {
            if let (Some(ours), Ok(off)) = (
                r.tx_power_eirp_dbm(p),
                c.get_tx_power_offset(usize::from(p)),
            ) {
                assert_eq!(
                    isize::from(ours - r.tx_power_eirp_dbm(0).unwrap()),
                    off,
                    "{r} TXPower {p}"
                );
            }
        }
    }
}

mod props {
    use super::*;
    use proptest::prelude::*;

    fn region() -> impl Strategy<Value = Region> {
        proptest::sample::select(Region::ALL.to_vec())
    }

    proptest! {
        #[test]
        fn channel_index_and_frequency_round_trip(r in region(), i in 0u8..80) {
            let p = ChannelPlan::new(r);
            match p.channel(i) {
                Some(c) => prop_assert_eq!(p.index_of(c.frequency_hz), Some(i)),
                None => prop_assert!(i >= 72 || !r.is_fixed_plan()),
            }
        }

        #[test]
        fn fixed_cf_list_round_trip(fixed in proptest::bool::ANY, mask in 1u128..(1u128 << 72)) {
            let r = if fixed { Region::Us915 } else { Region::Au915 };
            let masks = [0, 1, 2, 3, 4].map(|k| (mask >> (16 * k)) as u16);
            let cf = CfList::from_channel_masks(masks);
            prop_assert_eq!(cf.channel_masks(), Some(masks));
            let mut p = ChannelPlan::new(r);
            p.apply_cf_list(&cf).unwrap();
            prop_assert_eq!(p.enabled_mask(), mask);
            prop_assert_eq!(p.cf_list(), Some(cf));
        }

        #[test]
        fn dynamic_cf_list_round_trip(
            r in proptest::sample::select(vec![Region::Eu868, Region::As923_2, Region::Kr920, Region::In865]),
            steps in proptest::collection::vec(proptest::option::of(0u32..20_000), 5),
        ) {
            let (lo, hi) = match r.params().layout {
                protocol::region::tables::ChannelLayout::Dynamic { band_hz, .. } => band_hz,
                _ => unreachable!(),
            };
            let mut freqs = [0u32; 5];
            for (f, s) in freqs.iter_mut().zip(&steps) {
                *f = s.map_or(0, |s| (lo + s * 100).min(hi - 100));
            }
            let mut a = ChannelPlan::new(r);
            let cf = CfList::from_frequencies_hz(freqs).unwrap();
            a.apply_cf_list(&cf).unwrap();
            if freqs.iter().any(|&f| f != 0) {
                let built = a.cf_list().unwrap();
                prop_assert_eq!(built.frequencies_hz(), Some(freqs));
                let mut b = ChannelPlan::new(r);
                b.apply_cf_list(&built).unwrap();
                prop_assert_eq!(a, b);
            } else {
                prop_assert_eq!(a.cf_list(), None);
            }
        }

        #[test]
        fn link_adr_masks_set_any_device_to_the_plan(
            target in 1u128..(1u128 << 72),
            start in 1u128..(1u128 << 72),
            au in proptest::bool::ANY,
        ) {
            let r = if au { Region::Au915 } else { Region::Us915 };
            let with = |m: u128| {
                let mut p = ChannelPlan::new(r);
                p.apply_cf_list(&CfList::from_channel_masks([0, 1, 2, 3, 4].map(|k| (m >> (16 * k)) as u16))).unwrap();
                p
            };
            let (t, mut device) = (with(target), with(start));
            device.apply_link_adr(&t.link_adr_masks()).unwrap();
            prop_assert_eq!(device, t);
        }

        #[test]
        fn link_adr_never_panics(
            r in region(),
            masks in proptest::collection::vec((any::<u16>(), 0u8..8), 0..4),
        ) {
            let mut p = ChannelPlan::new(r);
            let before = p;
            if p.apply_link_adr(&masks).is_err() {
                prop_assert_eq!(p, before);
            } else {
                prop_assert!(p.enabled().count() > 0);
            }
        }

        #[test]
        fn cf_list_parse_never_panics(r in region(), bytes in any::<[u8; 16]>()) {
            let mut p = ChannelPlan::new(r);
            let before = p;
            if p.apply_cf_list(&CfList(bytes)).is_err() {
                prop_assert_eq!(p, before);
            }
        }
    }
}
