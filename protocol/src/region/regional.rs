//! [`Region`]: a channel plan of RP002 as a value, and the rules that read its tables
//! ([`super::tables`]): data rates and GWMP `datr`, maximum payloads, RX1 and RX2, TX power,
//! dwell time and duty cycle.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use super::tables::{
    self, ChannelLayout, DrDef, DrModulation, DwellTime, ReceiveDelays, RegionParams, Rx1DrRule,
};
use super::RegionError;
use crate::gwmp::DataRate;

/// A LoRaWAN region: one channel plan of the Regional Parameters (RP002-1.0.3), by its common
/// name. One network-server instance and one simulated fleet each work in one region.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Region {
    /// EU863-870.
    #[default]
    Eu868,
    /// US902-928.
    Us915,
    /// AU915-928.
    Au915,
    /// AS923-1 (923.2 / 923.4 MHz).
    As923_1,
    /// AS923-2 (AS923-1 − 1.8 MHz).
    As923_2,
    /// AS923-3 (AS923-1 − 6.6 MHz).
    As923_3,
    /// AS923-4 (AS923-1 − 5.9 MHz).
    As923_4,
    /// KR920-923.
    Kr920,
    /// IN865-867.
    In865,
}

/// Whether a data rate is looked up for an uplink or a downlink: in US915 and AU915 the same
/// modulation (SF8/500 kHz) is one DR up and another down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Link {
    /// Device to network.
    Uplink,
    /// Network to device.
    Downlink,
}

/// The maximum sizes at one data rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MaxPayload {
    /// M: the maximum MACPayload length.
    pub mac_payload: u8,
    /// N: the maximum FRMPayload length without FOpts (M − 8).
    pub frm_payload: u8,
}

impl MaxPayload {
    fn of(m: u8) -> Self {
        Self {
            mac_payload: m,
            frm_payload: m.saturating_sub(8),
        }
    }

    /// The limits for a repeater-compatible end-device (RP002's other table): M capped at 230.
    pub fn repeater_compatible(self) -> Self {
        Self::of(self.mac_payload.min(230))
    }
}

/// The CFList a region's Join-accept carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CfListType {
    /// Type 0: up to five extra channel frequencies.
    Frequencies,
    /// Type 1: the channel mask of a fixed plan (LoRaWAN 1.0.3 and later).
    ChannelMask,
}

impl Region {
    /// Every region, in a stable order.
    pub const ALL: [Region; 9] = [
        Region::Eu868,
        Region::Us915,
        Region::Au915,
        Region::As923_1,
        Region::As923_2,
        Region::As923_3,
        Region::As923_4,
        Region::Kr920,
        Region::In865,
    ];

    /// The RP002 common name: `EU868`, `US915`, `AU915`, `AS923-1` … `AS923-4`, `KR920`,
    /// `IN865`.
    pub const fn name(self) -> &'static str {
        match self {
            Region::Eu868 => "EU868",
            Region::Us915 => "US915",
            Region::Au915 => "AU915",
            Region::As923_1 => "AS923-1",
            Region::As923_2 => "AS923-2",
            Region::As923_3 => "AS923-3",
            Region::As923_4 => "AS923-4",
            Region::Kr920 => "KR920",
            Region::In865 => "IN865",
        }
    }

    /// The region's tables.
    pub fn params(self) -> &'static RegionParams {
        match self {
            Region::Eu868 => &tables::EU868,
            Region::Us915 => &tables::US915,
            Region::Au915 => &tables::AU915,
            Region::As923_1 => &tables::AS923_1,
            Region::As923_2 => &tables::AS923_2,
            Region::As923_3 => &tables::AS923_3,
            Region::As923_4 => &tables::AS923_4,
            Region::Kr920 => &tables::KR920,
            Region::In865 => &tables::IN865,
        }
    }

    /// Whether the region has fixed 64 + 8 channels (US915, AU915).
    pub fn is_fixed_plan(self) -> bool {
        matches!(self.params().layout, ChannelLayout::Fixed { .. })
    }

    /// The CFList type of the region's Join-accept.
    pub fn cf_list_type(self) -> CfListType {
        if self.is_fixed_plan() {
            CfListType::ChannelMask
        } else {
            CfListType::Frequencies
        }
    }

    /// The definition of data rate `dr`.
    pub fn dr_def(self, dr: u8) -> Result<DrDef, RegionError> {
        self.params()
            .data_rates
            .get(usize::from(dr))
            .copied()
            .flatten()
            .ok_or(RegionError::DataRate(dr))
    }

    /// The LoRa or FSK modulation of data rate `dr`, as GWMP `datr` carries it. An LR-FHSS data
    /// rate is refused as [`RegionError::NotModelled`].
    pub fn data_rate(self, dr: u8) -> Result<DataRate, RegionError> {
        match self.dr_def(dr)?.modulation {
            DrModulation::Radio(d) => Ok(d),
            DrModulation::LrFhss { .. } => Err(RegionError::NotModelled(dr)),
        }
    }

    /// The DR index of a modulation on `link`, or `None` if the region has no such data rate.
    pub fn dr_of(self, datr: DataRate, link: Link) -> Option<u8> {
        self.params()
            .data_rates
            .iter()
            .position(|d| {
                d.is_some_and(|d| {
                    d.modulation == DrModulation::Radio(datr)
                        && match link {
                            Link::Uplink => d.uplink,
                            Link::Downlink => d.downlink,
                        }
                })
            })
            .and_then(|i| u8::try_from(i).ok())
    }

    /// The DR index of a GWMP LoRa `datr` string such as `"SF8BW500"` on `link`.
    pub fn dr_of_datr(self, datr: &str, link: Link) -> Option<u8> {
        DataRate::parse_lora(datr).and_then(|d| self.dr_of(d, link))
    }

    /// The maximum MACPayload (M) and FRMPayload (N) at `dr`, with the 400 ms dwell-time limit
    /// (`dwell`: UplinkDwellTime for uplinks, DownlinkDwellTime for downlinks) or without.
    /// Regions without TxParamSetupReq ignore `dwell`. Not repeater compatible; see
    /// [`MaxPayload::repeater_compatible`].
    pub fn max_payload(self, dr: u8, dwell: bool) -> Result<MaxPayload, RegionError> {
        let p = self.params();
        let table = match (dwell, p.max_mac_payload_dwell) {
            (true, Some(t)) => t,
            _ => p.max_mac_payload,
        };
        match table.get(usize::from(dr)) {
            Some(&m) if m > 0 => Ok(MaxPayload::of(m)),
            _ => Err(RegionError::DataRate(dr)),
        }
    }

    /// The RX1 data rate for an uplink at `up_dr` and RX1DROffset `offset`. `downlink_dwell` is
    /// DownlinkDwellTime (it only matters in AS923).
    pub fn rx1_dr(self, up_dr: u8, offset: u8, downlink_dwell: bool) -> Result<u8, RegionError> {
        let p = self.params();
        if offset > p.max_rx1_dr_offset {
            return Err(RegionError::Rx1DrOffset(offset));
        }
        match p.rx1_dr {
            Rx1DrRule::Table(rows) => rows
                .iter()
                .find(|(dr, _)| *dr == up_dr)
                .and_then(|(_, row)| row.get(usize::from(offset)).copied())
                .ok_or(RegionError::DataRate(up_dr)),
            Rx1DrRule::As923 => {
                if self.dr_def(up_dr).map(|d| d.uplink) != Ok(true) {
                    return Err(RegionError::DataRate(up_dr));
                }
                let min_dr = if downlink_dwell { 2 } else { 0 };
                let effective = [0i8, 1, 2, 3, 4, 5, -1, -2][usize::from(offset)];
                let dr = (up_dr as i8 - effective).max(min_dr);
                Ok(dr.min(5) as u8)
            }
        }
    }

    /// The RX1 frequency for an uplink on `uplink_hz`: the same frequency in regions with a
    /// dynamic plan; downlink channel `uplink channel mod 8` in US915 and AU915.
    pub fn rx1_frequency(self, uplink_hz: u32) -> Result<u32, RegionError> {
        match self.params().layout {
            ChannelLayout::Dynamic { .. } => Ok(uplink_hz),
            ChannelLayout::Fixed {
                bw125,
                bw500,
                downlink,
            } => bw125
                .index_of(uplink_hz)
                .or_else(|| bw500.index_of(uplink_hz))
                .and_then(|ch| downlink.frequency(ch % 8))
                .ok_or(RegionError::Frequency(uplink_hz)),
        }
    }

    /// Whether a device accepts `freq_hz` for a downlink channel (RXParamSetupReq, DlChannelReq):
    /// one of the eight downlink channels in US915 and AU915, a frequency of the region's band
    /// elsewhere.
    pub fn is_downlink_frequency(self, freq_hz: u32) -> bool {
        match self.params().layout {
            ChannelLayout::Dynamic { band_hz, .. } => (band_hz.0..band_hz.1).contains(&freq_hz),
            ChannelLayout::Fixed { downlink, .. } => downlink.index_of(freq_hz).is_some(),
        }
    }

    /// The default RX2 frequency (Hz) and data rate.
    pub fn rx2(self) -> (u32, u8) {
        let p = self.params();
        (p.rx2_frequency_hz, p.rx2_dr)
    }

    /// The Class-A receive and join-accept delays.
    pub fn delays(self) -> ReceiveDelays {
        tables::DELAYS
    }

    /// The EIRP (dBm) of TXPower index `tx_power`: MaxEIRP − 2·TXPower, or `None` above the
    /// region's highest index.
    pub fn tx_power_eirp_dbm(self, tx_power: u8) -> Option<i8> {
        let p = self.params();
        (tx_power <= p.max_tx_power).then(|| p.max_eirp_dbm - 2 * tx_power as i8)
    }

    /// The EIRP a network server puts in `txpk` `powe` for a downlink on `freq_hz` when nothing
    /// is configured: the region's default, or the higher limit of a high-power sub-band (EU868
    /// 869.4–869.65 MHz: 27 dBm ERP, 29 dBm EIRP). The same defaults as ChirpStack.
    pub fn downlink_eirp_dbm(self, freq_hz: u32) -> i8 {
        let p = self.params();
        match p.high_power_downlink {
            Some(((lo, hi), eirp)) if (lo..hi).contains(&freq_hz) => eirp,
            _ => p.downlink_eirp_dbm,
        }
    }

    /// Whether the region implements TxParamSetupReq (AS923, AU915).
    pub fn has_tx_param_setup(self) -> bool {
        self.params().tx_param_setup
    }

    /// The dwell-time settings a device starts with (before any TxParamSetupReq).
    pub fn boot_dwell_time(self) -> DwellTime {
        self.params().boot_dwell_time
    }

    /// The longest an uplink may stay on air under `dwell`, if a limit applies (US915 always:
    /// FCC 400 ms).
    pub fn uplink_dwell_limit(self, dwell: DwellTime) -> Option<Duration> {
        let p = self.params();
        (p.fixed_uplink_dwell || (p.tx_param_setup && dwell.uplink))
            .then_some(tables::MAX_DWELL_TIME)
    }

    /// The duty cycle of the sub-band holding `freq_hz`, where the region has one (EU868).
    pub fn duty_cycle(self, freq_hz: u32) -> Option<f64> {
        self.params()
            .sub_bands
            .iter()
            .find(|b| (b.range_hz.0..b.range_hz.1).contains(&freq_hz))
            .map(|b| b.duty_cycle)
    }
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Region {
    type Err = RegionError;

    /// A common name, case-insensitive; `AS923` alone is AS923-1, and RP002's band names
    /// (`EU863-870`, `US902-928`, `AU915-928`, `KR920-923`, `IN865-867`) are read too.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let u = s.trim().to_ascii_uppercase();
        let r = match u.as_str() {
            "EU868" | "EU863-870" => Region::Eu868,
            "US915" | "US902-928" => Region::Us915,
            "AU915" | "AU915-928" => Region::Au915,
            "AS923" | "AS923-1" | "AS923_1" => Region::As923_1,
            "AS923-2" | "AS923_2" => Region::As923_2,
            "AS923-3" | "AS923_3" => Region::As923_3,
            "AS923-4" | "AS923_4" => Region::As923_4,
            "KR920" | "KR920-923" => Region::Kr920,
            "IN865" | "IN865-867" => Region::In865,
            _ => return Err(RegionError::UnknownRegion),
        };
        Ok(r)
    }
}

impl serde::Serialize for Region {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> serde::Deserialize<'de> for Region {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}
