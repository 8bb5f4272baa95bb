//! The vocabulary of delivery to consumers: who a consumer is, how it receives messages, what
//! was handed off and acknowledged, and the kinds and standing of sync exceptions.
//!
//! Wire names (`as_str`, serde) are those the store's columns, the HTTP API and the steward page
//! already use; changing one is a migration.

use std::fmt;

use crate::ids::{CustomerId, SourceId};
use crate::values::{ValueError, str_conversions, string_enum};

/// A consumer's id: 1..=64 of lowercase a-z, digits, `_` and `-`, starting with a letter.
/// It is used as a NATS subject token, so it can hold no `.`, `*`, `>` or whitespace.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConsumerId(String);

impl ConsumerId {
    /// Checks a consumer id; no case folding, so a consumer has exactly one spelling.
    pub fn parse(raw: &str) -> Result<Self, ValueError> {
        const WHAT: &str = "consumer id";
        // The checks and their messages are those the store has always given: operators and
        // scripts registering consumers see the same answers.
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

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

str_conversions!(ConsumerId);

string_enum! {
    /// How a consumer receives its messages.
    pub enum ChannelKind as "channel" {
        /// Published to NATS JetStream by the relay.
        Nats = "nats",
        /// POSTed, signed, to the consumer's endpoint by the relay.
        Webhook = "webhook",
        /// Pulled by the consumer from the HTTP change feed.
        Feed = "feed",
    }
}

string_enum! {
    /// Whether a consumer currently receives a customer's data.
    pub enum Relation as "relation" {
        /// It was sent data of the customer and has not been told to stop.
        Receiving = "receiving",
        /// It was sent a withdrawal notice and nothing since.
        Withdrawn = "withdrawn",
        /// It was sent a restriction notice (GDPR Art. 18: keep the data, do not use it) and
        /// nothing since.
        Restricted = "restricted",
        /// It was sent the erasure notice of the customer: final, nothing of the customer
        /// follows.
        Erased = "erased",
    }
}

string_enum! {
    /// What kind of message a handoff was.
    pub enum HandoffKind as "handoff kind" {
        /// A field's new value or state.
        Change = "change",
        /// A withdrawal notice: stop using and delete the customer's data.
        Notice = "notice",
        /// The basis holds again after a notice: deliveries resume.
        Resume = "resume",
        /// The customer was erased: delete everything of them; nothing of them follows.
        Erasure = "erasure",
    }
}

string_enum! {
    /// What a consumer reports it did with a change.
    pub enum AckStatus as "ack status" {
        /// It holds the change (or, for a clear, holds no value).
        Applied = "applied",
        /// It refused the change, with a reason.
        Rejected = "rejected",
    }
}

/// How long a consumer has to acknowledge a change unless it is registered with another SLA.
pub const DEFAULT_ACK_SLA_SECS: u64 = 300;

string_enum! {
    /// Kinds of sync exception.
    pub enum ExceptionKind as "exception kind" {
        /// A webhook endpoint refused a message with a 4xx other than 408/429; it was skipped.
        WebhookRejected = "webhook_rejected",
        /// An event could not be read (e.g. its customer's key is gone) and was not delivered.
        Undeliverable = "undeliverable",
        /// A change the consumer never acknowledged, older than its SLA.
        Undelivered = "undelivered",
        /// The consumer acknowledged an older version than the record's, which is older than
        /// its SLA.
        Stale = "stale",
        /// The consumer holds a different value (by hash) at the record's version: drift.
        Divergent = "divergent",
        /// The consumer refused the record's value.
        Rejected = "rejected",
        /// Consent stopped holding and the consumer did not confirm deleting the customer's
        /// data.
        WithdrawalUnconfirmed = "withdrawal_unconfirmed",
        /// A source system proposed a value for a field it does not own.
        Proposal = "proposal",
        /// A source system's write was refused: it may not write the field at all.
        RefusedWrite = "refused_write",
        /// Delivery to the consumer keeps failing (retries exhausted their patience).
        DeliveryFailing = "delivery_failing",
        /// Two customers may be one person: they share a verified identifier (`strong`) or
        /// the policy's secondary rule matches them (`weak`). About the pair: the lower
        /// customer id is the exception's customer, the other its subject.
        DuplicateCandidate = "duplicate_candidate",
    }
}

impl ExceptionKind {
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

    /// Whether exceptions of this kind are about a source system that writes to idledger
    /// (`proposal`, `refused_write`) rather than a consumer it delivers to. A source is never
    /// sent the record, so there is nothing to re-push to it.
    pub const fn about_source(self) -> bool {
        matches!(self, Self::Proposal | Self::RefusedWrite)
    }

    /// Whether exceptions of this kind are about a pair of customers (`duplicate_candidate`):
    /// their subject is the pair's other customer, neither a consumer nor a source.
    pub const fn about_customers(self) -> bool {
        matches!(self, Self::DuplicateCandidate)
    }

    /// Whether exceptions of this kind are about a consumer idledger delivers to (so the
    /// consumer's acknowledgement SLA applies to them).
    pub const fn about_consumer(self) -> bool {
        !self.about_source() && !self.about_customers()
    }

    /// How long a steward has to deal with an exception of this kind when no consumer SLA
    /// applies (see `exception::resolution_sla`): a proposal or a refused write waits for a
    /// business decision, so three and one days; a consumer's exception, the default
    /// acknowledgement SLA.
    pub const fn default_resolution_sla(self) -> chrono::Duration {
        match self {
            Self::Proposal => chrono::Duration::days(3),
            Self::RefusedWrite => chrono::Duration::days(1),
            // Two records of one person do no harm while a steward looks; a wrong merge would.
            Self::DuplicateCandidate => chrono::Duration::days(7),
            _ => chrono::Duration::seconds(DEFAULT_ACK_SLA_SECS as i64),
        }
    }
}

string_enum! {
    /// Where a sync exception stands.
    pub enum ExceptionStatus as "exception status" {
        /// Waiting for its cause to go away or for a steward.
        Open = "open",
        /// Fixed: a steward accepted a value, or the cause went away by itself.
        Resolved = "resolved",
        /// Closed by a steward without a change, for a stated reason.
        Dismissed = "dismissed",
    }
}

string_enum! {
    /// How an exception was closed.
    pub enum Resolution as "resolution" {
        /// A steward took a value into the record (a proposal or the consumer's).
        Accepted = "accepted",
        /// A steward closed it without a change.
        Dismissed = "dismissed",
        /// Its cause went away: the consumer acknowledged the record, or a run no longer found
        /// it.
        Auto = "auto",
    }
}

impl Resolution {
    /// The status an exception closed this way ends in.
    pub const fn status(self) -> ExceptionStatus {
        match self {
            Self::Dismissed => ExceptionStatus::Dismissed,
            Self::Accepted | Self::Auto => ExceptionStatus::Resolved,
        }
    }
}

/// Who closes exceptions whose cause went away by itself.
pub const AUTO_RESOLVER: &str = "idledger";

/// What a sync exception is about: a consumer idledger delivers to, or — for `proposal` and
/// `refused_write` — a source system that writes to it, or — for `duplicate_candidate` — the
/// other customer of the pair. All are stored in the one `consumer_id` column; the kind says
/// which it is.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ExceptionSubject {
    Consumer(ConsumerId),
    Source(SourceId),
    /// The other customer of a duplicate pair (the higher id; the exception's customer is
    /// the lower), so the pair has one key whichever of them changed last.
    Customer(OtherCustomer),
}

/// The other customer of a duplicate pair, with its id as stored.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OtherCustomer {
    id: CustomerId,
    text: String,
}

impl OtherCustomer {
    pub fn new(id: CustomerId) -> Self {
        Self {
            id,
            text: id.as_uuid().hyphenated().to_string(),
        }
    }

    pub fn id(&self) -> CustomerId {
        self.id
    }
}

impl ExceptionSubject {
    /// Reads the stored id of an exception of `kind` as the side that kind is about.
    pub fn parse(kind: ExceptionKind, raw: &str) -> Result<Self, ValueError> {
        if kind.about_source() {
            SourceId::parse(raw).map(Self::Source)
        } else if kind.about_customers() {
            CustomerId::parse(raw).map(|id| Self::Customer(OtherCustomer::new(id)))
        } else {
            ConsumerId::parse(raw).map(Self::Consumer)
        }
    }

    /// Refuses a subject of the wrong side for `kind`: a source system is not a consumer, a
    /// consumer does not propose values, and only a duplicate pair names another customer.
    pub fn check(&self, kind: ExceptionKind) -> Result<(), ValueError> {
        let wanted = if kind.about_source() {
            "a source system"
        } else if kind.about_customers() {
            "a pair of customers"
        } else {
            "a consumer"
        };
        let fits = match self {
            Self::Consumer(_) => kind.about_consumer(),
            Self::Source(_) => kind.about_source(),
            Self::Customer(_) => kind.about_customers(),
        };
        if fits {
            return Ok(());
        }
        let given = match self {
            Self::Consumer(_) => "a consumer",
            Self::Source(_) => "a source system",
            Self::Customer(_) => "another customer",
        };
        Err(ValueError::new(
            "exception subject",
            format!("a {kind} exception is about {wanted}, not {given}"),
        ))
    }

    /// The id, as stored in the `consumer_id` column.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Consumer(id) => id.as_str(),
            Self::Source(id) => id.as_str(),
            Self::Customer(other) => &other.text,
        }
    }

    /// The consumer, if it is about one.
    pub fn consumer(&self) -> Option<&ConsumerId> {
        match self {
            Self::Consumer(id) => Some(id),
            _ => None,
        }
    }

    /// The source system, if it is about one.
    pub fn source(&self) -> Option<&SourceId> {
        match self {
            Self::Source(id) => Some(id),
            _ => None,
        }
    }

    /// The pair's other customer, if it is about a duplicate pair.
    pub fn other_customer(&self) -> Option<CustomerId> {
        match self {
            Self::Customer(other) => Some(other.id()),
            _ => None,
        }
    }
}

impl From<ConsumerId> for ExceptionSubject {
    fn from(id: ConsumerId) -> Self {
        Self::Consumer(id)
    }
}

impl From<SourceId> for ExceptionSubject {
    fn from(id: SourceId) -> Self {
        Self::Source(id)
    }
}

impl serde::Serialize for ExceptionSubject {
    /// As the id it names: the one `consumer_id` member of the wire forms.
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl fmt::Display for ExceptionSubject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

string_enum! {
    /// What a reconciliation run compares the record with.
    pub enum RunKind as "run kind" {
        /// What consumers acknowledged.
        Acks = "acks",
        /// An export a consumer uploaded of what it holds.
        Snapshot = "snapshot",
    }
}

string_enum! {
    /// Where a reconciliation run stands.
    pub enum RunStatus as "run status" {
        Running = "running",
        Finished = "finished",
        Failed = "failed",
    }
}
