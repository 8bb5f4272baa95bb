//! The projection rows of recently written customers, as stored (sealed), so that a command
//! is decided without reading the customer's record first.
//!
//! **Why it stays correct, with several processes too.** A cached record is only ever a
//! starting point: the append that follows is checked against the customer's stream version
//! in the write transaction, so a command decided on a record another process has moved on
//! from conflicts, is dropped from the cache and decided again on a fresh read. A command the
//! cached record would refuse is decided again on a fresh read before the refusal is given.
//! Entries are written only by this process's successful appends, and replaced only by a
//! newer version. Rows rewritten without a new version (`idledger rebuild`) clear this
//! process's cache; another process's rebuild is seen within [`MAX_AGE`].

use std::time::{Duration, Instant};

use uuid::Uuid;

use crate::model::ProjectionRow;
use crate::sharded::ShardedLru;

/// How long an entry is used without being read again.
pub const MAX_AGE: Duration = Duration::from_secs(10);

struct Entry {
    rows: Vec<ProjectionRow>,
    version: u64,
    written_at: Instant,
}

pub(crate) struct StateCache {
    records: ShardedLru<Entry>,
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
        Self {
            records: ShardedLru::new(capacity),
        }
    }

    /// The rows this process last wrote for the customer, if recent.
    pub(crate) fn get(&self, customer: Uuid) -> Option<Vec<ProjectionRow>> {
        let mut shard = self.records.shard(customer)?;
        let fresh = shard
            .get(&customer)
            .is_some_and(|e| e.written_at.elapsed() < MAX_AGE);
        let hit = if fresh {
            shard.get(&customer).map(|e| e.rows.clone())
        } else {
            shard.remove(&customer);
            None
        };
        metrics::counter!("idledger_state_cache_total", "result" => if hit.is_some() { "hit" } else { "miss" })
            .increment(1);
        hit
    }

    /// Keeps the rows of the customer's stream at `version`, unless a newer one is held.
    pub(crate) fn put(&self, customer: Uuid, rows: Vec<ProjectionRow>, version: u64) {
        let Some(mut shard) = self.records.shard(customer) else {
            return;
        };
        if shard.get(&customer).is_some_and(|e| e.version > version) {
            return;
        }
        shard.insert(
            customer,
            Entry {
                rows,
                version,
                written_at: Instant::now(),
            },
        );
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

    #[test]
    fn a_newer_version_is_never_replaced_by_an_older_one() {
        let cache = StateCache::new(64);
        let c = Uuid::now_v7();
        cache.put(c, vec![row("field", "email", "v2")], 2);
        cache.put(c, vec![row("field", "email", "v1")], 1);
        assert_eq!(cache.get(c).unwrap()[0].record, "v2");
        cache.put(c, vec![row("field", "email", "v3")], 3);
        assert_eq!(cache.get(c).unwrap()[0].record, "v3");
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
    fn capacity_zero_caches_nothing() {
        let cache = StateCache::new(0);
        let c = Uuid::now_v7();
        cache.put(c, vec![row("customer", "", "c")], 1);
        assert!(cache.get(c).is_none());
    }
}
