//! Delivery bookkeeping: the consumer registry, per-consumer checkpoints, the handoff log,
//! consumer state from acknowledgements, and sync exceptions.
//!
//! [`Deliveries`] is the API other crates use; its statements, written once for both engines,
//! are in `delivery/{registry,handoffs,acks,exceptions}.rs`.
//!
//! Nothing here decides who may receive what: that is the relay's entitlement check. This
//! module only records what was decided and delivered, atomically with the checkpoint.

use std::fmt;

use chrono::{DateTime, Utc};
use idledger_domain::field::{FAMILIES, FieldPath};
use idledger_domain::ids::{CustomerId, EventId, Purpose};
use idledger_domain::state::ConsentStatus;
use idledger_domain::values::{LegalBasis, NoticeRef, ValueError};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::StoreError;
use crate::sql::Db;

mod acks;
mod exceptions;

pub(crate) use exceptions::close_erased_customers_exceptions;
mod handoffs;
mod registry;

/// Most rows one page of a query returns.
pub const MAX_PAGE: u32 = 1000;
/// Longest reason a consumer may give when it rejects a change.
pub const MAX_ACK_REASON_CHARS: usize = 1000;

/// A consumer's id: 1..=64 of lowercase a-z, digits, `_` and `-`, starting with a letter.
/// It is used as a NATS subject token, so it can hold no `.`, `*`, `>` or whitespace.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ConsumerId(String);

impl ConsumerId {
    pub fn parse(raw: &str) -> Result<Self, ValueError> {
        const WHAT: &str = "consumer id";
        let Some(first) = raw.chars().next() else {
            return Err(ValueError::new(WHAT, "must not be empty"));
        };
        if !first.is_ascii_lowercase() {
            return Err(ValueError::new(
                WHAT,
                "must start with a lowercase letter a-z",
            ));
        }
        if raw.len() > 64 {
            return Err(ValueError::new(WHAT, "longer than 64 characters"));
        }
        if let Some(c) = raw
            .chars()
            .find(|&c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-'))
        {
            return Err(ValueError::new(
                WHAT,
                format!("may contain only lowercase letters a-z, digits, '_' and '-', not {c:?}"),
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ConsumerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for ConsumerId {
    type Error = ValueError;
    fn try_from(raw: String) -> Result<Self, ValueError> {
        Self::parse(&raw)
    }
}

impl From<ConsumerId> for String {
    fn from(id: ConsumerId) -> String {
        id.0
    }
}

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
    pub fn kind(&self) -> ChannelKind {
        match self {
            Self::Nats => ChannelKind::Nats,
            Self::Webhook(_) => ChannelKind::Webhook,
            Self::Feed => ChannelKind::Feed,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChannelKind {
    Nats,
    Webhook,
    Feed,
}

impl ChannelKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Nats => "nats",
            Self::Webhook => "webhook",
            Self::Feed => "feed",
        }
    }

    pub fn parse(raw: &str) -> Result<Self, ValueError> {
        match raw {
            "nats" => Ok(Self::Nats),
            "webhook" => Ok(Self::Webhook),
            "feed" => Ok(Self::Feed),
            _ => Err(ValueError::new(
                "channel",
                format!("{raw:?} is not one of: nats, webhook, feed"),
            )),
        }
    }
}

/// `name.*`: both parts of the name, as a selector (the policy names them one by one).
const NAME_GROUP: &str = "name.*";

/// Which fields a consumer receives: one field, a family (`consent.*`, or `name.*` for both
/// parts of the name), or everything (`*`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FieldSelector {
    All,
    Family(&'static str),
    Field(FieldPath),
}

impl FieldSelector {
    pub fn parse(raw: &str) -> Result<Self, ValueError> {
        if raw == "*" {
            return Ok(Self::All);
        }
        if raw == NAME_GROUP {
            return Ok(Self::Family(NAME_GROUP));
        }
        if let Some(family) = FAMILIES.iter().find(|f| **f == raw) {
            return Ok(Self::Family(family));
        }
        FieldPath::parse(raw)
            .map(Self::Field)
            .map_err(|e| ValueError::new("field selector", e.to_string()))
    }

    pub fn matches(&self, field: &FieldPath) -> bool {
        match self {
            Self::All => true,
            Self::Family(NAME_GROUP) => {
                matches!(field, FieldPath::NameGiven | FieldPath::NameFamily)
            }
            Self::Family(family) => field.family() == Some(*family),
            Self::Field(f) => f == field,
        }
    }
}

impl fmt::Display for FieldSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::All => f.write_str("*"),
            Self::Family(family) => f.write_str(family),
            Self::Field(field) => write!(f, "{field}"),
        }
    }
}

impl Serialize for FieldSelector {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for FieldSelector {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        Self::parse(&raw).map_err(serde::de::Error::custom)
    }
}

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
    pub created_at: DateTime<Utc>,
    pub disabled_at: Option<DateTime<Utc>>,
}

/// The acknowledgement SLA a consumer gets unless it is registered with another.
pub const DEFAULT_SLA_SECS: u64 = 300;
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

/// A consumer to register.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewConsumer {
    pub id: ConsumerId,
    pub channel: Channel,
    pub fields: Vec<FieldSelector>,
    pub purposes: Vec<Purpose>,
    pub start: StartAt,
    pub sla_secs: u64,
}

impl NewConsumer {
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
        })
    }
}

fn dedup_in_order<T: PartialEq>(items: &mut Vec<T>) {
    let mut i = 0;
    while i < items.len() {
        if items[..i].contains(&items[i]) {
            items.remove(i);
        } else {
            i += 1;
        }
    }
}

/// Whether a consumer currently receives a customer's data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Relation {
    /// It was sent data of the customer and has not been told to stop.
    Receiving,
    /// It was sent a withdrawal notice and nothing since.
    Withdrawn,
    /// It was sent the erasure notice of the customer: final, nothing of the customer follows.
    Erased,
}

impl Relation {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Receiving => "receiving",
            Self::Withdrawn => "withdrawn",
            Self::Erased => "erased",
        }
    }

    pub(crate) fn parse(raw: &str) -> Result<Self, StoreError> {
        match raw {
            "receiving" => Ok(Self::Receiving),
            "withdrawn" => Ok(Self::Withdrawn),
            "erased" => Ok(Self::Erased),
            _ => Err(StoreError::Integrity(format!("unknown relation {raw:?}"))),
        }
    }
}

/// What kind of message a handoff was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HandoffKind {
    /// A field's new value or state.
    Change,
    /// A withdrawal notice: stop using and delete the customer's data.
    Notice,
    /// The basis holds again after a notice: deliveries resume.
    Resume,
    /// The customer was erased: delete everything of them; nothing of them follows.
    Erasure,
}

impl HandoffKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Change => "change",
            Self::Notice => "notice",
            Self::Resume => "resume",
            Self::Erasure => "erasure",
        }
    }

    pub(crate) fn parse(raw: &str) -> Result<Self, StoreError> {
        match raw {
            "change" => Ok(Self::Change),
            "notice" => Ok(Self::Notice),
            "resume" => Ok(Self::Resume),
            "erasure" => Ok(Self::Erasure),
            _ => Err(StoreError::Integrity(format!(
                "unknown handoff kind {raw:?}"
            ))),
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
    pub at: DateTime<Utc>,
}

/// A page of results and the cursor for the next one (`None`: this was the last page).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next: Option<u64>,
}

/// Which handoffs to list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandoffFilter {
    Customer(CustomerId),
    Consumer(ConsumerId),
}

/// `sha256:<64 lowercase hex>`: the digest of a value's natural JSON form
/// (`FieldValue::digest`), which consumers report instead of the value.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ValueHash(String);

impl ValueHash {
    pub fn parse(raw: &str) -> Result<Self, ValueError> {
        let hex = raw.strip_prefix("sha256:").ok_or_else(|| {
            ValueError::new("value hash", "must have the form sha256:<64 hex digits>")
        })?;
        if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(ValueError::new(
                "value hash",
                "must have the form sha256:<64 hex digits>",
            ));
        }
        Ok(Self(format!("sha256:{}", hex.to_ascii_lowercase())))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ValueHash {
    type Error = ValueError;
    fn try_from(raw: String) -> Result<Self, ValueError> {
        Self::parse(&raw)
    }
}

impl From<ValueHash> for String {
    fn from(v: ValueHash) -> String {
        v.0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AckStatus {
    Applied,
    Rejected,
}

impl AckStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::Rejected => "rejected",
        }
    }

    pub(crate) fn parse(raw: &str) -> Result<Self, StoreError> {
        match raw {
            "applied" => Ok(Self::Applied),
            "rejected" => Ok(Self::Rejected),
            _ => Err(StoreError::Integrity(format!("unknown ack status {raw:?}"))),
        }
    }
}

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

/// Kinds of sync exception.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExceptionKind {
    /// A webhook endpoint refused a message with a 4xx other than 408/429; it was skipped.
    WebhookRejected,
    /// An event could not be read (e.g. its customer's key is gone) and was not delivered.
    Undeliverable,
    /// A change the consumer never acknowledged, older than its SLA.
    Undelivered,
    /// The consumer acknowledged an older version than the record's, which is older than its
    /// SLA.
    Stale,
    /// The consumer holds a different value (by hash) at the record's version: drift.
    Divergent,
    /// The consumer refused the record's value.
    Rejected,
    /// Consent stopped holding and the consumer did not confirm deleting the customer's data.
    WithdrawalUnconfirmed,
    /// A source system proposed a value for a field it does not own.
    Proposal,
    /// A source system's write was refused: it may not write the field at all.
    RefusedWrite,
    /// Delivery to the consumer keeps failing (retries exhausted their patience).
    DeliveryFailing,
}

impl ExceptionKind {
    pub const ALL: [Self; 10] = [
        Self::WebhookRejected,
        Self::Undeliverable,
        Self::Undelivered,
        Self::Stale,
        Self::Divergent,
        Self::Rejected,
        Self::WithdrawalUnconfirmed,
        Self::Proposal,
        Self::RefusedWrite,
        Self::DeliveryFailing,
    ];

    /// The kinds reconciliation detects from acknowledgements, and so closes by itself when
    /// their cause goes away.
    pub const RECONCILED: [Self; 5] = [
        Self::Undelivered,
        Self::Stale,
        Self::Divergent,
        Self::Rejected,
        Self::WithdrawalUnconfirmed,
    ];

    /// The field-level kinds a matching acknowledgement closes.
    pub const CLOSED_BY_ACK: [Self; 5] = [
        Self::Undelivered,
        Self::Stale,
        Self::Divergent,
        Self::Rejected,
        Self::WebhookRejected,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::WebhookRejected => "webhook_rejected",
            Self::Undeliverable => "undeliverable",
            Self::Undelivered => "undelivered",
            Self::Stale => "stale",
            Self::Divergent => "divergent",
            Self::Rejected => "rejected",
            Self::WithdrawalUnconfirmed => "withdrawal_unconfirmed",
            Self::Proposal => "proposal",
            Self::RefusedWrite => "refused_write",
            Self::DeliveryFailing => "delivery_failing",
        }
    }

    pub fn parse(raw: &str) -> Result<Self, ValueError> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == raw)
            .ok_or_else(|| {
                let names: Vec<&str> = Self::ALL.iter().map(|k| k.as_str()).collect();
                ValueError::new(
                    "exception kind",
                    format!("{raw:?} is not one of: {}", names.join(", ")),
                )
            })
    }
}

impl fmt::Display for ExceptionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a sync exception stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExceptionStatus {
    Open,
    /// Fixed: a steward accepted a value, or the cause went away by itself.
    Resolved,
    /// Closed by a steward without a change, for a stated reason.
    Dismissed,
}

impl ExceptionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Resolved => "resolved",
            Self::Dismissed => "dismissed",
        }
    }

    pub fn parse(raw: &str) -> Result<Self, ValueError> {
        match raw {
            "open" => Ok(Self::Open),
            "resolved" => Ok(Self::Resolved),
            "dismissed" => Ok(Self::Dismissed),
            _ => Err(ValueError::new(
                "exception status",
                format!("{raw:?} is not one of: open, resolved, dismissed"),
            )),
        }
    }
}

/// How an exception was closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Resolution {
    /// A steward took a value into the record (a proposal or the consumer's).
    Accepted,
    /// A steward closed it without a change.
    Dismissed,
    /// Its cause went away: the consumer acknowledged the record, or a run no longer found it.
    Auto,
}

impl Resolution {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::Dismissed => "dismissed",
            Self::Auto => "auto",
        }
    }

    pub(crate) fn parse(raw: &str) -> Result<Self, StoreError> {
        match raw {
            "accepted" => Ok(Self::Accepted),
            "dismissed" => Ok(Self::Dismissed),
            "auto" => Ok(Self::Auto),
            _ => Err(StoreError::Integrity(format!("unknown resolution {raw:?}"))),
        }
    }

    /// The status an exception closed this way ends in.
    pub fn status(self) -> ExceptionStatus {
        match self {
            Self::Dismissed => ExceptionStatus::Dismissed,
            Self::Accepted | Self::Auto => ExceptionStatus::Resolved,
        }
    }
}

/// Who closes exceptions whose cause went away by itself.
pub const AUTO_RESOLVER: &str = "idledger";

/// Closing an exception: by whom, how, why, when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closing {
    pub by: String,
    pub resolution: Resolution,
    pub note: String,
    pub at: DateTime<Utc>,
}

/// A sync exception to open (or, if one is open for the same system, customer, field and
/// kind, to count again with the newest detail).
#[derive(Debug, Clone, PartialEq)]
pub struct NewSyncException {
    /// The consumer it is about; for `proposal` and `refused_write`, the source system.
    pub consumer_id: ConsumerId,
    pub customer_id: CustomerId,
    pub field: Option<FieldPath>,
    pub kind: ExceptionKind,
    /// The evidence: record and consumer versions/hashes, the run that found it, etc.
    pub detail: serde_json::Value,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyncException {
    pub id: Uuid,
    /// The consumer it is about; for `proposal` and `refused_write`, the source system.
    pub consumer_id: ConsumerId,
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
}

/// The delivery bookkeeping of one database. Cheap to clone. The statements are written once
/// for both engines (see [`crate::sql`]), one file per part: `registry`, `handoffs`, `acks`,
/// `exceptions`.
#[derive(Debug, Clone)]
pub struct Deliveries {
    db: Db,
}

/// Why registering a consumer failed.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error("a consumer with id '{0}' is already registered")]
    Exists(ConsumerId),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Deliveries {
    pub(crate) fn new(db: Db) -> Self {
        Self { db }
    }
}

pub(crate) fn customer_id(uuid: Uuid) -> Result<CustomerId, StoreError> {
    CustomerId::from_uuid(uuid)
        .map_err(|e| StoreError::Integrity(format!("stored customer id: {e}")))
}
