//! One step of delivery, shared by every channel: read a page of the log after a position,
//! decide per event what the consumer is sent (on the customers' current state), and build the
//! messages. Channels then send them and commit what was delivered.

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use chrono::{DateTime, Utc};
use idledger_domain::event::EventPayload;
use idledger_domain::ids::{CustomerId, EventId};
use idledger_domain::state::CustomerState;
use idledger_store::delivery::{
    ChannelKind, Consumer, ConsumerId, DeliveryCommit, ExceptionKind, Handoff, NewSyncException,
    Relation,
};
use idledger_store::model::{LogEntry, RecordedEvent};
use idledger_store::{Deliveries, Ledger, StoreError};
use serde_json::json;
use uuid::Uuid;

use crate::entitlement;
use crate::entitlement::{FieldChange, Outgoing};
use crate::envelope::{self, Message};
use crate::error::RelayError;

/// A message and the relation to its customer that delivering it establishes.
#[derive(Debug, Clone)]
pub struct Planned {
    pub message: Message,
    /// The consumer's relation to the customer once this is delivered, where this batch
    /// changes it.
    pub relation: Option<Relation>,
    /// Its place in the consumer's outbox batch, once recorded there.
    pub seq: u32,
}

/// What one step has to send.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    /// In log order; one event may yield several messages, most yield none.
    pub messages: Vec<Planned>,
    /// The position of the last event read (`None`: nothing new).
    pub last_position: Option<u64>,
    /// Every customer erasure read, in log order, whether or not it concerns the consumer: a
    /// channel that keeps copies of messages (the NATS stream) removes the customer's.
    pub erasures: Vec<Erased>,
}

/// A customer's erasure event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Erased {
    pub customer_id: CustomerId,
    pub position: u64,
    /// Every pseudonymous consumer's alias of the customer (disabled ones too): their
    /// messages carry it instead of the id.
    pub aliases: Vec<(ConsumerId, Uuid)>,
    /// Messages under other customers' subjects that carried this customer's data: what a
    /// survivor sent while the customer was merged into it.
    pub copies: Vec<Copies>,
    /// Its place in the consumer's outbox batch, once recorded there.
    pub seq: u32,
}

/// The messages of one customer's subjects that carried another's data (see
/// [`Erased::copies`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Copies {
    pub customer_id: CustomerId,
    /// As [`Erased::aliases`], of this customer.
    pub aliases: Vec<(ConsumerId, Uuid)>,
    /// Each message's `Nats-Msg-Id` ([`envelope::dedupe_id`]).
    pub message_ids: Vec<String>,
}

/// What every delivery task shares.
#[derive(Debug, Clone)]
pub struct Planner {
    pub ledger: Ledger,
    pub deliveries: Deliveries,
    pub source: String,
    /// Signs the consent receipts consent CloudEvents carry.
    pub signer: idledger_store::TokenSigner,
    /// The log's pages, read once for every consumer at the same place.
    pub tail: crate::tail::Tail,
}

impl Planner {
    pub fn new(ledger: Ledger, source: &str) -> Self {
        Self {
            deliveries: ledger.store().deliveries(),
            signer: idledger_store::TokenSigner::new(
                ledger.signing_keys(),
                idledger_store::jws::DEFAULT_REFRESH,
            ),
            ledger,
            source: source.to_owned(),
            tail: crate::tail::Tail::default(),
        }
    }
}

enum Read {
    Event(Box<RecordedEvent>),
    /// An erased customer's event: nothing of it is delivered, and that is no error (the
    /// erasure event further on tells consumers to delete).
    Shredded(u64),
    Unreadable(Unreadable),
}

impl Read {
    fn position(&self) -> u64 {
        match self {
            Self::Event(e) => e.global_position,
            Self::Shredded(position) => *position,
            Self::Unreadable(u) => u.position,
        }
    }
}

impl From<LogEntry> for Read {
    fn from(entry: LogEntry) -> Self {
        match entry {
            LogEntry::Event(e) => Self::Event(Box::new(e)),
            LogEntry::Shredded(s) => Self::Shredded(s.global_position),
        }
    }
}

/// An event that cannot be decrypted or parsed (e.g. its customer's key was destroyed).
struct Unreadable {
    position: u64,
    customer: uuid::Uuid,
    event_id: uuid::Uuid,
    field: Option<String>,
    reason: String,
}

/// Store failures that retrying will not cure: the event itself cannot be read.
fn permanent(e: &StoreError) -> bool {
    matches!(
        e,
        StoreError::Integrity(_) | StoreError::Schema(_) | StoreError::Json(_)
    )
}

impl Planner {
    /// How many times the log has grown, as far as this process knows: a page read from now
    /// on sees all of it.
    pub fn log_growth(&self) -> u64 {
        *self.ledger.log_growth().borrow()
    }

    /// Plans the messages for up to `limit` events after `after`, for a consumer that knows
    /// of the log's growth up to the count `known` (see [`crate::tail`]).
    pub async fn plan(
        &self,
        consumer: &Consumer,
        after: u64,
        limit: u32,
        now: DateTime<Utc>,
        known: u64,
    ) -> Result<Batch, RelayError> {
        let reads = self.read(after, limit, known).await?;
        let Some(last_position) = reads.last().map(Read::position) else {
            return Ok(Batch::default());
        };
        let customers: Vec<CustomerId> = reads
            .iter()
            .filter_map(|r| match r {
                Read::Event(e) => Some(e.customer_id),
                Read::Shredded(_) | Read::Unreadable(_) => None,
            })
            .collect();
        let mut relations = self.deliveries.relations(&consumer.id, &customers).await?;
        // Relations this batch changes, until it is committed.
        let mut changed: HashMap<CustomerId, Relation> = HashMap::new();
        // The records of every customer the consumer may be sent something of, read together
        // (one statement, not one per customer); one whose relation changes on the way is read
        // when it is needed.
        let concerned: Vec<CustomerId> = reads
            .iter()
            .filter_map(|r| match r {
                Read::Event(e)
                    if entitlement::may_concern(
                        consumer,
                        e,
                        relations.get(&e.customer_id).copied(),
                    ) =>
                {
                    Some(e.customer_id)
                }
                _ => None,
            })
            .collect();
        let mut states: HashMap<CustomerId, Option<CustomerState>> =
            self.ledger.states(&concerned).await?;
        let policy = self.ledger.policy();
        let keys = envelope::ConsumerKeys::of(&self.ledger, consumer);
        let mut messages = Vec::new();
        let mut erasures = Vec::new();
        // The receipt signing key, read once a batch and only when a consent change is sent.
        let mut pair = None;
        for read in reads {
            let event = match read {
                Read::Event(event) => event,
                Read::Shredded(_) => continue,
                Read::Unreadable(unreadable) => {
                    self.undeliverable(consumer, &unreadable, now).await?;
                    continue;
                }
            };
            if matches!(
                event.envelope.event.payload,
                EventPayload::CustomerErased { .. }
            ) {
                erasures.push(Erased {
                    customer_id: event.customer_id,
                    position: event.global_position,
                    aliases: self.aliases(event.customer_id).await?,
                    copies: self.copies(event.customer_id).await?,
                    seq: 0,
                });
            }
            let relation = relations.get(&event.customer_id).copied();
            if !entitlement::may_concern(consumer, &event, relation) {
                continue;
            }
            let state = match states.entry(event.customer_id) {
                Entry::Occupied(o) => o.into_mut(),
                Entry::Vacant(v) => v.insert(self.ledger.state(event.customer_id).await?),
            };
            let decision =
                entitlement::decide(consumer, &event, state.as_ref(), relation, policy, now);
            if let Some(r) = decision.relation {
                relations.insert(event.customer_id, r);
                changed.insert(event.customer_id, r);
            }
            // Later messages of the customer in this batch carry the relation too: the one that
            // established it may be skipped (a webhook refusing it) while they are delivered,
            // and a consumer sent data must be known as such (its notices depend on it).
            let relation = decision
                .relation
                .or_else(|| changed.get(&event.customer_id).copied());
            for outgoing in &decision.messages {
                let receipt = match outgoing {
                    Outgoing::Change {
                        change: FieldChange::Consent { .. },
                        ..
                    } => {
                        self.receipt(&keys, &event, state.as_ref(), &mut pair)
                            .await?
                    }
                    _ => None,
                };
                messages.push(Planned {
                    message: envelope::message(
                        &self.source,
                        consumer,
                        &keys,
                        &event,
                        outgoing,
                        receipt.as_deref(),
                    )?,
                    relation,
                    seq: 0,
                });
            }
        }
        Ok(Batch {
            messages,
            last_position: Some(last_position),
            erasures,
        })
    }

    /// The signed receipt of the consent record `event` left, naming the customer as the
    /// consumer does.
    async fn receipt(
        &self,
        keys: &envelope::ConsumerKeys,
        event: &RecordedEvent,
        state: Option<&CustomerState>,
        pair: &mut Option<std::sync::Arc<idledger_store::signing::KeyPair>>,
    ) -> Result<Option<String>, RelayError> {
        use idledger_domain::receipt;
        let found = match receipt::record_at_event(&event.envelope, state) {
            Some(found) => Some(found),
            // A withdrawal whose record has changed since: its record, from its history.
            None => match &event.envelope.event.payload {
                EventPayload::ConsentWithdrawn { purpose, .. } => {
                    let field = idledger_domain::field::FieldPath::Consent(purpose.clone());
                    let history = self.ledger.history(event.customer_id, &field).await?;
                    receipt::record_from_history(
                        history.iter().map(|e| &e.envelope),
                        purpose,
                        event.envelope.id,
                    )
                    .map(|record| (purpose.clone(), record))
                }
                _ => None,
            },
        };
        let Some((purpose, record)) = found else {
            return Ok(None);
        };
        let pair = match pair {
            Some(pair) => pair,
            None => pair.insert(self.signer.key_pair().await?),
        };
        let claims = idledger_domain::receipt::receipt_claims(
            &keys.names.show(event.customer_id).to_string(),
            &purpose,
            &record,
            self.ledger.policy(),
            &self.source,
        );
        Ok(Some(idledger_store::jws::sign_compact(
            pair,
            idledger_domain::receipt::RECEIPT_TYP,
            &claims,
        )?))
    }

    /// Where other customers' messages carried `customer`'s data (see [`Erased::copies`]).
    async fn copies(&self, customer: CustomerId) -> Result<Vec<Copies>, RelayError> {
        let mut by_customer: std::collections::BTreeMap<CustomerId, Vec<String>> =
            std::collections::BTreeMap::new();
        for entry in self.deliveries.copies_sealed_for(customer).await? {
            let h = entry.handoff;
            by_customer
                .entry(h.customer_id)
                .or_default()
                .push(envelope::dedupe_id(&h.consumer_id, h.message_id));
        }
        let mut copies = Vec::with_capacity(by_customer.len());
        for (customer_id, message_ids) in by_customer {
            copies.push(Copies {
                customer_id,
                aliases: self.aliases(customer_id).await?,
                message_ids,
            });
        }
        Ok(copies)
    }

    /// Every pseudonymous consumer's alias of `customer`.
    async fn aliases(&self, customer: CustomerId) -> Result<Vec<(ConsumerId, Uuid)>, RelayError> {
        Ok(self
            .deliveries
            .consumers()
            .await?
            .iter()
            .filter(|c| c.pseudonymous)
            .map(|c| (c.id.clone(), self.ledger.customer_names(c).show(customer)))
            .collect())
    }

    /// A page of the log; if some event in it cannot be read, the page is read one event at a
    /// time so that the readable ones still go out and the others are reported.
    async fn read(&self, after: u64, limit: u32, known: u64) -> Result<Vec<Read>, RelayError> {
        let growth = self.log_growth();
        let page = self
            .tail
            .page(after, limit, known, growth, || {
                self.ledger.read_all(after, limit)
            })
            .await;
        match page {
            Ok(entries) => return Ok(entries.iter().cloned().map(Read::from).collect()),
            Err(e) if permanent(&e) => {
                tracing::warn!(error = %e, after, "a page of the log has an unreadable event; reading it one by one");
            }
            Err(e) => return Err(e.into()),
        }
        let mut reads = Vec::new();
        let mut position = after;
        for _ in 0..limit.min(100) {
            match self.ledger.read_all(position, 1).await {
                Ok(mut one) => match one.pop() {
                    Some(entry) => {
                        let read = Read::from(entry);
                        position = read.position();
                        reads.push(read);
                    }
                    None => break,
                },
                Err(e) if permanent(&e) => {
                    let raw = self.ledger.read_raw(position, 1).await?;
                    let Some(raw) = raw.into_iter().next() else {
                        break;
                    };
                    position = raw.global_position;
                    reads.push(Read::Unreadable(Unreadable {
                        position,
                        customer: raw.customer_id,
                        event_id: raw.event_id,
                        field: raw.field,
                        reason: e.to_string(),
                    }));
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(reads)
    }

    /// Reports an unreadable event to stewards, if the consumer could have been concerned.
    async fn undeliverable(
        &self,
        consumer: &Consumer,
        unreadable: &Unreadable,
        now: DateTime<Utc>,
    ) -> Result<(), RelayError> {
        let field = unreadable
            .field
            .as_deref()
            .and_then(|f| idledger_domain::field::FieldPath::parse(f).ok());
        let Some(field) = field.filter(|f| consumer.selects(f)) else {
            return Ok(());
        };
        let Ok(customer_id) = CustomerId::from_uuid(unreadable.customer) else {
            return Ok(());
        };
        let event_id = EventId::from(unreadable.event_id);
        tracing::warn!(consumer = %consumer.id, position = unreadable.position, %event_id, reason = unreadable.reason, "event cannot be read; not delivered");
        self.deliveries
            .open_exception(&NewSyncException::new(
                ExceptionKind::Undeliverable,
                consumer.id.clone(),
                customer_id,
                Some(field),
                json!({
                    "event_id": event_id,
                    "global_position": unreadable.position,
                    "reason": unreadable.reason,
                }),
                now,
            )?)
            .await?;
        Ok(())
    }

    /// Records delivered messages (handoff log and relations), the outbox items now handled
    /// and the new checkpoint at once.
    pub async fn commit(
        &self,
        consumer: &Consumer,
        channel: ChannelKind,
        delivered: &[&Planned],
        outbox_done: &[u32],
        checkpoint: Option<u64>,
        now: DateTime<Utc>,
    ) -> Result<(), RelayError> {
        if delivered.is_empty() && outbox_done.is_empty() && checkpoint.is_none() {
            return Ok(());
        }
        let handoffs: Vec<Handoff> = delivered
            .iter()
            .map(|p| p.message.handoff(&consumer.id, channel, now))
            .collect();
        let relations: Vec<(CustomerId, Relation)> = delivered
            .iter()
            .filter_map(|p| p.relation.map(|r| (p.message.customer_id, r)))
            .collect();
        self.deliveries
            .commit(&DeliveryCommit {
                consumer: &consumer.id,
                handoffs: &handoffs,
                relations: &relations,
                checkpoint,
                outbox_done,
                at: now,
            })
            .await?;
        Ok(())
    }

    /// Notices for customers whose basis ran out without an event (expiry, maximum age),
    /// among those the consumer is receiving. Cheap per customer: the projection only.
    pub async fn sweep(
        &self,
        consumer: &Consumer,
        position: u64,
        now: DateTime<Utc>,
    ) -> Result<Vec<Planned>, RelayError> {
        let mut notices = Vec::new();
        let names = self.ledger.customer_names(consumer);
        let mut after = None;
        loop {
            let page = self
                .deliveries
                .receiving_customers(&consumer.id, after, 500)
                .await?;
            let Some(last) = page.last() else { break };
            after = Some(*last);
            for customer in page {
                let state = self.ledger.state(customer).await?;
                if state.as_ref().is_some_and(|s| s.erased.is_some()) {
                    // Its erasure notice goes out at the erasure event.
                    continue;
                }
                let policy = self.ledger.policy();
                let basis = entitlement::basis(consumer, state.as_ref(), policy, now);
                if entitlement::holds(&basis) {
                    continue;
                }
                let time = ran_out_at(&basis, policy).unwrap_or(now);
                let sweep = envelope::Sweep {
                    customer_id: customer,
                    position,
                    time,
                };
                let message =
                    envelope::sweep_notice(&self.source, consumer, &names, &sweep, &basis)?;
                notices.push(Planned {
                    message,
                    relation: Some(Relation::Withdrawn),
                    seq: 0,
                });
            }
        }
        Ok(notices)
    }
}

/// When a basis that holds no more ran out by itself: the grant's expiry or its maximum age.
fn ran_out_at(
    basis: &[idledger_store::delivery::ConsentBasis],
    policy: &idledger_domain::policy::Policy,
) -> Option<DateTime<Utc>> {
    use idledger_domain::state::ConsentStatus;
    basis.iter().find_map(|b| match b.status {
        ConsentStatus::Expired => b.expires_at,
        ConsentStatus::Stale => Some(b.granted_at? + policy.consent_max_age(&b.purpose)?),
        _ => None,
    })
}
