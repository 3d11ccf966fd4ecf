//! [`DataManager`]: a typed, cached, optimistically-concurrent view of one section's documents.

mod cache;
mod events;
mod locks;

use std::fmt;
use std::future::Future;
use std::ops::Deref;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use compact_str::CompactString;
use rand::Rng;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};
use tokio::sync::broadcast;
use tokio::time::Instant;

use crate::delta::{Delta, DeltaKind, Patch, SharedDelta};
use crate::error::{Error, Result};
use crate::key::{Key, SectionId};
use crate::patch;
use crate::store::{Changes, Commit, CommitOutcome, MembersError, Snapshot, Store};
use crate::version::{Stamp, Version};

use cache::DocCache;
use events::Counters;
pub use events::{
    ChangeCause, ChangeEvent, EventItem, EventStream, ManagerStats, Missed, RepairCounts,
    RepairReason, SyncErrorEvent,
};
use locks::KeyLocks;

/// A type a [`DataManager`] can hold: it must serialize to a JSON object.
///
/// `empty` is the original's `CreateEmpty`: the value an [`DataManager::update`] of a missing key
/// starts from and what [`DataManager::get_or_default`] returns. The default says "no empty
/// value", so updating a missing key is [`Error::NotFound`].
///
/// # Examples
///
/// ```
/// use electric_core::{manager::Document, Key};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Clone, Default, Serialize, Deserialize)]
/// struct Position { qty: f64 }
///
/// impl Document for Position {
///     fn empty(_key: &Key) -> Option<Self> { Some(Self::default()) }
/// }
/// ```
pub trait Document: Serialize + DeserializeOwned + Clone + Send + Sync + 'static {
    /// The value a missing document starts from, if any.
    fn empty(key: &Key) -> Option<Self> {
        let _ = key;
        None
    }
}

impl Document for Map<String, Value> {
    fn empty(_key: &Key) -> Option<Self> {
        Some(Map::new())
    }
}

// `repr(C)` keeps `touched` next to the `Arc` counters, so a cache hit touches one cache line
// of the entry rather than two.
#[repr(C)]
struct Entry<T> {
    /// Coarse clock reading of the last access, for idle flushing and eviction.
    touched: AtomicU64,
    stamp: Option<Stamp>,
    change_time: u64,
    /// The value's compact JSON size in bytes, as last known: counted after an update or a
    /// snapshot delta, summed from the stored member texts after a load, estimated from the
    /// operations after a patch delta. It weighs the document's kept JSON tree.
    json_len: u32,
    value: T,
}

/// The slot for a document's kept JSON tree. Only the holder of the key's lock takes or fills
/// it; the slot stays in the tree cache while its tree is out, so the cache's admission and
/// eviction see one steady entry per hot key.
struct TreeSlot {
    /// Estimated bytes of the tree, fixed when the slot is made (see [`TREE_BYTES_PER_JSON_BYTE`]).
    weight: u32,
    tree: Mutex<Option<Tree>>,
}

/// How much memory a `serde_json::Value` tree takes per byte of its compact JSON text: 10.1 for
/// the order book (`cargo bench -p electric-core --bench footprint`); used to weigh kept trees.
const TREE_BYTES_PER_JSON_BYTE: u32 = 10;

/// A document's JSON tree at one stamp, kept so the next change need not rebuild it.
struct Tree {
    stamp: Stamp,
    /// Whether the tree is exactly the cached value serialized (it was built from it). A tree
    /// patched by a remote delta may also hold members the type does not know; diffing a local
    /// update against such a tree would remove them, so updates only use exact trees.
    exact: bool,
    doc: Map<String, Value>,
}

/// An immutable snapshot of a document: the value plus the stamp it was read at. Cheap to clone;
/// nothing the holder sees changes under it.
pub struct Doc<T> {
    entry: Arc<Entry<T>>,
}

impl<T> Clone for Doc<T> {
    fn clone(&self) -> Self {
        Doc {
            entry: self.entry.clone(),
        }
    }
}

impl<T> Deref for Doc<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.entry.value
    }
}

impl<T: fmt::Debug> fmt::Debug for Doc<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Doc")
            .field("stamp", &self.entry.stamp)
            .field("value", &self.entry.value)
            .finish()
    }
}

impl<T> Doc<T> {
    /// The value.
    pub fn value(&self) -> &T {
        &self.entry.value
    }

    /// Epoch and version, or `None` for an empty value of a key that does not exist yet.
    pub fn stamp(&self) -> Option<Stamp> {
        self.entry.stamp
    }

    /// The version (0 for a key that does not exist yet).
    pub fn version(&self) -> Version {
        self.entry.stamp.map_or(0, |s| s.version)
    }

    /// Change time of the version, milliseconds since the Unix epoch (0 if none).
    pub fn change_time(&self) -> u64 {
        self.entry.change_time
    }
}

/// The future of [`DataManager::get`]: ready at once on a cache hit (no allocation, nothing
/// to copy), a boxed load on a miss.
#[must_use = "futures do nothing unless polled"]
pub struct Get<'a, T>(GetState<'a, T>);

enum GetState<'a, T> {
    Hit(Option<Doc<T>>),
    Miss(futures_util::future::BoxFuture<'a, Result<Option<Doc<T>>>>),
}

impl<T> Future for Get<'_, T> {
    type Output = Result<Option<Doc<T>>>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.get_mut().0 {
            GetState::Hit(doc) => Poll::Ready(Ok(doc.take())),
            GetState::Miss(fut) => fut.as_mut().poll(cx),
        }
    }
}

impl<T> fmt::Debug for Get<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.0 {
            GetState::Hit(_) => "Get(hit)",
            GetState::Miss(_) => "Get(loading)",
        })
    }
}

/// What [`DataManager::update`] did.
#[derive(Clone, Debug)]
#[must_use]
pub enum UpdateOutcome {
    /// The change was committed as `delta`.
    Changed {
        /// The version written.
        version: Version,
        /// The committed delta.
        delta: SharedDelta,
    },
    /// The closure changed nothing; nothing was written.
    Unchanged {
        /// The current version.
        version: Version,
    },
}

impl UpdateOutcome {
    /// The version the document is at after the update.
    pub fn version(&self) -> Version {
        match self {
            UpdateOutcome::Changed { version, .. } | UpdateOutcome::Unchanged { version } => {
                *version
            }
        }
    }
}

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
    /// 128 MiB; 0 keeps none). With the tree at hand the next update diffs against it instead of
    /// serializing the cached value again, and the next delta patches it in place. A tree is
    /// weighed at ten times the document's JSON size, as measured for the 3.5 KB order book
    /// (about 36 KB a tree, so the default holds about 3,700 of them). When full, the cache
    /// (moka: frequency-based admission, LRU eviction) keeps the most used; a document without a
    /// kept tree has one rebuilt from the typed value when needed.
    pub json_cache_bytes: u64,
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
            json_cache_bytes: 128 << 20,
        }
    }
}

/// Builder for [`DataManager`]; see [`ManagerConfig`] for each setting.
pub struct DataManagerBuilder<T> {
    store: Arc<dyn Store>,
    section: Result<SectionId>,
    origin: Option<String>,
    config: ManagerConfig,
    _t: std::marker::PhantomData<fn() -> T>,
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

/// A coarse clock: hits read an atomic instead of the system clock; slow paths refresh it.
struct Clock {
    origin: Instant,
    millis: AtomicU64,
}

impl Clock {
    fn new() -> Self {
        Clock {
            origin: Instant::now(),
            millis: AtomicU64::new(0),
        }
    }

    fn now(&self) -> u64 {
        self.millis.load(Ordering::Relaxed)
    }

    fn refresh(&self) -> u64 {
        let now = self.origin.elapsed().as_millis() as u64;
        self.millis.fetch_max(now, Ordering::Relaxed).max(now)
    }
}

struct Inner<T> {
    store: Arc<dyn Store>,
    section: SectionId,
    origin: String,
    cache: DocCache<Entry<T>>,
    /// JSON trees of hot documents (`None` when turned off); see
    /// [`ManagerConfig::json_cache_bytes`]. moka's frequency-based admission keeps a steady
    /// set of trees when more documents are hot than fit, instead of churning through them.
    trees: Option<moka::sync::Cache<CompactString, Arc<TreeSlot>, foldhash::fast::RandomState>>,
    locks: KeyLocks,
    clock: Clock,
    events: broadcast::Sender<ChangeEvent>,
    sync_errors: broadcast::Sender<SyncErrorEvent>,
    counters: Counters,
    config: ManagerConfig,
}

/// Typed documents of one section: cached locally, written with optimistic concurrency, kept in
/// sync by a [`SyncService`](crate::sync::SyncService). Cheap to clone (an `Arc` inside).
///
/// # Examples
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use std::sync::Arc;
/// use electric_core::{manager::{DataManager, Document}, Key, MemoryStore};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Clone, Default, Serialize, Deserialize)]
/// struct Counter { n: u64 }
/// impl Document for Counter {
///     fn empty(_: &Key) -> Option<Self> { Some(Self::default()) }
/// }
///
/// let store = Arc::new(MemoryStore::new());
/// let counters = DataManager::<Counter>::builder(store, "demo", "counters").build().unwrap();
/// let outcome = counters.update("c1", |c| c.n += 1).await.unwrap();
/// assert_eq!(outcome.version(), 1);
/// assert_eq!(counters.get("c1").await.unwrap().unwrap().n, 1);
/// # });
/// ```
pub struct DataManager<T> {
    inner: Arc<Inner<T>>,
}

impl<T> Clone for DataManager<T> {
    fn clone(&self) -> Self {
        DataManager {
            inner: self.inner.clone(),
        }
    }
}

impl<T> fmt::Debug for DataManager<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DataManager")
            .field("section", &self.inner.section)
            .field("origin", &self.inner.origin)
            .finish_non_exhaustive()
    }
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The top-level member an operation path touches, unescaped; `None` for the root.
fn top_member(path: &json_patch::jsonptr::Pointer) -> Option<String> {
    path.first().map(|t| t.decoded().into_owned())
}

impl<T: Document> DataManager<T> {
    /// Starts building a manager for `partition`/`section` on `store`.
    pub fn builder(
        store: Arc<dyn Store>,
        partition: impl Into<String>,
        section: impl Into<String>,
    ) -> DataManagerBuilder<T> {
        DataManagerBuilder {
            store,
            section: SectionId::new(partition, section),
            origin: None,
            config: ManagerConfig::default(),
            _t: std::marker::PhantomData,
        }
    }

    /// The section this manager serves.
    pub fn section(&self) -> &SectionId {
        &self.inner.section
    }

    /// The origin written into this manager's deltas.
    pub fn origin(&self) -> &str {
        &self.inner.origin
    }

    /// The store behind this manager.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// The key of document `id` in this manager's section.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidKey`] for an invalid id.
    pub fn key(&self, id: &str) -> Result<Key> {
        self.inner.section.key(id)
    }

    /// The cached document, without touching the store. Lock-free.
    #[inline]
    pub fn cached(&self, id: &str) -> Option<Doc<T>> {
        let entry = self.inner.cache.get(id)?;
        let now = self.inner.clock.now();
        if entry.touched.load(Ordering::Relaxed) != now {
            entry.touched.store(now, Ordering::Relaxed);
        }
        Some(Doc { entry })
    }

    /// The document, from the cache (lock-free) or, on a miss, loaded once from the store however
    /// many callers wait for it. `None` if it does not exist.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidKey`] for a bad id; store errors; [`Error::Serde`] when the stored document
    /// does not deserialize into `T`.
    #[inline]
    pub fn get<'a>(&'a self, id: &'a str) -> Get<'a, T> {
        match self.cached(id) {
            Some(doc) => Get(GetState::Hit(Some(doc))),
            None => Get(GetState::Miss(Box::pin(self.get_miss(id)))),
        }
    }

    async fn get_miss(&self, id: &str) -> Result<Option<Doc<T>>> {
        let key = self.key(id)?;
        let _guard = self.inner.locks.lock(id).await;
        if let Some(doc) = self.cached(id) {
            return Ok(Some(doc));
        }
        self.load_locked(&key).await
    }

    /// The document, or `T::empty` (the original's `CreateEmpty`) if it does not exist. The empty
    /// value is not cached or written.
    ///
    /// # Errors
    ///
    /// As [`get`](Self::get), plus [`Error::NotFound`] when the type has no empty value.
    pub async fn get_or_default(&self, id: &str) -> Result<Doc<T>> {
        if let Some(doc) = self.get(id).await? {
            return Ok(doc);
        }
        let key = self.key(id)?;
        let value = T::empty(&key).ok_or(Error::NotFound { key })?;
        Ok(Doc {
            entry: Arc::new(Entry {
                value,
                stamp: None,
                change_time: 0,
                json_len: 0,
                touched: AtomicU64::new(0),
            }),
        })
    }

    /// The document at `version` or later: read-your-writes for a version this or another process
    /// committed. Answers from the cache when it is recent enough, otherwise catches up from the
    /// store.
    ///
    /// # Errors
    ///
    /// [`Error::VersionUnavailable`] if the store itself is older (or the key is gone:
    /// [`Error::NotFound`]); otherwise as [`get`](Self::get).
    pub async fn get_at_least(&self, id: &str, version: Version) -> Result<Doc<T>> {
        if let Some(doc) = self.cached(id).filter(|d| d.version() >= version) {
            return Ok(doc);
        }
        let key = self.key(id)?;
        let _guard = self.inner.locks.lock(id).await;
        let doc = match self.cached(id) {
            Some(d) if d.version() >= version => return Ok(d),
            Some(d) => {
                self.catch_up_locked(&key, &d, RepairReason::Gap, None, false)
                    .await?;
                self.cached(id)
            }
            None => self.load_locked(&key).await?,
        };
        match doc {
            Some(d) if d.version() >= version => Ok(d),
            Some(d) => Err(Error::VersionUnavailable {
                key,
                wanted: version,
                available: d.version(),
            }),
            None => Err(Error::NotFound { key }),
        }
    }

    /// Changes document `id` with `f`, run on a copy of the current value (or `T::empty` for a
    /// missing key), and commits the difference against the version it started from.
    ///
    /// When another writer committed first, the manager refreshes and runs `f` again, up to
    /// [`ManagerConfig::max_attempts`] times with jittered exponential backoff (the key's local
    /// lock is released while backing off). Local writers of one key are serialised first, so
    /// they never conflict with each other.
    ///
    /// # Errors
    ///
    /// [`Error::Conflict`] when every attempt lost; [`Error::NotFound`] for a missing key whose
    /// type has no empty value; [`Error::NotAnObject`] / [`Error::Serde`] when `T` does not
    /// serialize to a JSON object; [`Error::DocumentTooLarge`]; store errors. A store error
    /// during the commit itself is returned, not retried: the commit may or may not have
    /// happened, and re-running the closure could apply it twice.
    pub async fn update<F>(&self, id: &str, mut f: F) -> Result<UpdateOutcome>
    where
        F: FnMut(&mut T),
    {
        let key = self.key(id)?;
        let inner = &self.inner;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let guard = inner.locks.lock(id).await;
            // A retry starts from the store's state as of now, not as of before the backoff.
            let current = match self.cached(id) {
                Some(d) if attempt == 1 => Some(d),
                _ => self.load_locked(&key).await?,
            };
            let expected = current.as_ref().and_then(Doc::stamp);
            let (mut tree, mut value) = match &current {
                Some(d) => {
                    let kept = self.take_tree(id, expected, true);
                    let old = match kept {
                        Some(tree) => tree,
                        None => self.to_object(&key, d.value())?,
                    };
                    (old, d.value().clone())
                }
                None => (
                    Map::new(),
                    T::empty(&key).ok_or_else(|| Error::NotFound { key: key.clone() })?,
                ),
            };
            f(&mut value);
            // The new value is serialized against the old tree, which becomes the new tree.
            let mut ops = Vec::new();
            let new_json = match patch::diff_into(&mut tree, &value, &mut ops) {
                Ok(()) => tree,
                Err(_) => {
                    // Something `diff_into` leaves to serde_json (or an error it reports):
                    // rebuild both trees and diff them.
                    let old = match &current {
                        Some(d) => self.to_object(&key, d.value())?,
                        None => Map::new(),
                    };
                    let new = self.to_object(&key, &value)?;
                    let (old, new) = (Value::Object(old), Value::Object(new));
                    ops = patch::diff(&old, &new).0;
                    let Value::Object(new) = new else {
                        unreachable!("built from a map");
                    };
                    new
                }
            };
            let ops = Patch(ops);
            if ops.0.is_empty() {
                Counters::bump(&inner.counters.unchanged);
                if let (Some(stamp), Some(d)) = (expected, &current) {
                    self.keep_tree(id, stamp, new_json, true, d.entry.json_len);
                }
                return Ok(UpdateOutcome::Unchanged {
                    version: expected.map_or(0, |s| s.version),
                });
            }
            let (commit, json_len) = self.build_commit(&key, expected, &new_json, ops)?;
            let json_len = u32::try_from(json_len).unwrap_or(u32::MAX);
            match inner.store.commit(commit).await? {
                CommitOutcome::Committed(delta) => {
                    Counters::bump(&inner.counters.committed);
                    self.keep_tree(id, delta.stamp(), new_json, true, json_len);
                    self.put(
                        id,
                        Entry {
                            value,
                            stamp: Some(delta.stamp()),
                            change_time: delta.change_time,
                            json_len,
                            touched: AtomicU64::new(inner.clock.refresh()),
                        },
                    );
                    self.emit(&delta.key, Some(delta.stamp()), || {
                        ChangeCause::Local(delta.clone())
                    });
                    return Ok(UpdateOutcome::Changed {
                        version: delta.version,
                        delta,
                    });
                }
                CommitOutcome::Conflict { actual } => {
                    Counters::bump(&inner.counters.conflicts);
                    if attempt >= inner.config.max_attempts {
                        // Leave the cache at the store's state for whoever reads next.
                        self.load_locked(&key).await?;
                        return Err(Error::Conflict {
                            key,
                            expected,
                            actual,
                        });
                    }
                    drop(guard);
                    tokio::time::sleep(self.backoff(attempt)).await;
                }
            }
        }
    }

    /// The commit turning `old` into `new`: a patch writing only the members `ops` touch, or a
    /// snapshot writing them all when the key is new, the root is replaced or the patch is larger
    /// than [`ManagerConfig::snapshot_ratio`] of the document. Members are serialized once, and
    /// the document's size is counted alongside without building its text.
    fn build_commit(
        &self,
        key: &Key,
        expected: Option<Stamp>,
        new: &Map<String, Value>,
        ops: Patch,
    ) -> Result<(Commit, usize)> {
        let config = &self.inner.config;
        let text = |v: &Value| serde_json::value::to_raw_value(v).map_err(|e| Error::serde(key, e));
        let mut names: Vec<String> = ops
            .0
            .iter()
            .filter_map(|op| top_member(op.path()))
            .collect();
        names.sort_unstable();
        names.dedup();
        // Members the patch removes (a removed member always has an operation of its own).
        let removed: Vec<String> = names
            .iter()
            .filter(|n| !new.contains_key(*n))
            .cloned()
            .collect();
        // `{`, `}` and the commas between members, then each `"name":value`.
        let mut size = 2 + new.len().saturating_sub(1);
        let mut fields = Vec::with_capacity(names.len());
        for (name, value) in new {
            size += patch::str_json_len(name) + 1;
            if names.binary_search(name).is_ok() {
                let t = text(value)?;
                size += t.get().len();
                fields.push((name.clone(), Some(t)));
            } else {
                size += patch::json_size(value);
            }
        }
        if size > config.max_document_bytes {
            return Err(Error::DocumentTooLarge {
                key: key.clone(),
                size,
                limit: config.max_document_bytes,
            });
        }
        let snapshot = expected.is_none()
            || ops.0.iter().any(|op| op.path().is_root())
            || patch::patch_size(&ops) as f64 > config.snapshot_ratio * size as f64;
        let (kind, ops) = if snapshot {
            let mut written = std::mem::take(&mut fields).into_iter().peekable();
            for (name, value) in new {
                match written.next_if(|(n, _)| n == name) {
                    Some(field) => fields.push(field),
                    None => fields.push((name.clone(), Some(text(value)?))),
                }
            }
            fields.extend(removed.into_iter().map(|n| (n, None)));
            (
                DeltaKind::Snapshot,
                Delta::snapshot_ops(Value::Object(new.clone())),
            )
        } else {
            fields.extend(removed.into_iter().map(|n| (n, None)));
            (DeltaKind::Patch, ops)
        };
        let commit = Commit {
            key: key.clone(),
            expected,
            fields,
            kind,
            ops,
            origin: self.inner.origin.clone(),
            ttl: config.ttl,
        };
        Ok((commit, size))
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let c = &self.inner.config;
        let exp = c
            .backoff_base
            .saturating_mul(1u32 << attempt.min(16).saturating_sub(1))
            .min(c.backoff_max);
        let nanos = exp.as_nanos().min(u64::MAX as u128) as u64;
        Duration::from_nanos(rand::thread_rng().gen_range(0..=nanos))
    }

    /// Deletes the document in the store and the cache. Returns whether it existed.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidKey`]; store errors.
    pub async fn delete(&self, id: &str) -> Result<bool> {
        let key = self.key(id)?;
        let _guard = self.inner.locks.lock(id).await;
        let existed = self.inner.store.delete(&key, &self.inner.origin).await?;
        if self.forget(id) || existed {
            self.emit(&key, None, || ChangeCause::Deleted);
        }
        Ok(existed)
    }

    /// Drops document `id` from the local cache (the next read loads it). Returns whether it was
    /// cached.
    pub fn remove_from_cache(&self, id: &str) -> bool {
        self.forget(id)
    }

    /// Drops every cached document not read or written for `max_idle` (the original's data
    /// flush). Returns how many were dropped.
    pub fn flush_idle(&self, max_idle: Duration) -> usize {
        let now = self.inner.clock.refresh();
        let limit = max_idle.as_millis() as u64;
        let flushed = self.inner.cache.retain(|id, e| {
            let keep = now.saturating_sub(e.touched.load(Ordering::Relaxed)) <= limit;
            if !keep {
                self.forget_tree(id);
            }
            keep
        });
        self.inner
            .counters
            .flushed
            .fetch_add(flushed as u64, Ordering::Relaxed);
        flushed
    }

    /// Ids and stamps of every cached document.
    pub fn cached_stamps(&self) -> Vec<(String, Option<Stamp>)> {
        self.inner
            .cache
            .entries()
            .into_iter()
            .map(|(k, e)| (k.to_string(), e.stamp))
            .collect()
    }

    /// A stream of changes to cached documents: local commits, applied remote deltas, repairs
    /// and deletes. Bounded; see [`EventStream`].
    pub fn changes(&self) -> EventStream<ChangeEvent> {
        EventStream::new(self.inner.events.subscribe())
    }

    /// A stream of sync errors (deltas that could not be applied, repairs that failed). Bounded;
    /// see [`EventStream`].
    pub fn sync_errors(&self) -> EventStream<SyncErrorEvent> {
        EventStream::new(self.inner.sync_errors.subscribe())
    }

    /// The manager's counters.
    pub fn stats(&self) -> ManagerStats {
        self.inner
            .counters
            .snapshot(self.inner.cache.len(), self.tree_count())
    }

    // ---- internals -------------------------------------------------------------------------

    fn to_object(&self, key: &Key, value: &T) -> Result<Map<String, Value>> {
        match serde_json::to_value(value).map_err(|e| Error::serde(key, e))? {
            Value::Object(m) => Ok(m),
            other => Err(Error::NotAnObject {
                key: key.clone(),
                found: json_type(&other),
            }),
        }
    }

    /// Deserializes a loaded document straight from its member texts. Text that cannot be
    /// parsed ([`MembersError::is_syntax`]: not JSON, or a number or nesting serde_json cannot
    /// represent) is [`Error::Malformed`]; JSON that does not fit `T` is [`Error::Serde`].
    fn to_typed(&self, key: &Key, doc: &crate::store::Members) -> Result<T> {
        doc.deserialize().map_err(|e: MembersError| {
            if e.is_syntax() {
                Error::Malformed {
                    what: "document",
                    reason: format!("{key}: {e}"),
                }
            } else {
                Error::serde(key, e)
            }
        })
    }

    /// Takes the kept JSON tree of `id` if it is at `stamp` (and, with `exact`, is exactly the
    /// cached value serialized). A kept tree at another stamp is dropped. Caller holds the key
    /// lock.
    fn take_tree(&self, id: &str, stamp: Option<Stamp>, exact: bool) -> Option<Map<String, Value>> {
        let slot = self.inner.trees.as_ref()?.get(id)?;
        let tree = slot
            .tree
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()?;
        (Some(tree.stamp) == stamp && (tree.exact || !exact)).then_some(tree.doc)
    }

    /// Keeps `doc` as the JSON tree of `id` at `stamp`, within
    /// [`ManagerConfig::json_cache_bytes`]. Caller holds the key lock.
    /// `json_len` (the document's JSON size) weighs a new slot.
    fn keep_tree(
        &self,
        id: &str,
        stamp: Stamp,
        doc: Map<String, Value>,
        exact: bool,
        json_len: u32,
    ) {
        let Some(trees) = &self.inner.trees else {
            return;
        };
        let tree = Some(Tree { stamp, exact, doc });
        let weight = json_len.saturating_mul(TREE_BYTES_PER_JSON_BYTE).max(1);
        match trees.get(id) {
            // Reuse the slot while its weight is within a factor of two of the tree's.
            Some(slot) if weight / 2 <= slot.weight && slot.weight / 2 <= weight => {
                *slot.tree.lock().unwrap_or_else(PoisonError::into_inner) = tree;
            }
            // A new slot, or one re-weighed because the document grew or shrank.
            _ => trees.insert(
                id.into(),
                Arc::new(TreeSlot {
                    weight,
                    tree: Mutex::new(tree),
                }),
            ),
        }
    }

    /// How many tree slots are held (after the cache's pending evictions have run).
    fn tree_count(&self) -> usize {
        self.inner.trees.as_ref().map_or(0, |t| {
            t.run_pending_tasks();
            t.entry_count() as usize
        })
    }

    /// Drops `id` from the cache and its tree; whether it was cached.
    fn forget(&self, id: &str) -> bool {
        self.forget_tree(id);
        self.inner.cache.remove(id)
    }

    fn forget_tree(&self, id: &str) {
        if let Some(trees) = &self.inner.trees {
            trees.invalidate(id);
        }
    }

    fn emit(&self, key: &Key, stamp: Option<Stamp>, cause: impl FnOnce() -> ChangeCause) {
        if self.inner.events.receiver_count() > 0 {
            let _ = self.inner.events.send(ChangeEvent {
                key: key.clone(),
                stamp,
                cause: cause(),
            });
        }
    }

    pub(crate) fn report_sync_error(
        &self,
        key: Option<&Key>,
        reason: Option<RepairReason>,
        detail: String,
    ) {
        Counters::bump(&self.inner.counters.sync_errors);
        tracing::warn!(key = ?key, reason = ?reason, %detail, "sync error");
        let _ = self.inner.sync_errors.send(SyncErrorEvent {
            key: key.cloned(),
            reason,
            detail,
        });
    }

    /// Caches `entry` under `id`, then evicts approximately-LRU entries (the least recently
    /// touched of a sample of 32, never `id` itself) while over capacity.
    fn put(&self, id: &str, entry: Entry<T>) -> Doc<T> {
        let entry = Arc::new(entry);
        self.inner.cache.insert_bounded(
            id,
            entry.clone(),
            self.inner.config.max_entries,
            |e| e.touched.load(Ordering::Relaxed),
            |victim| {
                Counters::bump(&self.inner.counters.evicted);
                self.forget_tree(victim);
            },
        );
        Doc { entry }
    }

    fn insert_snapshot(&self, key: &Key, snap: Snapshot) -> Result<Doc<T>> {
        let value = self.to_typed(key, &snap.doc)?;
        Ok(self.put(
            key.id(),
            Entry {
                value,
                stamp: Some(snap.stamp),
                change_time: snap.change_time,
                json_len: u32::try_from(snap.doc.json_len()).unwrap_or(u32::MAX),
                touched: AtomicU64::new(self.inner.clock.refresh()),
            },
        ))
    }

    /// Loads the snapshot into the cache (or drops the entry if the key is gone). Caller holds
    /// the key lock.
    async fn load_locked(&self, key: &Key) -> Result<Option<Doc<T>>> {
        Counters::bump(&self.inner.counters.loads);
        match self.inner.store.load(key).await? {
            Some(snap) => match self.insert_snapshot(key, snap) {
                Ok(doc) => Ok(Some(doc)),
                Err(e) => {
                    // Never leave a stale value behind a document we cannot read.
                    self.forget(key.id());
                    Err(e)
                }
            },
            None => {
                self.forget(key.id());
                Ok(None)
            }
        }
    }

    /// Reloads after `reason`, counting the repair and reporting failures.
    async fn reload_locked(&self, key: &Key, reason: RepairReason) -> Result<()> {
        match self.load_locked(key).await {
            Ok(doc) => {
                self.inner.counters.repaired(reason);
                match doc {
                    Some(d) => self.emit(key, d.stamp(), || ChangeCause::Repaired(reason)),
                    None => self.emit(key, None, || ChangeCause::Deleted),
                }
                Ok(())
            }
            Err(e) => {
                self.report_sync_error(Some(key), Some(reason), e.to_string());
                Err(e)
            }
        }
    }

    /// Applies `delta` on top of `doc`: patches the kept JSON tree in place (or one built from
    /// the cached value) and deserializes the result. Returns the value, the patched tree and
    /// the document's JSON size: exact for a snapshot, otherwise the last known size adjusted by
    /// the delta (`patch::apply_sized`).
    fn apply_to(&self, doc: &Doc<T>, delta: &Delta) -> Result<(T, Map<String, Value>, u32)> {
        let key = &delta.key;
        let tree = match self.take_tree(key.id(), doc.stamp(), false) {
            Some(tree) => tree,
            None => self.to_object(key, doc.value())?,
        };
        let mut json = Value::Object(tree);
        // A snapshot is sized exactly, which also resets any drift of the estimates.
        let json_len = if delta.kind == DeltaKind::Snapshot {
            patch::apply(&mut json, &delta.ops)?;
            patch::json_size(&json) as i64
        } else {
            i64::from(doc.entry.json_len) + patch::apply_sized(&mut json, &delta.ops)?
        };
        let json_len = json_len.clamp(2, i64::from(u32::MAX)) as u32;
        let Value::Object(tree) = json else {
            return Err(Error::NotAnObject {
                key: key.clone(),
                found: json_type(&json),
            });
        };
        // Read through a reference so the tree can be kept.
        let value = T::deserialize(&tree).map_err(|e| Error::serde(key, e))?;
        Ok((value, tree, json_len))
    }

    fn install(
        &self,
        delta: &Delta,
        (value, tree, json_len): (T, Map<String, Value>, u32),
    ) -> Doc<T> {
        self.keep_tree(delta.key.id(), delta.stamp(), tree, false, json_len);
        self.put(
            delta.key.id(),
            Entry {
                value,
                stamp: Some(delta.stamp()),
                change_time: delta.change_time,
                json_len,
                touched: AtomicU64::new(self.inner.clock.now()),
            },
        )
    }

    /// Applies a chain of deltas after `doc`'s version; `false` if the chain is broken or a delta
    /// does not apply (the caller reloads). Caller holds the key lock.
    fn apply_chain(&self, mut doc: Doc<T>, deltas: &[SharedDelta]) -> (bool, bool) {
        let mut changed = false;
        for d in deltas {
            let cur = doc.version();
            if d.version <= cur {
                continue;
            }
            match d.kind {
                DeltaKind::Delete => {
                    self.forget(d.key.id());
                    return (true, true);
                }
                DeltaKind::Snapshot => {}
                DeltaKind::Patch if d.base == cur => {}
                DeltaKind::Patch => return (false, changed),
            }
            match self.apply_to(&doc, d) {
                Ok(v) => {
                    doc = self.install(d, v);
                    changed = true;
                }
                Err(_) => return (false, changed),
            }
        }
        (true, changed)
    }

    /// Brings `doc` up to date from the change log, falling back to the snapshot. `trigger` is
    /// what found the difference; the repair is counted under it, except that a gap repair that
    /// had to reload is counted as `trimmed` or `epoch`. With `target`, the result must reach that
    /// stamp or the snapshot is reloaded. Caller holds the key lock.
    async fn catch_up_locked(
        &self,
        key: &Key,
        doc: &Doc<T>,
        trigger: RepairReason,
        target: Option<Option<Stamp>>,
        count_gap: bool,
    ) -> Result<bool> {
        let Some(stamp) = doc.stamp() else {
            return Ok(false);
        };
        let fallback = |r: RepairReason| {
            if trigger == RepairReason::Gap {
                r
            } else {
                trigger
            }
        };
        let changes = match self.inner.store.changes_since(key, stamp.version).await {
            Ok(c) => c,
            Err(e) => {
                self.report_sync_error(Some(key), Some(trigger), e.to_string());
                return Err(e);
            }
        };
        match changes {
            Changes::Missing => {
                self.forget(key.id());
                self.inner.counters.repaired(trigger);
                self.emit(key, None, || ChangeCause::Deleted);
                Ok(true)
            }
            Changes::Trimmed { .. } => self
                .reload_locked(key, fallback(RepairReason::Trimmed))
                .await
                .map(|_| true),
            Changes::Deltas { epoch, .. } if epoch != stamp.epoch => self
                .reload_locked(key, fallback(RepairReason::Epoch))
                .await
                .map(|_| true),
            Changes::Deltas { deltas, .. } => {
                let (ok, changed) = self.apply_chain(doc.clone(), &deltas);
                let reached = self.cached(key.id()).and_then(|d| d.stamp());
                if !ok || target.is_some_and(|t| t != reached) {
                    let reason = if ok {
                        trigger
                    } else {
                        fallback(RepairReason::ApplyFailed)
                    };
                    return self.reload_locked(key, reason).await.map(|_| true);
                }
                if changed && (count_gap || trigger != RepairReason::Gap) {
                    self.inner.counters.repaired(trigger);
                    self.emit(key, reached, || ChangeCause::Repaired(trigger));
                }
                Ok(changed)
            }
        }
    }

    /// Applies one delta from the section's channel: ignore what the cache already has, patch
    /// what follows directly, repair gaps from the log and reload on a new epoch or a delta that
    /// does not apply. Errors are reported on [`sync_errors`](Self::sync_errors).
    pub async fn apply_remote(&self, delta: SharedDelta) {
        if !delta.key.in_section(&self.inner.section) {
            return;
        }
        let id = delta.key.id();
        // A key nobody has cached or is loading needs nothing: a load that starts later reads a
        // store that already holds this delta.
        if self.cached(id).is_none() && !self.inner.locks.is_busy(id) {
            Counters::bump(&self.inner.counters.ignored_cold);
            return;
        }
        let _guard = self.inner.locks.lock(id).await;
        let Some(doc) = self.cached(id) else {
            Counters::bump(&self.inner.counters.ignored_cold);
            return;
        };
        let Some(stamp) = doc.stamp() else { return };
        let c = &self.inner.counters;
        let same_epoch = delta.epoch == stamp.epoch;
        match delta.kind {
            DeltaKind::Delete if same_epoch && delta.version > stamp.version => {
                self.forget(id);
                Counters::bump(&c.applied);
                self.emit(&delta.key, None, || ChangeCause::Deleted);
            }
            DeltaKind::Delete => Counters::bump(&c.duplicates),
            _ if same_epoch && delta.version <= stamp.version => Counters::bump(&c.duplicates),
            DeltaKind::Patch if !same_epoch => {
                let _ = self.reload_locked(&delta.key, RepairReason::Epoch).await;
            }
            DeltaKind::Patch if delta.base > stamp.version => {
                let _ = self
                    .catch_up_locked(&delta.key, &doc, RepairReason::Gap, None, true)
                    .await;
            }
            DeltaKind::Patch | DeltaKind::Snapshot => match self.apply_to(&doc, &delta) {
                Ok(value) => {
                    self.install(&delta, value);
                    Counters::bump(&c.applied);
                    self.emit(&delta.key, Some(delta.stamp()), || {
                        ChangeCause::Remote(delta.clone())
                    });
                }
                Err(e) => {
                    self.report_sync_error(
                        Some(&delta.key),
                        Some(RepairReason::ApplyFailed),
                        format!("delta v{} does not apply: {e}", delta.version),
                    );
                    let _ = self
                        .reload_locked(&delta.key, RepairReason::ApplyFailed)
                        .await;
                }
            },
        }
    }

    /// Compares every cached version with the store in batches and repairs only the documents
    /// that differ, counting each under `reason`. Returns how many were repaired.
    ///
    /// # Errors
    ///
    /// Store errors from the version lookups (repairs of single keys report their own errors on
    /// the sync-error stream and do not stop the pass).
    pub async fn anti_entropy(&self, reason: RepairReason) -> Result<usize> {
        let entries = self.cached_stamps();
        let mut repaired = 0;
        for chunk in entries.chunks(self.inner.config.anti_entropy_batch) {
            let keys: Vec<Key> = chunk
                .iter()
                .filter_map(|(id, _)| self.inner.section.key(id.as_str()).ok())
                .collect();
            let actual = self.inner.store.stamps(&keys).await?;
            for ((key, (_, cached)), actual) in keys.iter().zip(chunk).zip(actual) {
                if *cached == actual {
                    continue;
                }
                let _guard = self.inner.locks.lock(key.id()).await;
                let Some(doc) = self.cached(key.id()) else {
                    continue;
                };
                if doc.stamp() == actual {
                    continue; // repaired by a delta meanwhile
                }
                if let Ok(true) = self
                    .catch_up_locked(key, &doc, reason, Some(actual), true)
                    .await
                {
                    repaired += 1;
                }
            }
        }
        Ok(repaired)
    }

    pub(crate) fn record_malformed(&self, err: &Error) {
        Counters::bump(&self.inner.counters.malformed);
        self.report_sync_error(
            None,
            None,
            format!("unreadable subscription message: {err}"),
        );
    }
}
