//! What one gateway hears: uplinks that overlap in time on the same channel and spreading factor
//! collide. The stronger one survives when it is at least the capture margin above every frame it
//! overlaps (the capture effect; 6 dB by default, the co-channel rejection usually quoted for
//! LoRa at one spreading factor); otherwise all of them are lost. A gateway that transmits during
//! any part of an uplink does not hear it (half duplex). Frames of different spreading factors or
//! channels do not interfere (LoRa spreading factors are quasi-orthogonal).
//!
//! A frame is judged when it ends; by then every frame that overlaps it has started, so the
//! caller registers each frame at its start ([`Air::add`]) and asks at its end ([`Air::judge`]).
//! Frames are kept per channel and spreading factor, in start order, for a few seconds: a storm
//! of 100,000 meters puts thousands of frames around a gateway at once, and a frame is compared
//! only with the few on its own channel and spreading factor.

use std::collections::{HashMap, VecDeque};

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

    fn channel(&self) -> (u32, u8) {
        (self.freq_hz, self.sf)
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

/// The uplinks on air around one gateway, per (frequency, spreading factor), in start order.
#[derive(Clone, Debug, Default)]
pub struct Air {
    frames: HashMap<(u32, u8), VecDeque<Heard>>,
}

impl Air {
    /// A frame starts (at `h.start`, which is now: frames come in start order).
    pub fn add(&mut self, h: Heard) {
        let keep_from = h.start.saturating_sub(HISTORY_US);
        let q = self.frames.entry(h.channel()).or_default();
        while q.front().is_some_and(|f| f.end <= keep_from) {
            q.pop_front();
        }
        q.push_back(h);
    }

    /// The fate of frame `me` (as added), which has ended, given the capture margin in dB and
    /// whether the gateway transmitted during it. `None` if the frame is unknown.
    pub fn judge(&self, me: &Heard, capture_db: f64, transmitting: bool) -> Option<Outcome> {
        let q = self.frames.get(&me.channel())?;
        q.iter().find(|f| f.id == me.id)?;
        if transmitting {
            return Some(Outcome::Deaf);
        }
        let captured = q
            .iter()
            .take_while(|o| o.start < me.end)
            .filter(|o| o.id != me.id && me.overlaps(o))
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
        let judge = |air: &Air, h: &Heard| air.judge(h, DEFAULT_CAPTURE_DB, false);
        let (a, b) = (
            frame(1, 0, 61_696, 7, -100.0),
            frame(2, 30 * MS, 61_696, 7, -103.0),
        );
        air.add(a);
        air.add(b);
        assert_eq!(judge(&air, &a), Some(Outcome::Collided));
        assert_eq!(judge(&air, &b), Some(Outcome::Collided));
        // 6 dB apart: the stronger is captured, the weaker lost.
        let mut air = Air::default();
        let b = frame(2, 30 * MS, 61_696, 7, -106.0);
        air.add(a);
        air.add(b);
        assert_eq!(judge(&air, &a), Some(Outcome::Received));
        assert_eq!(judge(&air, &b), Some(Outcome::Collided));
        // A margin of 10 dB loses both.
        assert_eq!(air.judge(&a, 10.0, false), Some(Outcome::Collided));
        // Back to back (the second starts as the first ends), another SF, another channel: no
        // collision.
        let mut air = Air::default();
        let frames = [
            a,
            frame(2, 61_696, 61_696, 7, -100.0),
            frame(3, 10 * MS, 113_152, 8, -100.0),
            Heard {
                freq_hz: 868_300_000,
                ..frame(4, 10 * MS, 61_696, 7, -100.0)
            },
        ];
        let mut in_order = frames;
        in_order.sort_by_key(|f| f.start);
        for f in in_order {
            air.add(f);
        }
        for f in &frames {
            assert_eq!(judge(&air, f), Some(Outcome::Received), "frame {}", f.id);
        }
        // A gateway transmitting hears nothing; an unknown frame has no fate.
        assert_eq!(air.judge(&a, DEFAULT_CAPTURE_DB, true), Some(Outcome::Deaf));
        assert_eq!(judge(&air, &frame(9, 0, 1, 7, -100.0)), None);
    }

    #[test]
    fn a_weak_frame_between_two_strong_ones_is_lost_and_they_survive() {
        let mut air = Air::default();
        let f = [
            frame(1, 0, 100 * MS, 9, -90.0),
            frame(2, 50 * MS, 100 * MS, 9, -110.0),
            frame(3, 120 * MS, 100 * MS, 9, -95.0),
        ];
        for h in f {
            air.add(h);
        }
        assert_eq!(air.judge(&f[0], 6.0, false), Some(Outcome::Received));
        assert_eq!(air.judge(&f[1], 6.0, false), Some(Outcome::Collided));
        assert_eq!(air.judge(&f[2], 6.0, false), Some(Outcome::Received));
        // Old frames are forgotten once no frame on air can overlap them.
        air.add(frame(4, 10_000 * MS, 100 * MS, 9, -90.0));
        assert_eq!(air.frames[&(868_100_000, 9)].len(), 1);
    }
}
