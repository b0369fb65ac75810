//! What every HTTP listener of the project needs before it can face a network (issue 13,
//! docs/security.md):
//!
//! - [`tls`]: a rustls server configuration from PEM files, a self-signed certificate and key
//!   written 0600 (what `joinserver init` creates), and the SHA-256 fingerprint clients pin;
//! - [`serve`]: a hardened accept loop around a hyper service: a header-read timeout, an idle
//!   timeout, a connection limit, TLS by default, and plain HTTP only on a loopback address or
//!   by the operator's explicit choice ([`serve::Transport::for_listener`]);
//! - [`ratelimit`]: failed authentications limited per key (a source address, say) in a window.
//!
//! The join server's management API and the network server's HTTP endpoints use them all.
#![warn(missing_docs)]

pub mod ratelimit;
pub mod serve;
pub mod tls;
