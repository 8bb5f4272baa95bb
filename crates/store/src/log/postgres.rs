//! PostgreSQL's bulk append: a batch in one transaction of a fixed number of statements,
//! arrays bound as parameters. The checks are `bulk::decide`, shared with SQLite's.

use sqlx::postgres::PgPool;
use sqlx::{Postgres, Row, Transaction};
use uuid::Uuid;

use super::bulk::{BatchRead, BulkWrite, decide};
use crate::error::StoreError;
use crate::model::{AppendOutcome, AppendRequest, from_micros};

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or_default()
}

/// The batch in one transaction of a fixed number of statements, whatever its size, and
/// usually four round trips: `BEGIN` with the append lock; the log's head, the idempotency
/// records and stream heads of every append in one query; the checks done here; the rows in
/// one statement (see [`BulkWrite::execute`]); `COMMIT`. Every append in a batch was decided
/// on state committed before this transaction, so the outcomes are those the per-append
/// path gives (an append sees the heads left by the batch's earlier appends).
pub(super) async fn write_bulk(
    pool: &PgPool,
    batch: &[AppendRequest],
) -> Result<Vec<Result<AppendOutcome, StoreError>>, StoreError> {
    let mut tx = crate::sql::begin_appending(pool).await?;
    let (sources, keys): (Vec<&str>, Vec<&str>) = batch
        .iter()
        .filter_map(|r| r.idempotency.as_ref())
        .map(|i| (i.source.as_str(), i.key.as_str()))
        .unzip();
    let mut customers: Vec<Uuid> = batch.iter().map(|r| r.customer_id).collect();
    customers.sort_unstable();
    customers.dedup();
    let new_keys: Vec<Uuid> = batch
        .iter()
        .filter(|r| r.new_data_key.is_some())
        .map(|r| r.customer_id)
        .collect();
    // What the checks need, in one round trip after the lock: the log's head (part 0), the
    // idempotency records of the batch's keys (1), each customer's stream head (2), and which
    // of the customers given a new data key have one already (3). The idempotency and head
    // reads are one primary-key probe per key, whatever the statistics: a plain join's
    // generic plan, made while the tables were small (a new database), went on scanning them
    // whole as they grew — 1.8 ms a batch at 28,000 rows in the bench.
    let rows = sqlx::query(
        "SELECT 0 AS part, NULL::text AS source, NULL::text AS idempotency_key, \
         NULL::bytea AS request_hash, NULL::text AS result, NULL::uuid AS customer_id, \
         COALESCE(MAX(global_position), 0) AS version, NULL::bytea AS hash FROM events \
         UNION ALL \
         SELECT 1, k.source, k.key, i.request_hash, i.result, NULL, NULL, NULL \
         FROM UNNEST($1::text[], $2::text[]) AS k(source, key) \
         CROSS JOIN LATERAL (SELECT request_hash, result FROM idempotency \
         WHERE source = k.source AND idempotency_key = k.key LIMIT 1) i \
         UNION ALL \
         SELECT 2, NULL, NULL, NULL, NULL, c.id, e.stream_version, e.hash \
         FROM UNNEST($3::uuid[]) AS c(id) \
         CROSS JOIN LATERAL (SELECT stream_version, hash FROM events \
         WHERE customer_id = c.id ORDER BY stream_version DESC LIMIT 1) e \
         UNION ALL \
         SELECT 3, NULL, NULL, NULL, NULL, customer_id, NULL, NULL FROM data_keys \
         WHERE customer_id = ANY($4::uuid[])",
    )
    .bind(&sources)
    .bind(&keys)
    .bind(&customers)
    .bind(&new_keys)
    .fetch_all(&mut *tx)
    .await?;
    let mut read = BatchRead::default();
    for row in rows {
        match row.try_get::<i32, _>("part")? {
            0 => read.position = to_u64(row.try_get("version")?),
            1 => {
                read.used.insert(
                    (row.try_get("source")?, row.try_get("idempotency_key")?),
                    (row.try_get("request_hash")?, row.try_get("result")?),
                );
            }
            2 => {
                read.heads.insert(
                    row.try_get("customer_id")?,
                    (to_u64(row.try_get("version")?), row.try_get("hash")?),
                );
            }
            _ => {
                read.keyed.insert(row.try_get("customer_id")?);
            }
        }
    }
    let (write, results) = decide(batch, read);
    write.execute(&mut tx).await?;
    tx.commit().await?;
    Ok(results)
}

impl BulkWrite {
    /// Written with arrays bound as parameters: no limit on the number of rows, one plan per
    /// statement.
    async fn execute(self, tx: &mut Transaction<'static, Postgres>) -> Result<(), StoreError> {
        let (upserts, deletes): (Vec<_>, Vec<_>) = self
            .projection
            .iter()
            .partition(|(_, record)| record.is_some());
        // What every batch writes — new data keys, events, projection rows, idempotency
        // records, the blind index's changes — in one statement (one round trip): plain
        // inserts of the bound arrays, no join for the planner to get wrong, an empty array
        // inserting nothing. The parts touch different tables (the blind index's delete and
        // insert, different rows), so the order PostgreSQL runs them in does not matter.
        let e = &self.events;
        let i = &self.idempotency;
        let writes = !(e.is_empty()
            && i.is_empty()
            && upserts.is_empty()
            && self.key_customers.is_empty()
            && self.lookup.is_empty());
        // The blind index's rewrite for the customers whose identifiers changed: their rows
        // not among their new digests go, the new ones come. The two sets are disjoint.
        let (digests, owners): (Vec<&[u8]>, Vec<Uuid>) = self
            .lookup
            .iter()
            .flat_map(|(c, ds)| ds.iter().map(move |d| (d.as_slice(), *c)))
            .unzip();
        if writes {
            sqlx::query(
            "WITH new_keys AS (INSERT INTO data_keys (customer_id, wrapped_key, key_id) \
             SELECT * FROM UNNEST($1::uuid[], $2::bytea[], $3::text[])), \
             new_events AS (INSERT INTO events (global_position, event_id, customer_id, \
             stream_version, event_type, schema_version, field, recorded_at, payload, hash, \
             key_owner) SELECT * FROM UNNEST($4::int8[], $5::uuid[], $6::uuid[], $7::int8[], \
             $8::text[], $9::int4[], $10::text[], $11::timestamptz[], $12::bytea[], $13::bytea[], \
             $14::uuid[])), \
             upserted AS (INSERT INTO projections (customer_id, kind, key, record) \
             SELECT * FROM UNNEST($15::uuid[], $16::text[], $17::text[], $18::text[]) \
             ON CONFLICT (customer_id, kind, key) DO UPDATE SET record = EXCLUDED.record), \
             fresh AS (SELECT * FROM UNNEST($25::bytea[], $26::uuid[]) AS f(digest, customer_id)), \
             gone AS (DELETE FROM lookup_index l WHERE l.customer_id = ANY($24::uuid[]) \
             AND NOT EXISTS (SELECT 1 FROM fresh f \
             WHERE f.digest = l.digest AND f.customer_id = l.customer_id)), \
             indexed AS (INSERT INTO lookup_index (digest, customer_id) \
             SELECT digest, customer_id FROM fresh ON CONFLICT DO NOTHING) \
             INSERT INTO idempotency (source, idempotency_key, customer_id, request_hash, result) \
             SELECT * FROM UNNEST($19::text[], $20::text[], $21::uuid[], $22::bytea[], $23::text[])",
        )
        .bind(&self.key_customers)
        .bind(&self.wrapped_keys)
        .bind(&self.key_ids)
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
        .bind(e.iter().map(|r| r.key_owner).collect::<Vec<_>>())
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
        .bind(i.iter().map(|(_, r)| r.source.as_str()).collect::<Vec<_>>())
        .bind(i.iter().map(|(_, r)| r.key.as_str()).collect::<Vec<_>>())
        .bind(i.iter().map(|(c, _)| *c).collect::<Vec<_>>())
        .bind(i.iter().map(|(_, r)| r.request_hash.as_slice()).collect::<Vec<_>>())
        .bind(i.iter().map(|(_, r)| r.result.as_str()).collect::<Vec<_>>())
        .bind(self.lookup.keys().copied().collect::<Vec<_>>())
        .bind(digests)
        .bind(owners)
        .execute(&mut **tx)
        .await?;
        }
        // Rarer (a row removed; an identifier changed; a snapshot due), and the deletes join
        // existing rows: each its own statement, only when there is something to do.
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
        if !self.snapshots.is_empty() {
            // After the events: `covers_until` is the latest `recorded_at` of those each
            // snapshot covers (see `INSERT_SNAPSHOT` in the parent module).
            let s = &self.snapshots;
            sqlx::query(
                "INSERT INTO stream_snapshots (customer_id, stream_version, fold_version, covers_until, state) \
                 SELECT n.customer_id, n.stream_version, n.fold_version, \
                 (SELECT MAX(e.recorded_at) FROM events e \
                 WHERE e.customer_id = n.customer_id AND e.stream_version <= n.stream_version), n.state \
                 FROM UNNEST($1::uuid[], $2::int8[], $3::int8[], $4::text[]) \
                 AS n(customer_id, stream_version, fold_version, state) \
                 ON CONFLICT (customer_id, stream_version) DO UPDATE SET fold_version = EXCLUDED.fold_version, \
                 covers_until = EXCLUDED.covers_until, state = EXCLUDED.state",
            )
            .bind(s.iter().map(|n| n.0).collect::<Vec<_>>())
            .bind(s.iter().map(|n| n.1).collect::<Vec<_>>())
            .bind(s.iter().map(|n| n.2).collect::<Vec<_>>())
            .bind(s.iter().map(|n| n.3.as_str()).collect::<Vec<_>>())
            .execute(&mut **tx)
            .await?;
        }
        Ok(())
    }
}
