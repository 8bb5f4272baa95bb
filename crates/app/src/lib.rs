//! idledger's use cases: what a source system, a steward or an administrator asks of the
//! record, whichever edge they come through (the HTTP API, the steward page, the CLI).
//!
//! - [`commands`]: run a command, and open the sync exceptions a proposal or a refused write
//!   is for stewards; erase a customer.
//! - [`decisions`]: decisions at the moment of use ([`Decider`]): may a processor use fields
//!   of customers for a purpose, now — decided on fresh state, logged before answered.
//! - [`duplicates`]: duplicate candidates, found live after a command and by a backfill
//!   over every record, by one rule.
//! - [`export`]: a data subject's access and portability export, logged as a disclosure.
//! - [`households`]: create, join and leave a household (commands of the member's
//!   `household` field) and the household view (its members through the blind index,
//!   within the reader's scope).
//! - [`proposals`]: the open proposals a field's system of record may decide with its own
//!   token (`GET /v1/proposals?system_of_record=me`).
//! - [`reads`]: a record as its reader may see it (the policy's read scope), the past only for
//!   stewards and auditors, and the disclosure log of what source systems read; finding
//!   customers by identifier (the blind index) within the same scope.
//! - [`retention`]: expire what the policy keeps too long (values, consent records) and delete
//!   old handoffs, idempotency records and reconciliation runs, at an instant the caller gives.
//! - [`tokens`]: token administration ([`TokenAdmin`]): create (checked: the system a token
//!   speaks for, its label, expiry and scopes), list, rotate, revoke — for the CLI and the API.
//! - [`stewardship`]: query sync exceptions ([`ExceptionQuery`], the one parser of their
//!   filters), read one, act on one or many — a steward's action and the exception's change in
//!   one transaction.
//!
//! Architecture invariant: this crate knows neither HTTP nor the terminal. The edges parse
//! their input into the types here and render what comes back; every rule between is here,
//! in the domain, or in the store.

pub mod commands;
pub mod decisions;
pub mod duplicates;
pub mod export;
pub mod households;
pub mod merges;
pub mod proposals;
pub mod reads;
pub mod retention;
pub mod stewardship;
pub mod tokens;

use idledger_reconcile::Reconciler;
use idledger_store::{Deliveries, Disclosures, Ledger, Runs, Tokens};

pub use decisions::{AskedBy, DecideError, Decided, Decider, TokenIssue};
pub use duplicates::{BackfillProgress, BackfillReport};
pub use export::SubjectExport;
pub use households::{Household, HouseholdMember, MembershipCommand, MembershipError};
pub use proposals::{AddressedProposal, ProposalPage};
pub use reads::{MAX_MATCHES, Matches, ReadError, Reader, RecordRead};
pub use retention::{RetentionError, RetentionProgress, RetentionReport};
pub use stewardship::{
    ActError, ActionDone, AssignTo, AssigneeQuery, ExceptionQuery, ListError, QueryError, Steward,
    StewardRequest, WorkflowError, parse_age,
};
pub use tokens::{NewToken, Revoked, TokenAdmin, TokenError};

/// The use cases over one store. Cheap to clone.
#[derive(Debug, Clone)]
pub struct App {
    ledger: Ledger,
    deliveries: Deliveries,
    disclosures: Disclosures,
    runs: Runs,
    tokens: Tokens,
    reconciler: Reconciler,
    decider: Decider,
}

impl App {
    pub fn new(ledger: Ledger) -> Self {
        let store = ledger.store();
        Self {
            deliveries: store.deliveries(),
            disclosures: store.disclosures(),
            runs: store.runs(),
            tokens: store.tokens(),
            reconciler: Reconciler::new(ledger.clone()),
            decider: Decider::new(ledger.clone()),
            ledger,
        }
    }

    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    pub fn deliveries(&self) -> &Deliveries {
        &self.deliveries
    }

    pub fn disclosures(&self) -> &Disclosures {
        &self.disclosures
    }

    pub fn runs(&self) -> &Runs {
        &self.runs
    }

    pub fn tokens(&self) -> &Tokens {
        &self.tokens
    }

    /// Token administration over this store.
    pub fn token_admin(&self) -> TokenAdmin {
        TokenAdmin::new(self.tokens.clone())
    }

    pub fn reconciler(&self) -> &Reconciler {
        &self.reconciler
    }

    /// Decisions at the moment of use, the processor registry and the decision log.
    pub fn decider(&self) -> &Decider {
        &self.decider
    }
}
