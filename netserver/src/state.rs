//! The one shared state of a running network server, passed explicitly as `Arc<State>` to every
//! socket loop and task. No globals: several servers can run in one process (tests do).

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::core::dedup::Dedup;
use crate::core::devaddr::AddrAllocator;
use crate::core::devaddr::AddrBlock;
use crate::core::join::RetryPolicy;
use crate::core::joinlimit::JoinRateLimit;
use crate::core::scheduler::Scheduler;
use crate::core::timing::WindowTiming;
use crate::gateway::allowed::AllowedGateways;
use crate::gateway::handoff::HandoffKey;
use crate::gateway::registry::GatewayRegistry;
use crate::keys::LabeledKek;
use crate::ops::config::Config;
use crate::ops::metrics::Metrics;
use crate::store::commit::SessionStore;
use crate::store::table::Sessions;
use crate::uplink::plane::DataPlane;

/// Secrets loaded from files at start.
#[derive(Debug)]
pub struct Secrets {
    /// Authenticates the join server link.
    pub link_key: protocol::keys::LinkKey,
    /// Unwraps the network session keys of JoinAns.
    pub ns_kek: LabeledKek,
    /// The application server's KEK, when this server is given it: the data path uses it to
    /// open the AppSKey envelope for decrypted application payloads. Joins never need it.
    pub as_kek: Option<LabeledKek>,
}

/// Shared state.
#[derive(Debug)]
pub struct State {
    /// The configuration in force.
    pub config: Config,
    /// The DevAddr block.
    pub block: AddrBlock,
    /// Metrics.
    pub metrics: Metrics,
    /// Gateways.
    pub gateways: GatewayRegistry,
    /// De-duplication.
    pub dedup: Dedup,
    /// Each gateway's downlink airtime (`[scheduler]`).
    pub scheduler: Scheduler,
    /// Per-DevEUI Join-request rate limit (`[scheduler]`).
    pub join_limit: JoinRateLimit,
    /// DevAddr allocation.
    pub allocator: AddrAllocator,
    /// Live sessions (shared with the emitter, which catches them up with a shared store).
    pub sessions: Arc<Sessions>,
    /// Durable session store.
    pub store: SessionStore,
    /// Secrets.
    pub secrets: Secrets,
    /// Inodes of the GWMP sockets and of the link sockets (for kernel drop counts, see the
    /// `udpstat` crate).
    pub inodes: SocketInodes,
    shutting_down: AtomicBool,
    next_transaction_id: AtomicU32,
    /// The data path's shared parts.
    pub data: DataPlane,
    /// Several instances (PostgreSQL): the key that hands a downlink to the gateway's owner
    /// instance ([`crate::gateway::handoff`]).
    pub handoff: Option<Arc<HandoffKey>>,
}

/// The inodes of the server's UDP sockets, by role.
#[derive(Debug, Default)]
pub struct SocketInodes {
    /// The GWMP sockets.
    pub gwmp: Vec<u64>,
    /// The join server link sockets (the control runtime's and the socket loops').
    pub link: Vec<u64>,
}

impl State {
    /// Assembles the state.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: Config,
        block: AddrBlock,
        metrics: Metrics,
        sessions: Arc<Sessions>,
        allocator: AddrAllocator,
        store: SessionStore,
        secrets: Secrets,
        inodes: SocketInodes,
        data: DataPlane,
        allowed_gateways: Option<AllowedGateways>,
        handoff: Option<Arc<HandoffKey>>,
    ) -> Self {
        Self {
            gateways: GatewayRegistry::of(&config.gwmp, allowed_gateways),
            dedup: Dedup::of(&config.gwmp),
            scheduler: Scheduler::new(
                config.scheduler.enabled,
                config.network.region,
                config.scheduler.limits(),
            ),
            join_limit: JoinRateLimit::new(
                config.scheduler.join_request_duty_cycle,
                Duration::from_secs(config.scheduler.join_request_burst_s),
                // Sweep full buckets once a storm's worth of devices is tracked.
                100_000,
            ),
            config,
            block,
            metrics,
            allocator,
            sessions,
            store,
            secrets,
            inodes,
            shutting_down: AtomicBool::new(false),
            // A random start, then a counter: unique among the 2^32 most recent JoinReqs, so
            // the join server's (sender, TransactionID) cache never mistakes one for a retry
            // of another, even after a restart (random draws would collide by the birthday
            // bound at a few thousand joins per cache lifetime).
            next_transaction_id: AtomicU32::new(rand::random()),
            data,
            handoff,
        }
    }

    /// Join-accept window timing.
    pub fn join_timing(&self) -> WindowTiming {
        let j = &self.config.join;
        WindowTiming {
            rx1_delay: Duration::from_secs(u64::from(j.join_accept_delay1_s)),
            rx2_delay: Duration::from_secs(u64::from(j.join_accept_delay2_s)),
            margin: Duration::from_millis(j.scheduling_margin_ms),
        }
    }

    /// JoinReq retry policy.
    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            timeout: self.config.request_timeout(),
            tries: self.config.join_server.tries,
        }
    }

    /// A fresh TS002 TransactionID.
    pub fn next_transaction_id(&self) -> u32 {
        self.next_transaction_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Marks the server as stopping (`/health` turns 503).
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }

    /// Whether the server is stopping.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    /// Refreshes the gauges (called at scrape time).
    pub fn refresh_gauges(&self, now: Instant) {
        let m = &self.metrics;
        m.sessions
            .set(i64::try_from(self.sessions.len()).unwrap_or(i64::MAX));
        m.gateways
            .set(i64::try_from(self.gateways.len()).unwrap_or(i64::MAX));
        m.gateways_online
            .set(i64::try_from(self.gateways.online(now)).unwrap_or(i64::MAX));
        if let Some(d) = udpstat::receive_drops(&self.inodes.gwmp) {
            m.gwmp_socket_drops
                .set(i64::try_from(d).unwrap_or(i64::MAX));
        }
        if let Some(d) = udpstat::receive_drops(&self.inodes.link) {
            m.link_socket_drops
                .set(i64::try_from(d).unwrap_or(i64::MAX));
        }
    }
}
