//! What a storage engine must provide. One implementation per engine, each with its own SQL;
//! everything above this trait (the ledger, group commit, crypto, chain) is shared.

use async_trait::async_trait;
use uuid::Uuid;

use crate::error::StoreError;
use crate::model::{AppendOutcome, AppendRequest, ProjectionRow, RawEvent};
use crate::tokens::TokenRecord;

#[async_trait]
pub trait Backend:
    crate::delivery::DeliveryBackend + crate::runs::RunBackend + Send + Sync + std::fmt::Debug + 'static
{
    /// "postgres" or "sqlite".
    fn name(&self) -> &'static str;

    async fn migrate(&self) -> Result<(), StoreError>;

    /// Writes a batch of appends in one transaction; each append succeeds or fails alone
    /// (a conflict in one does not fail the others). Returns one outcome per request, in
    /// order, after the transaction is durable. `Err` means the whole batch failed.
    async fn write_batch(
        &self,
        batch: &[AppendRequest],
    ) -> Result<Vec<Result<AppendOutcome, StoreError>>, StoreError>;

    /// `(request_hash, result)` stored for an idempotency key.
    async fn idempotency(
        &self,
        source: &str,
        key: &str,
    ) -> Result<Option<(Vec<u8>, String)>, StoreError>;

    async fn data_key(&self, customer: Uuid) -> Result<Option<Vec<u8>>, StoreError>;

    /// Wrapped data keys of several customers.
    async fn data_keys(&self, customers: &[Uuid]) -> Result<Vec<(Uuid, Vec<u8>)>, StoreError>;

    async fn projection_rows(&self, customer: Uuid) -> Result<Vec<ProjectionRow>, StoreError>;

    /// A customer's events in stream order, optionally only one field's and only those
    /// recorded at or before an instant.
    async fn stream(
        &self,
        customer: Uuid,
        field: Option<&str>,
        until_micros: Option<i64>,
    ) -> Result<Vec<RawEvent>, StoreError>;

    /// Up to `limit` events after `after`, in global (commit) order. Gap-free: a reader that
    /// has seen position p has seen every committed event before p.
    async fn read_all(&self, after: u64, limit: u32) -> Result<Vec<RawEvent>, StoreError>;

    /// The `customer_erased` events of those of `customers` who were erased.
    async fn erasures(&self, customers: &[Uuid]) -> Result<Vec<RawEvent>, StoreError>;

    /// Every customer's projection rows, in customer order, one page at a time.
    async fn projection_page(
        &self,
        after: Option<Uuid>,
        customers: u32,
    ) -> Result<Vec<(Uuid, ProjectionRow)>, StoreError>;

    /// Replaces the projection rows of `customers` with `rows` (theirs) in one transaction,
    /// holding off appends — but only if the log's head is still `expected_head` (else returns
    /// false, nothing changed). Other customers' rows are left as they are.
    async fn replace_projections(
        &self,
        customers: &[Uuid],
        rows: &[(Uuid, ProjectionRow)],
        expected_head: u64,
    ) -> Result<bool, StoreError>;

    /// The highest global position, 0 when the log is empty.
    async fn head_position(&self) -> Result<u64, StoreError>;

    /// Stores a new API token by the hash of its secret.
    async fn insert_token(&self, token: &TokenRecord, hash: &[u8]) -> Result<(), StoreError>;

    async fn token_by_hash(&self, hash: &[u8]) -> Result<Option<TokenRecord>, StoreError>;

    /// Every token, oldest first.
    async fn list_tokens(&self) -> Result<Vec<TokenRecord>, StoreError>;

    /// Marks a live token revoked at `at`; false if there is no such live token.
    async fn revoke_token(&self, id: Uuid, at: i64) -> Result<bool, StoreError>;
}

/// A token row as both engines store it: times in microseconds since the epoch.
pub(crate) fn token_from_parts(
    id: Uuid,
    role: &str,
    subject: Option<String>,
    label: String,
    created_at: i64,
    revoked_at: Option<i64>,
) -> Result<TokenRecord, StoreError> {
    Ok(TokenRecord {
        id,
        role: role
            .parse()
            .map_err(|_| StoreError::Integrity(format!("token {id} has unknown role '{role}'")))?,
        subject,
        label,
        created_at: crate::model::from_micros(created_at),
        revoked_at: revoked_at.map(crate::model::from_micros),
    })
}

pub(crate) fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or_default()
}

pub(crate) fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}
