//! Every error the API returns: `application/problem+json` (RFC 9457) with a stable snake_case
//! `code` clients branch on and a message people can read. 5xx bodies say nothing internal;
//! the cause is logged.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use idledger_app::ReadError;
use idledger_domain::command::{Refusal, Refused};
use idledger_domain::exception::ExceptionRefusal;
use idledger_domain::ids::CustomerId;
use idledger_store::{ExecuteError, StoreError};
use serde::Serialize;
use serde_json::{Map, Value, json};
use utoipa::ToSchema;

pub const PROBLEM_JSON: &str = "application/problem+json";

/// An RFC 9457 problem document, as the API sends it.
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    /// `urn:idledger:problem:<code>`.
    #[serde(rename = "type")]
    pub problem_type: String,
    /// A short summary of the kind of problem.
    pub title: String,
    pub status: u16,
    /// What went wrong in this request, for people.
    pub detail: String,
    /// Stable, machine-readable: clients branch on this.
    pub code: String,
    /// The request id (also in the `x-request-id` response header), when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// Further members depending on `code` (e.g. `system_of_record`, `proposal_ids`,
    /// `change_index`, `expected`, `actual`).
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub extensions: Map<String, Value>,
}

/// An API error: status, stable code, human detail and optional extension members.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub detail: String,
    pub extensions: Map<String, Value>,
    retry_after: Option<u32>,
    authenticate: bool,
    /// For `merged_into`: the survivor, whose URL the redirect names (see `merged_redirect`).
    survivor: Option<CustomerId>,
}

/// A `merged_into` answer's survivor and detail, left on the response for
/// [`merged_redirect`], which decides between 307 and 409 by the request's URL.
#[derive(Debug, Clone)]
struct MergedInto {
    survivor: CustomerId,
    detail: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            code,
            detail: detail.into(),
            extensions: Map::new(),
            retry_after: None,
            authenticate: false,
            survivor: None,
        }
    }

    /// Says when to retry (`Retry-After`, seconds).
    pub fn retry_after(mut self, secs: u32) -> Self {
        self.retry_after = Some(secs);
        self
    }

    /// Adds an extension member to the problem document.
    pub fn with(mut self, key: &str, value: impl Serialize) -> Self {
        self.extensions.insert(
            key.to_owned(),
            serde_json::to_value(value).unwrap_or(Value::Null),
        );
        self
    }

    /// `merged_into`: the customer's record is merged into `survivor`. Where the request's URL
    /// names the customer, `307` with `Location` (the same URL with the survivor's id);
    /// where it does not (the customer was named in the body, or reached through another
    /// resource), `409` with `merged_into` in the body: [`merged_redirect`] decides.
    pub fn merged_into(survivor: CustomerId, detail: impl Into<String>) -> Self {
        let mut e = Self::new(StatusCode::TEMPORARY_REDIRECT, "merged_into", detail)
            .with("merged_into", survivor);
        e.survivor = Some(survivor);
        e
    }

    pub fn bad_request(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, detail)
    }

    pub fn unprocessable(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, detail)
    }

    pub fn not_found(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, detail)
    }

    pub fn forbidden(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, code, detail)
    }

    /// 401 with a `WWW-Authenticate: Bearer` challenge.
    pub fn unauthenticated(code: &'static str, detail: impl Into<String>) -> Self {
        let mut e = Self::new(StatusCode::UNAUTHORIZED, code, detail);
        e.authenticate = true;
        e
    }

    /// A failure on our side: logged in full, answered with nothing internal.
    pub fn internal(error: &dyn std::error::Error) -> Self {
        tracing::error!(error = %error, source = ?error.source(), "request failed");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the request could not be completed; it is safe to retry with the same Idempotency-Key",
        )
    }

    fn title(&self) -> &'static str {
        self.status.canonical_reason().unwrap_or("Error")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({
            "type": format!("urn:idledger:problem:{}", self.code),
            "title": self.title(),
            "status": self.status.as_u16(),
            "detail": &self.detail,
            "code": self.code,
        });
        if let Value::Object(map) = &mut body {
            for (k, v) in self.extensions {
                map.entry(k).or_insert(v);
            }
        }
        let mut response = (self.status, axum::Json(body)).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if self.authenticate {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"idledger\""),
            );
        }
        if let Some(secs) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if let Some(survivor) = self.survivor {
            response.extensions_mut().insert(MergedInto {
                survivor,
                detail: self.detail,
            });
        }
        response
    }
}

/// Middleware: a `merged_into` answer to a request whose URL names the customer
/// (`/v1/customers/{id}/…`, `/v1/households/{h}/members/{id}`, the steward page's
/// `/steward/customers/{id}`) redirects to the same URL with the survivor's id in its place,
/// query kept. Any other (`POST /v1/households`, `POST /v1/customers`, an exception's
/// action…) has no URL to follow, so it answers `409 merged_into` naming the survivor: a 307
/// never goes out without a `Location`. One place for every route.
pub async fn merged_redirect(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let uri = request.uri().clone();
    let mut response = next.run(request).await;
    let Some(merged) = response.extensions_mut().remove::<MergedInto>() else {
        return response;
    };
    match survivor_location(&uri, merged.survivor) {
        Some(location) => {
            response.headers_mut().insert(header::LOCATION, location);
            response
        }
        None => ApiError::new(StatusCode::CONFLICT, "merged_into", merged.detail)
            .with("merged_into", merged.survivor)
            .into_response(),
    }
}

/// The request's URL with the survivor's id in place of the customer's, when the URL names
/// one: the id after `customers` or `members`.
fn survivor_location(uri: &axum::http::Uri, survivor: CustomerId) -> Option<HeaderValue> {
    let mut segments: Vec<String> = uri.path().split('/').map(str::to_owned).collect();
    let i = segments
        .iter()
        .position(|s| s == "customers" || s == "members")?;
    let id = segments.get_mut(i + 1)?;
    if CustomerId::parse(id).is_err() {
        return None;
    }
    *id = survivor.to_string();
    let mut location = segments.join("/");
    if let Some(query) = uri.query() {
        location.push('?');
        location.push_str(query);
    }
    HeaderValue::from_str(&location).ok()
}

impl From<Refused> for ApiError {
    fn from(refused: Refused) -> Self {
        let detail = refused.to_string();
        let refusal = refused.refusal;
        let status = match &refusal {
            Refusal::NotAuthoritative { .. }
            | Refusal::Forbidden { .. }
            | Refusal::ActorNotAllowed { .. }
            | Refusal::WrongSecret { .. }
            | Refusal::ApprovalRequired { .. }
            | Refusal::UnrecordedRepresentative { .. }
            | Refusal::OutsideDelegatedScope { .. } => StatusCode::FORBIDDEN,
            Refusal::VersionConflict { .. }
            | Refusal::AlreadyRegistered
            | Refusal::NotAMember { .. } => StatusCode::CONFLICT,
            Refusal::RecordVersionConflict { .. } => StatusCode::PRECONDITION_FAILED,
            Refusal::NotRegistered
            | Refusal::UnknownProposal { .. }
            | Refusal::UnknownRelationship { .. } => StatusCode::NOT_FOUND,
            Refusal::Erased { .. } => StatusCode::GONE,
            Refusal::MergedInto { survivor } => {
                return ApiError::merged_into(*survivor, detail);
            }
            Refusal::InvalidCommand { .. }
            | Refusal::UnknownField { .. }
            | Refusal::InvalidValue { .. }
            | Refusal::InvalidTransition { .. }
            | Refusal::ExpiredChallenge { .. }
            | Refusal::GuardianRequired { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        };
        let mut error = ApiError::new(status, refusal.code(), detail);
        // The refusal's own members (field, system_of_record, expected, actual…) as extensions.
        if let Ok(Value::Object(members)) = serde_json::to_value(&refusal) {
            for (k, v) in members {
                if k != "code" {
                    error.extensions.insert(k, v);
                }
            }
        }
        if let Some(i) = refused.change_index {
            error = error.with("change_index", i);
        }
        error
    }
}

impl From<ExecuteError> for ApiError {
    fn from(e: ExecuteError) -> Self {
        match e {
            ExecuteError::Refused(refused) => refused.into(),
            ExecuteError::IdempotencyConflict { .. } => {
                ApiError::new(StatusCode::CONFLICT, "idempotency_conflict", e.to_string())
            }
            ExecuteError::Contention { .. } => {
                let mut error =
                    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "contention", e.to_string());
                error.retry_after = Some(1);
                error
            }
            ExecuteError::ExceptionNotOpen { .. } => {
                ApiError::new(StatusCode::CONFLICT, "exception_closed", e.to_string())
            }
            ExecuteError::Exception(refusal) => refusal.into(),
            ExecuteError::Store(e) => e.into(),
        }
    }
}

impl From<ExceptionRefusal> for ApiError {
    fn from(refusal: ExceptionRefusal) -> Self {
        let status = match &refusal {
            ExceptionRefusal::Unknown => StatusCode::NOT_FOUND,
            ExceptionRefusal::Closed { .. } => StatusCode::CONFLICT,
            ExceptionRefusal::NotAConsumer { .. }
            | ExceptionRefusal::NoField { .. }
            | ExceptionRefusal::NoProposal
            | ExceptionRefusal::NotAProposal { .. }
            | ExceptionRefusal::ValueRequired { .. }
            | ExceptionRefusal::InvalidValue { .. }
            | ExceptionRefusal::DismissOnly { .. }
            | ExceptionRefusal::InvalidCommand { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        };
        let error = ApiError::new(status, refusal.code(), refusal.to_string());
        match refusal {
            ExceptionRefusal::Closed { status } => error.with("status", status),
            ExceptionRefusal::InvalidValue { field, .. } => error.with("field", field),
            _ => error,
        }
    }
}

/// The answer to a request whose handler panicked: `500 internal`, nothing of the panic told.
/// (The panic hook has printed it; it is not logged again, as it might quote a value.)
pub fn panicked(_panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("a request's handler panicked");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "the request could not be completed",
    )
    .into_response()
}

/// What `Retry-After` suggests while the store is unreachable.
const STORE_RETRY_AFTER_SECS: u32 = 2;

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Erased { customer, at } => ApiError::gone(customer, at),
            e if e.is_unavailable() => ApiError::store_unavailable(&e),
            e => ApiError::internal(&e),
        }
    }
}

impl From<ReadError> for ApiError {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::NotFound(_) | ReadError::NotYetRegistered { .. } => {
                ApiError::not_found("not_found", e.to_string())
            }
            ReadError::Erased { customer, at } => ApiError::gone(customer, at),
            ReadError::MergedInto { survivor, .. } => {
                ApiError::merged_into(survivor, e.to_string())
            }
            ReadError::OutOfScope(field) => ApiError::forbidden(
                "not_readable",
                format!("the policy does not let this source read {field}"),
            )
            .with("field", field.to_string()),
            ReadError::NoConsent { .. } => ApiError::not_found("no_consent", e.to_string()),
            ReadError::NoHousehold(_) => ApiError::not_found("not_found", e.to_string()),
            ReadError::PastForbidden => ApiError::forbidden("forbidden_role", e.to_string())
                .with("allowed_roles", crate::auth::past_readers()),
            ReadError::Store(e) => e.into(),
        }
    }
}

impl ApiError {
    /// 503 `store_unavailable` with `Retry-After`: the database cannot be reached now. The
    /// cause is logged, not told.
    pub fn store_unavailable(error: &StoreError) -> Self {
        tracing::warn!(error = %error, "the store is unavailable");
        let mut problem = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            "the store is not reachable right now; retry shortly",
        );
        problem.retry_after = Some(STORE_RETRY_AFTER_SECS);
        problem
    }

    /// 410: the customer's record was erased; nothing of it can be read or changed.
    pub fn gone(customer: impl std::fmt::Display, at: chrono::DateTime<chrono::Utc>) -> Self {
        ApiError::new(
            StatusCode::GONE,
            "erased",
            format!("customer {customer} was erased at {}", at.to_rfc3339()),
        )
        .with("erased_at", at)
    }
}
