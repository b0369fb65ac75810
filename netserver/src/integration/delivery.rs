//! What every delivered sink (MQTT, webhooks) shares: its metrics, and its progress through the
//! event log ([`crate::integration::log`]): the acknowledged position, stored as it advances,
//! the backlog behind it and the age of the oldest event not acknowledged.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use prometheus::{GaugeVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry};

use crate::integration::log::{load_position, save_position, LogReader, Position};

/// The delivered sinks' metrics, labelled by `sink` (`mqtt`, `http-0`, ...: bounded by the
/// configuration).
#[derive(Debug, Clone)]
pub struct IntegrationMetrics {
    /// Bytes of the event log not yet acknowledged, per sink.
    pub backlog_bytes: IntGaugeVec,
    /// Age of the oldest event read and not acknowledged, per sink, seconds.
    pub oldest_age_seconds: GaugeVec,
    /// Events delivered, per sink and `result` (acked, skipped: not a type the sink takes).
    pub publishes: IntCounterVec,
    /// Delivery failures, per sink and `reason` (connection, status, timeout, ...).
    pub failures: IntCounterVec,
    /// Downlink commands received over MQTT, by `result` (queued, refused).
    pub commands: IntCounterVec,
    /// Event-log segments deleted over the backlog bound before every sink had them.
    pub log_dropped_segments: IntCounter,
}

impl IntegrationMetrics {
    /// Creates and registers the metrics in `r`.
    pub fn register(r: &Registry) -> Self {
        let reg = |c: Box<dyn prometheus::core::Collector>| {
            r.register(c).expect("metric registered once");
        };
        let backlog_bytes = IntGaugeVec::new(
            Opts::new(
                "netserver_integration_backlog_bytes",
                "Bytes of the event log a sink has not had acknowledged.",
            ),
            &["sink"],
        )
        .expect("valid metric definition");
        let oldest_age_seconds = GaugeVec::new(
            Opts::new(
                "netserver_integration_oldest_age_seconds",
                "Age of the oldest event a sink has read and not had acknowledged.",
            ),
            &["sink"],
        )
        .expect("valid metric definition");
        let publishes = IntCounterVec::new(
            Opts::new(
                "netserver_integration_publishes_total",
                "Events delivered by a sink, by result.",
            ),
            &["sink", "result"],
        )
        .expect("valid metric definition");
        let failures = IntCounterVec::new(
            Opts::new(
                "netserver_integration_failures_total",
                "Delivery failures of a sink, by reason.",
            ),
            &["sink", "reason"],
        )
        .expect("valid metric definition");
        let commands = IntCounterVec::new(
            Opts::new(
                "netserver_integration_commands_total",
                "Downlink commands received over MQTT, by result.",
            ),
            &["result"],
        )
        .expect("valid metric definition");
        let log_dropped_segments = IntCounter::new(
            "netserver_integration_log_dropped_segments_total",
            "Event-log segments deleted over the backlog bound before every sink had them.",
        )
        .expect("valid metric definition");
        reg(Box::new(backlog_bytes.clone()));
        reg(Box::new(oldest_age_seconds.clone()));
        reg(Box::new(publishes.clone()));
        reg(Box::new(failures.clone()));
        reg(Box::new(commands.clone()));
        reg(Box::new(log_dropped_segments.clone()));
        Self {
            backlog_bytes,
            oldest_age_seconds,
            publishes,
            failures,
            commands,
            log_dropped_segments,
        }
    }
}

/// How often a sink stores its acknowledged position (at most), and refreshes its gauges.
const SAVE_EVERY: Duration = Duration::from_millis(100);

/// A sink's progress through the log.
#[derive(Debug)]
pub struct Progress {
    dir: PathBuf,
    name: String,
    acked: Position,
    saved: Position,
    last_save: Instant,
    last_advance: Instant,
    behind_since: Option<Instant>,
    metrics: IntegrationMetrics,
}

impl Progress {
    /// The progress of sink `name` in the log in `dir`, from its stored position.
    pub fn load(dir: &Path, name: &str, metrics: IntegrationMetrics) -> std::io::Result<Self> {
        let acked = load_position(dir, name)?.unwrap_or_default();
        for result in ["acked", "skipped"] {
            metrics.publishes.with_label_values(&[name, result]);
        }
        Ok(Self {
            dir: dir.to_owned(),
            name: name.to_owned(),
            acked,
            saved: acked,
            last_save: Instant::now(),
            last_advance: Instant::now(),
            behind_since: None,
            metrics,
        })
    }

    /// The sink's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The acknowledged position (where delivery resumes after a failure or a restart).
    pub fn acked(&self) -> Position {
        self.acked
    }

    /// A reader from the acknowledged position.
    pub fn reader(&self) -> LogReader {
        LogReader::new(&self.dir, self.acked)
    }

    /// Events up to `to` are acknowledged (`n` delivered, `skipped` not for this sink).
    pub fn ack(&mut self, to: Position, delivered: u64, skipped: u64) {
        if to > self.acked {
            self.acked = to;
            self.last_advance = Instant::now();
        }
        let m = &self.metrics.publishes;
        m.with_label_values(&[&self.name, "acked"])
            .inc_by(delivered);
        m.with_label_values(&[&self.name, "skipped"])
            .inc_by(skipped);
        if self.last_save.elapsed() >= SAVE_EVERY {
            self.save();
        }
    }

    /// Stores the acknowledged position if it moved.
    pub fn save(&mut self) {
        self.last_save = Instant::now();
        if self.saved == self.acked {
            return;
        }
        match save_position(&self.dir, &self.name, self.acked) {
            Ok(()) => self.saved = self.acked,
            Err(e) => {
                self.failure("position_write");
                tracing::error!(sink = %self.name, error = %e, "storing the acknowledged position failed");
            }
        }
    }

    /// Counts a failure.
    pub fn failure(&self, reason: &str) {
        self.metrics
            .failures
            .with_label_values(&[&self.name, reason])
            .inc();
    }

    /// Refreshes the backlog gauges against the log's end `end`. The oldest event's age is
    /// measured from when the sink was first seen behind, or last made progress if later.
    pub fn report(&mut self, reader: &LogReader, end: Position) {
        let m = &self.metrics;
        let bytes = reader.backlog_bytes(self.acked, end);
        m.backlog_bytes
            .with_label_values(&[&self.name])
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
        let age = if bytes == 0 {
            self.behind_since = None;
            0.0
        } else {
            let since = *self.behind_since.get_or_insert_with(Instant::now);
            since.max(self.last_advance).elapsed().as_secs_f64()
        };
        m.oldest_age_seconds
            .with_label_values(&[&self.name])
            .set(age);
    }
}

/// Exponential back-off: `initial`, doubled at each failure up to `max`, reset on success.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// A back-off from `initial` to `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            next: initial,
        }
    }

    /// The delay before the next try; doubles the one after.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }

    /// After a success: the next failure waits `initial` again.
    pub fn reset(&mut self) {
        self.next = self.initial;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_maximum_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
        let d: Vec<u64> = (0..4).map(|_| b.next_delay().as_millis() as u64).collect();
        assert_eq!(d, [100, 200, 350, 350]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(100));
    }

    #[test]
    fn progress_is_stored_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let m = IntegrationMetrics::register(&Registry::new());
        let mut p = Progress::load(dir.path(), "mqtt", m.clone()).unwrap();
        assert_eq!(p.acked(), Position::default());
        let to = Position {
            segment: 3,
            offset: 120,
        };
        p.ack(to, 4, 1);
        p.save();
        assert_eq!(
            Progress::load(dir.path(), "mqtt", m.clone())
                .unwrap()
                .acked(),
            to
        );
        assert_eq!(m.publishes.with_label_values(&["mqtt", "acked"]).get(), 4);
        // Never backwards.
        p.ack(Position::default(), 0, 0);
        assert_eq!(p.acked(), to);
    }
}
