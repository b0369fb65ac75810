//! The HTTPS shell: `POST` of a TS002 JSON message at any path (ChirpStack posts to the URL as
//! configured, The Things Stack to paths of its own), through the hardened accept loop of
//! [`httpsec::serve`]; each request is answered by [`Bi::handle`].
//!
//! Outside TS002's answers, which are all HTTP 200: another method is 405, another content
//! type 415, a body over the limit 413, and a source address that failed to authenticate too
//! often 429 with `Retry-After` (not even read).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{header, HeaderValue, Method, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use httpsec::ratelimit::FailureLimiter;
use httpsec::serve::{self, ClientCertificates, Limits, Transport};
use hyper::body::Incoming;

use super::handle::{Bi, Credentials};

/// The shared state of the listener's requests.
struct Shared {
    bi: Arc<Bi>,
    limiter: FailureLimiter<IpAddr>,
    max_body: usize,
}

/// Whether a `Content-Type` is JSON: `application/json`, with or without parameters
/// (`; charset=utf-8`), in any case.
fn is_json(value: Option<&HeaderValue>) -> bool {
    value
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
}

fn plain(status: StatusCode, text: &'static str) -> Response {
    (status, text).into_response()
}

async fn answer(shared: Arc<Shared>, peer: SocketAddr, req: Request<Incoming>) -> Response {
    if req.method() != Method::POST {
        let mut r = plain(
            StatusCode::METHOD_NOT_ALLOWED,
            "POST a TS002 JSON message\n",
        );
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
        return r;
    }
    if let Err(wait) = shared.limiter.check(&peer.ip(), Instant::now()) {
        let mut r = plain(
            StatusCode::TOO_MANY_REQUESTS,
            "too many failed authentications\n",
        );
        if let Ok(v) = HeaderValue::from_str(&wait.as_secs().max(1).to_string()) {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return r;
    }
    if !is_json(req.headers().get(header::CONTENT_TYPE)) {
        return plain(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Type must be application/json\n",
        );
    }
    let authorization = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let chain = req.extensions().get::<ClientCertificates>().cloned();
    let body = match axum::body::to_bytes(Body::new(req.into_body()), shared.max_body).await {
        Ok(b) => b,
        Err(_) => return plain(StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n"),
    };
    let creds = Credentials {
        authorization: authorization.as_deref(),
        chain: chain.as_ref().map(|c| &c.0[..]),
    };
    let a = shared.bi.handle(&body, creds).await;
    if a.auth_failed {
        shared.limiter.fail(&peer.ip(), Instant::now());
    }
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        a.json,
    )
        .into_response()
}

/// The listener's settings.
#[derive(Debug, Clone)]
pub struct ListenerConfig {
    /// What it speaks (TLS, with client certificates optional).
    pub transport: Transport,
    /// Accept-loop limits.
    pub limits: Limits,
    /// The largest body.
    pub max_body: usize,
    /// Failed authentications per source address per window.
    pub auth_failures: (u32, Duration),
}

/// A running Backend Interfaces listener.
pub type BiHandle = serve::Handle;

/// Binds `addr` and serves Backend Interfaces on its own thread (a current-thread runtime).
pub fn start(addr: SocketAddr, bi: Arc<Bi>, config: ListenerConfig) -> std::io::Result<BiHandle> {
    let std_listener = std::net::TcpListener::bind(addr)?;
    std_listener.set_nonblocking(true)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (max, window) = config.auth_failures;
    let shared = Arc::new(Shared {
        bi,
        limiter: FailureLimiter::new(max, window),
        max_body: config.max_body,
    });
    let make = move |peer: SocketAddr| {
        let shared = shared.clone();
        hyper::service::service_fn(move |req: Request<Incoming>| {
            let shared = shared.clone();
            async move { Ok::<_, std::convert::Infallible>(answer(shared, peer, req).await) }
        })
    };
    serve::spawn(
        "js-bi",
        std_listener,
        rt,
        (config.transport, config.limits),
        make,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_content_types() {
        let v = |s: &'static str| HeaderValue::from_static(s);
        assert!(is_json(Some(&v("application/json"))));
        assert!(is_json(Some(&v("application/json; charset=utf-8"))));
        assert!(is_json(Some(&v("Application/JSON;charset=UTF-8"))));
        assert!(!is_json(Some(&v("text/plain"))));
        assert!(!is_json(Some(&v("application/jsonx"))));
        assert!(!is_json(None));
    }
}
