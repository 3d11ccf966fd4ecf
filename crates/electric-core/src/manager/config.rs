//! [`ManagerConfig`] and [`DataManagerBuilder`].

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast;

use super::cache::DocCache;
use super::events::Counters;
use super::locks::KeyLocks;
use super::trees::TreeSlot;
use super::{Clock, DataManager, Document, Inner};
use crate::error::{Error, Result};
use crate::key::SectionId;
use crate::store::Store;

/// Settings of a [`DataManager`] with their defaults.
#[derive(Clone, Debug)]
pub struct ManagerConfig {
    /// Most documents kept in the local cache (default 100,000). When full, an insert evicts an
    /// approximately least-recently-used entry (the oldest of a sample of 32) and counts it in
    /// [`ManagerStats::evicted`]; an evicted document is simply loaded again on the next read.
    pub max_entries: usize,
    /// Attempts of an update before [`Error::Conflict`] (default 10).
    pub max_attempts: u32,
    /// First backoff after a conflict; doubles each attempt, with full jitter (default 2 ms).
    pub backoff_base: Duration,
    /// Largest backoff after a conflict (default 200 ms).
    pub backoff_max: Duration,
    /// A patch larger than this share of the document is sent as a snapshot (default 0.5).
    pub snapshot_ratio: f64,
    /// Largest serialized document accepted by `update` (default 1 MiB); larger is
    /// [`Error::DocumentTooLarge`] and nothing is written.
    pub max_document_bytes: usize,
    /// When set, every commit (re)sets the key to expire this long after it.
    pub ttl: Option<Duration>,
    /// Events buffered per listener (default 1024); a slower listener loses the oldest and is
    /// told how many.
    pub event_capacity: usize,
    /// Keys per batched version lookup in anti-entropy (default 256).
    pub anti_entropy_batch: usize,
    /// Memory for the JSON trees kept after a local update or an applied delta (default
    /// 32 MiB; 0 keeps none). With the tree at hand the next update diffs against it instead of
    /// serializing the cached value again, and the next delta patches it in place. A tree is
    /// weighed at ten times the document's JSON size, as measured for the 3.5 KB order book
    /// (about 36 KB a tree, so the default holds about 900 of them). When full, the cache
    /// (moka: frequency-based admission, LRU eviction) keeps the most used; a document without a
    /// kept tree has one rebuilt from the typed value when needed (about 10 µs for the order
    /// book). The default keeps a manager holding 10,000 order books under three times their
    /// JSON size in memory (`cargo bench -p electric-core --bench rss`); raise it when more
    /// documents than that are written often.
    pub json_cache_bytes: u64,
    /// Compute, send and check content digests (default on; see [`crate::digest`]). Off, commits
    /// carry no digest, applied deltas are not checked and anti-entropy compares stamps only —
    /// what the library did before digests, kept for measuring their cost.
    pub digests: bool,
    /// How long `update` and `delete` keep asking the store what became of a write whose reply
    /// was lost (default 30 s), before giving up with
    /// [`Error::Indeterminate`](crate::Error::Indeterminate). A store outage shorter than this
    /// (less the store's own response timeout) costs a slow call, not an unknown outcome.
    pub resolve_deadline: Duration,
}

impl Default for ManagerConfig {
    fn default() -> Self {
        ManagerConfig {
            max_entries: 100_000,
            max_attempts: 10,
            backoff_base: Duration::from_millis(2),
            backoff_max: Duration::from_millis(200),
            snapshot_ratio: 0.5,
            max_document_bytes: 1 << 20,
            ttl: None,
            event_capacity: 1024,
            anti_entropy_batch: 256,
            json_cache_bytes: 32 << 20,
            digests: true,
            resolve_deadline: Duration::from_secs(30),
        }
    }
}

/// Builder for [`DataManager`]; see [`ManagerConfig`] for each setting.
pub struct DataManagerBuilder<T> {
    pub(super) store: Arc<dyn Store>,
    pub(super) section: Result<SectionId>,
    pub(super) origin: Option<String>,
    pub(super) config: ManagerConfig,
    pub(super) _t: std::marker::PhantomData<fn() -> T>,
}

impl<T: Document> DataManagerBuilder<T> {
    /// Sets all settings at once.
    pub fn config(mut self, config: ManagerConfig) -> Self {
        self.config = config;
        self
    }

    /// See [`ManagerConfig::max_entries`].
    pub fn max_entries(mut self, n: usize) -> Self {
        self.config.max_entries = n;
        self
    }

    /// See [`ManagerConfig::json_cache_bytes`].
    pub fn json_cache_bytes(mut self, n: u64) -> Self {
        self.config.json_cache_bytes = n;
        self
    }

    /// See [`ManagerConfig::resolve_deadline`].
    pub fn resolve_deadline(mut self, d: Duration) -> Self {
        self.config.resolve_deadline = d;
        self
    }

    /// See [`ManagerConfig::max_attempts`].
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.config.max_attempts = n;
        self
    }

    /// See [`ManagerConfig::snapshot_ratio`].
    pub fn snapshot_ratio(mut self, r: f64) -> Self {
        self.config.snapshot_ratio = r;
        self
    }

    /// See [`ManagerConfig::max_document_bytes`].
    pub fn max_document_bytes(mut self, n: usize) -> Self {
        self.config.max_document_bytes = n;
        self
    }

    /// See [`ManagerConfig::ttl`].
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.config.ttl = Some(ttl);
        self
    }

    /// The origin written into this manager's deltas (default: a random 16-hex-digit id).
    pub fn origin(mut self, origin: impl Into<String>) -> Self {
        self.origin = Some(origin.into());
        self
    }

    /// Validates the settings and builds the manager.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidKey`] for a bad partition or section, [`Error::InvalidConfig`] for a zero
    /// capacity or attempt count, or a snapshot ratio that is not a positive number.
    pub fn build(self) -> Result<DataManager<T>> {
        let section = self.section?;
        let c = &self.config;
        if c.max_entries == 0 || c.max_attempts == 0 || c.event_capacity == 0 {
            return Err(Error::InvalidConfig(
                "max_entries, max_attempts and event_capacity must be at least 1".into(),
            ));
        }
        if c.anti_entropy_batch == 0 || c.max_document_bytes == 0 {
            return Err(Error::InvalidConfig(
                "anti_entropy_batch and max_document_bytes must be at least 1".into(),
            ));
        }
        if c.resolve_deadline.is_zero() {
            return Err(Error::InvalidConfig(
                "resolve_deadline must be more than zero".into(),
            ));
        }
        if !(c.snapshot_ratio.is_finite() && c.snapshot_ratio > 0.0) {
            return Err(Error::InvalidConfig(format!(
                "snapshot_ratio must be a positive number, got {}",
                c.snapshot_ratio
            )));
        }
        let origin = self
            .origin
            .unwrap_or_else(|| format!("{:016x}", rand::random::<u64>()));
        Ok(DataManager {
            inner: Arc::new(Inner {
                store: self.store,
                section,
                origin,
                cache: DocCache::new(),
                trees: (c.json_cache_bytes > 0).then(|| {
                    moka::sync::Cache::builder()
                        .max_capacity(c.json_cache_bytes)
                        .weigher(|_, slot: &Arc<TreeSlot>| slot.weight)
                        .build_with_hasher(foldhash::fast::RandomState::default())
                }),
                locks: KeyLocks::default(),
                clock: Clock::new(),
                events: broadcast::channel(c.event_capacity).0,
                sync_errors: broadcast::channel(c.event_capacity).0,
                counters: Counters::default(),
                config: self.config,
            }),
        })
    }
}
