//! Wakes the readers of the global log — the relay's consumers, the change feed's long polls —
//! when it grows, rather than having each poll it.
//!
//! This process's appends signal at once (the writer calls [`LogWatch::appended`] after each
//! commit). On PostgreSQL every append transaction also announces itself: its `BEGIN`'s round
//! trip takes the append lock and queues `NOTIFY idledger_log` ([`LogWatch::begin_appending`]),
//! which PostgreSQL delivers when, and only if, it commits. A listener turns other processes'
//! announcements into the same signal: a relay behind one `serve` is woken by a command taken
//! by another. The announcement costs no round trip and no transaction of its own (a separate
//! one was a commit flushed to disk per batch). Readers keep a slow poll as their fallback: an
//! announcement sent while the listener was reconnecting is lost (a reconnection itself
//! signals, in case).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use sqlx::{AssertSqlSafe, PgPool, Postgres, Transaction};
use tokio::sync::watch;

use crate::error::StoreError;
use crate::sql::LOG_LOCK;

const CHANNEL: &str = "idledger_log";

/// The log's growth signal of one store (see the module).
#[derive(Debug)]
pub struct LogWatch {
    /// Bumped whenever the log grew: by this process, or as another announced.
    grown: watch::Sender<u64>,
    pool: Option<PgPool>,
    /// Names this process's announcements, so that its listener ignores them.
    instance: String,
    /// `BEGIN`, the append lock and this process's announcement: one simple query.
    begin: String,
    listening: AtomicBool,
}

impl LogWatch {
    /// `pool`: the PostgreSQL pool to announce and listen on; `None` on SQLite, whose one
    /// process sees all of its appends.
    pub(crate) fn new(pool: Option<PgPool>) -> Arc<Self> {
        let instance = uuid::Uuid::now_v7().to_string();
        Arc::new(Self {
            grown: watch::Sender::new(0),
            pool,
            // A UUID's text needs no quoting beyond the quotes.
            begin: format!(
                "BEGIN; SELECT pg_advisory_xact_lock({LOG_LOCK}); NOTIFY {CHANNEL}, '{instance}'"
            ),
            instance,
            listening: AtomicBool::new(false),
        })
    }

    /// A PostgreSQL transaction that appends to the log: `BEGIN`, the append lock and the
    /// announcement of its growth, in one round trip (a simple query of three statements).
    /// The announcement goes out at its commit; a rollback sends nothing. One that commits
    /// without appending (every append refused) wakes readers who then find nothing new.
    pub(crate) async fn begin_appending(
        &self,
        pool: &PgPool,
    ) -> Result<Transaction<'static, Postgres>, StoreError> {
        Ok(pool.begin_with(AssertSqlSafe(self.begin.as_str())).await?)
    }

    /// A receiver that changes whenever the log may have grown. Its first use on PostgreSQL
    /// starts the listener for other processes' appends.
    pub fn subscribe(self: &Arc<Self>) -> watch::Receiver<u64> {
        if let Some(pool) = &self.pool
            && !self.listening.swap(true, Ordering::SeqCst)
        {
            tokio::spawn(listen_until_dropped(pool.clone(), Arc::downgrade(self)));
        }
        self.grown.subscribe()
    }

    /// This process appended to the log (called after the commit).
    pub(crate) fn appended(&self) {
        self.grown.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn announced(&self) {
        self.grown.send_modify(|n| *n = n.wrapping_add(1));
    }
}

/// Relays other processes' announcements, reconnecting after a failure, until the watch is
/// dropped.
async fn listen_until_dropped(pool: PgPool, watch: Weak<LogWatch>) {
    let mut failures = 0u32;
    loop {
        match listen(&pool, &watch).await {
            Ok(()) => return,
            Err(e) => {
                tracing::debug!(error = %e, "log growth listener lost its connection; retrying");
                failures = failures.saturating_add(1);
                tokio::time::sleep(Duration::from_millis(100u64 << failures.min(6))).await;
            }
        }
    }
}

/// Listens until the watch is gone (`Ok`) or the connection fails (`Err`).
async fn listen(pool: &PgPool, watch: &Weak<LogWatch>) -> Result<(), sqlx::Error> {
    let mut listener = sqlx::postgres::PgListener::connect_with(pool).await?;
    listener.listen(CHANNEL).await?;
    // Whatever was announced before the listener was up: readers look once more.
    match watch.upgrade() {
        Some(watch) => watch.announced(),
        None => return Ok(()),
    }
    loop {
        // Wakes now and then to notice a dropped watch (a closed store).
        let next = tokio::time::timeout(Duration::from_secs(5), listener.try_recv()).await;
        let Some(watch) = watch.upgrade() else {
            return Ok(());
        };
        match next {
            Err(_elapsed) => {}
            Ok(Ok(Some(notification))) => {
                if notification.payload() != watch.instance {
                    watch.announced();
                }
            }
            // Reconnected (eagerly, by sqlx): what was announced meanwhile is lost.
            Ok(Ok(None)) => watch.announced(),
            Ok(Err(e)) => return Err(e),
        }
    }
}
