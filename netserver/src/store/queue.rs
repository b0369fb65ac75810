//! The application downlink queue: per DevEUI, first in first out, bounded. Fed by the
//! integration input; served one item per Class-A receive window, with FPending set while more
//! are waiting. With several instances on PostgreSQL this is each instance's copy of the shared
//! queue ([`crate::store::shared_queue`]).

use std::collections::VecDeque;

use dashmap::DashMap;
use protocol::ids::DevEui;

use crate::core::KeyedHasher;

/// One queued application downlink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedDownlink {
    /// Id given back to the application (in the answer and the ACK event).
    pub id: u64,
    /// FPort, 1..=223.
    pub f_port: u8,
    /// The plaintext payload.
    pub payload: Vec<u8>,
    /// Confirmed data down: the device must acknowledge it.
    pub confirmed: bool,
}

/// The queue is full for this device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the downlink queue of this device is full ({0} items)")]
pub struct QueueFull(pub usize);

/// Per-device queues.
#[derive(Debug)]
pub struct DownlinkQueue {
    map: DashMap<DevEui, VecDeque<QueuedDownlink>, KeyedHasher>,
    per_device: usize,
}

impl DownlinkQueue {
    /// Queues holding at most `per_device` items each.
    pub fn new(per_device: usize) -> Self {
        Self {
            map: DashMap::with_hasher(KeyedHasher::default()),
            per_device: per_device.max(1),
        }
    }

    /// Appends; returns how many items are now waiting for the device.
    pub fn push(&self, dev_eui: DevEui, d: QueuedDownlink) -> Result<usize, QueueFull> {
        let mut q = self.map.entry(dev_eui).or_default();
        if q.len() >= self.per_device {
            return Err(QueueFull(self.per_device));
        }
        q.push_back(d);
        Ok(q.len())
    }

    /// Takes the next item, and whether more are waiting after it.
    pub fn pop(&self, dev_eui: DevEui) -> Option<(QueuedDownlink, bool)> {
        let mut q = self.map.get_mut(&dev_eui)?;
        let d = q.pop_front()?;
        let more = !q.is_empty();
        drop(q);
        if !more {
            self.map.remove_if(&dev_eui, |_, q| q.is_empty());
        }
        Some((d, more))
    }

    /// Whether anything waits for the device.
    pub fn has(&self, dev_eui: DevEui) -> bool {
        self.map.get(&dev_eui).is_some_and(|q| !q.is_empty())
    }

    /// Puts an item back at the front (its downlink could not be scheduled).
    pub fn push_front(&self, dev_eui: DevEui, d: QueuedDownlink) {
        self.map.entry(dev_eui).or_default().push_front(d);
    }

    /// Replaces the device's items with `items` (as a shared queue holds them,
    /// [`crate::store::shared_queue`]).
    pub fn replace(&self, dev_eui: DevEui, items: Vec<QueuedDownlink>) {
        if items.is_empty() {
            self.map.remove(&dev_eui);
        } else {
            self.map.insert(dev_eui, items.into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(id: u64) -> QueuedDownlink {
        QueuedDownlink {
            id,
            f_port: 2,
            payload: vec![id as u8],
            confirmed: false,
        }
    }

    #[test]
    fn fifo_bounded_with_pending_flag() {
        let q = DownlinkQueue::new(2);
        let d = DevEui::new(1);
        assert!(!q.has(d));
        assert_eq!(q.push(d, item(1)), Ok(1));
        assert_eq!(q.push(d, item(2)), Ok(2));
        assert_eq!(q.push(d, item(3)), Err(QueueFull(2)));
        assert!(q.has(d));
        assert_eq!(q.pop(d), Some((item(1), true)));
        assert_eq!(q.pop(d), Some((item(2), false)));
        assert_eq!(q.pop(d), None);
        assert!(!q.has(d));
        q.push_front(d, item(9));
        assert_eq!(q.pop(DevEui::new(2)), None);
        assert_eq!(q.pop(d), Some((item(9), false)));
        q.replace(d, vec![item(4), item(5)]);
        assert_eq!(q.pop(d), Some((item(4), true)));
        q.replace(d, Vec::new());
        assert!(!q.has(d));
    }
}
