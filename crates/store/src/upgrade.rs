//! One-time rewrites of stored data that a new version needs and SQL cannot do alone, because
//! they need the master key. A migration records what is pending in `pending_upgrades`; the
//! first process that opens the store with the key runs it ([`Ledger::run_pending_upgrades`])
//! and deletes its row. Each is idempotent, so two processes running one at once, or a crash
//! half-way, leave nothing wrong: the next start finishes it.

use idledger_domain::delivery::ConsumerId;
use idledger_domain::field::FieldPath;
use idledger_domain::hashing::{HashKey, ValueHash};
use idledger_domain::ids::CustomerId;
use idledger_domain::state::{ConsentState, CustomerState, consent_value};
use serde_json::Value;
use sha2::{Digest, Sha256};

use std::collections::BTreeMap;

use crate::error::StoreError;
use crate::ledger::Ledger;
use crate::model::ProjectionRow;
use crate::projection;
use crate::sql::sql;

/// Value hashes were plain SHA-256 (`sha256:<hex>`) before they were keyed per consumer.
const KEYED_VALUE_HASHES: &str = "keyed_value_hashes";
/// Customers recorded before the blind index existed have no rows in it.
const LOOKUP_INDEX: &str = "lookup_index";
/// Rows rewritten per statement batch.
const PAGE: i64 = 500;
/// Customers indexed per transaction.
const INDEX_PAGE: u32 = 200;

impl Ledger {
    /// Runs every pending upgrade; returns the names of those it ran.
    pub async fn run_pending_upgrades(&self) -> Result<Vec<String>, StoreError> {
        let db = self.store().db();
        let pending: Vec<String> = sql("SELECT name FROM pending_upgrades ORDER BY name")
            .fetch_all(db)
            .await?
            .iter()
            .map(|r| r.try_get("name"))
            .collect::<Result<_, _>>()?;
        for name in &pending {
            if name == KEYED_VALUE_HASHES {
                self.key_value_hashes().await?;
            } else if name == LOOKUP_INDEX {
                self.fill_lookup_index().await?;
            } else {
                return Err(StoreError::Integrity(format!(
                    "the store asks for an upgrade this version does not know: {name}"
                )));
            }
            sql("DELETE FROM pending_upgrades WHERE name = $1")
                .bind(name.as_str())
                .execute(db)
                .await?;
            tracing::info!(upgrade = name.as_str(), "upgraded stored data");
        }
        Ok(pending)
    }

    /// Gives every customer the blind-index rows of their record, a page of customers per
    /// transaction. Each page's records are read inside a transaction that holds off appends,
    /// so an append cannot change a record between its read and its rows being written (an
    /// append that changes identifiers writes its own rows, and commits before or after).
    async fn fill_lookup_index(&self) -> Result<(), StoreError> {
        let db = self.store().db();
        let mut cursor: Option<uuid::Uuid> = None;
        loop {
            let mut q = sql("SELECT DISTINCT customer_id FROM projections");
            if let Some(after) = cursor {
                q.push(" WHERE customer_id > ").push_bind(after);
            }
            q.push(" ORDER BY customer_id LIMIT ").push_bind(INDEX_PAGE);
            let customers: Vec<uuid::Uuid> = q
                .fetch_all(db)
                .await?
                .iter()
                .map(|r| r.try_get("customer_id"))
                .collect::<Result<_, _>>()?;
            let Some(last) = customers.last() else {
                return Ok(());
            };
            cursor = Some(*last);
            let mut tx = db.begin_exclusive().await?;
            let mut q =
                sql("SELECT customer_id, kind, key, record FROM projections WHERE customer_id");
            q.push_in(tx.engine(), customers.iter().copied())
                .push(" ORDER BY customer_id, kind, key");
            let mut rows: BTreeMap<uuid::Uuid, Vec<ProjectionRow>> = BTreeMap::new();
            for r in q.fetch_all(&mut tx).await? {
                rows.entry(r.try_get("customer_id")?)
                    .or_default()
                    .push(ProjectionRow {
                        kind: r.try_get("kind")?,
                        key: r.try_get("key")?,
                        record: r.try_get("record")?,
                    });
            }
            for (customer, stored) in rows {
                let key = if projection::needs_key(&stored) {
                    self.data_key(customer).await?
                } else {
                    None
                };
                let state = projection::open_state(customer, &stored, key.as_ref())?;
                crate::log::replace_lookup_rows(&mut tx, customer, &self.lookup_digests(&state))
                    .await?;
            }
            tx.commit().await?;
        }
    }

    /// Rewrites every unkeyed value hash under the key of the consumer it concerns. A consumer
    /// state's hash that matches the record's current value becomes that value's keyed hash
    /// (so the consumer stays in sync); any other unkeyed hash becomes a keyed digest of
    /// itself, which still differs from every value's hash (so a divergence stays one), and
    /// no longer reveals the value to a dictionary.
    async fn key_value_hashes(&self) -> Result<(), StoreError> {
        let db = self.store().db();
        loop {
            let rows = sql(
                "SELECT consumer_id, customer_id, field, value_hash FROM consumer_state \
                 WHERE value_hash LIKE 'sha256:%' ORDER BY consumer_id, customer_id, field LIMIT $1",
            )
            .bind(PAGE)
            .fetch_all(db)
            .await?;
            if rows.is_empty() {
                break;
            }
            for row in rows {
                let consumer: String = row.try_get("consumer_id")?;
                let customer: uuid::Uuid = row.try_get("customer_id")?;
                let field: String = row.try_get("field")?;
                let old: String = row.try_get("value_hash")?;
                let key = self.hash_key(&consumer_id(&consumer)?);
                let state = match CustomerId::from_uuid(customer) {
                    Ok(id) => self.state(id).await?,
                    Err(_) => None,
                };
                let new = rekeyed_state_hash(&key, state.as_ref(), &field, &old);
                sql(
                    "UPDATE consumer_state SET value_hash = $1 \
                     WHERE consumer_id = $2 AND customer_id = $3 AND field = $4 AND value_hash = $5",
                )
                .bind(new.as_str())
                .bind(consumer.as_str())
                .bind(customer)
                .bind(field.as_str())
                .bind(old.as_str())
                .execute(db)
                .await?;
            }
        }
        self.rekey_details(
            "SELECT exception_id AS id, consumer_id, detail FROM sync_exceptions \
             WHERE detail LIKE '%\"sha256:%' ORDER BY exception_id LIMIT $1",
            "UPDATE sync_exceptions SET detail = $1 WHERE exception_id = $2",
        )
        .await?;
        // Findings: keyed by (run_id, seq); rewritten one run at a time.
        loop {
            let rows = sql(
                "SELECT run_id, seq, consumer_id, detail FROM reconcile_findings \
                 WHERE detail LIKE '%\"sha256:%' ORDER BY run_id, seq LIMIT $1",
            )
            .bind(PAGE)
            .fetch_all(db)
            .await?;
            if rows.is_empty() {
                break;
            }
            for row in rows {
                let run: uuid::Uuid = row.try_get("run_id")?;
                let seq: i64 = row.try_get("seq")?;
                let consumer: String = row.try_get("consumer_id")?;
                let detail: String = row.try_get("detail")?;
                let key = self.hash_key(&consumer_id(&consumer)?);
                sql("UPDATE reconcile_findings SET detail = $1 WHERE run_id = $2 AND seq = $3")
                    .bind(rekeyed_json(&detail, &key)?)
                    .bind(run)
                    .bind(seq)
                    .execute(db)
                    .await?;
            }
        }
        // Reports: each consumer's section under that consumer's key.
        let runs = sql("SELECT run_id, report FROM reconcile_runs WHERE report LIKE '%\"sha256:%'")
            .fetch_all(db)
            .await?;
        for row in runs {
            let run: uuid::Uuid = row.try_get("run_id")?;
            let mut report: Value = serde_json::from_str(&row.try_get::<String>("report")?)?;
            if let Some(sections) = report.get_mut("consumers").and_then(Value::as_array_mut) {
                for section in sections {
                    let consumer = section
                        .get("consumer_id")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned();
                    let key = self.hash_key(&consumer_id(&consumer)?);
                    rekey_value(section, &key);
                }
            }
            sql("UPDATE reconcile_runs SET report = $1 WHERE run_id = $2")
                .bind(serde_json::to_string(&report)?)
                .bind(run)
                .execute(db)
                .await?;
        }
        Ok(())
    }

    /// Rewrites the unkeyed hashes in a JSON `detail` column of rows keyed by a UUID `id`.
    async fn rekey_details(&self, select: &str, update: &str) -> Result<(), StoreError> {
        let db = self.store().db();
        loop {
            let rows = sql(select).bind(PAGE).fetch_all(db).await?;
            if rows.is_empty() {
                return Ok(());
            }
            for row in rows {
                let id: uuid::Uuid = row.try_get("id")?;
                let consumer: String = row.try_get("consumer_id")?;
                let detail: String = row.try_get("detail")?;
                let key = self.hash_key(&consumer_id(&consumer)?);
                sql(update)
                    .bind(rekeyed_json(&detail, &key)?)
                    .bind(id)
                    .execute(db)
                    .await?;
            }
        }
    }
}

/// A stored consumer id (a proposal's exception names a source, spelt the same way).
fn consumer_id(raw: &str) -> Result<ConsumerId, StoreError> {
    ConsumerId::parse(raw)
        .map_err(|e| StoreError::Integrity(format!("a stored consumer id does not parse: {e}")))
}

/// The keyed hash that replaces a consumer state's unkeyed `old` hash of `field`.
fn rekeyed_state_hash(
    key: &HashKey,
    state: Option<&CustomerState>,
    field: &str,
    old: &str,
) -> ValueHash {
    let current = state
        .zip(FieldPath::parse(field).ok())
        .and_then(|(state, field)| {
            let unkeyed = match &field {
                FieldPath::Consent(purpose) => state.consents.get(purpose).map(|c| {
                    plain(&Value::String(
                        consent_value(c.state == ConsentState::Granted).to_owned(),
                    ))
                }),
                _ => state
                    .field(&field)
                    .and_then(|r| r.value.as_ref())
                    .map(idledger_domain::FieldValue::fingerprint),
            }?;
            let keyed = state.held(&field, key)?.value_hash?;
            (unkeyed == old).then_some(keyed)
        });
    match current.map(|h| ValueHash::parse(&h)) {
        Some(Ok(hash)) => hash,
        _ => key.bytes(old.as_bytes()),
    }
}

/// `sha256:<hex>` of a value's JSON form: the unkeyed hash of old.
fn plain(value: &Value) -> String {
    format!(
        "sha256:{}",
        hex::encode(Sha256::digest(value.to_string().as_bytes()))
    )
}

/// A JSON column's text with its unkeyed hashes rewritten under `key`.
fn rekeyed_json(detail: &str, key: &HashKey) -> Result<String, StoreError> {
    let mut value: Value = serde_json::from_str(detail)?;
    rekey_value(&mut value, key);
    Ok(serde_json::to_string(&value)?)
}

/// Replaces every unkeyed hash in `value` with a keyed digest of it under `key`: equal hashes
/// stay equal, and none is reversible.
fn rekey_value(value: &mut Value, key: &HashKey) {
    match value {
        Value::String(s) if ValueHash::is_legacy(s) => {
            *s = key.bytes(s.as_bytes()).to_string();
        }
        Value::Array(items) => items.iter_mut().for_each(|v| rekey_value(v, key)),
        Value::Object(map) => map.values_mut().for_each(|v| rekey_value(v, key)),
        _ => {}
    }
}
