//! What the API returns: the golden record, a field's history, command results and delivery
//! records (consumers, handoffs, consumer state). These shapes are the HTTP contract (API
//! boundary); the CLI prints the same ones.

use chrono::{DateTime, Utc};
use idledger_app::RecordRead;
use idledger_domain::challenge::ChallengeSecret;
use idledger_domain::decide::Outcome;
use idledger_domain::delegation::{RelationshipEnding, RelationshipScope, RelationshipStatus};
use idledger_domain::event::{ConsentTerms, Provenance};
use idledger_domain::field::FieldPath;
use idledger_domain::ids::{
    ChallengeId, CustomerId, EventId, OnBehalfOf, ProposalId, Purpose, Relationship,
    RelationshipId, SourceId,
};
use idledger_domain::policy::{Policy, PolicyVersion};
use idledger_domain::scope::ReadScope;
use idledger_domain::state::{ConsentState, ConsentStatus, CustomerState, Verification};
use idledger_domain::values::Evidence;
use idledger_store::delivery::{
    Channel, ChannelKind, ConsentBasis, Consumer, ConsumerFieldState, HandoffEntry, Page,
};
use idledger_store::disclosures::{DisclosureEntry, Recipient};
use idledger_store::{CommandResult, RecordedEvent};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

pub use event_data::EventData;

mod event_data;

/// A customer's golden record: every field and consent, with consent standing evaluated at
/// one instant (now, or the as-of instant).
#[derive(Debug, Serialize, ToSchema)]
pub struct RecordView {
    #[schema(value_type = uuid::Uuid)]
    pub customer_id: CustomerId,
    /// The instant the record is shown as of, when not the present.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub as_of: Option<DateTime<Utc>>,
    /// The instant consent statuses were evaluated at.
    pub evaluated_at: DateTime<Utc>,
    pub registered_at: Option<DateTime<Utc>>,
    /// Events in the customer's stream; also the record's ETag.
    pub stream_version: u64,
    /// Since when the processing of the customer's data is restricted (GDPR Art. 18):
    /// nothing is delivered while it is. Absent when it is not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restricted_since: Option<DateTime<Utc>>,
    pub fields: Vec<FieldView>,
    pub consents: Vec<ConsentView>,
    /// Values proposed by non-authoritative sources, waiting for a steward.
    pub proposals: Vec<ProposalView>,
    /// Set while this record is merged into another (seen only as of an instant: a read of
    /// it now is redirected to the survivor).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub merged_into: Option<MergeLinkView>,
    /// The records merged into this one and not unmerged.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub absorbed: Vec<MergeLinkView>,
    /// Guardian and delegate relationships recorded for the customer, ended ones included;
    /// shown to stewards, auditors, administrators and the sources the policy lets record
    /// them (absent for other readers, and when there are none).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub relationships: Vec<RelationshipView>,
}

/// A recorded relationship as the record read shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct RelationshipView {
    #[schema(value_type = uuid::Uuid)]
    pub relationship_id: RelationshipId,
    /// `guardian` or `delegate`.
    #[schema(value_type = String)]
    pub relationship: Relationship,
    /// The id an `on_behalf_of` claim names.
    pub representative: String,
    /// `{"kind": …, "reference": …}`.
    #[schema(value_type = Object)]
    pub evidence: Evidence,
    /// `{"purposes": […], "fields": […]}`; absent: everything.
    #[schema(value_type = Option<Object>)]
    pub scope: Option<RelationshipScope>,
    pub expires_at: Option<DateTime<Utc>>,
    pub recorded_at: DateTime<Utc>,
    #[schema(value_type = String)]
    pub recorded_by: SourceId,
    /// `{"at", "by", "reason"}` once ended.
    #[schema(value_type = Option<Object>)]
    pub ended: Option<RelationshipEnding>,
    /// At the evaluation instant: `live`, `ended`, `expired` or `came_of_age`.
    #[schema(value_type = String)]
    pub status: RelationshipStatus,
}

/// One side of a merge: the other record, the merge, when.
#[derive(Debug, Serialize, ToSchema)]
pub struct MergeLinkView {
    #[schema(value_type = uuid::Uuid)]
    pub customer_id: CustomerId,
    pub merge_id: uuid::Uuid,
    pub merged_at: DateTime<Utc>,
}

impl From<&idledger_domain::state::MergeLink> for MergeLinkView {
    fn from(link: &idledger_domain::state::MergeLink) -> Self {
        Self {
            customer_id: link.customer,
            merge_id: link.merge_id,
            merged_at: link.at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FieldView {
    /// The field's path, e.g. `email`, `name.given`, `preferences.newsletter`.
    #[schema(value_type = String)]
    pub field: FieldPath,
    /// The current authoritative value (`null` when cleared).
    #[schema(value_type = Object)]
    pub value: Option<Value>,
    /// Counts the events that touched this field.
    pub version: u64,
    /// The source system of the last change to the value.
    #[schema(value_type = Option<String>)]
    pub source: Option<SourceId>,
    pub recorded_at: Option<DateTime<Utc>>,
    /// When the source observed the value, if it said.
    pub asserted_at: Option<DateTime<Utc>>,
    /// How the current value was verified: `verified_at`, `verified_by`, `evidence`.
    #[schema(value_type = Option<Object>)]
    pub verification: Option<Verification>,
    /// A requested change waiting for verification; the current value stays authoritative.
    pub pending: Option<PendingView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PendingView {
    #[schema(value_type = Object)]
    pub value: Value,
    #[schema(value_type = uuid::Uuid)]
    pub challenge_id: ChallengeId,
    #[schema(value_type = String)]
    pub requested_by: SourceId,
    pub requested_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// Whether it can still be confirmed at the evaluation instant.
    pub live: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ConsentView {
    #[schema(value_type = String)]
    pub purpose: Purpose,
    /// The standing at the evaluation instant, with expiry, the policy's maximum age and minor
    /// status applied: `granted`, `withdrawn`, `expired`, `stale`, `guardian_required`.
    #[schema(value_type = String)]
    pub status: ConsentStatus,
    /// The last recorded state: `granted` or `withdrawn`.
    #[schema(value_type = String)]
    pub state: ConsentState,
    /// `basis`, `notice` {id, version, sha256}, `channel`, `jurisdiction`, `expires_at`.
    #[schema(value_type = Object)]
    pub terms: ConsentTerms,
    pub granted_at: DateTime<Utc>,
    #[schema(value_type = String)]
    pub granted_by: SourceId,
    #[schema(value_type = Option<Object>)]
    pub on_behalf_of: Option<OnBehalfOf>,
    pub withdrawn_at: Option<DateTime<Utc>>,
    pub version: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ProposalView {
    #[schema(value_type = uuid::Uuid)]
    pub proposal_id: ProposalId,
    #[schema(value_type = String)]
    pub field: FieldPath,
    #[schema(value_type = Object)]
    pub value: Value,
    #[schema(value_type = String)]
    pub proposed_by: SourceId,
    pub proposed_at: DateTime<Utc>,
}

impl RecordView {
    /// A record as its reader may see it.
    pub fn of(read: &RecordRead, policy: &Policy) -> Self {
        Self::new(
            read.customer_id,
            &read.state,
            policy,
            read.at,
            read.as_of,
            &read.scope,
        )
    }

    /// What `scope` may see of the record of `state`, with consents evaluated at `at` (the
    /// as-of instant, or now) on the whole state.
    pub fn new(
        customer_id: CustomerId,
        state: &CustomerState,
        policy: &Policy,
        at: DateTime<Utc>,
        as_of: Option<DateTime<Utc>>,
        scope: &ReadScope,
    ) -> Self {
        let fields =
            state
                .fields
                .iter()
                .filter(|(field, _)| scope.field(policy, field))
                .map(|(field, rec)| FieldView {
                    field: field.clone(),
                    value: rec.value.as_ref().map(|v| v.to_json()),
                    version: rec.version,
                    source: rec.source.clone(),
                    recorded_at: rec.recorded_at,
                    asserted_at: rec.asserted_at,
                    verification: rec.verification.clone(),
                    pending: rec.pending.as_ref().filter(|p| scope.pending(p)).map(|p| {
                        PendingView {
                            value: p.value.to_json(),
                            challenge_id: p.challenge_id,
                            requested_by: p.requested_by.clone(),
                            requested_at: p.requested_at,
                            expires_at: p.expires_at,
                            live: p.expires_at > at,
                        }
                    }),
                })
                .collect();
        let consents = state
            .consents
            .iter()
            .filter(|(purpose, _)| scope.consent(policy, purpose))
            .map(|(purpose, c)| ConsentView {
                purpose: purpose.clone(),
                status: state.consent_status(purpose, policy, at),
                state: c.state,
                terms: c.terms.clone(),
                granted_at: c.granted_at,
                granted_by: c.granted_by.clone(),
                on_behalf_of: c.on_behalf_of.clone(),
                withdrawn_at: c.withdrawn_at,
                version: c.version,
            })
            .collect();
        let proposals = state
            .proposals
            .iter()
            .filter(|(_, p)| scope.proposal(policy, p))
            .map(|(id, p)| ProposalView {
                proposal_id: *id,
                field: p.field.clone(),
                value: p.value.to_json(),
                proposed_by: p.proposed_by.clone(),
                proposed_at: p.proposed_at,
            })
            .collect();
        let relationships = state
            .relationships
            .iter()
            .filter(|_| scope.relationships(policy))
            .map(|(id, r)| RelationshipView {
                relationship_id: *id,
                relationship: r.representative.relationship(),
                representative: r.representative.id().to_owned(),
                evidence: r.evidence.clone(),
                scope: r.scope.clone(),
                expires_at: r.expires_at,
                recorded_at: r.recorded_at,
                recorded_by: r.recorded_by.clone(),
                ended: r.ended.clone(),
                status: r.status(state, None, policy, at),
            })
            .collect();
        Self {
            customer_id,
            as_of,
            evaluated_at: at,
            registered_at: state.registered_at,
            stream_version: state.stream_version,
            restricted_since: state.restricted.as_ref().map(|r| r.since),
            fields,
            consents,
            proposals,
            merged_into: state.merged_into.as_ref().map(MergeLinkView::from),
            absorbed: state.absorbed.values().map(MergeLinkView::from).collect(),
            relationships,
        }
    }
}

/// One event of a field's history, with its full provenance.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventView {
    /// Position in the whole log (commit order).
    pub global_position: u64,
    /// The record whose stream holds the event: in a survivor's history, a record merged
    /// into it shows its own events.
    #[schema(value_type = uuid::Uuid)]
    pub customer_id: CustomerId,
    #[schema(value_type = uuid::Uuid)]
    pub event_id: EventId,
    /// Position in the customer's stream.
    pub stream_version: u64,
    /// `field_set`, `change_requested`, `change_verified`, `consent_granted`, …
    #[serde(rename = "type")]
    pub event_type: &'static str,
    pub recorded_at: DateTime<Utc>,
    /// The event's data; field values in their natural JSON form.
    #[schema(value_type = Object)]
    pub data: EventData,
    /// Source (from the credential), actor, on-behalf-of, evidence, observed/recorded times,
    /// correlation/causation ids, idempotency key, reason.
    #[schema(value_type = Object)]
    pub provenance: Provenance,
    /// The version of the authority policy that admitted the event.
    #[schema(value_type = String)]
    pub policy_version: PolicyVersion,
}

impl EventView {
    pub fn new(recorded: RecordedEvent) -> Self {
        let event = recorded.envelope.event;
        Self {
            global_position: recorded.global_position,
            customer_id: recorded.customer_id,
            event_id: recorded.envelope.id,
            stream_version: recorded.envelope.stream_version,
            event_type: event.payload.type_name(),
            recorded_at: recorded.recorded_at,
            data: EventData(event.payload),
            provenance: event.provenance,
            policy_version: event.policy_version,
        }
    }
}

/// A field's history, oldest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct HistoryView {
    #[schema(value_type = uuid::Uuid)]
    pub customer_id: CustomerId,
    #[schema(value_type = String)]
    pub field: FieldPath,
    pub events: Vec<EventView>,
}

/// What a command did. A retry with the same `Idempotency-Key` gets this same body back, with
/// `replayed: true`.
#[derive(Debug, Serialize, ToSchema)]
pub struct CommandResponse {
    #[schema(value_type = uuid::Uuid)]
    pub customer_id: CustomerId,
    /// The stream version after the command: the record's new ETag.
    pub stream_version: u64,
    /// One per change, in order: `{"outcome": "registered" | "applied" | "unchanged" |
    /// "proposed" | "pending" | "proposal_resolved", …}`. A `pending` outcome carries the
    /// `secret` that confirms it, for the requester alone: pass it to the subject (a link, a
    /// code) and send it back with `confirm_verification`.
    #[schema(value_type = Vec<Object>)]
    pub outcomes: Vec<OutcomeView>,
    /// The events recorded: `{id, stream_version, type}`.
    #[schema(value_type = Vec<Object>)]
    pub events: Vec<idledger_store::ledger::EventRef>,
    /// Whether this is the stored result of an earlier request with the same key.
    pub replayed: bool,
}

/// One change's outcome, and for a pending change the secret that confirms it.
#[derive(Debug, Serialize)]
pub struct OutcomeView {
    #[serde(flatten)]
    pub outcome: Outcome,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<ChallengeSecret>,
}

impl CommandResponse {
    /// `secret_for` gives a pending change's confirmation secret (`Ledger::challenge_secret`).
    pub fn new(
        result: CommandResult,
        replayed: bool,
        secret_for: impl Fn(ChallengeId) -> ChallengeSecret,
    ) -> Self {
        let outcomes = result
            .outcomes
            .into_iter()
            .map(|outcome| OutcomeView {
                secret: match &outcome {
                    Outcome::Pending { challenge_id, .. } => Some(secret_for(*challenge_id)),
                    _ => None,
                },
                outcome,
            })
            .collect();
        Self {
            customer_id: result.customer_id,
            stream_version: result.stream_version,
            outcomes,
            events: result.events,
            replayed,
        }
    }
}

/// Who the token belongs to.
#[derive(Debug, Serialize, ToSchema)]
pub struct WhoAmI {
    pub token_id: uuid::Uuid,
    /// `source`, `consumer`, `steward`, `auditor` or `admin`.
    pub role: String,
    /// The source or consumer id the token speaks for.
    pub subject: Option<String>,
    pub label: String,
    /// The operation groups the token is limited to; `null`: all its role allows.
    pub scopes: Option<Vec<String>>,
}

/// The customers a lookup found (`GET /v1/customers?email=…`), in id order.
#[derive(Debug, Serialize, ToSchema)]
pub struct CustomerMatchesView {
    #[schema(value_type = Vec<uuid::Uuid>)]
    pub customer_ids: Vec<CustomerId>,
    /// More customers hold the identifier than the 100 listed.
    pub truncated: bool,
}

impl From<idledger_app::Matches> for CustomerMatchesView {
    fn from(m: idledger_app::Matches) -> Self {
        Self {
            customer_ids: m.customer_ids,
            truncated: m.truncated,
        }
    }
}

/// The result of an erasure.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErasureView {
    #[schema(value_type = uuid::Uuid)]
    pub customer_id: CustomerId,
    pub erased_at: DateTime<Utc>,
    /// Always `admin`.
    pub source: String,
    pub reason: String,
}

/// The result of setting or lifting a restriction of processing.
#[derive(Debug, Serialize, ToSchema)]
pub struct RestrictionView {
    #[schema(value_type = uuid::Uuid)]
    pub customer_id: CustomerId,
    pub restricted: bool,
    /// Whether this request changed it (`false`: it already was so; nothing recorded).
    pub changed: bool,
    /// The stream version after the request.
    pub stream_version: u64,
}

/// A consumer's value-hash key (see `GET /v1/consumers/{consumer_id}/hash-key`).
#[derive(Serialize, ToSchema)]
pub struct HashKeyView {
    pub consumer_id: String,
    /// Always `hmac-sha256`.
    pub algorithm: &'static str,
    /// 64 lowercase hex characters: the HMAC key's 32 bytes.
    pub key: String,
    /// 64 lowercase hex characters: the key the consumer signs its NATS acknowledgements with
    /// (header `Idledger-Signature: v1=<hex HMAC-SHA256 of the body>`).
    pub ack_key: String,
}

impl std::fmt::Debug for HashKeyView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HashKeyView")
            .field("consumer_id", &self.consumer_id)
            .finish_non_exhaustive()
    }
}

/// A registered consumer of deliveries. A webhook's secret is never shown.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConsumerView {
    pub id: String,
    /// `nats`, `webhook` or `feed`.
    pub channel: String,
    /// The webhook consumer's endpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook_url: Option<String>,
    /// Field selectors: fields, families (`consent.*`) or `*`.
    pub fields: Vec<String>,
    pub purposes: Vec<String>,
    pub enabled: bool,
    /// Seconds a change may stay unacknowledged before reconciliation reports it.
    pub sla_secs: u64,
    /// It is shown its own aliases of customers, never their ids.
    pub pseudonymous: bool,
    /// The ISO 3166-1 country it processes data in; `null`: where the controller does.
    pub region: Option<String>,
    /// What makes sending data to it lawful when it is in another country than the customer.
    pub transfer_basis: Option<String>,
    pub created_at: DateTime<Utc>,
    pub disabled_at: Option<DateTime<Utc>>,
    /// How far the relay has delivered (push channels): a global log position. A feed
    /// consumer keeps its own position.
    pub checkpoint: Option<u64>,
}

impl ConsumerView {
    pub fn new(consumer: &Consumer, checkpoint: Option<u64>) -> Self {
        let webhook_url = match &consumer.channel {
            Channel::Webhook(w) => Some(w.url().to_owned()),
            Channel::Nats | Channel::Feed => None,
        };
        let push = consumer.channel.kind() != ChannelKind::Feed;
        Self {
            id: consumer.id.to_string(),
            channel: consumer.channel.kind().as_str().to_owned(),
            webhook_url,
            fields: consumer.fields.iter().map(ToString::to_string).collect(),
            purposes: consumer.purposes.iter().map(ToString::to_string).collect(),
            enabled: consumer.is_enabled(),
            sla_secs: consumer.sla_secs,
            pseudonymous: consumer.pseudonymous,
            region: consumer.location.region().map(|r| r.as_str().to_owned()),
            transfer_basis: consumer
                .location
                .transfer_basis()
                .map(|b| b.as_str().to_owned()),
            created_at: consumer.created_at,
            disabled_at: consumer.disabled_at,
            checkpoint: checkpoint.filter(|_| push),
        }
    }
}

/// Every registered consumer, disabled ones included.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConsumerListView {
    pub consumers: Vec<ConsumerView>,
}

/// One message handed to a consumer, as the handoff log keeps it.
#[derive(Debug, Serialize, ToSchema)]
pub struct HandoffView {
    /// Increases with every row: the paging cursor (`after=`).
    pub seq: u64,
    pub consumer_id: String,
    /// The CloudEvent id.
    pub message_id: uuid::Uuid,
    /// `change`, `notice` (withdrawal), `resume` or `erasure`.
    pub kind: String,
    /// The event whose processing produced the message.
    #[schema(value_type = uuid::Uuid)]
    pub event_id: EventId,
    pub global_position: u64,
    #[schema(value_type = uuid::Uuid)]
    pub customer_id: CustomerId,
    /// The fields whose data it carried (for a notice: those to delete).
    pub fields: Vec<String>,
    /// The basis of each of the consumer's purposes when it was decided: `{purpose, status,
    /// legal_basis, consent_version, consent_event_id, notice, granted_at, expires_at}`.
    #[schema(value_type = Vec<Object>)]
    pub basis: Vec<ConsentBasis>,
    /// `nats`, `webhook` or `feed`.
    pub channel: String,
    pub delivered_at: DateTime<Utc>,
}

impl From<HandoffEntry> for HandoffView {
    fn from(entry: HandoffEntry) -> Self {
        let h = entry.handoff;
        Self {
            seq: entry.seq,
            consumer_id: h.consumer_id.to_string(),
            message_id: h.message_id,
            kind: h.kind.as_str().to_owned(),
            event_id: h.event_id,
            global_position: h.global_position,
            customer_id: h.customer_id,
            fields: h.fields,
            basis: h.basis,
            channel: h.channel.as_str().to_owned(),
            delivered_at: h.delivered_at,
        }
    }
}

/// A page of the handoff log, oldest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct HandoffPageView {
    pub items: Vec<HandoffView>,
    /// Pass as `after=` for the next page; `null` when this was the last one.
    pub next_after: Option<u64>,
}

impl From<Page<HandoffEntry>> for HandoffPageView {
    fn from(page: Page<HandoffEntry>) -> Self {
        Self {
            items: page.items.into_iter().map(HandoffView::from).collect(),
            next_after: page.next,
        }
    }
}

/// One disclosure: a source system's read of the record, or an export given to the subject.
#[derive(Debug, Serialize, ToSchema)]
pub struct DisclosureView {
    /// Increases with every row: the paging cursor (`after=`).
    pub seq: u64,
    #[schema(value_type = uuid::Uuid)]
    pub customer_id: CustomerId,
    /// `source` (a source system read the record) or `subject` (an access or portability
    /// export).
    pub recipient: String,
    /// The source that read; `null` for the subject.
    pub source_id: Option<String>,
    /// The token the request came with; `null` from the command line.
    pub token_id: Option<uuid::Uuid>,
    /// The fields (and `consent.<purpose>`) the answer showed.
    pub fields: Vec<String>,
    pub disclosed_at: DateTime<Utc>,
}

/// A page of the disclosure log, oldest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct DisclosurePageView {
    pub items: Vec<DisclosureView>,
    /// Pass as `after=` for the next page; `null` when this was the last one.
    pub next_after: Option<u64>,
}

impl From<DisclosureEntry> for DisclosureView {
    fn from(d: DisclosureEntry) -> Self {
        let (recipient, source_id) = match d.recipient {
            Recipient::Source(s) => ("source", Some(s.to_string())),
            Recipient::Subject => ("subject", None),
        };
        Self {
            seq: d.seq,
            customer_id: d.customer_id,
            recipient: recipient.to_owned(),
            source_id,
            token_id: d.token_id,
            fields: d.fields,
            disclosed_at: d.disclosed_at,
        }
    }
}

impl From<Page<DisclosureEntry>> for DisclosurePageView {
    fn from(page: Page<DisclosureEntry>) -> Self {
        Self {
            items: page.items.into_iter().map(DisclosureView::from).collect(),
            next_after: page.next,
        }
    }
}

/// What a consumer last acknowledged holding of one customer's fields.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConsumerStateView {
    pub consumer_id: String,
    #[schema(value_type = uuid::Uuid)]
    pub customer_id: CustomerId,
    pub fields: Vec<FieldStateView>,
}

/// One field as the consumer last reported it.
#[derive(Debug, Serialize, ToSchema)]
pub struct FieldStateView {
    pub field: String,
    /// The change it acknowledged.
    #[schema(value_type = uuid::Uuid)]
    pub event_id: EventId,
    pub version: u64,
    /// The digest of the value it holds (`null`: it holds none).
    pub value_hash: Option<String>,
    /// `applied` or `rejected`.
    pub status: String,
    pub reason: Option<String>,
    pub acked_at: DateTime<Utc>,
}

impl From<ConsumerFieldState> for FieldStateView {
    fn from(s: ConsumerFieldState) -> Self {
        Self {
            field: s.field,
            event_id: s.event_id,
            version: s.version,
            value_hash: s.value_hash,
            status: s.status.as_str().to_owned(),
            reason: s.reason,
            acked_at: s.acked_at,
        }
    }
}

/// What an acknowledgement did.
#[derive(Debug, Serialize, ToSchema)]
pub struct AckView {
    /// `recorded` (now the consumer's state of the field) or `superseded` (it had already
    /// acknowledged a later version; that one is kept).
    pub outcome: String,
    /// The version kept, when superseded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stored_version: Option<u64>,
}

/// A sync exception: what it is about, its evidence and where it stands.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ExceptionView {
    #[schema(value_type = String)]
    pub id: uuid::Uuid,
    /// The consumer it is about; for `proposal` and `refused_write`, the source system; for
    /// `duplicate_candidate`, the pair's other customer (the higher id; `customer_id` is the
    /// lower).
    pub consumer_id: String,
    #[schema(value_type = String)]
    pub customer_id: CustomerId,
    /// `null`: the customer as a whole.
    pub field: Option<String>,
    /// `webhook_rejected`, `undeliverable`, `undelivered`, `stale`, `divergent`, `rejected`,
    /// `withdrawal_unconfirmed`, `proposal`, `refused_write`, `delivery_failing` or
    /// `duplicate_candidate` (which stewards may only dismiss: `dismiss_only`).
    #[schema(value_type = String)]
    pub kind: idledger_store::delivery::ExceptionKind,
    /// The evidence of its newest occurrence (versions, hashes, the run that found it…; for a
    /// `duplicate_candidate`: `strength` `strong`/`weak`, `matched_on` — kinds such as
    /// `email` or `name.family+birth_date`, never values —, `other_customer_id`,
    /// `changed_customer_id`, `found_by`).
    #[schema(value_type = Object)]
    pub detail: Value,
    /// `open`, `resolved` or `dismissed`.
    #[schema(value_type = String)]
    pub status: idledger_store::delivery::ExceptionStatus,
    /// How often it was found while open.
    pub occurrences: u64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolved_at: Option<DateTime<Utc>>,
    /// `steward:<label>`, or `idledger` when its cause went away by itself.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolved_by: Option<String>,
    /// `accepted`, `dismissed` or `auto`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub resolution: Option<idledger_store::delivery::Resolution>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolution_note: Option<String>,
    /// The last steward action that left it open (a re-push): `{action, by, at, event_id,
    /// reason}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub last_action: Option<Value>,
    /// The steward working it (`steward:<label>`), and since when.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub assigned_to: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub assigned_at: Option<DateTime<Utc>>,
}

impl From<idledger_store::delivery::SyncException> for ExceptionView {
    fn from(e: idledger_store::delivery::SyncException) -> Self {
        Self {
            id: e.id,
            consumer_id: e.subject.to_string(),
            customer_id: e.customer_id,
            field: e.field,
            kind: e.kind,
            detail: e.detail,
            status: e.status,
            occurrences: e.occurrences,
            created_at: e.created_at,
            updated_at: e.updated_at,
            resolved_at: e.resolved_at,
            resolved_by: e.resolved_by,
            resolution: e.resolution,
            resolution_note: e.resolution_note,
            last_action: e.last_action,
            assigned_to: e.assigned_to,
            assigned_at: e.assigned_at,
        }
    }
}

/// A page of sync exceptions, oldest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExceptionPageView {
    pub exceptions: Vec<ExceptionView>,
    /// Pass as `after` for the next page; absent on the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub next_after: Option<uuid::Uuid>,
}

/// A reconciliation run and its report (partial while it runs).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RunView {
    #[schema(value_type = String)]
    pub id: uuid::Uuid,
    /// `acks` (what consumers acknowledged) or `snapshot` (an export a consumer uploaded).
    #[schema(value_type = String)]
    pub kind: idledger_store::runs::RunKind,
    /// What started it: `schedule`, `cli` or `api`.
    pub trigger: String,
    /// The consumer it covers; `null`: every enabled consumer.
    #[schema(value_type = Option<String>)]
    pub consumer_id: Option<idledger_store::delivery::ConsumerId>,
    pub requested_by: String,
    /// `running`, `finished` or `failed`.
    #[schema(value_type = String)]
    pub status: idledger_store::runs::RunStatus,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Counts per consumer and kind, the first examples of each kind, and totals.
    #[schema(value_type = Object)]
    pub report: Value,
    pub error: Option<String>,
}

impl From<idledger_store::runs::Run> for RunView {
    fn from(r: idledger_store::runs::Run) -> Self {
        Self {
            id: r.id,
            kind: r.kind,
            trigger: r.trigger,
            consumer_id: r.consumer_id,
            requested_by: r.requested_by,
            status: r.status,
            started_at: r.started_at,
            finished_at: r.finished_at,
            report: r.report,
            error: r.error,
        }
    }
}

/// One difference a run found.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct FindingView {
    /// Its place in the run's findings, from 1: the paging cursor.
    pub seq: u64,
    pub consumer_id: String,
    /// As given (a snapshot's invalid row may not carry a valid id).
    pub customer_id: String,
    pub field: String,
    /// `undelivered`, `stale`, `divergent`, `rejected`, `withdrawal_unconfirmed`, `missing`,
    /// `extra`, `different` or `invalid_row`.
    pub kind: String,
    #[schema(value_type = Object)]
    pub detail: Value,
}

impl From<idledger_store::runs::Finding> for FindingView {
    fn from(f: idledger_store::runs::Finding) -> Self {
        Self {
            seq: f.seq,
            consumer_id: f.consumer_id,
            customer_id: f.customer_id,
            field: f.field,
            kind: f.kind,
            detail: f.detail,
        }
    }
}
