//! Extractors that turn every malformed request into a problem document with the right 4xx —
//! never a 5xx, never a panic, and before anything is written.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use idledger_domain::ids::IdempotencyKey;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// A JSON body (`Content-Type: application/json`), with rejections as problem documents.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(Self(value)),
            Err(rejection) => Err(json_rejection(&rejection)),
        }
    }
}

fn json_rejection(rejection: &JsonRejection) -> ApiError {
    match rejection {
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "the body must be JSON, sent with Content-Type: application/json",
        ),
        JsonRejection::JsonSyntaxError(e) => ApiError::bad_request(
            "malformed_json",
            format!("the body is not valid JSON: {}", e.body_text()),
        ),
        JsonRejection::JsonDataError(e) => ApiError::unprocessable(
            "invalid_body",
            format!(
                "the body does not have the expected shape: {}",
                e.body_text()
            ),
        ),
        JsonRejection::BytesRejection(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "the body is larger than this server accepts",
            )
        }
        other => ApiError::bad_request("unreadable_body", other.body_text()),
    }
}

/// Query parameters, with rejections as problem documents.
#[derive(Debug)]
pub struct QueryParams<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for QueryParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Self(q.0))
            .map_err(|e: QueryRejection| ApiError::bad_request("invalid_query", e.body_text()))
    }
}

/// A log position or page cursor in a query (`after=`): 0 to 2^63 - 1, what the store can
/// hold and what the document's `int64` promises; anything larger is refused, not wrapped.
pub fn position<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    use serde::Deserialize as _;
    match Option::<u64>::deserialize(d)? {
        Some(n) if i64::try_from(n).is_err() => Err(serde::de::Error::custom(format!(
            "{n} is larger than the largest position, {}",
            i64::MAX
        ))),
        n => Ok(n),
    }
}

/// The `Idempotency-Key` header every command needs.
pub fn idempotency_key(parts: &axum::http::HeaderMap) -> Result<IdempotencyKey, ApiError> {
    let raw = parts
        .get("idempotency-key")
        .ok_or_else(|| {
            ApiError::bad_request(
                "missing_idempotency_key",
                "commands need an Idempotency-Key header; retry with the same key to get the first result",
            )
        })?
        .to_str()
        .map_err(|_| ApiError::bad_request("invalid_idempotency_key", "the Idempotency-Key is not visible ASCII"))?;
    IdempotencyKey::parse(raw)
        .map_err(|e| ApiError::bad_request("invalid_idempotency_key", e.to_string()))
}

/// `If-Match: "<stream version>"` (or `W/"…"`, or bare digits): the record version the
/// caller last saw. `*` means any.
pub fn if_match(headers: &axum::http::HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(value) = headers.get(axum::http::header::IF_MATCH) else {
        return Ok(None);
    };
    let raw = value.to_str().unwrap_or_default().trim();
    if raw == "*" {
        return Ok(None);
    }
    let tag = raw.strip_prefix("W/").unwrap_or(raw).trim_matches('"');
    tag.parse::<u64>().map(Some).map_err(|_| {
        ApiError::bad_request(
            "invalid_if_match",
            "If-Match must be the record's ETag, e.g. \"7\" (its stream version)",
        )
    })
}

pub fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(max).collect();
        t.push('…');
        t
    }
}

/// Path parameters by name, with rejections (e.g. percent-encoded bytes that are not UTF-8)
/// as problem documents.
#[derive(Debug)]
pub struct PathParams(pub std::collections::HashMap<String, String>);

impl<S: Send + Sync> FromRequestParts<S> for PathParams {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Path::<std::collections::HashMap<String, String>>::from_request_parts(
            parts, state,
        )
        .await
        .map(|p| Self(p.0))
        .map_err(|e| ApiError::bad_request("invalid_path", e.body_text()))
    }
}
