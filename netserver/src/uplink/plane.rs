//! The uplink path's shared parts: its settings, the write-ahead emitter and the application
//! downlink queue, one plain field of the state ([`crate::state::State::data`]).

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use crate::integration::emitter::Emitter;
use crate::integration::txack::SentDownlinks;
use crate::join::key_use::KeyUse;
use crate::ops::config::DataConfig;
use crate::store::pending_mac::PendingMacs;
use crate::store::pg::PgStore;
use crate::store::queue::DownlinkQueue;

/// The data path's shared parts.
#[derive(Debug)]
pub struct DataPlane {
    /// Settings.
    pub config: DataConfig,
    /// Write-ahead emitter.
    pub emitter: Emitter,
    /// Application downlink queue (with several instances, this instance's copy of the shared
    /// one; the emitter puts back what did not leave).
    pub queue: Arc<DownlinkQueue>,
    /// Several instances: the store the shared downlink queue is in
    /// ([`crate::store::shared_queue`]).
    pub shared_queue: Option<PgStore>,
    /// Network-initiated MAC commands (ForceRejoinReq, RejoinParamSetupReq) waiting for their
    /// device's next uplink.
    pub pending_mac: PendingMacs,
    /// Next downlink id.
    pub next_id: AtomicU64,
    /// Sessions given under rotated root keys whose first uplink the join server awaits.
    pub key_use: KeyUse,
    /// The downlinks sent and waiting for their gateway's TX_ACK (the `txack` events).
    pub sent: SentDownlinks,
}

impl DataPlane {
    /// Assembles the plane around `queue` (made with [`Self::queue_for`]); `shared_queue`: the
    /// store of a shared queue.
    pub fn new(
        config: DataConfig,
        emitter: Emitter,
        queue: Arc<DownlinkQueue>,
        shared_queue: Option<PgStore>,
    ) -> Self {
        Self {
            queue,
            shared_queue,
            pending_mac: PendingMacs::new(),
            config,
            emitter,
            next_id: AtomicU64::new(1),
            key_use: KeyUse::default(),
            sent: SentDownlinks::default(),
        }
    }

    /// The downlink queue `config` bounds.
    pub fn queue_for(config: &DataConfig) -> Arc<DownlinkQueue> {
        Arc::new(DownlinkQueue::new(config.queue_per_device))
    }

    /// How long copies are awaited.
    pub fn collect_window(&self) -> Duration {
        Duration::from_millis(self.config.collect_window_ms)
    }
}
