//! `POST /v1/duplicates/backfill`: the duplicate candidates of records written before
//! duplicate detection existed, opened now by an administrator (as `idledger duplicates
//! backfill` does). It runs while the request waits and answers the report; `dry_run`
//! counts what would open and opens nothing.

use axum::Json;
use axum::extract::State;
use idledger_app::BackfillReport;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::AppState;
use crate::auth::{Admins, Authorized};
use crate::error::{ApiError, Problem};
use crate::extract::JsonBody;

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BackfillRequest {
    /// Count the candidates that would be opened; open nothing.
    #[serde(default)]
    pub dry_run: bool,
}

/// What a backfill did or, for a dry run, would do.
#[derive(Debug, Serialize, ToSchema)]
pub struct BackfillReportView {
    pub dry_run: bool,
    /// Customers read (neither erased nor merged).
    pub customers: u64,
    /// Pairs that had no duplicate candidate exception, opened now (or that would be).
    pub opened: u64,
    /// Pairs that had one already, open or closed (dismissed, merged): left as they are.
    pub already_known: u64,
}

impl From<BackfillReport> for BackfillReportView {
    fn from(r: BackfillReport) -> Self {
        Self {
            dry_run: r.dry_run,
            customers: r.customers,
            opened: r.opened,
            already_known: r.already_known,
        }
    }
}

/// Open the duplicate candidates live detection never saw (role `admin`): every pair of
/// customers sharing a verified identifier, or the policy's secondary rule, that has no
/// `duplicate_candidate` exception yet, by the rule the live detection uses. A second run
/// opens nothing; a pair a steward dismissed stays dismissed.
#[utoipa::path(
    post, path = "/v1/duplicates/backfill", tag = "stewardship",
    request_body = BackfillRequest,
    responses(
        (status = 200, body = BackfillReportView),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "invalid_body", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn backfill(
    State(state): State<AppState>,
    Authorized(..): Authorized<Admins>,
    JsonBody(body): JsonBody<BackfillRequest>,
) -> Result<Json<BackfillReportView>, ApiError> {
    let report = state.app.backfill_duplicates(body.dry_run, &|_| {}).await?;
    Ok(Json(report.into()))
}
