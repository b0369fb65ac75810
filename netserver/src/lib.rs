//! The LoRaWAN network server: GWMP gateways, de-duplication, OTAA joins through the join
//! server link, RX1/RX2 Join-accept scheduling, and sessions.
//!
//! - [`core`]: the sans-IO decisions (classification, de-duplication, DevAddr allocation, the
//!   join flow, window choice), tested with a fake clock.
//! - [`server`]: the shell: GWMP socket loops, the control runtime, start and shutdown.
//! - [`otaa`]: the join pipeline; [`downlink`]: `txpk` building; [`js_client`]: the link.
//! - [`gateway`]: the gateway registry (downlink routes, per-gateway statistics).
//! - [`session`]: the session table and its durable, group-committing store.
//! - [`keys`]: secret files and the unwrapped network session keys.
//! - [`config`], [`metrics`], [`http`]: configuration, Prometheus metrics, `/metrics`,
//!   `/health` and `/gateways`.
//! - [`state`]: the one shared `Arc<State>`.
//! - Data uplinks: [`data_path`] (the pipeline's shell over [`core::data`],
//!   [`core::mac_handler`], [`core::adr`]), [`live`] (per-session counters and ADR state),
//!   [`uplink_log`] (write-ahead counters, then events and downlinks), [`integration`] (events
//!   and the downlink input), [`downlink_queue`].
#![warn(missing_docs)]

pub mod config;
pub mod core;
pub mod data_path;
pub mod downlink;
pub mod downlink_queue;
pub mod gateway;
pub mod http;
pub mod integration;
pub mod js_client;
pub mod keys;
pub mod live;
pub mod metrics;
pub mod otaa;
pub mod server;
pub mod session;
pub mod state;
pub mod uplink_log;
