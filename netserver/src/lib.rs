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
#![warn(missing_docs)]

pub mod config;
pub mod core;
pub mod downlink;
pub mod gateway;
pub mod http;
pub mod js_client;
pub mod keys;
pub mod metrics;
pub mod otaa;
pub mod server;
pub mod session;
pub mod state;
