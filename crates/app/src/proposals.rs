//! Proposals addressed to a field's system of record: the open ones it may decide with its
//! own token (`AcceptProposal` / `RejectProposal` through a command), read from what is
//! stored — the open `proposal` sync exceptions name the customer, the field and the
//! proposal; the value is in the customer's sealed record, read through the ledger.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use idledger_domain::event::StewardAction;
use idledger_domain::exception::LastAction;
use idledger_domain::field::{FieldPath, FieldValue};
use idledger_domain::ids::{CustomerId, ProposalId, SourceId};
use idledger_domain::state::CustomerState;
use idledger_store::StoreError;
use idledger_store::delivery::{ExceptionFilter, ExceptionKind, ExceptionStatus};
use idledger_store::disclosures::{Disclosure, Recipient};
use uuid::Uuid;

use crate::App;
use crate::reads::Reader;

/// Open exceptions read from the store per step of a listing.
const SCAN_PAGE: u32 = 500;
/// Steps one listing takes at most before it answers with what it found and a cursor, so a
/// system of record with few proposals among many others' never holds a request long.
const MAX_SCAN_STEPS: usize = 20;

/// One open proposal its field's system of record may decide.
#[derive(Debug, Clone, PartialEq)]
pub struct AddressedProposal {
    /// The open `proposal` exception about it (the paging cursor).
    pub exception_id: Uuid,
    pub proposal_id: ProposalId,
    pub customer_id: CustomerId,
    pub field: FieldPath,
    /// `None` where the reader's scope does not cover it (never for the system of record).
    pub value: Option<FieldValue>,
    pub proposed_by: SourceId,
    pub proposed_at: DateTime<Utc>,
    /// The steward's `route` action, if one sent it to the system of record.
    pub routed: Option<LastAction>,
}

/// A page of proposals, in the order their exceptions were opened.
#[derive(Debug, Clone, PartialEq)]
pub struct ProposalPage {
    pub proposals: Vec<AddressedProposal>,
    /// The next page's `after`; `None` when nothing is left. A page may hold fewer than the
    /// limit and still have a next one (the scan stops after a bounded number of steps).
    pub next_after: Option<Uuid>,
}

impl App {
    /// The open proposals whose field's system of record (under the policy in force) is
    /// `system_of_record`, after exception `after`, at most `limit`. A source reading them
    /// sees the values its read scope covers (the system of record reads the fields it owns),
    /// and its read is logged as a disclosure per customer before it is answered.
    pub async fn proposals_for(
        &self,
        reader: &Reader,
        system_of_record: &SourceId,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<ProposalPage, StoreError> {
        let policy = self.ledger.policy();
        let scope = reader.scope();
        let limit = limit.clamp(1, idledger_store::delivery::MAX_PAGE) as usize;
        let mut cursor = after;
        let mut states: BTreeMap<CustomerId, Option<CustomerState>> = BTreeMap::new();
        let mut proposals = Vec::new();
        let mut next_after = None;
        let mut done = false;
        for _ in 0..MAX_SCAN_STEPS {
            let filter = ExceptionFilter {
                consumer: None,
                customer: None,
                kind: Some(ExceptionKind::Proposal),
                field: None,
                status: Some(ExceptionStatus::Open),
                created_before: None,
                open_only: true,
                after: cursor,
                ..ExceptionFilter::default()
            };
            let page = self.deliveries.exceptions(&filter, SCAN_PAGE).await?;
            let exhausted = page.len() < SCAN_PAGE as usize;
            for e in page {
                cursor = Some(e.id);
                let state = e.state()?;
                let (Some(field), Some(proposal_id)) = (state.field(), state.proposal_id) else {
                    continue;
                };
                if !policy.rule(field).decides_proposals(system_of_record) {
                    continue;
                }
                let customer = state.customer_id();
                if let std::collections::btree_map::Entry::Vacant(slot) = states.entry(customer) {
                    slot.insert(self.ledger.state(customer).await?);
                }
                // Decided or erased since the exception was opened: nothing left to decide.
                let Some(proposal) = states
                    .get(&customer)
                    .and_then(Option::as_ref)
                    .and_then(|s| s.proposals.get(&proposal_id))
                else {
                    continue;
                };
                proposals.push(AddressedProposal {
                    exception_id: state.id,
                    proposal_id,
                    customer_id: customer,
                    field: proposal.field.clone(),
                    value: scope
                        .proposal(policy, proposal)
                        .then(|| proposal.value.clone()),
                    proposed_by: proposal.proposed_by.clone(),
                    proposed_at: proposal.proposed_at,
                    routed: state
                        .last_action
                        .clone()
                        .filter(|a| a.action == StewardAction::Route),
                });
                if proposals.len() == limit {
                    next_after = Some(state.id);
                    break;
                }
            }
            if next_after.is_some() || exhausted {
                done = true;
                break;
            }
        }
        if !done {
            // Out of steps: what was found so far, and where to go on.
            next_after = cursor;
        }
        if let Reader::Source { source, token_id } = reader {
            let mut shown: BTreeMap<CustomerId, Vec<FieldPath>> = BTreeMap::new();
            for p in proposals.iter().filter(|p| p.value.is_some()) {
                let fields = shown.entry(p.customer_id).or_default();
                if !fields.contains(&p.field) {
                    fields.push(p.field.clone());
                }
            }
            let now = Utc::now();
            for (customer, fields) in shown {
                self.disclosures
                    .record(&Disclosure {
                        customer_id: customer,
                        recipient: Recipient::Source(source.clone()),
                        token_id: Some(*token_id),
                        fields,
                        disclosed_at: now,
                    })
                    .await?;
            }
        }
        Ok(ProposalPage {
            proposals,
            next_after,
        })
    }
}
