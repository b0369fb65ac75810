//! Operating the server: its configuration ([`config`]), metrics ([`metrics`]) and HTTP
//! endpoint ([`http`]).

pub mod config;
pub mod http;
pub mod metrics;
