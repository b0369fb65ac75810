//! Operating the server: its configuration ([`config`]), metrics ([`metrics`]), HTTP
//! endpoint ([`http`]), how every HTTP listener is secured ([`listen`]) and the modes of its
//! files ([`private`]).

pub mod config;
pub mod http;
pub mod listen;
pub mod metrics;
pub mod private;
