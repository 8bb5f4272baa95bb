//! Purpose limitation at delivery: what a consumer may receive of a recorded event, decided on
//! the customer's state at the moment of delivery. Pure and synchronous, so every channel (NATS,
//! webhooks, the HTTP feed) decides the same way.
//!
//! The rules:
//! - A consumer receives a customer's data only while the basis for **every** purpose it
//!   processes data for holds now (`CustomerState::consent_status` is `Granted`: not withdrawn,
//!   not expired, not stale under the policy, not a minor's consent without a guardian). A
//!   consent record's `basis` is the legal basis (consent, contract, legitimate interests…)
//!   under which the customer's data may be used for that purpose.
//! - A consumer registered in a region of its own receives it only while the transfer there is
//!   lawful under the policy's transfer rules (`Location::lawful_for`, the rule decisions
//!   apply): losing that (the customer's recorded jurisdiction changed, say) ends the basis
//!   like a withdrawal.
//! - When the basis stops holding for a customer the consumer was receiving, it gets one
//!   withdrawal notice (stop using and delete the data) and nothing further.
//! - When the basis holds again and there is something to deliver, it first gets a resume
//!   notice, then the change.
//! - A consumer that never received anything of a customer gets nothing while the basis fails:
//!   not even a notice, which would itself reveal the customer to it.
//! - While the processing of a customer's data is restricted (GDPR Art. 18), nothing of it is
//!   delivered. A consumer that was receiving it gets one restriction notice (keep the data,
//!   do not use it); when the restriction is lifted, a resume notice (and from then on the
//!   customer's changes, as after a withdrawal). If the basis fails meanwhile, a restricted
//!   consumer still gets the withdrawal notice (delete), since it holds the data.
//! - An erased customer's data is never delivered. A consumer that was ever sent data of the
//!   customer (`receiving` or `withdrawn`) gets one erasure notice at the `customer_erased`
//!   event (delete everything, including what a withdrawal let it keep), then nothing, ever.

use chrono::{DateTime, Utc};
use idledger_domain::event::{Adopted, EventPayload, RepushedValue};
use idledger_domain::field::FieldPath;
use idledger_domain::ids::CustomerId;
use idledger_domain::policy::Policy;
use idledger_domain::state::{ConsentStatus, CustomerState};
use idledger_domain::usage::subject_country;
use idledger_store::delivery::{ConsentBasis, Consumer, Relation, TransferStanding};
use idledger_store::model::RecordedEvent;

/// What one event means to one consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The messages to send, in order (at most: resume, then change; or a lone notice).
    pub messages: Vec<Outgoing>,
    /// The consumer's relation to the customer after these messages, if it changes.
    pub relation: Option<Relation>,
}

impl Decision {
    fn skip() -> Self {
        Self {
            messages: Vec::new(),
            relation: None,
        }
    }
}

/// A message the decision calls for. The envelope is built from it and the event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outgoing {
    /// The event's change of a field the consumer selects.
    Change {
        change: FieldChange,
        basis: Vec<ConsentBasis>,
    },
    /// The basis stopped holding: stop using and delete the customer's data.
    Notice { basis: Vec<ConsentBasis> },
    /// The basis holds again after a notice: deliveries resume.
    Resume { basis: Vec<ConsentBasis> },
    /// Processing of the customer is restricted: keep their data, do not use it, until a
    /// resume notice.
    Restriction {
        since: DateTime<Utc>,
        basis: Vec<ConsentBasis>,
    },
    /// The customer was erased: delete everything of them. Final.
    Erasure {
        erased_at: DateTime<Utc>,
        basis: Vec<ConsentBasis>,
    },
    /// A steward sent a proposal about a field the consumer selects to it, the field's
    /// system of record (the same id as a source), to accept or reject with its own token.
    Routed { basis: Vec<ConsentBasis> },
    /// The customer's record was merged into `survivor` (`undone`: the merge was undone and
    /// the record stands on its own again; its fields follow as changes).
    Merge {
        merge_id: uuid::Uuid,
        survivor: CustomerId,
        undone: bool,
        basis: Vec<ConsentBasis>,
    },
}

impl Outgoing {
    pub fn basis(&self) -> &[ConsentBasis] {
        match self {
            Self::Change { basis, .. }
            | Self::Notice { basis }
            | Self::Resume { basis }
            | Self::Restriction { basis, .. }
            | Self::Erasure { basis, .. }
            | Self::Routed { basis }
            | Self::Merge { basis, .. } => basis,
        }
    }
}

/// The deliverable kinds of change an event can carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldChange {
    /// A value became current (`field_set`, `change_verified`).
    Set { field: FieldPath, version: u64 },
    /// The value is gone: cleared by a writer (`field_cleared`) or expired by retention
    /// (`field_expired`, for a consent too: its record is gone).
    Cleared { field: FieldPath, version: u64 },
    /// A consent was granted or withdrawn (the field `consent.<purpose>`).
    Consent {
        field: FieldPath,
        granted: bool,
        version: u64,
    },
}

impl FieldChange {
    pub fn field(&self) -> &FieldPath {
        match self {
            Self::Set { field, .. } | Self::Cleared { field, .. } | Self::Consent { field, .. } => {
                field
            }
        }
    }

    pub fn version(&self) -> u64 {
        match self {
            Self::Set { version, .. }
            | Self::Cleared { version, .. }
            | Self::Consent { version, .. } => *version,
        }
    }

    /// The change an event makes that consumers can be sent, if any. Pending changes,
    /// proposals and registration stay inside idledger: they are not (yet) the record.
    pub fn of(payload: &EventPayload) -> Option<Self> {
        match payload {
            EventPayload::FieldSet { field, version, .. }
            | EventPayload::ChangeVerified { field, version, .. } => Some(Self::Set {
                field: field.clone(),
                version: *version,
            }),
            // An expired value (or consent record) is gone from the record like a cleared one,
            // so consumers holding it are told to drop it the same way.
            EventPayload::FieldCleared { field, version }
            | EventPayload::FieldExpired { field, version } => Some(Self::Cleared {
                field: field.clone(),
                version: *version,
            }),
            EventPayload::ConsentGranted {
                purpose, version, ..
            } => Some(Self::Consent {
                field: FieldPath::Consent(purpose.clone()),
                granted: true,
                version: *version,
            }),
            EventPayload::ConsentWithdrawn { purpose, version } => Some(Self::Consent {
                field: FieldPath::Consent(purpose.clone()),
                granted: false,
                version: *version,
            }),
            // A steward's re-push sends the field's state again (to one consumer: see
            // `selected_change`); other steward actions stay inside idledger.
            EventPayload::StewardActed {
                field: Some(field),
                repush: Some(repush),
                ..
            } => Some(match &repush.value {
                RepushedValue::Set { .. } => Self::Set {
                    field: field.clone(),
                    version: repush.version,
                },
                RepushedValue::Cleared => Self::Cleared {
                    field: field.clone(),
                    version: repush.version,
                },
                RepushedValue::Consent { granted } => Self::Consent {
                    field: field.clone(),
                    granted: *granted,
                    version: repush.version,
                },
            }),
            // A merge or unmerge moves a field's whole record: sent like any other change.
            EventPayload::FieldAdopted {
                field,
                adopted,
                version,
                ..
            } => Some(match (field, adopted.as_ref()) {
                (FieldPath::Consent(_), Adopted::Consent { state, .. }) => Self::Consent {
                    field: field.clone(),
                    granted: *state == idledger_domain::state::ConsentState::Granted,
                    version: *version,
                },
                (FieldPath::Consent(_), _) | (_, Adopted::Absent | Adopted::Consent { .. }) => {
                    Self::Cleared {
                        field: field.clone(),
                        version: *version,
                    }
                }
                (_, Adopted::Value { .. }) => Self::Set {
                    field: field.clone(),
                    version: *version,
                },
            }),
            EventPayload::StewardActed { .. }
            | EventPayload::CustomerMerged { .. }
            | EventPayload::MergedInto { .. }
            | EventPayload::CustomerUnmerged { .. }
            | EventPayload::UnmergedFrom { .. }
            | EventPayload::CustomerRegistered
            | EventPayload::ChangeRequested { .. }
            | EventPayload::ChangeCancelled { .. }
            | EventPayload::ValueProposed { .. }
            | EventPayload::ProposalAccepted { .. }
            | EventPayload::ProposalRejected { .. }
            | EventPayload::ProcessingRestricted { .. }
            | EventPayload::RestrictionLifted { .. }
            // Who may act for the subject is idledger's to check, not a consumer's field.
            | EventPayload::RelationshipRecorded { .. }
            | EventPayload::RelationshipEnded { .. }
            | EventPayload::RelationshipAdopted { .. }
            | EventPayload::CustomerErased { .. } => None,
        }
    }
}

/// The standing of each of the consumer's purposes for a customer at `now`.
pub fn basis(
    consumer: &Consumer,
    state: Option<&CustomerState>,
    policy: &Policy,
    now: DateTime<Utc>,
) -> Vec<ConsentBasis> {
    consumer
        .purposes
        .iter()
        .map(|purpose| {
            let status = state.map_or(ConsentStatus::NeverGranted, |s| {
                s.consent_status(purpose, policy, now)
            });
            let record = state.and_then(|s| s.consents.get(purpose));
            let transfer = consumer.location.region().map(|region| TransferStanding {
                region,
                basis: consumer.location.transfer_basis(),
                // Without a record nothing is sent, transfer or not.
                lawful: state.zip(record).is_some_and(|(s, r)| {
                    consumer
                        .location
                        .lawful_for(policy, subject_country(s, &r.terms))
                }),
            });
            ConsentBasis {
                purpose: purpose.clone(),
                status,
                legal_basis: record.map(|c| c.terms.basis),
                consent_version: record.map(|c| c.version),
                consent_event_id: record.map(|c| c.last_event_id),
                notice: record.map(|c| c.terms.notice.clone()),
                granted_at: record.map(|c| c.granted_at),
                expires_at: record.and_then(|c| c.terms.expires_at),
                transfer,
            }
        })
        .collect()
}

/// Whether every purpose's basis holds, and with it the transfer to a consumer abroad.
pub fn holds(basis: &[ConsentBasis]) -> bool {
    basis.iter().all(ConsentBasis::holds)
}

/// Whether an event can matter to the consumer before any state is read: it changes a field
/// the consumer selects, the consumer is receiving the customer's data (so a notice may be
/// due), or it is the erasure of a customer the consumer was sent data of. Lets callers skip
/// loading state for everything else.
pub fn may_concern(consumer: &Consumer, event: &RecordedEvent, relation: Option<Relation>) -> bool {
    match relation {
        Some(Relation::Erased) => false,
        Some(Relation::Receiving | Relation::Restricted) => true,
        Some(Relation::Withdrawn) if is_erasure(event) => true,
        _ => selected_change(consumer, event).is_some() || routed_to(consumer, event),
    }
}

/// Whether `event` is a proposal a steward routed to `consumer` as its field's system of
/// record (a source and a consumer with the same id are the same system), about a field it
/// selects. Its data is the proposal's value, so the basis must hold like a change's.
fn routed_to(consumer: &Consumer, event: &RecordedEvent) -> bool {
    match &event.envelope.event.payload {
        EventPayload::StewardActed {
            field: Some(field),
            routed: Some(routed),
            ..
        } => routed.system_of_record.as_str() == consumer.id.as_str() && consumer.selects(field),
        _ => false,
    }
}

/// The merge an absorbed record's `merged_into` (or `unmerged_from`: undone) event records.
fn merge_marker(event: &RecordedEvent) -> Option<(uuid::Uuid, CustomerId, bool)> {
    match &event.envelope.event.payload {
        EventPayload::MergedInto { merge_id, survivor } => Some((*merge_id, *survivor, false)),
        EventPayload::UnmergedFrom { merge_id, survivor } => Some((*merge_id, *survivor, true)),
        _ => None,
    }
}

fn is_erasure(event: &RecordedEvent) -> bool {
    matches!(
        event.envelope.event.payload,
        EventPayload::CustomerErased { .. }
    )
}

fn selected_change(consumer: &Consumer, event: &RecordedEvent) -> Option<FieldChange> {
    let payload = &event.envelope.event.payload;
    if let EventPayload::StewardActed { consumer_id, .. } = payload
        && consumer_id != consumer.id.as_str()
    {
        return None;
    }
    FieldChange::of(payload).filter(|c| consumer.selects(c.field()))
}

/// Decides what `consumer` is sent for `event`, given the customer's current `state` (`None`:
/// no record, e.g. erased), the consumer's current `relation` to the customer and `now`.
pub fn decide(
    consumer: &Consumer,
    event: &RecordedEvent,
    state: Option<&CustomerState>,
    relation: Option<Relation>,
    policy: &Policy,
    now: DateTime<Utc>,
) -> Decision {
    if relation == Some(Relation::Erased) {
        return Decision::skip();
    }
    if let Some(erasure) = state.and_then(|s| s.erased.as_ref()) {
        // Nothing of an erased customer goes out. Events read before the erasure (the log
        // runs ahead of the state) are dropped; the notice waits for the erasure event itself,
        // which is further on in the log.
        return if is_erasure(event) && relation.is_some() {
            Decision {
                messages: vec![Outgoing::Erasure {
                    erased_at: erasure.at,
                    basis: basis(consumer, state, policy, now),
                }],
                relation: Some(Relation::Erased),
            }
        } else {
            Decision::skip()
        };
    }
    if let Some(restriction) = state.and_then(|s| s.restricted.as_ref()) {
        return restricted(consumer, state, relation, policy, now, restriction.since);
    }
    if let Some((merge_id, survivor, undone)) = merge_marker(event) {
        // Told only to consumers that hold the absorbed record's data: it names both ids.
        return if matches!(relation, Some(Relation::Receiving)) {
            Decision {
                messages: vec![Outgoing::Merge {
                    merge_id,
                    survivor,
                    undone,
                    basis: basis(consumer, state, policy, now),
                }],
                relation: None,
            }
        } else {
            Decision::skip()
        };
    }
    if routed_to(consumer, event) {
        // Work for the system of record, not a change of the record: it moves no relation.
        let basis = basis(consumer, state, policy, now);
        return if holds(&basis) {
            Decision {
                messages: vec![Outgoing::Routed { basis }],
                relation: None,
            }
        } else {
            Decision::skip()
        };
    }
    let change = selected_change(consumer, event);
    let lifted = relation == Some(Relation::Restricted);
    if change.is_none() && relation != Some(Relation::Receiving) && !lifted {
        return Decision::skip();
    }
    let basis = basis(consumer, state, policy, now);
    if !holds(&basis) {
        return notice_if_receiving(relation, basis);
    }
    let Some(change) = change else {
        // The restriction was lifted and this event changes nothing the consumer selects:
        // tell it at once that deliveries resume.
        return if lifted {
            Decision {
                messages: vec![Outgoing::Resume { basis }],
                relation: Some(Relation::Receiving),
            }
        } else {
            Decision::skip()
        };
    };
    let mut messages = Vec::with_capacity(2);
    if matches!(relation, Some(Relation::Withdrawn | Relation::Restricted)) {
        messages.push(Outgoing::Resume {
            basis: basis.clone(),
        });
    }
    messages.push(Outgoing::Change { change, basis });
    Decision {
        messages,
        relation: (relation != Some(Relation::Receiving)).then_some(Relation::Receiving),
    }
}

/// While processing is restricted nothing is delivered: a consumer receiving the customer
/// gets the restriction notice once; one already told gets the withdrawal notice if the
/// basis fails meanwhile (it holds the data and must now delete it).
fn restricted(
    consumer: &Consumer,
    state: Option<&CustomerState>,
    relation: Option<Relation>,
    policy: &Policy,
    now: DateTime<Utc>,
    since: DateTime<Utc>,
) -> Decision {
    let basis = basis(consumer, state, policy, now);
    match relation {
        Some(Relation::Receiving) if holds(&basis) => Decision {
            messages: vec![Outgoing::Restriction { since, basis }],
            relation: Some(Relation::Restricted),
        },
        Some(Relation::Receiving | Relation::Restricted) if !holds(&basis) => Decision {
            messages: vec![Outgoing::Notice { basis }],
            relation: Some(Relation::Withdrawn),
        },
        _ => Decision::skip(),
    }
}

/// The consumer's basis for a customer no longer holds: a notice if it held the data.
fn notice_if_receiving(relation: Option<Relation>, basis: Vec<ConsentBasis>) -> Decision {
    if matches!(relation, Some(Relation::Receiving | Relation::Restricted)) {
        Decision {
            messages: vec![Outgoing::Notice { basis }],
            relation: Some(Relation::Withdrawn),
        }
    } else {
        Decision::skip()
    }
}
