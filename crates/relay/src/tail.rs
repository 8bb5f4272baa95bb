//! One reader of the log for every delivery task: consumers at the same place in the log share
//! each page read from the store instead of reading (and decrypting) it once each.
//!
//! Two rules keep a shared page as good as a page read by the asker itself:
//! - **Full pages** (as many entries as asked for) are the same whenever they are read: the
//!   log's positions are committed in order and never change. Any asker may use one.
//! - **Short pages** (the log's tail, possibly empty) only show what was committed when the
//!   read started. An asker may use one only if the read started after every growth of the
//!   log the asker knows of (the log's growth signal, [`idledger_store::Ledger::log_growth`], counts them and
//!   is bumped after each commit): otherwise an event whose announcement the asker already
//!   took could be missing from it, and the asker would wait for the next one. And only for
//!   [`SHORT_MAX_AGE`]: the asker's slow poll, its fallback for a lost announcement, is not
//!   held off longer than that.
//!
//! Concurrent askers of the same page wait for one read (whoever asks first reads). Consumers
//! woken by the same growth thus read the new tail once. Pages are kept for at most [`MAX_AGE`] and [`CAPACITY`] at a time: they hold decrypted events, so
//! they are not kept longer than a lagging consumer needs to follow the one ahead of it.
//! Sharing changes no decision: the planner still reads each customer's current record after
//! the page, so what a customer erased or withdrew since the read is what counts.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use idledger_store::StoreError;
use idledger_store::model::LogEntry;
use tokio::sync::OnceCell;

/// Longest a full page read from the store is handed out again.
pub const MAX_AGE: Duration = Duration::from_secs(2);
/// Longest a short page (the tail as it was) is handed out again.
pub const SHORT_MAX_AGE: Duration = Duration::from_millis(250);
/// Most pages kept at a time.
pub const CAPACITY: usize = 16;

type Entries = Arc<Vec<LogEntry>>;

/// The shared reader. Cheap to clone: clones share pages and counts.
#[derive(Clone, Default)]
pub struct Tail {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    pages: Mutex<VecDeque<Page>>,
    reading: Mutex<HashMap<(u64, u32), Arc<Read>>>,
    counts: PageCounts,
}

/// Entries only: nothing of a page's events is shown.
impl std::fmt::Debug for Tail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tail")
            .field("counts", &self.inner.counts)
            .finish_non_exhaustive()
    }
}

struct Page {
    after: u64,
    limit: u32,
    started: Instant,
    /// The log's growth count when the read started: it saw every growth counted up to it.
    growth: u64,
    entries: Entries,
}

/// A read in progress, which askers of the same page join.
struct Read {
    started: Instant,
    growth: u64,
    result: OnceCell<Entries>,
}

/// How many pages were read from the store, and how many asks were answered with a page
/// another asker read.
#[derive(Debug, Clone, Default)]
pub struct PageCounts {
    read: Arc<AtomicU64>,
    shared: Arc<AtomicU64>,
}

impl PageCounts {
    pub fn read(&self) -> u64 {
        self.read.load(Ordering::Relaxed)
    }

    pub fn shared(&self) -> u64 {
        self.shared.load(Ordering::Relaxed)
    }

    fn count(&self, from_store: bool) {
        let (counter, source) = if from_store {
            (&self.read, "store")
        } else {
            (&self.shared, "shared")
        };
        counter.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("idledger_relay_log_pages_total", "source" => source).increment(1);
    }
}

impl Page {
    fn answers(&self, after: u64, limit: u32, known: u64) -> bool {
        let age = self.started.elapsed();
        self.after == after
            && self.limit == limit
            && if self.entries.len() >= limit as usize {
                age < MAX_AGE
            } else {
                age < SHORT_MAX_AGE && self.growth >= known
            }
    }
}

impl Tail {
    pub fn counts(&self) -> PageCounts {
        self.inner.counts.clone()
    }

    /// The page of up to `limit` entries after `after`: one another asker read, if the rules
    /// above allow it for an asker that knows of the log's growth up to the count `known`;
    /// else `fetch`'s, which is then kept for the others. `growth` is the log's growth count
    /// now.
    pub async fn page<F, Fut>(
        &self,
        after: u64,
        limit: u32,
        known: u64,
        growth: u64,
        fetch: F,
    ) -> Result<Entries, StoreError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Vec<LogEntry>, StoreError>>,
    {
        if let Some(entries) = self.kept(after, limit, known) {
            self.inner.counts.count(false);
            return Ok(entries);
        }
        let read = {
            let mut reading = lock(&self.inner.reading);
            match reading.get(&(after, limit)) {
                Some(read) if read.growth >= known => read.clone(),
                _ => {
                    let read = Arc::new(Read {
                        started: Instant::now(),
                        growth,
                        result: OnceCell::new(),
                    });
                    reading.insert((after, limit), read.clone());
                    read
                }
            }
        };
        let mut fetched = false;
        let result = read
            .result
            .get_or_try_init(|| {
                fetched = true;
                async move { fetch().await.map(Arc::new) }
            })
            .await
            .cloned();
        self.inner.counts.count(fetched);
        if fetched {
            let mut reading = lock(&self.inner.reading);
            if reading
                .get(&(after, limit))
                .is_some_and(|r| Arc::ptr_eq(r, &read))
            {
                reading.remove(&(after, limit));
            }
            drop(reading);
            if let Ok(entries) = &result {
                self.keep(Page {
                    after,
                    limit,
                    started: read.started,
                    growth: read.growth,
                    entries: entries.clone(),
                });
            }
        }
        result
    }

    fn kept(&self, after: u64, limit: u32, known: u64) -> Option<Entries> {
        let mut pages = lock(&self.inner.pages);
        pages.retain(|p| p.started.elapsed() < MAX_AGE);
        pages
            .iter()
            .rev()
            .find(|p| p.answers(after, limit, known))
            .map(|p| p.entries.clone())
    }

    fn keep(&self, page: Page) {
        let mut pages = lock(&self.inner.pages);
        // A newer read of the same page replaces the older one.
        pages.retain(|p| !(p.after == page.after && p.limit == page.limit));
        if pages.len() >= CAPACITY {
            pages.pop_front();
        }
        pages.push_back(page);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use chrono::Utc;
    use idledger_domain::ids::{CustomerId, EventId};
    use idledger_store::model::ShreddedEvent;

    fn entries(after: u64, n: u64) -> Vec<LogEntry> {
        (after + 1..=after + n)
            .map(|p| {
                LogEntry::Shredded(ShreddedEvent {
                    global_position: p,
                    customer_id: CustomerId::generate(),
                    event_id: EventId::from_uuid(uuid::Uuid::now_v7()),
                    stream_version: 1,
                    event_type: "customer_erased".to_owned(),
                    recorded_at: Utc::now(),
                    erased_at: Utc::now(),
                })
            })
            .collect()
    }

    /// Asks as one who knows of `known` growths of the log, which has grown `growth` times.
    async fn ask(
        tail: &Tail,
        after: u64,
        limit: u32,
        (known, growth): (u64, u64),
        n: u64,
    ) -> usize {
        tail.page(after, limit, known, growth, || async move {
            Ok(entries(after, n))
        })
        .await
        .unwrap()
        .len()
    }

    #[tokio::test]
    async fn a_full_page_is_read_once_whoever_asks() {
        let tail = Tail::default();
        let early = (1, 1);
        assert_eq!(ask(&tail, 0, 10, early, 10).await, 10);
        // Asked by someone who knows of later growth: a full page is the same.
        assert_eq!(ask(&tail, 0, 10, (5, 5), 99).await, 10);
        assert_eq!((tail.counts().read(), tail.counts().shared()), (1, 1));
        // Another page, or the same start with another size, is read.
        assert_eq!(ask(&tail, 10, 10, early, 10).await, 10);
        assert_eq!(ask(&tail, 0, 5, early, 5).await, 5);
        assert_eq!(tail.counts().read(), 3);
    }

    #[tokio::test]
    async fn a_short_page_is_shared_only_with_askers_who_know_of_no_later_growth() {
        let tail = Tail::default();
        assert_eq!(ask(&tail, 0, 10, (3, 4), 3).await, 3);
        // Knows of no growth the read had not seen: the read saw what it knows of.
        assert_eq!(ask(&tail, 0, 10, (4, 4), 7).await, 3);
        assert_eq!(tail.counts().shared(), 1);
        // Knows of a later growth: the page may lack it; it reads.
        assert_eq!(ask(&tail, 0, 10, (5, 5), 7).await, 7);
        assert_eq!(tail.counts().read(), 2);
        // Not for long, though: the asker's poll is its fallback for a lost announcement.
        tokio::time::sleep(SHORT_MAX_AGE).await;
        assert_eq!(ask(&tail, 0, 10, (5, 5), 8).await, 8);
        assert_eq!(tail.counts().read(), 3);
    }

    #[tokio::test]
    async fn concurrent_askers_wait_for_one_read_and_a_failed_read_is_not_kept() {
        let tail = Tail::default();
        let g = (1, 1);
        let (gate_tx, gate_rx) = tokio::sync::oneshot::channel::<()>();
        let first = {
            let tail = tail.clone();
            tokio::spawn(async move {
                tail.page(0, 10, 1, 1, || async move {
                    gate_rx.await.unwrap();
                    Ok(entries(0, 4))
                })
                .await
                .unwrap()
                .len()
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        let second = {
            let tail = tail.clone();
            tokio::spawn(async move { ask(&tail, 0, 10, g, 9).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        gate_tx.send(()).unwrap();
        assert_eq!((first.await.unwrap(), second.await.unwrap()), (4, 4));
        assert_eq!((tail.counts().read(), tail.counts().shared()), (1, 1));

        let failed = tail
            .page(20, 10, 1, 1, || async {
                Err(StoreError::Integrity("unreadable".to_owned()))
            })
            .await;
        assert!(failed.is_err());
        assert_eq!(ask(&tail, 20, 10, g, 2).await, 2);
        assert_eq!(tail.counts().read(), 3);
    }

    #[tokio::test]
    async fn pages_are_kept_at_most_capacity_at_a_time() {
        let tail = Tail::default();
        let g = (1, 1);
        for page in 0..=CAPACITY as u64 {
            ask(&tail, page * 10, 10, g, 10).await;
        }
        // The first page was let go for the newest.
        ask(&tail, 0, 10, g, 10).await;
        ask(&tail, CAPACITY as u64 * 10, 10, g, 10).await;
        assert_eq!(tail.counts().read(), CAPACITY as u64 + 2);
        assert_eq!(tail.counts().shared(), 1);
    }
}
