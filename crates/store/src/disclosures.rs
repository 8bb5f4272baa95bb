//! The disclosure log: each read of a customer's record by a source system — who read which
//! fields of whom, and when. Field names only, never values. Auditors read it per customer or
//! per source; a subject's access request (DSAR) reads it per customer.

use chrono::{DateTime, Utc};
use idledger_domain::field::FieldPath;
use idledger_domain::ids::{CustomerId, SourceId};
use serde::Serialize;
use uuid::Uuid;

use crate::delivery::{MAX_PAGE, Page, customer_id};
use crate::error::StoreError;
use crate::model::truncate_to_micros;
use crate::sql::{Db, Row, sql};

/// Who received a customer's data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "source_id", rename_all = "snake_case")]
pub enum Recipient {
    /// A source system read the record.
    Source(SourceId),
    /// The data subject was given a copy (an access or portability export).
    Subject,
}

/// One disclosure, to log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disclosure {
    pub customer_id: CustomerId,
    pub recipient: Recipient,
    /// The token the request came with; `None` from the command line.
    pub token_id: Option<Uuid>,
    /// The fields (and `consent.<purpose>`) the answer showed.
    pub fields: Vec<FieldPath>,
    pub disclosed_at: DateTime<Utc>,
}

/// A logged disclosure, with its place in the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DisclosureEntry {
    pub seq: u64,
    pub customer_id: CustomerId,
    pub recipient: Recipient,
    pub token_id: Option<Uuid>,
    pub fields: Vec<String>,
    pub disclosed_at: DateTime<Utc>,
}

/// Which disclosures to list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DisclosureFilter {
    Customer(CustomerId),
    Source(SourceId),
}

/// The disclosure log of one database.
#[derive(Debug, Clone)]
pub struct Disclosures {
    db: Db,
}

impl Disclosures {
    pub(crate) fn new(db: Db) -> Self {
        Self { db }
    }

    /// Logs one disclosure. Called before the answer leaves: what cannot be logged is not
    /// answered.
    /// Deletes (or, for a dry run, counts) the disclosures logged before `before`.
    pub async fn expire_disclosures(
        &self,
        before: DateTime<Utc>,
        dry_run: bool,
    ) -> Result<u64, StoreError> {
        crate::sql::count_or_delete(
            &self.db,
            dry_run,
            "disclosures WHERE disclosed_at < $1",
            [crate::sql::Arg::from(before)],
        )
        .await
    }

    pub async fn record(&self, disclosure: &Disclosure) -> Result<(), StoreError> {
        let fields: Vec<String> = disclosure.fields.iter().map(ToString::to_string).collect();
        let (kind, source) = match &disclosure.recipient {
            Recipient::Source(source) => ("source", Some(source.as_str())),
            Recipient::Subject => ("subject", None),
        };
        sql("INSERT INTO disclosures (customer_id, recipient_kind, source_id, token_id, fields, disclosed_at) VALUES ($1, $2, $3, $4, $5, $6)")
            .bind(disclosure.customer_id.as_uuid())
            .bind(kind)
            .bind(source)
            .bind(disclosure.token_id)
            .bind(serde_json::to_string(&fields)?)
            .bind(truncate_to_micros(disclosure.disclosed_at))
            .execute(&self.db)
            .await?;
        Ok(())
    }

    /// A page of the log for one customer or one source, oldest first, after `after`.
    pub async fn list(
        &self,
        filter: &DisclosureFilter,
        after: Option<u64>,
        limit: u32,
    ) -> Result<Page<DisclosureEntry>, StoreError> {
        let limit = limit.clamp(1, MAX_PAGE);
        let mut q = sql(
            "SELECT seq, customer_id, recipient_kind, source_id, token_id, fields, disclosed_at FROM disclosures WHERE ",
        );
        match filter {
            DisclosureFilter::Customer(c) => q.push("customer_id = ").push_bind(c.as_uuid()),
            DisclosureFilter::Source(s) => q.push("source_id = ").push_bind(s.as_str()),
        };
        q.push(" AND seq > ")
            .push_bind(after.unwrap_or(0))
            .push(" ORDER BY seq LIMIT ")
            .push_bind(limit);
        let items = q
            .fetch_all(&self.db)
            .await?
            .iter()
            .map(entry)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Page::of(items, limit, |d| d.seq))
    }
}

fn entry(row: &Row) -> Result<DisclosureEntry, StoreError> {
    let seq = row.get_u64("seq")?;
    let bad = |e: String| StoreError::Integrity(format!("stored disclosure {seq}: {e}"));
    let source: Option<String> = row.try_get("source_id")?;
    let recipient = match (row.try_get::<String>("recipient_kind")?.as_str(), source) {
        ("source", Some(source)) => {
            Recipient::Source(SourceId::parse(&source).map_err(|e| bad(e.to_string()))?)
        }
        ("subject", None) => Recipient::Subject,
        (kind, _) => return Err(bad(format!("recipient kind '{kind}'"))),
    };
    Ok(DisclosureEntry {
        seq,
        customer_id: customer_id(row.try_get("customer_id")?)?,
        recipient,
        token_id: row.try_get("token_id")?,
        fields: serde_json::from_str(&row.try_get::<String>("fields")?)
            .map_err(|e| bad(e.to_string()))?,
        disclosed_at: row.try_get("disclosed_at")?,
    })
}
