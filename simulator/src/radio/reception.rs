//! What one gateway hears: uplinks that overlap in time on the same channel and spreading factor
//! collide. The stronger one survives when it is at least the capture margin above every frame it
//! overlaps (the capture effect; 6 dB by default, the co-channel rejection usually quoted for
//! LoRa at one spreading factor); otherwise all of them are lost. A gateway that transmits during
//! any part of an uplink does not hear it (half duplex). Frames of different spreading factors or
//! channels do not interfere (LoRa spreading factors are quasi-orthogonal).
//!
//! A frame is judged when it ends; by then every frame that overlaps it has started, so the
//! caller registers each frame at its start ([`Air::add`]) and asks at its end ([`Air::judge`]).

use crate::sched::Micros;

/// Default capture margin, dB.
pub const DEFAULT_CAPTURE_DB: f64 = 6.0;
/// How long frames are remembered after their end: longer than any LoRaWAN frame (2.8 s at
/// SF12), so a frame still on air finds every frame it overlapped.
const HISTORY_US: Micros = 5_000_000;

/// One uplink as a gateway receives it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Heard {
    /// Identifies the frame (the caller's choice, unique among frames on air).
    pub id: u64,
    /// First instant on air.
    pub start: Micros,
    /// Last instant on air (exclusive).
    pub end: Micros,
    /// Channel frequency, Hz.
    pub freq_hz: u32,
    /// Spreading factor.
    pub sf: u8,
    /// Received power, dBm.
    pub rssi_dbm: f64,
}

impl Heard {
    fn overlaps(&self, o: &Heard) -> bool {
        self.start < o.end && o.start < self.end && self.freq_hz == o.freq_hz && self.sf == o.sf
    }
}

/// How a frame ended at one gateway.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Demodulated.
    Received,
    /// Lost to another frame (no capture).
    Collided,
    /// Lost: the gateway was transmitting.
    Deaf,
}

/// The uplinks on air around one gateway.
#[derive(Clone, Debug, Default)]
pub struct Air {
    frames: Vec<Heard>,
}

impl Air {
    /// A frame starts (at `h.start`, which is now).
    pub fn add(&mut self, h: Heard) {
        let keep_from = h.start.saturating_sub(HISTORY_US);
        self.frames.retain(|f| f.end > keep_from);
        self.frames.push(h);
    }

    /// The fate of frame `id`, which has ended, given the capture margin in dB and whether the
    /// gateway transmitted during it. `None` if the frame is unknown.
    pub fn judge(&self, id: u64, capture_db: f64, transmitting: bool) -> Option<Outcome> {
        let me = self.frames.iter().find(|f| f.id == id)?;
        if transmitting {
            return Some(Outcome::Deaf);
        }
        let captured = self
            .frames
            .iter()
            .filter(|o| o.id != id && me.overlaps(o))
            .all(|o| me.rssi_dbm - o.rssi_dbm >= capture_db);
        Some(if captured {
            Outcome::Received
        } else {
            Outcome::Collided
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Micros = 1_000;

    fn frame(id: u64, start: Micros, airtime: Micros, sf: u8, rssi: f64) -> Heard {
        Heard {
            id,
            start,
            end: start + airtime,
            freq_hz: 868_100_000,
            sf,
            rssi_dbm: rssi,
        }
    }

    #[test]
    fn collision_and_capture() {
        // Two SF7 Join-requests (61.696 ms) 30 ms apart on 868.1 MHz, 3 dB apart: both lost.
        let mut air = Air::default();
        air.add(frame(1, 0, 61_696, 7, -100.0));
        air.add(frame(2, 30 * MS, 61_696, 7, -103.0));
        let judge = |air: &Air, id| air.judge(id, DEFAULT_CAPTURE_DB, false);
        assert_eq!(judge(&air, 1), Some(Outcome::Collided));
        assert_eq!(judge(&air, 2), Some(Outcome::Collided));
        // 6 dB apart: the stronger is captured, the weaker lost.
        let mut air = Air::default();
        air.add(frame(1, 0, 61_696, 7, -100.0));
        air.add(frame(2, 30 * MS, 61_696, 7, -106.0));
        assert_eq!(judge(&air, 1), Some(Outcome::Received));
        assert_eq!(judge(&air, 2), Some(Outcome::Collided));
        // A margin of 10 dB loses both.
        assert_eq!(air.judge(1, 10.0, false), Some(Outcome::Collided));
        // Back to back (the second starts as the first ends), another SF, another channel: no
        // collision.
        let mut air = Air::default();
        air.add(frame(1, 0, 61_696, 7, -100.0));
        air.add(frame(2, 61_696, 61_696, 7, -100.0));
        air.add(frame(3, 10 * MS, 113_152, 8, -100.0));
        air.add(Heard {
            freq_hz: 868_300_000,
            ..frame(4, 10 * MS, 61_696, 7, -100.0)
        });
        for id in 1..=4 {
            assert_eq!(judge(&air, id), Some(Outcome::Received), "frame {id}");
        }
        // A gateway transmitting hears nothing; an unknown frame has no fate.
        assert_eq!(air.judge(1, DEFAULT_CAPTURE_DB, true), Some(Outcome::Deaf));
        assert_eq!(judge(&air, 9), None);
    }

    #[test]
    fn a_weak_frame_between_two_strong_ones_is_lost_and_they_survive() {
        let mut air = Air::default();
        air.add(frame(1, 0, 100 * MS, 9, -90.0));
        air.add(frame(2, 50 * MS, 100 * MS, 9, -110.0));
        air.add(frame(3, 120 * MS, 100 * MS, 9, -95.0));
        assert_eq!(air.judge(1, 6.0, false), Some(Outcome::Received));
        assert_eq!(air.judge(2, 6.0, false), Some(Outcome::Collided));
        assert_eq!(air.judge(3, 6.0, false), Some(Outcome::Received));
        // Old frames are forgotten once no frame on air can overlap them.
        air.add(frame(4, 10_000 * MS, 100 * MS, 9, -90.0));
        assert_eq!(air.frames.len(), 1);
    }
}
