//! A data subject's access and portability export (GDPR Art. 15 and 20): everything idledger
//! holds about one customer, and to whom it went.

use chrono::{DateTime, Utc};
use idledger_domain::ids::CustomerId;
use idledger_domain::scope::ReadScope;
use idledger_domain::state::CustomerState;
use idledger_store::decisions::{DecisionEntry, DecisionFilter};
use idledger_store::delivery::{
    ExceptionFilter, HandoffEntry, HandoffFilter, MAX_PAGE, SyncException,
};
use idledger_store::disclosures::{Disclosure, DisclosureEntry, DisclosureFilter, Recipient};
use idledger_store::model::RecordedEvent;
use uuid::Uuid;

use crate::App;
use crate::reads::ReadError;

/// Everything about one customer: the record, every event of their stream with its provenance
/// (consents are among them), every handoff to a consumer, every disclosure (reads by source
/// systems, earlier exports), every decision on the use of their data and every sync
/// exception about them, open or closed — and the same of every record merged into theirs.
#[derive(Debug, Clone)]
pub struct SubjectExport {
    pub customer_id: CustomerId,
    pub exported_at: DateTime<Utc>,
    pub state: CustomerState,
    /// Oldest first.
    pub events: Vec<RecordedEvent>,
    pub handoffs: Vec<HandoffEntry>,
    /// Including this export's own entry.
    pub disclosures: Vec<DisclosureEntry>,
    /// Every question a processor asked about the customer, and the answer.
    pub decisions: Vec<DecisionEntry>,
    pub exceptions: Vec<SyncException>,
}

impl App {
    /// Exports everything about `customer` for the subject, and logs the export in the
    /// disclosure log as a disclosure of every field to the subject (before anything is
    /// read, so a failure to log it gives nothing away). `token_id`: who asked, `None` from
    /// the command line. An erased customer has nothing left to export (`ReadError::Erased`).
    ///
    /// A survivor's export holds the records merged into it too (they are the same person):
    /// their events, handoffs, disclosures, decisions and exceptions, each naming its record.
    /// A record merged into another is exported through its survivor
    /// (`ReadError::MergedInto`).
    pub async fn export(
        &self,
        customer: CustomerId,
        token_id: Option<Uuid>,
    ) -> Result<SubjectExport, ReadError> {
        let state = self
            .ledger
            .state(customer)
            .await?
            .ok_or(ReadError::NotFound(customer))?;
        if let Some(erasure) = &state.erased {
            return Err(ReadError::Erased {
                customer,
                at: erasure.at,
            });
        }
        if let Some(link) = &state.merged_into {
            return Err(ReadError::MergedInto {
                customer,
                survivor: link.customer,
            });
        }
        let exported_at = Utc::now();
        let records: Vec<CustomerId> = std::iter::once(customer)
            .chain(state.absorbed.keys().copied())
            .collect();
        for record in &records {
            let fields = if *record == customer {
                ReadScope::Everything.disclosed(self.ledger.policy(), &state)
            } else {
                match self.ledger.state(*record).await? {
                    Some(theirs) => ReadScope::Everything.disclosed(self.ledger.policy(), &theirs),
                    None => Vec::new(),
                }
            };
            self.disclosures
                .record(&Disclosure {
                    customer_id: *record,
                    recipient: Recipient::Subject,
                    token_id,
                    fields,
                    disclosed_at: exported_at,
                })
                .await?;
        }
        let mut export = SubjectExport {
            customer_id: customer,
            exported_at,
            state,
            events: Vec::new(),
            handoffs: Vec::new(),
            disclosures: Vec::new(),
            decisions: Vec::new(),
            exceptions: Vec::new(),
        };
        for record in records {
            export
                .events
                .extend(self.ledger.stream(record, None, None).await?);
            export.handoffs.extend(self.all_handoffs(record).await?);
            export
                .disclosures
                .extend(self.all_disclosures(record).await?);
            export.decisions.extend(self.all_decisions(record).await?);
            export.exceptions.extend(self.all_exceptions(record).await?);
        }
        if !export.state.absorbed.is_empty() {
            // One timeline, as if the records had always been one.
            export
                .events
                .sort_by_key(|e| (e.recorded_at, e.global_position));
            export.handoffs.sort_by_key(|h| h.seq);
            export.disclosures.sort_by_key(|d| d.seq);
            export.decisions.sort_by_key(|d| d.seq);
            export.exceptions.sort_by_key(|e| (e.created_at, e.id));
        }
        Ok(export)
    }

    async fn all_decisions(&self, customer: CustomerId) -> Result<Vec<DecisionEntry>, ReadError> {
        let filter = DecisionFilter {
            customer: Some(customer),
            ..DecisionFilter::default()
        };
        let mut out = Vec::new();
        let mut after = None;
        loop {
            let page = self
                .decider
                .decisions()
                .list(&filter, after, MAX_PAGE)
                .await?;
            out.extend(page.items);
            match page.next {
                Some(next) => after = Some(next),
                None => return Ok(out),
            }
        }
    }

    async fn all_handoffs(&self, customer: CustomerId) -> Result<Vec<HandoffEntry>, ReadError> {
        let filter = HandoffFilter::Customer(customer);
        let mut out = Vec::new();
        let mut after = None;
        loop {
            let page = self.deliveries.handoffs(&filter, after, MAX_PAGE).await?;
            out.extend(page.items);
            match page.next {
                Some(next) => after = Some(next),
                None => return Ok(out),
            }
        }
    }

    async fn all_disclosures(
        &self,
        customer: CustomerId,
    ) -> Result<Vec<DisclosureEntry>, ReadError> {
        let filter = DisclosureFilter::Customer(customer);
        let mut out = Vec::new();
        let mut after = None;
        loop {
            let page = self.disclosures.list(&filter, after, MAX_PAGE).await?;
            out.extend(page.items);
            match page.next {
                Some(next) => after = Some(next),
                None => return Ok(out),
            }
        }
    }

    async fn all_exceptions(&self, customer: CustomerId) -> Result<Vec<SyncException>, ReadError> {
        let mut filter = ExceptionFilter {
            customer: Some(customer),
            ..ExceptionFilter::default()
        };
        let mut out: Vec<SyncException> = Vec::new();
        loop {
            let page = self.deliveries.exceptions(&filter, MAX_PAGE).await?;
            let full = page.len() == MAX_PAGE as usize;
            filter.after = page.last().map(|e| e.id);
            out.extend(page);
            if !full {
                return Ok(out);
            }
        }
    }
}
