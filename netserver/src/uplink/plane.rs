//! The uplink path's shared parts: its settings, the write-ahead emitter and the application
//! downlink queue, one plain field of the state ([`crate::state::State::data`]).

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use crate::integration::emitter::Emitter;
use crate::integration::txack::SentDownlinks;
use crate::ops::config::DataConfig;
use crate::store::pending_mac::PendingMacs;
use crate::store::queue::DownlinkQueue;

/// The data path's shared parts.
#[derive(Debug)]
pub struct DataPlane {
    /// Settings.
    pub config: DataConfig,
    /// Write-ahead emitter.
    pub emitter: Emitter,
    /// Application downlink queue.
    pub queue: DownlinkQueue,
    /// Network-initiated MAC commands (ForceRejoinReq, RejoinParamSetupReq) waiting for their
    /// device's next uplink.
    pub pending_mac: PendingMacs,
    /// Next downlink id.
    pub next_id: AtomicU64,
    /// The downlinks sent and waiting for their gateway's TX_ACK (the `txack` events).
    pub sent: SentDownlinks,
}

impl DataPlane {
    /// Assembles the plane.
    pub fn new(config: DataConfig, emitter: Emitter) -> Self {
        Self {
            queue: DownlinkQueue::new(config.queue_per_device),
            pending_mac: PendingMacs::new(),
            config,
            emitter,
            next_id: AtomicU64::new(1),
            sent: SentDownlinks::default(),
        }
    }

    /// How long copies are awaited.
    pub fn collect_window(&self) -> Duration {
        Duration::from_millis(self.config.collect_window_ms)
    }
}
