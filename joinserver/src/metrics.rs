//! Prometheus metrics and the `/metrics` + `/health` HTTP endpoint.
//!
//! Labels are bounded (`result`, `reason`); a DevEUI is never a label. The endpoint is a minimal
//! HTTP/1.1 responder on a tokio current-thread runtime: it answers `GET /metrics` and
//! `GET /health` and closes the connection.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Every metric of the join server.
#[derive(Clone, Debug)]
pub struct Metrics {
    registry: Registry,
    /// `joinserver_joins_total{result}`: JoinReqs answered, by result (`success`, `mic_failed`,
    /// `unknown_dev_eui`, `dev_nonce_replayed`, ...).
    pub joins: IntCounterVec,
    /// `joinserver_rejoins_total{type,result}`: RejoinReqs answered (also counted in
    /// `joinserver_joins_total`), by rejoin type (`0`, `1`, `2`, `other`) and result.
    pub rejoins: IntCounterVec,
    /// `joinserver_join_latency_seconds`: from datagram received to JoinAns sent, including the
    /// wait for the nonce commit.
    pub join_latency: Histogram,
    /// `joinserver_link_drops_total{reason}`: datagrams dropped without an answer.
    pub link_drops: IntCounterVec,
    /// `joinserver_link_datagrams_total`: datagrams received on the link.
    pub link_datagrams: IntCounter,
    /// `joinserver_answers_replayed_total`: retries/replays answered from the answer cache.
    pub answers_replayed: IntCounter,
    /// `joinserver_link_clock_skew_ms`: the clock skew of the last link datagram dropped as
    /// stale (sender's timestamp minus ours).
    pub link_clock_skew_ms: IntGauge,
    /// `joinserver_answers_withheld_total`: cached answers not sent because the commit they
    /// depend on failed.
    pub answers_withheld: IntCounter,
    /// `joinserver_store_commits_total`: group commits.
    pub store_commits: IntCounter,
    /// `joinserver_store_commit_batch_size`: nonce updates per group commit.
    pub store_batch: Histogram,
    /// `joinserver_store_errors_total`: failed commits (their answers are not sent).
    pub store_errors: IntCounter,
    /// `joinserver_store_stale_total`: accepted joins not committed because the shared store no
    /// longer held the nonce state they were checked against (another instance got there first).
    pub store_stale: IntCounter,
    /// `joinserver_answers_shared_total`: answers sent as another instance gave them (a retry
    /// of a request that instance answered, found in the shared store).
    pub answers_shared: IntCounter,
    /// `joinserver_devices`: provisioned devices in memory.
    pub devices: IntGauge,
    /// `joinserver_kernel_rx_drops`: datagrams the kernel dropped on the link socket (receive
    /// buffer full), read from /proc/net/udp at scrape time (the `udpstat` crate).
    pub kernel_drops: IntGauge,
    /// `joinserver_bi_requests_total{message_type,result}`: Backend Interfaces requests
    /// answered, by message type and result.
    pub bi_requests: IntCounterVec,
    /// `joinserver_bi_refused_total{reason}`: Backend Interfaces requests refused before or
    /// outside the join pipeline (authentication, SenderID, malformed, unsupported).
    pub bi_refused: IntCounterVec,
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let registry = Registry::new();
        let joins = IntCounterVec::new(
            Opts::new("joinserver_joins_total", "JoinReqs answered, by result"),
            &["result"],
        )
        .expect("valid metric");
        let rejoins = IntCounterVec::new(
            Opts::new(
                "joinserver_rejoins_total",
                "RejoinReqs answered, by rejoin type and result",
            ),
            &["type", "result"],
        )
        .expect("valid metric");
        let join_latency = Histogram::with_opts(
            HistogramOpts::new(
                "joinserver_join_latency_seconds",
                "Datagram received to JoinAns sent, including the nonce commit",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
            ]),
        )
        .expect("valid metric");
        let link_drops = IntCounterVec::new(
            Opts::new(
                "joinserver_link_drops_total",
                "Link datagrams dropped without an answer, by reason",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let link_datagrams = counter(
            "joinserver_link_datagrams_total",
            "Datagrams received on the link",
        );
        let answers_replayed = counter(
            "joinserver_answers_replayed_total",
            "Retried or replayed JoinReqs answered from the answer cache",
        );
        let link_clock_skew_ms = IntGauge::new(
            "joinserver_link_clock_skew_ms",
            "Clock skew of the last link datagram dropped as stale (sender minus join server, ms)",
        )
        .expect("valid metric");
        let answers_withheld = counter(
            "joinserver_answers_withheld_total",
            "Cached answers withheld because the nonce commit they depend on failed",
        );
        let store_commits = counter("joinserver_store_commits_total", "Nonce group commits");
        let store_batch = Histogram::with_opts(
            HistogramOpts::new(
                "joinserver_store_commit_batch_size",
                "Nonce updates per group commit",
            )
            .buckets(vec![1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0]),
        )
        .expect("valid metric");
        let store_errors = counter(
            "joinserver_store_errors_total",
            "Failed nonce commits (their answers were not sent)",
        );
        let store_stale = counter(
            "joinserver_store_stale_total",
            "Accepted joins not committed: the shared store had moved on (another instance)",
        );
        let answers_shared = counter(
            "joinserver_answers_shared_total",
            "Answers sent as another instance gave them (retries found in the shared store)",
        );
        let devices =
            IntGauge::new("joinserver_devices", "Provisioned devices").expect("valid metric");
        let kernel_drops = IntGauge::new(
            "joinserver_kernel_rx_drops",
            "Datagrams dropped by the kernel on the link socket (receive buffer full)",
        )
        .expect("valid metric");
        let (bi_requests, bi_refused) = bi_metrics();
        for c in [
            Box::new(bi_requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(bi_refused.clone()),
            Box::new(joins.clone()),
            Box::new(rejoins.clone()),
            Box::new(join_latency.clone()),
            Box::new(link_drops.clone()),
            Box::new(link_datagrams.clone()),
            Box::new(answers_replayed.clone()),
            Box::new(answers_withheld.clone()),
            Box::new(link_clock_skew_ms.clone()),
            Box::new(store_commits.clone()),
            Box::new(store_batch.clone()),
            Box::new(store_errors.clone()),
            Box::new(store_stale.clone()),
            Box::new(answers_shared.clone()),
            Box::new(devices.clone()),
            Box::new(kernel_drops.clone()),
        ] {
            registry.register(c).expect("unique metric names");
        }
        Self {
            registry,
            joins,
            rejoins,
            join_latency,
            link_drops,
            link_datagrams,
            answers_replayed,
            answers_withheld,
            link_clock_skew_ms,
            store_commits,
            store_batch,
            store_errors,
            store_stale,
            answers_shared,
            devices,
            kernel_drops,
            bi_requests,
            bi_refused,
        }
    }

    /// Counts one answered JoinReq or RejoinReq (`rejoin`: its type label, see
    /// [`crate::wire::rejoin_type`]) by `result`.
    pub fn count_join(&self, rejoin: Option<&'static str>, result: &str) {
        self.joins.with_label_values(&[result]).inc();
        if let Some(t) = rejoin {
            self.rejoins.with_label_values(&[t, result]).inc();
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding into a Vec cannot fail");
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// The Backend Interfaces listener's counters: requests by message type and result, refusals
/// by reason.
fn bi_metrics() -> (IntCounterVec, IntCounterVec) {
    let requests = IntCounterVec::new(
        Opts::new(
            "joinserver_bi_requests_total",
            "Backend Interfaces requests answered, by message type and result",
        ),
        &["message_type", "result"],
    )
    .expect("valid metric");
    let refused = IntCounterVec::new(
        Opts::new(
            "joinserver_bi_refused_total",
            "Backend Interfaces requests refused outside the join pipeline, by reason",
        ),
        &["reason"],
    )
    .expect("valid metric");
    (requests, refused)
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Serves `/metrics` and `/health` on `listener` until `stop` is set. `healthy` is consulted per
/// request; `before_scrape` runs before each `/metrics` rendering (to refresh gauges).
pub async fn serve(
    listener: TcpListener,
    metrics: Metrics,
    healthy: Arc<AtomicBool>,
    before_scrape: Arc<dyn Fn() + Send + Sync>,
) {
    loop {
        let Ok((mut conn, _)) = listener.accept().await else {
            continue;
        };
        let metrics = metrics.clone();
        let healthy = healthy.clone();
        let before_scrape = before_scrape.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            let mut n = 0;
            // Read until the end of the request head (or the buffer is full).
            while n < buf.len() {
                match tokio::time::timeout(
                    std::time::Duration::from_secs(5),
                    conn.read(&mut buf[n..]),
                )
                .await
                {
                    Ok(Ok(0)) | Err(_) | Ok(Err(_)) => break,
                    Ok(Ok(k)) => n += k,
                }
                if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            let head = String::from_utf8_lossy(&buf[..n]);
            let mut parts = head.split_whitespace();
            let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            let (status, ctype, body) = match (method, path) {
                ("GET", "/metrics") => {
                    before_scrape();
                    (
                        "200 OK",
                        "text/plain; version=0.0.4; charset=utf-8",
                        metrics.render(),
                    )
                }
                ("GET", "/health") if healthy.load(Ordering::Relaxed) => {
                    ("200 OK", "text/plain", "ok\n".to_owned())
                }
                ("GET", "/health") => (
                    "503 Service Unavailable",
                    "text/plain",
                    "unhealthy\n".to_owned(),
                ),
                ("GET", _) => ("404 Not Found", "text/plain", "not found\n".to_owned()),
                _ => (
                    "405 Method Not Allowed",
                    "text/plain",
                    "method not allowed\n".to_owned(),
                ),
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = conn.write_all(resp.as_bytes()).await;
            let _ = conn.shutdown().await;
        });
    }
}

/// Binds the metrics listener.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// A counter; its name and help are constants, so it cannot fail.
fn counter(name: &str, help: &str) -> IntCounter {
    IntCounter::new(name, help).expect("valid metric")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_bounded_labels() {
        let m = Metrics::new();
        m.joins.with_label_values(&["success"]).inc();
        m.link_drops.with_label_values(&["bad_tag"]).inc_by(2);
        let text = m.render();
        assert!(text.contains("joinserver_joins_total{result=\"success\"} 1"));
        assert!(text.contains("joinserver_link_drops_total{reason=\"bad_tag\"} 2"));
        assert!(text.contains("joinserver_join_latency_seconds_bucket"));
    }
}
