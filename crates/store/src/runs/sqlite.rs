//! SQLite SQL for reconciliation runs.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::sqlite::SqliteRow;
use sqlx::{QueryBuilder, Row, Sqlite};
use uuid::Uuid;

use super::{Finding, Run, RunBackend, RunColumns, SnapshotRow};
use crate::backend::{to_i64, to_u64};
use crate::error::StoreError;
use crate::model::{from_micros, micros};
use crate::sqlite::SqliteBackend;

const RUN_COLUMNS: &str = "run_id, kind, trigger, consumer_id, requested_by, status, started_at, finished_at, report, error";

fn run(row: &SqliteRow) -> Result<Run, StoreError> {
    RunColumns {
        id: row.try_get("run_id")?,
        kind: row.try_get("kind")?,
        trigger: row.try_get("trigger")?,
        consumer_id: row.try_get("consumer_id")?,
        requested_by: row.try_get("requested_by")?,
        status: row.try_get("status")?,
        started_at: from_micros(row.try_get("started_at")?),
        finished_at: row
            .try_get::<Option<i64>, _>("finished_at")?
            .map(from_micros),
        report: row.try_get("report")?,
        error: row.try_get("error")?,
    }
    .into_run()
}

fn finding(row: &SqliteRow) -> Result<Finding, StoreError> {
    let detail: String = row.try_get("detail")?;
    Ok(Finding {
        seq: to_u64(row.try_get("seq")?),
        consumer_id: row.try_get("consumer_id")?,
        customer_id: row.try_get("customer_id")?,
        field: row.try_get("field")?,
        kind: row.try_get("kind")?,
        detail: serde_json::from_str(&detail)?,
    })
}

fn snapshot_row(row: &SqliteRow) -> Result<SnapshotRow, StoreError> {
    Ok(SnapshotRow {
        customer_id: row.try_get("customer_id")?,
        field: row.try_get("field")?,
        value_hash: row.try_get("value_hash")?,
        line: to_u64(row.try_get("line")?),
    })
}

#[async_trait]
impl RunBackend for SqliteBackend {
    async fn insert_run(&self, r: &Run) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO reconcile_runs (run_id, kind, trigger, consumer_id, requested_by, status, started_at, finished_at, report, error) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )
        .bind(r.id)
        .bind(r.kind.as_str())
        .bind(r.trigger.as_str())
        .bind(r.consumer_id.as_ref().map(|c| c.as_str().to_owned()))
        .bind(r.requested_by.as_str())
        .bind(r.status.as_str())
        .bind(micros(r.started_at))
        .bind(r.finished_at.map(micros))
        .bind(serde_json::to_string(&r.report)?)
        .bind(r.error.as_deref())
        .execute(self.pool())
        .await?;
        Ok(())
    }

    async fn update_run(&self, r: &Run) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE reconcile_runs SET status = ?1, finished_at = ?2, report = ?3, error = ?4 \
             WHERE run_id = ?5",
        )
        .bind(r.status.as_str())
        .bind(r.finished_at.map(micros))
        .bind(serde_json::to_string(&r.report)?)
        .bind(r.error.as_deref())
        .bind(r.id)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    async fn run(&self, id: Uuid) -> Result<Option<Run>, StoreError> {
        let sql = format!("SELECT {RUN_COLUMNS} FROM reconcile_runs WHERE run_id = ?1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(self.pool())
            .await?;
        row.as_ref().map(run).transpose()
    }

    async fn runs(
        &self,
        before: Option<DateTime<Utc>>,
        limit: u32,
    ) -> Result<Vec<Run>, StoreError> {
        let sql = format!(
            "SELECT {RUN_COLUMNS} FROM reconcile_runs WHERE (?1 IS NULL OR started_at < ?1) \
             ORDER BY started_at DESC, run_id DESC LIMIT ?2"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(before.map(micros))
            .bind(i64::from(limit))
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(run).collect()
    }

    async fn insert_findings(&self, run_id: Uuid, findings: &[Finding]) -> Result<(), StoreError> {
        for chunk in findings.chunks(500) {
            let mut q = QueryBuilder::<Sqlite>::new(
                "INSERT INTO reconcile_findings (run_id, seq, consumer_id, customer_id, field, kind, detail) ",
            );
            let details = chunk
                .iter()
                .map(|f| serde_json::to_string(&f.detail))
                .collect::<Result<Vec<_>, _>>()?;
            q.push_values(chunk.iter().zip(details), |mut b, (f, detail)| {
                b.push_bind(run_id)
                    .push_bind(to_i64(f.seq))
                    .push_bind(f.consumer_id.clone())
                    .push_bind(f.customer_id.clone())
                    .push_bind(f.field.clone())
                    .push_bind(f.kind.clone())
                    .push_bind(detail);
            });
            q.build().execute(self.pool()).await?;
        }
        Ok(())
    }

    async fn findings(
        &self,
        run_id: Uuid,
        after: u64,
        limit: u32,
    ) -> Result<Vec<Finding>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, consumer_id, customer_id, field, kind, detail FROM reconcile_findings \
             WHERE run_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
        )
        .bind(run_id)
        .bind(to_i64(after))
        .bind(i64::from(limit))
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(finding).collect()
    }

    async fn insert_snapshot_rows(
        &self,
        run_id: Uuid,
        rows: &[SnapshotRow],
    ) -> Result<u64, StoreError> {
        let mut stored = 0;
        for chunk in rows.chunks(500) {
            let mut q = QueryBuilder::<Sqlite>::new(
                "INSERT INTO snapshot_rows (run_id, customer_id, field, value_hash, line) ",
            );
            q.push_values(chunk, |mut b, r| {
                b.push_bind(run_id)
                    .push_bind(r.customer_id)
                    .push_bind(r.field.clone())
                    .push_bind(r.value_hash.clone())
                    .push_bind(to_i64(r.line));
            });
            q.push(" ON CONFLICT (run_id, customer_id, field) DO NOTHING");
            stored += q.build().execute(self.pool()).await?.rows_affected();
        }
        Ok(stored)
    }

    async fn snapshot_customer_page(
        &self,
        run_id: Uuid,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<Uuid>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT customer_id FROM ( \
                 SELECT customer_id FROM data_keys WHERE (?2 IS NULL OR customer_id > ?2) \
                 UNION \
                 SELECT customer_id FROM snapshot_rows WHERE run_id = ?1 AND (?2 IS NULL OR customer_id > ?2) \
             ) AS page ORDER BY customer_id LIMIT ?3",
        )
        .bind(run_id)
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(self.pool())
        .await?)
    }

    async fn snapshot_rows_of(
        &self,
        run_id: Uuid,
        customers: &[Uuid],
    ) -> Result<Vec<SnapshotRow>, StoreError> {
        if customers.is_empty() {
            return Ok(Vec::new());
        }
        let mut q = QueryBuilder::<Sqlite>::new(
            "SELECT customer_id, field, value_hash, line FROM snapshot_rows WHERE run_id = ",
        );
        q.push_bind(run_id);
        q.push(" AND customer_id IN (");
        let mut list = q.separated(", ");
        for item in customers {
            list.push_bind(*item);
        }
        list.push_unseparated(")");
        q.push(" ORDER BY customer_id, field");
        let rows = q.build().fetch_all(self.pool()).await?;
        rows.iter().map(snapshot_row).collect()
    }

    async fn delete_snapshot_rows(&self, run_id: Uuid) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM snapshot_rows WHERE run_id = ?1")
            .bind(run_id)
            .execute(self.pool())
            .await?;
        Ok(())
    }
}
