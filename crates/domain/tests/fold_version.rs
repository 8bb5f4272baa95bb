//! Pins what the fold makes of every event type, so that a change to `evolve` (or to the
//! serialized form of the state) cannot go unnoticed by the stream snapshots the store keeps:
//! they are folded states tagged with `FOLD_VERSION`, and one of an older fold must not be
//! used. When this test fails after a deliberate change, bump `FOLD_VERSION` and pin the new
//! fingerprint below.
//!
//! `fixtures/fold_streams.json` holds three streams recorded by `decide`: one record through
//! every event type of a single stream (erasure last), and a survivor and an absorbed record
//! through a merge and its undoing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;

use idledger_domain::event::EventEnvelope;
use idledger_domain::schema::EVENT_TYPES;
use idledger_domain::state::{CustomerState, FOLD_VERSION, evolve};
use sha2::{Digest, Sha256};

/// The fold version and the fingerprint of its fold of the fixture's streams.
const PINNED: (u32, &str) = (
    1,
    "5895f253a1d963374ea16ccc044f9c9fada522bfa43fb449971469966a688630",
);

const STREAMS: &str = include_str!("fixtures/fold_streams.json");

fn streams() -> Vec<(String, Vec<EventEnvelope>)> {
    let all: serde_json::Map<String, serde_json::Value> = serde_json::from_str(STREAMS).unwrap();
    all.into_iter()
        .map(|(name, events)| (name, serde_json::from_value(events).unwrap()))
        .collect()
}

/// SHA-256 over every state the fold passes through, serialized, stream by stream.
fn fingerprint() -> String {
    let mut hash = Sha256::new();
    for (name, events) in streams() {
        hash.update(name.as_bytes());
        let mut state = CustomerState::default();
        for envelope in &events {
            state = evolve(state, envelope);
            hash.update(serde_json::to_vec(&state).unwrap());
        }
    }
    hash.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn the_samples_cover_every_event_type() {
    let seen: BTreeSet<&str> = streams()
        .iter()
        .flat_map(|(_, events)| events.iter().map(|e| e.event.payload.type_name()))
        .collect();
    let all: BTreeSet<&str> = EVENT_TYPES.into_iter().collect();
    assert_eq!(
        seen, all,
        "add a sample of each new event type to fixtures/fold_streams.json"
    );
}

#[test]
fn the_fold_is_the_one_its_version_names() {
    assert_eq!(
        (FOLD_VERSION, fingerprint().as_str()),
        PINNED,
        "the fold changed: bump FOLD_VERSION (stream snapshots of the old fold are then \
         ignored and rebuilt) and pin the new fingerprint here"
    );
}
