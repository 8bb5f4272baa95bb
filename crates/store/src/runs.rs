//! Reconciliation runs: their reports, their findings, and the rows of uploaded consumer
//! snapshots while a run compares them. What runs decide lives in `idledger-reconcile`; this
//! module only keeps it. The SQL lives in `runs/{postgres,sqlite}.rs`.

mod postgres;
mod sqlite;

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::backend::Backend;
use crate::delivery::ConsumerId;
use crate::error::StoreError;

/// What a run compares the record with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunKind {
    /// What consumers acknowledged.
    Acks,
    /// An export a consumer uploaded of what it holds.
    Snapshot,
}

impl RunKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Acks => "acks",
            Self::Snapshot => "snapshot",
        }
    }

    fn parse(raw: &str) -> Result<Self, StoreError> {
        match raw {
            "acks" => Ok(Self::Acks),
            "snapshot" => Ok(Self::Snapshot),
            _ => Err(StoreError::Integrity(format!("unknown run kind {raw:?}"))),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Running,
    Finished,
    Failed,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Finished => "finished",
            Self::Failed => "failed",
        }
    }

    fn parse(raw: &str) -> Result<Self, StoreError> {
        match raw {
            "running" => Ok(Self::Running),
            "finished" => Ok(Self::Finished),
            "failed" => Ok(Self::Failed),
            _ => Err(StoreError::Integrity(format!("unknown run status {raw:?}"))),
        }
    }
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

/// What an engine stores for runs.
#[async_trait]
pub trait RunBackend: Send + Sync {
    async fn insert_run(&self, run: &Run) -> Result<(), StoreError>;

    async fn update_run(&self, run: &Run) -> Result<(), StoreError>;

    async fn run(&self, id: Uuid) -> Result<Option<Run>, StoreError>;

    /// The newest runs first, started before `before` if given.
    async fn runs(&self, before: Option<DateTime<Utc>>, limit: u32)
    -> Result<Vec<Run>, StoreError>;

    async fn insert_findings(&self, run: Uuid, findings: &[Finding]) -> Result<(), StoreError>;

    /// Findings with `seq > after`, in order.
    async fn findings(&self, run: Uuid, after: u64, limit: u32)
    -> Result<Vec<Finding>, StoreError>;

    /// Stores rows; a repeat of a (customer, field) already stored is skipped. Returns how many
    /// were stored.
    async fn insert_snapshot_rows(
        &self,
        run: Uuid,
        rows: &[SnapshotRow],
    ) -> Result<u64, StoreError>;

    /// The next customers, in id order after `after`, that the snapshot holds or that have a
    /// (not erased) record.
    async fn snapshot_customer_page(
        &self,
        run: Uuid,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<Uuid>, StoreError>;

    async fn snapshot_rows_of(
        &self,
        run: Uuid,
        customers: &[Uuid],
    ) -> Result<Vec<SnapshotRow>, StoreError>;

    async fn delete_snapshot_rows(&self, run: Uuid) -> Result<(), StoreError>;
}

/// Reconciliation bookkeeping over any engine. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Runs {
    backend: Arc<dyn Backend>,
}

/// Most rows one page read returns.
pub const MAX_RUN_PAGE: u32 = 1000;

impl Runs {
    pub fn new(backend: Arc<dyn Backend>) -> Self {
        Self { backend }
    }

    pub async fn start(&self, run: &Run) -> Result<(), StoreError> {
        self.backend.insert_run(run).await
    }

    /// Stores the run's status, report and error as they are now.
    pub async fn save(&self, run: &Run) -> Result<(), StoreError> {
        self.backend.update_run(run).await
    }

    pub async fn get(&self, id: Uuid) -> Result<Option<Run>, StoreError> {
        self.backend.run(id).await
    }

    pub async fn list(
        &self,
        before: Option<DateTime<Utc>>,
        limit: u32,
    ) -> Result<Vec<Run>, StoreError> {
        self.backend
            .runs(before, limit.clamp(1, MAX_RUN_PAGE))
            .await
    }

    pub async fn add_findings(&self, run: Uuid, findings: &[Finding]) -> Result<(), StoreError> {
        if findings.is_empty() {
            return Ok(());
        }
        self.backend.insert_findings(run, findings).await
    }

    pub async fn findings(
        &self,
        run: Uuid,
        after: u64,
        limit: u32,
    ) -> Result<Vec<Finding>, StoreError> {
        self.backend
            .findings(run, after, limit.clamp(1, MAX_RUN_PAGE))
            .await
    }

    pub async fn add_snapshot_rows(
        &self,
        run: Uuid,
        rows: &[SnapshotRow],
    ) -> Result<u64, StoreError> {
        if rows.is_empty() {
            return Ok(0);
        }
        self.backend.insert_snapshot_rows(run, rows).await
    }

    pub async fn snapshot_customer_page(
        &self,
        run: Uuid,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<Uuid>, StoreError> {
        self.backend
            .snapshot_customer_page(run, after, limit.clamp(1, MAX_RUN_PAGE))
            .await
    }

    pub async fn snapshot_rows_of(
        &self,
        run: Uuid,
        customers: &[Uuid],
    ) -> Result<Vec<SnapshotRow>, StoreError> {
        self.backend.snapshot_rows_of(run, customers).await
    }

    pub async fn drop_snapshot(&self, run: Uuid) -> Result<(), StoreError> {
        self.backend.delete_snapshot_rows(run).await
    }
}

/// Columns of a run row in engine-neutral form.
pub(crate) struct RunColumns {
    pub id: Uuid,
    pub kind: String,
    pub trigger: String,
    pub consumer_id: Option<String>,
    pub requested_by: String,
    pub status: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub report: String,
    pub error: Option<String>,
}

impl RunColumns {
    fn into_run(self) -> Result<Run, StoreError> {
        Ok(Run {
            id: self.id,
            kind: RunKind::parse(&self.kind)?,
            trigger: self.trigger,
            consumer_id: self
                .consumer_id
                .as_deref()
                .map(ConsumerId::parse)
                .transpose()
                .map_err(|e| StoreError::Integrity(format!("stored run: {e}")))?,
            requested_by: self.requested_by,
            status: RunStatus::parse(&self.status)?,
            started_at: self.started_at,
            finished_at: self.finished_at,
            report: serde_json::from_str(&self.report)?,
            error: self.error,
        })
    }
}
