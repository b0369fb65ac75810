//! `simulator run --delivery mqtt://HOST:PORT[?topic=…]`: counts delivered uplinks by
//! subscribing to ChirpStack v4's integration topics, so the report's delivery figures work
//! against any network server that publishes ChirpStack's MQTT events (ours included).
//!
//! URL: `mqtt://[USER@]HOST:PORT` or `mqtts://…` (TLS against `ca_file`), with the query
//! parameters `topic` (the subscription, default `application/+/device/+/event/up`),
//! `qos` (the subscription's QoS, 1 by default; 0 spares the broker an acknowledgement per
//! event, and a broker may then drop events for a subscriber that lags), `password_file`
//! and `ca_file`. Each `up` event's `deviceInfo.devEui` and `fCnt` is one delivery.

use std::time::Duration;

use anyhow::Context;
use protocol::ids::DevEui;
use rumqttc::{Client, Event, MqttOptions, Packet, QoS};

/// ChirpStack's uplink event topic, for every application and device.
pub const DEFAULT_TOPIC: &str = "application/+/device/+/event/up";

/// Where to subscribe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MqttDelivery {
    /// Host.
    pub host: String,
    /// Port.
    pub port: u16,
    /// TLS.
    pub tls: bool,
    /// User name, if any.
    pub user: Option<String>,
    /// File holding the password.
    pub password_file: Option<String>,
    /// CA certificate file (PEM), with TLS.
    pub ca_file: Option<String>,
    /// The subscription's topic filter.
    pub topic: String,
    /// The subscription's QoS.
    pub qos: QoS,
}

impl MqttDelivery {
    /// Parses `mqtt://[USER@]HOST:PORT[?topic=…&qos=0|1&password_file=…&ca_file=…]`.
    pub fn parse(url: &str) -> anyhow::Result<Self> {
        let (tls, rest) = match (url.strip_prefix("mqtts://"), url.strip_prefix("mqtt://")) {
            (Some(r), _) => (true, r),
            (None, Some(r)) => (false, r),
            _ => anyhow::bail!("--delivery {url:?}: mqtt://HOST:PORT or mqtts://HOST:PORT"),
        };
        let (addr, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (user, hostport) = match addr.split_once('@') {
            Some((u, h)) => (Some(u.to_owned()), h),
            None => (None, addr),
        };
        let (host, port) = hostport
            .rsplit_once(':')
            .with_context(|| format!("--delivery {url:?}: no :PORT"))?;
        let port = port
            .trim_end_matches('/')
            .parse()
            .with_context(|| format!("--delivery {url:?}: bad port"))?;
        let mut d = Self {
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            port,
            tls,
            user,
            password_file: None,
            ca_file: None,
            topic: DEFAULT_TOPIC.to_owned(),
            qos: QoS::AtLeastOnce,
        };
        for p in query.split('&').filter(|p| !p.is_empty()) {
            match p.split_once('=') {
                Some(("topic", v)) => d.topic = v.to_owned(),
                Some(("qos", "0")) => d.qos = QoS::AtMostOnce,
                Some(("qos", "1")) => d.qos = QoS::AtLeastOnce,
                Some(("password_file", v)) => d.password_file = Some(v.to_owned()),
                Some(("ca_file", v)) => d.ca_file = Some(v.to_owned()),
                _ => anyhow::bail!(
                    "--delivery {url:?}: unknown parameter {p:?} (known: topic, qos=0|1, password_file, ca_file)"
                ),
            }
        }
        anyhow::ensure!(!d.host.is_empty(), "--delivery {url:?}: no host");
        anyhow::ensure!(
            !tls || d.ca_file.is_some(),
            "--delivery {url:?}: mqtts:// needs ?ca_file=PEM"
        );
        Ok(d)
    }

    fn options(&self, client_id: &str) -> anyhow::Result<MqttOptions> {
        let mut o = MqttOptions::new(client_id, self.host.clone(), self.port);
        o.set_keep_alive(Duration::from_secs(10));
        o.set_max_packet_size(256 * 1024, 64 * 1024);
        if self.user.is_some() || self.password_file.is_some() {
            let password = match &self.password_file {
                Some(p) => std::fs::read_to_string(p)
                    .with_context(|| format!("reading the MQTT password file {p}"))?
                    .trim()
                    .to_owned(),
                None => String::new(),
            };
            o.set_credentials(self.user.clone().unwrap_or_default(), password);
        }
        if let Some(ca) = &self.ca_file {
            let cfg = httpsec::tls::client_config(std::path::Path::new(ca))?;
            o.set_transport(rumqttc::Transport::tls_with_config(
                rumqttc::TlsConfiguration::Rustls(cfg),
            ));
        }
        Ok(o)
    }

    /// Subscribes (waiting up to 10 s for the broker's SUBACK) and hands every uplink event's
    /// (DevEUI, FCnt) to `deliver`, from a thread of its own, until `deliver` returns false.
    pub fn subscribe(
        &self,
        deliver: impl Fn(DevEui, u32) -> bool + Send + 'static,
    ) -> anyhow::Result<()> {
        let id = format!("simulator-{}", std::process::id());
        let (client, mut conn) = Client::new(self.options(&id)?, 64);
        client.subscribe(self.topic.clone(), self.qos)?;
        let (ready, subscribed) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("simulator-mqtt".into())
            .spawn(move || {
                let _client = client;
                for ev in conn.iter() {
                    match ev {
                        Ok(Event::Incoming(Packet::SubAck(_))) => {
                            let _ = ready.send(Ok(()));
                        }
                        Ok(Event::Incoming(Packet::Publish(p))) => {
                            if let Some((dev, fcnt)) = uplink_of(&p.payload) {
                                if !deliver(dev, fcnt) {
                                    return;
                                }
                            }
                        }
                        Ok(_) => {}
                        Err(e) => {
                            let _ = ready.send(Err(e.to_string()));
                            std::thread::sleep(Duration::from_millis(200));
                        }
                    }
                }
            })?;
        match subscribed.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => anyhow::bail!("MQTT delivery counter: {e}"),
            Err(_) => anyhow::bail!(
                "MQTT delivery counter: no SUBACK from {}:{} in 10 s",
                self.host,
                self.port
            ),
        }
    }
}

/// The (DevEUI, FCnt) of a ChirpStack `up` event.
pub fn uplink_of(payload: &[u8]) -> Option<(DevEui, u32)> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Info<'a> {
        #[serde(borrow)]
        dev_eui: &'a str,
    }
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Up<'a> {
        #[serde(borrow)]
        device_info: Info<'a>,
        f_cnt: u32,
    }
    let up: Up<'_> = serde_json::from_slice(payload).ok()?;
    Some((up.device_info.dev_eui.parse().ok()?, up.f_cnt))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivery_urls_are_parsed() {
        let d =
            MqttDelivery::parse("mqtt://app@127.0.0.1:1883?topic=a/+/b&password_file=/p").unwrap();
        assert_eq!((d.host.as_str(), d.port, d.tls), ("127.0.0.1", 1883, false));
        assert_eq!(
            (
                d.user.as_deref(),
                d.password_file.as_deref(),
                d.topic.as_str()
            ),
            (Some("app"), Some("/p"), "a/+/b")
        );
        let d = MqttDelivery::parse("mqtt://h:1").unwrap();
        assert_eq!((d.topic.as_str(), d.qos), (DEFAULT_TOPIC, QoS::AtLeastOnce));
        assert_eq!(
            MqttDelivery::parse("mqtt://h:1?qos=0").unwrap().qos,
            QoS::AtMostOnce
        );
        for bad in [
            "udp://h:1",
            "mqtt://h",
            "mqtt://h:1?x=y",
            "mqtts://h:1",
            "mqtt://h:1?qos=2",
        ] {
            assert!(MqttDelivery::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn uplinks_are_read_from_chirpstacks_up_events() {
        let up = br#"{"deduplicationId":"x","deviceInfo":{"devEui":"70b3d5ff00000001","tenantId":""},"fCnt":7,"fPort":1}"#;
        assert_eq!(uplink_of(up), Some((DevEui::new(0x70B3_D5FF_0000_0001), 7)));
        assert_eq!(uplink_of(b"{}"), None);
        assert_eq!(uplink_of(b"\xff"), None);
    }
}
