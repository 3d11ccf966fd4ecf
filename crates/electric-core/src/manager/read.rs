//! The read path: cache hits, single-flight loads, read-your-writes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::events::{ChangeCause, Counters};
use super::{DataManager, Doc, Document, Entry, Get, GetState, RepairReason};
use crate::error::{Error, Result};
use crate::key::Key;
use crate::store::Snapshot;
use crate::version::Version;

impl<T: Document> DataManager<T> {
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
    /// [`Error::InvalidKey`] for a bad id; store errors; [`Error::Malformed`] (naming the member) when the stored document
    /// does not deserialize into `T`.
    #[inline]
    pub fn get<'a>(&'a self, id: &'a str) -> Get<'a, T> {
        match self.cached(id) {
            Some(doc) => Get(GetState::Hit(Some(doc))),
            None => Get(GetState::Miss(Box::pin(self.get_miss(id)))),
        }
    }

    pub(super) async fn get_miss(&self, id: &str) -> Result<Option<Doc<T>>> {
        let key = self.key(id)?;
        let _guard = self.inner.locks.lock(id).await;
        if let Some(doc) = self.cached(id) {
            return Ok(Some(doc));
        }
        self.load_locked(&key, None).await
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
                digest: None,
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
            None => self.load_locked(&key, None).await?,
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

    pub(super) fn insert_snapshot(&self, key: &Key, snap: Snapshot) -> Result<Doc<T>> {
        let value = self.to_typed(key, &snap.doc)?;
        Ok(self.put(
            key.id(),
            Entry {
                value,
                stamp: Some(snap.stamp),
                change_time: snap.change_time,
                json_len: u32::try_from(snap.doc.json_len()).unwrap_or(u32::MAX),
                digest: snap.digest,
                touched: AtomicU64::new(self.inner.clock.refresh()),
            },
        ))
    }

    /// Loads the snapshot into the cache (or drops the entry if the key is gone), telling
    /// listeners the document was reloaded (`reason`: the repair, if this is one). Caller holds
    /// the key lock.
    pub(super) async fn load_locked(
        &self,
        key: &Key,
        reason: Option<RepairReason>,
    ) -> Result<Option<Doc<T>>> {
        Counters::bump(&self.inner.counters.loads);
        let from = self.cached(key.id()).map(|d| d.stamp());
        match self.inner.store.load(key).await? {
            Some(snap) => match self.insert_snapshot(key, snap) {
                Ok(doc) => {
                    self.emit(key, doc.stamp(), || ChangeCause::Reloaded {
                        from: from.flatten(),
                        reason,
                        doc: Arc::new(self.to_object(key, doc.value()).unwrap_or_default()),
                    });
                    Ok(Some(doc))
                }
                Err(e) => {
                    // Never leave a stale value behind a document we cannot read.
                    self.forget(key.id());
                    Err(e)
                }
            },
            None => {
                if self.forget(key.id()) {
                    self.emit(key, None, || ChangeCause::Deleted);
                }
                Ok(None)
            }
        }
    }
}
