//! `POST /api/v1/qr/parse`: checks a scanned text by exactly the rules of `qr parse` (the `qr`
//! crate's parser, run here) and answers the same JSON as `qr parse --json`, so that the
//! installer web app says what the command line says. Any role may ask; nothing is stored.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;

use super::{bad, body_json, json, run, ApiResult, AppState};

/// The largest request body: a TR005 code is a few hundred characters at most.
pub(super) const MAX_BODY: usize = 4096;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ParseBody {
    text: String,
}

pub(super) async fn parse(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    // Authenticated first, like every request but the OpenAPI document.
    run(&st, &headers, |_, _| Ok(())).await?;
    let body = body.map_err(|_| bad(format!("the body is larger than {MAX_BODY} bytes")))?;
    let b: ParseBody = body_json(&body)?;
    Ok(json(StatusCode::OK, &qr::report::check_json(&b.text)))
}
