//! `POST /v1/retention/runs`: the policy's retention, run now by an administrator (as `idledger
//! retention run` and `serve`'s schedule do). It runs while the request waits and answers the
//! report; `dry_run` counts what would go and writes nothing.

use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Utc};
use idledger_app::{RetentionError, RetentionReport};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::AppState;
use crate::auth::{Admins, Authorized};
use crate::error::{ApiError, Problem};
use crate::extract::JsonBody;

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetentionRequest {
    /// Count what would be expired and deleted; write nothing.
    #[serde(default)]
    pub dry_run: bool,
}

/// What a retention run did or, for a dry run, would do.
#[derive(Debug, Serialize, ToSchema)]
pub struct RetentionReportView {
    pub dry_run: bool,
    pub now: DateTime<Utc>,
    pub customers: u64,
    pub customers_expired: u64,
    pub values_expired: u64,
    pub consents_expired: u64,
    pub handoffs_deleted: u64,
    pub idempotency_records_deleted: u64,
    pub disclosures_deleted: u64,
    pub decisions_deleted: u64,
    pub runs_deleted: u64,
    pub findings_deleted: u64,
}

impl From<RetentionReport> for RetentionReportView {
    fn from(r: RetentionReport) -> Self {
        Self {
            dry_run: r.dry_run,
            now: r.now,
            customers: r.customers,
            customers_expired: r.customers_expired,
            values_expired: r.values_expired,
            consents_expired: r.consents_expired,
            handoffs_deleted: r.handoffs_deleted,
            idempotency_records_deleted: r.idempotency_records_deleted,
            disclosures_deleted: r.disclosures_deleted,
            decisions_deleted: r.decisions_deleted,
            runs_deleted: r.runs_deleted,
            findings_deleted: r.findings_deleted,
        }
    }
}

/// Apply the policy's retention now (role `admin`): expire values and consent records kept
/// too long, delete old handoffs, idempotency records and reconciliation runs.
#[utoipa::path(
    post, path = "/v1/retention/runs", tag = "retention",
    request_body = RetentionRequest,
    responses(
        (status = 200, body = RetentionReportView),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "invalid_body", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn run_retention(
    State(state): State<AppState>,
    Authorized(..): Authorized<Admins>,
    JsonBody(body): JsonBody<RetentionRequest>,
) -> Result<Json<RetentionReportView>, ApiError> {
    let report = state
        .app
        .retention_run(Utc::now(), body.dry_run, &|_| {})
        .await
        .map_err(|e| match e {
            RetentionError::Store(e) => ApiError::from(e),
            RetentionError::Execute(e) => ApiError::from(e),
        })?;
    Ok(Json(report.into()))
}
