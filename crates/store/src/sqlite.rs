//! SQLite backend: the embedded default, one file, no server.
//!
//! Ordering: SQLite admits one writer at a time; every append transaction starts with
//! `BEGIN IMMEDIATE` (taking the write lock up front) and assigns `global_position = max + 1`,
//! so positions are gap-free and commit-ordered. WAL mode lets readers run alongside the
//! writer; `synchronous = FULL` makes a commit durable before the command is acknowledged.

use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row, Sqlite, Transaction};
use uuid::Uuid;

use crate::backend::{Backend, to_i64, to_u64, token_from_parts};
use crate::chain::{GENESIS, chained_rows};
use crate::error::StoreError;
use crate::model::{AppendOutcome, AppendRequest, ProjectionRow, RawEvent};
use crate::tokens::TokenRecord;

const EVENT_COLUMNS: &str = "global_position, event_id, customer_id, stream_version, event_type, schema_version, field, recorded_at, payload, hash";

#[derive(Debug, Clone)]
pub struct SqliteBackend {
    pool: SqlitePool,
}

impl SqliteBackend {
    /// Opens (creating if missing) the database file at `path`.
    pub async fn open(path: &std::path::Path) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            // Deleted rows (an erased customer's projection and data key) are overwritten
            // rather than left readable in free pages.
            .pragma("secure_delete", "on")
            .busy_timeout(std::time::Duration::from_secs(30));
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .acquire_timeout(std::time::Duration::from_secs(30))
            .connect_with(options)
            .await?;
        Ok(Self { pool })
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

fn raw_event(row: &SqliteRow) -> Result<RawEvent, StoreError> {
    Ok(RawEvent {
        global_position: to_u64(row.try_get("global_position")?),
        event_id: row.try_get("event_id")?,
        customer_id: row.try_get("customer_id")?,
        stream_version: to_u64(row.try_get("stream_version")?),
        event_type: row.try_get("event_type")?,
        schema_version: u16::try_from(row.try_get::<i32, _>("schema_version")?).unwrap_or(u16::MAX),
        field: row.try_get("field")?,
        recorded_at_micros: row.try_get("recorded_at")?,
        payload: row.try_get("payload")?,
        hash: row.try_get("hash")?,
    })
}

async fn append_one(
    tx: &mut Transaction<'static, Sqlite>,
    req: &AppendRequest,
    position: u64,
) -> Result<AppendOutcome, StoreError> {
    if let Some(idem) = &req.idempotency {
        let stored = sqlx::query(
            "SELECT request_hash, result FROM idempotency WHERE source = ?1 AND idempotency_key = ?2",
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
    let head = sqlx::query("SELECT stream_version, hash FROM events WHERE customer_id = ?1 ORDER BY stream_version DESC LIMIT 1")
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
        sqlx::query("INSERT INTO data_keys (customer_id, wrapped_key) VALUES (?1, ?2)")
            .bind(req.customer_id)
            .bind(wrapped)
            .execute(&mut **tx)
            .await?;
    }
    let rows = chained_rows(req, position, &prev);
    let positions: Vec<u64> = rows.iter().map(|r| r.global_position).collect();
    if !rows.is_empty() {
        let mut insert = QueryBuilder::<Sqlite>::new("INSERT INTO events (");
        insert.push(EVENT_COLUMNS).push(") ");
        insert.push_values(&rows, |mut b, r| {
            b.push_bind(to_i64(r.global_position))
                .push_bind(r.event_id)
                .push_bind(r.customer_id)
                .push_bind(to_i64(r.stream_version))
                .push_bind(r.event_type.clone())
                .push_bind(i32::from(r.schema_version))
                .push_bind(r.field.clone())
                .push_bind(r.recorded_at_micros)
                .push_bind(r.payload.clone())
                .push_bind(r.hash.clone());
        });
        insert.build().execute(&mut **tx).await?;
    }
    if !req.projection.upserts.is_empty() {
        let mut upsert = QueryBuilder::<Sqlite>::new(
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
        sqlx::query("DELETE FROM projections WHERE customer_id = ?1 AND kind = ?2 AND key = ?3")
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
        sqlx::query("DELETE FROM data_keys WHERE customer_id = ?1")
            .bind(req.customer_id)
            .execute(&mut **tx)
            .await?;
        sqlx::query("DELETE FROM idempotency WHERE customer_id = ?1")
            .bind(req.customer_id)
            .execute(&mut **tx)
            .await?;
        // What consumers acknowledged holding: value hashes are digests of personal data.
        // The handoff log stays (it records disclosures, without values).
        sqlx::query("DELETE FROM consumer_state WHERE customer_id = ?1")
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
             resolved_at = CASE WHEN status = 'open' THEN ?2 ELSE resolved_at END, \
             status = CASE WHEN status = 'open' THEN 'resolved' ELSE status END \
             WHERE customer_id = ?1",
        )
        .bind(req.customer_id)
        .bind(crate::model::micros(chrono::Utc::now()))
        .execute(&mut **tx)
        .await?;
        sqlx::query("DELETE FROM reconcile_findings WHERE customer_id = ?1")
            .bind(req.customer_id.to_string())
            .execute(&mut **tx)
            .await?;
        sqlx::query("DELETE FROM snapshot_rows WHERE customer_id = ?1")
            .bind(req.customer_id)
            .execute(&mut **tx)
            .await?;
    }
    if let Some(idem) = &req.idempotency {
        sqlx::query("INSERT INTO idempotency (source, idempotency_key, customer_id, request_hash, result) VALUES (?1, ?2, ?3, ?4, ?5)")
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

#[async_trait]
impl Backend for SqliteBackend {
    fn name(&self) -> &'static str {
        "sqlite"
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        sqlx::migrate!("../../migrations/sqlite")
            .run(&self.pool)
            .await?;
        Ok(())
    }

    async fn write_batch(
        &self,
        batch: &[AppendRequest],
    ) -> Result<Vec<Result<AppendOutcome, StoreError>>, StoreError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
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

    async fn idempotency(
        &self,
        source: &str,
        key: &str,
    ) -> Result<Option<(Vec<u8>, String)>, StoreError> {
        let row = sqlx::query("SELECT request_hash, result FROM idempotency WHERE source = ?1 AND idempotency_key = ?2")
            .bind(source)
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| Ok((r.try_get("request_hash")?, r.try_get("result")?)))
            .transpose()
    }

    async fn data_key(&self, customer: Uuid) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT wrapped_key FROM data_keys WHERE customer_id = ?1")
                .bind(customer)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    async fn data_keys(&self, customers: &[Uuid]) -> Result<Vec<(Uuid, Vec<u8>)>, StoreError> {
        if customers.is_empty() {
            return Ok(Vec::new());
        }
        let mut q = QueryBuilder::<Sqlite>::new(
            "SELECT customer_id, wrapped_key FROM data_keys WHERE customer_id IN (",
        );
        let mut list = q.separated(", ");
        for c in customers {
            list.push_bind(*c);
        }
        list.push_unseparated(")");
        let rows = q.build().fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| Ok((r.try_get("customer_id")?, r.try_get("wrapped_key")?)))
            .collect()
    }

    async fn projection_rows(&self, customer: Uuid) -> Result<Vec<ProjectionRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT kind, key, record FROM projections WHERE customer_id = ?1 ORDER BY kind, key",
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
        let mut q = QueryBuilder::<Sqlite>::new("SELECT ");
        q.push(EVENT_COLUMNS)
            .push(" FROM events WHERE customer_id = ")
            .push_bind(customer);
        if let Some(field) = field {
            q.push(" AND field = ").push_bind(field.to_owned());
        }
        if let Some(until) = until_micros {
            q.push(" AND recorded_at <= ").push_bind(until);
        }
        q.push(" ORDER BY stream_version");
        let rows = q.build().fetch_all(&self.pool).await?;
        rows.iter().map(raw_event).collect()
    }

    async fn read_all(&self, after: u64, limit: u32) -> Result<Vec<RawEvent>, StoreError> {
        let mut q = QueryBuilder::<Sqlite>::new("SELECT ");
        q.push(EVENT_COLUMNS)
            .push(" FROM events WHERE global_position > ")
            .push_bind(to_i64(after))
            .push(" ORDER BY global_position LIMIT ")
            .push_bind(i64::from(limit));
        let rows = q.build().fetch_all(&self.pool).await?;
        rows.iter().map(raw_event).collect()
    }

    async fn erasures(&self, customers: &[Uuid]) -> Result<Vec<RawEvent>, StoreError> {
        if customers.is_empty() {
            return Ok(Vec::new());
        }
        let mut q = QueryBuilder::<Sqlite>::new("SELECT ");
        // The literal type (not a bind) lets SQLite use the partial index on erasures.
        q.push(EVENT_COLUMNS)
            .push(" FROM events WHERE event_type = 'customer_erased' AND customer_id IN (");
        let mut list = q.separated(", ");
        for c in customers {
            list.push_bind(*c);
        }
        list.push_unseparated(")");
        let rows = q.build().fetch_all(&self.pool).await?;
        rows.iter().map(raw_event).collect()
    }

    async fn projection_page(
        &self,
        after: Option<Uuid>,
        customers: u32,
    ) -> Result<Vec<(Uuid, ProjectionRow)>, StoreError> {
        // Two statements rather than `?1 IS NULL OR customer_id > ?1`, which no index can
        // serve: that made every page a scan of the whole table.
        let rows = match after {
            None => sqlx::query(
                "SELECT customer_id, kind, key, record FROM projections WHERE customer_id IN \
                 (SELECT DISTINCT customer_id FROM projections ORDER BY customer_id LIMIT ?1) \
                 ORDER BY customer_id, kind, key",
            )
            .bind(i64::from(customers)),
            Some(after) => sqlx::query(
                "SELECT customer_id, kind, key, record FROM projections WHERE customer_id > ?1 \
                 AND customer_id IN (SELECT DISTINCT customer_id FROM projections \
                 WHERE customer_id > ?1 ORDER BY customer_id LIMIT ?2) \
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
        // The write lock keeps appends out while the projection is replaced.
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let head: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(global_position), 0) FROM events")
            .fetch_one(&mut *tx)
            .await?;
        if to_u64(head) != expected_head {
            return Ok(false);
        }
        for customer in customers {
            sqlx::query("DELETE FROM projections WHERE customer_id = ?1")
                .bind(customer)
                .execute(&mut *tx)
                .await?;
        }
        for chunk in rows.chunks(2000) {
            let mut q = QueryBuilder::<Sqlite>::new(
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
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
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
             FROM api_tokens WHERE token_hash = ?1",
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
            "UPDATE api_tokens SET revoked_at = ?1 WHERE token_id = ?2 AND revoked_at IS NULL",
        )
        .bind(at)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }
}

fn token_row(row: &SqliteRow) -> Result<TokenRecord, StoreError> {
    token_from_parts(
        row.try_get("token_id")?,
        row.try_get::<&str, _>("role")?,
        row.try_get("subject")?,
        row.try_get("label")?,
        row.try_get("created_at")?,
        row.try_get("revoked_at")?,
    )
}
