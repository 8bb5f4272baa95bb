//! Attribute-level commands, the context they are decided in, and typed refusals.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::event::StewardAction;
use crate::field::{FieldPath, FieldValue};
use crate::ids::{
    Actor, ActorKind, ChallengeId, CustomerId, HouseholdId, IdempotencyKey, OnBehalfOf, ProposalId,
    Purpose, Relationship, RelationshipId, SourceId,
};
use crate::policy::{Policy, WriteMode};
use crate::values::{ConsentChannel, Evidence, Jurisdiction, LegalBasis, NoticeRef};

/// Most changes one command may carry; bounds the work one request can cause.
pub const MAX_CHANGES: usize = 100;
/// Longest free-text reason accepted (steward reasons, rejection reasons).
pub const MAX_REASON_CHARS: usize = 1000;

/// One attribute-level change. A command's changes are decided in order and applied
/// atomically: all of them, or none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Change {
    /// Creates the customer's record; must be the first change of its first command.
    Register,
    SetField {
        field: FieldPath,
        value: FieldValue,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expected_version: Option<u64>,
    },
    ClearField {
        field: FieldPath,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expected_version: Option<u64>,
    },
    /// Email/phone change that takes effect only after verification.
    RequestChange {
        field: FieldPath,
        value: FieldValue,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expected_version: Option<u64>,
    },
    ConfirmVerification {
        field: FieldPath,
        challenge_id: ChallengeId,
        /// What the requester received with the challenge (see [`crate::challenge`]).
        secret: crate::challenge::ChallengeSecret,
    },
    CancelChange {
        field: FieldPath,
        challenge_id: ChallengeId,
    },
    GrantConsent {
        purpose: Purpose,
        basis: LegalBasis,
        notice: NoticeRef,
        channel: ConsentChannel,
        jurisdiction: Jurisdiction,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expires_at: Option<DateTime<Utc>>,
    },
    WithdrawConsent {
        purpose: Purpose,
    },
    ProposeValue {
        field: FieldPath,
        value: FieldValue,
    },
    /// A steward (where the policy allows steward override) or the field's system of record.
    AcceptProposal {
        proposal_id: ProposalId,
    },
    /// A steward or the field's system of record.
    RejectProposal {
        proposal_id: ProposalId,
        reason: String,
    },
    /// Administrator only: restrict the processing of the customer's data (GDPR Art. 18):
    /// kept, not used; nothing is delivered while it holds.
    RestrictProcessing {
        reason: String,
    },
    /// Administrator only: lift a restriction of processing.
    LiftRestriction {
        reason: String,
    },
    /// Steward only: records an action on a sync exception (see `EventPayload::StewardActed`).
    ActOnException {
        exception_id: Uuid,
        consumer_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        field: Option<FieldPath>,
        action: StewardAction,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        /// For `route`: the proposal sent to its field's system of record.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        proposal_id: Option<ProposalId>,
    },
    /// Records a guardian or delegate relationship on the subject's record (stewards,
    /// administrators, and the sources the policy's `[relationships] recorded_by` names): an
    /// `on_behalf_of` claim is only accepted while one is live (see [`crate::delegation`]).
    RecordRelationship {
        /// The kind and the id an `on_behalf_of` claim will name.
        representative: OnBehalfOf,
        evidence: Evidence,
        /// Left out: everything.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        scope: Option<crate::delegation::RelationshipScope>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expires_at: Option<DateTime<Utc>>,
    },
    /// Ends a recorded relationship (the same writers as `RecordRelationship`).
    EndRelationship {
        relationship_id: RelationshipId,
        reason: String,
    },
    /// Clears the `household` field if, and only if, it names this household (refused
    /// `not_a_member` otherwise), under the same rules as a `ClearField` of it. Decided on the
    /// record itself, so a leave never clears a membership of another household that a
    /// concurrent command set, and a retry with the same key is the same command.
    LeaveHousehold {
        household_id: HouseholdId,
    },
}

impl Change {
    pub fn op(&self) -> &'static str {
        match self {
            Self::Register => "register",
            Self::SetField { .. } => "set_field",
            Self::ClearField { .. } => "clear_field",
            Self::RequestChange { .. } => "request_change",
            Self::ConfirmVerification { .. } => "confirm_verification",
            Self::CancelChange { .. } => "cancel_change",
            Self::GrantConsent { .. } => "grant_consent",
            Self::WithdrawConsent { .. } => "withdraw_consent",
            Self::ProposeValue { .. } => "propose_value",
            Self::AcceptProposal { .. } => "accept_proposal",
            Self::RejectProposal { .. } => "reject_proposal",
            Self::ActOnException { .. } => "act_on_exception",
            Self::RestrictProcessing { .. } => "restrict_processing",
            Self::LiftRestriction { .. } => "lift_restriction",
            Self::RecordRelationship { .. } => "record_relationship",
            Self::EndRelationship { .. } => "end_relationship",
            Self::LeaveHousehold { .. } => "leave_household",
        }
    }
}

/// Provenance as the caller states it. The source is not here: it comes from the credential.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProvenanceInput {
    pub actor: Actor,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_behalf_of: Option<OnBehalfOf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<Evidence>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A command against one customer's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    pub customer_id: CustomerId,
    pub idempotency_key: IdempotencyKey,
    pub provenance: ProvenanceInput,
    pub changes: Vec<Change>,
    /// The stream version the caller last saw (HTTP `If-Match`); any other is refused, so a
    /// caller can make a change conditional on nothing else having changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_stream_version: Option<u64>,
}

/// Who is issuing the command, as proven by their credential.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "role", content = "id", rename_all = "snake_case")]
pub enum Principal {
    /// A source system; events record it as their source.
    Source(SourceId),
    /// A data steward; events record the reserved source `steward` and this actor (kind
    /// `steward`, the steward's name), whatever the command says.
    Steward(Actor),
    /// A data steward's change that a second steward approved (four-eyes, see the policy's
    /// `four_eyes`): events record the steward as the actor, like `Steward`, and the approver
    /// as `approved_by`. Only idledger's approval workflow issues it, never a request body.
    ApprovedSteward { steward: Actor, approver: Actor },
    /// An administrator (restriction of processing); events record the reserved source
    /// `admin` and this actor.
    Admin(Actor),
}

impl Principal {
    /// The source its events record: its own, or the reserved `steward` / `admin`.
    pub fn source_name(&self) -> &str {
        match self {
            Self::Source(s) => s.as_str(),
            Self::Steward(_) | Self::ApprovedSteward { .. } => crate::policy::STEWARD_SOURCE,
            Self::Admin(_) => crate::policy::ADMIN_SOURCE,
        }
    }

    /// A data steward known by `label` (a token's label, the CLI's `--as`).
    pub fn steward(label: &str) -> Result<Self, crate::values::ValueError> {
        Actor::new(ActorKind::Steward, label).map(Self::Steward)
    }
}

/// Everything decide needs from outside: the clock, the policy, the caller, and a seed for
/// the ids it mints — so decide itself stays pure and deterministic.
#[derive(Debug, Clone)]
pub struct Context<'a> {
    pub now: DateTime<Utc>,
    pub policy: &'a Policy,
    pub principal: Principal,
    /// A fresh UUIDv7; event, proposal and challenge ids are derived from it in order.
    pub id_seed: Uuid,
    /// The key a pending change's confirmation secret is derived from (see
    /// [`crate::challenge`]).
    pub challenge_key: &'a crate::challenge::ChallengeKey,
}

/// Why a command was refused. A domain answer, not a failure: nothing was recorded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize)]
#[serde(tag = "code", rename_all = "snake_case")]
pub enum Refusal {
    #[error("{reason}")]
    InvalidCommand { reason: String },
    #[error("unknown field '{path}'")]
    UnknownField { path: String },
    #[error("invalid value for {field}: {reason}")]
    InvalidValue { field: String, reason: String },
    #[error(
        "source '{source_id}' may not change {field} (its mode is '{mode}'); the system of record for {field} is '{system_of_record}'"
    )]
    NotAuthoritative {
        field: FieldPath,
        source_id: SourceId,
        mode: WriteMode,
        system_of_record: SourceId,
    },
    #[error("{reason}")]
    InvalidTransition {
        field: Option<FieldPath>,
        reason: String,
    },
    #[error("{field} is at version {actual}, not the expected {expected}")]
    VersionConflict {
        field: FieldPath,
        expected: u64,
        actual: u64,
    },
    #[error("the change of {field} with challenge {challenge_id} expired at {expired_at}")]
    ExpiredChallenge {
        field: FieldPath,
        challenge_id: ChallengeId,
        expired_at: DateTime<Utc>,
    },
    #[error(
        "the subject is {age}, under the age of digital consent ({age_of_digital_consent}) in {jurisdiction}: a guardian must give consent for {purpose} on their behalf"
    )]
    GuardianRequired {
        purpose: Purpose,
        age: u32,
        age_of_digital_consent: u8,
        jurisdiction: Jurisdiction,
    },
    #[error("the record is at version {actual}, not the expected {expected}")]
    RecordVersionConflict { expected: u64, actual: u64 },
    #[error("customer is not registered")]
    NotRegistered,
    #[error("customer is already registered")]
    AlreadyRegistered,
    #[error("no open proposal {proposal_id}")]
    UnknownProposal { proposal_id: ProposalId },
    #[error("{reason}")]
    Forbidden { reason: String },
    /// The command names an actor its source may not speak for: a steward (only idledger's
    /// stewards are), or the subject through a source the policy does not mark subject-facing.
    #[error("source {source_id} may not record a {kind} as the actor")]
    ActorNotAllowed {
        source_id: SourceId,
        kind: ActorKind,
    },
    /// A pending change's confirmation came without the secret its requester received.
    #[error("the secret does not confirm the change of {field} with challenge {challenge_id}")]
    WrongSecret {
        field: FieldPath,
        challenge_id: ChallengeId,
    },
    /// A steward's override of a `four_eyes` field was sent without a second steward's
    /// approval: it is recorded as a pending approval instead (`App::act`).
    #[error("a steward's change of {field} needs a second steward's approval")]
    ApprovalRequired { field: FieldPath },
    /// The record was erased; nothing can be recorded for this customer any more.
    #[error("the customer's record was erased at {erased_at}")]
    Erased { erased_at: DateTime<Utc> },
    /// The record is merged into another: commands go to the survivor.
    #[error("the customer's record is merged into {survivor}; send it there")]
    MergedInto { survivor: CustomerId },
    /// The command claims `on_behalf_of`, and no live relationship of that kind with that
    /// representative is recorded on the subject's record; `standing` says how the recorded one
    /// stands, if there is one (`ended`, `expired`, `came_of_age`). Never names the
    /// representative.
    #[error(
        "no live {relationship} relationship with the representative this command names is recorded for the customer{}",
        .standing.map(|s| format!(" (the recorded one is {})", s.as_str())).unwrap_or_default()
    )]
    UnrecordedRepresentative {
        relationship: Relationship,
        #[serde(skip_serializing_if = "Option::is_none")]
        standing: Option<crate::delegation::RelationshipStatus>,
    },
    /// The recorded relationship the claim names does not cover this field or purpose.
    #[error("the recorded {relationship} relationship does not cover {field}")]
    OutsideDelegatedScope {
        relationship: Relationship,
        field: FieldPath,
    },
    /// No relationship with this id is recorded, or it has already ended.
    #[error("no live relationship {relationship_id}")]
    UnknownRelationship { relationship_id: RelationshipId },
    /// A `leave_household` for a household the customer's record does not name.
    #[error("the customer is not a member of household {household_id}")]
    NotAMember { household_id: HouseholdId },
}

impl Refusal {
    /// The stable, machine-readable code clients branch on.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidCommand { .. } => "invalid_command",
            Self::UnknownField { .. } => "unknown_field",
            Self::InvalidValue { .. } => "invalid_value",
            Self::NotAuthoritative { .. } => "not_authoritative",
            Self::InvalidTransition { .. } => "invalid_transition",
            Self::VersionConflict { .. } => "version_conflict",
            Self::ExpiredChallenge { .. } => "expired_challenge",
            Self::GuardianRequired { .. } => "guardian_required",
            Self::RecordVersionConflict { .. } => "version_conflict",
            Self::NotRegistered => "not_registered",
            Self::AlreadyRegistered => "already_registered",
            Self::UnknownProposal { .. } => "unknown_proposal",
            Self::Forbidden { .. } => "forbidden",
            Self::ActorNotAllowed { .. } => "actor_not_allowed",
            Self::WrongSecret { .. } => "wrong_secret",
            Self::ApprovalRequired { .. } => "approval_required",
            Self::Erased { .. } => "erased",
            Self::MergedInto { .. } => "merged_into",
            Self::UnrecordedRepresentative { .. } => "unrecorded_representative",
            Self::OutsideDelegatedScope { .. } => "outside_delegated_scope",
            Self::UnknownRelationship { .. } => "unknown_relationship",
            Self::NotAMember { .. } => "not_a_member",
        }
    }
}

impl From<crate::field::UnknownField> for Refusal {
    fn from(e: crate::field::UnknownField) -> Self {
        Self::UnknownField { path: e.path }
    }
}

/// A refusal, with the index of the change that caused it (if one did).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize)]
#[error("{}{refusal}", .change_index.map(|i| format!("change {i}: ")).unwrap_or_default())]
pub struct Refused {
    pub change_index: Option<usize>,
    pub refusal: Refusal,
}

impl From<Refusal> for Refused {
    fn from(refusal: Refusal) -> Self {
        Self {
            change_index: None,
            refusal,
        }
    }
}
