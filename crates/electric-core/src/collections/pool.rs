//! Bounded object pools (the original's `ObjectPool<T>` and `ObjectPoolNoCreate<T>`).
//!
//! [`Pool`] creates an object when empty; [`ReusePool`] only hands out objects given back to it.
//! Both keep at most `max_idle` objects, run an optional reset hook on every object given back
//! (the original did not say whether objects were reset), and count what they do. Objects given
//! back to a full pool are dropped and counted.
//!
//! # Examples
//!
//! ```
//! use electric_core::collections::Pool;
//! let pool = Pool::new(16, Vec::<u8>::new).unwrap().with_reset(Vec::clear);
//! let mut buf = pool.get();
//! buf.extend_from_slice(b"hello");
//! pool.put(buf);
//! assert!(pool.get().is_empty()); // reset on return
//! ```

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::sync::{lock, Mutex};

/// Errors of the pool constructors.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum PoolError {
    /// `max_idle` is zero.
    #[error("pool size must be at least 1")]
    ZeroCapacity,
}

/// What happened to an object given back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PutOutcome {
    /// Kept for reuse.
    Pooled,
    /// The pool was full: the object was dropped.
    Dropped,
}

/// Pool counters (a snapshot).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolStats {
    /// Objects created by the factory.
    pub created: u64,
    /// Objects handed out from the pool.
    pub reused: u64,
    /// `try_get` calls that found the pool empty.
    pub empty: u64,
    /// Objects kept when given back.
    pub pooled: u64,
    /// Objects dropped when given back to a full pool.
    pub dropped: u64,
}

type Reset<T> = Arc<dyn Fn(&mut T) + Send + Sync>;

struct Core<T> {
    idle: Mutex<Vec<T>>,
    max_idle: usize,
    reset: Option<Reset<T>>,
    created: AtomicU64,
    reused: AtomicU64,
    empty: AtomicU64,
    pooled: AtomicU64,
    dropped: AtomicU64,
}

impl<T> Core<T> {
    fn new(max_idle: usize) -> Result<Self, PoolError> {
        if max_idle == 0 {
            return Err(PoolError::ZeroCapacity);
        }
        Ok(Self {
            idle: Mutex::new(Vec::new()),
            max_idle,
            reset: None,
            created: AtomicU64::new(0),
            reused: AtomicU64::new(0),
            empty: AtomicU64::new(0),
            pooled: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        })
    }

    fn try_get(&self) -> Option<T> {
        let got = lock(&self.idle).pop();
        let c = if got.is_some() {
            &self.reused
        } else {
            &self.empty
        };
        c.fetch_add(1, Ordering::Relaxed);
        got
    }

    fn put(&self, mut item: T) -> PutOutcome {
        if lock(&self.idle).len() >= self.max_idle {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return PutOutcome::Dropped;
        }
        // Reset outside the lock: the hook is user code.
        if let Some(reset) = &self.reset {
            reset(&mut item);
        }
        let mut idle = lock(&self.idle);
        if idle.len() >= self.max_idle {
            drop(idle);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return PutOutcome::Dropped;
        }
        idle.push(item);
        self.pooled.fetch_add(1, Ordering::Relaxed);
        PutOutcome::Pooled
    }

    fn stats(&self) -> PoolStats {
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        PoolStats {
            created: r(&self.created),
            reused: r(&self.reused),
            empty: r(&self.empty),
            pooled: r(&self.pooled),
            dropped: r(&self.dropped),
        }
    }
}

/// A pool that creates an object when empty. Cheap to clone (clones share the pool).
pub struct Pool<T> {
    core: Arc<Core<T>>,
    factory: Arc<dyn Fn() -> T + Send + Sync>,
}

impl<T> Clone for Pool<T> {
    fn clone(&self) -> Self {
        Self {
            core: self.core.clone(),
            factory: self.factory.clone(),
        }
    }
}

impl<T> fmt::Debug for Pool<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("max_idle", &self.core.max_idle)
            .field("idle", &self.idle())
            .finish_non_exhaustive()
    }
}

impl<T> Pool<T> {
    /// A pool keeping at most `max_idle` objects, creating new ones with `factory`.
    ///
    /// # Errors
    ///
    /// [`PoolError::ZeroCapacity`] if `max_idle` is zero.
    pub fn new(
        max_idle: usize,
        factory: impl Fn() -> T + Send + Sync + 'static,
    ) -> Result<Self, PoolError> {
        Ok(Self {
            core: Arc::new(Core::new(max_idle)?),
            factory: Arc::new(factory),
        })
    }

    /// Sets the hook run on every object given back (for example `Vec::clear`). Call before
    /// sharing the pool: it applies to this handle's pool only if no clone exists yet, and is
    /// ignored otherwise.
    #[must_use]
    pub fn with_reset(mut self, reset: impl Fn(&mut T) + Send + Sync + 'static) -> Self {
        if let Some(core) = Arc::get_mut(&mut self.core) {
            core.reset = Some(Arc::new(reset));
        }
        self
    }

    /// An object from the pool, or a new one.
    pub fn get(&self) -> T {
        match lock(&self.core.idle).pop() {
            Some(x) => {
                self.core.reused.fetch_add(1, Ordering::Relaxed);
                x
            }
            None => {
                self.core.created.fetch_add(1, Ordering::Relaxed);
                (self.factory)()
            }
        }
    }

    /// Gives an object back (reset first). Dropped if the pool is full.
    pub fn put(&self, item: T) -> PutOutcome {
        self.core.put(item)
    }

    /// Objects waiting for reuse.
    pub fn idle(&self) -> usize {
        lock(&self.core.idle).len()
    }

    /// The counters.
    pub fn stats(&self) -> PoolStats {
        self.core.stats()
    }
}

/// A pool that never creates objects: [`ReusePool::try_get`] returns `None` when empty.
/// Cheap to clone.
pub struct ReusePool<T> {
    core: Arc<Core<T>>,
}

impl<T> Clone for ReusePool<T> {
    fn clone(&self) -> Self {
        Self {
            core: self.core.clone(),
        }
    }
}

impl<T> fmt::Debug for ReusePool<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReusePool")
            .field("max_idle", &self.core.max_idle)
            .field("idle", &self.idle())
            .finish_non_exhaustive()
    }
}

impl<T> ReusePool<T> {
    /// A pool keeping at most `max_idle` objects.
    ///
    /// # Errors
    ///
    /// [`PoolError::ZeroCapacity`] if `max_idle` is zero.
    pub fn new(max_idle: usize) -> Result<Self, PoolError> {
        Ok(Self {
            core: Arc::new(Core::new(max_idle)?),
        })
    }

    /// Sets the hook run on every object given back; see [`Pool::with_reset`].
    #[must_use]
    pub fn with_reset(mut self, reset: impl Fn(&mut T) + Send + Sync + 'static) -> Self {
        if let Some(core) = Arc::get_mut(&mut self.core) {
            core.reset = Some(Arc::new(reset));
        }
        self
    }

    /// An object from the pool, if any.
    pub fn try_get(&self) -> Option<T> {
        self.core.try_get()
    }

    /// Gives an object back (reset first). Dropped if the pool is full.
    pub fn put(&self, item: T) -> PutOutcome {
        self.core.put(item)
    }

    /// Objects waiting for reuse.
    pub fn idle(&self) -> usize {
        lock(&self.core.idle).len()
    }

    /// The counters.
    pub fn stats(&self) -> PoolStats {
        self.core.stats()
    }
}

#[cfg(all(test, not(electric_loom)))]
mod tests {
    use super::*;

    #[test]
    fn zero_capacity_is_refused() {
        assert_eq!(Pool::new(0, || 1u8).err(), Some(PoolError::ZeroCapacity));
        assert_eq!(ReusePool::<u8>::new(0).err(), Some(PoolError::ZeroCapacity));
    }

    #[test]
    fn create_reuse_reset_and_bound() {
        let pool = Pool::new(2, Vec::<u32>::new)
            .expect("pool")
            .with_reset(Vec::clear);
        let mut a = pool.get();
        a.push(1);
        let b = pool.get();
        let c = pool.get();
        assert_eq!(pool.put(a), PutOutcome::Pooled);
        assert_eq!(pool.put(b), PutOutcome::Pooled);
        assert_eq!(pool.put(c), PutOutcome::Dropped);
        assert!(pool.get().is_empty(), "reset ran");
        let s = pool.stats();
        assert_eq!((s.created, s.reused, s.pooled, s.dropped), (3, 1, 2, 1));
    }

    #[test]
    fn reuse_pool_returns_none_when_empty() {
        let pool = ReusePool::new(1).expect("pool");
        assert_eq!(pool.try_get(), None::<String>);
        assert_eq!(pool.put("x".to_owned()), PutOutcome::Pooled);
        assert_eq!(pool.try_get().as_deref(), Some("x"));
        assert_eq!(pool.stats().empty, 1);
    }
}
