//! A bounded per-customer LRU map split into shards, each behind its own lock (held for one
//! map call, never across an await): the ledger's key and state caches.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::{Mutex, MutexGuard, PoisonError};

use hashlink::LruCache;
use uuid::Uuid;

/// Shards, so that concurrent commands rarely wait on one lock.
const SHARDS: usize = 8;

pub(crate) type Shard<V> = LruCache<Uuid, V, RandomState>;

pub(crate) struct ShardedLru<V> {
    /// Empty when the cache is off (capacity 0).
    shards: Box<[Mutex<Shard<V>>]>,
    /// Picks a shard. Random per process: customer ids come from clients.
    hasher: RandomState,
}

impl<V> ShardedLru<V> {
    /// Holds at most `capacity` entries (rounded up to a multiple of the shard count); 0
    /// turns it off.
    pub(crate) fn new(capacity: usize) -> Self {
        let shards = if capacity == 0 {
            Vec::new()
        } else {
            let per_shard = capacity.div_ceil(SHARDS);
            (0..SHARDS)
                .map(|_| Mutex::new(LruCache::with_hasher(per_shard, RandomState::new())))
                .collect()
        };
        Self {
            shards: shards.into_boxed_slice(),
            hasher: RandomState::new(),
        }
    }

    /// The customer's shard, locked; `None` when the cache is off.
    pub(crate) fn shard(&self, customer: Uuid) -> Option<MutexGuard<'_, Shard<V>>> {
        if self.shards.is_empty() {
            return None;
        }
        let index = (self.hasher.hash_one(customer) % SHARDS as u64) as usize;
        self.shards.get(index).map(lock)
    }

    pub(crate) fn capacity(&self) -> usize {
        self.shards.iter().map(|s| lock(s).capacity()).sum()
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).len()).sum()
    }

    pub(crate) fn clear(&self) {
        for shard in &self.shards {
            lock(shard).clear();
        }
    }
}

/// A panic while holding a shard leaves nothing half-done (each operation is one map call).
fn lock<V>(shard: &Mutex<Shard<V>>) -> MutexGuard<'_, Shard<V>> {
    shard.lock().unwrap_or_else(PoisonError::into_inner)
}
