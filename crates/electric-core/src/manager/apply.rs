//! The remote path: applying deltas that arrive on the section channel.

use std::sync::atomic::AtomicU64;

use serde_json::{Map, Value};

use super::events::{ChangeCause, Counters, RepairReason};
use super::{json_type, DataManager, Doc, Document, Entry};
use crate::delta::{Delta, DeltaKind, SharedDelta};
use crate::error::{Error, Result};
use crate::patch;

impl<T: Document> DataManager<T> {
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

    /// Applies `delta` on top of `doc`: patches the kept JSON tree in place (or one built from
    /// the cached value) and deserializes the result. Returns the value, the patched tree and
    /// the document's JSON size: exact for a snapshot, otherwise the last known size adjusted by
    /// the delta (`patch::apply_sized`).
    pub(super) fn apply_to(
        &self,
        doc: &Doc<T>,
        delta: &Delta,
    ) -> Result<(T, Map<String, Value>, u32)> {
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
        let value = T::deserialize(&tree).map_err(|e| Error::Malformed {
            what: "document",
            reason: format!("{key} after delta v{}: {e}", delta.version),
        })?;
        Ok((value, tree, json_len))
    }

    pub(super) fn install(
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
    pub(super) fn apply_chain(&self, mut doc: Doc<T>, deltas: &[SharedDelta]) -> (bool, bool) {
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
}
