//! [`MemoryStore`]: the embedded store, with the same semantics as the Redis one.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use serde_json::value::RawValue;
use tokio::sync::broadcast;
use tokio::time::Instant;

use super::{
    Changes, Commit, CommitOutcome, Head, Members, Resolution, Snapshot, Store, Subscription,
    SubscriptionEvent,
};
use crate::delta::{Delta, DeltaKind, Patch, SharedDelta};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::key::{Key, SectionId};
use crate::version::{now_millis, CommitId, Epoch, Stamp, Version};

/// Default number of deltas kept per key in the change log. Deltas are held as parsed values
/// (about 750 bytes each for an order book's five-leaf patch), so the log is what an embedded
/// store's memory grows with: 128 keeps `electric demo` (200 documents) under 100 MB. A replica
/// further behind on a key reloads it instead, which costs little in process.
pub const DEFAULT_LOG_CAPACITY: usize = 128;
/// Default number of deltas buffered per section channel for each subscriber.
pub const DEFAULT_CHANNEL_CAPACITY: usize = 4096;
/// Default maximum number of live documents.
pub const DEFAULT_MAX_DOCUMENTS: usize = 1_000_000;
/// Default time a store keeps the record of a create or a delete, which fences late copies of
/// it ([`Store::resolve`]). The embedded store has no network, so only a wrapper that holds
/// requests back (a fault injector, say) can deliver a late copy; the default matches
/// `RedisStore`'s.
pub const DEFAULT_FENCE_TTL: Duration = Duration::from_secs(3600);

/// A store held in process memory, shareable by any number of managers (clone it: clones share
/// the same data).
///
/// Bounds and what happens at them:
/// - each key's change log keeps the newest `log_capacity` deltas; older ones are dropped and
///   [`Store::changes_since`] reports [`Changes::Trimmed`];
/// - each section channel buffers `channel_capacity` deltas per subscriber; while a subscriber
///   is half that behind, committers to the section yield once before each commit (backpressure
///   that never stalls them, counted in [`MemoryStore::held_back`]); a subscriber that falls
///   further behind still loses the oldest deltas and receives [`SubscriptionEvent::Lagged`]
///   with the number lost, so it can resynchronise from the log;
/// - it holds at most `max_documents` live documents; a commit that would create one more fails
///   with [`Error::StoreFull`] and writes nothing (expired documents are swept first);
/// - it keeps a record of every create and delete (and of every create [`Store::resolve`]
///   refused) for `fence_ttl`, so that a late copy of one cannot apply; records are dropped
///   once older.
///
/// # Examples
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use electric_core::{Commit, CommitId, CommitOutcome, DeltaKind, Key, MemoryStore, Patch, Store};
///
/// let store = MemoryStore::new();
/// let key = Key::new("p", "s", "x").unwrap();
/// let outcome = store
///     .commit(&Commit {
///         key: key.clone(),
///         expected: None,
///         fields: vec![Commit::member("a", &1).unwrap()],
///         doc: None,
///         kind: DeltaKind::Patch,
///         ops: serde_json::from_str(r#"[{"op":"add","path":"/a","value":1}]"#).unwrap(),
///         origin: "doc".into(),
///         ttl: None,
///         id: CommitId::random(),
///         digest: None,
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
    fence_ttl: Duration,
    held_back: AtomicU64,
}

#[derive(Default)]
struct Docs {
    map: HashMap<Key, Doc>,
    /// Records of creates and deletes by key (kept apart from the documents: a delete must not
    /// take its own record with it).
    fences: HashMap<Key, Vec<Fence>>,
    commits_since_sweep: usize,
}

/// What a store remembers of one write, for `fence_ttl`.
#[derive(Clone, Copy)]
struct Fence {
    id: CommitId,
    at: Instant,
    record: Record,
}

#[derive(Clone, Copy)]
enum Record {
    /// A create applied at this change time.
    Created { change_time: u64 },
    /// A create that [`Store::resolve`] found not applied: refuse every copy of it.
    Refused,
    /// A delete, and whether the document existed.
    Deleted { existed: bool },
}

/// What a commit comes to, before [`Store::commit`] and [`Store::resolve`] phrase it.
enum Decision {
    Committed(SharedDelta),
    Conflict(Option<Stamp>),
    Unknown(String),
}

struct Doc {
    epoch: Epoch,
    version: Version,
    change_time: u64,
    /// Member texts by name (a `BTreeMap`, so loads list them in a stable order).
    fields: std::collections::BTreeMap<String, Box<RawValue>>,
    digest: Option<Digest>,
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
    fence_ttl: Duration,
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

    /// How long records of creates and deletes are kept to fence late copies (default
    /// [`DEFAULT_FENCE_TTL`]; more than zero).
    pub fn fence_ttl(mut self, ttl: Duration) -> Self {
        self.fence_ttl = ttl;
        self
    }

    /// Validates the settings and builds the store.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for a zero capacity or fence lifetime.
    pub fn build(self) -> Result<MemoryStore> {
        if self.log_capacity == 0 || self.channel_capacity == 0 || self.max_documents == 0 {
            return Err(Error::InvalidConfig(
                "memory store capacities must be at least 1".into(),
            ));
        }
        if self.fence_ttl.is_zero() {
            return Err(Error::InvalidConfig(
                "memory store fence_ttl must be more than zero".into(),
            ));
        }
        Ok(MemoryStore {
            inner: Arc::new(Inner {
                docs: Mutex::default(),
                channels: Mutex::default(),
                log_capacity: self.log_capacity,
                channel_capacity: self.channel_capacity,
                max_documents: self.max_documents,
                fence_ttl: self.fence_ttl,
                held_back: AtomicU64::new(0),
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
            fence_ttl: DEFAULT_FENCE_TTL,
        }
    }

    /// Forgets every document and log, as a flushed Redis would: keys written afterwards start a
    /// new epoch. Subscriptions stay open.
    pub fn flush_all(&self) {
        let mut docs = lock(&self.inner.docs);
        docs.map.clear();
        docs.fences.clear();
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

    /// Backpressure from slow subscribers: while a subscriber of `key`'s section is at least
    /// half its buffer behind, a committer yields to the scheduler once before committing.
    ///
    /// An embedded commit never waits on anything, so without this the writers' tasks produce
    /// deltas as fast as the CPU allows, each getting as long a turn on the runtime as a
    /// subscriber's reader (which has to take every writer's deltas) and its appliers; on a busy
    /// machine with many documents (little contention, few conflicts to slow the writers) the
    /// subscribers fell behind until their buffers overflowed and every replica was repaired by
    /// anti-entropy. One yield per commit gives every other task a turn per commit, so the
    /// subscribers keep up, yet a subscriber nobody reads can only cost a yield, never stall
    /// writers (it still overflows and is told `Lagged`).
    async fn hold_back(&self, key: &Key) {
        let behind = lock(&self.inner.channels)
            .get(&key.section_id())
            .is_some_and(|tx| tx.len() * 2 >= self.inner.channel_capacity);
        if behind {
            self.inner.held_back.fetch_add(1, Ordering::Relaxed);
            tokio::task::yield_now().await;
        }
    }

    /// How many commits yielded because a subscriber was behind (see the type's docs).
    pub fn held_back(&self) -> u64 {
        self.inner.held_back.load(Ordering::Relaxed)
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

impl Docs {
    /// Drops `key`'s document if it has expired.
    fn drop_expired(&mut self, key: &Key, now: Instant) {
        if self.map.get(key).is_some_and(|d| d.expired(now)) {
            self.map.remove(key);
        }
    }

    /// Every `commits_since_sweep` commits: drop expired documents and old fence records.
    fn sweep(&mut self, now: Instant, fence_ttl: Duration) {
        self.commits_since_sweep += 1;
        if self.commits_since_sweep >= 1024 {
            self.commits_since_sweep = 0;
            self.map.retain(|_, d| !d.expired(now));
            self.fences.retain(|_, f| {
                f.retain(|r| now.saturating_duration_since(r.at) < fence_ttl);
                !f.is_empty()
            });
        }
    }

    fn record(&self, key: &Key, id: CommitId) -> Option<Record> {
        self.fences
            .get(key)?
            .iter()
            .find(|f| f.id == id)
            .map(|f| f.record)
    }

    fn remember(&mut self, key: &Key, id: CommitId, record: Record, now: Instant, ttl: Duration) {
        let fences = self.fences.entry(key.clone()).or_default();
        fences.retain(|r| now.saturating_duration_since(r.at) < ttl);
        fences.push(Fence {
            id,
            at: now,
            record,
        });
    }
}

/// The delta `commit` produced, from what the store knows of it.
fn delta_of(commit: &Commit, epoch: Epoch, version: Version, change_time: u64) -> SharedDelta {
    Arc::new(Delta {
        key: commit.key.clone(),
        epoch,
        base: version - 1,
        version,
        change_time,
        origin: commit.origin.clone(),
        kind: commit.kind,
        ops: commit.ops.clone(),
        commit: Some(commit.id),
        digest: commit.digest,
    })
}

impl MemoryStore {
    /// Applies `commit` if it can apply, or says why not; `resolving` fences a refused create
    /// and answers "unknown" where a plain commit would simply conflict (see [`Store::resolve`]).
    fn decide(&self, commit: &Commit, resolving: bool) -> Result<Decision> {
        let inner = &self.inner;
        let mut docs = lock(&inner.docs);
        let now = Instant::now();
        docs.sweep(now, inner.fence_ttl);
        docs.drop_expired(&commit.key, now);
        let key = &commit.key;
        let doc = docs.map.get(key);
        let actual = doc.map(Doc::stamp);
        match (commit.expected, doc) {
            (None, Some(d)) if d.epoch == Epoch::from(commit.id) => {
                // This very commit created the current lifetime.
                let logged = d.log.iter().find(|l| l.version == 1).cloned();
                let created = match docs.record(key, commit.id) {
                    Some(Record::Created { change_time }) => change_time,
                    _ => d.change_time,
                };
                return Ok(Decision::Committed(logged.unwrap_or_else(|| {
                    delta_of(commit, Epoch::from(commit.id), 1, created)
                })));
            }
            (None, _) => match docs.record(key, commit.id) {
                Some(Record::Refused) => return Ok(Decision::Conflict(actual)),
                // Applied once; that lifetime has ended since.
                Some(Record::Created { change_time }) => {
                    return Ok(Decision::Committed(delta_of(
                        commit,
                        Epoch::from(commit.id),
                        1,
                        change_time,
                    )))
                }
                Some(Record::Deleted { .. }) => {
                    return Ok(Decision::Unknown(format!(
                        "commit id {} was used by a delete",
                        commit.id
                    )))
                }
                None if actual.is_some() => {
                    if resolving {
                        docs.remember(key, commit.id, Record::Refused, now, inner.fence_ttl);
                    }
                    return Ok(Decision::Conflict(actual));
                }
                None => {}
            },
            (Some(_), None) if resolving => {
                return Ok(Decision::Unknown(
                    "the document it expected no longer exists".into(),
                ))
            }
            (Some(_), None) => return Ok(Decision::Conflict(None)),
            (Some(e), Some(d)) if e.epoch != d.epoch => {
                if resolving {
                    return Ok(Decision::Unknown(
                        "the lifetime of the document it expected has ended".into(),
                    ));
                }
                return Ok(Decision::Conflict(actual));
            }
            (Some(e), Some(d)) if d.version > e.version => {
                // Moved on: by this commit?
                return Ok(match d.log.iter().find(|l| l.version == e.version + 1) {
                    Some(l) if l.commit == Some(commit.id) => Decision::Committed(l.clone()),
                    Some(_) => Decision::Conflict(actual),
                    None if resolving => Decision::Unknown(format!(
                        "the change log no longer reaches back to v{}",
                        e.version + 1
                    )),
                    None => Decision::Conflict(actual),
                });
            }
            (Some(e), Some(d)) if d.version != e.version => return Ok(Decision::Conflict(actual)),
            (Some(_), Some(_)) => {}
        }
        if actual.is_none() && docs.map.len() >= inner.max_documents {
            docs.map.retain(|_, d| !d.expired(now));
            if docs.map.len() >= inner.max_documents {
                return Err(Error::StoreFull {
                    limit: inner.max_documents,
                });
            }
        }
        let (replace_all, writes) = commit
            .member_writes()
            .map_err(|e| Error::serde(&commit.key, e))?;
        let change_time = now_millis();
        let doc = docs.map.entry(key.clone()).or_insert_with(|| Doc {
            epoch: Epoch::from(commit.id),
            version: 0,
            change_time,
            fields: Default::default(),
            digest: None,
            log: VecDeque::new(),
            expires_at: None,
        });
        if replace_all {
            doc.fields.clear();
        }
        for (name, value) in writes.iter() {
            match value {
                Some(v) => doc.fields.insert(name.clone(), v.clone()),
                None => doc.fields.remove(name),
            };
        }
        let delta = delta_of(commit, doc.epoch, doc.version + 1, change_time);
        doc.version += 1;
        doc.change_time = change_time;
        doc.digest = commit.digest;
        doc.log.push_back(delta.clone());
        while doc.log.len() > inner.log_capacity {
            doc.log.pop_front();
        }
        if let Some(ttl) = commit.ttl {
            doc.expires_at = Some(now + ttl);
        }
        if actual.is_none() {
            docs.remember(
                key,
                commit.id,
                Record::Created { change_time },
                now,
                inner.fence_ttl,
            );
        }
        // Publish while still holding the document lock so a key's deltas are published in
        // commit order.
        self.publish(&delta);
        drop(docs);
        Ok(Decision::Committed(delta))
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
                digest: d.digest,
            })
        }))
    }

    async fn commit(&self, commit: &Commit) -> Result<CommitOutcome> {
        if commit.kind == DeltaKind::Delete {
            return Err(Error::InvalidConfig(
                "commit kind must be patch or snapshot; use delete()".into(),
            ));
        }
        self.hold_back(&commit.key).await;
        Ok(match self.decide(commit, false)? {
            Decision::Committed(delta) => CommitOutcome::Committed(delta),
            Decision::Conflict(actual) => CommitOutcome::Conflict { actual },
            Decision::Unknown(_) => CommitOutcome::Conflict {
                actual: self.stamps(std::slice::from_ref(&commit.key)).await?[0],
            },
        })
    }

    async fn resolve(&self, commit: &Commit) -> Result<Resolution> {
        if commit.kind == DeltaKind::Delete {
            return Err(Error::InvalidConfig(
                "commit kind must be patch or snapshot; use delete()".into(),
            ));
        }
        Ok(match self.decide(commit, true)? {
            Decision::Committed(delta) => Resolution::Committed(delta),
            Decision::Conflict(actual) => Resolution::NotApplied { actual },
            Decision::Unknown(reason) => Resolution::Unknown { reason },
        })
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
        Ok(self
            .heads(keys)
            .await?
            .into_iter()
            .map(|h| h.map(|h| h.stamp))
            .collect())
    }

    async fn heads(&self, keys: &[Key]) -> Result<Vec<Option<Head>>> {
        let docs = lock(&self.inner.docs);
        let now = Instant::now();
        Ok(keys
            .iter()
            .map(|k| {
                docs.map.get(k).filter(|d| !d.expired(now)).map(|d| Head {
                    stamp: d.stamp(),
                    digest: d.digest,
                })
            })
            .collect())
    }

    async fn delete_with_id(&self, key: &Key, origin: &str, id: CommitId) -> Result<bool> {
        let inner = &self.inner;
        let mut docs = lock(&inner.docs);
        let now = Instant::now();
        match docs.record(key, id) {
            Some(Record::Deleted { existed }) => return Ok(existed),
            Some(_) => return Ok(false),
            None => {}
        }
        docs.drop_expired(key, now);
        let Some(doc) = docs.map.remove(key) else {
            docs.remember(
                key,
                id,
                Record::Deleted { existed: false },
                now,
                inner.fence_ttl,
            );
            return Ok(false);
        };
        docs.remember(
            key,
            id,
            Record::Deleted { existed: true },
            now,
            inner.fence_ttl,
        );
        let delta = Arc::new(Delta {
            key: key.clone(),
            epoch: doc.epoch,
            base: doc.version,
            version: doc.version + 1,
            change_time: now_millis(),
            origin: origin.to_string(),
            kind: DeltaKind::Delete,
            ops: Patch::default(),
            commit: Some(id),
            digest: None,
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
