//! Wakes the readers of the global log — the relay's consumers, the change feed's long polls —
//! when it grows, rather than having each poll it.
//!
//! This process's appends signal at once (the writer calls [`LogWatch::appended`] after each
//! commit). On PostgreSQL they are also announced with `NOTIFY idledger_log` (one
//! announcement per burst, sent beside the writer, never on its path), and a listener turns
//! other processes' announcements into the same signal: a relay behind one `serve` is woken by
//! a command taken by another. Readers keep a slow poll as their fallback: an announcement
//! sent while the listener was reconnecting is lost (a reconnection itself signals, in case).
//!
//! Why not `NOTIFY` in the append's own transaction, which would save the announcement's round
//! trip: PostgreSQL refuses the commit of a notifying transaction when the cluster's
//! notification queue is full, which any stalled listener of any database on the server can
//! cause. Appends must not depend on that; an announcement may fail alone.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::watch;

const CHANNEL: &str = "idledger_log";

/// The log's growth signal of one store (see the module).
#[derive(Debug)]
pub struct LogWatch {
    /// Bumped whenever the log grew: by this process, or as another announced.
    grown: watch::Sender<u64>,
    /// Bumped by this process's appends only: what the announcer announces.
    ours: watch::Sender<u64>,
    pool: Option<PgPool>,
    /// Names this process's announcements, so that its listener ignores them.
    instance: String,
    announcing: AtomicBool,
    listening: AtomicBool,
}

impl LogWatch {
    /// `pool`: the PostgreSQL pool to announce and listen on; `None` on SQLite, whose one
    /// process sees all of its appends.
    pub(crate) fn new(pool: Option<PgPool>) -> Arc<Self> {
        Arc::new(Self {
            grown: watch::Sender::new(0),
            ours: watch::Sender::new(0),
            pool,
            instance: uuid::Uuid::now_v7().to_string(),
            announcing: AtomicBool::new(false),
            listening: AtomicBool::new(false),
        })
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
        self.ours.send_modify(|n| *n = n.wrapping_add(1));
        if let Some(pool) = &self.pool
            && !self.announcing.swap(true, Ordering::SeqCst)
        {
            tokio::spawn(announce(
                pool.clone(),
                self.ours.subscribe(),
                self.instance.clone(),
            ));
        }
    }

    fn announced(&self) {
        self.grown.send_modify(|n| *n = n.wrapping_add(1));
    }
}

/// Announces this process's appends until the watch is dropped. Appends made while one
/// announcement is being sent are announced together by the next.
async fn announce(pool: PgPool, mut ours: watch::Receiver<u64>, instance: String) {
    // The first append is already marked as changed for this new receiver: announce it too.
    ours.mark_changed();
    while ours.changed().await.is_ok() {
        // Not waited for on disk: a transaction that notifies takes an XID, so its commit
        // would otherwise wait for a flush, one per burst, for a message no crash needs.
        let sent =
            sqlx::query("SELECT set_config('synchronous_commit', 'off', true), pg_notify($1, $2)")
                .bind(CHANNEL)
                .bind(&instance)
                .execute(&pool)
                .await;
        if let Err(e) = sent {
            // Other processes fall back on their poll.
            tracing::debug!(error = %e, "could not announce the log's growth");
        }
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
