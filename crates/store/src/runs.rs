//! Reconciliation runs: their reports, their findings, and the rows of uploaded consumer
//! snapshots while a run compares them. What runs decide lives in `idledger-reconcile`; this
//! module only keeps it. The statements are written once for both engines ([`crate::sql`]).

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::delivery::ConsumerId;
use crate::error::StoreError;
use crate::sql::{Arg, Row, Tx, count_or_delete, sql};

pub use idledger_domain::delivery::{RunKind, RunStatus};

/// What retention took (or, in a dry run, would take) of the reconciliation runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExpiredRuns {
    pub runs: u64,
    pub findings: u64,
}

/// One reconciliation run and its report (partial while it runs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Run {
    pub id: Uuid,
    pub kind: RunKind,
    /// What started it: `schedule`, `cli` or `api`.
    pub trigger: String,
    /// The consumer it covers; `None`: every enabled consumer.
    pub consumer_id: Option<ConsumerId>,
    pub requested_by: String,
    pub status: RunStatus,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub report: serde_json::Value,
    pub error: Option<String>,
}

/// One difference a run found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    /// Its place in the run's findings, from 1.
    pub seq: u64,
    pub consumer_id: String,
    /// As given (a snapshot's invalid row may not carry a valid id).
    pub customer_id: String,
    pub field: String,
    pub kind: String,
    pub detail: serde_json::Value,
}

/// One row of an uploaded snapshot: what the consumer holds of one field of one customer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotRow {
    pub customer_id: Uuid,
    pub field: String,
    /// `None`: it holds the field with no value.
    pub value_hash: Option<String>,
    /// Where it was in the upload (1-based), for reports.
    pub line: u64,
}

/// Whether a run could start (see [`Runs::start`]).
#[must_use]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunStart {
    Started,
    /// Another run of the same consumer is running; nothing was recorded.
    Busy,
}

/// How long a run may stay `running` before a new run of its consumer takes it for abandoned.
pub const ABANDONED_AFTER: chrono::Duration = chrono::Duration::hours(6);

/// Reconciliation bookkeeping of one database. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Runs {
    db: crate::sql::Db,
}

/// Most rows one page read returns.
pub const MAX_RUN_PAGE: u32 = 1000;

const RUN_COLUMNS: &str = "run_id, kind, trigger, consumer_id, requested_by, status, started_at, finished_at, report, error";

impl Runs {
    pub(crate) fn new(db: crate::sql::Db) -> Self {
        Self { db }
    }

    /// Records a run as it starts. A run of the same consumer (or, for `consumer_id: None`,
    /// another run over every consumer) still `running` makes it [`RunStart::Busy`] and
    /// records nothing: the partial unique index of migration 0012 is the one place this is
    /// decided, so racing starts, in any process, cannot both win. A run left `running` for
    /// [`ABANDONED_AFTER`] is taken for abandoned (its process stopped mid-run) and marked
    /// failed first, so a crash does not block a consumer's runs for ever.
    pub async fn start(&self, r: &Run) -> Result<RunStart, StoreError> {
        if r.status == RunStatus::Running
            && let Some(cutoff) = r.started_at.checked_sub_signed(ABANDONED_AFTER)
        {
            sql(
                "UPDATE reconcile_runs SET status = 'failed', finished_at = $1, error = $2 \
                 WHERE status = 'running' AND COALESCE(consumer_id, '') = $3 AND started_at < $4",
            )
            .bind(r.started_at)
            .bind("abandoned: still running long after it started (its process stopped?)")
            .bind(r.consumer_id.as_ref().map_or("", ConsumerId::as_str))
            .bind(cutoff)
            .execute(&self.db)
            .await?;
        }
        let inserted = sql(
            "INSERT INTO reconcile_runs (run_id, kind, trigger, consumer_id, requested_by, status, started_at, finished_at, report, error) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(r.id)
        .bind(r.kind.as_str())
        .bind(r.trigger.as_str())
        .bind(r.consumer_id.as_ref().map(ConsumerId::as_str))
        .bind(r.requested_by.as_str())
        .bind(r.status.as_str())
        .bind(r.started_at)
        .bind(r.finished_at)
        .bind(serde_json::to_string(&r.report)?)
        .bind(r.error.as_deref())
        .execute(&self.db)
        .await;
        match inserted {
            Ok(_) => Ok(RunStart::Started),
            Err(e) if e.is_unique_violation() => Ok(RunStart::Busy),
            Err(e) => Err(e),
        }
    }

    /// Marks a run that will not complete (its task was cancelled: the request carrying its
    /// upload was dropped, say) as failed, if it is still running.
    pub async fn abandon(&self, id: Uuid, error: &str) -> Result<(), StoreError> {
        sql(
            "UPDATE reconcile_runs SET status = 'failed', finished_at = $1, error = $2 \
             WHERE run_id = $3 AND status = 'running'",
        )
        .bind(Utc::now())
        .bind(error)
        .bind(id)
        .execute(&self.db)
        .await?;
        Ok(())
    }

    /// Removes a run and all it stored (findings, staged rows): for a run whose input was
    /// refused as a whole (an upload over the size limit), which leaves nothing behind.
    pub async fn discard(&self, id: Uuid) -> Result<(), StoreError> {
        let mut tx = self.db.begin().await?;
        for statement in [
            "DELETE FROM snapshot_rows WHERE run_id = $1",
            "DELETE FROM reconcile_findings WHERE run_id = $1",
            "DELETE FROM reconcile_runs WHERE run_id = $1",
        ] {
            sql(statement).bind(id).execute(&mut tx).await?;
        }
        tx.commit().await
    }

    /// Stores the run's status, report and error as they are now. Examples of customers
    /// erased while the run went on are left out: the erasure could not remove them from a
    /// report not yet stored.
    pub async fn save(&self, r: &Run) -> Result<(), StoreError> {
        let mut report = r.report.clone();
        // Under the append lock, as an erasure is: either the erasure is seen here, or it sees
        // (and scrubs) this report.
        let mut tx = self.db.begin_exclusive().await?;
        let erased = erased_during(&mut tx, r.id, &example_customers(&report)).await?;
        if !erased.is_empty() {
            drop_examples(&mut report, |c| {
                parse_customer(c).is_some_and(|id| erased.contains(&id))
            });
        }
        sql(
            "UPDATE reconcile_runs SET status = $1, finished_at = $2, report = $3, error = $4 \
             WHERE run_id = $5",
        )
        .bind(r.status.as_str())
        .bind(r.finished_at)
        .bind(serde_json::to_string(&report)?)
        .bind(r.error.as_deref())
        .bind(r.id)
        .execute(&mut tx)
        .await?;
        tx.commit().await
    }

    pub async fn get(&self, id: Uuid) -> Result<Option<Run>, StoreError> {
        let mut q = sql("SELECT ");
        q.push(RUN_COLUMNS)
            .push(" FROM reconcile_runs WHERE run_id = ")
            .push_bind(id);
        q.fetch_optional(&self.db)
            .await?
            .as_ref()
            .map(run)
            .transpose()
    }

    /// The newest runs first, started before `before` if given.
    pub async fn list(
        &self,
        before: Option<DateTime<Utc>>,
        limit: u32,
    ) -> Result<Vec<Run>, StoreError> {
        let mut q = sql("SELECT ");
        q.push(RUN_COLUMNS).push(" FROM reconcile_runs");
        if let Some(before) = before {
            q.push(" WHERE started_at < ").push_bind(before);
        }
        q.push(" ORDER BY started_at DESC, run_id DESC LIMIT ")
            .push_bind(limit.clamp(1, MAX_RUN_PAGE));
        q.fetch_all(&self.db).await?.iter().map(run).collect()
    }

    /// Stores findings, but those of customers erased since the run started (it read them
    /// before): the erasure has already deleted the customer's findings. (A customer erased
    /// before the run is reported as the run finds it: e.g. held by a consumer still.)
    pub async fn add_findings(&self, run_id: Uuid, findings: &[Finding]) -> Result<(), StoreError> {
        let mut tx = self.db.begin().await?;
        let customers: Vec<Uuid> = findings
            .iter()
            .filter_map(|f| parse_customer(&f.customer_id))
            .collect();
        let erased = erased_during(&mut tx, run_id, &customers).await?;
        let kept: Vec<&Finding> = findings
            .iter()
            .filter(|f| parse_customer(&f.customer_id).is_none_or(|id| !erased.contains(&id)))
            .collect();
        for chunk in kept.chunks(self.db.rows_per_statement(7)) {
            let mut rows = Vec::with_capacity(chunk.len());
            for f in chunk {
                rows.push(vec![
                    run_id.into(),
                    f.seq.into(),
                    f.consumer_id.as_str().into(),
                    f.customer_id.as_str().into(),
                    f.field.as_str().into(),
                    f.kind.as_str().into(),
                    serde_json::to_string(&f.detail)?.into(),
                ]);
            }
            let mut q = sql(
                "INSERT INTO reconcile_findings (run_id, seq, consumer_id, customer_id, field, kind, detail) ",
            );
            q.push_values(self.db.engine(), rows, |r| r);
            q.execute(&mut tx).await?;
        }
        tx.commit().await
    }

    /// The run's findings with `seq > after`, in order.
    pub async fn findings(
        &self,
        run_id: Uuid,
        after: u64,
        limit: u32,
    ) -> Result<Vec<Finding>, StoreError> {
        sql(
            "SELECT seq, consumer_id, customer_id, field, kind, detail FROM reconcile_findings \
             WHERE run_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        )
        .bind(run_id)
        .bind(after)
        .bind(limit.clamp(1, MAX_RUN_PAGE))
        .fetch_all(&self.db)
        .await?
        .iter()
        .map(finding)
        .collect()
    }

    /// Stores rows; a repeat of a (customer, field) already stored is skipped. Returns how many
    /// were stored.
    pub async fn add_snapshot_rows(
        &self,
        run_id: Uuid,
        rows: &[SnapshotRow],
    ) -> Result<u64, StoreError> {
        let mut stored = 0;
        for chunk in rows.chunks(self.db.rows_per_statement(5)) {
            let mut q =
                sql("INSERT INTO snapshot_rows (run_id, customer_id, field, value_hash, line) ");
            q.push_values(self.db.engine(), chunk, |r| {
                vec![
                    run_id.into(),
                    r.customer_id.into(),
                    r.field.as_str().into(),
                    r.value_hash.as_deref().into(),
                    r.line.into(),
                ]
            })
            .push(" ON CONFLICT (run_id, customer_id, field) DO NOTHING");
            stored += q.execute(&self.db).await?;
        }
        Ok(stored)
    }

    /// The next customers, in id order after `after`, that the snapshot holds or that have a
    /// (not erased) record.
    pub async fn snapshot_customer_page(
        &self,
        run_id: Uuid,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<Uuid>, StoreError> {
        let mut q = sql("SELECT customer_id FROM (SELECT customer_id FROM data_keys");
        if let Some(after) = after {
            q.push(" WHERE customer_id > ").push_bind(after);
        }
        q.push(" UNION SELECT customer_id FROM snapshot_rows WHERE run_id = ")
            .push_bind(run_id);
        if let Some(after) = after {
            q.push(" AND customer_id > ").push_bind(after);
        }
        q.push(") AS page ORDER BY customer_id LIMIT ")
            .push_bind(limit.clamp(1, MAX_RUN_PAGE));
        q.fetch_all(&self.db)
            .await?
            .iter()
            .map(|r| r.try_get("customer_id"))
            .collect()
    }

    /// The snapshot's rows of any of `customers`, by customer and field.
    pub async fn snapshot_rows_of(
        &self,
        run_id: Uuid,
        customers: &[Uuid],
    ) -> Result<Vec<SnapshotRow>, StoreError> {
        let mut out = Vec::new();
        for chunk in customers.chunks(self.db.max_params() - 1) {
            let mut q = sql(
                "SELECT customer_id, field, value_hash, line FROM snapshot_rows WHERE run_id = ",
            );
            q.push_bind(run_id)
                .push(" AND customer_id")
                .push_in(self.db.engine(), chunk)
                .push(" ORDER BY customer_id, field");
            for row in q.fetch_all(&self.db).await? {
                out.push(snapshot_row(&row)?);
            }
        }
        Ok(out)
    }

    /// Retention: the runs started before `before` that ended (finished or failed), with their
    /// findings and staged snapshot rows — counted (`dry_run`) or deleted in one transaction.
    /// A run still `running` is left alone.
    pub async fn expire_runs(
        &self,
        before: DateTime<Utc>,
        dry_run: bool,
    ) -> Result<ExpiredRuns, StoreError> {
        const OLD_RUNS: &str =
            "SELECT run_id FROM reconcile_runs WHERE started_at < $1 AND status <> 'running'";
        let mut tx = self.db.begin().await?;
        let findings = count_or_delete(
            &mut tx,
            dry_run,
            &format!("reconcile_findings WHERE run_id IN ({OLD_RUNS})"),
            [Arg::from(before)],
        )
        .await?;
        count_or_delete(
            &mut tx,
            dry_run,
            &format!("snapshot_rows WHERE run_id IN ({OLD_RUNS})"),
            [Arg::from(before)],
        )
        .await?;
        let runs = count_or_delete(
            &mut tx,
            dry_run,
            "reconcile_runs WHERE started_at < $1 AND status <> 'running'",
            [Arg::from(before)],
        )
        .await?;
        tx.commit().await?;
        Ok(ExpiredRuns { runs, findings })
    }

    /// Deletes the snapshot's staged rows (done with them, whatever the run's outcome).
    pub async fn drop_snapshot(&self, run_id: Uuid) -> Result<(), StoreError> {
        sql("DELETE FROM snapshot_rows WHERE run_id = $1")
            .bind(run_id)
            .execute(&self.db)
            .await?;
        Ok(())
    }
}

/// Erasure, in its transaction: the customer's examples leave every stored report (the counts
/// stay: they say how many, not whom).
pub(crate) async fn drop_erased_customers_examples(
    tx: &mut Tx,
    customer: Uuid,
) -> Result<(), StoreError> {
    // Most reports never name the customer: only those that do are read. Lower case, as a
    // snapshot's ids are kept as given.
    let rows = sql("SELECT run_id, report FROM reconcile_runs WHERE LOWER(report) LIKE $1")
        .bind(format!("%{customer}%"))
        .fetch_all(&mut *tx)
        .await?;
    for row in rows {
        let id: Uuid = row.try_get("run_id")?;
        let mut report: serde_json::Value =
            serde_json::from_str(&row.try_get::<String>("report")?)?;
        if drop_examples(&mut report, |c| parse_customer(c) == Some(customer)) {
            sql("UPDATE reconcile_runs SET report = $1 WHERE run_id = $2")
                .bind(serde_json::to_string(&report)?)
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
    }
    Ok(())
}

/// Removes from a report the examples whose `customer_id` `erased` picks; true if any went.
/// The store knows this much of `idledger-reconcile`'s `Report`: per consumer
/// (`consumers[]`), examples per kind (`examples.<kind>[]`), each naming its `customer_id`.
pub fn drop_examples(report: &mut serde_json::Value, erased: impl Fn(&str) -> bool) -> bool {
    let mut dropped = false;
    for list in example_lists(report) {
        let before = list.len();
        list.retain(|e| {
            !e.get("customer_id")
                .and_then(serde_json::Value::as_str)
                .is_some_and(&erased)
        });
        dropped |= list.len() != before;
    }
    dropped
}

/// Renames the customers of a report's examples (`rename` gives the new name, or `None` to
/// keep one): for a consumer that must see its own names of customers.
pub fn rename_example_customers(
    report: &mut serde_json::Value,
    rename: impl Fn(&str) -> Option<String>,
) {
    for example in example_lists(report).flatten() {
        let renamed = example
            .get("customer_id")
            .and_then(serde_json::Value::as_str)
            .and_then(&rename);
        if let Some(name) = renamed {
            example["customer_id"] = serde_json::Value::String(name);
        }
    }
}

fn example_lists(
    report: &mut serde_json::Value,
) -> impl Iterator<Item = &mut Vec<serde_json::Value>> {
    report
        .get_mut("consumers")
        .and_then(serde_json::Value::as_array_mut)
        .into_iter()
        .flatten()
        .filter_map(|c| c.get_mut("examples"))
        .filter_map(serde_json::Value::as_object_mut)
        .flat_map(|kinds| kinds.values_mut())
        .filter_map(serde_json::Value::as_array_mut)
}

/// The customers a report's examples name.
fn example_customers(report: &serde_json::Value) -> Vec<Uuid> {
    let mut ids: Vec<Uuid> = report
        .get("consumers")
        .and_then(serde_json::Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| c.get("examples")?.as_object())
        .flat_map(|kinds| kinds.values())
        .filter_map(serde_json::Value::as_array)
        .flatten()
        .filter_map(|e| e.get("customer_id")?.as_str().and_then(parse_customer))
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// A customer id as a report or finding holds it (a snapshot's as given, so perhaps not one).
fn parse_customer(id: &str) -> Option<Uuid> {
    Uuid::parse_str(id.trim()).ok()
}

/// Of `customers`, those erased since the run started.
async fn erased_during(
    tx: &mut Tx,
    run_id: Uuid,
    customers: &[Uuid],
) -> Result<HashSet<Uuid>, StoreError> {
    let mut erased = HashSet::new();
    // Both engines take at least this many parameters; a report names a few dozen customers.
    for chunk in customers.chunks(MAX_RUN_PAGE as usize) {
        let mut q = sql(
            "SELECT customer_id FROM events WHERE event_type = 'customer_erased' \
             AND recorded_at >= (SELECT started_at FROM reconcile_runs WHERE run_id = ",
        );
        q.push_bind(run_id)
            .push(") AND customer_id")
            .push_in(tx.engine(), chunk);
        for row in q.fetch_all(&mut *tx).await? {
            erased.insert(row.try_get("customer_id")?);
        }
    }
    Ok(erased)
}

fn run(row: &Row) -> Result<Run, StoreError> {
    let consumer: Option<String> = row.try_get("consumer_id")?;
    Ok(Run {
        id: row.try_get("run_id")?,
        kind: row.parse("kind")?,
        trigger: row.try_get("trigger")?,
        consumer_id: consumer
            .as_deref()
            .map(ConsumerId::parse)
            .transpose()
            .map_err(|e| StoreError::Integrity(format!("stored run: {e}")))?,
        requested_by: row.try_get("requested_by")?,
        status: row.parse("status")?,
        started_at: row.try_get("started_at")?,
        finished_at: row.try_get("finished_at")?,
        report: serde_json::from_str(&row.try_get::<String>("report")?)?,
        error: row.try_get("error")?,
    })
}

fn finding(row: &Row) -> Result<Finding, StoreError> {
    Ok(Finding {
        seq: row.get_u64("seq")?,
        consumer_id: row.try_get("consumer_id")?,
        customer_id: row.try_get("customer_id")?,
        field: row.try_get("field")?,
        kind: row.try_get("kind")?,
        detail: serde_json::from_str(&row.try_get::<String>("detail")?)?,
    })
}

fn snapshot_row(row: &Row) -> Result<SnapshotRow, StoreError> {
    Ok(SnapshotRow {
        customer_id: row.try_get("customer_id")?,
        field: row.try_get("field")?,
        value_hash: row.try_get("value_hash")?,
        line: row.get_u64("line")?,
    })
}
