//! Counters, latency histograms, and what the simulator reports: a progress line on stderr every
//! second, a human table at the end, a JSON report (`--report-json`) and per-second rates
//! (`--timeseries-csv`). Every field is explained in `docs/simulator.md`.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

use anyhow::Context;
use hdrhistogram::Histogram;
use serde::Serialize;

/// A latency histogram in microseconds (1 µs to 1 hour, 3 significant digits).
#[derive(Clone, Debug)]
pub struct Latency(Histogram<u64>);

impl Default for Latency {
    fn default() -> Self {
        Self(Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds"))
    }
}

impl Latency {
    /// Records one latency in microseconds (clamped into the histogram's range).
    pub fn record_us(&mut self, us: u64) {
        self.0.saturating_record(us.max(1));
    }
    /// Number of samples.
    pub fn count(&self) -> u64 {
        self.0.len()
    }
    /// The `q` quantile (0..=1) in milliseconds; 0 with no samples.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        if self.0.is_empty() {
            return 0.0;
        }
        self.0.value_at_quantile(q) as f64 / 1000.0
    }
    /// The largest sample in milliseconds.
    pub fn max_ms(&self) -> f64 {
        if self.0.is_empty() {
            return 0.0;
        }
        self.0.max() as f64 / 1000.0
    }
}

/// Everything counted during a run. The engine increments these; nothing here does I/O.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// Join-requests sent (every attempt, retries included).
    pub joins_attempted: u64,
    /// When each device of the last join phase first joined (its Join-accept's window), µs
    /// from the phase's start (the run's, or power-restore's), in device order; filled in when
    /// the run finishes.
    pub joined_after_us: Vec<u64>,
    /// Join-requests per device in the last join phase: the most.
    pub join_attempts_max: u16,
    /// Join-requests per device in the last join phase: the mean.
    pub join_attempts_mean: f64,
    /// The airtime lower bound of the last join phase ([`crate::radio::bound`]), µs.
    pub airtime_bound_us: Option<u64>,
    /// The last join phase by the data rate the devices join at, slowest first.
    pub storm_by_data_rate: Vec<DataRateStorm>,
    /// Downlinks gateways refused with `COLLISION_PACKET` (busy, or their queue full).
    pub tx_refused_collision: u64,
    /// Downlinks gateways refused with `TOO_LATE`.
    pub tx_refused_too_late: u64,
    /// Downlinks gateways refused with `DUTY_CYCLE_OVERFLOW`.
    pub tx_refused_duty_cycle: u64,
    /// Uplink transmissions that gateways in reach all lost to collisions or their own
    /// transmissions.
    pub uplinks_collided: u64,
    /// Join-accepts received in RX1 or RX2 that decrypted, passed the MIC and JoinNonce checks.
    pub joins_accepted: u64,
    /// Of which in RX1.
    pub joins_rx1: u64,
    /// Of which in RX2.
    pub joins_rx2: u64,
    /// Join-accepts that arrived in a window but that the device rejected (MIC, JoinNonce).
    pub joins_failed: u64,
    /// Join attempts for which nothing arrived before RX2 closed.
    pub joins_timed_out: u64,
    /// Join-accepts whose `tmst` missed both windows, or that reached the gateway too late.
    pub joins_missed_window: u64,
    /// JoinRequest sent → PULL_RESP received (wall clock).
    pub join_latency: Latency,
    /// LoRaWAN 1.1 Rejoin-requests sent (ForceRejoinReq, periodic type 0), retries included.
    pub rejoins_attempted: u64,
    /// Join-accepts to Rejoin-requests accepted: new sessions.
    pub rejoins_accepted: u64,
    /// Of which in RX1.
    pub rejoins_rx1: u64,
    /// Rejoin-requests whose windows closed without a Join-accept (the session goes on).
    pub rejoins_missed: u64,
    /// Devices that took at least one new session from a rejoin.
    pub devices_rejoined: u64,
    /// Data uplinks sent, counting each frame counter once (NbTrans repeats are not new uplinks).
    pub uplinks_sent: u64,
    /// Of which confirmed.
    pub uplinks_confirmed: u64,
    /// Transmissions of data frames, repeats included.
    pub uplink_transmissions: u64,
    /// Confirmed uplinks whose ACK arrived in a window.
    pub uplinks_acked: u64,
    /// Uplinks heard by no gateway on any transmission (radio loss), plus confirmed uplinks never
    /// acknowledged after all NbTrans transmissions.
    pub uplinks_lost: u64,
    /// Extra copies of one uplink seen at the event sink (only with `--event-listen`).
    pub uplinks_duplicates: u64,
    /// Distinct uplinks the event sink received (only with `--event-listen`).
    pub uplinks_delivered: u64,
    /// Data transmissions (first ones and repeats) that waited for the sub-band duty cycle.
    pub uplinks_duty_cycle_deferred: u64,
    /// Confirmed uplink sent → ACK PULL_RESP received (wall clock).
    pub ack_latency: Latency,
    /// Data downlinks received in a window (ACKs and MAC commands).
    pub downlinks_received: u64,
    /// Data downlinks that missed their window or reached the gateway too late.
    pub downlinks_missed_window: u64,
    /// Join-accepts and data downlinks at the right time but on another frequency or data rate
    /// than the device listens on in that window (also counted as missed windows).
    pub wrong_radio: u64,
    /// Downlinks no device could claim (no pending window matched, MIC did not verify).
    pub downlinks_unmatched: u64,
    /// MAC commands answered (LinkADRReq, DeviceTimeReq, RekeyConf, ...).
    pub mac_commands_answered: u64,
    /// Radio transmissions (joins and data) heard by at least one gateway.
    pub receptions: u64,
    /// PUSH_DATA datagrams sent.
    pub push_data: u64,
    /// `rxpk` entries in them: receptions forwarded, one per gateway that heard a frame.
    pub rxpk: u64,
    /// PUSH_ACKs received.
    pub push_ack: u64,
    /// PULL_DATA datagrams sent.
    pub pull_data: u64,
    /// PULL_ACKs received.
    pub pull_ack: u64,
    /// PULL_RESP datagrams received.
    pub pull_resp: u64,
    /// TX_ACKs sent reporting an error (TOO_LATE, ...).
    pub tx_ack_errors: u64,
    /// Datagrams from the network server that could not be parsed.
    pub bad_datagrams: u64,
    /// Datagrams that could not be sent (kernel buffer full, or an ICMP port unreachable
    /// reported on the connected socket).
    pub send_errors: u64,
    /// Datagrams the kernel dropped at the gateways' sockets (receive buffer full); `None` where
    /// the kernel does not say (see the `udpstat` crate).
    pub gateway_socket_drops: Option<u64>,
    /// The same at the event sink's socket; `None` without `--event-listen`.
    pub event_socket_drops: Option<u64>,
    /// CPU seconds the socket loop spent in `sendmmsg` (kernel included).
    pub send_cpu_s: f64,
    /// DevNonce log records written (see [`crate::nonce_log`]).
    pub nonce_log_records: u64,
    /// DevNonce log `fdatasync` calls (group commits).
    pub nonce_log_syncs: u64,
    /// Wall seconds datagrams waited for their DevNonces to be durable (the socket loop reads
    /// answers meanwhile).
    pub nonce_log_s: f64,
    /// When the first datagram went out (µs of the run).
    pub first_send_us: Option<u64>,
    /// When the last datagram went out.
    pub last_send_us: u64,
}

impl Stats {
    /// Seconds between the first and the last datagram sent.
    pub fn generate_span_s(&self) -> f64 {
        self.first_send_us
            .map_or(0.0, |f| self.last_send_us.saturating_sub(f) as f64 / 1e6)
    }
}

/// One row of the per-second time series.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Second {
    /// Join-requests sent in this second.
    pub joins_sent: u64,
    /// Join-accepts accepted.
    pub joins_accepted: u64,
    /// Data uplinks sent (new frame counters).
    pub uplinks_sent: u64,
    /// Confirmed uplinks acknowledged.
    pub uplinks_acked: u64,
    /// Data downlinks received.
    pub downlinks: u64,
    /// Datagrams sent to the network server.
    pub datagrams_out: u64,
    /// Datagrams received from the network server.
    pub datagrams_in: u64,
    /// Distinct uplinks the event sink received (`--event-listen`; 0 without it).
    pub uplinks_delivered: u64,
}

/// Per-second counters, indexed by whole seconds of the run.
#[derive(Clone, Debug, Default)]
pub struct TimeSeries {
    /// One row per second.
    pub rows: Vec<Second>,
}

impl TimeSeries {
    /// The row for second `s`, growing the series as needed.
    pub fn at(&mut self, s: u64) -> &mut Second {
        let i = s as usize;
        if self.rows.len() <= i {
            self.rows.resize(i + 1, Second::default());
        }
        &mut self.rows[i]
    }

    /// Writes the CSV: one line per second.
    pub fn write_csv(&self, path: &Path) -> anyhow::Result<()> {
        let mut out = String::from(
            "second,joins_sent,joins_accepted,uplinks_sent,uplinks_acked,downlinks,datagrams_out,datagrams_in,uplinks_delivered\n",
        );
        for (i, r) in self.rows.iter().enumerate() {
            let _ = writeln!(
                out,
                "{i},{},{},{},{},{},{},{},{}",
                r.joins_sent,
                r.joins_accepted,
                r.uplinks_sent,
                r.uplinks_acked,
                r.downlinks,
                r.datagrams_out,
                r.datagrams_in,
                r.uplinks_delivered
            );
        }
        std::fs::write(path, out).with_context(|| format!("writing {}", path.display()))
    }
}

/// The JSON report (`--report-json`).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Report {
    /// The scenario run.
    pub scenario: String,
    /// The region (RP002 common name).
    pub region: String,
    /// The radio between devices and gateways: `ideal` (every transmission heard, every
    /// downlink sent) or `realistic` (`--radio realistic`: airtime, duty cycle, collisions).
    pub radio: String,
    /// Devices in the fleet.
    pub devices: u64,
    /// Virtual gateways.
    pub gateways: u64,
    /// The traffic seed.
    pub seed: u64,
    /// Wall-clock length of the run, seconds.
    pub duration_s: f64,
    /// Joins.
    pub joins: Joins,
    /// Join latency percentiles, ms.
    pub join_latency_ms: Percentiles,
    /// Data uplinks.
    pub uplinks: Uplinks,
    /// ACK latency percentiles, ms.
    pub ack_latency_ms: AckPercentiles,
    /// Data downlinks.
    pub downlinks: Downlinks,
    /// GWMP datagram counts.
    pub gwmp: Gwmp,
    /// LoRaWAN 1.1 rejoins (present when any Rejoin-request was sent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rejoins: Option<Rejoins>,
    /// Devices holding a session at the end.
    pub devices_joined_at_end: u64,
    /// Datagrams the kernel dropped at the simulator's own sockets.
    pub simulator_socket_drops: SocketDrops,
    /// What an operator should look at first (e.g. a network server that acknowledged nothing);
    /// empty when nothing stands out.
    pub warnings: Vec<String>,
    /// The last join phase against the radio's limits.
    pub storm: StormReport,
    /// Downlinks the gateways refused, by reason. (`gateways` already names the number of
    /// gateways, so this is not `gateways.tx_refused`.)
    pub gateways_tx_refused: TxRefused,
}

/// `storm.*`: how fast the last join phase (the run's, or power-restore's rejoin) went, from its
/// start, beside the airtime lower bound. A time is `null` when that share never joined.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct StormReport {
    /// Seconds until half the fleet held a session (its Join-accept's window).
    pub joined_p50_s: Option<f64>,
    /// Seconds until 99 % of the fleet held a session.
    pub joined_p99_s: Option<f64>,
    /// Seconds until the whole fleet held a session.
    pub joined_all_s: Option<f64>,
    /// The least time in which the fleet's Join-accepts fit the gateways' transmitters and
    /// duty-cycle budgets ([`crate::radio::bound`]), seconds.
    pub airtime_bound_s: Option<f64>,
    /// Join-requests per device: the mean (table only).
    #[serde(skip)]
    pub attempts_mean: f64,
    /// Join-requests per device: the most (table only).
    #[serde(skip)]
    pub attempts_max: u16,
    /// The same phase for the devices of each data rate they join at (a city's meters join
    /// at the rate their link allows), slowest rate first: which of them hold the storm back.
    pub by_data_rate: Vec<DataRateStorm>,
}

/// The time, in seconds rounded to the millisecond, by which `share` of `devices` had joined,
/// from their join times (`sorted`, µs from the phase's start); `None` if they never did.
fn share_joined_s(sorted: &[u64], devices: u64, share: f64) -> Option<f64> {
    let k = ((devices as f64 * share).ceil() as usize).max(1);
    sorted.get(k - 1).map(|&us| (us as f64 / 1e3).round() / 1e3)
}

impl StormReport {
    /// From the join times (µs from the phase's start) of a fleet of `devices`.
    pub fn new(s: &Stats, devices: u64) -> Self {
        let mut t = s.joined_after_us.clone();
        t.sort_unstable();
        Self {
            joined_p50_s: share_joined_s(&t, devices, 0.5),
            joined_p99_s: share_joined_s(&t, devices, 0.99),
            joined_all_s: share_joined_s(&t, devices, 1.0),
            airtime_bound_s: s.airtime_bound_us.map(|us| (us as f64 / 1e3).round() / 1e3),
            attempts_mean: s.join_attempts_mean,
            attempts_max: s.join_attempts_max,
            by_data_rate: s.storm_by_data_rate.clone(),
        }
    }
}

/// `storm.by_data_rate[]`: the last join phase of the devices that join at one data rate.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct DataRateStorm {
    /// The data rate their Join-requests start at.
    pub data_rate: u8,
    /// Devices of the fleet at this data rate.
    pub devices: u64,
    /// Of them, how many joined in the phase.
    pub joined: u64,
    /// Seconds until half of them held a session.
    pub joined_p50_s: Option<f64>,
    /// Seconds until 99 % of them held a session.
    pub joined_p99_s: Option<f64>,
    /// Seconds until all of them held a session.
    pub joined_all_s: Option<f64>,
    /// Join-requests per device, the mean.
    pub attempts_mean: f64,
}

impl DataRateStorm {
    /// From the join times (µs from the phase's start, any order) of those of the `devices` at
    /// `data_rate` that joined, and the Join-requests they sent in all.
    pub fn new(data_rate: u8, devices: u64, mut joined_after_us: Vec<u64>, attempts: u64) -> Self {
        joined_after_us.sort_unstable();
        let t = &joined_after_us;
        Self {
            data_rate,
            devices,
            joined: t.len() as u64,
            joined_p50_s: share_joined_s(t, devices, 0.5),
            joined_p99_s: share_joined_s(t, devices, 0.99),
            joined_all_s: share_joined_s(t, devices, 1.0),
            attempts_mean: (attempts as f64 / devices.max(1) as f64 * 100.0).round() / 100.0,
        }
    }
}

impl Joins {
    fn new(s: &Stats) -> Self {
        Self {
            attempted: s.joins_attempted,
            accepted: s.joins_accepted,
            accepted_rx1: s.joins_rx1,
            accepted_rx2: s.joins_rx2,
            failed: s.joins_failed,
            timed_out: s.joins_timed_out,
            missed_window: s.joins_missed_window,
        }
    }
}

impl Percentiles {
    fn new(j: &Latency) -> Self {
        Self {
            count: j.count(),
            p50: j.quantile_ms(0.5),
            p90: j.quantile_ms(0.9),
            p99: j.quantile_ms(0.99),
            p999: j.quantile_ms(0.999),
            max: j.max_ms(),
        }
    }
}

impl AckPercentiles {
    fn new(a: &Latency) -> Self {
        Self {
            count: a.count(),
            p50: a.quantile_ms(0.5),
            p99: a.quantile_ms(0.99),
            max: a.max_ms(),
        }
    }
}

impl Uplinks {
    fn new(info: &RunInfo, s: &Stats) -> Self {
        Self {
            sent: s.uplinks_sent,
            confirmed: s.uplinks_confirmed,
            transmissions: s.uplink_transmissions,
            acked: s.uplinks_acked,
            lost: s.uplinks_lost,
            duplicates: s.uplinks_duplicates,
            delivered: info.event_sink.then_some(s.uplinks_delivered),
            per_second: if info.duration_s > 0.0 {
                (s.uplinks_sent as f64 / info.duration_s).round() as u64
            } else {
                0
            },
            duty_cycle_deferred: s.uplinks_duty_cycle_deferred,
            collided: s.uplinks_collided,
        }
    }
}

impl Downlinks {
    fn new(s: &Stats) -> Self {
        Self {
            received: s.downlinks_received,
            missed_window: s.downlinks_missed_window,
            wrong_radio: s.wrong_radio,
            unmatched: s.downlinks_unmatched,
            mac_commands_answered: s.mac_commands_answered,
        }
    }
}

impl Gwmp {
    fn new(s: &Stats) -> Self {
        Self {
            push_data: s.push_data,
            rxpk: s.rxpk,
            push_ack: s.push_ack,
            pull_data: s.pull_data,
            pull_ack: s.pull_ack,
            pull_resp: s.pull_resp,
            tx_ack_errors: s.tx_ack_errors,
            bad_datagrams: s.bad_datagrams,
            send_errors: s.send_errors,
        }
    }
}

impl Rejoins {
    fn new(s: &Stats) -> Self {
        Self {
            devices: s.devices_rejoined,
            attempted: s.rejoins_attempted,
            accepted: s.rejoins_accepted,
            accepted_rx1: s.rejoins_rx1,
            accepted_rx2: s.rejoins_accepted - s.rejoins_rx1,
            missed: s.rejoins_missed,
            uplinks_lost: s.uplinks_lost,
        }
    }
}

/// `gateways_tx_refused.*`: TX_ACK errors of the modelled gateways.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct TxRefused {
    /// `COLLISION_PACKET`: the gateway was busy then, or its queue was full.
    pub collision: u64,
    /// `TOO_LATE`: the PULL_RESP came too late to program the radio.
    pub too_late: u64,
    /// `DUTY_CYCLE_OVERFLOW`: the sub-band's duty-cycle budget was spent.
    pub duty_cycle: u64,
}

impl TxRefused {
    fn new(s: &Stats) -> Self {
        Self {
            collision: s.tx_refused_collision,
            too_late: s.tx_refused_too_late,
            duty_cycle: s.tx_refused_duty_cycle,
        }
    }
}

/// `joins.*`.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct Joins {
    pub attempted: u64,
    pub accepted: u64,
    pub accepted_rx1: u64,
    pub accepted_rx2: u64,
    pub failed: u64,
    pub timed_out: u64,
    pub missed_window: u64,
}

/// `rejoins.*`: devices that moved to new keys; Rejoin-requests sent, answered with a new
/// session (in RX1 or RX2), or left without a Join-accept; and the uplinks lost over the run, which a re-keying fleet should keep
/// at 0 (the old session carries traffic until the new one does).
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct Rejoins {
    pub devices: u64,
    pub attempted: u64,
    pub accepted: u64,
    pub accepted_rx1: u64,
    pub accepted_rx2: u64,
    pub missed: u64,
    pub uplinks_lost: u64,
}

/// `join_latency_ms.*`.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[allow(missing_docs)]
pub struct Percentiles {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

/// `ack_latency_ms.*`.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[allow(missing_docs)]
pub struct AckPercentiles {
    pub count: u64,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

/// `uplinks.*`.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct Uplinks {
    pub sent: u64,
    pub confirmed: u64,
    pub transmissions: u64,
    pub acked: u64,
    pub lost: u64,
    pub duplicates: u64,
    /// `null` unless `--event-listen` is set.
    pub delivered: Option<u64>,
    pub per_second: u64,
    /// Data transmissions that waited for the EU868 sub-band duty cycle.
    pub duty_cycle_deferred: u64,
    /// Uplink transmissions (Join-requests and data) that every gateway in reach lost to a
    /// collision or to its own transmission (`--radio realistic`).
    pub collided: u64,
}

/// `downlinks.*`.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct Downlinks {
    pub received: u64,
    pub missed_window: u64,
    /// Join-accepts and data downlinks sent at a window's time on a frequency or data rate that
    /// is not the window's (counted in `joins.missed_window` / `missed_window` too).
    pub wrong_radio: u64,
    pub unmatched: u64,
    pub mac_commands_answered: u64,
}

/// `gwmp.*`.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct Gwmp {
    pub push_data: u64,
    pub rxpk: u64,
    pub push_ack: u64,
    pub pull_data: u64,
    pub pull_ack: u64,
    pub pull_resp: u64,
    pub tx_ack_errors: u64,
    pub bad_datagrams: u64,
    pub send_errors: u64,
}

/// `simulator_socket_drops.*`: what the simulator itself lost (receive buffers full), which the
/// servers are not to blame for. `null` where the kernel does not say.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct SocketDrops {
    /// At the gateways' sockets: PUSH_ACKs, PULL_ACKs, PULL_RESPs.
    pub gateways: Option<u64>,
    /// At the event sink's socket: application events (`null` without `--event-listen`).
    pub event_sink: Option<u64>,
}

/// [`Report::radio`] of a run without `--radio realistic`.
pub const IDEAL_RADIO: &str = "ideal";

/// [`Report::radio`] of a run with `--radio realistic`.
pub const REALISTIC_RADIO: &str = "realistic";

/// What the report is about, besides the counters.
#[derive(Clone, Debug)]
pub struct RunInfo {
    /// Scenario name.
    pub scenario: String,
    /// Region name.
    pub region: String,
    /// The radio model's name (`ideal`, `realistic`).
    pub radio: String,
    /// Fleet size.
    pub devices: u64,
    /// Gateways.
    pub gateways: u64,
    /// Seed.
    pub seed: u64,
    /// Wall-clock seconds.
    pub duration_s: f64,
    /// Whether an event sink counted deliveries.
    pub event_sink: bool,
    /// Devices joined at the end.
    pub joined_at_end: u64,
    /// The network server's GWMP address.
    pub netserver: std::net::SocketAddr,
}

impl Report {
    /// Builds the report from the counters.
    pub fn new(info: &RunInfo, s: &Stats) -> Self {
        Self {
            scenario: info.scenario.clone(),
            region: info.region.clone(),
            radio: info.radio.clone(),
            devices: info.devices,
            gateways: info.gateways,
            seed: info.seed,
            duration_s: (info.duration_s * 1000.0).round() / 1000.0,
            joins: Joins::new(s),
            join_latency_ms: Percentiles::new(&s.join_latency),
            uplinks: Uplinks::new(info, s),
            ack_latency_ms: AckPercentiles::new(&s.ack_latency),
            downlinks: Downlinks::new(s),
            gwmp: Gwmp::new(s),
            rejoins: (s.rejoins_attempted > 0).then(|| Rejoins::new(s)),
            devices_joined_at_end: info.joined_at_end,
            simulator_socket_drops: SocketDrops {
                gateways: s.gateway_socket_drops,
                event_sink: s.event_socket_drops,
            },
            warnings: silence_warning(info.duration_s, info.netserver, s)
                .into_iter()
                .chain(drops_warning(s))
                .collect(),
            storm: StormReport::new(s, info.devices),
            gateways_tx_refused: TxRefused::new(s),
        }
    }

    /// Writes the JSON report.
    pub fn write_json(&self, path: &Path) -> anyhow::Result<()> {
        let mut text = serde_json::to_string_pretty(self)?;
        text.push('\n');
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
    }

    /// The table's storm rows: times to join against the airtime bound, attempts, refusals.
    fn storm_rows(&self, t: &mut String) {
        let s = &self.storm;
        let secs = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.1}"));
        let _ = writeln!(t, "storm (last join phase)");
        row(
            t,
            "joined 50% / 99% / 100% after s",
            format!(
                "{} / {} / {}",
                secs(s.joined_p50_s),
                secs(s.joined_p99_s),
                secs(s.joined_all_s)
            ),
        );
        if self.radio == IDEAL_RADIO {
            // The ideal radio sends every downlink at once: the bound is a real radio's, and
            // a ratio to it would compare the storm with a limit the run did not have.
            row(
                t,
                "airtime bound s (not on an ideal radio)",
                secs(s.airtime_bound_s),
            );
        } else {
            let ratio = |v: Option<f64>| match (v, s.airtime_bound_s) {
                (Some(v), Some(b)) if b > 0.0 => format!("{:.2}", v / b),
                _ => "-".to_owned(),
            };
            row(
                t,
                "airtime bound s (99%, 100% ÷ it)",
                format!(
                    "{} ({} / {})",
                    secs(s.airtime_bound_s),
                    ratio(s.joined_p99_s),
                    ratio(s.joined_all_s)
                ),
            );
        }
        row(
            t,
            "join attempts per device mean / max",
            format!("{:.2} / {}", s.attempts_mean, s.attempts_max),
        );
        if s.by_data_rate.len() > 1 {
            for d in &s.by_data_rate {
                row(
                    t,
                    &format!("  DR{} ({} devices) 50/99/100% s", d.data_rate, d.devices),
                    format!(
                        "{} / {} / {}, {:.2} attempts",
                        secs(d.joined_p50_s),
                        secs(d.joined_p99_s),
                        secs(d.joined_all_s),
                        d.attempts_mean
                    ),
                );
            }
        }
        let r = &self.gateways_tx_refused;
        row(
            t,
            "refused: collision/late/duty",
            format!("{} / {} / {}", r.collision, r.too_late, r.duty_cycle),
        );
    }

    /// The human table printed at the end of a run.
    pub fn table(&self) -> String {
        let mut t = String::new();
        let _ = writeln!(
            t,
            "scenario {}  region {}  devices {}  gateways {}  seed {}  duration {:.1} s",
            self.scenario, self.region, self.devices, self.gateways, self.seed, self.duration_s
        );
        self.join_rows(&mut t);
        self.uplink_rows(&mut t);
        self.downlink_rows(&mut t);
        self.storm_rows(&mut t);
        self.gwmp_rows(&mut t);
        for w in &self.warnings {
            let _ = writeln!(t, "warning: {w}");
        }
        t
    }

    fn join_rows(&self, t: &mut String) {
        let j = &self.joins;
        let _ = writeln!(t, "joins");
        row(t, "attempted", j.attempted.to_string());
        row(
            t,
            "accepted (RX1 / RX2)",
            format!("{} ({} / {})", j.accepted, j.accepted_rx1, j.accepted_rx2),
        );
        row(t, "failed", j.failed.to_string());
        row(t, "timed out", j.timed_out.to_string());
        row(t, "missed window", j.missed_window.to_string());
        if let Some(r) = &self.rejoins {
            let _ = writeln!(t, "rejoins");
            row(t, "devices on new keys", r.devices.to_string());
            row(t, "attempted", r.attempted.to_string());
            row(
                t,
                "accepted (RX1 / RX2)",
                format!("{} ({} / {})", r.accepted, r.accepted_rx1, r.accepted_rx2),
            );
            row(t, "missed", r.missed.to_string());
            row(t, "uplinks lost", r.uplinks_lost.to_string());
        }
        let l = &self.join_latency_ms;
        row(
            t,
            "latency ms p50/p90/p99/p99.9/max",
            format!(
                "{:.1}/{:.1}/{:.1}/{:.1}/{:.1}",
                l.p50, l.p90, l.p99, l.p999, l.max
            ),
        );
    }

    fn uplink_rows(&self, t: &mut String) {
        let u = &self.uplinks;
        let _ = writeln!(t, "uplinks");
        row(
            t,
            "sent (confirmed)",
            format!("{} ({})", u.sent, u.confirmed),
        );
        row(t, "transmissions", u.transmissions.to_string());
        row(t, "acked", u.acked.to_string());
        row(t, "lost", u.lost.to_string());
        row(t, "duplicates", u.duplicates.to_string());
        match u.delivered {
            Some(d) => row(t, "delivered to the event sink", d.to_string()),
            None => row(t, "delivered (needs --event-listen)", "not measured".into()),
        }
        row(t, "per second", u.per_second.to_string());
        row(
            t,
            "deferred by the duty cycle",
            u.duty_cycle_deferred.to_string(),
        );
        row(t, "lost to collisions", u.collided.to_string());
        let a = &self.ack_latency_ms;
        row(
            t,
            "ack latency ms p50/p99/max",
            format!("{:.1}/{:.1}/{:.1}", a.p50, a.p99, a.max),
        );
    }

    fn downlink_rows(&self, t: &mut String) {
        let d = &self.downlinks;
        let _ = writeln!(t, "downlinks");
        row(t, "received in a window", d.received.to_string());
        row(t, "missed window", d.missed_window.to_string());
        row(
            t,
            "wrong frequency or data rate (incl. joins)",
            d.wrong_radio.to_string(),
        );
        row(t, "unmatched", d.unmatched.to_string());
        row(
            t,
            "MAC commands answered",
            d.mac_commands_answered.to_string(),
        );
    }

    fn gwmp_rows(&self, t: &mut String) {
        let g = &self.gwmp;
        let _ = writeln!(t, "gwmp");
        row(
            t,
            "PUSH_DATA / PUSH_ACK",
            format!("{} / {}", g.push_data, g.push_ack),
        );
        row(t, "rxpk forwarded", g.rxpk.to_string());
        row(
            t,
            "PULL_DATA / PULL_ACK",
            format!("{} / {}", g.pull_data, g.pull_ack),
        );
        row(
            t,
            "PULL_RESP / TX_ACK errors",
            format!("{} / {}", g.pull_resp, g.tx_ack_errors),
        );
        row(
            t,
            "bad datagrams / send errors",
            format!("{} / {}", g.bad_datagrams, g.send_errors),
        );
        let d = &self.simulator_socket_drops;
        let opt = |v: Option<u64>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
        row(
            t,
            "own socket drops: gateways / sink",
            format!("{} / {}", opt(d.gateways), opt(d.event_sink)),
        );
        row(
            t,
            "devices joined at the end",
            self.devices_joined_at_end.to_string(),
        );
    }
}

/// The once-a-second progress line on stderr.
pub fn progress_line(
    elapsed_s: f64,
    joined: u64,
    devices: u64,
    uplinks_per_s: u64,
    s: &Stats,
) -> String {
    format!(
        "[{elapsed_s:6.1}s] joined {joined}/{devices}  joins {}/{} (timeout {}, missed {})  uplinks/s {uplinks_per_s}  join p99 {:.1} ms  ack p99 {:.1} ms",
        s.joins_accepted,
        s.joins_attempted,
        s.joins_timed_out,
        s.joins_missed_window,
        s.join_latency.quantile_ms(0.99),
        s.ack_latency.quantile_ms(0.99),
    )
}

/// How long a run waits for a first PUSH_ACK or PULL_ACK before it warns that the network server
/// is silent (a network server acknowledges within milliseconds).
pub const SILENT_AFTER_S: f64 = 3.0;

/// The warning a run prints once when, [`SILENT_AFTER_S`] into it, gateways have sent datagrams
/// and the network server has acknowledged none: most often a wrong `--netserver` address.
/// `None` otherwise.
pub fn silence_warning(
    elapsed_s: f64,
    netserver: std::net::SocketAddr,
    s: &Stats,
) -> Option<String> {
    let sent = s.push_data + s.pull_data;
    if elapsed_s < SILENT_AFTER_S || sent == 0 || s.push_ack + s.pull_ack > 0 {
        return None;
    }
    let refused = if s.send_errors > 0 {
        format!(
            ", {} send errors (an ICMP port unreachable means nothing listens there)",
            s.send_errors
        )
    } else {
        String::new()
    };
    Some(format!(
        "no PUSH_ACK or PULL_ACK from {netserver} after {elapsed_s:.0} s: {sent} PUSH_DATA and PULL_DATA sent{refused}; is a network server listening on that GWMP address?"
    ))
}

/// The warning of a run whose own sockets dropped datagrams: answers and events lost there
/// would otherwise count against the servers. `None` when none were dropped.
pub fn drops_warning(s: &Stats) -> Option<String> {
    let gateways = s.gateway_socket_drops.unwrap_or(0);
    let events = s.event_socket_drops.unwrap_or(0);
    if gateways + events == 0 {
        return None;
    }
    Some(format!(
        "the simulator's own sockets dropped {} datagrams (receive buffers full: {gateways} at the gateways, {events} at the event sink); losses above include these, which are the simulator's, not the servers'. Give the simulator more CPU or raise net.core.rmem_max",
        gateways + events
    ))
}

/// Prints a progress line to stderr.
pub fn print_progress(line: &str) {
    let mut e = std::io::stderr().lock();
    let _ = writeln!(e, "{line}");
}

/// One line of [`Report::table`]: a label and its value, aligned.
fn row(t: &mut String, k: &str, v: String) {
    let _ = writeln!(t, "  {k:<34}{v:>14}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_at_the_simulators_own_sockets_are_warned_of() {
        let mut s = Stats::default();
        assert_eq!(drops_warning(&s), None, "the kernel did not say");
        s.gateway_socket_drops = Some(0);
        s.event_socket_drops = Some(0);
        assert_eq!(drops_warning(&s), None);
        s.gateway_socket_drops = Some(3);
        s.event_socket_drops = Some(4);
        let w = drops_warning(&s).unwrap();
        assert!(w.contains("dropped 7 datagrams"), "{w}");
        assert!(w.contains("3 at the gateways, 4 at the event sink"), "{w}");
    }

    #[test]
    fn a_silent_network_server_is_named_once_acks_are_overdue() {
        let ns: std::net::SocketAddr = "127.0.0.1:1700".parse().unwrap();
        let mut s = Stats {
            push_data: 5,
            pull_data: 1,
            ..Stats::default()
        };
        assert_eq!(
            silence_warning(SILENT_AFTER_S - 0.1, ns, &s),
            None,
            "too early"
        );
        let w = silence_warning(SILENT_AFTER_S, ns, &s).unwrap();
        assert!(
            w.contains("127.0.0.1:1700") && w.contains("6 PUSH_DATA and PULL_DATA sent"),
            "{w}"
        );
        assert!(!w.contains("send errors"), "{w}");
        s.send_errors = 2;
        let w = silence_warning(4.0, ns, &s).unwrap();
        assert!(w.contains("2 send errors"), "{w}");
        s.pull_ack = 1;
        assert_eq!(silence_warning(4.0, ns, &s), None, "it answered");
        assert_eq!(
            silence_warning(4.0, ns, &Stats::default()),
            None,
            "nothing sent yet"
        );
    }

    #[test]
    fn percentiles_and_json_field_names() {
        let mut s = Stats::default();
        for ms in 1..=1000u64 {
            s.join_latency.record_us(ms * 1000);
        }
        s.ack_latency.record_us(2500);
        s.joins_attempted = 1000;
        s.joins_accepted = 1000;
        let info = RunInfo {
            scenario: "storm".into(),
            region: "EU868".into(),
            radio: IDEAL_RADIO.into(),
            devices: 1000,
            gateways: 2,
            seed: 9,
            duration_s: 2.0,
            event_sink: false,
            joined_at_end: 1000,
            netserver: "127.0.0.1:1700".parse().unwrap(),
        };
        let r = Report::new(&info, &s);
        assert!(
            (r.join_latency_ms.p50 - 500.0).abs() < 1.0,
            "{}",
            r.join_latency_ms.p50
        );
        assert!((r.join_latency_ms.p99 - 990.0).abs() < 1.0);
        assert!((r.join_latency_ms.max - 1000.0).abs() < 1.0);
        assert!((r.ack_latency_ms.p50 - 2.5).abs() < 0.01);
        let v: serde_json::Value = serde_json::to_value(&r).unwrap();
        for path in [
            "/joins/attempted",
            "/joins/accepted",
            "/joins/failed",
            "/joins/timed_out",
            "/joins/missed_window",
            "/join_latency_ms/p50",
            "/join_latency_ms/p90",
            "/join_latency_ms/p99",
            "/join_latency_ms/p999",
            "/join_latency_ms/max",
            "/uplinks/sent",
            "/uplinks/acked",
            "/uplinks/lost",
            "/uplinks/duplicates",
            "/uplinks/duty_cycle_deferred",
            "/ack_latency_ms/p50",
            "/ack_latency_ms/p99",
            "/duration_s",
            "/devices",
            "/gateways",
            "/seed",
        ] {
            assert!(v.pointer(path).is_some(), "missing {path}");
        }
        assert_eq!(v["warnings"], serde_json::json!([]), "nothing stands out");
        assert_eq!(
            v["simulator_socket_drops"],
            serde_json::json!({"gateways": null, "event_sink": null})
        );
        assert!(r.table().contains("accepted (RX1 / RX2)"));
        assert_eq!(v["radio"], "ideal");

        // The airtime bound beside the storm: as a ratio on the realistic radio only.
        let mut r = r;
        r.storm.joined_p99_s = Some(20.0);
        r.storm.joined_all_s = Some(30.0);
        r.storm.airtime_bound_s = Some(10.0);
        let bound_row = |r: &Report| -> String {
            let table = r.table();
            let row = table.lines().find(|l| l.contains("airtime bound s"));
            row.unwrap_or_else(|| panic!("no bound row in {table}"))
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        };
        assert_eq!(
            bound_row(&r),
            "airtime bound s (not on an ideal radio) 10.0"
        );
        // By data rate: in the JSON always, in the table only when the fleet has several.
        assert_eq!(v["storm"]["by_data_rate"], serde_json::json!([]));
        r.storm.by_data_rate = vec![DataRateStorm::new(5, 4, vec![3_000_000, 1_000_000], 6)];
        assert!(!r.table().contains("DR5"), "one data rate: no rows");
        r.storm
            .by_data_rate
            .push(DataRateStorm::new(0, 2, vec![9_000_000, 4_000_000], 5));
        assert!(
            r.table().contains("DR0 (2 devices) 50/99/100% s")
                && r.table().contains("4.0 / 9.0 / 9.0, 2.50 attempts"),
            "{}",
            r.table()
        );
        let v: serde_json::Value = serde_json::to_value(&r).unwrap();
        assert_eq!(
            v["storm"]["by_data_rate"][0],
            serde_json::json!({"data_rate": 5, "devices": 4, "joined": 2,
                "joined_p50_s": 3.0, "joined_p99_s": null, "joined_all_s": null,
                "attempts_mean": 1.5})
        );
        r.radio = REALISTIC_RADIO.into();
        assert_eq!(
            bound_row(&r),
            "airtime bound s (99%, 100% ÷ it) 10.0 (2.00 / 3.00)"
        );
    }

    #[test]
    fn empty_histograms_report_zero() {
        let l = Latency::default();
        assert_eq!(l.quantile_ms(0.99), 0.0);
        assert_eq!(l.max_ms(), 0.0);
    }

    #[test]
    fn timeseries_grows_and_writes() {
        let mut ts = TimeSeries::default();
        ts.at(2).uplinks_sent += 5;
        ts.at(2).uplinks_delivered += 4;
        ts.at(0).joins_sent += 1;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.csv");
        ts.write_csv(&p).unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines.len(), 4);
        assert_eq!(
            lines[0],
            "second,joins_sent,joins_accepted,uplinks_sent,uplinks_acked,downlinks,datagrams_out,datagrams_in,uplinks_delivered"
        );
        assert_eq!(lines[1], "0,1,0,0,0,0,0,0,0");
        assert_eq!(lines[3], "2,0,0,5,0,0,0,0,4");
    }
}
