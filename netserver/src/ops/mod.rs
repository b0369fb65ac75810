//! Operating the server: its configuration ([`config`]), metrics ([`metrics`]), HTTP
//! endpoint ([`http`]) and the modes of its files ([`private`]).

pub mod config;
pub mod http;
pub mod metrics;
pub mod private;
