//! The installer web app (`installer/`, issue 17), served at `/install/` by the API listener.
//!
//! Its built files (`installer/dist/`, committed, so `cargo build` needs no npm; CI rebuilds them
//! and checks they match) are compiled into the binary. The build gives them fixed names (no
//! content hashes; `installer/vite.config.ts`), so this table names each one: five files do not
//! call for an embedding crate. Answers carry an ETag (so a phone fetches the 1 MB decoder once)
//! and headers that confine the page to its own origin.

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;
use sha2::{Digest, Sha256};
use std::sync::Arc;

/// One embedded file: its path under `/install/`, its media type, its bytes.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const INDEX: &str = "index.html";

/// An [`Asset`] of `installer/dist/`, by its path there.
macro_rules! asset {
    ($path:literal, $content_type:literal) => {
        Asset {
            path: $path,
            content_type: $content_type,
            body: include_bytes!(concat!("../../installer/dist/", $path)),
        }
    };
}

const ASSETS: &[Asset] = &[
    asset!("index.html", "text/html; charset=utf-8"),
    asset!("assets/app.js", "text/javascript; charset=utf-8"),
    asset!("assets/index.css", "text/css; charset=utf-8"),
    asset!("assets/zxing_reader.wasm", "application/wasm"),
];

/// The page may load only its own files, talk only to its own origin, and use the camera; the
/// decoder's WebAssembly needs `wasm-unsafe-eval` (not `unsafe-eval`).
const CSP: &str = "default-src 'none'; script-src 'self' 'wasm-unsafe-eval'; style-src 'self'; \
     img-src 'self' blob: data:; media-src 'self' blob: mediastream:; connect-src 'self'; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// An asset with its ETag (a SHA-256 prefix of its bytes, computed once at start-up).
struct Served {
    asset: &'static Asset,
    etag: HeaderValue,
}

/// The embedded files, ready to serve.
#[derive(Clone)]
struct Files(Arc<Vec<Served>>);

impl Files {
    fn new() -> Self {
        let served = ASSETS
            .iter()
            .map(|asset| {
                let digest = Sha256::digest(asset.body);
                let etag = format!("\"{}\"", hex::encode(&digest[..12]));
                Served {
                    asset,
                    etag: HeaderValue::from_str(&etag).unwrap_or(HeaderValue::from_static("\"\"")),
                }
            })
            .collect();
        Self(Arc::new(served))
    }

    fn get(&self, path: &str) -> Option<&Served> {
        self.0.iter().find(|s| s.asset.path == path)
    }
}

fn answer(files: &Files, path: &str, headers: &HeaderMap) -> Response {
    let Some(s) = files.get(path) else {
        return (StatusCode::NOT_FOUND, "no such file").into_response();
    };
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .is_some_and(|v| v.as_bytes() == s.etag.as_bytes());
    let mut resp = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        s.asset.body.into_response()
    };
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(s.asset.content_type),
    );
    h.insert(header::ETAG, s.etag.clone());
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        "permissions-policy",
        HeaderValue::from_static("camera=(self), microphone=(), geolocation=()"),
    );
    resp
}

async fn index(State(files): State<Files>, headers: HeaderMap) -> Response {
    answer(&files, INDEX, &headers)
}

async fn file(
    State(files): State<Files>,
    Path(path): Path<String>,
    headers: HeaderMap,
) -> Response {
    answer(&files, &path, &headers)
}

/// The routes of the installer app: `/install` (redirected to `/install/`), `/install/` and
/// its files. Public, like any login page: the app asks for an API key and sends it only to
/// the API.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route(
            "/install",
            get(|| async { Redirect::permanent("/install/") }),
        )
        .route("/install/", get(index))
        .route("/install/{*path}", get(file))
        .with_state(Files::new())
}
