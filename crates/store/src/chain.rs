//! The hash chains: each event's hash covers its stream predecessor's hash and every byte
//! stored for it (v2: also its global position), so altering, removing or reordering any
//! stored event is detected; and the log hash, one running hash over the whole log in global
//! position order, which is what a signed checkpoint commits to (see [`crate::checkpoints`]).

use sha2::{Digest, Sha256};

/// The "previous hash" of a stream's first event.
pub const GENESIS: [u8; 32] = [0; 32];

/// The log hash of the empty log (position 0).
pub const LOG_GENESIS: [u8; 32] = [0; 32];

/// The columns of an event row that the chain protects.
#[derive(Debug, Clone, Copy)]
pub struct ChainInput<'a> {
    pub global_position: u64,
    pub customer_id: uuid::Uuid,
    pub stream_version: u64,
    pub event_id: uuid::Uuid,
    pub event_type: &'a str,
    pub schema_version: u16,
    pub field: Option<&'a str>,
    pub recorded_at_micros: i64,
    pub payload: &'a [u8],
    pub key_owner: Option<uuid::Uuid>,
}

/// Which chain a stored event's hash follows. A store keeps the first position hashed v2
/// (`log_chain.v2_from`, set when the store was migrated): every event before it is v1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainVersions {
    pub v2_from: u64,
}

impl ChainVersions {
    /// The hash of `e` under the version its position was written with.
    pub fn event_hash(&self, prev: &[u8], e: &ChainInput<'_>) -> [u8; 32] {
        if e.global_position >= self.v2_from {
            event_hash(prev, e)
        } else {
            event_hash_v1(prev, e)
        }
    }
}

/// The current (v2) event hash: v1's input with the global position after the predecessor's
/// hash, so that an event moved to another place in the log breaks its stream's chain too.
pub fn event_hash(prev: &[u8], e: &ChainInput<'_>) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"idledger.event.v2");
    h.update(prev);
    h.update(e.global_position.to_be_bytes());
    event_fields(&mut h, e);
    h.finalize().into()
}

/// The event hash of stores from before v2: the position is not covered. Only verified, never
/// written.
pub fn event_hash_v1(prev: &[u8], e: &ChainInput<'_>) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"idledger.event.v1");
    h.update(prev);
    event_fields(&mut h, e);
    h.finalize().into()
}

fn event_fields(h: &mut Sha256, e: &ChainInput<'_>) {
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
    // Only when set, so that the hashes of events from before the column stay as they were;
    // the payload's length prefix keeps the two forms apart.
    if let Some(owner) = e.key_owner {
        h.update(b"key_owner");
        h.update(owner.as_bytes());
    }
}

/// The log hash after the event at `position`: `prev` is the log hash at `position - 1`
/// ([`LOG_GENESIS`] at 0) and `event_hash` the event's (32-byte) hash. Every position is
/// folded in order, so reordering, removing or re-hashing any event changes every later
/// log hash.
pub fn log_hash(prev: &[u8; 32], position: u64, event_hash: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"idledger.log.v1");
    h.update(prev);
    h.update(position.to_be_bytes());
    h.update(event_hash);
    h.finalize().into()
}

/// The rows of an append, at global positions after `last_position`, each hashed (v2) onto
/// its predecessor (the stream's head hash `prev` for the first).
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
            key_owner: e.key_owner,
            hash: Vec::new(),
        };
        raw.hash = event_hash(&prev, &raw.chain_input()).to_vec();
        prev.clone_from(&raw.hash);
        rows.push(raw);
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(position: u64) -> ChainInput<'static> {
        ChainInput {
            global_position: position,
            customer_id: uuid::Uuid::from_u128(1),
            stream_version: 1,
            event_id: uuid::Uuid::from_u128(2),
            event_type: "customer_registered",
            schema_version: 1,
            field: None,
            recorded_at_micros: 5,
            payload: b"x",
            key_owner: None,
        }
    }

    #[test]
    fn v2_covers_the_position_and_v1_does_not() {
        assert_ne!(
            event_hash(&GENESIS, &input(1)),
            event_hash(&GENESIS, &input(2))
        );
        assert_eq!(
            event_hash_v1(&GENESIS, &input(1)),
            event_hash_v1(&GENESIS, &input(2))
        );
        assert_ne!(
            event_hash(&GENESIS, &input(1)),
            event_hash_v1(&GENESIS, &input(1))
        );
        let versions = ChainVersions { v2_from: 2 };
        assert_eq!(
            versions.event_hash(&GENESIS, &input(1)),
            event_hash_v1(&GENESIS, &input(1))
        );
        assert_eq!(
            versions.event_hash(&GENESIS, &input(2)),
            event_hash(&GENESIS, &input(2))
        );
    }

    #[test]
    fn the_log_hash_depends_on_order_and_position() {
        let (a, b) = ([1u8; 32], [2u8; 32]);
        let ab = log_hash(&log_hash(&LOG_GENESIS, 1, &a), 2, &b);
        let ba = log_hash(&log_hash(&LOG_GENESIS, 1, &b), 2, &a);
        assert_ne!(ab, ba);
        assert_ne!(log_hash(&LOG_GENESIS, 1, &a), log_hash(&LOG_GENESIS, 2, &a));
    }
}
