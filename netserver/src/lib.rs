//! The LoRaWAN network server: GWMP gateways, de-duplication, OTAA joins through the join
//! server link, RX1/RX2 scheduling, data uplinks with their MAC answers and downlinks, and
//! durable sessions and frame counters.
//!
//! The layout follows the uplink pipeline; each folder is one responsibility:
//!
//! - [`core`]: the sans-IO decisions, pure functions of their inputs (`now`, the frame, the
//!   state, the configuration, an RNG), tested in memory with a fake clock.
//! - [`gateway`]: the gateway side: the gateway registry (downlink routes, statistics) and the
//!   `txpk` of a downlink.
//! - [`join`]: the join path (OTAA, the first copy of a Join-request to its Join-accept) and
//!   the join server link client.
//! - [`uplink`]: the data path's shell: the collection window, the per-frame pipeline, the
//!   shared plane and the application downlink queue.
//! - [`store`]: sessions (stored format, envelopes, label interning, the in-memory table and
//!   its index, the storage trait, the redb backend, the group-commit thread) and the durable
//!   frame counters.
//! - [`integration`]: application events (their JSON, the sinks, the write-ahead emitter,
//!   recovery from the event file) and the downlink input.
//! - [`ops`]: configuration, metrics, and the HTTP endpoint (`/metrics`, `/health`,
//!   `/gateways`).
//! - [`keys`]: secret files and the unwrapped network session keys.
//! - [`state`]: the one shared `Arc<State>`; [`server`]: sockets, threads and the start/stop
//!   sequence.
#![warn(missing_docs)]

pub mod core;
pub mod gateway;
pub mod integration;
pub mod join;
pub mod keys;
pub mod ops;
pub mod server;
pub mod state;
pub mod store;
pub mod uplink;
