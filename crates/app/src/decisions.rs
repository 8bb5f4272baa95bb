//! Decisions at the moment of use: a processor asks whether it may use fields of customers
//! for a purpose, now. Each customer's state is read fresh from the store (never a cached
//! copy, so a withdrawal committed by any process before the question is read is seen), the
//! answer is decided by `idledger_domain::usage::decide_use`, an allowing one is given a signed
//! decision token (a compact JWS, [`DECISION_TYP`]), and every answer is logged before any
//! leaves.

use chrono::{DateTime, Duration, Utc};
use futures::{StreamExt as _, TryStreamExt as _};
use idledger_domain::alias::CustomerNames;
use idledger_domain::ids::CustomerId;
use idledger_domain::usage::{UseAnswer, UseQuestion, decide_use};
use idledger_store::decisions::{Asker, DecisionLog, DecisionRecord, Decisions};
use idledger_store::{Ledger, StoreError, TokenSigner};
use serde::Serialize;
use uuid::Uuid;

/// The JWS `typ` of a decision token.
pub const DECISION_TYP: &str = "idledger-decision+jwt";

/// How decision tokens are issued: the signer (its key in use), how long one is valid, and
/// the issuer it names (`iss`: this instance).
#[derive(Debug, Clone)]
pub struct TokenIssue<'a> {
    pub signer: &'a TokenSigner,
    pub ttl: Duration,
    pub issuer: &'a str,
}

/// The claims of a decision token: proof that `processor` was allowed to use `fields` of
/// `sub` for `purpose` at `iat`, on the basis named, until `exp`.
#[derive(Debug, Clone, Serialize)]
pub struct DecisionClaims<'a> {
    pub iss: &'a str,
    /// The decision's id: its entry in the decision log.
    pub jti: Uuid,
    /// The customer, as the processor names them.
    pub sub: &'a str,
    pub processor: &'a str,
    pub purpose: &'a str,
    /// The fields allowed (only those).
    pub fields: Vec<String>,
    pub basis: Option<&'a str>,
    pub consent: Option<ConsentClaim<'a>>,
    pub policy_version: &'a str,
    pub stream_version: u64,
    pub iat: i64,
    pub exp: i64,
}

/// The consent record a decision rests on.
#[derive(Debug, Clone, Serialize)]
pub struct ConsentClaim<'a> {
    pub event_id: Uuid,
    pub version: u64,
    pub notice_id: &'a str,
    pub notice_version: &'a str,
    pub notice_sha256: &'a str,
}

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
    /// The decision token, when some field was allowed.
    pub token: Option<String>,
}

/// Answers questions over one store.
#[derive(Debug, Clone)]
pub struct Decider {
    ledger: Ledger,
    decisions: Decisions,
    log: DecisionLog,
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
        let decisions = ledger.store().decisions();
        Self {
            log: DecisionLog::new(decisions.clone()),
            decisions,
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

    /// Decides `question` for each of `customers` on their current state, signs a token for
    /// each allowing answer, and logs every answer before returning them (in the order given).
    pub async fn decide(
        &self,
        asker: &KnownAsker,
        question: &UseQuestion,
        customers: &[CustomerId],
        issue: &TokenIssue<'_>,
    ) -> Result<Vec<Decided>, DecideError> {
        let token_ttl = issue.ttl;
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
            let mut d = self.record_of(asker, question, customer, answer, now, token_ttl);
            if let Some(exp) = d.record.token_expires_at {
                d.token = Some(
                    issue
                        .signer
                        .sign(DECISION_TYP, &claims(&d, issue.issuer, exp))
                        .await?,
                );
            }
            decided.push(d);
        }
        let records: Vec<DecisionRecord> = decided.iter().map(|d| d.record.clone()).collect();
        self.log.record(records).await?;
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
            token: None,
        }
    }
}

fn claims<'a>(d: &'a Decided, issuer: &'a str, exp: DateTime<Utc>) -> DecisionClaims<'a> {
    let r = &d.record;
    DecisionClaims {
        iss: issuer,
        jti: r.decision_id,
        sub: &d.customer_name,
        processor: &r.processor_id,
        purpose: r.purpose.as_str(),
        fields: d.answer.allowed().iter().map(ToString::to_string).collect(),
        basis: d.answer.basis.as_ref().map(|b| b.basis.as_str()),
        consent: d.answer.basis.as_ref().map(|b| ConsentClaim {
            event_id: b.event_id.as_uuid(),
            version: b.version,
            notice_id: b.notice.id(),
            notice_version: b.notice.version(),
            notice_sha256: b.notice.sha256(),
        }),
        policy_version: &r.policy_version,
        stream_version: r.stream_version,
        iat: r.decided_at.timestamp(),
        exp: exp.timestamp(),
    }
}
