//! The records of recently written customers — their projection rows as stored (sealed), and
//! the record those rows hold, opened — so that a command is decided without reading, opening
//! or parsing the customer's record first.
//!
//! The opened record is personal data in memory, as the unwrapped data key beside it in the
//! key cache already is: it is used at most [`MAX_AGE`] after it was written, an entry left
//! unused that long goes at the shard's next write, it goes with the key at erasure, and it
//! is never shown by `Debug`.
//!
//! **Why it stays correct, with several processes too.** A cached record is only ever a
//! starting point: the append that follows is checked against the customer's stream version
//! in the write transaction, so a command decided on a record another process has moved on
//! from conflicts, is dropped from the cache and decided again on a fresh read. A command the
//! cached record would refuse is decided again on a fresh read before the refusal is given.
//! Entries are written by this process's successful appends and by the stored record a
//! refused command was decided on, and replaced only by a newer version. A read
//! (`Ledger::state`, `Ledger::states`) answers with a held record only while the customer's
//! stream is still at its version, read in the same call (the events and the rows of a
//! version are written in one transaction), so a read stays as fresh as one of the rows.
//! Rows rewritten without a new version (`idledger rebuild`) clear this process's cache;
//! another process's rebuild is seen within [`MAX_AGE`] — and until then this process
//! answers with the record as it wrote it, which is the log's.

use std::sync::Arc;
use std::time::{Duration, Instant};

use idledger_domain::state::CustomerState;
use uuid::Uuid;

use crate::model::ProjectionRow;
use crate::sharded::ShardedLru;

/// How long an entry is used without being read again.
pub const MAX_AGE: Duration = Duration::from_secs(10);

/// A customer's record: its rows as stored, and the record they hold.
#[derive(Clone)]
pub(crate) struct CachedRecord {
    pub stored: Arc<Vec<ProjectionRow>>,
    pub state: Arc<CustomerState>,
}

struct Entry {
    record: CachedRecord,
    written_at: Instant,
}

pub(crate) struct StateCache {
    records: ShardedLru<Entry>,
    max_age: Duration,
}

impl std::fmt::Debug for StateCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateCache")
            .field("capacity", &self.records.capacity())
            .finish_non_exhaustive()
    }
}

impl StateCache {
    /// Holds at most about `capacity` customers; 0 turns it off.
    pub(crate) fn new(capacity: usize) -> Self {
        Self::with_max_age(capacity, MAX_AGE)
    }

    fn with_max_age(capacity: usize, max_age: Duration) -> Self {
        Self {
            records: ShardedLru::new(capacity),
            max_age,
        }
    }

    /// The record this process last wrote or read for the customer, if recent.
    pub(crate) fn get(&self, customer: Uuid) -> Option<CachedRecord> {
        let mut shard = self.records.shard(customer)?;
        let fresh = shard
            .get(&customer)
            .is_some_and(|e| e.written_at.elapsed() < self.max_age);
        let hit = if fresh {
            shard.get(&customer).map(|e| e.record.clone())
        } else {
            shard.remove(&customer);
            None
        };
        metrics::counter!("idledger_state_cache_total", "result" => if hit.is_some() { "hit" } else { "miss" })
            .increment(1);
        hit
    }

    /// Keeps the customer's record (at its stream version), unless a newer one is held.
    pub(crate) fn put(&self, customer: Uuid, record: CachedRecord) {
        let Some(mut shard) = self.records.shard(customer) else {
            return;
        };
        let version = record.state.stream_version;
        if shard
            .get(&customer)
            .is_some_and(|e| e.record.state.stream_version > version)
        {
            return;
        }
        // The least recently used entries, while too old to be used: an opened record does
        // not stay in memory long after its use, whatever the cache's size. (An entry unused
        // for `max_age` has only older ones before it.)
        while shard
            .iter()
            .next()
            .is_some_and(|(_, e)| e.written_at.elapsed() >= self.max_age)
        {
            shard.remove_lru();
        }
        shard.insert(
            customer,
            Entry {
                record,
                written_at: Instant::now(),
            },
        );
    }

    /// Whether a recent record of the customer is held (not counted as a use).
    pub(crate) fn holds(&self, customer: Uuid) -> bool {
        self.records.shard(customer).is_some_and(|shard| {
            shard
                .peek(&customer)
                .is_some_and(|e| e.written_at.elapsed() < self.max_age)
        })
    }

    /// The held record of the customer if recent and at stream version `version`: the
    /// record its rows hold while the stream is at that version (the rows and the events
    /// are written in one transaction). Not counted as a use.
    pub(crate) fn at_version(&self, customer: Uuid, version: u64) -> Option<Arc<CustomerState>> {
        let shard = self.records.shard(customer)?;
        let entry = shard.peek(&customer)?;
        (entry.written_at.elapsed() < self.max_age && entry.record.state.stream_version == version)
            .then(|| entry.record.state.clone())
    }

    /// The cached record of the customer if it was made from exactly `stored` (in any
    /// order), whatever its age: what a read of these rows would open. Not counted as a use.
    pub(crate) fn made_from(
        &self,
        customer: Uuid,
        stored: &[ProjectionRow],
    ) -> Option<Arc<CustomerState>> {
        let shard = self.records.shard(customer)?;
        let held = &shard.peek(&customer)?.record;
        let same = held.stored.len() == stored.len()
            && stored.iter().all(|row| {
                // Cached rows are in (kind, key) order (`applied`, or a read's).
                held.stored
                    .binary_search_by(|r| (&r.kind, &r.key).cmp(&(&row.kind, &row.key)))
                    .is_ok_and(|i| held.stored[i].record == row.record)
            });
        same.then(|| held.state.clone())
    }

    pub(crate) fn remove(&self, customer: Uuid) {
        if let Some(mut shard) = self.records.shard(customer) {
            shard.remove(&customer);
        }
    }

    pub(crate) fn clear(&self) {
        self.records.clear();
    }
}

/// `stored` with a command's projection change applied: what the table holds after it.
pub(crate) fn applied(
    stored: &[ProjectionRow],
    upserts: &[ProjectionRow],
    deletes: &[(String, String)],
) -> Vec<ProjectionRow> {
    let mut rows: std::collections::BTreeMap<(String, String), String> = stored
        .iter()
        .map(|r| ((r.kind.clone(), r.key.clone()), r.record.clone()))
        .collect();
    for (kind, key) in deletes {
        rows.remove(&(kind.clone(), key.clone()));
    }
    for r in upserts {
        rows.insert((r.kind.clone(), r.key.clone()), r.record.clone());
    }
    rows.into_iter()
        .map(|((kind, key), record)| ProjectionRow { kind, key, record })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn row(kind: &str, key: &str, record: &str) -> ProjectionRow {
        ProjectionRow {
            kind: kind.to_owned(),
            key: key.to_owned(),
            record: record.to_owned(),
        }
    }

    fn record(email: &str, version: u64) -> CachedRecord {
        CachedRecord {
            stored: Arc::new(vec![row("field", "email", email)]),
            state: Arc::new(CustomerState {
                stream_version: version,
                ..CustomerState::default()
            }),
        }
    }

    #[test]
    fn a_newer_version_is_never_replaced_by_an_older_one() {
        let cache = StateCache::new(64);
        let c = Uuid::now_v7();
        cache.put(c, record("v2", 2));
        cache.put(c, record("v1", 1));
        assert_eq!(cache.get(c).unwrap().stored[0].record, "v2");
        cache.put(c, record("v3", 3));
        let held = cache.get(c).unwrap();
        assert_eq!(held.stored[0].record, "v3");
        assert_eq!(held.state.stream_version, 3);
        cache.remove(c);
        assert!(cache.get(c).is_none());
    }

    #[test]
    fn applying_a_change_upserts_and_deletes_in_key_order() {
        let stored = vec![
            row("customer", "", "c"),
            row("field", "email", "old"),
            row("proposal", "p1", "x"),
        ];
        let after = applied(
            &stored,
            &[
                row("field", "email", "new"),
                row("consent", "marketing", "m"),
            ],
            &[("proposal".to_owned(), "p1".to_owned())],
        );
        assert_eq!(
            after,
            vec![
                row("consent", "marketing", "m"),
                row("customer", "", "c"),
                row("field", "email", "new"),
            ]
        );
    }

    #[test]
    fn a_read_reuses_the_cached_record_only_if_made_from_the_very_same_rows() {
        let cache = StateCache::new(64);
        let c = Uuid::now_v7();
        let stored = vec![
            row("consent", "marketing", "m"),
            row("customer", "", "c"),
            row("field", "email", "e"),
        ];
        cache.put(
            c,
            CachedRecord {
                stored: Arc::new(stored.clone()),
                state: Arc::new(CustomerState {
                    stream_version: 7,
                    ..CustomerState::default()
                }),
            },
        );
        let mut reversed = stored.clone();
        reversed.reverse();
        for read in [&stored, &reversed] {
            assert_eq!(cache.made_from(c, read).unwrap().stream_version, 7);
        }
        let mut changed = stored.clone();
        changed[2].record = "other".to_owned();
        assert!(cache.made_from(c, &changed).is_none());
        assert!(cache.made_from(c, &stored[..2]).is_none());
        let mut more = stored.clone();
        more.push(row("field", "phone", "p"));
        assert!(cache.made_from(c, &more).is_none());
        assert!(cache.made_from(Uuid::now_v7(), &stored).is_none());
    }

    #[test]
    fn entries_left_unused_past_the_maximum_age_go_at_the_next_writes() {
        let cache = StateCache::with_max_age(1024, Duration::from_millis(500));
        let old: Vec<Uuid> = (0..200).map(|_| Uuid::now_v7()).collect();
        for c in &old {
            cache.put(*c, record("v1", 1));
        }
        assert_eq!(cache.records.len(), 200);
        std::thread::sleep(Duration::from_millis(600));
        // Enough writes that every one of the shards gets some.
        for _ in 0..200 {
            cache.put(Uuid::now_v7(), record("v1", 1));
        }
        assert_eq!(cache.records.len(), 200);
        assert!(old.iter().all(|c| {
            cache
                .made_from(*c, &[row("field", "email", "v1")])
                .is_none()
        }));
    }

    #[test]
    fn capacity_zero_caches_nothing() {
        let cache = StateCache::new(0);
        let c = Uuid::now_v7();
        cache.put(c, record("v1", 1));
        assert!(cache.get(c).is_none());
    }
}
