//! Exporting a section's deltas to a bus topic (the original's cross-region path), resuming
//! from the change log after a restart.
//!
//! A [`DeltaExporter`] subscribes to a section of a [`Store`] and publishes every delta on a bus
//! topic, encoded as the documented delta JSON (`content-type:
//! application/vnd.electric.delta+json`), keyed by the document's key and carrying a message
//! id of `<key>@<epoch>/<version>`. It keeps a checkpoint — per document, the stamp of the last
//! delta the broker acknowledged — in an [`ExportCheckpoint`]; [`StoreCheckpoint`] keeps it in the
//! store itself.
//!
//! **Nothing is missed.** The exporter subscribes before it catches up, so a delta committed
//! while it starts is either in the change log it reads or on the subscription. On start, after
//! a lost subscription and when the subscription lags, it reads each checkpointed document's
//! change log after its checkpoint ([`Store::changes_since`]) and publishes what it finds. A
//! live delta that does not follow the checkpoint (a gap) triggers the same read for its
//! document. Where the log no longer reaches back, or the document was re-created (a new
//! epoch), it publishes a *snapshot* delta of the current document instead, which consumers
//! apply on any base. A document it has never seen is read from the start of its log the first
//! time one of its deltas arrives; documents created while the exporter was down and not
//! changed since are exported at their next change, or at start when named in
//! [`ExporterConfig::ids`] (the store cannot list a section's documents).
//!
//! **At least once.** The checkpoint is saved every [`ExporterConfig::checkpoint_interval`], so
//! after a crash the exporter publishes again what it published since. The message id lets a
//! de-duplicating broker (JetStream) drop the repeats, and consumers ignore deltas at or below
//! the version they hold ([`DataManager::apply_remote`](crate::DataManager::apply_remote)
//! does).
//!
//! **Bounded.** At most [`ExporterConfig::max_in_flight`] publishes are awaiting the broker; the
//! subscription's own buffer reports lag, which triggers a catch-up.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::client::{PendingPublish, Producer};
use super::error::{BusError, BusResult};
use super::message::{headers, OutMessage};
use crate::delta::{Delta, DeltaKind, SharedDelta};
use crate::key::{Key, SectionId};
use crate::manager::{DataManager, Document};
use crate::store::{Changes, Store, SubscriptionEvent};
use crate::version::{Stamp, Version};

/// The media type of exported deltas.
pub const DELTA_CONTENT_TYPE: &str = "application/vnd.electric.delta+json; v=1";

/// Where a [`DeltaExporter`] keeps, per document id, the stamp of the last delta the broker
/// acknowledged.
#[async_trait]
pub trait ExportCheckpoint: Send + Sync + 'static {
    /// Every document's stamp.
    async fn load(&self) -> BusResult<HashMap<String, Stamp>>;
    /// Records stamps (a batch of documents at once).
    async fn save(&self, stamps: &[(String, Stamp)]) -> BusResult<()>;
}

/// A checkpoint in memory: survives an exporter, not the process. For tests and for exporters
/// whose consumers can take a full re-export.
#[derive(Debug, Default, Clone)]
pub struct MemoryCheckpoint(Arc<Mutex<HashMap<String, Stamp>>>);

impl MemoryCheckpoint {
    /// An empty checkpoint.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl ExportCheckpoint for MemoryCheckpoint {
    async fn load(&self) -> BusResult<HashMap<String, Stamp>> {
        Ok(self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone())
    }

    async fn save(&self, stamps: &[(String, Stamp)]) -> BusResult<()> {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        for (id, stamp) in stamps {
            map.insert(id.clone(), *stamp);
        }
        Ok(())
    }
}

/// The checkpoint document [`StoreCheckpoint`] keeps.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct CheckpointDoc {
    /// Document id → stamp of the last exported delta.
    pub stamps: HashMap<String, Stamp>,
}

impl Document for CheckpointDoc {
    fn empty(_key: &Key) -> Option<Self> {
        Some(Self::default())
    }
}

/// A checkpoint kept as one document in a store (section `electric-export`, id = the
/// exporter's name), so it lives where the exported data lives. Its size grows with the number
/// of documents exported (about 60 bytes each) and is bounded by the store's document limit.
pub struct StoreCheckpoint {
    manager: DataManager<CheckpointDoc>,
    id: String,
}

impl StoreCheckpoint {
    /// A checkpoint for the exporter `name` in `store`, under `partition`.
    ///
    /// # Errors
    ///
    /// An invalid partition or name (see [`Key`]).
    pub fn new(store: Arc<dyn Store>, partition: &str, name: &str) -> crate::Result<Self> {
        let manager = DataManager::builder(store, partition, "electric-export").build()?;
        manager.key(name)?;
        Ok(Self {
            manager,
            id: name.to_owned(),
        })
    }
}

fn store_error(e: crate::Error) -> BusError {
    BusError::Unavailable {
        reason: format!("export checkpoint: {e}"),
    }
}

#[async_trait]
impl ExportCheckpoint for StoreCheckpoint {
    async fn load(&self) -> BusResult<HashMap<String, Stamp>> {
        Ok(self
            .manager
            .get_or_default(&self.id)
            .await
            .map_err(store_error)?
            .stamps
            .clone())
    }

    async fn save(&self, stamps: &[(String, Stamp)]) -> BusResult<()> {
        self.manager
            .update(&self.id, |doc| {
                for (id, stamp) in stamps {
                    doc.stamps.insert(id.clone(), *stamp);
                }
            })
            .await
            .map(|_| ())
            .map_err(store_error)
    }
}

/// Settings of a [`DeltaExporter`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ExporterConfig {
    /// Document ids to catch up at start besides the checkpointed ones (default none).
    pub ids: Vec<String>,
    /// How often the checkpoint is saved (default 200 ms).
    pub checkpoint_interval: Duration,
    /// Most publishes awaiting the broker (default 256).
    pub max_in_flight: usize,
    /// Backoff bounds when the subscription or the bus fails (default 100 ms to 5 s).
    pub retry_min: Duration,
    /// See [`ExporterConfig::retry_min`].
    pub retry_max: Duration,
}

impl Default for ExporterConfig {
    fn default() -> Self {
        Self {
            ids: Vec::new(),
            checkpoint_interval: Duration::from_millis(200),
            max_in_flight: 256,
            retry_min: Duration::from_millis(100),
            retry_max: Duration::from_secs(5),
        }
    }
}

/// What an exporter did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ExportStats {
    /// Deltas the broker acknowledged.
    pub published: u64,
    /// Deltas read from change logs (catch-ups).
    pub caught_up: u64,
    /// Snapshot deltas published where a log did not reach back or the epoch changed.
    pub snapshots: u64,
    /// Live deltas skipped as already exported.
    pub skipped: u64,
    /// Times the exporter started over after an error (subscription lost, publish failed).
    pub restarts: u64,
}

/// Publishes a section's deltas on a bus topic. See the [module docs](self).
pub struct DeltaExporter {
    store: Arc<dyn Store>,
    section: SectionId,
    producer: Producer,
    checkpoint: Arc<dyn ExportCheckpoint>,
    config: ExporterConfig,
}

/// The message id of an exported delta.
pub fn delta_message_id(delta: &Delta) -> String {
    format!("{}@{}/{}", delta.key, delta.epoch, delta.version)
}

impl DeltaExporter {
    /// An exporter of `section` from `store` through `producer`.
    pub fn new(
        store: Arc<dyn Store>,
        section: SectionId,
        producer: Producer,
        checkpoint: Arc<dyn ExportCheckpoint>,
        config: ExporterConfig,
    ) -> Self {
        Self {
            store,
            section,
            producer,
            checkpoint,
            config,
        }
    }

    /// Runs until `cancel` fires, starting over (with backoff) after errors. Saves the
    /// checkpoint before it returns.
    pub async fn run(self, cancel: CancellationToken) -> ExportStats {
        let mut state = RunState {
            exporter: &self,
            exported: HashMap::new(),
            dirty: HashMap::new(),
            pending: VecDeque::new(),
            stats: ExportStats::default(),
        };
        let mut delay = self.config.retry_min;
        loop {
            match state.session(&cancel).await {
                Ok(()) => break,
                Err(e) => {
                    state.stats.restarts += 1;
                    tracing::warn!(section = %self.section, error = %e, retry_in = ?delay, "delta export interrupted");
                    state.pending.clear();
                    tokio::select! {
                        () = cancel.cancelled() => break,
                        () = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(self.config.retry_max);
                }
            }
        }
        if let Err(e) = state.flush_checkpoint().await {
            tracing::warn!(section = %self.section, error = %e, "saving the export checkpoint failed");
        }
        state.stats
    }
}

struct RunState<'a> {
    exporter: &'a DeltaExporter,
    /// Stamp of the last delta handed to the producer, per id (what comes next must follow it).
    exported: HashMap<String, Stamp>,
    /// Acknowledged stamps not yet saved.
    dirty: HashMap<String, Stamp>,
    /// Publishes awaiting the broker, in order.
    pending: VecDeque<(String, Stamp, PendingPublish)>,
    stats: ExportStats,
}

impl RunState<'_> {
    /// One run: subscribe, catch up, follow. `Ok` only when cancelled.
    async fn session(&mut self, cancel: &CancellationToken) -> BusResult<()> {
        let ex = self.exporter;
        let mut sub = ex
            .store
            .subscribe(&ex.section)
            .await
            .map_err(|e| BusError::Unavailable {
                reason: format!("subscribe to section {}: {e}", ex.section),
            })?;
        // What the broker acknowledged is where this run starts.
        self.exported = ex.checkpoint.load().await?;
        for (id, stamp) in &self.dirty {
            self.exported.insert(id.clone(), *stamp);
        }
        let mut ids: Vec<String> = self.exported.keys().cloned().collect();
        ids.extend(ex.config.ids.iter().cloned());
        ids.sort();
        ids.dedup();
        for id in &ids {
            self.catch_up(id).await?;
        }
        let mut tick = tokio::time::interval(ex.config.checkpoint_interval);
        loop {
            tokio::select! {
                () = cancel.cancelled() => {
                    self.settle_all().await?;
                    return Ok(());
                }
                _ = tick.tick() => {
                    self.settle_ready().await?;
                    self.flush_checkpoint().await?;
                }
                event = sub.next() => match event {
                    None => return Err(BusError::Unavailable { reason: "section subscription ended".into() }),
                    Some(Err(e)) => tracing::warn!(section = %ex.section, error = %e, "unreadable delta on the subscription; the next gap catches up"),
                    Some(Ok(SubscriptionEvent::Lagged { missed })) => {
                        tracing::warn!(section = %ex.section, missed, "export subscription lagged; catching up");
                        let ids: Vec<String> = self.exported.keys().cloned().collect();
                        for id in &ids {
                            self.catch_up(id).await?;
                        }
                    }
                    Some(Ok(SubscriptionEvent::Delta(d))) => self.live(d).await?,
                },
            }
        }
    }

    async fn live(&mut self, delta: SharedDelta) -> BusResult<()> {
        let id = delta.key.id().to_owned();
        match self.exported.get(&id) {
            Some(s) if s.epoch == delta.epoch && delta.version <= s.version => {
                self.stats.skipped += 1;
                Ok(())
            }
            Some(s) if s.epoch == delta.epoch && delta.base == s.version => {
                self.publish(&delta).await
            }
            // A gap, a new epoch, a delete, or a document not seen before.
            _ if delta.kind == DeltaKind::Delete => self.publish(&delta).await,
            _ => self.catch_up(&id).await,
        }
    }

    /// Publishes what `id`'s change log holds after the exported stamp (or a snapshot).
    async fn catch_up(&mut self, id: &str) -> BusResult<()> {
        let ex = self.exporter;
        let key = Key::new(ex.section.partition(), ex.section.section(), id).map_err(|e| {
            BusError::InvalidConfig(format!("document id {id:?} is not a valid key: {e}"))
        })?;
        let from = self.exported.get(id).copied();
        let after = from.map_or(Version::default(), |s| s.version);
        let store_err = |e: crate::Error| BusError::Unavailable {
            reason: format!("read {key}: {e}"),
        };
        match ex
            .store
            .changes_since(&key, after)
            .await
            .map_err(store_err)?
        {
            Changes::Deltas { epoch, deltas } if from.is_none_or(|s| s.epoch == epoch) => {
                for d in deltas {
                    self.stats.caught_up += 1;
                    self.publish(&d).await?;
                }
                Ok(())
            }
            Changes::Missing => Ok(()),
            // The log does not reach back, or the document was re-created: a snapshot.
            Changes::Deltas { .. } | Changes::Trimmed { .. } => {
                let Some(snap) = ex.store.load(&key).await.map_err(store_err)? else {
                    return Ok(());
                };
                let doc = snap.doc.to_map().map_err(|e| BusError::Rejected {
                    reason: format!("{key} holds a member that is not JSON: {e}"),
                })?;
                let digest = crate::digest::Digest::of(&doc);
                let delta = Delta {
                    key: key.clone(),
                    epoch: snap.stamp.epoch,
                    base: Version::default(),
                    version: snap.stamp.version,
                    change_time: snap.change_time,
                    origin: "electric-export".into(),
                    kind: DeltaKind::Snapshot,
                    ops: Delta::snapshot_ops(serde_json::Value::Object(doc)),
                    // A snapshot the exporter built, not a commit: no commit id, and the digest
                    // of what it carries so a consumer can check it.
                    commit: None,
                    digest: Some(digest),
                };
                self.stats.snapshots += 1;
                self.publish(&delta).await
            }
        }
    }

    async fn publish(&mut self, delta: &Delta) -> BusResult<()> {
        let id = delta.key.id().to_owned();
        let msg = OutMessage::new(delta.encode())
            .header(headers::CONTENT_TYPE, DELTA_CONTENT_TYPE)
            .key(delta.key.to_string())
            .id(delta_message_id(delta));
        while self.pending.len() >= self.exporter.config.max_in_flight {
            self.settle_one().await?;
        }
        let pending = self.exporter.producer.send(msg).await?;
        self.exported.insert(id.clone(), delta.stamp());
        self.pending.push_back((id, delta.stamp(), pending));
        Ok(())
    }

    /// Waits for the oldest publish; its stamp becomes checkpointable.
    async fn settle_one(&mut self) -> BusResult<()> {
        if let Some((id, stamp, pending)) = self.pending.pop_front() {
            pending.await?;
            self.stats.published += 1;
            self.dirty.insert(id, stamp);
        }
        Ok(())
    }

    /// Settles the publishes already answered, oldest first, without waiting.
    async fn settle_ready(&mut self) -> BusResult<()> {
        while let Some((_, _, pending)) = self.pending.front_mut() {
            let std::task::Poll::Ready(answer) = futures_util::poll!(&mut *pending) else {
                break;
            };
            if let Some((id, stamp, _)) = self.pending.pop_front() {
                answer?;
                self.stats.published += 1;
                self.dirty.insert(id, stamp);
            }
        }
        Ok(())
    }

    async fn settle_all(&mut self) -> BusResult<()> {
        while !self.pending.is_empty() {
            self.settle_one().await?;
        }
        Ok(())
    }

    async fn flush_checkpoint(&mut self) -> BusResult<()> {
        if self.dirty.is_empty() {
            return Ok(());
        }
        let batch: Vec<(String, Stamp)> = self.dirty.iter().map(|(k, v)| (k.clone(), *v)).collect();
        self.exporter.checkpoint.save(&batch).await?;
        self.dirty.clear();
        Ok(())
    }
}
