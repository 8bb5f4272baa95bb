//! Stream snapshots (migration 0025): a customer's folded record at every
//! [`SNAPSHOT_EVERY`]th event of their stream, so that reading the record as of an instant
//! folds only the events after the latest snapshot before it.
//!
//! A snapshot holds personal data, so it is sealed under the customer's data key like the
//! projection's rows (`snapshot:v1:` + base64 of nonce ‖ ciphertext, the customer, the stream
//! version and the fold version as associated data: a snapshot moved to another customer or
//! version does not open), and erasure deletes the customer's snapshots in its transaction.
//! A record merged into another, or holding records merged into it, is never snapshotted:
//! while merged the survivor's state holds the absorbed customer's data, which must not be
//! sealed under the survivor's key (erasing the absorbed record after an unmerge must leave
//! none of it readable).
//!
//! Which snapshots a stream has is a function of its events alone — one at each multiple of
//! [`SNAPSHOT_EVERY`] whose state is [`eligible`] — so `rebuild` can check and repair them.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use idledger_domain::event::EventEnvelope;
use idledger_domain::state::{CustomerState, FOLD_VERSION, evolve};
use uuid::Uuid;

use crate::crypto::DataKey;
use crate::error::StoreError;
use crate::model::SnapshotWrite;

/// A snapshot every this many events of a stream.
pub const SNAPSHOT_EVERY: u64 = 100;

const SEALED_PREFIX: &str = "snapshot:v1:";

/// Whether a state may be snapshotted: a live record of its customer's own data only.
pub fn eligible(state: &CustomerState) -> bool {
    state.registered
        && state.erased.is_none()
        && state.merged_into.is_none()
        && state.absorbed.is_empty()
}

/// Whether a snapshot is due at `stream_version` of a stream whose state there is `state`.
pub fn due(stream_version: u64, state: &CustomerState) -> bool {
    stream_version > 0 && stream_version.is_multiple_of(SNAPSHOT_EVERY) && eligible(state)
}

/// Folds `events` onto `state`, and gives the states at which a snapshot is due on the way.
pub fn fold_noting(
    state: CustomerState,
    events: &[EventEnvelope],
) -> (CustomerState, Vec<CustomerState>) {
    let mut due_states = Vec::new();
    let mut state = state;
    for envelope in events {
        state = evolve(state, envelope);
        if due(state.stream_version, &state) {
            due_states.push(state.clone());
        }
    }
    (state, due_states)
}

/// The snapshots of `states` (at their own stream versions), sealed under the customer's key;
/// none without a key (nothing of the customer can be sealed).
pub fn seal_all(
    customer: Uuid,
    states: &[CustomerState],
    key: Option<&DataKey>,
) -> Result<Vec<SnapshotWrite>, StoreError> {
    let Some(key) = key else {
        return Ok(Vec::new());
    };
    states
        .iter()
        .map(|state| {
            Ok(SnapshotWrite {
                stream_version: state.stream_version,
                fold_version: FOLD_VERSION,
                state: seal(customer, state.stream_version, FOLD_VERSION, state, key)?,
            })
        })
        .collect()
}

/// A state's sealed form as snapshot `stream_version` of `customer`.
pub fn seal(
    customer: Uuid,
    stream_version: u64,
    fold_version: u32,
    state: &CustomerState,
    key: &DataKey,
) -> Result<String, StoreError> {
    let plaintext = serde_json::to_vec(state)?;
    let sealed = key.seal(&plaintext, &aad(customer, stream_version, fold_version))?;
    Ok(format!("{SEALED_PREFIX}{}", STANDARD_NO_PAD.encode(sealed)))
}

/// The plaintext JSON of a stored snapshot; an integrity error if it does not open as this
/// customer's snapshot at this version.
pub fn open_plaintext(
    customer: Uuid,
    stream_version: u64,
    fold_version: u32,
    stored: &str,
    key: &DataKey,
) -> Result<Vec<u8>, StoreError> {
    let bad = || {
        StoreError::Integrity(format!(
            "snapshot {stream_version} of customer {customer} does not open"
        ))
    };
    let encoded = stored.strip_prefix(SEALED_PREFIX).ok_or_else(bad)?;
    let sealed = STANDARD_NO_PAD.decode(encoded).map_err(|_| bad())?;
    key.open(&sealed, &aad(customer, stream_version, fold_version))
        .map_err(|_| bad())
}

/// The state in a stored snapshot (see [`open_plaintext`]).
pub fn open(
    customer: Uuid,
    stream_version: u64,
    fold_version: u32,
    stored: &str,
    key: &DataKey,
) -> Result<CustomerState, StoreError> {
    let plaintext = open_plaintext(customer, stream_version, fold_version, stored, key)?;
    let state: CustomerState = serde_json::from_slice(&plaintext)?;
    if state.stream_version != stream_version {
        return Err(StoreError::Integrity(format!(
            "snapshot {stream_version} of customer {customer} holds version {}",
            state.stream_version
        )));
    }
    Ok(state)
}

fn aad(customer: Uuid, stream_version: u64, fold_version: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(SEALED_PREFIX.len() + 16 + 8 + 4);
    out.extend_from_slice(SEALED_PREFIX.as_bytes());
    out.extend_from_slice(customer.as_bytes());
    out.extend_from_slice(&stream_version.to_be_bytes());
    out.extend_from_slice(&fold_version.to_be_bytes());
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_opens_only_as_its_own_customer_version_and_fold() {
        let (c, d) = (Uuid::now_v7(), Uuid::now_v7());
        let key = DataKey::generate();
        let state = CustomerState {
            registered: true,
            stream_version: 100,
            ..CustomerState::default()
        };
        let sealed = seal(c, 100, FOLD_VERSION, &state, &key).unwrap();
        assert!(sealed.starts_with(SEALED_PREFIX));
        assert_eq!(open(c, 100, FOLD_VERSION, &sealed, &key).unwrap(), state);
        assert!(open(d, 100, FOLD_VERSION, &sealed, &key).is_err());
        assert!(open(c, 200, FOLD_VERSION, &sealed, &key).is_err());
        assert!(open(c, 100, FOLD_VERSION + 1, &sealed, &key).is_err());
        assert!(open(c, 100, FOLD_VERSION, &sealed, &DataKey::generate()).is_err());
        assert!(open(c, 100, FOLD_VERSION, "{}", &key).is_err());
    }

    #[test]
    fn merged_erased_and_unregistered_states_are_never_due() {
        let live = CustomerState {
            registered: true,
            ..CustomerState::default()
        };
        assert!(due(100, &live) && due(300, &live));
        assert!(!due(0, &live) && !due(99, &live) && !due(101, &live));
        assert!(!due(100, &CustomerState::default()));
        let link = idledger_domain::state::MergeLink {
            customer: idledger_domain::ids::CustomerId::generate(),
            merge_id: Uuid::now_v7(),
            at: chrono::Utc::now(),
        };
        let mut merged = live.clone();
        merged.merged_into = Some(link.clone());
        assert!(!due(100, &merged));
        let mut survivor = live.clone();
        survivor.absorbed.insert(link.customer, link);
        assert!(!due(100, &survivor));
        let mut erased = live;
        erased.erased = Some(idledger_domain::state::Erasure {
            at: chrono::Utc::now(),
            source: idledger_domain::ids::SourceId::parse("admin").unwrap(),
            reason: "asked".to_owned(),
        });
        assert!(!due(100, &erased));
    }
}
