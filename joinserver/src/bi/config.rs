//! The `[backend_interfaces]` section: the TS002 HTTPS listener and its per-peer settings.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{API_TLS_CERT, API_TLS_KEY};

/// The Backend Interfaces (TS002) listener.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BiConfig {
    /// TCP address of the listener; empty disables it (overridden by `serve --bi-listen`).
    pub listen: String,
    /// Its certificate chain (PEM), relative to the data directory unless absolute; by default
    /// the API's, which `joinserver init` writes.
    pub tls_cert: PathBuf,
    /// The certificate's private key (PEM, 0600).
    pub tls_key: PathBuf,
    /// Serve plain HTTP on a non-loopback address (behind a TLS-terminating proxy; no mTLS then).
    pub insecure_http: bool,
    /// The largest request body, in bytes (a JoinReq is about 400).
    pub max_request_bytes: usize,
    /// Failed authentications allowed per source address per window; further requests from it
    /// are answered 429 without being read.
    pub auth_failures_per_addr: u32,
    /// The failed-authentication window, in seconds.
    pub auth_failure_window_s: u64,
    /// The TLS handshake and each request's headers must arrive within this many seconds.
    pub header_read_timeout_s: u64,
    /// A connection without a request in progress that moves no byte for this long is closed
    /// (s). Network servers keep their connections alive between joins.
    pub idle_timeout_s: u64,
    /// Connections served at once.
    pub max_connections: usize,
    /// Per network server (peer, by NetID): its client CA and options.
    pub peers: Vec<BiPeerConfig>,
}

/// One network server's Backend Interfaces settings. The NetID must be a peer of the join server
/// (`[[link.peers]]`, or NetID 000000 while none is listed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BiPeerConfig {
    /// The network server's NetID (6 hex digits): its `SenderID`.
    pub net_id: String,
    /// The CA (PEM) its client certificates chain to: a request with such a certificate is
    /// authenticated as this peer (mTLS). Without it, only its bearer tokens authenticate it
    /// (`joinserver peers token --net-id N`).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Its application server's id (`SenderID` of its `AppSKeyReq`), besides its NetID.
    #[serde(default)]
    pub as_id: Option<String>,
    /// Owners (tenants) who chose to let this network server decrypt their devices' payloads:
    /// the AppSKey of their devices is sent to it in clear (`KEKLabel` ""), instead of wrapped
    /// under the owner's application KEK for its own application server (end to end).
    #[serde(default)]
    pub clear_app_s_key_owners: Vec<String>,
}

impl Default for BiConfig {
    fn default() -> Self {
        Self {
            listen: String::new(),
            tls_cert: PathBuf::from(API_TLS_CERT),
            tls_key: PathBuf::from(API_TLS_KEY),
            insecure_http: false,
            max_request_bytes: 16 * 1024,
            auth_failures_per_addr: 10,
            auth_failure_window_s: 300,
            header_read_timeout_s: 10,
            idle_timeout_s: 120,
            max_connections: 256,
            peers: Vec::new(),
        }
    }
}

impl BiConfig {
    /// The accept loop's limits.
    pub fn limits(&self) -> httpsec::serve::Limits {
        httpsec::serve::Limits {
            header_read_timeout: Duration::from_secs(self.header_read_timeout_s),
            idle_timeout: Duration::from_secs(self.idle_timeout_s),
            max_connections: self.max_connections,
        }
    }
}

/// The `[backend_interfaces]` part of the default configuration file.
pub const BI_DEFAULT_TOML: &str = r#"
[backend_interfaces]
# LoRaWAN Backend Interfaces (TS002) over HTTPS, for network servers such as ChirpStack v4 and
# The Things Stack (docs/backend-interfaces.md). TCP address; "" disables (--bi-listen).
listen = ""
# Certificate and key (PEM); by default the API's, which `joinserver init` writes.
tls_cert = "tls/api.crt"
tls_key = "tls/api.key"
# Plain HTTP on a non-loopback address (behind a TLS-terminating proxy; no mTLS then).
insecure_http = false
# Largest request body (bytes).
max_request_bytes = 16384
# Failed authentications allowed per source address per window (s); then 429 with Retry-After.
auth_failures_per_addr = 10
auth_failure_window_s = 300
# TLS handshake and request headers must arrive within this (s); idle connections close after
# idle_timeout_s; at most max_connections at once.
header_read_timeout_s = 10
idle_timeout_s = 120
max_connections = 256
# Per network server (a peer by NetID): the CA of its client certificates (mTLS), its
# application server's id, and the owners that let it decrypt their devices' payloads.
# Bearer tokens: `joinserver peers token --net-id N` (only their hashes are stored).
# [[backend_interfaces.peers]]
# net_id = "000013"
# ca_file = "tls/ns-000013-ca.crt"
# as_id = "as.example.net"
# clear_app_s_key_owners = ["alice"]
"#;
