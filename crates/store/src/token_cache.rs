//! A cache of live tokens, so that authenticating a request is no database read in the steady
//! state, with a stated bound on how late a revocation takes effect; and of the enabled
//! processors and consumers tokens speak for, so that a decision does not read its asker
//! either — disabling one takes effect within the same bound.
//!
//! **The bound.** A cached token is used for at most the cache's TTL (default
//! [`DEFAULT_TTL`]) after it was read; so a token revoked or rotated by any process stops
//! working everywhere within the TTL, whatever happens to notifications; so does a processor or
//! consumer disabled. Within this process a change clears the cache at once. On PostgreSQL
//! every change (of a token, or a processor or consumer disabled) also sends `NOTIFY
//! idledger_tokens` in its transaction, and each process's listener clears its cache when one
//! arrives — in practice milliseconds after the commit. While the listener is not connected,
//! the cache is not used at all (every request reads the database), and a reconnect clears it,
//! since notifications sent meanwhile are lost.
//!
//! A read that started before a change must not put the old record back after the change
//! cleared the cache: an epoch, bumped by every clear, is taken before reading and checked
//! when inserting (the data key cache's rule).
//!
//! Only live tokens and enabled askers are cached (unknown secrets and ids are not, so guessing
//! cannot fill the cache, and registering one needs no announcement); the cache holds at most
//! [`CAPACITY`] of each and starts over when full.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use crate::decisions::Asker;
use crate::tokens::TokenRecord;

/// How long a cached token is trusted without reading it again: the revocation bound.
pub const DEFAULT_TTL: Duration = Duration::from_secs(2);
/// The PostgreSQL notification channel token changes are announced on.
pub const CHANNEL: &str = "idledger_tokens";
/// Most tokens held; a deployment has tens or hundreds.
pub const CAPACITY: usize = 10_000;

pub(crate) struct TokenCache {
    entries: Mutex<HashMap<Vec<u8>, (TokenRecord, Instant)>>,
    /// Enabled processors and consumers by id.
    askers: Mutex<HashMap<String, (Asker, Instant)>>,
    epoch: AtomicU64,
    ttl_millis: AtomicU64,
    /// Whether cached entries may be used: always on SQLite (no other process notifies; the
    /// TTL bounds it), on PostgreSQL only while the listener is connected.
    usable: AtomicBool,
    /// The listener task was started (PostgreSQL).
    pub(crate) listening: AtomicBool,
}

/// Counts only: the entries are keyed by token hashes.
impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let held = self
            .entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len();
        f.debug_struct("TokenCache")
            .field("held", &held)
            .field("usable", &self.is_usable())
            .field("ttl", &self.ttl())
            .finish_non_exhaustive()
    }
}

impl TokenCache {
    pub(crate) fn new(usable: bool) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            askers: Mutex::new(HashMap::new()),
            epoch: AtomicU64::new(0),
            ttl_millis: AtomicU64::new(millis(DEFAULT_TTL)),
            usable: AtomicBool::new(usable),
            listening: AtomicBool::new(false),
        }
    }

    pub(crate) fn set_ttl(&self, ttl: Duration) {
        self.ttl_millis.store(millis(ttl), Ordering::SeqCst);
        self.clear();
    }

    fn ttl(&self) -> Duration {
        Duration::from_millis(self.ttl_millis.load(Ordering::SeqCst))
    }

    pub(crate) fn is_usable(&self) -> bool {
        self.usable.load(Ordering::SeqCst)
    }

    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// The cached live token with this hash, if it was read within the TTL.
    pub(crate) fn get(&self, hash: &[u8], now: DateTime<Utc>) -> Option<TokenRecord> {
        if !self.usable.load(Ordering::SeqCst) {
            return None;
        }
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let (record, read_at) = entries.get(hash)?;
        (read_at.elapsed() < self.ttl() && record.live_at(now)).then(|| record.clone())
    }

    /// Caches a token read from the database, unless the cache was cleared since `epoch`.
    pub(crate) fn insert(&self, hash: Vec<u8>, record: &TokenRecord, epoch: u64) {
        if self.ttl().is_zero() {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        // Checked under the lock `clear` takes: no clear can slip between check and insert.
        if self.epoch() != epoch {
            return;
        }
        if entries.len() >= CAPACITY {
            entries.clear();
        }
        entries.insert(hash, (record.clone(), Instant::now()));
    }

    /// The enabled processor or consumer `id`, if it was read within the TTL.
    pub(crate) fn asker(&self, id: &str) -> Option<Asker> {
        if !self.usable.load(Ordering::SeqCst) {
            return None;
        }
        let askers = self.askers.lock().unwrap_or_else(PoisonError::into_inner);
        let (asker, read_at) = askers.get(id)?;
        (read_at.elapsed() < self.ttl()).then(|| asker.clone())
    }

    /// Caches an enabled asker read from the database, unless the cache was cleared since
    /// `epoch`.
    pub(crate) fn insert_asker(&self, id: &str, asker: &Asker, epoch: u64) {
        if self.ttl().is_zero() || !asker.is_enabled() {
            return;
        }
        // Lock order: `entries`, then `askers` (as `clear`), so no clear slips in between.
        let _entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let mut askers = self.askers.lock().unwrap_or_else(PoisonError::into_inner);
        if self.epoch() != epoch {
            return;
        }
        if askers.len() >= CAPACITY {
            askers.clear();
        }
        askers.insert(id.to_owned(), (asker.clone(), Instant::now()));
    }

    /// Records a use of a cached token, so the next requests do not write it again.
    pub(crate) fn note_use(&self, id: uuid::Uuid, at: DateTime<Utc>) {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        for (record, _) in entries.values_mut().filter(|(r, _)| r.id == id) {
            record.last_used_at = Some(at);
        }
    }

    /// Forgets every token and asker (one changed, here or elsewhere).
    pub(crate) fn clear(&self) {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let mut askers = self.askers.lock().unwrap_or_else(PoisonError::into_inner);
        self.epoch.fetch_add(1, Ordering::SeqCst);
        entries.clear();
        askers.clear();
    }

    /// Whether the cache may be used (the PostgreSQL listener is connected). Clears it either
    /// way: what was cached before a connection was (re)made may have missed a notification.
    pub(crate) fn set_usable(&self, usable: bool) {
        self.clear();
        self.usable.store(usable, Ordering::SeqCst);
    }
}

/// Tells every process that a token, processor or consumer changed, in the change's
/// transaction (PostgreSQL: delivered at commit; SQLite has no other process to tell, the
/// cache's TTL bounds it).
pub(crate) async fn announce(tx: &mut crate::sql::Tx, what: &str) -> Result<(), crate::StoreError> {
    if matches!(tx, crate::sql::Tx::Postgres(_)) {
        crate::sql::sql("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(what)
            .execute(&mut *tx)
            .await?;
    }
    Ok(())
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Keeps `cache` told of token changes other processes announce, until the cache is dropped.
pub(crate) fn spawn_listener(pool: sqlx::PgPool, cache: std::sync::Weak<TokenCache>) {
    tokio::spawn(async move {
        let mut failures = 0u32;
        loop {
            let Some(alive) = cache.upgrade() else { return };
            alive.set_usable(false);
            drop(alive);
            match listen(&pool, &cache).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::debug!(error = %e, "token change listener lost its connection; retrying");
                    failures = failures.saturating_add(1);
                    let wait = Duration::from_millis(100u64 << failures.min(6));
                    tokio::time::sleep(wait).await;
                }
            }
        }
    });
}

/// Listens until the cache is gone (`Ok`) or the connection fails (`Err`).
async fn listen(
    pool: &sqlx::PgPool,
    cache: &std::sync::Weak<TokenCache>,
) -> Result<(), sqlx::Error> {
    let mut listener = sqlx::postgres::PgListener::connect_with(pool).await?;
    listener.listen(CHANNEL).await?;
    match cache.upgrade() {
        Some(cache) => cache.set_usable(true),
        None => return Ok(()),
    }
    loop {
        // Wakes now and then to notice a dropped cache (a closed store).
        let next = tokio::time::timeout(Duration::from_secs(5), listener.try_recv()).await;
        let Some(cache) = cache.upgrade() else {
            return Ok(());
        };
        match next {
            Err(_elapsed) => {}
            Ok(Ok(Some(_notification))) => cache.clear(),
            // Reconnected (eagerly, by sqlx): what was announced meanwhile is lost.
            Ok(Ok(None)) => cache.clear(),
            Ok(Err(e)) => return Err(e),
        }
    }
}
