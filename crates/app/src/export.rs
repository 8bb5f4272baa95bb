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
/// exception about them, open or closed.
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
        let exported_at = Utc::now();
        self.disclosures
            .record(&Disclosure {
                customer_id: customer,
                recipient: Recipient::Subject,
                token_id,
                fields: ReadScope::Everything.disclosed(self.ledger.policy(), &state),
                disclosed_at: exported_at,
            })
            .await?;
        let events = self.ledger.stream(customer, None, None).await?;
        let handoffs = self.all_handoffs(customer).await?;
        let disclosures = self.all_disclosures(customer).await?;
        let decisions = self.all_decisions(customer).await?;
        let exceptions = self.all_exceptions(customer).await?;
        Ok(SubjectExport {
            customer_id: customer,
            exported_at,
            state,
            events,
            handoffs,
            disclosures,
            decisions,
            exceptions,
        })
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
