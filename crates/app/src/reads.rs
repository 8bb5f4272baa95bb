//! Reading a customer's record: what each reader may see of it, and the disclosure log of
//! what source systems read.

use chrono::{DateTime, Utc};
use idledger_domain::field::FieldPath;
use idledger_domain::ids::{CustomerId, SourceId};
use idledger_domain::lookup::Identifier;
use idledger_domain::scope::ReadScope;
use idledger_domain::state::CustomerState;
use idledger_store::StoreError;
use idledger_store::disclosures::{Disclosure, Recipient};
use idledger_store::model::RecordedEvent;
use uuid::Uuid;

use crate::App;

/// Who reads, as their credential proves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reader {
    /// A source system, reading with the token `token_id`: sees what the policy lets it, and
    /// each read is logged as a disclosure.
    Source { source: SourceId, token_id: Uuid },
    /// A steward, an auditor, an administrator or the operator: sees everything, the past too.
    Overseer,
}

impl Reader {
    pub fn scope(&self) -> ReadScope {
        match self {
            Self::Source { source, .. } => ReadScope::Source(source.clone()),
            Self::Overseer => ReadScope::Everything,
        }
    }
}

/// A record as one reader may see it: the whole state (consent statuses are evaluated on all
/// of it, e.g. a minor's age) and the scope that decides what of it is shown.
#[derive(Debug, Clone)]
pub struct RecordRead {
    pub customer_id: CustomerId,
    pub state: CustomerState,
    pub scope: ReadScope,
    /// The instant shown, when not the present.
    pub as_of: Option<DateTime<Utc>>,
    /// The instant consents are evaluated at (`as_of`, or now).
    pub at: DateTime<Utc>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("no customer {0}")]
    NotFound(CustomerId),
    #[error("customer {customer} was not yet registered at {at}")]
    NotYetRegistered {
        customer: CustomerId,
        at: DateTime<Utc>,
    },
    #[error("customer {customer} was erased at {at}")]
    Erased {
        customer: CustomerId,
        at: DateTime<Utc>,
    },
    /// The record is merged into `survivor`: read that one.
    #[error("customer {customer} is merged into {survivor}")]
    MergedInto {
        customer: CustomerId,
        survivor: CustomerId,
    },
    /// The reader's scope does not cover the field (a source reading a consent it may not).
    #[error("this reader may not read {0}")]
    OutOfScope(FieldPath),
    /// The customer has no record of consent (granted or withdrawn) for the purpose.
    #[error("customer {customer} has no consent record for {purpose}")]
    NoConsent {
        customer: CustomerId,
        purpose: idledger_domain::ids::Purpose,
    },
    /// Nobody is in the household: it was never created, or every member left.
    #[error("no household {0}")]
    NoHousehold(idledger_domain::ids::HouseholdId),
    /// The record's past (`as_of`, a field's history) is for stewards and auditors.
    #[error("only stewards and auditors read a record's past (as_of, history)")]
    PastForbidden,
    #[error(transparent)]
    Store(StoreError),
}

impl From<StoreError> for ReadError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Erased { customer, at } => match CustomerId::from_uuid(customer) {
                Ok(customer) => Self::Erased { customer, at },
                Err(_) => Self::Store(StoreError::Erased { customer, at }),
            },
            other => Self::Store(other),
        }
    }
}

/// At most this many customers answer one lookup; more are said to be there
/// ([`Matches::truncated`]) but not listed.
pub const MAX_MATCHES: u32 = 100;

/// The customers a lookup found, in id order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matches {
    pub customer_ids: Vec<CustomerId>,
    /// More customers hold the identifier than [`MAX_MATCHES`].
    pub truncated: bool,
}

impl App {
    /// The customers whose current values hold `identifier` (through the blind index: an
    /// erased customer, a pending or a proposed value is never found). A source finds by an
    /// identifier only if it may read every field it is made of
    /// ([`ReadError::OutOfScope`] otherwise, and nothing is looked up); each customer it
    /// finds is logged as a disclosure of those fields before the answer, as a read is.
    pub async fn find_customers(
        &self,
        reader: &Reader,
        identifier: &Identifier,
    ) -> Result<Matches, ReadError> {
        let scope = reader.scope();
        let fields = identifier.fields();
        if let Some(field) = fields
            .iter()
            .find(|f| !scope.field(self.ledger.policy(), f))
        {
            return Err(ReadError::OutOfScope(field.clone()));
        }
        let mut customer_ids = self.ledger.find(identifier, MAX_MATCHES + 1).await?;
        let truncated = customer_ids.len() > MAX_MATCHES as usize;
        customer_ids.truncate(MAX_MATCHES as usize);
        if let Reader::Source { source, token_id } = reader {
            let now = Utc::now();
            for customer in &customer_ids {
                self.disclosures
                    .record(&Disclosure {
                        customer_id: *customer,
                        recipient: Recipient::Source(source.clone()),
                        token_id: Some(*token_id),
                        fields: fields.clone(),
                        disclosed_at: now,
                    })
                    .await?;
            }
        }
        Ok(Matches {
            customer_ids,
            truncated,
        })
    }

    /// The record now, or as of an instant (overseers only). A source's read is logged as a
    /// disclosure of the fields it is shown before it is answered.
    pub async fn read_record(
        &self,
        reader: &Reader,
        customer: CustomerId,
        as_of: Option<DateTime<Utc>>,
    ) -> Result<RecordRead, ReadError> {
        let scope = reader.scope();
        if as_of.is_some() && !scope.reads_the_past() {
            return Err(ReadError::PastForbidden);
        }
        let state = match as_of {
            Some(at) => self.ledger.state_as_of(customer, at).await?,
            None => self.ledger.state(customer).await?,
        };
        if let Some(erasure) = state.as_ref().and_then(|s| s.erased.as_ref()) {
            return Err(ReadError::Erased {
                customer,
                at: erasure.at,
            });
        }
        if as_of.is_none()
            && let Some(link) = state.as_ref().and_then(|s| s.merged_into.as_ref())
        {
            return Err(ReadError::MergedInto {
                customer,
                survivor: link.customer,
            });
        }
        let Some(state) = state else {
            return Err(match as_of {
                Some(at) if self.ledger.state(customer).await?.is_some() => {
                    ReadError::NotYetRegistered { customer, at }
                }
                _ => ReadError::NotFound(customer),
            });
        };
        let now = Utc::now();
        if let Reader::Source { source, token_id } = reader {
            self.disclosures
                .record(&Disclosure {
                    customer_id: customer,
                    recipient: Recipient::Source(source.clone()),
                    token_id: Some(*token_id),
                    fields: scope.disclosed(self.ledger.policy(), &state),
                    disclosed_at: now,
                })
                .await?;
        }
        Ok(RecordRead {
            customer_id: customer,
            state,
            scope,
            as_of,
            at: as_of.unwrap_or(now),
        })
    }

    /// The receipt of the customer's consent for `purpose`, as it stands (unsigned: the edge
    /// signs it), issued by `issuer`. A source must be able to read `consent.<purpose>`; its
    /// read is logged as a disclosure of that field alone.
    pub async fn consent_receipt(
        &self,
        reader: &Reader,
        customer: CustomerId,
        purpose: &idledger_domain::ids::Purpose,
        issuer: &str,
    ) -> Result<idledger_domain::receipt::ReceiptClaims, ReadError> {
        let field = FieldPath::Consent(purpose.clone());
        let policy = self.ledger.policy();
        if !reader.scope().consent(policy, purpose) {
            return Err(ReadError::OutOfScope(field));
        }
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
        let record = state
            .consents
            .get(purpose)
            .ok_or_else(|| ReadError::NoConsent {
                customer,
                purpose: purpose.clone(),
            })?;
        if let Reader::Source { source, token_id } = reader {
            self.disclosures
                .record(&Disclosure {
                    customer_id: customer,
                    recipient: Recipient::Source(source.clone()),
                    token_id: Some(*token_id),
                    fields: vec![field],
                    disclosed_at: Utc::now(),
                })
                .await?;
        }
        Ok(idledger_domain::receipt::receipt_claims(
            &customer.to_string(),
            purpose,
            record,
            policy,
            issuer,
        ))
    }

    /// One field's history with full provenance, oldest first (overseers only).
    pub async fn read_history(
        &self,
        reader: &Reader,
        customer: CustomerId,
        field: &FieldPath,
    ) -> Result<Vec<RecordedEvent>, ReadError> {
        if !reader.scope().reads_the_past() {
            return Err(ReadError::PastForbidden);
        }
        // Two independent reads, on two connections at once: the record (is it known, what
        // was merged into it) and the field's events.
        let (state, events) = futures::join!(
            self.ledger.state(customer),
            self.ledger.history(customer, field)
        );
        let Some(state) = state? else {
            return Err(ReadError::NotFound(customer));
        };
        let mut events = events?;
        // A survivor's history shows the records merged into it, with their provenance, up
        // to the merge (their events after an unmerge are their own again).
        for (absorbed, link) in &state.absorbed {
            let theirs = self.ledger.history(*absorbed, field).await?;
            events.extend(theirs.into_iter().filter(|e| e.recorded_at <= link.at));
        }
        if !state.absorbed.is_empty() {
            events.sort_by_key(|e| (e.recorded_at, e.global_position));
        }
        Ok(events)
    }
}
