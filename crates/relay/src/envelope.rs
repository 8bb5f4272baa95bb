//! The delivery envelope: CloudEvents 1.0, structured JSON. **API boundary**: consumers parse
//! these; change them only by adding a new `type` version (`…v2`) or optional attributes.
//!
//! ```json
//! {
//!   "specversion": "1.0",
//!   "id": "<event id, or a derived id for notices>",
//!   "source": "<this idledger instance, e.g. urn:idledger:prod-eu>",
//!   "type": "idledger.field.changed.v1",
//!   "subject": "<customer id>",
//!   "time": "<when the event was recorded, RFC 3339>",
//!   "datacontenttype": "application/json",
//!   "idledgerposition": 1234,
//!   "idledgerversion": 3,
//!   "idledgerconsumer": "crm",
//!   "idledgerevent": "<the event this message came from>",
//!   "data": { "field": "email", "value": "ada@example.org", "value_hash": "hmac-sha256:…",
//!             "version": 3, "previous_version": 2, "provenance": { … } }
//! }
//! ```
//!
//! A consumer registered as pseudonymous sees its own alias of the customer
//! (`idledger_domain::alias`) wherever others see the customer id: in `subject` and in the
//! NATS subject.
//!
//! `value_hash` is keyed per consumer (`idledger_domain::hashing`): the consumer computes it
//! with the hash key the consumer registry gives it, and acknowledges with it.
//!
//! A message with a given id always carries the same content, so a re-publish after a crash
//! is an exact duplicate that JetStream (by `Nats-Msg-Id`) or the consumer (by `id`) drops.

use chrono::{DateTime, Utc};
use idledger_domain::alias::CustomerNames;
use idledger_domain::event::{EventPayload, Repush, RepushedValue};
use idledger_domain::field::FieldPath;
use idledger_domain::hashing::HashKey;
use idledger_domain::ids::{CustomerId, EventId};
use idledger_store::delivery::{
    ChannelKind, ConsentBasis, Consumer, ConsumerId, Handoff, HandoffKind,
};
use idledger_store::model::RecordedEvent;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::entitlement::{FieldChange, Outgoing};

pub const SPEC_VERSION: &str = "1.0";
/// A field's value became current.
pub const FIELD_CHANGED: &str = "idledger.field.changed.v1";
/// A field's value was removed.
pub const FIELD_CLEARED: &str = "idledger.field.cleared.v1";
/// A consent field (`consent.<purpose>`) the consumer selects was granted or withdrawn.
pub const CONSENT_CHANGED: &str = "idledger.consent.changed.v1";
/// Withdrawal notice: the basis for the consumer's purposes no longer holds for this customer;
/// stop using and delete the customer's data. Nothing further follows until a resume.
pub const CONSENT_WITHDRAWN: &str = "idledger.consent.withdrawn.v1";
/// The basis holds again after a withdrawal notice; deliveries of this customer resume.
pub const CONSENT_GRANTED: &str = "idledger.consent.granted.v1";
/// Restriction notice: the processing of the customer's data is restricted (GDPR Art. 18);
/// keep it, do not use it. Nothing further follows until a resume notice.
pub const PROCESSING_RESTRICTED: &str = "idledger.processing.restricted.v1";
/// The subject's last tokens for a restriction notice.
pub const RESTRICTION_SUBJECT_FIELD: &str = "processing.restricted";
/// Erasure notice: the customer was erased (right to erasure); delete everything of them.
/// Final: nothing of this customer follows.
pub const CUSTOMER_ERASED: &str = "idledger.customer.erased.v1";
/// A steward sent a proposal to the consumer as its field's system of record: accept or
/// reject it with the same system's source token (`accept_proposal` / `reject_proposal`).
pub const PROPOSAL_ROUTED: &str = "idledger.proposal.routed.v1";

/// The customer's record was merged into another (`data.survivor`): from now on the
/// survivor's id stands for both; the survivor's changes carry the merged fields.
pub const CUSTOMER_MERGED: &str = "idledger.customer.merged.v1";
/// A merge was undone: the customer's record stands on its own again; its fields follow.
pub const CUSTOMER_UNMERGED: &str = "idledger.customer.unmerged.v1";
/// The subject's last tokens for merge messages.
pub const MERGE_SUBJECT_FIELD: &str = "customer.merged";
pub const UNMERGE_SUBJECT_FIELD: &str = "customer.unmerged";

/// The constant for a CloudEvent type we send (`None`: not one of ours).
pub fn known_type(event_type: &str) -> Option<&'static str> {
    [
        FIELD_CHANGED,
        FIELD_CLEARED,
        CONSENT_CHANGED,
        CONSENT_WITHDRAWN,
        CONSENT_GRANTED,
        PROCESSING_RESTRICTED,
        CUSTOMER_ERASED,
        PROPOSAL_ROUTED,
        CUSTOMER_MERGED,
        CUSTOMER_UNMERGED,
    ]
    .into_iter()
    .find(|t| *t == event_type)
}

/// A CloudEvents 1.0 event in structured JSON mode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CloudEvent {
    pub specversion: String,
    pub id: String,
    pub source: String,
    #[serde(rename = "type")]
    pub event_type: String,
    pub subject: String,
    pub time: DateTime<Utc>,
    pub datacontenttype: String,
    /// The global log position of the event the message came from.
    pub idledgerposition: u64,
    /// The field's version after the change (changes only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idledgerversion: Option<u64>,
    pub idledgerconsumer: String,
    /// The event the message came from (equal to `id` for changes).
    pub idledgerevent: String,
    pub data: Value,
}

/// A message ready for any channel: the envelope's bytes plus what the handoff log keeps.
#[derive(Clone, PartialEq, Eq)]
pub struct Message {
    /// The CloudEvent id.
    pub id: Uuid,
    pub kind: HandoffKind,
    pub event_type: &'static str,
    pub customer_id: CustomerId,
    /// The customer as the consumer is shown it: its id, or (a pseudonymous consumer) its
    /// alias.
    pub shown_customer: Uuid,
    pub event_id: EventId,
    pub position: u64,
    /// The field path the subject ends in; `None` for an erasure notice, which concerns the
    /// customer as a whole: its subject ends at the customer id.
    pub subject_field: Option<String>,
    /// Fields whose data it carries (for a notice: the consumer's selectors, to delete).
    pub fields: Vec<String>,
    pub basis: Vec<ConsentBasis>,
    /// The serialised CloudEvent.
    pub body: Vec<u8>,
}

/// Never the body: it carries the customer's values.
impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Message")
            .field("id", &self.id)
            .field("kind", &self.kind)
            .field("event_type", &self.event_type)
            .field("customer_id", &self.customer_id)
            .field("event_id", &self.event_id)
            .field("position", &self.position)
            .field("subject_field", &self.subject_field)
            .field("body_bytes", &self.body.len())
            .finish_non_exhaustive()
    }
}

impl Message {
    /// `<prefix>.<consumer>.<customer>.<field path>`, or `<prefix>.<consumer>.<customer>` for an
    /// erasure notice: consumers filter by wildcard (`idledger.v1.crm.*.email`,
    /// `idledger.v1.crm.>`) and NATS permissions can confine a consumer to
    /// `<prefix>.<consumer>.>`.
    pub fn subject(&self, prefix: &str, consumer: &ConsumerId) -> String {
        match &self.subject_field {
            Some(field) => format!("{prefix}.{consumer}.{}.{field}", self.shown_customer),
            None => format!("{prefix}.{consumer}.{}", self.shown_customer),
        }
    }

    /// The field the message is about; `None`: the customer as a whole.
    pub fn field(&self) -> Option<FieldPath> {
        self.subject_field
            .as_deref()
            .and_then(|f| FieldPath::parse(f).ok())
    }

    /// Unique per delivery: the same event goes to many consumers through one stream.
    pub fn dedupe_id(&self, consumer: &ConsumerId) -> String {
        dedupe_id(consumer, self.id)
    }

    pub fn handoff(
        &self,
        consumer: &ConsumerId,
        channel: ChannelKind,
        at: DateTime<Utc>,
    ) -> Handoff {
        Handoff {
            consumer_id: consumer.clone(),
            message_id: self.id,
            kind: self.kind,
            event_id: self.event_id,
            global_position: self.position,
            customer_id: self.customer_id,
            fields: self.fields.clone(),
            basis: self.basis.clone(),
            channel,
            delivered_at: at,
        }
    }
}

/// Why a notice was sent without an event of the customer (a consent ran out while quiet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sweep {
    pub customer_id: CustomerId,
    /// The consumer's checkpoint when the expiry was found.
    pub position: u64,
    /// When the basis ran out (the grant's expiry, or its policy maximum age).
    pub time: DateTime<Utc>,
}

/// Builds the message for an outgoing decision about `event`.
pub fn message(
    source: &str,
    consumer: &Consumer,
    keys: &ConsumerKeys,
    event: &RecordedEvent,
    outgoing: &Outgoing,
    receipt: Option<&str>,
) -> Result<Message, serde_json::Error> {
    let envelope = &event.envelope;
    let (id, kind, event_type, version, subject_field, fields, data) = match outgoing {
        Outgoing::Change { change, .. } => {
            let (event_type, mut data) =
                change_data(change, &envelope.event.payload, event, &keys.hash)?;
            if let (Some(receipt), Value::Object(map)) = (receipt, &mut data) {
                // The consent's signed receipt: checkable offline with the public key set.
                map.insert("receipt".to_owned(), json!(receipt));
            }
            let field = change.field().to_string();
            (
                Some(envelope.id.as_uuid()),
                HandoffKind::Change,
                event_type,
                Some(change.version()),
                Some(field.clone()),
                vec![field],
                data,
            )
        }
        Outgoing::Notice { basis } => {
            let (field, data) = notice_data(consumer, basis)?;
            (
                None,
                HandoffKind::Notice,
                CONSENT_WITHDRAWN,
                None,
                Some(field),
                selectors(consumer),
                data,
            )
        }
        Outgoing::Resume { basis } => {
            let data = json!({ "fields": selectors(consumer), "basis": basis });
            (
                None,
                HandoffKind::Resume,
                CONSENT_GRANTED,
                None,
                Some(first_consent_field(consumer)),
                selectors(consumer),
                data,
            )
        }
        Outgoing::Restriction { since, .. } => {
            let data = json!({
                "action": "restrict",
                "since": since,
                "fields": selectors(consumer),
            });
            (
                None,
                HandoffKind::Notice,
                PROCESSING_RESTRICTED,
                None,
                Some(RESTRICTION_SUBJECT_FIELD.to_owned()),
                selectors(consumer),
                data,
            )
        }
        Outgoing::Routed { .. } => {
            let (field, data) = routed_data(&envelope.event.payload, event)?;
            (
                Some(envelope.id.as_uuid()),
                HandoffKind::Notice,
                PROPOSAL_ROUTED,
                None,
                Some(field.clone()),
                vec![field],
                data,
            )
        }
        Outgoing::Merge {
            merge_id,
            survivor,
            undone,
            ..
        } => {
            let data = json!({
                "merge_id": merge_id,
                "survivor": keys.names.show(*survivor).to_string(),
                "absorbed": keys.names.show(event.customer_id).to_string(),
                "provenance": provenance(event)?,
            });
            let (event_type, field) = if *undone {
                (CUSTOMER_UNMERGED, UNMERGE_SUBJECT_FIELD)
            } else {
                (CUSTOMER_MERGED, MERGE_SUBJECT_FIELD)
            };
            (
                Some(envelope.id.as_uuid()),
                HandoffKind::Notice,
                event_type,
                None,
                Some(field.to_owned()),
                selectors(consumer),
                data,
            )
        }
        Outgoing::Erasure { erased_at, .. } => {
            let data = json!({
                "action": "delete_all",
                "erased_at": erased_at,
                "fields": selectors(consumer),
            });
            (
                None,
                HandoffKind::Erasure,
                CUSTOMER_ERASED,
                None,
                None,
                selectors(consumer),
                data,
            )
        }
    };
    let cloud = CloudEvent {
        specversion: SPEC_VERSION.to_owned(),
        id: id.map(|id| id.to_string()).unwrap_or_default(),
        source: source.to_owned(),
        event_type: event_type.to_owned(),
        subject: keys.names.show(event.customer_id).to_string(),
        time: event.recorded_at,
        datacontenttype: "application/json".to_owned(),
        idledgerposition: event.global_position,
        idledgerversion: version,
        idledgerconsumer: consumer.id.to_string(),
        idledgerevent: envelope.id.to_string(),
        data,
    };
    let (id, body) = seal(cloud, id)?;
    Ok(Message {
        id,
        kind,
        event_type,
        customer_id: event.customer_id,
        shown_customer: keys.names.show(event.customer_id),
        event_id: envelope.id,
        position: event.global_position,
        subject_field,
        fields,
        basis: outgoing.basis().to_vec(),
        body,
    })
}

/// A notice found by the expiry sweep: no event caused it, so it names the consent that ran
/// out and is dated when it ran out.
pub fn sweep_notice(
    source: &str,
    consumer: &Consumer,
    names: &CustomerNames,
    sweep: &Sweep,
    basis: &[ConsentBasis],
) -> Result<Message, serde_json::Error> {
    let failing = basis
        .iter()
        .find(|b| b.status != idledger_domain::state::ConsentStatus::Granted);
    let (field, data) = notice_data(consumer, basis)?;
    let event_id = failing
        .and_then(|b| b.consent_event_id)
        .unwrap_or_else(|| EventId::from(Uuid::nil()));
    let cloud = CloudEvent {
        specversion: SPEC_VERSION.to_owned(),
        id: String::new(),
        source: source.to_owned(),
        event_type: CONSENT_WITHDRAWN.to_owned(),
        subject: names.show(sweep.customer_id).to_string(),
        time: sweep.time,
        datacontenttype: "application/json".to_owned(),
        idledgerposition: sweep.position,
        idledgerversion: None,
        idledgerconsumer: consumer.id.to_string(),
        idledgerevent: event_id.to_string(),
        data,
    };
    let (id, body) = seal(cloud, None)?;
    Ok(Message {
        id,
        kind: HandoffKind::Notice,
        event_type: CONSENT_WITHDRAWN,
        customer_id: sweep.customer_id,
        shown_customer: names.show(sweep.customer_id),
        event_id,
        position: sweep.position,
        subject_field: Some(field),
        fields: selectors(consumer),
        basis: basis.to_vec(),
        body,
    })
}

/// Every message of `customer` to any consumer that names customers by id, but the erasure
/// notices: `>` needs at least one more token, which a notice's subject lacks. With
/// [`aliased_data_subjects`], what erasure removes from the stream.
/// The `Nats-Msg-Id` of message `message` sent to `consumer`.
pub fn dedupe_id(consumer: &ConsumerId, message: Uuid) -> String {
    format!("{consumer}:{message}")
}

pub fn customer_data_subjects(prefix: &str, customer: CustomerId) -> String {
    format!("{prefix}.*.{customer}.>")
}

/// The same for a pseudonymous consumer, whose subjects carry its alias of the customer.
pub fn aliased_data_subjects(prefix: &str, consumer: &ConsumerId, alias: Uuid) -> String {
    format!("{prefix}.{consumer}.{alias}.>")
}

/// What a consumer's messages are written with: its value-hash key and how it names
/// customers.
#[derive(Debug, Clone)]
pub struct ConsumerKeys {
    pub hash: HashKey,
    pub names: CustomerNames,
}

impl ConsumerKeys {
    pub fn of(ledger: &idledger_store::Ledger, consumer: &Consumer) -> Self {
        Self {
            hash: ledger.hash_key(&consumer.id),
            names: ledger.customer_names(consumer),
        }
    }
}

fn consent_state(granted: bool) -> &'static str {
    idledger_domain::state::consent_value(granted)
}

fn status_name(status: idledger_domain::state::ConsentStatus) -> &'static str {
    use idledger_domain::state::ConsentStatus as S;
    match status {
        S::Granted => "granted",
        S::Withdrawn => "withdrawn",
        S::Expired => "expired",
        S::Stale => "stale",
        S::GuardianRequired => "guardian_required",
        S::NeverGranted => "never_granted",
    }
}

fn change_data(
    change: &FieldChange,
    payload: &EventPayload,
    event: &RecordedEvent,
    hash_key: &HashKey,
) -> Result<(&'static str, Value), serde_json::Error> {
    let version = change.version();
    let mut data = serde_json::Map::new();
    data.insert("field".to_owned(), json!(change.field().to_string()));
    let set_value = match payload {
        EventPayload::StewardActed {
            repush:
                Some(Repush {
                    value: RepushedValue::Set { value },
                    ..
                }),
            ..
        } => Some(value),
        EventPayload::FieldSet { .. }
        | EventPayload::ChangeVerified { .. }
        | EventPayload::FieldAdopted { .. } => payload.value(),
        _ => None,
    };
    let event_type = match (change, set_value) {
        (FieldChange::Set { .. }, Some(value)) => {
            data.insert("value".to_owned(), value.to_json());
            data.insert("value_hash".to_owned(), json!(hash_key.value(value)));
            FIELD_CHANGED
        }
        (FieldChange::Consent { granted, .. }, _) => {
            data.insert("value".to_owned(), json!(consent_state(*granted)));
            data.insert("value_hash".to_owned(), json!(hash_key.consent(*granted)));
            if let Some(terms) = payload.consent_terms() {
                data.insert("terms".to_owned(), serde_json::to_value(terms)?);
            }
            CONSENT_CHANGED
        }
        _ => {
            data.insert("value".to_owned(), Value::Null);
            data.insert("value_hash".to_owned(), Value::Null);
            FIELD_CLEARED
        }
    };
    data.insert("version".to_owned(), json!(version));
    data.insert(
        "previous_version".to_owned(),
        json!(version.saturating_sub(1)),
    );
    if let EventPayload::StewardActed { exception_id, .. } = payload {
        // A steward re-sent the record's current state to settle a sync exception.
        data.insert("repush".to_owned(), json!({ "exception_id": exception_id }));
    }
    data.insert("provenance".to_owned(), provenance(event)?);
    Ok((event_type, Value::Object(data)))
}

/// The event's provenance as consumers see it: who, on whose behalf, on what evidence, when,
/// under which policy. The source's idempotency key stays inside.
fn provenance(event: &RecordedEvent) -> Result<Value, serde_json::Error> {
    let mut value = serde_json::to_value(&event.envelope.event.provenance)?;
    if let Value::Object(map) = &mut value {
        map.remove("idempotency_key");
        map.insert(
            "policy_version".to_owned(),
            json!(event.envelope.event.policy_version),
        );
    }
    Ok(value)
}

/// A routed proposal's data, from the `steward_acted` event alone: what to decide and how.
fn routed_data(
    payload: &EventPayload,
    event: &RecordedEvent,
) -> Result<(String, Value), serde_json::Error> {
    let EventPayload::StewardActed {
        exception_id,
        field: Some(field),
        routed: Some(routed),
        reason,
        ..
    } = payload
    else {
        return Err(serde::ser::Error::custom(
            "a routed proposal's message needs a routed steward_acted event",
        ));
    };
    let field = field.to_string();
    let data = json!({
        "field": field,
        "proposal_id": routed.proposal_id,
        "value": routed.value.to_json(),
        "proposed_by": routed.proposed_by,
        "proposed_at": routed.proposed_at,
        "exception_id": exception_id,
        "reason": reason,
        "action": "accept_or_reject_proposal",
        "provenance": provenance(event)?,
    });
    Ok((field, data))
}

fn notice_data(
    consumer: &Consumer,
    basis: &[ConsentBasis],
) -> Result<(String, Value), serde_json::Error> {
    let failing = basis.iter().find(|b| !b.holds());
    let field = failing.map_or_else(
        || first_consent_field(consumer),
        |b| format!("consent.{}", b.purpose),
    );
    // The consent's own standing first; a granted one failed on the transfer.
    let reason = failing.map(|b| match b.status {
        idledger_domain::state::ConsentStatus::Granted => "transfer_without_basis",
        status => status_name(status),
    });
    let data = json!({
        "field": field,
        "reason": reason,
        "action": "stop_processing_and_delete",
        "fields": selectors(consumer),
        "basis": serde_json::to_value(basis)?,
    });
    Ok((field, data))
}

fn selectors(consumer: &Consumer) -> Vec<String> {
    consumer.fields.iter().map(ToString::to_string).collect()
}

fn first_consent_field(consumer: &Consumer) -> String {
    consumer
        .purposes
        .first()
        .map_or_else(|| "consent".to_owned(), |p| format!("consent.{p}"))
}

/// Serialises the envelope under `id`, or — for a message that is not itself an event (a
/// notice) — under a UUIDv8 derived from a SHA-256 of everything else in it: the same id then
/// always means the same bytes, and a re-sent notice is an exact duplicate.
fn seal(mut cloud: CloudEvent, id: Option<Uuid>) -> Result<(Uuid, Vec<u8>), serde_json::Error> {
    let id = match id {
        Some(id) => id,
        None => {
            cloud.id = String::new();
            let digest = Sha256::digest(serde_json::to_vec(&cloud)?);
            let mut bytes = [0u8; 16];
            bytes.copy_from_slice(&digest[..16]);
            uuid::Builder::from_custom_bytes(bytes).into_uuid()
        }
    };
    cloud.id = id.to_string();
    Ok((id, serde_json::to_vec(&cloud)?))
}
