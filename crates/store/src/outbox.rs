//! The delivery outbox: what a delivery task decided to send, recorded before it sends, so
//! that a retry resends the same messages (same ids, same content) rather than deciding again
//! on a state that may have changed since — and so that every message that may have reached a
//! consumer ends up in the handoff log. Rows leave in the commit that records their handoff
//! ([`DeliveryCommit::outbox_done`](crate::delivery::DeliveryCommit)).
//!
//! Payloads are opaque here (the relay's serialised messages). Those of a customer with a data
//! key are sealed under it: an erased customer's rows are deleted with the key, and one
//! written by a task that raced the erasure cannot be opened after it.

use idledger_domain::ids::CustomerId;
use uuid::Uuid;

use crate::delivery::{ConsumerId, customer_id};
use crate::error::StoreError;
use crate::ledger::Ledger;
use crate::sql::{Arg, sql};

/// Binds a sealed payload to its place: a row copied to another consumer, customer or
/// position does not open.
const AAD_PREFIX: &[u8] = b"idledger-outbox-v1\0";

/// One decided item, in sending order.
#[derive(Clone, PartialEq, Eq)]
pub struct OutboxItem {
    pub customer_id: CustomerId,
    /// It carries the customer's data: it is kept only sealed under their data key, and not
    /// at all once they have none (erased: it must not be sent either).
    pub personal: bool,
    pub payload: Vec<u8>,
}

/// Never the payload: it may hold the customer's values.
impl std::fmt::Debug for OutboxItem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboxItem")
            .field("customer_id", &self.customer_id)
            .field("personal", &self.personal)
            .field("payload_bytes", &self.payload.len())
            .finish()
    }
}

/// An item waiting in the outbox.
#[derive(Clone, PartialEq, Eq)]
pub struct Pending {
    /// Its place in the batch; what [`DeliveryCommit::outbox_done`] names.
    ///
    /// [`DeliveryCommit::outbox_done`]: crate::delivery::DeliveryCommit
    pub seq: u32,
    pub customer_id: CustomerId,
    /// `None`: it was sealed for a customer who has been erased since; it is not to be sent.
    pub payload: Option<Vec<u8>>,
}

/// Never the payload: it may hold the customer's values.
impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("seq", &self.seq)
            .field("customer_id", &self.customer_id)
            .field("readable", &self.payload.is_some())
            .finish()
    }
}

/// A batch waiting in the outbox.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PendingBatch {
    pub items: Vec<Pending>,
    /// The last log position the batch read (`None`: it read none, e.g. an expiry sweep).
    pub through: Option<u64>,
}

fn aad(consumer: &ConsumerId, customer: CustomerId, seq: u32) -> Vec<u8> {
    let mut out = AAD_PREFIX.to_vec();
    out.extend_from_slice(consumer.as_str().as_bytes());
    out.push(0);
    out.extend_from_slice(customer.as_uuid().as_bytes());
    out.extend_from_slice(&seq.to_be_bytes());
    out
}

impl Ledger {
    /// Records a batch the consumer's task is about to send, numbered from 0 in order. The
    /// consumer's outbox must be empty (a task records only once the last batch is done); a
    /// leftover row makes this fail, and the task's retry then sends the leftover batch.
    /// Returns, per item, whether it was kept: a personal item of a customer without a data
    /// key (erased meanwhile) is not, and must not be sent.
    pub async fn record_outbox(
        &self,
        consumer: &ConsumerId,
        items: &[OutboxItem],
        through: Option<u64>,
    ) -> Result<Vec<bool>, StoreError> {
        let mut kept = Vec::with_capacity(items.len());
        let mut rows: Vec<Vec<Arg>> = Vec::with_capacity(items.len());
        for (seq, item) in (0u32..).zip(items) {
            let key = self.data_key(item.customer_id.as_uuid()).await?;
            let (sealed, payload) = match (&key, item.personal) {
                (Some(key), _) => (
                    true,
                    key.seal(&item.payload, &aad(consumer, item.customer_id, seq))?,
                ),
                (None, false) => (false, item.payload.clone()),
                (None, true) => {
                    kept.push(false);
                    continue;
                }
            };
            kept.push(true);
            rows.push(vec![
                consumer.as_str().into(),
                seq.into(),
                item.customer_id.as_uuid().into(),
                sealed.into(),
                payload.into(),
                through.map(|t| i64::try_from(t).unwrap_or(i64::MAX)).into(),
            ]);
        }
        if rows.is_empty() {
            return Ok(kept);
        }
        let db = self.store().db();
        let mut rows = rows.into_iter().peekable();
        let per_statement = db.rows_per_statement(6);
        let mut parts = Vec::new();
        while rows.peek().is_some() {
            let chunk: Vec<Vec<Arg>> = rows.by_ref().take(per_statement).collect();
            let mut q = sql(
                "INSERT INTO delivery_outbox (consumer_id, seq, customer_id, sealed, payload, through) ",
            );
            q.push_values(db.engine(), chunk, |r| r);
            parts.push(q);
        }
        // Not waited for on disk: the commit that logs the handoffs is, and flushes this with
        // it. A relay that dies after sending finds the rows; only PostgreSQL itself failing
        // in between could lose them (and then the batch is decided again).
        db.write_together_unflushed(parts).await?;
        Ok(kept)
    }

    /// The batch waiting in the consumer's outbox, in order; empty if there is none.
    pub async fn pending_outbox(&self, consumer: &ConsumerId) -> Result<PendingBatch, StoreError> {
        let rows = sql("SELECT seq, customer_id, sealed, payload, through FROM delivery_outbox WHERE consumer_id = $1 ORDER BY seq")
            .bind(consumer.as_str())
            .fetch_all(self.store().db())
            .await?;
        let mut batch = PendingBatch::default();
        for row in rows {
            let seq = u32::try_from(row.get_u64("seq")?)
                .map_err(|_| StoreError::Integrity("an outbox sequence out of range".to_owned()))?;
            let customer = customer_id(row.try_get::<Uuid>("customer_id")?)?;
            let stored: Vec<u8> = row.try_get("payload")?;
            let payload = if row.try_get::<bool>("sealed")? {
                match self.data_key(customer.as_uuid()).await? {
                    Some(key) => Some(key.open(&stored, &aad(consumer, customer, seq))?),
                    None => None,
                }
            } else {
                Some(stored)
            };
            if let Some(through) = row.try_get::<Option<i64>>("through")? {
                let through = u64::try_from(through).unwrap_or_default();
                batch.through = Some(batch.through.map_or(through, |t| t.max(through)));
            }
            batch.items.push(Pending {
                seq,
                customer_id: customer,
                payload,
            });
        }
        Ok(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_binding_differs_by_consumer_customer_and_place() {
        let crm = ConsumerId::parse("crm").unwrap_or_else(|_| unreachable!());
        let cdp = ConsumerId::parse("cdp").unwrap_or_else(|_| unreachable!());
        let a = CustomerId::from_uuid(Uuid::now_v7()).unwrap_or_else(|_| unreachable!());
        let b = CustomerId::from_uuid(Uuid::now_v7()).unwrap_or_else(|_| unreachable!());
        let base = aad(&crm, a, 1);
        assert_ne!(base, aad(&cdp, a, 1));
        assert_ne!(base, aad(&crm, b, 1));
        assert_ne!(base, aad(&crm, a, 2));
    }
}
