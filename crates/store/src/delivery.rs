//! Delivery bookkeeping: the consumer registry, per-consumer checkpoints, the handoff log,
//! consumer state from acknowledgements, and sync exceptions.
//!
//! [`Deliveries`] is the API other crates use; its statements, written once for both engines,
//! are in `delivery/{registry,handoffs,acks,exceptions}.rs`.
//!
//! Nothing here decides who may receive what: that is the relay's entitlement check. This
//! module only records what was decided and delivered, atomically with the checkpoint.

use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use idledger_domain::field::FieldPath;
use idledger_domain::ids::{CustomerId, EventId, Purpose};
use idledger_domain::state::ConsentStatus;
use idledger_domain::usage::Location;
use idledger_domain::values::{CountryCode, LegalBasis, NoticeRef, TransferBasis, ValueError};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::StoreError;
use crate::sql::Db;

pub use idledger_domain::delivery::ExceptionSubject;
pub use idledger_domain::delivery::{
    AUTO_RESOLVER, AckStatus, ChannelKind, ConsumerId, ExceptionKind, ExceptionStatus, HandoffKind,
    Relation, Resolution,
};
pub use idledger_domain::exception::{Closing, ExceptionKey, ExceptionState};
use idledger_domain::ids::ProposalId;

mod acks;
mod exceptions;
mod workspace;

pub use exceptions::AssignError;
pub(crate) use exceptions::{apply_exception_event, close_erased_customers_exceptions};
pub(crate) use workspace::insert_activity;
mod handoffs;
mod registry;

/// Most rows one page of a query returns.
pub const MAX_PAGE: u32 = 1000;
/// Longest reason a consumer may give when it rejects a change.
pub const MAX_ACK_REASON_CHARS: usize = 1000;

/// The key a webhook consumer verifies our signatures with. Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookSecret(String);

impl WebhookSecret {
    /// 16..=256 visible ASCII characters: shorter secrets are guessable.
    pub fn parse(raw: &str) -> Result<Self, ValueError> {
        const WHAT: &str = "webhook secret";
        if raw.len() < 16 {
            return Err(ValueError::new(WHAT, "must be at least 16 characters"));
        }
        if raw.len() > 256 {
            return Err(ValueError::new(WHAT, "longer than 256 characters"));
        }
        if !raw.chars().all(|c| c.is_ascii_graphic()) {
            return Err(ValueError::new(
                WHAT,
                "may contain only visible ASCII characters",
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookSecret(..)")
    }
}

/// Where a webhook consumer receives its messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Webhook {
    url: String,
    pub secret: WebhookSecret,
}

impl Webhook {
    /// An `http://` or `https://` URL of at most 2048 characters, without whitespace. (The
    /// dispatcher parses it fully; this keeps obviously wrong values out of the registry.)
    pub fn new(url: &str, secret: WebhookSecret) -> Result<Self, ValueError> {
        const WHAT: &str = "webhook url";
        let rest = url
            .strip_prefix("https://")
            .or_else(|| url.strip_prefix("http://"))
            .ok_or_else(|| ValueError::new(WHAT, "must start with http:// or https://"))?;
        if rest.is_empty() || rest.starts_with('/') {
            return Err(ValueError::new(WHAT, "names no host"));
        }
        if url.len() > 2048 {
            return Err(ValueError::new(WHAT, "longer than 2048 characters"));
        }
        if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(ValueError::new(
                WHAT,
                "must not contain whitespace or control characters",
            ));
        }
        Ok(Self {
            url: url.to_owned(),
            secret,
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }
}

/// How a consumer receives its messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Channel {
    /// Published to NATS JetStream by the relay.
    Nats,
    /// POSTed, signed, to the consumer's endpoint by the relay.
    Webhook(Webhook),
    /// Pulled by the consumer from the HTTP change feed.
    Feed,
}

impl Channel {
    /// The channel a registration names: a webhook consumer needs its endpoint; the other
    /// channels take none. Every edge registers consumers through this one rule.
    pub fn new(kind: ChannelKind, webhook: Option<Webhook>) -> Result<Self, ValueError> {
        match (kind, webhook) {
            (ChannelKind::Webhook, Some(webhook)) => Ok(Self::Webhook(webhook)),
            (ChannelKind::Webhook, None) => Err(ValueError::new(
                "webhook",
                "the webhook channel needs the endpoint's URL and signing secret",
            )),
            (kind, Some(_)) => Err(ValueError::new(
                "webhook",
                format!(
                    "only the webhook channel takes an endpoint, not {}",
                    kind.as_str()
                ),
            )),
            (ChannelKind::Nats, None) => Ok(Self::Nats),
            (ChannelKind::Feed, None) => Ok(Self::Feed),
        }
    }

    pub fn kind(&self) -> ChannelKind {
        match self {
            Self::Nats => ChannelKind::Nats,
            Self::Webhook(_) => ChannelKind::Webhook,
            Self::Feed => ChannelKind::Feed,
        }
    }
}

pub use idledger_domain::field::FieldSelector;

/// A registered consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consumer {
    pub id: ConsumerId,
    pub channel: Channel,
    /// Non-empty, without duplicates.
    pub fields: Vec<FieldSelector>,
    /// The purposes it processes data for; non-empty, without duplicates. It receives a
    /// customer's data only while the basis for every one of them holds.
    pub purposes: Vec<Purpose>,
    /// How long a change may stay unacknowledged before reconciliation reports it.
    pub sla_secs: u64,
    /// It is shown its own aliases of customers, never their ids
    /// (`idledger_domain::alias`).
    pub pseudonymous: bool,
    /// Where it processes data: delivery to it abroad needs a transfer basis the policy
    /// accepts, as a decision does.
    pub location: Location,
    pub created_at: DateTime<Utc>,
    pub disabled_at: Option<DateTime<Utc>>,
}

/// The acknowledgement SLA a consumer gets unless it is registered with another.
pub const DEFAULT_SLA_SECS: u64 = idledger_domain::delivery::DEFAULT_ACK_SLA_SECS;
/// The longest SLA accepted (30 days): beyond that, reconciliation would never report.
pub const MAX_SLA_SECS: u64 = 30 * 24 * 3600;

impl Consumer {
    /// Whether the consumer is entitled to `field` at all (purposes aside).
    pub fn selects(&self, field: &FieldPath) -> bool {
        self.fields.iter().any(|s| s.matches(field))
    }

    pub fn is_enabled(&self) -> bool {
        self.disabled_at.is_none()
    }
}

/// Where a new consumer starts reading the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StartAt {
    /// From the first event: it receives everything it is entitled to (an initial load).
    #[default]
    Beginning,
    /// From the head of the log at registration: only what happens next.
    Now,
}

impl StartAt {
    /// `beginning` or `now`.
    pub fn parse(raw: &str) -> Result<Self, ValueError> {
        match raw {
            "beginning" => Ok(Self::Beginning),
            "now" => Ok(Self::Now),
            other => Err(ValueError::new(
                "start",
                format!(
                    "{:?} is not one of: beginning, now",
                    other.chars().take(64).collect::<String>()
                ),
            )),
        }
    }
}

/// A consumer to register.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewConsumer {
    pub id: ConsumerId,
    pub channel: Channel,
    pub fields: Vec<FieldSelector>,
    pub purposes: Vec<Purpose>,
    pub start: StartAt,
    pub sla_secs: u64,
    pub pseudonymous: bool,
    pub location: Location,
}

impl NewConsumer {
    /// Processing in `location` instead of where the controller does.
    pub fn located(mut self, location: Location) -> Self {
        self.location = location;
        self
    }

    /// With an acknowledgement SLA other than [`DEFAULT_SLA_SECS`].
    pub fn with_sla(mut self, sla_secs: u64) -> Result<Self, ValueError> {
        if sla_secs > MAX_SLA_SECS {
            return Err(ValueError::new(
                "sla_secs",
                format!("must be at most {MAX_SLA_SECS} (30 days)"),
            ));
        }
        self.sla_secs = sla_secs;
        Ok(self)
    }

    /// Shown its own aliases of customers instead of their ids.
    pub fn pseudonymous(mut self) -> Self {
        self.pseudonymous = true;
        self
    }

    /// Checks that it receives something and processes it for some purpose; drops duplicates
    /// (keeping the order given).
    pub fn new(
        id: ConsumerId,
        channel: Channel,
        mut fields: Vec<FieldSelector>,
        mut purposes: Vec<Purpose>,
        start: StartAt,
    ) -> Result<Self, ValueError> {
        if fields.is_empty() {
            return Err(ValueError::new(
                "consumer",
                "must receive at least one field",
            ));
        }
        if purposes.is_empty() {
            return Err(ValueError::new(
                "consumer",
                "must name at least one purpose it processes data for",
            ));
        }
        dedup_in_order(&mut fields);
        dedup_in_order(&mut purposes);
        Ok(Self {
            id,
            channel,
            fields,
            purposes,
            start,
            sla_secs: DEFAULT_SLA_SECS,
            pseudonymous: false,
            location: Location::CONTROLLERS,
        })
    }
}

pub(crate) fn dedup_in_order<T: PartialEq>(items: &mut Vec<T>) {
    let mut i = 0;
    while i < items.len() {
        if items[..i].contains(&items[i]) {
            items.remove(i);
        } else {
            i += 1;
        }
    }
}

/// The standing of one purpose's basis for a customer at the moment of delivery: what allowed
/// a delivery, or what ended it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsentBasis {
    pub purpose: Purpose,
    pub status: ConsentStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub legal_basis: Option<LegalBasis>,
    /// The consent record's version and the event that last changed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consent_version: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consent_event_id: Option<EventId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notice: Option<NoticeRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub granted_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    /// For a consumer with a region of its own: whether sending the customer's data there is
    /// a lawful transfer now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer: Option<TransferStanding>,
}

impl ConsentBasis {
    /// Whether this purpose's basis holds now, the transfer to the consumer included.
    pub fn holds(&self) -> bool {
        self.status == ConsentStatus::Granted && self.transfer.as_ref().is_none_or(|t| t.lawful)
    }
}

/// A transfer to a consumer abroad, as judged at delivery. The subject's country is left out:
/// it is the customer's data, which the consumer may not be entitled to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferStanding {
    pub region: CountryCode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basis: Option<TransferBasis>,
    pub lawful: bool,
}

/// One delivered message, as the handoff log keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handoff {
    pub consumer_id: ConsumerId,
    /// The message's id (the CloudEvent id): the event id for changes, a derived id for notices.
    pub message_id: Uuid,
    pub kind: HandoffKind,
    /// The event whose processing produced the message.
    pub event_id: EventId,
    pub global_position: u64,
    pub customer_id: CustomerId,
    /// The fields whose data the message carried (or, for a notice, that must be deleted).
    pub fields: Vec<String>,
    /// The basis of every purpose of the consumer when it was decided.
    pub basis: Vec<ConsentBasis>,
    pub channel: ChannelKind,
    pub delivered_at: DateTime<Utc>,
}

/// A handoff log row with its place in the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandoffEntry {
    /// Increases with every row; the paging cursor.
    pub seq: u64,
    #[serde(flatten)]
    pub handoff: Handoff,
}

/// Everything one delivery step changes, written in one transaction so that the handoff log,
/// the relations and the checkpoint never disagree.
#[derive(Debug, Clone)]
pub struct DeliveryCommit<'a> {
    pub consumer: &'a ConsumerId,
    pub handoffs: &'a [Handoff],
    pub relations: &'a [(CustomerId, Relation)],
    /// The new checkpoint; never moves backwards.
    pub checkpoint: Option<u64>,
    /// Outbox items now handled (delivered or skipped): they leave the outbox.
    pub outbox_done: &'a [u32],
    pub at: DateTime<Utc>,
}

/// A page of results and the cursor for the next one (`None`: this was the last page).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next: Option<u64>,
}

impl<T> Page<T> {
    /// A page of up to `limit` rows: a full one may have more after it, from the last row's
    /// position (`seq`); a shorter one is the last.
    pub(crate) fn of(items: Vec<T>, limit: u32, seq: impl Fn(&T) -> u64) -> Self {
        let next = (items.len() == limit as usize)
            .then(|| items.last().map(seq))
            .flatten();
        Self { items, next }
    }
}

/// Which handoffs to list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandoffFilter {
    Customer(CustomerId),
    Consumer(ConsumerId),
}

pub use idledger_domain::hashing::ValueHash;

/// What a consumer reports it did with a change: the value it now holds (by hash; `None`
/// when it holds none, e.g. after a clear) at that field version, or that it rejected it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    pub consumer_id: ConsumerId,
    pub event_id: EventId,
    pub customer_id: CustomerId,
    pub field: FieldPath,
    pub version: u64,
    pub value_hash: Option<ValueHash>,
    pub status: AckStatus,
    pub reason: Option<String>,
    pub acked_at: DateTime<Utc>,
}

/// What recording an acknowledgement did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AckOutcome {
    /// Stored as the consumer's state of that field.
    Recorded,
    /// The consumer already reported a later version of the field; kept that one.
    Superseded { stored_version: u64 },
    /// Not stored: the ack does not match anything we delivered (reason for the log).
    Invalid(String),
}

/// One field as a consumer last reported holding it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsumerFieldState {
    pub consumer_id: ConsumerId,
    pub customer_id: CustomerId,
    pub field: String,
    pub event_id: EventId,
    pub version: u64,
    pub value_hash: Option<String>,
    pub status: AckStatus,
    pub reason: Option<String>,
    pub acked_at: DateTime<Utc>,
}

/// A sync exception to open (or, if one is open for the same system, customer, field and
/// kind, to count again with the newest detail).
#[derive(Debug, Clone, PartialEq)]
pub struct NewSyncException {
    /// What it is about: kind, consumer (or, for `proposal` and `refused_write`, source
    /// system), customer and field.
    pub key: ExceptionKey,
    /// The evidence: record and consumer versions/hashes, the run that found it, etc.
    pub detail: serde_json::Value,
    pub at: DateTime<Utc>,
}

impl NewSyncException {
    /// An exception of `kind` about a consumer or, for `proposal` and `refused_write`, a
    /// source system, or, for `duplicate_candidate`, the pair's other customer. A subject of the wrong side is a caller's mistake, not bad input.
    pub fn new(
        kind: ExceptionKind,
        subject: impl Into<ExceptionSubject>,
        customer: CustomerId,
        field: Option<FieldPath>,
        detail: serde_json::Value,
        at: DateTime<Utc>,
    ) -> Result<Self, StoreError> {
        let key = ExceptionKey::new(kind, subject.into(), customer, field)
            .map_err(|e| StoreError::Integrity(format!("sync exception: {e}")))?;
        Ok(Self { key, detail, at })
    }
}

/// A sync exception as stored. Its rules are the domain's (`idledger_domain::exception`);
/// [`SyncException::state`] gives the form they are decided on.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SyncException {
    pub id: Uuid,
    /// The consumer it is about; for `proposal` and `refused_write`, the source system; for
    /// `duplicate_candidate`, the pair's other customer.
    #[serde(rename = "consumer_id")]
    pub subject: ExceptionSubject,
    pub customer_id: CustomerId,
    pub field: Option<String>,
    pub kind: ExceptionKind,
    pub detail: serde_json::Value,
    pub status: ExceptionStatus,
    pub occurrences: u64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolution: Option<Resolution>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolution_note: Option<String>,
    /// The last steward action that left it open (a re-push): who, when, which event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_action: Option<serde_json::Value>,
    /// The steward working it (`steward:<label>`), and since when.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assigned_to: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assigned_at: Option<DateTime<Utc>>,
}

impl SyncException {
    /// The exception as the domain's lifecycle decides on it.
    pub fn state(&self) -> Result<ExceptionState, StoreError> {
        let bad = |e: ValueError| StoreError::Integrity(format!("stored sync exception: {e}"));
        let field = self
            .field
            .as_deref()
            .map(FieldPath::parse)
            .transpose()
            .map_err(|e| StoreError::Integrity(format!("stored sync exception: {e}")))?;
        let key = ExceptionKey::new(self.kind, self.subject.clone(), self.customer_id, field)
            .map_err(bad)?;
        // A proposal exception names its proposal in its evidence (the column predates the
        // typed form).
        let proposal_id = self
            .detail
            .get("proposal_id")
            .and_then(|v| v.as_str())
            .map(ProposalId::parse)
            .transpose()
            .map_err(bad)?;
        let closed = (self.status != ExceptionStatus::Open).then(|| Closing {
            by: self.resolved_by.clone().unwrap_or_default(),
            resolution: self.resolution.unwrap_or(match self.status {
                ExceptionStatus::Dismissed => Resolution::Dismissed,
                _ => Resolution::Auto,
            }),
            note: self.resolution_note.clone().unwrap_or_default(),
            at: self.resolved_at.unwrap_or(self.updated_at),
        });
        let last_action = self
            .last_action
            .clone()
            .map(serde_json::from_value)
            .transpose()?;
        Ok(ExceptionState {
            id: self.id,
            key,
            proposal_id,
            detail: self.detail.clone(),
            occurrences: self.occurrences,
            opened_at: self.created_at,
            updated_at: self.updated_at,
            closed,
            last_action,
            assigned_to: self.assigned_to.clone(),
        })
    }
}

/// Which sync exceptions to list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExceptionFilter {
    pub consumer: Option<ConsumerId>,
    pub customer: Option<CustomerId>,
    pub kind: Option<ExceptionKind>,
    pub field: Option<String>,
    pub status: Option<ExceptionStatus>,
    /// Only those opened before this instant (at least this old).
    pub created_before: Option<DateTime<Utc>>,
    pub open_only: bool,
    /// Paging cursor: ids are UUIDv7, so id order is creation order.
    pub after: Option<Uuid>,
    pub assignee: Option<Assignee>,
    /// Only open exceptions past their resolution SLA at this instant
    /// (`idledger_domain::exception::resolution_sla`).
    pub overdue_at: Option<DateTime<Utc>>,
}

/// Whose exceptions to list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Assignee {
    /// Assigned to nobody.
    Nobody,
    /// Assigned to this steward (`steward:<label>`).
    Steward(String),
}

/// The open exceptions of one kind: how many, how many past their SLA, unassigned, and by
/// age (under an hour, under a day, under a week, older).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KindCount {
    pub kind: ExceptionKind,
    pub open: u64,
    pub overdue: u64,
    pub unassigned: u64,
    pub by_age: AgeBuckets,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AgeBuckets {
    pub under_1h: u64,
    pub under_1d: u64,
    pub under_7d: u64,
    pub older: u64,
}

/// One steward action, as the activity view shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StewardActivity {
    pub id: Uuid,
    /// `steward:<label>`.
    pub steward: String,
    /// `repush`, `accept`, `dismiss`, `route`, `assign`, `unassign`, `request_approval`, `approve`,
    /// `reject_approval`.
    pub action: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exception_id: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approval_id: Option<Uuid>,
    pub customer_id: CustomerId,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// The events the action recorded in the customer's log.
    pub event_ids: Vec<Uuid>,
    /// The assignee of an assignment.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub at: DateTime<Utc>,
}

/// A steward action to record in the activity view (written in the action's transaction).
#[derive(Debug, Clone, PartialEq)]
pub struct NewActivity {
    pub steward: String,
    pub action: &'static str,
    pub exception_id: Option<Uuid>,
    pub approval_id: Option<Uuid>,
    pub customer_id: CustomerId,
    pub field: Option<String>,
    pub event_ids: Vec<Uuid>,
    pub detail: Option<String>,
    pub reason: Option<String>,
    pub at: DateTime<Utc>,
}

/// Which steward actions to list, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ActivityFilter {
    /// `steward:<label>`.
    pub steward: Option<String>,
    pub customer: Option<CustomerId>,
    pub after: Option<Uuid>,
}

/// The delivery bookkeeping of one database. Cheap to clone. The statements are written once
/// for both engines (see [`crate::sql`]), one file per part: `registry`, `handoffs`, `acks`,
/// `exceptions`.
#[derive(Debug, Clone)]
pub struct Deliveries {
    db: Db,
    /// Holds enabled consumers as askers (see [`crate::token_cache`]).
    cache: Arc<crate::token_cache::TokenCache>,
}

/// Why registering a consumer failed.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error("a consumer or processor with id '{0}' is already registered")]
    Exists(ConsumerId),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Deliveries {
    pub(crate) fn new(db: Db, cache: Arc<crate::token_cache::TokenCache>) -> Self {
        Self { db, cache }
    }
}

pub(crate) fn customer_id(uuid: Uuid) -> Result<CustomerId, StoreError> {
    CustomerId::from_uuid(uuid)
        .map_err(|e| StoreError::Integrity(format!("stored customer id: {e}")))
}
