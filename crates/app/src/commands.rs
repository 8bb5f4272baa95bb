//! Running commands, and the exceptions they open for stewards.

use chrono::Utc;
use idledger_domain::command::{Change, Command, Principal, ProvenanceInput, Refusal};
use idledger_domain::decide::Outcome;
use idledger_domain::field::FieldPath;
use idledger_domain::ids::{Actor, CustomerId, IdempotencyKey, SourceId};
use idledger_domain::policy::ADMIN_SOURCE;
use idledger_domain::state::Erasure;
use idledger_store::delivery::{ExceptionKind, NewSyncException};
use idledger_store::{ExecuteError, Executed, StoreError};

use crate::App;

impl App {
    /// Runs a command for `principal`. What the command leaves for stewards opens a sync
    /// exception about the source system: a proposal it made for a field it does not own, or
    /// a write refused because it may not write the field at all (a source that keeps trying
    /// is misconfigured, or the policy is). Not on a replay; a failure to open one is logged
    /// and never changes the command's answer.
    pub async fn run_command(
        &self,
        principal: &Principal,
        command: &Command,
    ) -> Result<Executed, ExecuteError> {
        let executed = self.ledger.execute(principal, command).await;
        let Principal::Source(source) = principal else {
            return executed;
        };
        match &executed {
            Ok(executed) if !executed.replayed => {
                for outcome in &executed.result.outcomes {
                    if let Outcome::Proposed {
                        field,
                        proposal_id,
                        system_of_record,
                    } = outcome
                    {
                        let detail = serde_json::json!({
                            "proposal_id": proposal_id,
                            "proposed_by": source,
                            "system_of_record": system_of_record,
                        });
                        self.raise(
                            source,
                            command.customer_id,
                            field,
                            ExceptionKind::Proposal,
                            detail,
                        )
                        .await;
                    }
                }
            }
            Err(ExecuteError::Refused(refused)) => {
                if let Refusal::NotAuthoritative {
                    field,
                    mode,
                    system_of_record,
                    ..
                } = &refused.refusal
                {
                    let detail = serde_json::json!({
                        "source": source,
                        "system_of_record": system_of_record,
                        "mode": mode,
                        "reason": refused.to_string(),
                    });
                    self.raise(
                        source,
                        command.customer_id,
                        field,
                        ExceptionKind::RefusedWrite,
                        detail,
                    )
                    .await;
                }
            }
            _ => {}
        }
        executed
    }

    async fn raise(
        &self,
        source: &SourceId,
        customer: CustomerId,
        field: &FieldPath,
        kind: ExceptionKind,
        detail: serde_json::Value,
    ) {
        let opened = match NewSyncException::new(
            kind,
            source.clone(),
            customer,
            Some(field.clone()),
            detail,
            Utc::now(),
        ) {
            Ok(exception) => self.deliveries.open_exception(&exception).await.map(drop),
            Err(e) => Err(e),
        };
        if let Err(e) = opened {
            tracing::warn!(error = %e, kind = kind.as_str(), "could not open a sync exception");
        }
    }

    /// Restricts (or, with `restricted` false, lifts the restriction of) the processing of a
    /// customer's data (GDPR Art. 18) as the administrator `actor`: while it holds, nothing
    /// of the customer is delivered. Setting the state it already has records nothing.
    pub async fn restrict(
        &self,
        customer: CustomerId,
        actor: Actor,
        reason: &str,
        restricted: bool,
    ) -> Result<Executed, ExecuteError> {
        let change = if restricted {
            Change::RestrictProcessing {
                reason: reason.to_owned(),
            }
        } else {
            Change::LiftRestriction {
                reason: reason.to_owned(),
            }
        };
        let key = IdempotencyKey::parse(&format!("restriction:{}", uuid::Uuid::now_v7()))
            .map_err(|e| ExecuteError::Store(StoreError::Integrity(e.to_string())))?;
        let command = Command {
            customer_id: customer,
            idempotency_key: key,
            provenance: ProvenanceInput {
                actor: actor.clone(),
                on_behalf_of: None,
                evidence: None,
                observed_at: None,
                correlation_id: None,
                causation_id: None,
                reason: None,
            },
            changes: vec![change],
            expected_stream_version: None,
        };
        self.ledger
            .execute(&Principal::Admin(actor), &command)
            .await
    }

    /// Erases a customer's record (right to erasure) as the administrator: see
    /// [`idledger_store::Ledger::erase`]. The erasure also closes the customer's sync
    /// exceptions and drops their evidence, in its own transaction.
    pub async fn erase(
        &self,
        customer: CustomerId,
        actor: Actor,
        reason: &str,
    ) -> Result<Erasure, ExecuteError> {
        let admin = SourceId::parse(ADMIN_SOURCE)
            .map_err(|e| ExecuteError::Store(StoreError::Integrity(e.to_string())))?;
        self.ledger.erase(customer, &admin, actor, reason).await
    }
}
