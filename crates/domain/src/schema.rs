//! The persisted form of events — an API boundary, separate from the domain enum.
//!
//! A stored event is `(event_type, schema_version, data)`. Writers always write
//! [`CURRENT_SCHEMA_VERSION`]; readers pass older versions through [`upcast`] first, so the
//! domain enum can evolve while every event ever written stays readable.

use serde_json::Value;

use crate::event::Event;

/// The schema version every event is written with today.
pub const CURRENT_SCHEMA_VERSION: u16 = 1;

/// Every event type name ever written. Renaming one is a breaking change to the log.
pub const EVENT_TYPES: [&str; 24] = [
    "customer_registered",
    "field_set",
    "field_cleared",
    "change_requested",
    "change_verified",
    "change_cancelled",
    "consent_granted",
    "consent_withdrawn",
    "value_proposed",
    "proposal_accepted",
    "proposal_rejected",
    "customer_erased",
    "steward_acted",
    "field_expired",
    "processing_restricted",
    "restriction_lifted",
    "customer_merged",
    "merged_into",
    "customer_unmerged",
    "unmerged_from",
    "field_adopted",
    "relationship_recorded",
    "relationship_ended",
    "relationship_adopted",
];

/// An event as stored: type name, schema version and JSON data (payload, provenance, policy
/// version). The store encrypts `data`; the type and version stay readable for indexing.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    pub event_type: String,
    pub schema_version: u16,
    pub data: Value,
}

#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("unknown event type '{0}'")]
    UnknownType(String),
    #[error(
        "event type '{event_type}' has no schema version {version} (newest is {CURRENT_SCHEMA_VERSION})"
    )]
    UnknownVersion { event_type: String, version: u16 },
    #[error("event data does not match its schema: {0}")]
    Data(#[from] serde_json::Error),
    #[error("stored type '{stored}' does not match the data's type '{data}'")]
    TypeMismatch { stored: String, data: String },
}

impl StoredEvent {
    pub fn from_event(event: &Event) -> Result<Self, SchemaError> {
        Ok(Self {
            event_type: event.payload.type_name().to_owned(),
            schema_version: CURRENT_SCHEMA_VERSION,
            data: serde_json::to_value(event)?,
        })
    }

    pub fn into_event(self) -> Result<Event, SchemaError> {
        let data = upcast(&self.event_type, self.schema_version, self.data)?;
        let event: Event = serde_json::from_value(data)?;
        if event.payload.type_name() != self.event_type {
            return Err(SchemaError::TypeMismatch {
                stored: self.event_type,
                data: event.payload.type_name().to_owned(),
            });
        }
        Ok(event)
    }
}

/// Brings stored data of any known version up to [`CURRENT_SCHEMA_VERSION`].
///
/// The hook for schema evolution: when version 2 of a type is introduced, add a step here
/// that rewrites version 1 data into version 2 (e.g. renames a key or fills a default).
pub fn upcast(event_type: &str, version: u16, data: Value) -> Result<Value, SchemaError> {
    if !EVENT_TYPES.contains(&event_type) {
        return Err(SchemaError::UnknownType(event_type.to_owned()));
    }
    match version {
        CURRENT_SCHEMA_VERSION => Ok(data),
        _ => Err(SchemaError::UnknownVersion {
            event_type: event_type.to_owned(),
            version,
        }),
    }
}
