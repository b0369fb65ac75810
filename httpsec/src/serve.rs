//! A hardened accept loop for an HTTP/1.1 listener that may face the internet.
//!
//! What it bounds before any handler runs (docs/security.md):
//! - **connections**: at most [`Limits::max_connections`] at once; one more is closed at once
//!   (counted in [`Counters::refused_over_limit`]);
//! - **slow or silent clients**: the TLS handshake and each request's headers must arrive within
//!   [`Limits::header_read_timeout`] (hyper's header-read timer); a connection with no request in
//!   progress that moves no byte for [`Limits::idle_timeout`] is closed
//!   ([`Counters::closed_idle`]);
//! - **header size**: hyper's read buffer is capped at [`MAX_HEADER_BYTES`];
//! - **plain HTTP**: [`Transport::for_listener`] refuses it on a non-loopback address unless the
//!   operator chose it. With TLS on a loopback address, a connection whose first byte is not a TLS
//!   handshake is served as plain HTTP, so local tools and scripts keep working; on any other
//!   address only TLS is spoken.
//!
//! Each connection's service is made by the caller from the peer address, so handlers can rate
//! limit and audit per source address. Shutdown stops accepting, lets in-flight requests finish
//! (connections are closed after their current response), and returns once every connection is
//! gone.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::body::{Body, Incoming};
use hyper::server::conn::http1;
use hyper::service::Service;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

/// hyper's read buffer, which bounds a request's head (request line and headers).
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// The first byte of a TLS record carrying a handshake (RFC 8446 §5.1, ContentType 22).
const TLS_HANDSHAKE: u8 = 0x16;

/// How long shutdown waits for in-flight requests before it drops their connections.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Time and count limits of a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The TLS handshake, and then each request's head, must arrive within this.
    pub header_read_timeout: Duration,
    /// A connection without a request in progress that moves no byte for this long is closed.
    pub idle_timeout: Duration,
    /// Connections served at once.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            max_connections: 256,
        }
    }
}

/// What the loop counted; the server exports these as metrics.
#[derive(Debug, Default)]
pub struct Counters {
    /// Connections accepted and served.
    pub accepted: AtomicU64,
    /// Connections closed at once because [`Limits::max_connections`] were open.
    pub refused_over_limit: AtomicU64,
    /// Connections closed by the idle timeout.
    pub closed_idle: AtomicU64,
    /// TLS handshakes that failed or did not finish within the header-read timeout.
    pub tls_failed: AtomicU64,
    /// Connections that spoke plain HTTP where only TLS is served.
    pub plain_refused: AtomicU64,
    /// Connections open now.
    pub open: AtomicUsize,
}

/// What a listener speaks.
#[derive(Clone)]
pub enum Transport {
    /// TLS; plain HTTP too when `plain_too` (a loopback address, or the operator's choice).
    Tls {
        /// The server configuration.
        config: Arc<ServerConfig>,
        /// Whether a connection that does not start a TLS handshake is served as plain HTTP.
        plain_too: bool,
    },
    /// Plain HTTP only.
    Plain,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tls { plain_too, .. } => write!(f, "Tls {{ plain_too: {plain_too} }}"),
            Self::Plain => f.write_str("Plain"),
        }
    }
}

/// Plain HTTP was asked for on an address other hosts can reach.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "refusing to serve plain HTTP on {addr}, which is not a loopback address: API keys, tokens \
     and keys would cross the network in clear. Configure a certificate ({hint}) or, behind a \
     TLS-terminating proxy, say so explicitly with --insecure-http (insecure_http = true)"
)]
pub struct PlainHttpRefused {
    /// The listen address.
    pub addr: SocketAddr,
    /// How to configure a certificate, for the message (e.g. `[api] tls_cert and tls_key`).
    pub hint: String,
}

impl Transport {
    /// What a listener on `addr` speaks: TLS when `tls` is given (plain HTTP too on a loopback
    /// address, or when `insecure_http`); plain HTTP only on a loopback address or when
    /// `insecure_http`, and otherwise an error that says why.
    pub fn for_listener(
        addr: SocketAddr,
        tls: Option<Arc<ServerConfig>>,
        insecure_http: bool,
        hint: &str,
    ) -> Result<Self, PlainHttpRefused> {
        let plain_ok = addr.ip().is_loopback() || insecure_http;
        match tls {
            Some(config) => Ok(Self::Tls {
                config,
                plain_too: plain_ok,
            }),
            None if plain_ok => Ok(Self::Plain),
            None => Err(PlainHttpRefused {
                addr,
                hint: hint.to_owned(),
            }),
        }
    }

    /// The URL scheme clients should use.
    pub fn scheme(&self) -> &'static str {
        match self {
            Self::Tls { .. } => "https",
            Self::Plain => "http",
        }
    }
}

/// The certificate chain (leaf first) a TLS client presented, added to each request of its
/// connection as an extension when it presented one (see
/// [`crate::tls::server_config_optional_client_auth`]).
#[derive(Debug, Clone)]
pub struct ClientCertificates(pub Arc<[rustls_pki_types::CertificateDer<'static>]>);

/// A connection's service, as the loop needs it: a hyper service of HTTP/1.1 requests that
/// cannot fail (errors are responses), shareable across tasks, with a body hyper can send.
pub trait HttpService:
    Service<
        Request<Incoming>,
        Response = Response<Self::ResBody>,
        Error = Infallible,
        Future: Send + 'static,
    > + Send
    + Sync
    + 'static
{
    /// The response body.
    type ResBody: Body<Data: Send, Error: Into<Box<dyn std::error::Error + Send + Sync>>>
        + Send
        + 'static;
}

impl<S, B> HttpService for S
where
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type ResBody = B;
}

/// When a connection last moved a byte, and how many requests it has in progress.
#[derive(Debug)]
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
    in_flight: AtomicUsize,
}

impl Activity {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
        })
    }

    fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// When the connection becomes idle for `idle`, by what is known now.
    fn idle_deadline(&self, idle: Duration) -> Instant {
        self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed)) + idle
    }

    fn is_idle(&self, idle: Duration) -> bool {
        self.in_flight.load(Ordering::Relaxed) == 0 && Instant::now() >= self.idle_deadline(idle)
    }
}

/// Counts a request in progress until dropped.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn new(a: &Arc<Activity>) -> Self {
        a.in_flight.fetch_add(1, Ordering::Relaxed);
        a.touch();
        Self(a.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A stream that records when it last moved a byte.
struct Watched<T> {
    inner: T,
    activity: Arc<Activity>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Serves `listener` until `shutdown` completes, then lets in-flight requests finish (up to a
/// grace period) and returns once every connection is closed. `make_service` builds each
/// connection's service from its peer address.
pub async fn serve<M, S>(
    listener: TcpListener,
    transport: Transport,
    limits: Limits,
    counters: Arc<Counters>,
    make_service: M,
    shutdown: impl Future<Output = ()>,
) where
    M: Fn(SocketAddr) -> S,
    S: HttpService,
{
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok(v) => v,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            counters.refused_over_limit.fetch_add(1, Ordering::Relaxed);
            drop(stream);
            continue;
        };
        counters.accepted.fetch_add(1, Ordering::Relaxed);
        let svc = make_service(peer);
        let (transport, counters, stop) = (transport.clone(), counters.clone(), stop_rx.clone());
        tokio::spawn(async move {
            counters.open.fetch_add(1, Ordering::Relaxed);
            connection(stream, transport, limits, &counters, svc, stop).await;
            counters.open.fetch_sub(1, Ordering::Relaxed);
            drop(permit);
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    // Every connection holds a permit until it is closed.
    let all = u32::try_from(limits.max_connections.max(1)).unwrap_or(u32::MAX);
    let _ = permits.acquire_many(all).await;
}

/// One connection: the transport (TLS handshake or plain), then HTTP/1.1 under the limits.
async fn connection<S: HttpService>(
    stream: TcpStream,
    transport: Transport,
    limits: Limits,
    counters: &Counters,
    svc: S,
    stop: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let activity = Activity::new();
    let watched = Watched {
        inner: stream,
        activity: activity.clone(),
    };
    match transport {
        Transport::Plain => http(watched, limits, counters, svc, activity, stop, None).await,
        Transport::Tls { config, plain_too } => {
            let mut first = [0u8; 1];
            let peeked =
                tokio::time::timeout(limits.header_read_timeout, watched.inner.peek(&mut first))
                    .await;
            match peeked {
                Ok(Ok(1)) if first[0] != TLS_HANDSHAKE => {
                    if plain_too {
                        http(watched, limits, counters, svc, activity, stop, None).await;
                    } else {
                        counters.plain_refused.fetch_add(1, Ordering::Relaxed);
                    }
                    return;
                }
                Ok(Ok(1)) => {}
                _ => {
                    counters.tls_failed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
            let acceptor = tokio_rustls::TlsAcceptor::from(config);
            let accepted =
                tokio::time::timeout(limits.header_read_timeout, acceptor.accept(watched)).await;
            match accepted {
                Ok(Ok(tls)) => {
                    let certs = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .filter(|c| !c.is_empty())
                        .map(|c| {
                            ClientCertificates(c.iter().map(|d| d.clone().into_owned()).collect())
                        });
                    http(tls, limits, counters, svc, activity, stop, certs).await
                }
                _ => {
                    counters.tls_failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

/// HTTP/1.1 over `io` until the client closes, an error, the idle timeout, or shutdown.
async fn http<I, S: HttpService>(
    io: I,
    limits: Limits,
    counters: &Counters,
    svc: S,
    activity: Arc<Activity>,
    mut stop: watch::Receiver<bool>,
    client_certs: Option<ClientCertificates>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = Arc::new(svc);
    let tracked = {
        let activity = activity.clone();
        hyper::service::service_fn(move |mut req: Request<Incoming>| {
            if let Some(c) = &client_certs {
                req.extensions_mut().insert(c.clone());
            }
            let guard = InFlight::new(&activity);
            let fut = svc.call(req);
            async move {
                let r = fut.await;
                drop(guard);
                r
            }
        })
    };
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(MAX_HEADER_BYTES);
    let conn = builder.serve_connection(TokioIo::new(io), tracked);
    tokio::pin!(conn);
    loop {
        let deadline = tokio::time::Instant::from_std(activity.idle_deadline(limits.idle_timeout));
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "http connection");
                }
                return;
            }
            () = tokio::time::sleep_until(deadline) => {
                if activity.is_idle(limits.idle_timeout) {
                    counters.closed_idle.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                // A request is in progress (or a byte moved since): wait again. With a request
                // in progress, look again after a full idle period.
                if activity.in_flight.load(Ordering::Relaxed) > 0 {
                    activity.touch();
                }
            }
            _ = stop.changed() => {
                conn.as_mut().graceful_shutdown();
                let grace = tokio::time::sleep(SHUTDOWN_GRACE);
                tokio::pin!(grace);
                tokio::select! {
                    _ = conn.as_mut() => {}
                    () = &mut grace => {}
                }
                return;
            }
        }
    }
}

/// A listener served on a thread of its own by [`spawn`]: its address, what its loop counted,
/// and its shutdown. Dropping it shuts it down.
#[derive(Debug)]
pub struct Handle {
    addr: SocketAddr,
    scheme: &'static str,
    counters: Arc<Counters>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Handle {
    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `https` or `http`.
    pub fn scheme(&self) -> &'static str {
        self.scheme
    }

    /// What the accept loop counted (connections refused, closed idle, failed handshakes).
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Stops accepting, finishes in-flight requests, and waits.
    pub fn shutdown(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Serves `listener` (bound, non-blocking) with [`serve`] on a thread named `name` that runs
/// `rt`, until the returned handle shuts it down.
pub fn spawn<M, S>(
    name: &str,
    listener: std::net::TcpListener,
    rt: tokio::runtime::Runtime,
    (transport, limits): (Transport, Limits),
    make_service: M,
) -> io::Result<Handle>
where
    M: Fn(SocketAddr) -> S + Send + 'static,
    S: HttpService,
{
    let addr = listener.local_addr()?;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let counters = Arc::new(Counters::default());
    let loop_counters = counters.clone();
    let scheme = transport.scheme();
    let what = name.to_owned();
    let thread = std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            rt.block_on(async move {
                let listener = match TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!(error = %e, listener = %what, "listener");
                        return;
                    }
                };
                let shutdown = async {
                    let _ = rx.await;
                };
                serve(
                    listener,
                    transport,
                    limits,
                    loop_counters,
                    make_service,
                    shutdown,
                )
                .await;
            });
        })?;
    Ok(Handle {
        addr,
        scheme,
        counters,
        stop: Some(tx),
        thread: Some(thread),
    })
}
