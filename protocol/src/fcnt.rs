//! Frame counters (protocol-notes A.8): inferring the 32-bit counter from the 16 bits on air,
//! and deciding whether a received counter is acceptable.
//!
//! The network server's order of steps for an uplink:
//! 1. [`infer_fcnt`] (inside [`check_fcnt`]) gives the full counter to check the MIC with;
//! 2. the MIC is checked with that counter ([`crate::data::DataFrame::open_uplink`]);
//! 3. the [`FCntVerdict`] says whether this is a new frame or an NbTrans repeat of the last one;
//!    only a [`FCntVerdict::New`] frame advances the stored counter.
//!
//! Step 1 and 3 are one call, [`check_fcnt`], made before the MIC check; the verdict is acted on
//! only after the MIC validated.

use crate::version::MacVersion;

/// MAX_FCNT_GAP of LoRaWAN 1.0.0–1.0.3: a counter that jumps by this much or more is refused.
/// Removed in 1.0.4 and 1.1.
pub const MAX_FCNT_GAP: u32 = 16384;

/// The full 32-bit counter for a received 16-bit FCnt, given the next expected counter
/// (last accepted + 1, or 0 after a join). ChirpStack's `get_full_f_cnt_up`:
/// - `fcnt16 == (next − 1) mod 2^16` → `next − 1` (a retransmission of the last frame);
/// - otherwise → `next + ((fcnt16 − next) mod 2^16)`, mod 2^32.
pub const fn infer_fcnt(next_expected: u32, fcnt16: u16) -> u32 {
    let next_lsb = next_expected as u16;
    if fcnt16 == next_lsb.wrapping_sub(1) {
        next_expected.wrapping_sub(1)
    } else {
        next_expected.wrapping_add(fcnt16.wrapping_sub(next_lsb) as u32)
    }
}

/// A received counter that may be accepted once the MIC checks out with [`fcnt`](Self::fcnt).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum FCntVerdict {
    /// A new frame: store `fcnt` as the last accepted counter.
    New {
        /// The full 32-bit counter.
        fcnt: u32,
        /// How many counter values were skipped since the last accepted one (frames lost or
        /// never sent).
        skipped: u32,
    },
    /// The same counter as the last accepted frame: an NbTrans retransmission (or another copy).
    /// Do not deliver it again or advance the counter.
    Retransmission {
        /// The full 32-bit counter, equal to the last accepted one.
        fcnt: u32,
    },
}

impl FCntVerdict {
    /// The full 32-bit counter to check the MIC with.
    pub const fn fcnt(self) -> u32 {
        match self {
            Self::New { fcnt, .. } | Self::Retransmission { fcnt } => fcnt,
        }
    }
}

/// Why a received counter is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FCntError {
    /// The counter is lower than the last accepted one (after inference, only possible when
    /// the 32-bit counter would wrap): a replay, dropped without resynchronising.
    #[error("frame counter {fcnt} is not above the last accepted {last}")]
    Replay {
        /// The inferred counter.
        fcnt: u32,
        /// The last accepted counter.
        last: u32,
    },
    /// LoRaWAN ≤ 1.0.3: the counter jumped by MAX_FCNT_GAP or more.
    #[error("frame counter {fcnt} is {gap} past the last accepted, MAX_FCNT_GAP is 16384")]
    GapTooLarge {
        /// The inferred counter.
        fcnt: u32,
        /// The increment over the last accepted counter (over −1 when none was accepted yet).
        gap: u32,
    },
}

impl FCntError {
    /// A short stable label, for metrics.
    pub const fn kind(&self) -> &'static str {
        match self {
            Self::Replay { .. } => "replay",
            Self::GapTooLarge { .. } => "fcnt_gap_too_large",
        }
    }
}

/// Infers the full counter of a received frame and decides whether it may be accepted.
///
/// `last_accepted` is the last accepted full counter, `None` when nothing was accepted since
/// the session started (OTAA: counters start at 0 after each Join-accept).
/// - equal to the last accepted → [`FCntVerdict::Retransmission`];
/// - lower (only when the 32-bit counter wraps) → [`FCntError::Replay`];
/// - for `version.has_max_fcnt_gap()` (≤ 1.0.3), an increment of [`MAX_FCNT_GAP`] or more →
///   [`FCntError::GapTooLarge`]; 1.0.4 and 1.1 rely on the MIC alone (protocol-notes A.8).
///
/// A frame replayed with an older 16-bit FCnt is inferred far ahead (a large gap), so it is
/// refused here up to 1.0.3 and by the MIC check (made with the inferred counter) from 1.0.4.
///
/// 16-bit counters (a 1.0.2 option agreed out of band) are not supported: counters are 32-bit.
pub fn check_fcnt(
    version: MacVersion,
    last_accepted: Option<u32>,
    fcnt16: u16,
) -> Result<FCntVerdict, FCntError> {
    let next = match last_accepted {
        Some(last) => last.wrapping_add(1),
        None => 0,
    };
    let fcnt = infer_fcnt(next, fcnt16);
    let Some(last) = last_accepted else {
        // Nothing accepted yet: the increment is counted from a virtual −1.
        return gap_check(version, fcnt, fcnt.wrapping_add(1));
    };
    if fcnt == last {
        return Ok(FCntVerdict::Retransmission { fcnt });
    }
    if fcnt < last {
        return Err(FCntError::Replay { fcnt, last });
    }
    gap_check(version, fcnt, fcnt - last)
}

fn gap_check(version: MacVersion, fcnt: u32, gap: u32) -> Result<FCntVerdict, FCntError> {
    if version.has_max_fcnt_gap() && gap >= MAX_FCNT_GAP {
        return Err(FCntError::GapTooLarge { fcnt, gap });
    }
    Ok(FCntVerdict::New {
        fcnt,
        skipped: gap - 1,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use MacVersion::{V1_0_2, V1_0_3, V1_0_4, V1_1};

    /// Every `fcnt_inference` vector of data_frames.json (ChirpStack `test_get_full_f_cnt_up`),
    /// plus edge cases.
    #[test]
    fn inference_table() {
        let table: &[(u32, u16, u32)] = &[
            (1, 1, 1),
            (65536, 0, 65536),
            (65537, 1, 65537),
            (0, 1, 1),
            (65537, 2, 65538),
            (2, 1, 1),
            (65537, 0, 65536),
            (65536, 65535, 65535),
            (u32::MAX, 0, 0),
            // Extra: nothing received yet; a big jump; a repeat at 0.
            (0, 0, 0),
            (0, 65535, u32::MAX),
            (10, 9, 9),
            (10, 8, 65544),
            (0x0001_FFFF, 0xFFFE, 0x0001_FFFE),
        ];
        for &(next, f16, want) in table {
            assert_eq!(infer_fcnt(next, f16), want, "next {next} fcnt16 {f16}");
        }
    }

    #[test]
    fn verdicts() {
        // First frame after a join.
        assert_eq!(
            check_fcnt(V1_0_3, None, 0),
            Ok(FCntVerdict::New {
                fcnt: 0,
                skipped: 0
            })
        );
        assert_eq!(
            check_fcnt(V1_1, None, 5),
            Ok(FCntVerdict::New {
                fcnt: 5,
                skipped: 5
            })
        );
        // Next frame, one lost, across the 16-bit rollover.
        assert_eq!(
            check_fcnt(V1_0_2, Some(65534), 0),
            Ok(FCntVerdict::New {
                fcnt: 65536,
                skipped: 1
            })
        );
        // NbTrans repeat of the last frame.
        assert_eq!(
            check_fcnt(V1_0_4, Some(70000), 70000u32 as u16),
            Ok(FCntVerdict::Retransmission { fcnt: 70000 })
        );
        assert_eq!(
            check_fcnt(V1_0_3, Some(0), 0),
            Ok(FCntVerdict::Retransmission { fcnt: 0 })
        );
        // An older frame is inferred 65536 ahead: refused by the gap up to 1.0.3 ...
        assert_eq!(
            check_fcnt(V1_0_3, Some(100), 50),
            Err(FCntError::GapTooLarge {
                fcnt: 65586,
                gap: 65486
            })
        );
        // ... and left to the MIC from 1.0.4 (the inferred counter will not verify).
        assert_eq!(check_fcnt(V1_1, Some(100), 50).unwrap().fcnt(), 65586);
        // MAX_FCNT_GAP boundary: gap 16383 accepted, 16384 refused (≤ 1.0.3 only).
        assert!(check_fcnt(V1_0_2, Some(1000), 1000 + 16383).is_ok());
        let e = check_fcnt(V1_0_2, Some(1000), 1000 + 16384).unwrap_err();
        assert_eq!(e.kind(), "fcnt_gap_too_large");
        assert!(check_fcnt(V1_0_4, Some(1000), 1000 + 16384).is_ok());
        assert!(check_fcnt(V1_0_2, None, 16382).is_ok());
        assert!(check_fcnt(V1_0_2, None, 16383).is_err());
        // 32-bit wrap: the counter must not go round; the session needs a rejoin.
        let e = check_fcnt(V1_1, Some(u32::MAX - 1), 0).unwrap_err();
        assert_eq!(
            e,
            FCntError::Replay {
                fcnt: 0,
                last: u32::MAX - 1
            }
        );
        assert_eq!(e.kind(), "replay");
        assert_eq!(
            check_fcnt(V1_1, Some(u32::MAX), u16::MAX),
            Ok(FCntVerdict::Retransmission { fcnt: u32::MAX })
        );
        assert!(check_fcnt(V1_1, Some(u32::MAX), 0).is_err());
    }
}
