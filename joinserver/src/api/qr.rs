//! `POST /api/v1/qr/parse`: checks a scanned text by exactly the rules of `qr parse` (the `qr`
//! crate's parser, run here) and answers the same JSON as `qr parse --json`, so that the
//! installer web app says what the command line says. Any role may ask; nothing is stored.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::Extension;
use axum::http::StatusCode;
use serde::Deserialize;

use super::{bad, body_json, json, ApiResult};
use crate::onboarding::db::Actor;

/// The largest request body: a TR005 code is a few hundred characters at most.
pub(super) const MAX_BODY: usize = 4096;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ParseBody {
    text: String,
}

/// Any authenticated actor may ask: the route sits behind the API's `authenticate` layer, which
/// checks the key before the body is read and hands the actor in.
pub(super) async fn parse(
    Extension(_actor): Extension<Actor>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let body = body.map_err(|_| bad(format!("the body is larger than {MAX_BODY} bytes")))?;
    let b: ParseBody = body_json(&body)?;
    Ok(json(StatusCode::OK, &qr::report::check_json(&b.text)))
}
