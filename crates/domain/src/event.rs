//! Domain events: what happened to a customer's record, with the provenance of every change.
//!
//! These are the domain's types; the persisted form is [`crate::schema`], which adds the
//! event type name and schema version and upcasts old versions.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::field::{FieldPath, FieldValue};
use crate::ids::{
    Actor, ChallengeId, CustomerId, EventId, IdempotencyKey, OnBehalfOf, ProposalId, Purpose,
    RelationshipId, SourceId,
};
use crate::policy::PolicyVersion;
use crate::values::{ConsentChannel, Evidence, Jurisdiction, LegalBasis, NoticeRef};

/// Who changed what, on whose behalf, on what evidence — recorded on every event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provenance {
    /// The source system, taken from the authenticated credential, never from a request body.
    pub source: SourceId,
    pub actor: Actor,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_behalf_of: Option<OnBehalfOf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<Evidence>,
    /// When the source observed the fact (its clock); `recorded_at` is ours.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_at: Option<DateTime<Utc>>,
    pub recorded_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<Uuid>,
    pub idempotency_key: IdempotencyKey,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The second steward who approved a steward's change of a `four_eyes` field; the first
    /// is the actor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved_by: Option<Actor>,
}

/// How a value came to be set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SetMode {
    /// By the system of record or a co-authoritative writer.
    Authoritative,
    /// Enrichment of an empty field.
    FillIfEmpty,
    /// By a data steward, accepting a proposal or overriding where the policy allows it.
    Steward,
}

/// Why a pending change ended without taking effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CancelReason {
    Cancelled,
    /// A newer request or an authoritative set replaced it.
    Superseded,
    /// Its verification window closed.
    Expired,
}

/// What a data steward did about a sync exception (see `EventPayload::StewardActed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StewardAction {
    /// Send the field's authoritative value to the consumer again.
    Repush,
    /// Take a proposed or downstream value into the record (with its own change in the same
    /// command) and resolve the exception.
    Accept,
    /// Close the exception without changing anything, for a stated reason.
    Dismiss,
    /// Send a proposal to its field's system of record, which decides it with its own token;
    /// the exception stays open until it does (or a steward closes it).
    Route,
}

impl StewardAction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Repush => "repush",
            Self::Accept => "accept",
            Self::Dismiss => "dismiss",
            Self::Route => "route",
        }
    }
}

/// A field's authoritative state as re-sent to one consumer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum RepushedValue {
    Set { value: FieldValue },
    Cleared,
    Consent { granted: bool },
}

/// What a re-push sends: the field's state at its current version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Repush {
    pub version: u64,
    pub value: RepushedValue,
}

/// The terms of a consent grant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsentTerms {
    pub basis: LegalBasis,
    pub notice: NoticeRef,
    pub channel: ConsentChannel,
    pub jurisdiction: Jurisdiction,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
}

/// What happened. Per-field `version`s count the events that touched that field (or consent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventPayload {
    CustomerRegistered,
    FieldSet {
        field: FieldPath,
        value: FieldValue,
        version: u64,
        mode: SetMode,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        proposal_id: Option<ProposalId>,
    },
    FieldCleared {
        field: FieldPath,
        version: u64,
    },
    /// The retention job found the value (or, for `consent.<purpose>`, the consent record) not
    /// changed for longer than the policy keeps it, and cleared it.
    FieldExpired {
        field: FieldPath,
        version: u64,
    },
    ChangeRequested {
        field: FieldPath,
        value: FieldValue,
        challenge_id: ChallengeId,
        expires_at: DateTime<Utc>,
        version: u64,
    },
    ChangeVerified {
        field: FieldPath,
        challenge_id: ChallengeId,
        value: FieldValue,
        version: u64,
    },
    ChangeCancelled {
        field: FieldPath,
        challenge_id: ChallengeId,
        reason: CancelReason,
        version: u64,
    },
    ConsentGranted {
        purpose: Purpose,
        terms: ConsentTerms,
        version: u64,
    },
    ConsentWithdrawn {
        purpose: Purpose,
        version: u64,
    },
    ValueProposed {
        proposal_id: ProposalId,
        field: FieldPath,
        value: FieldValue,
    },
    ProposalAccepted {
        proposal_id: ProposalId,
        field: FieldPath,
    },
    ProposalRejected {
        proposal_id: ProposalId,
        field: FieldPath,
        reason: String,
    },
    /// The customer's record was erased (right to erasure). Holds no personal data: the store
    /// keeps it readable after the customer's data key, and with it every earlier event, is
    /// destroyed. The reason is an administrator's note and must not quote the record.
    CustomerErased {
        reason: String,
    },
    /// An administrator restricted the processing of the customer's data (GDPR Art. 18):
    /// kept, but nothing is delivered until the restriction is lifted.
    ProcessingRestricted {
        reason: String,
    },
    /// An administrator lifted the restriction of processing.
    RestrictionLifted {
        reason: String,
    },
    /// A data steward acted on a sync exception about `consumer_id`. Changes nothing in the
    /// record (an accepted value is its own `field_set` in the same command); recorded so
    /// every steward action shows in the field's history. A re-push carries the value re-sent,
    /// which the relay delivers to that consumer only.
    StewardActed {
        exception_id: Uuid,
        consumer_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        field: Option<FieldPath>,
        action: StewardAction,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        repush: Option<Repush>,
        /// For `route`: the proposal as the system of record is sent it, so the message is
        /// built from the event alone.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        routed: Option<Box<RoutedProposal>>,
    },
    /// A guardian or delegate relationship was recorded on the subject's record.
    RelationshipRecorded {
        relationship_id: RelationshipId,
        representative: OnBehalfOf,
        evidence: Evidence,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        scope: Option<crate::delegation::RelationshipScope>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expires_at: Option<DateTime<Utc>>,
    },
    /// A recorded relationship was ended.
    RelationshipEnded {
        relationship_id: RelationshipId,
        reason: String,
    },
    /// A merge carried a relationship recorded for the absorbed record to the survivor, or an
    /// unmerge put one back (`Some`, with its own recording: who recorded it and when), or
    /// took one away again (`None`). Causation id: the merge's id.
    RelationshipAdopted {
        relationship_id: RelationshipId,
        merge_id: Uuid,
        /// The record the relationship was recorded for.
        origin: CustomerId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        relationship: Option<Box<crate::delegation::RecordedRelationship>>,
    },
    /// A data steward merged `absorbed` into this record (the survivor). The merge's other
    /// events on this stream (`field_adopted`, proposals) follow it in the same append and
    /// carry `merge_id` as their causation id; the absorbed record gets `merged_into`.
    CustomerMerged {
        merge_id: Uuid,
        absorbed: CustomerId,
    },
    /// This record was merged into `survivor`: kept as it was, read and written through the
    /// survivor until an unmerge.
    MergedInto {
        merge_id: Uuid,
        survivor: CustomerId,
    },
    /// A data steward undid the merge `merge_id` of `absorbed` into this record; the
    /// `field_adopted` events after it restore the record as it would be without the merge.
    CustomerUnmerged {
        merge_id: Uuid,
        absorbed: CustomerId,
    },
    /// The merge of this record into `survivor` was undone: the record stands on its own
    /// again, with what happened to it meanwhile (`field_adopted` events after this one).
    UnmergedFrom {
        merge_id: Uuid,
        survivor: CustomerId,
    },
    /// A field's record taken as a whole from `origin`'s history by a merge or an unmerge.
    FieldAdopted {
        field: FieldPath,
        merge_id: Uuid,
        origin: CustomerId,
        adopted: Box<Adopted>,
        version: u64,
    },
}

/// A field's record as a merge or an unmerge carries it from one record to another (see
/// `EventPayload::FieldAdopted`): the value or consent with its own provenance, so the
/// receiving record shows who set it, when and on what evidence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "record", rename_all = "snake_case")]
pub enum Adopted {
    Value {
        value: FieldValue,
        source: SourceId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        asserted_at: Option<DateTime<Utc>>,
        recorded_at: DateTime<Utc>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        verification: Option<crate::state::Verification>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pending: Option<crate::state::PendingChange>,
        provenance: Box<Provenance>,
    },
    Consent {
        state: crate::state::ConsentState,
        terms: ConsentTerms,
        granted_at: DateTime<Utc>,
        granted_by: SourceId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        on_behalf_of: Option<OnBehalfOf>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        withdrawn_at: Option<DateTime<Utc>>,
        provenance: Box<Provenance>,
    },
    /// The record has no value (or no consent) for the field.
    Absent,
}

/// A proposal a steward sent to its field's system of record (see `StewardAction::Route`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoutedProposal {
    pub proposal_id: ProposalId,
    pub value: FieldValue,
    pub proposed_by: SourceId,
    pub proposed_at: DateTime<Utc>,
    /// Who decides it: the field's system of record when it was routed.
    pub system_of_record: SourceId,
}

impl EventPayload {
    /// The stable type name used in storage and on the wire.
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::CustomerRegistered => "customer_registered",
            Self::FieldSet { .. } => "field_set",
            Self::FieldCleared { .. } => "field_cleared",
            Self::FieldExpired { .. } => "field_expired",
            Self::ChangeRequested { .. } => "change_requested",
            Self::ChangeVerified { .. } => "change_verified",
            Self::ChangeCancelled { .. } => "change_cancelled",
            Self::ConsentGranted { .. } => "consent_granted",
            Self::ConsentWithdrawn { .. } => "consent_withdrawn",
            Self::ValueProposed { .. } => "value_proposed",
            Self::ProposalAccepted { .. } => "proposal_accepted",
            Self::ProposalRejected { .. } => "proposal_rejected",
            Self::CustomerErased { .. } => "customer_erased",
            Self::StewardActed { .. } => "steward_acted",
            Self::ProcessingRestricted { .. } => "processing_restricted",
            Self::RestrictionLifted { .. } => "restriction_lifted",
            Self::RelationshipRecorded { .. } => "relationship_recorded",
            Self::RelationshipEnded { .. } => "relationship_ended",
            Self::RelationshipAdopted { .. } => "relationship_adopted",
            Self::CustomerMerged { .. } => "customer_merged",
            Self::MergedInto { .. } => "merged_into",
            Self::CustomerUnmerged { .. } => "customer_unmerged",
            Self::UnmergedFrom { .. } => "unmerged_from",
            Self::FieldAdopted { .. } => "field_adopted",
        }
    }

    /// The record's value a change of this event carries (a set, a requested or verified
    /// change, a proposal, an adopted value).
    pub fn value(&self) -> Option<&FieldValue> {
        match self {
            Self::FieldSet { value, .. }
            | Self::ChangeRequested { value, .. }
            | Self::ChangeVerified { value, .. }
            | Self::ValueProposed { value, .. } => Some(value),
            Self::FieldAdopted { adopted, .. } => match adopted.as_ref() {
                Adopted::Value { value, .. } => Some(value),
                Adopted::Consent { .. } | Adopted::Absent => None,
            },
            _ => None,
        }
    }

    /// The terms of the consent record this event made (a grant, an adopted consent).
    pub fn consent_terms(&self) -> Option<&ConsentTerms> {
        match self {
            Self::ConsentGranted { terms, .. } => Some(terms),
            Self::FieldAdopted { adopted, .. } => match adopted.as_ref() {
                Adopted::Consent { terms, .. } => Some(terms),
                Adopted::Value { .. } | Adopted::Absent => None,
            },
            _ => None,
        }
    }

    /// The field this event concerns (consents as `consent.<purpose>`); `None` for
    /// registration and erasure. Stores index history by it.
    pub fn field(&self) -> Option<FieldPath> {
        match self {
            Self::CustomerRegistered
            | Self::CustomerErased { .. }
            | Self::ProcessingRestricted { .. }
            | Self::RestrictionLifted { .. }
            | Self::CustomerMerged { .. }
            | Self::MergedInto { .. }
            | Self::CustomerUnmerged { .. }
            | Self::UnmergedFrom { .. }
            | Self::RelationshipRecorded { .. }
            | Self::RelationshipEnded { .. }
            | Self::RelationshipAdopted { .. } => None,
            Self::FieldAdopted { field, .. } => Some(field.clone()),
            Self::FieldSet { field, .. }
            | Self::FieldCleared { field, .. }
            | Self::FieldExpired { field, .. }
            | Self::ChangeRequested { field, .. }
            | Self::ChangeVerified { field, .. }
            | Self::ChangeCancelled { field, .. }
            | Self::ValueProposed { field, .. }
            | Self::ProposalAccepted { field, .. }
            | Self::ProposalRejected { field, .. } => Some(field.clone()),
            Self::ConsentGranted { purpose, .. } | Self::ConsentWithdrawn { purpose, .. } => {
                Some(FieldPath::Consent(purpose.clone()))
            }
            Self::StewardActed { field, .. } => field.clone(),
        }
    }
}

/// An event with its provenance and the policy version that admitted it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub payload: EventPayload,
    pub provenance: Provenance,
    pub policy_version: PolicyVersion,
}

/// An event placed in its customer's stream: its id and its position in the stream (1-based).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventEnvelope {
    pub id: EventId,
    pub stream_version: u64,
    pub event: Event,
}
