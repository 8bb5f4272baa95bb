//! A bounded cache of unwrapped data keys, so that a command or a read of the record does not
//! fetch and unwrap its customer's key from the database every time.
//!
//! Sharded LRU maps (a lock each, held for a lookup or an insert, never across an await) with
//! a total capacity: memory stays bounded whatever the number of customers, and an evicted or
//! invalidated key is zeroed when dropped ([`DataKey`] is `Zeroizing`).
//!
//! Erasure: [`KeyCache::invalidate`] removes the customer's key and bumps an epoch. A key is
//! put in only if no invalidation happened since its caller took the epoch, before reading
//! the database; so a key read before an erasure committed is never put back after the
//! erasure's invalidation, even by a command that raced it.

use std::sync::atomic::{AtomicU64, Ordering};

use uuid::Uuid;

use crate::crypto::DataKey;
use crate::sharded::ShardedLru;

pub(crate) struct KeyCache {
    keys: ShardedLru<DataKey>,
    /// Bumped by every invalidation (under the customer's shard lock).
    epoch: AtomicU64,
}

impl std::fmt::Debug for KeyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyCache")
            .field("capacity", &self.capacity())
            .finish_non_exhaustive()
    }
}

impl KeyCache {
    /// Holds at most `capacity` keys (rounded up to a multiple of the shard count); 0 turns
    /// the cache off.
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            keys: ShardedLru::new(capacity),
            epoch: AtomicU64::new(0),
        }
    }

    pub(crate) fn capacity(&self) -> usize {
        self.keys.capacity()
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.keys.len()
    }

    /// Take this before reading a key from the database, and hand it to [`KeyCache::insert`].
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    pub(crate) fn get(&self, customer: Uuid) -> Option<DataKey> {
        let hit = self.keys.shard(customer)?.get(&customer).cloned();
        metrics::counter!("idledger_data_key_cache_total", "result" => if hit.is_some() { "hit" } else { "miss" })
            .increment(1);
        hit
    }

    /// Keeps `key` unless a key was invalidated since `epoch` was taken: it may be one that an
    /// erasure destroyed after it was read.
    pub(crate) fn insert(&self, customer: Uuid, key: DataKey, epoch: u64) {
        if let Some(mut shard) = self.keys.shard(customer)
            && self.epoch.load(Ordering::SeqCst) == epoch
        {
            shard.insert(customer, key);
        }
    }

    /// Whether the customer's key is held (without counting as a use).
    pub(crate) fn contains(&self, customer: Uuid) -> bool {
        self.keys
            .shard(customer)
            .is_some_and(|shard| shard.contains_key(&customer))
    }

    /// Drops the customer's key, found erased by someone else (another process): nothing of
    /// theirs will need it again. No epoch bump, so that reads of erased records cannot keep
    /// the cache from filling.
    pub(crate) fn forget(&self, customer: Uuid) {
        if let Some(mut shard) = self.keys.shard(customer) {
            shard.remove(&customer);
        }
    }

    /// Forgets the customer's key (their erasure committed) and makes every key read before
    /// now unfit to be put in.
    pub(crate) fn invalidate(&self, customer: Uuid) {
        match self.keys.shard(customer) {
            Some(mut shard) => {
                shard.remove(&customer);
                // Under the shard's lock, so an insert of this customer sees it.
                self.epoch.fetch_add(1, Ordering::SeqCst);
            }
            None => {
                self.epoch.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn opens(key: &DataKey, other: &DataKey) -> bool {
        let sealed = other.seal(b"x", b"").unwrap();
        key.open(&sealed, b"").is_ok()
    }

    #[test]
    fn keeps_at_most_its_capacity_least_recently_used_first_out() {
        let cache = KeyCache::new(16);
        assert_eq!(cache.capacity(), 16);
        let customers: Vec<Uuid> = (0..100).map(|_| Uuid::now_v7()).collect();
        let keys: Vec<DataKey> = customers.iter().map(|_| DataKey::generate()).collect();
        let hot = customers[0];
        for (c, k) in customers.iter().zip(&keys) {
            cache.insert(*c, k.clone(), cache.epoch());
            // Used between every insert: never the least recently used of its shard.
            assert!(cache.get(hot).is_some());
        }
        assert!(cache.len() <= 16, "{} keys held", cache.len());
        assert!(opens(&cache.get(hot).unwrap(), &keys[0]));
        let last = customers.len() - 1;
        assert!(opens(&cache.get(customers[last]).unwrap(), &keys[last]));
    }

    #[test]
    fn an_invalidated_key_is_gone_and_a_key_read_before_is_not_put_back() {
        let cache = KeyCache::new(64);
        let (erased, other) = (Uuid::now_v7(), Uuid::now_v7());
        cache.insert(erased, DataKey::generate(), cache.epoch());
        // A concurrent reader took the epoch and read the key before the erasure committed…
        let before = cache.epoch();
        cache.invalidate(erased);
        assert!(cache.get(erased).is_none());
        // …and tries to put it in after the invalidation: refused.
        cache.insert(erased, DataKey::generate(), before);
        assert!(cache.get(erased).is_none());
        // A read that started after the invalidation may.
        cache.insert(other, DataKey::generate(), cache.epoch());
        assert!(cache.get(other).is_some());
    }

    #[test]
    fn capacity_zero_caches_nothing() {
        let cache = KeyCache::new(0);
        let c = Uuid::now_v7();
        cache.insert(c, DataKey::generate(), cache.epoch());
        assert!(cache.get(c).is_none());
        cache.invalidate(c);
        assert_eq!((cache.capacity(), cache.len()), (0, 0));
    }
}
