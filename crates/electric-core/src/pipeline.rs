//! Typed dataflow pipelines over bounded channels (the original's `TplPipeline<T>`).
//!
//! A pipeline is built once, by a closure that chains stages from the input [`Stage`] to one or
//! more sinks; every stage runs on its own task and is linked to the next by a channel of
//! [`Pipeline::build`]'s `capacity`, so a slow sink slows the source all the way back to
//! [`Pipeline::send`] (the original's batch stage had unbounded capacity and parallelism).
//!
//! | original (`TplPipeline`) | here |
//! |---|---|
//! | `AddTransformBlock` | [`Stage::map`] (and [`Stage::filter`]) |
//! | `AddBatchActionBlock` | [`Stage::batch`] then [`Stage::for_each`] |
//! | `AddBufferActionBlock` | [`Stage::drain_for_each`] |
//! | `AddBroadcastBlock` (cloning function) | [`Stage::tee`] |
//! | `linkToStepIndex` + predicate | [`Stage::branch`] |
//! | `AddStep` (custom block) | [`Stage::custom`] |
//! | `SendAsync` / `Post` / `Complete` | [`Pipeline::send`] / [`Pipeline::try_send`] / [`Pipeline::complete`] |
//!
//! **Errors propagate.** A stage closure that returns an error or panics fails the pipeline: the
//! first failure is kept, every stage stops, later sends fail with it, and
//! [`Pipeline::complete`] returns it. (The original's transform returned a default value on
//! error and `Complete` swallowed errors.) Items in flight when a pipeline fails are dropped;
//! [`PipelineStats`] counts what was accepted and what reached a sink.
//!
//! **Completion waits for every stage**: [`Pipeline::complete`] closes the input and returns
//! once every stage, branches included, has handled everything before it. Dropping a
//! [`Pipeline`] without completing it closes the input too: stages finish the items already sent
//! in the background, and a failure is then only logged.
//!
//! # Examples
//!
//! ```
//! use std::time::Duration;
//! use electric_core::pipeline::Pipeline;
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let pipeline = Pipeline::build(16, |input| {
//!     input
//!         .map("parse", |s: String| async move { s.parse::<u64>() })
//!         .batch("batch", 100, Duration::from_millis(10))
//!         .for_each("sum", |batch: Vec<u64>| async move {
//!             let _total: u64 = batch.iter().sum();
//!             Ok::<_, std::io::Error>(())
//!         })
//! })
//! .unwrap();
//! pipeline.send("1".to_owned()).await.unwrap();
//! pipeline.send("x".to_owned()).await.ok(); // fails the pipeline
//! assert!(pipeline.complete().await.is_err());
//! # });
//! ```

use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::FutureExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::collections::{panic_message, BoxError};

/// Errors of a pipeline.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum PipelineError {
    /// A setting is out of range.
    #[error("invalid pipeline setting in stage {stage}: {reason}")]
    InvalidConfig {
        /// The stage (or `pipeline` for the pipeline's own settings).
        stage: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// Built outside a tokio runtime.
    #[error("pipeline must be built inside a tokio runtime")]
    NoRuntime,
    /// A stage's closure returned an error.
    #[error("pipeline stage {stage} failed")]
    Stage {
        /// The stage's name.
        stage: String,
        /// The error.
        #[source]
        source: Arc<dyn std::error::Error + Send + Sync>,
    },
    /// A stage's closure panicked.
    #[error("pipeline stage {stage} panicked: {message}")]
    Panicked {
        /// The stage's name.
        stage: String,
        /// The panic message.
        message: String,
    },
    /// The pipeline no longer accepts items (it completed).
    #[error("pipeline is closed")]
    Closed,
}

/// Why [`Pipeline::try_send`] refused an item.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrySendError<T> {
    /// The first stage's channel is full; the item is handed back.
    #[error("pipeline input is full")]
    Full(T),
    /// The pipeline failed or closed.
    #[error(transparent)]
    Failed(PipelineError),
}

/// Pipeline counters (a snapshot).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PipelineStats {
    /// Items accepted by [`Pipeline::send`] / [`Pipeline::try_send`].
    pub accepted: u64,
    /// Items (or batches) a sink handled successfully.
    pub sunk: u64,
}

struct Ctx {
    capacity: usize,
    tracker: TaskTracker,
    cancel: CancellationToken,
    error: Mutex<Option<PipelineError>>,
    config_error: Mutex<Option<PipelineError>>,
    rt: tokio::runtime::Handle,
    accepted: AtomicU64,
    sunk: AtomicU64,
}

impl Ctx {
    fn fail(&self, e: PipelineError) {
        let mut slot = self.error.lock().unwrap_or_else(PoisonError::into_inner);
        if slot.is_none() {
            tracing::warn!(error = %e, "pipeline failed");
            *slot = Some(e);
        }
        drop(slot);
        self.cancel.cancel();
    }

    fn error(&self) -> Option<PipelineError> {
        self.error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn invalid(&self, stage: &str, reason: &'static str) {
        let mut slot = self
            .config_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if slot.is_none() {
            *slot = Some(PipelineError::InvalidConfig {
                stage: stage.to_owned(),
                reason,
            });
        }
    }

    /// Spawns one stage; a failure or panic fails the pipeline, cancellation stops the stage.
    fn spawn<Fut>(self: &Arc<Self>, name: &str, fut: Fut)
    where
        Fut: Future<Output = Result<(), BoxError>> + Send + 'static,
    {
        let ctx = self.clone();
        let name = name.to_owned();
        self.tracker.spawn_on(
            async move {
                let result = tokio::select! {
                    biased;
                    () = ctx.cancel.cancelled() => return,
                    r = AssertUnwindSafe(fut).catch_unwind() => r,
                };
                match result {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => ctx.fail(PipelineError::Stage {
                        stage: name,
                        source: Arc::from(e),
                    }),
                    Err(p) => ctx.fail(PipelineError::Panicked {
                        stage: name,
                        message: panic_message(&*p),
                    }),
                }
            },
            &self.rt,
        );
    }
}

/// The output of a stage, to which the next stage is attached.
pub struct Stage<T> {
    rx: mpsc::Receiver<T>,
    ctx: Arc<Ctx>,
}

impl<T> fmt::Debug for Stage<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stage").finish_non_exhaustive()
    }
}

/// The end of a chain of stages, returned by the sinks ([`Stage::for_each`],
/// [`Stage::drain_for_each`]).
#[derive(Debug)]
#[must_use = "a sink must be returned from the pipeline's build closure"]
pub struct Sink(());

impl<T: Send + 'static> Stage<T> {
    fn next<O>(&self) -> (mpsc::Sender<O>, Stage<O>) {
        let (tx, rx) = mpsc::channel(self.ctx.capacity);
        (
            tx,
            Stage {
                rx,
                ctx: self.ctx.clone(),
            },
        )
    }

    /// Transforms each item with `f`, in order. An error fails the pipeline.
    pub fn map<O, E, F, Fut>(self, name: &str, f: F) -> Stage<O>
    where
        O: Send + 'static,
        E: Into<BoxError>,
        F: Fn(T) -> Fut + Send + 'static,
        Fut: Future<Output = Result<O, E>> + Send,
    {
        let (tx, next) = self.next();
        let mut rx = self.rx;
        self.ctx.spawn(name, async move {
            while let Some(x) = rx.recv().await {
                let y = f(x).await.map_err(Into::into)?;
                if tx.send(y).await.is_err() {
                    break;
                }
            }
            Ok(())
        });
        next
    }

    /// Keeps the items for which `keep` is true.
    pub fn filter<F>(self, name: &str, keep: F) -> Stage<T>
    where
        F: Fn(&T) -> bool + Send + 'static,
    {
        let (tx, next) = self.next();
        let mut rx = self.rx;
        self.ctx.spawn(name, async move {
            while let Some(x) = rx.recv().await {
                if keep(&x) && tx.send(x).await.is_err() {
                    break;
                }
            }
            Ok(())
        });
        next
    }

    /// Groups items into batches of up to `size`, emitting a batch when it is full or when its
    /// first item has waited `max_wait` (and the last partial batch at completion).
    /// `size` must be at least 1 and `max_wait` longer than zero.
    pub fn batch(self, name: &str, size: usize, max_wait: Duration) -> Stage<Vec<T>> {
        if size == 0 {
            self.ctx.invalid(name, "batch size must be at least 1");
        }
        if max_wait.is_zero() {
            self.ctx.invalid(name, "max wait must be longer than zero");
        }
        let size = size.max(1);
        let (tx, next) = self.next();
        let mut rx = self.rx;
        self.ctx.spawn(name, async move {
            while let Some(first) = rx.recv().await {
                let mut batch = Vec::with_capacity(size);
                batch.push(first);
                let deadline = tokio::time::Instant::now() + max_wait;
                while batch.len() < size {
                    tokio::select! {
                        x = rx.recv() => match x {
                            Some(x) => batch.push(x),
                            None => break,
                        },
                        () = tokio::time::sleep_until(deadline) => break,
                    }
                }
                if tx.send(batch).await.is_err() {
                    break;
                }
            }
            Ok(())
        });
        next
    }

    /// Sends a clone (made by `clone`) of every item to the `side` chain and passes the
    /// original on (a broadcast). Both outputs are bounded: the slower one paces the stage.
    pub fn tee<C, S>(self, name: &str, clone: C, side: S) -> Stage<T>
    where
        C: Fn(&T) -> T + Send + 'static,
        S: FnOnce(Stage<T>) -> Sink,
    {
        let (side_tx, side_stage) = self.next();
        let (tx, next) = self.next();
        let _sink = side(side_stage);
        let mut rx = self.rx;
        self.ctx.spawn(name, async move {
            while let Some(x) = rx.recv().await {
                let copy = clone(&x);
                if side_tx.send(copy).await.is_err() || tx.send(x).await.is_err() {
                    break;
                }
            }
            Ok(())
        });
        next
    }

    /// Routes the items for which `predicate` is true to the `side` chain; the others go on.
    pub fn branch<P, S>(self, name: &str, predicate: P, side: S) -> Stage<T>
    where
        P: Fn(&T) -> bool + Send + 'static,
        S: FnOnce(Stage<T>) -> Sink,
    {
        let (side_tx, side_stage) = self.next();
        let (tx, next) = self.next();
        let _sink = side(side_stage);
        let mut rx = self.rx;
        self.ctx.spawn(name, async move {
            while let Some(x) = rx.recv().await {
                let out = if predicate(&x) { &side_tx } else { &tx };
                if out.send(x).await.is_err() {
                    break;
                }
            }
            Ok(())
        });
        next
    }

    /// A custom stage: `f` gets this stage's receiver and the next stage's sender and runs until
    /// it returns. Return when the receiver is exhausted so completion propagates.
    pub fn custom<O, E, F, Fut>(self, name: &str, f: F) -> Stage<O>
    where
        O: Send + 'static,
        E: Into<BoxError>,
        F: FnOnce(mpsc::Receiver<T>, mpsc::Sender<O>) -> Fut,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
    {
        let (tx, next) = self.next();
        let fut = f(self.rx, tx);
        self.ctx
            .spawn(name, async move { fut.await.map_err(Into::into) });
        next
    }

    /// A sink running `action` on each item, one at a time, in order.
    pub fn for_each<E, F, Fut>(self, name: &str, action: F) -> Sink
    where
        E: Into<BoxError>,
        F: Fn(T) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), E>> + Send,
    {
        let mut rx = self.rx;
        let ctx = self.ctx.clone();
        self.ctx.spawn(name, async move {
            while let Some(x) = rx.recv().await {
                action(x).await.map_err(Into::into)?;
                ctx.sunk.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        });
        Sink(())
    }

    /// A sink that buffers up to `buffer` items and, whenever it is free, runs `action` on
    /// everything buffered at once (the original's buffer → drain-all action). `buffer` must be
    /// at least 1.
    pub fn drain_for_each<E, F, Fut>(self, name: &str, buffer: usize, action: F) -> Sink
    where
        E: Into<BoxError>,
        F: Fn(Vec<T>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), E>> + Send,
    {
        if buffer == 0 {
            self.ctx.invalid(name, "buffer must be at least 1");
        }
        let buffer = buffer.max(1);
        // The buffer is a channel of that capacity between the upstream and the action.
        let (tx, mut rx) = mpsc::channel(buffer);
        let mut upstream = self.rx;
        self.ctx.spawn(&format!("{name}.buffer"), async move {
            while let Some(x) = upstream.recv().await {
                if tx.send(x).await.is_err() {
                    break;
                }
            }
            Ok(())
        });
        let ctx = self.ctx.clone();
        self.ctx.spawn(name, async move {
            while let Some(first) = rx.recv().await {
                let mut all = vec![first];
                while let Ok(x) = rx.try_recv() {
                    all.push(x);
                }
                action(all).await.map_err(Into::into)?;
                ctx.sunk.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        });
        Sink(())
    }
}

/// A running pipeline's input. See the [module docs](self).
pub struct Pipeline<In> {
    input: mpsc::Sender<In>,
    ctx: Arc<Ctx>,
}

impl<In> fmt::Debug for Pipeline<In> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pipeline")
            .field("stages", &self.ctx.tracker.len())
            .field("failed", &self.ctx.cancel.is_cancelled())
            .finish_non_exhaustive()
    }
}

impl<In: Send + 'static> Pipeline<In> {
    /// Builds and starts a pipeline: `chain` receives the input stage and returns the sink of
    /// the main chain. Every channel between stages holds `capacity` items.
    ///
    /// # Errors
    ///
    /// [`PipelineError::InvalidConfig`] for a zero capacity or a stage setting out of range
    /// (nothing keeps running then); [`PipelineError::NoRuntime`] outside a tokio runtime.
    pub fn build<F>(capacity: usize, chain: F) -> Result<Self, PipelineError>
    where
        F: FnOnce(Stage<In>) -> Sink,
    {
        if capacity == 0 {
            return Err(PipelineError::InvalidConfig {
                stage: "pipeline".to_owned(),
                reason: "capacity must be at least 1",
            });
        }
        let rt = tokio::runtime::Handle::try_current().map_err(|_| PipelineError::NoRuntime)?;
        let ctx = Arc::new(Ctx {
            capacity,
            tracker: TaskTracker::new(),
            cancel: CancellationToken::new(),
            error: Mutex::new(None),
            config_error: Mutex::new(None),
            rt,
            accepted: AtomicU64::new(0),
            sunk: AtomicU64::new(0),
        });
        let (input, rx) = mpsc::channel(capacity);
        let _sink = chain(Stage {
            rx,
            ctx: ctx.clone(),
        });
        ctx.tracker.close();
        let config_error = ctx
            .config_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(e) = config_error {
            ctx.cancel.cancel();
            return Err(e);
        }
        Ok(Self { input, ctx })
    }

    /// Sends `item` into the pipeline, waiting for room.
    ///
    /// # Errors
    ///
    /// The pipeline's failure, if a stage failed (the item is dropped).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a cancelled send did not queue the item.
    pub async fn send(&self, item: In) -> Result<(), PipelineError> {
        if let Some(e) = self.ctx.error() {
            return Err(e);
        }
        tokio::select! {
            r = self.input.send(item) => match r {
                Ok(()) => {
                    self.ctx.accepted.fetch_add(1, Ordering::Relaxed);
                    Ok(())
                }
                Err(_) => Err(self.ctx.error().unwrap_or(PipelineError::Closed)),
            },
            () = self.ctx.cancel.cancelled() => Err(self.ctx.error().unwrap_or(PipelineError::Closed)),
        }
    }

    /// Sends `item` without waiting.
    ///
    /// # Errors
    ///
    /// [`TrySendError::Full`] with the item, or [`TrySendError::Failed`].
    pub fn try_send(&self, item: In) -> Result<(), TrySendError<In>> {
        if let Some(e) = self.ctx.error() {
            return Err(TrySendError::Failed(e));
        }
        match self.input.try_send(item) {
            Ok(()) => {
                self.ctx.accepted.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(mpsc::error::TrySendError::Full(x)) => Err(TrySendError::Full(x)),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(TrySendError::Failed(
                self.ctx.error().unwrap_or(PipelineError::Closed),
            )),
        }
    }

    /// Closes the input and waits for every stage to finish.
    ///
    /// # Errors
    ///
    /// The first stage failure, if any.
    pub async fn complete(self) -> Result<(), PipelineError> {
        let ctx = self.ctx.clone();
        drop(self);
        ctx.tracker.wait().await;
        match ctx.error() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// The counters.
    pub fn stats(&self) -> PipelineStats {
        PipelineStats {
            accepted: self.ctx.accepted.load(Ordering::Relaxed),
            sunk: self.ctx.sunk.load(Ordering::Relaxed),
        }
    }

    /// Whether a stage failed.
    pub fn is_failed(&self) -> bool {
        self.ctx.cancel.is_cancelled()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Log<T> = Arc<Mutex<Vec<T>>>;

    fn push<T: Send + 'static>(
        log: &Log<T>,
    ) -> impl Fn(T) -> futures_util::future::Ready<Result<(), BoxError>> + Send + 'static {
        let log = log.clone();
        move |x| {
            log.lock().expect("log").push(x);
            futures_util::future::ready(Ok(()))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn map_branch_tee_batch_and_drain() {
        let evens: Log<u32> = Default::default();
        let copies: Log<u32> = Default::default();
        let batches: Log<Vec<u32>> = Default::default();
        let (e2, c2, b2) = (evens.clone(), copies.clone(), batches.clone());
        let p = Pipeline::build(2, move |input| {
            input
                .map("double", |x: u32| async move { Ok::<_, BoxError>(x * 2) })
                .branch(
                    "fours",
                    |x| x % 4 == 0,
                    move |side| side.for_each("evens", push(&e2)),
                )
                .tee(
                    "copy",
                    |x| *x + 1000,
                    move |side| side.for_each("copies", push(&c2)),
                )
                .batch("batch", 3, Duration::from_millis(20))
                .for_each("batches", push(&b2))
        })
        .expect("build");
        for i in 0..10 {
            p.send(i).await.expect("send");
        }
        p.complete().await.expect("complete");
        assert_eq!(*evens.lock().expect("l"), vec![0, 4, 8, 12, 16]);
        assert_eq!(
            *copies.lock().expect("l"),
            vec![1002, 1006, 1010, 1014, 1018]
        );
        let all: Vec<u32> = batches
            .lock()
            .expect("l")
            .iter()
            .flatten()
            .copied()
            .collect();
        assert_eq!(all, vec![2, 6, 10, 14, 18]);
        assert!(batches.lock().expect("l").iter().all(|b| b.len() <= 3));
    }

    #[tokio::test(start_paused = true)]
    async fn drain_for_each_takes_everything_buffered() {
        let drained: Log<Vec<u32>> = Default::default();
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let (d2, g2) = (drained.clone(), gate.clone());
        let p = Pipeline::build(1, move |input| {
            input.drain_for_each("drain", 10, move |all: Vec<u32>| {
                let (d2, g2) = (d2.clone(), g2.clone());
                async move {
                    g2.acquire()
                        .await
                        .map_err(|e| Box::new(e) as BoxError)?
                        .forget();
                    d2.lock().expect("l").push(all);
                    Ok::<_, BoxError>(())
                }
            })
        })
        .expect("build");
        p.send(0).await.expect("send");
        tokio::time::sleep(Duration::from_millis(1)).await; // the action holds [0]
        for i in 1..6 {
            p.send(i).await.expect("send");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
        gate.add_permits(10);
        p.complete().await.expect("complete");
        assert_eq!(
            *drained.lock().expect("l"),
            vec![vec![0], vec![1, 2, 3, 4, 5]]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn errors_fail_the_pipeline_and_surface_from_complete() {
        let sunk: Log<u32> = Default::default();
        let s2 = sunk.clone();
        let p = Pipeline::build(4, move |input| {
            input
                .map("check", |x: u32| async move {
                    if x == 3 {
                        Err::<u32, BoxError>("three".into())
                    } else {
                        Ok(x)
                    }
                })
                .for_each("sink", push(&s2))
        })
        .expect("build");
        let mut send_error = None;
        for i in 0..100 {
            if let Err(e) = p.send(i).await {
                send_error = Some(e);
                break;
            }
            tokio::task::yield_now().await;
        }
        assert!(
            matches!(send_error, Some(PipelineError::Stage { ref stage, .. }) if stage == "check")
        );
        let e = p.complete().await.expect_err("failed");
        assert!(
            matches!(&e, PipelineError::Stage { stage, source } if stage == "check" && source.to_string() == "three")
        );
        assert_eq!(*sunk.lock().expect("l"), vec![0, 1, 2]);
    }

    #[tokio::test(start_paused = true)]
    async fn panics_are_errors() {
        let p = Pipeline::build(4, |input| {
            input.for_each("boom", |x: u32| async move {
                assert!(x < 1, "too big");
                Ok::<_, BoxError>(())
            })
        })
        .expect("build");
        p.send(0).await.expect("send");
        p.send(1).await.expect("send");
        let e = p.complete().await.expect_err("panicked");
        assert!(matches!(e, PipelineError::Panicked { stage, .. } if stage == "boom"));
    }

    #[tokio::test(start_paused = true)]
    async fn slow_sink_slows_the_source() {
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let g2 = gate.clone();
        let p = Pipeline::build(1, move |input| {
            input
                .map("id", |x: u32| async move { Ok::<_, BoxError>(x) })
                .for_each("slow", move |_x| {
                    let g2 = g2.clone();
                    async move {
                        g2.acquire()
                            .await
                            .map_err(|e| Box::new(e) as BoxError)?
                            .forget();
                        Ok::<_, BoxError>(())
                    }
                })
        })
        .expect("build");
        let mut accepted = 0;
        for i in 0..100 {
            if p.try_send(i).is_ok() {
                accepted += 1;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // One in the sink, one per channel (input, map→sink) and one held by map.
        assert!(accepted <= 4, "accepted {accepted}");
        gate.add_permits(1000);
        p.complete().await.expect("complete");
    }

    #[tokio::test]
    async fn invalid_settings_are_refused() {
        let r = Pipeline::build(0, |i: Stage<u32>| {
            i.for_each("s", |_| async { Ok::<_, BoxError>(()) })
        });
        assert!(matches!(r, Err(PipelineError::InvalidConfig { .. })));
        let r = Pipeline::build(1, |i: Stage<u32>| {
            i.batch("b", 0, Duration::from_millis(1))
                .for_each("s", |_| async { Ok::<_, BoxError>(()) })
        });
        assert!(matches!(r, Err(PipelineError::InvalidConfig { stage, .. }) if stage == "b"));
        let r = Pipeline::build(1, |i: Stage<u32>| {
            i.drain_for_each("d", 0, |_| async { Ok::<_, BoxError>(()) })
        });
        assert!(matches!(r, Err(PipelineError::InvalidConfig { .. })));
    }

    #[test]
    fn no_runtime() {
        let r = Pipeline::build(1, |i: Stage<u32>| {
            i.for_each("s", |_| async { Ok::<_, BoxError>(()) })
        });
        assert!(matches!(r, Err(PipelineError::NoRuntime)));
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_the_pipeline_finishes_items_in_flight() {
        let sunk: Log<u32> = Default::default();
        let s2 = sunk.clone();
        let p = Pipeline::build(8, move |input| {
            input
                .map("slow", |x: u32| async move {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    Ok::<_, BoxError>(x)
                })
                .for_each("sink", push(&s2))
        })
        .expect("build");
        for i in 0..5 {
            p.send(i).await.expect("send");
        }
        drop(p);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(*sunk.lock().expect("l"), vec![0, 1, 2, 3, 4]);
    }

    #[tokio::test]
    async fn custom_stage() {
        let sunk: Log<String> = Default::default();
        let s2 = sunk.clone();
        let p = Pipeline::build(4, move |input| {
            input
                .custom(
                    "pairs",
                    |mut rx: mpsc::Receiver<u32>, tx: mpsc::Sender<String>| async move {
                        while let Some(a) = rx.recv().await {
                            let b = rx.recv().await;
                            if tx.send(format!("{a}+{b:?}")).await.is_err() {
                                break;
                            }
                        }
                        Ok::<_, BoxError>(())
                    },
                )
                .for_each("sink", push(&s2))
        })
        .expect("build");
        for i in 0..3 {
            p.send(i).await.expect("send");
        }
        p.complete().await.expect("complete");
        assert_eq!(*sunk.lock().expect("l"), vec!["0+Some(1)", "2+None"]);
    }
}
