//! The write path: `update` (closure, diff, commit, conflict retries) and `delete`.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use rand::Rng;
use serde_json::{Map, Value};

use super::events::{ChangeCause, Counters};
use super::{top_member, DataManager, Doc, Document, Entry, UpdateOutcome};
use crate::delta::{Delta, DeltaKind, Patch};
use crate::error::{Error, Result};
use crate::key::Key;
use crate::patch;
use crate::store::{Commit, CommitOutcome};
use crate::version::Stamp;

impl<T: Document> DataManager<T> {
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
    /// serialize to a JSON object; [`Error::NonFiniteNumber`] when the new value holds a NaN or
    /// an infinity (nothing is written and the cached document is unchanged);
    /// [`Error::Malformed`] when the stored document cannot be read as `T`;
    /// [`Error::DocumentTooLarge`]; store errors. A store error
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
            let non_finite = |n: patch::NonFinite| Error::NonFiniteNumber {
                key: key.clone(),
                path: n.path,
                value: n.value,
            };
            let new_json = match patch::diff_into(&mut tree, &value, &mut ops) {
                Ok(()) => tree,
                // The kept tree is dropped half-updated; the cache still holds the old value.
                Err(patch::DiffError::NonFinite(n)) => return Err(non_finite(n)),
                Err(patch::DiffError::GiveUp(_)) => {
                    // serde_json would quietly write `null` for these.
                    if let Some(n) = patch::find_non_finite(&value) {
                        return Err(non_finite(n));
                    }
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
    pub(super) fn build_commit(
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

    pub(super) fn backoff(&self, attempt: u32) -> Duration {
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
}
