//! Merge and unmerge over HTTP (role `steward`): `POST /v1/customers/{survivor}/merge` and
//! `/unmerge`, naming the other record in the body. See `idledger_domain::merge` for what
//! each records.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use idledger_domain::ids::CustomerId;
use idledger_domain::merge::MergeRefusal;
use idledger_store::{MergeError, MergeResult};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::AppState;
use crate::auth::{Authorized, Stewards};
use crate::error::{ApiError, Problem};
use crate::extract::{JsonBody, PathParams};
use crate::routes::customer_param;
use crate::steward::steward_of;

/// The record to merge into (or take out of) the one in the path, and why.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MergeRequest {
    /// The other record: merged into the path's (merge), or taken out of it (unmerge).
    #[schema(value_type = uuid::Uuid)]
    pub absorbed: CustomerId,
    /// Why (1 to 1,000 characters), recorded with the events; must not quote the record.
    pub reason: String,
}

/// What a merge or unmerge recorded.
#[derive(Debug, Serialize, ToSchema)]
pub struct MergeView {
    pub merge_id: uuid::Uuid,
    #[schema(value_type = uuid::Uuid)]
    pub survivor: CustomerId,
    #[schema(value_type = uuid::Uuid)]
    pub absorbed: CustomerId,
    /// Each record's stream version after it (its `ETag`).
    pub survivor_version: u64,
    pub absorbed_version: u64,
    /// The fields (`consent.<purpose>` for consents) each record had written.
    pub survivor_fields: Vec<String>,
    pub absorbed_fields: Vec<String>,
}

impl From<MergeResult> for MergeView {
    fn from(r: MergeResult) -> Self {
        Self {
            merge_id: r.merge_id,
            survivor: r.survivor,
            absorbed: r.absorbed,
            survivor_version: r.survivor_version,
            absorbed_version: r.absorbed_version,
            survivor_fields: r.survivor_fields,
            absorbed_fields: r.absorbed_fields,
        }
    }
}

impl From<MergeError> for ApiError {
    fn from(e: MergeError) -> Self {
        match e {
            MergeError::Refused(refusal) => {
                let status = match &refusal {
                    MergeRefusal::SameCustomer => StatusCode::UNPROCESSABLE_ENTITY,
                    MergeRefusal::NotRegistered { .. } => StatusCode::NOT_FOUND,
                    MergeRefusal::Erased { .. } => StatusCode::GONE,
                    MergeRefusal::AlreadyMerged { .. }
                    | MergeRefusal::MergeChain { .. }
                    | MergeRefusal::Restricted { .. }
                    | MergeRefusal::NotMerged { .. }
                    | MergeRefusal::HistoryMismatch { .. } => StatusCode::CONFLICT,
                };
                let mut error = ApiError::new(status, refusal.code(), refusal.to_string());
                if let Ok(serde_json::Value::Object(members)) = serde_json::to_value(&refusal) {
                    for (k, v) in members {
                        if k != "code" {
                            error.extensions.insert(k, v);
                        }
                    }
                }
                error
            }
            MergeError::InvalidReason(_) => {
                ApiError::unprocessable("invalid_value", e.to_string()).with("field", "reason")
            }
            MergeError::ExceptionNotOpen { .. } => {
                ApiError::new(StatusCode::CONFLICT, "exception_closed", e.to_string())
            }
            MergeError::Contention { .. } => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "contention", e.to_string())
                    .retry_after(1)
            }
            MergeError::Store(e) => e.into(),
        }
    }
}

/// Merge the record in the body into the one in the path (role `steward`). The survivor
/// takes the other's values by the authority policy (a conflicting value becomes a proposal)
/// and its consents by the most protective rule; the other record is kept, frozen, and its
/// reads and commands answer `307 merged_into` with the survivor's URL. An open duplicate
/// candidate between the two closes with it. Consumers holding the other record are sent
/// `idledger.customer.merged.v1`.
#[utoipa::path(
    post, path = "/v1/customers/{customer_id}/merge", tag = "records",
    params(("customer_id" = uuid::Uuid, Path, description = "The survivor")),
    request_body = MergeRequest,
    responses(
        (status = 200, body = MergeView),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "forbidden_role", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "not_registered, invalid_customer_id", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "already_merged, merge_chain, restricted", body = Problem, content_type = "application/problem+json"),
        (status = 410, description = "erased", body = Problem, content_type = "application/problem+json"),
        (status = 413, body = Problem, content_type = "application/problem+json"),
        (status = 415, body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "invalid_body, same_customer, invalid_value (reason)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "contention: retry", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn merge(
    State(state): State<AppState>,
    Authorized(caller, ..): Authorized<Stewards>,
    PathParams(params): PathParams,
    JsonBody(body): JsonBody<MergeRequest>,
) -> Result<Json<MergeView>, ApiError> {
    run(&state, &caller, &params, &body, false).await
}

/// Undo the merge of the record in the body into the one in the path (role `steward`):
/// both records as they would be had the merge not happened, with what happened since
/// routed to the record it was about (a change of a field the survivor took from the other
/// goes back to it; a withdrawal reaches both). Consumers holding the other record are sent
/// `idledger.customer.unmerged.v1` and then its fields again.
#[utoipa::path(
    post, path = "/v1/customers/{customer_id}/unmerge", tag = "records",
    params(("customer_id" = uuid::Uuid, Path, description = "The survivor")),
    request_body = MergeRequest,
    responses(
        (status = 200, body = MergeView),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "forbidden_role", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "not_registered, invalid_customer_id", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "not_merged", body = Problem, content_type = "application/problem+json"),
        (status = 410, description = "erased", body = Problem, content_type = "application/problem+json"),
        (status = 413, body = Problem, content_type = "application/problem+json"),
        (status = 415, body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "invalid_body, invalid_value (reason)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "contention: retry", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn unmerge(
    State(state): State<AppState>,
    Authorized(caller, ..): Authorized<Stewards>,
    PathParams(params): PathParams,
    JsonBody(body): JsonBody<MergeRequest>,
) -> Result<Json<MergeView>, ApiError> {
    run(&state, &caller, &params, &body, true).await
}

/// A merge (or, `undo`, an unmerge) of the body's record and the path's, by the caller.
async fn run(
    state: &AppState,
    caller: &crate::auth::Caller,
    params: &std::collections::HashMap<String, String>,
    body: &MergeRequest,
    undo: bool,
) -> Result<Json<MergeView>, ApiError> {
    let survivor = customer_param(params)?;
    let steward = steward_of(&caller.token)?;
    let done = if undo {
        state
            .app
            .unmerge(&steward, survivor, body.absorbed, &body.reason)
            .await?
    } else {
        state
            .app
            .merge(&steward, survivor, body.absorbed, &body.reason)
            .await?
    };
    Ok(Json(done.into()))
}
