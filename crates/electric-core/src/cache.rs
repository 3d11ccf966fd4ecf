//! A bounded in-memory cache with get-or-load single flight (the original's `MemoryCacheHelper`).
//!
//! [`MemoryCache`] wraps a [`moka`] future cache and adds what the original offered on top of
//! its cache: a default time to live, per-entry expiry, `remove` returning the value, a clear
//! that never blocks readers, and hit / miss / load counters.
//!
//! - **Single flight, always.** [`MemoryCache::get_or_load`] runs at most one loader per key
//!   however many callers miss at once; the others wait for its result. A failed load is not
//!   cached: every waiter gets the same error (as an `Arc`) and the next call loads again.
//!   (The original needed `withLock = true` for this, kept its per-key semaphores as cache
//!   entries that could expire on their own, and stampeded without it.)
//! - **Expiry** is moka's: each entry carries its own time to live (the default or the one given
//!   at insert or load) and is never returned after it. moka measures time with its own clock,
//!   which tokio's paused time does not move; for tests with paused time, build the cache with
//!   [`ExpiryClock::Tokio`] and entries are also judged against [`tokio::time::Instant`]. That
//!   costs a clock read per hit, so the default is [`ExpiryClock::Moka`].
//! - **Clearing** ([`MemoryCache::clear`]) invalidates every entry present at the call without
//!   blocking: readers that already hold a value keep it (values are clones, typically `Arc`s).
//!
//! # Examples
//!
//! ```
//! use std::time::Duration;
//! use electric_core::cache::MemoryCache;
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let cache = MemoryCache::<String, u64>::builder()
//!     .max_capacity(10_000)
//!     .default_ttl(Duration::from_secs(60))
//!     .build()
//!     .unwrap();
//! let v = cache
//!     .get_or_load("answer".to_owned(), || async { Ok::<_, std::io::Error>(42) })
//!     .await
//!     .unwrap();
//! assert_eq!(v, 42);
//! assert_eq!(cache.get(&"answer".to_owned()).await, Some(42));
//! assert_eq!(cache.stats().loads, 1);
//! # });
//! ```

use std::fmt;
use std::future::Future;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use moka::ops::compute::Op;
use tokio::time::Instant;

/// Errors of the cache's builder and calls.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum CacheError {
    /// The maximum capacity is zero.
    #[error("cache capacity must be at least 1")]
    ZeroCapacity,
    /// A time to live is zero.
    #[error("cache time to live must be longer than zero")]
    ZeroTtl,
}

/// Cache counters (a snapshot).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheStats {
    /// Reads answered from the cache.
    pub hits: u64,
    /// Reads that found no live entry.
    pub misses: u64,
    /// Loader runs started by [`MemoryCache::get_or_load`].
    pub loads: u64,
    /// Loader runs that returned an error.
    pub load_failures: u64,
}

#[derive(Default, Debug)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    loads: AtomicU64,
    load_failures: AtomicU64,
}

/// Which clock decides that an entry expired.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum ExpiryClock {
    /// moka's own clock only (the fastest; the default).
    #[default]
    Moka,
    /// Also tokio's clock, so tests with paused time (`tokio::time::pause`) can expire entries
    /// by advancing time. Costs one clock read per hit.
    Tokio,
}

#[derive(Clone)]
struct Slot<V> {
    value: V,
    /// Only with [`ExpiryClock::Tokio`].
    deadline: Option<Instant>,
    ttl: Duration,
}

impl<V> Slot<V> {
    fn new(value: V, ttl: Duration, clock: ExpiryClock) -> Self {
        let deadline = match clock {
            ExpiryClock::Moka => None,
            ExpiryClock::Tokio => Some(Instant::now() + ttl),
        };
        Self {
            value,
            deadline,
            ttl,
        }
    }

    fn is_live(&self) -> bool {
        self.deadline.is_none_or(|d| Instant::now() < d)
    }
}

struct SlotExpiry;

impl<K, V> moka::Expiry<K, Slot<V>> for SlotExpiry {
    fn expire_after_create(
        &self,
        _key: &K,
        value: &Slot<V>,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        Some(value.ttl)
    }

    fn expire_after_update(
        &self,
        _key: &K,
        value: &Slot<V>,
        _updated_at: std::time::Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.ttl)
    }
}

/// Builds a [`MemoryCache`].
pub struct MemoryCacheBuilder<K, V> {
    max_capacity: u64,
    default_ttl: Duration,
    clock: ExpiryClock,
    _types: std::marker::PhantomData<fn(K, V)>,
}

impl<K, V> fmt::Debug for MemoryCacheBuilder<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryCacheBuilder")
            .field("max_capacity", &self.max_capacity)
            .field("default_ttl", &self.default_ttl)
            .field("clock", &self.clock)
            .finish()
    }
}

impl<K, V> Default for MemoryCacheBuilder<K, V> {
    fn default() -> Self {
        Self {
            max_capacity: 100_000,
            default_ttl: Duration::from_secs(3600),
            clock: ExpiryClock::Moka,
            _types: std::marker::PhantomData,
        }
    }
}

impl<K, V> MemoryCacheBuilder<K, V>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// Most entries kept (default 100,000); moka evicts the least useful ones beyond it.
    pub fn max_capacity(mut self, n: u64) -> Self {
        self.max_capacity = n;
        self
    }

    /// Time to live of entries inserted or loaded without their own (default 1 h, as the
    /// original's `DefaultCacheHours`).
    pub fn default_ttl(mut self, ttl: Duration) -> Self {
        self.default_ttl = ttl;
        self
    }

    /// Which clock judges expiry (default [`ExpiryClock::Moka`]; use [`ExpiryClock::Tokio`] in
    /// tests with paused time).
    pub fn expiry_clock(mut self, clock: ExpiryClock) -> Self {
        self.clock = clock;
        self
    }

    /// Builds the cache.
    ///
    /// # Errors
    ///
    /// [`CacheError::ZeroCapacity`] or [`CacheError::ZeroTtl`].
    pub fn build(self) -> Result<MemoryCache<K, V>, CacheError> {
        if self.max_capacity == 0 {
            return Err(CacheError::ZeroCapacity);
        }
        if self.default_ttl.is_zero() {
            return Err(CacheError::ZeroTtl);
        }
        let inner = moka::future::Cache::builder()
            .max_capacity(self.max_capacity)
            .expire_after(SlotExpiry)
            .build();
        Ok(MemoryCache {
            inner,
            default_ttl: self.default_ttl,
            clock: self.clock,
            counters: Arc::new(Counters::default()),
        })
    }
}

/// A bounded cache with single-flight loads, TTLs and counters. Cheap to clone (clones share
/// the entries). See the [module docs](self).
pub struct MemoryCache<K, V> {
    inner: moka::future::Cache<K, Slot<V>>,
    default_ttl: Duration,
    clock: ExpiryClock,
    counters: Arc<Counters>,
}

impl<K, V> Clone for MemoryCache<K, V> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            default_ttl: self.default_ttl,
            clock: self.clock,
            counters: self.counters.clone(),
        }
    }
}

impl<K, V> fmt::Debug for MemoryCache<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryCache")
            .field("entries", &self.inner.entry_count())
            .field("default_ttl", &self.default_ttl)
            .finish_non_exhaustive()
    }
}

impl<K, V> MemoryCache<K, V>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// A builder with the defaults (100,000 entries, 1 h time to live).
    pub fn builder() -> MemoryCacheBuilder<K, V> {
        MemoryCacheBuilder::default()
    }

    /// The live value of `key`, if any. Counts a hit or a miss.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn get(&self, key: &K) -> Option<V> {
        match self.inner.get(key).await {
            Some(slot) if slot.is_live() => {
                self.counters.hits.fetch_add(1, Ordering::Relaxed);
                Some(slot.value)
            }
            Some(_) => {
                self.counters.misses.fetch_add(1, Ordering::Relaxed);
                self.evict_if_expired(key).await;
                None
            }
            None => {
                self.counters.misses.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    async fn evict_if_expired(&self, key: &K) {
        self.inner
            .entry(key.clone())
            .and_compute_with(|e| async move {
                match e {
                    Some(e) if !e.value().is_live() => Op::Remove,
                    _ => Op::Nop,
                }
            })
            .await;
    }

    /// The live value of `key`, or the result of `load` cached with the default time to live.
    ///
    /// At most one `load` runs per key at a time: concurrent callers that miss wait for it and
    /// share its result. See [`MemoryCache::get_or_load_with_ttl`].
    ///
    /// # Errors
    ///
    /// The loader's error, shared (`Arc`) by every caller that waited for that load. Errors are
    /// not cached.
    ///
    /// # Cancel safety
    ///
    /// Cancelling a caller that runs the loader cancels the load; a waiting caller then takes
    /// over and runs its own loader. Cancelling a waiting caller has no effect on the others.
    pub async fn get_or_load<F, Fut, E>(&self, key: K, load: F) -> Result<V, Arc<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>>,
        E: Send + Sync + 'static,
    {
        self.get_or_load_with_ttl(key, self.default_ttl, load).await
    }

    /// Like [`MemoryCache::get_or_load`], caching a loaded value for `ttl` (a zero `ttl` is
    /// raised to one nanosecond: the value is returned but expires at once).
    ///
    /// # Errors
    ///
    /// The loader's error, shared by every caller that waited for that load.
    ///
    /// # Cancel safety
    ///
    /// As [`MemoryCache::get_or_load`].
    pub async fn get_or_load_with_ttl<F, Fut, E>(
        &self,
        key: K,
        ttl: Duration,
        load: F,
    ) -> Result<V, Arc<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>>,
        E: Send + Sync + 'static,
    {
        // `get` evicts an expired entry, so `try_get_with` below does not return it. (A value
        // whose deadline passes while this call runs may still be returned to this caller.)
        if let Some(v) = self.get(&key).await {
            return Ok(v);
        }
        let ttl = ttl.max(Duration::from_nanos(1));
        let counters = &self.counters;
        let clock = self.clock;
        let slot = self
            .inner
            .try_get_with(key, async {
                counters.loads.fetch_add(1, Ordering::Relaxed);
                match load().await {
                    Ok(v) => Ok(Slot::new(v, ttl, clock)),
                    Err(e) => {
                        counters.load_failures.fetch_add(1, Ordering::Relaxed);
                        Err(e)
                    }
                }
            })
            .await?;
        Ok(slot.value)
    }

    /// Inserts `value` with the default time to live, replacing any entry.
    pub async fn insert(&self, key: K, value: V) {
        self.inner
            .insert(key, Slot::new(value, self.default_ttl, self.clock))
            .await;
    }

    /// Inserts `value` for `ttl`, replacing any entry.
    ///
    /// # Errors
    ///
    /// [`CacheError::ZeroTtl`] if `ttl` is zero (nothing is inserted).
    pub async fn insert_with_ttl(&self, key: K, value: V, ttl: Duration) -> Result<(), CacheError> {
        if ttl.is_zero() {
            return Err(CacheError::ZeroTtl);
        }
        self.inner
            .insert(key, Slot::new(value, ttl, self.clock))
            .await;
        Ok(())
    }

    /// Removes `key`, returning its live value if it had one.
    pub async fn remove(&self, key: &K) -> Option<V> {
        self.inner
            .remove(key)
            .await
            .filter(Slot::is_live)
            .map(|s| s.value)
    }

    /// Invalidates every entry present now. Does not block: readers go on and see misses.
    /// A load that was running when `clear` was called may still insert its value.
    pub fn clear(&self) {
        self.inner.invalidate_all();
    }

    /// Approximate number of entries (including expired ones not yet evicted).
    pub fn entry_count(&self) -> u64 {
        self.inner.entry_count()
    }

    /// Runs moka's pending maintenance (evictions, counts) now; useful in tests.
    pub async fn run_pending_tasks(&self) {
        self.inner.run_pending_tasks().await;
    }

    /// The counters.
    pub fn stats(&self) -> CacheStats {
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CacheStats {
            hits: r(&self.counters.hits),
            misses: r(&self.counters.misses),
            loads: r(&self.counters.loads),
            load_failures: r(&self.counters.load_failures),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    fn cache(ttl_secs: u64) -> MemoryCache<u32, Arc<String>> {
        MemoryCache::builder()
            .max_capacity(1000)
            .default_ttl(Duration::from_secs(ttl_secs))
            .expiry_clock(ExpiryClock::Tokio)
            .build()
            .expect("build")
    }

    #[test]
    fn builder_rejects_zero() {
        let e = MemoryCache::<u32, u32>::builder().max_capacity(0).build();
        assert_eq!(e.err(), Some(CacheError::ZeroCapacity));
        let e = MemoryCache::<u32, u32>::builder()
            .default_ttl(Duration::ZERO)
            .build();
        assert_eq!(e.err(), Some(CacheError::ZeroTtl));
    }

    #[tokio::test(start_paused = true)]
    async fn ttl_default_and_per_entry() {
        let c = cache(60);
        c.insert(1, Arc::new("a".into())).await;
        c.insert_with_ttl(2, Arc::new("b".into()), Duration::from_secs(10))
            .await
            .expect("insert");
        assert_eq!(
            c.insert_with_ttl(3, Arc::new("c".into()), Duration::ZERO)
                .await,
            Err(CacheError::ZeroTtl)
        );
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(c.get(&2).await.is_some());
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(c.get(&2).await.is_none(), "per-entry ttl passed");
        assert!(c.get(&1).await.is_some());
        tokio::time::advance(Duration::from_secs(50)).await;
        assert!(c.get(&1).await.is_none(), "default ttl passed");
        assert!(
            c.remove(&1).await.is_none(),
            "an expired value is not returned"
        );
        let s = c.stats();
        assert_eq!((s.hits, s.misses), (2, 2));
    }

    #[tokio::test]
    async fn default_clock_expires_on_moka_time() {
        let c = MemoryCache::<u32, u32>::builder().build().expect("build");
        c.insert_with_ttl(1, 1, Duration::from_millis(5))
            .await
            .expect("insert");
        c.insert(2, 2).await;
        // Real time: the entry's deadline has certainly passed after the sleep.
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(c.get(&1).await, None);
        assert_eq!(c.get(&2).await, Some(2));
    }

    #[tokio::test(start_paused = true)]
    async fn expired_entry_is_reloaded() {
        let c = cache(5);
        let v = c
            .get_or_load(1, || async { Ok::<_, String>(Arc::new("one".to_owned())) })
            .await
            .expect("load");
        assert_eq!(*v, "one");
        tokio::time::advance(Duration::from_secs(6)).await;
        let v = c
            .get_or_load(1, || async { Ok::<_, String>(Arc::new("two".to_owned())) })
            .await
            .expect("load");
        assert_eq!(*v, "two");
        assert_eq!(c.stats().loads, 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_misses_run_one_load() {
        let c = cache(60);
        let runs = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(tokio::sync::Notify::new());
        let mut tasks = Vec::new();
        for _ in 0..64 {
            let (c, runs, gate) = (c.clone(), runs.clone(), gate.clone());
            tasks.push(tokio::spawn(async move {
                c.get_or_load(7, || async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    gate.notified().await;
                    Ok::<_, String>(Arc::new("v".to_owned()))
                })
                .await
            }));
        }
        // Wait until the one loader runs, then give the others time to queue behind it.
        while runs.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        gate.notify_one();
        for t in tasks {
            assert_eq!(*t.await.expect("join").expect("load"), "v");
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(c.stats().loads, 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn failed_load_wakes_waiters_and_is_not_cached() {
        let c = cache(60);
        // A gate that stays open once opened: a caller arriving after the failed load runs a
        // loader of its own, which must not wait for a second opening (a `Notify` permit is
        // used up by the first loader, and that test hung).
        let gate = Arc::new(tokio::sync::watch::Sender::new(false));
        let started = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (c, gate, started) = (c.clone(), gate.clone(), started.clone());
            tasks.push(tokio::spawn(async move {
                c.get_or_load(1, || async move {
                    started.fetch_add(1, Ordering::SeqCst);
                    let _ = gate.subscribe().wait_for(|open| *open).await;
                    Err::<Arc<String>, _>("backend down".to_owned())
                })
                .await
            }));
        }
        while started.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        gate.send_replace(true);
        let mut errors = 0;
        for t in tasks {
            if let Err(e) = t.await.expect("join") {
                assert_eq!(*e, "backend down");
                errors += 1;
            }
        }
        assert_eq!(errors, 8);
        // Waiters that arrived after the failure may have run their own loader; never cached.
        assert!(c.stats().load_failures >= 1);
        let v = c
            .get_or_load(1, || async { Ok::<_, String>(Arc::new("up".to_owned())) })
            .await
            .expect("load");
        assert_eq!(*v, "up");
    }

    #[tokio::test(start_paused = true)]
    async fn cancelled_loader_hands_over_to_a_waiter() {
        let c = cache(60);
        let c1 = c.clone();
        // The first caller's load never finishes before it is cancelled.
        let first = tokio::spawn(async move {
            c1.get_or_load(1, || async {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok::<_, String>(Arc::new("never".to_owned()))
            })
            .await
        });
        tokio::time::sleep(Duration::from_millis(1)).await;
        let c2 = c.clone();
        let second = tokio::spawn(async move {
            c2.get_or_load(1, || async {
                Ok::<_, String>(Arc::new("second".to_owned()))
            })
            .await
        });
        tokio::time::sleep(Duration::from_millis(1)).await;
        first.abort();
        let v = second.await.expect("join").expect("load");
        assert_eq!(*v, "second");
        assert_eq!(c.stats().loads, 2);
    }

    #[tokio::test]
    async fn remove_returns_value_and_clear_invalidates() {
        let c = cache(60);
        c.insert(1, Arc::new("a".into())).await;
        c.insert(2, Arc::new("b".into())).await;
        let held = c.get(&2).await.expect("present");
        assert_eq!(
            c.remove(&1).await.map(|v| (*v).clone()),
            Some("a".to_owned())
        );
        assert_eq!(c.remove(&1).await, None);
        c.clear();
        assert_eq!(c.get(&2).await, None);
        assert_eq!(*held, "b", "a reader keeps what it holds");
        c.insert(3, Arc::new("c".into())).await;
        assert!(c.get(&3).await.is_some(), "inserts after clear survive");
    }
}
