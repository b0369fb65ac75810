//! Building the `txpk` of a Class-A downlink: frequency, data rate, `tmst`, power, RF chain and
//! polarity for the chosen window (protocol-notes A.9, B), all through the network's region
//! (`protocol::region::Region`, RP002).
//!
//! - RX1: `Region::rx1_frequency` of the uplink's frequency (the same frequency in dynamic plans;
//!   the 500 kHz channel `923.3 + 0.6 × (channel mod 8)` MHz in US915/AU915) at
//!   `Region::rx1_dr(uplink DR, RX1DROffset, downlink dwell)`. A Join-accept uses the device's
//!   defaults (RX1DROffset 0, the region's RX2), since the DLSettings it carries apply only after it.
//! - RX2: the session's RX2 frequency and data rate (the region's defaults for a Join-accept).
//! - `datr` from the region's data-rate table (BW500 where the region has it), `powe` as
//!   configured or the region's downlink EIRP, always `ipol` true for LoRa, `codr` 4/5.

use protocol::gwmp::{CodingRate, DataRate, GwmpError, Packet, PullResp, Token, TxPk, TxTiming};
use protocol::region::{lora_time_on_air, LoraFrame, Region};
use std::time::Duration;

use crate::core::reception::Reception;
use crate::core::timing::{Scheduled, Window};
use crate::ops::config::JoinConfig;
use crate::store::stored::RxParams;

/// Radio settings of downlinks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DownlinkRadio {
    /// The network's region.
    pub region: Region,
    /// RF chain to transmit on (`rfch`; 0 on common gateways, the chain with TX enabled).
    pub rf_chain: u8,
    /// RX1 power, dBm EIRP (`None`: the region's downlink EIRP on the frequency).
    pub rx1_power_dbm: Option<i8>,
    /// RX2 power, dBm EIRP (`None`: the region's downlink EIRP on the frequency).
    pub rx2_power_dbm: Option<i8>,
}

impl DownlinkRadio {
    /// The settings of `[join]` in `region` (they apply to every downlink, Join-accept or data).
    /// In EU868 unset powers keep this server's defaults, 14 dBm (g1) and 27 dBm (g3), 2 dB under
    /// the sub-bands' limits; elsewhere they are the region's downlink EIRP.
    pub fn of(j: &JoinConfig, region: Region) -> Self {
        let eu868 = |p: Option<i8>, default| match region {
            Region::Eu868 => p.or(Some(default)),
            _ => p,
        };
        Self {
            region,
            rf_chain: j.tx_rf_chain,
            rx1_power_dbm: eu868(j.rx1_tx_power_dbm, 14),
            rx2_power_dbm: eu868(j.rx2_tx_power_dbm, 27),
        }
    }
}

/// The PULL_RESP datagram carrying `txpk` (`token`: random, drawn by the caller).
pub fn pull_resp(token: [u8; 2], txpk: TxPk) -> Result<Vec<u8>, GwmpError> {
    Packet::PullResp(PullResp {
        token: Token(token),
        txpk,
    })
    .to_bytes()
}

/// Why no `txpk` could be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DownlinkError {
    /// The data rate has no downlink modulation in the region.
    #[error("data rate DR{0} has no downlink modulation in the region")]
    DataRate(u8),
    /// The uplink DR and RX1DROffset give no RX1 data rate.
    #[error("no RX1 data rate for uplink DR{0} with RX1DROffset {1}")]
    Rx1Offset(u8, u8),
    /// The uplink frequency has no RX1 channel in the region.
    #[error("no RX1 channel for an uplink on {0} Hz")]
    Rx1Frequency(u32),
}

/// The frequency and data rate of `window` for a downlink answering `uplink` in `region`, with
/// the session's receive parameters `rx`.
pub fn window_radio(
    region: Region,
    uplink: &Reception,
    window: Window,
    rx: &RxParams,
) -> Result<(u32, u8), DownlinkError> {
    match window {
        Window::Rx1 => {
            let offset = rx.rx1_dr_offset;
            let dwell = region.boot_dwell_time().downlink;
            Ok((
                region
                    .rx1_frequency(uplink.frequency_hz)
                    .map_err(|_| DownlinkError::Rx1Frequency(uplink.frequency_hz))?,
                region
                    .rx1_dr(uplink.data_rate, offset, dwell)
                    .map_err(|_| DownlinkError::Rx1Offset(uplink.data_rate, offset))?,
            ))
        }
        Window::Rx2 => Ok((rx.rx2_frequency_hz, rx.rx2_data_rate)),
    }
}

/// Time on air of a `len`-byte PHYPayload at data rate `dr` of `region`: LoRa by the Semtech
/// formula (`protocol::region::lora_time_on_air`; uplinks with the PHY CRC, downlinks without),
/// FSK as preamble (5 bytes), sync word (3), length (1), payload and CRC (2) at the bit rate.
/// `None` for a data rate the region does not define.
pub fn time_on_air(region: Region, dr: u8, len: usize, uplink: bool) -> Option<Duration> {
    match region.data_rate(dr).ok()? {
        DataRate::Lora {
            spreading_factor,
            bandwidth_khz,
        } => {
            let bw = u32::from(bandwidth_khz) * 1000;
            let f = if uplink {
                LoraFrame::uplink(spreading_factor, bw, len)
            } else {
                LoraFrame::downlink(spreading_factor, bw, len)
            };
            lora_time_on_air(&f)
        }
        DataRate::Fsk { bitrate } => {
            let bits = (len as u64 + 11) * 8;
            (bitrate > 0).then(|| Duration::from_nanos(bits * 1_000_000_000 / u64::from(bitrate)))
        }
    }
}

/// The frequency and time on air of a `len`-byte downlink answering `uplink` in `window`, with
/// the session's receive parameters `rx` (what the scheduler books).
pub fn window_airtime(
    region: Region,
    uplink: &Reception,
    window: Window,
    rx: &RxParams,
    len: usize,
) -> Option<(u32, Duration)> {
    let (freq, dr) = window_radio(region, uplink, window, rx).ok()?;
    Some((freq, time_on_air(region, dr, len, false)?))
}

/// The largest MACPayload (RP002's M) a downlink in `window` may carry in `region`.
pub fn max_mac_payload(
    region: Region,
    uplink: &Reception,
    window: Window,
    rx: &RxParams,
) -> Result<usize, DownlinkError> {
    let (_, dr) = window_radio(region, uplink, window, rx)?;
    region
        .max_payload(dr, region.boot_dwell_time().downlink)
        .map(|m| usize::from(m.mac_payload))
        .map_err(|_| DownlinkError::DataRate(dr))
}

/// The RX1 or RX2 parameters for a downlink answering `uplink`, scheduled as `at`, with the
/// session's receive parameters `rx`.
pub fn build_txpk(
    uplink: &Reception,
    at: &Scheduled,
    rx: &RxParams,
    radio: &DownlinkRadio,
    payload: Vec<u8>,
) -> Result<TxPk, DownlinkError> {
    let region = radio.region;
    let (freq_hz, dr) = window_radio(region, uplink, at.window, rx)?;
    let powe = match at.window {
        Window::Rx1 => radio.rx1_power_dbm,
        Window::Rx2 => radio.rx2_power_dbm,
    };
    let downlink = region.dr_def(dr).is_ok_and(|d| d.downlink);
    let datr: DataRate = region
        .data_rate(dr)
        .ok()
        .filter(|_| downlink)
        .ok_or(DownlinkError::DataRate(dr))?;
    let fsk = matches!(datr, DataRate::Fsk { .. });
    Ok(TxPk {
        timing: TxTiming::Tmst(at.tmst),
        freq_hz,
        rfch: radio.rf_chain,
        powe: Some(powe.unwrap_or_else(|| region.downlink_eirp_dbm(freq_hz))),
        datr,
        codr: (!fsk).then_some(CodingRate::Cr4_5),
        // FSK downlinks need a frequency deviation: 25 kHz for the 50 kbps FSK of RP002.
        fdev: fsk.then_some(25_000),
        ipol: Some(!fsk),
        prea: None,
        ncrc: None,
        data: payload,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::core::reception::tests::rx;

    const RADIO: DownlinkRadio = DownlinkRadio {
        region: Region::Eu868,
        rf_chain: 0,
        rx1_power_dbm: Some(14),
        rx2_power_dbm: Some(27),
    };

    fn at(window: Window) -> Scheduled {
        Scheduled {
            window,
            tmst: 6_000_000,
            opens_at: Instant::now(),
        }
    }

    /// The txpk of an answer to an uplink on `freq_hz` at `dr` in `region` (unset powers).
    fn answer(region: Region, freq_hz: u32, dr: u8, offset: u8, window: Window) -> TxPk {
        let mut up = rx(1, 5.0, -80, Instant::now());
        up.frequency_hz = freq_hz;
        up.data_rate = dr;
        let radio = DownlinkRadio::of(&JoinConfig::default(), region);
        let rx = RxParams {
            rx1_dr_offset: offset,
            ..RxParams::region_default(region)
        };
        build_txpk(&up, &at(window), &rx, &radio, vec![0x20; 17]).unwrap()
    }

    #[test]
    fn rx1_join_accept_on_uplink_frequency_and_dr() {
        let mut up = rx(1, 5.0, -80, Instant::now());
        up.frequency_hz = 868_300_000;
        up.data_rate = 3;
        let eu = RxParams::region_default(Region::Eu868);
        let tx = build_txpk(&up, &at(Window::Rx1), &eu, &RADIO, vec![0x20; 17]).unwrap();
        assert_eq!(tx.timing, TxTiming::Tmst(6_000_000));
        assert_eq!(tx.freq_hz, 868_300_000);
        assert_eq!(tx.datr, DataRate::lora(9, 125).unwrap());
        assert_eq!(tx.codr, Some(CodingRate::Cr4_5));
        assert_eq!(tx.ipol, Some(true));
        assert_eq!((tx.rfch, tx.powe), (0, Some(14)));
        assert_eq!(tx.data.len(), 17);
        // With an offset, the DR drops, never below DR0.
        let off = |rx1_dr_offset| RxParams {
            rx1_dr_offset,
            ..eu
        };
        let tx = build_txpk(&up, &at(Window::Rx1), &off(2), &RADIO, vec![]).unwrap();
        assert_eq!(tx.datr, DataRate::lora(11, 125).unwrap());
        let tx = build_txpk(&up, &at(Window::Rx1), &off(5), &RADIO, vec![]).unwrap();
        assert_eq!(tx.datr, DataRate::lora(12, 125).unwrap());
    }

    #[test]
    fn time_on_air_of_downlinks_and_uplinks() {
        let eu = Region::Eu868;
        // A 17-byte Join-accept: SF7 46.336 ms, SF12 1.155 s (no CRC); a 23-byte Join-request
        // at SF7 61.696 ms (CRC on, the Semtech calculator's value).
        assert_eq!(
            time_on_air(eu, 5, 17, false),
            Some(Duration::from_micros(46_336))
        );
        assert_eq!(
            time_on_air(eu, 0, 17, false),
            Some(Duration::from_micros(1_155_072))
        );
        assert_eq!(
            time_on_air(eu, 5, 23, true),
            Some(Duration::from_micros(61_696))
        );
        // FSK 50 kbps: (17 + 11) bytes of 8 bits.
        assert_eq!(
            time_on_air(eu, 7, 17, false),
            Some(Duration::from_micros(4_480))
        );
        assert_eq!(time_on_air(eu, 15, 17, false), None);
        let up = rx(1, 5.0, -80, Instant::now());
        let defaults = RxParams::region_default(eu);
        let (f, t) = window_airtime(eu, &up, Window::Rx2, &defaults, 17).unwrap();
        assert_eq!((f, t), (869_525_000, Duration::from_micros(1_155_072)));
    }

    #[test]
    fn rx2_join_accept_on_869_525_dr0() {
        let up = rx(1, 5.0, -80, Instant::now());
        let eu = RxParams::region_default(Region::Eu868);
        let tx = build_txpk(&up, &at(Window::Rx2), &eu, &RADIO, vec![0x20; 33]).unwrap();
        assert_eq!(tx.freq_hz, 869_525_000);
        assert_eq!(tx.datr, DataRate::lora(12, 125).unwrap());
        assert_eq!(tx.timing, TxTiming::Tmst(6_000_000));
        assert_eq!(tx.powe, Some(27));
        assert_eq!(tx.ipol, Some(true));
    }

    #[test]
    fn eu868_unset_powers_keep_14_and_27_dbm() {
        let tx = answer(Region::Eu868, 868_100_000, 5, 0, Window::Rx1);
        assert_eq!((tx.freq_hz, tx.powe), (868_100_000, Some(14)));
        assert_eq!(tx.datr, DataRate::lora(7, 125).unwrap());
        let tx = answer(Region::Eu868, 868_100_000, 5, 0, Window::Rx2);
        assert_eq!((tx.freq_hz, tx.powe), (869_525_000, Some(27)));
    }

    /// RP002-1.0.3 §2.5.7 (US915 RX1: downlink channel = uplink channel mod 8, 923.3 + 0.6·k MHz;
    /// Table 32 DR mapping) and §2.5.8 (RX2 923.3 MHz DR8), `powe` 21 dBm (the region's default).
    #[test]
    fn us915_rx1_on_the_500_khz_channel_and_rx2_at_dr8() {
        // (uplink frequency, uplink DR, offset) → (RX1 frequency, SF)
        let rows = [
            // Channel 8 (903.9 MHz) → channel 0 = 923.3 MHz; DR0 (SF10) → DR10 (SF10BW500).
            (903_900_000, 0, 0, 923_300_000, 10),
            // Channel 15 (905.3 MHz) → 7 = 927.5 MHz; DR3 (SF7) → DR13 (SF7BW500).
            (905_300_000, 3, 0, 927_500_000, 7),
            // Channel 9, DR2 offset 1 → DR11 (SF9BW500) on 923.9 MHz.
            (904_100_000, 2, 1, 923_900_000, 9),
            // 500 kHz channel 65 (904.6 MHz) → 65 mod 8 = 1 → 923.9 MHz; DR4 → DR13.
            (904_600_000, 4, 0, 923_900_000, 7),
            // DR0 offset 3 → DR8 (SF12BW500).
            (902_300_000, 0, 3, 923_300_000, 12),
        ];
        for (up, dr, off, down, sf) in rows {
            let tx = answer(Region::Us915, up, dr, off, Window::Rx1);
            assert_eq!(tx.freq_hz, down, "uplink {up} DR{dr}");
            assert_eq!(
                tx.datr,
                DataRate::lora(sf, 500).unwrap(),
                "uplink {up} DR{dr}"
            );
            assert_eq!(tx.powe, Some(21));
        }
        let tx = answer(Region::Us915, 903_900_000, 3, 0, Window::Rx2);
        assert_eq!(tx.freq_hz, 923_300_000);
        assert_eq!(tx.datr, DataRate::lora(12, 500).unwrap());
        assert_eq!(tx.powe, Some(21));
    }

    /// RP002-1.0.3 §2.7.7 (AU915: 923.3 + 0.6·(channel mod 8) MHz, DR0 (SF12) → DR8) and RX2
    /// 923.3 MHz DR8; `powe` 30 dBm.
    #[test]
    fn au915_rx1_and_rx2() {
        // Channel 8 of sub-band 2: 916.8 MHz.
        let tx = answer(Region::Au915, 916_800_000, 2, 0, Window::Rx1);
        assert_eq!(tx.freq_hz, 923_300_000);
        assert_eq!(tx.datr, DataRate::lora(10, 500).unwrap());
        assert_eq!(tx.powe, Some(30));
        let tx = answer(Region::Au915, 916_800_000, 2, 0, Window::Rx2);
        assert_eq!(
            (tx.freq_hz, tx.datr),
            (923_300_000, DataRate::lora(12, 500).unwrap())
        );
    }

    /// RP002-1.0.3 §2.8.7 (AS923: the uplink frequency; DownlinkDwellTime on at boot, so RX1
    /// never below DR2) and RX2 923.2 MHz DR2; `powe` 16 dBm.
    #[test]
    fn as923_rx1_dwell_floor_and_rx2() {
        let tx = answer(Region::As923_1, 923_400_000, 5, 0, Window::Rx1);
        assert_eq!(tx.freq_hz, 923_400_000);
        assert_eq!(tx.datr, DataRate::lora(7, 125).unwrap());
        let tx = answer(Region::As923_1, 923_200_000, 2, 1, Window::Rx1);
        assert_eq!(tx.datr, DataRate::lora(10, 125).unwrap());
        assert_eq!(tx.powe, Some(16));
        let tx = answer(Region::As923_1, 923_200_000, 2, 0, Window::Rx2);
        assert_eq!(
            (tx.freq_hz, tx.datr),
            (923_200_000, DataRate::lora(10, 125).unwrap())
        );
    }

    #[test]
    fn unmet_rx1_is_an_error_not_a_wrong_radio() {
        let mut up = rx(1, 5.0, -80, Instant::now());
        let radio = DownlinkRadio::of(&JoinConfig::default(), Region::Us915);
        let rx = RxParams::region_default(Region::Us915);
        // An EU868 frequency has no US915 RX1 channel.
        up.frequency_hz = 868_100_000;
        assert_eq!(
            build_txpk(&up, &at(Window::Rx1), &rx, &radio, vec![]),
            Err(DownlinkError::Rx1Frequency(868_100_000))
        );
        // An uplink-only DR as RX2 data rate has no downlink modulation.
        let bad = RxParams {
            rx2_data_rate: 0,
            ..rx
        };
        assert_eq!(
            build_txpk(&up, &at(Window::Rx2), &bad, &radio, vec![]),
            Err(DownlinkError::DataRate(0))
        );
    }
}
