//! The per-customer projection: the domain state split into rows (the customer, each field,
//! each consent, each open proposal). Written in the append transaction, read back to decide
//! the next command, and rebuilt from the log to prove it equals the live one.
//!
//! Sealing: the records of `field`, `consent`, `proposal` and `restriction` rows hold
//! personal data (values, pending values, proposals, provenance, a restriction's actor and
//! reason), so they are stored sealed under the customer's data key — the key of their events
//! — as [`SEALED_PREFIX`] + base64(nonce ‖ ciphertext), with the customer id, kind and key as
//! associated data: a sealed record opens only in its own row. The `customer` row
//! (registration, stream version, erasure, expired consents' versions) stays clear, so
//! `verify` and erasure need no key. Rows written before sealing are plain JSON (they start with `{`)
//! and are still read; a customer row that says `"sealed": true` (every row written since)
//! vouches that every other row of its customer is sealed, so a plaintext row slipped in
//! under it is an integrity error.
//!
//! Here rows are plaintext: [`rows`] gives them, [`diff`] compares them, [`state`] reads them.
//! [`seal`] and [`open`] convert to and from the stored form.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use idledger_domain::state::{
    ConsentRecord, CustomerState, Erasure, FieldRecord, MergeLink, Proposal, Restriction,
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::crypto::DataKey;
use crate::error::StoreError;
use crate::model::{ProjectionDiff, ProjectionRow};

pub const CUSTOMER: &str = "customer";
pub const FIELD: &str = "field";
pub const CONSENT: &str = "consent";
pub const PROPOSAL: &str = "proposal";
/// The restriction of processing, while there is one: who restricted it and why.
pub const RESTRICTION: &str = "restriction";
/// A recorded guardian or delegate relationship, by id (ended ones included).
pub const RELATIONSHIP: &str = "relationship";

/// How a sealed record starts; a plaintext one is JSON and starts with `{`. The version is
/// bound into the associated data too.
pub const SEALED_PREFIX: &str = "sealed:v1:";

#[derive(Debug, Serialize, Deserialize)]
struct CustomerRow {
    registered: bool,
    registered_at: Option<chrono::DateTime<chrono::Utc>>,
    stream_version: u64,
    /// Left out until set, so that rows written before erasure existed read back identical.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    erased: Option<Erasure>,
    /// Left out while empty, for the same reason.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    expired_consents: BTreeMap<idledger_domain::ids::Purpose, u64>,
    /// Only in rows written before sealing: the restriction (its actor and free-text reason)
    /// is now a sealed row of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    restricted: Option<Restriction>,
    /// Every other row of the customer is sealed. Absent in rows written before sealing.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    sealed: bool,
    /// Merges, in the clear (customer ids only): a redirect and an erasure must find the
    /// other side without the data key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    merged_into: Option<MergeLink>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    absorbed: BTreeMap<idledger_domain::ids::CustomerId, MergeLink>,
}

/// Every row of a customer's projection, sorted by (kind, key).
pub fn rows(state: &CustomerState) -> Result<Vec<ProjectionRow>, StoreError> {
    let mut rows =
        Vec::with_capacity(1 + state.fields.len() + state.consents.len() + state.proposals.len());
    rows.push(customer_row(state)?);
    if let Some(restriction) = &state.restricted {
        rows.push(row(RESTRICTION, String::new(), restriction)?);
    }
    for (path, rec) in &state.fields {
        rows.push(row(FIELD, path.to_string(), rec)?);
    }
    for (purpose, rec) in &state.consents {
        rows.push(row(CONSENT, purpose.to_string(), rec)?);
    }
    for (id, p) in &state.proposals {
        rows.push(row(PROPOSAL, id.to_string(), p)?);
    }
    for (id, r) in &state.relationships {
        rows.push(row(RELATIONSHIP, id.to_string(), r)?);
    }
    rows.sort();
    Ok(rows)
}

/// The clear `customer` row of a record, in the current (sealed) form.
fn customer_row(state: &CustomerState) -> Result<ProjectionRow, StoreError> {
    let customer = CustomerRow {
        registered: state.registered,
        registered_at: state.registered_at,
        stream_version: state.stream_version,
        erased: state.erased.clone(),
        expired_consents: state.expired_consents.clone(),
        restricted: None,
        sealed: true,
        merged_into: state.merged_into.clone(),
        absorbed: state.absorbed.clone(),
    };
    row(CUSTOMER, String::new(), &customer)
}

fn row(kind: &str, key: String, value: &impl Serialize) -> Result<ProjectionRow, StoreError> {
    Ok(ProjectionRow {
        kind: kind.to_owned(),
        key,
        record: serde_json::to_string(value)?,
    })
}

/// The rows to write to go from `before` to `after`.
pub fn diff(before: &[ProjectionRow], after: &[ProjectionRow]) -> ProjectionDiff {
    let old: BTreeMap<(&str, &str), &str> = before
        .iter()
        .map(|r| ((r.kind.as_str(), r.key.as_str()), r.record.as_str()))
        .collect();
    let new: BTreeMap<(&str, &str), &ProjectionRow> = after
        .iter()
        .map(|r| ((r.kind.as_str(), r.key.as_str()), r))
        .collect();
    ProjectionDiff {
        upserts: after
            .iter()
            .filter(|r| old.get(&(r.kind.as_str(), r.key.as_str())) != Some(&r.record.as_str()))
            .cloned()
            .collect(),
        deletes: old
            .keys()
            .filter(|k| !new.contains_key(*k))
            .map(|(kind, key)| ((*kind).to_owned(), (*key).to_owned()))
            .collect(),
    }
}

/// The domain state in a customer's rows (plaintext: opened by [`open`]).
pub fn state(rows: &[ProjectionRow]) -> Result<CustomerState, StoreError> {
    let mut state = CustomerState::default();
    for r in rows {
        match r.kind.as_str() {
            CUSTOMER => customer_into(&r.record, &mut state)?,
            FIELD => {
                let rec: FieldRecord = serde_json::from_str(&r.record)?;
                let path = idledger_domain::field::FieldPath::parse(&r.key)
                    .map_err(|e| StoreError::Integrity(format!("projection row: {e}")))?;
                state.fields.insert(path, rec);
            }
            CONSENT => {
                let rec: ConsentRecord = serde_json::from_str(&r.record)?;
                let purpose = idledger_domain::ids::Purpose::parse(&r.key)
                    .map_err(|e| StoreError::Integrity(format!("projection row: {e}")))?;
                state.consents.insert(purpose, rec);
            }
            RESTRICTION => state.restricted = Some(serde_json::from_str(&r.record)?),
            PROPOSAL => {
                let p: Proposal = serde_json::from_str(&r.record)?;
                let id = idledger_domain::ids::ProposalId::parse(&r.key)
                    .map_err(|e| StoreError::Integrity(format!("projection row: {e}")))?;
                state.proposals.insert(id, p);
            }
            RELATIONSHIP => {
                let id = idledger_domain::ids::RelationshipId::parse(&r.key)
                    .map_err(|e| StoreError::Integrity(format!("projection row: {e}")))?;
                state
                    .relationships
                    .insert(id, serde_json::from_str(&r.record)?);
            }
            other => {
                return Err(StoreError::Integrity(format!(
                    "unknown projection kind '{other}'"
                )));
            }
        }
    }
    Ok(state)
}

fn customer_into(record: &str, state: &mut CustomerState) -> Result<(), StoreError> {
    let c: CustomerRow = serde_json::from_str(record)?;
    state.registered = c.registered;
    state.registered_at = c.registered_at;
    state.stream_version = c.stream_version;
    state.erased = c.erased;
    state.expired_consents = c.expired_consents;
    if c.restricted.is_some() {
        state.restricted = c.restricted;
    }
    state.merged_into = c.merged_into;
    state.absorbed = c.absorbed;
    Ok(())
}

/// What the clear `customer` row alone says (registration, stream version, erasure), from
/// stored rows: enough to decide an erasure, and readable without the data key.
pub fn registration(stored: &[ProjectionRow]) -> Result<CustomerState, StoreError> {
    let mut state = CustomerState::default();
    if let Some(row) = stored.iter().find(|r| r.kind == CUSTOMER) {
        customer_into(&row.record, &mut state)?;
    }
    Ok(state)
}

/// Whether rows of this kind hold personal data and are stored sealed.
pub fn is_sealed_kind(kind: &str) -> bool {
    kind != CUSTOMER
}

/// Whether a stored record is sealed (else it is the record's JSON).
pub fn is_sealed(record: &str) -> bool {
    record.starts_with(SEALED_PREFIX)
}

/// Whether opening `stored` needs the customer's data key.
pub fn needs_key(stored: &[ProjectionRow]) -> bool {
    stored.iter().any(|r| is_sealed(&r.record))
}

/// Whether every row is in the current form: the customer row vouches for sealing and every
/// other row is sealed. False for rows written before sealing (which a write or `rebuild`
/// turns into the current form).
pub fn is_current_form(stored: &[ProjectionRow]) -> bool {
    stored.iter().all(|r| {
        if is_sealed_kind(&r.kind) {
            is_sealed(&r.record)
        } else {
            serde_json::from_str::<CustomerRow>(&r.record).is_ok_and(|c| c.sealed)
        }
    })
}

/// Associated data of a sealed record: the format's version, the customer, the row's kind
/// and key. Kinds hold no NUL, so the split between kind and key is unambiguous.
fn aad(customer: Uuid, kind: &str, key: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(SEALED_PREFIX.len() + 16 + kind.len() + 1 + key.len());
    out.extend_from_slice(SEALED_PREFIX.as_bytes());
    out.extend_from_slice(customer.as_bytes());
    out.extend_from_slice(kind.as_bytes());
    out.push(0);
    out.extend_from_slice(key.as_bytes());
    out
}

/// The stored form of plaintext rows: the records of [`is_sealed_kind`] rows sealed under the
/// customer's data key (needed only if there is one to seal), the customer row as it is.
pub fn seal(
    customer: Uuid,
    rows: Vec<ProjectionRow>,
    key: Option<&DataKey>,
) -> Result<Vec<ProjectionRow>, StoreError> {
    rows.into_iter()
        .map(|mut row| {
            if is_sealed_kind(&row.kind) {
                let key = key.ok_or_else(|| {
                    StoreError::Integrity(format!(
                        "no data key to seal the projection of {customer}"
                    ))
                })?;
                let sealed =
                    key.seal(row.record.as_bytes(), &aad(customer, &row.kind, &row.key))?;
                row.record = format!("{SEALED_PREFIX}{}", STANDARD_NO_PAD.encode(sealed));
            }
            Ok(row)
        })
        .collect()
}

/// The plaintext of stored rows. A sealed record opens only with the customer's key and in
/// the row it was sealed for; a plaintext record of a sealed kind is read only where the
/// customer row does not vouch for sealing (a row written before sealing).
pub fn open(
    customer: Uuid,
    stored: &[ProjectionRow],
    key: Option<&DataKey>,
) -> Result<Vec<ProjectionRow>, StoreError> {
    let vouched = stored
        .iter()
        .find(|r| r.kind == CUSTOMER)
        .map(|r| serde_json::from_str::<CustomerRow>(&r.record).map(|c| c.sealed))
        .transpose()?;
    stored
        .iter()
        .map(|row| {
            let Some(encoded) = row.record.strip_prefix(SEALED_PREFIX) else {
                if is_sealed_kind(&row.kind) && vouched != Some(false) {
                    return Err(StoreError::Integrity(format!(
                        "a {} row of customer {customer} is not sealed",
                        row.kind
                    )));
                }
                return Ok(row.clone());
            };
            let key = key.ok_or_else(|| {
                StoreError::Integrity(format!(
                    "customer {customer} has sealed rows but no data key"
                ))
            })?;
            let sealed = STANDARD_NO_PAD.decode(encoded).map_err(|_| {
                StoreError::Integrity(format!(
                    "a sealed {} row of {customer} is not base64",
                    row.kind
                ))
            })?;
            let plaintext = key.open(&sealed, &aad(customer, &row.kind, &row.key))?;
            let record = String::from_utf8(plaintext).map_err(|_| {
                StoreError::Integrity(format!(
                    "a sealed {} row of {customer} is not UTF-8",
                    row.kind
                ))
            })?;
            Ok(ProjectionRow {
                kind: row.kind.clone(),
                key: row.key.clone(),
                record,
            })
        })
        .collect()
}

/// The record stored rows hold: [`open`]ed, then read by [`state`].
pub fn open_state(
    customer: Uuid,
    stored: &[ProjectionRow],
    key: Option<&DataKey>,
) -> Result<CustomerState, StoreError> {
    state(&open(customer, stored, key)?)
}

/// The plaintext rows to write to go from the record `before` to `after`: each row whose
/// content differs, and the rows `after` no longer has. The same rows [`diff`] finds between
/// `rows(before)` and `rows(after)`, found by comparing the records instead of serialising
/// every row: only the rows that changed are serialised.
pub fn changes(
    before: &CustomerState,
    after: &CustomerState,
) -> Result<ProjectionDiff, StoreError> {
    // Named in full, so that a field added to the record cannot be missed here.
    let CustomerState {
        registered,
        registered_at,
        stream_version,
        fields,
        consents,
        proposals,
        erased,
        expired_consents,
        restricted,
        merged_into,
        absorbed,
        relationships,
    } = before;
    let mut out = ProjectionDiff::default();
    let customer_changed = *registered != after.registered
        || *registered_at != after.registered_at
        || *stream_version != after.stream_version
        || *erased != after.erased
        || *expired_consents != after.expired_consents
        || *merged_into != after.merged_into
        || *absorbed != after.absorbed;
    if customer_changed {
        out.upserts.push(customer_row(after)?);
    }
    match (restricted, &after.restricted) {
        (_, Some(now)) if restricted.as_ref() != Some(now) => {
            out.upserts.push(row(RESTRICTION, String::new(), now)?);
        }
        (Some(_), None) => out.deletes.push((RESTRICTION.to_owned(), String::new())),
        _ => {}
    }
    map_changes(FIELD, fields, &after.fields, &mut out)?;
    map_changes(CONSENT, consents, &after.consents, &mut out)?;
    map_changes(PROPOSAL, proposals, &after.proposals, &mut out)?;
    map_changes(RELATIONSHIP, relationships, &after.relationships, &mut out)?;
    Ok(out)
}

fn map_changes<K: Ord + std::fmt::Display, V: PartialEq + Serialize>(
    kind: &str,
    before: &BTreeMap<K, V>,
    after: &BTreeMap<K, V>,
    out: &mut ProjectionDiff,
) -> Result<(), StoreError> {
    for (key, value) in after {
        if before.get(key) != Some(value) {
            out.upserts.push(row(kind, key.to_string(), value)?);
        }
    }
    for key in before.keys().filter(|k| !after.contains_key(*k)) {
        out.deletes.push((kind.to_owned(), key.to_string()));
    }
    Ok(())
}

/// The plaintext rows to write to go from the stored rows of the record `before` (opened
/// with `key`) to `after` ([`changes`]), also rewriting every row still in the form of
/// before sealing, so that a customer once written is wholly sealed. Only rows in that old
/// form are opened here.
pub fn diff_stored(
    customer: Uuid,
    stored: &[ProjectionRow],
    key: Option<&DataKey>,
    before: &CustomerState,
    after: &CustomerState,
) -> Result<ProjectionDiff, StoreError> {
    if is_current_form(stored) {
        return changes(before, after);
    }
    let after = rows(after)?;
    let mut changes = diff(&open(customer, stored, key)?, &after);
    let old_form: std::collections::BTreeSet<(&str, &str)> = stored
        .iter()
        .filter(|r| is_sealed_kind(&r.kind) && !is_sealed(&r.record))
        .map(|r| (r.kind.as_str(), r.key.as_str()))
        .collect();
    for row in &after {
        let pending = changes
            .upserts
            .iter()
            .any(|u| u.kind == row.kind && u.key == row.key);
        if !pending && old_form.contains(&(row.kind.as_str(), row.key.as_str())) {
            changes.upserts.push(row.clone());
        }
    }
    Ok(changes)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn row(kind: &str, key: &str, record: &str) -> ProjectionRow {
        ProjectionRow {
            kind: kind.to_owned(),
            key: key.to_owned(),
            record: record.to_owned(),
        }
    }

    const CUSTOMER_ROW: &str =
        r#"{"registered":true,"registered_at":null,"stream_version":1,"sealed":true}"#;

    #[test]
    fn sealed_rows_open_only_in_their_own_row_with_their_customers_key() {
        let (c, d) = (Uuid::now_v7(), Uuid::now_v7());
        let key = DataKey::generate();
        let plain = vec![
            row(CUSTOMER, "", CUSTOMER_ROW),
            row(FIELD, "email", r#"{"v":"ada@example.org"}"#),
            row(FIELD, "phone", r#"{"v":"+44"}"#),
        ];
        let stored = seal(c, plain.clone(), Some(&key)).unwrap();
        assert_eq!(stored[0], plain[0], "the customer row stays clear");
        assert!(stored[1..].iter().all(|r| is_sealed(&r.record)));
        assert!(!stored.iter().any(|r| r.record.contains("ada")));
        assert!(is_current_form(&stored) && needs_key(&stored));
        assert_eq!(open(c, &stored, Some(&key)).unwrap(), plain);

        // Swapped between fields, moved to another customer, opened with another key.
        let mut swapped = stored.clone();
        swapped[1].record = stored[2].record.clone();
        assert!(open(c, &swapped, Some(&key)).is_err());
        assert!(open(d, &stored, Some(&key)).is_err());
        assert!(open(c, &stored, Some(&DataKey::generate())).is_err());
        assert!(open(c, &stored, None).is_err());
        // A plaintext row slipped in under a customer row that vouches for sealing.
        let mut downgraded = stored.clone();
        downgraded[1].record = plain[1].record.clone();
        assert!(open(c, &downgraded, Some(&key)).is_err());
    }

    /// The domain's sample streams, which hold every event type (`fold_version.rs`).
    fn sample_states() -> Vec<Vec<CustomerState>> {
        const STREAMS: &str = include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../domain/tests/fixtures/fold_streams.json"
        ));
        let all: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(STREAMS).unwrap();
        all.into_values()
            .map(|events| {
                let events: Vec<idledger_domain::event::EventEnvelope> =
                    serde_json::from_value(events).unwrap();
                let mut state = CustomerState::default();
                let mut states = vec![state.clone()];
                for event in &events {
                    state = idledger_domain::state::evolve(state, event);
                    states.push(state.clone());
                }
                states
            })
            .collect()
    }

    fn apply(before: &[ProjectionRow], change: &ProjectionDiff) -> Vec<ProjectionRow> {
        let mut rows: BTreeMap<(String, String), String> = before
            .iter()
            .map(|r| ((r.kind.clone(), r.key.clone()), r.record.clone()))
            .collect();
        for (kind, key) in &change.deletes {
            assert!(rows.remove(&(kind.clone(), key.clone())).is_some());
        }
        for r in &change.upserts {
            rows.insert((r.kind.clone(), r.key.clone()), r.record.clone());
        }
        rows.into_iter()
            .map(|((kind, key), record)| ProjectionRow { kind, key, record })
            .collect()
    }

    #[test]
    fn the_changes_between_two_records_are_the_rows_that_differ() {
        let mut compared = 0;
        for states in sample_states() {
            for (i, before) in states.iter().enumerate() {
                // Each step, and every jump of several steps (rows gone, rows back).
                for after in &states[i..] {
                    let (old, new) = (rows(before).unwrap(), rows(after).unwrap());
                    let change = changes(before, after).unwrap();
                    assert_eq!(apply(&old, &change), new);
                    let expected = diff(&old, &new);
                    assert_eq!(change.upserts.len(), expected.upserts.len());
                    assert_eq!(change.deletes.len(), expected.deletes.len());
                    compared += 1;
                }
            }
        }
        assert!(compared > 100, "only {compared} pairs compared");
    }

    #[test]
    fn rows_from_before_sealing_are_read_and_rewritten_sealed_by_the_next_write() {
        let c = Uuid::now_v7();
        let states = sample_states().into_iter().max_by_key(Vec::len).unwrap();
        let (before, after) = (&states[states.len() - 2], &states[states.len() - 1]);
        // The record as written before sealing: every row in the clear, and a customer row
        // that does not vouch for sealing.
        let old: Vec<ProjectionRow> = rows(before)
            .unwrap()
            .into_iter()
            .map(|mut r| {
                if r.kind == CUSTOMER {
                    r.record = r.record.replace(r#","sealed":true"#, "");
                }
                r
            })
            .collect();
        assert!(old.len() > 2);
        assert!(!is_current_form(&old) && !needs_key(&old));
        assert_eq!(open(c, &old, None).unwrap(), old);
        assert_eq!(state(&old).unwrap(), *before);
        // The next write rewrites every row, changed or not, and vouches for them.
        let change = diff_stored(c, &old, None, before, after).unwrap();
        let written: std::collections::BTreeSet<(&str, &str)> = change
            .upserts
            .iter()
            .map(|r| (r.kind.as_str(), r.key.as_str()))
            .collect();
        let new = rows(after).unwrap();
        assert!(
            new.iter()
                .all(|r| written.contains(&(r.kind.as_str(), r.key.as_str())))
        );
        assert_eq!(apply(&old, &change), new);
        // Once current, only what changed is written.
        let key = DataKey::generate();
        let stored = seal(c, new.clone(), Some(&key)).unwrap();
        assert!(is_current_form(&stored));
        let none = diff_stored(c, &stored, Some(&key), after, after).unwrap();
        assert!(none.upserts.is_empty() && none.deletes.is_empty());
    }
}
