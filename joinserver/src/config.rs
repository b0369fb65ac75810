//! The join server's configuration file (TOML).
//!
//! Every field has a default, so an empty file (or none) is a valid configuration; unknown fields
//! are refused so that typos fail loudly. Secrets never live here: they are files under
//! `DATA_DIR/secrets/` (see [`crate::secrets`]). `joinserver config` prints [`DEFAULT_TOML`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The JS↔NS link listener.
    pub link: LinkConfig,
    /// Join processing rules.
    pub join: JoinConfig,
    /// The store: embedded (SQLite) by default, or PostgreSQL (`url`).
    pub store: StoreConfig,
    /// The Prometheus `/metrics` and `/health` listener.
    pub metrics: MetricsConfig,
    /// The HTTP management API and onboarding (`crate::api`).
    pub api: ApiConfig,
    /// LoRaWAN Backend Interfaces (TS002) over HTTPS (`crate::bi`).
    pub backend_interfaces: BiConfig,
}

/// The JS↔NS link (docs/wire-format.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LinkConfig {
    /// UDP address the join server listens on for JoinReq datagrams.
    pub listen: SocketAddr,
    /// This join server's 64-bit id (16 hex digits), the sender id of its JoinAns datagrams.
    pub js_id: String,
    /// A datagram whose timestamp is further than this from the local clock is dropped.
    pub window_ms: u64,
    /// Kernel receive buffer (SO_RCVBUF) requested for the link socket, in bytes. A join storm
    /// overflows the default ~212 KB within a few hundred datagrams.
    pub recv_buffer_bytes: usize,
    /// How long an answer stays in the (sender, TransactionID) cache that makes retries and
    /// replays idempotent.
    pub answer_cache_ttl_ms: u64,
    /// Upper bound on cached answers (about 1 KB each); the oldest go first.
    pub answer_cache_max_entries: usize,
    /// Network servers allowed on the link (peers), each with its own key file. When empty, the
    /// only peer is NetID 000000 with `secrets/link.key` (the one `joinserver init` creates).
    /// Listing one key for several NetIDs shares it, with a warning at start.
    pub peers: Vec<PeerConfig>,
    /// Former default link keys still accepted during a rotation of `secrets/link.key` (used
    /// when `peers` is empty); remove them once every network server has the new key.
    pub old_key_files: Vec<PathBuf>,
}

/// One network server allowed on the link.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// The network server's NetID (6 hex digits): its sender id on the link.
    pub net_id: String,
    /// Its link key file (32 hex digits), relative to the data directory unless absolute.
    pub key_file: PathBuf,
    /// Its own network KEK (the format of `secrets/ns.kek`): the network session keys of its
    /// JoinAns are wrapped under it. Absent: `secrets/ns.kek`.
    #[serde(default)]
    pub ns_kek_file: Option<PathBuf>,
    /// Its former link keys, still accepted during a rotation (old and new both work until an
    /// old one is removed from this list). Answers use the key of their request.
    #[serde(default)]
    pub old_key_files: Vec<PathBuf>,
}

/// Join processing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JoinConfig {
    /// LoRaWAN 1.0.2/1.0.3: how many used DevNonces are remembered per device; a JoinRequest
    /// reusing one of them is refused.
    pub dev_nonce_history: usize,
    /// The session `Lifetime` (seconds) sent with the AppSKey; 0 means no expiry.
    pub session_lifetime_s: u32,
    /// Per owner tenant, the KEK file (the format of `secrets/as.kek`) that wraps the AppSKey
    /// of its devices, so one tenant's application server cannot open another's; devices of
    /// other tenants, and unclaimed ones, use `secrets/as.kek`.
    pub app_kek_files: std::collections::BTreeMap<String, PathBuf>,
}

/// The embedded SQLite store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// A PostgreSQL database shared by several join server instances
    /// (`postgres://user:password@host:port/db`); empty: the embedded SQLite file in the data
    /// directory. `--store-url` and `JOINSERVER_STORE_URL` override it.
    pub url: String,
    /// Connections to PostgreSQL each instance may open (its pool).
    pub pool_size: u32,
    /// The most nonce updates committed in one transaction (group commit).
    pub max_batch: usize,
    /// The least milliseconds from one nonce commit's start to the next's.
    pub commit_interval_ms: u64,
    /// Nonce updates waiting that start a commit before `commit_interval_ms` is out.
    pub commit_enough: usize,
    /// Pending answers allowed to wait for the writer before the link stops reading.
    pub queue_depth: usize,
    /// When a nonce commit counts as done: `full` (default) waits for the disk (fsync of the
    /// WAL), so an answered join survives power loss; `normal` waits only for the OS, so it
    /// survives a crash or kill of the join server but not of the machine.
    pub synchronous: Synchronous,
}

/// SQLite's `synchronous` setting for the nonce commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Synchronous {
    /// fsync on every (group) commit: survives power loss.
    Full,
    /// No fsync on commit in WAL mode: survives a process crash, not an OS crash or power loss.
    Normal,
}

/// Observability endpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// TCP address serving `/metrics` and `/health`; empty to disable.
    pub listen: String,
}

impl Default for LinkConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 4100)),
            js_id: "0000000000000000".into(),
            window_ms: protocol::link::DEFAULT_WINDOW_MS,
            recv_buffer_bytes: 8 << 20,
            answer_cache_ttl_ms: 30_000,
            answer_cache_max_entries: 200_000,
            peers: Vec::new(),
            old_key_files: Vec::new(),
        }
    }
}

impl Default for JoinConfig {
    fn default() -> Self {
        Self {
            dev_nonce_history: 64,
            session_lifetime_s: 0,
            app_kek_files: std::collections::BTreeMap::new(),
        }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            pool_size: 8,
            max_batch: 4096,
            commit_interval_ms: 2,
            commit_enough: 16,
            queue_depth: 65_536,
            synchronous: Synchronous::Full,
        }
    }
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9100".into(),
        }
    }
}

/// The `[api]` section of the configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// TCP address of the management API; empty disables it (overridden by `--api-listen`).
    pub listen: String,
    /// Ed25519 public keys (64 hex digits each) whose manifest signatures are trusted.
    pub trusted_manifest_keys: Vec<String>,
    /// Ed25519 public keys bound to one manufacturer tenant each (`acme = ["<64 hex>", ...]`): a
    /// manifest signed by one of them is refused when another manufacturer imports it. A key
    /// listed here and in `trusted_manifest_keys` is bound to its manufacturer.
    pub manufacturer_keys: std::collections::BTreeMap<String, Vec<String>>,
    /// Manifest-supplied owner tokens shorter than this many characters are refused, with their
    /// line (generated ones have 32 hex digits).
    pub min_owner_token_len: usize,
    /// Whether `joinserver devices import` also requires `--signature` (the API always does).
    pub require_signed_cli_imports: bool,
    /// The largest manifest accepted in one request, in bytes.
    pub max_manifest_bytes: usize,
    /// Manifest imports run at once; one more is answered 429 with Retry-After.
    pub max_concurrent_imports: usize,
    /// An import whose client sends nothing for this long is refused (s).
    pub import_idle_timeout_s: u64,
    /// Failed claims allowed per DevEUI per window.
    pub claim_failures_per_device: u32,
    /// Failed claims allowed per API key per window.
    pub claim_failures_per_key: u32,
    /// The failed-claim window, in seconds.
    pub claim_failure_window_s: u64,
    /// The API's certificate chain (PEM), relative to the data directory unless absolute. With
    /// `tls_key`, the API speaks HTTPS; `joinserver init` writes a self-signed pair at the default
    /// paths. Empty: no TLS (plain HTTP, refused on a non-loopback address unless
    /// `insecure_http`).
    pub tls_cert: PathBuf,
    /// The certificate's private key (PEM, 0600), likewise.
    pub tls_key: PathBuf,
    /// Serve plain HTTP on a non-loopback address (behind a TLS-terminating proxy). Also
    /// `--insecure-http`.
    pub insecure_http: bool,
    /// The TLS handshake and each request's headers must arrive within this many seconds.
    pub header_read_timeout_s: u64,
    /// A connection with no request in progress that moves no byte for this long is closed (s).
    pub idle_timeout_s: u64,
    /// Connections served at once; one more is closed at once.
    pub max_connections: usize,
    /// The largest request body of every route but the manifest import (bytes).
    pub max_request_bytes: usize,
    /// Failed authentications (missing, unknown, revoked or expired API key) allowed per source
    /// address per window; further requests from it are answered 429 without being checked.
    pub auth_failures_per_addr: u32,
    /// The failed-authentication window, in seconds.
    pub auth_failure_window_s: u64,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            listen: String::new(),
            trusted_manifest_keys: Vec::new(),
            manufacturer_keys: std::collections::BTreeMap::new(),
            min_owner_token_len: MIN_OWNER_TOKEN_LEN,
            require_signed_cli_imports: false,
            max_manifest_bytes: 64 << 20,
            max_concurrent_imports: 2,
            import_idle_timeout_s: 30,
            claim_failures_per_device: 5,
            claim_failures_per_key: 20,
            claim_failure_window_s: 600,
            tls_cert: PathBuf::from(API_TLS_CERT),
            tls_key: PathBuf::from(API_TLS_KEY),
            insecure_http: false,
            header_read_timeout_s: 10,
            idle_timeout_s: 30,
            max_connections: 256,
            max_request_bytes: 16 * 1024,
            auth_failures_per_addr: 10,
            auth_failure_window_s: 300,
        }
    }
}

/// The default shortest manifest-supplied owner token (characters): 12 hex digits are 48 bits,
/// what the simulator's manifests carry.
pub const MIN_OWNER_TOKEN_LEN: usize = 12;

/// Where `joinserver init` writes the API's self-signed certificate (in the data directory).
pub const API_TLS_CERT: &str = "tls/api.crt";
/// Where `joinserver init` writes the certificate's private key.
pub const API_TLS_KEY: &str = "tls/api.key";

/// The API listener's HTTP limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// The largest body of every route but the import.
    pub max_request_bytes: usize,
    /// Failed authentications per source address per window.
    pub auth_failures_per_addr: u32,
    /// The failed-authentication window.
    pub auth_failure_window: Duration,
    /// Connection timeouts and count.
    pub header_read_timeout: Duration,
    /// See [`ApiConfig::idle_timeout_s`].
    pub idle_timeout: Duration,
    /// See [`ApiConfig::max_connections`].
    pub max_connections: usize,
}

/// What the API allows an import: its size, how many run at once, how long an upload may
/// stall.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImportLimits {
    /// The largest manifest, bytes.
    pub max_bytes: usize,
    /// Imports run at once (at least 1).
    pub max_concurrent: usize,
    /// How long an upload may send nothing.
    pub idle_timeout: Duration,
}

impl ApiConfig {
    /// The import limits.
    pub fn import_limits(&self) -> ImportLimits {
        ImportLimits {
            max_bytes: self.max_manifest_bytes,
            max_concurrent: self.max_concurrent_imports.max(1),
            idle_timeout: Duration::from_secs(self.import_idle_timeout_s.max(1)),
        }
    }

    /// The HTTP limits (timeouts of at least 1 s).
    pub fn http_limits(&self) -> HttpLimits {
        HttpLimits {
            max_request_bytes: self.max_request_bytes,
            auth_failures_per_addr: self.auth_failures_per_addr,
            auth_failure_window: Duration::from_secs(self.auth_failure_window_s.max(1)),
            header_read_timeout: Duration::from_secs(self.header_read_timeout_s.max(1)),
            idle_timeout: Duration::from_secs(self.idle_timeout_s.max(1)),
            max_connections: self.max_connections.max(1),
        }
    }

    /// The claim limits.
    pub fn claim_limits(&self) -> ClaimLimits {
        ClaimLimits {
            per_device: self.claim_failures_per_device,
            per_key: self.claim_failures_per_key,
            window: Duration::from_secs(self.claim_failure_window_s.max(1)),
        }
    }
}

/// The `[api]` section of the default configuration file (after [`DEFAULT_TOML`]).
pub const API_DEFAULT_TOML: &str = r#"
[api]
# TCP address of the HTTP management API (/api/v1); "" disables it (overridden by --api-listen).
listen = ""
# Ed25519 public keys (64 hex digits) of manufacturers whose signed manifests are accepted.
trusted_manifest_keys = []
# Owner tokens in a manifest shorter than this (characters) are refused with their line.
min_owner_token_len = 12
# Whether `joinserver devices import` requires --signature too (API imports always do).
require_signed_cli_imports = false
# Largest manifest accepted in one API request (bytes).
max_manifest_bytes = 67108864
# Manifest imports run at once (each holds a thread and a store connection until its upload
# ends); one more is answered 429 with Retry-After.
max_concurrent_imports = 2
# An upload that sends nothing for this many seconds is refused (and audited).
import_idle_timeout_s = 30
# Failed claims (wrong owner token) allowed per DevEUI and per API key in each window.
claim_failures_per_device = 5
claim_failures_per_key = 20
claim_failure_window_s = 600
# HTTPS: the certificate chain and key (PEM; relative to the data directory unless absolute).
# `joinserver init` writes a self-signed pair here and prints its fingerprint. "" = no TLS.
# Plain HTTP is served only on a loopback address (beside HTTPS, told apart by the first byte)
# unless insecure_http = true (or --insecure-http), e.g. behind a TLS-terminating proxy.
tls_cert = "tls/api.crt"
tls_key = "tls/api.key"
insecure_http = false
# The TLS handshake and each request's headers must arrive within this many seconds; a connection
# with no request in progress that moves no byte for idle_timeout_s is closed.
header_read_timeout_s = 10
idle_timeout_s = 30
# Connections served at once; one more is closed at once.
max_connections = 256
# The largest request body of every route but the manifest import (bytes).
max_request_bytes = 16384
# Failed authentications allowed per source address in each window (then 429, unchecked).
auth_failures_per_addr = 10
auth_failure_window_s = 300
# Manifest keys bound to one manufacturer tenant each: a manifest signed by acme's key is refused
# when another manufacturer imports it (a key also in trusted_manifest_keys stays acme's).
# (A table: keep it after every other [api] key.)
# [api.manufacturer_keys]
# acme = ["<64 hex digits>"]
"#;

/// Limits on failed claims.
#[derive(Debug, Clone, Copy)]
pub struct ClaimLimits {
    /// Failures per DevEUI per window.
    pub per_device: u32,
    /// Failures per API key per window.
    pub per_key: u32,
    /// The window.
    pub window: Duration,
}

impl Default for ClaimLimits {
    fn default() -> Self {
        Self {
            per_device: 5,
            per_key: 20,
            window: Duration::from_secs(600),
        }
    }
}

/// The default configuration file, with every field documented. `joinserver config` prints it.
pub const DEFAULT_TOML: &str = r#"# joinserver configuration. Every field is optional; these are the defaults.
# Secrets are never in this file: they are DATA_DIR/secrets/{master.key,link.key,ns.kek,as.kek}.

[link]
# UDP address for JoinReq datagrams from network servers (overridden by --listen).
listen = "127.0.0.1:4100"
# This join server's id (16 hex digits): the sender id of its JoinAns datagrams.
js_id = "0000000000000000"
# Datagrams whose timestamp is further than this from our clock are dropped (milliseconds).
window_ms = 30000
# SO_RCVBUF requested for the link socket (bytes). The kernel caps it at net.core.rmem_max.
recv_buffer_bytes = 8388608
# Answers are cached per (sender, TransactionID) so that a retry or a replay gets the identical
# JoinAns and never consumes a DevNonce twice. Lifetime (ms) and capacity (about 1 KB each):
answer_cache_ttl_ms = 30000
answer_cache_max_entries = 200000
# Former default link keys still accepted while secrets/link.key rotates (no peers listed).
old_key_files = []
# Network servers allowed on the link (peers), each with its own key file; add one with
# `joinserver peers add --net-id N`. With none listed, the only peer is NetID 000000 with
# secrets/link.key and secrets/ns.kek. One key listed for several NetIDs is shared (a warning).
# [[link.peers]]
# net_id = "000013"
# key_file = "secrets/link-000013.key"
# ns_kek_file = "secrets/ns-000013.kek"             # its own network KEK (default secrets/ns.kek)
# old_key_files = ["secrets/link-000013.old.key"]   # still accepted while the key rotates

[join]
# LoRaWAN 1.0.2/1.0.3 devices: how many used DevNonces are remembered (reuse is refused).
dev_nonce_history = 64
# Session Lifetime in seconds sent with the AppSKey; 0 = no expiry.
session_lifetime_s = 0
# Per owner tenant, the KEK (file in the format of secrets/as.kek) that wraps its devices'
# AppSKeys; other devices use secrets/as.kek. A table: keep it last in [join].
# [join.app_kek_files]
# alice = "secrets/as-alice.kek"

[store]
# "" keeps the state in DATA_DIR/joinserver.db (SQLite, one instance); "postgres://user@host/db"
# shares it between any number of instances (overridden by --store-url and JOINSERVER_STORE_URL).
# A password in the URL makes this file a secret: prefer ~/.pgpass or the environment variable.
url = ""
# PostgreSQL connections each instance may open.
pool_size = 8
# Most nonce updates committed in one transaction (group commit).
max_batch = 4096
# Least milliseconds from one nonce commit's start to the next's: the joins that arrive meanwhile
# share one commit (one fsync of the WAL). 0: commit whenever joins wait (one fsync for every
# one or two joins of a storm through a network server). A join after a quiet spell commits at
# once; see commit_enough for a client that keeps few requests in flight.
commit_interval_ms = 2
# Nonce updates waiting that start a commit before that interval is out: a batch this large
# already spreads the fsync thin, and a client whose whole window of requests is waiting is not
# held to the interval (docs/benchmarks.md, "Paced wake-ups and commits").
commit_enough = 16
# Answers allowed to wait for the writer before the link stops reading datagrams.
queue_depth = 65536
# SQLite (PostgreSQL follows its own synchronous_commit): when a commit is done: "full" fsyncs
# the WAL (an answered join survives power loss); "normal" does not (it survives a crash or
# SIGKILL of the join server, not of the machine).
synchronous = "full"

[metrics]
# TCP address for /metrics (Prometheus) and /health; "" disables (overridden by --metrics).
listen = "127.0.0.1:9100"
"#;

/// The whole default configuration file: [`DEFAULT_TOML`], the `[api]` section
/// ([`API_DEFAULT_TOML`]) and the `[backend_interfaces]` section ([`BI_DEFAULT_TOML`]). `joinserver config` prints it.
pub fn default_toml() -> String {
    format!("{DEFAULT_TOML}{API_DEFAULT_TOML}{BI_DEFAULT_TOML}")
}

/// A path of the configuration: relative to the data directory unless absolute.
pub fn resolve(data_dir: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_owned()
    } else {
        data_dir.join(p)
    }
}

impl Config {
    /// Parses a configuration file's text.
    pub fn from_toml(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }

    /// The JS id as a number.
    pub fn js_id(&self) -> Result<u64, String> {
        let s = self.link.js_id.trim();
        let s = s.strip_prefix("0x").unwrap_or(s);
        if s.len() != 16 {
            return Err(format!(
                "link.js_id: expected 16 hex digits, found {}",
                s.len()
            ));
        }
        u64::from_str_radix(s, 16).map_err(|e| format!("link.js_id: {e}"))
    }
}

// The `[backend_interfaces]` section (issue 14).
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_toml_is_the_default_config() {
        assert_eq!(Config::from_toml(DEFAULT_TOML).unwrap(), Config::default());
        assert_eq!(
            Config::from_toml(&default_toml()).unwrap(),
            Config::default()
        );
        assert_eq!(Config::from_toml("").unwrap(), Config::default());
    }

    #[test]
    fn unknown_fields_are_refused() {
        let e = Config::from_toml("[link]\nlisten_addr = \"1.2.3.4:5\"\n").unwrap_err();
        assert!(e.to_string().contains("listen_addr"), "{e}");
    }

    #[test]
    fn peers_parse() {
        let c = Config::from_toml(
            "[[link.peers]]\nnet_id = \"000013\"\nkey_file = \"secrets/a.key\"\n",
        )
        .unwrap();
        assert_eq!(c.link.peers.len(), 1);
        assert_eq!(c.js_id().unwrap(), 0);
    }
}
