//! A LoRaWAN Backend Interfaces (TS002) join server over HTTPS: `POST` of the JoinReq JSON to
//! the configured URL, the JoinAns in the answer's body. hyper-util's pooled client keeps
//! connections alive between joins (as ChirpStack's does); rustls (ring) verifies the server
//! against `ca_file` and presents a client certificate when configured.
//!
//! TCP delivers or fails, so a transaction is posted once: the join flow's re-sends, meant for
//! lost datagrams, are no-ops while the request is in flight, and post again only after it
//! failed (a refused connection, a timeout, a non-2xx status: ChirpStack, too, reads no body
//! then).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use hyper::{Method, Request, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::oneshot;

use crate::ops::config::JoinServerRoute;

/// The largest answer read (a JoinAns is about 1 KB).
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// No answer in time.
    #[error("no answer from the join server within {0:?}")]
    Timeout(Duration),
    /// The connection or the exchange failed.
    #[error("join server request failed: {0}")]
    Request(String),
    /// The join server answered with another status than 2xx.
    #[error("join server answered HTTP {0}")]
    Status(u16),
    /// The answer's body could not be read (or is too large).
    #[error("join server answer unreadable: {0}")]
    Body(String),
}

/// A TS002 join server's client.
pub struct HttpClient {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    uri: Uri,
    authorization: Option<HeaderValue>,
    timeout: Duration,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the Authorization header.
        f.debug_struct("HttpClient")
            .field("uri", &self.uri)
            .finish_non_exhaustive()
    }
}

/// The TLS settings of a route: its CA, and its client certificate if any.
fn tls_config(route: &JoinServerRoute) -> anyhow::Result<rustls::ClientConfig> {
    use anyhow::Context;
    if route.ca_file.is_empty() {
        anyhow::bail!("join_servers {}: an https URL needs ca_file", route.url);
    }
    let builder = httpsec::tls::client_builder(Some(Path::new(&route.ca_file)))
        .with_context(|| format!("join_servers ca_file {}", route.ca_file))?;
    Ok(match (route.tls_cert.as_str(), route.tls_key.as_str()) {
        ("", "") => builder.with_no_client_auth(),
        ("", _) | (_, "") => anyhow::bail!("join_servers: tls_cert and tls_key go together"),
        (cert, key) => {
            let chain: Vec<CertificateDer<'static>> =
                httpsec::tls::read_certificates(Path::new(cert))?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|_| anyhow::anyhow!("join_servers tls_key {key}: no PEM private key"))?;
            builder.with_client_auth_cert(chain, key)?
        }
    })
}

impl HttpClient {
    /// The client of one `[[join_servers]]` entry with a `url`. A plain `http` URL is allowed
    /// only to a loopback address (tokens and keys would cross the network in clear).
    pub fn new(route: &JoinServerRoute) -> anyhow::Result<Self> {
        let uri: Uri = route
            .url
            .parse()
            .map_err(|e| anyhow::anyhow!("join_servers url {:?}: {e}", route.url))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => {
                let host = uri.host().unwrap_or_default().trim_matches(['[', ']']);
                let loopback = host == "localhost"
                    || host
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback());
                if !loopback {
                    anyhow::bail!(
                        "join_servers url {}: plain http only to a loopback address",
                        route.url
                    );
                }
                false
            }
            _ => anyhow::bail!("join_servers url {}: https:// or http://", route.url),
        };
        let connector = if https {
            hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(tls_config(route)?)
                .https_only()
                .enable_http1()
                .build()
        } else {
            hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(httpsec::tls::client_builder(None)?.with_no_client_auth())
                .https_or_http()
                .enable_http1()
                .build()
        };
        let header = |text: &str| {
            let mut v = HeaderValue::from_str(text.trim())
                .map_err(|_| "not a valid header value".to_owned())?;
            v.set_sensitive(true);
            Ok::<_, String>(v)
        };
        let authorization = match (
            route.authorization_file.as_str(),
            route.authorization.as_str(),
        ) {
            ("", "") => None,
            (f, "") => Some(crate::keys::read_secret(Path::new(f), header)?),
            ("", inline) => Some(
                header(inline).map_err(|e| anyhow::anyhow!("join_servers authorization: {e}"))?,
            ),
            _ => anyhow::bail!("join_servers: set authorization or authorization_file, not both"),
        };
        Ok(Self {
            client: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(90))
                .build(connector),
            uri,
            authorization,
            timeout: Duration::from_millis(route.timeout_ms.max(1)),
        })
    }

    /// Starts the transaction of one request (nothing is sent yet).
    pub fn begin(self: &Arc<Self>, body: Vec<u8>) -> Transaction {
        Transaction {
            client: Arc::clone(self),
            body: Bytes::from(body),
            state: State::Idle,
        }
    }

    /// One POST: the answer's body, or why there is none.
    async fn post(&self, body: Bytes) -> Result<Vec<u8>, HttpError> {
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(self.uri.clone())
            .header(CONTENT_TYPE, "application/json");
        if let Some(a) = &self.authorization {
            req = req.header(AUTHORIZATION, a.clone());
        }
        let req = req
            .body(Full::new(body))
            .map_err(|e| HttpError::Request(e.to_string()))?;
        let exchange = async {
            let res = self
                .client
                .request(req)
                .await
                .map_err(|e| HttpError::Request(e.to_string()))?;
            let status = res.status();
            if !status.is_success() {
                return Err(HttpError::Status(status.as_u16()));
            }
            let body = Limited::new(res.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|e| HttpError::Body(e.to_string()))?;
            Ok(body.to_bytes().to_vec())
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .unwrap_or(Err(HttpError::Timeout(self.timeout)))
    }
}

/// Where a transaction is.
#[derive(Debug)]
enum State {
    /// Not posted, or its last post failed: the next send posts.
    Idle,
    /// Posted; the answer (or the failure) comes on the receiver.
    InFlight(oneshot::Receiver<Result<Vec<u8>, HttpError>>),
    /// The answer was taken.
    Done,
}

/// One request in flight.
#[derive(Debug)]
pub struct Transaction {
    client: Arc<HttpClient>,
    body: Bytes,
    state: State,
}

impl Transaction {
    /// Posts the request unless it is in flight (a re-send of the join flow is a no-op then).
    pub fn send(&mut self) -> Result<(), HttpError> {
        if !matches!(self.state, State::Idle) {
            return Ok(());
        }
        let (tx, rx) = oneshot::channel();
        let client = Arc::clone(&self.client);
        let body = self.body.clone();
        tokio::spawn(async move {
            let _ = tx.send(client.post(body).await);
        });
        self.state = State::InFlight(rx);
        Ok(())
    }

    /// Nothing fails at send time: every failure arrives as the answer.
    pub fn is_permanent(_: &HttpError) -> bool {
        false
    }

    /// Waits for the answer until `deadline`; `None` on timeout or failure (the next send
    /// posts again after a failure).
    pub async fn answer_until(&mut self, deadline: tokio::time::Instant) -> Option<Vec<u8>> {
        let State::InFlight(rx) = &mut self.state else {
            tokio::time::sleep_until(deadline).await;
            return None;
        };
        match tokio::time::timeout_at(deadline, rx).await {
            Err(_) => None,
            Ok(Ok(Ok(body))) => {
                self.state = State::Done;
                Some(body)
            }
            Ok(Ok(Err(e))) => {
                tracing::warn!(error = %e, uri = %self.client.uri, "JoinReq over HTTPS failed");
                self.state = State::Idle;
                tokio::time::sleep_until(deadline).await;
                None
            }
            Ok(Err(_)) => {
                self.state = State::Idle;
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(url: &str) -> JoinServerRoute {
        JoinServerRoute {
            url: url.into(),
            ..JoinServerRoute::default()
        }
    }

    #[test]
    fn the_authorization_comes_inline_or_from_a_file_never_both_never_shown() {
        let mut r = route("http://127.0.0.1:8080/");
        r.authorization = "Bearer jsbi_inline-secret".into();
        let c = HttpClient::new(&r).unwrap();
        let a = c.authorization.as_ref().unwrap();
        assert_eq!(a.to_str().unwrap(), "Bearer jsbi_inline-secret");
        assert!(a.is_sensitive());
        assert!(!format!("{r:?}").contains("inline-secret"));
        assert!(format!("{r:?}").contains("<redacted>"));
        r.authorization_file = "/nonexistent/token".into();
        let e = HttpClient::new(&r).unwrap_err().to_string();
        assert!(e.contains("not both"), "{e}");
        assert!(!e.contains("inline-secret"));
        r.authorization_file.clear();
        r.authorization = "Bearer bad\nvalue".into();
        assert!(HttpClient::new(&r).is_err());
    }

    #[test]
    fn urls_are_checked_before_anything_is_sent() {
        let err = |url: &str| HttpClient::new(&route(url)).unwrap_err().to_string();
        assert!(err("http://192.0.2.1:8080/").contains("loopback"));
        assert!(err("https://js.example.net/").contains("ca_file"));
        assert!(err("ftp://127.0.0.1/").contains("https://"));
        assert!(err("not a url").contains("url"));
        let mut r = route("https://js.example.net/");
        r.ca_file = "/nonexistent/ca.pem".into();
        assert!(HttpClient::new(&r).is_err());
        // Plain HTTP to a loopback address is allowed (tests, a local TLS-terminating proxy).
        for ok in [
            "http://127.0.0.1:8080/",
            "http://localhost/",
            "http://[::1]:80/",
        ] {
            let c = HttpClient::new(&route(ok)).unwrap();
            assert!(!format!("{c:?}").contains("Authorization"));
        }
    }

    /// A refused connection is a failure the next send posts again after; a late answer is
    /// none until the deadline.
    #[tokio::test(flavor = "current_thread")]
    async fn a_failed_post_is_retried_by_the_next_send() {
        // A port nobody listens on: bind, note, close.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let c = Arc::new(HttpClient::new(&route(&format!("http://127.0.0.1:{port}/"))).unwrap());
        let mut t = c.begin(b"{}".to_vec());
        t.send().unwrap();
        assert!(matches!(t.state, State::InFlight(_)));
        t.send().unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        assert_eq!(t.answer_until(deadline).await, None);
        assert!(matches!(t.state, State::Idle), "{:?}", t.state);
        t.send().unwrap();
        assert!(matches!(t.state, State::InFlight(_)));
    }
}
