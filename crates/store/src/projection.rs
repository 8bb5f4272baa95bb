//! The per-customer projection: the domain state split into rows (the customer, each field,
//! each consent, each open proposal). Written in the append transaction, read back to decide
//! the next command, and rebuilt from the log to prove it equals the live one.

use std::collections::BTreeMap;

use idledger_domain::state::{
    ConsentRecord, CustomerState, Erasure, FieldRecord, Proposal, Restriction,
};
use serde::{Deserialize, Serialize};

use crate::error::StoreError;
use crate::model::{ProjectionDiff, ProjectionRow};

pub const CUSTOMER: &str = "customer";
pub const FIELD: &str = "field";
pub const CONSENT: &str = "consent";
pub const PROPOSAL: &str = "proposal";

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
    /// Likewise left out unless set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    restricted: Option<Restriction>,
}

/// Every row of a customer's projection, sorted by (kind, key).
pub fn rows(state: &CustomerState) -> Result<Vec<ProjectionRow>, StoreError> {
    let mut rows =
        Vec::with_capacity(1 + state.fields.len() + state.consents.len() + state.proposals.len());
    let customer = CustomerRow {
        registered: state.registered,
        registered_at: state.registered_at,
        stream_version: state.stream_version,
        erased: state.erased.clone(),
        expired_consents: state.expired_consents.clone(),
        restricted: state.restricted.clone(),
    };
    rows.push(row(CUSTOMER, String::new(), &customer)?);
    for (path, rec) in &state.fields {
        rows.push(row(FIELD, path.to_string(), rec)?);
    }
    for (purpose, rec) in &state.consents {
        rows.push(row(CONSENT, purpose.to_string(), rec)?);
    }
    for (id, p) in &state.proposals {
        rows.push(row(PROPOSAL, id.to_string(), p)?);
    }
    rows.sort();
    Ok(rows)
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

/// The domain state stored in a customer's rows.
pub fn state(rows: &[ProjectionRow]) -> Result<CustomerState, StoreError> {
    let mut state = CustomerState::default();
    for r in rows {
        match r.kind.as_str() {
            CUSTOMER => {
                let c: CustomerRow = serde_json::from_str(&r.record)?;
                state.registered = c.registered;
                state.registered_at = c.registered_at;
                state.stream_version = c.stream_version;
                state.erased = c.erased;
                state.expired_consents = c.expired_consents;
                state.restricted = c.restricted;
            }
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
            PROPOSAL => {
                let p: Proposal = serde_json::from_str(&r.record)?;
                let id = idledger_domain::ids::ProposalId::parse(&r.key)
                    .map_err(|e| StoreError::Integrity(format!("projection row: {e}")))?;
                state.proposals.insert(id, p);
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
