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
}

/// A projection row: one part of a customer's record, as JSON text (so that a rebuilt row can
/// be compared byte for byte with the live one).
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

/// One command's write: its events, the projection rows they change and its idempotency
/// record — all or nothing, and only if the stream is still at `expected_version`.
#[derive(Debug, Clone)]
pub struct AppendRequest {
    pub customer_id: uuid::Uuid,
    pub expected_version: u64,
    pub events: Vec<PreparedEvent>,
    /// A newly generated, wrapped data key when the customer has none yet.
    pub new_data_key: Option<Vec<u8>>,
    pub idempotency: IdempotencyRecord,
    pub projection: ProjectionDiff,
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
    pub hash: Vec<u8>,
}

impl RawEvent {
    pub fn chain_input(&self) -> crate::chain::ChainInput<'_> {
        crate::chain::ChainInput {
            customer_id: self.customer_id,
            stream_version: self.stream_version,
            event_id: self.event_id,
            event_type: &self.event_type,
            schema_version: self.schema_version,
            field: self.field.as_deref(),
            recorded_at_micros: self.recorded_at_micros,
            payload: &self.payload,
        }
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

pub fn micros(at: DateTime<Utc>) -> i64 {
    at.timestamp_micros()
}

pub fn from_micros(micros: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(micros).unwrap_or_default()
}
