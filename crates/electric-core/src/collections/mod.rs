//! Concurrent collections: an observable map, a per-key ordered partitioned queue, a priority
//! queue, a priority rate limiter and object pools.
//!
//! # The in-process toolkit and the original's names
//!
//! The toolkit ports the original .NET library's in-process helpers. Names changed to fit Rust;
//! this table maps them (module paths are relative to the crate root).
//!
//! | original | ours | what changed |
//! |---|---|---|
//! | `MemoryCacheHelper` | [`cache::MemoryCache`](crate::cache::MemoryCache) | built on moka; single flight always (no `withLock` flag, no per-key semaphore entries); failed loads are not cached; counters |
//! | `ObjectPool<T>` | [`pool::Pool::new`] | bounded, reset hook, counters |
//! | `ObjectPoolNoCreate<T>` | [`pool::ReusePool`] | `try_get` returns `None` when empty |
//! | `ConcurrentObservableDictionary` | [`observable_map::ObservableMap`] | `Replace` only when the value changed; bounded event fan-out; a key stream with a gap-free, duplicate-free hand-off |
//! | `NotifyCollectionChangedEventReceiver` | [`observable_map::ObservableMap::subscribe`] | bounded; a lagging subscriber is told and resynchronised instead of growing a buffer |
//! | `AutoConcurrentPartitionedQueue` (V1 and V2), `ConcurrentObservablePartitionedQueue`, `PartitionedConcurrentConsumer` | [`partitioned_queue::PartitionedQueue`] | one design: direct per-key queues, batches, a cap on parallel keys, per-key bound with wait / drop-newest / drop-oldest (every drop counted), idle partitions retired after a timeout without enqueue spin loops, handler errors and panics reported |
//! | `ConcurrentPriorityQueue<T>` | [`priority_queue::PriorityQueue`] | O(1) dequeue via a bitmap of non-empty levels, up to 4,096 levels, bounded, async `pop` |
//! | `RateLimitWithPriority` | [`rate_limit::PriorityRateLimiter`] | no 900 ms tick: an idle limiter grants at once; the pacing interval is configurable; cancelling a waiter removes it |
//! | `AutoWorker<TInput,TOutput>` | [`worker::AutoWorker`](crate::worker::AutoWorker) | bounded; `Result` per item; panics reported |
//! | `AutoBatchWorker<TInput>` | [`worker::BatchWorker`](crate::worker::BatchWorker) | max-wait flush; one result per item instead of one verdict for the batch |
//! | `SmartpulseStopHostedService` / `IEndService` | [`worker::ServiceRunner`](crate::worker::ServiceRunner) / [`worker::EndService`](crate::worker::EndService) | cancellation token, task tracker, ordered stop with a deadline, errors returned instead of printed |
//! | `TplPipeline<T>` | [`pipeline::Pipeline`](crate::pipeline::Pipeline) | typed stages over bounded channels; errors fail the pipeline and surface from `complete`; batch stages run one batch at a time |
//! | `ConcurrentQueueExtension.GetDequeueAllItemsAndReturn` | (dropped) | the partitioned queue and [`pipeline`](crate::pipeline) drain stages cover it without missing items |
//!
//! # How the hand-written synchronisation is checked
//!
//! - loom models (run with
//!   `RUSTFLAGS="--cfg electric_loom" cargo test -p electric-core --lib --release loom_`; a
//!   crate-specific cfg because moka's dependency `event-listener` does not build under
//!   `--cfg loom`): the partitioned queue's enqueue-versus-retire race and its worker wake-up
//!   hand-off run the real [`partitioned_queue`] table code; the observable map's
//!   snapshot-and-subscribe hand-off is checked on a model of the protocol (tokio's broadcast
//!   channel is not loom-instrumented).
//! - a property test (proptest) of per-key order under random interleavings of producers, keys,
//!   batch sizes, bounds and handler delays on a multi-threaded runtime;
//! - tests with paused time (tokio's `test-util`) for time to live, idle retirement, max-wait
//!   flushes and rate-limit pacing.

pub mod observable_map;
pub mod partitioned_queue;
pub mod pool;
pub mod priority_queue;
pub mod rate_limit;

pub use observable_map::ObservableMap;
pub use partitioned_queue::PartitionedQueue;
pub use pool::{Pool, ReusePool};
pub use priority_queue::PriorityQueue;
pub use rate_limit::PriorityRateLimiter;

/// Synchronisation primitives, swapped for loom's under `--cfg electric_loom` so the
/// hand-written parts can be model-checked. (A crate-specific name rather than `--cfg loom`:
/// moka's dependency `event-listener` does not build under `--cfg loom`.) Run the models with
/// `RUSTFLAGS="--cfg electric_loom" cargo test -p electric-core --lib --release loom_`.
pub(crate) mod sync {
    #[cfg(electric_loom)]
    pub(crate) use loom::sync::{Arc, Mutex, MutexGuard};
    #[cfg(not(electric_loom))]
    pub(crate) use std::sync::{Arc, Mutex, MutexGuard};

    /// Locks `m`, ignoring poisoning: no code in this crate panics while holding a toolkit lock
    /// (user callbacks always run outside of them).
    pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
        m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A boxed error, as returned by user handlers.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Turns a panic payload into a message.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&'static str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}

/// Public futures and streams of the toolkit are `Send + 'static` (checked at compile time).
#[cfg(all(test, not(electric_loom)))]
mod send_checks {
    use std::time::Duration;

    use super::*;
    use crate::cache::MemoryCache;
    use crate::pipeline::Pipeline;
    use crate::worker::{AutoWorker, BatchWorker};

    fn is_send_static<T: Send + 'static>(_: &T) {}

    #[tokio::test]
    async fn futures_and_streams_are_send_and_static() {
        let q = PartitionedQueue::builder()
            .build(|_k: u8, _b: Vec<u8>| async { Ok::<_, BoxError>(()) })
            .expect("queue");
        let q2 = q.clone();
        is_send_static(&async move { q2.enqueue(1, 1).await });
        let q3 = q.clone();
        is_send_static(&async move { q3.wait_idle().await });
        let c = MemoryCache::<u8, u8>::builder().build().expect("cache");
        is_send_static(&async move {
            c.get_or_load(1, || async { Ok::<_, std::io::Error>(1) })
                .await
        });
        let m = ObservableMap::<u8, u8>::new();
        is_send_static(&m.key_stream());
        let pq = PriorityQueue::<u8>::new(2, 2).expect("pq");
        is_send_static(&async move { pq.pop().await });
        let rl = PriorityRateLimiter::new(Duration::from_secs(1), 1).expect("rl");
        is_send_static(&async move { rl.acquire(0).await });
        let w = AutoWorker::builder()
            .build(|x: u8| async move { Ok::<_, BoxError>(x) })
            .expect("w");
        is_send_static(&async move { w.submit(1).await });
        let bw =
            BatchWorker::builder()
                .build(|b: Vec<u8>| async move {
                    b.into_iter().map(Ok::<_, BoxError>).collect::<Vec<_>>()
                })
                .expect("bw");
        is_send_static(&async move { bw.submit(1).await });
        let p = Pipeline::build(1, |i| {
            i.for_each("s", |_x: u8| async { Ok::<_, BoxError>(()) })
        })
        .expect("p");
        is_send_static(&async move { p.send(1).await });
    }
}
