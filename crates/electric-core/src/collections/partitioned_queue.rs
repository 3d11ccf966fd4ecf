//! A per-key ordered partitioned queue (the original's `AutoConcurrentPartitionedQueue`).
//!
//! Items are enqueued under a key. Items of one key reach the handler in enqueue order, in
//! batches of up to [`PartitionedQueueBuilder::max_batch`] items, one batch at a time; different
//! keys are handled in parallel, at most [`PartitionedQueueBuilder::max_concurrency`] batches at
//! once. Each key owns a queue that can be bounded
//! ([`PartitionedQueueBuilder::per_key_bound`]) with an [`Overflow`] policy; every dropped item
//! is counted. A key whose queue stays empty for [`PartitionedQueueBuilder::idle_timeout`] is
//! retired and recreated on its next item.
//!
//! Handler errors and panics never vanish: they are counted, logged through `tracing`, and passed
//! to the [`PartitionedQueueBuilder::on_error`] callback. A failed batch is not retried (the
//! handler owns retries); the key goes on with its next batch.
//!
//! # Dropping the queue
//!
//! Dropping the last [`PartitionedQueue`] handle closes it: new items are refused, and items
//! already queued are still handled by the background tasks, which then exit. Call
//! [`PartitionedQueue::shutdown`] to close and wait for that. Items still queued when the tokio
//! runtime itself shuts down are counted as [`PartitionedQueueStats::abandoned`] (read through a
//! [`QueueMonitor`], which outlives the queue).
//!
//! # Examples
//!
//! ```
//! use electric_core::collections::PartitionedQueue;
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let queue = PartitionedQueue::builder()
//!     .max_batch(100)
//!     .build(|key: String, batch: Vec<u32>| async move {
//!         // every batch holds items of one key, in order
//!         assert!(batch.windows(2).all(|w| w[0] < w[1]));
//!         let _ = key;
//!         Ok::<_, std::convert::Infallible>(())
//!     })
//!     .unwrap();
//! for i in 0..10 {
//!     queue.enqueue(format!("key-{}", i % 3), i).await.unwrap();
//! }
//! queue.wait_idle().await;
//! assert_eq!(queue.stats().processed, 10);
//! # });
//! ```

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::hash::Hash;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;

use super::sync::{lock, Arc, Mutex};
use super::{panic_message, BoxError};

/// What to do with an item whose key's queue is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Overflow {
    /// Wait for room ([`PartitionedQueue::enqueue`] waits; [`PartitionedQueue::try_enqueue`]
    /// returns [`TryEnqueueError::Full`]).
    #[default]
    Wait,
    /// Refuse the new item; it is counted in [`PartitionedQueueStats::dropped_newest`].
    DropNewest,
    /// Drop the oldest queued item of that key to make room; it is counted in
    /// [`PartitionedQueueStats::dropped_oldest`].
    DropOldest,
}

/// How an enqueue went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum EnqueueOutcome {
    /// The item was queued.
    Queued,
    /// The key's queue was full and the policy is [`Overflow::DropNewest`]: this item was dropped.
    DroppedNewest,
    /// The key's queue was full and the policy is [`Overflow::DropOldest`]: the item was queued
    /// and the key's oldest item dropped.
    DroppedOldest,
}

/// Errors of the partitioned queue.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum PartitionedQueueError {
    /// A builder setting is out of range.
    #[error("invalid partitioned queue setting {setting}: {reason}")]
    InvalidConfig {
        /// The setting.
        setting: &'static str,
        /// Why it was refused.
        reason: &'static str,
    },
    /// The queue was built outside a tokio runtime.
    #[error("partitioned queue must be built inside a tokio runtime")]
    NoRuntime,
    /// A non-zero idle timeout needs the runtime's time driver, which is not enabled.
    #[error("partitioned queue idle timeout needs a runtime with the time driver enabled")]
    NoTimeDriver,
    /// The queue is closed; the item was not queued.
    #[error("partitioned queue is closed")]
    Closed,
}

/// Why [`PartitionedQueue::try_enqueue`] refused an item (the item is handed back).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum TryEnqueueError<T> {
    /// The key's queue is full and the policy is [`Overflow::Wait`].
    #[error("partition is full")]
    Full(T),
    /// The queue is closed.
    #[error("partitioned queue is closed")]
    Closed(T),
}

/// What went wrong with one batch.
#[derive(Debug)]
#[non_exhaustive]
pub enum FailureKind {
    /// The handler returned an error.
    Error(BoxError),
    /// The handler panicked; the message of the panic.
    Panicked(String),
}

/// A batch the handler did not process successfully, as passed to
/// [`PartitionedQueueBuilder::on_error`].
#[derive(Debug)]
#[non_exhaustive]
pub struct HandlerFailure<K> {
    /// The batch's key.
    pub key: K,
    /// How many items the batch held.
    pub items: usize,
    /// What happened.
    pub kind: FailureKind,
}

/// Counters of a partitioned queue (a snapshot).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PartitionedQueueStats {
    /// Items accepted.
    pub enqueued: u64,
    /// Items passed to the handler in a batch that succeeded.
    pub processed: u64,
    /// Items passed to the handler in a batch that failed or panicked.
    pub failed_items: u64,
    /// Batches whose handler returned an error.
    pub failed_batches: u64,
    /// Batches whose handler panicked.
    pub panicked_batches: u64,
    /// Items refused under [`Overflow::DropNewest`].
    pub dropped_newest: u64,
    /// Items dropped under [`Overflow::DropOldest`].
    pub dropped_oldest: u64,
    /// Items refused because the queue was closed.
    pub rejected_closed: u64,
    /// Items still queued when the background tasks were torn down (runtime shutdown).
    pub abandoned: u64,
    /// Batches handed to the handler.
    pub batches: u64,
    /// Partitions created.
    pub partitions_created: u64,
    /// Partitions retired after being idle (or at close).
    pub partitions_retired: u64,
}

#[derive(Default, Debug)]
struct Counters {
    // The hot counters sit on their own cache lines: producers bump `enqueued`, workers
    // `processed` and `batches`.
    enqueued: CacheLine<AtomicU64>,
    processed: CacheLine<AtomicU64>,
    failed_items: AtomicU64,
    failed_batches: AtomicU64,
    panicked_batches: AtomicU64,
    dropped_newest: AtomicU64,
    dropped_oldest: AtomicU64,
    rejected_closed: AtomicU64,
    abandoned: AtomicU64,
    batches: CacheLine<AtomicU64>,
    partitions_created: AtomicU64,
    partitions_retired: AtomicU64,
}

/// Keeps a value on its own cache line so threads bumping neighbours do not contend.
#[derive(Default, Debug)]
#[repr(align(64))]
struct CacheLine<T>(T);

impl<T> std::ops::Deref for CacheLine<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl Counters {
    fn snapshot(&self) -> PartitionedQueueStats {
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        PartitionedQueueStats {
            enqueued: r(&self.enqueued),
            processed: r(&self.processed),
            failed_items: r(&self.failed_items),
            failed_batches: r(&self.failed_batches),
            panicked_batches: r(&self.panicked_batches),
            dropped_newest: r(&self.dropped_newest),
            dropped_oldest: r(&self.dropped_oldest),
            rejected_closed: r(&self.rejected_closed),
            abandoned: r(&self.abandoned),
            batches: r(&self.batches),
            partitions_created: r(&self.partitions_created),
            partitions_retired: r(&self.partitions_retired),
        }
    }
}

fn add(c: &AtomicU64, n: usize) {
    c.fetch_add(n as u64, Ordering::Relaxed);
}

/// Whether the current runtime has a time driver. tokio offers no query for it, and creating a
/// timer without one panics, so the probe runs under `catch_unwind`. (Without a time driver the
/// panic hook reports that panic once, before the builder returns its error; no global hook is
/// installed by this crate.)
fn has_time_driver() -> bool {
    std::panic::catch_unwind(|| drop(tokio::time::sleep(Duration::ZERO))).is_ok()
}

/// Reads a queue's counters; stays valid after the queue is dropped.
#[derive(Clone, Debug)]
pub struct QueueMonitor(std::sync::Arc<Counters>);

impl QueueMonitor {
    /// The current counters.
    pub fn stats(&self) -> PartitionedQueueStats {
        self.0.snapshot()
    }
}

type Handler<K, T> = dyn Fn(K, Vec<T>) -> BoxFuture<'static, Result<(), BoxError>> + Send + Sync;
type ErrorHook<K> = dyn Fn(HandlerFailure<K>) + Send + Sync;

/// Builds a [`PartitionedQueue`].
pub struct PartitionedQueueBuilder<K, T> {
    max_batch: usize,
    max_concurrency: usize,
    bound: Option<(usize, Overflow)>,
    idle_timeout: Duration,
    on_error: Option<std::sync::Arc<ErrorHook<K>>>,
    _items: std::marker::PhantomData<fn(T)>,
}

impl<K, T> fmt::Debug for PartitionedQueueBuilder<K, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PartitionedQueueBuilder")
            .field("max_batch", &self.max_batch)
            .field("max_concurrency", &self.max_concurrency)
            .field("bound", &self.bound)
            .field("idle_timeout", &self.idle_timeout)
            .finish_non_exhaustive()
    }
}

impl<K, T> Default for PartitionedQueueBuilder<K, T> {
    fn default() -> Self {
        Self {
            max_batch: 1024,
            max_concurrency: 64,
            bound: None,
            idle_timeout: Duration::from_secs(5),
            on_error: None,
            _items: std::marker::PhantomData,
        }
    }
}

impl<K, T> PartitionedQueueBuilder<K, T>
where
    K: Eq + Hash + Clone + Send + Sync + 'static,
    T: Send + 'static,
{
    /// Largest batch handed to the handler (default 1,024; must be at least 1).
    pub fn max_batch(mut self, n: usize) -> Self {
        self.max_batch = n;
        self
    }

    /// Most batches handled at once across keys (default 64; must be at least 1).
    pub fn max_concurrency(mut self, n: usize) -> Self {
        self.max_concurrency = n;
        self
    }

    /// Bounds each key's queue to `capacity` items (at least 1) with an overflow policy.
    /// Unbounded by default.
    pub fn per_key_bound(mut self, capacity: usize, overflow: Overflow) -> Self {
        self.bound = Some((capacity, overflow));
        self
    }

    /// How long a key's queue stays empty before its partition is retired (default 5 s; zero
    /// retires a partition as soon as it drains). Retirement happens after between one and two
    /// timeouts of idleness (the timer is re-armed once per period, not once per batch). A retired key is recreated on its next item;
    /// nothing is lost either way. A non-zero timeout needs tokio's time driver
    /// (`enable_time`) on the runtime.
    pub fn idle_timeout(mut self, d: Duration) -> Self {
        self.idle_timeout = d;
        self
    }

    /// Called with every batch the handler failed or panicked on (after counting and logging).
    /// It runs on the partition's task: keep it short and do not panic in it.
    pub fn on_error(mut self, f: impl Fn(HandlerFailure<K>) + Send + Sync + 'static) -> Self {
        self.on_error = Some(std::sync::Arc::new(f));
        self
    }

    /// Builds the queue with `handler(key, batch)`.
    ///
    /// # Errors
    ///
    /// [`PartitionedQueueError::InvalidConfig`] if `max_batch`, `max_concurrency` or the per-key
    /// capacity is zero; [`PartitionedQueueError::NoRuntime`] outside a tokio runtime;
    /// [`PartitionedQueueError::NoTimeDriver`] if the idle timeout is not zero and the runtime
    /// has no time driver.
    pub fn build<H, Fut, E>(
        self,
        handler: H,
    ) -> Result<PartitionedQueue<K, T>, PartitionedQueueError>
    where
        H: Fn(K, Vec<T>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<BoxError>,
    {
        let invalid = |setting, reason| PartitionedQueueError::InvalidConfig { setting, reason };
        if self.max_batch == 0 {
            return Err(invalid("max_batch", "must be at least 1"));
        }
        if self.max_concurrency == 0 {
            return Err(invalid("max_concurrency", "must be at least 1"));
        }
        if self.max_concurrency > Semaphore::MAX_PERMITS {
            return Err(invalid("max_concurrency", "too large"));
        }
        if matches!(self.bound, Some((0, _))) {
            return Err(invalid("per_key_bound", "capacity must be at least 1"));
        }
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| PartitionedQueueError::NoRuntime)?;
        if !self.idle_timeout.is_zero() && !has_time_driver() {
            return Err(PartitionedQueueError::NoTimeDriver);
        }
        let handler: std::sync::Arc<Handler<K, T>> = std::sync::Arc::new(move |k, batch| {
            let fut = handler(k, batch);
            Box::pin(async move { fut.await.map_err(Into::into) })
        });
        let close = CancellationToken::new();
        let shared = std::sync::Arc::new(Shared {
            table: Table::new(),
            handler,
            permits: Semaphore::new(self.max_concurrency),
            max_batch: self.max_batch,
            bound: self.bound,
            idle_timeout: self.idle_timeout,
            on_error: self.on_error,
            counters: std::sync::Arc::new(Counters::default()),
            pending: CacheLine(AtomicUsize::new(0)),
            idle: Notify::new(),
            close: close.clone(),
            runtime,
        });
        Ok(PartitionedQueue {
            shared,
            _closer: std::sync::Arc::new(CloseOnDrop(close)),
        })
    }
}

/// A per-key ordered, batched, bounded work queue. Cheap to clone; see the
/// [module docs](self).
pub struct PartitionedQueue<K, T> {
    shared: std::sync::Arc<Shared<K, T>>,
    _closer: std::sync::Arc<CloseOnDrop>,
}

impl<K, T> Clone for PartitionedQueue<K, T> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            _closer: self._closer.clone(),
        }
    }
}

impl<K, T> fmt::Debug for PartitionedQueue<K, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PartitionedQueue")
            .field("pending", &self.shared.pending.load(Ordering::Relaxed))
            .field("closed", &self.shared.close.is_cancelled())
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct CloseOnDrop(CancellationToken);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

struct Shared<K, T> {
    table: Table<K, T>,
    handler: std::sync::Arc<Handler<K, T>>,
    permits: Semaphore,
    max_batch: usize,
    bound: Option<(usize, Overflow)>,
    idle_timeout: Duration,
    on_error: Option<std::sync::Arc<ErrorHook<K>>>,
    counters: std::sync::Arc<Counters>,
    /// Items accepted and not yet finished (handled, failed or dropped).
    pending: CacheLine<AtomicUsize>,
    idle: Notify,
    close: CancellationToken,
    runtime: tokio::runtime::Handle,
}

impl<K, T> Drop for Shared<K, T> {
    fn drop(&mut self) {
        let left = self.pending.load(Ordering::Relaxed);
        if left > 0 {
            add(&self.counters.abandoned, left);
            tracing::warn!(
                items = left,
                "partitioned queue torn down with items queued"
            );
        }
    }
}

impl<K, T> PartitionedQueue<K, T>
where
    K: Eq + Hash + Clone + Send + Sync + 'static,
    T: Send + 'static,
{
    /// A builder with the defaults (batches of 1,024, 64 keys in parallel, unbounded keys,
    /// 5 s idle timeout).
    pub fn builder() -> PartitionedQueueBuilder<K, T> {
        PartitionedQueueBuilder::default()
    }

    /// Queues `item` under `key`, waiting for room if the key's queue is full and the policy is
    /// [`Overflow::Wait`].
    ///
    /// # Errors
    ///
    /// [`PartitionedQueueError::Closed`] if the queue was closed (the item is dropped and counted
    /// in [`PartitionedQueueStats::rejected_closed`]).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: if the future is dropped while waiting for room, the item was not queued.
    pub async fn enqueue(&self, key: K, item: T) -> Result<EnqueueOutcome, PartitionedQueueError> {
        let mut item = item;
        loop {
            match self.push(&key, item) {
                Ok(outcome) => return Ok(outcome),
                Err(Refused::Closed(_)) => return Err(PartitionedQueueError::Closed),
                Err(Refused::Full(back, part)) => {
                    item = back;
                    let space = part.space.notified();
                    tokio::pin!(space);
                    space.as_mut().enable();
                    // Re-check after registering, so a drain in between is not missed.
                    if part.has_room(self.shared.bound) || part.is_retired() {
                        continue;
                    }
                    tokio::select! {
                        () = space => {}
                        () = self.shared.close.cancelled() => {}
                    }
                }
            }
        }
    }

    /// Queues `item` under `key` without waiting.
    ///
    /// # Errors
    ///
    /// [`TryEnqueueError::Full`] if the key's queue is full under [`Overflow::Wait`];
    /// [`TryEnqueueError::Closed`] if the queue is closed. Both hand the item back.
    pub fn try_enqueue(&self, key: K, item: T) -> Result<EnqueueOutcome, TryEnqueueError<T>> {
        match self.push(&key, item) {
            Ok(o) => Ok(o),
            Err(Refused::Full(item, _)) => Err(TryEnqueueError::Full(item)),
            Err(Refused::Closed(item)) => Err(TryEnqueueError::Closed(item)),
        }
    }

    fn push(&self, key: &K, item: T) -> Result<EnqueueOutcome, Refused<T>> {
        let s = &self.shared;
        if s.close.is_cancelled() {
            s.counters.rejected_closed.fetch_add(1, Ordering::Relaxed);
            return Err(Refused::Closed(item));
        }
        // Counted before the push so `wait_idle` can never observe zero while the item waits.
        s.pending.fetch_add(1, Ordering::AcqRel);
        match s.table.push(key, item, s.bound) {
            Pushed::Queued {
                part,
                wake,
                created,
            } => {
                if let Some(part) = created {
                    s.counters
                        .partitions_created
                        .fetch_add(1, Ordering::Relaxed);
                    s.spawn_worker(key.clone(), part);
                } else if wake {
                    part.wake.notify_one();
                }
                s.counters.enqueued.fetch_add(1, Ordering::Relaxed);
                Ok(EnqueueOutcome::Queued)
            }
            Pushed::DroppedOldest { part, wake } => {
                if wake {
                    part.wake.notify_one();
                }
                s.counters.enqueued.fetch_add(1, Ordering::Relaxed);
                s.counters.dropped_oldest.fetch_add(1, Ordering::Relaxed);
                s.finish(1);
                Ok(EnqueueOutcome::DroppedOldest)
            }
            Pushed::DroppedNewest => {
                s.counters.dropped_newest.fetch_add(1, Ordering::Relaxed);
                s.finish(1);
                Ok(EnqueueOutcome::DroppedNewest)
            }
            Pushed::Full(item, part) => {
                s.finish(1);
                Err(Refused::Full(item, part))
            }
        }
    }

    /// Waits until every accepted item has been handled (or failed, or dropped).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn wait_idle(&self) {
        self.shared.wait_idle().await;
    }

    /// Stops accepting items; queued items are still handled. Idempotent.
    pub fn close(&self) {
        self.shared.close.cancel();
    }

    /// Closes the queue and waits until every queued item has been handled.
    pub async fn shutdown(&self) {
        self.close();
        self.shared.wait_idle().await;
    }

    /// Whether the queue is closed.
    pub fn is_closed(&self) -> bool {
        self.shared.close.is_cancelled()
    }

    /// Number of live partitions (keys with a queue).
    pub fn partition_count(&self) -> usize {
        self.shared.table.len()
    }

    /// Items accepted and not yet finished.
    pub fn pending(&self) -> usize {
        self.shared.pending.load(Ordering::Acquire)
    }

    /// The current counters.
    pub fn stats(&self) -> PartitionedQueueStats {
        self.shared.counters.snapshot()
    }

    /// A counter reader that outlives the queue.
    pub fn monitor(&self) -> QueueMonitor {
        QueueMonitor(self.shared.counters.clone())
    }
}

enum Refused<T> {
    Full(T, Arc<Partition<T>>),
    Closed(T),
}

impl<K, T> Shared<K, T>
where
    K: Eq + Hash + Clone + Send + Sync + 'static,
    T: Send + 'static,
{
    fn finish(&self, n: usize) {
        if n > 0 && self.pending.fetch_sub(n, Ordering::AcqRel) == n {
            self.idle.notify_waiters();
        }
    }

    async fn wait_idle(&self) {
        loop {
            let idle = self.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if self.pending.load(Ordering::Acquire) == 0 {
                return;
            }
            idle.await;
        }
    }

    fn spawn_worker(self: &std::sync::Arc<Self>, key: K, part: Arc<Partition<T>>) {
        let shared = self.clone();
        self.runtime
            .spawn(async move { shared.run_partition(key, part).await });
    }

    async fn run_partition(self: std::sync::Arc<Self>, key: K, part: Arc<Partition<T>>) {
        // One timer per partition, re-armed only when it fires early: arming a timer on every
        // idle moment would cost a timer-wheel insertion per batch.
        let idle = self.idle_timeout;
        // Created on the first idle wait only: with a zero idle timeout no timer is needed (and
        // the runtime may have no time driver).
        let mut timer: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
        // Whether a batch was handled since the timer was armed: a partition is retired when a
        // whole timer period passed without any (so after between one and two idle timeouts),
        // which needs no clock read per batch.
        let mut active = false;
        loop {
            match part.take_batch(self.max_batch) {
                Some(batch) => {
                    if self.bound.is_some() {
                        part.space.notify_waiters();
                    }
                    self.handle_batch(&key, batch).await;
                    active = true;
                }
                None => {
                    if !idle.is_zero() && !self.close.is_cancelled() {
                        let timer = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                        tokio::select! {
                            () = part.wake.notified() => continue,
                            () = timer.as_mut() => {
                                if std::mem::take(&mut active) {
                                    timer.as_mut().reset(tokio::time::Instant::now() + idle);
                                    continue;
                                }
                            }
                            () = self.close.cancelled() => {}
                        }
                    }
                    if self.table.try_retire(&key, &part) {
                        self.counters
                            .partitions_retired
                            .fetch_add(1, Ordering::Relaxed);
                        // Wake producers waiting for room so they move to a new partition.
                        part.space.notify_waiters();
                        return;
                    }
                }
            }
        }
    }

    async fn handle_batch(&self, key: &K, batch: Vec<T>) {
        let n = batch.len();
        // The semaphore is never closed, so acquire cannot fail.
        let _permit = self.permits.acquire().await.ok();
        self.counters.batches.fetch_add(1, Ordering::Relaxed);
        let fut = (self.handler)(key.clone(), batch);
        let result = AssertUnwindSafe(fut).catch_unwind().await;
        let kind = match result {
            Ok(Ok(())) => {
                add(&self.counters.processed, n);
                None
            }
            Ok(Err(e)) => {
                self.counters.failed_batches.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(items = n, error = %e, "partitioned queue handler failed");
                Some(FailureKind::Error(e))
            }
            Err(payload) => {
                self.counters
                    .panicked_batches
                    .fetch_add(1, Ordering::Relaxed);
                let msg = panic_message(&*payload);
                tracing::error!(items = n, panic = %msg, "partitioned queue handler panicked");
                Some(FailureKind::Panicked(msg))
            }
        };
        if let Some(kind) = kind {
            add(&self.counters.failed_items, n);
            if let Some(hook) = &self.on_error {
                hook(HandlerFailure {
                    key: key.clone(),
                    items: n,
                    kind,
                });
            }
        }
        self.finish(n);
    }
}

// ---------------------------------------------------------------------------------------------
// The hand-written synchronisation: a table of partitions. Kept free of async so loom can check
// it (see `loom_tests` below).

pub(crate) struct Partition<T> {
    state: Mutex<PartState<T>>,
    /// Wakes the partition's worker when it waits for items.
    wake: Notify,
    /// Wakes producers waiting for room.
    space: Notify,
}

struct PartState<T> {
    items: VecDeque<T>,
    /// The worker found the queue empty and waits for `wake`.
    waiting: bool,
    /// Removed from the table; producers must use a fresh partition.
    retired: bool,
}

impl<T> Partition<T> {
    fn new() -> Self {
        Self {
            state: Mutex::new(PartState {
                items: VecDeque::new(),
                waiting: false,
                retired: false,
            }),
            wake: Notify::new(),
            space: Notify::new(),
        }
    }

    /// Takes up to `max` items, or marks the worker as waiting and returns `None`.
    pub(crate) fn take_batch(&self, max: usize) -> Option<Vec<T>> {
        let mut st = lock(&self.state);
        if st.items.is_empty() {
            st.waiting = true;
            return None;
        }
        st.waiting = false;
        let n = st.items.len().min(max);
        Some(st.items.drain(..n).collect())
    }

    fn has_room(&self, bound: Option<(usize, Overflow)>) -> bool {
        match bound {
            Some((cap, _)) => lock(&self.state).items.len() < cap,
            None => true,
        }
    }

    fn is_retired(&self) -> bool {
        lock(&self.state).retired
    }
}

pub(crate) enum Pushed<T> {
    Queued {
        part: Arc<Partition<T>>,
        /// The worker waits and must be woken.
        wake: bool,
        /// A new partition: its worker must be started.
        created: Option<Arc<Partition<T>>>,
    },
    DroppedOldest {
        part: Arc<Partition<T>>,
        wake: bool,
    },
    DroppedNewest,
    Full(T, Arc<Partition<T>>),
}

pub(crate) struct Table<K, T> {
    map: Mutex<HashMap<K, Arc<Partition<T>>>>,
}

impl<K: Eq + Hash + Clone, T> Table<K, T> {
    pub(crate) fn new() -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn len(&self) -> usize {
        lock(&self.map).len()
    }

    /// Pushes `item` onto `key`'s partition, creating it if needed. Never spins: a partition is
    /// retired only under the table lock, so the partition found under that lock is live.
    pub(crate) fn push(&self, key: &K, item: T, bound: Option<(usize, Overflow)>) -> Pushed<T> {
        let mut map = lock(&self.map);
        let (part, created) = match map.get(key) {
            Some(p) => (p.clone(), false),
            None => {
                let p = Arc::new(Partition::new());
                map.insert(key.clone(), p.clone());
                (p, true)
            }
        };
        let mut st = lock(&part.state);
        drop(map);
        debug_assert!(!st.retired, "retired partitions are never in the table");
        let mut dropped_oldest = false;
        if let Some((cap, overflow)) = bound {
            if st.items.len() >= cap {
                match overflow {
                    Overflow::Wait => {
                        drop(st);
                        return Pushed::Full(item, part);
                    }
                    Overflow::DropNewest => return Pushed::DroppedNewest,
                    Overflow::DropOldest => {
                        st.items.pop_front();
                        dropped_oldest = true;
                    }
                }
            }
        }
        st.items.push_back(item);
        let wake = std::mem::replace(&mut st.waiting, false);
        drop(st);
        if dropped_oldest {
            Pushed::DroppedOldest { part, wake }
        } else {
            Pushed::Queued {
                created: created.then(|| part.clone()),
                part,
                wake,
            }
        }
    }

    /// Retires `part` if its queue is still empty: removes it from the table and marks it.
    /// Returns `false` (and clears the waiting flag) if items arrived meanwhile.
    pub(crate) fn try_retire(&self, key: &K, part: &Arc<Partition<T>>) -> bool {
        let mut map = lock(&self.map);
        let mut st = lock(&part.state);
        if !st.items.is_empty() {
            st.waiting = false;
            return false;
        }
        st.retired = true;
        if map.get(key).is_some_and(|p| Arc::ptr_eq(p, part)) {
            map.remove(key);
        }
        true
    }
}

#[cfg(all(test, electric_loom))]
mod loom_tests {
    use super::*;

    /// Two producers race with a worker that drains and retires the partition: every item is
    /// delivered exactly once, per-producer order holds, and no item is left in a retired
    /// partition.
    #[test]
    fn push_vs_retire() {
        let mut model = loom::model::Builder::new();
        // Bounded preemptions keep the search small; tokio's own models use 2 or 3.
        model.preemption_bound = Some(3);
        model.check(|| {
            let table = Arc::new(Table::<u8, u32>::new());
            let first = match table.push(&0, 0, None) {
                Pushed::Queued { part, .. } => part,
                _ => unreachable!(),
            };
            let producers: Vec<_> = (1..=2u32)
                .map(|p| {
                    let t = table.clone();
                    loom::thread::spawn(move || {
                        let mut created = Vec::new();
                        if let Pushed::Queued {
                            created: Some(c), ..
                        } = t.push(&0, p, None)
                        {
                            created.push(c);
                        }
                        created
                    })
                })
                .collect();
            let t = table.clone();
            let worker = loom::thread::spawn(move || {
                let mut got = Vec::new();
                loop {
                    match first.take_batch(8) {
                        Some(b) => got.extend(b),
                        None => {
                            if t.try_retire(&0, &first) {
                                return got;
                            }
                        }
                    }
                }
            });
            let mut got = worker.join().expect("worker");
            let created: Vec<_> = producers
                .into_iter()
                .flat_map(|p| p.join().expect("producer"))
                .collect();
            // At most one partition is created after the retirement (the table is locked while
            // a partition is created or retired); drain it as its worker would.
            assert!(created.len() <= 1);
            for part in created {
                while let Some(b) = part.take_batch(8) {
                    got.extend(b);
                }
            }
            got.sort_unstable();
            assert_eq!(got, vec![0, 1, 2]);
        });
    }

    /// The worker-wakeup hand-off: a worker that found its queue empty marks itself waiting and
    /// parks; a producer that pushes and sees the mark wakes it. No item is left behind with the
    /// worker asleep. (loom's `Notify` stands in for tokio's, which also keeps one permit.)
    #[test]
    fn no_lost_wakeup() {
        loom::model(|| {
            let table = Arc::new(Table::<u8, u32>::new());
            let part = match table.push(&0, 0, None) {
                Pushed::Queued { part, .. } => part,
                _ => unreachable!(),
            };
            let wake = Arc::new(loom::sync::Notify::new());
            let (t, w) = (table.clone(), wake.clone());
            let producer = loom::thread::spawn(move || {
                if let Pushed::Queued { wake: true, .. } = t.push(&0, 1, None) {
                    w.notify();
                }
            });
            let mut got = Vec::new();
            while got.len() < 2 {
                match part.take_batch(8) {
                    Some(b) => got.extend(b),
                    None => wake.wait(),
                }
            }
            producer.join().expect("producer");
            assert_eq!(got, vec![0, 1]);
        });
    }
}

#[cfg(all(test, not(electric_loom)))]
mod tests {
    use super::*;
    use std::sync::Mutex as StdMutex;

    type Log = std::sync::Arc<StdMutex<Vec<(u32, Vec<u32>)>>>;

    fn recording(
        log: &Log,
    ) -> impl Fn(u32, Vec<u32>) -> BoxFuture<'static, Result<(), BoxError>> + Send + Sync + 'static
    {
        let log = log.clone();
        move |k, batch| {
            let log = log.clone();
            Box::pin(async move {
                log.lock().expect("log").push((k, batch));
                Ok(())
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn per_key_order_and_counts() {
        let log: Log = Default::default();
        let q = PartitionedQueue::builder()
            .max_batch(3)
            .build(recording(&log))
            .expect("build");
        for i in 0..30u32 {
            q.enqueue(i % 4, i).await.expect("enqueue");
        }
        q.wait_idle().await;
        let log = log.lock().expect("log").clone();
        for key in 0..4 {
            let items: Vec<u32> = log
                .iter()
                .filter(|(k, _)| *k == key)
                .flat_map(|(_, b)| b.clone())
                .collect();
            let expected: Vec<u32> = (0..30).filter(|i| i % 4 == key).collect();
            assert_eq!(items, expected);
        }
        assert!(log.iter().all(|(_, b)| !b.is_empty() && b.len() <= 3));
        let s = q.stats();
        assert_eq!(s.enqueued, 30);
        assert_eq!(s.processed, 30);
        assert_eq!(s.partitions_created, 4);
    }

    #[tokio::test]
    async fn invalid_config_is_refused() {
        let ok = |_: u32, _: Vec<u32>| async { Ok::<_, BoxError>(()) };
        let e = PartitionedQueue::builder().max_batch(0).build(ok).err();
        assert!(matches!(
            e,
            Some(PartitionedQueueError::InvalidConfig {
                setting: "max_batch",
                ..
            })
        ));
        let e = PartitionedQueue::builder()
            .max_concurrency(0)
            .build(ok)
            .err();
        assert!(matches!(
            e,
            Some(PartitionedQueueError::InvalidConfig { .. })
        ));
        let e = PartitionedQueue::builder()
            .per_key_bound(0, Overflow::Wait)
            .build(ok)
            .err();
        assert!(matches!(
            e,
            Some(PartitionedQueueError::InvalidConfig { .. })
        ));
    }

    #[test]
    fn idle_timeout_without_time_driver_is_refused() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("rt");
        rt.block_on(async {
            let ok = |_: u32, _: Vec<u32>| async { Ok::<_, BoxError>(()) };
            let e = PartitionedQueue::builder().build(ok).err();
            assert_eq!(e, Some(PartitionedQueueError::NoTimeDriver));
            let q = PartitionedQueue::builder()
                .idle_timeout(Duration::ZERO)
                .build(ok)
                .expect("no timer needed");
            q.enqueue(1, 1).await.expect("enqueue");
            q.wait_idle().await;
        });
    }

    #[test]
    fn build_outside_runtime_fails() {
        let ok = |_: u32, _: Vec<u32>| async { Ok::<_, BoxError>(()) };
        let e = PartitionedQueue::builder().build(ok).err();
        assert_eq!(e, Some(PartitionedQueueError::NoRuntime));
    }

    /// A handler that blocks until released, so items pile up deterministically.
    fn gated(
        gate: std::sync::Arc<tokio::sync::Semaphore>,
        log: Log,
    ) -> impl Fn(u32, Vec<u32>) -> BoxFuture<'static, Result<(), BoxError>> + Send + Sync + 'static
    {
        move |k, batch| {
            let gate = gate.clone();
            let log = log.clone();
            Box::pin(async move {
                gate.acquire().await.expect("gate").forget();
                log.lock().expect("log").push((k, batch));
                Ok(())
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn drop_newest_and_oldest_are_counted() {
        for (overflow, expect) in [
            (Overflow::DropNewest, vec![0u32, 1, 2]),
            (Overflow::DropOldest, vec![0u32, 4, 5]),
        ] {
            let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
            let log: Log = Default::default();
            let q = PartitionedQueue::builder()
                .max_batch(1)
                .per_key_bound(2, overflow)
                .build(gated(gate.clone(), log.clone()))
                .expect("build");
            q.enqueue(7, 0).await.expect("enqueue");
            // Let the worker take item 0 and block in the handler.
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(1)).await;
            let mut outcomes = Vec::new();
            for i in 1..=5 {
                outcomes.push(q.enqueue(7, i).await.expect("enqueue"));
            }
            gate.add_permits(10);
            q.wait_idle().await;
            let got: Vec<u32> = log
                .lock()
                .expect("log")
                .iter()
                .flat_map(|(_, b)| b.clone())
                .collect();
            assert_eq!(got, expect, "{overflow:?}");
            let s = q.stats();
            match overflow {
                Overflow::DropNewest => {
                    assert_eq!(s.dropped_newest, 3);
                    assert_eq!(
                        outcomes
                            .iter()
                            .filter(|o| **o == EnqueueOutcome::DroppedNewest)
                            .count(),
                        3
                    );
                }
                _ => {
                    assert_eq!(s.dropped_oldest, 3);
                    assert_eq!(s.processed, 3);
                }
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn wait_policy_applies_backpressure() {
        let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
        let log: Log = Default::default();
        let q = PartitionedQueue::builder()
            .max_batch(10)
            .per_key_bound(2, Overflow::Wait)
            .build(gated(gate.clone(), log.clone()))
            .expect("build");
        q.enqueue(1, 0).await.expect("enqueue");
        tokio::time::sleep(Duration::from_millis(1)).await; // worker holds item 0
        q.enqueue(1, 1).await.expect("enqueue");
        q.enqueue(1, 2).await.expect("enqueue");
        assert!(matches!(q.try_enqueue(1, 3), Err(TryEnqueueError::Full(3))));
        let q2 = q.clone();
        let blocked = tokio::spawn(async move { q2.enqueue(1, 3).await });
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert!(!blocked.is_finished());
        gate.add_permits(100);
        assert_eq!(blocked.await.expect("join"), Ok(EnqueueOutcome::Queued));
        q.wait_idle().await;
        let got: Vec<u32> = log
            .lock()
            .expect("log")
            .iter()
            .flat_map(|(_, b)| b.clone())
            .collect();
        assert_eq!(got, vec![0, 1, 2, 3]);
    }

    #[tokio::test(start_paused = true)]
    async fn cancelled_waiter_does_not_queue() {
        let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
        let log: Log = Default::default();
        let q = PartitionedQueue::builder()
            .per_key_bound(1, Overflow::Wait)
            .build(gated(gate.clone(), log.clone()))
            .expect("build");
        q.enqueue(1, 0).await.expect("enqueue");
        tokio::time::sleep(Duration::from_millis(1)).await;
        q.enqueue(1, 1).await.expect("enqueue");
        let r = tokio::time::timeout(Duration::from_secs(1), q.enqueue(1, 2)).await;
        assert!(r.is_err(), "waiter times out and is dropped");
        gate.add_permits(100);
        q.wait_idle().await;
        assert_eq!(q.stats().processed, 2);
        assert_eq!(q.pending(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn errors_and_panics_are_reported() {
        let failures = std::sync::Arc::new(StdMutex::new(Vec::new()));
        let f2 = failures.clone();
        let q = PartitionedQueue::builder()
            .max_batch(1)
            .on_error(move |f: HandlerFailure<u32>| {
                let kind = match f.kind {
                    FailureKind::Error(e) => format!("error: {e}"),
                    FailureKind::Panicked(m) => format!("panic: {m}"),
                    #[allow(unreachable_patterns)]
                    _ => "other".into(),
                };
                f2.lock().expect("f").push((f.key, kind));
            })
            .build(|k: u32, b: Vec<u32>| async move {
                match b[0] {
                    1 => Err::<(), BoxError>("bad item".into()),
                    2 => panic!("boom"),
                    _ => Ok(()),
                }
                .map(|()| {
                    let _ = k;
                })
            })
            .expect("build");
        for i in 0..4 {
            q.enqueue(5, i).await.expect("enqueue");
        }
        q.wait_idle().await;
        let s = q.stats();
        assert_eq!(
            (
                s.processed,
                s.failed_items,
                s.failed_batches,
                s.panicked_batches
            ),
            (2, 2, 1, 1)
        );
        let f = failures.lock().expect("f").clone();
        assert_eq!(
            f,
            vec![
                (5, "error: bad item".to_owned()),
                (5, "panic: boom".to_owned())
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn idle_partitions_are_retired_and_recreated() {
        let log: Log = Default::default();
        let q = PartitionedQueue::builder()
            .idle_timeout(Duration::from_secs(5))
            .build(recording(&log))
            .expect("build");
        q.enqueue(1, 1).await.expect("enqueue");
        q.wait_idle().await;
        assert_eq!(q.partition_count(), 1);
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert_eq!(q.partition_count(), 1, "not yet idle long enough");
        q.enqueue(1, 2).await.expect("enqueue");
        q.wait_idle().await;
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert_eq!(
            q.partition_count(),
            1,
            "the second item restarted the idle clock"
        );
        // Idle for two full timeouts: certainly retired.
        tokio::time::sleep(Duration::from_secs(7)).await;
        assert_eq!(q.partition_count(), 0);
        q.enqueue(1, 3).await.expect("enqueue");
        q.wait_idle().await;
        let s = q.stats();
        assert_eq!(
            (s.partitions_created, s.partitions_retired, s.processed),
            (2, 1, 3)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn concurrency_cap_is_respected() {
        let running = std::sync::Arc::new(AtomicUsize::new(0));
        let peak = std::sync::Arc::new(AtomicUsize::new(0));
        let (r, p) = (running.clone(), peak.clone());
        let q = PartitionedQueue::builder()
            .max_concurrency(3)
            .build(move |_k: u32, _b: Vec<u32>| {
                let (r, p) = (r.clone(), p.clone());
                async move {
                    let now = r.fetch_add(1, Ordering::SeqCst) + 1;
                    p.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    r.fetch_sub(1, Ordering::SeqCst);
                    Ok::<_, BoxError>(())
                }
            })
            .expect("build");
        for k in 0..20 {
            q.enqueue(k, k).await.expect("enqueue");
        }
        q.wait_idle().await;
        assert_eq!(peak.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn closed_queue_refuses_and_drains() {
        let log: Log = Default::default();
        let q = PartitionedQueue::builder()
            .build(recording(&log))
            .expect("build");
        let monitor = q.monitor();
        for i in 0..5 {
            q.enqueue(i, i).await.expect("enqueue");
        }
        let q2 = q.clone();
        q.shutdown().await;
        assert_eq!(q2.enqueue(1, 1).await, Err(PartitionedQueueError::Closed));
        assert!(matches!(
            q2.try_enqueue(1, 9),
            Err(TryEnqueueError::Closed(9))
        ));
        drop((q, q2));
        tokio::time::sleep(Duration::from_millis(1)).await;
        let s = monitor.stats();
        assert_eq!((s.processed, s.rejected_closed, s.abandoned), (5, 2, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_the_queue_still_handles_queued_items() {
        let log: Log = Default::default();
        let q = PartitionedQueue::builder()
            .build(recording(&log))
            .expect("build");
        let monitor = q.monitor();
        for i in 0..50 {
            q.enqueue(i % 7, i).await.expect("enqueue");
        }
        drop(q);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let s = monitor.stats();
        assert_eq!((s.processed, s.abandoned), (50, 0));
        assert_eq!(s.partitions_retired, 7);
    }

    #[test]
    fn runtime_shutdown_counts_abandoned_items() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("rt");
        let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
        let log: Log = Default::default();
        let monitor = rt.block_on(async {
            let q = PartitionedQueue::builder()
                .build(gated(gate.clone(), log.clone()))
                .expect("build");
            q.enqueue(1, 1).await.expect("enqueue");
            q.enqueue(1, 2).await.expect("enqueue");
            tokio::task::yield_now().await;
            q.monitor()
        });
        drop(rt);
        assert_eq!(monitor.stats().abandoned, 2);
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        type SeqLog = std::sync::Arc<StdMutex<HashMap<u32, Vec<(u32, u32)>>>>;

        proptest! {
            #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]
            /// Per-key order holds under random interleavings of producers, keys, batch sizes
            /// and handler delays, on a multi-threaded runtime.
            #[test]
            fn per_key_order_under_interleavings(
                ops in proptest::collection::vec((0u32..3, 0u32..6, 0u8..3), 1..200),
                max_batch in 1usize..5,
                conc in 1usize..4,
                bound in proptest::option::of(1usize..4),
            ) {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .build()
                    .expect("rt");
                rt.block_on(async {
                    let log: SeqLog = Default::default();
                    let l2 = log.clone();
                    let mut b = PartitionedQueue::builder()
                        .max_batch(max_batch)
                        .max_concurrency(conc)
                        .idle_timeout(Duration::ZERO);
                    if let Some(cap) = bound {
                        b = b.per_key_bound(cap, Overflow::Wait);
                    }
                    let q = b.build(move |k: u32, batch: Vec<(u32, u32, u8)>| {
                        let l2 = l2.clone();
                        async move {
                            let yields = batch.last().map_or(0, |x| x.2);
                            for _ in 0..yields {
                                tokio::task::yield_now().await;
                            }
                            l2.lock().expect("log").entry(k).or_default().extend(batch.iter().map(|x| (x.0, x.1)));
                            Ok::<_, BoxError>(())
                        }
                    }).expect("build");
                    // Three producers, each with its own sequence numbers.
                    let mut tasks = Vec::new();
                    for producer in 0..3u32 {
                        let q = q.clone();
                        let mine: Vec<_> = ops.iter().filter(|o| o.0 == producer).copied().collect();
                        tasks.push(tokio::spawn(async move {
                            for (seq, (p, key, y)) in mine.into_iter().enumerate() {
                                q.enqueue(key, (p, seq as u32, y)).await.expect("enqueue");
                            }
                        }));
                    }
                    for t in tasks {
                        t.await.expect("producer");
                    }
                    q.wait_idle().await;
                    let log = log.lock().expect("log");
                    let total: usize = log.values().map(Vec::len).sum();
                    assert_eq!(total, ops.len());
                    for items in log.values() {
                        for producer in 0..3 {
                            let seqs: Vec<u32> = items.iter().filter(|x| x.0 == producer).map(|x| x.1).collect();
                            assert!(seqs.windows(2).all(|w| w[0] < w[1]), "out of order: {seqs:?}");
                        }
                    }
                });
            }
        }
    }
}
