//! What consumers acknowledge holding (consumer state), and the exceptions an acknowledgement
//! answers.

use idledger_domain::ids::CustomerId;
use uuid::Uuid;

use super::{
    Ack, AckOutcome, AckStatus, Closing, ConsumerFieldState, ConsumerId, Deliveries, ExceptionKind,
    MAX_ACK_REASON_CHARS, Relation, ValueHash, customer_id,
};
use crate::error::StoreError;
use crate::ledger::Ledger;
use crate::log;
use crate::sql::{Row, sql};

const STATE_COLUMNS: &str =
    "consumer_id, customer_id, field, event_id, version, value_hash, status, reason, acked_at";

impl Deliveries {
    /// Stores an acknowledgement as the consumer's state of that field, after checking that it
    /// names a registered consumer and an event of that customer and field, and that the
    /// customer was not erased. An ack for an older version than the one stored does not
    /// overwrite it (acks may arrive out of order). `ledger` (on the same database) reads the
    /// record an applied ack is compared with: its rows are sealed.
    pub async fn record_ack(&self, ledger: &Ledger, ack: &Ack) -> Result<AckOutcome, StoreError> {
        if self.consumer(&ack.consumer_id).await?.is_none() {
            return Ok(AckOutcome::Invalid(format!(
                "no consumer '{}' is registered",
                ack.consumer_id
            )));
        }
        let subject = sql("SELECT customer_id, field FROM events WHERE event_id = $1")
            .bind(ack.event_id.as_uuid())
            .fetch_optional(&self.db)
            .await?;
        let Some(subject) = subject else {
            return Ok(AckOutcome::Invalid(format!(
                "no event {} is recorded",
                ack.event_id
            )));
        };
        if subject.try_get::<Uuid>("customer_id")? != ack.customer_id.as_uuid() {
            return Ok(AckOutcome::Invalid(format!(
                "event {} is not of customer {}",
                ack.event_id, ack.customer_id
            )));
        }
        if subject.try_get::<Option<String>>("field")?.as_deref()
            != Some(ack.field.to_string().as_str())
        {
            return Ok(AckOutcome::Invalid(format!(
                "event {} is not a change of {}",
                ack.event_id, ack.field
            )));
        }
        if !log::erasures(&self.db, &[ack.customer_id.as_uuid()])
            .await?
            .is_empty()
        {
            // What a consumer holds of an erased customer is not kept (see erasure).
            return Ok(AckOutcome::Invalid(format!(
                "customer {} was erased",
                ack.customer_id
            )));
        }
        if ack.status == AckStatus::Rejected && ack.reason.as_deref().is_none_or(str::is_empty) {
            return Ok(AckOutcome::Invalid(
                "a rejection must give a reason".to_owned(),
            ));
        }
        if ack
            .reason
            .as_deref()
            .is_some_and(|r| r.chars().count() > MAX_ACK_REASON_CHARS)
        {
            return Ok(AckOutcome::Invalid(format!(
                "the reason is longer than {MAX_ACK_REASON_CHARS} characters"
            )));
        }
        if let Some(stored_version) = self.upsert_consumer_state(ack).await? {
            return Ok(AckOutcome::Superseded { stored_version });
        }
        if ack.status == AckStatus::Applied {
            self.close_causes_gone(ledger, ack).await?;
        }
        Ok(AckOutcome::Recorded)
    }

    /// Stores the ack unless a later version is stored; returns the stored version otherwise.
    async fn upsert_consumer_state(&self, ack: &Ack) -> Result<Option<u64>, StoreError> {
        let consumer = ack.consumer_id.as_str();
        let customer = ack.customer_id.as_uuid();
        let field = ack.field.to_string();
        let written = sql(
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
        .bind(ack.version)
        .bind(ack.value_hash.as_ref().map(ValueHash::as_str))
        .bind(ack.status.as_str())
        .bind(ack.reason.as_deref())
        .bind(ack.acked_at)
        .fetch_optional(&self.db)
        .await?;
        if written.is_some() {
            return Ok(None);
        }
        let stored = sql(
            "SELECT version FROM consumer_state WHERE consumer_id = $1 AND customer_id = $2 AND field = $3",
        )
        .bind(consumer)
        .bind(customer)
        .bind(&field)
        .fetch_one(&self.db)
        .await?;
        Ok(Some(stored.get_u64("version")?))
    }

    /// An applied ack that matches the record closes the exceptions it answers: the field's
    /// delivery and drift exceptions when the consumer now holds the record's value, and an
    /// unconfirmed withdrawal when it confirms deleting (acks holding no value) after one.
    async fn close_causes_gone(&self, ledger: &Ledger, ack: &Ack) -> Result<(), StoreError> {
        let customer = ack.customer_id.as_uuid();
        let Some(state) = ledger.state(ack.customer_id).await? else {
            return Ok(());
        };
        let held = state.held(&ack.field, &ledger.hash_key(&ack.consumer_id));
        let record_hash = held.as_ref().and_then(|h| h.value_hash.as_deref());
        let field = ack.field.to_string();
        if record_hash == ack.value_hash.as_ref().map(ValueHash::as_str) {
            let closing = Closing::automatic(
                format!(
                    "{} acknowledged version {} of {field}, holding the record's value",
                    ack.consumer_id, ack.version
                ),
                ack.acked_at,
            );
            self.close_exceptions_where(
                &ack.consumer_id,
                ack.customer_id,
                Some(&ack.field),
                &ExceptionKind::CLOSED_BY_ACK,
                &closing,
            )
            .await?;
        }
        if ack.value_hash.is_none() {
            let withdrawn = self
                .relations_since(&ack.consumer_id, &[customer])
                .await?
                .into_iter()
                .any(|(_, relation, since)| {
                    relation == Relation::Withdrawn && since <= ack.acked_at
                });
            if withdrawn {
                let closing = Closing::automatic(
                    format!(
                        "{} confirmed deleting the customer's data (ack of {field} holding no value)",
                        ack.consumer_id
                    ),
                    ack.acked_at,
                );
                self.close_exceptions_where(
                    &ack.consumer_id,
                    ack.customer_id,
                    None,
                    &[ExceptionKind::WithdrawalUnconfirmed],
                    &closing,
                )
                .await?;
            }
        }
        Ok(())
    }

    /// What the consumer last reported for each field (of one customer, or of all).
    pub async fn consumer_state(
        &self,
        consumer: &ConsumerId,
        customer: Option<CustomerId>,
    ) -> Result<Vec<ConsumerFieldState>, StoreError> {
        let mut q = sql("SELECT ");
        q.push(STATE_COLUMNS)
            .push(" FROM consumer_state WHERE consumer_id = ")
            .push_bind(consumer.as_str());
        if let Some(customer) = customer {
            q.push(" AND customer_id = ").push_bind(customer.as_uuid());
        }
        q.push(" ORDER BY customer_id, field");
        q.fetch_all(&self.db)
            .await?
            .iter()
            .map(field_state)
            .collect()
    }

    /// What the consumer reported holding for any of `customers`.
    pub async fn consumer_state_of(
        &self,
        consumer: &ConsumerId,
        customers: &[Uuid],
    ) -> Result<Vec<ConsumerFieldState>, StoreError> {
        let mut out = Vec::new();
        for chunk in customers.chunks(self.db.max_params() - 1) {
            let mut q = sql("SELECT ");
            q.push(STATE_COLUMNS)
                .push(" FROM consumer_state WHERE consumer_id = ")
                .push_bind(consumer.as_str())
                .push(" AND customer_id")
                .push_in(self.db.engine(), chunk);
            for row in q.fetch_all(&self.db).await? {
                out.push(field_state(&row)?);
            }
        }
        Ok(out)
    }
}

fn field_state(row: &Row) -> Result<ConsumerFieldState, StoreError> {
    let consumer: String = row.try_get("consumer_id")?;
    Ok(ConsumerFieldState {
        consumer_id: ConsumerId::parse(&consumer)
            .map_err(|e| StoreError::Integrity(format!("stored consumer state: {e}")))?,
        customer_id: customer_id(row.try_get("customer_id")?)?,
        field: row.try_get("field")?,
        event_id: row.try_get::<Uuid>("event_id")?.into(),
        version: row.get_u64("version")?,
        value_hash: row.try_get("value_hash")?,
        status: row.parse::<AckStatus>("status")?,
        reason: row.try_get("reason")?,
        acked_at: row.try_get("acked_at")?,
    })
}
