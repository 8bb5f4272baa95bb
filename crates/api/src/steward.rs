//! The data steward's actions on sync exceptions, shared by the JSON API and the steward web
//! page. Every action is a command run as the steward principal, so it is an event with the
//! steward's provenance in the field's history; then the exception is closed (accept,
//! dismiss) or annotated (re-push, which stays open until the consumer acknowledges the
//! record's value and the exception closes itself).

use chrono::Utc;
use idledger_domain::command::{Change, Command, Principal, ProvenanceInput};
use idledger_domain::decide::Outcome;
use idledger_domain::event::StewardAction;
use idledger_domain::field::{FieldPath, FieldValue};
use idledger_domain::ids::{Actor, ActorKind, IdempotencyKey, ProposalId};
use idledger_store::TokenRecord;
use idledger_store::delivery::{
    Closing, ExceptionKind, ExceptionStatus, Resolution, SyncException,
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::AppState;
use crate::error::ApiError;

/// What a steward asks to do with an exception.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ActionRequest {
    /// `repush`, `accept` or `dismiss`.
    #[schema(value_type = String)]
    pub action: StewardAction,
    /// Why (required to dismiss).
    #[serde(default)]
    pub reason: Option<String>,
    /// For `accept` of a consumer's value: the value to take into the record (its natural
    /// JSON form). A proposal's value is taken from the proposal.
    #[serde(default)]
    pub value: Option<serde_json::Value>,
}

/// What an action did.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ActionResult {
    #[schema(value_type = String)]
    pub exception_id: Uuid,
    pub action: &'static str,
    /// The exception as it stands after the action.
    #[schema(value_type = Object)]
    pub exception: SyncException,
    /// The event recording the action (and, for accept, the value's own event first).
    #[schema(value_type = Vec<String>)]
    pub event_ids: Vec<Uuid>,
}

/// Applies `request` to exception `id` as the steward `token`.
pub async fn act(
    state: &AppState,
    token: &TokenRecord,
    id: Uuid,
    request: &ActionRequest,
) -> Result<ActionResult, ApiError> {
    let exception = state
        .deliveries
        .exception(id)
        .await?
        .ok_or_else(|| unknown_exception(id))?;
    if exception.status != ExceptionStatus::Open {
        return Err(ApiError::new(
            axum::http::StatusCode::CONFLICT,
            "exception_closed",
            format!("exception {id} is already {}", exception.status.as_str()),
        )
        .with("status", exception.status));
    }
    let field = match exception.field.as_deref() {
        Some(raw) => Some(FieldPath::parse(raw).map_err(|e| ApiError::internal(&e))?),
        None => None,
    };
    let reason = request
        .reason
        .as_deref()
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .map(str::to_owned);
    let record_action = Change::ActOnException {
        exception_id: id,
        consumer_id: exception.consumer_id.as_str().to_owned(),
        field: field.clone(),
        action: request.action,
        reason: reason.clone(),
    };
    let mut changes = Vec::with_capacity(2);
    match request.action {
        StewardAction::Repush => {
            if matches!(
                exception.kind,
                ExceptionKind::Proposal | ExceptionKind::RefusedWrite
            ) {
                return Err(ApiError::unprocessable(
                    "not_a_consumer",
                    format!(
                        "a {} exception is about a source system, which is not sent the record; accept or dismiss it",
                        exception.kind
                    ),
                ));
            }
            if field.is_none() {
                return Err(ApiError::unprocessable(
                    "no_field",
                    "this exception concerns the customer as a whole; there is no field to re-push",
                ));
            }
        }
        StewardAction::Accept => {
            changes.push(accepted_change(&exception, field.as_ref(), request)?)
        }
        StewardAction::Dismiss => {}
    }
    changes.push(record_action);
    let command = Command {
        customer_id: exception.customer_id,
        idempotency_key: IdempotencyKey::parse(&format!("steward-{}", Uuid::now_v7()))
            .map_err(|e| ApiError::internal(&e))?,
        provenance: ProvenanceInput {
            actor: Actor::new(ActorKind::Steward, &token.label)
                .map_err(|e| ApiError::internal(&e))?,
            on_behalf_of: None,
            evidence: None,
            observed_at: None,
            correlation_id: Some(id),
            causation_id: None,
            reason: reason.clone(),
        },
        changes,
        expected_stream_version: None,
    };
    let executed = state
        .ledger
        .execute(&Principal::Steward, &command)
        .await
        .map_err(ApiError::from)?;
    crate::metrics::command("applied");
    let event_ids = executed
        .result
        .events
        .iter()
        .map(|e| e.id.as_uuid())
        .collect::<Vec<_>>();
    let by = steward_name(token);
    let now = Utc::now();
    let exception = match request.action {
        StewardAction::Repush => {
            let note = serde_json::json!({
                "action": "repush",
                "by": by,
                "at": now,
                "event_id": event_ids.last(),
                "reason": reason,
            });
            state
                .deliveries
                .note_exception_action(id, &note, now)
                .await?;
            state.deliveries.exception(id).await?
        }
        StewardAction::Accept | StewardAction::Dismiss => {
            let resolution = if request.action == StewardAction::Accept {
                Resolution::Accepted
            } else {
                Resolution::Dismissed
            };
            let closing = Closing {
                by,
                resolution,
                note: reason.unwrap_or_else(|| describe_accept(&executed.result.outcomes)),
                at: now,
            };
            // `None`: another steward closed it meanwhile; show it as it now stands.
            match state.deliveries.close_exception(id, &closing).await? {
                Some(closed) => Some(closed),
                None => state.deliveries.exception(id).await?,
            }
        }
    }
    .ok_or_else(|| unknown_exception(id))?;
    Ok(ActionResult {
        exception_id: id,
        action: request.action.as_str(),
        exception,
        event_ids,
    })
}

/// The change that takes the accepted value into the record: the proposal's own acceptance,
/// or a steward set of the value given (which the policy may forbid: `steward_override`).
fn accepted_change(
    exception: &SyncException,
    field: Option<&FieldPath>,
    request: &ActionRequest,
) -> Result<Change, ApiError> {
    if exception.kind == ExceptionKind::Proposal {
        let proposal_id = exception
            .detail
            .get("proposal_id")
            .and_then(|v| v.as_str())
            .and_then(|raw| ProposalId::parse(raw).ok())
            .ok_or_else(|| {
                ApiError::unprocessable(
                    "no_proposal",
                    "the exception does not name the proposal it is about",
                )
            })?;
        return Ok(Change::AcceptProposal { proposal_id });
    }
    let Some(field) = field else {
        return Err(ApiError::unprocessable(
            "no_field",
            "this exception concerns the customer as a whole; there is no value to accept",
        ));
    };
    let Some(raw) = &request.value else {
        return Err(ApiError::unprocessable(
            "value_required",
            format!(
                "to accept the consumer's value of {field}, give it as `value` (idledger only knows its hash)"
            ),
        ));
    };
    let value = FieldValue::parse(field, raw).map_err(|e| {
        ApiError::unprocessable("invalid_value", e.to_string()).with("field", field.to_string())
    })?;
    Ok(Change::SetField {
        field: field.clone(),
        value,
        expected_version: None,
    })
}

fn describe_accept(outcomes: &[Outcome]) -> String {
    match outcomes.first() {
        Some(Outcome::Applied { field, version }) => {
            format!("accepted into the record: {field} is at version {version}")
        }
        Some(Outcome::ProposalResolved { proposal_id, .. }) => {
            format!("accepted proposal {proposal_id}")
        }
        Some(Outcome::Unchanged { field }) => {
            format!("accepted: the record already held this value of {field}")
        }
        _ => "accepted".to_owned(),
    }
}

/// How exceptions name the steward who closed them.
pub fn steward_name(token: &TokenRecord) -> String {
    format!("steward:{}", token.label)
}

pub fn unknown_exception(id: Uuid) -> ApiError {
    ApiError::not_found("unknown_exception", format!("no sync exception {id}"))
}
