//! Duplicate candidates (issue 17): two records that share a verified identifier, or the
//! policy's secondary rule, open a `duplicate_candidate` exception for stewards. Found live,
//! after each command that may have given its customer a match key, and by a backfill over
//! every record for those written before detection existed — both through
//! `candidates_of`, so the rule is one.

use chrono::Utc;
use idledger_domain::command::{Change, Command};
use idledger_domain::delivery::OtherCustomer;
use idledger_domain::field::FieldPath;
use idledger_domain::ids::CustomerId;
use idledger_domain::lookup::duplicate_match;
use idledger_domain::state::CustomerState;
use idledger_store::delivery::{
    ExceptionFilter, ExceptionKind, ExceptionSubject, NewSyncException, SyncException,
};
use idledger_store::{Executed, StoreError};
use serde::{Deserialize, Serialize};

use crate::App;

/// How many customers one match key may find before the rest are left unchecked: an
/// identifier shared that widely (a shop's own phone number) is a data problem a steward
/// sees from the first candidates, not a reason to read hundreds of records per write.
const MAX_CANDIDATES_PER_KEY: u32 = 20;

/// Customers read per page by the backfill.
const PAGE: u32 = 200;

/// Who a backfill's exceptions say found them (`found_by`), where the live ones name the
/// writer whose command made the match.
pub const BACKFILL_FINDER: &str = "system:duplicates-backfill";

/// What a backfill did or, for a dry run, would do.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackfillReport {
    pub dry_run: bool,
    /// Customers read (those with a record that is neither erased nor merged).
    pub customers: u64,
    /// Pairs that had no duplicate candidate exception, now opened (or that would be).
    pub opened: u64,
    /// Pairs that already had one, open or closed (dismissed, merged…): left as they are.
    pub already_known: u64,
}

/// How far a backfill has come, for a progress counter.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BackfillProgress {
    pub customers: u64,
    pub opened: u64,
}

/// A pair the rule matched: the exception that says so, keyed on the lower id.
struct Candidate {
    low: CustomerId,
    high: CustomerId,
    exception: NewSyncException,
}

impl App {
    /// After a command that may have given its customer a match key (an email or phone set or
    /// verified, an external id, a field of the secondary rule, an accepted proposal), opens
    /// or counts again a `duplicate_candidate` exception for every candidate
    /// (`candidates_of`). Runs after the command committed, whether it changed
    /// anything (a repeated write counts the open exception again); a failure is logged,
    /// without values, and never changes the answer. `found_by` (a source,
    /// `steward:<label>`) is the writer whose command made the match. Matched on the record
    /// as the command left it (`Executed::state`), not read back.
    pub(crate) async fn look_for_duplicates(
        &self,
        command: &Command,
        executed: &Executed,
        found_by: &str,
    ) {
        let rule = self.ledger.policy().secondary_rule();
        let may_match = command.changes.iter().any(|change| match change {
            Change::SetField { field, .. } => {
                matches!(
                    field,
                    FieldPath::Email | FieldPath::Phone | FieldPath::ExternalId(_)
                ) || rule.fields().contains(field)
            }
            Change::ConfirmVerification { .. } | Change::AcceptProposal { .. } => true,
            _ => false,
        });
        if !may_match {
            return;
        }
        // The record as the command left it, which its executor already holds.
        let Some(state) = executed.state.as_deref() else {
            return;
        };
        let opened = async {
            for c in self
                .candidates_of(command.customer_id, state, found_by)
                .await?
            {
                self.deliveries.open_exception(&c.exception).await?;
            }
            Ok::<_, StoreError>(())
        };
        if let Err(e) = opened.await {
            tracing::warn!(error = %e, "could not look for duplicate candidates");
        }
    }

    /// Opens the duplicate candidates the live detection would have opened had it existed
    /// when the records were written: every customer's candidates, in id order. A pair that
    /// has a `duplicate_candidate` exception already, open or closed (a steward dismissed it,
    /// a merge closed it), is left alone, so a second run opens nothing. Erased and merged
    /// records are neither read nor matched. A `dry_run` counts and opens nothing.
    #[tracing::instrument(skip_all, fields(dry_run))]
    pub async fn backfill_duplicates(
        &self,
        dry_run: bool,
        progress: &(dyn Fn(BackfillProgress) + Send + Sync),
    ) -> Result<BackfillReport, StoreError> {
        let mut report = BackfillReport {
            dry_run,
            ..BackfillReport::default()
        };
        // Pairs opened by this dry run (a real run finds its own as already known).
        let mut seen = std::collections::BTreeSet::new();
        let mut after = None;
        loop {
            let page = self.deliveries.customer_page(after, PAGE).await?;
            let Some(last) = page.last() else { break };
            after = Some(*last);
            for &uuid in &page {
                let Ok(customer) = CustomerId::from_uuid(uuid) else {
                    continue;
                };
                let Some(state) = self.ledger.state(customer).await? else {
                    continue;
                };
                if state.erased.is_some() || state.merged_into.is_some() {
                    continue;
                }
                report.customers += 1;
                for c in self
                    .candidates_of(customer, &state, BACKFILL_FINDER)
                    .await?
                {
                    if seen.contains(&(c.low, c.high)) {
                        continue;
                    }
                    seen.insert((c.low, c.high));
                    if !self.pair_exceptions(c.low, c.high, false).await?.is_empty() {
                        report.already_known += 1;
                        continue;
                    }
                    if !dry_run {
                        self.deliveries.open_exception(&c.exception).await?;
                    }
                    report.opened += 1;
                }
            }
            progress(BackfillProgress {
                customers: report.customers,
                opened: report.opened,
            });
        }
        tracing::info!(
            customers = report.customers,
            opened = report.opened,
            already_known = report.already_known,
            "duplicate backfill done"
        );
        Ok(report)
    }

    /// The one rule of duplicate candidates: every other customer the blind index finds by
    /// one of `customer`'s match keys, neither erased nor merged, that the two records
    /// confirm (`lookup::duplicate_match`), as the exception to open about the pair.
    async fn candidates_of(
        &self,
        customer: CustomerId,
        state: &CustomerState,
        found_by: &str,
    ) -> Result<Vec<Candidate>, StoreError> {
        if state.erased.is_some() || state.merged_into.is_some() {
            return Ok(Vec::new());
        }
        let rule = self.ledger.policy().secondary_rule();
        let mut out = Vec::new();
        for other in self
            .ledger
            .duplicate_candidates(customer, state, MAX_CANDIDATES_PER_KEY)
            .await?
        {
            let Some(theirs) = self.ledger.state(other).await? else {
                continue;
            };
            if theirs.erased.is_some() || theirs.merged_into.is_some() {
                continue;
            }
            let Some(found) = duplicate_match(state, &theirs, rule) else {
                continue;
            };
            // One key per pair whichever side changed: the lower id is the exception's
            // customer, the other its subject (and named in the detail).
            let (low, high) = if customer < other {
                (customer, other)
            } else {
                (other, customer)
            };
            let detail = serde_json::json!({
                "strength": found.strength.as_str(),
                "matched_on": found.matched_on,
                "other_customer_id": high,
                "changed_customer_id": customer,
                "found_by": found_by,
            });
            let exception = NewSyncException::new(
                ExceptionKind::DuplicateCandidate,
                ExceptionSubject::Customer(OtherCustomer::new(high)),
                low,
                None,
                detail,
                Utc::now(),
            )?;
            out.push(Candidate {
                low,
                high,
                exception,
            });
        }
        Ok(out)
    }

    /// The `duplicate_candidate` exceptions of the pair (keyed on the lower id), only the
    /// open one with `open_only`.
    pub(crate) async fn pair_exceptions(
        &self,
        a: CustomerId,
        b: CustomerId,
        open_only: bool,
    ) -> Result<Vec<SyncException>, StoreError> {
        let (low, high) = if a < b { (a, b) } else { (b, a) };
        let filter = ExceptionFilter {
            customer: Some(low),
            kind: Some(ExceptionKind::DuplicateCandidate),
            open_only,
            ..ExceptionFilter::default()
        };
        let subject = ExceptionSubject::Customer(OtherCustomer::new(high));
        Ok(self
            .deliveries
            .exceptions(&filter, 1000)
            .await?
            .into_iter()
            .filter(|e| e.customer_id == low && e.subject == subject)
            .collect())
    }
}
