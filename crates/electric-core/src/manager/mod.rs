//! [`DataManager`]: a typed, cached, optimistically-concurrent view of one section's documents.
//!
//! One file per path through the manager:
//!
//! | file | path |
//! |---|---|
//! | `read.rs` | cache hits, single-flight loads, `get_at_least` |
//! | `write.rs` | `update` (closure, diff, commit, conflict retries), `delete` |
//! | `apply.rs` | deltas arriving on the section channel |
//! | `repair.rs` | catch-up from the change log, snapshot reloads, anti-entropy |
//! | `trees.rs` | the JSON trees kept for hot documents |
//! | `config.rs` | [`ManagerConfig`] and [`DataManagerBuilder`] |
//! | `cache.rs`, `locks.rs`, `events.rs` | the document map, per-key locks, events and counters |
//!
//! This file holds the types they share and the helpers more than one path uses.

mod apply;
mod cache;
mod config;
mod events;
mod locks;
mod read;
mod repair;
mod trees;
mod write;

use std::fmt;
use std::future::Future;
use std::ops::Deref;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use compact_str::CompactString;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};
use tokio::sync::broadcast;
use tokio::time::Instant;

use crate::delta::SharedDelta;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::key::{Key, SectionId};
use crate::store::{MembersError, Store};
use crate::version::{Stamp, Version};

use cache::DocCache;
use events::Counters;
pub use events::{
    ChangeCause, ChangeEvent, EventItem, EventStream, ManagerStats, Missed, RepairCounts,
    RepairReason, SyncErrorEvent,
};
use locks::KeyLocks;

pub use config::{DataManagerBuilder, ManagerConfig};
use trees::TreeSlot;

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
    /// The digest of this version: computed by this manager after an update or an applied
    /// delta, as the store reported it after a load (`None`: unknown).
    digest: Option<Digest>,
    value: T,
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

    // ---- internals shared by the paths ------------------------------------------------------

    fn to_object(&self, key: &Key, value: &T) -> Result<Map<String, Value>> {
        match serde_json::to_value(value).map_err(|e| Error::serde(key, e))? {
            Value::Object(m) => Ok(m),
            other => Err(Error::NotAnObject {
                key: key.clone(),
                found: json_type(&other),
            }),
        }
    }

    /// Deserializes a loaded document straight from its member texts. Anything the store holds
    /// that `T` cannot read — text that is not JSON, JSON of the wrong shape, a required member
    /// missing — is foreign data: [`Error::Malformed`], naming the key and, when one is to
    /// blame, the member.
    fn to_typed(&self, key: &Key, doc: &crate::store::Members) -> Result<T> {
        doc.deserialize()
            .map_err(|e: MembersError| Error::Malformed {
                what: "document",
                reason: format!("{key}: {e}"),
            })
    }

    /// Drops `id` from the cache and its tree; whether it was cached.
    fn forget(&self, id: &str) -> bool {
        self.forget_tree(id);
        self.inner.cache.remove(id)
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
}
