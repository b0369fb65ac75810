//! The radio side of a run: the region (RP002 tables from `protocol::region`), the channels the
//! devices boot with and the gateways listen on, and what follows from them: each data rate's
//! spreading factor and bandwidth, time on air, which settings a run may use.
//!
//! With `--radio realistic` (or `--city`) the radio itself is modelled, each part a pure function
//! of the times and powers passed in: [`transmitter`] (a gateway's one-at-a-time downlinks,
//! queue, deadline and duty cycle), [`duty_cycle`] (the sliding-hour budget per sub-band) and
//! [`reception`] (uplink collisions, capture, a gateway deaf while it transmits).

use protocol::gwmp::DataRate;
use protocol::region::{lora_time_on_air, ChannelPlan, LoraFrame, Region, RegionError};

use crate::sched::Micros;

pub mod bound;
pub mod city;
pub mod duty_cycle;
pub mod reception;
pub mod transmitter;

/// Bytes of a data uplink around its FRMPayload: MHDR 1, FHDR 7 (without FOpts), FPort 1,
/// MIC 4.
pub const DATA_FRAME_OVERHEAD: usize = 13;

/// Time on air of a LoRaWAN uplink in µs (the `protocol` crate's Semtech AN1200.13 formula:
/// CR 4/5, 8-symbol preamble, explicit header, CRC on, LDRO for SF11/SF12 at 125 kHz).
pub fn airtime_us(sf: u8, bw_khz: u16, len: usize) -> Micros {
    lora_time_on_air(&LoraFrame::uplink(sf, u32::from(bw_khz) * 1000, len))
        .map_or(0, |d| d.as_micros() as Micros)
}

/// How the radio is modelled: `--radio realistic` (or `--city`). Without it (the default) every
/// transmission is heard as `--heard-by` and `--loss` say and gateways transmit anything asked.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RadioModel {
    /// Capture margin, dB (`--capture-margin`, default [`reception::DEFAULT_CAPTURE_DB`]).
    pub capture_db: f64,
    /// Whether meters and gateways are placed in a city ([`city`]); otherwise they hear each
    /// other as `--heard-by` says.
    pub city: bool,
    /// The window over which gateways measure their duty cycle.
    pub duty_cycle_window_us: Micros,
}

impl Default for RadioModel {
    fn default() -> Self {
        Self {
            capture_db: reception::DEFAULT_CAPTURE_DB,
            city: false,
            duty_cycle_window_us: duty_cycle::DUTY_CYCLE_WINDOW_US,
        }
    }
}

/// Time on air of a LoRaWAN downlink (no CRC) of `len` bytes at spreading factor `sf` and
/// bandwidth `bw_khz`, µs (0 for an impossible setting).
pub fn downlink_airtime_us(sf: u8, bw_khz: u16, len: usize) -> Micros {
    lora_time_on_air(&LoraFrame::downlink(sf, u32::from(bw_khz) * 1000, len))
        .map_or(0, |d| d.as_micros() as Micros)
}

/// The region of a run and its boot channel plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RadioPlan {
    /// The channels every device starts with. In US915 and AU915 these are the enabled
    /// sub-bands, which the virtual gateways also listen on (an 8-channel gateway hears one
    /// sub-band); elsewhere every gateway hears every channel.
    pub channels: ChannelPlan,
}

impl Default for RadioPlan {
    fn default() -> Self {
        Self::new(Region::Eu868, &[]).expect("EU868 needs no sub-band")
    }
}

impl RadioPlan {
    /// The plan for `region`. `sub_bands` (1..=8) apply to US915 and AU915 only; empty there
    /// means sub-band 2, as most 8-channel gateways are set.
    pub fn new(region: Region, sub_bands: &[u8]) -> Result<Self, RegionError> {
        let channels = match (region.is_fixed_plan(), sub_bands) {
            (true, []) => ChannelPlan::with_sub_bands(region, &[2])?,
            (true, s) => ChannelPlan::with_sub_bands(region, s)?,
            (false, []) => ChannelPlan::new(region),
            (false, [s, ..]) => return Err(RegionError::SubBand(*s)),
        };
        Ok(Self { channels })
    }

    /// The enabled sub-bands (1..=8) of a US915/AU915 plan, each whose first 125 kHz channel
    /// is on; empty in the other regions.
    pub fn sub_bands(&self) -> Vec<u8> {
        if !self.region().is_fixed_plan() {
            return Vec::new();
        }
        (1..=8u8)
            .filter(|s| self.channels.is_enabled(8 * (s - 1)))
            .collect()
    }

    /// The region.
    pub fn region(&self) -> Region {
        self.channels.region()
    }

    /// The fastest 125 kHz LoRa uplink data rate one of the boot channels allows: the default
    /// `--data-rate` (EU868, AU915, AS923, KR920, IN865 DR5 = SF7; US915 DR3 = SF7).
    pub fn default_data_rate(&self) -> u8 {
        (0..16u8)
            .rev()
            .find(|&dr| matches!(self.usable_uplink(dr), Some((_, 125))))
            .unwrap_or(0)
    }

    /// Spreading factor and bandwidth of `dr` if it is a LoRa uplink data rate of the region
    /// that one of the boot channels allows.
    fn usable_uplink(&self, dr: u8) -> Option<(u8, u16)> {
        let uplink = self.region().dr_def(dr).is_ok_and(|d| d.uplink);
        let channel = self.channels.enabled_for_dr(dr).next().is_some();
        self.lora(dr).filter(|_| uplink && channel)
    }

    /// Spreading factor and bandwidth (kHz) of LoRa data rate `dr`; `None` for FSK, LR-FHSS or
    /// an undefined rate.
    pub fn lora(&self, dr: u8) -> Option<(u8, u16)> {
        match self.region().data_rate(dr) {
            Ok(DataRate::Lora {
                spreading_factor,
                bandwidth_khz,
            }) => Some((spreading_factor, bandwidth_khz)),
            _ => None,
        }
    }

    /// Time on air in µs of an uplink of `len` bytes at `dr` (0 if `dr` is not LoRa).
    pub fn airtime_us(&self, dr: u8, len: usize) -> Micros {
        self.lora(dr).map_or(0, |(sf, bw)| airtime_us(sf, bw, len))
    }

    /// Checks that devices can join and report at `dr` with `payload_size`-byte payloads: a
    /// LoRa uplink data rate of the region that a boot channel allows, whose maximum FRMPayload
    /// (under the boot dwell time) holds the payload, and whose frames stay within the dwell
    /// limit where one applies. The error says what is wrong, for the command line.
    pub fn check(&self, dr: u8, payload_size: usize) -> Result<(), String> {
        let r = self.region();
        if self.usable_uplink(dr).is_none() {
            let allowed: Vec<String> = (0..16u8)
                .filter(|&d| self.usable_uplink(d).is_some())
                .map(|d| d.to_string())
                .collect();
            return Err(format!(
                "--data-rate {dr} is not a LoRa uplink data rate of {r} on the enabled channels (allowed: {})",
                allowed.join(", ")
            ));
        }
        let dwell = r.boot_dwell_time();
        let max = r
            .max_payload(dr, dwell.uplink)
            .map_err(|_| format!("DR{dr} is not allowed in {r} under its dwell time"))?;
        if payload_size > usize::from(max.frm_payload) {
            return Err(format!(
                "--payload-size {payload_size} exceeds DR{dr}'s maximum of {} bytes in {r}",
                max.frm_payload
            ));
        }
        if let Some(limit) = r.uplink_dwell_limit(dwell) {
            let air = self.airtime_us(dr, payload_size + DATA_FRAME_OVERHEAD);
            if air > limit.as_micros() as Micros {
                return Err(format!(
                    "a {payload_size}-byte payload at DR{dr} is {air} µs on air, over {r}'s {} ms dwell time",
                    limit.as_millis()
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_and_defaults() {
        let eu = RadioPlan::default();
        assert_eq!(eu.region(), Region::Eu868);
        assert_eq!(eu.default_data_rate(), 5);
        assert_eq!(eu.lora(0), Some((12, 125)));
        assert_eq!(eu.lora(6), Some((7, 250)));
        assert_eq!(eu.lora(7), None, "FSK");
        let us = RadioPlan::new(Region::Us915, &[]).unwrap();
        let on: Vec<u8> = us.channels.enabled().map(|(i, _)| i).collect();
        assert_eq!(
            on,
            [8, 9, 10, 11, 12, 13, 14, 15, 65],
            "sub-band 2 by default"
        );
        assert_eq!(us.default_data_rate(), 3);
        assert_eq!(us.lora(4), Some((8, 500)));
        let au = RadioPlan::new(Region::Au915, &[1, 3]).unwrap();
        assert_eq!(au.channels.enabled().count(), 18);
        assert_eq!(au.default_data_rate(), 5);
        assert_eq!(
            RadioPlan::new(Region::As923_1, &[])
                .unwrap()
                .default_data_rate(),
            5
        );
        assert_eq!(
            RadioPlan::new(Region::Eu868, &[2]),
            Err(RegionError::SubBand(2))
        );
        assert_eq!(
            RadioPlan::new(Region::Us915, &[0]),
            Err(RegionError::SubBand(0))
        );
    }

    #[test]
    fn checks_data_rate_payload_and_dwell_time() {
        let eu = RadioPlan::default();
        assert_eq!(eu.check(5, 12), Ok(()));
        assert_eq!(eu.check(0, 51), Ok(()));
        assert!(eu.check(0, 52).unwrap_err().contains("maximum of 51"));
        assert!(eu.check(7, 12).unwrap_err().contains("not a LoRa uplink"));
        assert!(eu.check(8, 12).is_err(), "LR-FHSS is not modelled");
        let us = RadioPlan::new(Region::Us915, &[2]).unwrap();
        assert_eq!(us.check(3, 12), Ok(()));
        assert_eq!(us.check(4, 12), Ok(()), "SF8/500 kHz on channel 65");
        // US915 DR0 (SF10) carries at most 11 bytes: the FCC's 400 ms dwell time.
        assert!(us.check(0, 12).unwrap_err().contains("maximum of 11"));
        assert_eq!(us.check(0, 11), Ok(()));
        assert!(us.check(8, 12).is_err(), "DR8 is a downlink rate");
        assert!(us.check(5, 12).is_err(), "LR-FHSS");
        // AS923 and AU915 boot with UplinkDwellTime 1: DR0 and DR1 are not allowed.
        let as923 = RadioPlan::new(Region::As923_2, &[]).unwrap();
        assert!(as923.check(1, 10).unwrap_err().contains("dwell"));
        assert_eq!(as923.check(2, 11), Ok(()));
        assert!(as923.check(2, 12).is_err());
        let au = RadioPlan::new(Region::Au915, &[]).unwrap();
        assert!(au.check(0, 10).is_err());
        assert_eq!(au.check(6, 12), Ok(()), "SF8/500 kHz on channel 65");
        // Time on air follows the region's modulation: US915 DR4 is SF8 at 500 kHz.
        assert!(us.airtime_us(4, 13).abs_diff(eu.airtime_us(4, 13) / 4) <= 1);
    }
}
