//! Request bodies as the API accepts them, and their conversion into domain commands. Field
//! values arrive in their natural JSON form and are parsed by the field's kind, so a bad value
//! is refused as `invalid_value` naming the change.
//!
//! The `command_body` fuzz target (`fuzz/`) compiles this file on its own, without the rest of
//! the api crate: keep it to the domain, serde, chrono, uuid and utoipa (no `crate::` paths).

use chrono::{DateTime, Utc};
use idledger_domain::challenge::ChallengeSecret;
use idledger_domain::command::{Change, Command, ProvenanceInput, Refusal, Refused};
use idledger_domain::delegation::RelationshipScope;
use idledger_domain::field::{FieldPath, FieldSelector, FieldValue};
use idledger_domain::ids::{
    ChallengeId, CustomerId, IdempotencyKey, OnBehalfOf, ProposalId, Purpose, Relationship,
    RelationshipId,
};
use idledger_domain::values::{ConsentChannel, Evidence, Jurisdiction, LegalBasis, NoticeRef};
use serde::Deserialize;
use serde_json::Value;
use utoipa::ToSchema;

/// `POST /v1/customers`: register a customer, optionally with first changes.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    /// A UUIDv7 chosen by the caller; omitted, the server mints one (and a retry with the same
    /// `Idempotency-Key` gets the same one back).
    #[serde(default)]
    pub customer_id: Option<uuid::Uuid>,
    /// Optional; if given it must be the token's own source (the source always comes from
    /// the token).
    #[serde(default)]
    pub source: Option<String>,
    #[schema(value_type = ProvenanceDoc)]
    pub provenance: ProvenanceInput,
    /// Further changes applied atomically with the registration.
    #[serde(default)]
    pub changes: Vec<ChangeBody>,
}

/// `POST /v1/customers/{id}/commands`: one or more changes, applied atomically.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CommandRequest {
    /// Optional; if given it must be the token's own source.
    #[serde(default)]
    pub source: Option<String>,
    #[schema(value_type = ProvenanceDoc)]
    pub provenance: ProvenanceInput,
    pub changes: Vec<ChangeBody>,
}

/// One attribute-level change. `value`s are natural JSON: a string for `email`, `phone`,
/// names, `birth_date` (`YYYY-MM-DD`), `locale`, `jurisdiction`; an object for
/// `postal_address` and for `household` (`{"id": <uuid>, "role": "member" | "head" |
/// "guardian"}`); a boolean, number or string for `preferences.*`; a boolean for `sharing.*`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum ChangeBody {
    /// Only as the first change of a customer's first command (`POST /v1/customers` adds it).
    Register,
    SetField {
        field: String,
        #[schema(value_type = Object)]
        value: Value,
        /// The field version the caller last saw; any other is a `version_conflict`.
        #[serde(default)]
        expected_version: Option<u64>,
    },
    ClearField {
        field: String,
        #[serde(default)]
        expected_version: Option<u64>,
    },
    /// An email/phone change that takes effect only once verified.
    RequestChange {
        field: String,
        #[schema(value_type = Object)]
        value: Value,
        #[serde(default)]
        expected_version: Option<u64>,
    },
    ConfirmVerification {
        field: String,
        challenge_id: uuid::Uuid,
        /// The `secret` the answer to the `request_change` gave its requester.
        secret: String,
    },
    CancelChange {
        field: String,
        challenge_id: uuid::Uuid,
    },
    GrantConsent {
        purpose: String,
        /// `consent`, `contract`, `legal_obligation`, `vital_interests`, `public_task`,
        /// `legitimate_interests`.
        basis: String,
        #[schema(value_type = NoticeDoc)]
        notice: Value,
        /// `web`, `mobile_app`, `email`, `sms`, `phone`, `paper`, …
        channel: String,
        /// ISO 3166-1 country or ISO 3166-2 subdivision, e.g. `DE`, `US-CA`.
        jurisdiction: String,
        #[serde(default)]
        expires_at: Option<DateTime<Utc>>,
    },
    WithdrawConsent {
        purpose: String,
    },
    /// Record a value for the steward / system of record to consider.
    ProposeValue {
        field: String,
        #[schema(value_type = Object)]
        value: Value,
    },
    /// Stewards only.
    AcceptProposal {
        proposal_id: uuid::Uuid,
    },
    /// Stewards only.
    RejectProposal {
        proposal_id: uuid::Uuid,
        reason: String,
    },
    /// Records a guardian or delegate relationship: an `on_behalf_of` claim is accepted only
    /// while one is live and covers the change. Stewards, administrators, and the sources the
    /// policy's `[relationships] recorded_by` names.
    RecordRelationship {
        /// `guardian` or `delegate`.
        relationship: String,
        /// The id an `on_behalf_of` claim names (1 to 256 characters).
        representative: String,
        /// `{"kind": "signed_form" | "document_check" | …, "reference": "…"}`.
        #[schema(value_type = Object)]
        evidence: Value,
        /// What the representative may change; left out: everything.
        #[serde(default)]
        scope: Option<ScopeBody>,
        #[serde(default)]
        expires_at: Option<DateTime<Utc>>,
    },
    /// Ends a recorded relationship (the same writers as `record_relationship`).
    EndRelationship {
        relationship_id: uuid::Uuid,
        /// 1 to 1000 characters.
        reason: String,
    },
}

/// What a representative may change: consents of these purposes, and the fields these
/// selectors match (`email`, `preferences.*`, `name.*`, `consent.*`, `*`). At least one entry.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScopeBody {
    #[serde(default)]
    pub purposes: Vec<String>,
    #[serde(default)]
    pub fields: Vec<String>,
}

/// `POST /v1/customers/{id}/erasure`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ErasureRequest {
    /// Why (e.g. the ticket of the data subject's request). Stored in the clear: do not
    /// quote the record.
    pub reason: String,
    /// Who asked for it: `{"kind": "agent", "id": "dpo@example.org"}`.
    #[schema(value_type = ActorDoc)]
    pub actor: idledger_domain::ids::Actor,
}

/// `POST /v1/customers/{id}/restriction`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RestrictionRequest {
    /// `true` restricts processing (GDPR Art. 18), `false` lifts the restriction.
    pub restricted: bool,
    /// Why (e.g. the ticket of the data subject's request; 1 to 1000 characters).
    pub reason: String,
    /// Who decided it: `{"kind": "agent", "id": "dpo@example.org"}`.
    #[schema(value_type = ActorDoc)]
    pub actor: idledger_domain::ids::Actor,
}

/// `POST /v1/consumers`: register a consumer of deliveries (role `admin`).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsumerRequest {
    /// 1..=64 of `a-z`, `0-9`, `_`, `-`, starting with a letter (it is a NATS subject token).
    /// A consumer token (`idledger token create --role consumer --consumer <id>`) speaks for it.
    pub id: String,
    /// `nats` (published to JetStream by the relay), `webhook` (POSTed, signed) or `feed`
    /// (pulled from `GET /v1/feed`).
    pub channel: String,
    /// Required for the `webhook` channel, refused for the others.
    #[serde(default)]
    pub webhook: Option<WebhookRequest>,
    /// Field selectors: a field (`email`, `name.given`), a family (`consent.*`) or `*`.
    pub fields: Vec<String>,
    /// The purposes it processes data for: it receives a customer's data only while the basis
    /// for every one of them holds.
    pub purposes: Vec<String>,
    /// `beginning` (default: everything it is entitled to, an initial load) or `now` (only
    /// what happens from registration on). The feed ignores it: feed consumers keep their own
    /// position.
    #[serde(default)]
    pub start_at: Option<String>,
    /// Seconds a change may stay unacknowledged before reconciliation reports it as
    /// undelivered or stale (default 300, at most 30 days).
    #[serde(default)]
    pub sla_secs: Option<u64>,
    /// Show it its own stable alias of each customer instead of the customer's id (in
    /// subjects, envelopes and the feed; its acks and snapshots name customers by alias).
    /// Default false.
    #[serde(default)]
    pub pseudonymous: bool,
    /// The ISO 3166-1 country it processes data in; absent: where the controller does.
    /// Delivery there follows the policy's transfer rules, as decisions do.
    #[serde(default)]
    pub region: Option<String>,
    /// adequacy, scc, bcr or derogation: what makes sending data to it lawful when it is in
    /// another country than the customer (only with `region`).
    #[serde(default)]
    pub transfer_basis: Option<String>,
}

/// Where a webhook consumer receives its messages and the key it verifies signatures with.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookRequest {
    /// `http://` or `https://`.
    pub url: String,
    /// 16..=256 visible ASCII characters. Stored; never returned.
    pub secret: String,
}

impl std::fmt::Debug for WebhookRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookRequest")
            .field("url", &self.url)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// An acknowledgement (`POST /v1/acks`; documentation shape of the relay's ack contract,
/// the same JSON consumers may publish on NATS). Unknown keys are refused.
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct AckDoc {
    /// The CloudEvent `id` of the change (for changes, the event id).
    event_id: uuid::Uuid,
    customer_id: uuid::Uuid,
    /// The field, e.g. `email`, `consent.marketing`.
    field: String,
    /// `data.version` of the change.
    version: u64,
    /// `data.value_hash` of the change the consumer now holds; `null` when it holds no value.
    value_hash: Option<String>,
    /// `applied` or `rejected`.
    status: String,
    /// Why it was rejected (required then, at most 1000 characters).
    reason: Option<String>,
}

/// Provenance as stated by the caller (documentation shape of the domain's type).
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct ProvenanceDoc {
    /// Who acted.
    actor: ActorDoc,
    /// `{"relationship": "guardian" | "delegate", "id": "…"}` when acting for the customer.
    #[schema(value_type = Option<Object>)]
    on_behalf_of: Option<()>,
    /// `{"kind": "otp" | "document_check" | …, "reference": "…"}`.
    #[schema(value_type = Option<Object>)]
    evidence: Option<()>,
    /// When the source observed the fact.
    observed_at: Option<DateTime<Utc>>,
    correlation_id: Option<uuid::Uuid>,
    /// The event this command reacts to (echoes of our own deliveries are recognised).
    causation_id: Option<uuid::Uuid>,
    reason: Option<String>,
}

/// Who acted (documentation shape of the domain's `Actor`).
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct ActorDoc {
    kind: ActorKindDoc,
    /// The party's id in its source system: 1 to 256 characters once trimmed, no control or
    /// bidirectional formatting characters.
    #[schema(min_length = 1, max_length = 256)]
    id: String,
}

/// What kind of party acted.
#[derive(Debug, ToSchema)]
#[schema(rename_all = "snake_case")]
#[allow(dead_code)]
pub enum ActorKindDoc {
    /// The customer the record is about (only through a subject-facing source).
    Subject,
    /// A person working in a source system.
    Agent,
    /// An automated process of a source system.
    System,
    /// A data steward (only with a steward's token).
    Steward,
}

/// The privacy notice a consent was given against.
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct NoticeDoc {
    id: String,
    version: String,
    /// SHA-256 of the notice text shown, 64 hex digits.
    sha256: String,
    /// Where the notice is published: an absolute https (or http) URL, at most 2,048
    /// characters; consent receipts carry it.
    #[schema(max_length = 2048)]
    url: Option<String>,
}

fn refused(index: usize, refusal: Refusal) -> Refused {
    Refused {
        change_index: Some(index),
        refusal,
    }
}

fn field(index: usize, raw: &str) -> Result<FieldPath, Refused> {
    FieldPath::parse(raw).map_err(|e| refused(index, e.into()))
}

fn value(index: usize, field: &FieldPath, json: &Value) -> Result<FieldValue, Refused> {
    FieldValue::parse(field, json).map_err(|e| {
        refused(
            index,
            Refusal::InvalidValue {
                field: field.to_string(),
                reason: e.to_string(),
            },
        )
    })
}

fn parsed<T, E: std::fmt::Display>(
    index: usize,
    what: &str,
    r: Result<T, E>,
) -> Result<T, Refused> {
    r.map_err(|e| {
        refused(
            index,
            Refusal::InvalidValue {
                field: what.to_owned(),
                reason: e.to_string(),
            },
        )
    })
}

impl ChangeBody {
    fn into_change(self, index: usize) -> Result<Change, Refused> {
        Ok(match self {
            Self::Register => Change::Register,
            Self::SetField {
                field: f,
                value: v,
                expected_version,
            } => {
                let field = field(index, &f)?;
                Change::SetField {
                    value: value(index, &field, &v)?,
                    field,
                    expected_version,
                }
            }
            Self::ClearField {
                field: f,
                expected_version,
            } => Change::ClearField {
                field: field(index, &f)?,
                expected_version,
            },
            Self::RequestChange {
                field: f,
                value: v,
                expected_version,
            } => {
                let field = field(index, &f)?;
                Change::RequestChange {
                    value: value(index, &field, &v)?,
                    field,
                    expected_version,
                }
            }
            Self::ConfirmVerification {
                field: f,
                challenge_id,
                secret,
            } => Change::ConfirmVerification {
                field: field(index, &f)?,
                challenge_id: ChallengeId::from(challenge_id),
                secret: parsed(index, "secret", ChallengeSecret::parse(&secret))?,
            },
            Self::CancelChange {
                field: f,
                challenge_id,
            } => Change::CancelChange {
                field: field(index, &f)?,
                challenge_id: ChallengeId::from(challenge_id),
            },
            Self::GrantConsent {
                purpose,
                basis,
                notice,
                channel,
                jurisdiction,
                expires_at,
            } => Change::GrantConsent {
                purpose: parsed(index, "purpose", Purpose::parse(&purpose))?,
                basis: parsed(index, "basis", LegalBasis::parse(&basis))?,
                notice: parsed(index, "notice", serde_json::from_value::<NoticeRef>(notice))?,
                channel: parsed(index, "channel", ConsentChannel::parse(&channel))?,
                jurisdiction: parsed(index, "jurisdiction", Jurisdiction::parse(&jurisdiction))?,
                expires_at,
            },
            Self::WithdrawConsent { purpose } => Change::WithdrawConsent {
                purpose: parsed(index, "purpose", Purpose::parse(&purpose))?,
            },
            Self::ProposeValue { field: f, value: v } => {
                let field = field(index, &f)?;
                Change::ProposeValue {
                    value: value(index, &field, &v)?,
                    field,
                }
            }
            Self::AcceptProposal { proposal_id } => Change::AcceptProposal {
                proposal_id: ProposalId::from(proposal_id),
            },
            Self::RejectProposal {
                proposal_id,
                reason,
            } => Change::RejectProposal {
                proposal_id: ProposalId::from(proposal_id),
                reason,
            },
            Self::RecordRelationship {
                relationship,
                representative,
                evidence,
                scope,
                expires_at,
            } => {
                let kind = parsed(index, "relationship", Relationship::parse(&relationship))?;
                Change::RecordRelationship {
                    representative: parsed(
                        index,
                        "representative",
                        OnBehalfOf::new(kind, &representative),
                    )?,
                    evidence: parsed(
                        index,
                        "evidence",
                        serde_json::from_value::<Evidence>(evidence),
                    )?,
                    scope: scope.map(|s| s.into_scope(index)).transpose()?,
                    expires_at,
                }
            }
            Self::EndRelationship {
                relationship_id,
                reason,
            } => Change::EndRelationship {
                relationship_id: RelationshipId::from(relationship_id),
                reason,
            },
        })
    }
}

impl ScopeBody {
    fn into_scope(self, index: usize) -> Result<RelationshipScope, Refused> {
        let purposes = self
            .purposes
            .iter()
            .map(|p| parsed(index, "scope.purposes", Purpose::parse(p)))
            .collect::<Result<_, _>>()?;
        let fields = self
            .fields
            .iter()
            .map(|f| parsed(index, "scope.fields", FieldSelector::parse(f)))
            .collect::<Result<_, _>>()?;
        Ok(RelationshipScope { purposes, fields })
    }
}

/// Builds the domain command; `first` changes (e.g. the registration) go before the body's.
/// A refusal's `change_index` counts in the body's `changes`.
pub fn command(
    customer_id: CustomerId,
    idempotency_key: IdempotencyKey,
    provenance: ProvenanceInput,
    first: Vec<Change>,
    body: Vec<ChangeBody>,
    expected_stream_version: Option<u64>,
) -> Result<Command, Refused> {
    let mut changes = first;
    for (i, change) in body.into_iter().enumerate() {
        changes.push(change.into_change(i)?);
    }
    Ok(Command {
        customer_id,
        idempotency_key,
        provenance,
        changes,
        expected_stream_version,
    })
}
