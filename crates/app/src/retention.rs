//! Retention: what the policy says is kept too long goes. Values and consent records not
//! changed within their retention expire (`field_expired`, through the ledger, so the record,
//! a rebuild and every consumer agree); the handoff log, idempotency records and
//! reconciliation runs older than theirs are deleted.
//!
//! `now` comes in as a parameter — the clock is the caller's — so a test moves time forward
//! without waiting.

use chrono::{DateTime, Duration, Utc};
use idledger_domain::field::FieldPath;
use idledger_domain::ids::CustomerId;
use idledger_store::{ExecuteError, StoreError};
use serde::{Deserialize, Serialize};

use crate::App;

/// Customers read per page while looking for expired values.
const PAGE: u32 = 200;

/// What a retention run did or, for a dry run, would do.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetentionReport {
    pub dry_run: bool,
    /// The instant the run judged ages against.
    pub now: DateTime<Utc>,
    /// Customers whose records were read (those with a record that is not erased).
    pub customers: u64,
    /// Customers with at least one expiry.
    pub customers_expired: u64,
    /// Values expired (`field_expired` for a field other than a consent).
    pub values_expired: u64,
    /// Consent records expired (`field_expired` for `consent.<purpose>`).
    pub consents_expired: u64,
    pub handoffs_deleted: u64,
    pub idempotency_records_deleted: u64,
    pub disclosures_deleted: u64,
    pub decisions_deleted: u64,
    pub runs_deleted: u64,
    pub findings_deleted: u64,
}

/// How far a run has come, for a progress counter.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionProgress {
    pub customers: u64,
    pub expired: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum RetentionError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Execute(#[from] ExecuteError),
}

impl App {
    /// Runs retention at `now` under the ledger's policy: expires values and consent records
    /// customer by customer, then deletes handoffs, idempotency records and ended
    /// reconciliation runs older than their limits. A `dry_run` counts what would go and
    /// writes nothing. Kinds the policy sets no retention for are left alone.
    #[tracing::instrument(skip_all, fields(dry_run))]
    pub async fn retention_run(
        &self,
        now: DateTime<Utc>,
        dry_run: bool,
        progress: &(dyn Fn(RetentionProgress) + Send + Sync),
    ) -> Result<RetentionReport, RetentionError> {
        let mut report = RetentionReport {
            dry_run,
            now,
            ..RetentionReport::default()
        };
        self.expire_values(now, dry_run, &mut report, progress)
            .await?;
        let policy = self.ledger.policy();
        if let Some(before) = cutoff(now, policy.handoff_retention()) {
            report.handoffs_deleted = self.deliveries.expire_handoffs(before, dry_run).await?;
        }
        if let Some(before) = cutoff(now, policy.idempotency_retention()) {
            report.idempotency_records_deleted =
                self.ledger.expire_idempotency(before, dry_run).await?;
        }
        if let Some(before) = cutoff(now, policy.disclosure_retention()) {
            report.disclosures_deleted = self
                .ledger
                .store()
                .disclosures()
                .expire_disclosures(before, dry_run)
                .await?;
        }
        if let Some(before) = cutoff(now, policy.decision_retention()) {
            report.decisions_deleted = self
                .decider
                .decisions()
                .expire_decisions(before, dry_run)
                .await?;
        }
        if let Some(before) = cutoff(now, policy.run_report_retention()) {
            let runs = self.runs.expire_runs(before, dry_run).await?;
            report.runs_deleted = runs.runs;
            report.findings_deleted = runs.findings;
        }
        tracing::info!(
            values = report.values_expired,
            consents = report.consents_expired,
            handoffs = report.handoffs_deleted,
            idempotency = report.idempotency_records_deleted,
            disclosures = report.disclosures_deleted,
            decisions = report.decisions_deleted,
            runs = report.runs_deleted,
            "retention run done"
        );
        Ok(report)
    }

    async fn expire_values(
        &self,
        now: DateTime<Utc>,
        dry_run: bool,
        report: &mut RetentionReport,
        progress: &(dyn Fn(RetentionProgress) + Send + Sync),
    ) -> Result<(), RetentionError> {
        let mut after = None;
        loop {
            let page = self.deliveries.customer_page(after, PAGE).await?;
            let Some(last) = page.last() else {
                return Ok(());
            };
            after = Some(*last);
            for &uuid in &page {
                let Ok(customer) = CustomerId::from_uuid(uuid) else {
                    continue;
                };
                let fields = self.ledger.expire(customer, now, dry_run).await?;
                let consents = fields
                    .iter()
                    .filter(|f| matches!(f, FieldPath::Consent(_)))
                    .count() as u64;
                report.consents_expired += consents;
                report.values_expired += fields.len() as u64 - consents;
                report.customers_expired += u64::from(!fields.is_empty());
            }
            report.customers += page.len() as u64;
            progress(RetentionProgress {
                customers: report.customers,
                expired: report.values_expired + report.consents_expired,
            });
        }
    }
}

/// The instant before which rows are older than `keep`; `None`: kept for ever (or a limit
/// reaching before the calendar's start, which nothing is older than).
fn cutoff(now: DateTime<Utc>, keep: Option<Duration>) -> Option<DateTime<Utc>> {
    now.checked_sub_signed(keep?)
}
