//! Rows and requests exchanged between the ledger and its backends.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// One event ready to be stored: metadata in the clear, payload sealed.
#[derive(Debug, Clone)]
pub struct PreparedEvent {
    pub event_id: uuid::Uuid,
    pub stream_version: u64,
    pub event_type: String,
    pub schema_version: u16,
    pub field: Option<String>,
    pub recorded_at_micros: i64,
    pub payload: Vec<u8>,
    /// The customer whose data key sealed the payload, when not the stream's: what a
    /// survivor records about a record merged into it (see `idledger_domain::merge`).
    pub key_owner: Option<uuid::Uuid>,
}

/// A projection row: one part of a customer's record. `record` is the record's JSON text, or,
/// as stored for the kinds that hold personal data, that text sealed (see
/// [`crate::projection`]); the ledger opens rows before it compares or reads them.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ProjectionRow {
    pub kind: String,
    pub key: String,
    pub record: String,
}

/// The projection rows a command changes.
#[derive(Debug, Clone, Default)]
pub struct ProjectionDiff {
    pub upserts: Vec<ProjectionRow>,
    /// `(kind, key)` of rows that no longer exist (resolved proposals).
    pub deletes: Vec<(String, String)>,
}

/// The stored answer to an idempotent command.
#[derive(Debug, Clone)]
pub struct IdempotencyRecord {
    pub source: String,
    pub key: String,
    pub request_hash: Vec<u8>,
    pub result: String,
}

/// A key as stored: encrypted under a master key, with that key's id.
#[derive(Debug, Clone)]
pub struct WrappedKey {
    pub wrapped: Vec<u8>,
    pub key_id: String,
}

/// One command's write: its events, the projection rows they change and its idempotency
/// record — all or nothing, and only if the stream is still at `expected_version`.
#[derive(Debug, Clone)]
pub struct AppendRequest {
    pub customer_id: uuid::Uuid,
    pub expected_version: u64,
    pub events: Vec<PreparedEvent>,
    /// A newly generated, wrapped data key when the customer has none yet.
    pub new_data_key: Option<WrappedKey>,
    /// `None` for an erasure, which is not a client's idempotent request.
    pub idempotency: Option<IdempotencyRecord>,
    pub projection: ProjectionDiff,
    /// Erasure: also delete the customer's data key (crypto-shredding every sealed event) and
    /// idempotency records, in the same transaction.
    pub erase: bool,
    /// A sync exception's change that stands or falls with the command (a steward's action):
    /// written in the same transaction, and only while the exception is open.
    pub exception: Option<ExceptionWrite>,
    /// The customer's blind-index digests after the append, only when its identifiers changed
    /// (see `idledger_domain::lookup`): they replace whatever rows the customer had.
    pub lookup: Option<Vec<[u8; 32]>>,
    /// The stream snapshots the append's events make due (see [`crate::snapshots`]): stored
    /// in its transaction, their `covers_until` taken from the events.
    pub snapshots: Vec<SnapshotWrite>,
    /// Unmerge: the customer's snapshots covering events recorded at or after this instant
    /// (the merge's) are deleted first.
    pub drop_snapshots_since: Option<DateTime<Utc>>,
}

/// A customer's folded record at a version of their stream, sealed under their data key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotWrite {
    pub stream_version: u64,
    pub fold_version: u32,
    pub state: String,
}

/// A change of one sync exception, made in a command's transaction.
#[derive(Debug, Clone, PartialEq)]
pub struct ExceptionWrite {
    pub exception_id: uuid::Uuid,
    /// `Repushed`, `Routed` or `Closed`: what a steward's action (or a proposal's decision by
    /// its system of record) does to an open exception.
    pub event: idledger_domain::exception::ExceptionEvent,
    /// The action as the steward activity view shows it, written with it.
    pub activity: Option<crate::delivery::NewActivity>,
    /// The pending approval (four-eyes) this action carries out: marked approved in the same
    /// transaction. If it is no longer pending, nothing is written.
    pub approval: Option<crate::approvals::ApprovalDecision>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppendOutcome {
    /// Stored at these global positions.
    Appended { positions: Vec<u64> },
    /// The stream moved on (or another writer created the customer's key) since it was read.
    VersionConflict,
    /// The idempotency key was already used; here is what it stored.
    Duplicate {
        request_hash: Vec<u8>,
        result: String,
    },
    /// The attached exception change found the exception no longer open (another steward or
    /// an acknowledgement closed it first); nothing was written.
    ExceptionNotOpen { exception_id: uuid::Uuid },
}

/// An event row as stored.
#[derive(Debug, Clone)]
pub struct RawEvent {
    pub global_position: u64,
    pub event_id: uuid::Uuid,
    pub customer_id: uuid::Uuid,
    pub stream_version: u64,
    pub event_type: String,
    pub schema_version: u16,
    pub field: Option<String>,
    pub recorded_at_micros: i64,
    pub payload: Vec<u8>,
    /// See [`PreparedEvent::key_owner`].
    pub key_owner: Option<uuid::Uuid>,
    pub hash: Vec<u8>,
}

impl RawEvent {
    pub fn chain_input(&self) -> crate::chain::ChainInput<'_> {
        crate::chain::ChainInput {
            global_position: self.global_position,
            customer_id: self.customer_id,
            stream_version: self.stream_version,
            event_id: self.event_id,
            event_type: &self.event_type,
            schema_version: self.schema_version,
            field: self.field.as_deref(),
            recorded_at_micros: self.recorded_at_micros,
            payload: &self.payload,
            key_owner: self.key_owner,
        }
    }

    /// The customer whose data key opens the payload.
    pub fn sealed_for(&self) -> uuid::Uuid {
        self.key_owner.unwrap_or(self.customer_id)
    }
}

/// A decrypted event with its place in the global log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedEvent {
    pub global_position: u64,
    pub customer_id: idledger_domain::ids::CustomerId,
    pub recorded_at: DateTime<Utc>,
    pub envelope: idledger_domain::event::EventEnvelope,
}

/// One position of the global log, as [`crate::Ledger::read_all`] returns it: every position
/// is there, so a reader can check contiguity and move its checkpoint past each one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[allow(
    clippy::large_enum_variant,
    reason = "nearly every entry is an event: boxing it would allocate per event to save space on the rare shredded one"
)]
pub enum LogEntry {
    /// A readable event.
    Event(RecordedEvent),
    /// An event of an erased customer, whose data was destroyed with their data key.
    Shredded(ShreddedEvent),
}

impl LogEntry {
    pub fn global_position(&self) -> u64 {
        match self {
            Self::Event(e) => e.global_position,
            Self::Shredded(s) => s.global_position,
        }
    }

    pub fn customer_id(&self) -> idledger_domain::ids::CustomerId {
        match self {
            Self::Event(e) => e.customer_id,
            Self::Shredded(s) => s.customer_id,
        }
    }

    pub fn event_id(&self) -> idledger_domain::ids::EventId {
        match self {
            Self::Event(e) => e.envelope.id,
            Self::Shredded(s) => s.event_id,
        }
    }

    pub fn stream_version(&self) -> u64 {
        match self {
            Self::Event(e) => e.envelope.stream_version,
            Self::Shredded(s) => s.stream_version,
        }
    }

    /// The event, unless it was shredded.
    pub fn event(&self) -> Option<&RecordedEvent> {
        match self {
            Self::Event(e) => Some(e),
            Self::Shredded(_) => None,
        }
    }
}

/// What remains of an erased customer's event: the metadata stored in the clear, and when the
/// customer was erased (their `customer_erased` event comes later in the log). The field name
/// is left out: names such as `external_id.<system>` or `consent.<purpose>` say something
/// about the person.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShreddedEvent {
    pub global_position: u64,
    pub customer_id: idledger_domain::ids::CustomerId,
    pub event_id: idledger_domain::ids::EventId,
    pub stream_version: u64,
    pub event_type: String,
    pub recorded_at: DateTime<Utc>,
    pub erased_at: DateTime<Utc>,
}

pub fn micros(at: DateTime<Utc>) -> i64 {
    at.timestamp_micros()
}

pub fn from_micros(micros: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(micros).unwrap_or_default()
}

/// `at` as both engines keep it: microseconds.
pub fn truncate_to_micros(at: DateTime<Utc>) -> DateTime<Utc> {
    from_micros(micros(at))
}
