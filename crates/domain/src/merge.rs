//! Merging two records of one person, and undoing it exactly.
//!
//! A merge keeps both streams. The absorbed record gets `merged_into` and is frozen: kept as
//! it was, its reads and commands sent to the survivor. The survivor gets `customer_merged`
//! and one `field_adopted` per field it takes from the absorbed record, with that record's
//! own provenance, plus a proposal for each conflicting value:
//!
//! - **values**: an empty field takes the absorbed value, with the change pending on it if any
//!   (confirmed on the survivor by the same challenge); on a conflict the field's system of
//!   record wins (the absorbed value only if it came from the system of record and the
//!   survivor's did not) and the losing value becomes a proposal for stewards — a change
//!   pending on a field the survivor keeps stays with the absorbed record, frozen with it;
//! - **consents**: the most protective record wins: a withdrawal on either side, else the
//!   grant that lapses first (earlier expiry, then the older grant); a consent only the
//!   absorbed record has is taken;
//! - **relationships** recorded for the absorbed record (guardians, delegates) are carried to
//!   the survivor as they were recorded (`relationship_adopted`).
//!
//! An unmerge ([`decide_unmerge`]) replays both histories without the merge: the survivor
//! as if the merge had not happened, the absorbed record as it was; what happened to the
//! survivor since is routed to the record it was about. A change of a field the survivor
//! took from the absorbed record is about the absorbed record (so is the acceptance of a
//! proposal of its value, and the ending of a relationship it brought); a withdrawal is about
//! both (a withdrawal anywhere wins), and so are a restriction of processing and its lifting;
//! anything else stays with the survivor. Both records are then written as `field_adopted`
//! and `relationship_adopted` events: the survivor's differences, and the absorbed record in
//! full (its consumers are sent it again). Versions move forward; values, consents,
//! relationships and their provenance are restored.
//!
//! The same routing ([`MergeRouting`]) says whose data key seals each event the survivor
//! records while merged ([`KeyOwners`]): what is about the absorbed record is sealed under
//! its key, so that erasing it after an unmerge leaves none of its data readable in the
//! survivor's history.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use crate::decide::derive_id;
use crate::delegation::RecordedRelationship;
use crate::event::{Adopted, Event, EventEnvelope, EventPayload, Provenance};
use crate::field::{FieldPath, FieldValue};
use crate::ids::{CustomerId, EventId, OnBehalfOf, ProposalId, Purpose, RelationshipId, SourceId};
use crate::policy::Policy;
use crate::state::{
    ConsentRecord, ConsentState, CustomerState, FieldRecord, PendingChange, Verification, evolve,
    fold,
};
use crate::values::Jurisdiction;

/// The reason an unmerge gives the proposals the merge opened and nobody decided.
pub const UNMERGE_REASON: &str = "the merge that proposed it was undone";

/// Why a merge or an unmerge was refused; nothing was recorded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize)]
#[serde(tag = "code", rename_all = "snake_case")]
pub enum MergeRefusal {
    #[error("a record cannot be merged into itself")]
    SameCustomer,
    #[error("customer {customer} is not registered")]
    NotRegistered { customer: CustomerId },
    #[error("customer {customer} is erased")]
    Erased { customer: CustomerId },
    #[error("customer {customer} is already merged into {survivor}")]
    AlreadyMerged {
        customer: CustomerId,
        survivor: CustomerId,
    },
    /// The absorbed record holds merged records of its own: unmerge them first, so that
    /// every merge can be undone on its own.
    #[error("customer {customer} has records merged into it; unmerge them first")]
    MergeChain { customer: CustomerId },
    #[error("the processing of customer {customer}'s data is restricted; lift it first")]
    Restricted { customer: CustomerId },
    #[error("customer {absorbed} is not merged into {survivor}")]
    NotMerged {
        survivor: CustomerId,
        absorbed: CustomerId,
    },
    #[error("the history of customer {customer} does not hold the merge it names")]
    HistoryMismatch { customer: CustomerId },
}

impl MergeRefusal {
    pub fn code(&self) -> &'static str {
        match self {
            Self::SameCustomer => "same_customer",
            Self::NotRegistered { .. } => "not_registered",
            Self::Erased { .. } => "erased",
            Self::AlreadyMerged { .. } => "already_merged",
            Self::MergeChain { .. } => "merge_chain",
            Self::Restricted { .. } => "restricted",
            Self::NotMerged { .. } => "not_merged",
            Self::HistoryMismatch { .. } => "history_mismatch",
        }
    }
}

/// One side of a merge or unmerge: the customer and the state its stream is at.
#[derive(Debug, Clone, Copy)]
pub struct Side<'a> {
    pub id: CustomerId,
    pub state: &'a CustomerState,
}

/// What a merge or an unmerge records: the events of each stream, in order, and the merge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergeEvents {
    pub merge_id: Uuid,
    pub survivor: Vec<EventEnvelope>,
    pub absorbed: Vec<EventEnvelope>,
}

/// Mints the events of one merge or unmerge: ids from the seed, each stream's versions, the
/// merge's provenance (its causation id is the merge).
struct Minter<'a> {
    seed: Uuid,
    minted: u64,
    provenance: Provenance,
    policy: &'a Policy,
}

impl Minter<'_> {
    fn next_id(&mut self) -> Uuid {
        self.minted += 1;
        derive_id(self.seed, self.minted)
    }

    fn push(&mut self, stream: &mut Vec<EventEnvelope>, base: u64, payload: EventPayload) {
        let id = EventId::from(self.next_id());
        stream.push(EventEnvelope {
            id,
            stream_version: base + stream.len() as u64 + 1,
            event: Event {
                payload,
                provenance: self.provenance.clone(),
                policy_version: self.policy.version().clone(),
            },
        });
    }
}

fn check_live(side: Side<'_>) -> Result<(), MergeRefusal> {
    if side.state.erased.is_some() {
        return Err(MergeRefusal::Erased { customer: side.id });
    }
    if !side.state.registered {
        return Err(MergeRefusal::NotRegistered { customer: side.id });
    }
    Ok(())
}

/// Decides the merge of `absorbed` into `survivor` (see the module). `provenance` names the
/// steward and the reason; `seed` is a fresh UUIDv7, which becomes the merge's id.
pub fn decide_merge(
    survivor: Side<'_>,
    absorbed: Side<'_>,
    provenance: Provenance,
    policy: &Policy,
    seed: Uuid,
) -> Result<MergeEvents, MergeRefusal> {
    if survivor.id == absorbed.id {
        return Err(MergeRefusal::SameCustomer);
    }
    for side in [survivor, absorbed] {
        check_live(side)?;
        if let Some(link) = &side.state.merged_into {
            return Err(MergeRefusal::AlreadyMerged {
                customer: side.id,
                survivor: link.customer,
            });
        }
        if side.state.restricted.is_some() {
            return Err(MergeRefusal::Restricted { customer: side.id });
        }
    }
    if !absorbed.state.absorbed.is_empty() {
        return Err(MergeRefusal::MergeChain {
            customer: absorbed.id,
        });
    }
    let merge_id = seed;
    let mut minter = Minter {
        seed,
        minted: 0,
        provenance: Provenance {
            causation_id: Some(merge_id),
            ..provenance
        },
        policy,
    };
    let (a, b) = (survivor.state, absorbed.state);
    let base = a.stream_version;
    let mut events = Vec::new();
    minter.push(
        &mut events,
        base,
        EventPayload::CustomerMerged {
            merge_id,
            absorbed: absorbed.id,
        },
    );
    let mut proposals: Vec<(FieldPath, FieldValue)> = Vec::new();
    for (field, theirs) in &b.fields {
        let Some(their_value) = &theirs.value else {
            continue;
        };
        let Some(adopted) = adopted_value(theirs) else {
            continue;
        };
        let ours = a.fields.get(field).filter(|r| r.value.is_some());
        let take = match ours.and_then(|r| r.value.as_ref().map(|v| (r, v))) {
            None => true,
            Some((_, our_value)) if our_value == their_value => false,
            Some((ours, our_value)) => {
                let sor = &policy.rule(field).system_of_record;
                let theirs_wins =
                    theirs.source.as_ref() == Some(sor) && ours.source.as_ref() != Some(sor);
                let loser = if theirs_wins { our_value } else { their_value };
                proposals.push((field.clone(), loser.clone()));
                theirs_wins
            }
        };
        if take {
            minter.push(
                &mut events,
                base,
                EventPayload::FieldAdopted {
                    field: field.clone(),
                    merge_id,
                    origin: absorbed.id,
                    adopted: Box::new(adopted),
                    version: a.field_version(field) + 1,
                },
            );
        }
    }
    for (purpose, theirs) in &b.consents {
        let take = match a.consents.get(purpose) {
            None => true,
            Some(ours) => more_protective(theirs, ours),
        };
        if take {
            minter.push(
                &mut events,
                base,
                EventPayload::FieldAdopted {
                    field: FieldPath::Consent(purpose.clone()),
                    merge_id,
                    origin: absorbed.id,
                    adopted: Box::new(adopted_consent(theirs)),
                    version: a.consent_version(purpose) + 1,
                },
            );
        }
    }
    // Who may act for the person: the absorbed record's relationships, as they were
    // recorded (a guardian of the absorbed record is the survivor's guardian).
    for (relationship_id, theirs) in &b.relationships {
        if !a.relationships.contains_key(relationship_id) {
            minter.push(
                &mut events,
                base,
                EventPayload::RelationshipAdopted {
                    relationship_id: *relationship_id,
                    merge_id,
                    origin: absorbed.id,
                    relationship: Some(Box::new(theirs.clone())),
                },
            );
        }
    }
    for (field, value) in proposals {
        let proposal_id = ProposalId::from(minter.next_id());
        minter.push(
            &mut events,
            base,
            EventPayload::ValueProposed {
                proposal_id,
                field,
                value,
            },
        );
    }
    let mut frozen = Vec::new();
    minter.push(
        &mut frozen,
        b.stream_version,
        EventPayload::MergedInto {
            merge_id,
            survivor: survivor.id,
        },
    );
    Ok(MergeEvents {
        merge_id,
        survivor: events,
        absorbed: frozen,
    })
}

/// Whether consent record `theirs` is more protective than `ours`: a withdrawal wins over a
/// grant; between grants, the one that lapses first (earlier expiry, then the older grant).
fn more_protective(theirs: &ConsentRecord, ours: &ConsentRecord) -> bool {
    match (theirs.state, ours.state) {
        (ConsentState::Withdrawn, ConsentState::Granted) => true,
        (_, ConsentState::Withdrawn) => false,
        (ConsentState::Granted, ConsentState::Granted) => {
            let lapse = |c: &ConsentRecord| c.terms.expires_at.unwrap_or(DateTime::<Utc>::MAX_UTC);
            (lapse(theirs), theirs.granted_at) < (lapse(ours), ours.granted_at)
        }
    }
}

/// A field record as a merge or unmerge carries it, its pending change included (a change
/// the person asked for and has yet to confirm is confirmed on the survivor, by the same
/// challenge); `None` if it holds no value.
fn adopted_value(rec: &FieldRecord) -> Option<Adopted> {
    Some(Adopted::Value {
        value: rec.value.clone()?,
        source: rec.source.clone()?,
        asserted_at: rec.asserted_at,
        recorded_at: rec.recorded_at?,
        verification: rec.verification.clone(),
        pending: rec.pending.clone(),
        provenance: Box::new(rec.provenance.clone()?),
    })
}

fn adopted_consent(c: &ConsentRecord) -> Adopted {
    Adopted::Consent {
        state: c.state,
        terms: c.terms.clone(),
        granted_at: c.granted_at,
        granted_by: c.granted_by.clone(),
        on_behalf_of: c.on_behalf_of.clone(),
        withdrawn_at: c.withdrawn_at,
        provenance: Box::new(c.provenance.clone()),
    }
}

/// Decides the undoing of the merge of `absorbed` into `survivor` (see the module), from
/// both full histories (the events of each stream, in order) and their current states.
pub fn decide_unmerge(
    survivor: Side<'_>,
    survivor_history: &[EventEnvelope],
    absorbed: Side<'_>,
    absorbed_history: &[EventEnvelope],
    provenance: Provenance,
    policy: &Policy,
    seed: Uuid,
) -> Result<MergeEvents, MergeRefusal> {
    let not_merged = || MergeRefusal::NotMerged {
        survivor: survivor.id,
        absorbed: absorbed.id,
    };
    check_live(survivor)?;
    check_live(absorbed)?;
    let link = survivor
        .state
        .absorbed
        .get(&absorbed.id)
        .ok_or_else(not_merged)?;
    let merge_id = link.merge_id;
    if absorbed
        .state
        .merged_into
        .as_ref()
        .map(|l| (l.customer, l.merge_id))
        != Some((survivor.id, merge_id))
    {
        return Err(not_merged());
    }
    let (mut ours, mut theirs) = replay_apart(
        survivor,
        survivor_history,
        absorbed,
        absorbed_history,
        merge_id,
    )?;
    // Both keep what they hold in the clear about other merges.
    ours.absorbed.remove(&absorbed.id);
    theirs.merged_into = None;
    let mut minter = Minter {
        seed,
        minted: 0,
        provenance: Provenance {
            causation_id: Some(merge_id),
            ..provenance
        },
        policy,
    };
    let a = survivor.state;
    let mut events = Vec::new();
    minter.push(
        &mut events,
        a.stream_version,
        EventPayload::CustomerUnmerged {
            merge_id,
            absorbed: absorbed.id,
        },
    );
    // The survivor's differences only; the absorbed record in full (its consumers may have
    // let it go at the merge), each change marked by where it was recorded.
    for (field, adopted, _) in restorations(a, &ours) {
        let version = next_version(a, &field);
        minter.push(
            &mut events,
            a.stream_version,
            EventPayload::FieldAdopted {
                field,
                merge_id,
                origin: survivor.id,
                adopted: Box::new(adopted),
                version,
            },
        );
    }
    for (proposal_id, p) in &a.proposals {
        if !ours.proposals.contains_key(proposal_id) {
            minter.push(
                &mut events,
                a.stream_version,
                EventPayload::ProposalRejected {
                    proposal_id: *proposal_id,
                    field: p.field.clone(),
                    reason: UNMERGE_REASON.to_owned(),
                },
            );
        }
    }
    for (relationship_id, relationship) in relationship_changes(a, &ours) {
        minter.push(
            &mut events,
            a.stream_version,
            EventPayload::RelationshipAdopted {
                relationship_id,
                merge_id,
                origin: absorbed.id,
                relationship: relationship.map(Box::new),
            },
        );
    }
    let b = absorbed.state;
    let mut restored = Vec::new();
    minter.push(
        &mut restored,
        b.stream_version,
        EventPayload::UnmergedFrom {
            merge_id,
            survivor: survivor.id,
        },
    );
    for (field, adopted, changed) in every_field(b, &theirs) {
        let version = next_version(b, &field);
        minter.push(
            &mut restored,
            b.stream_version,
            EventPayload::FieldAdopted {
                field,
                merge_id,
                origin: if changed { survivor.id } else { absorbed.id },
                adopted: Box::new(adopted),
                version,
            },
        );
    }
    for (relationship_id, relationship) in relationship_changes(b, &theirs) {
        minter.push(
            &mut restored,
            b.stream_version,
            EventPayload::RelationshipAdopted {
                relationship_id,
                merge_id,
                origin: absorbed.id,
                relationship: relationship.map(Box::new),
            },
        );
    }
    // The absorbed record was not restricted when it was merged (a restricted record is
    // not merged); a restriction of the survivor's since is theirs too.
    match (&theirs.restricted, &b.restricted) {
        (Some(restriction), None) => minter.push(
            &mut restored,
            b.stream_version,
            EventPayload::ProcessingRestricted {
                reason: restriction.reason.clone(),
            },
        ),
        (None, Some(_)) => minter.push(
            &mut restored,
            b.stream_version,
            EventPayload::RestrictionLifted {
                reason: UNMERGE_REASON.to_owned(),
            },
        ),
        _ => {}
    }
    Ok(MergeEvents {
        merge_id,
        survivor: events,
        absorbed: restored,
    })
}

/// Every field and consent either record shows: the record `target` holds for it, and
/// whether that differs from what `now` shows.
fn every_field(now: &CustomerState, target: &CustomerState) -> Vec<(FieldPath, Adopted, bool)> {
    let (seen, wanted) = (Visible::of(now), Visible::of(target));
    let fields = seen.fields.keys().chain(wanted.fields.keys()).cloned();
    let consents = seen
        .consents
        .keys()
        .chain(wanted.consents.keys())
        .map(|p| FieldPath::Consent(p.clone()));
    fields
        .chain(consents)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .map(|field| {
            let (changed, adopted) = match &field {
                FieldPath::Consent(p) => (
                    seen.consents.get(p) != wanted.consents.get(p),
                    target
                        .consents
                        .get(p)
                        .map_or(Adopted::Absent, adopted_consent),
                ),
                _ => (
                    seen.fields.get(&field) != wanted.fields.get(&field),
                    target
                        .fields
                        .get(&field)
                        .and_then(adopted_value)
                        .unwrap_or(Adopted::Absent),
                ),
            };
            (field, adopted, changed)
        })
        .collect()
}

/// What must change for `now` to show what `target` shows.
fn restorations(now: &CustomerState, target: &CustomerState) -> Vec<(FieldPath, Adopted, bool)> {
    every_field(now, target)
        .into_iter()
        .filter(|(_, _, changed)| *changed)
        .collect()
}

/// The relationships whose record must change for `now` to show what `target` shows: the
/// one `target` holds, or `None` to take it away.
fn relationship_changes(
    now: &CustomerState,
    target: &CustomerState,
) -> Vec<(RelationshipId, Option<RecordedRelationship>)> {
    now.relationships
        .keys()
        .chain(target.relationships.keys())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .filter(|id| now.relationships.get(id) != target.relationships.get(id))
        .map(|id| (*id, target.relationships.get(id).cloned()))
        .collect()
}

/// The version the next event of `field` gives it in `state`'s stream.
fn next_version(state: &CustomerState, field: &FieldPath) -> u64 {
    match field {
        FieldPath::Consent(p) => state.consent_version(p) + 1,
        _ => state.field_version(field) + 1,
    }
}

/// Both records as they would be had merge `merge_id` not happened: the survivor's history
/// without the merge's events, the absorbed record's up to its `merged_into`, and the
/// survivor's later events routed to the record each was about (see the module).
fn replay_apart(
    survivor: Side<'_>,
    survivor_history: &[EventEnvelope],
    absorbed: Side<'_>,
    absorbed_history: &[EventEnvelope],
    merge_id: Uuid,
) -> Result<(CustomerState, CustomerState), MergeRefusal> {
    let start = survivor_history
        .iter()
        .position(|e| {
            matches!(&e.event.payload, EventPayload::CustomerMerged { merge_id: m, .. } if *m == merge_id)
        })
        .ok_or(MergeRefusal::HistoryMismatch {
            customer: survivor.id,
        })?;
    let frozen_at = absorbed_history
        .iter()
        .position(|e| {
            matches!(&e.event.payload, EventPayload::MergedInto { merge_id: m, .. } if *m == merge_id)
        })
        .ok_or(MergeRefusal::HistoryMismatch {
            customer: absorbed.id,
        })?;
    let mut ours = fold(&survivor_history[..start]);
    let mut theirs = fold(&absorbed_history[..frozen_at]);
    let mut routing = MergeRouting::new(absorbed.id, merge_id);
    for e in &survivor_history[start + 1..] {
        let route = routing.route(e);
        // The merge's own events are in neither record.
        if routing.in_merge {
            continue;
        }
        match route {
            Route::Both => {
                ours = evolve(ours, e);
                theirs = evolve(theirs, e);
            }
            Route::Absorbed => theirs = evolve(theirs, e),
            Route::Survivor => ours = evolve(ours, e),
        }
    }
    Ok((ours, theirs))
}

/// Which record an event recorded on a survivor after a merge is about (see the module).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Survivor,
    Absorbed,
    /// Protective for whoever it was about: a withdrawal, a restriction of processing and
    /// its lifting.
    Both,
}

/// Follows a survivor's stream from one merge's marker on and routes each event to the
/// record it is about. The one rule for it: an unmerge replays by it, and the store seals by
/// it (what is about the absorbed record is sealed under that record's key, so that its
/// erasure after an unmerge leaves no copy readable in the survivor's history).
#[derive(Debug, Clone)]
pub struct MergeRouting {
    absorbed: CustomerId,
    merge_id: Uuid,
    /// Still in the merge's own events: the marker and what follows it with the merge as its
    /// cause.
    in_merge: bool,
    /// The fields whose current value is the absorbed record's.
    fields: BTreeSet<FieldPath>,
    /// The merge's proposals, by whose value each holds.
    proposals: BTreeMap<ProposalId, Route>,
    /// The relationships the merge brought from the absorbed record.
    relationships: BTreeSet<RelationshipId>,
}

impl MergeRouting {
    /// Routing from merge `merge_id`'s marker on.
    pub fn new(absorbed: CustomerId, merge_id: Uuid) -> Self {
        Self {
            absorbed,
            merge_id,
            in_merge: true,
            fields: BTreeSet::new(),
            proposals: BTreeMap::new(),
            relationships: BTreeSet::new(),
        }
    }

    /// The record `e`, the survivor's next event after the marker, is about.
    pub fn route(&mut self, e: &EventEnvelope) -> Route {
        let payload = &e.event.payload;
        if self.in_merge {
            if e.event.provenance.causation_id == Some(self.merge_id) {
                return self.route_merge_event(payload);
            }
            self.in_merge = false;
        }
        if let EventPayload::ConsentWithdrawn { .. }
        | EventPayload::ProcessingRestricted { .. }
        | EventPayload::RestrictionLifted { .. } = payload
        {
            return Route::Both;
        }
        // Accepting one of the merge's proposals makes the field the record's whose value
        // it was.
        if let EventPayload::FieldSet {
            field,
            proposal_id: Some(p),
            ..
        } = payload
        {
            match self.proposals.get(p) {
                Some(Route::Absorbed) => {
                    self.fields.insert(field.clone());
                }
                Some(_) => {
                    self.fields.remove(field);
                }
                None => {}
            }
        }
        let about_absorbed = match payload {
            // Proposals stay where they were made; one the merge opened is in neither.
            EventPayload::ValueProposed { .. }
            | EventPayload::ProposalAccepted { .. }
            | EventPayload::ProposalRejected { .. } => false,
            // The ending of a relationship recorded for the absorbed record is about it.
            EventPayload::RelationshipEnded {
                relationship_id, ..
            } => self.relationships.contains(relationship_id),
            _ => payload.field().is_some_and(|f| self.fields.contains(&f)),
        };
        if about_absorbed {
            Route::Absorbed
        } else {
            Route::Survivor
        }
    }

    fn route_merge_event(&mut self, payload: &EventPayload) -> Route {
        match payload {
            EventPayload::FieldAdopted { field, origin, .. } if *origin == self.absorbed => {
                self.fields.insert(field.clone());
                Route::Absorbed
            }
            EventPayload::RelationshipAdopted {
                relationship_id, ..
            } => {
                self.relationships.insert(*relationship_id);
                Route::Absorbed
            }
            // A proposal of a field the absorbed record won holds the survivor's value.
            EventPayload::ValueProposed {
                proposal_id, field, ..
            } => {
                let whose = if self.fields.contains(field) {
                    Route::Survivor
                } else {
                    Route::Absorbed
                };
                self.proposals.insert(*proposal_id, whose);
                whose
            }
            _ => Route::Survivor,
        }
    }
}

/// Whose data key seals each event of a stream: the stream's own, but for what a survivor
/// records about a record merged into it ([`MergeRouting`]), which is sealed under that
/// record's key.
#[derive(Debug, Clone)]
pub struct KeyOwners {
    stream: CustomerId,
    merges: Vec<MergeRouting>,
}

impl KeyOwners {
    /// For the events that follow `history`, the stream's events so far (only needed while
    /// the record has records merged into it: without, an empty history will do).
    pub fn new(stream: CustomerId, history: &[EventEnvelope]) -> Self {
        let mut owners = Self {
            stream,
            merges: Vec::new(),
        };
        for e in history {
            owners.owner(e);
        }
        owners
    }

    /// Whose key seals `e`, the stream's next event.
    pub fn owner(&mut self, e: &EventEnvelope) -> CustomerId {
        match &e.event.payload {
            EventPayload::CustomerMerged { merge_id, absorbed } => {
                self.merges.push(MergeRouting::new(*absorbed, *merge_id));
                return self.stream;
            }
            EventPayload::CustomerUnmerged { absorbed, .. } => {
                self.merges.retain(|m| m.absorbed != *absorbed);
                return self.stream;
            }
            EventPayload::CustomerErased { .. } => {
                self.merges.clear();
                return self.stream;
            }
            _ => {}
        }
        let mut owner = self.stream;
        // Every merge follows every event.
        for merge in &mut self.merges {
            if merge.route(e) == Route::Absorbed {
                owner = merge.absorbed;
            }
        }
        owner
    }
}

/// A record as its readers see it: values and consents with their provenance, open
/// proposals, recorded relationships, registration, restriction and erasure — without the versions and event ids
/// that order its stream. An unmerge restores this, and a merge undone leaves it as it was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Visible {
    pub registered: bool,
    pub erased: bool,
    pub restricted: bool,
    pub fields: BTreeMap<FieldPath, VisibleField>,
    pub consents: BTreeMap<Purpose, VisibleConsent>,
    pub proposals: BTreeMap<ProposalId, (FieldPath, FieldValue, SourceId)>,
    pub relationships: BTreeMap<RelationshipId, RecordedRelationship>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VisibleField {
    pub value: Option<FieldValue>,
    pub source: Option<SourceId>,
    pub asserted_at: Option<DateTime<Utc>>,
    pub recorded_at: Option<DateTime<Utc>>,
    pub verification: Option<Verification>,
    pub pending: Option<PendingChange>,
    pub provenance: Option<Provenance>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VisibleConsent {
    pub state: ConsentState,
    pub terms: crate::event::ConsentTerms,
    pub granted_at: DateTime<Utc>,
    pub granted_by: SourceId,
    pub on_behalf_of: Option<OnBehalfOf>,
    pub withdrawn_at: Option<DateTime<Utc>>,
    pub jurisdiction: Jurisdiction,
    pub provenance: Provenance,
}

impl Visible {
    pub fn of(state: &CustomerState) -> Self {
        Self {
            registered: state.registered,
            erased: state.erased.is_some(),
            restricted: state.restricted.is_some(),
            // A field without a value (cleared, or never set) reads as absent.
            fields: state
                .fields
                .iter()
                .filter(|(_, r)| r.value.is_some() || r.pending.is_some())
                .map(|(f, r)| {
                    (
                        f.clone(),
                        VisibleField {
                            value: r.value.clone(),
                            source: r.value.as_ref().and(r.source.clone()),
                            asserted_at: r.value.as_ref().and(r.asserted_at),
                            recorded_at: r.value.as_ref().and(r.recorded_at),
                            verification: r.verification.clone(),
                            pending: r.pending.clone(),
                            provenance: r.value.as_ref().and(r.provenance.clone()),
                        },
                    )
                })
                .collect(),
            consents: state
                .consents
                .iter()
                .map(|(p, c)| {
                    (
                        p.clone(),
                        VisibleConsent {
                            state: c.state,
                            terms: c.terms.clone(),
                            granted_at: c.granted_at,
                            granted_by: c.granted_by.clone(),
                            on_behalf_of: c.on_behalf_of.clone(),
                            withdrawn_at: c.withdrawn_at,
                            jurisdiction: c.terms.jurisdiction.clone(),
                            provenance: c.provenance.clone(),
                        },
                    )
                })
                .collect(),
            proposals: state
                .proposals
                .iter()
                .map(|(id, p)| {
                    (
                        *id,
                        (p.field.clone(), p.value.clone(), p.proposed_by.clone()),
                    )
                })
                .collect(),
            relationships: state.relationships.clone(),
        }
    }
}
