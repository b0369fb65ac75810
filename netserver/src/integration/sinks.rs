//! Starting and stopping the delivered sinks: the event log they read, MQTT and the webhooks,
//! each on its own thread. Files they need (passwords, secrets, CA certificates) are read in
//! [`Prepared::new`], before the server reports ready; the threads start once the state exists
//! (MQTT commands queue into it).

use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::Context;
use tokio::sync::watch;

use crate::integration::chirpstack::Shape;
use crate::integration::commands::MqttCommands;
use crate::integration::config::IntegrationConfig;
use crate::integration::delivery::{IntegrationMetrics, Progress};
use crate::integration::log::{EventLog, Position, LOG_DIR};
use crate::integration::mqtt::{CommandHandler, MqttSink};
use crate::integration::webhook::Webhook;
use crate::state::State;

/// The delivered sinks, configured and checked, not yet started.
#[derive(Debug)]
pub struct Prepared {
    mqtt: Option<MqttSink>,
    webhooks: Vec<Webhook>,
    command_topic: String,
}

impl Prepared {
    /// Reads what the sinks of `config` need; `region` shapes their events.
    pub fn new(
        config: &IntegrationConfig,
        region: protocol::region::Region,
    ) -> anyhow::Result<Self> {
        config.validate().map_err(anyhow::Error::msg)?;
        let shape = Shape {
            applications: config.applications(),
            region,
        };
        let mqtt = match config.mqtt.url.trim() {
            "" => None,
            _ => Some(MqttSink::new(&config.mqtt, shape.clone()).context("the MQTT sink")?),
        };
        let webhooks = config
            .http
            .iter()
            .enumerate()
            .map(|(i, h)| {
                Webhook::new(h, shape.clone()).with_context(|| format!("webhook {i} ({})", h.url))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Self {
            mqtt,
            webhooks,
            command_topic: config.mqtt.command_topic.clone(),
        })
    }

    /// Starts every sink on the log in `data_dir`, following `written` (none without an
    /// event log: nothing to deliver).
    pub fn start(
        self,
        state: &Arc<State>,
        data_dir: &Path,
        written: Option<&watch::Receiver<Position>>,
    ) -> anyhow::Result<Delivery> {
        let Some(written) = written else {
            return Ok(Delivery::none());
        };
        let dir = data_dir.join(LOG_DIR);
        let metrics: &IntegrationMetrics = &state.metrics.integration;
        let (stop, stopped) = watch::channel(false);
        let mut threads = Vec::new();
        if let Some(m) = self.mqtt {
            let progress = Progress::load(&dir, "mqtt", metrics.clone())?;
            let commands: Option<Box<dyn CommandHandler>> = (!self.command_topic.trim().is_empty())
                .then(|| {
                    Box::new(MqttCommands::new(
                        Arc::clone(state),
                        &self.command_topic,
                        state.config.integration.applications(),
                    )) as Box<dyn CommandHandler>
                });
            threads.push(m.spawn(progress, written.clone(), commands, stopped.clone())?);
        }
        for (i, w) in self.webhooks.into_iter().enumerate() {
            let progress = Progress::load(&dir, &format!("http-{i}"), metrics.clone())?;
            threads.push(w.spawn(progress, written.clone(), stopped.clone())?);
        }
        Ok(Delivery { stop, threads })
    }
}

/// Opens the event log for the sinks of `config` in `data_dir` (none configured: no log).
pub fn open_log(
    config: &IntegrationConfig,
    data_dir: &Path,
    metrics: &IntegrationMetrics,
) -> anyhow::Result<Option<(EventLog, watch::Receiver<Position>)>> {
    if !config.enabled() {
        return Ok(None);
    }
    let dir = data_dir.join(LOG_DIR);
    let log = EventLog::open(
        &dir,
        config.limits(),
        config.sink_names(),
        metrics.log_dropped_segments.clone(),
    )
    .with_context(|| format!("opening the event log in {}", dir.display()))?;
    Ok(Some(log))
}

/// The running sinks.
#[derive(Debug)]
pub struct Delivery {
    stop: watch::Sender<bool>,
    threads: Vec<JoinHandle<()>>,
}

impl Delivery {
    /// No sinks.
    pub fn none() -> Self {
        Self {
            stop: watch::channel(false).0,
            threads: Vec::new(),
        }
    }

    /// Stops the sinks (MQTT delivers what it can within two seconds first) and waits for
    /// them; what is left is delivered after the next start.
    pub fn stop(self) {
        let _ = self.stop.send(true);
        for t in self.threads {
            let _ = t.join();
        }
    }
}
