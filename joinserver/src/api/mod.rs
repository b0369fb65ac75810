//! The HTTP management API (JSON, versioned under `/api/v1`), on its own listen address.
//!
//! Every request but `GET /api/v1/openapi.json` carries an API key (`Authorization: Bearer KEY`
//! or `X-API-Key: KEY`). Roles: `manufacturer` provisions devices and never sees owners; `owner`
//! is a tenant that sees and acts on its own devices only; `admin` sees everything. Every request
//! is authorised per device: a device the key may not see answers 404.
//!
//! The document describing it is [`OPENAPI_JSON`] (`docs/openapi.json`, served as is). The
//! handlers are thin: they authenticate, parse, and run one [`Onboarding`] operation on the
//! blocking pool.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Extension, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::Router;
use http_body_util::BodyExt as _;
use httpsec::serve::{self, Limits, Transport};
use hyper::body::Incoming;
use protocol::ids::{DevEui, NetId};
use serde::{Deserialize, Serialize};

use crate::config::{HttpLimits, ImportLimits};
use crate::manifest::Format;
use crate::onboarding::db::{Actor, AuditFilter, Role};
use crate::onboarding::import::{ManifestSource, SourceError};
use crate::onboarding::service::{OnbError, Onboarding};

mod qr;

/// The OpenAPI 3.0 document of this API: `docs/openapi.json`, compiled in.
pub const OPENAPI_JSON: &str = include_str!("../../../docs/openapi.json");

/// What a refused import is told to wait before trying again.
const IMPORT_RETRY_AFTER: Duration = Duration::from_secs(5);

struct ApiError(OnbError);

impl From<OnbError> for ApiError {
    fn from(e: OnbError) -> Self {
        Self(e)
    }
}

fn bad(m: impl Into<String>) -> ApiError {
    ApiError(OnbError::BadRequest(m.into()))
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let e = self.0;
        let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if status.is_server_error() {
            tracing::error!(error = %e, "api request failed");
        }
        let message = if status.is_server_error() {
            "internal error".to_owned()
        } else {
            e.to_string()
        };
        let mut body = serde_json::json!({ "error": e.kind(), "message": message });
        if let OnbError::Manifest(rows, _) = &e {
            body["rows"] = rows
                .iter()
                .take(1000)
                .map(|r| serde_json::json!({"line": r.line, "column": r.column, "message": r.message}))
                .collect();
        }
        let mut resp = (status, axum::Json(body)).into_response();
        match &e {
            OnbError::RateLimited(d)
            | OnbError::AuthRateLimited(d)
            | OnbError::Busy { retry_after: d, .. } => {
                if let Ok(v) = HeaderValue::from_str(&d.as_secs().max(1).to_string()) {
                    resp.headers_mut().insert(header::RETRY_AFTER, v);
                }
            }
            OnbError::Unauthorized => {
                resp.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        resp
    }
}

type ApiResult = Result<Response, ApiError>;

#[derive(Clone)]
struct AppState {
    svc: Arc<Onboarding>,
    /// The largest manifest accepted (the import reads its body itself).
    max_body: usize,
    /// One permit per import allowed to run at once.
    imports: Arc<tokio::sync::Semaphore>,
    /// Imports allowed at once.
    max_imports: usize,
    /// How long an upload may send nothing.
    import_idle: Duration,
}

fn api_key(headers: &HeaderMap) -> Option<String> {
    if let Some(v) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let v = v.trim();
        if v.len() > 7 && v[..7].eq_ignore_ascii_case("bearer ") {
            return Some(v[7..].trim().to_owned());
        }
    }
    headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_owned())
}

/// Runs `f` as the authenticated `actor` on the blocking pool (the store is synchronous).
async fn run<T, F>(st: &AppState, actor: Actor, f: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce(&Onboarding, &Actor) -> Result<T, OnbError> + Send + 'static,
{
    let svc = st.svc.clone();
    tokio::task::spawn_blocking(move || f(&svc, &actor))
        .await
        .map_err(|_| internal("worker panicked"))?
        .map_err(ApiError)
}

/// A 500 whose cause is logged, never shown.
fn internal(what: &str) -> ApiError {
    ApiError(OnbError::Store(crate::store::StoreError::Corrupt {
        dev_eui: DevEui::new(0),
        what: what.to_owned(),
    }))
}

/// The source address of a request, set for each connection by the accept loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer(pub SocketAddr);

/// A body whose declared length (Content-Length) is over `max` is refused 413 before any of it
/// is read; one without a declared length is cut at `max` by the body limit.
async fn declared_length_limit(max: usize, req: axum::extract::Request, next: Next) -> Response {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(n) if n > max as u64 => {
            if n <= DRAIN_MAX {
                // A modest excess is read and discarded (never kept) so that the client, still
                // sending, gets the 413 instead of a connection reset.
                let mut body = req.into_body();
                let drain = async { while let Some(Ok(_)) = body.frame().await {} };
                let _ = tokio::time::timeout(DRAIN_TIMEOUT, drain).await;
            }
            bad_size(max).into_response()
        }
        _ => next.run(req).await,
    }
}

/// Bodies declared up to this long are drained before their 413; longer ones are not read.
const DRAIN_MAX: u64 = 1 << 20;
/// How long draining a refused body may take.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// A 413 for a body over `max` bytes.
fn bad_size(max: usize) -> ApiError {
    ApiError(OnbError::PayloadTooLarge(max))
}

/// The route layer of every authenticated route: the API key is checked, and failures counted
/// and audited per source address ([`Onboarding::authenticate_from`]), before the handler runs,
/// so no body of an unauthenticated request is read. The actor goes to the handler as an
/// extension.
async fn authenticate(
    State(st): State<AppState>,
    mut req: axum::extract::Request,
    next: Next,
) -> Response {
    let peer = req.extensions().get::<Peer>().map(|p| p.0.ip());
    let key = api_key(req.headers());
    let svc = st.svc.clone();
    let actor =
        tokio::task::spawn_blocking(move || svc.authenticate_from(key.as_deref(), peer)).await;
    match actor {
        Ok(Ok(actor)) => {
            req.extensions_mut().insert(actor);
            next.run(req).await
        }
        Ok(Err(e)) => ApiError(e).into_response(),
        Err(_) => internal("authentication worker panicked").into_response(),
    }
}

fn json<T: Serialize>(status: StatusCode, v: &T) -> Response {
    (status, axum::Json(v)).into_response()
}

fn dev_eui(s: &str) -> Result<DevEui, ApiError> {
    s.parse().map_err(|e| bad(format!("dev_eui: {e}")))
}

fn net_id(s: &str) -> Result<NetId, ApiError> {
    s.parse().map_err(|e| bad(format!("home_net_id: {e}")))
}

fn body_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        let m = e.to_string();
        // serde_json may quote a value; keep only the structural part of the message.
        let m = m.split(" at line ").next().unwrap_or(&m);
        let m = if m.starts_with("unknown field") || m.starts_with("missing field") {
            m.to_owned()
        } else {
            "malformed JSON body".to_owned()
        };
        bad(m)
    })
}

fn query<T: Default>(
    q: Result<Query<T>, axum::extract::rejection::QueryRejection>,
) -> Result<T, ApiError> {
    q.map(|Query(v)| v)
        .map_err(|_| bad("invalid query parameters"))
}

async fn openapi() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        OPENAPI_JSON,
    )
        .into_response()
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ImportQuery {
    format: Option<String>,
}

/// The body's chunks as the import thread sees them: data, then `End`. A channel closed without
/// `End` (the request was dropped) aborts the import.
enum Chunk {
    Data(Bytes),
    End,
    Failed(SourceError),
}

/// The import thread's side of the body channel.
struct ChannelSource {
    rx: tokio::sync::mpsc::Receiver<Chunk>,
    current: Bytes,
}

impl ManifestSource for ChannelSource {
    fn next_chunk(&mut self) -> Result<Option<&[u8]>, SourceError> {
        match self.rx.blocking_recv() {
            Some(Chunk::Data(b)) => {
                self.current = b;
                Ok(Some(&self.current))
            }
            Some(Chunk::End) => Ok(None),
            Some(Chunk::Failed(e)) => Err(e),
            None => Err(SourceError::Incomplete("the request was abandoned".into())),
        }
    }
}

/// How many body chunks may wait for the import thread (hyper's chunks are at most a few tens
/// of KiB), which bounds the memory an import holds.
const IMPORT_QUEUE: usize = 16;

/// `POST /devices/import`: the body is streamed, chunk by chunk, through a bounded channel to a
/// thread of its own that verifies, parses and stages it ([`Onboarding::import_stream`]); the
/// body is never held whole.
async fn import(
    State(st): State<AppState>,
    Extension(actor): Extension<Actor>,
    headers: HeaderMap,
    q: Result<Query<ImportQuery>, axum::extract::rejection::QueryRejection>,
    body: Body,
) -> ApiResult {
    let q = query(q)?;
    let format = match q.format.as_deref() {
        None => None,
        Some("csv") => Some(Format::Csv),
        Some("jsonl") => Some(Format::Jsonl),
        Some(_) => return Err(bad("format must be csv or jsonl")),
    };
    let sig = headers
        .get("x-manifest-signature")
        .map(|v| v.as_bytes().to_vec());
    let max = st.max_body;
    // Authenticated (by the route layer) before anything was read.
    // Held until the import ends (or the client goes away and the handler is dropped).
    let Ok(_permit) = Arc::clone(&st.imports).try_acquire_owned() else {
        let busy = OnbError::Busy {
            running: st.max_imports,
            retry_after: IMPORT_RETRY_AFTER,
        };
        let svc = st.svc.clone();
        let refused = tokio::task::spawn_blocking(move || svc.refuse_import(&actor, busy)).await;
        return Err(ApiError(refused.unwrap_or(OnbError::Busy {
            running: st.max_imports,
            retry_after: IMPORT_RETRY_AFTER,
        })));
    };
    let (tx, rx) = tokio::sync::mpsc::channel(IMPORT_QUEUE);
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let svc = st.svc.clone();
    // Its own thread, not the blocking pool: an upload paced by the client must not take one
    // of the few threads every other request needs.
    std::thread::Builder::new()
        .name("js-api-import".into())
        .spawn(move || {
            let mut source = ChannelSource {
                rx,
                current: Bytes::new(),
            };
            let r = svc.import_stream(&actor, &mut source, format, sig.as_deref(), true);
            let _ = done_tx.send(r);
        })
        .map_err(|e| internal(&format!("spawning the import thread: {e}")))?;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let last = if declared.is_some_and(|n| n > max as u64) {
        Chunk::Failed(SourceError::TooLarge(max))
    } else {
        forward_body(body, max, st.import_idle, &tx).await
    };
    let _ = tx.send(last).await;
    drop(tx);
    let r = done_rx
        .await
        .map_err(|_| internal("import thread panicked"))??;
    Ok(json(StatusCode::CREATED, &r))
}

/// Forwards an import's body, frame by frame, to the import thread until it ends, exceeds `max`
/// bytes, or sends nothing for `idle`; returns the chunk that ends the manifest.
async fn forward_body(
    mut body: Body,
    max: usize,
    idle: Duration,
    tx: &tokio::sync::mpsc::Sender<Chunk>,
) -> Chunk {
    let mut received = 0usize;
    loop {
        let Ok(frame) = tokio::time::timeout(idle, body.frame()).await else {
            return Chunk::Failed(SourceError::Incomplete(format!(
                "nothing received for {} s",
                idle.as_secs()
            )));
        };
        match frame {
            None => return Chunk::End,
            Some(Err(e)) => return Chunk::Failed(SourceError::Incomplete(e.to_string())),
            Some(Ok(frame)) => {
                let Ok(data) = frame.into_data() else {
                    continue; // trailers
                };
                received += data.len();
                if received > max {
                    return Chunk::Failed(SourceError::TooLarge(max));
                }
                if tx.send(Chunk::Data(data)).await.is_err() {
                    // The import stopped early (refused before reading, or failed).
                    return Chunk::End;
                }
            }
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    after: Option<String>,
    limit: Option<u32>,
}

async fn list(
    State(st): State<AppState>,
    Extension(actor): Extension<Actor>,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult {
    let q = query(q)?;
    let after = q
        .after
        .as_deref()
        .map(|a| a.parse::<DevEui>())
        .transpose()
        .map_err(|e| bad(format!("after: {e}")))?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(bad("limit must be 1 to 1000"));
    }
    let devices = run(&st, actor, move |svc, actor| svc.list(actor, after, limit)).await?;
    let next_after = (devices.len() == limit as usize)
        .then(|| devices.last().map(|d| d.dev_eui.clone()))
        .flatten();
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "devices": devices, "next_after": next_after }),
    ))
}

/// Runs `f` for the device the path names (its DevEUI parsed first), as the authenticated
/// actor, and answers 200 with the result.
async fn on_device<T, F>(st: &AppState, actor: Actor, d: &str, f: F) -> ApiResult
where
    T: Serialize + Send + 'static,
    F: FnOnce(&Onboarding, &Actor, DevEui) -> Result<T, OnbError> + Send + 'static,
{
    let d = dev_eui(d)?;
    let v = run(st, actor, move |svc, actor| f(svc, actor, d)).await?;
    Ok(json(StatusCode::OK, &v))
}

async fn get_device(
    State(st): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(d): Path<String>,
) -> ApiResult {
    on_device(&st, actor, &d, |svc, actor, d| svc.get(actor, d)).await
}

async fn delete_device(
    State(st): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(d): Path<String>,
) -> ApiResult {
    let d = dev_eui(&d)?;
    run(&st, actor, move |svc, actor| svc.deprovision(actor, d)).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClaimBody {
    owner_token: String,
    home_net_id: String,
}

async fn claim(
    State(st): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(d): Path<String>,
    body: Bytes,
) -> ApiResult {
    let b: ClaimBody = body_json(&body)?;
    let home = net_id(&b.home_net_id)?;
    on_device(&st, actor, &d, move |svc, actor, d| {
        svc.claim(actor, d, &b.owner_token, home, "api")
    })
    .await
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ReleaseQuery {
    rotate_token: Option<bool>,
}

async fn release(
    State(st): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(d): Path<String>,
    q: Result<Query<ReleaseQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult {
    let d = dev_eui(&d)?;
    let rotate = query(q)?.rotate_token.unwrap_or(true);
    let token = run(&st, actor, move |svc, actor| svc.release(actor, d, rotate)).await?;
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "dev_eui": d.to_string(), "owner_token": token }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QrClaimBody {
    qr_code: String,
    home_net_id: String,
}

async fn claim_qr(
    State(st): State<AppState>,
    Extension(actor): Extension<Actor>,
    body: Bytes,
) -> ApiResult {
    let b: QrClaimBody = body_json(&body)?;
    let home = net_id(&b.home_net_id)?;
    let v = run(&st, actor, move |svc, actor| {
        svc.claim_qr(actor, &b.qr_code, home)
    })
    .await?;
    Ok(json(StatusCode::OK, &v))
}

async fn dev_nonce_reset(
    State(st): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(d): Path<String>,
) -> ApiResult {
    on_device(&st, actor, &d, |svc, actor, d| {
        svc.reset_dev_nonce(actor, d)
    })
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RootKeysBody {
    app_key: String,
    nwk_key: Option<String>,
}

impl std::fmt::Debug for RootKeysBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RootKeysBody(<redacted>)")
    }
}

async fn root_keys(
    State(st): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(d): Path<String>,
    body: Bytes,
) -> ApiResult {
    let b: RootKeysBody = body_json(&body)?;
    on_device(&st, actor, &d, move |svc, actor, d| {
        svc.rotate_root_keys(actor, d, &b.app_key, b.nwk_key.as_deref())
    })
    .await
}

async fn lock(
    State(st): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(d): Path<String>,
) -> ApiResult {
    on_device(&st, actor, &d, |svc, actor, d| {
        svc.set_locked(actor, d, true)
    })
    .await
}

async fn unlock(
    State(st): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(d): Path<String>,
) -> ApiResult {
    on_device(&st, actor, &d, |svc, actor, d| {
        svc.set_locked(actor, d, false)
    })
    .await
}

async fn audit(
    State(st): State<AppState>,
    Extension(actor): Extension<Actor>,
    q: Result<Query<AuditFilter>, axum::extract::rejection::QueryRejection>,
) -> ApiResult {
    let f = query(q)?;
    if let Some(d) = &f.dev_eui {
        dev_eui(d)?;
    }
    if f.limit.is_some_and(|l| !(1..=10_000).contains(&l)) {
        return Err(bad("limit must be 1 to 10000"));
    }
    let records = run(&st, actor, move |svc, actor| svc.audit(actor, &f)).await?;
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "records": records }),
    ))
}

async fn list_api_keys(
    State(st): State<AppState>,
    Extension(actor): Extension<Actor>,
) -> ApiResult {
    let keys = run(&st, actor, |svc, actor| svc.list_api_keys(actor)).await?;
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "api_keys": keys }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewApiKey {
    role: Role,
    name: String,
    expires_ms: Option<i64>,
}

async fn create_api_key(
    State(st): State<AppState>,
    Extension(actor): Extension<Actor>,
    body: Bytes,
) -> ApiResult {
    let b: NewApiKey = body_json(&body)?;
    let (key, id) = run(&st, actor, move |svc, actor| {
        svc.create_api_key_until(actor, b.role, &b.name, b.expires_ms)
    })
    .await?;
    Ok(json(
        StatusCode::CREATED,
        &serde_json::json!({ "id": id, "api_key": key.expose() }),
    ))
}

async fn me(State(st): State<AppState>, Extension(actor): Extension<Actor>) -> ApiResult {
    let me = run(&st, actor, |svc, actor| svc.me(actor)).await?;
    Ok(json(StatusCode::OK, &me))
}

async fn revoke_api_key(
    State(st): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
) -> ApiResult {
    run(&st, actor, move |svc, actor| svc.revoke_api_key(actor, &id)).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn not_found() -> ApiResult {
    Err(ApiError(OnbError::NotFound))
}

/// The API's routes. Every route but the OpenAPI document is authenticated before its body is
/// read; bodies are limited to `http.max_request_bytes`, except the import's (which streams its
/// body under `limits.max_bytes`).
pub fn router(svc: Arc<Onboarding>, limits: ImportLimits, http: HttpLimits) -> Router {
    let state = AppState {
        svc,
        max_body: limits.max_bytes,
        imports: Arc::new(tokio::sync::Semaphore::new(limits.max_concurrent)),
        max_imports: limits.max_concurrent,
        import_idle: limits.idle_timeout,
    };
    let max_body = http.max_request_bytes;
    Router::new()
        .route("/api/v1/devices", get(list))
        .route(
            "/api/v1/devices/{dev_eui}",
            get(get_device).delete(delete_device),
        )
        .route(
            "/api/v1/devices/{dev_eui}/claim",
            put(claim).delete(release),
        )
        .route(
            "/api/v1/devices/{dev_eui}/dev-nonce-reset",
            post(dev_nonce_reset),
        )
        .route("/api/v1/devices/{dev_eui}/root-keys", put(root_keys))
        .route("/api/v1/devices/{dev_eui}/lock", put(lock).delete(unlock))
        .route("/api/v1/claims", post(claim_qr))
        .route("/api/v1/audit", get(audit))
        .route("/api/v1/api-keys", get(list_api_keys).post(create_api_key))
        .route("/api/v1/api-keys/{id}", delete(revoke_api_key))
        .route("/api/v1/me", get(me))
        .route(
            "/api/v1/qr/parse",
            post(qr::parse).layer(DefaultBodyLimit::max(qr::MAX_BODY)),
        )
        .route_layer(middleware::from_fn(move |req, next| {
            declared_length_limit(max_body, req, next)
        }))
        // The import streams its body under its own limit.
        .route("/api/v1/devices/import", post(import))
        .route_layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .route("/api/v1/openapi.json", get(openapi))
        // The installer app's files: public, like the OpenAPI document (the key is typed in
        // the page and sent with each API request).
        .merge(crate::installer::router())
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(http.max_request_bytes))
        .with_state(state)
}

/// A running API listener.
pub type ApiHandle = serve::Handle;

/// Binds `addr` and serves the API on its own thread (a current-thread runtime; store work runs
/// on the blocking pool) through the hardened accept loop of [`httpsec::serve`]: `transport`
/// (TLS, plain HTTP on loopback), its timeouts and connection limit.
pub fn start(
    addr: SocketAddr,
    svc: Arc<Onboarding>,
    limits: ImportLimits,
    http: HttpLimits,
    transport: Transport,
) -> std::io::Result<ApiHandle> {
    let std_listener = std::net::TcpListener::bind(addr)?;
    std_listener.set_nonblocking(true)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(4)
        .build()?;
    let app = router(svc, limits, http);
    let serve_limits = Limits {
        header_read_timeout: http.header_read_timeout,
        idle_timeout: http.idle_timeout,
        max_connections: http.max_connections,
    };
    let make = move |peer: SocketAddr| {
        let app = app.clone();
        hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(Peer(peer));
            let mut app = app.clone();
            async move { tower_service::Service::call(&mut app, req).await }
        })
    };
    serve::spawn("js-api", std_listener, rt, (transport, serve_limits), make)
}
