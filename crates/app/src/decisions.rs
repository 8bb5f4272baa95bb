//! Decisions at the moment of use: a processor asks whether it may use fields of customers
//! for a purpose, now. Each customer's state is read fresh from the store (never a cached
//! copy, so a withdrawal committed by any process before the question is read is seen), the
//! answer is decided by `idledger_domain::usage::decide_use`, every answer is logged before it
//! leaves, and an allowing one carries a signed decision token.

use chrono::{DateTime, Duration, Utc};
use futures::{StreamExt as _, TryStreamExt as _};
use idledger_domain::alias::CustomerNames;
use idledger_domain::ids::CustomerId;
use idledger_domain::usage::{UseAnswer, UseQuestion, decide_use};
use idledger_store::decisions::{Asker, DecisionRecord, Decisions};
use idledger_store::{Ledger, StoreError};
use uuid::Uuid;

/// How many customers' states a batch reads at once.
const READ_CONCURRENCY: usize = 8;

/// The most customers one batch question may name.
pub const MAX_BATCH: usize = 10_000;

/// Why a question was not answered.
#[derive(Debug, thiserror::Error)]
pub enum DecideError {
    #[error("no processor or consumer '{0}' is registered")]
    UnknownProcessor(String),
    #[error("the processor '{0}' is disabled")]
    Disabled(String),
    #[error("customer {index}: {reason}")]
    InvalidCustomer { index: usize, reason: String },
    #[error("name between 1 and {MAX_BATCH} customers")]
    BatchSize,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Who asks: the processor (or consumer) a token speaks for, and the token.
#[derive(Debug, Clone)]
pub struct AskedBy {
    pub processor_id: String,
    pub token_id: Uuid,
}

/// One customer's answer, as logged, with how the asker names the customer.
#[derive(Debug, Clone)]
pub struct Decided {
    pub record: DecisionRecord,
    pub answer: UseAnswer,
    /// The customer as the asker names them (an alias for a pseudonymous consumer).
    pub customer_name: String,
}

/// Answers questions over one store.
#[derive(Debug, Clone)]
pub struct Decider {
    ledger: Ledger,
    decisions: Decisions,
}

/// An asker, checked: registered, enabled, and how it names customers.
#[derive(Debug, Clone)]
pub struct KnownAsker {
    asker: Asker,
    names: CustomerNames,
    by: AskedBy,
}

impl Decider {
    pub fn new(ledger: Ledger) -> Self {
        Self {
            decisions: ledger.store().decisions(),
            ledger,
        }
    }

    pub fn decisions(&self) -> &Decisions {
        &self.decisions
    }

    /// The registered, enabled processor or consumer `by` speaks for.
    pub async fn asker(&self, by: AskedBy) -> Result<KnownAsker, DecideError> {
        let asker = self
            .decisions
            .asker(&by.processor_id)
            .await?
            .ok_or_else(|| DecideError::UnknownProcessor(by.processor_id.clone()))?;
        if !asker.is_enabled() {
            return Err(DecideError::Disabled(by.processor_id));
        }
        let names = match &asker {
            Asker::Consumer(c) => self.ledger.customer_names(c),
            Asker::Processor(_) => CustomerNames::Ids,
        };
        Ok(KnownAsker { asker, names, by })
    }

    /// The customers `raw` names, as `asker` names them (ids, or a pseudonymous consumer's
    /// aliases); the first one that names none is refused with its index.
    pub fn customers(
        &self,
        asker: &KnownAsker,
        raw: &[String],
    ) -> Result<Vec<CustomerId>, DecideError> {
        if raw.is_empty() || raw.len() > MAX_BATCH {
            return Err(DecideError::BatchSize);
        }
        raw.iter()
            .enumerate()
            .map(|(index, name)| {
                asker
                    .names
                    .resolve(name)
                    .map_err(|e| DecideError::InvalidCustomer {
                        index,
                        reason: e.to_string(),
                    })
            })
            .collect()
    }

    /// Decides `question` for each of `customers` on their current state, and logs every
    /// answer before returning them (in the order given).
    pub async fn decide(
        &self,
        asker: &KnownAsker,
        question: &UseQuestion,
        customers: &[CustomerId],
        token_ttl: Duration,
    ) -> Result<Vec<Decided>, DecideError> {
        let grant = asker.asker.grant();
        let policy = self.ledger.policy();
        let states: Vec<_> = futures::stream::iter(customers.iter().copied())
            .map(|c| async move { self.ledger.state(c).await.map(|s| (c, s)) })
            .buffered(READ_CONCURRENCY)
            .try_collect()
            .await?;
        let mut decided = Vec::with_capacity(states.len());
        for (customer, state) in states {
            let now = Utc::now();
            let answer = decide_use(policy, &grant, question, state.as_ref(), now);
            decided.push(self.record_of(asker, question, customer, answer, now, token_ttl));
        }
        let records: Vec<DecisionRecord> = decided.iter().map(|d| d.record.clone()).collect();
        self.decisions.record(&records).await?;
        Ok(decided)
    }

    fn record_of(
        &self,
        asker: &KnownAsker,
        question: &UseQuestion,
        customer: CustomerId,
        answer: UseAnswer,
        now: DateTime<Utc>,
        token_ttl: Duration,
    ) -> Decided {
        let allowed = answer.fields.iter().any(|f| f.allowed);
        let record = DecisionRecord {
            decision_id: Uuid::now_v7(),
            decided_at: idledger_store::model::truncate_to_micros(now),
            processor_id: asker.by.processor_id.clone(),
            token_id: asker.by.token_id,
            customer_id: customer,
            purpose: question.purpose.clone(),
            tiers: answer.tiers.clone(),
            answers: answer.fields.clone(),
            allowed,
            basis: answer.basis.as_ref().map(|b| b.basis),
            basis_event_id: answer.basis.as_ref().map(|b| b.event_id),
            basis_version: answer.basis.as_ref().map(|b| b.version),
            stream_version: answer.stream_version,
            policy_version: self.ledger.policy().version().as_str().to_owned(),
            token_expires_at: allowed
                .then(|| idledger_store::model::truncate_to_micros(now + token_ttl)),
        };
        Decided {
            record,
            answer,
            customer_name: asker.names.show(customer).to_string(),
        }
    }
}
