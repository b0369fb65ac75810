//! [`ChannelPlan`]: the uplink channels one device may use, as the device keeps them and as the
//! network server mirrors them. It applies what the network sends: the Join-accept's CFList
//! (frequencies in EU868-like regions, a channel mask in US915 and AU915), LinkADRReq channel
//! masks with the region's ChMaskCntl semantics, and NewChannelReq. It also builds them, and
//! answers which channel index a frequency is (TxCh of the 1.1 uplink MIC).

use super::regional::Region;
use super::tables::ChannelLayout;
use super::RegionError;
use crate::join::CfList;

/// Channels in a dynamic plan (RP002: at most 16).
const DYNAMIC_CHANNELS: usize = 16;
/// Channels in a fixed plan (64 × 125 kHz + 8 × 500 kHz).
const FIXED_CHANNELS: u8 = 72;

/// What a dynamic plan's layout says about channels.
struct DynamicLayout {
    /// Number of default channels.
    defaults: usize,
    /// Data-rate range of default and CFList channels.
    drs: (u8, u8),
    /// The band a channel frequency must lie in, `[low, high)`.
    band_hz: (u32, u32),
}

/// One uplink channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Channel {
    /// Centre frequency, Hz.
    pub frequency_hz: u32,
    /// Lowest data rate.
    pub min_dr: u8,
    /// Highest data rate.
    pub max_dr: u8,
}

impl Channel {
    /// Whether the channel allows data rate `dr`.
    pub fn allows(&self, dr: u8) -> bool {
        (self.min_dr..=self.max_dr).contains(&dr)
    }
}

/// The uplink channels of one device: which exist and which are enabled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChannelPlan {
    region: Region,
    /// Dynamic plans: channel frequency (0 = not defined) and data-rate range per index.
    defined: [(u32, u8, u8); DYNAMIC_CHANNELS],
    /// Bit i: channel i enabled.
    enabled: u128,
}

impl ChannelPlan {
    /// The plan a device starts with: the default channels of a dynamic region, all 72 channels
    /// of a fixed one.
    pub fn new(region: Region) -> Self {
        let mut defined = [(0, 0, 0); DYNAMIC_CHANNELS];
        let enabled = match region.params().layout {
            ChannelLayout::Dynamic {
                default_hz,
                default_drs,
                ..
            } => {
                for (d, &f) in defined.iter_mut().zip(default_hz) {
                    *d = (f, default_drs.0, default_drs.1);
                }
                (1u128 << default_hz.len()) - 1
            }
            ChannelLayout::Fixed { .. } => (1u128 << FIXED_CHANNELS) - 1,
        };
        Self {
            region,
            defined,
            enabled,
        }
    }

    /// A fixed plan with only the given sub-bands (1..=8) enabled: each is eight 125 kHz
    /// channels 8·(s−1)…8·s−1 and the 500 kHz channel 64 + s − 1, what an 8-channel gateway
    /// hears. Refused for dynamic regions and for sub-bands outside 1..=8.
    pub fn with_sub_bands(region: Region, sub_bands: &[u8]) -> Result<Self, RegionError> {
        if !region.is_fixed_plan() {
            return Err(RegionError::SubBand(
                sub_bands.first().copied().unwrap_or(0),
            ));
        }
        let mut plan = Self::new(region);
        plan.enabled = 0;
        for &s in sub_bands {
            if !(1..=8).contains(&s) {
                return Err(RegionError::SubBand(s));
            }
            plan.enabled |= 0xFFu128 << (8 * (s - 1)) | 1u128 << (64 + s - 1);
        }
        if plan.enabled == 0 {
            return Err(RegionError::SubBand(0));
        }
        Ok(plan)
    }

    /// The region.
    pub fn region(&self) -> Region {
        self.region
    }

    /// Channel `index`, if it is defined (enabled or not).
    pub fn channel(&self, index: u8) -> Option<Channel> {
        match self.region.params().layout {
            ChannelLayout::Dynamic { .. } => {
                let &(f, min_dr, max_dr) = self.defined.get(usize::from(index))?;
                (f != 0).then_some(Channel {
                    frequency_hz: f,
                    min_dr,
                    max_dr,
                })
            }
            ChannelLayout::Fixed { bw125, bw500, .. } => [bw125, bw500].iter().find_map(|b| {
                b.frequency(index).map(|f| Channel {
                    frequency_hz: f,
                    min_dr: b.min_dr,
                    max_dr: b.max_dr,
                })
            }),
        }
    }

    fn channel_count(&self) -> u8 {
        if self.region.is_fixed_plan() {
            FIXED_CHANNELS
        } else {
            DYNAMIC_CHANNELS as u8
        }
    }

    /// Whether channel `index` is defined and enabled.
    pub fn is_enabled(&self, index: u8) -> bool {
        index < 128 && self.enabled >> index & 1 == 1 && self.channel(index).is_some()
    }

    /// The enabled channels, by index.
    pub fn enabled(&self) -> impl Iterator<Item = (u8, Channel)> + '_ {
        (0..self.channel_count())
            .filter(|&i| self.is_enabled(i))
            .filter_map(|i| self.channel(i).map(|c| (i, c)))
    }

    /// The enabled channels that allow data rate `dr`.
    pub fn enabled_for_dr(&self, dr: u8) -> impl Iterator<Item = (u8, Channel)> + '_ {
        self.enabled().filter(move |(_, c)| c.allows(dr))
    }

    /// The index of the defined channel on `freq_hz` (LoRaWAN 1.1's TxCh).
    pub fn index_of(&self, freq_hz: u32) -> Option<u8> {
        (0..self.channel_count())
            .find(|&i| self.channel(i).is_some_and(|c| c.frequency_hz == freq_hz))
    }

    /// The enabled-channel bitmap (bit i: channel i).
    pub fn enabled_mask(&self) -> u128 {
        self.enabled
    }

    fn dynamic_layout(&self) -> Option<DynamicLayout> {
        match self.region.params().layout {
            ChannelLayout::Dynamic {
                default_hz,
                default_drs,
                band_hz,
            } => Some(DynamicLayout {
                defaults: default_hz.len(),
                drs: default_drs,
                band_hz,
            }),
            ChannelLayout::Fixed { .. } => None,
        }
    }

    /// NewChannelReq: defines (or with frequency 0 removes) channel `index`. The default
    /// channels cannot be changed; the frequency must lie in the region's band. Dynamic regions
    /// only.
    pub fn set_channel(
        &mut self,
        index: u8,
        frequency_hz: u32,
        min_dr: u8,
        max_dr: u8,
    ) -> Result<(), RegionError> {
        let layout = self
            .dynamic_layout()
            .ok_or(RegionError::ChannelIndex(index))?;
        let (band, i) = (layout.band_hz, usize::from(index));
        if i < layout.defaults || i >= DYNAMIC_CHANNELS {
            return Err(RegionError::ChannelIndex(index));
        }
        if frequency_hz == 0 {
            self.defined[i] = (0, 0, 0);
            self.enabled &= !(1u128 << i);
            return Ok(());
        }
        if !(band.0..band.1).contains(&frequency_hz) {
            return Err(RegionError::Frequency(frequency_hz));
        }
        if min_dr > max_dr || self.region.dr_def(max_dr).is_err() {
            return Err(RegionError::DataRate(max_dr));
        }
        self.defined[i] = (frequency_hz, min_dr, max_dr);
        self.enabled |= 1u128 << i;
        Ok(())
    }

    /// Applies a Join-accept's CFList: type 0 defines channels after the defaults (EU868: 3–7,
    /// AS923: 2–6) with the default data-rate range; type 1 replaces the channel mask of a fixed
    /// plan (ChMask0–ChMask4 = channels 0–79, 72–79 must be off). A CFList of the other type,
    /// an out-of-band frequency or a mask without a channel is refused and nothing changes.
    pub fn apply_cf_list(&mut self, cf_list: &CfList) -> Result<(), RegionError> {
        let mut next = *self;
        match self.dynamic_layout() {
            Some(DynamicLayout {
                defaults,
                drs: (min_dr, max_dr),
                ..
            }) => {
                let freqs = cf_list
                    .frequencies_hz()
                    .ok_or(RegionError::CfListType(cf_list.cf_list_type()))?;
                for (k, f) in freqs.into_iter().enumerate() {
                    next.set_channel((defaults + k) as u8, f, min_dr, max_dr)?;
                }
            }
            None => {
                let masks = cf_list
                    .channel_masks()
                    .ok_or(RegionError::CfListType(cf_list.cf_list_type()))?;
                let bits = masks
                    .iter()
                    .enumerate()
                    .fold(0u128, |acc, (k, &m)| acc | u128::from(m) << (16 * k));
                if bits >> FIXED_CHANNELS != 0 || bits == 0 {
                    return Err(RegionError::ChannelMask);
                }
                next.enabled = bits;
            }
        }
        *self = next;
        Ok(())
    }

    /// The CFList that gives a device this plan: the frequencies of the channels after the
    /// defaults (dynamic regions; `None` if there are none), or the channel mask (fixed plans).
    pub fn cf_list(&self) -> Option<CfList> {
        match self.dynamic_layout() {
            Some(DynamicLayout { defaults, .. }) => {
                let mut freqs = [0u32; 5];
                for (k, f) in freqs.iter_mut().enumerate() {
                    *f = self.defined.get(defaults + k).map_or(0, |d| d.0);
                }
                if freqs.iter().all(|&f| f == 0) {
                    return None;
                }
                CfList::from_frequencies_hz(freqs)
            }
            None => {
                let mut masks = [0u16; 5];
                for (k, m) in masks.iter_mut().enumerate() {
                    *m = (self.enabled >> (16 * k)) as u16;
                }
                Some(CfList::from_channel_masks(masks))
            }
        }
    }

    /// Applies the channel masks of one LinkADRReq block (`(ChMask, ChMaskCntl)` in order), as
    /// RP002 defines them for the region; on any error (an RFU ChMaskCntl, a mask that enables
    /// an undefined channel, no channel left) nothing changes and the device answers Channel
    /// mask ACK = 0.
    pub fn apply_link_adr(&mut self, masks: &[(u16, u8)]) -> Result<(), RegionError> {
        let mut bits = self.enabled;
        let fixed = self.region.is_fixed_plan();
        for &(mask, cntl) in masks {
            let m = u128::from(mask);
            bits = match (fixed, cntl) {
                (false, 0) => {
                    if (0..16).any(|i| m >> i & 1 == 1 && self.channel(i).is_none()) {
                        return Err(RegionError::ChannelMask);
                    }
                    m
                }
                (false, 6) => (0..16)
                    .filter(|&i| self.channel(i).is_some())
                    .fold(0, |acc, i| acc | 1 << i),
                (true, 0..=3) => bits & !(0xFFFF << (16 * cntl)) | m << (16 * cntl),
                (true, 4) if mask >> 8 == 0 => bits & ((1 << 64) - 1) | m << 64,
                (true, 5) if mask >> 8 == 0 => (0..8u32)
                    .filter(|b| mask >> b & 1 == 1)
                    .fold(0, |acc, b| acc | 0xFFu128 << (8 * b) | 1 << (64 + b)),
                (true, 6 | 7) if mask >> 8 == 0 => {
                    let all125 = if cntl == 6 { (1u128 << 64) - 1 } else { 0 };
                    all125 | m << 64
                }
                _ => return Err(RegionError::ChannelMask),
            };
        }
        if bits == 0 || (0..self.channel_count()).all(|i| bits >> i & 1 == 0) {
            return Err(RegionError::ChannelMask);
        }
        self.enabled = bits;
        Ok(())
    }

    /// The `(ChMask, ChMaskCntl)` block of LinkADRReqs that sets a device to exactly this
    /// plan's enabled channels, whatever it had: dynamic regions one command with ChMaskCntl 0;
    /// fixed plans ChMaskCntl 7 (all 125 kHz off, ChMask for 64–71), then ChMaskCntl 0–3 for
    /// each block of 16 that has an enabled channel. ChMaskCntl 5 (banks) is not used, since
    /// devices of the Regional Parameters before RP002 do not know it.
    pub fn link_adr_masks(&self) -> Vec<(u16, u8)> {
        if !self.region.is_fixed_plan() {
            return vec![(self.enabled as u16, 0)];
        }
        let mut out = vec![((self.enabled >> 64) as u16 & 0xFF, 7)];
        for n in 0..4u8 {
            let m = (self.enabled >> (16 * n)) as u16;
            if m != 0 {
                out.push((m, n));
            }
        }
        out
    }
}
