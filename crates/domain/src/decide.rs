//! `decide`: checks a command against the authority policy and the field state machines and
//! turns it into events, or refuses it. Pure: time, ids and the caller come from the context.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::challenge::ChallengeSecret;
use crate::command::{
    Change, Command, Context, MAX_CHANGES, MAX_REASON_CHARS, Principal, Refusal, Refused,
};
use crate::event::{
    CancelReason, ConsentTerms, Event, EventEnvelope, EventPayload, Provenance, Repush,
    RepushedValue, RoutedProposal, SetMode, StewardAction,
};
use crate::field::{FieldKind, FieldPath, FieldValue};
use crate::ids::{
    Actor, ActorKind, ChallengeId, EventId, HouseholdId, IdempotencyKey, ProposalId, Purpose,
    SourceId,
};
use crate::policy::{ADMIN_SOURCE, Policy, RETENTION_SOURCE, STEWARD_SOURCE, WriteMode};
use crate::state::{ConsentState, ConsentStatus, CustomerState, evolve};
use crate::values::{ConsentChannel, Jurisdiction, LegalBasis, NoticeRef};

/// Longest consumer or source id a steward action may name (the store's own limit).
const MAX_SYSTEM_ID_CHARS: usize = 64;
/// How far in the future a source's `observed_at` may lie (clock skew between systems).
const MAX_CLOCK_SKEW_MINUTES: i64 = 5;

/// What became of one change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    Registered,
    /// The record changed.
    Applied {
        field: FieldPath,
        version: u64,
    },
    /// Nothing to change: same value and state, or an echo of our own delivery.
    Unchanged {
        field: FieldPath,
    },
    /// Recorded as a proposal for stewards; the record is unchanged.
    Proposed {
        field: FieldPath,
        proposal_id: ProposalId,
        system_of_record: SourceId,
    },
    /// Waiting for verification; the current value stays authoritative.
    Pending {
        field: FieldPath,
        challenge_id: ChallengeId,
        expires_at: DateTime<Utc>,
    },
    ProposalResolved {
        proposal_id: ProposalId,
        accepted: bool,
    },
    /// The customer's processing is (`restricted`) or is no longer restricted; `changed`:
    /// whether this command changed it.
    Restriction {
        restricted: bool,
        changed: bool,
    },
    /// A steward's action on a sync exception was recorded.
    StewardActed {
        exception_id: Uuid,
        action: StewardAction,
    },
    /// A guardian or delegate relationship was recorded (`ended` false) or ended.
    Relationship {
        relationship_id: crate::ids::RelationshipId,
        ended: bool,
    },
}

/// The events a command produced (possibly none) and one outcome per change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub events: Vec<EventEnvelope>,
    pub outcomes: Vec<Outcome>,
}

/// Decides `command` against `state`. On success the events, folded onto `state`, give the
/// new state; on refusal nothing is to be recorded.
pub fn decide(
    state: &CustomerState,
    command: &Command,
    ctx: &Context<'_>,
) -> Result<Decision, Refused> {
    // Before validation: whatever the command, the answer for an erased record is the same.
    if let Some(erasure) = &state.erased {
        return Err(Refused::from(Refusal::Erased {
            erased_at: erasure.at,
        }));
    }
    if let Some(link) = &state.merged_into {
        return Err(Refused::from(Refusal::MergedInto {
            survivor: link.customer,
        }));
    }
    validate_command(command, ctx)?;
    if let Some(expected) = command.expected_stream_version
        && expected != state.stream_version
    {
        return Err(Refusal::RecordVersionConflict {
            expected,
            actual: state.stream_version,
        }
        .into());
    }
    let (source, actor) = match &ctx.principal {
        Principal::Source(s) => (s.clone(), claimed_actor(s, &command.provenance.actor, ctx)?),
        Principal::Steward(steward) | Principal::ApprovedSteward { steward, .. } => (
            SourceId::parse(STEWARD_SOURCE).map_err(|e| Refusal::InvalidCommand {
                reason: e.to_string(),
            })?,
            steward.clone(),
        ),
        Principal::Admin(admin) => (
            SourceId::parse(ADMIN_SOURCE).map_err(|e| Refusal::InvalidCommand {
                reason: e.to_string(),
            })?,
            admin.clone(),
        ),
    };
    let provenance = Provenance {
        source,
        actor,
        on_behalf_of: command.provenance.on_behalf_of.clone(),
        evidence: command.provenance.evidence.clone(),
        observed_at: command.provenance.observed_at,
        recorded_at: ctx.now,
        correlation_id: command.provenance.correlation_id,
        causation_id: command.provenance.causation_id,
        idempotency_key: command.idempotency_key.clone(),
        reason: command.provenance.reason.clone(),
        approved_by: match &ctx.principal {
            Principal::ApprovedSteward { approver, .. } => Some(approver.clone()),
            _ => None,
        },
    };
    let mut decider = Decider {
        state: state.clone(),
        ctx,
        provenance,
        events: Vec::new(),
        outcomes: Vec::new(),
        minted: 0,
    };
    for (index, change) in command.changes.iter().enumerate() {
        let refused = |refusal| Refused {
            change_index: Some(index),
            refusal,
        };
        // A claim to act for the subject is checked against the recorded relationships
        // before anything else about the change.
        if let Some(claim) = &command.provenance.on_behalf_of {
            crate::delegation::check_claim(&decider.state, claim, change, ctx.policy, ctx.now)
                .map_err(refused)?;
        }
        let outcome = decider.apply(change).map_err(refused)?;
        decider.outcomes.push(outcome);
    }
    Ok(Decision {
        events: decider.events,
        outcomes: decider.outcomes,
    })
}

/// The actor a source's command may record: never a steward (only idledger's stewards act
/// as one), and the subject only through a source the policy marks subject-facing.
fn claimed_actor(source: &SourceId, actor: &Actor, ctx: &Context<'_>) -> Result<Actor, Refused> {
    let allowed = match actor.kind() {
        ActorKind::Steward => false,
        ActorKind::Subject => ctx.policy.subject_facing(source),
        ActorKind::Agent | ActorKind::System => true,
    };
    if allowed {
        Ok(actor.clone())
    } else {
        Err(Refusal::ActorNotAllowed {
            source_id: source.clone(),
            kind: actor.kind(),
        }
        .into())
    }
}

/// Decides the erasure of a customer's record (right to erasure): the one `customer_erased`
/// event to record, or a refusal. Not a [`Change`]: erasure is no source system's write but an
/// administrative act, which the store carries out together with destroying the customer's
/// data key. `provenance` names who asks (its `recorded_at` is the decision's "now");
/// `id_seed` is a fresh UUIDv7 the event id is derived from.
pub fn decide_erasure(
    state: &CustomerState,
    reason: &str,
    provenance: Provenance,
    policy: &Policy,
    id_seed: Uuid,
) -> Result<EventEnvelope, Refused> {
    if let Some(erasure) = &state.erased {
        return Err(Refused::from(Refusal::Erased {
            erased_at: erasure.at,
        }));
    }
    if !state.registered {
        return Err(Refused::from(Refusal::NotRegistered));
    }
    check_reason(reason)?;
    Ok(EventEnvelope {
        id: EventId::from(derive_id(id_seed, 0)),
        stream_version: state.stream_version + 1,
        event: Event {
            payload: EventPayload::CustomerErased {
                reason: reason.to_owned(),
            },
            provenance,
            policy_version: policy.version().clone(),
        },
    })
}

/// Decides what the retention policy expires in a customer's record at `now`: one
/// `field_expired` event per value not changed for longer than the policy's `retain_days` for
/// its field, and per consent record (granted or withdrawn) not renewed or changed for longer
/// than `consent_retention_days` for its purpose — nothing if none, or if the record is erased,
/// restricted or unknown. "Changed" is when the current value, or the consent record, was last recorded;
/// a write of the same value is no change (it records nothing), so it does not renew it.
/// `provenance` is the retention job's ([`retention_provenance`]); `id_seed` is a fresh
/// UUIDv7 the event ids are derived from.
pub fn decide_expiry(
    state: &CustomerState,
    now: DateTime<Utc>,
    policy: &Policy,
    provenance: &Provenance,
    id_seed: Uuid,
) -> Vec<EventEnvelope> {
    // A restricted record is kept as it is (GDPR Art. 18: the subject may need the data for
    // a claim); retention resumes once the restriction is lifted.
    // A merged record is kept as it was until an unmerge: the survivor's copy expires.
    if state.erased.is_some()
        || state.restricted.is_some()
        || state.merged_into.is_some()
        || !state.registered
    {
        return Vec::new();
    }
    let expired = |field: &FieldPath, changed_at: DateTime<Utc>| {
        policy
            .retention_of(field)
            .and_then(|keep| changed_at.checked_add_signed(keep))
            .is_some_and(|until| until <= now)
    };
    let values = state.fields.iter().filter_map(|(field, rec)| {
        let changed_at = rec.recorded_at?;
        (rec.value.is_some() && expired(field, changed_at)).then(|| (field.clone(), rec.version))
    });
    let consents = state.consents.iter().filter_map(|(purpose, c)| {
        let field = FieldPath::Consent(purpose.clone());
        expired(&field, c.provenance.recorded_at).then_some((field, c.version))
    });
    values
        .chain(consents)
        .enumerate()
        .map(|(n, (field, version))| EventEnvelope {
            id: EventId::from(derive_id(id_seed, n as u64)),
            stream_version: state.stream_version + 1 + n as u64,
            event: Event {
                payload: EventPayload::FieldExpired {
                    field,
                    version: version + 1,
                },
                provenance: provenance.clone(),
                policy_version: policy.version().clone(),
            },
        })
        .collect()
}

/// The provenance of the retention job's events at `now`: the reserved source `retention`, a
/// `system` actor of that name, and the policy version whose retention rules it applied as
/// the reason.
pub fn retention_provenance(
    now: DateTime<Utc>,
    policy: &Policy,
) -> Result<Provenance, crate::values::ValueError> {
    Ok(Provenance {
        source: SourceId::parse(RETENTION_SOURCE)?,
        actor: Actor::new(ActorKind::System, RETENTION_SOURCE)?,
        on_behalf_of: None,
        evidence: None,
        observed_at: None,
        recorded_at: now,
        correlation_id: None,
        causation_id: None,
        idempotency_key: IdempotencyKey::parse(&format!(
            "{RETENTION_SOURCE}:{}",
            now.timestamp_micros()
        ))?,
        reason: Some(format!("retention under policy {}", policy.version())),
        approved_by: None,
    })
}

fn validate_command(command: &Command, ctx: &Context<'_>) -> Result<(), Refused> {
    let invalid = |reason: String| Refused::from(Refusal::InvalidCommand { reason });
    if command.changes.is_empty() {
        return Err(invalid("a command needs at least one change".to_owned()));
    }
    if command.changes.len() > MAX_CHANGES {
        return Err(invalid(format!(
            "a command may carry at most {MAX_CHANGES} changes"
        )));
    }
    if let Some(index) = command
        .changes
        .iter()
        .skip(1)
        .position(|c| matches!(c, Change::Register))
    {
        return Err(Refused {
            change_index: Some(index + 1),
            refusal: Refusal::InvalidCommand {
                reason: "register must be the first change".to_owned(),
            },
        });
    }
    if let Some(reason) = &command.provenance.reason {
        check_reason(reason).map_err(Refused::from)?;
    }
    if let Some(observed) = command.provenance.observed_at
        && observed > ctx.now + chrono::Duration::minutes(MAX_CLOCK_SKEW_MINUTES)
    {
        return Err(Refused::from(Refusal::InvalidValue {
            field: "observed_at".to_owned(),
            reason: format!("{observed} is in the future"),
        }));
    }
    Ok(())
}

fn check_reason(reason: &str) -> Result<(), Refusal> {
    if reason.trim().is_empty() || reason.chars().count() > MAX_REASON_CHARS {
        return Err(Refusal::InvalidValue {
            field: "reason".to_owned(),
            reason: format!("must be 1 to {MAX_REASON_CHARS} characters"),
        });
    }
    Ok(())
}

/// Derives the `n`th id from a UUIDv7 seed by counting in its 62 random low bits, so the
/// version and variant bits — and the timestamp — stay those of the seed.
pub(crate) fn derive_id(seed: Uuid, n: u64) -> Uuid {
    const LOW: u128 = (1 << 62) - 1;
    let s = seed.as_u128();
    let low = (s & LOW).wrapping_add(u128::from(n)) & LOW;
    Uuid::from_u128((s & !LOW) | low)
}

struct Decider<'c, 'p> {
    /// The state with this command's events so far applied, so later changes see earlier ones.
    state: CustomerState,
    ctx: &'c Context<'p>,
    provenance: Provenance,
    events: Vec<EventEnvelope>,
    outcomes: Vec<Outcome>,
    minted: u64,
}

impl Decider<'_, '_> {
    fn mint(&mut self) -> Uuid {
        let id = derive_id(self.ctx.id_seed, self.minted);
        self.minted += 1;
        id
    }

    fn emit(&mut self, payload: EventPayload) {
        let id = EventId::from(self.mint());
        let envelope = EventEnvelope {
            id,
            stream_version: self.state.stream_version + 1,
            event: Event {
                payload,
                provenance: self.provenance.clone(),
                policy_version: self.ctx.policy.version().clone(),
            },
        };
        self.state = evolve(std::mem::take(&mut self.state), &envelope);
        self.events.push(envelope);
    }

    fn is_steward(&self) -> bool {
        matches!(
            self.ctx.principal,
            Principal::Steward(_) | Principal::ApprovedSteward { .. }
        )
    }

    /// Whether a steward may override `field`: the policy allows it, and for a `four_eyes`
    /// field a second, different steward approved this change.
    fn steward_may_override(&self, field: &FieldPath) -> Result<(), Refusal> {
        let rule = self.ctx.policy.rule(field);
        if !rule.steward_override {
            return Err(Refusal::Forbidden {
                reason: format!("the policy does not allow stewards to override {field}"),
            });
        }
        let approved = matches!(
            &self.ctx.principal,
            Principal::ApprovedSteward { steward, approver } if steward != approver
        );
        if rule.four_eyes && !approved {
            return Err(Refusal::ApprovalRequired {
                field: field.clone(),
            });
        }
        Ok(())
    }

    fn mode(&self, field: &FieldPath) -> WriteMode {
        self.ctx.policy.mode(field, &self.provenance.source)
    }

    fn not_authoritative(&self, field: &FieldPath) -> Refusal {
        Refusal::NotAuthoritative {
            field: field.clone(),
            source_id: self.provenance.source.clone(),
            mode: self.mode(field),
            system_of_record: self.ctx.policy.rule(field).system_of_record.clone(),
        }
    }

    fn next_version(&self, field: &FieldPath) -> u64 {
        self.state.field_version(field) + 1
    }

    fn apply(&mut self, change: &Change) -> Result<Outcome, Refusal> {
        if let Change::Register = change {
            return self.register();
        }
        if !self.state.registered {
            return Err(Refusal::NotRegistered);
        }
        let proposal_op = matches!(
            change,
            Change::AcceptProposal { .. } | Change::RejectProposal { .. }
        );
        let steward_op = matches!(change, Change::ActOnException { .. });
        let relationship_op = matches!(
            change,
            Change::RecordRelationship { .. } | Change::EndRelationship { .. }
        );
        let steward_may = steward_op
            || proposal_op
            || relationship_op
            || matches!(
                change,
                Change::SetField { .. } | Change::ClearField { .. } | Change::LeaveHousehold { .. }
            );
        if self.is_steward() && !steward_may {
            return Err(Refusal::Forbidden {
                reason: format!(
                    "stewards resolve proposals and override fields where the policy allows; {} comes from source systems",
                    change.op()
                ),
            });
        }
        if !self.is_steward() && steward_op {
            return Err(Refusal::Forbidden {
                reason: "only data stewards act on sync exceptions".to_owned(),
            });
        }
        // Who may decide a proposal depends on its field: `proposal_decider` says.
        let admin_op = matches!(
            change,
            Change::RestrictProcessing { .. } | Change::LiftRestriction { .. }
        );
        let is_admin = matches!(self.ctx.principal, Principal::Admin(_));
        if admin_op != is_admin && !(is_admin && relationship_op) {
            return Err(Refusal::Forbidden {
                reason: if is_admin {
                    format!(
                        "administrators restrict processing here; {} is not theirs",
                        change.op()
                    )
                } else {
                    "only administrators restrict the processing of a customer's data".to_owned()
                },
            });
        }
        match change {
            Change::Register => self.register(),
            Change::SetField {
                field,
                value,
                expected_version,
            } => self.set_field(field, value, *expected_version),
            Change::ClearField {
                field,
                expected_version,
            } => self.clear_field(field, *expected_version),
            Change::LeaveHousehold { household_id } => self.leave_household(*household_id),
            Change::RequestChange {
                field,
                value,
                expected_version,
            } => self.request_change(field, value, *expected_version),
            Change::ConfirmVerification {
                field,
                challenge_id,
                secret,
            } => self.confirm(field, *challenge_id, secret),
            Change::CancelChange {
                field,
                challenge_id,
            } => self.cancel(field, *challenge_id),
            Change::GrantConsent {
                purpose,
                basis,
                notice,
                channel,
                jurisdiction,
                expires_at,
            } => self.grant(purpose, *basis, notice, *channel, jurisdiction, *expires_at),
            Change::WithdrawConsent { purpose } => self.withdraw(purpose),
            Change::ProposeValue { field, value } => {
                self.check_value(field, value)?;
                if self.mode(field) == WriteMode::None {
                    return Err(self.not_authoritative(field));
                }
                Ok(self.propose(field, value))
            }
            Change::AcceptProposal { proposal_id } => self.accept(*proposal_id),
            Change::RestrictProcessing { reason } => self.restrict(true, reason),
            Change::LiftRestriction { reason } => self.restrict(false, reason),
            Change::RejectProposal {
                proposal_id,
                reason,
            } => self.reject(*proposal_id, reason),
            Change::RecordRelationship {
                representative,
                evidence,
                scope,
                expires_at,
            } => self.record_relationship(representative, evidence, scope.as_ref(), *expires_at),
            Change::EndRelationship {
                relationship_id,
                reason,
            } => self.end_relationship(*relationship_id, reason),
            Change::ActOnException {
                exception_id,
                consumer_id,
                field,
                action,
                reason,
                proposal_id,
            } => self.act_on_exception(
                *exception_id,
                consumer_id,
                field.as_ref(),
                *action,
                reason.as_deref(),
                *proposal_id,
            ),
        }
    }

    fn act_on_exception(
        &mut self,
        exception_id: Uuid,
        consumer_id: &str,
        field: Option<&FieldPath>,
        action: StewardAction,
        reason: Option<&str>,
        proposal_id: Option<ProposalId>,
    ) -> Result<Outcome, Refusal> {
        let id_ok = !consumer_id.is_empty()
            && consumer_id.len() <= MAX_SYSTEM_ID_CHARS
            && consumer_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !id_ok {
            return Err(Refusal::InvalidValue {
                field: "consumer_id".to_owned(),
                reason: format!(
                    "must be 1 to {MAX_SYSTEM_ID_CHARS} characters of letters, digits, '-', '_' or '.'"
                ),
            });
        }
        match reason {
            Some(reason) => check_reason(reason)?,
            None if action == StewardAction::Dismiss => {
                return Err(Refusal::InvalidValue {
                    field: "reason".to_owned(),
                    reason: "a dismissal must give a reason".to_owned(),
                });
            }
            None => {}
        }
        let repush = match (action, field) {
            (StewardAction::Repush, None) => {
                return Err(Refusal::InvalidCommand {
                    reason: "a re-push names the field to send again".to_owned(),
                });
            }
            (StewardAction::Repush, Some(field)) => Some(self.repush_of(field)?),
            _ => None,
        };
        let routed = match action {
            StewardAction::Route => Some(Box::new(self.routed(field, proposal_id)?)),
            _ => None,
        };
        self.emit(EventPayload::StewardActed {
            exception_id,
            consumer_id: consumer_id.to_owned(),
            field: field.cloned(),
            action,
            reason: reason.map(str::to_owned),
            repush,
            routed,
        });
        Ok(Outcome::StewardActed {
            exception_id,
            action,
        })
    }

    /// The proposal a route sends to its field's system of record: still open, about `field`.
    fn routed(
        &self,
        field: Option<&FieldPath>,
        proposal_id: Option<ProposalId>,
    ) -> Result<RoutedProposal, Refusal> {
        let proposal_id = proposal_id.ok_or_else(|| Refusal::InvalidCommand {
            reason: "a route names the proposal it sends".to_owned(),
        })?;
        let proposal = self
            .state
            .proposals
            .get(&proposal_id)
            .filter(|p| Some(&p.field) == field)
            .ok_or(Refusal::UnknownProposal { proposal_id })?;
        Ok(RoutedProposal {
            proposal_id,
            value: proposal.value.clone(),
            proposed_by: proposal.proposed_by.clone(),
            proposed_at: proposal.proposed_at,
            system_of_record: self
                .ctx
                .policy
                .rule(&proposal.field)
                .system_of_record
                .clone(),
        })
    }

    /// The field's authoritative state, as a re-push sends it.
    fn repush_of(&self, field: &FieldPath) -> Result<Repush, Refusal> {
        let nothing = || Refusal::InvalidTransition {
            field: Some(field.clone()),
            reason: format!("{field} was never recorded: there is nothing to re-push"),
        };
        if let FieldPath::Consent(purpose) = field {
            let record = self.state.consents.get(purpose).ok_or_else(nothing)?;
            return Ok(Repush {
                version: record.version,
                value: RepushedValue::Consent {
                    granted: record.state == ConsentState::Granted,
                },
            });
        }
        // The version of the change that made the current value: a pending change moves the
        // field's version, not what consumers hold.
        let record = self.state.field(field).filter(|r| r.value_version > 0);
        let record = record.ok_or_else(nothing)?;
        Ok(Repush {
            version: record.value_version,
            value: match &record.value {
                Some(value) => RepushedValue::Set {
                    value: value.clone(),
                },
                None => RepushedValue::Cleared,
            },
        })
    }

    fn register(&mut self) -> Result<Outcome, Refusal> {
        if self.state.registered {
            return Err(Refusal::AlreadyRegistered);
        }
        if self.is_steward() {
            return Err(Refusal::Forbidden {
                reason: "customers are registered by source systems".to_owned(),
            });
        }
        self.emit(EventPayload::CustomerRegistered);
        Ok(Outcome::Registered)
    }

    fn check_value(&self, field: &FieldPath, value: &FieldValue) -> Result<(), Refusal> {
        if field.kind() == FieldKind::Consent {
            return Err(Refusal::InvalidTransition {
                field: Some(field.clone()),
                reason: format!("{field} is changed with grant_consent or withdraw_consent"),
            });
        }
        if !value.fits(field) {
            return Err(Refusal::InvalidValue {
                field: field.to_string(),
                reason: "the value is not of this field's kind".to_owned(),
            });
        }
        if let FieldValue::BirthDate(b) = value
            && b.date() > self.ctx.now.date_naive()
        {
            return Err(Refusal::InvalidValue {
                field: field.to_string(),
                reason: format!("{} is in the future", b.date()),
            });
        }
        Ok(())
    }

    fn check_expected(&self, field: &FieldPath, expected: Option<u64>) -> Result<(), Refusal> {
        let actual = self.state.field_version(field);
        match expected {
            Some(expected) if expected != actual => Err(Refusal::VersionConflict {
                field: field.clone(),
                expected,
                actual,
            }),
            _ => Ok(()),
        }
    }

    /// Whether setting `value` would change nothing, or is an echo of our own delivery.
    fn unchanged(&self, field: &FieldPath, value: &FieldValue) -> bool {
        let Some(rec) = self.state.field(field) else {
            return false;
        };
        if rec.value.as_ref() == Some(value) && rec.pending.is_none() {
            return true;
        }
        self.provenance
            .causation_id
            .is_some_and(|c| rec.is_echo(&EventId::from(c), value))
    }

    /// Ends a pending change that an authoritative write replaces.
    fn end_pending(&mut self, field: &FieldPath) {
        let Some(pending) = self.state.field(field).and_then(|r| r.pending.clone()) else {
            return;
        };
        let reason = if pending.expires_at <= self.ctx.now {
            CancelReason::Expired
        } else {
            CancelReason::Superseded
        };
        let version = self.next_version(field);
        self.emit(EventPayload::ChangeCancelled {
            field: field.clone(),
            challenge_id: pending.challenge_id,
            reason,
            version,
        });
    }

    fn write_value(
        &mut self,
        field: &FieldPath,
        value: &FieldValue,
        mode: SetMode,
        proposal_id: Option<ProposalId>,
    ) -> Outcome {
        self.end_pending(field);
        let version = self.next_version(field);
        self.emit(EventPayload::FieldSet {
            field: field.clone(),
            value: value.clone(),
            version,
            mode,
            proposal_id,
        });
        Outcome::Applied {
            field: field.clone(),
            version,
        }
    }

    fn set_field(
        &mut self,
        field: &FieldPath,
        value: &FieldValue,
        expected: Option<u64>,
    ) -> Result<Outcome, Refusal> {
        self.check_value(field, value)?;
        let rule = self.ctx.policy.rule(field);
        let mode = if self.is_steward() {
            self.steward_may_override(field)?;
            None
        } else {
            Some(self.mode(field))
        };
        if mode == Some(WriteMode::None) {
            return Err(self.not_authoritative(field));
        }
        self.check_expected(field, expected)?;
        if self.unchanged(field, value) {
            return Ok(Outcome::Unchanged {
                field: field.clone(),
            });
        }
        let set_mode = match mode {
            None => SetMode::Steward,
            Some(WriteMode::Propose) => return Ok(self.propose(field, value)),
            Some(WriteMode::RequestChange | WriteMode::None) => {
                return Err(self.not_authoritative(field));
            }
            Some(WriteMode::FillIfEmpty) if self.state.value(field).is_some() => {
                return Err(self.not_authoritative(field));
            }
            Some(WriteMode::FillIfEmpty) => SetMode::FillIfEmpty,
            Some(WriteMode::Authoritative) => SetMode::Authoritative,
        };
        if rule.requires_verification
            && set_mode != SetMode::Steward
            && self.provenance.evidence.is_none()
        {
            return Err(Refusal::InvalidTransition {
                field: Some(field.clone()),
                reason: format!(
                    "{field} requires verification: send request_change then confirm_verification, or set it with the evidence of its verification"
                ),
            });
        }
        Ok(self.write_value(field, value, set_mode, None))
    }

    /// Whether this writer may clear `field`: a steward where the policy lets stewards
    /// override it, a source that writes it authoritatively.
    fn may_clear(&self, field: &FieldPath) -> Result<(), Refusal> {
        if field.kind() == FieldKind::Consent {
            return Err(Refusal::InvalidTransition {
                field: Some(field.clone()),
                reason: format!("{field} is changed with grant_consent or withdraw_consent"),
            });
        }
        if self.is_steward() {
            self.steward_may_override(field)
        } else if self.mode(field) != WriteMode::Authoritative {
            Err(self.not_authoritative(field))
        } else {
            Ok(())
        }
    }

    /// Leaving a household: clearing `household` when it names `household`. Who may clear
    /// it is checked first, so a writer that may not learns nothing of the membership.
    fn leave_household(&mut self, household: HouseholdId) -> Result<Outcome, Refusal> {
        let field = FieldPath::Household;
        self.may_clear(&field)?;
        let member = matches!(
            self.state.value(&field),
            Some(FieldValue::Household(m)) if m.household_id == household
        );
        if !member {
            return Err(Refusal::NotAMember {
                household_id: household,
            });
        }
        self.clear_field(&field, None)
    }

    fn clear_field(
        &mut self,
        field: &FieldPath,
        expected: Option<u64>,
    ) -> Result<Outcome, Refusal> {
        self.may_clear(field)?;
        self.check_expected(field, expected)?;
        let Some(rec) = self.state.field(field) else {
            return Ok(Outcome::Unchanged {
                field: field.clone(),
            });
        };
        if rec.value.is_none() && rec.pending.is_none() {
            return Ok(Outcome::Unchanged {
                field: field.clone(),
            });
        }
        self.end_pending(field);
        let version = self.next_version(field);
        self.emit(EventPayload::FieldCleared {
            field: field.clone(),
            version,
        });
        Ok(Outcome::Applied {
            field: field.clone(),
            version,
        })
    }

    fn may_request(&self, field: &FieldPath) -> Result<(), Refusal> {
        if !self.ctx.policy.rule(field).requires_verification {
            return Err(Refusal::InvalidTransition {
                field: Some(field.clone()),
                reason: format!("{field} does not go through verification; use set_field"),
            });
        }
        match self.mode(field) {
            WriteMode::Authoritative | WriteMode::RequestChange => Ok(()),
            _ => Err(self.not_authoritative(field)),
        }
    }

    fn request_change(
        &mut self,
        field: &FieldPath,
        value: &FieldValue,
        expected: Option<u64>,
    ) -> Result<Outcome, Refusal> {
        self.check_value(field, value)?;
        self.may_request(field)?;
        self.check_expected(field, expected)?;
        let now = self.ctx.now;
        let rec = self.state.field(field);
        if rec.is_some_and(|r| r.value.as_ref() == Some(value) && r.pending.is_none()) {
            return Ok(Outcome::Unchanged {
                field: field.clone(),
            });
        }
        if let Some(live) = rec
            .and_then(|r| r.live_pending(now))
            .filter(|p| p.value == *value)
        {
            return Ok(Outcome::Pending {
                field: field.clone(),
                challenge_id: live.challenge_id,
                expires_at: live.expires_at,
            });
        }
        self.end_pending(field);
        let challenge_id = ChallengeId::from(self.mint());
        let expires_at = now + self.ctx.policy.pending_change_ttl();
        let version = self.next_version(field);
        self.emit(EventPayload::ChangeRequested {
            field: field.clone(),
            value: value.clone(),
            challenge_id,
            expires_at,
            version,
        });
        Ok(Outcome::Pending {
            field: field.clone(),
            challenge_id,
            expires_at,
        })
    }

    fn pending_with(
        &self,
        field: &FieldPath,
        challenge_id: ChallengeId,
    ) -> Result<crate::state::PendingChange, Refusal> {
        self.state
            .field(field)
            .and_then(|r| r.pending.clone())
            .filter(|p| p.challenge_id == challenge_id)
            .ok_or_else(|| Refusal::InvalidTransition {
                field: Some(field.clone()),
                reason: format!("{field} has no pending change with challenge {challenge_id}"),
            })
    }

    fn confirm(
        &mut self,
        field: &FieldPath,
        challenge_id: ChallengeId,
        secret: &ChallengeSecret,
    ) -> Result<Outcome, Refusal> {
        self.may_request(field)?;
        let pending = self.pending_with(field, challenge_id)?;
        if !self.ctx.challenge_key.confirms(challenge_id, secret) {
            return Err(Refusal::WrongSecret {
                field: field.clone(),
                challenge_id,
            });
        }
        if pending.expires_at <= self.ctx.now {
            return Err(Refusal::ExpiredChallenge {
                field: field.clone(),
                challenge_id,
                expired_at: pending.expires_at,
            });
        }
        let version = self.next_version(field);
        self.emit(EventPayload::ChangeVerified {
            field: field.clone(),
            challenge_id,
            value: pending.value,
            version,
        });
        Ok(Outcome::Applied {
            field: field.clone(),
            version,
        })
    }

    /// Sets or lifts a restriction of processing; the same state again records nothing.
    fn restrict(&mut self, restricted: bool, reason: &str) -> Result<Outcome, Refusal> {
        check_reason(reason)?;
        let changed = self.state.restricted.is_some() != restricted;
        if changed {
            let reason = reason.trim().to_owned();
            self.emit(if restricted {
                EventPayload::ProcessingRestricted { reason }
            } else {
                EventPayload::RestrictionLifted { reason }
            });
        }
        Ok(Outcome::Restriction {
            restricted,
            changed,
        })
    }

    fn cancel(&mut self, field: &FieldPath, challenge_id: ChallengeId) -> Result<Outcome, Refusal> {
        self.may_request(field)?;
        self.pending_with(field, challenge_id)?;
        let version = self.next_version(field);
        self.emit(EventPayload::ChangeCancelled {
            field: field.clone(),
            challenge_id,
            reason: CancelReason::Cancelled,
            version,
        });
        Ok(Outcome::Applied {
            field: field.clone(),
            version,
        })
    }

    fn grant(
        &mut self,
        purpose: &Purpose,
        basis: LegalBasis,
        notice: &NoticeRef,
        channel: ConsentChannel,
        jurisdiction: &Jurisdiction,
        expires_at: Option<DateTime<Utc>>,
    ) -> Result<Outcome, Refusal> {
        let field = FieldPath::Consent(purpose.clone());
        if self.mode(&field) != WriteMode::Authoritative {
            return Err(self.not_authoritative(&field));
        }
        let now = self.ctx.now;
        if expires_at.is_some_and(|at| at <= now) {
            return Err(Refusal::InvalidValue {
                field: field.to_string(),
                reason: "expires_at must be in the future".to_owned(),
            });
        }
        // A guardian claim reaching here names a live recorded guardianship (`check_claim`).
        let by_guardian = self
            .provenance
            .on_behalf_of
            .as_ref()
            .is_some_and(|o| o.is_guardian());
        let minor = self.state.minor(Some(jurisdiction), self.ctx.policy, now);
        if let Some(minor) = minor.filter(|_| basis == LegalBasis::Consent && !by_guardian) {
            return Err(Refusal::GuardianRequired {
                purpose: purpose.clone(),
                age: minor.age,
                age_of_digital_consent: minor.age_of_digital_consent,
                jurisdiction: minor.jurisdiction.unwrap_or_else(|| jurisdiction.clone()),
            });
        }
        let terms = ConsentTerms {
            basis,
            notice: notice.clone(),
            channel,
            jurisdiction: jurisdiction.clone(),
            expires_at,
        };
        let current = self.state.consents.get(purpose);
        let same = current
            .is_some_and(|c| c.terms == terms && c.on_behalf_of == self.provenance.on_behalf_of);
        if same
            && self.state.consent_status(purpose, self.ctx.policy, now) == ConsentStatus::Granted
        {
            return Ok(Outcome::Unchanged { field });
        }
        let version = self.state.consent_version(purpose) + 1;
        self.emit(EventPayload::ConsentGranted {
            purpose: purpose.clone(),
            terms,
            version,
        });
        Ok(Outcome::Applied { field, version })
    }

    fn withdraw(&mut self, purpose: &Purpose) -> Result<Outcome, Refusal> {
        let field = FieldPath::Consent(purpose.clone());
        // Withdrawal is always open to the subject, or to someone acting on their behalf,
        // through any authenticated source.
        let for_subject =
            self.provenance.actor.is_subject() || self.provenance.on_behalf_of.is_some();
        if self.mode(&field) != WriteMode::Authoritative && !for_subject {
            return Err(self.not_authoritative(&field));
        }
        let Some(current) = self.state.consents.get(purpose) else {
            return Ok(Outcome::Unchanged { field });
        };
        if current.state == ConsentState::Withdrawn {
            return Ok(Outcome::Unchanged { field });
        }
        let version = current.version + 1;
        self.emit(EventPayload::ConsentWithdrawn {
            purpose: purpose.clone(),
            version,
        });
        Ok(Outcome::Applied { field, version })
    }

    fn propose(&mut self, field: &FieldPath, value: &FieldValue) -> Outcome {
        let system_of_record = self.ctx.policy.rule(field).system_of_record.clone();
        if self.state.value(field) == Some(value) {
            return Outcome::Unchanged {
                field: field.clone(),
            };
        }
        let source = &self.provenance.source;
        let existing = self
            .state
            .proposals
            .iter()
            .find(|(_, p)| p.field == *field && p.value == *value && p.proposed_by == *source)
            .map(|(id, _)| *id);
        let proposal_id = match existing {
            Some(id) => id,
            None => {
                let id = ProposalId::from(self.mint());
                self.emit(EventPayload::ValueProposed {
                    proposal_id: id,
                    field: field.clone(),
                    value: value.clone(),
                });
                id
            }
        };
        Outcome::Proposed {
            field: field.clone(),
            proposal_id,
            system_of_record,
        }
    }

    /// Who may decide a proposal about `field`, and how an accepted value is recorded: a
    /// steward (accepting only where the policy has `steward_override`), or the field's system
    /// of record with its own token, as its own authoritative write (so a field that requires
    /// verification needs the evidence, as a direct set does). Nobody else. The one place
    /// this rule is.
    fn proposal_decider(&self, field: &FieldPath, accepting: bool) -> Result<SetMode, Refusal> {
        let rule = self.ctx.policy.rule(field);
        match &self.ctx.principal {
            Principal::Steward(_) | Principal::ApprovedSteward { .. } => {
                if accepting {
                    self.steward_may_override(field)?;
                }
                Ok(SetMode::Steward)
            }
            Principal::Source(source) if rule.decides_proposals(source) => {
                if accepting && rule.requires_verification && self.provenance.evidence.is_none() {
                    return Err(Refusal::InvalidTransition {
                        field: Some(field.clone()),
                        reason: format!(
                            "{field} requires verification: accept the proposal with the evidence of its verification"
                        ),
                    });
                }
                Ok(SetMode::Authoritative)
            }
            Principal::Source(_) | Principal::Admin(_) => Err(Refusal::Forbidden {
                reason: format!(
                    "only data stewards and the system of record of {field} ({}) decide proposals about it",
                    rule.system_of_record
                ),
            }),
        }
    }

    fn accept(&mut self, proposal_id: ProposalId) -> Result<Outcome, Refusal> {
        let proposal = self
            .state
            .proposals
            .get(&proposal_id)
            .cloned()
            .ok_or(Refusal::UnknownProposal { proposal_id })?;
        let mode = self.proposal_decider(&proposal.field, true)?;
        self.emit(EventPayload::ProposalAccepted {
            proposal_id,
            field: proposal.field.clone(),
        });
        if self.state.value(&proposal.field) != Some(&proposal.value) {
            self.write_value(&proposal.field, &proposal.value, mode, Some(proposal_id));
        }
        Ok(Outcome::ProposalResolved {
            proposal_id,
            accepted: true,
        })
    }

    fn reject(&mut self, proposal_id: ProposalId, reason: &str) -> Result<Outcome, Refusal> {
        check_reason(reason)?;
        let proposal = self
            .state
            .proposals
            .get(&proposal_id)
            .cloned()
            .ok_or(Refusal::UnknownProposal { proposal_id })?;
        self.proposal_decider(&proposal.field, false)?;
        self.emit(EventPayload::ProposalRejected {
            proposal_id,
            field: proposal.field,
            reason: reason.to_owned(),
        });
        Ok(Outcome::ProposalResolved {
            proposal_id,
            accepted: false,
        })
    }
}

/// Recording and ending relationships (issue 17); the claims they back are checked in
/// `crate::delegation::check_claim`.
impl Decider<'_, '_> {
    /// Stewards and administrators always; a source only if the policy names it.
    fn may_record_relationships(&self) -> Result<(), Refusal> {
        match &self.ctx.principal {
            Principal::Source(source) if !self.ctx.policy.records_relationships(source) => {
                Err(Refusal::Forbidden {
                    reason: format!(
                        "source '{source}' may not record or end relationships: the policy's [relationships] recorded_by does not name it"
                    ),
                })
            }
            _ => Ok(()),
        }
    }

    fn record_relationship(
        &mut self,
        representative: &crate::ids::OnBehalfOf,
        evidence: &crate::values::Evidence,
        scope: Option<&crate::delegation::RelationshipScope>,
        expires_at: Option<DateTime<Utc>>,
    ) -> Result<Outcome, Refusal> {
        self.may_record_relationships()?;
        crate::delegation::check_new(
            &self.state,
            representative,
            scope,
            expires_at,
            self.ctx.policy,
            self.ctx.now,
        )?;
        let relationship_id = crate::ids::RelationshipId::from(self.mint());
        self.emit(EventPayload::RelationshipRecorded {
            relationship_id,
            representative: representative.clone(),
            evidence: evidence.clone(),
            scope: scope.cloned(),
            expires_at,
        });
        Ok(Outcome::Relationship {
            relationship_id,
            ended: false,
        })
    }

    fn end_relationship(
        &mut self,
        relationship_id: crate::ids::RelationshipId,
        reason: &str,
    ) -> Result<Outcome, Refusal> {
        self.may_record_relationships()?;
        check_reason(reason)?;
        let open = self
            .state
            .relationships
            .get(&relationship_id)
            .is_some_and(|r| r.ended.is_none());
        if !open {
            return Err(Refusal::UnknownRelationship { relationship_id });
        }
        self.emit(EventPayload::RelationshipEnded {
            relationship_id,
            reason: reason.trim().to_owned(),
        });
        Ok(Outcome::Relationship {
            relationship_id,
            ended: true,
        })
    }
}
