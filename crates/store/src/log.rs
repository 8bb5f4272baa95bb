//! The event log and its projection: batched appends, and the reads the ledger, delivery and
//! reconciliation need. Written once for both engines (see [`crate::sql`]); the group
//! commit's checks are `log/bulk.rs`, each engine's reads and writes for them
//! `log/postgres.rs` (arrays bound as parameters) and `log/sqlite.rs` (multi-row statements).
//!
//! Ordering: every append transaction holds off every other ([`Db::begin_exclusive`]: an
//! advisory lock on PostgreSQL, the write lock on SQLite) and assigns
//! `global_position = max + 1`. The lock is released only after the commit is visible, so
//! positions become visible strictly in order and a rolled-back transaction leaves no hole: a
//! reader never skips an event that commits later with a lower position.

mod bulk;
mod postgres;
mod sqlite;

use std::collections::HashMap;

use std::sync::Arc;

use uuid::Uuid;

use crate::chain::{GENESIS, chained_rows};
use crate::error::StoreError;
use crate::log_watch::LogWatch;
use crate::model::{AppendOutcome, AppendRequest, ProjectionRow, RawEvent, from_micros, micros};
use crate::sql::{Arg, Db, Row, Sql, Tx, count_or_delete, sql};

const EVENT_COLUMNS: &str = "global_position, event_id, customer_id, stream_version, event_type, schema_version, field, recorded_at, payload, key_owner, hash";

/// The raw event log of one database: metadata in the clear, payloads sealed. The [`Ledger`]
/// is what runs commands and opens payloads; this is for those who need the rows as stored
/// (verification tools, tests, benchmarks' baselines).
///
/// [`Ledger`]: crate::Ledger
#[derive(Debug, Clone)]
pub struct EventLog {
    db: Db,
    watch: Arc<LogWatch>,
}

impl EventLog {
    pub(crate) fn new(db: Db, watch: Arc<LogWatch>) -> Self {
        Self { db, watch }
    }

    /// The log's growth signal (see [`LogWatch`]).
    pub fn engine(&self) -> crate::sql::Engine {
        self.db.engine()
    }

    pub fn watch(&self) -> &Arc<LogWatch> {
        &self.watch
    }

    /// Signals the log's readers after a commit that appended.
    fn grew(&self, outcome: &AppendOutcome) {
        if matches!(outcome, AppendOutcome::Appended { positions } if !positions.is_empty()) {
            self.watch.appended();
        }
    }

    /// Writes a batch of appends in one transaction; each append succeeds or fails alone
    /// (a conflict in one does not fail the others). Returns one outcome per request, in
    /// order, after the transaction is durable. `Err` means the whole batch failed.
    pub async fn write_batch(
        &self,
        batch: &[AppendRequest],
    ) -> Result<Vec<Result<AppendOutcome, StoreError>>, StoreError> {
        let results = self.write_batch_once(batch).await?;
        if let Some(Ok(appended)) = results
            .iter()
            .find(|r| matches!(r, Ok(AppendOutcome::Appended { .. })))
        {
            self.grew(appended);
        }
        Ok(results)
    }

    async fn write_batch_once(
        &self,
        batch: &[AppendRequest],
    ) -> Result<Vec<Result<AppendOutcome, StoreError>>, StoreError> {
        // How each batch was written, by `path`: `bulk` (a few statements for the batch),
        // `bulk_failed` (then append by append), `each` (steward actions). A bulk
        // statement that always failed would only show here: the fallback hides it otherwise.
        let path = |path: &'static str| {
            metrics::counter!("idledger_append_batches_total", "path" => path).increment(1);
        };
        // Steward actions are rare and write across tables: they take the per-append path
        // (erasures write in a transaction of their own, `write_decided`).
        if batch
            .iter()
            .any(|r| r.exception.is_some() || r.drop_snapshots_since.is_some())
        {
            path("each");
            return write_each(&self.db, batch).await;
        }
        let written = match self.db.pg() {
            Some(pool) => postgres::write_bulk(pool, batch).await,
            // In-process, but each statement is a hand-off to the connection's thread and
            // back: a few for the batch rather than ten per append.
            None => sqlite::write_bulk(&self.db, batch).await,
        };
        match written {
            Ok(results) => {
                path("bulk");
                Ok(results)
            }
            // Whatever failed (a unique violation, a trigger…) failed the whole transaction:
            // the per-append path, with a savepoint each, fails only the append concerned.
            Err(e) => {
                tracing::debug!(error = %e, "bulk append failed; retrying append by append");
                path("bulk_failed");
                write_each(&self.db, batch).await
            }
        }
    }

    /// Writes appends to several streams in one transaction, all or none (a merge writes
    /// both records): the first that is not appended rolls everything back and is returned.
    pub(crate) async fn write_linked(
        &self,
        requests: &[AppendRequest],
    ) -> Result<AppendOutcome, StoreError> {
        let mut tx = self.db.begin_exclusive().await?;
        let mut position = head(&mut tx).await?;
        let mut all = Vec::new();
        for req in requests {
            let outcome = match append_one(&mut tx, req, position).await {
                Err(e) if e.is_unique_violation() => AppendOutcome::VersionConflict,
                other => other?,
            };
            let AppendOutcome::Appended { positions } = outcome else {
                // Dropped unfinished: rolled back.
                return Ok(outcome);
            };
            position += positions.len() as u64;
            all.extend(positions);
        }
        tx.commit().await?;
        let outcome = AppendOutcome::Appended { positions: all };
        self.grew(&outcome);
        Ok(outcome)
    }

    /// Appends what `decide` makes of the customer's projection rows as they are inside the
    /// write transaction, which holds off every other append: nothing can come between the
    /// decision and its write, so it never conflicts and a busy writer on the same customer
    /// cannot starve it (an erasure). An error from `decide` writes nothing.
    pub(crate) async fn write_decided<T, E: From<StoreError>>(
        &self,
        customer: Uuid,
        decide: impl FnOnce(Vec<ProjectionRow>) -> Result<(AppendRequest, T), E> + Send,
    ) -> Result<(AppendOutcome, T), E> {
        let mut tx = self.db.begin_exclusive().await?;
        let position = head(&mut tx).await?;
        let rows = sql(PROJECTION_ROWS)
            .bind(customer)
            .fetch_all(&mut tx)
            .await?
            .iter()
            .map(projection_row)
            .collect::<Result<Vec<_>, _>>()?;
        let (request, decided) = decide(rows)?;
        let outcome = append_one(&mut tx, &request, position).await?;
        if matches!(outcome, AppendOutcome::Appended { .. }) {
            tx.commit().await?;
            self.grew(&outcome);
        }
        Ok((outcome, decided))
    }

    /// SQLite: a checkpoint that waits for nobody (see [`Db::checkpoint_passive`]).
    pub(crate) async fn checkpoint_passive(&self) -> Result<(), StoreError> {
        self.db.checkpoint_passive().await
    }

    /// SQLite: empties the write-ahead log into the database (see [`Db::truncate_wal`]);
    /// false if readers kept it from completing.
    pub(crate) async fn truncate_wal(&self) -> Result<bool, StoreError> {
        self.db.truncate_wal().await
    }

    /// `(request_hash, result)` stored for an idempotency key.
    pub async fn idempotency(
        &self,
        source: &str,
        key: &str,
    ) -> Result<Option<(Vec<u8>, String)>, StoreError> {
        stored_idempotency(&self.db, source, key).await
    }

    /// In one statement: the customer's stream version (`None`: no events) and the
    /// idempotency record of `source`'s `key`, if any — what a refusal is checked against.
    pub async fn head_and_idempotency(
        &self,
        customer: Uuid,
        source: &str,
        key: &str,
    ) -> Result<(Option<u64>, Option<(Vec<u8>, String)>), StoreError> {
        let row = sql("SELECT h.head, i.request_hash, i.result FROM \
             (SELECT MAX(stream_version) AS head FROM events WHERE customer_id = $1) AS h \
             LEFT JOIN idempotency i ON i.source = $2 AND i.idempotency_key = $3")
        .bind(customer)
        .bind(source)
        .bind(key)
        .fetch_one(&self.db)
        .await?;
        let head = row
            .try_get::<Option<i64>>("head")?
            .map(|h| {
                u64::try_from(h)
                    .map_err(|_| StoreError::Integrity("a negative stream version".to_owned()))
            })
            .transpose()?;
        let earlier = match row.try_get::<Option<Vec<u8>>>("request_hash")? {
            Some(hash) => Some((hash, row.try_get("result")?)),
            None => None,
        };
        Ok((head, earlier))
    }

    /// Retention: the idempotency records created before `before`, counted (`dry_run`) or
    /// deleted. A record created at `before` or later is never taken.
    pub async fn expire_idempotency(
        &self,
        before: chrono::DateTime<chrono::Utc>,
        dry_run: bool,
    ) -> Result<u64, StoreError> {
        count_or_delete(
            &self.db,
            dry_run,
            "idempotency WHERE created_at < $1",
            [Arg::DbClockTime(Some(before))],
        )
        .await
    }

    /// The customer's wrapped data key; `None` before their first event and after erasure.
    pub async fn data_key(&self, customer: Uuid) -> Result<Option<Vec<u8>>, StoreError> {
        sql("SELECT wrapped_key FROM data_keys WHERE customer_id = $1")
            .bind(customer)
            .fetch_optional(&self.db)
            .await?
            .map(|r| r.try_get("wrapped_key"))
            .transpose()
    }

    /// The master key's check value, if one was recorded.
    pub async fn master_key_check(&self) -> Result<Option<Vec<u8>>, StoreError> {
        sql("SELECT check_value FROM master_key_check WHERE id = 1")
            .fetch_optional(&self.db)
            .await?
            .map(|r| r.try_get("check_value"))
            .transpose()
    }

    /// Records the master key's check value unless one is recorded already; returns the one
    /// that stands (a concurrent first start may have won).
    pub async fn record_master_key_check(&self, check: &[u8]) -> Result<Vec<u8>, StoreError> {
        sql("INSERT INTO master_key_check (id, check_value, created_at) VALUES (1, $1, $2) ON CONFLICT (id) DO NOTHING")
            .bind(check.to_vec())
            .bind(crate::model::truncate_to_micros(chrono::Utc::now()))
            .execute(&self.db)
            .await?;
        self.master_key_check().await?.ok_or_else(|| {
            StoreError::Integrity("the master key check value was not recorded".to_owned())
        })
    }

    /// Any one wrapped data key, with its customer: `None` when no customer has one (none yet,
    /// or all erased).
    pub async fn any_data_key(&self) -> Result<Option<(Uuid, Vec<u8>)>, StoreError> {
        sql("SELECT customer_id, wrapped_key FROM data_keys LIMIT 1")
            .fetch_optional(&self.db)
            .await?
            .map(|r| Ok((r.try_get("customer_id")?, r.try_get("wrapped_key")?)))
            .transpose()
    }

    /// Wrapped data keys of those of `customers` who have one.
    pub async fn data_keys(&self, customers: &[Uuid]) -> Result<Vec<(Uuid, Vec<u8>)>, StoreError> {
        let mut out = Vec::with_capacity(customers.len());
        for chunk in customers.chunks(self.db.max_params()) {
            let mut q = sql("SELECT customer_id, wrapped_key FROM data_keys WHERE customer_id");
            q.push_in(self.db.engine(), chunk);
            for r in q.fetch_all(&self.db).await? {
                out.push((r.try_get("customer_id")?, r.try_get("wrapped_key")?));
            }
        }
        Ok(out)
    }

    /// The customer's projection rows, by kind and key.
    pub async fn projection_rows(&self, customer: Uuid) -> Result<Vec<ProjectionRow>, StoreError> {
        projection_rows(&self.db, customer).await
    }

    /// The projection rows of each of `customers` that has any, by kind and key: one
    /// statement per chunk instead of one per customer.
    pub async fn projection_rows_of(
        &self,
        customers: &[Uuid],
    ) -> Result<HashMap<Uuid, Vec<ProjectionRow>>, StoreError> {
        let mut out: HashMap<Uuid, Vec<ProjectionRow>> = HashMap::new();
        for chunk in customers.chunks(self.db.max_params()) {
            let mut q =
                sql("SELECT customer_id, kind, key, record FROM projections WHERE customer_id");
            q.push_in(self.db.engine(), chunk)
                .push(" ORDER BY customer_id, kind, key");
            for r in q.fetch_all(&self.db).await? {
                out.entry(r.try_get("customer_id")?)
                    .or_default()
                    .push(projection_row(&r)?);
            }
        }
        Ok(out)
    }

    /// A customer's events in stream order, optionally only one field's and only those
    /// recorded at or before an instant.
    pub async fn stream(
        &self,
        customer: Uuid,
        field: Option<&str>,
        until_micros: Option<i64>,
    ) -> Result<Vec<RawEvent>, StoreError> {
        stream_query(customer, None, field, until_micros)
            .fetch_all(&self.db)
            .await?
            .iter()
            .map(raw_event)
            .collect()
    }

    /// [`Self::stream`] with the customer's wrapped data key (`None`: they have none), read
    /// by the same statement: one round trip, not two in a row. The key is an uncorrelated
    /// subquery, looked up once however many rows there are.
    pub(crate) async fn stream_keyed(
        &self,
        customer: Uuid,
        field: Option<&str>,
        until_micros: Option<i64>,
    ) -> Result<(Vec<RawEvent>, Option<Vec<u8>>), StoreError> {
        let mut q = sql("SELECT ");
        q.push(EVENT_COLUMNS)
            .push(", (SELECT k.wrapped_key FROM data_keys k WHERE k.customer_id = ")
            .push_bind(customer)
            .push(") AS wrapped_key FROM events");
        let rows = push_stream_filter(q, customer, None, field, until_micros)
            .fetch_all(&self.db)
            .await?;
        let wrapped = match rows.first() {
            Some(row) => row.try_get::<Option<Vec<u8>>>("wrapped_key")?,
            None => None,
        };
        let raws = rows.iter().map(raw_event).collect::<Result<_, _>>()?;
        Ok((raws, wrapped))
    }

    /// A customer's events after stream version `after`, in stream order, only those recorded
    /// at or before `until_micros` if given: what an as-of read folds onto a snapshot.
    pub async fn stream_after(
        &self,
        customer: Uuid,
        after: u64,
        until_micros: Option<i64>,
    ) -> Result<Vec<RawEvent>, StoreError> {
        stream_query(customer, Some(after), None, until_micros)
            .fetch_all(&self.db)
            .await?
            .iter()
            .map(raw_event)
            .collect()
    }

    /// Up to `limit` events of streams after `after` (a customer and stream version), in
    /// customer then stream order, among those at positions up to `up_to`: the log walked
    /// stream by stream, a key range a page (`rebuild`).
    pub async fn read_streams(
        &self,
        after: Option<(Uuid, u64)>,
        up_to: u64,
        limit: u32,
    ) -> Result<Vec<RawEvent>, StoreError> {
        let mut q = select_events();
        q.push(" WHERE global_position <= ").push_bind(up_to);
        if let Some((customer, version)) = after {
            q.push(" AND (customer_id, stream_version) > (")
                .push_bind(customer)
                .push(", ")
                .push_bind(version)
                .push(")");
        }
        q.push(" ORDER BY customer_id, stream_version LIMIT ")
            .push_bind(limit);
        q.fetch_all(&self.db).await?.iter().map(raw_event).collect()
    }

    /// The latest snapshot of the customer's stream folded by `fold_version` whose events were
    /// all recorded at or before `until`: its stream version and sealed state.
    pub async fn latest_snapshot(
        &self,
        customer: Uuid,
        fold_version: u32,
        until: chrono::DateTime<chrono::Utc>,
    ) -> Result<Option<(u64, String)>, StoreError> {
        sql(
            "SELECT stream_version, state FROM stream_snapshots WHERE customer_id = $1 \
             AND fold_version = $2 AND covers_until <= $3 ORDER BY stream_version DESC LIMIT 1",
        )
        .bind(customer)
        .bind(fold_version)
        .bind(until)
        .fetch_optional(&self.db)
        .await?
        .map(|r| Ok((r.get_u64("stream_version")?, r.try_get("state")?)))
        .transpose()
    }

    /// Every stored snapshot of `customers`, whatever its fold version.
    pub async fn snapshots_of(
        &self,
        customers: &[Uuid],
    ) -> Result<Vec<StoredSnapshot>, StoreError> {
        let mut out = Vec::new();
        for chunk in customers.chunks(self.db.max_params()) {
            let mut q = sql(
                "SELECT customer_id, stream_version, fold_version, covers_until, state \
                 FROM stream_snapshots WHERE customer_id",
            );
            q.push_in(self.db.engine(), chunk);
            for r in q.fetch_all(&self.db).await? {
                out.push(StoredSnapshot {
                    customer_id: r.try_get("customer_id")?,
                    stream_version: r.get_u64("stream_version")?,
                    fold_version: u32::try_from(r.try_get::<i64>("fold_version")?)
                        .unwrap_or(u32::MAX),
                    covers_until: r.try_get("covers_until")?,
                    state: r.try_get("state")?,
                });
            }
        }
        Ok(out)
    }

    /// Up to `limit` events after `after`, in global (commit) order. Gap-free: a reader that
    /// has seen position p has seen every committed event before p.
    pub async fn read_all(&self, after: u64, limit: u32) -> Result<Vec<RawEvent>, StoreError> {
        let mut q = select_events();
        q.push(" WHERE global_position > ")
            .push_bind(after)
            .push(" ORDER BY global_position LIMIT ")
            .push_bind(limit);
        q.fetch_all(&self.db).await?.iter().map(raw_event).collect()
    }

    /// [`Self::read_all`] with the wrapped data key each event is sealed under, read by the
    /// same statement (one round trip a page, not two). A customer with no key (erased) or
    /// an event in the clear has none in the map.
    pub(crate) async fn read_all_keyed(
        &self,
        after: u64,
        limit: u32,
    ) -> Result<(Vec<RawEvent>, HashMap<Uuid, Vec<u8>>), StoreError> {
        // A subquery per row, not a join: one primary-key probe per event whatever plan the
        // statistics would suggest.
        let mut q = sql("SELECT ");
        q.push(EVENT_COLUMNS).push(
            ", (SELECT k.wrapped_key FROM data_keys k \
             WHERE k.customer_id = COALESCE(events.key_owner, events.customer_id)) AS wrapped_key \
             FROM events WHERE global_position > ",
        );
        q.push_bind(after)
            .push(" ORDER BY global_position LIMIT ")
            .push_bind(limit);
        let rows = q.fetch_all(&self.db).await?;
        let mut keys = HashMap::new();
        let mut raws = Vec::with_capacity(rows.len());
        for row in &rows {
            let raw = raw_event(row)?;
            if let Some(wrapped) = row.try_get::<Option<Vec<u8>>>("wrapped_key")? {
                keys.entry(raw.sealed_for()).or_insert(wrapped);
            }
            raws.push(raw);
        }
        Ok((raws, keys))
    }

    /// The `customer_erased` events of those of `customers` who were erased.
    pub async fn erasures(&self, customers: &[Uuid]) -> Result<Vec<RawEvent>, StoreError> {
        erasures(&self.db, customers).await
    }

    /// Every customer's projection rows, in customer order, `customers` customers a page.
    pub async fn projection_page(
        &self,
        after: Option<Uuid>,
        customers: u32,
    ) -> Result<Vec<(Uuid, ProjectionRow)>, StoreError> {
        // The bound on `customer_id` is repeated outside the subquery rather than written as
        // `$1 IS NULL OR customer_id > $1`, which no index can serve.
        let mut q = sql("SELECT customer_id, kind, key, record FROM projections WHERE ");
        if let Some(after) = after {
            q.push("customer_id > ").push_bind(after).push(" AND ");
        }
        q.push("customer_id IN (SELECT DISTINCT customer_id FROM projections");
        if let Some(after) = after {
            q.push(" WHERE customer_id > ").push_bind(after);
        }
        q.push(" ORDER BY customer_id LIMIT ")
            .push_bind(customers)
            .push(") ORDER BY customer_id, kind, key");
        q.fetch_all(&self.db)
            .await?
            .iter()
            .map(|r| Ok((r.try_get("customer_id")?, projection_row(r)?)))
            .collect()
    }

    /// Replaces the projection rows of `customers` with `rows` (theirs) in one transaction,
    /// holding off appends — but only if the log's head is still `expected_head` (else returns
    /// false, nothing changed). Other customers' rows are left as they are.
    pub async fn replace_projections(
        &self,
        customers: &[Uuid],
        rows: &[(Uuid, ProjectionRow)],
        expected_head: u64,
    ) -> Result<bool, StoreError> {
        let mut tx = self.db.begin_exclusive().await?;
        if head(&mut tx).await? != expected_head {
            return Ok(false);
        }
        let rows: Vec<&(Uuid, ProjectionRow)> = rows.iter().collect();
        rewrite_projections(&self.db, &mut tx, customers, &rows).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// The stream version of each of `customers` that has events: one index seek each (the
    /// stream's last entry), cheaper than reading a record's rows to find it unchanged.
    pub async fn stream_heads(&self, customers: &[Uuid]) -> Result<HashMap<Uuid, u64>, StoreError> {
        let mut out = HashMap::with_capacity(customers.len());
        for chunk in customers.chunks(self.db.max_params()) {
            let mut q = sql("WITH c(customer_id) AS (");
            q.push_values(self.db.engine(), chunk, |c| vec![(*c).into()])
                .push(
                    ") SELECT c.customer_id, (SELECT MAX(e.stream_version) FROM events e \
                 WHERE e.customer_id = c.customer_id) AS head FROM c",
                );
            for r in q.fetch_all(&self.db).await? {
                if let Some(head) = r.try_get::<Option<i64>>("head")? {
                    let head = u64::try_from(head).map_err(|_| {
                        StoreError::Integrity("a negative stream version".to_owned())
                    })?;
                    out.insert(r.try_get("customer_id")?, head);
                }
            }
        }
        Ok(out)
    }

    /// The projection rows of `customers`, with their customer.
    pub async fn projections_of(
        &self,
        customers: &[Uuid],
    ) -> Result<Vec<(Uuid, ProjectionRow)>, StoreError> {
        let mut out = Vec::new();
        for chunk in customers.chunks(self.db.max_params()) {
            let mut q =
                sql("SELECT customer_id, kind, key, record FROM projections WHERE customer_id");
            q.push_in(self.db.engine(), chunk);
            for r in q.fetch_all(&self.db).await? {
                out.push((r.try_get("customer_id")?, projection_row(&r)?));
            }
        }
        Ok(out)
    }

    /// The blind-index rows of `customers`: customer and digest.
    pub async fn lookup_of(&self, customers: &[Uuid]) -> Result<Vec<(Uuid, Vec<u8>)>, StoreError> {
        let mut out = Vec::new();
        for chunk in customers.chunks(self.db.max_params()) {
            let mut q = sql("SELECT customer_id, digest FROM lookup_index WHERE customer_id");
            q.push_in(self.db.engine(), chunk);
            for r in q.fetch_all(&self.db).await? {
                out.push((r.try_get("customer_id")?, r.try_get("digest")?));
            }
        }
        Ok(out)
    }

    /// Customers with projection rows, blind-index rows or stream snapshots but no event: what
    /// no fold of the log can give, so `rebuild` removes it.
    pub async fn orphans(&self) -> Result<Vec<Uuid>, StoreError> {
        let mut out = Vec::new();
        for table in ["projections", "lookup_index", "stream_snapshots"] {
            let mut q = sql("SELECT DISTINCT customer_id FROM ");
            q.push(table).push(
                " t WHERE NOT EXISTS (SELECT 1 FROM events e WHERE e.customer_id = t.customer_id)",
            );
            for r in q.fetch_all(&self.db).await? {
                out.push(r.try_get::<Uuid>("customer_id")?);
            }
        }
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }

    /// Applies what `rebuild` found, in one transaction that holds off appends: each
    /// customer's projection and blind-index rows are replaced only if their stream is still
    /// at the version they were folded to (the others are returned: they moved on, and are
    /// checked again); snapshot repairs stand whatever the stream did since (a snapshot is of
    /// a prefix, which never changes), and only while the customer has a data key.
    pub(crate) async fn repair(&self, repair: &Repair) -> Result<Vec<Uuid>, StoreError> {
        let mut tx = self.db.begin_exclusive().await?;
        let mut heads: std::collections::HashMap<Uuid, u64> = std::collections::HashMap::new();
        let customers: Vec<Uuid> = repair.customers.iter().map(|(c, _)| *c).collect();
        for chunk in customers.chunks(self.db.max_params()) {
            let mut q = sql(
                "SELECT customer_id, MAX(stream_version) AS head FROM events WHERE customer_id",
            );
            q.push_in(tx.engine(), chunk).push(" GROUP BY customer_id");
            for r in q.fetch_all(&mut tx).await? {
                heads.insert(r.try_get("customer_id")?, r.get_u64("head")?);
            }
        }
        let moved: Vec<Uuid> = repair
            .customers
            .iter()
            .filter(|(c, version)| heads.get(c).copied().unwrap_or(0) != *version)
            .map(|(c, _)| *c)
            .collect();
        let stands = |c: &Uuid| !moved.contains(c);
        let rewritten: Vec<Uuid> = repair
            .projections
            .iter()
            .copied()
            .filter(|c| stands(c))
            .collect();
        let rows: Vec<&(Uuid, ProjectionRow)> =
            repair.rows.iter().filter(|(c, _)| stands(c)).collect();
        rewrite_projections(&self.db, &mut tx, &rewritten, &rows).await?;
        for (customer, digests) in repair.lookup.iter().filter(|(c, _)| stands(c)) {
            replace_lookup_rows(&mut tx, *customer, digests).await?;
        }
        for (customer, version) in &repair.snapshot_deletes {
            sql("DELETE FROM stream_snapshots WHERE customer_id = $1 AND stream_version = $2")
                .bind(*customer)
                .bind(*version)
                .execute(&mut tx)
                .await?;
        }
        for s in &repair.snapshot_upserts {
            sql(REPAIR_SNAPSHOT)
                .bind(s.customer_id)
                .bind(s.stream_version)
                .bind(s.fold_version)
                .bind(s.covers_until)
                .bind(s.state.as_str())
                .bind(s.customer_id)
                .execute(&mut tx)
                .await?;
        }
        tx.commit().await?;
        Ok(moved)
    }

    /// The customers whose index rows hold any of `digests`: the first `limit` by id of each
    /// digest's, in one statement (each digest its own index seek), in no given order.
    pub async fn lookup_each(
        &self,
        digests: &[[u8; 32]],
        limit: u32,
    ) -> Result<Vec<Uuid>, StoreError> {
        let mut out = Vec::new();
        // Two parameters a digest.
        for chunk in digests.chunks(self.db.max_params() / 2) {
            let mut q = sql("");
            for (i, digest) in chunk.iter().enumerate() {
                if i > 0 {
                    q.push(" UNION ALL ");
                }
                q.push(
                    "SELECT customer_id FROM (SELECT customer_id FROM lookup_index WHERE digest = ",
                )
                .push_bind(digest.as_slice())
                .push(" ORDER BY customer_id LIMIT ")
                .push_bind(limit)
                .push(") AS k");
                q.push(&i.to_string());
            }
            for r in q.fetch_all(&self.db).await? {
                out.push(r.try_get("customer_id")?);
            }
        }
        Ok(out)
    }

    /// Every blind-index row, by customer: `customers` customers a page, after `after`.
    pub async fn lookup_page(
        &self,
        after: Option<Uuid>,
        customers: u32,
    ) -> Result<Vec<(Uuid, Vec<u8>)>, StoreError> {
        let mut q = sql("SELECT customer_id, digest FROM lookup_index WHERE ");
        if let Some(after) = after {
            q.push("customer_id > ").push_bind(after).push(" AND ");
        }
        q.push("customer_id IN (SELECT DISTINCT customer_id FROM lookup_index");
        if let Some(after) = after {
            q.push(" WHERE customer_id > ").push_bind(after);
        }
        q.push(" ORDER BY customer_id LIMIT ")
            .push_bind(customers)
            .push(") ORDER BY customer_id, digest");
        q.fetch_all(&self.db)
            .await?
            .iter()
            .map(|r| Ok((r.try_get("customer_id")?, r.try_get("digest")?)))
            .collect()
    }

    /// Which chain each stored event's hash follows: v1 before `log_chain.v2_from`, v2 from
    /// it on.
    pub async fn chain_versions(&self) -> Result<crate::chain::ChainVersions, StoreError> {
        let v2_from = sql("SELECT v2_from FROM log_chain WHERE id = 1")
            .fetch_optional(&self.db)
            .await?
            .map(|r| r.get_u64("v2_from"))
            .transpose()?
            .ok_or_else(|| StoreError::Integrity("log_chain has no row".to_owned()))?;
        Ok(crate::chain::ChainVersions { v2_from })
    }

    /// The highest global position, 0 when the log is empty.
    pub async fn head_position(&self) -> Result<u64, StoreError> {
        head_position(&self.db).await
    }
}

/// A snapshot written by `rebuild`, only while its customer has a data key (an erasure
/// racing the rebuild leaves no snapshot behind).
const REPAIR_SNAPSHOT: &str = "INSERT INTO stream_snapshots (customer_id, stream_version, fold_version, covers_until, state) \
     SELECT $1, $2, $3, $4, $5 WHERE EXISTS (SELECT 1 FROM data_keys WHERE customer_id = $6) \
     ON CONFLICT (customer_id, stream_version) DO UPDATE SET fold_version = EXCLUDED.fold_version, \
     covers_until = EXCLUDED.covers_until, state = EXCLUDED.state";

/// What `rebuild` rewrites (see [`EventLog::repair`]).
#[derive(Debug, Default)]
pub(crate) struct Repair {
    /// Every customer concerned, with the stream version it was folded to.
    pub customers: Vec<(Uuid, u64)>,
    /// Customers whose projection rows are replaced by theirs in `rows` (none: deleted).
    pub projections: Vec<Uuid>,
    pub rows: Vec<(Uuid, ProjectionRow)>,
    /// Customers whose blind-index rows become these digests.
    pub lookup: Vec<(Uuid, Vec<[u8; 32]>)>,
    pub snapshot_upserts: Vec<StoredSnapshot>,
    pub snapshot_deletes: Vec<(Uuid, u64)>,
}

impl Repair {
    pub fn is_empty(&self) -> bool {
        self.customers.is_empty()
    }
}

/// A stream snapshot as stored (see [`crate::snapshots`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSnapshot {
    pub customer_id: Uuid,
    pub stream_version: u64,
    pub fold_version: u32,
    pub covers_until: chrono::DateTime<chrono::Utc>,
    /// Sealed under the customer's data key.
    pub state: String,
}

/// Applies the engine's migrations (`migrations/{postgres,sqlite}`).
pub(crate) async fn migrate(db: &Db) -> Result<(), StoreError> {
    match db {
        Db::Postgres(pool) => {
            sqlx::migrate!("../../migrations/postgres")
                .run(pool)
                .await?
        }
        Db::Sqlite(pool) => sqlx::migrate!("../../migrations/sqlite").run(pool).await?,
    }
    Ok(())
}

pub(crate) async fn head_position(db: &Db) -> Result<u64, StoreError> {
    sql("SELECT COALESCE(MAX(global_position), 0) AS head FROM events")
        .fetch_one(db)
        .await?
        .get_u64("head")
}

async fn head(tx: &mut Tx) -> Result<u64, StoreError> {
    sql("SELECT COALESCE(MAX(global_position), 0) AS head FROM events")
        .fetch_one(tx)
        .await?
        .get_u64("head")
}

const PROJECTION_ROWS: &str =
    "SELECT kind, key, record FROM projections WHERE customer_id = $1 ORDER BY kind, key";

pub(crate) async fn projection_rows(
    db: &Db,
    customer: Uuid,
) -> Result<Vec<ProjectionRow>, StoreError> {
    sql(PROJECTION_ROWS)
        .bind(customer)
        .fetch_all(db)
        .await?
        .iter()
        .map(projection_row)
        .collect()
}

pub(crate) async fn erasures(db: &Db, customers: &[Uuid]) -> Result<Vec<RawEvent>, StoreError> {
    let mut out = Vec::new();
    for chunk in customers.chunks(db.max_params()) {
        let mut q = select_events();
        // The literal type (not a bind) lets the engine use the partial index on erasures.
        q.push(" WHERE event_type = 'customer_erased' AND customer_id")
            .push_in(db.engine(), chunk);
        for row in q.fetch_all(db).await? {
            out.push(raw_event(&row)?);
        }
    }
    Ok(out)
}

async fn stored_idempotency(
    db: &Db,
    source: &str,
    key: &str,
) -> Result<Option<(Vec<u8>, String)>, StoreError> {
    sql("SELECT request_hash, result FROM idempotency WHERE source = $1 AND idempotency_key = $2")
        .bind(source)
        .bind(key)
        .fetch_optional(db)
        .await?
        .map(|r| Ok((r.try_get("request_hash")?, r.try_get("result")?)))
        .transpose()
}

fn select_events() -> crate::sql::Sql {
    let mut q = sql("SELECT ");
    q.push(EVENT_COLUMNS).push(" FROM events");
    q
}

fn projection_row(r: &Row) -> Result<ProjectionRow, StoreError> {
    Ok(ProjectionRow {
        kind: r.try_get("kind")?,
        key: r.try_get("key")?,
        record: r.try_get("record")?,
    })
}

/// Makes `rows` the projection rows of `customers` (theirs), in `tx`.
async fn rewrite_projections(
    db: &Db,
    tx: &mut Tx,
    customers: &[Uuid],
    rows: &[&(Uuid, ProjectionRow)],
) -> Result<(), StoreError> {
    for chunk in customers.chunks(db.max_params()) {
        let mut q = sql("DELETE FROM projections WHERE customer_id");
        q.push_in(db.engine(), chunk);
        q.execute(&mut *tx).await?;
    }
    for chunk in rows.chunks(db.rows_per_statement(4)) {
        let mut q = sql("INSERT INTO projections (customer_id, kind, key, record) ");
        q.push_values(db.engine(), chunk, |(customer, r)| {
            vec![
                (*customer).into(),
                r.kind.as_str().into(),
                r.key.as_str().into(),
                r.record.as_str().into(),
            ]
        });
        q.execute(&mut *tx).await?;
    }
    Ok(())
}

/// A customer's events in stream order: after a stream version, of one field, up to an
/// instant — each if given.
fn stream_query(
    customer: Uuid,
    after: Option<u64>,
    field: Option<&str>,
    until_micros: Option<i64>,
) -> Sql {
    push_stream_filter(select_events(), customer, after, field, until_micros)
}

/// ` WHERE …` of a stream read and its order, after `q`'s `SELECT … FROM events`.
fn push_stream_filter(
    mut q: Sql,
    customer: Uuid,
    after: Option<u64>,
    field: Option<&str>,
    until_micros: Option<i64>,
) -> Sql {
    q.push(" WHERE customer_id = ").push_bind(customer);
    if let Some(after) = after {
        q.push(" AND stream_version > ").push_bind(after);
    }
    if let Some(field) = field {
        q.push(" AND field = ").push_bind(field);
    }
    if let Some(until) = until_micros {
        q.push(" AND recorded_at <= ").push_bind(from_micros(until));
    }
    q.push(" ORDER BY stream_version");
    q
}

fn raw_event(row: &Row) -> Result<RawEvent, StoreError> {
    Ok(RawEvent {
        global_position: row.get_u64("global_position")?,
        event_id: row.try_get("event_id")?,
        customer_id: row.try_get("customer_id")?,
        stream_version: row.get_u64("stream_version")?,
        event_type: row.try_get("event_type")?,
        schema_version: u16::try_from(row.try_get::<i32>("schema_version")?).unwrap_or(u16::MAX),
        field: row.try_get("field")?,
        recorded_at_micros: micros(row.try_get("recorded_at")?),
        payload: row.try_get("payload")?,
        key_owner: row.try_get("key_owner")?,
        hash: row.try_get("hash")?,
    })
}

/// The batch append by append, a savepoint each, so that a failing append does not fail the
/// others.
async fn write_each(
    db: &Db,
    batch: &[AppendRequest],
) -> Result<Vec<Result<AppendOutcome, StoreError>>, StoreError> {
    let mut tx = db.begin_exclusive().await?;
    let mut position = head(&mut tx).await?;
    let mut results = Vec::with_capacity(batch.len());
    for req in batch {
        sql("SAVEPOINT append").execute(&mut tx).await?;
        let outcome = append_one(&mut tx, req, position).await;
        if !matches!(outcome, Ok(AppendOutcome::Appended { .. })) {
            sql("ROLLBACK TO SAVEPOINT append").execute(&mut tx).await?;
        }
        sql("RELEASE SAVEPOINT append").execute(&mut tx).await?;
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

async fn append_one(
    tx: &mut Tx,
    req: &AppendRequest,
    position: u64,
) -> Result<AppendOutcome, StoreError> {
    let customer = req.customer_id;
    if let Some(idem) = &req.idempotency {
        let stored = sql(
            "SELECT request_hash, result FROM idempotency WHERE source = $1 AND idempotency_key = $2",
        )
        .bind(idem.source.as_str())
        .bind(idem.key.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(row) = stored {
            return Ok(AppendOutcome::Duplicate {
                request_hash: row.try_get("request_hash")?,
                result: row.try_get("result")?,
            });
        }
    }
    let head = sql(
        "SELECT stream_version, hash FROM events WHERE customer_id = $1 ORDER BY stream_version DESC LIMIT 1",
    )
    .bind(customer)
    .fetch_optional(&mut *tx)
    .await?;
    let (version, prev) = match head {
        Some(row) => (
            row.get_u64("stream_version")?,
            row.try_get::<Vec<u8>>("hash")?,
        ),
        None => (0, GENESIS.to_vec()),
    };
    if version != req.expected_version {
        return Ok(AppendOutcome::VersionConflict);
    }
    if let Some(key) = &req.new_data_key {
        sql("INSERT INTO data_keys (customer_id, wrapped_key, key_id) VALUES ($1, $2, $3)")
            .bind(customer)
            .bind(&key.wrapped)
            .bind(&key.key_id)
            .execute(&mut *tx)
            .await?;
    }
    let rows = chained_rows(req, position, &prev);
    let positions: Vec<u64> = rows.iter().map(|r| r.global_position).collect();
    if !rows.is_empty() {
        let mut insert = sql("INSERT INTO events (");
        insert.push(EVENT_COLUMNS).push(") ");
        insert.push_values(tx.engine(), &rows, event_args);
        insert.execute(&mut *tx).await?;
    }
    if !req.projection.upserts.is_empty() {
        let mut upsert = sql("INSERT INTO projections (customer_id, kind, key, record) ");
        upsert
            .push_values(tx.engine(), &req.projection.upserts, |r| {
                vec![
                    customer.into(),
                    r.kind.as_str().into(),
                    r.key.as_str().into(),
                    r.record.as_str().into(),
                ]
            })
            .push(" ON CONFLICT (customer_id, kind, key) DO UPDATE SET record = EXCLUDED.record");
        upsert.execute(&mut *tx).await?;
    }
    for (kind, key) in &req.projection.deletes {
        sql("DELETE FROM projections WHERE customer_id = $1 AND kind = $2 AND key = $3")
            .bind(customer)
            .bind(kind)
            .bind(key)
            .execute(&mut *tx)
            .await?;
    }
    if let Some(digests) = &req.lookup {
        replace_lookup_rows(&mut *tx, customer, digests).await?;
    }
    if let Some(since) = req.drop_snapshots_since {
        sql("DELETE FROM stream_snapshots WHERE customer_id = $1 AND covers_until >= $2")
            .bind(customer)
            .bind(since)
            .execute(&mut *tx)
            .await?;
    }
    for snapshot in &req.snapshots {
        // After the events: `covers_until` is taken from them, in this transaction.
        sql(INSERT_SNAPSHOT)
            .bind(customer)
            .bind(snapshot.stream_version)
            .bind(snapshot.fold_version)
            .bind(snapshot.state.as_str())
            .bind(customer)
            .bind(snapshot.stream_version)
            .execute(&mut *tx)
            .await?;
    }
    if req.erase {
        erase(tx, customer).await?;
    }
    if let Some(write) = &req.exception
        && !crate::delivery::apply_exception_event(&mut *tx, write).await?
    {
        // Rolled back with the rest of this append (see `write_each`).
        return Ok(AppendOutcome::ExceptionNotOpen {
            exception_id: write.exception_id,
        });
    }
    if let Some(idem) = &req.idempotency {
        sql("INSERT INTO idempotency (source, idempotency_key, customer_id, request_hash, result) VALUES ($1, $2, $3, $4, $5)")
            .bind(idem.source.as_str())
            .bind(idem.key.as_str())
            .bind(customer)
            .bind(&idem.request_hash)
            .bind(idem.result.as_str())
            .execute(&mut *tx)
            .await?;
    }
    Ok(AppendOutcome::Appended { positions })
}

/// An event row's values, in [`EVENT_COLUMNS`]' order.
fn event_args(r: &RawEvent) -> Vec<Arg> {
    vec![
        r.global_position.into(),
        r.event_id.into(),
        r.customer_id.into(),
        r.stream_version.into(),
        r.event_type.as_str().into(),
        i32::from(r.schema_version).into(),
        r.field.as_deref().into(),
        from_micros(r.recorded_at_micros).into(),
        r.payload.as_slice().into(),
        r.key_owner.into(),
        r.hash.as_slice().into(),
    ]
}

/// A snapshot of a stream whose events up to its version are written: `covers_until` is the
/// latest `recorded_at` among them, which is the last one's unless clocks went backwards.
/// Written in the append's transaction, which an erasure's never interleaves with.
const INSERT_SNAPSHOT: &str = "INSERT INTO stream_snapshots (customer_id, stream_version, fold_version, covers_until, state) \
     SELECT $1, $2, $3, MAX(recorded_at), $4 FROM events WHERE customer_id = $5 AND stream_version <= $6 \
     ON CONFLICT (customer_id, stream_version) DO UPDATE SET fold_version = EXCLUDED.fold_version, \
     covers_until = EXCLUDED.covers_until, state = EXCLUDED.state";

/// What erasure removes besides the events' key, in the erasure's own transaction.
async fn erase(tx: &mut Tx, customer: Uuid) -> Result<(), StoreError> {
    // Crypto-shredding: without the key the customer's sealed events are noise. Their
    // idempotency records go too: a request hash is a digest of a command that carried
    // personal data.
    for statement in [
        "DELETE FROM data_keys WHERE customer_id = $1",
        "DELETE FROM idempotency WHERE customer_id = $1",
        // What consumers acknowledged holding: value hashes are digests of personal data. The
        // handoff log stays (it records disclosures, without values).
        "DELETE FROM consumer_state WHERE customer_id = $1",
        // Staged snapshot rows of a run in progress.
        "DELETE FROM snapshot_rows WHERE customer_id = $1",
        // Messages decided for consumers and not yet sent: none of them is to be sent now.
        "DELETE FROM delivery_outbox WHERE customer_id = $1",
        // Steward overrides waiting for a second steward: sealed, and no longer to be made.
        "DELETE FROM steward_approvals WHERE customer_id = $1",
        // The erased record is the customer row alone; the append's diff removes the others
        // already, this makes sure no sealed row outlives the key.
        "DELETE FROM projections WHERE customer_id = $1 AND kind <> 'customer'",
        // The blind index: an erased customer is found by nothing.
        "DELETE FROM lookup_index WHERE customer_id = $1",
        // Stream snapshots: sealed folds of the record.
        "DELETE FROM stream_snapshots WHERE customer_id = $1",
    ] {
        sql(statement).bind(customer).execute(&mut *tx).await?;
    }
    // Findings keep the customer id as given in a snapshot: text.
    sql("DELETE FROM reconcile_findings WHERE customer_id = $1")
        .bind(customer.to_string())
        .execute(&mut *tx)
        .await?;
    // Reports keep up to a few examples per kind, with value hashes.
    crate::runs::drop_erased_customers_examples(tx, customer).await?;
    crate::delivery::close_erased_customers_exceptions(tx, customer).await
}

/// Makes `digests` the customer's blind-index rows (per append: a delete, and an insert when
/// there is anything left to find them by).
pub(crate) async fn replace_lookup_rows(
    tx: &mut Tx,
    customer: Uuid,
    digests: &[[u8; 32]],
) -> Result<(), StoreError> {
    sql("DELETE FROM lookup_index WHERE customer_id = $1")
        .bind(customer)
        .execute(&mut *tx)
        .await?;
    // A record has a handful of identifiers; chunked all the same, within either engine's
    // parameter limit.
    for chunk in digests.chunks(1000) {
        let mut insert = sql("INSERT INTO lookup_index (digest, customer_id) ");
        insert.push_values(tx.engine(), chunk, |d| {
            vec![d.as_slice().into(), customer.into()]
        });
        insert.execute(&mut *tx).await?;
    }
    Ok(())
}
