//! Per-key async locks that exist only while somebody holds or waits for them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

/// A map of per-key async mutexes. An entry is created on first use and removed when its last
/// holder or waiter goes away, so the map holds at most one entry per key in use.
#[derive(Default)]
pub(crate) struct KeyLocks {
    map: Mutex<HashMap<String, Arc<AsyncMutex<()>>>>,
}

/// Holds one key's lock; releases it (and forgets the entry if nobody else wants it) on drop.
pub(crate) struct KeyGuard<'a> {
    locks: &'a KeyLocks,
    id: String,
    lock: Arc<AsyncMutex<()>>,
    guard: Option<OwnedMutexGuard<()>>,
}

impl KeyLocks {
    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<AsyncMutex<()>>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits for the lock of `id`.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a cancelled waiter leaves no entry behind.
    pub(crate) async fn lock(&self, id: &str) -> KeyGuard<'_> {
        let lock = self.entries().entry(id.to_string()).or_default().clone();
        let mut slot = KeyGuard {
            locks: self,
            id: id.to_string(),
            lock,
            guard: None,
        };
        slot.guard = Some(slot.lock.clone().lock_owned().await);
        slot
    }

    /// Whether somebody holds or waits for the lock of `id`.
    pub(crate) fn is_busy(&self, id: &str) -> bool {
        self.entries().contains_key(id)
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries().len()
    }
}

impl Drop for KeyGuard<'_> {
    fn drop(&mut self) {
        self.guard.take();
        let mut map = self.locks.entries();
        // Two owners left (the map and this guard) means nobody else holds or waits: clones are
        // only made under the map lock, which we hold.
        if Arc::strong_count(&self.lock) == 2 {
            map.remove(&self.id);
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
