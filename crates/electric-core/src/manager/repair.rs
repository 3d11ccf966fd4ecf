//! Repairs: catching up from the change log, reloading snapshots, anti-entropy.

use super::events::{ChangeCause, Counters, RepairReason};
use super::{DataManager, Doc, Document};
use crate::error::{Error, Result};
use crate::key::Key;
use crate::store::Changes;
use crate::version::Stamp;

impl<T: Document> DataManager<T> {
    /// Brings `doc` up to date from the change log, falling back to the snapshot. `trigger` is
    /// what found the difference; the repair is counted under it, except that a gap repair that
    /// had to reload is counted as `trimmed` or `epoch`. With `target`, the result must reach that
    /// stamp or the snapshot is reloaded. Caller holds the key lock.
    pub(super) async fn catch_up_locked(
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
                let changed = match self.apply_chain(doc.clone(), &deltas, trigger) {
                    Ok(changed) => changed,
                    Err(refused) => {
                        let reason = match &refused {
                            Some(r) => {
                                let d = deltas.iter().find(|d| d.version > stamp.version);
                                if let Some(d) = d {
                                    self.report_sync_error(
                                        Some(key),
                                        Some(r.reason()),
                                        r.describe(d),
                                    );
                                }
                                match r.reason() {
                                    RepairReason::Digest => RepairReason::Digest,
                                    other => fallback(other),
                                }
                            }
                            None => fallback(RepairReason::ApplyFailed),
                        };
                        return self.reload_locked(key, reason).await.map(|_| true);
                    }
                };
                let reached = self.cached(key.id()).and_then(|d| d.stamp());
                if target.is_some_and(|t| t != reached) {
                    return self.reload_locked(key, trigger).await.map(|_| true);
                }
                if changed && (count_gap || trigger != RepairReason::Gap) {
                    self.inner.counters.repaired(trigger);
                }
                Ok(changed)
            }
        }
    }

    /// Reloads after `reason`, counting the repair and reporting failures.
    pub(super) async fn reload_locked(&self, key: &Key, reason: RepairReason) -> Result<()> {
        match self.load_locked(key, Some(reason)).await {
            Ok(_) => {
                self.inner.counters.repaired(reason);
                Ok(())
            }
            Err(e) => {
                self.report_sync_error(Some(key), Some(reason), e.to_string());
                Err(e)
            }
        }
    }

    /// Compares every cached version, and its digest, with the store in batches and repairs
    /// only the documents that differ: a different stamp is caught up under `reason`, the same
    /// stamp with another digest is reloaded as [`RepairReason::Digest`]. Returns how many were
    /// repaired.
    ///
    /// # Errors
    ///
    /// Store errors from the version lookups (repairs of single keys report their own errors on
    /// the sync-error stream and do not stop the pass).
    pub async fn anti_entropy(&self, reason: RepairReason) -> Result<usize> {
        let entries = self.cached_heads();
        let mut repaired = 0;
        for chunk in entries.chunks(self.inner.config.anti_entropy_batch) {
            let keys: Vec<Key> = chunk.iter().map(|(key, _)| key.clone()).collect();
            let actual = self.inner.store.heads(&keys).await?;
            for ((key, cached), actual) in chunk.iter().zip(actual) {
                let actual_stamp = actual.map(|h| h.stamp);
                let digest_differs = |d: &Doc<T>| {
                    matches!((d.entry.digest, actual.and_then(|h| h.digest)),
                        (Some(mine), Some(theirs)) if mine != theirs)
                };
                if cached.stamp() == actual_stamp && !digest_differs(cached) {
                    continue;
                }
                let _guard = self.inner.locks.lock(key.id()).await;
                let Some(doc) = self.cached(key.id()) else {
                    continue;
                };
                if doc.stamp() == actual_stamp {
                    if !digest_differs(&doc) {
                        continue; // repaired by a delta meanwhile
                    }
                    self.report_sync_error(
                        Some(key),
                        Some(RepairReason::Digest),
                        format!(
                            "cached v{} has digest {}, the store's {}",
                            doc.version(),
                            doc.entry.digest.map(|d| d.to_string()).unwrap_or_default(),
                            actual
                                .and_then(|h| h.digest)
                                .map(|d| d.to_string())
                                .unwrap_or_default()
                        ),
                    );
                    if self.reload_locked(key, RepairReason::Digest).await.is_ok() {
                        repaired += 1;
                    }
                    continue;
                }
                if let Ok(true) = self
                    .catch_up_locked(key, &doc, reason, Some(actual_stamp), true)
                    .await
                {
                    repaired += 1;
                }
            }
        }
        Ok(repaired)
    }

    /// Keys and documents of every cached entry.
    fn cached_heads(&self) -> Vec<(Key, Doc<T>)> {
        self.inner
            .cache
            .entries()
            .into_iter()
            .filter_map(|(id, entry)| {
                Some((self.inner.section.key(id.as_str()).ok()?, Doc { entry }))
            })
            .collect()
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
