//! The data steward's actions on sync exceptions over HTTP, shared by the JSON API and the
//! steward web page: the request's shape, then [`idledger_app::App::act`], which runs the
//! action's command and the exception's change in one transaction.

use idledger_app::{ActError, ActionDone, Steward, StewardRequest};
use idledger_domain::event::StewardAction;
use idledger_store::TokenRecord;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::AppState;
use crate::error::ApiError;
use crate::views::ExceptionView;

/// The name of a steward's action, for the OpenAPI document (the domain's `StewardAction`
/// knows nothing of schemas).
#[derive(Debug, ToSchema)]
#[schema(rename_all = "snake_case")]
pub enum ActionName {
    Repush,
    Accept,
    Dismiss,
    Route,
}

/// What a steward asks to do with an exception.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ActionRequest {
    /// `repush`, `accept`, `dismiss` or `route` (a proposal, to its field's system of
    /// record, which decides it with its own token; the exception stays open until it does).
    #[schema(value_type = ActionName)]
    pub action: StewardAction,
    /// Why (required to dismiss).
    #[serde(default)]
    pub reason: Option<String>,
    /// For `accept` of a consumer's value: the value to take into the record (its natural
    /// JSON form). A proposal's value is taken from the proposal.
    #[serde(default)]
    pub value: Option<serde_json::Value>,
}

impl ActionRequest {
    fn request(&self) -> StewardRequest {
        StewardRequest {
            action: self.action,
            reason: self.reason.clone(),
            value: self.value.clone(),
        }
    }
}

/// What an action did.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ActionResult {
    #[schema(value_type = String)]
    pub exception_id: Uuid,
    pub action: &'static str,
    /// The exception as it stands after the action.
    pub exception: ExceptionView,
    /// The event recording the action (and, for accept, the value's own event first).
    /// Empty while a four-eyes approval is pending.
    #[schema(value_type = Vec<String>)]
    pub event_ids: Vec<Uuid>,
    /// Four eyes: the policy needs a second steward for this change. Nothing changed yet;
    /// this approval waits for them (`POST /v1/approvals/{id}/approve`). With it the answer
    /// is `202 Accepted`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approval: Option<crate::workspace::ApprovalView>,
}

impl ActionResult {
    pub fn of(id: Uuid, action: StewardAction, done: ActionDone) -> Self {
        Self {
            exception_id: id,
            action: action.as_str(),
            exception: ExceptionView::from(done.exception),
            event_ids: done.event_ids,
            approval: done.approval.map(crate::workspace::ApprovalView::from),
        }
    }
}

/// The steward a token speaks for.
pub fn steward_of(token: &TokenRecord) -> Result<Steward, ApiError> {
    Steward::new(&token.label).map_err(|e| ApiError::internal(&e))
}

/// Applies `request` to exception `id` as the steward `token`.
pub async fn act(
    state: &AppState,
    token: &TokenRecord,
    id: Uuid,
    request: &ActionRequest,
) -> Result<ActionResult, ApiError> {
    let steward = steward_of(token)?;
    let done = state.app.act(&steward, id, &request.request()).await?;
    crate::metrics::command("applied");
    Ok(ActionResult::of(id, request.action, done))
}

/// The same action on many exceptions; each succeeds or fails on its own.
pub async fn act_on_many(
    state: &AppState,
    token: &TokenRecord,
    ids: &[Uuid],
    request: &ActionRequest,
) -> Result<Vec<(Uuid, Result<ActionResult, ApiError>)>, ApiError> {
    let steward = steward_of(token)?;
    Ok(state
        .app
        .act_on_many(&steward, ids, &request.request())
        .await
        .into_iter()
        .map(|(id, done)| {
            (
                id,
                done.map(|d| ActionResult::of(id, request.action, d))
                    .map_err(ApiError::from),
            )
        })
        .collect())
}

impl From<ActError> for ApiError {
    fn from(e: ActError) -> Self {
        match e {
            ActError::Refused(refusal) => refusal.into(),
            ActError::Execute(e) => e.into(),
            ActError::Approval(idledger_store::approvals::ApprovalError::AlreadyPending {
                approval_id,
                ..
            }) => ApiError::new(
                axum::http::StatusCode::CONFLICT,
                "approval_pending",
                format!("a change of this exception is already waiting for approval {approval_id}"),
            )
            .with("approval_id", approval_id),
            ActError::Approval(idledger_store::approvals::ApprovalError::Erased) => ApiError::new(
                axum::http::StatusCode::GONE,
                "erased",
                "the customer's record was erased",
            ),
            ActError::Approval(idledger_store::approvals::ApprovalError::Store(e)) => e.into(),
        }
    }
}

pub fn unknown_exception(id: Uuid) -> ApiError {
    ApiError::not_found("unknown_exception", format!("no sync exception {id}"))
}
