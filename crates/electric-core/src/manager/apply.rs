//! The remote path: applying deltas that arrive on the section channel.

use std::sync::atomic::AtomicU64;

use serde_json::{Map, Value};

use super::events::{ChangeCause, Counters, RepairReason};
use super::{json_type, DataManager, Doc, Document, Entry};
use crate::delta::{Delta, DeltaKind, SharedDelta};
use crate::digest::Digest;
use crate::error::Error;
use crate::patch;

/// A delta applied to a cached document, not yet installed.
pub(super) struct Applied<T> {
    value: T,
    tree: Map<String, Value>,
    /// The document's JSON size: exact after a snapshot, otherwise the last known size adjusted
    /// by the delta.
    json_len: u32,
    /// The digest of `tree`, computed here (`None` with digests turned off).
    digest: Option<Digest>,
}

/// Why a delta was not applied.
pub(super) enum Refused {
    /// The patch does not apply, or its result is not a `T`.
    Patch(Error),
    /// It applies, but to a document other than the one its writer had.
    Digest { claimed: Digest, found: Digest },
}

impl Refused {
    pub(super) fn reason(&self) -> RepairReason {
        match self {
            Refused::Patch(_) => RepairReason::ApplyFailed,
            Refused::Digest { .. } => RepairReason::Digest,
        }
    }

    pub(super) fn describe(&self, delta: &Delta) -> String {
        match self {
            Refused::Patch(e) => format!("delta v{} does not apply: {e}", delta.version),
            Refused::Digest { claimed, found } => format!(
                "delta v{} gives a document with digest {found}, its writer's had {claimed}",
                delta.version
            ),
        }
    }
}

impl<T: Document> DataManager<T> {
    /// Applies one delta from the section's channel: ignore what the cache already has, patch
    /// what follows directly, repair gaps from the log and reload on a new epoch, a delta that
    /// does not apply, or content that does not match the delta's digest. Errors are reported on
    /// [`sync_errors`](Self::sync_errors).
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
            // The version the cache holds, with another content: one of the two is not the
            // real one (a forged or corrupted delta was applied, or this one is forged); the
            // store decides.
            _ if same_epoch
                && delta.version == stamp.version
                && delta.digest.is_some()
                && doc.entry.digest.is_some()
                && delta.digest != doc.entry.digest =>
            {
                self.report_sync_error(
                    Some(&delta.key),
                    Some(RepairReason::Digest),
                    format!(
                        "delta v{} has digest {}, the cached document {}",
                        delta.version,
                        delta.digest.map(|d| d.to_string()).unwrap_or_default(),
                        doc.entry.digest.map(|d| d.to_string()).unwrap_or_default()
                    ),
                );
                let _ = self.reload_locked(&delta.key, RepairReason::Digest).await;
            }
            _ if same_epoch && delta.version <= stamp.version => Counters::bump(&c.duplicates),
            DeltaKind::Patch if !same_epoch => {
                let _ = self.reload_locked(&delta.key, RepairReason::Epoch).await;
            }
            // A gap (a snapshot too: applying it would skip the versions in between unseen).
            _ if same_epoch && delta.base != stamp.version => {
                let _ = self
                    .catch_up_locked(&delta.key, &doc, RepairReason::Gap, None, true)
                    .await;
            }
            DeltaKind::Patch | DeltaKind::Snapshot => match self.apply_to(&doc, &delta) {
                Ok(applied) => {
                    self.install(&delta, applied);
                    Counters::bump(&c.applied);
                    self.emit(&delta.key, Some(delta.stamp()), || {
                        ChangeCause::Remote(delta.clone())
                    });
                }
                Err(refused) => {
                    let reason = refused.reason();
                    self.report_sync_error(
                        Some(&delta.key),
                        Some(reason),
                        refused.describe(&delta),
                    );
                    let _ = self.reload_locked(&delta.key, reason).await;
                }
            },
        }
    }

    /// Applies `delta` on top of `doc`: patches the kept JSON tree in place (or one built from
    /// the cached value), checks the result against the delta's digest, and deserializes it.
    /// A patch of `replace` operations updates the kept tree's digest from the values it
    /// swaps; anything else (or a tree just built) is digested whole.
    pub(super) fn apply_to(&self, doc: &Doc<T>, delta: &Delta) -> Result<Applied<T>, Refused> {
        let key = &delta.key;
        let (tree, digest) = match self.take_tree(key.id(), doc.stamp(), false) {
            Some((tree, digest)) => (tree, digest),
            None => (
                self.to_object(key, doc.value()).map_err(Refused::Patch)?,
                None,
            ),
        };
        let mut json = Value::Object(tree);
        // A snapshot is sized exactly, which also resets any drift of the estimates.
        let (json_len, olds) = if delta.kind == DeltaKind::Snapshot {
            patch::apply(&mut json, &delta.ops).map_err(Refused::Patch)?;
            (patch::json_size(&json) as i64, None)
        } else {
            let (change, olds) =
                patch::apply_sized(&mut json, &delta.ops).map_err(Refused::Patch)?;
            (i64::from(doc.entry.json_len) + change, olds)
        };
        let json_len = json_len.clamp(2, i64::from(u32::MAX)) as u32;
        let Value::Object(tree) = json else {
            return Err(Refused::Patch(Error::NotAnObject {
                key: key.clone(),
                found: json_type(&json),
            }));
        };
        let found = self.inner.config.digests.then(|| {
            match (digest, olds) {
                (Some(before), Some(olds)) => before.after(&delta.ops, olds.iter().map(Some)),
                _ => None,
            }
            .unwrap_or_else(|| Digest::of(&tree))
        });
        if let (Some(claimed), Some(found)) = (delta.digest, found) {
            if claimed != found {
                return Err(Refused::Digest { claimed, found });
            }
        }
        // Read through a reference so the tree can be kept.
        let value = T::deserialize(&tree).map_err(|e| {
            Refused::Patch(Error::Malformed {
                what: "document",
                reason: format!("{key} after delta v{}: {e}", delta.version),
            })
        })?;
        Ok(Applied {
            value,
            tree,
            json_len,
            digest: found,
        })
    }

    pub(super) fn install(&self, delta: &Delta, applied: Applied<T>) -> Doc<T> {
        let Applied {
            value,
            tree,
            json_len,
            digest,
        } = applied;
        self.keep_tree(
            delta.key.id(),
            delta.stamp(),
            (tree, digest),
            false,
            json_len,
        );
        self.put(
            delta.key.id(),
            Entry {
                value,
                stamp: Some(delta.stamp()),
                change_time: delta.change_time,
                json_len,
                digest,
                touched: AtomicU64::new(self.inner.clock.now()),
            },
        )
    }

    /// Applies a chain of deltas after `doc`'s version, one event each (cause `CaughtUp` under
    /// `reason`). Returns whether the chain was whole and every delta applied (if not, the
    /// caller reloads), and whether anything changed. Caller holds the key lock.
    pub(super) fn apply_chain(
        &self,
        mut doc: Doc<T>,
        deltas: &[SharedDelta],
        reason: RepairReason,
    ) -> Result<bool, Option<Refused>> {
        let mut changed = false;
        for d in deltas {
            let cur = doc.version();
            if d.version <= cur {
                continue;
            }
            match d.kind {
                DeltaKind::Delete => {
                    self.forget(d.key.id());
                    self.emit(&d.key, None, || ChangeCause::Deleted);
                    return Ok(true);
                }
                _ if d.base != cur => return Err(None),
                _ => {}
            }
            doc = self.install(d, self.apply_to(&doc, d).map_err(Some)?);
            changed = true;
            self.emit(&d.key, Some(d.stamp()), || ChangeCause::CaughtUp {
                reason,
                delta: d.clone(),
            });
        }
        Ok(changed)
    }
}
