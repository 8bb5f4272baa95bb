//! The `/v1` handlers. Each checks the caller's role before reading its body, turns the
//! request into a domain command or a read, and answers with a view or a problem.

use std::collections::HashMap;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use idledger_domain::command::{Change, Command, Principal, Refusal};
use idledger_domain::decide::Outcome;
use idledger_domain::field::FieldPath;
use idledger_domain::ids::{CustomerId, SourceId};
use idledger_domain::lookup::{Identifier, LookupKind};
use idledger_store::delivery::MAX_PAGE;
use idledger_store::disclosures::DisclosureFilter;
use idledger_store::{Executed, Role, StoreError};

use crate::AppState;
use crate::auth::{Admins, Anyone, Auditors, Authorized, Readers, Sources, Writers};
use crate::delivery::{DEFAULT_HANDOFF_LIMIT, page_limit};
use crate::error::{ApiError, Problem};
use crate::extract::{JsonBody, PathParams, QueryParams, idempotency_key, if_match, truncate};
use crate::metrics;
use crate::views::{
    CommandResponse, CustomerMatchesView, DisclosurePageView, ErasureView, EventView, HistoryView,
    RecordView, RestrictionView, WhoAmI,
};
use crate::wire::{self, CommandRequest, ErasureRequest, RegisterRequest, RestrictionRequest};

/// Register a customer (role `source`), optionally with first changes, atomically.
#[utoipa::path(
    post, path = "/v1/customers", tag = "commands",
    params(("Idempotency-Key" = String, Header, pattern = "^[!-~]{1,255}$", description = "Unique per intended command (1 to 255 visible ASCII characters, no spaces); a retry with the same key returns the first result")),
    request_body = RegisterRequest,
    responses(
        (status = 201, description = "Registered (or the replayed first result)", body = CommandResponse,
         headers(("Location" = String), ("ETag" = String))),
        (status = 400, description = "Malformed JSON, missing Idempotency-Key", body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "forbidden_role, source_mismatch, not_authoritative", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "already_registered, merged_into (the id is of a record merged into the one `merged_into` names), idempotency_conflict", body = Problem, content_type = "application/problem+json"),
        (status = 413, body = Problem, content_type = "application/problem+json"),
        (status = 415, body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "invalid_body, invalid_value, unknown_field, invalid_transition, guardian_required, invalid_command", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn register(
    State(state): State<AppState>,
    Authorized(caller, ..): Authorized<Sources>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<RegisterRequest>,
) -> Result<Response, ApiError> {
    let principal = caller.principal()?;
    check_claimed_source(&caller, body.source.as_deref())?;
    let key = idempotency_key(&headers)?;
    let customer = match body.customer_id {
        Some(id) => CustomerId::try_from(id).map_err(|e| {
            ApiError::unprocessable("invalid_value", e.to_string()).with("field", "customer_id")
        })?,
        // A retry without an id must land on the customer the first attempt minted.
        None => match state.ledger.idempotent_result(&principal, &key).await? {
            Some(first) => first.customer_id,
            None => CustomerId::generate(),
        },
    };
    let command = wire::command(
        customer,
        key,
        body.provenance,
        vec![Change::Register],
        body.changes,
        None,
    )
    .map_err(|r| record_refusal(r.into()))?;
    // Refusals count changes in the body, which does not hold the registration.
    let executed = match state.app.run_command(&principal, &command).await {
        Err(idledger_store::ExecuteError::Refused(mut refused)) => {
            refused.change_index = refused.change_index.and_then(|i| i.checked_sub(1));
            Err(idledger_store::ExecuteError::Refused(refused))
        }
        other => other,
    };
    let executed = match executed {
        Ok(executed) => {
            metrics::command(if executed.replayed {
                "replayed"
            } else {
                "applied"
            });
            executed
        }
        Err(e) => return Err(record_refusal(e.into())),
    };
    respond(&state, &command, executed, StatusCode::CREATED)
}

/// Send a command: one or more attribute changes, applied atomically (roles `source`,
/// `steward`).
#[utoipa::path(
    post, path = "/v1/customers/{customer_id}/commands", tag = "commands",
    params(
        ("customer_id" = uuid::Uuid, Path),
        ("Idempotency-Key" = String, Header, pattern = "^[!-~]{1,255}$", description = "Unique per intended command (1 to 255 visible ASCII characters, no spaces); a retry with the same key returns the first result"),
        ("If-Match" = Option<String>, Header, description = "The record's ETag (stream version); the command is refused with 412 if the record changed since"),
    ),
    request_body = CommandRequest,
    responses(
        (status = 200, description = "Applied (or the replayed first result)", body = CommandResponse, headers(("ETag" = String))),
        (status = 307, description = "merged_into: the record is merged into another; Location names the same request there", body = Problem, content_type = "application/problem+json"),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "forbidden_role, source_mismatch, not_authoritative (with system_of_record and proposal_ids), forbidden", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "not_registered, unknown_proposal, invalid_customer_id", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "version_conflict (a field's expected_version), idempotency_conflict", body = Problem, content_type = "application/problem+json"),
        (status = 410, description = "erased", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "version_conflict (If-Match)", body = Problem, content_type = "application/problem+json"),
        (status = 413, body = Problem, content_type = "application/problem+json"),
        (status = 415, body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "invalid_body, invalid_value, unknown_field, invalid_transition, expired_challenge, guardian_required, invalid_command", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "contention: retry", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn command(
    State(state): State<AppState>,
    Authorized(caller, ..): Authorized<Writers>,
    PathParams(params): PathParams,
    headers: HeaderMap,
    JsonBody(body): JsonBody<CommandRequest>,
) -> Result<Response, ApiError> {
    let customer = customer_param(&params)?;
    let principal = caller.principal()?;
    check_claimed_source(&caller, body.source.as_deref())?;
    let key = idempotency_key(&headers)?;
    let expected = if_match(&headers)?;
    let command = wire::command(
        customer,
        key,
        body.provenance,
        Vec::new(),
        body.changes,
        expected,
    )
    .map_err(|r| record_refusal(r.into()))?;
    let executed = execute(&state, &principal, &command).await?;
    respond(&state, &command, executed, StatusCode::OK)
}

async fn execute(
    state: &AppState,
    principal: &Principal,
    command: &Command,
) -> Result<Executed, ApiError> {
    counted(state.app.run_command(principal, command).await)
}

/// A command's answer counted in the commands metric: applied, replayed, or the refusal's
/// code.
fn counted(executed: Result<Executed, idledger_store::ExecuteError>) -> Result<Executed, ApiError> {
    match executed {
        Ok(executed) => {
            metrics::command(if executed.replayed {
                "replayed"
            } else {
                "applied"
            });
            Ok(executed)
        }
        Err(e) => Err(record_refusal(e.into())),
    }
}

pub(crate) fn record_refusal(error: ApiError) -> ApiError {
    metrics::command(error.code);
    error
}

/// The body may name a source only to agree with the token: a write whose source cannot be
/// proven never changes the record.
fn check_claimed_source(
    caller: &crate::auth::Caller,
    claimed: Option<&str>,
) -> Result<(), ApiError> {
    let Some(claimed) = claimed else {
        return Ok(());
    };
    let own = match caller.token.role {
        Role::Steward => idledger_domain::policy::STEWARD_SOURCE,
        _ => caller.subject().unwrap_or_default(),
    };
    if claimed == own {
        return Ok(());
    }
    Err(record_refusal(
        ApiError::forbidden(
            "source_mismatch",
            format!(
                "the body claims source '{}' but the token speaks for '{own}'; the source comes from the token",
                truncate(claimed, 64)
            ),
        )
        .with("token_source", own),
    ))
}

/// The command's response; a non-authoritative set that was turned into a proposal is a 403
/// `not_authoritative` naming the system of record and the proposal recorded.
fn respond(
    state: &AppState,
    command: &Command,
    executed: Executed,
    status: StatusCode,
) -> Result<Response, ApiError> {
    let written = |i: usize| {
        matches!(
            command.changes.get(i),
            Some(
                Change::SetField { .. } | Change::ClearField { .. } | Change::RequestChange { .. }
            )
        )
    };
    if let Some(refused) = proposed(state, &executed, written) {
        return Ok(refused);
    }
    let Executed {
        result, replayed, ..
    } = executed;
    let etag = etag(result.stream_version);
    let customer = result.customer_id;
    let body = CommandResponse::new(result, replayed, |c| state.ledger.challenge_secret(c));
    let mut response = (status, Json(body)).into_response();
    let headers = response.headers_mut();
    headers.insert(header::ETAG, etag);
    if status == StatusCode::CREATED
        && let Ok(location) = HeaderValue::from_str(&format!("/v1/customers/{customer}"))
    {
        headers.insert(header::LOCATION, location);
    }
    if replayed {
        headers.insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(response)
}

/// The answer to a command whose write was recorded as a proposal (the writer may only
/// propose the field): 403 `not_authoritative` naming the system of record and the proposals,
/// with the command's result. `written(i)`: whether the command's change `i` was a write (an
/// explicit `propose_value` is answered as applied). `None` when no write became a proposal.
pub(crate) fn proposed(
    state: &AppState,
    executed: &Executed,
    written: impl Fn(usize) -> bool,
) -> Option<Response> {
    let Executed {
        result, replayed, ..
    } = executed;
    let proposals: Vec<_> = result
        .outcomes
        .iter()
        .enumerate()
        .filter_map(|(i, outcome)| match outcome {
            Outcome::Proposed {
                field,
                proposal_id,
                system_of_record,
            } if written(i) => Some((field.clone(), *proposal_id, system_of_record.clone())),
            _ => None,
        })
        .collect();
    let (field, proposal_id, system_of_record) = proposals.first()?;
    let body = CommandResponse::new(result.clone(), *replayed, |c| {
        state.ledger.challenge_secret(c)
    });
    let detail = format!(
        "this source may not change {field}; its system of record is '{system_of_record}'. The value was recorded as proposal {proposal_id} for the system of record or a steward to review"
    );
    let ids: Vec<_> = proposals.iter().map(|(_, id, _)| id).collect();
    let mut response = ApiError::forbidden("not_authoritative", detail)
        .with("field", field)
        .with("system_of_record", system_of_record)
        .with("proposal_id", proposal_id)
        .with("proposal_ids", ids)
        .with("result", &body)
        .into_response();
    response
        .headers_mut()
        .insert(header::ETAG, etag(result.stream_version));
    if *replayed {
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Some(response)
}

pub(crate) fn etag(version: u64) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{version}\"")).unwrap_or(HeaderValue::from_static("\"0\""))
}

pub(crate) fn customer_param(params: &HashMap<String, String>) -> Result<CustomerId, ApiError> {
    let raw = params
        .get("customer_id")
        .map(String::as_str)
        .unwrap_or_default();
    uuid::Uuid::parse_str(raw)
        .ok()
        .and_then(|u| CustomerId::try_from(u).ok())
        .ok_or_else(|| {
            ApiError::not_found(
                "invalid_customer_id",
                format!("'{}' is not a customer id (a UUIDv7)", truncate(raw, 64)),
            )
        })
}

#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct RecordQuery {
    /// Show the record as it stood at this instant (RFC 3339), folded from the log.
    pub as_of: Option<String>,
}

/// Read the golden record, now or as of an instant (roles `source`, `steward`, `auditor`).
#[utoipa::path(
    get, path = "/v1/customers/{customer_id}", tag = "records",
    params(("customer_id" = uuid::Uuid, Path), RecordQuery),
    responses(
        (status = 200, body = RecordView, headers(("ETag" = String))),
        (status = 307, description = "merged_into: the record is merged into another; Location names the same request there", body = Problem, content_type = "application/problem+json"),
        (status = 400, description = "invalid_query", body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "not_found, invalid_customer_id", body = Problem, content_type = "application/problem+json"),
        (status = 410, description = "erased", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn record(
    State(state): State<AppState>,
    Authorized(caller, ..): Authorized<Readers>,
    PathParams(params): PathParams,
    QueryParams(query): QueryParams<RecordQuery>,
) -> Result<Response, ApiError> {
    let customer = customer_param(&params)?;
    let as_of = query.as_of.as_deref().map(parse_instant).transpose()?;
    let read = state
        .app
        .read_record(&caller.reader()?, customer, as_of)
        .await?;
    let mut response = Json(RecordView::of(&read, state.ledger.policy())).into_response();
    response
        .headers_mut()
        .insert(header::ETAG, etag(read.state.stream_version));
    Ok(response)
}

#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct LookupQuery {
    /// An email address, found however it is cased or padded (the record keeps it lowercase).
    pub email: Option<String>,
    /// A phone number with its country code, in any usual notation (`+44 20 7946 0958`,
    /// `0044 (0)20…`): compared in E.164.
    pub phone: Option<String>,
    /// `<system>:<id>`: the value of the field `external_id.<system>`, compared exactly.
    pub external_id: Option<String>,
    /// The full name, given then family name: compared whole, after Unicode NFC, case
    /// folding and whitespace collapsing.
    pub name: Option<String>,
    /// A household id: its members (the value of their `household` field names it).
    pub household: Option<String>,
}

impl LookupQuery {
    /// The one identifier asked for. Refusals name the parameter, never its value.
    fn identifier(self) -> Result<Identifier, ApiError> {
        let given: Vec<(LookupKind, String)> = [
            (LookupKind::Email, self.email),
            (LookupKind::Phone, self.phone),
            (LookupKind::ExternalId, self.external_id),
            (LookupKind::Name, self.name),
            (LookupKind::Household, self.household),
        ]
        .into_iter()
        .filter_map(|(kind, value)| value.map(|v| (kind, v)))
        .collect();
        let [(kind, raw)] = given.as_slice() else {
            return Err(ApiError::bad_request(
                "invalid_query",
                "give exactly one of email, phone, external_id, name, household",
            ));
        };
        Identifier::parse(*kind, raw).map_err(|_| {
            ApiError::unprocessable(
                "invalid_value",
                format!("{kind} must be {}", kind.expected()),
            )
            .with("parameter", kind.as_str())
        })
    }
}

/// Find customers by an identifier (roles `source`, `steward`, `auditor`): exactly one of
/// `email`, `phone`, `external_id` (`<system>:<id>`), `name` (the full name) or `household`
/// (a household id: its members). Answers the ids of every customer whose current value
/// matches — several when an identifier is shared (a household's phone) — in id order, at
/// most 100. Pending changes and proposals are not
/// found, nor is an erased customer. A source may look up only by fields it may read, and
/// each customer it finds is logged as a disclosure of those fields. Looked up through a
/// blind index (keyed digests of the normalised values), never a plaintext index.
#[utoipa::path(
    get, path = "/v1/customers", tag = "records",
    params(LookupQuery),
    responses(
        (status = 200, body = CustomerMatchesView),
        (status = 400, description = "invalid_query: none or more than one identifier, an unknown parameter", body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "forbidden_role, out_of_scope, not_readable (the source may not read the field)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "invalid_value, naming the parameter (never its value)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn find(
    State(state): State<AppState>,
    Authorized(caller, ..): Authorized<Readers>,
    QueryParams(query): QueryParams<LookupQuery>,
) -> Result<Json<CustomerMatchesView>, ApiError> {
    let identifier = query.identifier()?;
    let matches = state
        .app
        .find_customers(&caller.reader()?, &identifier)
        .await?;
    Ok(Json(CustomerMatchesView::from(matches)))
}

fn parse_instant(raw: &str) -> Result<DateTime<Utc>, ApiError> {
    DateTime::parse_from_rfc3339(raw)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| {
            ApiError::bad_request(
                "invalid_query",
                format!("as_of must be an RFC 3339 instant such as 2026-01-31T12:00:00Z: {e}"),
            )
        })
}

/// One field's history with full provenance, oldest first (roles `steward`, `auditor`).
/// Consents are fields too: `consent.<purpose>`.
#[utoipa::path(
    get, path = "/v1/customers/{customer_id}/fields/{field}/history", tag = "records",
    params(("customer_id" = uuid::Uuid, Path), ("field" = String, Path, description = "e.g. email, name.given, consent.marketing")),
    responses(
        (status = 200, body = HistoryView),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "not_found, unknown_field, invalid_customer_id", body = Problem, content_type = "application/problem+json"),
        (status = 410, description = "erased", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn history(
    State(state): State<AppState>,
    Authorized(caller, ..): Authorized<Readers>,
    PathParams(params): PathParams,
) -> Result<Json<HistoryView>, ApiError> {
    let customer = customer_param(&params)?;
    let raw = params.get("field").map(String::as_str).unwrap_or_default();
    let field = FieldPath::parse(raw).map_err(|e| {
        let refusal: Refusal = e.into();
        ApiError::not_found("unknown_field", refusal.to_string())
    })?;
    let events = state
        .app
        .read_history(&caller.reader()?, customer, &field)
        .await?;
    Ok(Json(HistoryView {
        customer_id: customer,
        field,
        events: events.into_iter().map(EventView::new).collect(),
    }))
}

#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DisclosureQuery {
    /// The previous page's `next_after` (a disclosure `seq`). Default: from the first.
    #[serde(default, deserialize_with = "crate::extract::position")]
    pub after: Option<u64>,
    /// Rows per page (1..=1000, default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

/// Which source systems read which fields of a customer's record, and when, oldest first
/// (roles `steward`, `auditor`). Field names only; kept after the customer's erasure.
#[utoipa::path(
    get, path = "/v1/customers/{customer_id}/disclosures", tag = "records",
    params(("customer_id" = uuid::Uuid, Path), DisclosureQuery),
    responses(
        (status = 200, body = DisclosurePageView),
        (status = 400, description = "invalid_query", body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "not_found, invalid_customer_id", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn customer_disclosures(
    State(state): State<AppState>,
    Authorized(..): Authorized<Auditors>,
    PathParams(params): PathParams,
    QueryParams(query): QueryParams<DisclosureQuery>,
) -> Result<Json<DisclosurePageView>, ApiError> {
    let customer = customer_param(&params)?;
    let limit = page_limit(query.limit, DEFAULT_HANDOFF_LIMIT, MAX_PAGE)?;
    if state.ledger.state(customer).await?.is_none() {
        return Err(ApiError::not_found(
            "not_found",
            format!("no customer {customer}"),
        ));
    }
    let page = state
        .app
        .disclosures()
        .list(&DisclosureFilter::Customer(customer), query.after, limit)
        .await?;
    Ok(Json(page.into()))
}

/// What one source system read, oldest first (roles `steward`, `auditor`).
#[utoipa::path(
    get, path = "/v1/sources/{source_id}/disclosures", tag = "records",
    params(("source_id" = String, Path), DisclosureQuery),
    responses(
        (status = 200, body = DisclosurePageView),
        (status = 400, description = "invalid_query", body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "invalid_source_id", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn source_disclosures(
    State(state): State<AppState>,
    Authorized(..): Authorized<Auditors>,
    PathParams(params): PathParams,
    QueryParams(query): QueryParams<DisclosureQuery>,
) -> Result<Json<DisclosurePageView>, ApiError> {
    let raw = params
        .get("source_id")
        .map(String::as_str)
        .unwrap_or_default();
    let source = SourceId::parse(raw).map_err(|e| {
        ApiError::not_found(
            "invalid_source_id",
            format!("'{}' is not a source id: {e}", truncate(raw, 64)),
        )
    })?;
    let limit = page_limit(query.limit, DEFAULT_HANDOFF_LIMIT, MAX_PAGE)?;
    let page = state
        .app
        .disclosures()
        .list(&DisclosureFilter::Source(source), query.after, limit)
        .await?;
    Ok(Json(page.into()))
}

/// Who the token belongs to (any role).
#[utoipa::path(
    get, path = "/v1/me", tag = "meta",
    responses((status = 200, body = WhoAmI), (status = 401, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = []))
)]
pub async fn me(Authorized(caller, ..): Authorized<Anyone>) -> Json<WhoAmI> {
    Json(WhoAmI {
        token_id: caller.token.id,
        role: caller.token.role.to_string(),
        subject: caller.token.subject.clone(),
        label: caller.token.label.clone(),
        scopes: caller
            .token
            .scopes
            .as_ref()
            .map(|s| s.iter().map(|s| s.as_str().to_owned()).collect()),
    })
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "meta", responses((status = 200, description = "alive")))]
pub async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

/// Readiness: the store answers.
#[utoipa::path(get, path = "/readyz", tag = "meta", responses(
    (status = 200, description = "the store is reachable"),
    (status = 503, description = "the store is not reachable", body = Problem, content_type = "application/problem+json")))]
pub async fn readyz(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    // Bounded even if the network hangs rather than refuses: a probe must answer fast.
    let head = tokio::time::timeout(READYZ_TIMEOUT, state.ledger.head_position())
        .await
        .unwrap_or_else(|_| Err(StoreError::Unavailable("no answer in time".to_owned())));
    match head {
        Ok(head) => Ok(Json(
            serde_json::json!({"status": "ready", "head_position": head}),
        )),
        Err(e) => Err(ApiError::store_unavailable(&e)),
    }
}

/// The longest `/readyz` waits for the store.
const READYZ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// Prometheus metrics (text exposition format).
#[utoipa::path(get, path = "/metrics", tag = "meta", responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
pub async fn prometheus() -> Response {
    let body = crate::metrics::handle()
        .map(|h| h.render())
        .unwrap_or_default();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

/// This document.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "meta", responses((status = 200, description = "OpenAPI 3.1 document")))]
pub async fn openapi() -> Json<serde_json::Value> {
    Json(crate::openapi::document_json())
}

/// Any path or method the API does not have.
pub async fn fallback() -> ApiError {
    ApiError::not_found("no_route", "no such route; see /v1/openapi.json")
}

/// A route that exists, called with a method it does not take.
pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not take that method; see /v1/openapi.json",
    )
}

/// Restrict the processing of a customer's data, or lift the restriction (GDPR Art. 18; role
/// `admin`). While restricted the record is kept and still takes commands, but nothing of it
/// is delivered: consumers that were receiving it get a restriction notice, and a resume
/// notice when it is lifted. Recorded as an event (source `admin`); the same state again
/// records nothing.
#[utoipa::path(
    post, path = "/v1/customers/{customer_id}/restriction", tag = "commands",
    params(("customer_id" = uuid::Uuid, Path)),
    request_body = RestrictionRequest,
    responses(
        (status = 200, body = RestrictionView),
        (status = 307, description = "merged_into: the record is merged into another; Location names the same request there", body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "not_registered, invalid_customer_id", body = Problem, content_type = "application/problem+json"),
        (status = 410, description = "erased", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "invalid_body, invalid_value (reason)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn restrict(
    State(state): State<AppState>,
    Authorized(..): Authorized<Admins>,
    PathParams(params): PathParams,
    JsonBody(body): JsonBody<RestrictionRequest>,
) -> Result<Json<RestrictionView>, ApiError> {
    let customer = customer_param(&params)?;
    let executed = state
        .app
        .restrict(customer, body.actor, &body.reason, body.restricted)
        .await
        .map_err(|e| record_refusal(e.into()))?;
    let changed = matches!(
        executed.result.outcomes.as_slice(),
        [Outcome::Restriction { changed: true, .. }]
    );
    metrics::command(if changed { "applied" } else { "unchanged" });
    Ok(Json(RestrictionView {
        customer_id: customer,
        restricted: body.restricted,
        changed,
        stream_version: executed.result.stream_version,
    }))
}

/// Erase a customer (right to erasure; role `admin`): their data key is destroyed, so every
/// earlier event becomes unreadable; the record answers 410 from then on. The erasure itself
/// is an event (source `admin`) that stays readable.
#[utoipa::path(
    post, path = "/v1/customers/{customer_id}/erasure", tag = "commands",
    params(("customer_id" = uuid::Uuid, Path)),
    request_body = ErasureRequest,
    responses(
        (status = 200, body = ErasureView),
        (status = 307, description = "merged_into: the record is merged into another; Location names the same request there", body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "not_registered, invalid_customer_id", body = Problem, content_type = "application/problem+json"),
        (status = 410, description = "erased (already)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "invalid_body, invalid_value (reason)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn erase(
    State(state): State<AppState>,
    Authorized(..): Authorized<Admins>,
    PathParams(params): PathParams,
    JsonBody(body): JsonBody<ErasureRequest>,
) -> Result<Json<ErasureView>, ApiError> {
    let customer = customer_param(&params)?;
    let erasure = state
        .app
        .erase(customer, body.actor, &body.reason)
        .await
        .map_err(|e| record_refusal(e.into()))?;
    metrics::command("erased");
    Ok(Json(ErasureView {
        customer_id: customer,
        erased_at: erasure.at,
        source: erasure.source.to_string(),
        reason: erasure.reason,
    }))
}
