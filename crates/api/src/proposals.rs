//! `GET /v1/proposals`: the open proposals a field's system of record may decide with its own
//! token (through `accept_proposal` / `reject_proposal` commands), read by
//! [`idledger_app::App::proposals_for`].

use std::collections::HashMap;

use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Utc};
use idledger_app::{AddressedProposal, Reader};
use idledger_domain::ids::SourceId;
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::AppState;
use crate::auth::{Authorized, ProposalReaders};
use crate::error::{ApiError, Problem};
use crate::extract::{QueryParams, truncate};
use crate::reconcile::bad_query;

/// Proposals a page holds unless `limit` says otherwise.
const DEFAULT_LIMIT: u32 = 100;

/// What a source token names itself by in `system_of_record`.
const ME: &str = "me";

/// An open proposal waiting for its field's system of record.
#[derive(Debug, Serialize, ToSchema)]
pub struct AddressedProposalView {
    #[schema(value_type = String)]
    pub proposal_id: Uuid,
    #[schema(value_type = String)]
    pub customer_id: Uuid,
    pub field: String,
    /// The proposed value in its natural JSON form; absent where the reader's read scope does
    /// not cover it (a system of record always reads the fields it owns).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub value: Option<Value>,
    pub proposed_by: String,
    pub proposed_at: DateTime<Utc>,
    /// The open `proposal` sync exception about it.
    #[schema(value_type = String)]
    pub exception_id: Uuid,
    /// Whether a steward sent it to the system of record (`route`).
    pub routed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub routed_at: Option<DateTime<Utc>>,
}

impl From<AddressedProposal> for AddressedProposalView {
    fn from(p: AddressedProposal) -> Self {
        Self {
            proposal_id: p.proposal_id.as_uuid(),
            customer_id: p.customer_id.as_uuid(),
            field: p.field.to_string(),
            value: p.value.map(|v| v.to_json()),
            proposed_by: p.proposed_by.to_string(),
            proposed_at: p.proposed_at,
            exception_id: p.exception_id,
            routed: p.routed.is_some(),
            routed_at: p.routed.map(|a| a.at),
        }
    }
}

/// A page of proposals, oldest exception first.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProposalPageView {
    pub proposals: Vec<AddressedProposalView>,
    /// Pass as `after` for the next page; absent on the last. A page may hold fewer than
    /// `limit` and still have a next one.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub next_after: Option<Uuid>,
}

/// The open proposals whose field's system of record is `system_of_record` (roles `source`:
/// `me` or its own id; `steward`, `auditor`, `admin`: a source id). A source's read is
/// logged as a disclosure of the fields shown. Paging with `after` (the last
/// `exception_id`) and `limit`.
#[utoipa::path(
    get, path = "/v1/proposals", tag = "records",
    params(
        ("system_of_record" = String, Query, description = "`me` (a source token) or a source id"),
        ("after" = Option<String>, Query),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000),
    ),
    responses(
        (status = 200, body = ProposalPageView),
        (status = 400, description = "invalid_query (with `parameter`)", body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "forbidden_role, out_of_scope, or `forbidden`: a source asking for another's proposals", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn list_proposals(
    State(state): State<AppState>,
    Authorized(caller, ..): Authorized<ProposalReaders>,
    QueryParams(params): QueryParams<HashMap<String, String>>,
) -> Result<Json<ProposalPageView>, ApiError> {
    let param = |name: &str| params.get(name).map(|v| v.trim()).filter(|v| !v.is_empty());
    let bad = |parameter: &'static str, message: String| {
        bad_query(&idledger_app::QueryError { parameter, message })
    };
    let reader = caller.reader()?;
    let named = param("system_of_record").ok_or_else(|| {
        bad(
            "system_of_record",
            "name the system of record: `me` or a source id".to_owned(),
        )
    })?;
    let system_of_record = match (&reader, named) {
        (Reader::Source { source, .. }, ME) => source.clone(),
        (Reader::Overseer, ME) => {
            return Err(bad(
                "system_of_record",
                "`me` is for a source token; name a source".to_owned(),
            ));
        }
        (_, raw) => SourceId::parse(raw).map_err(|e| {
            bad(
                "system_of_record",
                format!("'{}' is not a source id: {e}", truncate(raw, 64)),
            )
        })?,
    };
    if let Reader::Source { source, .. } = &reader
        && *source != system_of_record
    {
        return Err(ApiError::forbidden(
            "forbidden",
            "a source reads only the proposals addressed to itself",
        ));
    }
    let after = param("after")
        .map(|raw| {
            raw.parse::<Uuid>()
                .map_err(|_| bad("after", "not an exception id".to_owned()))
        })
        .transpose()?;
    let limit = param("limit")
        .map(|raw| {
            raw.parse::<u32>()
                .ok()
                .filter(|n| (1..=idledger_store::delivery::MAX_PAGE).contains(n))
                .ok_or_else(|| bad("limit", "must be 1 to 1000".to_owned()))
        })
        .transpose()?
        .unwrap_or(DEFAULT_LIMIT);
    let page = state
        .app
        .proposals_for(&reader, &system_of_record, after, limit)
        .await?;
    Ok(Json(ProposalPageView {
        proposals: page.proposals.into_iter().map(Into::into).collect(),
        next_after: page.next_after,
    }))
}
