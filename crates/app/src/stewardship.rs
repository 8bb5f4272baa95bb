//! Sync exceptions as stewards work them: the one parser of their filters, reading them, and
//! a steward's actions — each action's command and the exception's change in one transaction.

use chrono::{DateTime, Duration, Utc};
use idledger_domain::command::{Command, Principal, ProvenanceInput, Refusal};
use idledger_domain::decide::Outcome;
use idledger_domain::event::StewardAction;
use idledger_domain::exception::{self, ExceptionCommand, ExceptionRefusal};
use idledger_domain::field::FieldPath;
use idledger_domain::ids::{Actor, ActorKind, CustomerId, IdempotencyKey};
use idledger_domain::values::ValueError;
use idledger_store::approvals::{
    Approval, ApprovalDecision, ApprovalError, ApprovalRequest, ApprovalStatus, NewApproval,
};
use idledger_store::delivery::{ActivityFilter, KindCount, NewActivity, StewardActivity};
use idledger_store::delivery::{
    Assignee, ConsumerId, ExceptionFilter, ExceptionKind, ExceptionStatus, MAX_PAGE, SyncException,
};
use idledger_store::model::ExceptionWrite;
use idledger_store::{CommandResult, ExecuteError, StoreError};
use uuid::Uuid;

use crate::App;

/// Exceptions a page holds unless the query says otherwise.
pub const DEFAULT_LIMIT: u32 = 100;
/// Most exceptions one bulk action covers.
pub const MAX_BULK: usize = 500;
/// The oldest `older_than` accepted: beyond that it would reach before the epoch.
const MAX_AGE: Duration = Duration::days(10 * 365);

/// Which exceptions to list, as every edge asks for them. Parsed from `name=value` pairs
/// (a query string, CLI flags) by [`ExceptionQuery::parse`]:
///
/// | name | value |
/// | --- | --- |
/// | `consumer` | a consumer's (or source system's) id |
/// | `customer` | a customer id |
/// | `kind` | an exception kind |
/// | `field` | a field path |
/// | `status` | `open` (the default), `resolved`, `dismissed` or `all` |
/// | `older_than` | an age: `45s`, `90m`, `4h`, `2d` (a bare number is minutes) |
/// | `older_than_secs` | the same in seconds |
/// | `assignee` | `me` (the steward asking), `none` (unassigned) or a steward's label |
/// | `overdue` | `true`: only open exceptions past their SLA (`false`: no filter) |
/// | `after` | the paging cursor: the last exception id of the previous page |
/// | `limit` | 1 to 1000 (default 100) |
///
/// Empty values count as absent; unknown names are ignored (the page's form sends its own).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExceptionQuery {
    pub consumer: Option<ConsumerId>,
    pub customer: Option<CustomerId>,
    pub kind: Option<ExceptionKind>,
    pub field: Option<FieldPath>,
    /// `None`: every status.
    pub status: Option<ExceptionStatus>,
    pub older_than: Option<Duration>,
    pub after: Option<Uuid>,
    pub limit: u32,
    pub assignee: Option<AssigneeQuery>,
    pub overdue: bool,
}

/// Whose exceptions a query asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AssigneeQuery {
    /// The steward asking.
    Me,
    /// Nobody's.
    Nobody,
    /// This steward's.
    Steward(Steward),
}

impl Default for ExceptionQuery {
    fn default() -> Self {
        Self {
            consumer: None,
            customer: None,
            kind: None,
            field: None,
            status: Some(ExceptionStatus::Open),
            older_than: None,
            after: None,
            limit: DEFAULT_LIMIT,
            assignee: None,
            overdue: false,
        }
    }
}

/// One thing wrong with a query: the parameter and why. The edges report it as
/// `invalid_query` naming the parameter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{parameter}: {message}")]
pub struct QueryError {
    pub parameter: &'static str,
    pub message: String,
}

impl QueryError {
    fn new(parameter: &'static str, message: impl std::fmt::Display) -> Self {
        Self {
            parameter,
            message: message.to_string(),
        }
    }
}

impl ExceptionQuery {
    /// Parses every parameter it knows; all that is wrong, in the order given.
    pub fn parse<'a>(
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, Vec<QueryError>> {
        let mut query = Self::default();
        let mut errors = Vec::new();
        for (name, raw) in pairs {
            let raw = raw.trim();
            if raw.is_empty() {
                continue;
            }
            if let Err(e) = query.set(name, raw) {
                errors.push(e);
            }
        }
        if errors.is_empty() {
            Ok(query)
        } else {
            Err(errors)
        }
    }

    fn set(&mut self, name: &str, raw: &str) -> Result<(), QueryError> {
        match name {
            "consumer" => {
                self.consumer = Some(ConsumerId::parse(raw).map_err(|e| value("consumer", e))?);
            }
            "customer" => {
                let uuid = raw
                    .parse::<Uuid>()
                    .map_err(|_| QueryError::new("customer", "not a customer id (a UUID)"))?;
                self.customer =
                    Some(CustomerId::from_uuid(uuid).map_err(|e| value("customer", e))?);
            }
            "kind" => self.kind = Some(ExceptionKind::parse(raw).map_err(|e| value("kind", e))?),
            "field" => {
                self.field = Some(FieldPath::parse(raw).map_err(|e| QueryError::new("field", e))?);
            }
            "status" => {
                self.status = match raw {
                    "all" => None,
                    raw => Some(ExceptionStatus::parse(raw).map_err(|_| {
                        QueryError::new(
                            "status",
                            format!("{raw:?} is not one of: open, resolved, dismissed, all"),
                        )
                    })?),
                };
            }
            "older_than" => {
                self.older_than = Some(parse_age(raw).ok_or_else(|| {
                    QueryError::new(
                        "older_than",
                        format!("{raw:?} is not an age like 45s, 90m, 4h or 2d, up to 10 years"),
                    )
                })?);
            }
            "older_than_secs" => {
                self.older_than = Some(
                    raw.parse::<i64>()
                        .ok()
                        .and_then(Duration::try_seconds)
                        .filter(|age| *age >= Duration::zero() && *age <= MAX_AGE)
                        .ok_or_else(|| {
                            QueryError::new("older_than_secs", "must be 0 to 10 years in seconds")
                        })?,
                );
            }
            "after" => {
                self.after = Some(
                    raw.parse::<Uuid>()
                        .map_err(|_| QueryError::new("after", "not an exception id"))?,
                );
            }
            "assignee" => {
                self.assignee = Some(match raw {
                    "me" => AssigneeQuery::Me,
                    "none" => AssigneeQuery::Nobody,
                    label => AssigneeQuery::Steward(
                        Steward::new(label).map_err(|e| value("assignee", e))?,
                    ),
                });
            }
            "overdue" => {
                self.overdue = match raw {
                    "true" | "1" | "on" => true,
                    "false" | "0" | "off" => false,
                    _ => return Err(QueryError::new("overdue", "must be true or false")),
                };
            }
            "limit" => {
                self.limit = raw
                    .parse::<u32>()
                    .ok()
                    .filter(|n| (1..=MAX_PAGE).contains(n))
                    .ok_or_else(|| QueryError::new("limit", "must be 1 to 1000"))?;
            }
            _ => {}
        }
        Ok(())
    }

    /// The store's filter, with ages measured from `now`; `me` is the steward asking (an
    /// `assignee=me` query needs one).
    pub fn filter(
        &self,
        now: DateTime<Utc>,
        me: Option<&Steward>,
    ) -> Result<ExceptionFilter, QueryError> {
        let assignee = match &self.assignee {
            None => None,
            Some(AssigneeQuery::Nobody) => Some(Assignee::Nobody),
            Some(AssigneeQuery::Steward(steward)) => Some(Assignee::Steward(steward.name())),
            Some(AssigneeQuery::Me) => Some(Assignee::Steward(
                me.ok_or_else(|| {
                    QueryError::new("assignee", "only a steward has exceptions of their own")
                })?
                .name(),
            )),
        };
        Ok(ExceptionFilter {
            consumer: self.consumer.clone(),
            customer: self.customer,
            kind: self.kind,
            field: self.field.as_ref().map(ToString::to_string),
            status: self.status,
            created_before: self.older_than.and_then(|age| now.checked_sub_signed(age)),
            open_only: false,
            after: self.after,
            assignee,
            overdue_at: self.overdue.then_some(now),
        })
    }

    /// The query as `name=value` pairs, for a next page's link or a form filled again.
    pub fn pairs(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if let Some(c) = &self.consumer {
            out.push(("consumer", c.to_string()));
        }
        if let Some(c) = &self.customer {
            out.push(("customer", c.to_string()));
        }
        if let Some(k) = self.kind {
            out.push(("kind", k.to_string()));
        }
        if let Some(f) = &self.field {
            out.push(("field", f.to_string()));
        }
        out.push((
            "status",
            self.status
                .map_or("all", ExceptionStatus::as_str)
                .to_owned(),
        ));
        if let Some(age) = self.older_than {
            out.push(("older_than_secs", age.num_seconds().to_string()));
        }
        match &self.assignee {
            Some(AssigneeQuery::Me) => out.push(("assignee", "me".to_owned())),
            Some(AssigneeQuery::Nobody) => out.push(("assignee", "none".to_owned())),
            Some(AssigneeQuery::Steward(s)) => out.push(("assignee", s.label().to_owned())),
            None => {}
        }
        if self.overdue {
            out.push(("overdue", "true".to_owned()));
        }
        if self.limit != DEFAULT_LIMIT {
            out.push(("limit", self.limit.to_string()));
        }
        out
    }
}

fn value(parameter: &'static str, e: ValueError) -> QueryError {
    QueryError::new(parameter, e)
}

/// `45s`, `90m`, `4h`, `2d`, or a bare number of minutes; at most 10 years. The one parser of
/// ages and durations an edge takes (exception filters, token expiry and overlap).
pub fn parse_age(raw: &str) -> Option<Duration> {
    let (number, unit) = match raw.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => raw.split_at(i),
        None => (raw, "m"),
    };
    let n: i64 = number.parse().ok()?;
    let age = match unit.trim() {
        "s" => Duration::try_seconds(n),
        "m" | "min" => Duration::try_minutes(n),
        "h" => Duration::try_hours(n),
        "d" => Duration::try_days(n),
        _ => None,
    }?;
    (age <= MAX_AGE).then_some(age)
}

/// A page of exceptions, oldest first.
#[derive(Debug, Clone, PartialEq)]
pub struct ExceptionPage {
    pub exceptions: Vec<SyncException>,
    /// The next page's `after`; `None` on the last page.
    pub next_after: Option<Uuid>,
}

/// The steward acting: the label of their token (or of the CLI operator), recorded as the
/// actor of the action's events and as `steward:<label>` on the exception.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Steward {
    actor: Actor,
}

impl Steward {
    pub fn new(label: &str) -> Result<Self, ValueError> {
        Ok(Self {
            actor: Actor::new(ActorKind::Steward, label)?,
        })
    }

    /// How exceptions name the steward who closed them.
    pub fn name(&self) -> String {
        format!("steward:{}", self.actor.id())
    }

    /// The label alone (a token's label).
    pub fn label(&self) -> &str {
        self.actor.id()
    }

    /// The steward as events record them.
    pub fn actor(&self) -> &Actor {
        &self.actor
    }
}

/// Why a list was not given.
#[derive(Debug, thiserror::Error)]
pub enum ListError {
    #[error(transparent)]
    Query(#[from] QueryError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Who an exception is to be assigned to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AssignTo {
    /// The steward asking.
    Me,
    /// Another steward, by their token's label: a live steward token must have it.
    Steward(String),
    /// Nobody: unassign.
    Nobody,
}

/// Why an assignment, approval or rejection was not done. Nothing was recorded.
#[derive(Debug, thiserror::Error)]
pub enum WorkflowError {
    #[error(transparent)]
    Refused(#[from] ExceptionRefusal),
    /// No live steward token has this label.
    #[error("there is no steward named {label:?}")]
    UnknownSteward { label: String },
    #[error("no approval {0}")]
    UnknownApproval(Uuid),
    #[error("approval {id} is already {status}")]
    ApprovalDecided { id: Uuid, status: &'static str },
    /// Four eyes: the steward who asked may not approve or reject their own request.
    #[error("a second steward must decide: {0} asked for this approval")]
    SameSteward(String),
    /// The approval's command was refused or could not be recorded.
    #[error(transparent)]
    Act(#[from] ActError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<idledger_store::delivery::AssignError> for WorkflowError {
    fn from(e: idledger_store::delivery::AssignError) -> Self {
        match e {
            idledger_store::delivery::AssignError::Refused(r) => Self::Refused(r),
            idledger_store::delivery::AssignError::Store(e) => Self::Store(e),
        }
    }
}

/// What a steward asks to do with an exception.
#[derive(Debug, Clone, PartialEq)]
pub struct StewardRequest {
    pub action: StewardAction,
    /// Why (required to dismiss).
    pub reason: Option<String>,
    /// For `accept` of a consumer's value: the value to take into the record (its natural JSON
    /// form). A proposal's value is taken from the proposal.
    pub value: Option<serde_json::Value>,
}

/// What an action did.
#[derive(Debug, Clone, PartialEq)]
pub struct ActionDone {
    /// The exception as it stands after the action.
    pub exception: SyncException,
    /// The events the action recorded: for accept, the value's own event first.
    pub event_ids: Vec<Uuid>,
    /// Four eyes: the policy needs a second steward for this change, so nothing was changed
    /// yet and this approval waits for them.
    pub approval: Option<Approval>,
}

/// Why an action was not done. Nothing was recorded.
#[derive(Debug, thiserror::Error)]
pub enum ActError {
    /// The exception's rules refused it (unknown, closed, no field, value required…).
    #[error(transparent)]
    Refused(#[from] ExceptionRefusal),
    /// The customer's record refused the action's command (e.g. the policy forbids steward
    /// override), or it could not be recorded.
    #[error(transparent)]
    Execute(#[from] ExecuteError),
    /// The four-eyes approval it needs could not be asked for (one is already waiting).
    #[error(transparent)]
    Approval(#[from] ApprovalError),
}

impl From<StoreError> for ActError {
    fn from(e: StoreError) -> Self {
        Self::Execute(ExecuteError::Store(e))
    }
}

impl App {
    pub async fn exception(&self, id: Uuid) -> Result<Option<SyncException>, StoreError> {
        self.deliveries.exception(id).await
    }

    /// A page of the exceptions `query` asks for, as steward `me` (if a steward asks).
    pub async fn exceptions(
        &self,
        query: &ExceptionQuery,
        me: Option<&Steward>,
    ) -> Result<ExceptionPage, ListError> {
        let exceptions = self
            .deliveries
            .exceptions(&query.filter(Utc::now(), me)?, query.limit)
            .await?;
        let next_after = (exceptions.len() == query.limit as usize)
            .then(|| exceptions.last().map(|e| e.id))
            .flatten();
        Ok(ExceptionPage {
            exceptions,
            next_after,
        })
    }

    /// Applies a steward's action to exception `id`. The action is a command on the
    /// customer's record, run as the steward principal (so it is in the field's history with
    /// the steward's provenance), and the exception's change (`accept` and `dismiss` close
    /// it, `repush` records itself and leaves it open until the consumer acknowledges, `route`
    /// records itself and leaves it open until the system of record decides) is
    /// written in the command's transaction with its line in the activity log: all are
    /// recorded, or none.
    ///
    /// Four eyes: where the policy needs a second steward for the change (the customer's
    /// `decide` refuses it `approval_required`), nothing changes yet: the request is kept,
    /// sealed, as a pending approval ([`ActionDone::approval`]) for [`App::approve`].
    pub async fn act(
        &self,
        steward: &Steward,
        id: Uuid,
        request: &StewardRequest,
    ) -> Result<ActionDone, ActError> {
        let exception = self
            .deliveries
            .exception(id)
            .await?
            .ok_or(ExceptionRefusal::Unknown)?;
        let principal = Principal::Steward(steward.actor.clone());
        match self
            .carry_out(&exception, &principal, steward, request, None)
            .await
        {
            Err(ActError::Execute(ExecuteError::Refused(refused)))
                if matches!(refused.refusal, Refusal::ApprovalRequired { .. }) =>
            {
                self.request_approval(&exception, steward, request).await
            }
            other => other,
        }
    }

    async fn request_approval(
        &self,
        exception: &SyncException,
        steward: &Steward,
        request: &StewardRequest,
    ) -> Result<ActionDone, ActError> {
        let at = Utc::now();
        let reason = trimmed(request.reason.as_deref());
        let field = exception.field.clone().unwrap_or_default();
        let approval = self
            .ledger
            .request_approval(
                &NewApproval {
                    exception_id: exception.id,
                    customer_id: exception.customer_id,
                    field: field.clone(),
                    requested_by: steward.name(),
                    request: ApprovalRequest {
                        action: request.action,
                        reason: reason.clone(),
                        value: request.value.clone(),
                    },
                    at,
                },
                &NewActivity {
                    steward: steward.name(),
                    action: "request_approval",
                    exception_id: Some(exception.id),
                    approval_id: None,
                    customer_id: exception.customer_id,
                    field: exception.field.clone(),
                    event_ids: Vec::new(),
                    detail: Some(request.action.as_str().to_owned()),
                    reason,
                    at,
                },
            )
            .await?;
        Ok(ActionDone {
            exception: exception.clone(),
            event_ids: Vec::new(),
            approval: Some(approval),
        })
    }

    /// Runs `request` on `exception` as `principal`: the command, the exception's change and
    /// the activity line (by `acting`, the steward whose request this is, or the approver of
    /// `approval`) in one transaction.
    async fn carry_out(
        &self,
        exception: &SyncException,
        principal: &Principal,
        acting: &Steward,
        request: &StewardRequest,
        approval: Option<ApprovalDecision>,
    ) -> Result<ActionDone, ActError> {
        let id = exception.id;
        let state = exception.state()?;
        let changes = exception::steward_changes(
            &state,
            request.action,
            request.reason.as_deref(),
            request.value.as_ref(),
        )?;
        let reason = trimmed(request.reason.as_deref());
        let (by, approver) = match principal {
            Principal::ApprovedSteward { steward, approver } => (
                format!("steward:{}", steward.id()),
                Some(format!("steward:{}", approver.id())),
            ),
            _ => (acting.name(), None),
        };
        let command = Command {
            customer_id: state.customer_id(),
            idempotency_key: IdempotencyKey::parse(&format!("steward-{}", Uuid::now_v7()))
                .map_err(|e| StoreError::Integrity(e.to_string()))?,
            provenance: ProvenanceInput {
                actor: acting.actor.clone(),
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
        let action = request.action;
        let attach = |result: &CommandResult| -> Result<Option<ExceptionWrite>, ExecuteError> {
            let at = Utc::now();
            let command = match action {
                StewardAction::Repush => ExceptionCommand::Repush {
                    by: by.clone(),
                    event_id: result.events.last().map(|e| e.id),
                    reason: reason.clone(),
                    at,
                },
                StewardAction::Accept => ExceptionCommand::Accept {
                    by: by.clone(),
                    note: {
                        let note = reason
                            .clone()
                            .unwrap_or_else(|| describe_accept(&result.outcomes));
                        match &approver {
                            Some(approver) => format!("{note} (approved by {approver})"),
                            None => note,
                        }
                    },
                    at,
                },
                StewardAction::Dismiss => ExceptionCommand::Dismiss {
                    by: by.clone(),
                    reason: reason.clone(),
                    at,
                },
                StewardAction::Route => ExceptionCommand::Route {
                    by: by.clone(),
                    event_id: result.events.last().map(|e| e.id),
                    reason: reason.clone(),
                    at,
                },
            };
            let activity = NewActivity {
                steward: approver.clone().unwrap_or_else(|| by.clone()),
                action: if approver.is_some() {
                    "approve"
                } else {
                    action.as_str()
                },
                exception_id: Some(id),
                approval_id: approval.as_ref().map(|a| a.approval_id),
                customer_id: exception.customer_id,
                field: exception.field.clone(),
                event_ids: result.events.iter().map(|e| e.id.as_uuid()).collect(),
                detail: approver.is_some().then(|| by.clone()),
                reason: match &approval {
                    Some(decision) => decision.note.clone(),
                    None => reason.clone(),
                },
                at,
            };
            Ok(exception::decide(Some(&state), &command)?
                .into_iter()
                .next()
                .map(|event| ExceptionWrite {
                    exception_id: id,
                    event,
                    activity: Some(activity),
                    approval: approval.clone(),
                }))
        };
        let executed = match self.ledger.execute_with(principal, &command, &attach).await {
            Ok(executed) => executed,
            // Another steward, or the consumer's acknowledgement, closed it meanwhile (or,
            // for an approval, another steward decided it).
            Err(ExecuteError::ExceptionNotOpen { .. }) => {
                let status = self
                    .deliveries
                    .exception(id)
                    .await?
                    .map_or(ExceptionStatus::Resolved, |e| e.status);
                return Err(ExceptionRefusal::Closed { status }.into());
            }
            Err(e) => return Err(e.into()),
        };
        let exception = self
            .deliveries
            .exception(id)
            .await?
            .ok_or(ExceptionRefusal::Unknown)?;
        Ok(ActionDone {
            exception,
            event_ids: executed
                .result
                .events
                .iter()
                .map(|e| e.id.as_uuid())
                .collect(),
            approval: None,
        })
    }

    /// A second steward approves pending approval `id`: its request runs now, recorded with
    /// the first steward as the actor and `steward` as `approved_by`, and the approval closes
    /// in the same transaction. If the exception closed meanwhile, the approval is void.
    pub async fn approve(
        &self,
        steward: &Steward,
        id: Uuid,
        note: Option<&str>,
    ) -> Result<ActionDone, WorkflowError> {
        let (approval, requester) = self.pending_approval(steward, id).await?;
        let request = self
            .ledger
            .approval_request(id)
            .await?
            .ok_or(WorkflowError::UnknownApproval(id))?;
        let exception = self
            .deliveries
            .exception(approval.exception_id)
            .await?
            .ok_or(ExceptionRefusal::Unknown)?;
        let decision = ApprovalDecision {
            approval_id: id,
            decided_by: steward.name(),
            note: trimmed(note),
            at: Utc::now(),
        };
        let principal = Principal::ApprovedSteward {
            steward: requester.actor.clone(),
            approver: steward.actor.clone(),
        };
        let request = StewardRequest {
            action: request.action,
            reason: request.reason,
            value: request.value,
        };
        match self
            .carry_out(
                &exception,
                &principal,
                &requester,
                &request,
                Some(decision.clone()),
            )
            .await
        {
            Ok(mut done) => {
                done.approval = self.ledger.approval(id).await?;
                Ok(done)
            }
            Err(ActError::Refused(ExceptionRefusal::Closed { status })) => {
                let void = ApprovalDecision {
                    note: Some(format!("the exception was {status} before it was approved")),
                    ..decision
                };
                self.ledger
                    .close_approval(&void, ApprovalStatus::Void, None)
                    .await?;
                Err(ExceptionRefusal::Closed { status }.into())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// A second steward rejects pending approval `id`: nothing changes in the record and the
    /// exception stays open.
    pub async fn reject_approval(
        &self,
        steward: &Steward,
        id: Uuid,
        reason: Option<&str>,
    ) -> Result<Approval, WorkflowError> {
        let (approval, _) = self.pending_approval(steward, id).await?;
        let at = Utc::now();
        let reason = trimmed(reason);
        let decision = ApprovalDecision {
            approval_id: id,
            decided_by: steward.name(),
            note: reason.clone(),
            at,
        };
        let activity = NewActivity {
            steward: steward.name(),
            action: "reject_approval",
            exception_id: Some(approval.exception_id),
            approval_id: Some(id),
            customer_id: approval.customer_id,
            field: Some(approval.field.clone()).filter(|f| !f.is_empty()),
            event_ids: Vec::new(),
            detail: Some(approval.requested_by.clone()),
            reason,
            at,
        };
        if !self
            .ledger
            .close_approval(&decision, ApprovalStatus::Rejected, Some(&activity))
            .await?
        {
            return Err(self.decided(id).await);
        }
        self.ledger
            .approval(id)
            .await?
            .ok_or(WorkflowError::UnknownApproval(id))
    }

    /// Approval `id` if it is pending and `steward` is not the one who asked for it, with the
    /// steward who did.
    async fn pending_approval(
        &self,
        steward: &Steward,
        id: Uuid,
    ) -> Result<(Approval, Steward), WorkflowError> {
        let approval = self
            .ledger
            .approval(id)
            .await?
            .ok_or(WorkflowError::UnknownApproval(id))?;
        if approval.status != ApprovalStatus::Pending {
            return Err(WorkflowError::ApprovalDecided {
                id,
                status: approval.status.as_str(),
            });
        }
        if approval.requested_by == steward.name() {
            return Err(WorkflowError::SameSteward(approval.requested_by));
        }
        let label = approval
            .requested_by
            .strip_prefix("steward:")
            .unwrap_or(&approval.requested_by);
        let requester = Steward::new(label).map_err(|e| StoreError::Integrity(e.to_string()))?;
        Ok((approval, requester))
    }

    async fn decided(&self, id: Uuid) -> WorkflowError {
        match self.ledger.approval(id).await {
            Ok(Some(a)) => WorkflowError::ApprovalDecided {
                id,
                status: a.status.as_str(),
            },
            Ok(None) => WorkflowError::UnknownApproval(id),
            Err(e) => e.into(),
        }
    }

    /// Approvals of `status` (`None`: all), of one exception if given, oldest first.
    pub async fn approvals(
        &self,
        status: Option<ApprovalStatus>,
        exception: Option<Uuid>,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<Approval>, StoreError> {
        self.ledger.approvals(status, exception, after, limit).await
    }

    pub async fn approval(&self, id: Uuid) -> Result<Option<Approval>, StoreError> {
        self.ledger.approval(id).await
    }

    /// Gives exception `id` to a steward, or to nobody, as `steward`; recorded in the
    /// activity log.
    pub async fn assign(
        &self,
        steward: &Steward,
        id: Uuid,
        to: &AssignTo,
    ) -> Result<SyncException, WorkflowError> {
        let to = match to {
            AssignTo::Me => Some(steward.name()),
            AssignTo::Nobody => None,
            AssignTo::Steward(label) => {
                let now = Utc::now();
                let known = self.tokens.list().await?.iter().any(|t| {
                    t.role == idledger_store::Role::Steward && t.label == *label && t.live_at(now)
                });
                if !known {
                    return Err(WorkflowError::UnknownSteward {
                        label: label.clone(),
                    });
                }
                Some(
                    Steward::new(label)
                        .map_err(|_| WorkflowError::UnknownSteward {
                            label: label.clone(),
                        })?
                        .name(),
                )
            }
        };
        Ok(self
            .deliveries
            .assign_exception(id, to.as_deref(), &steward.name(), Utc::now())
            .await?)
    }

    /// The open exceptions per kind now: how many, overdue, unassigned, by age.
    pub async fn open_counts(&self) -> Result<Vec<KindCount>, StoreError> {
        self.deliveries.open_counts(Utc::now()).await
    }

    /// What stewards did, oldest first.
    pub async fn activity(
        &self,
        filter: &ActivityFilter,
        limit: u32,
    ) -> Result<Vec<StewardActivity>, StoreError> {
        self.deliveries.activity(filter, limit).await
    }

    /// The same action on many exceptions (at most [`MAX_BULK`], repeats acted on once);
    /// each succeeds or fails on its own, in the order given.
    pub async fn act_on_many(
        &self,
        steward: &Steward,
        ids: &[Uuid],
        request: &StewardRequest,
    ) -> Vec<(Uuid, Result<ActionDone, ActError>)> {
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::with_capacity(ids.len());
        for &id in ids.iter().take(MAX_BULK) {
            if seen.insert(id) {
                out.push((id, self.act(steward, id, request).await));
            }
        }
        out
    }
}

/// The reason trimmed; `None` if blank.
fn trimmed(reason: Option<&str>) -> Option<String> {
    reason
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .map(str::to_owned)
}

/// The note an accepted exception keeps when the steward gave no reason.
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    #[track_caller]
    fn parses(pairs: &[(&str, &str)]) -> ExceptionQuery {
        match ExceptionQuery::parse(pairs.iter().copied()) {
            Ok(q) => q,
            Err(e) => panic!("{pairs:?} should parse: {e:?}"),
        }
    }

    #[track_caller]
    fn refused(pairs: &[(&str, &str)], parameter: &str) {
        match ExceptionQuery::parse(pairs.iter().copied()) {
            Ok(q) => panic!("{pairs:?} should be refused, parsed as {q:?}"),
            Err(errors) => assert!(
                errors.iter().any(|e| e.parameter == parameter),
                "{pairs:?}: expected an error about {parameter}, got {errors:?}"
            ),
        }
    }

    #[test]
    fn defaults_to_open_exceptions_a_hundred_at_a_time() {
        assert_eq!(parses(&[]), ExceptionQuery::default());
        assert_eq!(
            parses(&[("status", ""), ("kind", "  ")]),
            ExceptionQuery::default()
        );
        assert_eq!(
            ExceptionQuery::default().status,
            Some(ExceptionStatus::Open)
        );
        assert_eq!(ExceptionQuery::default().limit, 100);
    }

    #[test]
    fn every_parameter_is_parsed() {
        let customer = "0190a0c4-7a4e-7b8e-9d2f-2f4b6c8d0e1f";
        let q = parses(&[
            ("consumer", "crm"),
            ("customer", customer),
            ("kind", "divergent"),
            ("field", "email"),
            ("status", "all"),
            ("older_than", "4h"),
            ("after", customer),
            ("limit", "7"),
        ]);
        assert_eq!(q.consumer.as_ref().map(ConsumerId::as_str), Some("crm"));
        assert_eq!(q.customer.map(|c| c.to_string()).as_deref(), Some(customer));
        assert_eq!(q.kind, Some(ExceptionKind::Divergent));
        assert_eq!(q.field, Some(FieldPath::Email));
        assert_eq!(q.status, None);
        assert_eq!(q.older_than, Some(Duration::hours(4)));
        assert_eq!(q.after.map(|a| a.to_string()).as_deref(), Some(customer));
        assert_eq!(q.limit, 7);
    }

    #[test]
    fn ages_in_every_unit_and_in_seconds() {
        for (raw, age) in [
            ("45s", Duration::seconds(45)),
            ("90m", Duration::minutes(90)),
            ("90", Duration::minutes(90)),
            ("4h", Duration::hours(4)),
            ("2d", Duration::days(2)),
        ] {
            assert_eq!(
                parses(&[("older_than", raw)]).older_than,
                Some(age),
                "{raw}"
            );
        }
        assert_eq!(
            parses(&[("older_than_secs", "3600")]).older_than,
            Some(Duration::hours(1))
        );
    }

    #[test]
    fn bad_values_name_their_parameter() {
        refused(&[("consumer", "CRM")], "consumer");
        refused(&[("customer", "nope")], "customer");
        refused(&[("kind", "sideways")], "kind");
        refused(&[("field", "shoe_size")], "field");
        refused(&[("status", "any")], "status");
        refused(&[("older_than", "4 weeks")], "older_than");
        // Far beyond what time can go back (this once overflowed the clock and panicked).
        refused(&[("older_than", "100000000d")], "older_than");
        refused(&[("older_than", "99999999999999999999d")], "older_than");
        refused(&[("older_than_secs", "-1")], "older_than_secs");
        refused(&[("after", "12")], "after");
        refused(&[("limit", "0")], "limit");
        refused(&[("limit", "1001")], "limit");
    }

    #[test]
    fn every_mistake_is_reported_at_once() {
        let errors = ExceptionQuery::parse([("kind", "x"), ("status", "y")]).unwrap_err();
        let names: Vec<&str> = errors.iter().map(|e| e.parameter).collect();
        assert_eq!(names, ["kind", "status"]);
    }

    #[test]
    fn pairs_parse_back_to_the_same_query() {
        let q = parses(&[
            ("consumer", "crm"),
            ("kind", "stale"),
            ("status", "dismissed"),
            ("older_than", "2d"),
            ("limit", "5"),
        ]);
        let pairs = q.pairs();
        let again = parses(
            &pairs
                .iter()
                .map(|(k, v)| (*k, v.as_str()))
                .collect::<Vec<_>>(),
        );
        assert_eq!(again, q);
    }

    #[test]
    fn the_age_is_measured_from_now() {
        let now = Utc::now();
        let q = parses(&[("older_than", "1h")]);
        assert_eq!(
            q.filter(now, None).unwrap().created_before,
            Some(now - Duration::hours(1))
        );
        assert_eq!(parses(&[]).filter(now, None).unwrap().created_before, None);
    }

    #[test]
    fn assignee_and_overdue_become_the_store_filter() {
        let now = Utc::now();
        let me = Steward::new("jane").unwrap();
        let mine = parses(&[("assignee", "me"), ("overdue", "true")]);
        let filter = mine.filter(now, Some(&me)).unwrap();
        assert_eq!(
            filter.assignee,
            Some(Assignee::Steward("steward:jane".to_owned()))
        );
        assert_eq!(filter.overdue_at, Some(now));
        // "me" means nobody for a caller who is not a steward: refused, not guessed.
        assert_eq!(mine.filter(now, None).unwrap_err().parameter, "assignee");
        let nobody = parses(&[("assignee", "none")]).filter(now, None).unwrap();
        assert_eq!(nobody.assignee, Some(Assignee::Nobody));
        assert_eq!(nobody.overdue_at, None);
        let bob = parses(&[("assignee", "bob")]).filter(now, None).unwrap();
        assert_eq!(
            bob.assignee,
            Some(Assignee::Steward("steward:bob".to_owned()))
        );
        refused(&[("overdue", "soon")], "overdue");
        let again = parses(&[("assignee", "bob"), ("overdue", "true")]);
        let pairs = again.pairs();
        assert_eq!(
            parses(
                &pairs
                    .iter()
                    .map(|(k, v)| (*k, v.as_str()))
                    .collect::<Vec<_>>()
            ),
            again
        );
    }
}
