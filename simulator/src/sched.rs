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
}

impl TimerKind {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => Self::Join,
            1 => Self::Uplink,
            _ => Self::RxClosed,
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

/// A min-heap of device timers.
#[derive(Default, Debug)]
pub struct Scheduler {
    heap: BinaryHeap<Reverse<u128>>,
}

impl Scheduler {
    /// An empty scheduler.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty scheduler with room for `n` timers.
    pub fn with_capacity(n: usize) -> Self {
        Self {
            heap: BinaryHeap::with_capacity(n),
        }
    }

    /// Arms a timer.
    pub fn push(&mut self, due: Micros, device: u32, kind: TimerKind) {
        let key = (u128::from(due) << 64) | (u128::from(device) << 8) | kind as u128;
        self.heap.push(Reverse(key));
    }

    /// When the earliest timer is due.
    pub fn next_due(&self) -> Option<Micros> {
        self.heap.peek().map(|Reverse(k)| (k >> 64) as u64)
    }

    /// Removes and returns the earliest timer if it is due at or before `now`.
    pub fn pop_due(&mut self, now: Micros) -> Option<Timer> {
        let Reverse(k) = *self.heap.peek()?;
        let due = (k >> 64) as u64;
        if due > now {
            return None;
        }
        self.heap.pop();
        Some(Timer {
            due,
            device: ((k >> 8) & 0xFFFF_FFFF) as u32,
            kind: TimerKind::from_u8((k & 0xFF) as u8),
        })
    }

    /// Number of armed timers.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// Whether no timer is armed.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
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
