//! Workers: a single-consumer [`AutoWorker`], a [`BatchWorker`] with a max-wait flush, and a
//! [`ServiceRunner`] for background services with cancellation and ordered graceful shutdown.
//!
//! The original's names map as follows: `AutoWorker<TInput,TOutput>` → [`AutoWorker`],
//! `AutoBatchWorker<TInput>` → [`BatchWorker`], `SmartpulseStopHostedService` + `IEndService`
//! → [`ServiceRunner`] + [`EndService`] (see also the table in [`crate::collections`]).
//!
//! Every worker is bounded (its queue has a capacity; a full queue makes the sender wait), runs
//! its handler on one task, reports handler errors and panics as [`WorkerError`] values (the
//! original's `AtuoWorkerResult` and the batch worker's single `bool`), and stops once every
//! handle is dropped, after handling what was queued.
//!
//! # Examples
//!
//! ```
//! use electric_core::worker::AutoWorker;
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let worker = AutoWorker::builder()
//!     .build(|x: u32| async move { Ok::<_, std::io::Error>(x * 2) })
//!     .unwrap();
//! assert_eq!(worker.submit(21).await.unwrap(), 42);
//! worker.shutdown().await;
//! # });
//! ```

use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::collections::{panic_message, BoxError};

/// Errors of the workers.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkerError {
    /// A builder setting is out of range.
    #[error("invalid worker setting {setting}: {reason}")]
    InvalidConfig {
        /// The setting.
        setting: &'static str,
        /// Why it was refused.
        reason: &'static str,
    },
    /// Built outside a tokio runtime.
    #[error("worker must be built inside a tokio runtime")]
    NoRuntime,
    /// The handler returned an error for this item.
    #[error("worker handler failed")]
    Handler(#[source] Arc<dyn std::error::Error + Send + Sync>),
    /// The handler panicked while handling this item (or its batch).
    #[error("worker handler panicked: {0}")]
    Panicked(String),
    /// A batch handler returned a different number of results than it was given items.
    #[error("batch handler returned {got} results for {expected} items")]
    ResultCount {
        /// Items in the batch.
        expected: usize,
        /// Results returned.
        got: usize,
    },
    /// The worker stopped before handling the item.
    #[error("worker is stopped")]
    Stopped,
}

impl WorkerError {
    fn handler(e: BoxError) -> Self {
        Self::Handler(Arc::from(e))
    }
}

impl Clone for WorkerError {
    fn clone(&self) -> Self {
        match self {
            Self::InvalidConfig { setting, reason } => Self::InvalidConfig { setting, reason },
            Self::NoRuntime => Self::NoRuntime,
            Self::Handler(e) => Self::Handler(e.clone()),
            Self::Panicked(m) => Self::Panicked(m.clone()),
            Self::ResultCount { expected, got } => Self::ResultCount {
                expected: *expected,
                got: *got,
            },
            Self::Stopped => Self::Stopped,
        }
    }
}

/// Why a non-waiting send was refused; the item is handed back.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum TrySendError<T> {
    /// The queue is full.
    #[error("worker queue is full")]
    Full(T),
    /// The worker stopped.
    #[error("worker is stopped")]
    Stopped(T),
}

/// Worker counters (a snapshot).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerStats {
    /// Items handled successfully.
    pub succeeded: u64,
    /// Items whose handling failed or panicked.
    pub failed: u64,
    /// Failures of fire-and-forget items (nobody awaited them; also logged).
    pub unobserved_failures: u64,
    /// Batches handled (batch worker only).
    pub batches: u64,
}

#[derive(Default, Debug)]
struct Counters {
    succeeded: AtomicU64,
    failed: AtomicU64,
    unobserved_failures: AtomicU64,
    batches: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> WorkerStats {
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        WorkerStats {
            succeeded: r(&self.succeeded),
            failed: r(&self.failed),
            unobserved_failures: r(&self.unobserved_failures),
            batches: r(&self.batches),
        }
    }

    fn record<O>(&self, result: &Result<O, WorkerError>, observed: bool) {
        match result {
            Ok(_) => {
                self.succeeded.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                if !observed {
                    self.unobserved_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, "fire-and-forget worker item failed");
                }
            }
        }
    }
}

type Reply<O> = Option<oneshot::Sender<Result<O, WorkerError>>>;

/// Settings shared by the worker builders.
#[derive(Debug, Clone, Copy)]
struct Common {
    capacity: usize,
}

fn check_capacity(capacity: usize) -> Result<tokio::runtime::Handle, WorkerError> {
    if capacity == 0 {
        return Err(WorkerError::InvalidConfig {
            setting: "capacity",
            reason: "must be at least 1",
        });
    }
    tokio::runtime::Handle::try_current().map_err(|_| WorkerError::NoRuntime)
}

/// The worker task's completion, observable from every handle.
#[derive(Clone, Debug)]
struct Done(watch::Receiver<bool>);

impl Done {
    async fn wait(mut self) {
        // An error means the task is gone, which is completion too.
        let _ = self.0.wait_for(|done| *done).await;
    }
}

/// What both workers' handles are: the sending side of the queue, the counters and the signal
/// that the worker stopped.
struct Handle<I, O> {
    tx: mpsc::Sender<(I, Reply<O>)>,
    counters: Arc<Counters>,
    done: Done,
}

impl<I, O> Clone for Handle<I, O> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            counters: self.counters.clone(),
            done: self.done.clone(),
        }
    }
}

impl<I: Send + 'static, O: Send + 'static> Handle<I, O> {
    async fn submit(&self, item: I) -> Result<O, WorkerError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send((item, Some(tx)))
            .await
            .map_err(|_| WorkerError::Stopped)?;
        rx.await.unwrap_or(Err(WorkerError::Stopped))
    }

    async fn send(&self, item: I) -> Result<(), WorkerError> {
        self.tx
            .send((item, None))
            .await
            .map_err(|_| WorkerError::Stopped)
    }

    fn try_send(&self, item: I) -> Result<(), TrySendError<I>> {
        self.tx.try_send((item, None)).map_err(|e| match e {
            mpsc::error::TrySendError::Full((i, _)) => TrySendError::Full(i),
            mpsc::error::TrySendError::Closed((i, _)) => TrySendError::Stopped(i),
        })
    }

    async fn shutdown(self) {
        let done = self.done.clone();
        drop(self);
        done.wait().await;
    }

    fn stats(&self) -> WorkerStats {
        self.counters.snapshot()
    }
}

// ---------------------------------------------------------------------------------------------

/// Builds an [`AutoWorker`].
#[derive(Clone)]
pub struct AutoWorkerBuilder {
    common: Common,
    on_idle: Option<Arc<dyn Fn() + Send + Sync>>,
}

impl fmt::Debug for AutoWorkerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AutoWorkerBuilder")
            .field("capacity", &self.common.capacity)
            .field("on_idle", &self.on_idle.is_some())
            .finish()
    }
}

impl AutoWorkerBuilder {
    /// Called each time the worker has handled every queued item (the original's
    /// `checkExpiredKeys` callback), on the worker's task: keep it short. A panic in it is
    /// caught and logged.
    pub fn on_idle(mut self, f: impl Fn() + Send + Sync + 'static) -> Self {
        self.on_idle = Some(Arc::new(f));
        self
    }

    /// Items queued before senders wait (default 1,024; at least 1).
    pub fn capacity(mut self, n: usize) -> Self {
        self.common.capacity = n;
        self
    }

    /// Builds the worker and spawns its task.
    ///
    /// # Errors
    ///
    /// [`WorkerError::InvalidConfig`] for a zero capacity, [`WorkerError::NoRuntime`] outside a
    /// tokio runtime.
    pub fn build<I, O, E, H, Fut>(self, handler: H) -> Result<AutoWorker<I, O>, WorkerError>
    where
        I: Send + 'static,
        O: Send + 'static,
        E: Into<BoxError>,
        H: Fn(I) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<O, E>> + Send + 'static,
    {
        let rt = check_capacity(self.common.capacity)?;
        let (tx, mut rx) = mpsc::channel::<(I, Reply<O>)>(self.common.capacity);
        let counters = Arc::new(Counters::default());
        let (done_tx, done_rx) = watch::channel(false);
        let c = counters.clone();
        let on_idle = self.on_idle;
        rt.spawn(async move {
            while let Some((item, reply)) = rx.recv().await {
                let result = match AssertUnwindSafe(handler(item)).catch_unwind().await {
                    Ok(Ok(o)) => Ok(o),
                    Ok(Err(e)) => Err(WorkerError::handler(e.into())),
                    Err(p) => Err(WorkerError::Panicked(panic_message(&*p))),
                };
                c.record(&result, reply.is_some());
                if let Some(reply) = reply {
                    // The caller may have stopped waiting; the item was handled anyway.
                    let _ = reply.send(result);
                }
                if let Some(hook) = &on_idle {
                    if rx.is_empty() {
                        if let Err(p) = std::panic::catch_unwind(AssertUnwindSafe(|| hook())) {
                            tracing::error!(panic = %panic_message(&*p), "auto-worker idle hook panicked");
                        }
                    }
                }
            }
            let _ = done_tx.send(true);
        });
        Ok(AutoWorker(Handle {
            tx,
            counters,
            done: Done(done_rx),
        }))
    }
}

/// One background consumer handling items in order (the original's `AutoWorker`). Cheap to
/// clone; the worker stops after the last clone is dropped and the queue is drained.
pub struct AutoWorker<I, O>(Handle<I, O>);

impl<I, O> Clone for AutoWorker<I, O> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<I, O> fmt::Debug for AutoWorker<I, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AutoWorker")
            .field("stats", &self.0.counters.snapshot())
            .finish_non_exhaustive()
    }
}

impl AutoWorker<(), ()> {
    /// A builder (capacity 1,024).
    pub fn builder() -> AutoWorkerBuilder {
        AutoWorkerBuilder {
            common: Common { capacity: 1024 },
            on_idle: None,
        }
    }
}

impl<I: Send + 'static, O: Send + 'static> AutoWorker<I, O> {
    /// Queues `item` and waits for its result.
    ///
    /// # Errors
    ///
    /// [`WorkerError::Handler`] or [`WorkerError::Panicked`] from handling this item;
    /// [`WorkerError::Stopped`] if the worker is gone.
    ///
    /// # Cancel safety
    ///
    /// If cancelled while waiting for room, the item was not queued. If cancelled after it was
    /// queued, it is still handled and its result is dropped (counted, not logged).
    pub async fn submit(&self, item: I) -> Result<O, WorkerError> {
        self.0.submit(item).await
    }

    /// Queues `item` without waiting for its result (fire and forget). A failure is counted in
    /// [`WorkerStats::unobserved_failures`] and logged.
    ///
    /// # Errors
    ///
    /// [`WorkerError::Stopped`] if the worker is gone.
    ///
    /// # Cancel safety
    ///
    /// If cancelled while waiting for room, the item was not queued.
    pub async fn send(&self, item: I) -> Result<(), WorkerError> {
        self.0.send(item).await
    }

    /// Queues `item` (fire and forget) without waiting for room.
    ///
    /// # Errors
    ///
    /// [`TrySendError::Full`] or [`TrySendError::Stopped`], with the item.
    pub fn try_send(&self, item: I) -> Result<(), TrySendError<I>> {
        self.0.try_send(item)
    }

    /// Drops this handle and waits until the worker has handled everything queued and stopped
    /// (which needs every other clone dropped too).
    pub async fn shutdown(self) {
        self.0.shutdown().await;
    }

    /// The counters.
    pub fn stats(&self) -> WorkerStats {
        self.0.stats()
    }
}

// ---------------------------------------------------------------------------------------------

/// Builds a [`BatchWorker`].
#[derive(Debug, Clone)]
pub struct BatchWorkerBuilder {
    common: Common,
    batch_size: usize,
    max_wait: Duration,
}

impl BatchWorkerBuilder {
    /// Items queued before senders wait (default 10,000; at least 1).
    pub fn capacity(mut self, n: usize) -> Self {
        self.common.capacity = n;
        self
    }

    /// Largest batch (default 100, as the original; at least 1).
    pub fn batch_size(mut self, n: usize) -> Self {
        self.batch_size = n;
        self
    }

    /// Longest time the first item of a batch waits for the batch to fill before it is flushed
    /// anyway (default 100 ms; longer than zero).
    pub fn max_wait(mut self, d: Duration) -> Self {
        self.max_wait = d;
        self
    }

    /// Builds the worker with `handler(batch)`, which returns one result per item, in order.
    ///
    /// # Errors
    ///
    /// [`WorkerError::InvalidConfig`] for a zero capacity, batch size or max wait;
    /// [`WorkerError::NoRuntime`] outside a tokio runtime.
    pub fn build<I, O, E, H, Fut>(self, handler: H) -> Result<BatchWorker<I, O>, WorkerError>
    where
        I: Send + 'static,
        O: Send + 'static,
        E: Into<BoxError> + 'static,
        H: Fn(Vec<I>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<Result<O, E>>> + Send + 'static,
    {
        if self.batch_size == 0 {
            return Err(WorkerError::InvalidConfig {
                setting: "batch_size",
                reason: "must be at least 1",
            });
        }
        if self.max_wait.is_zero() {
            return Err(WorkerError::InvalidConfig {
                setting: "max_wait",
                reason: "must be longer than zero",
            });
        }
        let rt = check_capacity(self.common.capacity)?;
        let (tx, rx) = mpsc::channel::<(I, Reply<O>)>(self.common.capacity);
        let counters = Arc::new(Counters::default());
        let (done_tx, done_rx) = watch::channel(false);
        rt.spawn(run_batches(
            rx,
            handler,
            self.batch_size,
            self.max_wait,
            counters.clone(),
            done_tx,
        ));
        Ok(BatchWorker(Handle {
            tx,
            counters,
            done: Done(done_rx),
        }))
    }
}

async fn run_batches<I, O, E, H, Fut>(
    mut rx: mpsc::Receiver<(I, Reply<O>)>,
    handler: H,
    batch_size: usize,
    max_wait: Duration,
    counters: Arc<Counters>,
    done: watch::Sender<bool>,
) where
    E: Into<BoxError>,
    H: Fn(Vec<I>) -> Fut,
    Fut: Future<Output = Vec<Result<O, E>>>,
{
    let mut items = Vec::with_capacity(batch_size);
    let mut replies = Vec::with_capacity(batch_size);
    while let Some((item, reply)) = rx.recv().await {
        items.push(item);
        replies.push(reply);
        let deadline = tokio::time::Instant::now() + max_wait;
        while items.len() < batch_size {
            let next = match rx.try_recv() {
                Ok(x) => Some(x),
                Err(mpsc::error::TryRecvError::Disconnected) => None,
                Err(mpsc::error::TryRecvError::Empty) => {
                    tokio::select! {
                        x = rx.recv() => x,
                        () = tokio::time::sleep_until(deadline) => None,
                    }
                }
            };
            match next {
                Some((item, reply)) => {
                    items.push(item);
                    replies.push(reply);
                }
                None => break,
            }
        }
        let n = items.len();
        counters.batches.fetch_add(1, Ordering::Relaxed);
        let batch = std::mem::replace(&mut items, Vec::with_capacity(batch_size));
        let results: Vec<Result<O, WorkerError>> =
            match AssertUnwindSafe(handler(batch)).catch_unwind().await {
                Ok(results) if results.len() == n => results
                    .into_iter()
                    .map(|r| r.map_err(|e| WorkerError::handler(e.into())))
                    .collect(),
                Ok(results) => {
                    let e = WorkerError::ResultCount {
                        expected: n,
                        got: results.len(),
                    };
                    (0..n).map(|_| Err(e.clone())).collect()
                }
                Err(p) => {
                    let e = WorkerError::Panicked(panic_message(&*p));
                    (0..n).map(|_| Err(e.clone())).collect()
                }
            };
        for (result, reply) in results.into_iter().zip(replies.drain(..)) {
            counters.record(&result, reply.is_some());
            if let Some(reply) = reply {
                let _ = reply.send(result);
            }
        }
    }
    let _ = done.send(true);
}

/// Collects items into batches of up to `batch_size`, flushed when full or when the oldest item
/// has waited `max_wait`, and hands each batch to one handler call; each item gets its own
/// result (the original's `AutoBatchWorker`). Cheap to clone.
pub struct BatchWorker<I, O>(Handle<I, O>);

impl<I, O> Clone for BatchWorker<I, O> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<I, O> fmt::Debug for BatchWorker<I, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BatchWorker")
            .field("stats", &self.0.counters.snapshot())
            .finish_non_exhaustive()
    }
}

impl BatchWorker<(), ()> {
    /// A builder (capacity 10,000, batches of 100, 100 ms max wait).
    pub fn builder() -> BatchWorkerBuilder {
        BatchWorkerBuilder {
            common: Common { capacity: 10_000 },
            batch_size: 100,
            max_wait: Duration::from_millis(100),
        }
    }
}

impl<I: Send + 'static, O: Send + 'static> BatchWorker<I, O> {
    /// Queues `item` and waits for its own result.
    ///
    /// # Errors
    ///
    /// This item's handler error, [`WorkerError::Panicked`] or [`WorkerError::ResultCount`]
    /// for its whole batch, or [`WorkerError::Stopped`].
    ///
    /// # Cancel safety
    ///
    /// As [`AutoWorker::submit`].
    pub async fn submit(&self, item: I) -> Result<O, WorkerError> {
        self.0.submit(item).await
    }

    /// Queues `item` without waiting for its result; failures are counted and logged.
    ///
    /// # Errors
    ///
    /// [`WorkerError::Stopped`] if the worker is gone.
    ///
    /// # Cancel safety
    ///
    /// If cancelled while waiting for room, the item was not queued.
    pub async fn send(&self, item: I) -> Result<(), WorkerError> {
        self.0.send(item).await
    }

    /// Queues `item` (fire and forget) without waiting for room.
    ///
    /// # Errors
    ///
    /// [`TrySendError::Full`] or [`TrySendError::Stopped`], with the item.
    pub fn try_send(&self, item: I) -> Result<(), TrySendError<I>> {
        self.0.try_send(item)
    }

    /// Drops this handle and waits until everything queued was handled and the worker stopped
    /// (which needs every other clone dropped too).
    pub async fn shutdown(self) {
        self.0.shutdown().await;
    }

    /// The counters.
    pub fn stats(&self) -> WorkerStats {
        self.0.stats()
    }
}

// ---------------------------------------------------------------------------------------------

/// A service stopped at shutdown, after the background services ended, in registration order
/// (the original's `IEndService`).
#[async_trait]
pub trait EndService: Send + Sync {
    /// A name for reports and logs.
    fn name(&self) -> &str;

    /// Stops the service: flush, close connections, say goodbye.
    ///
    /// # Errors
    ///
    /// Whatever went wrong; it is reported in the [`ShutdownReport`] and the next end service
    /// still runs.
    async fn stop(&self) -> Result<(), BoxError>;
}

/// How a background service ended.
#[derive(Debug)]
#[non_exhaustive]
pub enum ServiceExit {
    /// It returned `Ok`.
    Completed,
    /// It returned an error.
    Failed(BoxError),
    /// It panicked.
    Panicked(String),
    /// It did not finish within the grace period and was aborted.
    Aborted,
}

/// What [`ServiceRunner::shutdown`] saw, in registration order.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct ShutdownReport {
    /// Each background service and how it ended.
    pub services: Vec<(String, ServiceExit)>,
    /// Each end service and the result of its `stop` (`Err` also when it timed out).
    pub end_services: Vec<(String, Result<(), BoxError>)>,
}

impl ShutdownReport {
    /// Whether every service completed and every end service stopped cleanly.
    pub fn is_clean(&self) -> bool {
        self.services
            .iter()
            .all(|(_, e)| matches!(e, ServiceExit::Completed))
            && self.end_services.iter().all(|(_, r)| r.is_ok())
    }
}

/// The grace period ran out.
#[derive(Debug, thiserror::Error)]
#[error("end service did not stop within the grace period")]
pub struct StopTimedOut;

type ServiceTask = tokio::task::JoinHandle<Result<(), BoxError>>;

/// Runs background services with a shared cancellation token and shuts them down in order:
/// cancel, wait for the services (up to a grace period, then abort), then stop every
/// [`EndService`] one after the other in registration order (the original's
/// `SmartpulseStopHostedService`, which printed errors to the console; here they are returned).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use electric_core::worker::ServiceRunner;
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let runner = ServiceRunner::new();
/// runner.spawn("ticker", |cancel| async move {
///     cancel.cancelled().await; // do work until asked to stop
///     Ok::<_, std::io::Error>(())
/// });
/// let report = runner.shutdown(Duration::from_secs(5)).await;
/// assert!(report.is_clean());
/// # });
/// ```
pub struct ServiceRunner {
    cancel: CancellationToken,
    tracker: TaskTracker,
    services: std::sync::Mutex<Vec<(String, ServiceTask)>>,
    end_services: std::sync::Mutex<Vec<Arc<dyn EndService>>>,
}

impl fmt::Debug for ServiceRunner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceRunner")
            .field("cancelled", &self.cancel.is_cancelled())
            .field("running", &self.tracker.len())
            .finish_non_exhaustive()
    }
}

impl Default for ServiceRunner {
    fn default() -> Self {
        Self::new()
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl ServiceRunner {
    /// A runner with no services.
    pub fn new() -> Self {
        Self {
            cancel: CancellationToken::new(),
            tracker: TaskTracker::new(),
            services: std::sync::Mutex::new(Vec::new()),
            end_services: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// The token cancelled at shutdown (a child token can be handed to other work).
    pub fn token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// Spawns a background service on the current runtime. It gets the runner's cancellation
    /// token and should return soon after the token is cancelled.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime (as `tokio::spawn`).
    pub fn spawn<F, Fut, E>(&self, name: impl Into<String>, service: F)
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<BoxError>,
    {
        let fut = service(self.cancel.clone());
        let task = self
            .tracker
            .spawn(async move { fut.await.map_err(Into::into) });
        lock(&self.services).push((name.into(), task));
    }

    /// Registers an end service, stopped at shutdown after the background services, in
    /// registration order.
    pub fn add_end_service(&self, service: impl EndService + 'static) {
        lock(&self.end_services).push(Arc::new(service));
    }

    /// Whether shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Cancels the services, waits up to `grace` for them (aborting the rest), then stops the
    /// end services in registration order, each within `grace`.
    pub async fn shutdown(&self, grace: Duration) -> ShutdownReport {
        self.cancel.cancel();
        self.tracker.close();
        let deadline = tokio::time::Instant::now() + grace;
        let services = std::mem::take(&mut *lock(&self.services));
        let mut report = ShutdownReport::default();
        for (name, mut task) in services {
            let exit = match tokio::time::timeout_at(deadline, &mut task).await {
                Ok(Ok(Ok(()))) => ServiceExit::Completed,
                Ok(Ok(Err(e))) => ServiceExit::Failed(e),
                Ok(Err(join)) => match join.try_into_panic() {
                    Ok(p) => ServiceExit::Panicked(panic_message(&*p)),
                    Err(_) => ServiceExit::Aborted,
                },
                Err(_) => {
                    task.abort();
                    ServiceExit::Aborted
                }
            };
            match &exit {
                ServiceExit::Completed => tracing::debug!(service = %name, "service stopped"),
                other => tracing::warn!(service = %name, exit = ?other, "service ended badly"),
            }
            report.services.push((name, exit));
        }
        let end_services = std::mem::take(&mut *lock(&self.end_services));
        for svc in end_services {
            let name = svc.name().to_owned();
            let stop: BoxFuture<'_, Result<(), BoxError>> = svc.stop();
            let result = match tokio::time::timeout(grace, AssertUnwindSafe(stop).catch_unwind())
                .await
            {
                Ok(Ok(r)) => r,
                Ok(Err(p)) => Err(format!("end service panicked: {}", panic_message(&*p)).into()),
                Err(_) => Err(Box::new(StopTimedOut) as BoxError),
            };
            if let Err(e) = &result {
                tracing::warn!(service = %name, error = %e, "end service failed to stop");
            }
            report.end_services.push((name, result));
        }
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[tokio::test]
    async fn auto_worker_results_errors_and_panics() {
        let w = AutoWorker::builder()
            .capacity(4)
            .build(|x: u32| async move {
                match x {
                    1 => Err::<u32, BoxError>("one is bad".into()),
                    2 => panic!("two panics"),
                    _ => Ok(x * 10),
                }
            })
            .expect("worker");
        assert_eq!(w.submit(3).await.expect("ok"), 30);
        let e = w.submit(1).await.expect_err("error");
        assert!(matches!(&e, WorkerError::Handler(inner) if inner.to_string() == "one is bad"));
        let e = w.submit(2).await.expect_err("panic");
        assert!(matches!(&e, WorkerError::Panicked(m) if m == "two panics"));
        w.send(1).await.expect("queued");
        assert_eq!(w.submit(4).await.expect("still alive"), 40);
        let s = w.stats();
        assert_eq!((s.succeeded, s.failed, s.unobserved_failures), (2, 3, 1));
        w.shutdown().await;
    }

    #[tokio::test(start_paused = true)]
    async fn auto_worker_keeps_order_and_bounds() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let (s2, g2) = (seen.clone(), gate.clone());
        let w = AutoWorker::builder()
            .capacity(2)
            .build(move |x: u32| {
                let (s2, g2) = (s2.clone(), g2.clone());
                async move {
                    g2.acquire()
                        .await
                        .map_err(|e| Box::new(e) as BoxError)?
                        .forget();
                    s2.lock().expect("seen").push(x);
                    Ok::<_, BoxError>(())
                }
            })
            .expect("worker");
        w.send(0).await.expect("send");
        tokio::time::sleep(Duration::from_millis(1)).await; // 0 is in the handler
        w.send(1).await.expect("send");
        w.send(2).await.expect("send");
        assert_eq!(w.try_send(3), Err(TrySendError::Full(3)));
        gate.add_permits(10);
        w.send(3).await.expect("send");
        w.shutdown().await;
        assert_eq!(*seen.lock().expect("seen"), vec![0, 1, 2, 3]);
    }

    #[tokio::test(start_paused = true)]
    async fn on_idle_runs_when_the_queue_drains() {
        let idles = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let i2 = idles.clone();
        let w = AutoWorker::builder()
            .on_idle(move || {
                i2.fetch_add(1, Ordering::SeqCst);
            })
            .build(|x: u32| async move {
                tokio::time::sleep(Duration::from_millis(1)).await;
                Ok::<_, BoxError>(x)
            })
            .expect("worker");
        for i in 0..5 {
            w.send(i).await.expect("send");
        }
        // Five items queued at once drain in one go: one idle call.
        assert_eq!(w.submit(5).await.expect("submit"), 5);
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(idles.load(Ordering::SeqCst), 1);
        w.submit(6).await.expect("submit");
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(idles.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn invalid_configs() {
        let ok = |x: u32| async move { Ok::<_, BoxError>(x) };
        assert!(matches!(
            AutoWorker::builder().capacity(0).build(ok).err(),
            Some(WorkerError::InvalidConfig {
                setting: "capacity",
                ..
            })
        ));
        let okb =
            |b: Vec<u32>| async move { b.into_iter().map(Ok::<_, BoxError>).collect::<Vec<_>>() };
        assert!(matches!(
            BatchWorker::builder().batch_size(0).build(okb).err(),
            Some(WorkerError::InvalidConfig {
                setting: "batch_size",
                ..
            })
        ));
        assert!(matches!(
            BatchWorker::builder()
                .max_wait(Duration::ZERO)
                .build(okb)
                .err(),
            Some(WorkerError::InvalidConfig {
                setting: "max_wait",
                ..
            })
        ));
    }

    #[test]
    fn no_runtime() {
        let ok = |x: u32| async move { Ok::<_, BoxError>(x) };
        assert!(matches!(
            AutoWorker::builder().build(ok).err(),
            Some(WorkerError::NoRuntime)
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn batch_worker_per_item_results_and_max_wait_flush() {
        let batches = Arc::new(Mutex::new(Vec::new()));
        let b2 = batches.clone();
        let w = BatchWorker::builder()
            .batch_size(3)
            .max_wait(Duration::from_millis(50))
            .build(move |batch: Vec<i32>| {
                b2.lock()
                    .expect("b")
                    .push((tokio::time::Instant::now(), batch.clone()));
                async move {
                    batch
                        .into_iter()
                        .map(|x| {
                            if x < 0 {
                                Err::<i32, BoxError>("negative".into())
                            } else {
                                Ok(x + 1)
                            }
                        })
                        .collect::<Vec<_>>()
                }
            })
            .expect("worker");
        let start = tokio::time::Instant::now();
        // A full batch goes at once, with one result per item.
        let (a, b, c) = tokio::join!(w.submit(1), w.submit(-1), w.submit(2));
        assert_eq!(a.expect("a"), 2);
        assert!(matches!(b, Err(WorkerError::Handler(_))));
        assert_eq!(c.expect("c"), 3);
        // A lone item is flushed after max_wait.
        assert_eq!(w.submit(7).await.expect("lone"), 8);
        let batches = batches.lock().expect("b").clone();
        assert_eq!(batches.len(), 2);
        assert_eq!(batches[0].0, start);
        assert_eq!(batches[0].1, vec![1, -1, 2]);
        assert_eq!(batches[1].0 - start, Duration::from_millis(50));
        let s = w.stats();
        assert_eq!((s.succeeded, s.failed, s.batches), (3, 1, 2));
    }

    #[tokio::test]
    async fn batch_worker_try_send_reports_a_full_queue_and_keeps_the_item() {
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let handled = Arc::new(Mutex::new(Vec::new()));
        let (g2, h2) = (gate.clone(), handled.clone());
        let w = BatchWorker::builder()
            .capacity(1)
            .batch_size(1)
            .max_wait(Duration::from_millis(1))
            .build(move |batch: Vec<u32>| {
                let (g2, h2) = (g2.clone(), h2.clone());
                async move {
                    let _permit = g2.acquire().await;
                    h2.lock().expect("handled").extend(batch.iter().copied());
                    batch.into_iter().map(Ok::<_, BoxError>).collect::<Vec<_>>()
                }
            })
            .expect("worker");
        w.send(0).await.expect("send");
        // 0 is taken into a batch that waits on the gate; 1 fills the one-item queue.
        tokio::time::sleep(Duration::from_millis(20)).await;
        w.try_send(1).expect("room for one");
        assert_eq!(w.try_send(2), Err(TrySendError::Full(2)));
        gate.add_permits(10);
        w.send(2).await.expect("send");
        w.shutdown().await;
        assert_eq!(*handled.lock().expect("handled"), vec![0, 1, 2]);
    }

    #[tokio::test]
    async fn batch_worker_wrong_count_and_panic_fail_each_item() {
        let w = BatchWorker::builder()
            .batch_size(2)
            .max_wait(Duration::from_millis(1))
            .build(|batch: Vec<u8>| async move {
                if batch.contains(&9) {
                    panic!("nine");
                }
                vec![Ok::<u8, BoxError>(0)]
            })
            .expect("worker");
        let (a, b) = tokio::join!(w.submit(1), w.submit(2));
        assert!(matches!(
            a,
            Err(WorkerError::ResultCount {
                expected: 2,
                got: 1
            })
        ));
        assert!(matches!(
            b,
            Err(WorkerError::ResultCount {
                expected: 2,
                got: 1
            })
        ));
        assert!(matches!(w.submit(9).await, Err(WorkerError::Panicked(m)) if m == "nine"));
        w.shutdown().await;
    }

    struct Recorder(&'static str, Arc<Mutex<Vec<String>>>, bool);

    #[async_trait]
    impl EndService for Recorder {
        fn name(&self) -> &str {
            self.0
        }
        async fn stop(&self) -> Result<(), BoxError> {
            self.1.lock().expect("log").push(format!("stop {}", self.0));
            if self.2 {
                return Err("flush failed".into());
            }
            Ok(())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn runner_cancels_waits_and_stops_end_services_in_order() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let runner = ServiceRunner::new();
        let l = log.clone();
        runner.spawn("polite", move |cancel| async move {
            cancel.cancelled().await;
            l.lock().expect("log").push("polite done".to_owned());
            Ok::<_, BoxError>(())
        });
        runner.spawn("failing", |_| async { Err::<(), _>("broken") });
        runner.spawn("stubborn", |_| async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok::<_, BoxError>(())
        });
        runner.spawn("panicky", |_| async {
            panic!("oops");
            #[allow(unreachable_code)]
            Ok::<_, BoxError>(())
        });
        runner.add_end_service(Recorder("db", log.clone(), false));
        runner.add_end_service(Recorder("bus", log.clone(), true));
        runner.add_end_service(Recorder("metrics", log.clone(), false));
        let report = runner.shutdown(Duration::from_secs(5)).await;
        assert!(!report.is_clean());
        let exits: Vec<_> = report
            .services
            .iter()
            .map(|(n, e)| {
                format!(
                    "{n}:{}",
                    match e {
                        ServiceExit::Completed => "ok".to_owned(),
                        ServiceExit::Failed(e) => format!("failed {e}"),
                        ServiceExit::Panicked(m) => format!("panicked {m}"),
                        ServiceExit::Aborted => "aborted".to_owned(),
                    }
                )
            })
            .collect();
        assert_eq!(
            exits,
            vec![
                "polite:ok",
                "failing:failed broken",
                "stubborn:aborted",
                "panicky:panicked oops"
            ]
        );
        assert_eq!(
            *log.lock().expect("log"),
            vec!["polite done", "stop db", "stop bus", "stop metrics"]
        );
        let ends: Vec<_> = report
            .end_services
            .iter()
            .map(|(n, r)| (n.as_str(), r.is_ok()))
            .collect();
        assert_eq!(ends, vec![("db", true), ("bus", false), ("metrics", true)]);
    }
}
