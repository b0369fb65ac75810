//! Regional Parameters (RP002-1.0.3): [`Region`] makes the region a value. Its tables
//! ([`tables`]) hold, per channel plan, the data rates, maximum payloads, channels, RX1 and RX2
//! rules, TX power, dwell time and duty cycle; [`ChannelPlan`] is a device's set of channels
//! (CFList, LinkADRReq channel masks, NewChannelReq, TxCh). Regions: EU868, US915, AU915,
//! AS923-1…4, KR920, IN865.
//!
//! Also here, common to every region: Class-A receive delays and the downlink `tmst`, LoRa time
//! on air and demodulation SNR floors.

use std::time::Duration;

mod channels;
mod regional;
pub mod tables;

pub use channels::{Channel, ChannelPlan};
pub use regional::{CfListType, Link, MaxPayload, Region};
pub use tables::{DrDef, DrModulation, DwellTime, LrFhssCodingRate, ReceiveDelays};

/// Why a regional computation was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RegionError {
    /// The data rate index is not defined in the region (or not in the table asked).
    #[error("the region has no data rate DR{0}")]
    DataRate(u8),
    /// RX1DROffset above the region's highest (EU868: 5).
    #[error("RX1DROffset {0} is outside the region's range")]
    Rx1DrOffset(u8),
    /// An LR-FHSS data rate: named, but not modelled (no GWMP `datr`).
    #[error("DR{0} is LR-FHSS, which is not modelled")]
    NotModelled(u8),
    /// No channel of the region is on this frequency, or it is outside the region's band.
    #[error("no channel of the region on {0} Hz")]
    Frequency(u32),
    /// A channel index that cannot be set.
    #[error("channel index {0} cannot be set")]
    ChannelIndex(u8),
    /// A CFList of the wrong type for the region.
    #[error("CFList type {0} does not apply to the region")]
    CfListType(u8),
    /// A ChMask / ChMaskCntl the region refuses, or one that leaves no channel.
    #[error("invalid channel mask")]
    ChannelMask,
    /// A sub-band outside 1..=8, or sub-bands in a region without them.
    #[error("sub-band {0} does not exist in the region")]
    SubBand(u8),
    /// Not a region name.
    #[error("unknown region (expected EU868, US915, AU915, AS923-1..4, KR920 or IN865)")]
    UnknownRegion,
}

impl RegionError {
    /// A short, stable label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::DataRate(_) => "data_rate",
            Self::Rx1DrOffset(_) => "rx1_dr_offset",
            Self::NotModelled(_) => "not_modelled",
            Self::Frequency(_) => "frequency",
            Self::ChannelIndex(_) => "channel_index",
            Self::CfListType(_) => "cf_list_type",
            Self::ChannelMask => "channel_mask",
            Self::SubBand(_) => "sub_band",
            Self::UnknownRegion => "unknown_region",
        }
    }
}

/// RECEIVE_DELAY1: RX1 opens 1 s after the end of the uplink.
pub const RECEIVE_DELAY1: Duration = tables::DELAYS.receive_delay1;
/// RECEIVE_DELAY2: RX2 opens 2 s after the end of the uplink (RX1 + 1 s).
pub const RECEIVE_DELAY2: Duration = tables::DELAYS.receive_delay2;
/// JOIN_ACCEPT_DELAY1: 5 s.
pub const JOIN_ACCEPT_DELAY1: Duration = tables::DELAYS.join_accept_delay1;
/// JOIN_ACCEPT_DELAY2: 6 s.
pub const JOIN_ACCEPT_DELAY2: Duration = tables::DELAYS.join_accept_delay2;

/// RECEIVE_DELAY1 in microseconds, the unit of GWMP `tmst`.
pub const RECEIVE_DELAY1_US: u32 = RECEIVE_DELAY1.as_micros() as u32;
/// RECEIVE_DELAY2 in microseconds.
pub const RECEIVE_DELAY2_US: u32 = RECEIVE_DELAY2.as_micros() as u32;
/// JOIN_ACCEPT_DELAY1 in microseconds.
pub const JOIN_ACCEPT_DELAY1_US: u32 = JOIN_ACCEPT_DELAY1.as_micros() as u32;
/// JOIN_ACCEPT_DELAY2 in microseconds.
pub const JOIN_ACCEPT_DELAY2_US: u32 = JOIN_ACCEPT_DELAY2.as_micros() as u32;

/// The RX1 delay in µs for a Join-accept / RXTimingSetupReq `RxDelay` byte: its low 4 bits
/// are seconds, with 0 meaning 1 s. Bits 7..4 are RFU and ignored.
pub fn rx1_delay_us(rx_delay: u8) -> u32 {
    u32::from((rx_delay & 0x0f).max(1)) * 1_000_000
}

/// The `tmst` of a downlink `delay_us` after an uplink received at `uplink_tmst`, with the
/// wrap-around of the gateway's 32-bit microsecond counter.
pub const fn downlink_tmst(uplink_tmst: u32, delay_us: u32) -> u32 {
    uplink_tmst.wrapping_add(delay_us)
}

/// Which Class-A receive window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RxWindow {
    /// RX1: the uplink's frequency, RX1 data rate.
    Rx1,
    /// RX2: RX1 + 1 s, the region's RX2 frequency and data rate (EU868: 869.525 MHz DR0).
    Rx2,
}

/// The `tmst` of a data downlink in `window`, for an RX1 delay of `rx1_delay_us`
/// (see [`rx1_delay_us`]); RX2 is always RX1 + 1 s.
pub const fn data_downlink_tmst(uplink_tmst: u32, rx1_delay_us: u32, window: RxWindow) -> u32 {
    let delay = match window {
        RxWindow::Rx1 => rx1_delay_us,
        RxWindow::Rx2 => rx1_delay_us.saturating_add(1_000_000),
    };
    downlink_tmst(uplink_tmst, delay)
}

/// The `tmst` of a Join-accept in `window` (5 s / 6 s after the Join-request).
pub const fn join_accept_tmst(uplink_tmst: u32, window: RxWindow) -> u32 {
    downlink_tmst(
        uplink_tmst,
        match window {
            RxWindow::Rx1 => JOIN_ACCEPT_DELAY1_US,
            RxWindow::Rx2 => JOIN_ACCEPT_DELAY2_US,
        },
    )
}

/// The lowest SNR (dB) at which a LoRa signal of this spreading factor is demodulated
/// (SX127x datasheet): SF7 −7.5, SF8 −10, SF9 −12.5, SF10 −15, SF11 −17.5, SF12 −20.
pub fn demod_snr_floor_db(spreading_factor: u8) -> Option<f64> {
    match spreading_factor {
        7..=12 => Some(-7.5 - 2.5 * f64::from(spreading_factor - 7)),
        _ => None,
    }
}

/// Link margin in dB: the measured SNR above the demodulation floor (as in LinkCheckAns).
pub fn link_margin_db(spreading_factor: u8, snr_db: f64) -> Option<f64> {
    demod_snr_floor_db(spreading_factor).map(|floor| snr_db - floor)
}

/// The parameters of a LoRa frame for [`lora_time_on_air`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoraFrame {
    /// Spreading factor, 5..=12.
    pub spreading_factor: u8,
    /// Bandwidth in Hz (125 000, 250 000, 500 000).
    pub bandwidth_hz: u32,
    /// PHYPayload length in bytes.
    pub payload_len: usize,
    /// Coding rate denominator minus 4: 1 for 4/5 … 4 for 4/8.
    pub coding_rate: u8,
    /// Preamble symbols programmed (LoRaWAN: 8).
    pub preamble_symbols: u16,
    /// Physical CRC present (LoRaWAN uplinks: yes; downlinks: no).
    pub crc: bool,
    /// Implicit header (LoRaWAN: no).
    pub implicit_header: bool,
    /// Low data rate optimisation; `None` to apply the usual rule (symbol time ≥ 16 ms, i.e.
    /// SF11 and SF12 at 125 kHz).
    pub low_data_rate_optimize: Option<bool>,
}

impl LoraFrame {
    /// A LoRaWAN uplink: preamble 8, CR 4/5, CRC on, explicit header, automatic LDRO.
    pub fn uplink(spreading_factor: u8, bandwidth_hz: u32, payload_len: usize) -> Self {
        Self {
            spreading_factor,
            bandwidth_hz,
            payload_len,
            coding_rate: 1,
            preamble_symbols: 8,
            crc: true,
            implicit_header: false,
            low_data_rate_optimize: None,
        }
    }

    /// A LoRaWAN downlink: as [`LoraFrame::uplink`] without the CRC.
    pub fn downlink(spreading_factor: u8, bandwidth_hz: u32, payload_len: usize) -> Self {
        Self {
            crc: false,
            ..Self::uplink(spreading_factor, bandwidth_hz, payload_len)
        }
    }
}

/// LoRa time on air (Semtech AN1200.13 / SX127x datasheet):
///
/// ```text
/// Tsym = 2^SF / BW
/// Tpreamble = (n_preamble + 4.25) · Tsym
/// n_payload = 8 + max(ceil((8·PL − 4·SF + 28 + 16·CRC − 20·IH) / (4·(SF − 2·DE))) · (CR + 4), 0)
/// ToA = Tpreamble + n_payload · Tsym
/// ```
///
/// Computed exactly in nanoseconds (rounded down). `None` for a spreading factor outside
/// 5..=12, a zero bandwidth or a coding rate outside 1..=4.
pub fn lora_time_on_air(f: &LoraFrame) -> Option<Duration> {
    let sf = i64::from(f.spreading_factor);
    if !(5..=12).contains(&sf) || f.bandwidth_hz == 0 || !(1..=4).contains(&f.coding_rate) {
        return None;
    }
    let bw = i64::from(f.bandwidth_hz);
    let ldro = f
        .low_data_rate_optimize
        .unwrap_or_else(|| (1i64 << sf) * 1000 / bw >= 16);
    let de = i64::from(ldro);
    let pl = i64::try_from(f.payload_len).ok()?;
    let num = 8 * pl - 4 * sf + 28 + 16 * i64::from(f.crc) - 20 * i64::from(f.implicit_header);
    let den = 4 * (sf - 2 * de);
    let blocks = if num > 0 { (num + den - 1) / den } else { 0 };
    let payload_symbols = 8 + blocks * (i64::from(f.coding_rate) + 4);
    // Quarter symbols: the preamble adds 4.25 symbols.
    let quarter_symbols = 4 * (i64::from(f.preamble_symbols) + payload_symbols) + 17;
    let ns = i128::from(quarter_symbols) * (1i128 << sf) * 1_000_000_000 / (4 * i128::from(bw));
    u64::try_from(ns).ok().map(Duration::from_nanos)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gwmp::DataRate;

    #[test]
    fn data_rate_table() {
        let table = [
            (0, "SF12BW125"),
            (1, "SF11BW125"),
            (2, "SF10BW125"),
            (3, "SF9BW125"),
            (4, "SF8BW125"),
            (5, "SF7BW125"),
            (6, "SF7BW250"),
        ];
        let eu = Region::Eu868;
        let up = Link::Uplink;
        for (dr, datr) in table {
            assert_eq!(eu.data_rate(dr).unwrap().to_string(), datr);
            assert_eq!(eu.dr_of_datr(datr, up), Some(dr));
        }
        assert_eq!(eu.data_rate(7).unwrap(), DataRate::Fsk { bitrate: 50_000 });
        assert_eq!(eu.dr_of(DataRate::Fsk { bitrate: 50_000 }, up), Some(7));
        assert_eq!(eu.dr_of_datr("SF8BW500", up), None); // US915 only
        assert_eq!(eu.dr_of_datr("SF7BW500", up), None);
        assert_eq!(eu.dr_of_datr("junk", up), None);
    }

    #[test]
    fn rx1_dr_table() {
        let rx1_dr = |up, offset| Region::Eu868.rx1_dr(up, offset, false);
        assert_eq!(rx1_dr(5, 0), Ok(5));
        assert_eq!(rx1_dr(5, 1), Ok(4));
        assert_eq!(rx1_dr(5, 5), Ok(0));
        assert_eq!(rx1_dr(2, 5), Ok(0));
        assert_eq!(rx1_dr(0, 3), Ok(0));
        assert_eq!(rx1_dr(7, 2), Ok(5));
        assert_eq!(rx1_dr(5, 6), Err(RegionError::Rx1DrOffset(6)));
        assert_eq!(RegionError::Rx1DrOffset(6).kind(), "rx1_dr_offset");
    }

    #[test]
    fn timing() {
        assert_eq!(rx1_delay_us(0), 1_000_000);
        assert_eq!(rx1_delay_us(1), 1_000_000);
        assert_eq!(rx1_delay_us(5), 5_000_000);
        assert_eq!(rx1_delay_us(15), 15_000_000);
        assert_eq!(rx1_delay_us(0xF2), 2_000_000);
        // ChirpStack gateway bridge: context tmst 1_000_000 + 1 s → "tmst":2000000.
        assert_eq!(downlink_tmst(1_000_000, RECEIVE_DELAY1_US), 2_000_000);
        assert_eq!(
            data_downlink_tmst(1_000_000, rx1_delay_us(1), RxWindow::Rx2),
            3_000_000
        );
        // Wrap-around of the 32-bit counter.
        assert_eq!(
            downlink_tmst(u32::MAX - 499_999, RECEIVE_DELAY1_US),
            500_000
        );
        assert_eq!(join_accept_tmst(4_294_000_000, RxWindow::Rx1), 4_032_704);
        assert_eq!(join_accept_tmst(4_294_000_000, RxWindow::Rx2), 5_032_704);
        assert_eq!(join_accept_tmst(10, RxWindow::Rx2), 6_000_010);
        assert_eq!(RECEIVE_DELAY2 - RECEIVE_DELAY1, Duration::from_secs(1));
        assert_eq!(JOIN_ACCEPT_DELAY2_US - JOIN_ACCEPT_DELAY1_US, 1_000_000);
    }

    #[test]
    fn payload_sizes() {
        let expect = [
            (0, 59),
            (1, 59),
            (2, 59),
            (3, 123),
            (4, 230),
            (5, 230),
            (6, 230),
            (7, 230),
        ];
        let max_payload = |dr, repeater| {
            let p = Region::Eu868.max_payload(dr, false)?;
            let p = if repeater { p.repeater_compatible() } else { p };
            Ok::<_, RegionError>((p.mac_payload, p.frm_payload))
        };
        for (dr, m) in expect {
            assert_eq!(max_payload(dr, true), Ok((m, m - 8)));
        }
        assert_eq!(max_payload(5, false), Ok((250, 242)));
        assert_eq!(max_payload(2, false), Ok((59, 51)));
    }

    #[test]
    fn snr_floors() {
        let expect = [
            (7, -7.5),
            (8, -10.0),
            (9, -12.5),
            (10, -15.0),
            (11, -17.5),
            (12, -20.0),
        ];
        for (sf, floor) in expect {
            assert_eq!(demod_snr_floor_db(sf), Some(floor));
        }
        assert_eq!(demod_snr_floor_db(6), None);
        assert_eq!(link_margin_db(12, -5.0), Some(15.0));
    }

    #[test]
    fn time_on_air() {
        // A 13-byte frame (LoRaWAN header + MIC, no application payload), CR 4/5, preamble 8,
        // CRC on: the values of the Semtech LoRa calculator and TTN's airtime table.
        let toa = |sf, bw, pl| lora_time_on_air(&LoraFrame::uplink(sf, bw, pl)).unwrap();
        assert_eq!(toa(7, 125_000, 13), Duration::from_micros(46_336));
        assert_eq!(toa(12, 125_000, 13), Duration::from_micros(1_155_072));
        // A 23-byte Join-request.
        assert_eq!(toa(7, 125_000, 23), Duration::from_micros(61_696));
        assert_eq!(toa(12, 125_000, 23), Duration::from_micros(1_482_752));
        assert_eq!(toa(7, 250_000, 23), Duration::from_micros(30_848));
        // 51 bytes at SF12 (DR0 maximum FRMPayload + 13 = 64 bytes).
        assert_eq!(toa(12, 125_000, 64), Duration::from_micros(2_793_472));
        // LDRO is applied automatically at SF11/SF12 125 kHz only.
        let mut f = LoraFrame::uplink(11, 125_000, 23);
        let auto = lora_time_on_air(&f).unwrap();
        f.low_data_rate_optimize = Some(true);
        assert_eq!(lora_time_on_air(&f).unwrap(), auto);
        f.low_data_rate_optimize = Some(false);
        assert!(lora_time_on_air(&f).unwrap() < auto);
        // Downlink (no CRC) is never longer.
        assert!(
            lora_time_on_air(&LoraFrame::downlink(7, 125_000, 33)).unwrap() <= toa(7, 125_000, 33)
        );
        assert_eq!(lora_time_on_air(&LoraFrame::uplink(13, 125_000, 1)), None);
        assert_eq!(lora_time_on_air(&LoraFrame::uplink(7, 0, 1)), None);
    }

    #[test]
    fn time_on_air_of_every_eu868_data_rate() {
        // By hand: n = 8 + ⌈(8·PL − 4·SF + 28 + 16·CRC) / (4·(SF − 2·DE))⌉·5 payload symbols,
        // plus 12.25 preamble symbols of 2^SF / 125 kHz. E.g. a 23-byte Join-request at SF9:
        // ⌈192 / 36⌉ = 6, 8 + 30 = 38, 50.25 symbols × 4.096 ms = 205.824 ms. A 33-byte
        // Join-accept (no CRC) at SF11 (LDRO): ⌈248 / 36⌉ = 7, 43 + 12.25 = 55.25 × 16.384 ms.
        let expect: [(u8, u64, u64, u64); 6] = [
            // (DR, Join-request 23 B, Join-accept 17 B, Join-accept with CFList 33 B), µs
            (5, 61_696, 46_336, 71_936),
            (4, 113_152, 92_672, 133_632),
            (3, 205_824, 164_864, 246_784),
            (2, 370_688, 329_728, 452_608),
            (1, 823_296, 659_456, 905_216),
            (0, 1_482_752, 1_155_072, 1_810_432),
        ];
        for (dr, join_request, accept, accept_cf_list) in expect {
            let DataRate::Lora {
                spreading_factor: sf,
                bandwidth_khz: bw,
            } = Region::Eu868.data_rate(dr).unwrap()
            else {
                panic!("DR{dr} is LoRa");
            };
            let us = |f: LoraFrame| lora_time_on_air(&f).unwrap().as_micros() as u64;
            let bw = u32::from(bw) * 1000;
            assert_eq!(us(LoraFrame::uplink(sf, bw, 23)), join_request, "DR{dr}");
            assert_eq!(us(LoraFrame::downlink(sf, bw, 17)), accept, "DR{dr}");
            assert_eq!(
                us(LoraFrame::downlink(sf, bw, 33)),
                accept_cf_list,
                "DR{dr}"
            );
        }
    }
}
