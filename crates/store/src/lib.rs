//! idledger's event store: an append-only, hash-chained, encrypted event log with per-field
//! projections, on PostgreSQL (production) or SQLite (embedded default).
//!
//! - [`Ledger`]: runs commands and serves reads; the only entry point other crates need.
//! - [`backend::Backend`]: what an engine provides; [`postgres`] and [`sqlite`] implement it.
//! - [`crypto`]: per-customer data keys under a master key; [`chain`]: the hash chain.
//!
//! Architecture invariant: this crate knows SQL and nothing of HTTP or NATS.

pub mod backend;
pub mod chain;
pub mod crypto;
pub mod delivery;
pub mod error;
pub mod ledger;
pub mod model;
pub mod postgres;
pub mod projection;
pub mod runs;
pub mod sqlite;
pub mod tokens;

use std::sync::Arc;

pub use crypto::MasterKey;
pub use delivery::Deliveries;
pub use error::{ExecuteError, StoreError};
pub use ledger::{CommandResult, Executed, Ledger, LedgerOptions, RebuildReport, VerifyReport};
pub use model::{LogEntry, RecordedEvent, ShreddedEvent};
pub use runs::Runs;
pub use tokens::{IssuedToken, Role, TokenRecord, Tokens};

/// Opens the backend a database URL names: `postgres://…` or `sqlite://<path>` (or a bare
/// file path, for SQLite), and applies pending migrations.
pub async fn open_backend(url: &str) -> Result<Arc<dyn backend::Backend>, StoreError> {
    let backend: Arc<dyn backend::Backend> =
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Arc::new(postgres::PgBackend::connect(url, 16).await?)
        } else {
            let path = url
                .strip_prefix("sqlite://")
                .or_else(|| url.strip_prefix("sqlite:"))
                .unwrap_or(url);
            if path.is_empty() {
                return Err(StoreError::config("the SQLite URL names no file"));
            }
            Arc::new(sqlite::SqliteBackend::open(std::path::Path::new(path)).await?)
        };
    backend.migrate().await?;
    Ok(backend)
}
