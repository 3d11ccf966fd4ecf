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

    /// Reloads after `reason`, counting the repair and reporting failures.
    pub(super) async fn reload_locked(&self, key: &Key, reason: RepairReason) -> Result<()> {
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
