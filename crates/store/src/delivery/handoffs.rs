//! The handoff log, each consumer's relation to each customer, and the customers to page
//! through.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use idledger_domain::ids::{CustomerId, EventId};
use uuid::Uuid;

use super::{
    ChannelKind, ConsumerId, Deliveries, DeliveryCommit, Handoff, HandoffEntry, HandoffFilter,
    HandoffKind, MAX_PAGE, Page, Relation, customer_id,
};
use crate::error::StoreError;
use crate::sql::{Arg, Row, count_or_delete, sql};

const HANDOFF_COLUMNS: &str = "seq, consumer_id, message_id, kind, event_id, global_position, customer_id, fields, basis, channel, delivered_at";

impl Deliveries {
    /// Records delivered messages, relation changes and the new checkpoint, atomically.
    /// A message already logged for the consumer (a re-delivery) is not logged again; the
    /// checkpoint never moves backwards.
    pub async fn commit(&self, commit: &DeliveryCommit<'_>) -> Result<(), StoreError> {
        // One row per customer, the last change winning: a statement may not upsert the same
        // row twice.
        let mut last: HashMap<CustomerId, usize> = HashMap::new();
        for (i, (customer, _)) in commit.relations.iter().enumerate() {
            last.insert(*customer, i);
        }
        let relations: Vec<(CustomerId, Relation)> = commit
            .relations
            .iter()
            .enumerate()
            .filter(|(i, (customer, _))| last.get(customer) == Some(i))
            .map(|(_, r)| *r)
            .collect();
        let consumer = commit.consumer.as_str();
        let engine = self.db.engine();
        // One statement on PostgreSQL (one round trip, no `BEGIN`/`COMMIT`): every part
        // writes its own table.
        let mut parts = Vec::new();
        for chunk in commit.handoffs.chunks(self.db.rows_per_statement(10)) {
            let mut q = sql(
                "INSERT INTO handoffs (consumer_id, message_id, kind, event_id, global_position, customer_id, fields, basis, channel, delivered_at) ",
            );
            let mut rows = Vec::with_capacity(chunk.len());
            for h in chunk {
                rows.push(vec![
                    consumer.into(),
                    h.message_id.into(),
                    h.kind.as_str().into(),
                    h.event_id.as_uuid().into(),
                    h.global_position.into(),
                    h.customer_id.as_uuid().into(),
                    serde_json::to_string(&h.fields)?.into(),
                    serde_json::to_string(&h.basis)?.into(),
                    h.channel.as_str().into(),
                    h.delivered_at.into(),
                ]);
            }
            q.push_values(engine, rows, |r| r)
                .push(" ON CONFLICT (consumer_id, message_id) DO NOTHING");
            parts.push(q);
        }
        for chunk in relations.chunks(self.db.rows_per_statement(4)) {
            let mut q = sql(
                "INSERT INTO consumer_customers (consumer_id, customer_id, status, changed_at) ",
            );
            q.push_values(engine, chunk, |(customer, relation)| {
                vec![
                    consumer.into(),
                    customer.as_uuid().into(),
                    relation.as_str().into(),
                    commit.at.into(),
                ]
            })
            .push(
                " ON CONFLICT (consumer_id, customer_id) DO UPDATE SET status = EXCLUDED.status, changed_at = EXCLUDED.changed_at",
            );
            parts.push(q);
        }
        for chunk in commit.outbox_done.chunks(self.db.rows_per_statement(1) - 1) {
            let mut q = sql("DELETE FROM delivery_outbox WHERE consumer_id = ");
            q.push_bind(consumer)
                .push(" AND seq")
                .push_in(engine, chunk.iter().copied());
            parts.push(q);
        }
        if let Some(position) = commit.checkpoint {
            parts.push(
                sql("UPDATE delivery_checkpoints SET position = $2, updated_at = $3 WHERE consumer_id = $1 AND position < $2")
                    .bind(consumer)
                    .bind(position)
                    .bind(commit.at),
            );
        }
        self.db.write_together(parts).await
    }

    /// A page of the handoff log for one customer or one consumer, oldest first.
    pub async fn handoffs(
        &self,
        filter: &HandoffFilter,
        after: Option<u64>,
        limit: u32,
    ) -> Result<Page<HandoffEntry>, StoreError> {
        let limit = limit.clamp(1, MAX_PAGE);
        let mut q = sql("SELECT ");
        q.push(HANDOFF_COLUMNS).push(" FROM handoffs WHERE ");
        match filter {
            HandoffFilter::Customer(c) => q.push("customer_id = ").push_bind(c.as_uuid()),
            HandoffFilter::Consumer(c) => q.push("consumer_id = ").push_bind(c.as_str()),
        };
        q.push(" AND seq > ")
            .push_bind(after.unwrap_or(0))
            .push(" ORDER BY seq LIMIT ")
            .push_bind(limit);
        let items = q
            .fetch_all(&self.db)
            .await?
            .iter()
            .map(handoff)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Page::of(items, limit, |h| h.seq))
    }

    /// The messages handed off on other customers' behalf that carried `customer`'s data:
    /// what a survivor sent while `customer` was merged into it, sealed for `customer`
    /// (`events.key_owner`). Their erasure must reach these copies too.
    pub async fn copies_sealed_for(
        &self,
        customer: CustomerId,
    ) -> Result<Vec<HandoffEntry>, StoreError> {
        let mut q = sql("SELECT ");
        q.push(HANDOFF_COLUMNS).push(
            " FROM handoffs WHERE event_id IN (SELECT event_id FROM events WHERE key_owner = $1) ORDER BY seq",
        );
        q.bind(customer.as_uuid())
            .fetch_all(&self.db)
            .await?
            .iter()
            .map(handoff)
            .collect()
    }

    /// The customer's latest `limit` handoffs, newest first (the record browser's "recent").
    pub async fn latest_handoffs(
        &self,
        customer: CustomerId,
        limit: u32,
    ) -> Result<Vec<HandoffEntry>, StoreError> {
        let mut q = sql("SELECT ");
        q.push(HANDOFF_COLUMNS)
            .push(" FROM handoffs WHERE customer_id = ")
            .push_bind(customer.as_uuid())
            .push(" ORDER BY seq DESC LIMIT ")
            .push_bind(limit.clamp(1, MAX_PAGE));
        q.fetch_all(&self.db).await?.iter().map(handoff).collect()
    }

    /// The consumer's relation to each of `customers` that it has one with.
    pub async fn relations(
        &self,
        consumer: &ConsumerId,
        customers: &[CustomerId],
    ) -> Result<HashMap<CustomerId, Relation>, StoreError> {
        let ids: Vec<Uuid> = customers.iter().map(CustomerId::as_uuid).collect();
        let mut out = HashMap::new();
        for (customer, relation, _) in self.relations_since(consumer, &ids).await? {
            out.insert(customer_id(customer)?, relation);
        }
        Ok(out)
    }

    /// The consumer's relation to any of `customers`, and since when.
    pub async fn relations_since(
        &self,
        consumer: &ConsumerId,
        customers: &[Uuid],
    ) -> Result<Vec<(Uuid, Relation, DateTime<Utc>)>, StoreError> {
        let mut ids = customers.to_vec();
        ids.sort_unstable();
        ids.dedup();
        let mut out = Vec::new();
        for chunk in ids.chunks(self.db.max_params() - 1) {
            let mut q = sql(
                "SELECT customer_id, status, changed_at FROM consumer_customers WHERE consumer_id = ",
            );
            q.push_bind(consumer.as_str())
                .push(" AND customer_id")
                .push_in(self.db.engine(), chunk);
            for r in q.fetch_all(&self.db).await? {
                out.push((
                    r.try_get("customer_id")?,
                    r.parse::<Relation>("status")?,
                    r.try_get("changed_at")?,
                ));
            }
        }
        Ok(out)
    }

    /// Customers the consumer currently receives, in id order after `after`.
    pub async fn receiving_customers(
        &self,
        consumer: &ConsumerId,
        after: Option<CustomerId>,
        limit: u32,
    ) -> Result<Vec<CustomerId>, StoreError> {
        let mut q = sql("SELECT customer_id FROM consumer_customers WHERE consumer_id = ");
        q.push_bind(consumer.as_str())
            .push(" AND status = 'receiving'");
        if let Some(after) = after {
            q.push(" AND customer_id > ").push_bind(after.as_uuid());
        }
        q.push(" ORDER BY customer_id LIMIT ")
            .push_bind(limit.clamp(1, MAX_PAGE));
        q.fetch_all(&self.db)
            .await?
            .iter()
            .map(|r| customer_id(r.try_get("customer_id")?))
            .collect()
    }

    /// Retention: the handoffs logged before `before`, counted (`dry_run`) or deleted.
    /// Relations (`consumer_customers`) stay: they make notices one-offs.
    pub async fn expire_handoffs(
        &self,
        before: DateTime<Utc>,
        dry_run: bool,
    ) -> Result<u64, StoreError> {
        count_or_delete(
            &self.db,
            dry_run,
            "handoffs WHERE delivered_at < $1",
            [Arg::from(before)],
        )
        .await
    }

    /// Customers with a record that was not erased, in id order, `limit` after `after`.
    pub async fn customer_page(
        &self,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<Uuid>, StoreError> {
        // One data key per customer until erasure deletes it.
        let mut q = sql("SELECT customer_id FROM data_keys");
        if let Some(after) = after {
            q.push(" WHERE customer_id > ").push_bind(after);
        }
        q.push(" ORDER BY customer_id LIMIT ")
            .push_bind(limit.clamp(1, MAX_PAGE));
        q.fetch_all(&self.db)
            .await?
            .iter()
            .map(|r| r.try_get("customer_id"))
            .collect()
    }
}

fn handoff(row: &Row) -> Result<HandoffEntry, StoreError> {
    let seq = row.get_u64("seq")?;
    let bad = |e: idledger_domain::values::ValueError| {
        StoreError::Integrity(format!("stored handoff {seq}: {e}"))
    };
    Ok(HandoffEntry {
        seq,
        handoff: Handoff {
            consumer_id: ConsumerId::parse(&row.try_get::<String>("consumer_id")?).map_err(bad)?,
            message_id: row.try_get("message_id")?,
            kind: row.parse::<HandoffKind>("kind")?,
            event_id: EventId::from(row.try_get::<Uuid>("event_id")?),
            global_position: row.get_u64("global_position")?,
            customer_id: customer_id(row.try_get("customer_id")?)?,
            fields: serde_json::from_str(&row.try_get::<String>("fields")?)?,
            basis: serde_json::from_str(&row.try_get::<String>("basis")?)?,
            channel: ChannelKind::parse(&row.try_get::<String>("channel")?).map_err(bad)?,
            delivered_at: row.try_get("delivered_at")?,
        },
    })
}
