//! Change and sync-error events, and the counters behind the repair report.

use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::Stream;
use serde::Serialize;
use serde_json::{Map, Value};
use tokio::sync::broadcast;

use crate::delta::SharedDelta;
use crate::key::Key;
use crate::version::Stamp;

/// Why a cached document was repaired instead of simply patched.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum RepairReason {
    /// A delta's base was ahead of the cached version; the missing deltas came from the log.
    Gap,
    /// A gap reached further back than the change log; the snapshot was reloaded.
    Trimmed,
    /// The key's epoch changed (store flushed, key re-created); the snapshot was reloaded.
    Epoch,
    /// Found by the anti-entropy pass right after a subscription was re-established.
    Reconnect,
    /// Found by the anti-entropy pass after the subscription reported lost deltas.
    Lagged,
    /// Found by the periodic anti-entropy pass.
    AntiEntropy,
    /// A delta did not apply (bad pointer, type mismatch, undeserializable result); the snapshot
    /// was reloaded.
    ApplyFailed,
    /// The content did not match its digest: a delta produced a document other than the one
    /// its writer had (forged, corrupted or misapplied), a delta for the cached version carried
    /// another digest, or anti-entropy found the store's digest differs; the snapshot was
    /// reloaded.
    Digest,
}

impl RepairReason {
    /// Every reason, in report order.
    pub const ALL: [RepairReason; 8] = [
        RepairReason::Gap,
        RepairReason::Trimmed,
        RepairReason::Epoch,
        RepairReason::Reconnect,
        RepairReason::Lagged,
        RepairReason::AntiEntropy,
        RepairReason::ApplyFailed,
        RepairReason::Digest,
    ];

    /// The reason's snake_case name, as used in reports and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            RepairReason::Gap => "gap",
            RepairReason::Trimmed => "trimmed",
            RepairReason::Epoch => "epoch",
            RepairReason::Reconnect => "reconnect",
            RepairReason::Lagged => "lagged",
            RepairReason::AntiEntropy => "anti_entropy",
            RepairReason::ApplyFailed => "apply_failed",
            RepairReason::Digest => "digest",
        }
    }

    fn index(self) -> usize {
        Self::ALL.iter().position(|r| *r == self).unwrap_or(0)
    }
}

impl fmt::Display for RepairReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What changed a cached document.
///
/// Together the events of one key account for every version its cached document passes
/// through: `Local`, `Remote` and `CaughtUp` each carry the delta from one version to the next
/// (in order, `base` equal to the previous event's version); `Reloaded` carries the new state
/// whole and names the version the document left, so the versions in between are the ones the
/// listener was not shown one by one; `Deleted` ends a lifetime. A listener that falls behind
/// is told how many events it lost ([`Missed`]).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum ChangeCause {
    /// This manager committed the delta.
    Local(SharedDelta),
    /// The delta arrived from another writer and was applied.
    Remote(SharedDelta),
    /// The delta was read from the change log to close a gap (`reason`: what found it) and
    /// applied; a catch-up applies its deltas in order, one event each.
    CaughtUp {
        /// What found the gap.
        reason: RepairReason,
        /// The delta applied.
        delta: SharedDelta,
    },
    /// The cached document was replaced by the store's snapshot. Versions after `from` and
    /// before the event's stamp were not seen one by one.
    Reloaded {
        /// The stamp the cached document had before (`None`: it was not cached).
        from: Option<Stamp>,
        /// The repair that reloaded it, or `None` when the manager itself loaded it (a read of
        /// a document not cached, an update refreshing its copy after a conflict).
        reason: Option<RepairReason>,
        /// The new state, as JSON.
        doc: Arc<Map<String, Value>>,
    },
    /// The document was deleted in the store.
    Deleted,
}

/// A cached document changed.
#[derive(Clone, Debug)]
pub struct ChangeEvent {
    /// The document.
    pub key: Key,
    /// Where it stands now (`None` once deleted).
    pub stamp: Option<Stamp>,
    /// What changed it.
    pub cause: ChangeCause,
}

/// A document could not be kept in sync by the normal path.
#[derive(Clone, Debug)]
pub struct SyncErrorEvent {
    /// The document, when the error concerns one.
    pub key: Option<Key>,
    /// The repair that was attempted, if any.
    pub reason: Option<RepairReason>,
    /// What went wrong.
    pub detail: String,
}

/// An item of an event stream: the event, or how many events this listener missed because it
/// fell more than the channel capacity behind.
pub type EventItem<E> = Result<E, Missed>;

/// A listener fell behind and lost this many events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Missed(pub u64);

/// A stream of events from a bounded broadcast channel. A listener that falls behind loses the
/// oldest events and is told how many ([`Missed`]); it never blocks the manager.
pub struct EventStream<E> {
    inner: Pin<Box<dyn Stream<Item = EventItem<E>> + Send>>,
}

impl<E: Clone + Send + 'static> EventStream<E> {
    pub(crate) fn new(rx: broadcast::Receiver<E>) -> Self {
        let s = futures_util::stream::unfold(rx, |mut rx| async move {
            match rx.recv().await {
                Ok(e) => Some((Ok(e), rx)),
                Err(broadcast::error::RecvError::Lagged(n)) => Some((Err(Missed(n)), rx)),
                Err(broadcast::error::RecvError::Closed) => None,
            }
        });
        EventStream { inner: Box::pin(s) }
    }
}

impl<E> Stream for EventStream<E> {
    type Item = EventItem<E>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

/// Counters of one manager.
#[derive(Default)]
pub(crate) struct Counters {
    pub committed: AtomicU64,
    pub unchanged: AtomicU64,
    pub conflicts: AtomicU64,
    pub applied: AtomicU64,
    pub duplicates: AtomicU64,
    pub ignored_cold: AtomicU64,
    pub loads: AtomicU64,
    pub evicted: AtomicU64,
    pub flushed: AtomicU64,
    pub malformed: AtomicU64,
    pub sync_errors: AtomicU64,
    pub ambiguous: AtomicU64,
    pub indeterminate: AtomicU64,
    pub repairs: [AtomicU64; 8],
}

impl Counters {
    pub fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub fn repaired(&self, reason: RepairReason) {
        self.repairs[reason.index()].fetch_add(1, Ordering::Relaxed);
        metrics::counter!("electric_repairs_total", "reason" => reason.as_str()).increment(1);
    }

    pub fn snapshot(&self, cached: usize, json_trees: usize) -> ManagerStats {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ManagerStats {
            cached,
            json_trees,
            committed: g(&self.committed),
            unchanged: g(&self.unchanged),
            conflicts: g(&self.conflicts),
            applied: g(&self.applied),
            duplicates: g(&self.duplicates),
            ignored_cold: g(&self.ignored_cold),
            loads: g(&self.loads),
            evicted: g(&self.evicted),
            flushed: g(&self.flushed),
            malformed: g(&self.malformed),
            sync_errors: g(&self.sync_errors),
            ambiguous: g(&self.ambiguous),
            indeterminate: g(&self.indeterminate),
            repairs: RepairCounts(RepairReason::ALL.map(|r| (r, g(&self.repairs[r.index()])))),
        }
    }
}

/// Repairs by reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RepairCounts(pub [(RepairReason, u64); 8]);

impl RepairCounts {
    /// The count for one reason.
    pub fn get(&self, reason: RepairReason) -> u64 {
        self.0
            .iter()
            .find(|(r, _)| *r == reason)
            .map_or(0, |(_, n)| *n)
    }

    /// The sum over all reasons.
    pub fn total(&self) -> u64 {
        self.0.iter().map(|(_, n)| n).sum()
    }

    /// Adds another set of counts to this one.
    pub fn add(&mut self, other: &RepairCounts) {
        for (slot, (_, n)) in self.0.iter_mut().zip(other.0.iter()) {
            slot.1 += n;
        }
    }
}

impl Default for RepairCounts {
    fn default() -> Self {
        RepairCounts(RepairReason::ALL.map(|r| (r, 0)))
    }
}

impl Serialize for RepairCounts {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (r, n) in &self.0 {
            m.serialize_entry(r.as_str(), n)?;
        }
        m.end()
    }
}

/// A point-in-time copy of a manager's counters.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ManagerStats {
    /// Documents in the local cache.
    pub cached: usize,
    /// JSON trees kept for hot documents (within `ManagerConfig::json_cache_bytes`).
    pub json_trees: usize,
    /// Commits made by this manager.
    pub committed: u64,
    /// Updates whose closure changed nothing (no commit).
    pub unchanged: u64,
    /// Commits rejected because another writer got there first (each was retried or reported).
    pub conflicts: u64,
    /// Remote deltas applied to the cache.
    pub applied: u64,
    /// Remote deltas ignored because the cache already had them (echoes, duplicates).
    pub duplicates: u64,
    /// Remote deltas ignored because the key was not cached.
    pub ignored_cold: u64,
    /// Snapshot loads from the store.
    pub loads: u64,
    /// Entries evicted because the cache was full.
    pub evicted: u64,
    /// Entries flushed because they were idle too long.
    pub flushed: u64,
    /// Subscription messages that could not be read.
    pub malformed: u64,
    /// Sync errors reported on the sync-error stream.
    pub sync_errors: u64,
    /// Writes (commits and deletes) whose reply was lost, so the store was asked what became of
    /// them.
    pub ambiguous: u64,
    /// Writes returned as [`Error::Indeterminate`](crate::Error::Indeterminate): the store could
    /// not be asked in time, or no longer knew.
    pub indeterminate: u64,
    /// Repairs by reason.
    pub repairs: RepairCounts,
}
