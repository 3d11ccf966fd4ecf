//! Per-key async locks that exist only while somebody holds or waits for them.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

/// Shards of the map, so that threads locking different keys rarely meet on one mutex.
const SHARDS: usize = 16;

type Shard = Mutex<HashMap<String, Arc<AsyncMutex<()>>, foldhash::fast::RandomState>>;

/// A map of per-key async mutexes. An entry is created on first use and removed when its last
/// holder or waiter goes away, so the map holds at most one entry per key in use.
pub(crate) struct KeyLocks {
    hasher: foldhash::fast::RandomState,
    shards: [Shard; SHARDS],
}

impl Default for KeyLocks {
    fn default() -> Self {
        KeyLocks {
            hasher: foldhash::fast::RandomState::default(),
            shards: std::array::from_fn(|_| Mutex::default()),
        }
    }
}

/// Holds one key's lock; releases it (and forgets the entry if nobody else wants it) on drop.
pub(crate) struct KeyGuard<'a> {
    shard: &'a Shard,
    id: &'a str,
    lock: Arc<AsyncMutex<()>>,
    guard: Option<OwnedMutexGuard<()>>,
}

fn entries(
    shard: &Shard,
) -> MutexGuard<'_, HashMap<String, Arc<AsyncMutex<()>>, foldhash::fast::RandomState>> {
    shard.lock().unwrap_or_else(|p| p.into_inner())
}

impl KeyLocks {
    fn shard(&self, id: &str) -> &Shard {
        &self.shards[self.hasher.hash_one(id) as usize % SHARDS]
    }

    /// Waits for the lock of `id`.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a cancelled waiter leaves no entry behind.
    pub(crate) async fn lock<'a>(&'a self, id: &'a str) -> KeyGuard<'a> {
        let shard = self.shard(id);
        let lock = {
            let mut map = entries(shard);
            match map.get(id) {
                Some(l) => l.clone(),
                None => map.entry(id.to_string()).or_default().clone(),
            }
        };
        let mut slot = KeyGuard {
            shard,
            id,
            lock,
            guard: None,
        };
        slot.guard = Some(slot.lock.clone().lock_owned().await);
        slot
    }

    /// Whether somebody holds or waits for the lock of `id`.
    pub(crate) fn is_busy(&self, id: &str) -> bool {
        entries(self.shard(id)).contains_key(id)
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|s| entries(s).len()).sum()
    }
}

impl Drop for KeyGuard<'_> {
    fn drop(&mut self) {
        self.guard.take();
        let mut map = entries(self.shard);
        // Two owners left (the map and this guard) means nobody else holds or waits: clones are
        // only made under the shard's lock, which we hold.
        if Arc::strong_count(&self.lock) == 2 {
            map.remove(self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn entries_go_away_and_cancelled_waiters_leave_nothing() {
        let locks = Arc::new(KeyLocks::default());
        let g = locks.lock("a").await;
        assert!(locks.is_busy("a"));
        let l2 = locks.clone();
        let waiter = tokio::spawn(async move {
            let _g = l2.lock("a").await;
        });
        tokio::time::sleep(Duration::from_millis(1)).await;
        waiter.abort();
        let _ = waiter.await;
        drop(g);
        assert_eq!(locks.len(), 0);
        assert!(!locks.is_busy("a"));
    }

    #[tokio::test]
    async fn serialises_holders_of_one_key() {
        let locks = Arc::new(KeyLocks::default());
        let counter = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (locks, counter) = (locks.clone(), counter.clone());
            tasks.push(tokio::spawn(async move {
                let _g = locks.lock("k").await;
                let before = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::task::yield_now().await;
                counter.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                before
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap(), 0, "two holders at once");
        }
        assert_eq!(locks.len(), 0);
    }
}
