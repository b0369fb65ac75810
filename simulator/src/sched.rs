//! The timer heap that drives every device: one entry per pending device timer, no task per device.
//!
//! Entries are ordered by due time, then by device index, then by timer kind, so the order in which
//! timers fire never depends on the order they were armed in: with the same seed, the same devices
//! wake in the same order. Each entry is one `u128` (16 bytes), so a million armed timers cost
//! 16 MiB.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// Simulation time: microseconds since the run started.
pub type Micros = u64;

/// What a device asked to be woken up for.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum TimerKind {
    /// Time to send (or retry) a Join-request.
    Join = 0,
    /// Time to send the next data uplink, or a retransmission of the current one.
    Uplink = 1,
    /// The receive windows of the last uplink have closed.
    RxClosed = 2,
    /// The device's frame on air ends: the gateways judge whether they received it (only with
    /// the radio modelled, `--radio realistic`).
    UplinkEnd = 3,
    /// A gateway's packet forwarder reads its receive FIFO (the timer's "device" is the gateway's
    /// index).
    GatewayFetch = 4,
}

impl TimerKind {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => Self::Join,
            1 => Self::Uplink,
            2 => Self::RxClosed,
            3 => Self::UplinkEnd,
            _ => Self::GatewayFetch,
        }
    }
}

/// A fired timer.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Timer {
    /// When it was due.
    pub due: Micros,
    /// The device index in the fleet.
    pub device: u32,
    /// What for.
    pub kind: TimerKind,
}

/// Width of one wheel slot, µs.
const SLOT_US: u64 = 1000;
/// Number of slots: the wheel covers 65.5 s ahead; later timers wait in a heap.
const SLOTS: u64 = 1 << 16;

/// A timer wheel of 1 ms slots covering 65 s, with a heap for later timers. Pushing is O(1);
/// timers come out of the slot being served through a small heap, so they come out in exact
/// (due, device, kind) order, as from one big heap, at a fraction of its cost for a million timers.
#[derive(Debug)]
pub struct Scheduler {
    slots: Vec<Vec<u128>>,
    /// The first slot not yet moved into `ready` (absolute slot number).
    cursor: u64,
    /// Timers of slots before `cursor`.
    ready: BinaryHeap<Reverse<u128>>,
    /// Timers at or beyond `cursor + SLOTS`.
    far: BinaryHeap<Reverse<u128>>,
    in_wheel: usize,
}

impl Default for Scheduler {
    fn default() -> Self {
        Self::new()
    }
}

fn key(due: Micros, device: u32, kind: TimerKind) -> u128 {
    (u128::from(due) << 64) | (u128::from(device) << 8) | kind as u128
}

fn due_of(k: u128) -> Micros {
    (k >> 64) as u64
}

impl Scheduler {
    /// An empty scheduler.
    pub fn new() -> Self {
        Self {
            slots: (0..SLOTS).map(|_| Vec::new()).collect(),
            cursor: 0,
            ready: BinaryHeap::new(),
            far: BinaryHeap::new(),
            in_wheel: 0,
        }
    }

    /// An empty scheduler (the wheel grows its slots as needed).
    pub fn with_capacity(_n: usize) -> Self {
        Self::new()
    }

    fn place(&mut self, k: u128) {
        let slot = due_of(k) / SLOT_US;
        if slot < self.cursor {
            self.ready.push(Reverse(k));
        } else if slot < self.cursor + SLOTS {
            self.slots[(slot % SLOTS) as usize].push(k);
            self.in_wheel += 1;
        } else {
            self.far.push(Reverse(k));
        }
    }

    /// Arms a timer.
    pub fn push(&mut self, due: Micros, device: u32, kind: TimerKind) {
        self.place(key(due, device, kind));
    }

    /// Moves the slot at `cursor` into `ready` and the far timers that now fit into the wheel.
    fn advance(&mut self) {
        if self.in_wheel == 0 && self.ready.is_empty() {
            // Nothing in the wheel: jump straight to the earliest far timer's slot.
            if let Some(Reverse(k)) = self.far.peek() {
                let s = due_of(*k) / SLOT_US;
                if s > self.cursor {
                    self.cursor = s;
                }
            }
        }
        let i = (self.cursor % SLOTS) as usize;
        let slot = std::mem::take(&mut self.slots[i]);
        self.in_wheel -= slot.len();
        self.ready.extend(slot.iter().map(|&k| Reverse(k)));
        let mut slot = slot;
        slot.clear();
        self.slots[i] = slot;
        self.cursor += 1;
        while let Some(Reverse(k)) = self.far.peek() {
            if due_of(*k) / SLOT_US >= self.cursor + SLOTS {
                break;
            }
            let k = *k;
            self.far.pop();
            self.place(k);
        }
    }

    /// When the earliest timer is due.
    pub fn next_due(&self) -> Option<Micros> {
        if let Some(Reverse(k)) = self.ready.peek() {
            return Some(due_of(*k));
        }
        if self.in_wheel > 0 {
            for s in self.cursor..self.cursor + SLOTS {
                let slot = &self.slots[(s % SLOTS) as usize];
                if let Some(&k) = slot.iter().min() {
                    return Some(due_of(k));
                }
            }
        }
        self.far.peek().map(|Reverse(k)| due_of(*k))
    }

    /// Removes and returns the earliest timer if it is due at or before `now`.
    pub fn pop_due(&mut self, now: Micros) -> Option<Timer> {
        let now_slot = now / SLOT_US;
        loop {
            if let Some(Reverse(k)) = self.ready.peek() {
                let k = *k;
                if due_of(k) > now {
                    return None;
                }
                self.ready.pop();
                return Some(Timer {
                    due: due_of(k),
                    device: ((k >> 8) & 0xFFFF_FFFF) as u32,
                    kind: TimerKind::from_u8((k & 0xFF) as u8),
                });
            }
            if self.in_wheel == 0 && self.far.is_empty() {
                return None;
            }
            if self.cursor > now_slot {
                // The earliest timers are in a later slot (or far away).
                if self.in_wheel == 0 && self.far.peek().is_some_and(|Reverse(k)| due_of(*k) <= now)
                {
                    self.advance();
                    continue;
                }
                return None;
            }
            self.advance();
        }
    }

    /// Number of armed timers.
    pub fn len(&self) -> usize {
        self.ready.len() + self.in_wheel + self.far.len()
    }

    /// Whether no timer is armed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fires_in_time_then_device_then_kind_order() {
        let mut s = Scheduler::new();
        s.push(30, 1, TimerKind::Uplink);
        s.push(10, 7, TimerKind::RxClosed);
        s.push(10, 7, TimerKind::Join);
        s.push(10, 2, TimerKind::Uplink);
        s.push(u64::MAX / 2, u32::MAX, TimerKind::RxClosed);
        assert_eq!(s.next_due(), Some(10));
        assert_eq!(s.pop_due(9), None);
        let order: Vec<_> = std::iter::from_fn(|| s.pop_due(30))
            .map(|t| (t.due, t.device, t.kind))
            .collect();
        assert_eq!(
            order,
            vec![
                (10, 2, TimerKind::Uplink),
                (10, 7, TimerKind::Join),
                (10, 7, TimerKind::RxClosed),
                (30, 1, TimerKind::Uplink)
            ]
        );
        let last = s.pop_due(u64::MAX).unwrap();
        assert_eq!((last.device, last.kind), (u32::MAX, TimerKind::RxClosed));
        assert!(s.is_empty());
    }

    #[test]
    fn matches_a_plain_heap_across_slots_far_timers_and_late_pushes() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let mut s = Scheduler::new();
        let mut reference = BinaryHeap::new();
        let mut now = 0u64;
        let mut out = Vec::new();
        let mut expect = Vec::new();
        for step in 0..3_000u32 {
            // Timers from the past (late pushes), this slot, the next minute, and hours ahead.
            let due = match rng.gen_range(0..4) {
                0 => now.saturating_sub(rng.gen_range(0..5_000)),
                1 => now + rng.gen_range(0..2_000),
                2 => now + rng.gen_range(0..70_000_000),
                _ => now + rng.gen_range(0..10_000_000_000),
            };
            let kind =
                [TimerKind::Join, TimerKind::Uplink, TimerKind::RxClosed][rng.gen_range(0..3)];
            s.push(due, step, kind);
            reference.push(Reverse(key(due, step, kind)));
            assert_eq!(s.next_due(), reference.peek().map(|Reverse(k)| due_of(*k)));
            now += rng.gen_range(0..3_000_000);
            while let Some(t) = s.pop_due(now) {
                out.push(t);
            }
            while let Some(Reverse(k)) = reference.peek() {
                if due_of(*k) > now {
                    break;
                }
                expect.push(Timer {
                    due: due_of(*k),
                    device: ((*k >> 8) & 0xFFFF_FFFF) as u32,
                    kind: TimerKind::from_u8((*k & 0xFF) as u8),
                });
                reference.pop();
            }
            assert_eq!(out.len(), expect.len(), "step {step}");
        }
        assert_eq!(out, expect);
        assert_eq!(s.len(), reference.len());
    }

    #[test]
    fn insertion_order_does_not_matter() {
        let mut a = Scheduler::new();
        let mut b = Scheduler::new();
        let items: Vec<(u64, u32)> = (0..100).map(|i| ((i * 7919) % 13, i as u32)).collect();
        for &(d, dev) in &items {
            a.push(d, dev, TimerKind::Uplink);
        }
        for &(d, dev) in items.iter().rev() {
            b.push(d, dev, TimerKind::Uplink);
        }
        let da: Vec<_> = std::iter::from_fn(|| a.pop_due(100)).collect();
        let db: Vec<_> = std::iter::from_fn(|| b.pop_due(100)).collect();
        assert_eq!(da, db);
        assert_eq!(da.len(), 100);
    }
}
