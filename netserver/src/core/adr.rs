//! The ADR engine (EU868): from the SNR of the last uplinks, the data rate and TX power a device
//! should use, as a `LinkADRReq`.
//!
//! The algorithm is the common one (Semtech's recommendation, ChirpStack's default):
//! 1. `snr_max`: the best SNR (over gateways) of each of the last [`HISTORY_LEN`] uplinks, and
//!    the maximum of those;
//! 2. `margin = snr_max − required_snr(current DR) − installation_margin`;
//! 3. `steps = trunc(margin / 3 dB)`;
//! 4. positive steps raise the data rate one step each up to the highest ADR data rate (DR5),
//!    then lower the TX power (raise the TXPower index) one step each, down to the lowest power;
//! 5. negative steps raise the TX power (lower the TXPower index) towards the maximum; the data
//!    rate is never lowered by the network (the device's ADR back-off does that).
//!
//! No decision is made before the history is full, and a request is produced only when it
//! changes something.

use protocol::mac::MacCommand;
use protocol::region;

/// Uplinks the decision looks at.
pub const HISTORY_LEN: usize = 20;
/// The highest data rate ADR moves a device to (EU868 DR5, SF7/125; DR6/DR7 need channels and
/// gateways configured for them).
pub const MAX_ADR_DR: u8 = 5;
/// The lowest EU868 TX power index (TXPower 7: max EIRP − 14 dB).
pub const MIN_POWER_INDEX: u8 = 7;
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

/// The required SNR (demodulation floor) of an EU868 LoRa data rate, dB.
pub fn required_snr_db(dr: u8) -> Option<f32> {
    let sf = match dr {
        0..=5 => 12 - dr,
        6 => 7,
        _ => return None,
    };
    region::demod_snr_floor_db(sf).map(|f| f as f32)
}

/// The settings the device should move to, or `None` (history not full, FSK, or nothing to
/// change).
pub fn decide(
    cfg: &AdrConfig,
    current: LinkSettings,
    history: &SnrHistory,
) -> Option<LinkSettings> {
    if history.len() < HISTORY_LEN {
        return None;
    }
    let required = required_snr_db(current.data_rate)?;
    let margin = history.max()? - required - cfg.installation_margin_db;
    let mut steps = (margin / STEP_DB) as i32; // truncation towards zero
    let mut next = current;
    while steps > 0 && next.data_rate < MAX_ADR_DR {
        next.data_rate += 1;
        steps -= 1;
    }
    while steps > 0 && next.tx_power < MIN_POWER_INDEX {
        next.tx_power += 1;
        steps -= 1;
    }
    while steps < 0 && next.tx_power > 0 {
        next.tx_power -= 1;
        steps += 1;
    }
    (next != current).then_some(next)
}

/// The `LinkADRReq` for `s` on the three EU868 default channels (ChMask 0x0007, ChMaskCntl 0),
/// NbTrans 1.
pub fn link_adr_req(s: LinkSettings) -> MacCommand {
    MacCommand::LinkADRReq {
        data_rate: s.data_rate,
        tx_power: s.tx_power,
        ch_mask: 0x0007,
        ch_mask_cntl: 0,
        nb_trans: 1,
    }
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
                decide(&cfg, *cur, &full(*snr)),
                *want,
                "{cur:?} with {snr} dB"
            );
        }
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
        assert_eq!(decide(&cfg, cur, &h), None, "19 uplinks are not enough");
        h.push(-5.0); // margin −5 + 20 − 10 = 5 → 1 step
        assert_eq!(
            decide(&cfg, cur, &h),
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
        assert_eq!(decide(&cfg, cur, &h), None);
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
        let req = link_adr_req(LinkSettings {
            data_rate: 5,
            tx_power: 2,
        });
        assert_eq!(
            protocol::mac::encode(protocol::data::Direction::Downlink, &[req]).unwrap(),
            vec![0x03, 0x52, 0x07, 0x00, 0x01]
        );
    }
}
