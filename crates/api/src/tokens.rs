//! Token administration over HTTP (`/v1/tokens`, role `admin`, scope `admin`): list, create,
//! get, rotate, revoke — through `idledger_app::TokenAdmin`, as `idledger token …` does. A
//! secret is in the answer to its creation or rotation only (`Cache-Control: no-store`); no
//! answer ever holds a hash.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use idledger_app::{NewToken, TokenError, parse_age};
use idledger_store::{IssuedToken, Role, Scope, TokenRecord};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::AppState;
use crate::auth::{Admins, Authorized};
use crate::error::{ApiError, Problem};
use crate::extract::{JsonBody, PathParams};

/// A token as the API shows it: everything but the secret (which only its creation or
/// rotation answers) and never its hash.
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenView {
    pub id: Uuid,
    /// `source`, `consumer`, `steward`, `auditor`, `admin` or `dsar`.
    pub role: String,
    /// The source id (role `source`) or consumer id (role `consumer`) it speaks for.
    pub subject: Option<String>,
    pub label: String,
    pub created_at: DateTime<Utc>,
    /// When it stops (or stopped) working, if it expires.
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    /// Its last use, to the minute.
    pub last_used_at: Option<DateTime<Utc>>,
    /// The operation groups it is limited to; `null`: all its role allows.
    pub scopes: Option<Vec<String>>,
    /// Whether it authenticates now (neither revoked nor expired).
    pub live: bool,
}

impl TokenView {
    pub fn new(record: &TokenRecord, now: DateTime<Utc>) -> Self {
        Self {
            id: record.id,
            role: record.role.to_string(),
            subject: record.subject.clone(),
            label: record.label.clone(),
            created_at: record.created_at,
            expires_at: record.expires_at,
            revoked_at: record.revoked_at,
            last_used_at: record.last_used_at,
            scopes: record
                .scopes
                .as_ref()
                .map(|s| s.iter().map(|s| s.as_str().to_owned()).collect()),
            live: record.live_at(now),
        }
    }
}

/// Every token, oldest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenListView {
    pub tokens: Vec<TokenView>,
}

/// A token just created or rotated: its secret, shown this once.
#[derive(Serialize, ToSchema)]
pub struct IssuedTokenView {
    /// The bearer secret (`idl_…`). It cannot be shown again: store it now.
    pub token: String,
    pub record: TokenView,
}

impl std::fmt::Debug for IssuedTokenView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedTokenView")
            .field("token", &"<redacted>")
            .field("record", &self.record)
            .finish()
    }
}

/// `POST /v1/tokens`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// `source`, `consumer`, `steward`, `auditor`, `admin` or `dsar`.
    pub role: String,
    /// The source id (role `source`; not a reserved one) or consumer id (role `consumer`)
    /// it speaks for; absent for the other roles.
    #[serde(default)]
    pub subject: Option<String>,
    /// A note for people (a steward's is recorded as their actor id). Default: the role and
    /// the subject.
    #[serde(default)]
    pub label: Option<String>,
    /// It stops working this long after its creation: `45s`, `90m`, `4h`, `2d` (at most 10
    /// years). Default: never.
    #[serde(default)]
    pub expires_in: Option<String>,
    /// Limit it to these operation groups, within what its role allows: `commands`,
    /// `reads`, `feed`, `acks`, `reconcile`, `stewardship`, `admin`, `export`. Default: all
    /// its role allows.
    #[serde(default)]
    pub scopes: Option<Vec<String>>,
}

/// `POST /v1/tokens/{token_id}/rotate`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateRequest {
    /// How long the old token keeps working: `45s`, `90m`, `4h`, `2d` (at most 10 years;
    /// `0s` ends it at once). Default: `1d`.
    #[serde(default)]
    pub overlap: Option<String>,
}

/// The overlap of a rotation unless the request gives one (as `idledger token rotate`).
pub const DEFAULT_OVERLAP: &str = "1d";

/// List every token (role `admin`): revoked and expired ones too; never a secret.
#[utoipa::path(
    get, path = "/v1/tokens", tag = "tokens",
    responses((status = 200, body = TokenListView)),
    security(("bearer" = []))
)]
pub async fn list_tokens(
    State(state): State<AppState>,
    Authorized(..): Authorized<Admins>,
) -> Result<Json<TokenListView>, ApiError> {
    let now = Utc::now();
    let tokens = state
        .app
        .token_admin()
        .list()
        .await
        .map_err(token_error)?
        .iter()
        .map(|t| TokenView::new(t, now))
        .collect();
    Ok(Json(TokenListView { tokens }))
}

/// Create a token (role `admin`); the answer holds its secret, which cannot be shown again.
#[utoipa::path(
    post, path = "/v1/tokens", tag = "tokens",
    request_body = TokenRequest,
    responses(
        (status = 201, description = "Created; `token` is the secret, shown this once", body = IssuedTokenView, headers(("Location" = String))),
        (status = 422, description = "invalid_body; invalid_value with `field`: role, subject, label, expires_in, scopes", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn create_token(
    State(state): State<AppState>,
    Authorized(..): Authorized<Admins>,
    JsonBody(body): JsonBody<TokenRequest>,
) -> Result<Response, ApiError> {
    let new = NewToken {
        role: body.role.parse::<Role>().map_err(|_| {
            invalid_value(
                "role",
                format!(
                    "'{}' is not a role; the roles are {}",
                    truncate(&body.role),
                    Role::ALL.map(Role::as_str).join(", ")
                ),
            )
        })?,
        subject: body.subject,
        label: body.label,
        expires_in: body
            .expires_in
            .as_deref()
            .map(|raw| age("expires_in", raw))
            .transpose()?,
        scopes: body
            .scopes
            .map(|scopes| {
                scopes
                    .iter()
                    .map(|s| {
                        s.parse::<Scope>().map_err(|_| {
                            invalid_value(
                                "scopes",
                                format!(
                                    "'{}' is not a scope; the scopes are {}",
                                    truncate(s),
                                    Scope::ALL.map(Scope::as_str).join(", ")
                                ),
                            )
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()?,
    };
    let issued = state
        .app
        .token_admin()
        .create(&new, Utc::now())
        .await
        .map_err(token_error)?;
    Ok(issued_response(&issued))
}

/// One token (role `admin`).
#[utoipa::path(
    get, path = "/v1/tokens/{token_id}", tag = "tokens",
    params(("token_id" = Uuid, Path)),
    responses(
        (status = 200, body = TokenView),
        (status = 404, description = "unknown_token", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn get_token(
    State(state): State<AppState>,
    Authorized(..): Authorized<Admins>,
    PathParams(params): PathParams,
) -> Result<Json<TokenView>, ApiError> {
    let id = token_param(&params)?;
    let record = state.app.token_admin().get(id).await.map_err(token_error)?;
    Ok(Json(TokenView::new(&record, Utc::now())))
}

/// Rotate a token (role `admin`): a new secret for the same role, system, label, expiry and
/// scopes; the old one keeps working for the overlap, so its holder can switch without an
/// outage.
#[utoipa::path(
    post, path = "/v1/tokens/{token_id}/rotate", tag = "tokens",
    params(("token_id" = Uuid, Path)),
    request_body = RotateRequest,
    responses(
        (status = 201, description = "The new token; `token` is its secret, shown this once", body = IssuedTokenView, headers(("Location" = String))),
        (status = 404, description = "unknown_token", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "token_not_live: revoked or expired, nothing to rotate", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "invalid_body; invalid_value with `field`: overlap", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn rotate_token(
    State(state): State<AppState>,
    Authorized(..): Authorized<Admins>,
    PathParams(params): PathParams,
    JsonBody(body): JsonBody<RotateRequest>,
) -> Result<Response, ApiError> {
    let id = token_param(&params)?;
    let overlap = age(
        "overlap",
        body.overlap.as_deref().unwrap_or(DEFAULT_OVERLAP),
    )?;
    let issued = state
        .app
        .token_admin()
        .rotate(id, overlap)
        .await
        .map_err(token_error)?;
    Ok(issued_response(&issued))
}

/// Revoke a token (role `admin`): it stops working at once and its steward page sessions
/// end. Revoking a revoked token changes nothing.
#[utoipa::path(
    post, path = "/v1/tokens/{token_id}/revoke", tag = "tokens",
    params(("token_id" = Uuid, Path)),
    responses(
        (status = 200, description = "Revoked (now or before)", body = TokenView),
        (status = 404, description = "unknown_token", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn revoke_token(
    State(state): State<AppState>,
    Authorized(..): Authorized<Admins>,
    PathParams(params): PathParams,
) -> Result<Json<TokenView>, ApiError> {
    let id = token_param(&params)?;
    let revoked = state
        .app
        .token_admin()
        .revoke(id)
        .await
        .map_err(token_error)?;
    Ok(Json(TokenView::new(&revoked.record, Utc::now())))
}

fn issued_response(issued: &IssuedToken) -> Response {
    let view = IssuedTokenView {
        token: issued.secret.clone(),
        record: TokenView::new(&issued.record, Utc::now()),
    };
    let mut response = (StatusCode::CREATED, Json(view)).into_response();
    let headers = response.headers_mut();
    // The secret must not be kept by a cache on the way.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Ok(location) = HeaderValue::from_str(&format!("/v1/tokens/{}", issued.record.id)) {
        headers.insert(header::LOCATION, location);
    }
    response
}

fn token_param(params: &std::collections::HashMap<String, String>) -> Result<Uuid, ApiError> {
    let raw = params
        .get("token_id")
        .map(String::as_str)
        .unwrap_or_default();
    Uuid::parse_str(raw).map_err(|_| {
        ApiError::not_found(
            "unknown_token",
            "there is no such token: a token id is a UUID",
        )
    })
}

fn age(field: &'static str, raw: &str) -> Result<chrono::Duration, ApiError> {
    parse_age(raw).ok_or_else(|| {
        invalid_value(
            field,
            "not a duration such as 45s, 90m, 4h or 2d (at most 10 years)",
        )
    })
}

/// At most 64 characters of what the caller sent, for a message.
fn truncate(raw: &str) -> String {
    raw.chars().take(64).collect()
}

fn invalid_value(field: &str, detail: impl Into<String>) -> ApiError {
    ApiError::unprocessable("invalid_value", detail).with("field", field)
}

fn token_error(e: TokenError) -> ApiError {
    match e {
        TokenError::Invalid { parameter, message } => invalid_value(parameter, message),
        TokenError::Unknown(id) => {
            ApiError::not_found("unknown_token", format!("there is no token {id}"))
                .with("token_id", id)
        }
        TokenError::NotLive(id) => ApiError::new(
            StatusCode::CONFLICT,
            "token_not_live",
            format!("token {id} is revoked or expired: there is nothing to rotate"),
        )
        .with("token_id", id),
        TokenError::Store(e) => e.into(),
    }
}
