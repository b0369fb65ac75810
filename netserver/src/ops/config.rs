//! Configuration: a TOML file whose every field has a default, overridden by the command-line
//! flags of `netserver serve`. Secrets (the link key and the KEKs) are never in the TOML: they are
//! read from files (hex, mode 0600 as `joinserver init` writes them).
//!
//! `netserver config` prints [`DEFAULT_TOML`], the documented default file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use protocol::ids::NetId;
use protocol::region::{ChannelPlan, Region, RegionError};
use serde::{Deserialize, Serialize};

use crate::core::devaddr::AddrBlock;

/// The documented default configuration file, printed by `netserver config`.
pub const DEFAULT_TOML: &str = r#"# netserver configuration. Every field is optional; the values shown are the defaults.
# Flags of `netserver serve` override the file. Secrets come from files, never from here.

# Directory holding the session store (sessions.redb). Flag: --data-dir.
data_dir = "netserver-data"

[network]
# This network's NetID (6 hex digits). DevAddrs are allocated from its address space. Flag: --net-id.
net_id = "000000"
# Optional narrower DevAddr block inside the NetID's space, as "ADDR/BITS" (e.g. "26010000/16").
# Empty: the whole NwkAddr space of net_id.
dev_addr_prefix = ""
# The LoRaWAN region of this instance (RP002 name: EU868, US915, AU915, AS923-1 ... AS923-4, KR920,
# IN865). One region per instance: run one instance per region.
region = "EU868"
# US915/AU915: the enabled sub-bands (1..=8; 2 = channels 8-15 and 65, what most 8-channel
# gateways listen on). Empty: all 72 channels. Sent to 1.0.3+ devices as the Join-accept's
# channel-mask CFList and in every LinkADRReq. Must be empty in the other regions.
enabled_sub_bands = []
# EU868-like regions: up to 5 extra uplink channels (Hz) after the region's default ones, sent as
# the Join-accept's frequency CFList. Empty: no CFList. Must be empty in US915/AU915.
extra_channels_hz = []

[gwmp]
# UDP address the Semtech packet forwarders send to. Flag: --listen.
listen = "0.0.0.0:1700"
# Socket loops (one UDP socket each, SO_REUSEPORT, one thread each). 0 = one per CPU core.
workers = 0
# SO_RCVBUF requested for each GWMP socket, in bytes. The kernel caps it at net.core.rmem_max
# (raise that sysctl too); the effective value is logged at start.
recv_buffer_bytes = 8388608
# How long a PHYPayload is remembered to recognise copies of it heard by other gateways, in ms.
dedup_retention_ms = 10000
# Most PHYPayloads remembered at once; beyond it (a flood) frames are processed unremembered.
dedup_max_entries = 1000000
# Most gateways tracked; datagrams from further unknown gateway EUIs are dropped (a flood of
# made-up EUIs: GWMP is not authenticated, so filter gateways by address at the firewall too).
max_gateways = 100000
# A gateway not heard from (PULL_DATA or PUSH_DATA) for this long is reported offline, in s.
gateway_offline_after_s = 60
# File of the gateways allowed to use this server: one gateway EUI (16 hex digits) a line, blank
# lines and lines starting with '#' ignored. Datagrams of any other gateway are dropped and counted
# (netserver_gwmp_dropped_total{reason="unknown_gateway"}). "": every gateway (up to max_gateways).
allowed_gateways_file = ""
# A gateway's downlink address (the source of its PULL_DATA) does not move to a new source address
# until this long after the last PULL_DATA from the current one, in s: a forged PULL_DATA cannot
# take a gateway's Join-accepts and downlinks while the gateway keeps pulling (every 10 s by
# default in the packet forwarders). Trade-off: a gateway whose NAT mapping or address changes
# gets no downlinks for up to this long. 0: the address follows every PULL_DATA (the old behaviour).
addr_change_block_s = 30
# Larger datagrams are dropped and counted (reason "datagram_too_large"), in bytes.
max_datagram_bytes = 16384
# A PUSH_DATA with more rxpk entries is dropped whole and counted (reason "too_many_rxpk").
max_rxpk_per_datagram = 64
# Most joins in flight (waiting for the join server and their RX window) per socket loop; further
# Join-requests are dropped and counted (netserver_uplink_dropped_total{reason="joins_in_flight"}).
max_joins_in_flight = 4096

[join_server]
# The join server's link address (host:port). Flag: --join-server. Required.
address = ""
# Time to wait for a JoinAns before sending the same JoinReq again, in ms.
request_timeout_ms = 300
# JoinReq transmissions in all (the first one plus retries).
tries = 3
# Local address the link socket binds to. Each GWMP socket loop (gwmp.workers) also has a link
# socket of its own on an ephemeral port of the same address, for its joins: a JoinAns comes
# back to the thread that sent the JoinReq. A firewall between the servers must let the join
# server answer to any port of this address (it answers to each request's source).
bind = "0.0.0.0:0"

# Join servers by JoinEUI prefix (longest prefix wins; "0000000000000000/0" catches the rest);
# JoinEUIs no entry matches go to [join_server] over the link. `url` empty: our UDP link; else
# LoRaWAN Backend Interfaces (TS002) over HTTPS (docs/backend-interfaces.md).
# [[join_servers]]
# join_eui_prefix = "70b3d57ed0000000/40"
# url = "https://js.example.net:8443/"
# ca_file = "/etc/ssl/certs/ca-certificates.crt"
# tls_cert = "ns.crt"                  # mTLS, optional
# tls_key = "ns.key"
# authorization_file = "js-token"      # sent verbatim as Authorization ("Bearer jsbi_...")
# authorization = "Bearer jsbi_..."    # the same inline (a file keeps it out of the config)
# timeout_ms = 5000

[join]
# Delay from the end of the Join-request to RX1 / RX2, in s (EU868 JOIN_ACCEPT_DELAY1/2).
join_accept_delay1_s = 5
join_accept_delay2_s = 6
# A window is used only if the PULL_RESP can be sent at least this long before the window opens,
# in ms. It covers the backhaul to the gateway and the packet forwarder's just-in-time queue.
scheduling_margin_ms = 100
# Session radio parameters sent in the JoinReq DLSettings/RxDelay.
rx1_dr_offset = 0
# RX2 data rate; unset: the region's RX2 default (EU868 DR0, US915/AU915 DR8, AS923 DR2).
# rx2_data_rate = 0
rx_delay_s = 1
# Transmit power (dBm EIRP, txpk powe) of downlinks in RX1 and RX2. Unset: in EU868 14 (g1
# sub-band) and 27 (869.525 MHz, g3 sub-band); elsewhere the region's downlink EIRP.
# rx1_tx_power_dbm = 14
# rx2_tx_power_dbm = 27
# RF chain that transmits (txpk rfch): the chain with TX enabled in the gateway, 0 on common ones.
tx_rf_chain = 0

[scheduler]
# The per-gateway downlink scheduler (docs/operations.md, "Gateway airtime"): a downlink is sent
# only where a gateway that heard the frame can transmit it (one transmission at a time, its
# queue, the region's duty cycle per sub-band), RX1 or RX2, best link first; when none can, it is
# not sent, and for a Join-request the join server is not asked. false: the best gateway in the
# first window still reachable, whatever its airtime (the behaviour before the scheduler; for
# gateways that accept everything, such as the simulator without --radio realistic).
enabled = true
# The duty-cycle observation window, s (ETSI EN 300 220: one hour). The airtime booked in a
# sub-band within any such window stays within its duty cycle (EU868 g1 1 %: 36 s; 869.525 MHz
# 10 %: 360 s).
duty_cycle_window_s = 3600
# The share of each sub-band's budget Join-accepts may use (0..=1). The rest stays for data
# downlinks (ACKs of confirmed uplinks, MAC answers) during a join storm.
join_accept_share = 0.9
# Most downlinks scheduled ahead on one gateway: the SX1301 packet forwarder's just-in-time queue
# holds 32 and refuses more with COLLISION_PACKET.
max_queued_per_gateway = 32
# Least idle time between two transmissions of one gateway, ms: the packet forwarder's
# just-in-time queue holds each downlink from 31.5 ms before its start (TX_START_DELAY 1.5 ms +
# TX_JIT_DELAY 30 ms) with a 1 ms margin, and refuses an overlap with COLLISION_PACKET.
tx_guard_ms = 35
# Join-storm protection per device: a DevEUI's Join-requests are answered at most at the rate
# LoRaWAN 1.0.4 / 1.1 allow a device to send them (the loosest rule, the first hour after
# power-up: 36 s of Join-request airtime, i.e. a bucket of join_request_burst_s refilled at
# join_request_duty_cycle). Faster ones are counted and not answered. 0: no limit.
join_request_duty_cycle = 0.01
join_request_burst_s = 36

[storage]
# Most session writes committed in one transaction (group commit).
max_batch = 512
# Least milliseconds from one session commit's start to the next's: in a join storm the joins of
# an interval share one commit (one fdatasync) instead of one commit every ~2 ms; a join after a
# quiet spell commits at once. Each join waits at most this long more for its durable session
# (its Join-accept is due seconds later). 0: commit whenever writes wait.
commit_interval_ms = 10

[store]
# Where sessions, frame counters and gateway owners live. "": the embedded redb files in data_dir
# (one instance). "postgres://USER@HOST:PORT/DB": PostgreSQL, shared by every `netserver serve`
# instance given the same URL (docs/operations.md). Flag: --store-url; environment variable
# NETSERVER_STORE_URL. Put no password here: use password_file.
url = ""
# File holding the PostgreSQL password (mode 0600), used when url has none. "": no password.
password_file = ""
# PostgreSQL connections per instance (the store thread, the emitter, the session listener and
# the tools take one each).
pool_size = 6
# PostgreSQL: also write each delivered event to the table ns_events, in the transaction that
# commits its frame counter. Whatever instance dies when, that table holds every accepted
# uplink's event exactly once (the per-instance sinks lose what an instance had committed but
# not yet written when it was killed). Costs database writes: see docs/operations.md.
event_log = false
# PostgreSQL: where this instance takes the downlinks other instances hand it for the gateways
# whose PULL_DATA it holds (UDP, authenticated under a key derived from ns.kek). Give an address
# the other instances reach (port 0: any free port); it is recorded in ns_gateway_owners.
handoff_listen = "127.0.0.1:0"
# PostgreSQL: seconds a gateway stays this instance's after its last PULL_DATA (a forwarder
# pulls every 10 s by default); the record is refreshed every third of it.
gateway_owner_ttl_s = 60

[metrics]
# Address of the Prometheus /metrics, /health and /gateways HTTP endpoint. Empty: disabled.
# Flag: --metrics.
listen = ""

[http]
# Every HTTP listener of the server (the [metrics] endpoint and [data] downlink_http).
# TLS certificate and private key (PEM files; the key 0600). Both set: HTTPS (and, on a loopback
# address, plain HTTP too). Flags: --tls-cert, --tls-key.
tls_cert = ""
tls_key = ""
# Without a certificate, plain HTTP is served only on loopback addresses; a non-loopback address
# is refused at start unless this is true (e.g. behind a TLS-terminating proxy). Flag:
# --insecure-http.
insecure_http = false
# A connection's TLS handshake and each request's headers must arrive within this, in s.
header_read_timeout_s = 10
# A connection without a request in progress that moves no byte for this long is closed, in s.
idle_timeout_s = 30
# Connections served at once per listener; more are closed at once.
max_connections = 256

[data]
# Where application events (JSON lines, docs/integration.md) go: "" nowhere, "-" stdout,
# "udp://HOST:PORT" one datagram per event, "udp://HOST:PORT?pack=BYTES" JSON lines packed into
# datagrams of at most BYTES, or a file path (appended). Flag: --events.
events = ""
# UDP address of the downlink input (one JSON request per datagram, one JSON answer). "": off.
# Flag: --downlink-listen.
downlink_listen = ""
# HTTP address of the downlink input (POST /downlink, the same JSON). "": off.
# Flag: --downlink-http.
downlink_http = ""
# File holding the downlink inputs' bearer token (at least 16 visible characters, mode 0600; e.g.
# `openssl rand -hex 32 > downlink.token`). HTTP requests carry `Authorization: Bearer TOKEN`, UDP
# requests a "token" member; others get 401 (HTTP) or no answer at all (UDP). "": no token, and the
# inputs may then only listen on a loopback address. Flag: --downlink-token-file.
downlink_token_file = ""
# How long after a frame's first copy other gateways' copies are awaited before it is handled, ms.
collect_window_ms = 200
# A copy arriving this long after the first copy is a new transmission (a confirmed frame sent
# again), not another gateway's copy, ms.
retransmission_after_ms = 1000
# ADR: LinkADRReq from the SNR margin of the last 20 uplinks, for devices that set the ADR bit.
adr = true
adr_installation_margin_db = 10.0
# A DevStatusReq every this many uplinks of a device (0: never).
dev_status_interval = 100
# Most application downlinks waiting per device.
queue_per_device = 16
# Most counter writes (with their events and downlinks) per group commit.
max_batch = 4096
# Least milliseconds from one such group commit's start to the next's: under load the events,
# counters and downlinks of an interval share one commit and one wake-up of the thread that
# makes them durable; after a quiet spell an uplink is delivered at once. At most 100.
commit_interval_ms = 1

# Application integrations in ChirpStack v4's topics and JSON (docs/integration.md): MQTT and
# HTTP webhooks, each delivering from the durable event log in DATA_DIR/event-log/ (kept only
# when one of them is configured) at least once, in order, from where it was last acknowledged.
[integration]
# A new event-log segment starts past this many bytes.
segment_bytes = 8388608
# The most bytes the log keeps for a sink that lags (a broker down); past it the oldest segments
# are deleted and counted (netserver_integration_log_dropped_segments_total).
backlog_bytes = 268435456

# The application of each tenant (the device's owner); `default` for the others.
[integration.application_id]
default = "00000000-0000-0000-0000-000000000000"

[integration.mqtt]
# "mqtt://HOST:PORT" or "mqtts://HOST:PORT" (TLS against ca_file); "": no MQTT sink.
# Flag: --events mqtt://HOST:PORT[?qos=0|1].
url = ""
client_id = "netserver"
# User name, and the file holding the password (mode 0600); "": none.
username = ""
password_file = ""
# CA certificate(s), PEM, the broker's certificate must chain to (mqtts://).
ca_file = ""
# 0: at most once; 1: at least once (the broker acknowledges each event).
qos = 1
keep_alive_s = 30
# Topic templates: {application_id}, {dev_eui} (lower-case hex), {event} (up, join, ack, status,
# log). The command topic is subscribed with + for both; "": no downlink commands.
event_topic = "application/{application_id}/device/{dev_eui}/event/{event}"
command_topic = "application/{application_id}/device/{dev_eui}/command/down"
# Most events published and not yet acknowledged (QoS 1: at most this many per broker round
# trip: docs/benchmarks.md, "MQTT delivery beside the UDP sink").
max_inflight = 1000

# Webhooks: any number of [[integration.http]] sections, e.g.
# [[integration.http]]
# url = "https://app.example/lorawan"      # POSTed to, with ?event=up (join, ack, status, log)
# events = ["up", "join", "ack", "txack", "status", "log"]
# secret_file = "webhook.secret"           # HMAC-SHA256 of the body: X-Signature-256: sha256=<hex>
# timeout_ms = 5000
# retry_initial_ms = 250                   # doubled after each failure...
# retry_max_ms = 30000                     # ...up to this; retried until accepted
"#;

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Directory holding the session store.
    pub data_dir: PathBuf,
    /// Network identity and address space.
    pub network: NetworkConfig,
    /// Gateway-facing GWMP server.
    pub gwmp: GwmpConfig,
    /// The join server link client.
    pub join_server: JoinServerConfig,
    /// Join servers by JoinEUI prefix: our UDP link or LoRaWAN Backend Interfaces (TS002) over
    /// HTTPS. None listed: every join goes to `[join_server]` over the link.
    pub join_servers: Vec<JoinServerRoute>,
    /// Join handling and Join-accept scheduling.
    pub join: JoinConfig,
    /// The session store.
    pub storage: StorageConfig,
    /// Where the state lives: embedded or PostgreSQL.
    pub store: StoreConfig,
    /// The metrics endpoint.
    pub metrics: MetricsConfig,
    /// TLS and limits of every HTTP listener.
    pub http: HttpConfig,
    /// The data path and the application integration.
    pub data: DataConfig,
    /// MQTT, webhooks and the event log they deliver from.
    pub integration: crate::integration::config::IntegrationConfig,
    /// The per-gateway downlink scheduler and join-storm protection.
    pub scheduler: SchedulerConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("netserver-data"),
            network: NetworkConfig::default(),
            gwmp: GwmpConfig::default(),
            join_server: JoinServerConfig::default(),
            join_servers: Vec::new(),
            join: JoinConfig::default(),
            storage: StorageConfig::default(),
            store: StoreConfig::default(),
            metrics: MetricsConfig::default(),
            http: HttpConfig::default(),
            data: DataConfig::default(),
            integration: Default::default(),
            scheduler: SchedulerConfig::default(),
        }
    }
}

/// `[network]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetworkConfig {
    /// This network's NetID.
    pub net_id: NetId,
    /// Optional DevAddr block `ADDR/BITS` inside the NetID's space; empty for the whole space.
    pub dev_addr_prefix: String,
    /// The LoRaWAN region of this instance.
    pub region: Region,
    /// US915/AU915: the enabled sub-bands (1..=8); empty for all channels.
    pub enabled_sub_bands: Vec<u8>,
    /// Dynamic-plan regions: extra uplink channels (Hz) after the defaults, sent as the
    /// Join-accept's frequency CFList.
    pub extra_channels_hz: Vec<u32>,
}

impl NetworkConfig {
    /// The channel plan devices of this network use after their join: the enabled sub-bands
    /// (fixed plans) or the default channels plus the extra ones (dynamic plans).
    pub fn channel_plan(&self) -> Result<ChannelPlan, RegionError> {
        let r = self.region;
        let mut plan = match (r.is_fixed_plan(), self.enabled_sub_bands.is_empty()) {
            (true, false) => ChannelPlan::with_sub_bands(r, &self.enabled_sub_bands)?,
            (false, false) => return Err(RegionError::SubBand(self.enabled_sub_bands[0])),
            _ => ChannelPlan::new(r),
        };
        if r.is_fixed_plan() && !self.extra_channels_hz.is_empty() {
            return Err(RegionError::Frequency(self.extra_channels_hz[0]));
        }
        let first = plan.enabled().count() as u8;
        if self.extra_channels_hz.len() > 5 {
            return Err(RegionError::ChannelIndex(first + 5));
        }
        // CFList channels take the default channels' data-rate range (RP002 §2.2.5 and alike).
        let (min_dr, max_dr) = plan.channel(0).map_or((0, 5), |c| (c.min_dr, c.max_dr));
        for (k, &f) in self.extra_channels_hz.iter().enumerate() {
            plan.set_channel(first + k as u8, f, min_dr, max_dr)?;
        }
        Ok(plan)
    }

    /// [`Self::channel_plan`], or the region's boot plan if the settings are invalid (which
    /// `Config::validate` refuses before a server starts).
    pub fn plan_or_default(&self) -> ChannelPlan {
        self.channel_plan()
            .unwrap_or_else(|_| ChannelPlan::new(self.region))
    }
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            net_id: NetId::new(0).expect("0 is a valid NetID"),
            dev_addr_prefix: String::new(),
            region: Region::Eu868,
            enabled_sub_bands: Vec::new(),
            extra_channels_hz: Vec::new(),
        }
    }
}

/// `[gwmp]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GwmpConfig {
    /// UDP listen address.
    pub listen: SocketAddr,
    /// Socket loops; 0 = one per core.
    pub workers: usize,
    /// Requested SO_RCVBUF, bytes.
    pub recv_buffer_bytes: usize,
    /// De-duplication retention, ms.
    pub dedup_retention_ms: u64,
    /// De-duplication table capacity.
    pub dedup_max_entries: usize,
    /// Gateway registry capacity.
    pub max_gateways: usize,
    /// Gateway offline threshold, s.
    pub gateway_offline_after_s: u64,
    /// File of the allowed gateway EUIs; empty: every gateway.
    pub allowed_gateways_file: String,
    /// How long a gateway's downlink address is kept against PULL_DATA from another source, s.
    pub addr_change_block_s: u64,
    /// Largest datagram accepted, bytes.
    pub max_datagram_bytes: usize,
    /// Most `rxpk` entries in one PUSH_DATA.
    pub max_rxpk_per_datagram: usize,
    /// Most joins in flight per socket loop.
    pub max_joins_in_flight: usize,
}

impl Default for GwmpConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 1700)),
            workers: 0,
            recv_buffer_bytes: 8 << 20,
            dedup_retention_ms: 10_000,
            dedup_max_entries: 1_000_000,
            max_gateways: 100_000,
            gateway_offline_after_s: 60,
            allowed_gateways_file: String::new(),
            addr_change_block_s: 30,
            max_datagram_bytes: 16 << 10,
            max_rxpk_per_datagram: 64,
            max_joins_in_flight: 4096,
        }
    }
}

impl GwmpConfig {
    /// Checks the datagram limits.
    pub fn validate(&self) -> Result<(), String> {
        // A PULL_DATA, the smallest datagram a gateway must send, is 12 bytes.
        if self.max_datagram_bytes < 12 {
            return Err("gwmp.max_datagram_bytes must be at least 12 (a PULL_DATA)".into());
        }
        if self.max_rxpk_per_datagram == 0 || self.max_joins_in_flight == 0 {
            return Err(
                "gwmp.max_rxpk_per_datagram and gwmp.max_joins_in_flight must be at least 1".into(),
            );
        }
        Ok(())
    }
}

/// `[join_server]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JoinServerConfig {
    /// Join server link address, `host:port`.
    pub address: String,
    /// Per-try timeout, ms.
    pub request_timeout_ms: u64,
    /// Transmissions in all.
    pub tries: u32,
    /// Local bind address of the link socket (the socket loops' own link sockets take
    /// ephemeral ports of its address).
    pub bind: SocketAddr,
}

impl Default for JoinServerConfig {
    fn default() -> Self {
        Self {
            address: String::new(),
            request_timeout_ms: 300,
            tries: 3,
            bind: SocketAddr::from(([0, 0, 0, 0], 0)),
        }
    }
}

/// One `[[join_servers]]` entry: the join server of the JoinEUIs under a prefix. Its `Debug`
/// never shows the `authorization` value.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JoinServerRoute {
    /// `"70b3d57ed0000000/40"`: the JoinEUI's first 40 bits. The longest matching prefix wins;
    /// `"0000000000000000/0"` (or "") is a default entry that catches the rest.
    pub join_eui_prefix: String,
    /// A TS002 join server's URL (`https://js.example.net:8443/`), posted to exactly as written.
    /// Empty: our UDP link to `[join_server] address`.
    pub url: String,
    /// The CA certificate(s) (PEM) the join server's certificate must chain to (a system bundle
    /// such as /etc/ssl/certs/ca-certificates.crt for a public CA). Required for `https`.
    pub ca_file: String,
    /// A client certificate chain (PEM) for mTLS, with `tls_key`.
    pub tls_cert: String,
    /// The client certificate's private key (PEM, 0600).
    pub tls_key: String,
    /// A file (0600) whose content is sent verbatim as the `Authorization` header, for example
    /// `Bearer jsbi_…` from `joinserver peers token`.
    pub authorization_file: String,
    /// The `Authorization` header's value itself (the issue's `authorization`), for operators who
    /// keep it in the configuration; `authorization_file` keeps it out of it. At most one of the
    /// two.
    pub authorization: String,
    /// The HTTP request timeout, ms (ChirpStack's is 5 s).
    pub timeout_ms: u64,
}

impl std::fmt::Debug for JoinServerRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinServerRoute")
            .field("join_eui_prefix", &self.join_eui_prefix)
            .field("url", &self.url)
            .field("ca_file", &self.ca_file)
            .field("tls_cert", &self.tls_cert)
            .field("tls_key", &self.tls_key)
            .field("authorization_file", &self.authorization_file)
            .field(
                "authorization",
                &if self.authorization.is_empty() {
                    ""
                } else {
                    "<redacted>"
                },
            )
            .field("timeout_ms", &self.timeout_ms)
            .finish()
    }
}

impl Default for JoinServerRoute {
    fn default() -> Self {
        Self {
            join_eui_prefix: String::new(),
            url: String::new(),
            ca_file: String::new(),
            tls_cert: String::new(),
            tls_key: String::new(),
            authorization_file: String::new(),
            authorization: String::new(),
            timeout_ms: 5000,
        }
    }
}

/// `[join]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JoinConfig {
    /// JOIN_ACCEPT_DELAY1, s.
    pub join_accept_delay1_s: u32,
    /// JOIN_ACCEPT_DELAY2, s.
    pub join_accept_delay2_s: u32,
    /// Scheduling margin, ms.
    pub scheduling_margin_ms: u64,
    /// RX1DROffset given to joined devices.
    pub rx1_dr_offset: u8,
    /// RX2 data rate given to joined devices (`None`: the region's default).
    pub rx2_data_rate: Option<u8>,
    /// RX1 delay (s) given to joined devices.
    pub rx_delay_s: u8,
    /// RX1 transmit power, dBm (`None`: 14 in EU868, else the region's downlink EIRP).
    pub rx1_tx_power_dbm: Option<i8>,
    /// RX2 transmit power, dBm (`None`: 27 in EU868, else the region's downlink EIRP).
    pub rx2_tx_power_dbm: Option<i8>,
    /// RF chain for transmission.
    pub tx_rf_chain: u8,
}

impl Default for JoinConfig {
    fn default() -> Self {
        Self {
            join_accept_delay1_s: 5,
            join_accept_delay2_s: 6,
            scheduling_margin_ms: 100,
            rx1_dr_offset: 0,
            rx2_data_rate: None,
            rx_delay_s: 1,
            rx1_tx_power_dbm: None,
            rx2_tx_power_dbm: None,
            tx_rf_chain: 0,
        }
    }
}

/// `[scheduler]`: the per-gateway downlink scheduler and join-storm protection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SchedulerConfig {
    /// Whether airtime is checked and booked (off: the best gateway, first reachable window).
    pub enabled: bool,
    /// The duty-cycle observation window, s.
    pub duty_cycle_window_s: u64,
    /// The share of each sub-band's budget Join-accepts may use, 0..=1.
    pub join_accept_share: f64,
    /// Most downlinks scheduled ahead on one gateway.
    pub max_queued_per_gateway: usize,
    /// Least idle time between two transmissions of one gateway, ms.
    pub tx_guard_ms: u64,
    /// The long-run share of time a device may spend on Join-requests (0: no per-device limit).
    pub join_request_duty_cycle: f64,
    /// The Join-request airtime a device may spend at once, s.
    pub join_request_burst_s: u64,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            duty_cycle_window_s: 3600,
            join_accept_share: 0.9,
            max_queued_per_gateway: 32,
            tx_guard_ms: 35,
            join_request_duty_cycle: 0.01,
            join_request_burst_s: 36,
        }
    }
}

impl SchedulerConfig {
    /// The scheduler's limits.
    pub fn limits(&self) -> crate::core::airtime::Limits {
        crate::core::airtime::Limits {
            duty_cycle_window: Duration::from_secs(self.duty_cycle_window_s),
            join_accept_share: self.join_accept_share,
            max_queued: self.max_queued_per_gateway,
            guard: Duration::from_millis(self.tx_guard_ms),
        }
    }

    /// Checks ranges.
    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.join_accept_share) {
            return Err("scheduler.join_accept_share must be within 0..=1".into());
        }
        if !(0.0..=1.0).contains(&self.join_request_duty_cycle) {
            return Err("scheduler.join_request_duty_cycle must be within 0..=1".into());
        }
        if self.duty_cycle_window_s == 0 || self.max_queued_per_gateway == 0 {
            return Err(
                "scheduler.duty_cycle_window_s and max_queued_per_gateway must be positive".into(),
            );
        }
        Ok(())
    }
}

/// `[storage]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// Most writes per group commit.
    pub max_batch: usize,
    /// Least milliseconds from one group commit's start to the next's.
    pub commit_interval_ms: u64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            max_batch: 512,
            commit_interval_ms: 10,
        }
    }
}

impl StorageConfig {
    /// The session store's grouping of writes.
    pub fn group_commit(&self) -> crate::store::commit::GroupCommit {
        crate::store::commit::GroupCommit {
            max_batch: self.max_batch,
            min_interval: Duration::from_millis(self.commit_interval_ms),
        }
    }
}

/// `[store]`: where the state lives.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// Empty: embedded; `postgres://...`: PostgreSQL.
    pub url: String,
    /// File holding the PostgreSQL password; empty: none.
    pub password_file: String,
    /// PostgreSQL connections per instance.
    pub pool_size: u32,
    /// PostgreSQL: events also to `ns_events`, in the counters' transaction.
    pub event_log: bool,
    /// PostgreSQL: the UDP address other instances hand this one downlinks at.
    pub handoff_listen: String,
    /// PostgreSQL: seconds a gateway stays this instance's after its last PULL_DATA.
    pub gateway_owner_ttl_s: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            password_file: String::new(),
            pool_size: 6,
            event_log: false,
            handoff_listen: "127.0.0.1:0".into(),
            gateway_owner_ttl_s: 60,
        }
    }
}

/// The URL may hold a password: `Debug` shows it redacted.
impl std::fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreConfig")
            .field("url", &crate::store::url::redacted(&self.url))
            .field("password_file", &self.password_file)
            .field("pool_size", &self.pool_size)
            .field("event_log", &self.event_log)
            .field("handoff_listen", &self.handoff_listen)
            .field("gateway_owner_ttl_s", &self.gateway_owner_ttl_s)
            .finish()
    }
}

/// `[metrics]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Listen address, empty = disabled.
    pub listen: String,
}

/// `[http]`: TLS and limits of every HTTP listener.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Certificate chain (PEM); empty: no TLS.
    pub tls_cert: PathBuf,
    /// Private key (PEM); empty: no TLS.
    pub tls_key: PathBuf,
    /// Serve plain HTTP on a non-loopback address.
    pub insecure_http: bool,
    /// TLS handshake and request-head deadline, s.
    pub header_read_timeout_s: u64,
    /// Idle connection timeout, s.
    pub idle_timeout_s: u64,
    /// Connections at once per listener.
    pub max_connections: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            tls_cert: PathBuf::new(),
            tls_key: PathBuf::new(),
            insecure_http: false,
            header_read_timeout_s: 10,
            idle_timeout_s: 30,
            max_connections: 256,
        }
    }
}

impl HttpConfig {
    /// The listeners' limits.
    pub fn limits(&self) -> httpsec::serve::Limits {
        httpsec::serve::Limits {
            header_read_timeout: Duration::from_secs(self.header_read_timeout_s),
            idle_timeout: Duration::from_secs(self.idle_timeout_s),
            max_connections: self.max_connections,
        }
    }
}

/// `[data]`: the data path and the application integration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataConfig {
    /// Where application events go: empty (nowhere), `-` (stdout),
    /// `udp://HOST:PORT[?pack=BYTES]`, or a file path (appended).
    pub events: String,
    /// UDP address of the downlink input (JSON requests); empty: disabled.
    pub downlink_listen: String,
    /// HTTP address of the downlink input (`POST /downlink`); empty: disabled.
    pub downlink_http: String,
    /// File of the downlink inputs' bearer token; empty: none (loopback addresses only).
    pub downlink_token_file: String,
    /// How long after a frame's first copy the other gateways' copies are awaited, ms.
    pub collect_window_ms: u64,
    /// A copy of a frame arriving this long after its first copy is a new transmission (a
    /// confirmed retransmission, answered again), not another gateway's copy, ms.
    pub retransmission_after_ms: u64,
    /// ADR: send LinkADRReq to devices with the ADR bit set.
    pub adr: bool,
    /// ADR installation margin, dB.
    pub adr_installation_margin_db: f32,
    /// Send a DevStatusReq every this many uplinks of a device; 0: never.
    pub dev_status_interval: u32,
    /// Most application downlinks queued per device.
    pub queue_per_device: usize,
    /// Most emits (counter writes with their events and downlinks) per group commit.
    pub max_batch: usize,
    /// Least milliseconds from one counter group commit's start to the next's.
    pub commit_interval_ms: u64,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            events: String::new(),
            downlink_listen: String::new(),
            downlink_http: String::new(),
            downlink_token_file: String::new(),
            collect_window_ms: 200,
            retransmission_after_ms: 1000,
            adr: true,
            adr_installation_margin_db: 10.0,
            dev_status_interval: 100,
            queue_per_device: 16,
            max_batch: 4096,
            commit_interval_ms: 1,
        }
    }
}

/// The longest `data.commit_interval_ms` accepted: a tenth of the shortest RX1 delay (1 s), so
/// that with the collection window a downlink still leaves in time.
const MAX_DATA_COMMIT_INTERVAL_MS: u64 = 100;

impl DataConfig {
    /// Checks the settings that depend on each other.
    pub fn validate(&self) -> Result<(), String> {
        if self.collect_window_ms >= self.retransmission_after_ms {
            return Err(format!(
                "data.collect_window_ms ({}) must be below data.retransmission_after_ms ({}): a copy inside the window is another gateway's",
                self.collect_window_ms, self.retransmission_after_ms
            ));
        }
        if self.max_batch == 0 || self.queue_per_device == 0 {
            return Err("data.max_batch and data.queue_per_device must be at least 1".into());
        }
        if self.commit_interval_ms > MAX_DATA_COMMIT_INTERVAL_MS {
            return Err(format!(
                "data.commit_interval_ms must be at most {MAX_DATA_COMMIT_INTERVAL_MS} (an uplink's events and downlink wait up to that long for their commit, and the downlink must still meet RX1, 1 s after the uplink)"
            ));
        }
        Ok(())
    }
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The TOML is malformed or has unknown fields.
    #[error("invalid config file {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The TOML error.
        source: Box<toml::de::Error>,
    },
    /// A value is out of range or inconsistent.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// Reads a TOML file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source: Box::new(source),
        })
    }

    /// Checks ranges and consistency; returns the resolved DevAddr block.
    pub fn validate(&self) -> Result<AddrBlock, ConfigError> {
        self.gwmp.validate().map_err(ConfigError::Invalid)?;
        self.scheduler.validate().map_err(ConfigError::Invalid)?;
        let j = &self.join;
        if j.join_accept_delay1_s == 0 || j.join_accept_delay2_s <= j.join_accept_delay1_s {
            return Err(ConfigError::Invalid(
                "join.join_accept_delay2_s must be greater than join_accept_delay1_s > 0".into(),
            ));
        }
        let region = self.network.region;
        self.network.channel_plan().map_err(|e| {
            ConfigError::Invalid(format!(
                "network.enabled_sub_bands / extra_channels_hz in {region}: {e}"
            ))
        })?;
        if j.rx1_dr_offset > region.params().max_rx1_dr_offset {
            return Err(ConfigError::Invalid(format!(
                "join.rx1_dr_offset {} does not exist in {region}",
                j.rx1_dr_offset
            )));
        }
        if let Some(dr) = j.rx2_data_rate {
            let downlink = region.dr_def(dr).is_ok_and(|d| d.downlink);
            if !downlink || region.data_rate(dr).is_err() || dr > 15 {
                return Err(ConfigError::Invalid(format!(
                    "join.rx2_data_rate DR{dr} has no downlink modulation in {region}"
                )));
            }
        }
        if j.rx_delay_s > 15 {
            return Err(ConfigError::Invalid(
                "join.rx_delay_s must be 0..=15".into(),
            ));
        }
        if self.join_server.tries == 0 {
            return Err(ConfigError::Invalid(
                "join_server.tries must be at least 1".into(),
            ));
        }
        if self.join_server.request_timeout_ms == 0 {
            return Err(ConfigError::Invalid(
                "join_server.request_timeout_ms must be positive".into(),
            ));
        }
        crate::store::url::StoreKind::of(&self.store.url).map_err(ConfigError::Invalid)?;
        if self.store.pool_size < 3 {
            return Err(ConfigError::Invalid(
                "store.pool_size must be at least 3".into(),
            ));
        }
        if self.store.gateway_owner_ttl_s < 3 {
            return Err(ConfigError::Invalid(
                "store.gateway_owner_ttl_s must be at least 3".into(),
            ));
        }
        if self.storage.max_batch == 0 {
            return Err(ConfigError::Invalid(
                "storage.max_batch must be at least 1".into(),
            ));
        }
        if self.storage.commit_interval_ms > 1000 {
            return Err(ConfigError::Invalid(
                "storage.commit_interval_ms must be at most 1000 (a join waits that long for its session)".into(),
            ));
        }
        AddrBlock::resolve(self.network.net_id, &self.network.dev_addr_prefix)
            .map_err(ConfigError::Invalid)
    }

    /// Per-try JoinReq timeout.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.join_server.request_timeout_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_toml_parses_to_default() {
        let c: Config = toml::from_str(DEFAULT_TOML).unwrap();
        assert_eq!(c, Config::default());
        c.validate().unwrap();
    }

    #[test]
    fn unknown_fields_are_refused() {
        let e = toml::from_str::<Config>("[gwmp]\nlisten_addr = \"0.0.0.0:1\"\n").unwrap_err();
        assert!(e.to_string().contains("listen_addr"), "{e}");
    }

    #[test]
    fn inconsistent_values_are_refused() {
        let mut c = Config::default();
        c.join.join_accept_delay2_s = 5;
        assert!(c.validate().is_err());
        let mut c = Config::default();
        c.join_server.tries = 0;
        assert!(c.validate().is_err());
        let mut c = Config::default();
        c.join.rx1_dr_offset = 6;
        assert!(c.validate().is_err());
        let mut c = Config::default();
        c.scheduler.join_accept_share = 1.5;
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("join_accept_share"));
        let mut c = Config::default();
        c.scheduler.max_queued_per_gateway = 0;
        assert!(c.validate().is_err());
    }

    #[test]
    fn region_settings_read_and_checked() {
        let c: Config =
            toml::from_str("[network]\nregion = \"US915\"\nenabled_sub_bands = [2]\n").unwrap();
        c.validate().unwrap();
        let plan = c.network.channel_plan().unwrap();
        assert_eq!(
            plan.enabled().map(|(i, _)| i).collect::<Vec<_>>(),
            [8, 9, 10, 11, 12, 13, 14, 15, 65]
        );
        // ChMask0 = 0xFF00, ChMask4 = 0x0002, CFListType 1.
        let cf = plan.cf_list().unwrap().0;
        assert_eq!(cf, [0, 0xFF, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 1]);
        let bad = |toml: &str| {
            let c: Config = toml::from_str(toml).unwrap();
            c.validate().unwrap_err().to_string()
        };
        let e = bad("[network]\nregion = \"US915\"\nenabled_sub_bands = [9]\n");
        assert!(e.contains("sub-band 9"), "{e}");
        let e = bad("[network]\nenabled_sub_bands = [2]\n");
        assert!(e.contains("EU868"), "{e}");
        let e = bad("[network]\nregion = \"US915\"\n[join]\nrx1_dr_offset = 4\n");
        assert!(e.contains("rx1_dr_offset 4"), "{e}");
        let e = bad("[network]\nregion = \"US915\"\n[join]\nrx2_data_rate = 0\n");
        assert!(e.contains("DR0"), "{e}");
        let e = bad("[network]\nregion = \"AS923-1\"\nextra_channels_hz = [868100000]\n");
        assert!(e.contains("868100000"), "{e}");
        assert!(toml::from_str::<Config>("[network]\nregion = \"XX1\"\n").is_err());
        // EU868 extra channels: the frequency CFList.
        let c: Config =
            toml::from_str("[network]\nextra_channels_hz = [867100000, 867300000]\n").unwrap();
        c.validate().unwrap();
        let cf = c.network.channel_plan().unwrap().cf_list().unwrap();
        assert_eq!(
            cf.frequencies_hz(),
            Some([867_100_000, 867_300_000, 0, 0, 0])
        );
    }

    #[test]
    fn config_defaults_are_valid_and_inconsistent_windows_are_refused() {
        assert_eq!(DataConfig::default().validate(), Ok(()));
        let c = DataConfig {
            collect_window_ms: 1000,
            ..DataConfig::default()
        };
        assert!(c.validate().unwrap_err().contains("collect_window_ms"));
        let c = DataConfig {
            max_batch: 0,
            ..DataConfig::default()
        };
        assert!(c.validate().is_err());
        let c = DataConfig {
            commit_interval_ms: 100,
            ..DataConfig::default()
        };
        assert_eq!(c.validate(), Ok(()));
        let c = DataConfig {
            commit_interval_ms: 101,
            ..DataConfig::default()
        };
        assert!(c
            .validate()
            .unwrap_err()
            .contains("data.commit_interval_ms"));
    }
}
