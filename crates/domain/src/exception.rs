//! The lifecycle of a sync exception as a pure state machine: [`decide`] turns a command into
//! events or an [`ExceptionRefusal`], the infallible [`evolve`] applies them.
//!
//! An exception is identified by its [`ExceptionKey`] (what it is about, the customer, the
//! field, the kind), and at most one per key is open. The state `decide` and `evolve` work on
//! is the key's latest exception: raising counts the open one again, or — when it is closed or
//! there is none — opens a new one, with the id the caller chose. Stewards act on one
//! exception; [`steward_changes`] plans the customer command that carries their action, which
//! must succeed before the exception is closed or annotated.
//!
//! Nothing here reads a clock or mints ids: every command says when, and a raise names the id
//! a new exception gets.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::command::{Change, MAX_REASON_CHARS};
use crate::delivery::{
    AUTO_RESOLVER, ExceptionKind, ExceptionStatus, ExceptionSubject, Resolution,
};
use crate::event::StewardAction;
use crate::field::{FieldPath, FieldValue};
use crate::ids::{CustomerId, EventId, ProposalId};
use crate::values::ValueError;

/// What identifies an open exception: at most one is open per key. Built only through
/// [`ExceptionKey::new`], so its subject is always of the side its kind is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ExceptionKey {
    subject: ExceptionSubject,
    customer_id: CustomerId,
    field: Option<FieldPath>,
    kind: ExceptionKind,
}

impl ExceptionKey {
    /// Refuses a subject of the wrong side for `kind` (see [`ExceptionSubject::check`]).
    /// `field` is `None` for an exception about the customer as a whole.
    pub fn new(
        kind: ExceptionKind,
        subject: ExceptionSubject,
        customer_id: CustomerId,
        field: Option<FieldPath>,
    ) -> Result<Self, ValueError> {
        subject.check(kind)?;
        Ok(Self {
            subject,
            customer_id,
            field,
            kind,
        })
    }

    pub fn subject(&self) -> &ExceptionSubject {
        &self.subject
    }

    pub fn customer_id(&self) -> CustomerId {
        self.customer_id
    }

    pub fn field(&self) -> Option<&FieldPath> {
        self.field.as_ref()
    }

    pub fn kind(&self) -> ExceptionKind {
        self.kind
    }
}

/// Closing an exception: by whom (`steward:<label>`, or [`AUTO_RESOLVER`]), how, why, when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Closing {
    pub by: String,
    pub resolution: Resolution,
    pub note: String,
    pub at: DateTime<Utc>,
}

impl Closing {
    /// Closed by idledger itself because its cause went away (an acknowledgement, a run that
    /// no longer finds it, an erasure): the one form every automatic close takes.
    pub fn automatic(note: impl Into<String>, at: DateTime<Utc>) -> Self {
        Self {
            by: AUTO_RESOLVER.to_owned(),
            resolution: Resolution::Auto,
            note: note.into(),
            at,
        }
    }
}

/// The last steward action that left an exception open (a re-push, a route to the system of
/// record). Its serde form is the
/// store's `last_action` column, which the API and steward page show as is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastAction {
    pub action: StewardAction,
    pub by: String,
    pub at: DateTime<Utc>,
    /// The `steward_acted` event that carries the re-push.
    #[serde(default)]
    pub event_id: Option<EventId>,
    #[serde(default)]
    pub reason: Option<String>,
}

/// How long a steward has to deal with an exception before it is overdue: as long as its
/// consumer has to acknowledge a change (`consumer_sla`, the consumer's `sla_secs`), or, for
/// an exception about a source system (or a consumer no longer registered), the kind's own
/// default. The one rule every list, count and filter of overdue exceptions follows.
pub fn resolution_sla(
    kind: ExceptionKind,
    consumer_sla: Option<chrono::Duration>,
) -> chrono::Duration {
    match (kind.about_consumer(), consumer_sla) {
        (true, Some(sla)) => sla,
        _ => kind.default_resolution_sla(),
    }
}

/// One sync exception as it stands.
#[derive(Debug, Clone, PartialEq)]
pub struct ExceptionState {
    pub id: Uuid,
    pub key: ExceptionKey,
    /// The proposal a `proposal` exception is about (the newest, if it recurred); the value
    /// stays in the customer's log.
    pub proposal_id: Option<ProposalId>,
    /// The evidence of the newest occurrence: record and consumer versions/hashes, the run
    /// that found it, etc.
    pub detail: serde_json::Value,
    /// How often it was raised while open (1 when opened).
    pub occurrences: u64,
    pub opened_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// `None` while open. The status is derived from it, so the two cannot disagree.
    pub closed: Option<Closing>,
    pub last_action: Option<LastAction>,
    /// The steward working it (`steward:<label>`), if any.
    pub assigned_to: Option<String>,
}

impl ExceptionState {
    pub fn status(&self) -> ExceptionStatus {
        self.closed
            .as_ref()
            .map_or(ExceptionStatus::Open, |c| c.resolution.status())
    }

    pub fn is_open(&self) -> bool {
        self.closed.is_none()
    }

    pub fn kind(&self) -> ExceptionKind {
        self.key.kind
    }

    pub fn subject(&self) -> &ExceptionSubject {
        &self.key.subject
    }

    pub fn customer_id(&self) -> CustomerId {
        self.key.customer_id
    }

    pub fn field(&self) -> Option<&FieldPath> {
        self.key.field.as_ref()
    }
}

/// What may happen to an exception.
#[derive(Debug, Clone, PartialEq)]
pub enum ExceptionCommand {
    /// It was seen (again): counts the open exception of `key` again with the newest detail,
    /// or opens a new one with id `new_id` (a fresh UUIDv7, used only then).
    Raise {
        new_id: Uuid,
        key: ExceptionKey,
        /// Only for `proposal` exceptions: the proposal seen.
        proposal_id: Option<ProposalId>,
        detail: serde_json::Value,
        at: DateTime<Utc>,
    },
    /// A steward had the record's value sent to the consumer again; it stays open until the
    /// consumer acknowledges it.
    Repush {
        by: String,
        event_id: Option<EventId>,
        reason: Option<String>,
        at: DateTime<Utc>,
    },
    /// A steward took the value into the record (see [`accept_change`]).
    Accept {
        by: String,
        note: String,
        at: DateTime<Utc>,
    },
    /// A steward closed it without a change; the reason is required.
    Dismiss {
        by: String,
        reason: Option<String>,
        at: DateTime<Utc>,
    },
    /// Its cause went away (an acknowledgement, a reconciliation run, an erasure).
    CloseAutomatically { note: String, at: DateTime<Utc> },
    /// A steward (`by`) gave it to a steward (`to`, `steward:<label>`), or took it back from
    /// whoever had it (`to: None`).
    Assign {
        to: Option<String>,
        by: String,
        at: DateTime<Utc>,
    },
    /// A steward sent the proposal to its field's system of record; it stays open until the
    /// system of record decides it.
    Route {
        by: String,
        event_id: Option<EventId>,
        reason: Option<String>,
        at: DateTime<Utc>,
    },
    /// The field's system of record decided the proposal with its own token (`by`:
    /// [`decided_by`]): accepted closes it `accepted`, rejected `dismissed`. On an exception
    /// already closed it decides nothing, like an automatic close: a steward may have been
    /// first.
    DecidedBySource {
        by: String,
        accepted: bool,
        note: String,
        at: DateTime<Utc>,
    },
}

/// How an exception names the source system that closed it by deciding its proposal.
pub fn decided_by(source: &crate::ids::SourceId) -> String {
    format!("source:{source}")
}

/// What happened to an exception.
#[derive(Debug, Clone, PartialEq)]
pub enum ExceptionEvent {
    /// A new exception; the state before it, if any, was closed and is no longer the key's
    /// latest.
    Opened {
        id: Uuid,
        key: ExceptionKey,
        proposal_id: Option<ProposalId>,
        detail: serde_json::Value,
        at: DateTime<Utc>,
    },
    /// Raised again while open.
    Recurred {
        proposal_id: Option<ProposalId>,
        detail: serde_json::Value,
        at: DateTime<Utc>,
    },
    Repushed(LastAction),
    /// Sent to the system of record: recorded as `last_action`, left open.
    Routed(LastAction),
    Closed(Closing),
    Assigned {
        to: Option<String>,
        by: String,
        at: DateTime<Utc>,
    },
}

/// Why a command on an exception was refused. Messages name ids, kinds, statuses and fields,
/// never the exception's detail; only `InvalidValue` for a value the steward gave repeats the
/// field parser's reason, which may quote part of that value (as the API's always has).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExceptionRefusal {
    #[error("no such sync exception")]
    Unknown,
    #[error("the exception is already {status}")]
    Closed { status: ExceptionStatus },
    #[error(
        "a {kind} exception is about a source system, which is not sent the record; accept or dismiss it"
    )]
    NotAConsumer { kind: ExceptionKind },
    #[error(
        "this exception concerns the customer as a whole; there is no {} to {}",
        if *.action == StewardAction::Accept { "value" } else { "field" },
        .action.as_str()
    )]
    NoField { action: StewardAction },
    #[error("the exception does not name the proposal it is about")]
    NoProposal,
    #[error("a {kind} exception is not a proposal: only a proposal goes to its system of record")]
    NotAProposal { kind: ExceptionKind },
    #[error(
        "to accept a value of {field}, the steward must give it: idledger holds at most its hash"
    )]
    ValueRequired { field: FieldPath },
    #[error("invalid value for {field}: {reason}")]
    InvalidValue { field: String, reason: String },
    #[error(
        "a {kind} exception can only be dismissed here; merge the two records (POST /v1/customers/{{id}}/merge) to resolve it"
    )]
    DismissOnly { kind: ExceptionKind },
    #[error("{reason}")]
    InvalidCommand { reason: String },
}

impl ExceptionRefusal {
    /// The stable, machine-readable code clients branch on.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Unknown => "unknown_exception",
            Self::Closed { .. } => "exception_closed",
            Self::NotAConsumer { .. } => "not_a_consumer",
            Self::NoField { .. } => "no_field",
            Self::NoProposal => "no_proposal",
            Self::NotAProposal { .. } => "not_a_proposal",
            Self::ValueRequired { .. } => "value_required",
            Self::InvalidValue { .. } => "invalid_value",
            Self::DismissOnly { .. } => "dismiss_only",
            Self::InvalidCommand { .. } => "invalid_command",
        }
    }
}

/// Decides `command` against the key's latest exception (`None`: there has been none).
/// Closing what is already closed, automatically, decides nothing: acks and runs may race.
pub fn decide(
    state: Option<&ExceptionState>,
    command: &ExceptionCommand,
) -> Result<Vec<ExceptionEvent>, ExceptionRefusal> {
    match command {
        ExceptionCommand::Raise {
            new_id,
            key,
            proposal_id,
            detail,
            at,
        } => raise(state, *new_id, key, *proposal_id, detail, *at),
        ExceptionCommand::Repush {
            by,
            event_id,
            reason,
            at,
        } => Ok(vec![ExceptionEvent::Repushed(noted(
            state,
            StewardAction::Repush,
            by,
            *event_id,
            reason.as_deref(),
            *at,
        )?)]),
        ExceptionCommand::Accept { by, note, at } => {
            let state = state.ok_or(ExceptionRefusal::Unknown)?;
            check_action(state, StewardAction::Accept, None)?;
            Ok(vec![ExceptionEvent::Closed(Closing {
                by: by.clone(),
                resolution: Resolution::Accepted,
                note: note.clone(),
                at: *at,
            })])
        }
        ExceptionCommand::Dismiss { by, reason, at } => {
            let state = state.ok_or(ExceptionRefusal::Unknown)?;
            let reason = check_action(state, StewardAction::Dismiss, reason.as_deref())?;
            Ok(vec![ExceptionEvent::Closed(Closing {
                by: by.clone(),
                resolution: Resolution::Dismissed,
                // `check_action` refuses a dismissal without a reason.
                note: reason.unwrap_or_default(),
                at: *at,
            })])
        }
        ExceptionCommand::Route {
            by,
            event_id,
            reason,
            at,
        } => Ok(vec![ExceptionEvent::Routed(noted(
            state,
            StewardAction::Route,
            by,
            *event_id,
            reason.as_deref(),
            *at,
        )?)]),
        ExceptionCommand::DecidedBySource {
            by,
            accepted,
            note,
            at,
        } => match state {
            Some(state) if state.kind() != ExceptionKind::Proposal => {
                Err(ExceptionRefusal::NotAProposal { kind: state.kind() })
            }
            Some(state) if state.is_open() => Ok(vec![ExceptionEvent::Closed(Closing {
                by: by.clone(),
                resolution: if *accepted {
                    Resolution::Accepted
                } else {
                    Resolution::Dismissed
                },
                note: note.clone(),
                at: *at,
            })]),
            Some(_) => Ok(Vec::new()),
            None => Err(ExceptionRefusal::Unknown),
        },
        ExceptionCommand::CloseAutomatically { note, at } => match state {
            Some(state) if state.is_open() => Ok(vec![ExceptionEvent::Closed(Closing::automatic(
                note.clone(),
                *at,
            ))]),
            _ => Ok(Vec::new()),
        },
        ExceptionCommand::Assign { to, by, at } => {
            let state = state.ok_or(ExceptionRefusal::Unknown)?;
            if !state.is_open() {
                return Err(ExceptionRefusal::Closed {
                    status: state.status(),
                });
            }
            if state.assigned_to == *to {
                return Ok(Vec::new());
            }
            Ok(vec![ExceptionEvent::Assigned {
                to: to.clone(),
                by: by.clone(),
                at: *at,
            }])
        }
    }
}

/// A steward action that leaves the exception open and is noted as its last action (a
/// re-push, a route), checked like every action.
fn noted(
    state: Option<&ExceptionState>,
    action: StewardAction,
    by: &str,
    event_id: Option<EventId>,
    reason: Option<&str>,
    at: DateTime<Utc>,
) -> Result<LastAction, ExceptionRefusal> {
    let state = state.ok_or(ExceptionRefusal::Unknown)?;
    let reason = check_action(state, action, reason)?;
    Ok(LastAction {
        action,
        by: by.to_owned(),
        at,
        event_id,
        reason,
    })
}

fn raise(
    state: Option<&ExceptionState>,
    new_id: Uuid,
    key: &ExceptionKey,
    proposal_id: Option<ProposalId>,
    detail: &serde_json::Value,
    at: DateTime<Utc>,
) -> Result<Vec<ExceptionEvent>, ExceptionRefusal> {
    if proposal_id.is_some() && key.kind != ExceptionKind::Proposal {
        return Err(ExceptionRefusal::InvalidCommand {
            reason: format!("a {} exception names no proposal", key.kind),
        });
    }
    // The caller looked the exception up by key; another key's would be counted wrongly.
    if let Some(state) = state
        && state.key != *key
    {
        return Err(ExceptionRefusal::InvalidCommand {
            reason: format!(
                "exception {} is not about the same system, customer, field and kind",
                state.id
            ),
        });
    }
    let event = match state {
        Some(state) if state.is_open() => ExceptionEvent::Recurred {
            proposal_id,
            detail: detail.clone(),
            at,
        },
        _ => ExceptionEvent::Opened {
            id: new_id,
            key: key.clone(),
            proposal_id,
            detail: detail.clone(),
            at,
        },
    };
    Ok(vec![event])
}

/// Applies `event` to the key's latest exception. `Opened` starts a new one whatever came
/// before; any other event needs an exception, and `decide` emits none without one.
pub fn evolve(state: Option<ExceptionState>, event: &ExceptionEvent) -> Option<ExceptionState> {
    if let ExceptionEvent::Opened {
        id,
        key,
        proposal_id,
        detail,
        at,
    } = event
    {
        return Some(ExceptionState {
            id: *id,
            key: key.clone(),
            proposal_id: *proposal_id,
            detail: detail.clone(),
            occurrences: 1,
            opened_at: *at,
            updated_at: *at,
            closed: None,
            last_action: None,
            assigned_to: None,
        });
    }
    let mut state = state?;
    match event {
        ExceptionEvent::Opened { .. } => {}
        ExceptionEvent::Recurred {
            proposal_id,
            detail,
            at,
        } => {
            state.occurrences = state.occurrences.saturating_add(1);
            state.proposal_id = *proposal_id;
            state.detail = detail.clone();
            state.updated_at = *at;
        }
        ExceptionEvent::Repushed(action) | ExceptionEvent::Routed(action) => {
            state.updated_at = action.at;
            state.last_action = Some(action.clone());
        }
        ExceptionEvent::Closed(closing) => {
            state.updated_at = closing.at;
            state.closed = Some(closing.clone());
        }
        ExceptionEvent::Assigned { to, at, .. } => {
            state.updated_at = *at;
            state.assigned_to = to.clone();
        }
    }
    Some(state)
}

/// The key's latest exception after `events`, from nothing.
pub fn fold<'a>(events: impl IntoIterator<Item = &'a ExceptionEvent>) -> Option<ExceptionState> {
    events.into_iter().fold(None, evolve)
}

/// The changes of the customer command that carries a steward's `action` on `state`: for
/// `accept`, the change taking the value into the record ([`accept_change`]) first, then the
/// [`Change::ActOnException`] recording the action ([`action_change`]). Refused on the same
/// rules as [`decide`], so a refused action records nothing.
pub fn steward_changes(
    state: &ExceptionState,
    action: StewardAction,
    reason: Option<&str>,
    value: Option<&serde_json::Value>,
) -> Result<Vec<Change>, ExceptionRefusal> {
    check_action(state, action, reason)?;
    let mut changes = Vec::with_capacity(2);
    if action == StewardAction::Accept {
        changes.push(accept_change(state, value)?);
    }
    changes.push(action_change(state, action, reason));
    Ok(changes)
}

/// The change that takes an accepted value into the record: the proposal's own acceptance
/// for a `proposal` exception, otherwise a steward set of `value` (the consumer's or the
/// source's, which idledger does not hold), parsed by the field's kind. The policy may still
/// forbid the set (`steward_override`); that is the customer's `decide` to say.
pub fn accept_change(
    state: &ExceptionState,
    value: Option<&serde_json::Value>,
) -> Result<Change, ExceptionRefusal> {
    let field = match accept_target(state)? {
        AcceptTarget::Proposal(proposal_id) => return Ok(Change::AcceptProposal { proposal_id }),
        AcceptTarget::Field(field) => field,
    };
    let Some(raw) = value else {
        return Err(ExceptionRefusal::ValueRequired {
            field: field.clone(),
        });
    };
    let value = FieldValue::parse(field, raw).map_err(|e| ExceptionRefusal::InvalidValue {
        field: field.to_string(),
        reason: e.to_string(),
    })?;
    Ok(Change::SetField {
        field: field.clone(),
        value,
        expected_version: None,
    })
}

/// The change recording a steward's `action` on `state` (the `steward_acted` event), with the
/// reason trimmed and a blank one left out.
pub fn action_change(
    state: &ExceptionState,
    action: StewardAction,
    reason: Option<&str>,
) -> Change {
    Change::ActOnException {
        exception_id: state.id,
        consumer_id: state.subject().as_str().to_owned(),
        field: state.field().cloned(),
        action,
        reason: trimmed(reason).map(str::to_owned),
        proposal_id: state.proposal_id.filter(|_| action == StewardAction::Route),
    }
}

enum AcceptTarget<'a> {
    Proposal(ProposalId),
    Field(&'a FieldPath),
}

/// What accepting takes into the record, as far as the exception alone says.
fn accept_target(state: &ExceptionState) -> Result<AcceptTarget<'_>, ExceptionRefusal> {
    if state.kind() == ExceptionKind::Proposal {
        return state
            .proposal_id
            .map(AcceptTarget::Proposal)
            .ok_or(ExceptionRefusal::NoProposal);
    }
    state
        .field()
        .map(AcceptTarget::Field)
        .ok_or(ExceptionRefusal::NoField {
            action: StewardAction::Accept,
        })
}

/// The rules every steward action obeys before anything is recorded; the reason, trimmed
/// (`None` if blank).
fn check_action(
    state: &ExceptionState,
    action: StewardAction,
    reason: Option<&str>,
) -> Result<Option<String>, ExceptionRefusal> {
    if !state.is_open() {
        return Err(ExceptionRefusal::Closed {
            status: state.status(),
        });
    }
    // A duplicate pair is resolved by a merge (a later step) or dismissed ("not the same
    // person"): there is no value to accept, nothing to re-push or route.
    if state.kind().about_customers() && action != StewardAction::Dismiss {
        return Err(ExceptionRefusal::DismissOnly { kind: state.kind() });
    }
    match action {
        StewardAction::Repush => {
            if state.kind().about_source() {
                return Err(ExceptionRefusal::NotAConsumer { kind: state.kind() });
            }
            if state.field().is_none() {
                return Err(ExceptionRefusal::NoField { action });
            }
        }
        StewardAction::Accept => {
            accept_target(state)?;
        }
        StewardAction::Dismiss => {}
        StewardAction::Route => {
            if state.kind() != ExceptionKind::Proposal {
                return Err(ExceptionRefusal::NotAProposal { kind: state.kind() });
            }
            if state.proposal_id.is_none() {
                return Err(ExceptionRefusal::NoProposal);
            }
        }
    }
    let reason = trimmed(reason);
    if let Some(reason) = reason
        && reason.chars().count() > MAX_REASON_CHARS
    {
        return Err(invalid_reason(format!(
            "must be at most {MAX_REASON_CHARS} characters"
        )));
    }
    if action == StewardAction::Dismiss && reason.is_none() {
        return Err(invalid_reason("a dismissal must give a reason".to_owned()));
    }
    Ok(reason.map(str::to_owned))
}

fn trimmed(reason: Option<&str>) -> Option<&str> {
    reason.map(str::trim).filter(|r| !r.is_empty())
}

fn invalid_reason(reason: String) -> ExceptionRefusal {
    ExceptionRefusal::InvalidValue {
        field: "reason".to_owned(),
        reason,
    }
}
