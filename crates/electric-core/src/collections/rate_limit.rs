//! A rate limiter that admits waiters one at a time, in priority order (the original's
//! `RateLimitWithPriority`).
//!
//! [`PriorityRateLimiter::acquire`] waits for a grant; grants are spaced at least `interval`
//! apart, and among the callers waiting at a grant the one with the best priority wins (equal
//! priorities are served first come, first served). Unlike the original there is no fixed
//! 900 ms tick and no extra `MinWaitTime` sleep: an idle limiter grants at once, and the pacing
//! is the one interval you configure. Waiting callers are bounded
//! ([`PriorityRateLimiter::new`]'s `max_waiters`); a timeout is the caller's choice
//! (`tokio::time::timeout`), and a cancelled waiter is skipped without using a grant.
//!
//! # Examples
//!
//! ```
//! use std::time::Duration;
//! use electric_core::collections::PriorityRateLimiter;
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let limiter = PriorityRateLimiter::new(Duration::from_millis(10), 1000).unwrap();
//! limiter.acquire(0).await.unwrap(); // idle: granted at once
//! # });
//! ```

use std::cmp::Ordering as CmpOrdering;
use std::collections::BinaryHeap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{oneshot, Notify};
use tokio_util::sync::CancellationToken;

use super::sync::{lock, Mutex};

/// Errors of the rate limiter.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum RateLimitError {
    /// The interval is zero.
    #[error("rate limit interval must be longer than zero")]
    ZeroInterval,
    /// `max_waiters` is zero.
    #[error("rate limiter must allow at least one waiter")]
    ZeroWaiters,
    /// Built outside a tokio runtime.
    #[error("rate limiter must be created inside a tokio runtime")]
    NoRuntime,
    /// `max_waiters` callers are already waiting.
    #[error("too many callers waiting for the rate limiter")]
    TooManyWaiters,
    /// The limiter was dropped while the caller waited.
    #[error("rate limiter is closed")]
    Closed,
}

struct Waiter {
    /// Lower is served first.
    rank: i64,
    seq: u64,
    tx: oneshot::Sender<()>,
}

impl PartialEq for Waiter {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == CmpOrdering::Equal
    }
}
impl Eq for Waiter {}
impl PartialOrd for Waiter {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}
impl Ord for Waiter {
    /// A max-heap pops the greatest: the lowest rank, then the lowest sequence number.
    fn cmp(&self, other: &Self) -> CmpOrdering {
        other
            .rank
            .cmp(&self.rank)
            .then_with(|| other.seq.cmp(&self.seq))
    }
}

struct Inner {
    waiters: Mutex<BinaryHeap<Waiter>>,
    max_waiters: usize,
    seq: AtomicU64,
    arrived: Notify,
    granted: AtomicU64,
    skipped: AtomicU64,
}

/// Grants one caller at a time, at most one per interval, best priority first. Cheap to clone;
/// the dispatcher task stops when the last clone is dropped.
#[derive(Clone)]
pub struct PriorityRateLimiter {
    inner: Arc<Inner>,
    _closer: Arc<Closer>,
}

struct Closer(CancellationToken);
impl Drop for Closer {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

impl fmt::Debug for PriorityRateLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PriorityRateLimiter")
            .field("waiting", &self.waiting())
            .finish_non_exhaustive()
    }
}

impl PriorityRateLimiter {
    /// A limiter granting at most one caller per `interval`, with at most `max_waiters` callers
    /// waiting. Spawns its dispatcher on the current tokio runtime.
    ///
    /// # Errors
    ///
    /// [`RateLimitError::ZeroInterval`], [`RateLimitError::ZeroWaiters`] or
    /// [`RateLimitError::NoRuntime`].
    pub fn new(interval: Duration, max_waiters: usize) -> Result<Self, RateLimitError> {
        if interval.is_zero() {
            return Err(RateLimitError::ZeroInterval);
        }
        if max_waiters == 0 {
            return Err(RateLimitError::ZeroWaiters);
        }
        let rt = tokio::runtime::Handle::try_current().map_err(|_| RateLimitError::NoRuntime)?;
        let inner = Arc::new(Inner {
            waiters: Mutex::new(BinaryHeap::new()),
            max_waiters,
            seq: AtomicU64::new(0),
            arrived: Notify::new(),
            granted: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
        });
        let close = CancellationToken::new();
        rt.spawn(dispatch(inner.clone(), interval, close.clone()));
        Ok(Self {
            inner,
            _closer: Arc::new(Closer(close)),
        })
    }

    /// Waits for a grant; a lower `priority` is served first (the original's
    /// `WaitWithLowToHighPriority`).
    ///
    /// # Errors
    ///
    /// [`RateLimitError::TooManyWaiters`] if the waiting list is full;
    /// [`RateLimitError::Closed`] if the limiter was dropped meanwhile.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a cancelled caller is skipped and its turn goes to the next one.
    pub async fn acquire(&self, priority: i32) -> Result<(), RateLimitError> {
        self.wait(i64::from(priority)).await
    }

    /// Waits for a grant; a higher `priority` is served first (the original's
    /// `WaitWithHighToLowPriority`).
    ///
    /// # Errors
    ///
    /// As [`PriorityRateLimiter::acquire`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn acquire_high_first(&self, priority: i32) -> Result<(), RateLimitError> {
        self.wait(-i64::from(priority)).await
    }

    async fn wait(&self, rank: i64) -> Result<(), RateLimitError> {
        let (tx, rx) = oneshot::channel();
        {
            let mut heap = lock(&self.inner.waiters);
            if heap.len() >= self.inner.max_waiters {
                heap.retain(|w| !w.tx.is_closed());
                if heap.len() >= self.inner.max_waiters {
                    return Err(RateLimitError::TooManyWaiters);
                }
            }
            let seq = self.inner.seq.fetch_add(1, Ordering::Relaxed);
            heap.push(Waiter { rank, seq, tx });
        }
        self.inner.arrived.notify_one();
        rx.await.map_err(|_| RateLimitError::Closed)
    }

    /// Callers waiting now (including cancelled ones not yet skipped).
    pub fn waiting(&self) -> usize {
        lock(&self.inner.waiters).len()
    }

    /// Grants given so far.
    pub fn granted(&self) -> u64 {
        self.inner.granted.load(Ordering::Relaxed)
    }
}

async fn dispatch(inner: Arc<Inner>, interval: Duration, close: CancellationToken) {
    loop {
        let next = lock(&inner.waiters).pop();
        match next {
            Some(w) => {
                if w.tx.send(()).is_ok() {
                    inner.granted.fetch_add(1, Ordering::Relaxed);
                    tokio::select! {
                        () = tokio::time::sleep(interval) => {}
                        () = close.cancelled() => break,
                    }
                } else {
                    inner.skipped.fetch_add(1, Ordering::Relaxed);
                }
            }
            None => {
                tokio::select! {
                    () = inner.arrived.notified() => {}
                    () = close.cancelled() => break,
                }
            }
        }
    }
    // Waiters still queued see `Closed` when their sender is dropped here.
    lock(&inner.waiters).clear();
}

#[cfg(all(test, not(electric_loom)))]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bad_settings() {
        assert_eq!(
            PriorityRateLimiter::new(Duration::ZERO, 1).err(),
            Some(RateLimitError::ZeroInterval)
        );
        assert_eq!(
            PriorityRateLimiter::new(Duration::from_secs(1), 0).err(),
            Some(RateLimitError::ZeroWaiters)
        );
    }

    #[test]
    fn no_runtime() {
        assert_eq!(
            PriorityRateLimiter::new(Duration::from_secs(1), 1).err(),
            Some(RateLimitError::NoRuntime)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn grants_in_priority_order_paced_by_interval() {
        let l = PriorityRateLimiter::new(Duration::from_secs(1), 100).expect("limiter");
        let start = tokio::time::Instant::now();
        l.acquire(0).await.expect("first"); // idle: immediate
        assert_eq!(start.elapsed(), Duration::ZERO);
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for p in [5, 1, 3, 1] {
            let (l, order) = (l.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                l.acquire(p).await.expect("grant");
                order
                    .lock()
                    .expect("order")
                    .push((p, tokio::time::Instant::now()));
            }));
            tokio::task::yield_now().await;
        }
        for t in tasks {
            t.await.expect("join");
        }
        let order = order.lock().expect("order").clone();
        let prios: Vec<_> = order.iter().map(|x| x.0).collect();
        assert_eq!(prios, vec![1, 1, 3, 5]);
        for (i, (_, at)) in order.iter().enumerate() {
            assert_eq!(*at - start, Duration::from_secs(i as u64 + 1));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn high_first_and_cancelled_waiters_are_skipped() {
        let l = PriorityRateLimiter::new(Duration::from_secs(1), 2).expect("limiter");
        l.acquire(0).await.expect("first");
        // A waiter that gives up does not consume a grant.
        let gave_up =
            tokio::time::timeout(Duration::from_millis(100), l.acquire_high_first(100)).await;
        assert!(gave_up.is_err());
        let l2 = l.clone();
        let low = tokio::spawn(async move { l2.acquire_high_first(1).await });
        tokio::task::yield_now().await;
        let l3 = l.clone();
        let high = tokio::spawn(async move { l3.acquire_high_first(9).await });
        tokio::task::yield_now().await;
        assert_eq!(l.acquire(0).await, Err(RateLimitError::TooManyWaiters));
        high.await.expect("join").expect("grant");
        assert!(!low.is_finished());
        low.await.expect("join").expect("grant");
        assert_eq!(l.granted(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_keeps_the_limiter_alive() {
        let l = PriorityRateLimiter::new(Duration::from_secs(10), 10).expect("limiter");
        l.acquire(0).await.expect("first");
        let fut = {
            let l2 = l.clone();
            let f = tokio::spawn(async move {
                // Holds only the future's borrow of a clone that is dropped below.
                let r = l2.wait(0);
                r.await
            });
            tokio::task::yield_now().await;
            f
        };
        drop(l);
        // The waiting task still holds a clone, so the limiter lives until it is granted.
        assert_eq!(fut.await.expect("join"), Ok(()));
    }
}
