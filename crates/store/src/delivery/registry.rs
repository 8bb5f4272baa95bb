//! The consumer registry and each consumer's checkpoint.

use chrono::{DateTime, Utc};

use super::{
    Channel, ChannelKind, Consumer, ConsumerId, Deliveries, NewConsumer, RegisterError, StartAt,
    Webhook, WebhookSecret,
};
use crate::error::StoreError;
use crate::log;
use crate::model::truncate_to_micros;
use crate::sql::{Row, sql};

const CONSUMER_COLUMNS: &str = "consumer_id, channel, webhook_url, webhook_secret, fields, purposes, sla_secs, pseudonymous, region, transfer_basis, created_at, disabled_at";

impl Deliveries {
    /// Registers a consumer; its checkpoint starts at 0 or at the log's current head.
    pub async fn register_consumer(
        &self,
        new: NewConsumer,
        now: DateTime<Utc>,
    ) -> Result<Consumer, RegisterError> {
        let checkpoint = match new.start {
            StartAt::Beginning => 0,
            StartAt::Now => log::head_position(&self.db).await?,
        };
        let consumer = Consumer {
            id: new.id,
            channel: new.channel,
            fields: new.fields,
            purposes: new.purposes,
            sla_secs: new.sla_secs,
            pseudonymous: new.pseudonymous,
            location: new.location,
            created_at: truncate_to_micros(now),
            disabled_at: None,
        };
        let (url, secret) = match &consumer.channel {
            Channel::Webhook(w) => (Some(w.url().to_owned()), Some(w.secret.expose().to_owned())),
            Channel::Nats | Channel::Feed => (None, None),
        };
        let mut tx = self.db.begin().await?;
        // Consumers and processors share one namespace (`crate::decisions`).
        let taken = sql("SELECT 1 AS one FROM processors WHERE processor_id = $1")
            .bind(consumer.id.as_str())
            .fetch_optional(&mut tx)
            .await?
            .is_some();
        if taken {
            return Err(RegisterError::Exists(consumer.id));
        }
        let inserted = sql(
            "INSERT INTO consumers (consumer_id, channel, webhook_url, webhook_secret, fields, purposes, created_at, sla_secs, pseudonymous, region, transfer_basis) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) ON CONFLICT (consumer_id) DO NOTHING",
        )
        .bind(consumer.id.as_str())
        .bind(consumer.channel.kind().as_str())
        .bind(url)
        .bind(secret)
        .bind(serde_json::to_string(&consumer.fields).map_err(StoreError::from)?)
        .bind(serde_json::to_string(&consumer.purposes).map_err(StoreError::from)?)
        .bind(consumer.created_at)
        .bind(consumer.sla_secs)
        .bind(consumer.pseudonymous)
        .bind(consumer.location.region().map(|r| r.as_str()))
        .bind(consumer.location.transfer_basis().map(|b| b.as_str()))
        .execute(&mut tx)
        .await?;
        if inserted == 0 {
            return Err(RegisterError::Exists(consumer.id));
        }
        sql("INSERT INTO delivery_checkpoints (consumer_id, position, updated_at) VALUES ($1, $2, $3)")
            .bind(consumer.id.as_str())
            .bind(checkpoint)
            .bind(consumer.created_at)
            .execute(&mut tx)
            .await?;
        tx.commit().await?;
        Ok(consumer)
    }

    /// Every consumer, disabled ones included, in id order.
    pub async fn consumers(&self) -> Result<Vec<Consumer>, StoreError> {
        let mut q = sql("SELECT ");
        q.push(CONSUMER_COLUMNS)
            .push(" FROM consumers ORDER BY consumer_id");
        q.fetch_all(&self.db).await?.iter().map(consumer).collect()
    }

    pub async fn consumer(&self, id: &ConsumerId) -> Result<Option<Consumer>, StoreError> {
        let mut q = sql("SELECT ");
        q.push(CONSUMER_COLUMNS)
            .push(" FROM consumers WHERE consumer_id = ")
            .push_bind(id.as_str());
        q.fetch_optional(&self.db)
            .await?
            .as_ref()
            .map(consumer)
            .transpose()
    }

    /// Stops deliveries to the consumer (its checkpoint and history are kept) and its
    /// decisions (in this process at once, in others within the token cache's bound);
    /// disabling twice keeps the first time. False if no such consumer.
    pub async fn disable_consumer(
        &self,
        id: &ConsumerId,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let mut tx = self.db.begin().await?;
        let found = sql(
            "UPDATE consumers SET disabled_at = COALESCE(disabled_at, $2) WHERE consumer_id = $1",
        )
        .bind(id.as_str())
        .bind(truncate_to_micros(now))
        .execute(&mut tx)
        .await?;
        crate::token_cache::announce(&mut tx, id.as_str()).await?;
        tx.commit().await?;
        self.cache.clear();
        Ok(found > 0)
    }

    /// The position up to which the consumer has been served.
    pub async fn checkpoint(&self, id: &ConsumerId) -> Result<Option<u64>, StoreError> {
        sql("SELECT position FROM delivery_checkpoints WHERE consumer_id = $1")
            .bind(id.as_str())
            .fetch_optional(&self.db)
            .await?
            .map(|r| r.get_u64("position"))
            .transpose()
    }
}

fn consumer(row: &Row) -> Result<Consumer, StoreError> {
    let id: String = row.try_get("consumer_id")?;
    let bad = |e: idledger_domain::values::ValueError| {
        StoreError::Integrity(format!("stored consumer {id}: {e}"))
    };
    let channel = match ChannelKind::parse(&row.try_get::<String>("channel")?).map_err(bad)? {
        ChannelKind::Nats => Channel::Nats,
        ChannelKind::Feed => Channel::Feed,
        ChannelKind::Webhook => {
            let url: Option<String> = row.try_get("webhook_url")?;
            let secret: Option<String> = row.try_get("webhook_secret")?;
            let secret =
                WebhookSecret::parse(secret.as_deref().unwrap_or_default()).map_err(bad)?;
            Channel::Webhook(Webhook::new(url.as_deref().unwrap_or_default(), secret).map_err(bad)?)
        }
    };
    Ok(Consumer {
        id: ConsumerId::parse(&id).map_err(bad)?,
        channel,
        fields: serde_json::from_str(&row.try_get::<String>("fields")?)?,
        purposes: serde_json::from_str(&row.try_get::<String>("purposes")?)?,
        sla_secs: row.get_u64("sla_secs")?,
        pseudonymous: row.try_get("pseudonymous")?,
        location: crate::decisions::location(row, &format!("consumer {id}"))?,
        created_at: row.try_get("created_at")?,
        disabled_at: row.try_get("disabled_at")?,
    })
}
