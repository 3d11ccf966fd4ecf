//! [`SyncService`]: keeps every manager's cache in step with its store.
//!
//! Per manager it runs
//! - a **reader** that subscribes to the manager's section and routes each delta to one of
//!   `workers` ordered queues by key hash (one key always goes to the same queue, so its deltas
//!   apply in order while keys run in parallel). A lost subscription is re-established with
//!   exponential backoff, followed at once by an anti-entropy pass;
//! - **workers** that apply deltas ([`DataManager::apply_remote`]): patch, ignore duplicates,
//!   repair gaps from the change log, reload on a new epoch;
//! - a **maintenance** task: anti-entropy every `anti_entropy_interval` (and on demand after a
//!   reconnect or a lagged subscription) and idle-cache flushing every `flush_interval`.
//!
//! Everything stops when the cancellation token fires; [`SyncHandle::join`] waits for it.

use std::hash::BuildHasher;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::delta::SharedDelta;
use crate::error::{Error, Result};
use crate::key::SectionId;
use crate::manager::{DataManager, Document, RepairReason};
use crate::store::{Store, SubscriptionEvent};

/// Settings of a [`SyncService`] with their defaults.
#[derive(Clone, Debug)]
pub struct SyncConfig {
    /// Ordered queues (and worker tasks) per manager (default 4).
    pub workers: usize,
    /// Deltas buffered per queue (default 1024). When a queue is full the reader waits, which
    /// backs up into the store's subscription buffer; if that overflows too, the store reports
    /// the loss and an anti-entropy pass repairs what was missed.
    pub queue_capacity: usize,
    /// Interval of the periodic anti-entropy pass (default 30 s).
    pub anti_entropy_interval: Duration,
    /// Interval of idle-cache flushing (default 60 s).
    pub flush_interval: Duration,
    /// Cached documents idle longer than this are dropped (default 6 h, the original's data
    /// flush).
    pub max_idle: Duration,
    /// First wait before re-subscribing after a lost subscription (default 100 ms).
    pub resubscribe_min: Duration,
    /// Longest wait between re-subscription attempts (default 5 s).
    pub resubscribe_max: Duration,
}

impl Default for SyncConfig {
    fn default() -> Self {
        SyncConfig {
            workers: 4,
            queue_capacity: 1024,
            anti_entropy_interval: Duration::from_secs(30),
            flush_interval: Duration::from_secs(60),
            max_idle: Duration::from_secs(6 * 3600),
            resubscribe_min: Duration::from_millis(100),
            resubscribe_max: Duration::from_secs(5),
        }
    }
}

impl SyncConfig {
    fn validate(&self) -> Result<()> {
        let zero = Duration::ZERO;
        if self.workers == 0 || self.queue_capacity == 0 {
            return Err(Error::InvalidConfig(
                "sync workers and queue_capacity must be at least 1".into(),
            ));
        }
        if [
            self.anti_entropy_interval,
            self.flush_interval,
            self.resubscribe_min,
        ]
        .contains(&zero)
            || self.resubscribe_max < self.resubscribe_min
        {
            return Err(Error::InvalidConfig(
                "sync intervals must be positive and resubscribe_max >= resubscribe_min".into(),
            ));
        }
        Ok(())
    }
}

/// What the sync service needs from a manager, without its document type.
#[async_trait]
pub trait SyncTarget: Send + Sync + 'static {
    /// The section to subscribe to.
    fn section(&self) -> &SectionId;
    /// The store to subscribe through.
    fn store(&self) -> Arc<dyn Store>;
    /// Applies one delta from the subscription.
    async fn apply(&self, delta: SharedDelta);
    /// Runs one anti-entropy pass.
    async fn anti_entropy(&self, reason: RepairReason) -> Result<usize>;
    /// Drops cached documents idle for longer than `max_idle`.
    fn flush_idle(&self, max_idle: Duration) -> usize;
    /// Counts and reports an unreadable subscription message.
    fn malformed(&self, err: &Error);
    /// Reports a failure of the sync machinery itself (subscribe or anti-entropy failed).
    fn sync_error(&self, reason: Option<RepairReason>, detail: String);
}

#[async_trait]
impl<T: Document> SyncTarget for DataManager<T> {
    fn section(&self) -> &SectionId {
        DataManager::section(self)
    }
    fn store(&self) -> Arc<dyn Store> {
        DataManager::store(self).clone()
    }
    async fn apply(&self, delta: SharedDelta) {
        self.apply_remote(delta).await
    }
    async fn anti_entropy(&self, reason: RepairReason) -> Result<usize> {
        DataManager::anti_entropy(self, reason).await
    }
    fn flush_idle(&self, max_idle: Duration) -> usize {
        DataManager::flush_idle(self, max_idle)
    }
    fn malformed(&self, err: &Error) {
        self.record_malformed(err)
    }
    fn sync_error(&self, reason: Option<RepairReason>, detail: String) {
        self.report_sync_error(None, reason, detail)
    }
}

/// Keeps managers in sync with their stores; see the [module docs](self).
///
/// # Examples
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use std::sync::Arc;
/// use electric_core::{manager::{DataManager, Document}, Key, MemoryStore, SyncService};
/// use serde_json::{Map, Value};
/// use tokio_util::sync::CancellationToken;
///
/// let store = Arc::new(MemoryStore::new());
/// let docs = DataManager::<Map<String, Value>>::builder(store, "p", "s").build().unwrap();
/// let token = CancellationToken::new();
/// let sync = SyncService::builder().manager(&docs).build().unwrap().spawn(token.clone());
/// token.cancel();
/// sync.join().await;
/// # });
/// ```
pub struct SyncService {
    targets: Vec<Arc<dyn SyncTarget>>,
    config: SyncConfig,
}

/// Builder for [`SyncService`].
#[derive(Default)]
pub struct SyncServiceBuilder {
    targets: Vec<Arc<dyn SyncTarget>>,
    config: SyncConfig,
}

impl SyncServiceBuilder {
    /// Adds a manager to keep in sync.
    pub fn manager<T: Document>(mut self, manager: &DataManager<T>) -> Self {
        self.targets.push(Arc::new(manager.clone()));
        self
    }

    /// Adds any sync target.
    pub fn target(mut self, target: Arc<dyn SyncTarget>) -> Self {
        self.targets.push(target);
        self
    }

    /// Sets all settings at once.
    pub fn config(mut self, config: SyncConfig) -> Self {
        self.config = config;
        self
    }

    /// Validates the settings and builds the service.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for zero capacities or intervals.
    pub fn build(self) -> Result<SyncService> {
        self.config.validate()?;
        Ok(SyncService {
            targets: self.targets,
            config: self.config,
        })
    }
}

/// The running service: wait for it after cancelling its token.
#[derive(Clone)]
pub struct SyncHandle {
    tracker: TaskTracker,
}

impl SyncHandle {
    /// Waits until every task of the service has stopped (after its token was cancelled).
    pub async fn join(&self) {
        self.tracker.close();
        self.tracker.wait().await;
    }
}

/// A pending on-demand anti-entropy request: the strongest reason wins until it runs.
#[derive(Default)]
struct Pending {
    reason: Mutex<Option<RepairReason>>,
    notify: Notify,
}

impl Pending {
    fn request(&self, reason: RepairReason) {
        let mut r = self.reason.lock().unwrap_or_else(|p| p.into_inner());
        if r.is_none() || reason == RepairReason::Reconnect {
            *r = Some(reason);
        }
        drop(r);
        self.notify.notify_one();
    }

    fn take(&self) -> Option<RepairReason> {
        self.reason.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

impl SyncService {
    /// Starts building a service.
    pub fn builder() -> SyncServiceBuilder {
        SyncServiceBuilder::default()
    }

    /// Spawns the service's tasks on the current Tokio runtime. They run until `token` is
    /// cancelled; queued deltas are dropped at shutdown (the next start repairs from the store).
    pub fn spawn(self, token: CancellationToken) -> SyncHandle {
        let tracker = TaskTracker::new();
        for target in self.targets {
            let pending = Arc::new(Pending::default());
            let mut senders = Vec::with_capacity(self.config.workers);
            for _ in 0..self.config.workers {
                let (tx, rx) = mpsc::channel(self.config.queue_capacity);
                senders.push(tx);
                tracker.spawn(worker(target.clone(), rx, token.clone()));
            }
            tracker.spawn(reader(
                target.clone(),
                senders,
                pending.clone(),
                self.config.clone(),
                token.clone(),
            ));
            tracker.spawn(maintenance(
                target,
                pending,
                self.config.clone(),
                token.clone(),
            ));
        }
        tracker.close();
        SyncHandle { tracker }
    }
}

async fn worker(
    target: Arc<dyn SyncTarget>,
    mut rx: mpsc::Receiver<SharedDelta>,
    token: CancellationToken,
) {
    loop {
        let delta = tokio::select! {
            _ = token.cancelled() => return,
            d = rx.recv() => match d { Some(d) => d, None => return },
        };
        target.apply(delta).await;
    }
}

fn shard(hasher: &foldhash::fast::FixedState, id: &str, n: usize) -> usize {
    (hasher.hash_one(id) % n as u64) as usize
}

async fn reader(
    target: Arc<dyn SyncTarget>,
    senders: Vec<mpsc::Sender<SharedDelta>>,
    pending: Arc<Pending>,
    config: SyncConfig,
    token: CancellationToken,
) {
    let store = target.store();
    let section = target.section().clone();
    let hasher = foldhash::fast::FixedState::default();
    let mut backoff = config.resubscribe_min;
    let mut first = true;
    loop {
        let subscribed = tokio::select! {
            _ = token.cancelled() => return,
            s = store.subscribe(&section) => s,
        };
        match subscribed {
            Ok(mut sub) => {
                backoff = config.resubscribe_min;
                // Whatever was committed while we were not listening is found by comparing.
                pending.request(if first {
                    RepairReason::AntiEntropy
                } else {
                    RepairReason::Reconnect
                });
                first = false;
                loop {
                    let item = tokio::select! {
                        _ = token.cancelled() => return,
                        item = sub.next() => item,
                    };
                    match item {
                        None => break,
                        Some(Ok(SubscriptionEvent::Delta(delta))) => {
                            let tx = &senders[shard(&hasher, delta.key.id(), senders.len())];
                            tokio::select! {
                                _ = token.cancelled() => return,
                                sent = tx.send(delta) => if sent.is_err() { return },
                            }
                        }
                        Some(Ok(SubscriptionEvent::Lagged { missed })) => {
                            tracing::warn!(%section, missed, "subscription lagged");
                            pending.request(RepairReason::Lagged);
                        }
                        Some(Err(e)) => target.malformed(&e),
                    }
                }
                tracing::warn!(%section, "subscription lost; re-subscribing");
            }
            Err(e) => target.sync_error(None, format!("subscribe to {section} failed: {e}")),
        }
        tokio::select! {
            _ = token.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(config.resubscribe_max);
    }
}

async fn maintenance(
    target: Arc<dyn SyncTarget>,
    pending: Arc<Pending>,
    config: SyncConfig,
    token: CancellationToken,
) {
    let start = tokio::time::Instant::now();
    let mut anti_entropy = tokio::time::interval_at(
        start + config.anti_entropy_interval,
        config.anti_entropy_interval,
    );
    let mut flush = tokio::time::interval_at(start + config.flush_interval, config.flush_interval);
    anti_entropy.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let reason = tokio::select! {
            _ = token.cancelled() => return,
            _ = anti_entropy.tick() => RepairReason::AntiEntropy,
            _ = pending.notify.notified() => match pending.take() {
                Some(r) => r,
                None => continue,
            },
            _ = flush.tick() => {
                target.flush_idle(config.max_idle);
                continue;
            }
        };
        let pass = tokio::select! {
            _ = token.cancelled() => return,
            r = target.anti_entropy(reason) => r,
        };
        if let Err(e) = pass {
            target.sync_error(Some(reason), format!("anti-entropy pass failed: {e}"));
        }
    }
}
