//! Decisions at the moment of use over HTTP: `POST /v1/decisions` (one customer),
//! `POST /v1/decisions/batch` (an audience, answered as NDJSON), the decision log
//! (`GET /v1/decisions`), and the processor registry (`/v1/processors`).

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use futures::StreamExt as _;
use idledger_app::decisions::{KnownAsker, MAX_BATCH};
use idledger_app::{AskedBy, DecideError, Decided, TokenIssue};
use idledger_domain::field::{FieldPath, FieldSelector};
use idledger_domain::ids::{CustomerId, Purpose};
use idledger_domain::usage::{Location, UseQuestion};
use idledger_domain::values::{CountryCode, TransferBasis};
use idledger_store::decisions::{
    DecisionEntry, DecisionFilter, NewProcessor, Processor, ProcessorId, RegisterProcessorError,
};
use idledger_store::delivery::MAX_PAGE;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::auth::{Admins, Askers, Authorized, Caller, Overseers};
use crate::delivery::{NDJSON, page_limit};
use crate::error::{ApiError, Problem};
use crate::extract::{JsonBody, PathParams, QueryParams, truncate};

/// Decision log rows a page holds unless `limit` says otherwise.
const DEFAULT_LIMIT: u32 = 100;
/// Customers decided (and logged) per step of a batch.
const BATCH_STEP: usize = 500;

// ---------------------------------------------------------------------------------------
// Questions
// ---------------------------------------------------------------------------------------

/// `POST /v1/decisions`: may the caller use `fields` of `customer_id` for `purpose`, now?
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DecisionRequest {
    /// The customer, as the caller names them: an id, or (a pseudonymous consumer) its alias.
    pub customer_id: String,
    /// A purpose of the policy's `[purposes]`.
    pub purpose: String,
    /// The fields it would use, e.g. `["email", "name.given"]`.
    pub fields: Vec<String>,
    /// A tier of the policy (`low`, `high`…); or name an `action` instead. Either way, the
    /// purpose's own tier applies too.
    #[serde(default)]
    pub tier: Option<String>,
    /// An action of the policy's `[actions]` (e.g. `profile_export`), standing for its tier.
    #[serde(default)]
    pub action: Option<String>,
}

/// `POST /v1/decisions/batch`: the same question for many customers (an audience).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchDecisionRequest {
    /// 1 to 5,000 customers, as the caller names them; answered in this order.
    pub customers: Vec<String>,
    /// A purpose of the policy's `[purposes]`.
    pub purpose: String,
    /// The fields it would use, e.g. `["email", "name.given"]`.
    pub fields: Vec<String>,
    /// A tier of the policy (`low`, `high`…); or name an `action` instead. Either way, the
    /// purpose's own tier applies too.
    #[serde(default)]
    pub tier: Option<String>,
    /// An action of the policy's `[actions]` (e.g. `profile_export`), standing for its tier.
    #[serde(default)]
    pub action: Option<String>,
}

/// What a processor asks about customers, as sent.
struct QuestionBody<'a> {
    purpose: &'a str,
    fields: &'a [String],
    tier: Option<&'a str>,
    action: Option<&'a str>,
}

fn invalid(field: &str, detail: impl std::fmt::Display) -> ApiError {
    ApiError::unprocessable("invalid_value", format!("{field}: {detail}")).with("field", field)
}

fn question(state: &AppState, body: QuestionBody<'_>) -> Result<UseQuestion, ApiError> {
    let purpose = Purpose::parse(body.purpose).map_err(|e| invalid("purpose", e))?;
    let fields = body
        .fields
        .iter()
        .map(|f| FieldPath::parse(f))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid("fields", e))?;
    UseQuestion::new(
        state.ledger.policy(),
        purpose,
        fields,
        body.tier,
        body.action,
    )
    .map_err(|e| invalid(e.what, e))
}

/// The consent (or other basis) record an answer rests on.
#[derive(Debug, Serialize, ToSchema)]
pub struct BasisView {
    /// The legal basis recorded with the customer's `consent.<purpose>`.
    pub basis: String,
    /// Whether the record is a withdrawal.
    pub withdrawn: bool,
    /// The event that last changed the record, and the record's version.
    pub event_id: uuid::Uuid,
    pub version: u64,
    pub notice_id: String,
    pub notice_version: String,
    pub notice_sha256: String,
    pub granted_at: DateTime<Utc>,
    pub jurisdiction: String,
}

/// One field's answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct FieldAnswerView {
    pub field: String,
    pub allowed: bool,
    /// Why not: unknown_customer, erased, restricted, purpose_not_allowed, no_consent,
    /// consent_withdrawn, consent_expired, minor_without_guardian, consent_too_old_for_tier,
    /// assurance_too_low, transfer_without_basis, field_not_needed_for_purpose,
    /// field_not_allowed_for_processor.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
}

/// The answer for one customer.
#[derive(Debug, Serialize, ToSchema)]
pub struct DecisionView {
    pub decision_id: uuid::Uuid,
    /// As the caller named them.
    pub customer_id: String,
    pub processor_id: String,
    pub purpose: String,
    pub decided_at: DateTime<Utc>,
    /// Whether some field may be used.
    pub allowed: bool,
    pub fields: Vec<FieldAnswerView>,
    /// The tiers that applied (the purpose's, and the one asked for).
    pub tiers: Vec<String>,
    pub basis: Option<BasisView>,
    /// The customer's stream version the answer was decided on.
    pub stream_version: u64,
    pub policy_version: String,
    /// When some field is allowed: a compact JWS (EdDSA, `typ` `idledger-decision+jwt`,
    /// verifiable with `/.well-known/jwks.json`) proving it, valid until `token_expires_at`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_expires_at: Option<DateTime<Utc>>,
}

impl DecisionView {
    fn new(d: &Decided) -> Self {
        let r = &d.record;
        Self {
            decision_id: r.decision_id,
            customer_id: d.customer_name.clone(),
            processor_id: r.processor_id.clone(),
            purpose: r.purpose.to_string(),
            decided_at: r.decided_at,
            allowed: r.allowed,
            fields: d
                .answer
                .fields
                .iter()
                .map(|f| FieldAnswerView {
                    field: f.field.to_string(),
                    allowed: f.allowed,
                    reason: f.reason.map(|r| r.as_str()),
                })
                .collect(),
            tiers: r.tiers.clone(),
            basis: d.answer.basis.as_ref().map(|b| BasisView {
                basis: b.basis.to_string(),
                withdrawn: b.withdrawn,
                event_id: b.event_id.as_uuid(),
                version: b.version,
                notice_id: b.notice.id().to_owned(),
                notice_version: b.notice.version().to_owned(),
                notice_sha256: b.notice.sha256().to_owned(),
                granted_at: b.granted_at,
                jurisdiction: b.jurisdiction.to_string(),
            }),
            stream_version: r.stream_version,
            policy_version: r.policy_version.clone(),
            token: d.token.clone(),
            token_expires_at: d.token.as_ref().and(r.token_expires_at),
        }
    }
}

fn decide_error(e: DecideError) -> ApiError {
    match e {
        DecideError::UnknownProcessor(id) => ApiError::forbidden(
            "unknown_processor",
            format!("the token speaks for '{id}', which is registered as no processor or consumer"),
        ),
        DecideError::Disabled(id) => ApiError::forbidden(
            "processor_disabled",
            format!("the processor '{id}' is disabled"),
        ),
        DecideError::InvalidCustomer { index, reason } => {
            ApiError::unprocessable("invalid_value", format!("customers[{index}]: {reason}"))
                .with("field", "customers")
                .with("index", index)
        }
        DecideError::BatchSize => ApiError::unprocessable(
            "invalid_value",
            format!("customers: name between 1 and {MAX_BATCH} customers"),
        )
        .with("field", "customers"),
        DecideError::Store(e) => e.into(),
    }
}

fn issue(state: &AppState) -> TokenIssue<'_> {
    TokenIssue {
        signer: &state.signer,
        ttl: state.decision_token_ttl,
        issuer: &state.feed_settings.source,
    }
}

async fn asker(state: &AppState, caller: &Caller) -> Result<KnownAsker, ApiError> {
    let by = AskedBy {
        processor_id: caller.subject().unwrap_or_default().to_owned(),
        token_id: caller.token.id,
    };
    state.app.decider().asker(by).await.map_err(decide_error)
}

/// May the caller use these fields of this customer for this purpose, now? (roles
/// `processor`, `consumer`: the processor is the token's.) Decided on the customer's current
/// state and logged before it is answered.
#[utoipa::path(
    post, path = "/v1/decisions", tag = "decisions",
    request_body = DecisionRequest,
    responses(
        (status = 200, description = "The answer per field", body = DecisionView),
        (status = 400, description = "malformed_json", body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "forbidden_role, unknown_processor, processor_disabled", body = Problem, content_type = "application/problem+json"),
        (status = 413, body = Problem, content_type = "application/problem+json"),
        (status = 415, body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "invalid_body, invalid_value (with `field`: customer_id, purpose, fields, tier, action)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn decide(
    State(state): State<AppState>,
    Authorized(caller, ..): Authorized<Askers>,
    JsonBody(body): JsonBody<DecisionRequest>,
) -> Result<Json<DecisionView>, ApiError> {
    let asker = asker(&state, &caller).await?;
    let question = question(
        &state,
        QuestionBody {
            purpose: &body.purpose,
            fields: &body.fields,
            tier: body.tier.as_deref(),
            action: body.action.as_deref(),
        },
    )?;
    let decider = state.app.decider();
    let customers = decider
        .customers(&asker, std::slice::from_ref(&body.customer_id))
        .map_err(|e| match e {
            DecideError::InvalidCustomer { reason, .. } => invalid("customer_id", reason),
            other => decide_error(other),
        })?;
    let decided = decider
        .decide(&asker, &question, &customers, &issue(&state))
        .await
        .map_err(decide_error)?;
    let one = decided
        .first()
        .ok_or_else(|| ApiError::internal(&std::io::Error::other("no answer")))?;
    Ok(Json(DecisionView::new(one)))
}

/// The same question for many customers (roles `processor`, `consumer`): one answer per
/// line (NDJSON, a `DecisionView` each), in the order asked. Every answer is logged before
/// its line is sent.
#[utoipa::path(
    post, path = "/v1/decisions/batch", tag = "decisions",
    request_body = BatchDecisionRequest,
    responses(
        (status = 200, description = "One DecisionView per line", content_type = "application/x-ndjson", body = String),
        (status = 400, description = "malformed_json", body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "forbidden_role, unknown_processor, processor_disabled", body = Problem, content_type = "application/problem+json"),
        (status = 413, body = Problem, content_type = "application/problem+json"),
        (status = 415, body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "invalid_body, invalid_value (with `field`: customers, purpose, fields, tier, action)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn decide_batch(
    State(state): State<AppState>,
    Authorized(caller, ..): Authorized<Askers>,
    JsonBody(body): JsonBody<BatchDecisionRequest>,
) -> Result<Response, ApiError> {
    let asker = asker(&state, &caller).await?;
    let question = question(
        &state,
        QuestionBody {
            purpose: &body.purpose,
            fields: &body.fields,
            tier: body.tier.as_deref(),
            action: body.action.as_deref(),
        },
    )?;
    let customers = state
        .app
        .decider()
        .customers(&asker, &body.customers)
        .map_err(decide_error)?;
    let steps: Vec<Vec<CustomerId>> = customers.chunks(BATCH_STEP).map(<[_]>::to_vec).collect();
    let lines = futures::stream::iter(steps).then(move |step| {
        let (state, asker, question) = (state.clone(), asker.clone(), question.clone());
        async move {
            let decided = state
                .app
                .decider()
                .decide(&asker, &question, &step, &issue(&state))
                .await
                .map_err(|e| {
                    // The answers already sent stand; the stream ends short of the rest.
                    tracing::warn!(error = %e, "a batch of decisions failed");
                    std::io::Error::other("the decisions could not be made")
                })?;
            let mut out = Vec::new();
            for d in &decided {
                serde_json::to_writer(&mut out, &DecisionView::new(d))
                    .map_err(std::io::Error::other)?;
                out.push(b'\n');
            }
            Ok::<_, std::io::Error>(axum::body::Bytes::from(out))
        }
    });
    let mut response = Body::from_stream(lines).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(NDJSON));
    Ok(response)
}

// ---------------------------------------------------------------------------------------
// The decision log
// ---------------------------------------------------------------------------------------

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DecisionQuery {
    /// Only this customer's decisions.
    #[serde(default)]
    pub customer: Option<uuid::Uuid>,
    /// Only this processor's (or consumer's).
    #[serde(default)]
    pub processor: Option<String>,
    /// Decided at or after this instant (RFC 3339).
    #[serde(default)]
    pub since: Option<DateTime<Utc>>,
    /// Decided before this instant (RFC 3339).
    #[serde(default)]
    pub until: Option<DateTime<Utc>>,
    /// The previous page's `next_after`. Default: from the first.
    #[serde(default, deserialize_with = "crate::extract::position")]
    pub after: Option<u64>,
    /// Rows per page (1..=1000, default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

/// A logged decision.
#[derive(Debug, Serialize, ToSchema)]
pub struct DecisionLogView {
    pub seq: u64,
    pub decision_id: uuid::Uuid,
    pub decided_at: DateTime<Utc>,
    pub processor_id: String,
    /// The token that asked.
    pub token_id: uuid::Uuid,
    pub customer_id: uuid::Uuid,
    pub purpose: String,
    pub tiers: Vec<String>,
    pub allowed: bool,
    pub fields: Vec<FieldAnswerView>,
    pub basis: Option<String>,
    pub basis_event_id: Option<uuid::Uuid>,
    pub basis_version: Option<u64>,
    pub stream_version: u64,
    pub policy_version: String,
    /// When the decision token issued with it expires (none: no token, nothing allowed).
    pub token_expires_at: Option<DateTime<Utc>>,
}

impl From<DecisionEntry> for DecisionLogView {
    fn from(e: DecisionEntry) -> Self {
        let d = e.decision;
        Self {
            seq: e.seq,
            decision_id: d.decision_id,
            decided_at: d.decided_at,
            processor_id: d.processor_id,
            token_id: d.token_id,
            customer_id: d.customer_id.as_uuid(),
            purpose: d.purpose.to_string(),
            tiers: d.tiers,
            allowed: d.allowed,
            fields: d
                .answers
                .iter()
                .map(|f| FieldAnswerView {
                    field: f.field.to_string(),
                    allowed: f.allowed,
                    reason: f.reason.map(|r| r.as_str()),
                })
                .collect(),
            basis: d.basis.map(|b| b.to_string()),
            basis_event_id: d.basis_event_id.map(|e| e.as_uuid()),
            basis_version: d.basis_version,
            stream_version: d.stream_version,
            policy_version: d.policy_version,
            token_expires_at: d.token_expires_at,
        }
    }
}

/// A page of the decision log, oldest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct DecisionPageView {
    pub items: Vec<DecisionLogView>,
    /// Pass as `after=` for the next page; `null` when this was the last one.
    pub next_after: Option<u64>,
}

/// The decision log: every answer, allowing or not, oldest first (roles `steward`,
/// `auditor`, `admin`); per customer, per processor and by time. With `Accept:
/// application/x-ndjson`, every matching entry after `after` as one `DecisionLogView` per line
/// (an export; `limit` does not apply), read a page at a time.
#[utoipa::path(
    get, path = "/v1/decisions", tag = "decisions",
    params(DecisionQuery),
    responses(
        (status = 200, description = "A page (JSON), or with Accept: application/x-ndjson every matching entry, one per line",
         content((DecisionPageView = "application/json"), (String = "application/x-ndjson"))),
        (status = 400, description = "invalid_query", body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn list_decisions(
    State(state): State<AppState>,
    Authorized(..): Authorized<Overseers>,
    headers: axum::http::HeaderMap,
    QueryParams(query): QueryParams<DecisionQuery>,
) -> Result<Response, ApiError> {
    let limit = page_limit(query.limit, DEFAULT_LIMIT, MAX_PAGE)?;
    let customer = query
        .customer
        .map(CustomerId::try_from)
        .transpose()
        .map_err(|e| {
            ApiError::bad_request("invalid_query", format!("customer: {e}"))
                .with("parameter", "customer")
        })?;
    let filter = DecisionFilter {
        customer,
        processor: query.processor,
        since: query.since,
        until: query.until,
    };
    let export = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|t| t.trim().starts_with(NDJSON)));
    if export {
        return Ok(export_log(state, filter, query.after));
    }
    let page = state
        .app
        .decider()
        .decisions()
        .list(&filter, query.after, limit)
        .await?;
    Ok(Json(DecisionPageView {
        items: page.items.into_iter().map(Into::into).collect(),
        next_after: page.next,
    })
    .into_response())
}

/// Every entry of `filter` after `after`, as NDJSON, a page of the log at a time (memory stays
/// at one page whatever the log's size).
fn export_log(state: AppState, filter: DecisionFilter, after: Option<u64>) -> Response {
    let pages = futures::stream::try_unfold(Some(after), move |next| {
        let (state, filter) = (state.clone(), filter.clone());
        async move {
            let Some(after) = next else {
                return Ok(None);
            };
            let page = state
                .app
                .decider()
                .decisions()
                .list(&filter, after, MAX_PAGE)
                .await
                .map_err(|e| {
                    tracing::warn!(error = %e, "exporting the decision log failed");
                    std::io::Error::other("the decision log could not be read")
                })?;
            let mut out = Vec::new();
            for entry in page.items {
                serde_json::to_writer(&mut out, &DecisionLogView::from(entry))
                    .map_err(std::io::Error::other)?;
                out.push(b'\n');
            }
            let next = page.next.map(Some);
            Ok::<_, std::io::Error>(Some((axum::body::Bytes::from(out), next)))
        }
    });
    let mut response = Body::from_stream(pages).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(NDJSON));
    response
}

// ---------------------------------------------------------------------------------------
// The processor registry
// ---------------------------------------------------------------------------------------

/// `POST /v1/processors`: a system that only asks (consumers are processors already).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProcessorRequest {
    /// 1..=64 of a-z, 0-9, `_`, `-`, starting with a letter; not a consumer's id.
    pub id: String,
    /// The purposes it uses data for.
    pub purposes: Vec<String>,
    /// The fields it may use: fields, families (`preferences.*`), `name.*` or `*`.
    pub fields: Vec<String>,
    /// The ISO 3166-1 country it processes data in; absent: where the controller does.
    #[serde(default)]
    pub region: Option<String>,
    /// adequacy, scc, bcr or derogation: what makes sending data to it lawful when it is in
    /// another country than the customer.
    #[serde(default)]
    pub transfer_basis: Option<String>,
}

/// A registered processor.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProcessorView {
    pub id: String,
    pub purposes: Vec<String>,
    pub fields: Vec<String>,
    pub region: Option<String>,
    pub transfer_basis: Option<String>,
    pub created_at: DateTime<Utc>,
    pub disabled_at: Option<DateTime<Utc>>,
}

impl From<&Processor> for ProcessorView {
    fn from(p: &Processor) -> Self {
        Self {
            id: p.id.to_string(),
            purposes: p.purposes.iter().map(ToString::to_string).collect(),
            fields: p.fields.iter().map(ToString::to_string).collect(),
            region: p.location.region().map(|r| r.as_str().to_owned()),
            transfer_basis: p.location.transfer_basis().map(|b| b.as_str().to_owned()),
            created_at: p.created_at,
            disabled_at: p.disabled_at,
        }
    }
}

/// The registration a request asks for, or `invalid_value` naming the member at fault.
pub fn new_processor(body: &ProcessorRequest) -> Result<NewProcessor, ApiError> {
    let id = ProcessorId::parse(&body.id).map_err(|e| invalid("id", e))?;
    let purposes = body
        .purposes
        .iter()
        .map(|p| Purpose::parse(p))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid("purposes", e))?;
    let fields = body
        .fields
        .iter()
        .map(|f| FieldSelector::parse(f))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid("fields", e))?;
    let location = location(body.region.as_deref(), body.transfer_basis.as_deref())?;
    NewProcessor::new(id, purposes, fields, location).map_err(|e| invalid(e.what, e))
}

/// Where a processor or consumer registration says it processes data, or `invalid_value`
/// naming `region` or `transfer_basis`.
pub fn location(region: Option<&str>, basis: Option<&str>) -> Result<Location, ApiError> {
    let region = region
        .map(CountryCode::parse)
        .transpose()
        .map_err(|e| invalid("region", e))?;
    let basis = basis
        .map(TransferBasis::parse)
        .transpose()
        .map_err(|e| invalid("transfer_basis", e))?;
    Location::new(region, basis).map_err(|e| invalid(e.what, e))
}

/// Register a processor that asks before it uses data (role `admin`). Its token is made
/// separately (`idledger token create --role processor --processor <id>`).
#[utoipa::path(
    post, path = "/v1/processors", tag = "decisions",
    request_body = ProcessorRequest,
    responses(
        (status = 201, description = "Registered", body = ProcessorView, headers(("Location" = String))),
        (status = 400, description = "malformed_json", body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "processor_exists (as a processor or a consumer)", body = Problem, content_type = "application/problem+json"),
        (status = 413, body = Problem, content_type = "application/problem+json"),
        (status = 415, body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "invalid_body, invalid_value (with `field`: id, purposes, fields, region, transfer_basis, processor)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn register_processor(
    State(state): State<AppState>,
    Authorized(..): Authorized<Admins>,
    JsonBody(body): JsonBody<ProcessorRequest>,
) -> Result<Response, ApiError> {
    let new = new_processor(&body)?;
    let processor = match state
        .app
        .decider()
        .decisions()
        .register_processor(new, Utc::now())
        .await
    {
        Ok(p) => p,
        Err(RegisterProcessorError::Exists(id)) => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "processor_exists",
                format!("'{id}' is already registered, as a processor or a consumer"),
            )
            .with("processor_id", id));
        }
        Err(RegisterProcessorError::Store(e)) => return Err(e.into()),
    };
    let mut response = (StatusCode::CREATED, Json(ProcessorView::from(&processor))).into_response();
    if let Ok(location) = HeaderValue::from_str(&format!("/v1/processors/{}", processor.id)) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// Every processor registered to ask (consumers are listed under `/v1/consumers`), by id
/// (role `admin`).
#[utoipa::path(
    get, path = "/v1/processors", tag = "decisions",
    responses(
        (status = 200, body = [ProcessorView]),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn list_processors(
    State(state): State<AppState>,
    Authorized(..): Authorized<Admins>,
) -> Result<Json<Vec<ProcessorView>>, ApiError> {
    let all = state.app.decider().decisions().processors().await?;
    Ok(Json(all.iter().map(ProcessorView::from).collect()))
}

fn processor_param(params: &std::collections::HashMap<String, String>) -> String {
    params.get("processor_id").cloned().unwrap_or_default()
}

fn not_found(id: &str) -> ApiError {
    ApiError::not_found(
        "processor_not_found",
        format!("no processor '{}'", truncate(id, 64)),
    )
}

/// One processor (role `admin`).
#[utoipa::path(
    get, path = "/v1/processors/{processor_id}", tag = "decisions",
    params(("processor_id" = String, Path)),
    responses(
        (status = 200, body = ProcessorView),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "processor_not_found", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn get_processor(
    State(state): State<AppState>,
    Authorized(..): Authorized<Admins>,
    PathParams(params): PathParams,
) -> Result<Json<ProcessorView>, ApiError> {
    let id = processor_param(&params);
    let found = state.app.decider().decisions().processor(&id).await?;
    found
        .as_ref()
        .map(|p| Json(ProcessorView::from(p)))
        .ok_or_else(|| not_found(&id))
}

/// Stop a processor's decisions: its questions are refused (403 `processor_disabled`) from
/// then on (role `admin`).
#[utoipa::path(
    post, path = "/v1/processors/{processor_id}/disable", tag = "decisions",
    params(("processor_id" = String, Path)),
    responses(
        (status = 200, body = ProcessorView),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "processor_not_found", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn disable_processor(
    State(state): State<AppState>,
    Authorized(..): Authorized<Admins>,
    PathParams(params): PathParams,
) -> Result<Json<ProcessorView>, ApiError> {
    let id = processor_param(&params);
    let decisions = state.app.decider().decisions();
    if !decisions.disable_processor(&id, Utc::now()).await? {
        return Err(not_found(&id));
    }
    let found = decisions.processor(&id).await?;
    found
        .as_ref()
        .map(|p| Json(ProcessorView::from(p)))
        .ok_or_else(|| not_found(&id))
}

// ---------------------------------------------------------------------------------------
// Consent receipts
// ---------------------------------------------------------------------------------------

/// A signed consent receipt, and what it says.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReceiptView {
    /// The receipt: a compact JWS (EdDSA, `typ` `idledger-consent-receipt+jwt`), verifiable
    /// offline with `/.well-known/jwks.json` or `idledger receipt verify`.
    pub receipt: String,
    /// Its claims, as signed.
    #[schema(value_type = Object)]
    pub claims: idledger_domain::receipt::ReceiptClaims,
}

/// The receipt of the customer's consent for a purpose, as it stands: granted or withdrawn
/// (roles `source` — one that may read `consent.<purpose>`, the read logged —, `steward`,
/// `auditor`).
#[utoipa::path(
    get, path = "/v1/customers/{customer_id}/consents/{purpose}/receipt", tag = "decisions",
    params(("customer_id" = uuid::Uuid, Path), ("purpose" = String, Path)),
    responses(
        (status = 200, body = ReceiptView),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "forbidden_role, not_readable", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "not_found, invalid_customer_id, invalid_purpose, no_consent", body = Problem, content_type = "application/problem+json"),
        (status = 410, description = "erased", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn consent_receipt(
    State(state): State<AppState>,
    Authorized(caller, ..): Authorized<crate::auth::Readers>,
    PathParams(params): PathParams,
) -> Result<Json<ReceiptView>, ApiError> {
    let customer = crate::routes::customer_param(&params)?;
    let raw = params
        .get("purpose")
        .map(String::as_str)
        .unwrap_or_default();
    let purpose = Purpose::parse(raw).map_err(|e| {
        ApiError::not_found(
            "invalid_purpose",
            format!("'{}' is not a purpose: {e}", truncate(raw, 64)),
        )
    })?;
    let reader = caller.reader()?;
    let claims = state
        .app
        .consent_receipt(&reader, customer, &purpose, &state.feed_settings.source)
        .await?;
    let receipt = state
        .signer
        .sign(idledger_domain::receipt::RECEIPT_TYP, &claims)
        .await?;
    Ok(Json(ReceiptView { receipt, claims }))
}
