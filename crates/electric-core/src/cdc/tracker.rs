//! [`TableTracker`]: one table's changes from a [`ChangeSource`], handed to an `on_change` hook
//! and fanned out to bounded subscriber streams (the original's `TableChangeTrackerBase`).
//!
//! - The hook runs for every change of the table, in order. Its errors **and panics** are
//!   caught, counted ([`TrackerStats::hook_errors`], [`TrackerStats::hook_panics`]) and logged;
//!   they never stop the tracker or reach the subscribers.
//! - Subscribers get every event through a bounded queue of
//!   [`TableTrackerBuilder::subscriber_capacity`] events (default 1024). A subscriber that falls
//!   further behind loses the oldest events and is told so: its next item is
//!   [`TrackerEvent::Lagged`] with the number dropped. Nobody is dropped silently and a slow
//!   subscriber never slows the source.
//! - When the source fails with a retryable error ([`CdcError::is_retryable`]) it is started
//!   again from the last checkpoint, after [`Backoff`] (default 100 ms doubling to 10 s, with
//!   jitter; reset once an event arrives). A permanent error ends the tracker and is returned by
//!   [`TrackerHandle::join`].
//! - After the hook has run for every change up to a batch's checkpoint, the checkpoint is
//!   persisted (when [`TableTrackerBuilder::checkpoints`] is set) and acknowledged to the source.
//!   Subscribers do not hold acknowledgements back.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::{
    CdcError, CdcResult, ChangeItem, ChangeSource, Checkpoints, Position, SourceEvent, TableName,
};

/// Exponential backoff between restarts: `initial`, doubled after every failure up to `max`;
/// each wait is drawn uniformly from `[delay / 2, delay]` (jitter), so it never exceeds `max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// The first delay.
    pub initial: Duration,
    /// The longest delay.
    pub max: Duration,
    /// Give up (return the error) after this many consecutive failures; `None`: never give up.
    pub max_retries: Option<u32>,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(10),
            max_retries: None,
        }
    }
}

impl Backoff {
    /// The (jittered) delay before retry number `attempt` (1-based).
    pub fn delay(&self, attempt: u32) -> Duration {
        let exp = self
            .initial
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(20))
            .min(self.max);
        exp.mul_f64(0.5 + rand::random::<f64>() / 2.0)
    }

    /// Whether failure number `attempt` (1-based) may be retried.
    pub fn allows(&self, attempt: u32) -> bool {
        self.max_retries.is_none_or(|m| attempt <= m)
    }
}

/// An error an `on_change` hook returns.
pub type HookError = Box<dyn std::error::Error + Send + Sync>;

type Hook = Box<dyn Fn(&ChangeItem) -> Result<(), HookError> + Send + Sync>;

/// What a tracker subscriber receives.
#[derive(Clone, Debug, PartialEq)]
pub enum TrackerEvent {
    /// A change of the table.
    Change(Arc<ChangeItem>),
    /// The table is being reloaded from scratch ([`SourceEvent::SnapshotStart`]).
    SnapshotStart {
        /// Why.
        reason: Arc<str>,
    },
    /// The reload is complete ([`SourceEvent::SnapshotEnd`]).
    SnapshotEnd,
    /// This subscriber fell behind and `missed` events were dropped for it.
    Lagged {
        /// How many events it lost.
        missed: u64,
    },
}

/// Counters of a [`TableTracker`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrackerStats {
    /// Changes of the table seen.
    pub changes: u64,
    /// Hook calls that returned an error.
    pub hook_errors: u64,
    /// Hook calls that panicked.
    pub hook_panics: u64,
    /// Times the source was restarted after a retryable error.
    pub restarts: u64,
    /// Checkpoints persisted and acknowledged.
    pub checkpoints: u64,
    /// The last checkpoint acknowledged.
    pub last_checkpoint: Option<Position>,
}

#[derive(Default)]
struct Shared {
    changes: AtomicU64,
    hook_errors: AtomicU64,
    hook_panics: AtomicU64,
    restarts: AtomicU64,
    checkpoints: AtomicU64,
    last_checkpoint: Mutex<Option<Position>>,
}

/// Builds and spawns a [`TableTracker`].
pub struct TableTrackerBuilder {
    source: Box<dyn ChangeSource>,
    table: TableName,
    hook: Option<Hook>,
    capacity: usize,
    backoff: Backoff,
    checkpoints: Option<(Arc<dyn Checkpoints>, String)>,
}

impl std::fmt::Debug for TableTrackerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TableTrackerBuilder")
            .field("source", &self.source.name())
            .field("table", &self.table)
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

/// The default [`TableTrackerBuilder::subscriber_capacity`].
pub const DEFAULT_SUBSCRIBER_CAPACITY: usize = 1024;

/// Namespace for [`TableTracker::builder`]; the running tracker is a [`TrackerHandle`].
#[derive(Debug)]
pub struct TableTracker;

impl TableTracker {
    /// A tracker of `table`'s changes from `source` (events of other tables are passed over;
    /// their checkpoints still count).
    pub fn builder(source: impl ChangeSource + 'static, table: TableName) -> TableTrackerBuilder {
        TableTrackerBuilder {
            source: Box::new(source),
            table,
            hook: None,
            capacity: DEFAULT_SUBSCRIBER_CAPACITY,
            backoff: Backoff::default(),
            checkpoints: None,
        }
    }
}

impl TableTrackerBuilder {
    /// The hook run for every change (synchronously, in order). Errors and panics are counted.
    pub fn on_change<F>(mut self, f: F) -> Self
    where
        F: Fn(&ChangeItem) -> Result<(), HookError> + Send + Sync + 'static,
    {
        self.hook = Some(Box::new(f));
        self
    }

    /// Each subscriber's queue, in events (at least 1; default [`DEFAULT_SUBSCRIBER_CAPACITY`]).
    pub fn subscriber_capacity(mut self, n: usize) -> Self {
        self.capacity = n;
        self
    }

    /// Restart backoff (default: see [`Backoff::default`]).
    pub fn backoff(mut self, b: Backoff) -> Self {
        self.backoff = b;
        self
    }

    /// Resume from, and persist to, checkpoint `name` in `checkpoints` (default: start from the
    /// beginning and keep the position in memory only).
    pub fn checkpoints(
        mut self,
        checkpoints: Arc<dyn Checkpoints>,
        name: impl Into<String>,
    ) -> Self {
        self.checkpoints = Some((checkpoints, name.into()));
        self
    }

    /// Spawns the tracker on the current Tokio runtime; it stops when `token` is cancelled.
    ///
    /// # Errors
    ///
    /// [`CdcError::Config`] for a zero capacity or an invalid checkpoint name.
    pub fn spawn(self, token: CancellationToken) -> CdcResult<TrackerHandle> {
        if self.capacity == 0 {
            return Err(CdcError::Config(
                "subscriber_capacity must be at least 1".into(),
            ));
        }
        if let Some((_, name)) = &self.checkpoints {
            super::checkpoints::validate_checkpoint_name(name)?;
        }
        let (tx, _) = broadcast::channel(self.capacity);
        let shared = Arc::new(Shared::default());
        let worker = Worker {
            source: self.source,
            table: self.table,
            hook: self.hook,
            backoff: self.backoff,
            checkpoints: self.checkpoints,
            tx: tx.clone(),
            shared: shared.clone(),
        };
        let task = tokio::spawn(worker.run(token.clone()));
        Ok(TrackerHandle {
            tx,
            shared,
            token,
            task,
        })
    }
}

/// A running [`TableTracker`].
#[derive(Debug)]
pub struct TrackerHandle {
    tx: broadcast::Sender<TrackerEvent>,
    shared: Arc<Shared>,
    token: CancellationToken,
    task: tokio::task::JoinHandle<CdcResult<()>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Shared")
    }
}

impl TrackerHandle {
    /// A new subscriber: every event from now on, through a bounded queue (see the
    /// [module docs](self)).
    pub fn subscribe(&self) -> TrackerSubscription {
        TrackerSubscription {
            rx: self.tx.subscribe(),
        }
    }

    /// The counters so far.
    pub fn stats(&self) -> TrackerStats {
        let s = &self.shared;
        TrackerStats {
            changes: s.changes.load(Ordering::Relaxed),
            hook_errors: s.hook_errors.load(Ordering::Relaxed),
            hook_panics: s.hook_panics.load(Ordering::Relaxed),
            restarts: s.restarts.load(Ordering::Relaxed),
            checkpoints: s.checkpoints.load(Ordering::Relaxed),
            last_checkpoint: s
                .last_checkpoint
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        }
    }

    /// Asks the tracker to stop (as cancelling its token does).
    pub fn shutdown(&self) {
        self.token.cancel();
    }

    /// Waits for the tracker to end: `Ok` after a shutdown or when the source ended, the error
    /// that stopped it otherwise.
    ///
    /// # Errors
    ///
    /// The source's permanent error, or the retryable one that exhausted
    /// [`Backoff::max_retries`]; [`CdcError::Closed`] if the task panicked.
    pub async fn join(self) -> CdcResult<()> {
        self.task.await.unwrap_or(Err(CdcError::Closed))
    }
}

/// One subscriber of a [`TrackerHandle`].
#[derive(Debug)]
pub struct TrackerSubscription {
    rx: broadcast::Receiver<TrackerEvent>,
}

impl TrackerSubscription {
    /// The next event; [`TrackerEvent::Lagged`] when events were dropped for this subscriber;
    /// `None` once the tracker has stopped and everything queued was received.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn recv(&mut self) -> Option<TrackerEvent> {
        match self.rx.recv().await {
            Ok(e) => Some(e),
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                Some(TrackerEvent::Lagged { missed })
            }
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }
}

struct Worker {
    source: Box<dyn ChangeSource>,
    table: TableName,
    hook: Option<Hook>,
    backoff: Backoff,
    checkpoints: Option<(Arc<dyn Checkpoints>, String)>,
    tx: broadcast::Sender<TrackerEvent>,
    shared: Arc<Shared>,
}

impl Worker {
    async fn run(mut self, token: CancellationToken) -> CdcResult<()> {
        let mut from = match &self.checkpoints {
            Some((c, name)) => c.load(name).await?,
            None => None,
        };
        let mut failures = 0u32;
        loop {
            let started = tokio::select! {
                _ = token.cancelled() => return Ok(()),
                r = self.source.start(from.clone()) => r,
            };
            let result = match started {
                Ok(()) => self.stream(&token, &mut from, &mut failures).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(()) => return Ok(()),
                Err(e) if e.is_retryable() => {
                    failures += 1;
                    if !self.backoff.allows(failures) {
                        return Err(e);
                    }
                    self.shared.restarts.fetch_add(1, Ordering::Relaxed);
                    let wait = self.backoff.delay(failures);
                    tracing::warn!(source = self.source.name(), error = %e, ?wait, "change source failed; restarting");
                    tokio::select! {
                        _ = token.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Streams until the source ends (`Ok`), fails, or the token is cancelled (`Ok`).
    async fn stream(
        &mut self,
        token: &CancellationToken,
        from: &mut Option<Position>,
        failures: &mut u32,
    ) -> CdcResult<()> {
        loop {
            let ev = tokio::select! {
                _ = token.cancelled() => return Ok(()),
                ev = self.source.next() => ev?,
            };
            let Some(ev) = ev else { return Ok(()) };
            *failures = 0;
            match ev {
                SourceEvent::SnapshotStart { table, reason } if table == self.table => {
                    let _ = self.tx.send(TrackerEvent::SnapshotStart { reason });
                }
                SourceEvent::SnapshotEnd { table } if table == self.table => {
                    let _ = self.tx.send(TrackerEvent::SnapshotEnd);
                }
                SourceEvent::SnapshotStart { .. } | SourceEvent::SnapshotEnd { .. } => {}
                SourceEvent::Changes(batch) => {
                    for item in batch.items {
                        if item.table != self.table {
                            continue;
                        }
                        self.shared.changes.fetch_add(1, Ordering::Relaxed);
                        if let Some(hook) = &self.hook {
                            match std::panic::catch_unwind(AssertUnwindSafe(|| hook(&item))) {
                                Ok(Ok(())) => {}
                                Ok(Err(e)) => {
                                    self.shared.hook_errors.fetch_add(1, Ordering::Relaxed);
                                    tracing::warn!(table = %self.table, position = %item.position, error = %e, "on_change hook failed");
                                }
                                Err(_) => {
                                    self.shared.hook_panics.fetch_add(1, Ordering::Relaxed);
                                    tracing::error!(table = %self.table, position = %item.position, "on_change hook panicked");
                                }
                            }
                        }
                        let _ = self.tx.send(TrackerEvent::Change(Arc::new(item)));
                    }
                    if let Some(cp) = batch.checkpoint {
                        if let Some((c, name)) = &self.checkpoints {
                            c.store(name, &cp).await?;
                        }
                        self.source.ack(&cp).await?;
                        self.shared.checkpoints.fetch_add(1, Ordering::Relaxed);
                        *self
                            .shared
                            .last_checkpoint
                            .lock()
                            .unwrap_or_else(|p| p.into_inner()) = Some(cp.clone());
                        *from = Some(cp);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cdc::checkpoints::MemoryCheckpoints;
    use crate::cdc::memory::{row, MemoryDatabase, Txn};
    use crate::cdc::{Op, Value};

    fn t() -> TableName {
        TableName::new("public", "t")
    }

    fn fast() -> Backoff {
        Backoff {
            initial: Duration::from_millis(1),
            max: Duration::from_millis(5),
            max_retries: None,
        }
    }

    async fn wait_until(mut f: impl FnMut() -> bool) {
        for _ in 0..2000 {
            if f() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("condition not reached");
    }

    #[test]
    fn backoff_doubles_and_stays_bounded() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
            max_retries: Some(3),
        };
        for attempt in 1..40 {
            let d = b.delay(attempt);
            let exp = Duration::from_millis(100 * (1u64 << (attempt - 1).min(10)))
                .min(Duration::from_secs(1));
            assert!(d <= exp && d >= exp / 2, "{attempt}: {d:?}");
        }
        assert!(b.allows(3));
        assert!(!b.allows(4));
    }

    #[tokio::test]
    async fn hook_errors_and_panics_are_isolated_and_counted() {
        let db = MemoryDatabase::new();
        db.create_table(&t(), &["id"]).unwrap();
        let other = TableName::new("public", "other");
        db.create_table(&other, &["id"]).unwrap();
        let seen = Arc::new(AtomicU64::new(0));
        let s2 = seen.clone();
        let ck = Arc::new(MemoryCheckpoints::new());
        let token = CancellationToken::new();
        let h = TableTracker::builder(db.source("tr").build().unwrap(), t())
            .on_change(move |item| {
                s2.fetch_add(1, Ordering::Relaxed);
                match item.key.get("id") {
                    Some(Value::Int(2)) => Err("bad row".into()),
                    Some(Value::Int(3)) => panic!("hook bug"),
                    _ => Ok(()),
                }
            })
            .checkpoints(ck.clone(), "tr")
            .backoff(fast())
            .spawn(token.clone())
            .unwrap();
        let mut sub = h.subscribe();
        wait_until(|| h.stats().checkpoints >= 1).await;
        let mut last = None;
        for i in 1..=5 {
            last = Some(
                db.commit(
                    Txn::new()
                        .insert(&t(), row([("id", Value::Int(i))]))
                        .insert(&other, row([("id", Value::Int(i))])),
                )
                .unwrap()
                .checkpoint,
            );
        }
        wait_until(|| h.stats().last_checkpoint == last).await;
        let st = h.stats();
        assert_eq!(st.changes, 5, "only the tracked table's changes");
        assert_eq!((st.hook_errors, st.hook_panics), (1, 1));
        assert_eq!(seen.load(Ordering::Relaxed), 5);
        assert_eq!(ck.load("tr").await.unwrap(), last);
        assert_eq!(db.acked("tr"), last);
        // The subscriber got every change (the snapshot of empty tables came first).
        let mut ids = Vec::new();
        while ids.len() < 5 {
            match sub.recv().await.unwrap() {
                TrackerEvent::Change(c) => {
                    assert_eq!(c.op, Op::Insert);
                    ids.push(c.key.get("id").cloned().unwrap());
                }
                TrackerEvent::SnapshotStart { .. } | TrackerEvent::SnapshotEnd => {}
                TrackerEvent::Lagged { missed } => panic!("lagged {missed}"),
            }
        }
        assert_eq!(ids, (1..=5).map(Value::Int).collect::<Vec<_>>());
        h.shutdown();
        h.join().await.unwrap();
    }

    #[tokio::test]
    async fn a_slow_subscriber_is_told_how_many_it_missed() {
        let db = MemoryDatabase::new();
        db.create_table(&t(), &["id"]).unwrap();
        let token = CancellationToken::new();
        let h = TableTracker::builder(db.source("slow").build().unwrap(), t())
            .subscriber_capacity(4)
            .spawn(token.clone())
            .unwrap();
        let mut fast_sub = h.subscribe();
        let mut slow_sub = h.subscribe();
        wait_until(|| h.stats().checkpoints >= 1).await;
        let mut last = None;
        for i in 0..20 {
            last = Some(
                db.commit(Txn::new().insert(&t(), row([("id", Value::Int(i))])))
                    .unwrap()
                    .checkpoint,
            );
            // The fast subscriber keeps up.
            loop {
                match fast_sub.recv().await.unwrap() {
                    TrackerEvent::Change(_) => break,
                    TrackerEvent::Lagged { missed } => panic!("fast lagged {missed}"),
                    _ => {}
                }
            }
        }
        wait_until(|| h.stats().last_checkpoint == last).await;
        // The slow one missed the oldest events and is told how many before the rest:
        // 22 events were sent (snapshot start and end, 20 changes), the queue holds 4.
        let first = slow_sub.recv().await.unwrap();
        let TrackerEvent::Lagged { missed } = first else {
            panic!("expected Lagged first, got {first:?}")
        };
        assert_eq!(missed, 18);
        for _ in 0..4 {
            assert!(matches!(
                slow_sub.recv().await,
                Some(TrackerEvent::Change(_))
            ));
        }
        h.shutdown();
        h.join().await.unwrap();
    }

    #[tokio::test]
    async fn retryable_failures_restart_and_permanent_ones_surface() {
        let db = MemoryDatabase::new();
        db.create_table(&t(), &["id"]).unwrap();
        let token = CancellationToken::new();
        let ck = Arc::new(MemoryCheckpoints::new());
        let h = TableTracker::builder(db.source("r").build().unwrap(), t())
            .checkpoints(ck.clone(), "r")
            .backoff(fast())
            .spawn(token.clone())
            .unwrap();
        let mut sub = h.subscribe();
        wait_until(|| h.stats().checkpoints >= 1).await;
        db.commit(Txn::new().insert(&t(), row([("id", Value::Int(1))])))
            .unwrap();
        db.fail_next_reads(3);
        db.fail_next_starts(2);
        let last = db
            .commit(Txn::new().insert(&t(), row([("id", Value::Int(2))])))
            .unwrap()
            .checkpoint;
        wait_until(|| h.stats().last_checkpoint.as_ref() == Some(&last)).await;
        assert!(h.stats().restarts >= 3, "{:?}", h.stats());
        // Every change reached the subscriber at least once, in order of first sight.
        let mut ids = Vec::new();
        while !ids.contains(&Value::Int(2)) {
            if let Some(TrackerEvent::Change(c)) = sub.recv().await {
                if !ids.contains(c.key.get("id").unwrap()) {
                    ids.push(c.key.get("id").cloned().unwrap());
                }
            }
        }
        assert_eq!(ids, vec![Value::Int(1), Value::Int(2)]);
        h.shutdown();
        h.join().await.unwrap();

        // A permanent error (a checkpoint the source refuses) ends the tracker with it.
        ck.store("bad", &Position::from_bytes(vec![1]))
            .await
            .unwrap();
        let h = TableTracker::builder(db.source("b").build().unwrap(), t())
            .checkpoints(ck.clone(), "bad")
            .spawn(CancellationToken::new())
            .unwrap();
        assert!(matches!(h.join().await, Err(CdcError::BadPosition { .. })));

        // Retryable errors past max_retries surface too.
        db.fail_next_starts(10);
        let h = TableTracker::builder(db.source("c").build().unwrap(), t())
            .backoff(Backoff {
                max_retries: Some(2),
                ..fast()
            })
            .spawn(CancellationToken::new())
            .unwrap();
        assert!(matches!(h.join().await, Err(CdcError::Unavailable(_))));
        assert!(TableTracker::builder(db.source("d").build().unwrap(), t())
            .subscriber_capacity(0)
            .spawn(CancellationToken::new())
            .is_err());
    }
}
