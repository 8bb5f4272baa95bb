//! The steward's JSON API: sync exceptions (list, read, act on one or many) and
//! reconciliation runs (start, read with their report or its readable summary, findings, and
//! snapshot uploads).

use std::collections::HashMap;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::TryStreamExt;
use idledger_app::stewardship::MAX_BULK;
use idledger_app::{ExceptionQuery, QueryError};
use idledger_domain::ids::CustomerId;
use idledger_reconcile::{ReconcileError, SnapshotFormat};
use idledger_store::Role;
use idledger_store::delivery::ConsumerId;
use idledger_store::runs::{Run, RunKind};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::AppState;
use crate::auth::{Authorized, Overseers, Reconcilers, Stewards, Uploaders};
use crate::error::ApiError;
use crate::extract::{JsonBody, PathParams, QueryParams};
use crate::steward::{self, ActionRequest, ActionResult};
use crate::views::{ExceptionPageView, ExceptionView, FindingView, RunView};

/// A query parameter's value; empty counts as absent.
pub(crate) fn param<'a>(params: &'a HashMap<String, String>, name: &str) -> Option<&'a str> {
    params
        .get(name)
        .map(String::as_str)
        .filter(|v| !v.is_empty())
}

/// A query parameter that does not parse: 400 `invalid_query` naming it (every query of the
/// API answers a bad parameter this way).
pub fn bad_query(e: &QueryError) -> ApiError {
    ApiError::bad_request("invalid_query", e.to_string()).with("parameter", e.parameter)
}

pub(crate) fn bad_param(name: &'static str, detail: impl std::fmt::Display) -> ApiError {
    bad_query(&QueryError {
        parameter: name,
        message: detail.to_string(),
    })
}

/// `limit`, 1 to 1000; absent: `default`. Present but empty is not a number: refused, as the
/// OpenAPI document's integer says.
pub(crate) fn limit_of(params: &HashMap<String, String>, default: u32) -> Result<u32, ApiError> {
    match params.get("limit").map(String::as_str) {
        None => Ok(default),
        Some(raw) => raw
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=1000).contains(n))
            .ok_or_else(|| bad_param("limit", "must be 1 to 1000")),
    }
}

/// List sync exceptions, oldest first (roles `steward`, `auditor`, `admin`). Filters:
/// `consumer`, `customer`, `kind`, `field`, `status` (`open` by default, or `resolved`,
/// `dismissed`, `all`), `older_than` (`90m`, `4h`, `2d`) or `older_than_secs`; paging with
/// `after` and `limit`.
#[utoipa::path(
    get, path = "/v1/exceptions", tag = "stewardship",
    params(
        ("consumer" = Option<String>, Query), ("customer" = Option<String>, Query),
        ("kind" = Option<String>, Query), ("field" = Option<String>, Query),
        ("status" = Option<String>, Query), ("older_than" = Option<String>, Query),
        ("older_than_secs" = Option<i64>, Query, minimum = 0, maximum = 315_360_000),
        ("after" = Option<String>, Query), ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000),
    ),
    responses(
        (status = 200, body = ExceptionPageView),
        (status = 400, description = "invalid_query (with `parameter`)", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 401, body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 403, body = crate::error::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn list_exceptions(
    State(state): State<AppState>,
    Authorized(caller, ..): Authorized<Overseers>,
    QueryParams(params): QueryParams<Vec<(String, String)>>,
) -> Result<Json<ExceptionPageView>, ApiError> {
    let query = ExceptionQuery::parse(params.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .map_err(|errors| {
            errors.first().map_or_else(
                || ApiError::bad_request("invalid_query", "bad query"),
                bad_query,
            )
        })?;
    let me = (caller.token.role == Role::Steward)
        .then(|| steward::steward_of(&caller.token))
        .transpose()?;
    let page = state
        .app
        .exceptions(&query, me.as_ref())
        .await
        .map_err(|e| match e {
            idledger_app::ListError::Query(e) => bad_query(&e),
            idledger_app::ListError::Store(e) => e.into(),
        })?;
    Ok(Json(ExceptionPageView {
        exceptions: page
            .exceptions
            .into_iter()
            .map(ExceptionView::from)
            .collect(),
        next_after: page.next_after,
    }))
}

/// A path's id: 400 `invalid_id` naming what it is unless it is a UUID.
pub(crate) fn id_param(
    params: &HashMap<String, String>,
    name: &str,
    what: &str,
) -> Result<Uuid, ApiError> {
    params
        .get(name)
        .and_then(|raw| raw.parse::<Uuid>().ok())
        .ok_or_else(|| ApiError::bad_request("invalid_id", format!("{what} is not a UUID")))
}

/// One sync exception with its evidence and lifecycle (roles `steward`, `auditor`, `admin`).
#[utoipa::path(
    get, path = "/v1/exceptions/{exception_id}", tag = "stewardship",
    params(("exception_id" = uuid::Uuid, Path)),
    responses(
        (status = 200, body = ExceptionView),
        (status = 404, description = "unknown_exception", body = crate::error::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn get_exception(
    State(state): State<AppState>,
    Authorized(..): Authorized<Overseers>,
    PathParams(params): PathParams,
) -> Result<Json<ExceptionView>, ApiError> {
    let id = id_param(&params, "exception_id", "the exception id")?;
    state
        .app
        .exception(id)
        .await?
        .map(|e| Json(ExceptionView::from(e)))
        .ok_or_else(|| steward::unknown_exception(id))
}

/// Act on one exception (role `steward`): `repush` the record's value to the consumer (the
/// exception closes itself when the consumer acknowledges it), `accept` a proposal or the
/// consumer's value into the record (where the policy allows steward override), or `dismiss`
/// it with a reason. Every action is an event in the field's history.
#[utoipa::path(
    post, path = "/v1/exceptions/{exception_id}/actions", tag = "stewardship",
    params(("exception_id" = uuid::Uuid, Path)),
    request_body = ActionRequest,
    responses(
        (status = 200, body = ActionResult),
        (status = 202, description = "four eyes: the change waits for a second steward's approval (`approval`)", body = ActionResult),
        (status = 403, description = "forbidden (e.g. the policy forbids steward override), forbidden_role", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "unknown_exception", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "exception_closed, approval_pending, merged_into (the exception's customer is merged into the record `merged_into` names; no redirect, as the URL names the exception)", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 410, description = "erased", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 422, description = "invalid_body, invalid_value, value_required, not_a_consumer, no_field, no_proposal, invalid_transition", body = crate::error::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn act_on_exception(
    State(state): State<AppState>,
    Authorized(caller, ..): Authorized<Stewards>,
    PathParams(params): PathParams,
    JsonBody(body): JsonBody<ActionRequest>,
) -> Result<(StatusCode, Json<ActionResult>), ApiError> {
    let id = id_param(&params, "exception_id", "the exception id")?;
    let result = steward::act(&state, &caller.token, id, &body).await?;
    let status = if result.approval.is_some() {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(result)))
}

/// The ids and the action, side by side in one object. Its members are spelled out rather
/// than a flattened `ActionRequest`: flattening made the OpenAPI schema an `allOf` of two
/// closed objects (each forbidding the other's members), which no body satisfies, and serde
/// does not support `deny_unknown_fields` with `flatten`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkActionRequest {
    /// 1 to 500 exception ids.
    #[schema(value_type = Vec<String>, format = Uuid, min_items = 1, max_items = 500)]
    pub exception_ids: Vec<Uuid>,
    /// The action taken on each.
    #[schema(value_type = crate::steward::ActionName)]
    pub action: idledger_domain::event::StewardAction,
    /// Why (required to dismiss).
    #[serde(default)]
    pub reason: Option<String>,
    /// For `accept` of a consumer's value: the value to take into the record.
    #[serde(default)]
    pub value: Option<serde_json::Value>,
}

impl BulkActionRequest {
    /// The action every id gets.
    pub fn action(&self) -> ActionRequest {
        ActionRequest {
            action: self.action,
            reason: self.reason.clone(),
            value: self.value.clone(),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BulkItem {
    #[schema(value_type = String)]
    pub exception_id: Uuid,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<ActionResult>,
    /// The problem's code and detail when it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BulkResult {
    pub succeeded: usize,
    pub failed: usize,
    pub items: Vec<BulkItem>,
}

/// The same action on many exceptions (role `steward`); each succeeds or fails on its own.
pub async fn bulk(
    state: &AppState,
    token: &idledger_store::TokenRecord,
    ids: &[Uuid],
    action: &ActionRequest,
) -> Result<BulkResult, ApiError> {
    let items: Vec<BulkItem> = steward::act_on_many(state, token, ids, action)
        .await?
        .into_iter()
        .map(|(id, done)| match done {
            Ok(result) => BulkItem {
                exception_id: id,
                ok: true,
                result: Some(result),
                code: None,
                detail: None,
            },
            Err(e) => BulkItem {
                exception_id: id,
                ok: false,
                result: None,
                code: Some(e.code),
                detail: Some(e.detail),
            },
        })
        .collect();
    let succeeded = items.iter().filter(|i| i.ok).count();
    Ok(BulkResult {
        succeeded,
        failed: items.len() - succeeded,
        items,
    })
}

/// Act on many exceptions at once (role `steward`); each item reports its own outcome.
#[utoipa::path(
    post, path = "/v1/exceptions/actions", tag = "stewardship",
    request_body = BulkActionRequest,
    responses(
        (status = 200, body = BulkResult),
        (status = 422, description = "invalid_body, too_many", body = crate::error::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn act_in_bulk(
    State(state): State<AppState>,
    Authorized(caller, ..): Authorized<Stewards>,
    JsonBody(body): JsonBody<BulkActionRequest>,
) -> Result<Json<BulkResult>, ApiError> {
    if body.exception_ids.is_empty() || body.exception_ids.len() > MAX_BULK {
        return Err(ApiError::unprocessable(
            "too_many",
            format!("give 1 to {MAX_BULK} exception ids"),
        ));
    }
    Ok(Json(
        bulk(&state, &caller.token, &body.exception_ids, &body.action()).await?,
    ))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReconcileRequest {
    /// The consumer to reconcile; absent: every enabled consumer.
    #[serde(default)]
    pub consumer_id: Option<String>,
}

/// Start a reconciliation run over what consumers acknowledged (roles `steward`, `admin`).
/// It runs in the background: poll `Location` until `status` is `finished` or `failed`.
#[utoipa::path(
    post, path = "/v1/reconciliations", tag = "stewardship",
    request_body = ReconcileRequest,
    responses(
        (status = 202, description = "Started", body = RunView, headers(("Location" = String))),
        (status = 404, description = "unknown_consumer", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "run_in_progress: a run of this consumer (or over every consumer) is going on", body = crate::error::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn start_reconciliation(
    State(state): State<AppState>,
    Authorized(caller, ..): Authorized<Reconcilers>,
    JsonBody(body): JsonBody<ReconcileRequest>,
) -> Result<Response, ApiError> {
    let consumer = body
        .consumer_id
        .as_deref()
        .map(ConsumerId::parse)
        .transpose()
        .map_err(|e| {
            ApiError::unprocessable("invalid_value", e.to_string()).with("field", "consumer_id")
        })?;
    let by = format!("{}:{}", caller.token.role, caller.token.label);
    let run = state
        .reconciler
        .start(RunKind::Acks, consumer, "api", &by)
        .await
        .map_err(reconcile_error)?;
    let reconciler = state.reconciler.clone();
    let started = run.clone();
    tokio::spawn(async move {
        let id = started.id;
        if let Err(e) = reconciler.run_acks(started, &|_| {}).await {
            tracing::error!(run = %id, error = %e, "reconciliation run failed");
        }
    });
    Ok(run_response(StatusCode::ACCEPTED, &run))
}

fn run_response(status: StatusCode, run: &Run) -> Response {
    let mut response = (status, Json(RunView::from(run.clone()))).into_response();
    if let Ok(location) = HeaderValue::from_str(&format!("/v1/reconciliations/{}", run.id)) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

/// What `Retry-After` suggests when a run of the same consumer is going on.
const RUN_RETRY_AFTER_SECS: u32 = 30;

/// 413 `payload_too_large` for a snapshot over `max` bytes.
fn upload_too_large(max: u64) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!("a snapshot upload may be at most {max} bytes; split the consumer's export"),
    )
    .with("max_bytes", max)
}

pub(crate) fn reconcile_error(e: ReconcileError) -> ApiError {
    match e {
        ReconcileError::Store(e) => e.into(),
        ReconcileError::UnknownConsumer(id) => ApiError::not_found(
            "unknown_consumer",
            format!("no consumer '{id}' is registered"),
        ),
        ReconcileError::Snapshot(e) => ApiError::unprocessable("invalid_snapshot", e.to_string()),
        ReconcileError::Aborted(reason) => {
            ApiError::unprocessable("invalid_snapshot", format!("the upload stopped: {reason}"))
        }
        ReconcileError::Busy(consumer) => {
            let detail = ReconcileError::Busy(consumer.clone()).to_string();
            ApiError::new(StatusCode::CONFLICT, "run_in_progress", detail)
                .with("consumer_id", consumer)
                .retry_after(RUN_RETRY_AFTER_SECS)
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RunPage {
    pub runs: Vec<RunView>,
}

/// Recent reconciliation runs, newest first (roles `steward`, `auditor`, `admin`).
#[utoipa::path(
    get, path = "/v1/reconciliations", tag = "stewardship",
    params(("limit" = Option<u32>, Query, minimum = 1, maximum = 1000)),
    responses((status = 200, body = RunPage)),
    security(("bearer" = []))
)]
pub async fn list_reconciliations(
    State(state): State<AppState>,
    Authorized(..): Authorized<Overseers>,
    QueryParams(params): QueryParams<HashMap<String, String>>,
) -> Result<Json<RunPage>, ApiError> {
    let limit = limit_of(&params, 20)?;
    let runs = state
        .reconciler
        .runs()
        .list(None, limit)
        .await
        .map_err(ApiError::from)?;
    Ok(Json(RunPage {
        runs: runs.into_iter().map(RunView::from).collect(),
    }))
}

/// One run with its report (roles `steward`, `auditor`, `admin`); `Accept: text/plain` (or
/// `?format=text`) gives the readable summary instead.
#[utoipa::path(
    get, path = "/v1/reconciliations/{run_id}", tag = "stewardship",
    params(("run_id" = uuid::Uuid, Path), ("format" = Option<String>, Query, description = "`text` for the readable summary")),
    responses(
        (status = 200, body = RunView),
        (status = 404, description = "unknown_run", body = crate::error::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn get_reconciliation(
    State(state): State<AppState>,
    Authorized(..): Authorized<Overseers>,
    PathParams(path): PathParams,
    QueryParams(params): QueryParams<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let run = run_of(&state, &path).await?;
    let wants_text = param(&params, "format") == Some("text")
        || headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/plain"));
    if wants_text {
        return Ok((
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            idledger_reconcile::summary(&run),
        )
            .into_response());
    }
    Ok(Json(RunView::from(run)).into_response())
}

async fn run_of(state: &AppState, path: &HashMap<String, String>) -> Result<Run, ApiError> {
    let id = id_param(path, "run_id", "the run id")?;
    state
        .reconciler
        .runs()
        .get(id)
        .await
        .map_err(ApiError::from)?
        .ok_or_else(|| ApiError::not_found("unknown_run", format!("no reconciliation run {id}")))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FindingPage {
    pub findings: Vec<FindingView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_after: Option<u64>,
}

/// A run's findings in order — a snapshot run's full diff (roles `steward`, `auditor`,
/// `admin`); paging with `after` (a `seq`) and `limit`.
#[utoipa::path(
    get, path = "/v1/reconciliations/{run_id}/findings", tag = "stewardship",
    params(("run_id" = uuid::Uuid, Path), ("after" = Option<u64>, Query), ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000)),
    responses(
        (status = 200, body = FindingPage),
        (status = 404, description = "unknown_run", body = crate::error::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn list_findings(
    State(state): State<AppState>,
    Authorized(..): Authorized<Overseers>,
    PathParams(path): PathParams,
    QueryParams(params): QueryParams<HashMap<String, String>>,
) -> Result<Json<FindingPage>, ApiError> {
    let run = run_of(&state, &path).await?;
    let after = match param(&params, "after") {
        None => 0,
        Some(raw) => raw
            .parse::<u64>()
            .ok()
            .filter(|n| i64::try_from(*n).is_ok())
            .ok_or_else(|| bad_param("after", "not a finding seq"))?,
    };
    let limit = limit_of(&params, 100)?;
    let findings = state
        .reconciler
        .runs()
        .findings(run.id, after, limit)
        .await
        .map_err(ApiError::from)?;
    let next_after = (findings.len() == limit as usize)
        .then(|| findings.last().map(|f| f.seq))
        .flatten();
    Ok(Json(FindingPage {
        findings: findings.into_iter().map(FindingView::from).collect(),
        next_after,
    }))
}

/// Upload what a consumer holds — NDJSON (`application/x-ndjson`) or CSV (`text/csv`) rows of
/// `customer_id`, `field` and `value` or `value_hash` — and get the full diff against the
/// record (roles `steward`, `admin`, or the consumer itself). The upload is streamed and
/// compared in pages; the answer is the finished run, its findings under `…/findings`.
#[utoipa::path(
    post, path = "/v1/consumers/{consumer_id}/snapshots", tag = "stewardship",
    params(("consumer_id" = String, Path)),
    request_body(content = String, content_type = "application/x-ndjson", description = "or text/csv"),
    responses(
        (status = 201, description = "Compared", body = RunView, headers(("Location" = String))),
        (status = 404, description = "unknown_consumer", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "run_in_progress: a run of this consumer is going on", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 413, description = "payload_too_large (with `max_bytes`)", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 415, description = "unsupported_media_type", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 422, description = "invalid_snapshot", body = crate::error::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn upload_snapshot(
    State(state): State<AppState>,
    Authorized(caller, ..): Authorized<Uploaders>,
    PathParams(path): PathParams,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let raw = path
        .get("consumer_id")
        .map(String::as_str)
        .unwrap_or_default();
    let consumer =
        ConsumerId::parse(raw).map_err(|e| ApiError::bad_request("invalid_id", e.to_string()))?;
    caller.act_for(&consumer)?;
    let format = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(SnapshotFormat::parse)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the snapshot as application/x-ndjson or text/csv",
            )
        })?;
    let max = state.max_upload_bytes;
    // Refused before anything is stored when the client says how big it is.
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > max) {
        return Err(upload_too_large(max));
    }
    let by = format!("{}:{}", caller.token.role, caller.token.label);
    let run = state
        .reconciler
        .start(RunKind::Snapshot, Some(consumer.clone()), "api", &by)
        .await
        .map_err(reconcile_error)?;
    let run_id = run.id;
    // Stream the body into the blocking parser: nothing of it is held whole.
    let over = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let limited = http_body_util::Limited::new(body, usize::try_from(max).unwrap_or(usize::MAX));
    let stream = http_body_util::BodyDataStream::new(limited).map_err({
        let over = over.clone();
        move |e| {
            if e.is::<http_body_util::LengthLimitError>() {
                over.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            std::io::Error::other(e.to_string())
        }
    });
    // A sender that stops sending is stopped too, however long the route's own bound.
    let stalled = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stream = Box::pin(until_idle(
        stream,
        state.upload_idle_timeout,
        stalled.clone(),
    ));
    let reader = tokio_util::io::StreamReader::new(stream);
    let input = Box::new(tokio_util::io::SyncIoBridge::new(reader));
    let done = state
        .reconciler
        .run_snapshot(run, input, format, &|_| {})
        .await;
    if done.is_err() && over.load(std::sync::atomic::Ordering::Relaxed) {
        // The upload was refused as a whole: its run leaves nothing behind, as if refused
        // before it started.
        state.reconciler.runs().discard(run_id).await?;
        return Err(upload_too_large(max));
    }
    if done.is_err() && stalled.load(std::sync::atomic::Ordering::Relaxed) {
        let idle = state.upload_idle_timeout.as_secs();
        return Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            format!("the upload sent nothing for {idle} s and was stopped; send it again"),
        ));
    }
    let mut run = done.map_err(reconcile_error)?;
    // A pseudonymous consumer is answered with its own names of customers, never their ids.
    if caller.token.role == Role::Consumer
        && let Some(consumer) = state.deliveries.consumer(&consumer).await?
        && consumer.pseudonymous
    {
        let names = state.ledger.customer_names(&consumer);
        idledger_store::runs::rename_example_customers(&mut run.report, |id| {
            CustomerId::parse(id)
                .ok()
                .map(|c| names.show(c).to_string())
        });
    }
    Ok(run_response(StatusCode::CREATED, &run))
}

/// `stream`, ended with a `TimedOut` error (and `stalled` set) when its next item takes longer
/// than `idle`.
fn until_idle<S>(
    stream: S,
    idle: std::time::Duration,
    stalled: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> impl futures::Stream<Item = Result<axum::body::Bytes, std::io::Error>>
where
    S: futures::Stream<Item = Result<axum::body::Bytes, std::io::Error>> + Unpin,
{
    futures::stream::unfold(Some(stream), move |stream| {
        let stalled = stalled.clone();
        async move {
            let mut stream = stream?;
            match tokio::time::timeout(idle, futures::StreamExt::next(&mut stream)).await {
                Ok(Some(item)) => Some((item, Some(stream))),
                Ok(None) => None,
                Err(_) => {
                    stalled.store(true, std::sync::atomic::Ordering::Relaxed);
                    let error = std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the upload sent nothing for too long",
                    );
                    Some((Err(error), None))
                }
            }
        }
    })
}
