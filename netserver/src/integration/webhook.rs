//! HTTP webhooks (`[[integration.http]]`): each POSTs the event log, in ChirpStack's JSON
//! ([`crate::integration::chirpstack`]), one event per request to `URL?event=TYPE`, signed
//! with HMAC-SHA256 under its secret in the `X-Signature-256: sha256=<hex>` header. One thread
//! per webhook, one event at a time, in log order: an event that fails (a connection error, a
//! timeout, a status other than 2xx) is retried with exponential back-off until it is
//! accepted, and the ones after it wait in the event log.

use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::sync::watch;

use crate::integration::chirpstack::{chirpstack_event, ChirpEvent, Shape};
use crate::integration::config::WebhookConfig;
use crate::integration::delivery::{Backoff, Progress};
use crate::integration::log::{Entry, Position};

/// The signature header.
pub const SIGNATURE_HEADER: &str = "X-Signature-256";

/// `sha256=<hex>`: the HMAC-SHA256 of `body` under `secret`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// One webhook, ready to start.
pub struct Webhook {
    config: WebhookConfig,
    secret: Option<zeroize::Zeroizing<Vec<u8>>>,
    shape: Shape,
    agent: ureq::Agent,
}

impl std::fmt::Debug for Webhook {
    /// Without the secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("url", &self.config.url)
            .field("signed", &self.secret.is_some())
            .finish_non_exhaustive()
    }
}

impl Webhook {
    /// Reads the secret file the configuration names.
    pub fn new(config: &WebhookConfig, shape: Shape) -> anyhow::Result<Self> {
        let secret = match config.secret_file.trim() {
            "" => None,
            p => Some(zeroize::Zeroizing::new(crate::keys::read_secret(
                std::path::Path::new(p),
                |s| Ok::<_, std::convert::Infallible>(s.as_bytes().to_vec()),
            )?)),
        };
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_millis(config.timeout_ms.max(1))))
            .http_status_as_error(false)
            .build()
            .into();
        Ok(Self {
            config: config.clone(),
            secret,
            shape,
            agent,
        })
    }

    /// Starts the webhook's thread; it stops once `stop` turns true.
    pub fn spawn(
        self,
        progress: Progress,
        written: watch::Receiver<Position>,
        stop: watch::Receiver<bool>,
    ) -> std::io::Result<JoinHandle<()>> {
        std::thread::Builder::new()
            .name(format!("netserver-{}", progress.name()))
            .spawn(move || self.run(progress, &written, &stop))
    }

    fn run(
        self,
        mut progress: Progress,
        written: &watch::Receiver<Position>,
        stop: &watch::Receiver<bool>,
    ) {
        let mut reader = progress.reader();
        let mut backoff = Backoff::new(
            Duration::from_millis(self.config.retry_initial_ms.max(1)),
            Duration::from_millis(self.config.retry_max_ms.max(1)),
        );
        let mut batch: Vec<Entry> = Vec::new();
        let mut last_report = Instant::now();
        while !*stop.borrow() {
            if last_report.elapsed() >= Duration::from_millis(200) {
                progress.save();
                progress.report(&reader, *written.borrow());
                last_report = Instant::now();
            }
            batch.clear();
            match reader.read(64, *written.borrow(), &mut batch) {
                Ok((_, skipped)) if skipped => progress.failure("log_trimmed"),
                Ok(_) => {}
                Err(e) => {
                    progress.failure("log_read");
                    tracing::error!(error = %e, "reading the event log failed");
                }
            }
            if batch.is_empty() {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            for e in batch.drain(..) {
                let Some(ev) = chirpstack_event(&e.line, &self.shape)
                    .filter(|ev| self.config.events.iter().any(|t| t == ev.event))
                else {
                    progress.ack(e.end, 0, 1);
                    continue;
                };
                if !self.deliver(&ev, &mut progress, &mut backoff, stop) {
                    progress.save();
                    return;
                }
                progress.ack(e.end, 1, 0);
            }
        }
        progress.save();
    }

    /// POSTs `ev` until it is accepted (`true`) or `stop` turns true (`false`).
    fn deliver(
        &self,
        ev: &ChirpEvent,
        progress: &mut Progress,
        backoff: &mut Backoff,
        stop: &watch::Receiver<bool>,
    ) -> bool {
        loop {
            match self.post(ev.event, &ev.body) {
                Ok(()) => {
                    backoff.reset();
                    return true;
                }
                Err(reason) => {
                    progress.failure(reason);
                    let delay = backoff.next_delay();
                    tracing::warn!(
                        sink = progress.name(),
                        reason,
                        retry_in_ms = delay.as_millis() as u64,
                        "webhook delivery failed"
                    );
                    let until = Instant::now() + delay;
                    while Instant::now() < until {
                        if *stop.borrow() {
                            return false;
                        }
                        std::thread::sleep(Duration::from_millis(20).min(delay));
                    }
                }
            }
        }
    }

    fn post(&self, event: &str, body: &[u8]) -> Result<(), &'static str> {
        let sep = if self.config.url.contains('?') {
            '&'
        } else {
            '?'
        };
        let url = format!("{}{sep}event={event}", self.config.url);
        let mut req = self
            .agent
            .post(&url)
            .header("Content-Type", "application/json");
        if let Some(s) = &self.secret {
            req = req.header(SIGNATURE_HEADER, signature(s, body));
        }
        match req.send(body) {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(_) => Err("status"),
            Err(ureq::Error::Timeout(_)) => Err("timeout"),
            Err(_) => Err("connection"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_rfc_4231s_hmac_sha256() {
        // RFC 4231, test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
