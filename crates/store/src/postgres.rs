//! PostgreSQL backend.
//!
//! Ordering: every append transaction first takes one transaction-scoped advisory lock and
//! assigns `global_position = max + 1`. The lock is released only after the commit is visible,
//! so positions become visible strictly in order and a rolled-back transaction leaves no hole:
//! a reader never skips an event that commits later with a lower position.

use std::collections::{BTreeMap, HashMap, HashSet};

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::{Postgres, QueryBuilder, Row, Transaction};
use uuid::Uuid;

use crate::backend::{Backend, to_i64, to_u64, token_from_parts};
use crate::chain::{GENESIS, chained_rows};
use crate::error::StoreError;
use crate::model::{
    AppendOutcome, AppendRequest, IdempotencyRecord, ProjectionRow, RawEvent, from_micros, micros,
};
use crate::tokens::TokenRecord;

/// The advisory lock that serialises appends ("idledger" in ASCII).
pub const LOG_LOCK: i64 = 0x6964_6c65_6467_6572;

const EVENT_COLUMNS: &str = "global_position, event_id, customer_id, stream_version, event_type, schema_version, field, recorded_at, payload, hash";

#[derive(Debug, Clone)]
pub struct PgBackend {
    pool: PgPool,
}

impl PgBackend {
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        let options: PgConnectOptions = url
            .parse()
            .map_err(|e| StoreError::Config(format!("bad PostgreSQL URL: {e}")))?;
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(std::time::Duration::from_secs(10))
            .connect_with(options)
            .await?;
        Ok(Self { pool })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The batch in one transaction of a fixed number of statements, whatever its size: the
    /// idempotency records and stream heads of every append read in two queries, the checks
    /// done here, then one multi-row statement per table. Every append in a batch was decided
    /// on state committed before this transaction, so the outcomes are those the per-append
    /// path gives (an append sees the heads left by the batch's earlier appends).
    async fn write_bulk(
        &self,
        batch: &[AppendRequest],
    ) -> Result<Vec<Result<AppendOutcome, StoreError>>, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(LOG_LOCK)
            .execute(&mut *tx)
            .await?;
        let head: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(global_position), 0) FROM events")
            .fetch_one(&mut *tx)
            .await?;
        let mut position = to_u64(head);

        let (sources, keys): (Vec<String>, Vec<String>) = batch
            .iter()
            .filter_map(|r| r.idempotency.as_ref())
            .map(|i| (i.source.clone(), i.key.clone()))
            .unzip();
        let mut used: HashMap<(String, String), (Vec<u8>, String)> = HashMap::new();
        if !sources.is_empty() {
            let rows = sqlx::query(
                "SELECT i.source, i.idempotency_key, i.request_hash, i.result FROM idempotency i \
                 JOIN UNNEST($1::text[], $2::text[]) AS k(source, key) \
                 ON i.source = k.source AND i.idempotency_key = k.key",
            )
            .bind(&sources)
            .bind(&keys)
            .fetch_all(&mut *tx)
            .await?;
            for row in rows {
                used.insert(
                    (row.try_get("source")?, row.try_get("idempotency_key")?),
                    (row.try_get("request_hash")?, row.try_get("result")?),
                );
            }
        }
        let mut customers: Vec<Uuid> = batch.iter().map(|r| r.customer_id).collect();
        customers.sort_unstable();
        customers.dedup();
        let mut heads: HashMap<Uuid, (u64, Vec<u8>)> = HashMap::new();
        for row in sqlx::query(
            "SELECT c.id AS customer_id, e.stream_version, e.hash FROM UNNEST($1::uuid[]) AS c(id) \
             CROSS JOIN LATERAL (SELECT stream_version, hash FROM events \
             WHERE customer_id = c.id ORDER BY stream_version DESC LIMIT 1) e",
        )
        .bind(&customers)
        .fetch_all(&mut *tx)
        .await?
        {
            heads.insert(
                row.try_get("customer_id")?,
                (to_u64(row.try_get("stream_version")?), row.try_get("hash")?),
            );
        }
        let new_keys: Vec<Uuid> = batch
            .iter()
            .filter(|r| r.new_data_key.is_some())
            .map(|r| r.customer_id)
            .collect();
        let keyed: HashSet<Uuid> = if new_keys.is_empty() {
            HashSet::new()
        } else {
            sqlx::query_scalar("SELECT customer_id FROM data_keys WHERE customer_id = ANY($1)")
                .bind(&new_keys)
                .fetch_all(&mut *tx)
                .await?
                .into_iter()
                .collect()
        };

        let mut write = BulkWrite::default();
        let mut results = Vec::with_capacity(batch.len());
        for req in batch {
            if let Some(idem) = &req.idempotency
                && let Some((request_hash, result)) =
                    used.get(&(idem.source.clone(), idem.key.clone()))
            {
                results.push(Ok(AppendOutcome::Duplicate {
                    request_hash: request_hash.clone(),
                    result: result.clone(),
                }));
                continue;
            }
            let (version, prev) = heads
                .get(&req.customer_id)
                .cloned()
                .unwrap_or_else(|| (0, GENESIS.to_vec()));
            // Another writer created the customer's key since it was read: decide again.
            let key_taken = req.new_data_key.is_some()
                && (keyed.contains(&req.customer_id)
                    || write.key_customers.contains(&req.customer_id));
            if version != req.expected_version || key_taken {
                results.push(Ok(AppendOutcome::VersionConflict));
                continue;
            }
            let rows = chained_rows(req, position, &prev);
            if let Some(last) = rows.last() {
                heads.insert(req.customer_id, (last.stream_version, last.hash.clone()));
            }
            position += rows.len() as u64;
            let positions = rows.iter().map(|r| r.global_position).collect();
            if let Some(idem) = &req.idempotency {
                used.insert(
                    (idem.source.clone(), idem.key.clone()),
                    (idem.request_hash.clone(), idem.result.clone()),
                );
            }
            write.add(req, rows);
            results.push(Ok(AppendOutcome::Appended { positions }));
        }
        write.execute(&mut tx).await?;
        tx.commit().await?;
        Ok(results)
    }

    /// The batch append by append, a savepoint each, so that a failing append does not fail
    /// the others.
    async fn write_each(
        &self,
        batch: &[AppendRequest],
    ) -> Result<Vec<Result<AppendOutcome, StoreError>>, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(LOG_LOCK)
            .execute(&mut *tx)
            .await?;
        let head: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(global_position), 0) FROM events")
            .fetch_one(&mut *tx)
            .await?;
        let mut position = to_u64(head);
        let mut results = Vec::with_capacity(batch.len());
        for req in batch {
            // A savepoint per command: one failing command must not fail the others.
            sqlx::query("SAVEPOINT append").execute(&mut *tx).await?;
            let outcome = append_one(&mut tx, req, position).await;
            let keep = matches!(outcome, Ok(AppendOutcome::Appended { .. }));
            if keep {
                sqlx::query("RELEASE SAVEPOINT append")
                    .execute(&mut *tx)
                    .await?;
            } else {
                sqlx::query("ROLLBACK TO SAVEPOINT append")
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("RELEASE SAVEPOINT append")
                    .execute(&mut *tx)
                    .await?;
            }
            if let Ok(AppendOutcome::Appended { positions }) = &outcome {
                position += positions.len() as u64;
            }
            results.push(match outcome {
                Err(e) if e.is_unique_violation() => Ok(AppendOutcome::VersionConflict),
                other => other,
            });
        }
        tx.commit().await?;
        Ok(results)
    }
}

fn raw_event(row: &PgRow) -> Result<RawEvent, StoreError> {
    let recorded_at: chrono::DateTime<chrono::Utc> = row.try_get("recorded_at")?;
    Ok(RawEvent {
        global_position: to_u64(row.try_get("global_position")?),
        event_id: row.try_get("event_id")?,
        customer_id: row.try_get("customer_id")?,
        stream_version: to_u64(row.try_get("stream_version")?),
        event_type: row.try_get("event_type")?,
        schema_version: u16::try_from(row.try_get::<i32, _>("schema_version")?).unwrap_or(u16::MAX),
        field: row.try_get("field")?,
        recorded_at_micros: micros(recorded_at),
        payload: row.try_get("payload")?,
        hash: row.try_get("hash")?,
    })
}

async fn append_one(
    tx: &mut Transaction<'static, Postgres>,
    req: &AppendRequest,
    position: u64,
) -> Result<AppendOutcome, StoreError> {
    if let Some(idem) = &req.idempotency {
        let stored = sqlx::query(
            "SELECT request_hash, result FROM idempotency WHERE source = $1 AND idempotency_key = $2",
        )
        .bind(&idem.source)
        .bind(&idem.key)
        .fetch_optional(&mut **tx)
        .await?;
        if let Some(row) = stored {
            return Ok(AppendOutcome::Duplicate {
                request_hash: row.try_get("request_hash")?,
                result: row.try_get("result")?,
            });
        }
    }
    let head = sqlx::query("SELECT stream_version, hash FROM events WHERE customer_id = $1 ORDER BY stream_version DESC LIMIT 1")
        .bind(req.customer_id)
        .fetch_optional(&mut **tx)
        .await?;
    let (version, prev) = match head {
        Some(row) => (
            to_u64(row.try_get("stream_version")?),
            row.try_get::<Vec<u8>, _>("hash")?,
        ),
        None => (0, GENESIS.to_vec()),
    };
    if version != req.expected_version {
        return Ok(AppendOutcome::VersionConflict);
    }
    if let Some(wrapped) = &req.new_data_key {
        sqlx::query("INSERT INTO data_keys (customer_id, wrapped_key) VALUES ($1, $2)")
            .bind(req.customer_id)
            .bind(wrapped)
            .execute(&mut **tx)
            .await?;
    }
    let rows = chained_rows(req, position, &prev);
    let positions: Vec<u64> = rows.iter().map(|r| r.global_position).collect();
    if !rows.is_empty() {
        let mut insert = QueryBuilder::<Postgres>::new("INSERT INTO events (");
        insert.push(EVENT_COLUMNS).push(") ");
        insert.push_values(&rows, |mut b, r| {
            b.push_bind(to_i64(r.global_position))
                .push_bind(r.event_id)
                .push_bind(r.customer_id)
                .push_bind(to_i64(r.stream_version))
                .push_bind(r.event_type.clone())
                .push_bind(i32::from(r.schema_version))
                .push_bind(r.field.clone())
                .push_bind(from_micros(r.recorded_at_micros))
                .push_bind(r.payload.clone())
                .push_bind(r.hash.clone());
        });
        insert.build().execute(&mut **tx).await?;
    }
    if !req.projection.upserts.is_empty() {
        let mut upsert = QueryBuilder::<Postgres>::new(
            "INSERT INTO projections (customer_id, kind, key, record) ",
        );
        upsert.push_values(&req.projection.upserts, |mut b, r| {
            b.push_bind(req.customer_id)
                .push_bind(r.kind.clone())
                .push_bind(r.key.clone())
                .push_bind(r.record.clone());
        });
        upsert.push(" ON CONFLICT (customer_id, kind, key) DO UPDATE SET record = EXCLUDED.record");
        upsert.build().execute(&mut **tx).await?;
    }
    for (kind, key) in &req.projection.deletes {
        sqlx::query("DELETE FROM projections WHERE customer_id = $1 AND kind = $2 AND key = $3")
            .bind(req.customer_id)
            .bind(kind)
            .bind(key)
            .execute(&mut **tx)
            .await?;
    }
    if req.erase {
        // Crypto-shredding: without the key the customer's sealed events are noise. Their
        // idempotency records go too: a request hash is a digest of a command that carried
        // personal data; and so does what consumers acknowledged (below).
        sqlx::query("DELETE FROM data_keys WHERE customer_id = $1")
            .bind(req.customer_id)
            .execute(&mut **tx)
            .await?;
        sqlx::query("DELETE FROM idempotency WHERE customer_id = $1")
            .bind(req.customer_id)
            .execute(&mut **tx)
            .await?;
        // What consumers acknowledged holding: value hashes are digests of personal data.
        // The handoff log stays (it records disclosures, without values).
        sqlx::query("DELETE FROM consumer_state WHERE customer_id = $1")
            .bind(req.customer_id)
            .execute(&mut **tx)
            .await?;
        // Sync exceptions keep that they existed and how they ended, not their evidence (value
        // hashes); open ones close. Reconciliation findings and staged snapshot rows go.
        sqlx::query(
            "UPDATE sync_exceptions SET detail = '{}', last_action = NULL, \
             resolution = CASE WHEN status = 'open' THEN 'auto' ELSE resolution END, \
             resolved_by = CASE WHEN status = 'open' THEN 'idledger' ELSE resolved_by END, \
             resolution_note = CASE WHEN status = 'open' THEN 'the customer was erased' ELSE resolution_note END, \
             resolved_at = CASE WHEN status = 'open' THEN $2 ELSE resolved_at END, \
             status = CASE WHEN status = 'open' THEN 'resolved' ELSE status END \
             WHERE customer_id = $1",
        )
        .bind(req.customer_id)
        .bind(chrono::Utc::now())
        .execute(&mut **tx)
        .await?;
        sqlx::query("DELETE FROM reconcile_findings WHERE customer_id = $1")
            .bind(req.customer_id.to_string())
            .execute(&mut **tx)
            .await?;
        sqlx::query("DELETE FROM snapshot_rows WHERE customer_id = $1")
            .bind(req.customer_id)
            .execute(&mut **tx)
            .await?;
    }
    if let Some(idem) = &req.idempotency {
        sqlx::query("INSERT INTO idempotency (source, idempotency_key, customer_id, request_hash, result) VALUES ($1, $2, $3, $4, $5)")
            .bind(&idem.source)
            .bind(&idem.key)
            .bind(req.customer_id)
            .bind(&idem.request_hash)
            .bind(&idem.result)
            .execute(&mut **tx)
            .await?;
    }
    Ok(AppendOutcome::Appended { positions })
}

/// The rows of a batch's successful appends, written with one statement per table (arrays
/// bound as parameters: no limit on the number of rows, one plan).
#[derive(Debug, Default)]
struct BulkWrite {
    events: Vec<RawEvent>,
    key_customers: Vec<Uuid>,
    wrapped_keys: Vec<Vec<u8>>,
    /// The net projection change per row: `None` deletes it. Appends apply in batch order.
    projection: BTreeMap<(Uuid, String, String), Option<String>>,
    idempotency: Vec<(Uuid, IdempotencyRecord)>,
}

impl BulkWrite {
    fn add(&mut self, req: &AppendRequest, rows: Vec<RawEvent>) {
        self.events.extend(rows);
        if let Some(wrapped) = &req.new_data_key {
            self.key_customers.push(req.customer_id);
            self.wrapped_keys.push(wrapped.clone());
        }
        for r in &req.projection.upserts {
            self.projection.insert(
                (req.customer_id, r.kind.clone(), r.key.clone()),
                Some(r.record.clone()),
            );
        }
        for (kind, key) in &req.projection.deletes {
            self.projection
                .insert((req.customer_id, kind.clone(), key.clone()), None);
        }
        if let Some(idem) = &req.idempotency {
            self.idempotency.push((req.customer_id, idem.clone()));
        }
    }

    async fn execute(self, tx: &mut Transaction<'static, Postgres>) -> Result<(), StoreError> {
        if !self.key_customers.is_empty() {
            sqlx::query(
                "INSERT INTO data_keys (customer_id, wrapped_key) SELECT * FROM UNNEST($1::uuid[], $2::bytea[])",
            )
            .bind(&self.key_customers)
            .bind(&self.wrapped_keys)
            .execute(&mut **tx)
            .await?;
        }
        if !self.events.is_empty() {
            let e = &self.events;
            sqlx::query(
                "INSERT INTO events (global_position, event_id, customer_id, stream_version, \
                 event_type, schema_version, field, recorded_at, payload, hash) \
                 SELECT * FROM UNNEST($1::int8[], $2::uuid[], $3::uuid[], $4::int8[], $5::text[], \
                 $6::int4[], $7::text[], $8::timestamptz[], $9::bytea[], $10::bytea[])",
            )
            .bind(
                e.iter()
                    .map(|r| to_i64(r.global_position))
                    .collect::<Vec<_>>(),
            )
            .bind(e.iter().map(|r| r.event_id).collect::<Vec<_>>())
            .bind(e.iter().map(|r| r.customer_id).collect::<Vec<_>>())
            .bind(
                e.iter()
                    .map(|r| to_i64(r.stream_version))
                    .collect::<Vec<_>>(),
            )
            .bind(e.iter().map(|r| r.event_type.as_str()).collect::<Vec<_>>())
            .bind(
                e.iter()
                    .map(|r| i32::from(r.schema_version))
                    .collect::<Vec<_>>(),
            )
            .bind(e.iter().map(|r| r.field.as_deref()).collect::<Vec<_>>())
            .bind(
                e.iter()
                    .map(|r| from_micros(r.recorded_at_micros))
                    .collect::<Vec<_>>(),
            )
            .bind(e.iter().map(|r| r.payload.as_slice()).collect::<Vec<_>>())
            .bind(e.iter().map(|r| r.hash.as_slice()).collect::<Vec<_>>())
            .execute(&mut **tx)
            .await?;
        }
        let (upserts, deletes): (Vec<_>, Vec<_>) = self
            .projection
            .iter()
            .partition(|(_, record)| record.is_some());
        if !upserts.is_empty() {
            sqlx::query(
                "INSERT INTO projections (customer_id, kind, key, record) \
                 SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[]) \
                 ON CONFLICT (customer_id, kind, key) DO UPDATE SET record = EXCLUDED.record",
            )
            .bind(upserts.iter().map(|((c, _, _), _)| *c).collect::<Vec<_>>())
            .bind(
                upserts
                    .iter()
                    .map(|((_, k, _), _)| k.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(
                upserts
                    .iter()
                    .map(|((_, _, k), _)| k.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(
                upserts
                    .iter()
                    .map(|(_, r)| r.as_deref().unwrap_or_default())
                    .collect::<Vec<_>>(),
            )
            .execute(&mut **tx)
            .await?;
        }
        if !deletes.is_empty() {
            sqlx::query(
                "DELETE FROM projections p USING UNNEST($1::uuid[], $2::text[], $3::text[]) \
                 AS d(customer_id, kind, key) \
                 WHERE p.customer_id = d.customer_id AND p.kind = d.kind AND p.key = d.key",
            )
            .bind(deletes.iter().map(|((c, _, _), _)| *c).collect::<Vec<_>>())
            .bind(
                deletes
                    .iter()
                    .map(|((_, k, _), _)| k.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(
                deletes
                    .iter()
                    .map(|((_, _, k), _)| k.as_str())
                    .collect::<Vec<_>>(),
            )
            .execute(&mut **tx)
            .await?;
        }
        if !self.idempotency.is_empty() {
            let i = &self.idempotency;
            sqlx::query(
                "INSERT INTO idempotency (source, idempotency_key, customer_id, request_hash, result) \
                 SELECT * FROM UNNEST($1::text[], $2::text[], $3::uuid[], $4::bytea[], $5::text[])",
            )
            .bind(i.iter().map(|(_, r)| r.source.as_str()).collect::<Vec<_>>())
            .bind(i.iter().map(|(_, r)| r.key.as_str()).collect::<Vec<_>>())
            .bind(i.iter().map(|(c, _)| *c).collect::<Vec<_>>())
            .bind(i.iter().map(|(_, r)| r.request_hash.as_slice()).collect::<Vec<_>>())
            .bind(i.iter().map(|(_, r)| r.result.as_str()).collect::<Vec<_>>())
            .execute(&mut **tx)
            .await?;
        }
        Ok(())
    }
}

#[async_trait]
impl Backend for PgBackend {
    fn name(&self) -> &'static str {
        "postgres"
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        sqlx::migrate!("../../migrations/postgres")
            .run(&self.pool)
            .await?;
        Ok(())
    }

    async fn write_batch(
        &self,
        batch: &[AppendRequest],
    ) -> Result<Vec<Result<AppendOutcome, StoreError>>, StoreError> {
        // Erasures are rare and delete across tables: they take the per-append path.
        if batch.iter().any(|r| r.erase) {
            return self.write_each(batch).await;
        }
        match self.write_bulk(batch).await {
            Ok(results) => Ok(results),
            // Whatever failed (a unique violation, a trigger…) failed the whole transaction:
            // the per-append path, with a savepoint each, fails only the append concerned.
            Err(e) => {
                tracing::debug!(error = %e, "bulk append failed; retrying append by append");
                self.write_each(batch).await
            }
        }
    }

    async fn idempotency(
        &self,
        source: &str,
        key: &str,
    ) -> Result<Option<(Vec<u8>, String)>, StoreError> {
        let row = sqlx::query("SELECT request_hash, result FROM idempotency WHERE source = $1 AND idempotency_key = $2")
            .bind(source)
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| Ok((r.try_get("request_hash")?, r.try_get("result")?)))
            .transpose()
    }

    async fn data_key(&self, customer: Uuid) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT wrapped_key FROM data_keys WHERE customer_id = $1")
                .bind(customer)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    async fn data_keys(&self, customers: &[Uuid]) -> Result<Vec<(Uuid, Vec<u8>)>, StoreError> {
        let rows = sqlx::query(
            "SELECT customer_id, wrapped_key FROM data_keys WHERE customer_id = ANY($1)",
        )
        .bind(customers.to_vec())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("customer_id")?, r.try_get("wrapped_key")?)))
            .collect()
    }

    async fn projection_rows(&self, customer: Uuid) -> Result<Vec<ProjectionRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT kind, key, record FROM projections WHERE customer_id = $1 ORDER BY kind, key",
        )
        .bind(customer)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(ProjectionRow {
                    kind: r.try_get("kind")?,
                    key: r.try_get("key")?,
                    record: r.try_get("record")?,
                })
            })
            .collect()
    }

    async fn stream(
        &self,
        customer: Uuid,
        field: Option<&str>,
        until_micros: Option<i64>,
    ) -> Result<Vec<RawEvent>, StoreError> {
        let mut q = QueryBuilder::<Postgres>::new("SELECT ");
        q.push(EVENT_COLUMNS)
            .push(" FROM events WHERE customer_id = ")
            .push_bind(customer);
        if let Some(field) = field {
            q.push(" AND field = ").push_bind(field.to_owned());
        }
        if let Some(until) = until_micros {
            q.push(" AND recorded_at <= ").push_bind(from_micros(until));
        }
        q.push(" ORDER BY stream_version");
        let rows = q.build().fetch_all(&self.pool).await?;
        rows.iter().map(raw_event).collect()
    }

    async fn read_all(&self, after: u64, limit: u32) -> Result<Vec<RawEvent>, StoreError> {
        let mut q = QueryBuilder::<Postgres>::new("SELECT ");
        q.push(EVENT_COLUMNS)
            .push(" FROM events WHERE global_position > ")
            .push_bind(to_i64(after))
            .push(" ORDER BY global_position LIMIT ")
            .push_bind(i64::from(limit));
        let rows = q.build().fetch_all(&self.pool).await?;
        rows.iter().map(raw_event).collect()
    }

    async fn erasures(&self, customers: &[Uuid]) -> Result<Vec<RawEvent>, StoreError> {
        let mut q = QueryBuilder::<Postgres>::new("SELECT ");
        q.push(EVENT_COLUMNS)
            .push(" FROM events WHERE event_type = 'customer_erased' AND customer_id = ANY(")
            .push_bind(customers.to_vec())
            .push(")");
        let rows = q.build().fetch_all(&self.pool).await?;
        rows.iter().map(raw_event).collect()
    }

    async fn projection_page(
        &self,
        after: Option<Uuid>,
        customers: u32,
    ) -> Result<Vec<(Uuid, ProjectionRow)>, StoreError> {
        // Two statements rather than `$1 IS NULL OR customer_id > $1`, which no index can
        // serve: that made every page a scan of the whole table.
        let rows = match after {
            None => sqlx::query(
                "SELECT customer_id, kind, key, record FROM projections WHERE customer_id IN \
                 (SELECT DISTINCT customer_id FROM projections ORDER BY customer_id LIMIT $1) \
                 ORDER BY customer_id, kind, key",
            )
            .bind(i64::from(customers)),
            Some(after) => sqlx::query(
                "SELECT customer_id, kind, key, record FROM projections WHERE customer_id > $1 \
                 AND customer_id IN (SELECT DISTINCT customer_id FROM projections \
                 WHERE customer_id > $1 ORDER BY customer_id LIMIT $2) \
                 ORDER BY customer_id, kind, key",
            )
            .bind(after)
            .bind(i64::from(customers)),
        }
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("customer_id")?,
                    ProjectionRow {
                        kind: r.try_get("kind")?,
                        key: r.try_get("key")?,
                        record: r.try_get("record")?,
                    },
                ))
            })
            .collect()
    }

    async fn replace_projections(
        &self,
        customers: &[Uuid],
        rows: &[(Uuid, ProjectionRow)],
        expected_head: u64,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        // Writers must not interleave with a rebuild: hold the append lock throughout.
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(LOG_LOCK)
            .execute(&mut *tx)
            .await?;
        let head: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(global_position), 0) FROM events")
            .fetch_one(&mut *tx)
            .await?;
        if to_u64(head) != expected_head {
            return Ok(false);
        }
        for chunk in customers.chunks(5000) {
            sqlx::query("DELETE FROM projections WHERE customer_id = ANY($1)")
                .bind(chunk)
                .execute(&mut *tx)
                .await?;
        }
        for chunk in rows.chunks(5000) {
            let mut q = QueryBuilder::<Postgres>::new(
                "INSERT INTO projections (customer_id, kind, key, record) ",
            );
            q.push_values(chunk, |mut b, (customer, r)| {
                b.push_bind(*customer)
                    .push_bind(r.kind.clone())
                    .push_bind(r.key.clone())
                    .push_bind(r.record.clone());
            });
            q.build().execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    async fn head_position(&self) -> Result<u64, StoreError> {
        let head: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(global_position), 0) FROM events")
            .fetch_one(&self.pool)
            .await?;
        Ok(to_u64(head))
    }

    async fn insert_token(&self, token: &TokenRecord, hash: &[u8]) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO api_tokens (token_id, token_hash, role, subject, label, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(token.id)
        .bind(hash)
        .bind(token.role.as_str())
        .bind(token.subject.as_deref())
        .bind(&token.label)
        .bind(crate::model::micros(token.created_at))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn token_by_hash(&self, hash: &[u8]) -> Result<Option<TokenRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT token_id, role, subject, label, created_at, revoked_at \
             FROM api_tokens WHERE token_hash = $1",
        )
        .bind(hash)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| token_row(&r)).transpose()
    }

    async fn list_tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        sqlx::query(
            "SELECT token_id, role, subject, label, created_at, revoked_at \
             FROM api_tokens ORDER BY created_at, token_id",
        )
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(token_row)
        .collect()
    }

    async fn revoke_token(&self, id: Uuid, at: i64) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE api_tokens SET revoked_at = $1 WHERE token_id = $2 AND revoked_at IS NULL",
        )
        .bind(at)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }
}

fn token_row(row: &PgRow) -> Result<TokenRecord, StoreError> {
    token_from_parts(
        row.try_get("token_id")?,
        row.try_get::<&str, _>("role")?,
        row.try_get("subject")?,
        row.try_get("label")?,
        row.try_get("created_at")?,
        row.try_get("revoked_at")?,
    )
}
