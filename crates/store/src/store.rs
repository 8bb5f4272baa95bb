//! [`Store`]: the one handle on a database. Opening it applies pending migrations; each area
//! of the schema is reached through it.

use std::path::Path;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

use crate::delivery::Deliveries;
use crate::disclosures::Disclosures;
use crate::error::StoreError;
use crate::log::EventLog;
use crate::runs::Runs;
use crate::sql::{Db, Engine};
use crate::tokens::Tokens;

/// How long a PostgreSQL statement waits for a pooled connection before the store reports
/// itself unavailable.
const PG_ACQUIRE_TIMEOUT: Duration = Duration::from_millis(800);

/// An open, migrated database. Cheap to clone (the pool is shared).
#[derive(Debug, Clone)]
pub struct Store {
    db: Db,
}

impl Store {
    /// Opens the database a URL names: `postgres://…` or `sqlite://<path>` (or a bare file
    /// path, for SQLite), and applies pending migrations.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Self::postgres(url, 16).await;
        }
        let path = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
            .unwrap_or(url);
        if path.is_empty() {
            return Err(StoreError::config("the SQLite URL names no file"));
        }
        Self::sqlite(Path::new(path)).await
    }

    /// Connects to PostgreSQL with a pool of at most `max_connections`, and migrates.
    pub async fn postgres(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        let options: PgConnectOptions = url
            .parse()
            .map_err(|e| StoreError::Config(format!("bad PostgreSQL URL: {e}")))?;
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            // While PostgreSQL is down a request waits this long for a connection before it
            // is answered 503: short, so callers learn it at once and retry elsewhere/later.
            .acquire_timeout(PG_ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await?;
        Self::migrated(Db::Postgres(pool)).await
    }

    /// Opens (creating if missing) the SQLite file at `path`, and migrates.
    ///
    /// SQLite admits one writer at a time; WAL mode lets readers run alongside it and
    /// `synchronous = FULL` makes a commit durable before a command is acknowledged.
    pub async fn sqlite(path: &Path) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            // Deleted rows (an erased customer's projection and data key) are overwritten
            // rather than left readable in free pages.
            .pragma("secure_delete", "on")
            .busy_timeout(Duration::from_secs(30));
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options)
            .await?;
        Self::migrated(Db::Sqlite(pool)).await
    }

    async fn migrated(db: Db) -> Result<Self, StoreError> {
        crate::log::migrate(&db).await?;
        Ok(Self { db })
    }

    /// Which engine it runs on.
    pub fn engine(&self) -> Engine {
        self.db.engine()
    }

    /// The raw event log (see [`EventLog`]; commands go through [`crate::Ledger`]).
    pub fn log(&self) -> EventLog {
        EventLog::new(self.db.clone())
    }

    /// API tokens.
    pub fn keys(&self) -> crate::keys::Keys {
        crate::keys::Keys::new(self.db.clone())
    }

    pub fn tokens(&self) -> Tokens {
        Tokens::new(self.db.clone())
    }

    /// The consumer registry, handoff log, consumer state and sync exceptions.
    pub fn deliveries(&self) -> Deliveries {
        Deliveries::new(self.db.clone())
    }

    /// The disclosure log: who read which fields of whom.
    pub fn disclosures(&self) -> Disclosures {
        Disclosures::new(self.db.clone())
    }

    /// Reconciliation runs, findings and staged snapshots.
    pub fn runs(&self) -> Runs {
        Runs::new(self.db.clone())
    }
}
