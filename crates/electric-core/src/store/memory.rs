//! [`MemoryStore`]: the embedded store, with the same semantics as the Redis one.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use serde_json::value::RawValue;
use tokio::sync::broadcast;
use tokio::time::Instant;

use super::{
    Changes, Commit, CommitOutcome, Members, Snapshot, Store, Subscription, SubscriptionEvent,
};
use crate::delta::{Delta, DeltaKind, Patch, SharedDelta};
use crate::error::{Error, Result};
use crate::key::{Key, SectionId};
use crate::version::{now_millis, Epoch, Stamp, Version};

/// Default number of deltas kept per key in the change log.
pub const DEFAULT_LOG_CAPACITY: usize = 1000;
/// Default number of deltas buffered per section channel for each subscriber.
pub const DEFAULT_CHANNEL_CAPACITY: usize = 4096;
/// Default maximum number of live documents.
pub const DEFAULT_MAX_DOCUMENTS: usize = 1_000_000;

/// A store held in process memory, shareable by any number of managers (clone it: clones share
/// the same data).
///
/// Bounds and what happens at them:
/// - each key's change log keeps the newest `log_capacity` deltas; older ones are dropped and
///   [`Store::changes_since`] reports [`Changes::Trimmed`];
/// - each section channel buffers `channel_capacity` deltas per subscriber; a subscriber that
///   falls further behind loses the oldest ones and receives [`SubscriptionEvent::Lagged`] with
///   the number lost, so it can resynchronise from the log;
/// - it holds at most `max_documents` live documents; a commit that would create one more fails
///   with [`Error::StoreFull`] and writes nothing (expired documents are swept first).
///
/// # Examples
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use electric_core::{Commit, CommitOutcome, DeltaKind, Key, MemoryStore, Patch, Store};
///
/// let store = MemoryStore::new();
/// let key = Key::new("p", "s", "x").unwrap();
/// let outcome = store
///     .commit(Commit {
///         key: key.clone(),
///         expected: None,
///         fields: vec![Commit::member("a", &1).unwrap()],
///         kind: DeltaKind::Patch,
///         ops: serde_json::from_str(r#"[{"op":"add","path":"/a","value":1}]"#).unwrap(),
///         origin: "doc".into(),
///         ttl: None,
///     })
///     .await
///     .unwrap();
/// assert!(matches!(outcome, CommitOutcome::Committed(d) if d.version == 1));
/// assert_eq!(store.load(&key).await.unwrap().unwrap().doc.get("a"), Some(&b"1"[..]));
/// # });
/// ```
#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

struct Inner {
    docs: Mutex<Docs>,
    channels: Mutex<HashMap<SectionId, broadcast::Sender<SharedDelta>>>,
    log_capacity: usize,
    channel_capacity: usize,
    max_documents: usize,
}

#[derive(Default)]
struct Docs {
    map: HashMap<Key, Doc>,
    commits_since_sweep: usize,
}

struct Doc {
    epoch: Epoch,
    version: Version,
    change_time: u64,
    /// Member texts by name (a `BTreeMap`, so loads list them in a stable order).
    fields: std::collections::BTreeMap<String, Box<RawValue>>,
    log: VecDeque<SharedDelta>,
    expires_at: Option<Instant>,
}

impl Doc {
    fn stamp(&self) -> Stamp {
        Stamp {
            epoch: self.epoch,
            version: self.version,
        }
    }

    fn expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|t| t <= now)
    }
}

/// Builder for [`MemoryStore`].
#[derive(Debug, Clone)]
pub struct MemoryStoreBuilder {
    log_capacity: usize,
    channel_capacity: usize,
    max_documents: usize,
}

impl MemoryStoreBuilder {
    /// Deltas kept per key (default [`DEFAULT_LOG_CAPACITY`]; at least 1).
    pub fn log_capacity(mut self, n: usize) -> Self {
        self.log_capacity = n;
        self
    }

    /// Deltas buffered per subscriber and section (default [`DEFAULT_CHANNEL_CAPACITY`]; at least 1).
    pub fn channel_capacity(mut self, n: usize) -> Self {
        self.channel_capacity = n;
        self
    }

    /// Most live documents held (default [`DEFAULT_MAX_DOCUMENTS`]; at least 1).
    pub fn max_documents(mut self, n: usize) -> Self {
        self.max_documents = n;
        self
    }

    /// Validates the settings and builds the store.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for a zero capacity.
    pub fn build(self) -> Result<MemoryStore> {
        if self.log_capacity == 0 || self.channel_capacity == 0 || self.max_documents == 0 {
            return Err(Error::InvalidConfig(
                "memory store capacities must be at least 1".into(),
            ));
        }
        Ok(MemoryStore {
            inner: Arc::new(Inner {
                docs: Mutex::default(),
                channels: Mutex::default(),
                log_capacity: self.log_capacity,
                channel_capacity: self.channel_capacity,
                max_documents: self.max_documents,
            }),
        })
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("log_capacity", &self.inner.log_capacity)
            .field("channel_capacity", &self.inner.channel_capacity)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave the maps half-updated in a way later calls
    // would misread (every mutation is a single insert/remove), so poisoning is ignored.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl MemoryStore {
    /// A store with default capacities.
    pub fn new() -> Self {
        Self::builder()
            .build()
            .expect("default capacities are valid")
    }

    /// A builder to set capacities.
    pub fn builder() -> MemoryStoreBuilder {
        MemoryStoreBuilder {
            log_capacity: DEFAULT_LOG_CAPACITY,
            channel_capacity: DEFAULT_CHANNEL_CAPACITY,
            max_documents: DEFAULT_MAX_DOCUMENTS,
        }
    }

    /// Forgets every document and log, as a flushed Redis would: keys written afterwards start a
    /// new epoch. Subscriptions stay open.
    pub fn flush_all(&self) {
        lock(&self.inner.docs).map.clear();
    }

    /// Ends every open subscription, as a dropped connection would.
    pub fn disconnect_subscribers(&self) {
        lock(&self.inner.channels).clear();
    }

    /// Number of live (unexpired) documents.
    pub fn len(&self) -> usize {
        let now = Instant::now();
        lock(&self.inner.docs)
            .map
            .values()
            .filter(|d| !d.expired(now))
            .count()
    }

    /// Whether the store holds no live document.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn publish(&self, delta: &SharedDelta) {
        let channels = lock(&self.inner.channels);
        if let Some(tx) = channels.get(&delta.key.section_id()) {
            // An error only means nobody listens right now.
            let _ = tx.send(delta.clone());
        }
    }

    /// Runs `f` on the live document for `key`, dropping it first if it has expired.
    fn with_doc<R>(&self, key: &Key, f: impl FnOnce(Option<&mut Doc>) -> R) -> R {
        let mut docs = lock(&self.inner.docs);
        let now = Instant::now();
        if docs.map.get(key).is_some_and(|d| d.expired(now)) {
            docs.map.remove(key);
        }
        f(docs.map.get_mut(key))
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn load(&self, key: &Key) -> Result<Option<Snapshot>> {
        Ok(self.with_doc(key, |doc| {
            doc.map(|d| Snapshot {
                stamp: d.stamp(),
                change_time: d.change_time,
                doc: {
                    let mut m = Members::with_capacity(d.fields.len());
                    for (name, text) in &d.fields {
                        m.push(name.as_str(), text.get().as_bytes());
                    }
                    m
                },
            })
        }))
    }

    async fn commit(&self, commit: Commit) -> Result<CommitOutcome> {
        if commit.kind == DeltaKind::Delete {
            return Err(Error::InvalidConfig(
                "commit kind must be patch or snapshot; use delete()".into(),
            ));
        }
        let mut docs = lock(&self.inner.docs);
        let now = Instant::now();
        docs.commits_since_sweep += 1;
        if docs.commits_since_sweep >= 1024 {
            docs.commits_since_sweep = 0;
            docs.map.retain(|_, d| !d.expired(now));
        }
        if docs.map.get(&commit.key).is_some_and(|d| d.expired(now)) {
            docs.map.remove(&commit.key);
        }
        let actual = docs.map.get(&commit.key).map(Doc::stamp);
        if actual != commit.expected {
            return Ok(CommitOutcome::Conflict { actual });
        }
        if actual.is_none() && docs.map.len() >= self.inner.max_documents {
            docs.map.retain(|_, d| !d.expired(now));
            if docs.map.len() >= self.inner.max_documents {
                return Err(Error::StoreFull {
                    limit: self.inner.max_documents,
                });
            }
        }
        let change_time = now_millis();
        let doc = docs.map.entry(commit.key.clone()).or_insert_with(|| Doc {
            epoch: Epoch::random(),
            version: 0,
            change_time,
            fields: Default::default(),
            log: VecDeque::new(),
            expires_at: None,
        });
        for (name, value) in commit.fields {
            match value {
                Some(v) => doc.fields.insert(name, v),
                None => doc.fields.remove(&name),
            };
        }
        let delta = Arc::new(Delta {
            key: commit.key,
            epoch: doc.epoch,
            base: doc.version,
            version: doc.version + 1,
            change_time,
            origin: commit.origin,
            kind: commit.kind,
            ops: commit.ops,
        });
        doc.version += 1;
        doc.change_time = change_time;
        doc.log.push_back(delta.clone());
        while doc.log.len() > self.inner.log_capacity {
            doc.log.pop_front();
        }
        if let Some(ttl) = commit.ttl {
            doc.expires_at = Some(now + ttl);
        }
        // Publish while still holding the document lock so a key's deltas are published in
        // commit order.
        self.publish(&delta);
        drop(docs);
        Ok(CommitOutcome::Committed(delta))
    }

    async fn changes_since(&self, key: &Key, after: Version) -> Result<Changes> {
        Ok(self.with_doc(key, |doc| {
            let Some(doc) = doc else {
                return Changes::Missing;
            };
            let earliest = doc.log.front().map_or(doc.version + 1, |d| d.version);
            if after + 1 < earliest && after < doc.version {
                return Changes::Trimmed {
                    epoch: doc.epoch,
                    earliest,
                };
            }
            Changes::Deltas {
                epoch: doc.epoch,
                deltas: doc
                    .log
                    .iter()
                    .filter(|d| d.version > after)
                    .cloned()
                    .collect(),
            }
        }))
    }

    async fn stamps(&self, keys: &[Key]) -> Result<Vec<Option<Stamp>>> {
        let docs = lock(&self.inner.docs);
        let now = Instant::now();
        Ok(keys
            .iter()
            .map(|k| docs.map.get(k).filter(|d| !d.expired(now)).map(Doc::stamp))
            .collect())
    }

    async fn delete(&self, key: &Key, origin: &str) -> Result<bool> {
        let mut docs = lock(&self.inner.docs);
        let now = Instant::now();
        let Some(doc) = docs.map.remove(key) else {
            return Ok(false);
        };
        if doc.expired(now) {
            return Ok(false);
        }
        let delta = Arc::new(Delta {
            key: key.clone(),
            epoch: doc.epoch,
            base: doc.version,
            version: doc.version + 1,
            change_time: now_millis(),
            origin: origin.to_string(),
            kind: DeltaKind::Delete,
            ops: Patch::default(),
        });
        self.publish(&delta);
        Ok(true)
    }

    async fn expire(&self, key: &Key, ttl: Duration) -> Result<bool> {
        Ok(self.with_doc(key, |doc| match doc {
            Some(d) => {
                d.expires_at = Some(Instant::now() + ttl);
                true
            }
            None => false,
        }))
    }

    async fn ttl(&self, key: &Key) -> Result<Option<Duration>> {
        Ok(self.with_doc(key, |doc| {
            doc.and_then(|d| d.expires_at)
                .map(|t| t.saturating_duration_since(Instant::now()))
        }))
    }

    async fn subscribe(&self, section: &SectionId) -> Result<Subscription> {
        let rx = lock(&self.inner.channels)
            .entry(section.clone())
            .or_insert_with(|| broadcast::channel(self.inner.channel_capacity).0)
            .subscribe();
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            let item = match rx.recv().await {
                Ok(delta) => SubscriptionEvent::Delta(delta),
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    SubscriptionEvent::Lagged { missed }
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            };
            Some((Ok(item), rx))
        });
        Ok(stream.boxed())
    }
}
