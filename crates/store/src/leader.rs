//! Leadership of a singleton job among the processes sharing a store: several `serve`
//! processes on one database all take commands, but exactly one delivers to consumers.
//!
//! - PostgreSQL: a session-level advisory lock held on a connection of its own (outside the
//!   pool). It is released when that session ends — the process exits or is killed, or its
//!   connection breaks — so another process's next attempt (every [`TAKEOVER_POLL`]) takes
//!   over. The holder checks its connection every [`HOLD_CHECK`] and gives the job up at once
//!   if it fails: the lock may already be someone else's.
//! - SQLite: an exclusive lock on a file beside the database (`<file>.<job>.lock`), released
//!   by the operating system when the holder exits.

use std::time::Duration;

use sqlx::Connection as _;

use crate::error::StoreError;
use crate::sql::Db;
use crate::store::Store;

/// How often a process that does not lead tries to.
pub const TAKEOVER_POLL: Duration = Duration::from_millis(200);
/// How often the leader checks that it still holds its lock.
pub const HOLD_CHECK: Duration = Duration::from_millis(500);

/// A job only one process runs at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Job {
    /// The relay: delivery to consumers and NATS ack intake.
    Delivery,
}

impl Job {
    fn name(self) -> &'static str {
        match self {
            Self::Delivery => "delivery",
        }
    }

    /// The advisory lock's key: "idledger" and the job's number.
    fn key(self) -> i64 {
        match self {
            Self::Delivery => 0x6964_6c65_6467_0001,
        }
    }
}

/// Leadership held; dropping it gives it up.
#[derive(Debug)]
pub struct Lease {
    hold: Hold,
}

#[derive(Debug)]
enum Hold {
    Postgres(Box<sqlx::PgConnection>),
    /// Held open: closing it (or exiting) releases the lock.
    Sqlite {
        _file: Option<std::fs::File>,
    },
}

impl Store {
    /// Waits until this process leads `job`, trying every [`TAKEOVER_POLL`]. Failures to reach
    /// the database are retried (logged once each time they start).
    pub async fn lead(&self, job: Job) -> Lease {
        let mut failing = false;
        loop {
            match self.try_lead(job).await {
                Ok(Some(lease)) => return lease,
                Ok(None) => failing = false,
                Err(e) => {
                    if !failing {
                        tracing::warn!(job = job.name(), error = %e, "cannot try to take the lead; retrying");
                    }
                    failing = true;
                }
            }
            tokio::time::sleep(TAKEOVER_POLL).await;
        }
    }

    /// Takes the lead of `job` if no other process holds it.
    pub async fn try_lead(&self, job: Job) -> Result<Option<Lease>, StoreError> {
        match self.db() {
            Db::Postgres(pool) => {
                let mut conn = sqlx::PgConnection::connect_with(&pool.connect_options()).await?;
                let took: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                    .bind(job.key())
                    .fetch_one(&mut conn)
                    .await?;
                Ok(took.then(|| Lease {
                    hold: Hold::Postgres(Box::new(conn)),
                }))
            }
            Db::Sqlite(pool) => {
                let database = pool.connect_options().get_filename().to_owned();
                if database.as_os_str().is_empty() || database == std::path::Path::new(":memory:") {
                    return Ok(Some(Lease {
                        hold: Hold::Sqlite { _file: None },
                    }));
                }
                let mut path = database.into_os_string();
                path.push(format!(".{}.lock", job.name()));
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(&path)
                    .map_err(|e| {
                        StoreError::config(&format!(
                            "cannot open the {} lock file: {e}",
                            job.name()
                        ))
                    })?;
                match file.try_lock() {
                    Ok(()) => Ok(Some(Lease {
                        hold: Hold::Sqlite { _file: Some(file) },
                    })),
                    Err(std::fs::TryLockError::WouldBlock) => Ok(None),
                    Err(std::fs::TryLockError::Error(e)) => Err(StoreError::config(&format!(
                        "cannot lock the {} lock file: {e}",
                        job.name()
                    ))),
                }
            }
        }
    }
}

impl Lease {
    /// Resolves when the lead is lost (PostgreSQL: the lock's connection failed); never on
    /// SQLite, where only the process's exit releases it.
    pub async fn lost(&mut self) {
        match &mut self.hold {
            Hold::Postgres(conn) => loop {
                tokio::time::sleep(HOLD_CHECK).await;
                let check = tokio::time::timeout(
                    HOLD_CHECK * 4,
                    sqlx::query("SELECT 1").execute(&mut **conn),
                )
                .await;
                if !matches!(check, Ok(Ok(_))) {
                    return;
                }
            },
            Hold::Sqlite { .. } => std::future::pending().await,
        }
    }
}
