//! The state of one customer's record, folded from its events by the infallible [`evolve`].
//!
//! The per-field records here are exactly what the store projects, so a projection rebuilt
//! from the log is the same value as the live one.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::delegation::{RecordedRelationship, RelationshipEnding};
use crate::event::{Adopted, ConsentTerms, EventEnvelope, EventPayload, Provenance};
use crate::field::{FieldPath, FieldValue};
use crate::hashing::HashKey;
use crate::ids::{
    ChallengeId, CustomerId, EventId, OnBehalfOf, ProposalId, Purpose, RelationshipId, SourceId,
};
use crate::policy::Policy;
use crate::values::{Evidence, Jurisdiction};

/// How many recent event ids per field are kept to recognise echoes of our own deliveries.
pub const ECHO_WINDOW: usize = 8;

/// A change waiting for verification; the current value stays authoritative meanwhile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingChange {
    pub value: FieldValue,
    pub challenge_id: ChallengeId,
    pub requested_by: SourceId,
    pub requested_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// How the current value was verified.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verification {
    pub verified_at: DateTime<Utc>,
    pub verified_by: SourceId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<Evidence>,
}

/// The authoritative record of one field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldRecord {
    pub value: Option<FieldValue>,
    /// Counts the events that touched this field; 0 = never touched.
    pub version: u64,
    /// The source of the last change to the value.
    pub source: Option<SourceId>,
    /// When the source observed the current value, if it said.
    pub asserted_at: Option<DateTime<Utc>>,
    pub recorded_at: Option<DateTime<Utc>>,
    pub verification: Option<Verification>,
    pub pending: Option<PendingChange>,
    pub provenance: Option<Provenance>,
    pub last_event_id: Option<EventId>,
    /// Recent events that set a value here, with that value's digest: a command caused by one
    /// of them carrying the same value is an echo of our own delivery.
    pub recent: Vec<(EventId, String)>,
    /// The field version at which the current value (or its absence) was recorded; a pending
    /// change moves `version` but not this. 0: never set or cleared.
    #[serde(default)]
    pub value_version: u64,
}

impl FieldRecord {
    pub fn empty() -> Self {
        Self {
            value: None,
            version: 0,
            source: None,
            asserted_at: None,
            recorded_at: None,
            verification: None,
            pending: None,
            provenance: None,
            last_event_id: None,
            recent: Vec::new(),
            value_version: 0,
        }
    }

    /// Whether `causation` names an event of ours that set this field to `value`.
    pub fn is_echo(&self, causation: &EventId, value: &FieldValue) -> bool {
        let digest = value.fingerprint();
        self.recent
            .iter()
            .any(|(id, d)| id == causation && *d == digest)
    }

    /// The pending change, unless its window has closed by `now`.
    pub fn live_pending(&self, now: DateTime<Utc>) -> Option<&PendingChange> {
        self.pending.as_ref().filter(|p| p.expires_at > now)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConsentState {
    Granted,
    Withdrawn,
}

/// A consent for one purpose, as last granted or withdrawn.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsentRecord {
    pub state: ConsentState,
    pub terms: ConsentTerms,
    pub granted_at: DateTime<Utc>,
    pub granted_by: SourceId,
    pub on_behalf_of: Option<OnBehalfOf>,
    pub withdrawn_at: Option<DateTime<Utc>>,
    pub version: u64,
    pub provenance: Provenance,
    pub last_event_id: EventId,
}

/// A consent's standing at a given instant — evaluated at the moment of use, never stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConsentStatus {
    Granted,
    Withdrawn,
    /// Past the grant's own expiry.
    Expired,
    /// Older than the policy's maximum age for the purpose.
    Stale,
    /// The subject is a minor in the consent's jurisdiction and no guardian gave it.
    GuardianRequired,
    NeverGranted,
}

/// A value proposed by a non-authoritative writer, waiting for a steward.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    pub field: FieldPath,
    pub value: FieldValue,
    pub proposed_by: SourceId,
    pub proposed_at: DateTime<Utc>,
    pub event_id: EventId,
}

/// When, by whom and why a customer's record was erased.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Erasure {
    pub at: DateTime<Utc>,
    pub source: SourceId,
    pub reason: String,
}

/// One customer's record: every field, every consent, the open proposals.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomerState {
    pub registered: bool,
    pub registered_at: Option<DateTime<Utc>>,
    /// Number of events in the stream.
    pub stream_version: u64,
    pub fields: BTreeMap<FieldPath, FieldRecord>,
    pub consents: BTreeMap<Purpose, ConsentRecord>,
    pub proposals: BTreeMap<ProposalId, Proposal>,
    /// Set once the record is erased: everything above but the registration is gone, and
    /// every further command is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub erased: Option<Erasure>,
    /// The version each expired consent record had reached, so a later grant continues from
    /// it: consumers order a field's changes by version.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub expired_consents: BTreeMap<Purpose, u64>,
    /// Set while the processing of the customer's data is restricted (GDPR Art. 18).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restricted: Option<Restriction>,
    /// Set while this record is merged into another (the survivor): it is kept as it was and
    /// reads and commands are sent to the survivor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merged_into: Option<MergeLink>,
    /// The records merged into this one and not unmerged, by absorbed customer.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub absorbed: BTreeMap<CustomerId, MergeLink>,
    /// Guardian and delegate relationships recorded for the subject, ended ones included.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub relationships: BTreeMap<RelationshipId, RecordedRelationship>,
}

/// One side of a merge as a record remembers it: the other customer, the merge, and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MergeLink {
    /// The survivor (in `merged_into`) or the absorbed customer (in `absorbed`).
    pub customer: CustomerId,
    pub merge_id: uuid::Uuid,
    pub at: DateTime<Utc>,
}

/// A subject under the age of digital consent (see [`CustomerState::minor`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Minor {
    pub age: u32,
    pub age_of_digital_consent: u8,
    /// Where it was judged; `None`: the policy's default age.
    pub jurisdiction: Option<Jurisdiction>,
}

/// A restriction of processing: since when, by whom, why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Restriction {
    pub since: DateTime<Utc>,
    pub by: crate::ids::Actor,
    pub reason: String,
}

/// A field as a consumer that holds the record holds it: the version of the change that made
/// the current value (or its absence), the value's keyed hash as that consumer acknowledges it
/// (`None`: no value), and when that change was recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldFact {
    pub version: u64,
    pub value_hash: Option<String>,
    pub changed_at: DateTime<Utc>,
}

/// A consent field's natural value as delivered: `"granted"` or `"withdrawn"`.
pub fn consent_value(granted: bool) -> &'static str {
    if granted { "granted" } else { "withdrawn" }
}

impl CustomerState {
    /// What holding `field` as recorded means (see [`HeldFact`]), its value hashed under the
    /// consumer's `key`; `None` if the field was never set, cleared or (for consents) recorded.
    pub fn held(&self, field: &FieldPath, key: &HashKey) -> Option<HeldFact> {
        if let FieldPath::Consent(purpose) = field {
            let c = self.consents.get(purpose)?;
            let granted = c.state == ConsentState::Granted;
            return Some(HeldFact {
                version: c.version,
                value_hash: Some(key.consent(granted).into()),
                changed_at: c.provenance.recorded_at,
            });
        }
        let rec = self.fields.get(field).filter(|r| r.value_version > 0)?;
        Some(HeldFact {
            version: rec.value_version,
            value_hash: rec.value.as_ref().map(|v| key.value(v).into()),
            changed_at: rec.provenance.as_ref()?.recorded_at,
        })
    }

    /// Every field [`Self::held`] knows, consents included, in field order.
    pub fn held_fields(&self, key: &HashKey) -> Vec<(FieldPath, HeldFact)> {
        let consents = self.consents.keys().map(|p| FieldPath::Consent(p.clone()));
        self.fields
            .keys()
            .cloned()
            .chain(consents)
            .filter_map(|f| self.held(&f, key).map(|h| (f, h)))
            .collect()
    }

    pub fn field(&self, field: &FieldPath) -> Option<&FieldRecord> {
        self.fields.get(field)
    }

    pub fn value(&self, field: &FieldPath) -> Option<&FieldValue> {
        self.fields.get(field).and_then(|r| r.value.as_ref())
    }

    pub fn field_version(&self, field: &FieldPath) -> u64 {
        self.fields.get(field).map_or(0, |r| r.version)
    }

    /// The subject's age in completed years on `now`'s date, if a birth date is recorded.
    pub fn age_on(&self, now: DateTime<Utc>) -> Option<u32> {
        match self.value(&FieldPath::BirthDate) {
            Some(FieldValue::BirthDate(b)) => b.age_on(now.date_naive()),
            _ => None,
        }
    }

    /// The subject's minor status at `now` — the one rule of it (consents, grants, guardian
    /// relationships): the age from the recorded birth date against the age of digital consent
    /// in the **recorded** `jurisdiction`, else in `fallback` (a consent's own jurisdiction),
    /// else the policy's default. `None`: not a minor, or not known to be (no birth date).
    pub fn minor(
        &self,
        fallback: Option<&Jurisdiction>,
        policy: &Policy,
        now: DateTime<Utc>,
    ) -> Option<Minor> {
        let age = self.age_on(now)?;
        let jurisdiction = match self.value(&FieldPath::Jurisdiction) {
            Some(FieldValue::Jurisdiction(j)) => Some(j),
            _ => fallback,
        };
        let age_of_digital_consent = jurisdiction
            .map_or(policy.default_age_of_digital_consent(), |j| {
                policy.age_of_digital_consent(j)
            });
        (age < u32::from(age_of_digital_consent)).then(|| Minor {
            age,
            age_of_digital_consent,
            jurisdiction: jurisdiction.cloned(),
        })
    }

    /// A consent's standing at `now`, on fresh state: expiry, maximum age and minor status are
    /// all evaluated here rather than stored.
    pub fn consent_status(
        &self,
        purpose: &Purpose,
        policy: &Policy,
        now: DateTime<Utc>,
    ) -> ConsentStatus {
        let Some(c) = self.consents.get(purpose) else {
            return ConsentStatus::NeverGranted;
        };
        if c.state == ConsentState::Withdrawn {
            return ConsentStatus::Withdrawn;
        }
        if c.terms.expires_at.is_some_and(|at| at <= now) {
            return ConsentStatus::Expired;
        }
        if policy
            .consent_max_age(purpose)
            // Checked: a policy's maximum age may reach past the calendar (never stale then).
            .is_some_and(|max| {
                c.granted_at
                    .checked_add_signed(max)
                    .is_some_and(|until| until <= now)
            })
        {
            return ConsentStatus::Stale;
        }
        // Given by a guardian counts while that guardianship is live (recorded, not ended or
        // expired): a minor's consent needs a recorded guardian.
        let fallback = Some(&c.terms.jurisdiction);
        let by_guardian = c.on_behalf_of.as_ref().is_some_and(|o| {
            o.is_guardian() && self.live_relationship(o, fallback, policy, now).is_some()
        });
        if !by_guardian && self.minor(fallback, policy, now).is_some() {
            return ConsentStatus::GuardianRequired;
        }
        ConsentStatus::Granted
    }

    /// The version of `purpose`'s consent: its record's, or the one it expired at; 0 = never.
    pub fn consent_version(&self, purpose: &Purpose) -> u64 {
        self.consents.get(purpose).map_or_else(
            || self.expired_consents.get(purpose).copied().unwrap_or(0),
            |c| c.version,
        )
    }

    fn record_mut(&mut self, field: &FieldPath) -> &mut FieldRecord {
        self.fields
            .entry(field.clone())
            .or_insert_with(FieldRecord::empty)
    }
}

/// Applies one recorded event. Infallible: events are facts already decided.
pub fn evolve(mut state: CustomerState, envelope: &EventEnvelope) -> CustomerState {
    let event = &envelope.event;
    let prov = &event.provenance;
    let at = prov.recorded_at;
    state.stream_version = envelope.stream_version;
    match &event.payload {
        EventPayload::CustomerRegistered => {
            state.registered = true;
            state.registered_at = Some(at);
        }
        EventPayload::FieldSet {
            field,
            value,
            version,
            ..
        } => {
            let rec = state.record_mut(field);
            set_value(rec, value, envelope, *version);
            rec.verification = prov.evidence.as_ref().map(|evidence| Verification {
                verified_at: at,
                verified_by: prov.source.clone(),
                evidence: Some(evidence.clone()),
            });
        }
        EventPayload::FieldCleared { field, version } => {
            let rec = state.record_mut(field);
            rec.value = None;
            rec.verification = None;
            rec.pending = None;
            touch(rec, envelope, *version);
            rec.value_version = *version;
            rec.source = Some(prov.source.clone());
            rec.asserted_at = prov.observed_at;
            rec.provenance = Some(prov.clone());
        }
        EventPayload::FieldExpired {
            field: FieldPath::Consent(purpose),
            version,
        } => {
            state.consents.remove(purpose);
            state.expired_consents.insert(purpose.clone(), *version);
        }
        EventPayload::FieldExpired { field, version } => {
            let rec = state.record_mut(field);
            rec.value = None;
            rec.verification = None;
            rec.pending = None;
            // The digests of expired values go too: nothing of them is kept.
            rec.recent.clear();
            touch(rec, envelope, *version);
            rec.value_version = *version;
            rec.source = Some(prov.source.clone());
            rec.asserted_at = None;
            rec.recorded_at = Some(at);
            rec.provenance = Some(prov.clone());
        }
        EventPayload::ChangeRequested {
            field,
            value,
            challenge_id,
            expires_at,
            version,
        } => {
            let rec = state.record_mut(field);
            rec.pending = Some(PendingChange {
                value: value.clone(),
                challenge_id: *challenge_id,
                requested_by: prov.source.clone(),
                requested_at: at,
                expires_at: *expires_at,
            });
            touch(rec, envelope, *version);
        }
        EventPayload::ChangeVerified {
            field,
            value,
            version,
            ..
        } => {
            let rec = state.record_mut(field);
            rec.pending = None;
            set_value(rec, value, envelope, *version);
            rec.verification = Some(Verification {
                verified_at: at,
                verified_by: prov.source.clone(),
                evidence: prov.evidence.clone(),
            });
        }
        EventPayload::ChangeCancelled { field, version, .. } => {
            let rec = state.record_mut(field);
            rec.pending = None;
            touch(rec, envelope, *version);
        }
        EventPayload::ConsentGranted {
            purpose,
            terms,
            version,
        } => {
            state.expired_consents.remove(purpose);
            state.consents.insert(
                purpose.clone(),
                ConsentRecord {
                    state: ConsentState::Granted,
                    terms: terms.clone(),
                    granted_at: prov.observed_at.map_or(at, |observed| observed.min(at)),
                    granted_by: prov.source.clone(),
                    on_behalf_of: prov.on_behalf_of.clone(),
                    withdrawn_at: None,
                    version: *version,
                    provenance: prov.clone(),
                    last_event_id: envelope.id,
                },
            );
        }
        EventPayload::ConsentWithdrawn { purpose, version } => {
            if let Some(c) = state.consents.get_mut(purpose) {
                c.state = ConsentState::Withdrawn;
                c.withdrawn_at = Some(at);
                c.version = *version;
                c.provenance = prov.clone();
                c.last_event_id = envelope.id;
            }
        }
        EventPayload::ValueProposed {
            proposal_id,
            field,
            value,
        } => {
            state.proposals.insert(
                *proposal_id,
                Proposal {
                    field: field.clone(),
                    value: value.clone(),
                    proposed_by: prov.source.clone(),
                    proposed_at: at,
                    event_id: envelope.id,
                },
            );
        }
        EventPayload::ProposalAccepted { proposal_id, .. }
        | EventPayload::ProposalRejected { proposal_id, .. } => {
            state.proposals.remove(proposal_id);
        }
        // A record of what a steward did; the record itself is unchanged.
        EventPayload::StewardActed { .. } => {}
        EventPayload::ProcessingRestricted { reason } => {
            state.restricted = Some(Restriction {
                since: at,
                by: prov.actor.clone(),
                reason: reason.clone(),
            });
        }
        EventPayload::RestrictionLifted { .. } => state.restricted = None,
        EventPayload::CustomerMerged { merge_id, absorbed } => {
            state.absorbed.insert(
                *absorbed,
                MergeLink {
                    customer: *absorbed,
                    merge_id: *merge_id,
                    at,
                },
            );
        }
        EventPayload::MergedInto { merge_id, survivor } => {
            state.merged_into = Some(MergeLink {
                customer: *survivor,
                merge_id: *merge_id,
                at,
            });
        }
        EventPayload::CustomerUnmerged { absorbed, .. } => {
            state.absorbed.remove(absorbed);
        }
        EventPayload::UnmergedFrom { .. } => state.merged_into = None,
        EventPayload::FieldAdopted {
            field,
            adopted,
            version,
            ..
        } => adopt(&mut state, field, adopted, envelope, *version),
        EventPayload::RelationshipRecorded { .. }
        | EventPayload::RelationshipEnded { .. }
        | EventPayload::RelationshipAdopted { .. } => {
            relationship_evolve(&mut state, envelope);
        }
        EventPayload::CustomerErased { reason } => {
            // Registration stays so that the customer reads as erased rather than unknown.
            state.restricted = None;
            state.absorbed.clear();
            state.relationships.clear();
            state.fields.clear();
            state.consents.clear();
            state.proposals.clear();
            state.expired_consents.clear();
            state.erased = Some(Erasure {
                at,
                source: prov.source.clone(),
                reason: reason.clone(),
            });
        }
    }
    state
}

/// Applies a relationship event (kept apart from `evolve`'s field arms).
fn relationship_evolve(state: &mut CustomerState, envelope: &EventEnvelope) {
    let prov = &envelope.event.provenance;
    match &envelope.event.payload {
        EventPayload::RelationshipRecorded {
            relationship_id,
            representative,
            evidence,
            scope,
            expires_at,
        } => {
            state.relationships.insert(
                *relationship_id,
                RecordedRelationship {
                    representative: representative.clone(),
                    evidence: evidence.clone(),
                    scope: scope.clone(),
                    expires_at: *expires_at,
                    recorded_at: prov.recorded_at,
                    recorded_by: prov.source.clone(),
                    ended: None,
                },
            );
        }
        EventPayload::RelationshipAdopted {
            relationship_id,
            relationship,
            ..
        } => match relationship {
            Some(r) => {
                state
                    .relationships
                    .insert(*relationship_id, r.as_ref().clone());
            }
            None => {
                state.relationships.remove(relationship_id);
            }
        },
        EventPayload::RelationshipEnded {
            relationship_id,
            reason,
        } => {
            if let Some(r) = state.relationships.get_mut(relationship_id) {
                r.ended = Some(RelationshipEnding {
                    at: prov.recorded_at,
                    by: prov.source.clone(),
                    reason: reason.clone(),
                });
            }
        }
        _ => {}
    }
}

/// Applies an event whose data can no longer be read because its customer was erased (the
/// data key is destroyed): only what is kept in the clear counts — its place in the stream,
/// and, for a registration, when it happened. The `customer_erased` event that ends such a
/// stream clears everything else, so this fold ends in the same state as the live erasure.
pub fn evolve_unreadable(
    mut state: CustomerState,
    stream_version: u64,
    event_type: &str,
    recorded_at: DateTime<Utc>,
) -> CustomerState {
    state.stream_version = stream_version;
    if event_type == EventPayload::CustomerRegistered.type_name() {
        state.registered = true;
        state.registered_at = Some(recorded_at);
    }
    state
}

/// Makes `field`'s record the adopted one, at this record's next `version`: the value or
/// consent keeps its own provenance, the version and event id are this stream's.
fn adopt(
    state: &mut CustomerState,
    field: &FieldPath,
    adopted: &Adopted,
    envelope: &EventEnvelope,
    version: u64,
) {
    if let FieldPath::Consent(purpose) = field {
        match adopted {
            Adopted::Consent {
                state: consent_state,
                terms,
                granted_at,
                granted_by,
                on_behalf_of,
                withdrawn_at,
                provenance,
            } => {
                state.expired_consents.remove(purpose);
                state.consents.insert(
                    purpose.clone(),
                    ConsentRecord {
                        state: *consent_state,
                        terms: terms.clone(),
                        granted_at: *granted_at,
                        granted_by: granted_by.clone(),
                        on_behalf_of: on_behalf_of.clone(),
                        withdrawn_at: *withdrawn_at,
                        version,
                        provenance: (**provenance).clone(),
                        last_event_id: envelope.id,
                    },
                );
            }
            // A consent without a record continues from this version, like an expired one.
            Adopted::Absent | Adopted::Value { .. } => {
                state.consents.remove(purpose);
                state.expired_consents.insert(purpose.clone(), version);
            }
        }
        return;
    }
    let rec = state.record_mut(field);
    match adopted {
        Adopted::Value {
            value,
            source,
            asserted_at,
            recorded_at,
            verification,
            pending,
            provenance,
        } => {
            rec.value = Some(value.clone());
            rec.source = Some(source.clone());
            rec.asserted_at = *asserted_at;
            rec.recorded_at = Some(*recorded_at);
            rec.verification = verification.clone();
            rec.pending = pending.clone();
            rec.provenance = Some((**provenance).clone());
            // The record is taken whole: what this stream delivered of the field before is
            // not its value's history (and may be another record's, sealed for it).
            rec.recent = vec![(envelope.id, value.fingerprint())];
        }
        Adopted::Absent | Adopted::Consent { .. } => {
            // Like a cleared value: consumers are told to drop what they hold.
            rec.value = None;
            rec.verification = None;
            rec.pending = None;
            rec.source = Some(envelope.event.provenance.source.clone());
            rec.asserted_at = None;
            rec.recorded_at = Some(envelope.event.provenance.recorded_at);
            rec.provenance = Some(envelope.event.provenance.clone());
            rec.recent.clear();
        }
    }
    touch(rec, envelope, version);
    rec.value_version = version;
}

fn touch(rec: &mut FieldRecord, envelope: &EventEnvelope, version: u64) {
    rec.version = version;
    rec.last_event_id = Some(envelope.id);
}

fn set_value(rec: &mut FieldRecord, value: &FieldValue, envelope: &EventEnvelope, version: u64) {
    let prov = &envelope.event.provenance;
    rec.value = Some(value.clone());
    rec.source = Some(prov.source.clone());
    rec.asserted_at = prov.observed_at;
    rec.recorded_at = Some(prov.recorded_at);
    rec.provenance = Some(prov.clone());
    touch(rec, envelope, version);
    rec.value_version = version;
    rec.recent.push((envelope.id, value.fingerprint()));
    if rec.recent.len() > ECHO_WINDOW {
        rec.recent.remove(0);
    }
}

/// The version of [`evolve`]'s rules. The store keeps folded states (stream snapshots) tagged
/// with it and ignores those of another version, so any change to what `evolve` makes of an
/// event must bump it; `tests/fold_version.rs` pins a fingerprint of the fold to catch one.
pub const FOLD_VERSION: u32 = 1;

/// Folds a stream's events into its state.
pub fn fold<'a>(events: impl IntoIterator<Item = &'a EventEnvelope>) -> CustomerState {
    events.into_iter().fold(CustomerState::default(), evolve)
}
