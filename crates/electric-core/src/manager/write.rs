//! The write path: `update` (closure, diff, commit, conflict retries), `delete`, and settling
//! writes whose reply was lost.
//!
//! # Exactly once
//!
//! Every commit and delete carries a fresh [`CommitId`]. When the store cannot say whether a
//! write was applied ([`Error::Indeterminate`] from the store: a timeout, a connection lost after
//! sending), the manager keeps asking it — [`Store::resolve`] for a commit, the same
//! `delete_with_id` for a delete — with backoff until
//! [`ManagerConfig::resolve_deadline`](super::ManagerConfig::resolve_deadline). The store answers
//! from what it keeps with each write (the commit id in the change log, a record of each create
//! and delete) and fences the write as it answers, so no copy still in flight can apply after
//! the answer (the soundness argument is in `ARCHITECTURE.md`, "Exactly once"). An applied
//! commit is returned as `Ok`; one that certainly was not applied is retried like a conflict;
//! only a store that stays unreachable past the deadline (or no longer knows) yields
//! [`Error::Indeterminate`].

use std::future::Future;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use serde_json::{Map, Value};
use tokio::time::Instant;

use super::events::{ChangeCause, Counters};
use super::{DataManager, Doc, Document, Entry, UpdateOutcome};
use crate::delta::{Delta, DeltaKind, Patch};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::key::Key;
use crate::patch;
use crate::store::{Commit, CommitOutcome, Resolution};
use crate::version::{CommitId, Stamp};

impl<T: Document> DataManager<T> {
    /// Changes document `id` with `f`, run on a copy of the current value (or `T::empty` for a
    /// missing key), and commits the difference against the version it started from.
    ///
    /// When another writer committed first, the manager refreshes and runs `f` again, up to
    /// [`ManagerConfig::max_attempts`](super::ManagerConfig::max_attempts) times with jittered
    /// exponential backoff (the key's local lock is released while backing off). Local writers of
    /// one key are serialised first, so they never conflict with each other.
    ///
    /// `Ok` means the change was applied exactly once, even when the store's first reply was
    /// lost (see the [module docs](self)); an error means it was not applied, except
    /// [`Error::Indeterminate`].
    ///
    /// # Errors
    ///
    /// [`Error::Conflict`] when every attempt lost; [`Error::NotFound`] for a missing key whose
    /// type has no empty value; [`Error::NotAnObject`] / [`Error::Serde`] when `T` does not
    /// serialize to a JSON object; [`Error::NonFiniteNumber`] when the new value holds a NaN or
    /// an infinity (nothing is written and the cached document is unchanged);
    /// [`Error::Malformed`] when the stored document cannot be read as `T`;
    /// [`Error::DocumentTooLarge`]; [`Error::Unavailable`] and other store errors (not applied);
    /// [`Error::Indeterminate`] when the commit's reply was lost and the store could not be
    /// asked about it before the resolve deadline (not retryable: it may have been applied).
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
                _ => self.load_locked(&key, None).await?,
            };
            let expected = current.as_ref().and_then(Doc::stamp);
            // The old tree, and its digest when it is known without walking it.
            let (mut tree, old_digest, mut value) = match &current {
                Some(d) => match self.take_tree(id, expected, true) {
                    Some((tree, digest)) => (tree, digest, d.value().clone()),
                    None => (self.to_object(&key, d.value())?, None, d.value().clone()),
                },
                None => (
                    Map::new(),
                    Some(Digest::of(&Map::new())),
                    T::empty(&key).ok_or_else(|| Error::NotFound { key: key.clone() })?,
                ),
            };
            f(&mut value);
            // The new value is serialized against the old tree, which becomes the new tree.
            let mut log = patch::OpLog::default();
            let non_finite = |n: patch::NonFinite| Error::NonFiniteNumber {
                key: key.clone(),
                path: n.path,
                value: n.value,
            };
            let digests = inner.config.digests;
            let (new_json, ops, digest, log_olds) =
                match patch::diff_into(&mut tree, &value, &mut log) {
                    Ok(()) => {
                        let digest = digests.then(|| {
                            old_digest
                                .and_then(|d| {
                                    d.after(&log.ops, log.olds.iter().map(Option::as_ref))
                                })
                                .unwrap_or_else(|| Digest::of(&tree))
                        });
                        (tree, log.ops, digest, log.olds)
                    }
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
                        let ops = patch::diff(&old, &new).0;
                        let Value::Object(new) = new else {
                            unreachable!("built from a map");
                        };
                        let digest = digests.then(|| Digest::of(&new));
                        (new, ops, digest, Vec::new())
                    }
                };
            let ops = Patch(ops);
            if ops.0.is_empty() {
                Counters::bump(&inner.counters.unchanged);
                if let (Some(stamp), Some(d)) = (expected, &current) {
                    self.keep_tree(id, stamp, (new_json, digest), true, d.entry.json_len);
                }
                return Ok(UpdateOutcome::Unchanged {
                    version: expected.map_or(0, |s| s.version),
                });
            }
            // The new size from the old one when every operation replaced a value we were
            // handed back; otherwise counted.
            let size = match &current {
                Some(d) if d.entry.json_len > 0 && d.entry.json_len < u32::MAX => {
                    replaced_size_change(&ops, &log_olds)
                        .map(|change| (i64::from(d.entry.json_len) + change).max(2) as usize)
                }
                _ => None,
            };
            let (mut commit, json_len) =
                self.build_commit(&key, expected, new_json, ops, digest, size)?;
            let json_len = u32::try_from(json_len).unwrap_or(u32::MAX);
            let outcome = match inner.store.commit(&commit).await {
                Ok(outcome) => outcome,
                Err(Error::Indeterminate { reason, .. }) => {
                    self.settle_commit(&commit, reason).await?
                }
                Err(e) => return Err(e),
            };
            match outcome {
                CommitOutcome::Committed(delta) => {
                    Counters::bump(&inner.counters.committed);
                    // The store only borrowed the tree (one that cloned the commit, such as a
                    // test double holding requests back, makes us copy it).
                    let doc = commit.doc.take().unwrap_or_default();
                    let new_json = Arc::try_unwrap(doc).unwrap_or_else(|d| (*d).clone());
                    self.keep_tree(id, delta.stamp(), (new_json, digest), true, json_len);
                    self.put(
                        id,
                        Entry {
                            value,
                            stamp: Some(delta.stamp()),
                            change_time: delta.change_time,
                            json_len,
                            digest,
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
                        self.load_locked(&key, None).await?;
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

    /// Learns what became of `commit`, whose reply was lost: `Committed` (applied exactly once)
    /// or `Conflict` (not applied, and fenced). Caller holds the key lock.
    ///
    /// # Errors
    ///
    /// [`Error::Indeterminate`] when the store stayed unreachable past the resolve deadline or no
    /// longer knows.
    async fn settle_commit(&self, commit: &Commit, first: String) -> Result<CommitOutcome> {
        let store = &self.inner.store;
        let resolution = self
            .settle(&commit.key, commit.id, first, || store.resolve(commit))
            .await?;
        match resolution {
            Resolution::Committed(delta) => Ok(CommitOutcome::Committed(delta)),
            Resolution::NotApplied { actual } => Ok(CommitOutcome::Conflict { actual }),
            Resolution::Unknown { reason } => {
                Err(self.indeterminate(&commit.key, commit.id, reason))
            }
        }
    }

    /// Calls `op` (which re-asks the store about write `id`) with jittered backoff until it
    /// answers or the resolve deadline passes. Counts the ambiguous write and its outcome.
    async fn settle<R, F, Fut>(
        &self,
        key: &Key,
        id: CommitId,
        first: String,
        mut op: F,
    ) -> Result<R>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<R>>,
    {
        let counters = &self.inner.counters;
        Counters::bump(&counters.ambiguous);
        tracing::warn!(%key, commit = %id, reason = %first, "write outcome unknown; asking the store");
        let deadline = Instant::now() + self.inner.config.resolve_deadline;
        let mut wait = Duration::from_millis(10);
        let mut last;
        loop {
            match op().await {
                Ok(r) => return Ok(r),
                Err(e @ (Error::Indeterminate { .. } | Error::Unavailable { .. })) => {
                    last = e.to_string();
                }
                Err(e) => {
                    let reason = format!("the store could not be asked: {e}");
                    return Err(self.indeterminate(key, id, reason));
                }
            }
            let pause = wait.mul_f64(0.5 + rand::random::<f64>() / 2.0);
            if Instant::now() + pause >= deadline {
                let reason = format!(
                    "the store did not answer within {:?} (last: {last})",
                    self.inner.config.resolve_deadline
                );
                return Err(self.indeterminate(key, id, reason));
            }
            tokio::time::sleep(pause).await;
            wait = (wait * 2).min(Duration::from_secs(1));
        }
    }

    fn indeterminate(&self, key: &Key, commit: CommitId, reason: String) -> Error {
        Counters::bump(&self.inner.counters.indeterminate);
        Error::Indeterminate {
            key: key.clone(),
            commit,
            reason,
        }
    }

    /// The commit turning the expected document into `new`: a patch, or a snapshot when the
    /// key is new, the root is replaced or the patch is larger than
    /// [`ManagerConfig::snapshot_ratio`] of the document. The commit carries `new` itself
    /// ([`Commit::doc`]) rather than member texts, so the store serializes only what it writes
    /// (for Redis, the array elements the patch touches). The document's size is `size` when
    /// the caller knows it, else counted without building its text.
    pub(super) fn build_commit(
        &self,
        key: &Key,
        expected: Option<Stamp>,
        new: Map<String, Value>,
        ops: Patch,
        digest: Option<Digest>,
        size: Option<usize>,
    ) -> Result<(Commit, usize)> {
        let config = &self.inner.config;
        let size = size.unwrap_or_else(|| patch::map_json_size(&new));
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
        let new = Arc::new(new);
        let (kind, ops) = if snapshot {
            (
                DeltaKind::Snapshot,
                Delta::snapshot_ops(Value::Object((*new).clone())),
            )
        } else {
            (DeltaKind::Patch, ops)
        };
        let commit = Commit {
            id: CommitId::random(),
            key: key.clone(),
            expected,
            fields: Vec::new(),
            doc: Some(new),
            kind,
            ops,
            origin: self.inner.origin.clone(),
            ttl: config.ttl,
            digest,
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

    /// Deletes the document in the store and the cache. Returns whether it existed. Exactly
    /// once, as [`update`](Self::update): a lost reply is resolved by asking the store again.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidKey`]; store errors (nothing deleted); [`Error::Indeterminate`] as for
    /// `update`.
    pub async fn delete(&self, id: &str) -> Result<bool> {
        let key = self.key(id)?;
        let _guard = self.inner.locks.lock(id).await;
        let (store, origin) = (&self.inner.store, self.inner.origin.as_str());
        let del = CommitId::random();
        let existed = match store.delete_with_id(&key, origin, del).await {
            Ok(existed) => existed,
            Err(Error::Indeterminate { reason, .. }) => {
                self.settle(&key, del, reason, || {
                    store.delete_with_id(&key, origin, del)
                })
                .await?
            }
            Err(e) => return Err(e),
        };
        if self.forget(id) || existed {
            self.emit(&key, None, || ChangeCause::Deleted);
        }
        Ok(existed)
    }
}

/// How much the document's JSON grows under `ops` when every operation is a `replace` whose
/// old value is in `olds` (what `diff_into` hands back), else `None`.
fn replaced_size_change(ops: &Patch, olds: &[Option<Value>]) -> Option<i64> {
    if ops.0.len() != olds.len() {
        return None;
    }
    let mut change = 0i64;
    for (op, old) in ops.0.iter().zip(olds) {
        match (op, old) {
            (json_patch::PatchOperation::Replace(r), Some(old)) => {
                change += patch::json_size(&r.value) as i64 - patch::json_size(old) as i64;
            }
            _ => return None,
        }
    }
    Some(change)
}
