//! The operator HTTP endpoint: `GET /metrics` (Prometheus text), `GET /health` (JSON, 200 while
//! serving, 503 while shutting down) and `GET /gateways` (per-gateway state and statistics,
//! JSON). HTTP/1.1 only, served by hyper on the control runtime through
//! [`crate::ops::listen`] (TLS, timeouts, a connection limit).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use tokio::sync::watch;

use crate::ops::listen::HttpListener;
use crate::state::State;

/// Serves the endpoint on `listener` until `shutdown` turns true.
pub async fn serve(listener: HttpListener, state: Arc<State>, shutdown: watch::Receiver<bool>) {
    let svc = service_fn(move |req| {
        let state = Arc::clone(&state);
        async move { Ok::<_, Infallible>(respond(&state, &req)) }
    });
    listener.serve(svc, shutdown).await;
}

fn respond(state: &State, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    }
    match req.uri().path() {
        "/metrics" => {
            state.refresh_gauges(Instant::now());
            let mut r = text(StatusCode::OK, state.metrics.render());
            r.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
        "/health" => {
            let healthy = !state.is_shutting_down();
            let body = serde_json::json!({
                "status": if healthy { "ok" } else { "shutting_down" },
                "sessions": state.sessions.len(),
                "gateways": state.gateways.len(),
            });
            let code = if healthy {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            json(code, &body)
        }
        "/gateways" => json(StatusCode::OK, &gateways(state, Instant::now())),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// Each gateway's registry entry, with its downlink airtime (`airtime`: scheduled downlinks,
/// airtime used, budget left per duty-cycle sub-band, deferred and dropped) once the scheduler
/// has booked on it.
fn gateways(state: &State, now: Instant) -> serde_json::Value {
    let mut airtime: std::collections::HashMap<_, _> =
        state.scheduler.snapshot(now).into_iter().collect();
    let list = state.gateways.snapshot(now).into_iter().map(|g| {
        let mut v = serde_json::to_value(&g).unwrap_or_default();
        if let (Some(a), Some(o)) = (airtime.remove(&g.gateway_eui), v.as_object_mut()) {
            o.insert(
                "airtime".into(),
                serde_json::to_value(a).unwrap_or_default(),
            );
        }
        v
    });
    serde_json::Value::Array(list.collect())
}

fn text(code: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = code;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn json<T: serde::Serialize + ?Sized>(code: StatusCode, v: &T) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec(v).unwrap_or_default();
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = code;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}
