//! The MQTT sink (rumqttc): publishes the event log in ChirpStack's topics and shapes
//! ([`crate::integration::chirpstack`]) and takes downlink commands from the broker.
//!
//! One thread with its own current-thread runtime. It reads the log from the acknowledged
//! position, keeps at most `max_inflight` events published and not acknowledged, and moves
//! the position past an event once the broker acknowledged it (QoS 1: its PUBACK; QoS 0: once
//! written to the connection), the events before it included. On any connection error the
//! connection is dropped whole and made again after a back-off, and reading starts again at
//! the acknowledged position: events are repeated, with the same `deduplicationId`, never
//! lost, and always in log order (so in order per device).

use std::collections::VecDeque;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rumqttc::{
    ConnectionError, Event, EventLoop, MqttOptions, Packet, PingReq, Publish, QoS, Request,
    StateError, Subscribe,
};
use tokio::sync::watch;

use crate::integration::chirpstack::{chirpstack_event, Shape};
use crate::integration::config::MqttConfig;
use crate::integration::delivery::{Backoff, Progress};
use crate::integration::log::{Entry, Position};

/// Where the broker is: `mqtt://HOST:PORT` or `mqtts://HOST:PORT`, optionally `?qos=0|1`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broker {
    /// TLS (`mqtts://`).
    pub tls: bool,
    /// Host name or IP address.
    pub host: String,
    /// Port (default 1883, or 8883 with TLS).
    pub port: u16,
    /// QoS given in the URL, overriding `[integration.mqtt] qos`.
    pub qos: Option<u8>,
}

impl Broker {
    /// Parses a broker URL.
    pub fn parse(url: &str) -> Result<Self, String> {
        let (tls, rest) = if let Some(r) = url.strip_prefix("mqtts://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("mqtt://") {
            (false, r)
        } else {
            return Err(format!(
                "{url:?}: an MQTT broker is mqtt://HOST:PORT or mqtts://HOST:PORT"
            ));
        };
        let (addr, query) = rest.split_once('?').unwrap_or((rest, ""));
        let addr = addr.trim_end_matches('/');
        let (host, port) = match addr.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || addr.starts_with('[') => (
                h,
                p.parse::<u16>()
                    .map_err(|_| format!("{url:?}: bad port {p:?}"))?,
            ),
            _ => (addr, if tls { 8883 } else { 1883 }),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(format!("{url:?}: no host"));
        }
        let mut qos = None;
        for param in query.split('&').filter(|p| !p.is_empty()) {
            match param.split_once('=') {
                Some(("qos", v @ ("0" | "1"))) => qos = v.parse().ok(),
                _ => {
                    return Err(format!(
                        "{url:?}: unknown parameter {param:?} (known: qos=0 or qos=1)"
                    ))
                }
            }
        }
        Ok(Self {
            tls,
            host: host.to_owned(),
            port,
            qos,
        })
    }
}

/// A downlink command received from the broker: the topic and the payload.
pub trait CommandHandler: Send + 'static {
    /// Handles one command published on `topic`.
    fn command(&self, topic: &str, payload: &[u8]);
}

/// Everything the MQTT sink needs, read and checked before it starts.
pub struct MqttSink {
    config: MqttConfig,
    broker: Broker,
    qos: QoS,
    password: Option<String>,
    tls: Option<Arc<rustls::ClientConfig>>,
    shape: Shape,
}

impl std::fmt::Debug for MqttSink {
    /// Without the password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttSink")
            .field("broker", &self.broker)
            .field("client_id", &self.config.client_id)
            .field("qos", &self.qos)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

impl MqttSink {
    /// Reads the password and CA files the configuration names.
    pub fn new(config: &MqttConfig, shape: Shape) -> anyhow::Result<Self> {
        use anyhow::Context;
        let broker = Broker::parse(config.url.trim()).map_err(anyhow::Error::msg)?;
        let qos = match broker.qos.unwrap_or(config.qos) {
            0 => QoS::AtMostOnce,
            _ => QoS::AtLeastOnce,
        };
        let password = match config.password_file.trim() {
            "" => None,
            p => Some(
                crate::keys::read_secret(std::path::Path::new(p), |s| {
                    Ok::<_, std::convert::Infallible>(s.to_owned())
                })
                .context("the MQTT password file")?,
            ),
        };
        let tls = if broker.tls {
            let ca = config.ca_file.trim();
            anyhow::ensure!(
                !ca.is_empty(),
                "mqtts:// needs [integration.mqtt] ca_file, the CA the broker's certificate chains to"
            );
            Some(httpsec::tls::client_config(std::path::Path::new(ca))?)
        } else {
            None
        };
        Ok(Self {
            config: config.clone(),
            broker,
            qos,
            password,
            tls,
            shape,
        })
    }

    fn options(&self) -> MqttOptions {
        let mut o = MqttOptions::new(
            self.config.client_id.clone(),
            self.broker.host.clone(),
            self.broker.port,
        );
        o.set_keep_alive(Duration::from_secs(self.config.keep_alive_s.max(5)));
        o.set_inflight(self.config.max_inflight.max(1));
        o.set_clean_session(true);
        o.set_max_packet_size(64 * 1024, 256 * 1024);
        if !self.config.username.is_empty() || self.password.is_some() {
            o.set_credentials(
                self.config.username.clone(),
                self.password.clone().unwrap_or_default(),
            );
        }
        if let Some(t) = &self.tls {
            o.set_transport(rumqttc::Transport::tls_with_config(
                rumqttc::TlsConfiguration::Rustls(Arc::clone(t)),
            ));
        }
        o
    }

    /// The command subscription: the command topic with `+` for the application and device.
    fn command_filter(&self) -> Option<String> {
        let t = self.config.command_topic.trim();
        (!t.is_empty()).then(|| t.replace("{application_id}", "+").replace("{dev_eui}", "+"))
    }

    /// Starts the sink's thread; it stops once `stop` turns true (after delivering what it can
    /// within two seconds).
    pub fn spawn(
        self,
        progress: Progress,
        written: watch::Receiver<Position>,
        commands: Option<Box<dyn CommandHandler>>,
        stop: watch::Receiver<bool>,
    ) -> std::io::Result<JoinHandle<()>> {
        std::thread::Builder::new()
            .name("netserver-mqtt".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::error!(error = %e, "the MQTT sink cannot start");
                        return;
                    }
                };
                rt.block_on(self.run(progress, written, commands, stop));
            })
    }

    async fn run(
        self,
        mut progress: Progress,
        mut written: watch::Receiver<Position>,
        commands: Option<Box<dyn CommandHandler>>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(5));
        loop {
            let (result, connected) = {
                let mut c = Connection::new(&self, &mut progress, commands.as_deref());
                let r = c.serve(&mut written, &mut stop).await;
                (r, c.connected)
            };
            if connected {
                backoff.reset();
            }
            progress.save();
            let reason = match result {
                Ok(()) => return,
                Err(reason) => reason,
            };
            progress.failure(reason);
            if *stop.borrow() {
                // Stopping (seen by `serve`, which consumed the change): no reconnection; what
                // is undelivered waits in the event log for the next start.
                return;
            }
            let delay = backoff.next_delay();
            tracing::warn!(broker = %format_args!("{}:{}", self.broker.host, self.broker.port), reason, retry_in_ms = delay.as_millis() as u64, "MQTT connection lost; undelivered events wait in the event log");
            progress.report(&progress.reader(), *written.borrow());
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stop.changed() => return,
            }
        }
    }
}

/// An event read from the log and handed to the connection.
#[derive(Debug)]
struct Sent {
    end: Position,
    /// The publish's packet id (0 at QoS 0); `None` if not an event type this sink publishes
    /// (acknowledged at once).
    pkid: Option<u16>,
    acked: bool,
}

/// What woke the connection's loop.
enum Wake {
    Read(Result<(), StateError>),
    Written(bool),
    Tick,
    Ping,
    Stop,
}

/// One connection to the broker, from the acknowledged position on.
///
/// rumqttc's [`EventLoop`] makes the connection (TCP or TLS, CONNECT, CONNACK); after that
/// this loop drives the event loop's network and [`rumqttc::MqttState`] itself, because the
/// event loop writes each request with a write of its own (one system call, and one wake-up
/// of the broker, per event). Here the publishes of one read of the log are encoded into the
/// connection's buffer and written together; packet ids, acknowledgements, incoming
/// publishes and pings stay rumqttc's.
struct Connection<'a> {
    sink: &'a MqttSink,
    progress: &'a mut Progress,
    commands: Option<&'a dyn CommandHandler>,
    events: EventLoop,
    reader: crate::integration::log::LogReader,
    inflight: VecDeque<Sent>,
    connected: bool,
    read: Vec<Entry>,
    /// How long a write may wait for the broker.
    timeout: Duration,
}

impl<'a> Connection<'a> {
    fn new(
        sink: &'a MqttSink,
        progress: &'a mut Progress,
        commands: Option<&'a dyn CommandHandler>,
    ) -> Self {
        let window = usize::from(sink.config.max_inflight.max(1));
        let reader = progress.reader();
        let events = EventLoop::new(sink.options(), 1);
        let timeout = Duration::from_secs(events.network_options().connection_timeout().max(1));
        Self {
            sink,
            progress,
            commands,
            events,
            reader,
            inflight: VecDeque::with_capacity(window),
            connected: false,
            read: Vec::new(),
            timeout,
        }
    }

    /// Delivers until `stop` (`Ok`) or a connection error (`Err` with its reason).
    async fn serve(
        &mut self,
        written: &mut watch::Receiver<Position>,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<(), &'static str> {
        tokio::select! {
            ev = self.events.poll() => match ev {
                Ok(Event::Incoming(Packet::ConnAck(_))) => self.connected = true,
                Ok(_) => return Err("protocol"),
                Err(e) => return Err(reason(&e)),
            },
            _ = stop.changed() => return Ok(()),
        }
        if let (Some(_), Some(filter)) = (self.commands, self.sink.command_filter()) {
            self.write(Request::Subscribe(Subscribe::new(filter, QoS::AtLeastOnce)))
                .await?;
            self.flush().await?;
        }
        let keep_alive = self.events.mqtt_options.keep_alive();
        let mut ping =
            tokio::time::interval_at(tokio::time::Instant::now() + keep_alive, keep_alive);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        let mut log_open = true;
        let mut drain_until: Option<Instant> = None;
        loop {
            self.fill(*written.borrow()).await?;
            self.advance();
            if let Some(deadline) = drain_until {
                let caught_up =
                    self.inflight.is_empty() && self.reader.position() >= *written.borrow();
                if caught_up || Instant::now() >= deadline {
                    return Ok(());
                }
            }
            let wake = {
                let net = self.events.network.as_mut().ok_or("protocol")?;
                let state = &mut self.events.state;
                tokio::select! {
                    r = net.readb(state) => Wake::Read(r),
                    r = written.changed(), if log_open => Wake::Written(r.is_ok()),
                    _ = tick.tick() => Wake::Tick,
                    _ = ping.tick() => Wake::Ping,
                    _ = stop.changed(), if drain_until.is_none() => Wake::Stop,
                }
            };
            match wake {
                Wake::Read(r) => {
                    r.map_err(|e| state_reason(&e))?;
                    // The acknowledgements of incoming publishes (commands).
                    self.flush().await?;
                    self.take_events();
                }
                Wake::Written(open) => log_open = open,
                Wake::Tick => {
                    self.progress.save();
                    self.progress.report(&self.reader, *written.borrow());
                }
                Wake::Ping => {
                    self.write(Request::PingReq(PingReq)).await?;
                    self.flush().await?;
                }
                Wake::Stop => drain_until = Some(Instant::now() + Duration::from_secs(2)),
            }
        }
    }

    /// Hands `request` to rumqttc's state and encodes the packet it makes into the
    /// connection's buffer; returns that packet's id (publishes).
    async fn write(&mut self, request: Request) -> Result<Option<u16>, &'static str> {
        let packet = self
            .events
            .state
            .handle_outgoing_packet(request)
            .map_err(|e| state_reason(&e))?
            // No packet: a packet id still in flight ("collision"), which the window rules
            // out; reconnecting publishes again from the acknowledged position.
            .ok_or("protocol")?;
        let pkid = match &packet {
            Packet::Publish(p) => Some(p.pkid),
            _ => None,
        };
        let net = self.events.network.as_mut().ok_or("protocol")?;
        tokio::time::timeout(self.timeout, net.write(packet))
            .await
            .map_err(|_| "timeout")?
            .map_err(|e| state_reason(&e))?;
        Ok(pkid)
    }

    /// Writes what is buffered.
    async fn flush(&mut self) -> Result<(), &'static str> {
        let net = self.events.network.as_mut().ok_or("protocol")?;
        tokio::time::timeout(self.timeout, net.flush())
            .await
            .map_err(|_| "timeout")?
            .map_err(|e| state_reason(&e))
    }

    /// Publishes what the log holds up to `end` beyond what is in flight, up to the window,
    /// once a quarter of the window is free (or nothing is in flight): each read of the log
    /// costs a system call, so reading one event per PUBACK would cost one per event.
    async fn fill(&mut self, end: Position) -> Result<(), &'static str> {
        let window = usize::from(self.sink.config.max_inflight.max(1));
        let room = window.saturating_sub(self.inflight.len());
        if room == 0
            || (room < (window / 4).max(1) && !self.inflight.is_empty())
            || self.reader.position() >= end
        {
            return Ok(());
        }
        let mut read = std::mem::take(&mut self.read);
        read.clear();
        let (_, skipped) = self.reader.read(room, end, &mut read).map_err(|e| {
            tracing::error!(error = %e, "reading the event log failed");
            "log_read"
        })?;
        if skipped {
            self.progress.failure("log_trimmed");
        }
        let mut wrote = false;
        for e in read.drain(..) {
            let pkid = match chirpstack_event(&e.line, &self.sink.shape) {
                Some(ev) => {
                    let topic = ev.topic(&self.sink.config.event_topic);
                    let publish = Publish::new(topic, self.sink.qos, ev.body);
                    wrote = true;
                    self.write(Request::Publish(publish)).await?
                }
                None => None,
            };
            self.inflight.push_back(Sent {
                end: e.end,
                pkid,
                acked: pkid.is_none(),
            });
        }
        self.read = read;
        if wrote {
            self.flush().await?;
            if self.sink.qos == QoS::AtMostOnce {
                // QoS 0: delivered once written to the connection.
                for s in self.inflight.iter_mut().filter(|s| !s.acked) {
                    s.acked = true;
                }
            }
        }
        Ok(())
    }

    /// Takes what rumqttc's state collected from the broker: acknowledgements and commands.
    fn take_events(&mut self) {
        while let Some(ev) = self.events.state.events.pop_front() {
            match ev {
                Event::Incoming(Packet::PubAck(a)) => {
                    if let Some(s) = self
                        .inflight
                        .iter_mut()
                        .find(|s| s.pkid == Some(a.pkid) && !s.acked)
                    {
                        s.acked = true;
                    }
                }
                Event::Incoming(Packet::Publish(p)) => {
                    if let Some(c) = self.commands {
                        c.command(&p.topic, &p.payload);
                    }
                }
                _ => {}
            }
        }
    }

    /// Moves the acknowledged position past the acknowledged events at the front.
    fn advance(&mut self) {
        let (mut delivered, mut skipped, mut to) = (0, 0, None);
        while self.inflight.front().is_some_and(|s| s.acked) {
            let s = self.inflight.pop_front().expect("front checked");
            if s.pkid.is_some() {
                delivered += 1;
            } else {
                skipped += 1;
            }
            to = Some(s.end);
        }
        if let Some(to) = to {
            self.progress.ack(to, delivered, skipped);
        }
    }
}

/// A bounded label for an error of the connection's state or network.
fn state_reason(e: &StateError) -> &'static str {
    match e {
        StateError::Io(_) | StateError::ConnectionAborted => "io",
        StateError::AwaitPingResp | StateError::CollisionTimeout => "timeout",
        _ => "protocol",
    }
}

/// A bounded label for a connection error.
fn reason(e: &ConnectionError) -> &'static str {
    match e {
        ConnectionError::ConnectionRefused(_) => "refused",
        ConnectionError::NetworkTimeout | ConnectionError::FlushTimeout => "timeout",
        ConnectionError::Tls(_) => "tls",
        ConnectionError::Io(_) => "io",
        _ => "protocol",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_urls_are_parsed_and_checked() {
        assert_eq!(
            Broker::parse("mqtt://127.0.0.1:1884").unwrap(),
            Broker {
                tls: false,
                host: "127.0.0.1".into(),
                port: 1884,
                qos: None
            }
        );
        let b = Broker::parse("mqtts://broker.local?qos=0").unwrap();
        assert_eq!((b.tls, b.port, b.qos), (true, 8883, Some(0)));
        let b = Broker::parse("mqtt://[::1]:1883/").unwrap();
        assert_eq!((b.host.as_str(), b.port), ("::1", 1883));
        for (url, needle) in [
            ("tcp://h:1", "mqtt://HOST:PORT"),
            ("mqtt://h:port", "bad port"),
            ("mqtt://:1883", "no host"),
            ("mqtt://h:1?qos=2", "unknown parameter"),
        ] {
            let e = Broker::parse(url).unwrap_err();
            assert!(e.contains(needle), "{url}: {e}");
        }
    }
}
