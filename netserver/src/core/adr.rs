//! The ADR engine, per region: from the SNR of the last uplinks, the data rate and TX power a device
//! should use, as a `LinkADRReq`.
//!
//! The algorithm is the common one (Semtech's recommendation, ChirpStack's default):
//! 1. `snr_max`: the best SNR (over gateways) of each of the last [`HISTORY_LEN`] uplinks, and
//!    the maximum of those;
//! 2. `margin = snr_max − required_snr(current DR) − installation_margin`;
//! 3. `steps = trunc(margin / 3 dB)`;
//! 4. positive steps raise the data rate one step each up to the highest ADR data rate (the
//!    fastest 125 kHz LoRa uplink DR: EU868/AU915/AS923 DR5, US915 DR3), then lower the TX power
//!    (raise the TXPower index) one step each, down to the region's lowest power;
//! 5. negative steps raise the TX power (lower the TXPower index) towards the maximum; the data
//!    rate is never lowered by the network (the device's ADR back-off does that).
//!
//! No decision is made before the history is full, and a request is produced only when it
//! changes something.

use protocol::gwmp::DataRate;
use protocol::mac::MacCommand;
use protocol::region::{self, ChannelPlan, Region};

/// Uplinks the decision looks at.
pub const HISTORY_LEN: usize = 20;

/// The highest data rate ADR moves a device to: the fastest LoRa 125 kHz uplink data rate of
/// the region (EU868 DR5, SF7/125; EU868 DR6 (250 kHz) and US915's 500 kHz DR4 need channels
/// and gateways configured for them).
pub fn max_adr_dr(region: Region) -> u8 {
    (0..16u8)
        .filter(|&dr| region.dr_def(dr).is_ok_and(|d| d.uplink))
        .filter(|&dr| {
            matches!(
                region.data_rate(dr),
                Ok(DataRate::Lora {
                    bandwidth_khz: 125,
                    ..
                })
            )
        })
        .max()
        .unwrap_or(0)
}

/// The lowest TX power the region defines (EU868 TXPower 7: max EIRP − 14 dB; US915 14).
pub fn min_power_index(region: Region) -> u8 {
    region.params().max_tx_power
}
/// dB per step of data rate or TX power.
pub const STEP_DB: f32 = 3.0;

/// ADR settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdrConfig {
    /// Safety margin kept above the demodulation floor, dB (ChirpStack's default: 10).
    pub installation_margin_db: f32,
}

impl Default for AdrConfig {
    fn default() -> Self {
        Self {
            installation_margin_db: 10.0,
        }
    }
}

/// The last uplinks' best SNR: a fixed ring of the last [`HISTORY_LEN`] values, kept in
/// quarter-dB steps as `i8` (−32 to +31.75 dB, wider than any LoRa demodulator reports), so a
/// session's history is 22 bytes inline with no heap allocation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SnrHistory {
    quarter_db: [i8; HISTORY_LEN],
    len: u8,
    next: u8,
}

impl SnrHistory {
    /// Records an uplink's best SNR, rounded to the nearest 0.25 dB and clamped to the range
    /// of the ring (−32 to +31.75 dB). The oldest value is forgotten once the ring is full.
    pub fn push(&mut self, snr: f32) {
        let q = (snr * 4.0)
            .round()
            .clamp(f32::from(i8::MIN), f32::from(i8::MAX)) as i8;
        self.quarter_db[usize::from(self.next)] = q;
        self.next = (self.next + 1) % HISTORY_LEN as u8;
        self.len = (self.len + 1).min(HISTORY_LEN as u8);
    }
    /// Number of uplinks recorded.
    pub fn len(&self) -> usize {
        usize::from(self.len)
    }
    /// Whether nothing is recorded.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Forgets everything (after the device changed its data rate or power).
    pub fn clear(&mut self) {
        *self = Self::default();
    }
    /// The best SNR recorded, dB.
    pub fn max(&self) -> Option<f32> {
        // The first `len` slots are the filled ones (the ring fills from slot 0).
        self.quarter_db[..self.len()]
            .iter()
            .max()
            .map(|&q| f32::from(q) / 4.0)
    }
}

/// What the device currently uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkSettings {
    /// Data rate index of its uplinks.
    pub data_rate: u8,
    /// TXPower index (0 = max EIRP).
    pub tx_power: u8,
}

/// The required SNR (demodulation floor) of an uplink LoRa data rate of `region`, dB (`None`:
/// FSK, LR-FHSS or no such uplink data rate).
pub fn required_snr_db(region: Region, dr: u8) -> Option<f32> {
    if !region.dr_def(dr).is_ok_and(|d| d.uplink) {
        return None;
    }
    let Ok(DataRate::Lora {
        spreading_factor, ..
    }) = region.data_rate(dr)
    else {
        return None;
    };
    region::demod_snr_floor_db(spreading_factor).map(|f| f as f32)
}

/// The settings the device should move to, or `None` (history not full, FSK, or nothing to
/// change).
pub fn decide(
    cfg: &AdrConfig,
    region: Region,
    current: LinkSettings,
    history: &SnrHistory,
) -> Option<LinkSettings> {
    if history.len() < HISTORY_LEN {
        return None;
    }
    let (max_dr, min_power) = (max_adr_dr(region), min_power_index(region));
    let required = required_snr_db(region, current.data_rate)?;
    let margin = history.max()? - required - cfg.installation_margin_db;
    let mut steps = (margin / STEP_DB) as i32; // truncation towards zero
    let mut next = current;
    while steps > 0 && next.data_rate < max_dr {
        next.data_rate += 1;
        steps -= 1;
    }
    while steps > 0 && next.tx_power < min_power {
        next.tx_power += 1;
        steps -= 1;
    }
    while steps < 0 && next.tx_power > 0 {
        next.tx_power -= 1;
        steps += 1;
    }
    (next != current).then_some(next)
}

/// The `LinkADRReq` block for `s` on the network's channel `plan`, NbTrans 1: one command per
/// `(ChMask, ChMaskCntl)` of `ChannelPlan::link_adr_masks` (EU868's default channels: ChMask
/// 0x0007, ChMaskCntl 0; US915 sub-band 2: ChMaskCntl 7 with 500 kHz channel 65, then 0xFF00 in
/// bank 0), each with the same data rate and power, so the device applies them as one block.
pub fn link_adr_req(s: LinkSettings, plan: &ChannelPlan) -> Vec<MacCommand> {
    plan.link_adr_masks()
        .into_iter()
        .map(|(ch_mask, ch_mask_cntl)| MacCommand::LinkADRReq {
            data_rate: s.data_rate,
            tx_power: s.tx_power,
            ch_mask,
            ch_mask_cntl,
            nb_trans: 1,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full(snr: f32) -> SnrHistory {
        let mut h = SnrHistory::default();
        for _ in 0..HISTORY_LEN {
            h.push(snr);
        }
        h
    }

    #[test]
    fn table() {
        let cfg = AdrConfig::default();
        let s = |data_rate, tx_power| LinkSettings {
            data_rate,
            tx_power,
        };
        // (current, best SNR of the last 20, expected)
        let cases: &[(LinkSettings, f32, Option<LinkSettings>)] = &[
            // DR0 needs −20 dB: +10 dB SNR is 30 above, 20 over the margin → 6 steps:
            // 5 data-rate steps to DR5, then 1 power step.
            (s(0, 0), 10.0, Some(s(5, 1))),
            // DR5 needs −7.5: 5 dB → margin 2.5 → 0 steps.
            (s(5, 0), 5.0, None),
            // DR5, 8.5 dB → margin 6 → 2 power steps.
            (s(5, 0), 8.5, Some(s(5, 2))),
            // DR5 at the lowest power already: nothing left to do.
            (s(5, 7), 30.0, None),
            // Power limited at index 7.
            (s(5, 5), 30.0, Some(s(5, 7))),
            // DR3 (−12.5), SNR −2: margin 0.5 → 0 steps.
            (s(3, 0), -2.0, None),
            // DR3, SNR 1.0: margin 3.5 → 1 step → DR4.
            (s(3, 0), 1.0, Some(s(4, 0))),
            // Negative margin raises power (lower index), never lowers the DR.
            (s(5, 3), -6.5, Some(s(5, 0))), // margin −9 → −3 steps
            (s(5, 1), -20.0, Some(s(5, 0))),
            (s(2, 0), -30.0, None),
            // −2.4 dB of margin truncates to 0 steps.
            (s(5, 2), 0.1, None),
            // FSK (DR7) is left alone.
            (s(7, 0), 20.0, None),
        ];
        for (cur, snr, want) in cases {
            assert_eq!(
                decide(&cfg, Region::Eu868, *cur, &full(*snr)),
                *want,
                "{cur:?} with {snr} dB"
            );
        }
    }

    #[test]
    fn limits_per_region() {
        // RP002-1.0.3: EU868 DR5 = SF7BW125 (DR6 is 250 kHz), TXPower 0..7; US915 DR3 = SF7BW125
        // (DR4 is SF8BW500), TXPower 0..14; AU915 DR5 = SF7BW125; AS923 DR5, TXPower 0..7.
        let rows = [
            (Region::Eu868, 5, 7),
            (Region::Us915, 3, 14),
            (Region::Au915, 5, 14),
            (Region::As923_1, 5, 7),
        ];
        for (r, dr, power) in rows {
            assert_eq!((max_adr_dr(r), min_power_index(r)), (dr, power), "{r}");
        }
        // US915 DR0 is SF10 (−15 dB); DR4 SF8 at 500 kHz (−10 dB); DR5 is LR-FHSS.
        assert_eq!(required_snr_db(Region::Us915, 0), Some(-15.0));
        assert_eq!(required_snr_db(Region::Us915, 4), Some(-10.0));
        assert_eq!(required_snr_db(Region::Us915, 5), None);
        // DR8 is a downlink-only data rate in US915.
        assert_eq!(required_snr_db(Region::Us915, 8), None);
    }

    #[test]
    fn us915_stops_at_dr3_and_walks_power_down_to_14() {
        let cfg = AdrConfig::default();
        let s = |data_rate, tx_power| LinkSettings {
            data_rate,
            tx_power,
        };
        // DR0 (−15 dB), +10 dB SNR: margin 15 → 5 steps: DR3, then 2 power steps.
        assert_eq!(
            decide(&cfg, Region::Us915, s(0, 0), &full(10.0)),
            Some(s(3, 2))
        );
        // 31.75 dB (the history's top) at DR3 (−7.5): 9 steps, power down to index 14, past
        // EU868's 7.
        assert_eq!(
            decide(&cfg, Region::Us915, s(3, 5), &full(31.75)),
            Some(s(3, 14))
        );
        assert_eq!(
            decide(&cfg, Region::Eu868, s(5, 5), &full(31.75)),
            Some(s(5, 7))
        );
    }

    #[test]
    fn link_adr_req_carries_the_plans_masks() {
        let next = LinkSettings {
            data_rate: 3,
            tx_power: 2,
        };
        let req = |ch_mask, ch_mask_cntl| MacCommand::LinkADRReq {
            data_rate: 3,
            tx_power: 2,
            ch_mask,
            ch_mask_cntl,
            nb_trans: 1,
        };
        let eu868 = ChannelPlan::new(Region::Eu868);
        assert_eq!(link_adr_req(next, &eu868), vec![req(0x0007, 0)]);
        // US915 sub-band 2: all 125 kHz off with 500 kHz channel 65 on, then channels 8–15.
        let us915 = ChannelPlan::with_sub_bands(Region::Us915, &[2]).unwrap();
        assert_eq!(
            link_adr_req(next, &us915),
            vec![req(0x0002, 7), req(0xFF00, 0)]
        );
        // The device side of the plan applies the block and lands on sub-band 2.
        let mut device = ChannelPlan::new(Region::Us915);
        device.apply_link_adr(&us915.link_adr_masks()).unwrap();
        assert_eq!(device, us915);
    }

    #[test]
    fn needs_a_full_history_and_uses_the_best_of_the_last_20() {
        let cfg = AdrConfig::default();
        let cur = LinkSettings {
            data_rate: 0,
            tx_power: 0,
        };
        let mut h = SnrHistory::default();
        for _ in 0..HISTORY_LEN - 1 {
            h.push(-20.0);
        }
        assert_eq!(
            decide(&cfg, Region::Eu868, cur, &h),
            None,
            "19 uplinks are not enough"
        );
        h.push(-5.0); // margin −5 + 20 − 10 = 5 → 1 step
        assert_eq!(
            decide(&cfg, Region::Eu868, cur, &h),
            Some(LinkSettings {
                data_rate: 1,
                tx_power: 0
            })
        );
        // 20 more weak uplinks push the good one out.
        for _ in 0..HISTORY_LEN {
            h.push(-20.0);
        }
        assert_eq!(h.len(), HISTORY_LEN);
        assert_eq!(decide(&cfg, Region::Eu868, cur, &h), None);
    }

    #[test]
    fn history_is_a_quarter_db_ring() {
        let mut h = SnrHistory::default();
        assert_eq!((h.len(), h.max()), (0, None));
        h.push(-7.3);
        assert_eq!(h.max(), Some(-7.25), "rounded to 0.25 dB");
        h.push(99.0);
        assert_eq!(h.max(), Some(31.75), "clamped");
        h.push(-99.0);
        for _ in 0..HISTORY_LEN - 1 {
            h.push(-40.0);
        }
        assert_eq!(h.len(), HISTORY_LEN);
        assert_eq!(h.max(), Some(-32.0), "the 31.75 was pushed out");
        h.clear();
        assert!(h.is_empty());
        assert_eq!(size_of::<SnrHistory>(), HISTORY_LEN + 2);
    }

    #[test]
    fn request_on_default_channels() {
        let settings = LinkSettings {
            data_rate: 5,
            tx_power: 2,
        };
        let req = link_adr_req(settings, &ChannelPlan::new(Region::Eu868));
        assert_eq!(
            protocol::mac::encode(protocol::data::Direction::Downlink, &req).unwrap(),
            vec![0x03, 0x52, 0x07, 0x00, 0x01]
        );
        // US915 sub-band 2, DR3: two commands, ChMaskCntl 7 (bits 4–6 of Redundancy) then 0.
        let settings = LinkSettings {
            data_rate: 3,
            tx_power: 2,
        };
        let us915 = ChannelPlan::with_sub_bands(Region::Us915, &[2]).unwrap();
        assert_eq!(
            protocol::mac::encode(
                protocol::data::Direction::Downlink,
                &link_adr_req(settings, &us915)
            )
            .unwrap(),
            vec![0x03, 0x32, 0x02, 0x00, 0x71, 0x03, 0x32, 0x00, 0xFF, 0x01]
        );
    }
}
