//! Store errors: infrastructure failures, kept apart from the domain's refusals.

use idledger_domain::command::Refused;

/// Why a command did not produce a result.
#[derive(Debug, thiserror::Error)]
pub enum ExecuteError {
    /// The domain refused the command; nothing was recorded.
    #[error(transparent)]
    Refused(#[from] Refused),
    /// The idempotency key was used before with a different request.
    #[error(
        "idempotency key '{key}' was already used by source '{source_id}' for a different request"
    )]
    IdempotencyConflict { source_id: String, key: String },
    /// The sync exception a command was to change together with it is no longer open;
    /// neither was recorded.
    #[error("sync exception {exception_id} is no longer open")]
    ExceptionNotOpen { exception_id: uuid::Uuid },
    /// The exception's own rules refused the change the command was to make with it.
    #[error(transparent)]
    Exception(#[from] idledger_domain::exception::ExceptionRefusal),
    /// Too many concurrent writers to the same customer; the caller may retry.
    #[error("the customer's record changed concurrently {attempts} times; try again")]
    Contention { attempts: u32 },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// We failed to read or record something (a 5xx, not a refusal).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored data failed an integrity check: {0}")]
    Integrity(String),
    #[error("stored event cannot be read: {0}")]
    Schema(#[from] idledger_domain::schema::SchemaError),
    #[error("serialisation failed: {0}")]
    Json(#[from] serde_json::Error),
    #[error("configuration: {0}")]
    Config(String),
    #[error("the batch this command was part of could not be committed: {0}")]
    BatchFailed(String),
    #[error("the store's writer has shut down")]
    WriterGone,
    /// The database could not be reached (down, restarting, unreachable): the caller may
    /// retry later (a 503, not a 500).
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    /// The customer was erased: their events can no longer be read (a 410, not a 5xx).
    #[error("customer {customer} was erased at {at}")]
    Erased {
        customer: uuid::Uuid,
        at: chrono::DateTime<chrono::Utc>,
    },
}

impl StoreError {
    pub fn config(message: &str) -> Self {
        Self::Config(message.to_owned())
    }

    /// A value could not be bound to a statement's parameter.
    pub(crate) fn bind(e: sqlx::error::BoxDynError) -> Self {
        Self::Database(sqlx::Error::Encode(e))
    }

    /// A unique-key violation: another writer got there first.
    pub fn is_unique_violation(&self) -> bool {
        matches!(self, Self::Database(sqlx::Error::Database(e)) if e.is_unique_violation())
    }
}

impl StoreError {
    /// Whether the database could not be reached, rather than refused or failed a statement:
    /// a pool that could not get a connection in time, a broken or refused connection, or a
    /// server shutting down or starting up. Such a failure is temporary; a retry may succeed.
    pub fn is_unavailable(&self) -> bool {
        match self {
            Self::Unavailable(_) => true,
            Self::Database(e) => database_unavailable(e),
            _ => false,
        }
    }
}

fn database_unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_) => true,
        // SQLSTATE class 08 (connection exception); 57P01-03: the server is shutting down,
        // crashed or is not yet accepting connections.
        sqlx::Error::Database(db) => db.code().is_some_and(|c| {
            c.starts_with("08") || matches!(c.as_ref(), "57P01" | "57P02" | "57P03")
        }),
        _ => false,
    }
}
