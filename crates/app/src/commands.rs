//! Running commands, and the exceptions they open for stewards.

use chrono::Utc;
use idledger_domain::command::{Change, Command, Principal, ProvenanceInput, Refusal};
use idledger_domain::decide::Outcome;
use idledger_domain::exception::{self, ExceptionCommand, ExceptionEvent, ExceptionState};
use idledger_domain::field::FieldPath;
use idledger_domain::ids::{Actor, CustomerId, IdempotencyKey, ProposalId, SourceId};
use idledger_domain::policy::ADMIN_SOURCE;
use idledger_domain::state::Erasure;
use idledger_store::delivery::{
    ExceptionFilter, ExceptionKind, ExceptionStatus, MAX_PAGE, NewSyncException,
};
use idledger_store::model::ExceptionWrite;
use idledger_store::{CommandResult, ExecuteError, Executed, StoreError};

use crate::App;

impl App {
    /// Runs a command for `principal`. What the command leaves for stewards opens a sync
    /// exception about the source system: a proposal it made for a field it does not own, or
    /// a write refused because it may not write the field at all (a source that keeps trying
    /// is misconfigured, or the policy is). Not on a replay; a failure to open one is logged
    /// and never changes the command's answer. A proposal the field's system of record decides
    /// closes its exception (see `execute_closing_decided`).
    pub async fn run_command(
        &self,
        principal: &Principal,
        command: &Command,
    ) -> Result<Executed, ExecuteError> {
        let source = match principal {
            Principal::Source(source) => source,
            Principal::Steward(steward) => {
                let executed = self.ledger.execute(principal, command).await?;
                if !executed.replayed {
                    self.log_steward_command(steward, command, &executed).await;
                    let by = format!("steward:{}", steward.id());
                    self.look_for_duplicates(command, &executed, &by).await;
                }
                return Ok(executed);
            }
            _ => return self.ledger.execute(principal, command).await,
        };
        let executed = self.execute_closing_decided(source, command).await;
        match &executed {
            Ok(executed) if !executed.replayed => {
                self.look_for_duplicates(command, executed, source.as_str())
                    .await;
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

    /// Runs a source's command; where it decides proposals (the field's system of record
    /// accepting or rejecting them with its own token: whether it may is the record's
    /// `decide` to say), the open `proposal` exception of the first one it decides closes in
    /// the command's transaction — `accepted` or `dismissed`, by `source:<id>` — and those of
    /// any others right after (a command rarely decides more than one).
    async fn execute_closing_decided(
        &self,
        source: &SourceId,
        command: &Command,
    ) -> Result<Executed, ExecuteError> {
        let decided: Vec<(ProposalId, Option<&str>)> = command
            .changes
            .iter()
            .filter_map(|change| match change {
                Change::AcceptProposal { proposal_id } => Some((*proposal_id, None)),
                Change::RejectProposal {
                    proposal_id,
                    reason,
                } => Some((*proposal_id, Some(reason.as_str()))),
                _ => None,
            })
            .collect();
        let principal = Principal::Source(source.clone());
        if decided.is_empty() {
            return self.ledger.execute(&principal, command).await;
        }
        let open = match self
            .open_proposal_exceptions(command.customer_id, &decided)
            .await
        {
            Ok(open) => open,
            Err(e) => {
                tracing::warn!(error = %e, "could not read the proposals' exceptions");
                Vec::new()
            }
        };
        let by = exception::decided_by(source);
        let closing = |state: &ExceptionState, result: &CommandResult| {
            let accepted = result.outcomes.iter().find_map(|o| match o {
                Outcome::ProposalResolved {
                    proposal_id,
                    accepted,
                } if Some(*proposal_id) == state.proposal_id => Some(*accepted),
                _ => None,
            })?;
            let reason = decided
                .iter()
                .find(|(id, _)| Some(*id) == state.proposal_id)
                .and_then(|(_, reason)| *reason);
            let note = match reason {
                None => format!("accepted by its system of record, {source}"),
                Some(reason) => format!("rejected by its system of record, {source}: {reason}"),
            };
            let command = ExceptionCommand::DecidedBySource {
                by: by.clone(),
                accepted,
                note,
                at: Utc::now(),
            };
            exception::decide(Some(state), &command)
                .ok()?
                .into_iter()
                .next()
        };
        let Some((first, rest)) = open.split_first() else {
            return self.ledger.execute(&principal, command).await;
        };
        let attach = |result: &CommandResult| -> Result<Option<ExceptionWrite>, ExecuteError> {
            Ok(closing(first, result).map(|event| ExceptionWrite {
                exception_id: first.id,
                event,
                activity: None,
                approval: None,
            }))
        };
        let executed = match self.ledger.execute_with(&principal, command, &attach).await {
            // A steward closed it meanwhile: the decision stands without it.
            Err(ExecuteError::ExceptionNotOpen { .. }) => {
                self.ledger.execute(&principal, command).await?
            }
            other => other?,
        };
        if !executed.replayed {
            for state in rest {
                if let Some(ExceptionEvent::Closed(closed)) = closing(state, &executed.result)
                    && let Err(e) = self.deliveries.close_exception(state.id, &closed).await
                {
                    tracing::warn!(error = %e, "could not close a decided proposal's exception");
                }
            }
        }
        Ok(executed)
    }

    /// A steward's own command (not an exception's action) in the activity log: written just
    /// after the command commits, so a failure here loses the line, never the events, which
    /// carry the steward's provenance; it is logged and the command's answer stands.
    async fn log_steward_command(
        &self,
        steward: &idledger_domain::ids::Actor,
        command: &Command,
        executed: &Executed,
    ) {
        let fields: Vec<String> = command
            .changes
            .iter()
            .filter_map(|c| match c {
                Change::SetField { field, .. } | Change::ClearField { field, .. } => {
                    Some(field.to_string())
                }
                _ => None,
            })
            .collect();
        let ops: Vec<&str> = command.changes.iter().map(Change::op).collect();
        let activity = idledger_store::delivery::NewActivity {
            steward: format!("steward:{}", steward.id()),
            action: "command",
            exception_id: None,
            approval_id: None,
            customer_id: command.customer_id,
            field: (fields.len() == 1).then(|| fields[0].clone()),
            event_ids: executed
                .result
                .events
                .iter()
                .map(|e| e.id.as_uuid())
                .collect(),
            detail: Some(ops.join(", ")),
            reason: command.provenance.reason.clone(),
            at: chrono::Utc::now(),
        };
        if let Err(e) = self.deliveries.record_activity(&activity).await {
            tracing::warn!(error = %e, "could not log a steward's command in the activity log");
        }
    }

    /// The open `proposal` exceptions of `customer` about the proposals in `decided`.
    async fn open_proposal_exceptions(
        &self,
        customer: CustomerId,
        decided: &[(ProposalId, Option<&str>)],
    ) -> Result<Vec<ExceptionState>, StoreError> {
        let filter = ExceptionFilter {
            consumer: None,
            customer: Some(customer),
            kind: Some(ExceptionKind::Proposal),
            field: None,
            status: Some(ExceptionStatus::Open),
            created_before: None,
            open_only: true,
            after: None,
            ..ExceptionFilter::default()
        };
        let mut open = Vec::new();
        for e in self.deliveries.exceptions(&filter, MAX_PAGE).await? {
            let state = e.state()?;
            if decided.iter().any(|(id, _)| Some(*id) == state.proposal_id) {
                open.push(state);
            }
        }
        Ok(open)
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
        // One person, two records: a merged record is erased through its survivor, and the
        // survivor's erasure takes the records merged into it along (it holds copies of
        // their data, and they hold the rest).
        if let Some(state) = self.ledger.state(customer).await? {
            if let Some(link) = &state.merged_into {
                return Err(ExecuteError::Refused(
                    Refusal::MergedInto {
                        survivor: link.customer,
                    }
                    .into(),
                ));
            }
            for absorbed in state.absorbed.keys() {
                match self
                    .ledger
                    .erase(*absorbed, &admin, actor.clone(), reason)
                    .await
                {
                    Ok(_) => {}
                    Err(ExecuteError::Refused(r))
                        if matches!(r.refusal, Refusal::Erased { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        self.ledger.erase(customer, &admin, actor, reason).await
    }
}
