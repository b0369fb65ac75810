//! Prometheus metrics: `netserver_<event>_total` counters with bounded labels (`result`,
//! `reason`, `type`, `window`, `error`; never a DevEUI, DevAddr or gateway EUI), latency
//! histograms, and gauges refreshed at scrape time.

use std::time::Duration;

use prometheus::{
    CounterVec, Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

use crate::core::data::UplinkResult;

/// Every metric of the network server, registered in its own [`Registry`] (no global default
/// registry, so tests run servers side by side).
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    /// GWMP datagrams received, by `type` (push_data, pull_data, tx_ack, other).
    pub gwmp_datagrams: IntCounterVec,
    /// GWMP datagrams dropped before processing, by `reason`.
    pub gwmp_dropped: IntCounterVec,
    /// `rxpk` entries, by `result` (ok, crc_dropped, invalid).
    pub rxpk: IntCounterVec,
    /// TX_ACKs, by `error` label (`none` on success).
    pub tx_ack: IntCounterVec,
    /// PULL_RESP datagrams sent.
    pub pull_resp: IntCounter,
    /// Uplinks dropped at classification or parse, by `reason`.
    pub uplink_dropped: IntCounterVec,
    /// Copies of an already-seen PHYPayload (other gateways, repeats).
    pub dedup_duplicates: IntCounter,
    /// Frames processed without being remembered because the de-duplication table was full.
    pub dedup_full: IntCounter,
    /// Join-requests handled, by `result` (accepted, or the reason none was sent).
    pub joins: IntCounterVec,
    /// LoRaWAN 1.1 Rejoin-requests handled, by `type` (0, 1, 2), `result` (accepted, rejected,
    /// dropped) and `reason` (window, ResultCode, or drop reason).
    pub rejoins: IntCounterVec,
    /// Reports to the join server of the first uplink under rotated root keys, by `result`
    /// (reported, failed).
    pub key_use_reports: IntCounterVec,
    /// Join-accepts scheduled, by `window` (rx1, rx2).
    pub join_accepts: IntCounterVec,
    /// JoinReq transmissions on the link, by `type` (first, retry).
    pub link_requests: IntCounterVec,
    /// Datagrams received on the link, by `result` (matched, unmatched, invalid).
    pub link_answers: IntCounterVec,
    /// Time from the Join-request's arrival to its PULL_RESP leaving, seconds.
    pub join_latency: Histogram,
    /// Time from sending the first JoinReq to the JoinAns, seconds.
    pub link_rtt: Histogram,
    /// Session store group commits, by result.
    pub store_commits: IntCounterVec,
    /// Writes per session store group commit.
    pub store_commit_writes: Histogram,
    /// Active sessions.
    pub sessions: IntGauge,
    /// Gateways known / online.
    pub gateways: IntGauge,
    /// Gateways heard within the offline threshold.
    pub gateways_online: IntGauge,
    /// Datagrams the kernel dropped on the GWMP sockets because a receive buffer was full
    /// (from `/proc/self/net/udp*`, refreshed at scrape).
    pub gwmp_socket_drops: IntGauge,
    /// Datagrams the kernel dropped on the link sockets (receive buffer full).
    pub link_socket_drops: IntGauge,
    /// The data path's metrics (uplinks, latency, downlinks, events).
    pub data: DataMetrics,
    /// The delivered sinks' metrics (MQTT, webhooks).
    pub integration: crate::integration::delivery::IntegrationMetrics,
    /// The downlink scheduler's and the join-storm protection's metrics.
    pub airtime: AirtimeMetrics,
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric definition");
    r.register(Box::new(c.clone()))
        .expect("metric registered once");
    c
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric definition");
    r.register(Box::new(c.clone()))
        .expect("metric registered once");
    c
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric definition");
    r.register(Box::new(g.clone()))
        .expect("metric registered once");
    g
}

fn histogram(r: &Registry, name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
        .expect("valid metric definition");
    r.register(Box::new(h.clone()))
        .expect("metric registered once");
    h
}

impl Metrics {
    /// All metrics, registered in a fresh registry.
    // Over 80 lines by design: one declaration per metric (name, help, labels), a flat list
    // that reads as the metric catalogue; splitting it would scatter the catalogue.
    pub fn new() -> Self {
        let r = Registry::new();
        let latency_buckets = vec![
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 5.0, 6.0,
        ];
        let m = Self {
            gwmp_datagrams: counter_vec(
                &r,
                "netserver_gwmp_datagrams_total",
                "GWMP datagrams received, by type.",
                &["type"],
            ),
            gwmp_dropped: counter_vec(
                &r,
                "netserver_gwmp_dropped_total",
                "GWMP datagrams dropped before processing, by reason.",
                &["reason"],
            ),
            rxpk: counter_vec(
                &r,
                "netserver_rxpk_total",
                "rxpk entries received, by result (ok, crc_dropped for stat != 1, invalid).",
                &["result"],
            ),
            tx_ack: counter_vec(
                &r,
                "netserver_tx_ack_total",
                "TX_ACK datagrams received, by error (none on success).",
                &["error"],
            ),
            pull_resp: counter(
                &r,
                "netserver_pull_resp_total",
                "PULL_RESP datagrams sent to gateways.",
            ),
            uplink_dropped: counter_vec(
                &r,
                "netserver_uplink_dropped_total",
                "Uplinks dropped at classification or parsing, by reason.",
                &["reason"],
            ),
            dedup_duplicates: counter(
                &r,
                "netserver_dedup_duplicates_total",
                "Receptions of a PHYPayload already being processed.",
            ),
            dedup_full: counter(
                &r,
                "netserver_dedup_full_total",
                "Frames processed unremembered because the de-duplication table was full.",
            ),
            joins: counter_vec(
                &r,
                "netserver_joins_total",
                "Join-requests handled, by result (accepted, rejected by the join server, dropped) and reason (window, ResultCode, or drop reason).",
                &["result", "reason"],
            ),
            rejoins: counter_vec(
                &r,
                "netserver_rejoins_total",
                "Rejoin-requests handled, by type (0, 1, 2), result (accepted, rejected by the join server, dropped) and reason (window, ResultCode, or drop reason).",
                &["type", "result", "reason"],
            ),
            key_use_reports: counter_vec(
                &r,
                "netserver_key_use_reports_total",
                "Reports to the join server of the first uplink under rotated root keys, by result (reported, failed).",
                &["result"],
            ),
            join_accepts: counter_vec(
                &r,
                "netserver_join_accepts_total",
                "Join-accepts sent, by receive window.",
                &["window"],
            ),
            link_requests: counter_vec(
                &r,
                "netserver_link_requests_total",
                "JoinReq datagrams sent to the join server, by type (first, retry).",
                &["type"],
            ),
            link_answers: counter_vec(
                &r,
                "netserver_link_answers_total",
                "Datagrams received from the join server, by result (matched, unmatched, invalid).",
                &["result"],
            ),
            join_latency: histogram(
                &r,
                "netserver_join_latency_seconds",
                "Time from a Join-request's arrival to its PULL_RESP being sent.",
                latency_buckets.clone(),
            ),
            link_rtt: histogram(
                &r,
                "netserver_link_rtt_seconds",
                "Time from the first JoinReq transmission to its JoinAns.",
                latency_buckets,
            ),
            store_commits: counter_vec(
                &r,
                "netserver_store_commits_total",
                "Session store group commits, by result (ok, error).",
                &["result"],
            ),
            store_commit_writes: histogram(
                &r,
                "netserver_store_commit_writes",
                "Writes (sessions stored or removed) per session store group commit.",
                vec![1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0],
            ),
            sessions: gauge(&r, "netserver_sessions", "Active sessions."),
            gateways: gauge(&r, "netserver_gateways", "Gateways known."),
            gateways_online: gauge(
                &r,
                "netserver_gateways_online",
                "Gateways heard within the offline threshold.",
            ),
            gwmp_socket_drops: gauge(
                &r,
                "netserver_gwmp_socket_drops",
                "Datagrams dropped by the kernel on the GWMP sockets (receive buffer full).",
            ),
            link_socket_drops: gauge(
                &r,
                "netserver_link_socket_drops",
                "Datagrams dropped by the kernel on the join server link sockets (receive buffer full).",
            ),
            data: DataMetrics::register(&r),
            integration: crate::integration::delivery::IntegrationMetrics::register(&r),
            airtime: AirtimeMetrics::register(&r),
            registry: r,
        };
        // Pre-create the label values operators alert on, so they read 0 rather than absent.
        for result in ["ok", "crc_dropped", "invalid"] {
            m.rxpk.with_label_values(&[result]);
        }
        for (result, reason) in [
            ("accepted", "rx1"),
            ("accepted", "rx2"),
            ("dropped", "too_late"),
            ("dropped", "timeout"),
        ] {
            m.joins.with_label_values(&[result, reason]);
        }
        for w in ["rx1", "rx2"] {
            m.join_accepts.with_label_values(&[w]);
        }
        m
    }

    /// Observes a duration into a histogram.
    pub fn observe(h: &Histogram, d: Duration) {
        h.observe(d.as_secs_f64());
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let families = self.registry.gather();
        if TextEncoder::new().encode(&families, &mut buf).is_err() {
            return String::new();
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Metrics of the data path (registered with the others).
#[derive(Debug, Clone)]
pub struct DataMetrics {
    /// Uplinks by result (ok, mic_failed, replay, unknown_devaddr, duplicate, fcnt_gap,
    /// malformed).
    pub uplinks: IntCounterVec,
    /// PUSH_DATA received to event written, seconds.
    pub uplink_latency: Histogram,
    /// Data downlinks by result (sent, send_failed, commit_failed, too_late, no_gateway,
    /// build_failed, no_airtime).
    pub downlinks: IntCounterVec,
    /// Application events by result (written, write_failed).
    pub events: IntCounterVec,
    /// Counter group commits by result.
    pub counter_commits: IntCounterVec,
    /// Downlink requests on the integration input, by result (queued, refused).
    pub downlink_requests: IntCounterVec,
    /// Shared store (several instances): what a checked counter commit refused, by reason
    /// (uplink_counted: another instance delivered the frame, or it is a replay;
    /// downlink_counter_used: another instance used that FCntDown), and the sessions loaded
    /// from other instances (session_loaded).
    pub shared: IntCounterVec,
}

impl DataMetrics {
    /// Creates and registers the metrics in `r`.
    pub fn register(r: &Registry) -> Self {
        let cv = |name: &str, help: &str, label: &str| {
            let c = IntCounterVec::new(Opts::new(name, help), &[label])
                .expect("valid metric definition");
            r.register(Box::new(c.clone()))
                .expect("metric registered once");
            c
        };
        let h = Histogram::with_opts(
            HistogramOpts::new(
                "netserver_uplink_latency_seconds",
                "Time from a data uplink's PUSH_DATA arrival to its event being written.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
            ]),
        )
        .expect("valid metric definition");
        r.register(Box::new(h.clone()))
            .expect("metric registered once");
        let m = Self {
            uplinks: cv(
                "netserver_uplinks_total",
                "Data uplinks by result.",
                "result",
            ),
            uplink_latency: h,
            downlinks: cv(
                "netserver_downlinks_total",
                "Data downlinks by result.",
                "result",
            ),
            events: cv(
                "netserver_events_total",
                "Application events by result.",
                "result",
            ),
            counter_commits: cv(
                "netserver_counter_commits_total",
                "Frame counter group commits by result.",
                "result",
            ),
            downlink_requests: cv(
                "netserver_downlink_requests_total",
                "Downlink requests on the integration input, by result.",
                "result",
            ),
            shared: cv(
                "netserver_shared_store_total",
                "Shared store: counter records refused and sessions loaded from other instances.",
                "event",
            ),
        };
        for e in ["uplink_counted", "downlink_counter_used", "session_loaded"] {
            m.shared.with_label_values(&[e]);
        }
        for r in UplinkResult::ALL {
            m.uplinks.with_label_values(&[r.label()]);
        }
        for d in [
            "sent",
            "send_failed",
            "commit_failed",
            "too_late",
            "no_gateway",
            "build_failed",
            "no_airtime",
        ] {
            m.downlinks.with_label_values(&[d]);
        }
        m
    }
}

/// Metrics of the downlink scheduler and the join-storm protection (registered with the
/// others). Per gateway (airtime used, budget left per sub-band, deferred, dropped) they are on
/// `/gateways`: a gateway EUI is never a metric label.
#[derive(Debug, Clone)]
pub struct AirtimeMetrics {
    /// Airtime booked on gateways, seconds, by `type` (join_accept, data).
    pub booked_seconds: CounterVec,
    /// Downlinks sent in another window or through another gateway than the first choice for
    /// lack of airtime there, by `type` and `reason` (busy, duty_cycle, queue_full, lead).
    pub deferred: IntCounterVec,
    /// Downlinks not sent because no gateway that heard the frame could transmit them in either
    /// window, by `type` and `reason` (the first choice's).
    pub dropped: IntCounterVec,
    /// Join-requests not answered by a join-storm limit, by `limit` (dev_eui_rate,
    /// gateway_airtime).
    pub join_storm_limited: IntCounterVec,
    /// TX_ACK refusals that matched a booked downlink and updated the scheduler's view, by
    /// `error`.
    pub tx_refused: IntCounterVec,
}

impl AirtimeMetrics {
    /// Creates and registers the metrics in `r`.
    pub fn register(r: &Registry) -> Self {
        let booked = CounterVec::new(
            Opts::new(
                "netserver_downlink_airtime_seconds_total",
                "Airtime booked on gateways by the downlink scheduler, by type.",
            ),
            &["type"],
        )
        .expect("valid metric definition");
        r.register(Box::new(booked.clone()))
            .expect("metric registered once");
        let m = Self {
            booked_seconds: booked,
            deferred: counter_vec(
                r,
                "netserver_downlinks_deferred_total",
                "Downlinks moved to another window or gateway for lack of airtime, by type and reason.",
                &["type", "reason"],
            ),
            dropped: counter_vec(
                r,
                "netserver_downlinks_airtime_dropped_total",
                "Downlinks not sent: no gateway could transmit them in either window, by type and reason.",
                &["type", "reason"],
            ),
            join_storm_limited: counter_vec(
                r,
                "netserver_join_storm_limited_total",
                "Join-requests not answered by a join-storm limit, by limit.",
                &["limit"],
            ),
            tx_refused: counter_vec(
                r,
                "netserver_scheduler_tx_refused_total",
                "TX_ACK refusals of booked downlinks, taken back from the schedule, by error.",
                &["error"],
            ),
        };
        for limit in ["dev_eui_rate", "gateway_airtime"] {
            m.join_storm_limited.with_label_values(&[limit]);
        }
        for t in ["join_accept", "data"] {
            m.booked_seconds.with_label_values(&[t]);
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_named_metrics() {
        let m = Metrics::new();
        m.joins.with_label_values(&["accepted", "rx1"]).inc();
        Metrics::observe(&m.join_latency, Duration::from_millis(7));
        let text = m.render();
        assert!(
            text.contains("netserver_joins_total{reason=\"rx1\",result=\"accepted\"} 1"),
            "{text}"
        );
        assert!(text.contains("netserver_join_latency_seconds_bucket{le=\"0.01\"} 1"));
        assert!(text.contains("netserver_rxpk_total{result=\"crc_dropped\"} 0"));
    }
}
