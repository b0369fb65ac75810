//! Every HTTP listener of the server (the operator endpoint, the HTTP downlink input) through
//! the hardened accept loop of [`httpsec::serve`]: TLS from `[http] tls_cert`/`tls_key`, plain
//! HTTP refused on a non-loopback address unless `insecure_http`, header-read and idle timeouts,
//! a connection limit. And the receive step of the UDP listeners ([`recv_or_shutdown`]).

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use httpsec::serve::{Counters, HttpService, Limits, Transport};
use tokio::sync::watch;

use crate::ops::config::HttpConfig;

/// What `[http]` makes of every listener: its TLS configuration (if any), whether plain HTTP
/// may face the network, its limits.
#[derive(Clone)]
pub struct HttpSecurity {
    tls: Option<Arc<rustls::ServerConfig>>,
    insecure_http: bool,
    limits: Limits,
}

impl std::fmt::Debug for HttpSecurity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpSecurity")
            .field("tls", &self.tls.is_some())
            .field("insecure_http", &self.insecure_http)
            .field("limits", &self.limits)
            .finish()
    }
}

impl HttpSecurity {
    /// Reads the certificate and key `[http]` names (both or neither).
    pub fn of(c: &HttpConfig) -> anyhow::Result<Self> {
        let (cert, key) = (c.tls_cert.as_os_str(), c.tls_key.as_os_str());
        let tls = match (cert.is_empty(), key.is_empty()) {
            (true, true) => None,
            (false, false) => Some(
                httpsec::tls::server_config(&c.tls_cert, &c.tls_key)
                    .context("loading [http] tls_cert and tls_key")?,
            ),
            _ => anyhow::bail!("[http] tls_cert and tls_key go together: set both or neither"),
        };
        Ok(Self {
            tls,
            insecure_http: c.insecure_http,
            limits: c.limits(),
        })
    }

    /// Binds `addr` (empty: disabled) for `what`, refusing plain HTTP on a non-loopback
    /// address unless `insecure_http`, with the reason.
    pub fn bind(&self, addr: &str, what: &str) -> anyhow::Result<Option<HttpListener>> {
        let addr = addr.trim();
        if addr.is_empty() {
            return Ok(None);
        }
        let listener = std::net::TcpListener::bind(addr)
            .with_context(|| format!("binding {what} on {addr}"))?;
        listener.set_nonblocking(true)?;
        let local = listener.local_addr()?;
        let transport = Transport::for_listener(
            local,
            self.tls.clone(),
            self.insecure_http,
            "[http] tls_cert and tls_key, or --tls-cert and --tls-key",
        )
        .with_context(|| format!("{what} on {addr}"))?;
        tracing::info!(%local, scheme = transport.scheme(), what, "HTTP listener");
        Ok(Some(HttpListener {
            listener,
            transport,
            limits: self.limits,
            counters: Arc::new(Counters::default()),
        }))
    }
}

/// A bound HTTP listener with what it speaks and its limits.
#[derive(Debug)]
pub struct HttpListener {
    listener: std::net::TcpListener,
    transport: Transport,
    limits: Limits,
    counters: Arc<Counters>,
}

impl HttpListener {
    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves `service` (one per connection) until `shutdown` turns true; in-flight requests
    /// then finish.
    pub async fn serve<S: HttpService + Clone>(self, service: S, shutdown: watch::Receiver<bool>) {
        self.serve_per_peer(move |_| service.clone(), shutdown)
            .await;
    }

    /// Serves each connection with the service `make_service` builds from its peer address (a
    /// handler that limits failed authentications per source), until `shutdown` turns true.
    pub async fn serve_per_peer<M, S>(self, make_service: M, mut shutdown: watch::Receiver<bool>)
    where
        M: Fn(SocketAddr) -> S,
        S: HttpService,
    {
        let listener = match tokio::net::TcpListener::from_std(self.listener) {
            Ok(l) => l,
            Err(e) => return tracing::error!(error = %e, "HTTP listener"),
        };
        let stop = async move {
            while !*shutdown.borrow_and_update() {
                if shutdown.changed().await.is_err() {
                    return;
                }
            }
        };
        httpsec::serve::serve(
            listener,
            self.transport,
            self.limits,
            self.counters,
            make_service,
            stop,
        )
        .await;
    }
}

/// The next datagram on `socket` into `buf` (receive errors, such as an ICMP error surfacing,
/// are skipped), or `None` once `shutdown` changes.
pub async fn recv_or_shutdown(
    socket: &tokio::net::UdpSocket,
    buf: &mut [u8],
    shutdown: &mut watch::Receiver<bool>,
) -> Option<(usize, SocketAddr)> {
    loop {
        tokio::select! {
            r = socket.recv_from(buf) => if let Ok(x) = r {
                return Some(x);
            },
            _ = shutdown.changed() => return None,
        }
    }
}
