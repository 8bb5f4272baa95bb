//! The data steward's workspace over HTTP: assigning exceptions, counts per kind and age,
//! four-eyes approvals (list, read, approve, reject) and the steward activity log.

use std::collections::HashMap;

use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Utc};
use idledger_app::{AssignTo, Steward, WorkflowError};
use idledger_domain::ids::CustomerId;
use idledger_store::approvals::{Approval, ApprovalStatus};
use idledger_store::delivery::{ActivityFilter, KindCount, StewardActivity};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::AppState;
use crate::auth::{Authorized, Overseers, Stewards};
use crate::error::{ApiError, Problem};
use crate::extract::{JsonBody, PathParams, QueryParams};
use crate::reconcile::{bad_param, id_param, param};
use crate::steward::{ActionResult, steward_of};
use crate::views::ExceptionView;

/// An id in the query. Present but empty is no UUID: refused, as the OpenAPI document's
/// `uuid` format says.
fn uuid_param(
    params: &HashMap<String, String>,
    name: &'static str,
) -> Result<Option<Uuid>, ApiError> {
    params
        .get(name)
        .map(|raw| {
            raw.parse::<Uuid>()
                .map_err(|_| bad_param(name, "not a UUID"))
        })
        .transpose()
}

/// Steward actions (and approvals) one page shows unless `limit` says otherwise.
pub const ACTIVITY_PAGE: u32 = 100;

fn limit_of(params: &HashMap<String, String>) -> Result<u32, ApiError> {
    crate::reconcile::limit_of(params, ACTIVITY_PAGE)
}

impl From<WorkflowError> for ApiError {
    fn from(e: WorkflowError) -> Self {
        match e {
            WorkflowError::Refused(refusal) => refusal.into(),
            WorkflowError::Act(e) => e.into(),
            WorkflowError::Store(e) => e.into(),
            WorkflowError::UnknownSteward { .. } => {
                ApiError::unprocessable("unknown_steward", e.to_string())
            }
            WorkflowError::UnknownApproval(_) => {
                ApiError::not_found("unknown_approval", e.to_string())
            }
            WorkflowError::ApprovalDecided { status, .. } => ApiError::new(
                axum::http::StatusCode::CONFLICT,
                "approval_decided",
                e.to_string(),
            )
            .with("status", status),
            WorkflowError::SameSteward(_) => ApiError::forbidden("same_steward", e.to_string()),
        }
    }
}

/// Who to give an exception to.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AssignmentRequest {
    /// `me`, another steward's label (a live steward token must have it), or `null` to
    /// unassign.
    pub assignee: Option<String>,
}

/// Assign a sync exception to a steward, or unassign it (role `steward`). Recorded in the
/// steward activity log; assigning it to whoever has it changes nothing.
#[utoipa::path(
    post, path = "/v1/exceptions/{exception_id}/assignment", tag = "stewardship",
    params(("exception_id" = uuid::Uuid, Path)),
    request_body = AssignmentRequest,
    responses(
        (status = 200, body = ExceptionView),
        (status = 400, description = "invalid_id", body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "forbidden_role", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "unknown_exception", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "exception_closed", body = Problem, content_type = "application/problem+json"),
        (status = 415, body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "invalid_body, unknown_steward", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn assign(
    State(state): State<AppState>,
    Authorized(caller, ..): Authorized<Stewards>,
    PathParams(params): PathParams,
    JsonBody(body): JsonBody<AssignmentRequest>,
) -> Result<Json<ExceptionView>, ApiError> {
    let id = id_param(&params, "exception_id", "the exception id")?;
    let steward = steward_of(&caller.token)?;
    let to = assign_to(body.assignee.as_deref());
    Ok(Json(ExceptionView::from(
        state.app.assign(&steward, id, &to).await?,
    )))
}

/// An assignee as a form or body names it: `me`, a label, or nothing (unassign).
pub fn assign_to(raw: Option<&str>) -> AssignTo {
    match raw.map(str::trim).filter(|r| !r.is_empty()) {
        None => AssignTo::Nobody,
        Some("me") => AssignTo::Me,
        Some(label) => AssignTo::Steward(label.to_owned()),
    }
}

/// Open sync exceptions of one kind.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct KindCountView {
    pub kind: String,
    pub open: u64,
    /// Past their SLA: the consumer's acknowledgement SLA, or the kind's default for an
    /// exception about a source system.
    pub overdue: u64,
    pub unassigned: u64,
    pub under_1h: u64,
    pub under_1d: u64,
    pub under_7d: u64,
    pub older: u64,
}

impl From<KindCount> for KindCountView {
    fn from(c: KindCount) -> Self {
        Self {
            kind: c.kind.to_string(),
            open: c.open,
            overdue: c.overdue,
            unassigned: c.unassigned,
            under_1h: c.by_age.under_1h,
            under_1d: c.by_age.under_1d,
            under_7d: c.by_age.under_7d,
            older: c.by_age.older,
        }
    }
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CountsView {
    /// Kinds with no open exception are left out.
    pub kinds: Vec<KindCountView>,
}

/// Open sync exceptions per kind: how many, overdue, unassigned, and by age (roles
/// `steward`, `auditor`, `admin`).
#[utoipa::path(
    get, path = "/v1/exceptions/counts", tag = "stewardship",
    responses(
        (status = 200, body = CountsView),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn counts(
    State(state): State<AppState>,
    Authorized(..): Authorized<Overseers>,
) -> Result<Json<CountsView>, ApiError> {
    Ok(Json(CountsView {
        kinds: state
            .app
            .open_counts()
            .await?
            .into_iter()
            .map(KindCountView::from)
            .collect(),
    }))
}

/// A steward's override waiting for (or decided by) a second steward.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ApprovalView {
    #[schema(value_type = String)]
    pub id: Uuid,
    #[schema(value_type = String)]
    pub exception_id: Uuid,
    #[schema(value_type = String)]
    pub customer_id: CustomerId,
    pub field: String,
    /// `steward:<label>`.
    pub requested_by: String,
    pub requested_at: DateTime<Utc>,
    /// `pending`, `approved`, `rejected` or `void` (its exception closed, or its customer was
    /// erased, first).
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decided_by: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decided_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decision_note: Option<String>,
}

impl From<Approval> for ApprovalView {
    fn from(a: Approval) -> Self {
        Self {
            id: a.id,
            exception_id: a.exception_id,
            customer_id: a.customer_id,
            field: a.field,
            requested_by: a.requested_by,
            requested_at: a.requested_at,
            status: a.status.as_str().to_owned(),
            decided_by: a.decided_by,
            decided_at: a.decided_at,
            decision_note: a.decision_note,
        }
    }
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ApprovalPageView {
    pub approvals: Vec<ApprovalView>,
    /// The next page's `after`; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub next_after: Option<Uuid>,
}

fn status_of(raw: Option<&str>) -> Result<Option<ApprovalStatus>, ApiError> {
    Ok(match raw.unwrap_or("pending") {
        "pending" => Some(ApprovalStatus::Pending),
        "approved" => Some(ApprovalStatus::Approved),
        "rejected" => Some(ApprovalStatus::Rejected),
        "void" => Some(ApprovalStatus::Void),
        "all" => None,
        _ => {
            return Err(bad_param(
                "status",
                "must be pending, approved, rejected, void or all",
            ));
        }
    })
}

/// Four-eyes approvals, oldest first (roles `steward`, `auditor`, `admin`): `status`
/// (`pending` by default, `approved`, `rejected`, `void`, `all`), `exception`, paging with
/// `after` and `limit`.
#[utoipa::path(
    get, path = "/v1/approvals", tag = "stewardship",
    params(
        ("status" = Option<String>, Query), ("exception" = Option<uuid::Uuid>, Query),
        ("after" = Option<uuid::Uuid>, Query), ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000),
    ),
    responses(
        (status = 200, body = ApprovalPageView),
        (status = 400, description = "invalid_query (with `parameter`)", body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn list_approvals(
    State(state): State<AppState>,
    Authorized(..): Authorized<Overseers>,
    QueryParams(params): QueryParams<HashMap<String, String>>,
) -> Result<Json<ApprovalPageView>, ApiError> {
    let status = status_of(param(&params, "status"))?;
    let exception = uuid_param(&params, "exception")?;
    let after = uuid_param(&params, "after")?;
    let limit = limit_of(&params)?;
    let approvals = state.app.approvals(status, exception, after, limit).await?;
    let next_after = (approvals.len() == limit as usize)
        .then(|| approvals.last().map(|a| a.id))
        .flatten();
    Ok(Json(ApprovalPageView {
        approvals: approvals.into_iter().map(ApprovalView::from).collect(),
        next_after,
    }))
}

/// One four-eyes approval (roles `steward`, `auditor`, `admin`). The value it would take into
/// the record is not shown: it is kept sealed until approved.
#[utoipa::path(
    get, path = "/v1/approvals/{approval_id}", tag = "stewardship",
    params(("approval_id" = uuid::Uuid, Path)),
    responses(
        (status = 200, body = ApprovalView),
        (status = 400, description = "invalid_id", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "unknown_approval", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn get_approval(
    State(state): State<AppState>,
    Authorized(..): Authorized<Overseers>,
    PathParams(params): PathParams,
) -> Result<Json<ApprovalView>, ApiError> {
    let id = id_param(&params, "approval_id", "the approval id")?;
    state
        .app
        .approval(id)
        .await?
        .map(|a| Json(ApprovalView::from(a)))
        .ok_or_else(|| ApiError::from(WorkflowError::UnknownApproval(id)))
}

/// A second steward's decision.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApprovalDecisionRequest {
    /// Why (kept with the approval and in the activity log).
    #[serde(default)]
    pub reason: Option<String>,
}

/// Approve a pending four-eyes approval (role `steward`, not the one who asked): the first
/// steward's action runs now, recorded with them as the actor and the approver as
/// `approved_by`.
#[utoipa::path(
    post, path = "/v1/approvals/{approval_id}/approve", tag = "stewardship",
    params(("approval_id" = uuid::Uuid, Path)),
    request_body = ApprovalDecisionRequest,
    responses(
        (status = 200, body = ActionResult),
        (status = 400, description = "invalid_id", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "same_steward, forbidden_role, forbidden", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "unknown_approval", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "approval_decided, exception_closed (the approval is then void), merged_into (the customer is merged into the record `merged_into` names)", body = Problem, content_type = "application/problem+json"),
        (status = 410, description = "erased", body = Problem, content_type = "application/problem+json"),
        (status = 415, body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "invalid_body, invalid_value", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn approve(
    State(state): State<AppState>,
    Authorized(caller, ..): Authorized<Stewards>,
    PathParams(params): PathParams,
    JsonBody(body): JsonBody<ApprovalDecisionRequest>,
) -> Result<Json<ActionResult>, ApiError> {
    let id = id_param(&params, "approval_id", "the approval id")?;
    approve_as(
        &state,
        &steward_of(&caller.token)?,
        id,
        body.reason.as_deref(),
    )
    .await
    .map(Json)
}

/// Approves `id` as `steward`: shared by the API and the steward page.
pub async fn approve_as(
    state: &AppState,
    steward: &Steward,
    id: Uuid,
    reason: Option<&str>,
) -> Result<ActionResult, ApiError> {
    let done = state.app.approve(steward, id, reason).await?;
    crate::metrics::command("applied");
    let exception_id = done.exception.id;
    Ok(ActionResult::of(
        exception_id,
        idledger_domain::event::StewardAction::Accept,
        done,
    ))
}

/// Reject a pending four-eyes approval (role `steward`, not the one who asked): nothing
/// changes in the record and the exception stays open.
#[utoipa::path(
    post, path = "/v1/approvals/{approval_id}/reject", tag = "stewardship",
    params(("approval_id" = uuid::Uuid, Path)),
    request_body = ApprovalDecisionRequest,
    responses(
        (status = 200, body = ApprovalView),
        (status = 400, description = "invalid_id", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "same_steward, forbidden_role", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "unknown_approval", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "approval_decided", body = Problem, content_type = "application/problem+json"),
        (status = 415, body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "invalid_body", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn reject(
    State(state): State<AppState>,
    Authorized(caller, ..): Authorized<Stewards>,
    PathParams(params): PathParams,
    JsonBody(body): JsonBody<ApprovalDecisionRequest>,
) -> Result<Json<ApprovalView>, ApiError> {
    let id = id_param(&params, "approval_id", "the approval id")?;
    let steward = steward_of(&caller.token)?;
    Ok(Json(ApprovalView::from(
        state
            .app
            .reject_approval(&steward, id, body.reason.as_deref())
            .await?,
    )))
}

/// One steward action.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ActivityView {
    #[schema(value_type = String)]
    pub id: Uuid,
    /// `steward:<label>`.
    pub steward: String,
    /// `repush`, `accept`, `dismiss`, `route`, `assign`, `unassign`, `request_approval`, `approve` or
    /// `reject_approval`.
    pub action: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub exception_id: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub approval_id: Option<Uuid>,
    #[schema(value_type = String)]
    pub customer_id: CustomerId,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// The events the action recorded in the customer's log.
    #[schema(value_type = Vec<String>)]
    pub event_ids: Vec<Uuid>,
    /// The assignee of an assignment, the requester of an approval decided, the action an
    /// approval asks for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub at: DateTime<Utc>,
}

impl From<StewardActivity> for ActivityView {
    fn from(a: StewardActivity) -> Self {
        Self {
            id: a.id,
            steward: a.steward,
            action: a.action,
            exception_id: a.exception_id,
            approval_id: a.approval_id,
            customer_id: a.customer_id,
            field: a.field,
            event_ids: a.event_ids,
            detail: a.detail,
            reason: a.reason,
            at: a.at,
        }
    }
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ActivityPageView {
    pub activity: Vec<ActivityView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub next_after: Option<Uuid>,
}

/// The parsed filter of an activity query: `steward` (a label), `customer`, `after`.
pub fn activity_filter(params: &HashMap<String, String>) -> Result<ActivityFilter, ApiError> {
    let steward = param(params, "steward")
        .map(|label| {
            Steward::new(label)
                .map(|s| s.name())
                .map_err(|e| bad_param("steward", e))
        })
        .transpose()?;
    let customer = uuid_param(params, "customer")?
        .map(|uuid| CustomerId::from_uuid(uuid).map_err(|e| bad_param("customer", e)))
        .transpose()?;
    Ok(ActivityFilter {
        steward,
        customer,
        after: uuid_param(params, "after")?,
    })
}

/// What stewards did, oldest first (roles `steward`, `auditor`, `admin`): every action on a
/// sync exception, assignment and four-eyes decision, with who, when and why. Filters:
/// `steward` (a label), `customer`; paging with `after` and `limit`.
#[utoipa::path(
    get, path = "/v1/steward-activity", tag = "stewardship",
    params(
        ("steward" = Option<String>, Query), ("customer" = Option<uuid::Uuid>, Query),
        ("after" = Option<uuid::Uuid>, Query), ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000),
    ),
    responses(
        (status = 200, body = ActivityPageView),
        (status = 400, description = "invalid_query (with `parameter`)", body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn activity(
    State(state): State<AppState>,
    Authorized(..): Authorized<Overseers>,
    QueryParams(params): QueryParams<HashMap<String, String>>,
) -> Result<Json<ActivityPageView>, ApiError> {
    let filter = activity_filter(&params)?;
    let limit = limit_of(&params)?;
    let activity = state.app.activity(&filter, limit).await?;
    let next_after = (activity.len() == limit as usize)
        .then(|| activity.last().map(|a| a.id))
        .flatten();
    Ok(Json(ActivityPageView {
        activity: activity.into_iter().map(ActivityView::from).collect(),
        next_after,
    }))
}
