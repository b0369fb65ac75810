//! The Regional Parameters as data: one [`RegionParams`] per channel plan, transcribed from
//! LoRaWAN Regional Parameters RP002-1.0.3 (the 1.0.4 revision changes none of these values).
//! Each table names the RP002 section it comes from; where the stored copy of the specification
//! let us confirm the table number, it is given too. `tests/region_tables.rs` checks every value
//! against RP002's tables and against ChirpStack's independent transcription (`lrwn::region`).

use std::time::Duration;

use crate::gwmp::DataRate;

/// The coding rate of an LR-FHSS data rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LrFhssCodingRate {
    /// Coding rate 1/3.
    Cr1_3,
    /// Coding rate 2/3.
    Cr2_3,
}

/// What a data rate index stands for in a region.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DrModulation {
    /// LoRa or FSK: what GWMP `datr` carries.
    Radio(DataRate),
    /// LR-FHSS (RP002-1.0.3's DRs 8–11 in EU868, 5–6 in US915, 7 in AU915). Named so that the
    /// index is not mistaken for RFU; not modelled further (no gateway `datr`, no time on air).
    LrFhss {
        /// Occupied channel width in kHz (137, 336 or 1523).
        occupied_channel_width_khz: u16,
        /// Coding rate.
        coding_rate: LrFhssCodingRate,
    },
}

/// One defined data rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DrDef {
    /// The modulation.
    pub modulation: DrModulation,
    /// Allowed for uplinks.
    pub uplink: bool,
    /// Allowed for downlinks.
    pub downlink: bool,
}

/// A block of evenly spaced channels (the fixed plans of US915 and AU915).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChannelBlock {
    /// Index of the block's first channel.
    pub first_index: u8,
    /// Number of channels.
    pub count: u8,
    /// Frequency of the first channel, Hz.
    pub first_hz: u32,
    /// Spacing, Hz.
    pub step_hz: u32,
    /// Lowest data rate.
    pub min_dr: u8,
    /// Highest data rate.
    pub max_dr: u8,
}

impl ChannelBlock {
    /// The frequency of channel `index`, if it is in the block.
    pub const fn frequency(&self, index: u8) -> Option<u32> {
        if index >= self.first_index && index - self.first_index < self.count {
            Some(self.first_hz + (index - self.first_index) as u32 * self.step_hz)
        } else {
            None
        }
    }

    /// The index of the channel on `freq_hz`, if one is exactly there.
    pub const fn index_of(&self, freq_hz: u32) -> Option<u8> {
        if freq_hz < self.first_hz || (freq_hz - self.first_hz) % self.step_hz != 0 {
            return None;
        }
        let k = (freq_hz - self.first_hz) / self.step_hz;
        if k < self.count as u32 {
            Some(self.first_index + k as u8)
        } else {
            None
        }
    }
}

/// How a region lays out its uplink channels, and so what its CFList and ChMask mean.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChannelLayout {
    /// Up to 16 channels defined by the network (EU868, AS923, KR920, IN865): a few default
    /// channels, more through the CFList (type 0, frequencies) or NewChannelReq. RX1 uses the
    /// uplink frequency. LinkADRReq ChMaskCntl 0 masks channels 0–15, 6 turns every defined
    /// channel on, the others are RFU.
    Dynamic {
        /// The default channels (indices 0..), data rates `default_drs`.
        default_hz: &'static [u32],
        /// Data-rate range of the default channels and of CFList channels.
        default_drs: (u8, u8),
        /// Frequencies a device accepts for a channel: `[low, high)`, Hz.
        band_hz: (u32, u32),
    },
    /// 64 + 8 fixed uplink channels and 8 downlink channels (US915, AU915). The CFList is type 1
    /// (a channel mask); RX1 uses downlink channel `uplink channel mod 8`; ChMaskCntl 0–3 mask
    /// channels 16·n…16·n+15, 4 channels 64–71, 5 banks of eight 125 kHz channels (and the
    /// 500 kHz channel of the same bank), 6 / 7 all 125 kHz channels on / off and ChMask for
    /// channels 64–71.
    Fixed {
        /// Channels 0–63, 125 kHz.
        bw125: ChannelBlock,
        /// Channels 64–71, 500 kHz.
        bw500: ChannelBlock,
        /// The eight downlink channels, 500 kHz.
        downlink: ChannelBlock,
    },
}

/// How RX1's data rate follows the uplink's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rx1DrRule {
    /// A table: row = uplink DR, column = RX1DROffset.
    Table(&'static [(u8, &'static [u8])]),
    /// AS923: `min(5, max(MinDR, DR − Effective_RX1DROffset))`, offsets 0..=7 meaning
    /// 0, 1, 2, 3, 4, 5, −1, −2, and MinDR 2 under downlink dwell time, else 0.
    As923,
}

/// A regulatory sub-band with its duty-cycle limit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SubBand {
    /// `[low, high)`, Hz.
    pub range_hz: (u32, u32),
    /// The fraction of time a device may transmit in it.
    pub duty_cycle: f64,
}

/// UplinkDwellTime and DownlinkDwellTime (TxParamSetupReq): whether the 400 ms limit applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct DwellTime {
    /// The 400 ms limit on uplinks.
    pub uplink: bool,
    /// The 400 ms limit on downlinks.
    pub downlink: bool,
}

/// Everything RP002 says about one region that this stack uses.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RegionParams {
    /// The data rates, indexed by DR (`None`: RFU).
    pub data_rates: &'static [Option<DrDef>],
    /// Maximum MACPayload size M per DR without dwell-time limit (0: not allowed). N = M − 8.
    pub max_mac_payload: &'static [u8],
    /// Maximum M per DR under UplinkDwellTime / DownlinkDwellTime = 1, where the region has
    /// TxParamSetupReq.
    pub max_mac_payload_dwell: Option<&'static [u8]>,
    /// The channels.
    pub layout: ChannelLayout,
    /// RX1 data rate rule.
    pub rx1_dr: Rx1DrRule,
    /// Highest RX1DROffset.
    pub max_rx1_dr_offset: u8,
    /// Default RX2 frequency, Hz.
    pub rx2_frequency_hz: u32,
    /// Default RX2 data rate.
    pub rx2_dr: u8,
    /// Default maximum EIRP of a device, dBm (TXPower 0).
    pub max_eirp_dbm: i8,
    /// Highest TXPower index (each step is 2 dB below MaxEIRP).
    pub max_tx_power: u8,
    /// EIRP a network server uses for downlinks when nothing is configured, dBm.
    pub downlink_eirp_dbm: i8,
    /// Whether TxParamSetupReq is implemented (AS923, AU915).
    pub tx_param_setup: bool,
    /// The dwell-time setting a device starts with.
    pub boot_dwell_time: DwellTime,
    /// Whether the 400 ms dwell limit applies to uplinks whatever TxParamSetupReq says (US915).
    pub fixed_uplink_dwell: bool,
    /// Sub-bands and their duty cycles (empty where RP002 sets none).
    pub sub_bands: &'static [SubBand],
    /// Sub-bands with a higher duty cycle a network server may use for downlinks, with their
    /// EIRP (EU868 g3, 869.4–869.65 MHz).
    pub high_power_downlink: Option<((u32, u32), i8)>,
}

/// RECEIVE_DELAY1, RECEIVE_DELAY2, JOIN_ACCEPT_DELAY1 and JOIN_ACCEPT_DELAY2: the same in every
/// region of RP002 (each region's "Default Settings" section, e.g. §2.4.8 for EU868).
pub const DELAYS: ReceiveDelays = ReceiveDelays {
    receive_delay1: Duration::from_secs(1),
    receive_delay2: Duration::from_secs(2),
    join_accept_delay1: Duration::from_secs(5),
    join_accept_delay2: Duration::from_secs(6),
};

/// Class-A receive delays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReceiveDelays {
    /// RECEIVE_DELAY1.
    pub receive_delay1: Duration,
    /// RECEIVE_DELAY2.
    pub receive_delay2: Duration,
    /// JOIN_ACCEPT_DELAY1.
    pub join_accept_delay1: Duration,
    /// JOIN_ACCEPT_DELAY2.
    pub join_accept_delay2: Duration,
}

/// The maximum dwell time where a dwell limit applies.
pub const MAX_DWELL_TIME: Duration = Duration::from_millis(400);

/// TxParamSetupReq's MaxEIRP field → dBm: the "TxParamSetup EIRP encoding table" of the
/// LoRaWAN link-layer specification (1.0.3, 1.0.4, 1.1: the TxParamSetupReq section).
pub const TX_PARAM_MAX_EIRP_DBM: [i8; 16] = [
    8, 10, 12, 13, 14, 16, 18, 20, 21, 24, 26, 27, 29, 30, 33, 36,
];

const fn lora(sf: u8, bw: u16, uplink: bool, downlink: bool) -> Option<DrDef> {
    Some(DrDef {
        modulation: DrModulation::Radio(DataRate::Lora {
            spreading_factor: sf,
            bandwidth_khz: bw,
        }),
        uplink,
        downlink,
    })
}

const fn fsk50() -> Option<DrDef> {
    Some(DrDef {
        modulation: DrModulation::Radio(DataRate::Fsk { bitrate: 50_000 }),
        uplink: true,
        downlink: true,
    })
}

const fn lr_fhss(ocw: u16, coding_rate: LrFhssCodingRate) -> Option<DrDef> {
    Some(DrDef {
        modulation: DrModulation::LrFhss {
            occupied_channel_width_khz: ocw,
            coding_rate,
        },
        uplink: true,
        downlink: false,
    })
}

use LrFhssCodingRate::{Cr1_3, Cr2_3};

/// The DR0–DR5 SF12…SF7/125 kHz rows shared by EU868, AS923, KR920 and IN865.
macro_rules! sf12_to_sf7 {
    () => {
        [
            lora(12, 125, true, true),
            lora(11, 125, true, true),
            lora(10, 125, true, true),
            lora(9, 125, true, true),
            lora(8, 125, true, true),
            lora(7, 125, true, true),
        ]
    };
}

const fn concat<const A: usize, const B: usize, const C: usize>(
    a: [Option<DrDef>; A],
    b: [Option<DrDef>; B],
) -> [Option<DrDef>; C] {
    let mut out = [None; C];
    let mut i = 0;
    while i < A {
        out[i] = a[i];
        i += 1;
    }
    while i < A + B {
        out[i] = b[i - A];
        i += 1;
    }
    out
}

/// EU868 data rates: RP002-1.0.3 §2.4.3, Table 8 (EU863-870 data rate table).
const EU868_DRS: [Option<DrDef>; 12] = concat(
    sf12_to_sf7!(),
    [
        lora(7, 250, true, true),
        fsk50(),
        lr_fhss(137, Cr1_3),
        lr_fhss(137, Cr2_3),
        lr_fhss(336, Cr1_3),
        lr_fhss(336, Cr2_3),
    ],
);

/// US915 data rates: RP002-1.0.3 §2.5.3 (US902-928 data rate table). DR4 is the uplink
/// SF8/500 kHz; DR8–13 the 500 kHz downlink rates; DR7 is RFU.
const US915_DRS: [Option<DrDef>; 14] = [
    lora(10, 125, true, false),
    lora(9, 125, true, false),
    lora(8, 125, true, false),
    lora(7, 125, true, false),
    lora(8, 500, true, false),
    lr_fhss(1523, Cr1_3),
    lr_fhss(1523, Cr2_3),
    None,
    lora(12, 500, false, true),
    lora(11, 500, false, true),
    lora(10, 500, false, true),
    lora(9, 500, false, true),
    lora(8, 500, false, true),
    lora(7, 500, false, true),
];

/// AU915 data rates: RP002-1.0.3 §2.8.3 (AU915-928 data rate table).
const AU915_DRS: [Option<DrDef>; 14] = concat(
    sf12_to_sf7!(),
    [
        lora(8, 500, true, false),
        lr_fhss(1523, Cr1_3),
        lora(12, 500, false, true),
        lora(11, 500, false, true),
        lora(10, 500, false, true),
        lora(9, 500, false, true),
        lora(8, 500, false, true),
        lora(7, 500, false, true),
    ],
);

/// AS923 data rates: RP002-1.0.3 §2.10.3 (AS923 data rate table).
const AS923_DRS: [Option<DrDef>; 8] = concat(sf12_to_sf7!(), [lora(7, 250, true, true), fsk50()]);

/// KR920 data rates: RP002-1.0.3 §2.11.3 (KR920-923 data rate table).
const KR920_DRS: [Option<DrDef>; 6] = sf12_to_sf7!();

/// IN865 data rates: RP002-1.0.3 §2.12.3 (IN865-867 data rate table); DR6 is RFU.
const IN865_DRS: [Option<DrDef>; 8] = concat(sf12_to_sf7!(), [None, fsk50()]);

/// RX1DROffset 0..=5 subtracted, floored at DR0: the DR0–DR7 rows of EU868 (§2.4.7), KR920
/// (§2.11.7).
const SUBTRACT_0_5: [(u8, &[u8]); 8] = [
    (0, &[0, 0, 0, 0, 0, 0]),
    (1, &[1, 0, 0, 0, 0, 0]),
    (2, &[2, 1, 0, 0, 0, 0]),
    (3, &[3, 2, 1, 0, 0, 0]),
    (4, &[4, 3, 2, 1, 0, 0]),
    (5, &[5, 4, 3, 2, 1, 0]),
    (6, &[6, 5, 4, 3, 2, 1]),
    (7, &[7, 6, 5, 4, 3, 2]),
];

/// EU868 RX1 data rates: RP002-1.0.3 §2.4.7, the LR-FHSS DRs 8–11 answered like DR1/DR2.
const EU868_RX1: [(u8, &[u8]); 12] = [
    SUBTRACT_0_5[0],
    SUBTRACT_0_5[1],
    SUBTRACT_0_5[2],
    SUBTRACT_0_5[3],
    SUBTRACT_0_5[4],
    SUBTRACT_0_5[5],
    SUBTRACT_0_5[6],
    SUBTRACT_0_5[7],
    (8, &[1, 0, 0, 0, 0, 0]),
    (9, &[2, 1, 0, 0, 0, 0]),
    (10, &[1, 0, 0, 0, 0, 0]),
    (11, &[2, 1, 0, 0, 0, 0]),
];

/// US915 RX1 data rates: RP002-1.0.3 §2.5.7 (US902-928 downlink RX1 data rate mapping).
const US915_RX1: [(u8, &[u8]); 7] = [
    (0, &[10, 9, 8, 8]),
    (1, &[11, 10, 9, 8]),
    (2, &[12, 11, 10, 9]),
    (3, &[13, 12, 11, 10]),
    (4, &[13, 13, 12, 11]),
    (5, &[10, 9, 8, 8]),
    (6, &[11, 10, 9, 8]),
];

/// AU915 RX1 data rates: RP002-1.0.3 §2.8.7 (AU915-928 downlink RX1 data rate mapping).
const AU915_RX1: [(u8, &[u8]); 8] = [
    (0, &[8, 8, 8, 8, 8, 8]),
    (1, &[9, 8, 8, 8, 8, 8]),
    (2, &[10, 9, 8, 8, 8, 8]),
    (3, &[11, 10, 9, 8, 8, 8]),
    (4, &[12, 11, 10, 9, 8, 8]),
    (5, &[13, 12, 11, 10, 9, 8]),
    (6, &[13, 13, 12, 11, 10, 9]),
    (7, &[9, 8, 8, 8, 8, 8]),
];

/// IN865 RX1 data rates: RP002-1.0.3 §2.12.7 (IN865-867 RX1 data rate mapping; RX1DROffset
/// 6 and 7 raise the data rate by one and two, capped at DR5).
const IN865_RX1: [(u8, &[u8]); 7] = [
    (0, &[0, 0, 0, 0, 0, 0, 1, 2]),
    (1, &[1, 0, 0, 0, 0, 0, 2, 3]),
    (2, &[2, 1, 0, 0, 0, 0, 3, 4]),
    (3, &[3, 2, 1, 0, 0, 0, 4, 5]),
    (4, &[4, 3, 2, 1, 0, 0, 5, 5]),
    (5, &[5, 4, 3, 2, 1, 0, 5, 5]),
    (7, &[7, 6, 5, 4, 3, 2, 7, 7]),
];

/// EU868: RP002-1.0.3 §2.4. Channels §2.4.2 (Table 6: the three default channels, < 1 % duty
/// cycle); maximum payload §2.4.6 (Table 13, not repeater compatible); TXPower §2.4.3
/// (MaxEIRP 16 dBm, 0..=7); RX2 §2.4.7 (869.525 MHz, DR0). The duty-cycle sub-bands are ETSI
/// EN 300 220's as the LoRaWAN specification lists them (g 863–868 MHz 1 %, g1 868–868.6 MHz
/// 1 %, g2 868.7–869.2 MHz 0.1 %, g3 869.4–869.65 MHz 10 %, g4 869.7–870 MHz 1 %).
pub static EU868: RegionParams = RegionParams {
    data_rates: &EU868_DRS,
    max_mac_payload: &[59, 59, 59, 123, 250, 250, 250, 250, 58, 123, 58, 123],
    max_mac_payload_dwell: None,
    layout: ChannelLayout::Dynamic {
        default_hz: &[868_100_000, 868_300_000, 868_500_000],
        default_drs: (0, 5),
        band_hz: (863_000_000, 870_000_000),
    },
    rx1_dr: Rx1DrRule::Table(&EU868_RX1),
    max_rx1_dr_offset: 5,
    rx2_frequency_hz: 869_525_000,
    rx2_dr: 0,
    max_eirp_dbm: 16,
    max_tx_power: 7,
    downlink_eirp_dbm: 16,
    tx_param_setup: false,
    boot_dwell_time: NO_DWELL,
    fixed_uplink_dwell: false,
    sub_bands: &[
        SubBand {
            range_hz: (863_000_000, 868_000_000),
            duty_cycle: 0.01,
        },
        SubBand {
            range_hz: (868_000_000, 868_600_000),
            duty_cycle: 0.01,
        },
        SubBand {
            range_hz: (868_700_000, 869_200_000),
            duty_cycle: 0.001,
        },
        SubBand {
            range_hz: (869_400_000, 869_650_000),
            duty_cycle: 0.1,
        },
        SubBand {
            range_hz: (869_700_000, 870_000_000),
            duty_cycle: 0.01,
        },
    ],
    high_power_downlink: Some(((869_400_000, 869_650_000), 29)),
};

/// The eight 500 kHz downlink channels of US915 and AU915: 923.3 + 0.6·k MHz, DR8–13.
const DOWNLINK_923_3: ChannelBlock = ChannelBlock {
    first_index: 0,
    count: 8,
    first_hz: 923_300_000,
    step_hz: 600_000,
    min_dr: 8,
    max_dr: 13,
};

/// No dwell-time limit.
const NO_DWELL: DwellTime = DwellTime {
    uplink: false,
    downlink: false,
};

/// US915: RP002-1.0.3 §2.5. Channels §2.5.2 (64 × 125 kHz from 902.3 MHz by 200 kHz, DR0–3;
/// 8 × 500 kHz from 903.0 MHz by 1.6 MHz, DR4 and LR-FHSS DR5–6; downlink 8 × 500 kHz from 923.3 MHz by
/// 600 kHz); maximum payload §2.5.6 (not repeater compatible; the FCC's 400 ms dwell time is
/// built in, so there is no TxParamSetupReq); TXPower §2.5.3 (30 dBm − 2·TXPower, 0..=14);
/// RX2 §2.5.7 (923.3 MHz, DR8).
pub static US915: RegionParams = RegionParams {
    data_rates: &US915_DRS,
    max_mac_payload: &[
        19, 61, 133, 250, 250, 58, 133, 0, 61, 137, 250, 250, 250, 250,
    ],
    max_mac_payload_dwell: None,
    layout: ChannelLayout::Fixed {
        bw125: ChannelBlock {
            first_index: 0,
            count: 64,
            first_hz: 902_300_000,
            step_hz: 200_000,
            min_dr: 0,
            max_dr: 3,
        },
        bw500: ChannelBlock {
            first_index: 64,
            count: 8,
            first_hz: 903_000_000,
            step_hz: 1_600_000,
            min_dr: 4,
            max_dr: 6,
        },
        downlink: DOWNLINK_923_3,
    },
    rx1_dr: Rx1DrRule::Table(&US915_RX1),
    max_rx1_dr_offset: 3,
    rx2_frequency_hz: 923_300_000,
    rx2_dr: 8,
    max_eirp_dbm: 30,
    max_tx_power: 14,
    downlink_eirp_dbm: 21,
    tx_param_setup: false,
    boot_dwell_time: DwellTime {
        uplink: true,
        downlink: false,
    },
    fixed_uplink_dwell: true,
    sub_bands: &[],
    high_power_downlink: None,
};

/// AU915: RP002-1.0.3 §2.8. Channels §2.8.2 (64 × 125 kHz from 915.2 MHz by 200 kHz, DR0–5;
/// 8 × 500 kHz from 915.9 MHz by 1.6 MHz, DR6 and LR-FHSS DR7; downlink as US915); maximum payload §2.8.6
/// (with and without UplinkDwellTime); a device starts with UplinkDwellTime = 1 until a
/// TxParamSetupReq says otherwise (§2.8.2); TXPower §2.8.3 (30 dBm − 2·TXPower, 0..=14); RX2
/// §2.8.7 (923.3 MHz, DR8).
pub static AU915: RegionParams = RegionParams {
    data_rates: &AU915_DRS,
    max_mac_payload: &[
        59, 59, 59, 123, 250, 250, 250, 58, 61, 137, 250, 250, 250, 250,
    ],
    max_mac_payload_dwell: Some(&[0, 0, 19, 61, 133, 250, 250, 58, 61, 137, 250, 250, 250, 250]),
    layout: ChannelLayout::Fixed {
        bw125: ChannelBlock {
            first_index: 0,
            count: 64,
            first_hz: 915_200_000,
            step_hz: 200_000,
            min_dr: 0,
            max_dr: 5,
        },
        bw500: ChannelBlock {
            first_index: 64,
            count: 8,
            first_hz: 915_900_000,
            step_hz: 1_600_000,
            min_dr: 6,
            max_dr: 7,
        },
        downlink: DOWNLINK_923_3,
    },
    rx1_dr: Rx1DrRule::Table(&AU915_RX1),
    max_rx1_dr_offset: 5,
    rx2_frequency_hz: 923_300_000,
    rx2_dr: 8,
    max_eirp_dbm: 30,
    max_tx_power: 14,
    downlink_eirp_dbm: 30,
    tx_param_setup: true,
    boot_dwell_time: DwellTime {
        uplink: true,
        downlink: false,
    },
    fixed_uplink_dwell: false,
    sub_bands: &[],
    high_power_downlink: None,
};

/// The AS923 groups' frequency offsets from AS923-1 (RP002-1.0.3 §2.10.2: AS923-2 −1.8 MHz,
/// AS923-3 −6.6 MHz, AS923-4 −5.9 MHz).
const fn as923(offset_hz: u32) -> RegionParams {
    RegionParams {
        data_rates: &AS923_DRS,
        max_mac_payload: &[59, 59, 123, 123, 250, 250, 250, 250],
        max_mac_payload_dwell: Some(&[0, 0, 19, 61, 133, 250, 250, 250]),
        layout: ChannelLayout::Dynamic {
            default_hz: match offset_hz {
                0 => &[923_200_000, 923_400_000],
                1_800_000 => &[921_400_000, 921_600_000],
                6_600_000 => &[916_600_000, 916_800_000],
                _ => &[917_300_000, 917_500_000],
            },
            default_drs: (0, 5),
            band_hz: (915_000_000, 928_000_000),
        },
        rx1_dr: Rx1DrRule::As923,
        max_rx1_dr_offset: 7,
        rx2_frequency_hz: 923_200_000 - offset_hz,
        rx2_dr: 2,
        max_eirp_dbm: 16,
        max_tx_power: 7,
        downlink_eirp_dbm: 16,
        tx_param_setup: true,
        // RP002 leaves the boot value open; the 400 ms limit is what Japan requires, and what
        // LoRaMac-node and The Things Stack assume until a TxParamSetupReq.
        boot_dwell_time: DwellTime {
            uplink: true,
            downlink: true,
        },
        fixed_uplink_dwell: false,
        sub_bands: &[],
        high_power_downlink: None,
    }
}

/// AS923-1: RP002-1.0.3 §2.10 (923.2 and 923.4 MHz; RX2 923.2 MHz DR2; MaxEIRP 16 dBm;
/// maximum payload §2.10.6 with and without dwell time; RX1 §2.10.7).
pub static AS923_1: RegionParams = as923(0);
/// AS923-2: AS923-1 − 1.8 MHz (921.4, 921.6 MHz; RX2 921.4 MHz).
pub static AS923_2: RegionParams = as923(1_800_000);
/// AS923-3: AS923-1 − 6.6 MHz (916.6, 916.8 MHz; RX2 916.6 MHz).
pub static AS923_3: RegionParams = as923(6_600_000);
/// AS923-4: AS923-1 − 5.9 MHz (917.3, 917.5 MHz; RX2 917.3 MHz).
pub static AS923_4: RegionParams = as923(5_900_000);

/// KR920: RP002-1.0.3 §2.11 (922.1, 922.3, 922.5 MHz DR0–5; RX2 921.9 MHz DR0; MaxEIRP
/// 14 dBm; maximum payload §2.11.6).
pub static KR920: RegionParams = RegionParams {
    data_rates: &KR920_DRS,
    max_mac_payload: &[59, 59, 59, 123, 250, 250],
    max_mac_payload_dwell: None,
    layout: ChannelLayout::Dynamic {
        default_hz: &[922_100_000, 922_300_000, 922_500_000],
        default_drs: (0, 5),
        band_hz: (920_900_000, 923_300_000),
    },
    rx1_dr: Rx1DrRule::Table(SUBTRACT_0_5.split_at(6).0),
    max_rx1_dr_offset: 5,
    rx2_frequency_hz: 921_900_000,
    rx2_dr: 0,
    max_eirp_dbm: 14,
    max_tx_power: 7,
    downlink_eirp_dbm: 23,
    tx_param_setup: false,
    boot_dwell_time: NO_DWELL,
    fixed_uplink_dwell: false,
    sub_bands: &[],
    high_power_downlink: None,
};

/// IN865: RP002-1.0.3 §2.12 (865.0625, 865.4025, 865.985 MHz DR0–5; RX2 866.55 MHz DR2;
/// MaxEIRP 30 dBm, TXPower 0..=10; maximum payload §2.12.6).
pub static IN865: RegionParams = RegionParams {
    data_rates: &IN865_DRS,
    max_mac_payload: &[59, 59, 59, 123, 250, 250, 0, 250],
    max_mac_payload_dwell: None,
    layout: ChannelLayout::Dynamic {
        default_hz: &[865_062_500, 865_402_500, 865_985_000],
        default_drs: (0, 5),
        band_hz: (865_000_000, 867_000_000),
    },
    rx1_dr: Rx1DrRule::Table(&IN865_RX1),
    max_rx1_dr_offset: 7,
    rx2_frequency_hz: 866_550_000,
    rx2_dr: 2,
    max_eirp_dbm: 30,
    max_tx_power: 10,
    downlink_eirp_dbm: 30,
    tx_param_setup: false,
    boot_dwell_time: NO_DWELL,
    fixed_uplink_dwell: false,
    sub_bands: &[],
    high_power_downlink: None,
};
