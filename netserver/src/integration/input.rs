//! The downlink input: JSON requests on UDP (one answer datagram each) or `POST /downlink` on
//! HTTP, authenticated ([`crate::integration::auth`]), validated and queued for the device's
//! next uplink. The HTTP input also takes the operator's `POST /rejoin`
//! ([`crate::integration::rejoin`]) under the same token.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use httpsec::ratelimit::FailureLimiter;
use protocol::ids::DevEui;
use serde::{Deserialize, Serialize};

use crate::integration::auth::{self, DownlinkToken};
use crate::integration::events::B64;
use crate::ops::listen::{recv_or_shutdown, HttpListener};
use crate::state::State;
use crate::store::queue::QueuedDownlink;

/// Failed authentications one source address may make at the HTTP downlink input per
/// [`AUTH_FAILURE_WINDOW`] before it is refused without a check (the join server's API default).
pub const AUTH_FAILURES_PER_ADDR: u32 = 10;
/// The window of [`AUTH_FAILURES_PER_ADDR`].
pub const AUTH_FAILURE_WINDOW: Duration = Duration::from_secs(300);

/// A downlink request, as received.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DownlinkRequest {
    /// The device.
    pub dev_eui: DevEui,
    /// FPort 1..=223.
    pub f_port: u8,
    /// Payload, base64.
    pub data: String,
    /// Confirmed data down.
    #[serde(default)]
    pub confirmed: bool,
    /// The UDP input's token, checked before parsing ([`auth::udp_request_authenticated`]);
    /// never kept.
    #[serde(default, rename = "token")]
    _token: serde::de::IgnoredAny,
}

/// The answer to a downlink request.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DownlinkAnswer {
    /// Queued.
    pub ok: bool,
    /// The id given to the downlink (echoed in its ACK event).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub id: Option<u64>,
    /// Items now waiting for the device.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub queued: Option<usize>,
    /// Why the request was refused.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<String>,
}

impl DownlinkAnswer {
    /// A refusal.
    pub fn err(e: impl Into<String>) -> Self {
        Self {
            ok: false,
            id: None,
            queued: None,
            error: Some(e.into()),
        }
    }
}

/// The largest FRMPayload accepted (EU868 DR4–7 without repeater: 242 bytes, minus nothing:
/// FOpts answers are dropped before the payload is).
pub const MAX_DOWNLINK_PAYLOAD: usize = 242;

/// A downlink request that passed every check that needs no session: FPort in 1..=223, the
/// payload decoded and at most [`MAX_DOWNLINK_PAYLOAD`] bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidDownlinkRequest {
    /// The device.
    pub dev_eui: DevEui,
    /// FPort.
    pub f_port: u8,
    /// The payload (decoded).
    pub payload: Vec<u8>,
    /// Confirmed data down.
    pub confirmed: bool,
}

/// Parses and checks one request body (the JSON of the UDP and HTTP inputs); the error says
/// what is wrong, in words an integrator can act on.
pub fn parse_downlink_request(body: &[u8]) -> Result<ValidDownlinkRequest, String> {
    let req: DownlinkRequest = serde_json::from_slice(body).map_err(|e| {
        format!(
            "invalid request: {e}; expected {{\"dev_eui\":\"16 hex\",\"f_port\":1..223,\"data\":\"base64\",\"confirmed\":false}}"
        )
    })?;
    if !(1..=223).contains(&req.f_port) {
        return Err(format!("f_port {} is not 1..=223", req.f_port));
    }
    let payload = B64
        .decode(req.data.trim())
        .map_err(|e| format!("data is not base64: {e}"))?;
    if payload.len() > MAX_DOWNLINK_PAYLOAD {
        return Err(format!(
            "payload of {} bytes exceeds {MAX_DOWNLINK_PAYLOAD}",
            payload.len()
        ));
    }
    Ok(ValidDownlinkRequest {
        dev_eui: req.dev_eui,
        f_port: req.f_port,
        payload,
        confirmed: req.confirmed,
    })
}

/// Validates and queues one request; the answer says why it was refused.
pub fn handle_downlink_request(state: &State, body: &[u8]) -> DownlinkAnswer {
    match parse_downlink_request(body) {
        Ok(req) => queue_downlink(state, req),
        Err(e) => DownlinkAnswer::err(e),
    }
}

/// Queues a checked request for the device's next uplink (every downlink input's last step:
/// UDP, HTTP and MQTT commands); the answer says why it was refused.
pub fn queue_downlink(state: &State, req: ValidDownlinkRequest) -> DownlinkAnswer {
    let plane = &state.data;
    let mut session = state.sessions.get(req.dev_eui);
    if let (None, Some(pg)) = (&session, &plane.shared_queue) {
        // Made through another instance a moment ago, and not loaded here yet.
        if let Err(e) = crate::store::sync::load(state, pg, &[req.dev_eui]) {
            tracing::warn!(error = %e, dev_eui = %req.dev_eui, "session not loaded from the shared store");
        }
        session = state.sessions.get(req.dev_eui);
    }
    let Some(session) = session else {
        return DownlinkAnswer::err(format!("no session for device {}", req.dev_eui));
    };
    if session.opened_app_s_key.is_none() {
        return DownlinkAnswer::err(
            "this network server does not hold the device's AppSKey (no --as-kek), so it cannot encrypt the payload",
        );
    }
    let item = QueuedDownlink {
        id: 0,
        f_port: req.f_port,
        payload: req.payload,
        confirmed: req.confirmed,
    };
    let queued = match &plane.shared_queue {
        Some(pg) => queue_shared(pg, plane, req.dev_eui, item),
        None => {
            let id = plane.next_id.fetch_add(1, Ordering::Relaxed);
            plane
                .queue
                .push(req.dev_eui, QueuedDownlink { id, ..item })
                .map(|n| (id, n))
                .map_err(|e| e.to_string())
        }
    };
    match queued {
        Ok((id, n)) => DownlinkAnswer {
            ok: true,
            id: Some(id),
            queued: Some(n),
            error: None,
        },
        Err(e) => DownlinkAnswer::err(e),
    }
}

/// Queues `item` in the shared queue (the id comes from the table), then reloads the device's
/// items into this instance's copy: the id given and how many items wait.
fn queue_shared(
    pg: &crate::store::pg::PgStore,
    plane: &crate::uplink::plane::DataPlane,
    dev_eui: DevEui,
    item: QueuedDownlink,
) -> Result<(u64, usize), String> {
    let per_device = plane.config.queue_per_device;
    match pg.queue_push(dev_eui, &item, per_device) {
        Ok(Ok(queued)) => {
            if let Err(e) = pg.reload_queue(&plane.queue, Some(&[dev_eui])) {
                tracing::warn!(error = %e, %dev_eui, "downlink queue not reloaded");
            }
            Ok(queued)
        }
        Ok(Err(full)) => Err(full.to_string()),
        Err(e) => {
            tracing::error!(error = %e, "downlink not queued: the shared store failed");
            Err("the shared store is unavailable; try again".into())
        }
    }
}

/// [`handle_downlink_request`], on a blocking thread when it waits for a shared store (the
/// control runtime also runs the join server link).
async fn handle_off_runtime(state: &Arc<State>, body: Vec<u8>) -> DownlinkAnswer {
    if state.data.shared_queue.is_none() {
        return handle_downlink_request(state, &body);
    }
    let s = Arc::clone(state);
    tokio::task::spawn_blocking(move || handle_downlink_request(&s, &body))
        .await
        .unwrap_or_else(|_| DownlinkAnswer::err("internal error"))
}

fn count_request(state: &State, result: &str) {
    state
        .metrics
        .data
        .downlink_requests
        .with_label_values(&[result])
        .inc();
}

/// Serves the UDP downlink input: one JSON request per datagram, one JSON answer back. With a
/// token, a datagram without it gets no answer (counted as `unauthenticated`).
pub async fn downlink_input(
    state: Arc<State>,
    socket: tokio::net::UdpSocket,
    token: Option<Arc<DownlinkToken>>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 4096];
    loop {
        let Some((n, from)) = recv_or_shutdown(&socket, &mut buf, &mut shutdown).await else {
            return;
        };
        if let Some(t) = &token {
            if !auth::udp_request_authenticated(t, &buf[..n]) {
                count_request(&state, "unauthenticated");
                continue;
            }
        }
        let answer = handle_off_runtime(&state, buf[..n].to_vec()).await;
        count_request(&state, if answer.ok { "queued" } else { "refused" });
        if let Ok(bytes) = serde_json::to_vec(&answer) {
            let _ = socket.send_to(&bytes, from).await;
        }
    }
}

type HttpReply = hyper::Response<http_body_util::Full<hyper::body::Bytes>>;

fn http_reply(code: hyper::StatusCode, a: &impl Serialize) -> HttpReply {
    use hyper::header::{HeaderValue, CONTENT_TYPE};
    let mut r = hyper::Response::new(http_body_util::Full::new(hyper::body::Bytes::from(
        serde_json::to_vec(a).unwrap_or_default(),
    )));
    *r.status_mut() = code;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// Answers one HTTP downlink request: the token first (before the body is read), then the
/// route, then the body.
async fn answer_http(
    state: &Arc<State>,
    token: Option<&DownlinkToken>,
    (peer, failures): (IpAddr, &FailureLimiter<IpAddr>),
    req: hyper::Request<hyper::body::Incoming>,
) -> HttpReply {
    use http_body_util::{BodyExt, Limited};
    use hyper::header::{HeaderValue, AUTHORIZATION, RETRY_AFTER, WWW_AUTHENTICATE};
    use hyper::{Method, StatusCode};
    let now = std::time::Instant::now();
    if let Err(retry_after) = failures.check(&peer, now) {
        count_request(state, "rate_limited");
        let mut r = http_reply(
            StatusCode::TOO_MANY_REQUESTS,
            &DownlinkAnswer::err("too many failed authentications from this address"),
        );
        r.headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(retry_after.as_secs().max(1)));
        return r;
    }
    let authenticated = token.is_none_or(|t| {
        req.headers()
            .get(AUTHORIZATION)
            .and_then(|h| auth::bearer(h.as_bytes()))
            .is_some_and(|p| t.matches(p))
    });
    if !authenticated {
        failures.fail(&peer, now);
        // The audit trail of the network server is its log: who failed, never what they sent.
        tracing::warn!(source = %peer, "downlink input: failed authentication");
        count_request(state, "unauthenticated");
        let mut r = http_reply(
            StatusCode::UNAUTHORIZED,
            &DownlinkAnswer::err("unauthorized: Authorization: Bearer TOKEN"),
        );
        r.headers_mut()
            .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return r;
    }
    let rejoin = req.uri().path() == "/rejoin";
    if req.uri().path() != "/downlink" && !rejoin {
        return http_reply(
            StatusCode::NOT_FOUND,
            &DownlinkAnswer::err("not found: POST /downlink or POST /rejoin"),
        );
    }
    if req.method() != Method::POST {
        return http_reply(
            StatusCode::METHOD_NOT_ALLOWED,
            &DownlinkAnswer::err("method not allowed: POST /downlink"),
        );
    }
    let body = match Limited::new(req.into_body(), 4096).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return http_reply(
                StatusCode::BAD_REQUEST,
                &DownlinkAnswer::err("request body unreadable or over 4096 bytes"),
            )
        }
    };
    if rejoin {
        let now_ms = protocol::time::unix_ms(std::time::SystemTime::now());
        let answer = crate::integration::rejoin::handle_force_rejoin(state, &body, now_ms);
        let code = if answer.ok {
            StatusCode::ACCEPTED
        } else {
            StatusCode::BAD_REQUEST
        };
        return http_reply(code, &answer);
    }
    let answer = handle_off_runtime(state, body.to_vec()).await;
    count_request(state, if answer.ok { "queued" } else { "refused" });
    let code = if answer.ok {
        StatusCode::ACCEPTED
    } else {
        StatusCode::BAD_REQUEST
    };
    http_reply(code, &answer)
}

/// Serves the HTTP downlink input: `POST /downlink` with the same JSON as the UDP input;
/// `202 Accepted` with the answer when queued, `400 Bad Request` with the answer's error
/// otherwise. Bodies are limited to 4 KiB. With a token, a request without
/// `Authorization: Bearer TOKEN` gets `401 Unauthorized` before its body is read (counted as
/// `unauthenticated`, logged with its source address); after [`AUTH_FAILURES_PER_ADDR`] such
/// failures from one address within [`AUTH_FAILURE_WINDOW`], that address gets
/// `429 Too Many Requests` with `Retry-After` without its token being checked (counted as
/// `rate_limited`) until the window ends.
pub async fn serve_http_downlinks(
    listener: HttpListener,
    state: Arc<State>,
    token: Option<Arc<DownlinkToken>>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let failures = Arc::new(FailureLimiter::new(
        AUTH_FAILURES_PER_ADDR,
        AUTH_FAILURE_WINDOW,
    ));
    let make = move |peer: SocketAddr| {
        let (state, token, failures) = (Arc::clone(&state), token.clone(), Arc::clone(&failures));
        hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
            let (state, token, failures) =
                (Arc::clone(&state), token.clone(), Arc::clone(&failures));
            async move {
                let limiter = (peer.ip(), &*failures);
                Ok::<_, std::convert::Infallible>(
                    answer_http(&state, token.as_deref(), limiter, req).await,
                )
            }
        })
    };
    listener.serve_per_peer(make, shutdown).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::integration::events::b64;

    fn request_json(dev_eui: u64, f_port: u8, payload: &[u8], confirmed: bool) -> Vec<u8> {
        format!(
            "{{\"dev_eui\":\"{dev_eui:016X}\",\"f_port\":{f_port},\"data\":\"{}\",\"confirmed\":{confirmed}}}",
            b64(payload)
        )
        .into_bytes()
    }

    proptest::proptest! {
        #[test]
        fn any_body_is_answered_without_panic(body in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            if let Ok(r) = parse_downlink_request(&body) {
                proptest::prop_assert!((1..=223).contains(&r.f_port));
                proptest::prop_assert!(r.payload.len() <= MAX_DOWNLINK_PAYLOAD);
            }
        }

        #[test]
        fn valid_requests_parse_to_what_was_sent(
            dev_eui in proptest::num::u64::ANY,
            f_port in 1u8..=223,
            payload in proptest::collection::vec(proptest::num::u8::ANY, 0..=MAX_DOWNLINK_PAYLOAD),
            confirmed in proptest::bool::ANY,
        ) {
            let r = parse_downlink_request(&request_json(dev_eui, f_port, &payload, confirmed)).unwrap();
            proptest::prop_assert_eq!(r, ValidDownlinkRequest {
                dev_eui: DevEui::new(dev_eui),
                f_port,
                payload,
                confirmed,
            });
        }

        #[test]
        fn out_of_range_requests_say_what_is_wrong(
            f_port in proptest::prop_oneof![proptest::strategy::Just(0u8), 224u8..=255],
            long in (MAX_DOWNLINK_PAYLOAD + 1)..400,
        ) {
            let e = parse_downlink_request(&request_json(1, f_port, b"x", false)).unwrap_err();
            proptest::prop_assert_eq!(e, format!("f_port {f_port} is not 1..=223"));
            let e = parse_downlink_request(&request_json(1, 1, &vec![0; long], false)).unwrap_err();
            proptest::prop_assert_eq!(e, format!("payload of {long} bytes exceeds 242"));
        }
    }

    #[test]
    fn malformed_requests_are_refused_with_the_expected_shape() {
        let e =
            parse_downlink_request(b"{\"dev_eui\":\"01\",\"f_port\":1,\"data\":\"\"}").unwrap_err();
        assert!(e.starts_with("invalid request: "), "{e}");
        assert!(e.contains("expected {\"dev_eui\":\"16 hex\""), "{e}");
        let e = parse_downlink_request(
            b"{\"dev_eui\":\"0000000000000001\",\"f_port\":1,\"data\":\"not base64!\"}",
        )
        .unwrap_err();
        assert!(e.starts_with("data is not base64: "), "{e}");
        let e = parse_downlink_request(
            b"{\"dev_eui\":\"0000000000000001\",\"f_port\":1,\"data\":\"\",\"fport\":2}",
        )
        .unwrap_err();
        assert!(e.contains("unknown field `fport`"), "{e}");
    }
}
