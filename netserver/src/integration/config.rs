//! `[integration]`: the delivered sinks (MQTT, HTTP webhooks), the durable event log they read
//! from, and the applications devices belong to. See `docs/integration.md`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::integration::chirpstack::{Applications, COMMAND_TOPIC, EVENT_TOPIC};
use crate::integration::log::LogLimits;

/// The default application (a device whose tenant has no application of its own).
pub const DEFAULT_APPLICATION: &str = "00000000-0000-0000-0000-000000000000";

/// The event types of ChirpStack's integrations.
pub const EVENT_TYPES: [&str; 6] = ["up", "join", "ack", "txack", "status", "log"];

/// `[integration]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IntegrationConfig {
    /// Application id per tenant (the device's owner, as the join server reports it), and
    /// `default` for devices of any other tenant or none.
    pub application_id: BTreeMap<String, String>,
    /// A new event-log segment starts past this many bytes.
    pub segment_bytes: u64,
    /// The most bytes the event log keeps for lagging sinks.
    pub backlog_bytes: u64,
    /// The MQTT sink.
    pub mqtt: MqttConfig,
    /// HTTP webhooks, each a sink of its own.
    pub http: Vec<WebhookConfig>,
}

impl Default for IntegrationConfig {
    fn default() -> Self {
        Self {
            application_id: [("default".to_owned(), DEFAULT_APPLICATION.to_owned())].into(),
            segment_bytes: 8 << 20,
            backlog_bytes: 256 << 20,
            mqtt: MqttConfig::default(),
            http: Vec::new(),
        }
    }
}

impl IntegrationConfig {
    /// Whether any delivered sink is configured (then the event log is kept).
    pub fn enabled(&self) -> bool {
        !self.mqtt.url.trim().is_empty() || !self.http.is_empty()
    }

    /// The names of the delivered sinks (`mqtt`, `http-0`, `http-1`, ...): their position
    /// files and metric labels.
    pub fn sink_names(&self) -> Vec<String> {
        let mut v = Vec::new();
        if !self.mqtt.url.trim().is_empty() {
            v.push("mqtt".to_owned());
        }
        v.extend((0..self.http.len()).map(|i| format!("http-{i}")));
        v
    }

    /// The log's sizes.
    pub fn limits(&self) -> LogLimits {
        LogLimits {
            segment_bytes: self.segment_bytes,
            backlog_bytes: self.backlog_bytes,
        }
    }

    /// The applications of the tenants.
    pub fn applications(&self) -> Applications {
        let mut by_tenant = self.application_id.clone();
        let default = by_tenant
            .remove("default")
            .unwrap_or_else(|| DEFAULT_APPLICATION.to_owned());
        Applications { default, by_tenant }
    }

    /// Checks the settings.
    pub fn validate(&self) -> Result<(), String> {
        if self.segment_bytes == 0 || self.backlog_bytes < self.segment_bytes {
            return Err("integration.segment_bytes must be at least 1 and integration.backlog_bytes at least as large".into());
        }
        // The URL itself is checked when the sink is made (`mqtt::Broker::parse`).
        if !self.mqtt.url.trim().is_empty() && self.mqtt.qos > 1 {
            return Err(format!(
                "integration.mqtt.qos {} is not 0 or 1",
                self.mqtt.qos
            ));
        }
        for (i, h) in self.http.iter().enumerate() {
            if !(h.url.starts_with("http://") || h.url.starts_with("https://")) {
                return Err(format!(
                    "integration.http[{i}].url {:?} is not http:// or https://",
                    h.url
                ));
            }
            if let Some(e) = h.events.iter().find(|e| !EVENT_TYPES.contains(&e.as_str())) {
                return Err(format!(
                    "integration.http[{i}].events: unknown event {e:?} (known: {})",
                    EVENT_TYPES.join(", ")
                ));
            }
        }
        Ok(())
    }
}

/// `[integration.mqtt]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MqttConfig {
    /// `mqtt://HOST:PORT` or `mqtts://HOST:PORT` (TLS); empty: no MQTT sink. Flag: `--events`.
    pub url: String,
    /// The MQTT client id.
    pub client_id: String,
    /// User name; empty: none.
    pub username: String,
    /// File holding the password (0600); empty: none.
    pub password_file: String,
    /// CA certificate(s) (PEM) the broker's certificate must chain to, for `mqtts://`.
    pub ca_file: String,
    /// QoS of the events: 0 (at most once) or 1 (at least once, acknowledged by the broker).
    pub qos: u8,
    /// Keep-alive, seconds.
    pub keep_alive_s: u64,
    /// Event topic template: `{application_id}`, `{dev_eui}`, `{event}`.
    pub event_topic: String,
    /// Downlink command topic template (subscribed with `+` for the application and the
    /// device); empty: no commands.
    pub command_topic: String,
    /// Most events published and not yet acknowledged.
    pub max_inflight: u16,
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            client_id: "netserver".into(),
            username: String::new(),
            password_file: String::new(),
            ca_file: String::new(),
            qos: 1,
            keep_alive_s: 30,
            event_topic: EVENT_TOPIC.into(),
            command_topic: COMMAND_TOPIC.into(),
            max_inflight: 1000,
        }
    }
}

/// `[[integration.http]]`: one webhook.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookConfig {
    /// Where events are POSTed (`?event=TYPE` is appended, as ChirpStack does).
    pub url: String,
    /// The event types sent (default: all).
    pub events: Vec<String>,
    /// File holding the HMAC-SHA256 secret (0600); empty: unsigned.
    pub secret_file: String,
    /// One request's timeout, ms.
    pub timeout_ms: u64,
    /// The first retry's delay, ms; doubled at each failure.
    pub retry_initial_ms: u64,
    /// The longest delay between retries, ms.
    pub retry_max_ms: u64,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            events: EVENT_TYPES.iter().map(|&e| e.to_owned()).collect(),
            secret_file: String::new(),
            timeout_ms: 5_000,
            retry_initial_ms: 250,
            retry_max_ms: 30_000,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_integration_section_parses_and_is_checked() {
        let c: IntegrationConfig = toml::from_str(
            r#"
            [application_id]
            default = "84c006ab-204f-418b-9896-075226b8a93d"
            acme = "11111111-2222-3333-4444-555555555555"
            [mqtt]
            url = "mqtts://127.0.0.1:8883"
            qos = 0
            [[http]]
            url = "http://127.0.0.1:9/hook"
            events = ["up", "log"]
            "#,
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.sink_names(), ["mqtt", "http-0"]);
        let apps = c.applications();
        assert_eq!(
            apps.of(Some("acme")),
            "11111111-2222-3333-4444-555555555555"
        );
        assert_eq!(apps.of(None), "84c006ab-204f-418b-9896-075226b8a93d");
        let mut bad = c.clone();
        bad.http[0].events.push("location".into());
        assert!(bad
            .validate()
            .unwrap_err()
            .contains("unknown event \"location\""));
        let mut bad = c;
        bad.mqtt.qos = 2;
        assert!(bad.validate().unwrap_err().contains("not 0 or 1"));
        assert!(!IntegrationConfig::default().enabled());
    }
}
