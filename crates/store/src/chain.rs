//! The per-stream hash chain: each event's hash covers its predecessor's hash and every byte
//! stored for it, so altering, removing or reordering any stored event is detected.

use sha2::{Digest, Sha256};

/// The "previous hash" of a stream's first event.
pub const GENESIS: [u8; 32] = [0; 32];

/// The columns of an event row that the chain protects.
#[derive(Debug, Clone, Copy)]
pub struct ChainInput<'a> {
    pub customer_id: uuid::Uuid,
    pub stream_version: u64,
    pub event_id: uuid::Uuid,
    pub event_type: &'a str,
    pub schema_version: u16,
    pub field: Option<&'a str>,
    pub recorded_at_micros: i64,
    pub payload: &'a [u8],
}

pub fn event_hash(prev: &[u8], e: &ChainInput<'_>) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"idledger.event.v1");
    h.update(prev);
    h.update(e.customer_id.as_bytes());
    h.update(e.stream_version.to_be_bytes());
    h.update(e.event_id.as_bytes());
    // Length-prefix variable fields so that no two rows hash the same bytes.
    for part in [e.event_type.as_bytes(), e.field.unwrap_or("").as_bytes()] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    h.update([u8::from(e.field.is_some())]);
    h.update(e.schema_version.to_be_bytes());
    h.update(e.recorded_at_micros.to_be_bytes());
    h.update((e.payload.len() as u64).to_be_bytes());
    h.update(e.payload);
    h.finalize().into()
}
