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

/// The rows of an append, at global positions after `last_position`, each hashed onto its
/// predecessor (the stream's head hash `prev` for the first).
pub fn chained_rows(
    req: &crate::model::AppendRequest,
    last_position: u64,
    prev: &[u8],
) -> Vec<crate::model::RawEvent> {
    let mut prev = prev.to_vec();
    let mut rows = Vec::with_capacity(req.events.len());
    for (offset, e) in (1u64..).zip(&req.events) {
        let mut raw = crate::model::RawEvent {
            global_position: last_position + offset,
            event_id: e.event_id,
            customer_id: req.customer_id,
            stream_version: e.stream_version,
            event_type: e.event_type.clone(),
            schema_version: e.schema_version,
            field: e.field.clone(),
            recorded_at_micros: e.recorded_at_micros,
            payload: e.payload.clone(),
            hash: Vec::new(),
        };
        raw.hash = event_hash(&prev, &raw.chain_input()).to_vec();
        prev.clone_from(&raw.hash);
        rows.push(raw);
    }
    rows
}
