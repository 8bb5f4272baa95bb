//! Reconciliation runs: their reports, their findings, and the rows of uploaded consumer
//! snapshots while a run compares them. What runs decide lives in `idledger-reconcile`; this
//! module only keeps it. The statements are written once for both engines ([`crate::sql`]).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::delivery::ConsumerId;
use crate::error::StoreError;
use crate::sql::{Row, sql};

pub use idledger_domain::delivery::{RunKind, RunStatus};

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

    pub async fn start(&self, r: &Run) -> Result<(), StoreError> {
        sql(
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
        .await?;
        Ok(())
    }

    /// Stores the run's status, report and error as they are now.
    pub async fn save(&self, r: &Run) -> Result<(), StoreError> {
        sql(
            "UPDATE reconcile_runs SET status = $1, finished_at = $2, report = $3, error = $4 \
             WHERE run_id = $5",
        )
        .bind(r.status.as_str())
        .bind(r.finished_at)
        .bind(serde_json::to_string(&r.report)?)
        .bind(r.error.as_deref())
        .bind(r.id)
        .execute(&self.db)
        .await?;
        Ok(())
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

    pub async fn add_findings(&self, run_id: Uuid, findings: &[Finding]) -> Result<(), StoreError> {
        for chunk in findings.chunks(self.db.rows_per_statement(7)) {
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
            q.push_values(rows, |r| r);
            q.execute(&self.db).await?;
        }
        Ok(())
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
            q.push_values(chunk, |r| {
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
                .push(" AND customer_id IN ")
                .push_list(chunk)
                .push(" ORDER BY customer_id, field");
            for row in q.fetch_all(&self.db).await? {
                out.push(snapshot_row(&row)?);
            }
        }
        Ok(out)
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
