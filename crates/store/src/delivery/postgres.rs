//! PostgreSQL SQL for delivery bookkeeping.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::postgres::PgRow;
use sqlx::{Postgres, QueryBuilder, Row};
use uuid::Uuid;

use super::{
    Ack, AckStatus, Closing, Consumer, ConsumerColumns, ConsumerFieldState, ConsumerId,
    DeliveryBackend, DeliveryCommit, ExceptionColumns, ExceptionFilter, ExceptionKind,
    HandoffColumns, HandoffEntry, HandoffFilter, NewSyncException, Relation, SyncException,
    consumer_from_columns, customer_id, handoff_from_columns,
};
use crate::backend::{to_i64, to_u64};
use crate::error::StoreError;
use crate::postgres::PgBackend;

const CONSUMER_COLUMNS: &str = "consumer_id, channel, webhook_url, webhook_secret, fields, purposes, sla_secs, created_at, disabled_at";
const HANDOFF_COLUMNS: &str = "seq, consumer_id, message_id, kind, event_id, global_position, customer_id, fields, basis, channel, delivered_at";
const STATE_COLUMNS: &str =
    "consumer_id, customer_id, field, event_id, version, value_hash, status, reason, acked_at";
const EXCEPTION_COLUMNS: &str = "exception_id, consumer_id, customer_id, field, kind, detail, status, occurrences, created_at, updated_at, resolved_at, resolved_by, resolution, resolution_note, last_action";

fn consumer(row: &PgRow) -> Result<Consumer, StoreError> {
    consumer_from_columns(
        row.try_get("consumer_id")?,
        row.try_get("channel")?,
        row.try_get("webhook_url")?,
        row.try_get("webhook_secret")?,
        row.try_get("fields")?,
        row.try_get("purposes")?,
        row.try_get("sla_secs")?,
        row.try_get("created_at")?,
        row.try_get("disabled_at")?,
    )
}

fn handoff(row: &PgRow) -> Result<HandoffEntry, StoreError> {
    handoff_from_columns(
        row.try_get("seq")?,
        row.try_get("consumer_id")?,
        row.try_get("message_id")?,
        row.try_get("kind")?,
        row.try_get("event_id")?,
        row.try_get("global_position")?,
        row.try_get("customer_id")?,
        row.try_get("fields")?,
        row.try_get("basis")?,
        row.try_get("channel")?,
        row.try_get("delivered_at")?,
    )
}

fn field_state(row: &PgRow) -> Result<ConsumerFieldState, StoreError> {
    let consumer: &str = row.try_get("consumer_id")?;
    Ok(ConsumerFieldState {
        consumer_id: ConsumerId::parse(consumer)
            .map_err(|e| StoreError::Integrity(format!("stored consumer state: {e}")))?,
        customer_id: customer_id(row.try_get("customer_id")?)?,
        field: row.try_get("field")?,
        event_id: row.try_get::<Uuid, _>("event_id")?.into(),
        version: to_u64(row.try_get("version")?),
        value_hash: row.try_get("value_hash")?,
        status: AckStatus::parse(row.try_get("status")?)?,
        reason: row.try_get("reason")?,
        acked_at: row.try_get("acked_at")?,
    })
}

fn exception(row: &PgRow) -> Result<SyncException, StoreError> {
    ExceptionColumns {
        id: row.try_get("exception_id")?,
        consumer_id: row.try_get("consumer_id")?,
        customer_id: row.try_get("customer_id")?,
        field: row.try_get("field")?,
        kind: row.try_get("kind")?,
        detail: row.try_get("detail")?,
        status: row.try_get("status")?,
        occurrences: row.try_get("occurrences")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        resolved_at: row.try_get("resolved_at")?,
        resolved_by: row.try_get("resolved_by")?,
        resolution: row.try_get("resolution")?,
        resolution_note: row.try_get("resolution_note")?,
        last_action: row.try_get("last_action")?,
    }
    .into_exception()
}

#[async_trait]
impl DeliveryBackend for PgBackend {
    async fn insert_consumer(
        &self,
        consumer: &Consumer,
        checkpoint: u64,
    ) -> Result<bool, StoreError> {
        let cols = ConsumerColumns::of(consumer)?;
        let mut tx = self.pool().begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO consumers (consumer_id, channel, webhook_url, webhook_secret, fields, purposes, created_at, sla_secs) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (consumer_id) DO NOTHING",
        )
        .bind(consumer.id.as_str())
        .bind(cols.channel)
        .bind(cols.webhook_url)
        .bind(cols.webhook_secret)
        .bind(cols.fields)
        .bind(cols.purposes)
        .bind(consumer.created_at)
        .bind(to_i64(consumer.sla_secs))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 0 {
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO delivery_checkpoints (consumer_id, position, updated_at) VALUES ($1, $2, $3)",
        )
        .bind(consumer.id.as_str())
        .bind(to_i64(checkpoint))
        .bind(consumer.created_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn consumers(&self) -> Result<Vec<Consumer>, StoreError> {
        let sql = format!("SELECT {CONSUMER_COLUMNS} FROM consumers ORDER BY consumer_id");
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(consumer).collect()
    }

    async fn consumer(&self, id: &ConsumerId) -> Result<Option<Consumer>, StoreError> {
        let sql = format!("SELECT {CONSUMER_COLUMNS} FROM consumers WHERE consumer_id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id.as_str())
            .fetch_optional(self.pool())
            .await?;
        row.as_ref().map(consumer).transpose()
    }

    async fn disable_consumer(
        &self,
        id: &ConsumerId,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let found = sqlx::query(
            "UPDATE consumers SET disabled_at = COALESCE(disabled_at, $2) WHERE consumer_id = $1",
        )
        .bind(id.as_str())
        .bind(at)
        .execute(self.pool())
        .await?
        .rows_affected();
        Ok(found > 0)
    }

    async fn checkpoint(&self, id: &ConsumerId) -> Result<Option<u64>, StoreError> {
        let position: Option<i64> =
            sqlx::query_scalar("SELECT position FROM delivery_checkpoints WHERE consumer_id = $1")
                .bind(id.as_str())
                .fetch_optional(self.pool())
                .await?;
        Ok(position.map(to_u64))
    }

    async fn commit_deliveries(&self, commit: &DeliveryCommit<'_>) -> Result<(), StoreError> {
        let mut tx = self.pool().begin().await?;
        let consumer = commit.consumer.as_str();
        for chunk in commit.handoffs.chunks(1000) {
            let columns = chunk
                .iter()
                .map(HandoffColumns::of)
                .collect::<Result<Vec<_>, _>>()?;
            let mut q = QueryBuilder::<Postgres>::new(
                "INSERT INTO handoffs (consumer_id, message_id, kind, event_id, global_position, customer_id, fields, basis, channel, delivered_at) ",
            );
            q.push_values(chunk.iter().zip(columns), |mut b, (h, cols)| {
                b.push_bind(consumer)
                    .push_bind(h.message_id)
                    .push_bind(h.kind.as_str())
                    .push_bind(h.event_id.as_uuid())
                    .push_bind(to_i64(h.global_position))
                    .push_bind(h.customer_id.as_uuid())
                    .push_bind(cols.fields)
                    .push_bind(cols.basis)
                    .push_bind(h.channel.as_str())
                    .push_bind(h.delivered_at);
            });
            q.push(" ON CONFLICT (consumer_id, message_id) DO NOTHING");
            q.build().execute(&mut *tx).await?;
        }
        for chunk in commit.relations.chunks(1000) {
            let mut q = QueryBuilder::<Postgres>::new(
                "INSERT INTO consumer_customers (consumer_id, customer_id, status, changed_at) ",
            );
            q.push_values(chunk, |mut b, (customer, relation)| {
                b.push_bind(consumer)
                    .push_bind(customer.as_uuid())
                    .push_bind(relation.as_str())
                    .push_bind(commit.at);
            });
            q.push(
                " ON CONFLICT (consumer_id, customer_id) DO UPDATE SET status = EXCLUDED.status, changed_at = EXCLUDED.changed_at",
            );
            q.build().execute(&mut *tx).await?;
        }
        if let Some(position) = commit.checkpoint {
            sqlx::query(
                "UPDATE delivery_checkpoints SET position = $2, updated_at = $3 WHERE consumer_id = $1 AND position < $2",
            )
            .bind(consumer)
            .bind(to_i64(position))
            .bind(commit.at)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn handoffs(
        &self,
        filter: &HandoffFilter,
        after: u64,
        limit: u32,
    ) -> Result<Vec<HandoffEntry>, StoreError> {
        let mut q = QueryBuilder::<Postgres>::new("SELECT ");
        q.push(HANDOFF_COLUMNS).push(" FROM handoffs WHERE ");
        match filter {
            HandoffFilter::Customer(c) => q.push("customer_id = ").push_bind(c.as_uuid()),
            HandoffFilter::Consumer(c) => q.push("consumer_id = ").push_bind(c.as_str()),
        };
        q.push(" AND seq > ")
            .push_bind(to_i64(after))
            .push(" ORDER BY seq LIMIT ")
            .push_bind(i64::from(limit));
        let rows = q.build().fetch_all(self.pool()).await?;
        rows.iter().map(handoff).collect()
    }

    async fn relations(
        &self,
        consumer: &ConsumerId,
        customers: &[Uuid],
    ) -> Result<Vec<(Uuid, Relation)>, StoreError> {
        let rows = sqlx::query(
            "SELECT customer_id, status FROM consumer_customers WHERE consumer_id = $1 AND customer_id = ANY($2)",
        )
        .bind(consumer.as_str())
        .bind(customers.to_vec())
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("customer_id")?,
                    Relation::parse(r.try_get("status")?)?,
                ))
            })
            .collect()
    }

    async fn receiving_customers(
        &self,
        consumer: &ConsumerId,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<Uuid>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT customer_id FROM consumer_customers WHERE consumer_id = $1 AND status = 'receiving' \
             AND ($2::uuid IS NULL OR customer_id > $2) ORDER BY customer_id LIMIT $3",
        )
        .bind(consumer.as_str())
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(self.pool())
        .await?)
    }

    async fn event_subject(
        &self,
        event_id: Uuid,
    ) -> Result<Option<(Uuid, Option<String>)>, StoreError> {
        let row = sqlx::query("SELECT customer_id, field FROM events WHERE event_id = $1")
            .bind(event_id)
            .fetch_optional(self.pool())
            .await?;
        row.map(|r| Ok((r.try_get("customer_id")?, r.try_get("field")?)))
            .transpose()
    }

    async fn upsert_consumer_state(&self, ack: &Ack) -> Result<Option<u64>, StoreError> {
        let consumer = ack.consumer_id.as_str();
        let customer = ack.customer_id.as_uuid();
        let field = ack.field.to_string();
        let written: Option<i64> = sqlx::query_scalar(
            "INSERT INTO consumer_state (consumer_id, customer_id, field, event_id, version, value_hash, status, reason, acked_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
             ON CONFLICT (consumer_id, customer_id, field) DO UPDATE SET event_id = EXCLUDED.event_id, \
             version = EXCLUDED.version, value_hash = EXCLUDED.value_hash, status = EXCLUDED.status, \
             reason = EXCLUDED.reason, acked_at = EXCLUDED.acked_at \
             WHERE consumer_state.version <= EXCLUDED.version RETURNING version",
        )
        .bind(consumer)
        .bind(customer)
        .bind(&field)
        .bind(ack.event_id.as_uuid())
        .bind(to_i64(ack.version))
        .bind(ack.value_hash.as_ref().map(|h| h.as_str()))
        .bind(ack.status.as_str())
        .bind(ack.reason.as_deref())
        .bind(ack.acked_at)
        .fetch_optional(self.pool())
        .await?;
        if written.is_some() {
            return Ok(None);
        }
        let stored: i64 = sqlx::query_scalar(
            "SELECT version FROM consumer_state WHERE consumer_id = $1 AND customer_id = $2 AND field = $3",
        )
        .bind(consumer)
        .bind(customer)
        .bind(&field)
        .fetch_one(self.pool())
        .await?;
        Ok(Some(to_u64(stored)))
    }

    async fn consumer_state(
        &self,
        consumer: &ConsumerId,
        customer: Option<Uuid>,
    ) -> Result<Vec<ConsumerFieldState>, StoreError> {
        let sql = format!(
            "SELECT {STATE_COLUMNS} FROM consumer_state WHERE consumer_id = $1 \
             AND ($2::uuid IS NULL OR customer_id = $2) ORDER BY customer_id, field"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(consumer.as_str())
            .bind(customer)
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(field_state).collect()
    }

    async fn open_exception(&self, e: &NewSyncException) -> Result<SyncException, StoreError> {
        let sql = format!(
            "INSERT INTO sync_exceptions (exception_id, consumer_id, customer_id, field, kind, detail, status, occurrences, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, 'open', 1, $7, $7) \
             ON CONFLICT (consumer_id, customer_id, field, kind) WHERE status = 'open' \
             DO UPDATE SET detail = EXCLUDED.detail, occurrences = sync_exceptions.occurrences + 1, updated_at = EXCLUDED.updated_at \
             RETURNING {EXCEPTION_COLUMNS}"
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(Uuid::now_v7())
            .bind(e.consumer_id.as_str())
            .bind(e.customer_id.as_uuid())
            .bind(
                e.field
                    .as_ref()
                    .map(ToString::to_string)
                    .unwrap_or_default(),
            )
            .bind(e.kind.as_str())
            .bind(serde_json::to_string(&e.detail)?)
            .bind(e.at)
            .fetch_one(self.pool())
            .await?;
        exception(&row)
    }

    async fn exceptions(
        &self,
        filter: &ExceptionFilter,
        limit: u32,
    ) -> Result<Vec<SyncException>, StoreError> {
        let mut q = QueryBuilder::<Postgres>::new("SELECT ");
        q.push(EXCEPTION_COLUMNS)
            .push(" FROM sync_exceptions WHERE TRUE");
        if let Some(c) = &filter.consumer {
            q.push(" AND consumer_id = ").push_bind(c.as_str());
        }
        if let Some(c) = &filter.customer {
            q.push(" AND customer_id = ").push_bind(c.as_uuid());
        }
        if filter.open_only {
            q.push(" AND status = 'open'");
        }
        if let Some(kind) = filter.kind {
            q.push(" AND kind = ").push_bind(kind.as_str());
        }
        if let Some(field) = &filter.field {
            q.push(" AND field = ").push_bind(field.clone());
        }
        if let Some(status) = filter.status {
            q.push(" AND status = ").push_bind(status.as_str());
        }
        if let Some(before) = filter.created_before {
            q.push(" AND created_at < ").push_bind(before);
        }
        if let Some(after) = filter.after {
            q.push(" AND exception_id > ").push_bind(after);
        }
        q.push(" ORDER BY exception_id LIMIT ")
            .push_bind(i64::from(limit));
        let rows = q.build().fetch_all(self.pool()).await?;
        rows.iter().map(exception).collect()
    }

    async fn exception(&self, id: Uuid) -> Result<Option<SyncException>, StoreError> {
        let sql =
            format!("SELECT {EXCEPTION_COLUMNS} FROM sync_exceptions WHERE exception_id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(self.pool())
            .await?;
        row.as_ref().map(exception).transpose()
    }

    async fn close_exception(
        &self,
        id: Uuid,
        closing: &Closing,
    ) -> Result<Option<SyncException>, StoreError> {
        let sql = format!(
            "UPDATE sync_exceptions SET status = $1, resolution = $2, resolved_by = $3, \
             resolution_note = $4, resolved_at = $5, updated_at = $5 WHERE status = 'open' AND exception_id = $6 \
             RETURNING {EXCEPTION_COLUMNS}"
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(closing.resolution.status().as_str())
            .bind(closing.resolution.as_str())
            .bind(closing.by.as_str())
            .bind(closing.note.as_str())
            .bind(closing.at)
            .bind(id)
            .fetch_optional(self.pool())
            .await?;
        row.as_ref().map(exception).transpose()
    }

    async fn close_exceptions_where(
        &self,
        consumer: &ConsumerId,
        customer: Uuid,
        field: &str,
        kinds: &[ExceptionKind],
        closing: &Closing,
    ) -> Result<Vec<Uuid>, StoreError> {
        if kinds.is_empty() {
            return Ok(Vec::new());
        }
        let mut q = QueryBuilder::<Postgres>::new("UPDATE sync_exceptions SET status = ");
        q.push_bind(closing.resolution.status().as_str())
            .push(", resolution = ")
            .push_bind(closing.resolution.as_str())
            .push(", resolved_by = ")
            .push_bind(closing.by.clone())
            .push(", resolution_note = ")
            .push_bind(closing.note.clone())
            .push(", resolved_at = ")
            .push_bind(closing.at)
            .push(", updated_at = ")
            .push_bind(closing.at)
            .push(" WHERE status = 'open' AND consumer_id = ")
            .push_bind(consumer.as_str().to_owned())
            .push(" AND customer_id = ")
            .push_bind(customer)
            .push(" AND field = ")
            .push_bind(field.to_owned());
        let kinds = kinds
            .iter()
            .map(|k| k.as_str().to_owned())
            .collect::<Vec<_>>();
        q.push(" AND kind = ANY(").push_bind(kinds).push(")");
        q.push(" RETURNING exception_id");
        let rows = q.build().fetch_all(self.pool()).await?;
        rows.iter()
            .map(|r| {
                r.try_get::<Uuid, _>("exception_id")
                    .map_err(StoreError::from)
            })
            .collect()
    }

    async fn note_exception_action(
        &self,
        id: Uuid,
        action: &serde_json::Value,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE sync_exceptions SET last_action = $1, updated_at = $2 \
             WHERE exception_id = $3 AND status = 'open'",
        )
        .bind(serde_json::to_string(action)?)
        .bind(at)
        .bind(id)
        .execute(self.pool())
        .await?
        .rows_affected();
        Ok(done == 1)
    }

    async fn open_exceptions_of(
        &self,
        consumer: &ConsumerId,
        customers: &[Uuid],
        kinds: &[ExceptionKind],
    ) -> Result<Vec<SyncException>, StoreError> {
        if customers.is_empty() || kinds.is_empty() {
            return Ok(Vec::new());
        }
        let mut q = QueryBuilder::<Postgres>::new("SELECT ");
        q.push(EXCEPTION_COLUMNS)
            .push(" FROM sync_exceptions WHERE status = 'open' AND consumer_id = ")
            .push_bind(consumer.as_str().to_owned());
        let customers = customers.to_vec();
        q.push(" AND customer_id = ANY(")
            .push_bind(customers)
            .push(")");
        let kinds = kinds
            .iter()
            .map(|k| k.as_str().to_owned())
            .collect::<Vec<_>>();
        q.push(" AND kind = ANY(").push_bind(kinds).push(")");
        let rows = q.build().fetch_all(self.pool()).await?;
        rows.iter().map(exception).collect()
    }

    async fn customer_page(
        &self,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<Uuid>, StoreError> {
        // One data key per customer until erasure deletes it.
        Ok(sqlx::query_scalar(
            "SELECT customer_id FROM data_keys WHERE ($1::uuid IS NULL OR customer_id > $1) \
             ORDER BY customer_id LIMIT $2",
        )
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(self.pool())
        .await?)
    }

    async fn consumer_state_of(
        &self,
        consumer: &ConsumerId,
        customers: &[Uuid],
    ) -> Result<Vec<ConsumerFieldState>, StoreError> {
        if customers.is_empty() {
            return Ok(Vec::new());
        }
        let mut q = QueryBuilder::<Postgres>::new("SELECT ");
        q.push(STATE_COLUMNS)
            .push(" FROM consumer_state WHERE consumer_id = ")
            .push_bind(consumer.as_str().to_owned());
        let customers = customers.to_vec();
        q.push(" AND customer_id = ANY(")
            .push_bind(customers)
            .push(")");
        let rows = q.build().fetch_all(self.pool()).await?;
        rows.iter().map(field_state).collect()
    }

    async fn relations_since(
        &self,
        consumer: &ConsumerId,
        customers: &[Uuid],
    ) -> Result<Vec<(Uuid, Relation, DateTime<Utc>)>, StoreError> {
        if customers.is_empty() {
            return Ok(Vec::new());
        }
        let mut q = QueryBuilder::<Postgres>::new(
            "SELECT customer_id, status, changed_at FROM consumer_customers WHERE consumer_id = ",
        );
        q.push_bind(consumer.as_str().to_owned());
        let customers = customers.to_vec();
        q.push(" AND customer_id = ANY(")
            .push_bind(customers)
            .push(")");
        let rows = q.build().fetch_all(self.pool()).await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("customer_id")?,
                    Relation::parse(r.try_get("status")?)?,
                    r.try_get("changed_at")?,
                ))
            })
            .collect()
    }
}
