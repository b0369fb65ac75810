//! The LoRaWAN network server: GWMP gateways, de-duplication, OTAA joins through the join
//! server link, RX1/RX2 Join-accept scheduling, and sessions.
//!
//! - [`core`]: the sans-IO decisions (classification, de-duplication, DevAddr allocation, the
//!   join flow, window choice), tested with a fake clock.
//! - [`gateway`]: the gateway registry (downlink routes, per-gateway statistics).
//! - [`session`]: the session table and its durable, group-committing store.
//! - [`keys`]: secret files and the unwrapped network session keys.
//! - [`config`], [`metrics`]: configuration and Prometheus metrics.
#![warn(missing_docs)]

pub mod config;
pub mod core;
pub mod gateway;
pub mod http;
pub mod js_client;
pub mod keys;
pub mod metrics;
pub mod session;
pub mod state;
