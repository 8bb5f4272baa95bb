//! Merging two records of one person and undoing it (`idledger_domain::merge`), for stewards:
//! the duplicate candidate between them closes with the merge, in its transaction, and the
//! steward activity view shows both.

use chrono::Utc;
use idledger_domain::exception::{self, ExceptionCommand};
use idledger_domain::ids::CustomerId;
use idledger_store::delivery::{NewActivity, SyncException};
use idledger_store::model::ExceptionWrite;
use idledger_store::{MergeError, MergeResult, StoreError};

use crate::App;
use crate::stewardship::Steward;

impl App {
    /// Merges `absorbed` into `survivor` as `steward`, for `reason`. The open duplicate
    /// candidate between them, if any, is closed in the same transaction.
    pub async fn merge(
        &self,
        steward: &Steward,
        survivor: CustomerId,
        absorbed: CustomerId,
        reason: &str,
    ) -> Result<MergeResult, MergeError> {
        let reason = reason.trim();
        // Found again if it closes meanwhile (an erasure, a dismissal): the merge is retried
        // without it rather than refused.
        for _ in 0..2 {
            let pair = self
                .pair_exceptions(survivor, absorbed, true)
                .await?
                .into_iter()
                .next();
            let at = Utc::now();
            let write = match &pair {
                Some(e) => Some(self.closing_write(e, steward, survivor, reason, at)?),
                None => None,
            };
            match self
                .ledger
                .merge(survivor, absorbed, steward.actor(), reason, write)
                .await
            {
                Ok(done) => {
                    if pair.is_none() {
                        self.log_merge(steward, "merge", &done, reason).await;
                    }
                    return Ok(done);
                }
                Err(MergeError::ExceptionNotOpen { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
        self.ledger
            .merge(survivor, absorbed, steward.actor(), reason, None)
            .await
    }

    /// Undoes the merge of `absorbed` into `survivor` as `steward`, for `reason`.
    pub async fn unmerge(
        &self,
        steward: &Steward,
        survivor: CustomerId,
        absorbed: CustomerId,
        reason: &str,
    ) -> Result<MergeResult, MergeError> {
        let reason = reason.trim();
        let done = self
            .ledger
            .unmerge(survivor, absorbed, steward.actor(), reason)
            .await?;
        self.log_merge(steward, "unmerge", &done, reason).await;
        Ok(done)
    }

    fn closing_write(
        &self,
        exception: &SyncException,
        steward: &Steward,
        survivor: CustomerId,
        reason: &str,
        at: chrono::DateTime<Utc>,
    ) -> Result<ExceptionWrite, MergeError> {
        let state = exception.state()?;
        let note = format!("merged into {survivor} by {}", steward.name());
        let event = exception::decide(
            Some(&state),
            &ExceptionCommand::CloseAutomatically { note, at },
        )
        .map_err(|e| StoreError::Integrity(e.to_string()))?
        .into_iter()
        .next()
        .ok_or_else(|| StoreError::Integrity("an open exception did not close".to_owned()))?;
        Ok(ExceptionWrite {
            exception_id: exception.id,
            event,
            activity: Some(NewActivity {
                steward: steward.name(),
                action: "merge",
                exception_id: Some(exception.id),
                approval_id: None,
                customer_id: survivor,
                field: None,
                event_ids: Vec::new(),
                detail: Some(exception.customer_id.to_string()),
                reason: Some(reason.to_owned()),
                at,
            }),
            approval: None,
        })
    }

    /// The activity line of a merge or unmerge that closed no exception, written after it
    /// (like a steward's direct command): a failure here is logged, the merge stands.
    async fn log_merge(
        &self,
        steward: &Steward,
        action: &'static str,
        done: &MergeResult,
        reason: &str,
    ) {
        let activity = NewActivity {
            steward: steward.name(),
            action,
            exception_id: None,
            approval_id: None,
            customer_id: done.survivor,
            field: None,
            event_ids: Vec::new(),
            detail: Some(done.absorbed.to_string()),
            reason: Some(reason.to_owned()),
            at: Utc::now(),
        };
        if let Err(e) = self.deliveries().record_activity(&activity).await {
            tracing::warn!(error = %e, "could not log a merge in the steward activity");
        }
    }
}
