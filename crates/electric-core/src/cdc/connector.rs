//! The [`Connector`]: a [`ChangeSource`]'s row changes applied to a section's documents through
//! [`DataManager::update`], so versions, deltas, replicas and the change log work as for any
//! writer. `docs/cdc.md` describes the design; in short:
//!
//! # Mapping
//!
//! A [`TableMapping`] maps one table to one section's JSON documents ([`JsonDoc`]):
//!
//! - [`TableMapping::columns`]: one document per row; the key columns give the document id,
//!   the columns give the members.
//! - [`TableMapping::build`]: one document per row, built by a function of the row.
//! - [`TableMapping::fold`]: several rows into one document (an order book from order rows): a
//!   function gives the document id of a row, another folds a row's upsert or delete into it.
//!
//! A document id is the key columns' values as text (integers in decimal, text as is, booleans,
//! bytes in hex), joined by `/` when there are several; it must be a valid key part
//! ([`crate::key::validate_part`]) and with several columns no value may hold `/`. A key that
//! makes no valid id is counted ([`ErrorKind::InvalidId`]), reported and skipped — never a
//! panic. Column values become JSON: `NULL` → `null`, numbers, text, booleans, bytes as a hex
//! string, `json` as is; [`Value::Unchanged`] leaves the member as it is; a float JSON cannot
//! hold (NaN, infinite) is [`ErrorKind::NonFinite`], counted and skipped.
//!
//! # Idempotence (at-least-once made exactly-once in effect)
//!
//! Every document carries a reserved member (default `_cdc`,
//! [`ConnectorBuilder::position_member`]):
//! `{"rows": {"<row id>": "<position hex>"}, "deleted": {"<row id>": "<position hex>"}}`: for
//! each row folded into it, the position of the last change applied, and for rows deleted from a
//! fold, the position of the delete (dropped once a checkpoint passes it). A change at or below
//! the recorded position of its row is a duplicate and skipped. A document whose last row is
//! deleted is deleted; so that a replayed older change cannot bring it back, the delete first
//! writes a **tombstone** (the delete's position) to the mapping's index, and a change to a
//! missing document at or below its tombstone is skipped. Tombstones are dropped once a
//! checkpoint at or after them is persisted.
//!
//! The index is a fixed set of shard documents (default 256, [`ConnectorBuilder::index_shards`])
//! in the state section `<section>~cdc` of the same store, each mapping a document id to
//! `null` (live) or its tombstone. A document id is entered before the document is first
//! created, so the index is a superset of the mapping's documents: the snapshot sweep walks it.
//!
//! # Checkpoints, bounds, snapshots
//!
//! Batches are applied one round at a time (a round is a batch plus the batches the source
//! already holds, merged up to [`ConnectorBuilder::max_batch_items`] changes, with one
//! checkpoint: the last); within a round, changes to different documents run
//! concurrently (at most [`ConnectorBuilder::max_in_flight`]), changes to one document in order.
//! Only when every change up to a batch's [`ChangeBatch::checkpoint`] is applied (or skipped as
//! a duplicate or a counted error) is the checkpoint persisted and then acknowledged to the
//! source. A retryable store error is retried with backoff, never skipped (the position check
//! makes a retry of an applied change harmless, so even [`crate::Error::Indeterminate`] is
//! retried).
//!
//! Between [`SourceEvent::SnapshotStart`] and [`SourceEvent::SnapshotEnd`] of a table, every
//! row of that table's documents whose recorded position is below the first snapshot row's
//! position (all rows, for an empty snapshot) was not in the snapshot: at `SnapshotEnd` it is
//! deleted (mark and sweep). Sources must give snapshot rows positions above anything they
//! yielded before.
//!
//! [`ChangeBatch::checkpoint`]: super::ChangeBatch::checkpoint

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::stream::{self, StreamExt};
use futures_util::FutureExt;
use serde_json::{Map, Value as Json};
use tokio::sync::{broadcast, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::checkpoints::validate_checkpoint_name;
use super::tracker::Backoff;
use super::{
    CdcError, CdcResult, ChangeBatch, ChangeItem, ChangeSource, Checkpoints, Op, Position, Row,
    SourceEvent, TableName, Value,
};
use crate::error::Error;
use crate::manager::DataManager;

/// The documents a connector writes: JSON objects.
pub type JsonDoc = Map<String, Json>;

/// The default reserved member holding applied positions.
pub const DEFAULT_POSITION_MEMBER: &str = "_cdc";
/// The default number of index shard documents per mapping.
pub const DEFAULT_INDEX_SHARDS: u32 = 256;
/// The size limit of an index shard document (8 MiB: about 600 000 ids per shard).
pub const INDEX_SHARD_MAX_BYTES: usize = 8 << 20;
/// The default bound on concurrently applied documents.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 32;
/// The default bound on changes applied as one round ([`ConnectorBuilder::max_batch_items`]).
pub const DEFAULT_MAX_BATCH_ITEMS: usize = 4096;
/// The suffix of a mapping's state section.
pub const STATE_SECTION_SUFFIX: &str = "~cdc";

/// A mapping function's refusal: counted as [`ErrorKind::Mapping`], the change is skipped.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct MapError(pub String);

impl MapError {
    /// A refusal with a message.
    pub fn new(msg: impl Into<String>) -> Self {
        Self(msg.into())
    }
}

type BuildFn = dyn Fn(&mut JsonDoc, &Row) -> Result<(), MapError> + Send + Sync;
type DocIdFn = dyn Fn(&Row) -> Result<String, MapError> + Send + Sync;
type FoldFn = dyn Fn(&mut JsonDoc, &str, Option<&Row>) -> Result<(), MapError> + Send + Sync;
type AppliedFn = dyn Fn(&ChangeItem, Applied) + Send + Sync;

#[derive(Clone)]
enum Shape {
    Columns {
        only: Option<Vec<Arc<str>>>,
    },
    Build(Arc<BuildFn>),
    Fold {
        doc_id: Arc<DocIdFn>,
        fold: Arc<FoldFn>,
    },
}

/// How one table's rows become one section's documents. See the [module docs](self).
#[derive(Clone)]
pub struct TableMapping {
    table: TableName,
    manager: DataManager<JsonDoc>,
    id_columns: Option<Vec<Arc<str>>>,
    shape: Shape,
}

impl fmt::Debug for TableMapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shape = match &self.shape {
            Shape::Columns { .. } => "columns",
            Shape::Build(_) => "build",
            Shape::Fold { .. } => "fold",
        };
        f.debug_struct("TableMapping")
            .field("table", &self.table)
            .field("section", self.manager.section())
            .field("shape", &shape)
            .finish_non_exhaustive()
    }
}

impl TableMapping {
    /// One document per row: the key columns give the id, every column a member of the same
    /// name (see [`only_columns`](Self::only_columns)).
    pub fn columns(table: TableName, manager: DataManager<JsonDoc>) -> Self {
        Self {
            table,
            manager,
            id_columns: None,
            shape: Shape::Columns { only: None },
        }
    }

    /// One document per row, whose members `build` sets from the row. `build` gets the current
    /// document (empty for a new row; with the reserved member removed) and the row, whose
    /// [`Value::Unchanged`] columns it should leave alone. Deleting the row deletes the
    /// document.
    pub fn build<F>(table: TableName, manager: DataManager<JsonDoc>, build: F) -> Self
    where
        F: Fn(&mut JsonDoc, &Row) -> Result<(), MapError> + Send + Sync + 'static,
    {
        Self {
            table,
            manager,
            id_columns: None,
            shape: Shape::Build(Arc::new(build)),
        }
    }

    /// Several rows into one document. `doc_id` gives a row's document id (from the new row
    /// for inserts and updates; from the old row, or else the key, for deletes — so the
    /// grouping columns must be in the key unless the source sends old rows). `fold` applies
    /// one row's change: `Some(row)` for an insert or update, `None` for a delete; its `&str`
    /// is the row id (the key columns as text). An update that moves a row to another
    /// document is a delete from the old one and an insert into the new one. A document whose
    /// last row is deleted is deleted.
    ///
    /// # Examples
    ///
    /// An order book per instrument from order rows:
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// use std::sync::Arc;
    /// use electric_core::cdc::{connector::{JsonDoc, MapError, TableMapping}, Row, TableName, Value};
    /// use electric_core::{DataManager, MemoryStore};
    ///
    /// let store = Arc::new(MemoryStore::new());
    /// let books = DataManager::<JsonDoc>::builder(store, "demo", "books").build().unwrap();
    /// let mapping = TableMapping::fold(
    ///     TableName::new("public", "orders"),
    ///     books,
    ///     |row: &Row| match row.get("instrument") {
    ///         Some(Value::Text(s)) => Ok(s.clone()),
    ///         other => Err(MapError::new(format!("bad instrument {other:?}"))),
    ///     },
    ///     |book: &mut JsonDoc, order_id: &str, row: Option<&Row>| {
    ///         let orders = book.entry("orders").or_insert_with(|| serde_json::json!({}));
    ///         let orders = orders.as_object_mut().ok_or_else(|| MapError::new("orders"))?;
    ///         match row.and_then(|r| r.get("qty")) {
    ///             Some(Value::Int(q)) => { orders.insert(order_id.into(), (*q).into()); }
    ///             _ => { orders.remove(order_id); }
    ///         }
    ///         Ok(())
    ///     },
    /// );
    /// # let _ = mapping;
    /// # });
    /// ```
    pub fn fold<D, F>(table: TableName, manager: DataManager<JsonDoc>, doc_id: D, fold: F) -> Self
    where
        D: Fn(&Row) -> Result<String, MapError> + Send + Sync + 'static,
        F: Fn(&mut JsonDoc, &str, Option<&Row>) -> Result<(), MapError> + Send + Sync + 'static,
    {
        Self {
            table,
            manager,
            id_columns: None,
            shape: Shape::Fold {
                doc_id: Arc::new(doc_id),
                fold: Arc::new(fold),
            },
        }
    }

    /// The columns whose values form the row (and, unless folded, document) id, in order
    /// (default: the change's key columns, in the source's order).
    pub fn id_columns(mut self, columns: &[&str]) -> Self {
        self.id_columns = Some(columns.iter().map(|c| Arc::from(*c)).collect());
        self
    }

    /// For [`columns`](Self::columns): only these columns become members (default: all).
    pub fn only_columns(mut self, columns: &[&str]) -> Self {
        if let Shape::Columns { only } = &mut self.shape {
            *only = Some(columns.iter().map(|c| Arc::from(*c)).collect());
        }
        self
    }

    /// The table.
    pub fn table(&self) -> &TableName {
        &self.table
    }

    /// The manager written to.
    pub fn manager(&self) -> &DataManager<JsonDoc> {
        &self.manager
    }
}

/// Why a change could not be applied (and was skipped), or what else went wrong; the keys of
/// [`ConnectorStats::errors`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The key made no valid document id.
    InvalidId,
    /// A mapping function refused the row (or panicked).
    Mapping,
    /// A float JSON cannot hold (NaN, infinite).
    NonFinite,
    /// The document would exceed the manager's size limit.
    TooLarge,
    /// The stored document's reserved member is not what the connector writes, or the document
    /// is otherwise unreadable.
    Malformed,
    /// A column has the reserved member's name.
    Reserved,
    /// A store error that was retried (the change was not skipped).
    StoreRetried,
    /// The source failed retryably and was restarted.
    SourceRestarted,
    /// Acknowledging a checkpoint to the source failed (the next acknowledgement covers it).
    Ack,
    /// Persisting a checkpoint failed and was retried.
    CheckpointRetried,
}

impl ErrorKind {
    /// A short name: `invalid_id`, `mapping`, …
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidId => "invalid_id",
            Self::Mapping => "mapping",
            Self::NonFinite => "non_finite",
            Self::TooLarge => "too_large",
            Self::Malformed => "malformed",
            Self::Reserved => "reserved",
            Self::StoreRetried => "store_retried",
            Self::SourceRestarted => "source_restarted",
            Self::Ack => "ack",
            Self::CheckpointRetried => "checkpoint_retried",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A reported error ([`ConnectorHandle::errors`]).
#[derive(Clone, Debug, PartialEq)]
pub struct ConnectorError {
    /// What kind.
    pub kind: ErrorKind,
    /// The table, when a change is to blame.
    pub table: Option<TableName>,
    /// The change's position, when a change is to blame.
    pub position: Option<Position>,
    /// What happened.
    pub detail: String,
}

/// What became of one change ([`ConnectorBuilder::on_applied`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// Written to its document(s).
    Applied,
    /// Already applied (at or below the recorded position or tombstone): skipped.
    Duplicate,
    /// A delete of a row no document holds: nothing to do.
    Missing,
    /// Skipped because of an error of this kind (counted and reported).
    Failed(ErrorKind),
    /// The table has no mapping.
    Ignored,
}

/// A connector's counters ([`ConnectorHandle::stats`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ConnectorStats {
    /// Changes received from the source (replays included).
    pub changes_seen: u64,
    /// Changes applied.
    pub applied: u64,
    /// Changes skipped as already applied.
    pub duplicates: u64,
    /// Deletes of rows no document held.
    pub missing: u64,
    /// Changes of tables without a mapping.
    pub ignored: u64,
    /// Documents deleted (last row deleted, or swept after a snapshot).
    pub documents_deleted: u64,
    /// Rows removed by snapshot sweeps.
    pub swept_rows: u64,
    /// Errors by kind (skipped changes and retried failures).
    pub errors: BTreeMap<ErrorKind, u64>,
    /// Checkpoints persisted and acknowledged.
    pub checkpoints: u64,
    /// The last checkpoint persisted.
    pub last_checkpoint: Option<Position>,
    /// Changes received after the last checkpoint (not yet covered by one).
    pub unacked_changes: u64,
    /// Time since the last checkpoint was persisted (`None` before the first).
    pub checkpoint_age: Option<Duration>,
    /// Times the source was (re)started.
    pub starts: u64,
}

#[derive(Default)]
struct Counters {
    seen: AtomicU64,
    applied: AtomicU64,
    duplicates: AtomicU64,
    missing: AtomicU64,
    ignored: AtomicU64,
    deleted: AtomicU64,
    swept: AtomicU64,
    checkpoints: AtomicU64,
    unacked: AtomicU64,
    starts: AtomicU64,
    errors: Mutex<BTreeMap<ErrorKind, u64>>,
    last_checkpoint_at: Mutex<Option<Instant>>,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

struct Shared {
    counters: Counters,
    errors: broadcast::Sender<ConnectorError>,
    checkpoint: watch::Sender<Option<Position>>,
}

impl Shared {
    fn report(&self, kind: ErrorKind, item: Option<&ChangeItem>, detail: String) {
        *self
            .counters
            .errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(kind)
            .or_default() += 1;
        tracing::warn!(kind = kind.as_str(), position = ?item.map(|i| &i.position), %detail, "cdc connector error");
        let _ = self.errors.send(ConnectorError {
            kind,
            table: item.map(|i| i.table.clone()),
            position: item.map(|i| i.position.clone()),
            detail,
        });
    }
}

/// Builds a [`Connector`].
pub struct ConnectorBuilder {
    source: Box<dyn ChangeSource>,
    checkpoints: Arc<dyn Checkpoints>,
    name: String,
    mappings: Vec<TableMapping>,
    position_member: String,
    index_shards: u32,
    max_in_flight: usize,
    max_batch_items: usize,
    backoff: Backoff,
    on_applied: Option<Arc<AppliedFn>>,
}

impl fmt::Debug for ConnectorBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectorBuilder")
            .field("name", &self.name)
            .field("mappings", &self.mappings)
            .finish_non_exhaustive()
    }
}

impl ConnectorBuilder {
    /// Adds a table mapping (each table once, each section once).
    pub fn table(mut self, mapping: TableMapping) -> Self {
        self.mappings.push(mapping);
        self
    }

    /// The reserved member holding applied positions (default [`DEFAULT_POSITION_MEMBER`]).
    pub fn position_member(mut self, name: impl Into<String>) -> Self {
        self.position_member = name.into();
        self
    }

    /// Index shard documents per mapping (1 to 4096; default [`DEFAULT_INDEX_SHARDS`]). Fixed
    /// for the life of a state section: changing it orphans the old index. A shard holds up
    /// to [`INDEX_SHARD_MAX_BYTES`] (about 14 bytes per id), and creating a document rewrites
    /// its shard's entry after diffing the shard: allow about one shard per 5 000 documents for
    /// large tables. A full shard makes creates fail as [`ErrorKind::TooLarge`] (counted,
    /// reported).
    pub fn index_shards(mut self, n: u32) -> Self {
        self.index_shards = n;
        self
    }

    /// Documents applied concurrently within a batch (at least 1; default
    /// [`DEFAULT_MAX_IN_FLIGHT`]).
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = n;
        self
    }

    /// Changes applied as one round (at least 1; default [`DEFAULT_MAX_BATCH_ITEMS`]). When a
    /// batch has been read and the source already holds more (the connector fell behind, as
    /// with many small transactions), the ready batches are merged into one round of at most
    /// this many changes (a batch is never split, so a round may exceed it by the last batch),
    /// applied together and followed by one checkpoint, the last of the merged batches'.
    /// Beyond the bound, ready batches wait for the next round. A `SnapshotStart`,
    /// `SnapshotEnd`, end of stream or source error ends the merge and is handled after the
    /// round.
    pub fn max_batch_items(mut self, n: usize) -> Self {
        self.max_batch_items = n;
        self
    }

    /// Backoff for source restarts and retried store and checkpoint errors (its `max_retries`
    /// bounds source restarts only; store errors are retried until they clear or the connector
    /// is shut down).
    pub fn backoff(mut self, b: Backoff) -> Self {
        self.backoff = b;
        self
    }

    /// Called after each change with what became of it (for latency measurements and tests).
    /// It runs on the connector's task: keep it short.
    pub fn on_applied<F>(mut self, f: F) -> Self
    where
        F: Fn(&ChangeItem, Applied) + Send + Sync + 'static,
    {
        self.on_applied = Some(Arc::new(f));
        self
    }

    /// Validates the configuration.
    ///
    /// # Errors
    ///
    /// [`CdcError::Config`] for an invalid checkpoint name, position member or bound, no
    /// mapping, a table or section mapped twice, or a section name too long for its state
    /// section.
    pub fn build(self) -> CdcResult<Connector> {
        validate_checkpoint_name(&self.name)?;
        let cfg = |m: String| Err(CdcError::Config(m));
        if self.mappings.is_empty() {
            return cfg("a connector needs at least one table mapping".into());
        }
        if self.position_member.is_empty() {
            return cfg("the position member name must not be empty".into());
        }
        if !(1..=4096).contains(&self.index_shards) {
            return cfg(format!(
                "index_shards {} is not in 1..=4096",
                self.index_shards
            ));
        }
        if self.max_in_flight == 0 {
            return cfg("max_in_flight must be at least 1".into());
        }
        if self.max_batch_items == 0 {
            return cfg("max_batch_items must be at least 1".into());
        }
        let mut tables = HashMap::new();
        let mut sections = Vec::new();
        for (i, m) in self.mappings.iter().enumerate() {
            if tables.insert(m.table.clone(), i).is_some() {
                return cfg(format!("table {} is mapped twice", m.table));
            }
            if sections.contains(m.manager.section()) {
                return cfg(format!("section {} is mapped twice", m.manager.section()));
            }
            sections.push(m.manager.section().clone());
        }
        let mut rts = Vec::new();
        for m in self.mappings {
            let section = m.manager.section();
            let state = DataManager::<JsonDoc>::builder(
                m.manager.store().clone(),
                section.partition(),
                format!("{}{STATE_SECTION_SUFFIX}", section.section()),
            )
            .origin(format!("{}{STATE_SECTION_SUFFIX}", m.manager.origin()))
            .max_document_bytes(INDEX_SHARD_MAX_BYTES)
            .build()
            .map_err(|e| CdcError::Config(format!("state section for {section}: {e}")))?;
            rts.push(MappingRt {
                index: Index {
                    state,
                    shards: self.index_shards,
                    pending: Mutex::new(HashMap::new()),
                    scanned: std::sync::atomic::AtomicBool::new(false),
                },
                m,
            });
        }
        let (errors, _) = broadcast::channel(256);
        Ok(Connector {
            source: self.source,
            checkpoints: self.checkpoints,
            name: self.name,
            rt: Arc::new(Runtime {
                mappings: rts,
                tables,
                member: self.position_member,
                max_in_flight: self.max_in_flight,
                max_batch_items: self.max_batch_items,
                backoff: self.backoff,
                on_applied: self.on_applied,
                shared: Arc::new(Shared {
                    counters: Counters::default(),
                    errors,
                    checkpoint: watch::channel(None).0,
                }),
                last_checkpoint: Mutex::new(None),
            }),
        })
    }
}

/// Applies a source's changes to documents. See the [module docs](self).
///
/// # Examples
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use std::sync::Arc;
/// use electric_core::cdc::connector::{Connector, JsonDoc, TableMapping};
/// use electric_core::cdc::checkpoints::MemoryCheckpoints;
/// use electric_core::cdc::memory::{row, MemoryDatabase, Txn};
/// use electric_core::cdc::{TableName, Value};
/// use electric_core::{DataManager, MemoryStore};
/// use tokio_util::sync::CancellationToken;
///
/// let db = MemoryDatabase::new();
/// let users = TableName::new("public", "users");
/// db.create_table(&users, &["id"]).unwrap();
/// let store = Arc::new(MemoryStore::new());
/// let docs = DataManager::<JsonDoc>::builder(store, "app", "users").build().unwrap();
/// let connector = Connector::builder(
///     db.source("users").build().unwrap(),
///     Arc::new(MemoryCheckpoints::new()),
///     "users",
/// )
/// .table(TableMapping::columns(users.clone(), docs.clone()))
/// .build()
/// .unwrap();
/// let token = CancellationToken::new();
/// let handle = connector.spawn(token.clone());
/// let done = db.commit(Txn::new().insert(&users, row([("id", Value::Int(7)), ("name", Value::Text("ada".into()))]))).unwrap();
/// handle.wait_for_checkpoint(&done.checkpoint).await.unwrap();
/// assert_eq!(docs.get("7").await.unwrap().unwrap()["name"], "ada");
/// token.cancel();
/// handle.join().await.unwrap();
/// # });
/// ```
pub struct Connector {
    source: Box<dyn ChangeSource>,
    checkpoints: Arc<dyn Checkpoints>,
    name: String,
    rt: Arc<Runtime>,
}

impl fmt::Debug for Connector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connector")
            .field("name", &self.name)
            .field("source", &self.source.name())
            .finish_non_exhaustive()
    }
}

impl Connector {
    /// A connector reading `source`, resuming from and persisting to checkpoint `name` in
    /// `checkpoints`.
    pub fn builder(
        source: impl ChangeSource + 'static,
        checkpoints: Arc<dyn Checkpoints>,
        name: impl Into<String>,
    ) -> ConnectorBuilder {
        Self::builder_boxed(Box::new(source), checkpoints, name)
    }

    /// [`builder`](Self::builder) for a source chosen at run time.
    pub fn builder_boxed(
        source: Box<dyn ChangeSource>,
        checkpoints: Arc<dyn Checkpoints>,
        name: impl Into<String>,
    ) -> ConnectorBuilder {
        ConnectorBuilder {
            source,
            checkpoints,
            name: name.into(),
            mappings: Vec::new(),
            position_member: DEFAULT_POSITION_MEMBER.into(),
            index_shards: DEFAULT_INDEX_SHARDS,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            max_batch_items: DEFAULT_MAX_BATCH_ITEMS,
            backoff: Backoff::default(),
            on_applied: None,
        }
    }

    /// Spawns the connector on the current Tokio runtime. It stops when `token` is cancelled
    /// (or [`ConnectorHandle::shutdown`]), when the source ends, or on a permanent error.
    pub fn spawn(self, token: CancellationToken) -> ConnectorHandle {
        let shared = self.rt.shared.clone();
        let task = tokio::spawn(self.run(token.clone()));
        ConnectorHandle {
            shared,
            token,
            task,
        }
    }

    /// Runs the connector on the caller's task (what [`spawn`](Self::spawn) runs). Dropping the
    /// future mid-way is as safe as a crash: nothing is lost or applied twice.
    ///
    /// # Errors
    ///
    /// A permanent source or checkpoint error, a retryable one past the backoff's
    /// `max_retries`, or a store error that retrying cannot fix ([`CdcError::Sink`]).
    pub async fn run(mut self, token: CancellationToken) -> CdcResult<()> {
        let rt = self.rt.clone();
        let stored = retry(&rt, &token, ErrorKind::CheckpointRetried, || {
            self.checkpoints.load(&self.name)
        })
        .await?;
        let Some(mut from) = stored else {
            return Ok(());
        };
        *rt.last_checkpoint.lock().unwrap_or_else(|p| p.into_inner()) = from.clone();
        rt.shared.checkpoint.send_replace(from.clone());
        // Drop tombstones a previous run left that the stored checkpoint has passed.
        if let Some(cp) = &from {
            rt.collect_tombstones(&token, cp).await?;
        }
        let mut failures = 0u32;
        loop {
            bump(&rt.shared.counters.starts);
            let started = tokio::select! {
                _ = token.cancelled() => return Ok(()),
                r = self.source.start(from.clone()) => r,
            };
            let result = match started {
                Ok(()) => self.stream(&token, &mut from, &mut failures).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(()) => return Ok(()),
                Err(e) if e.is_retryable() && !matches!(e, CdcError::Sink(_)) => {
                    failures += 1;
                    if !rt.backoff.allows(failures) {
                        return Err(e);
                    }
                    rt.shared
                        .report(ErrorKind::SourceRestarted, None, e.to_string());
                    let wait = rt.backoff.delay(failures);
                    tokio::select! {
                        _ = token.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn stream(
        &mut self,
        token: &CancellationToken,
        from: &mut Option<Position>,
        failures: &mut u32,
    ) -> CdcResult<()> {
        let rt = self.rt.clone();
        let mut snapshots: HashMap<TableName, Option<Position>> = HashMap::new();
        let mut last_seen: Option<Position> = from.clone();
        // An event read while merging ready batches, handled after the merged round.
        let mut pending: Option<CdcResult<Option<SourceEvent>>> = None;
        loop {
            let ev = match pending.take() {
                Some(ev) => ev?,
                None => tokio::select! {
                    _ = token.cancelled() => return Ok(()),
                    ev = self.source.next() => ev?,
                },
            };
            let Some(ev) = ev else { return Ok(()) };
            *failures = 0;
            match ev {
                SourceEvent::SnapshotStart { table, reason } => {
                    tracing::info!(%table, %reason, "cdc snapshot starts");
                    snapshots.insert(table, None);
                }
                SourceEvent::SnapshotEnd { table } => {
                    if let Some(mark) = snapshots.remove(&table) {
                        if let Some(&i) = rt.tables.get(&table) {
                            let at = last_seen
                                .clone()
                                .unwrap_or_else(|| Position::from_bytes(Vec::new()));
                            rt.sweep(token, i, mark.as_ref(), &at).await?;
                        }
                    }
                }
                SourceEvent::Changes(mut batch) => {
                    // Merge the batches the source already holds (`next` is cancel safe, so
                    // polling it once and dropping it loses nothing).
                    while batch.items.len() < rt.max_batch_items {
                        match self.source.next().now_or_never() {
                            None => break,
                            Some(Ok(Some(SourceEvent::Changes(more)))) => {
                                batch.items.extend(more.items);
                                if more.checkpoint.is_some() {
                                    batch.checkpoint = more.checkpoint;
                                }
                            }
                            Some(other) => {
                                pending = Some(other);
                                break;
                            }
                        }
                    }
                    for item in &batch.items {
                        if let Some(slot) = snapshots.get_mut(&item.table) {
                            if slot.is_none() {
                                *slot = Some(item.position.clone());
                            }
                        }
                        if last_seen.as_ref().is_none_or(|p| item.position > *p) {
                            last_seen = Some(item.position.clone());
                        }
                    }
                    let ChangeBatch { items, checkpoint } = batch;
                    rt.apply_batch(token, items).await?;
                    if token.is_cancelled() {
                        return Ok(());
                    }
                    if let Some(cp) = checkpoint {
                        retry(&rt, token, ErrorKind::CheckpointRetried, || {
                            self.checkpoints.store(&self.name, &cp)
                        })
                        .await?;
                        if let Err(e) = self.source.ack(&cp).await {
                            rt.shared.report(ErrorKind::Ack, None, e.to_string());
                        }
                        let c = &rt.shared.counters;
                        bump(&c.checkpoints);
                        c.unacked.store(0, Ordering::Relaxed);
                        *c.last_checkpoint_at
                            .lock()
                            .unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
                        *rt.last_checkpoint.lock().unwrap_or_else(|p| p.into_inner()) =
                            Some(cp.clone());
                        rt.shared.checkpoint.send_replace(Some(cp.clone()));
                        if last_seen.as_ref().is_none_or(|p| cp > *p) {
                            last_seen = Some(cp.clone());
                        }
                        rt.collect_tombstones(token, &cp).await?;
                        *from = Some(cp);
                    }
                }
            }
        }
    }
}

/// Retries `op` while it fails retryably (counting `kind`), with backoff; `Ok(None)` when
/// cancelled.
async fn retry<T, F, Fut>(
    rt: &Runtime,
    token: &CancellationToken,
    kind: ErrorKind,
    mut op: F,
) -> CdcResult<Option<T>>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = CdcResult<T>>,
{
    let mut attempt = 0;
    loop {
        match op().await {
            Ok(v) => return Ok(Some(v)),
            Err(e) if e.is_retryable() => {
                attempt += 1;
                rt.shared.report(kind, None, e.to_string());
                tokio::select! {
                    _ = token.cancelled() => return Ok(None),
                    _ = tokio::time::sleep(rt.backoff.delay(attempt)) => {}
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// A running [`Connector`].
pub struct ConnectorHandle {
    shared: Arc<Shared>,
    token: CancellationToken,
    task: tokio::task::JoinHandle<CdcResult<()>>,
}

impl fmt::Debug for ConnectorHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectorHandle").finish_non_exhaustive()
    }
}

impl ConnectorHandle {
    /// The counters so far.
    pub fn stats(&self) -> ConnectorStats {
        let c = &self.shared.counters;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ConnectorStats {
            changes_seen: l(&c.seen),
            applied: l(&c.applied),
            duplicates: l(&c.duplicates),
            missing: l(&c.missing),
            ignored: l(&c.ignored),
            documents_deleted: l(&c.deleted),
            swept_rows: l(&c.swept),
            errors: c.errors.lock().unwrap_or_else(|p| p.into_inner()).clone(),
            checkpoints: l(&c.checkpoints),
            last_checkpoint: self.shared.checkpoint.borrow().clone(),
            unacked_changes: l(&c.unacked),
            checkpoint_age: c
                .last_checkpoint_at
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .map(|t| t.elapsed()),
            starts: l(&c.starts),
        }
    }

    /// Reported errors from now on (bounded: a receiver that falls behind gets
    /// `RecvError::Lagged`; the counts in [`stats`](Self::stats) are complete).
    pub fn errors(&self) -> broadcast::Receiver<ConnectorError> {
        self.shared.errors.subscribe()
    }

    /// The last persisted checkpoint, as it changes.
    pub fn checkpoints(&self) -> watch::Receiver<Option<Position>> {
        self.shared.checkpoint.subscribe()
    }

    /// Waits until a checkpoint at or after `position` is persisted.
    ///
    /// # Errors
    ///
    /// [`CdcError::Closed`] if the connector stopped first.
    pub async fn wait_for_checkpoint(&self, position: &Position) -> CdcResult<()> {
        let mut rx = self.shared.checkpoint.subscribe();
        loop {
            if rx
                .borrow_and_update()
                .as_ref()
                .is_some_and(|p| p >= position)
            {
                return Ok(());
            }
            if self.task.is_finished() {
                return Err(CdcError::Closed);
            }
            tokio::select! {
                r = rx.changed() => if r.is_err() { return Err(CdcError::Closed) },
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
    }

    /// Asks the connector to stop (as cancelling its token does).
    pub fn shutdown(&self) {
        self.token.cancel();
    }

    /// Stops the task at once, wherever it is — as a crash would (tests use this).
    pub fn abort(&self) {
        self.task.abort();
    }

    /// Whether the task has ended.
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Waits for the connector to end.
    ///
    /// # Errors
    ///
    /// What stopped it (see [`Connector::run`]); [`CdcError::Closed`] if it was aborted or
    /// panicked.
    pub async fn join(self) -> CdcResult<()> {
        self.task.await.unwrap_or(Err(CdcError::Closed))
    }
}

// ---- the apply path -------------------------------------------------------------------------

struct Runtime {
    mappings: Vec<MappingRt>,
    tables: HashMap<TableName, usize>,
    member: String,
    max_in_flight: usize,
    max_batch_items: usize,
    backoff: Backoff,
    on_applied: Option<Arc<AppliedFn>>,
    shared: Arc<Shared>,
    /// The last persisted checkpoint: `deleted` entries at or below it are dropped.
    last_checkpoint: Mutex<Option<Position>>,
}

struct MappingRt {
    m: TableMapping,
    index: Index,
}

/// One row's change to one document.
struct RowOp {
    doc_id: String,
    row_id: String,
    /// `None`: the row is deleted (from this document).
    row: Option<Row>,
    position: Position,
    /// The change it came from, in the batch.
    item: usize,
    /// A snapshot sweep's delete: applied whatever the recorded position (the sweep decided).
    force: bool,
}

/// What applying a row op did.
enum Done {
    Applied,
    Duplicate,
    Missing,
    Failed(ErrorKind),
}

/// What the update closure decided.
enum Decision {
    Write,
    Duplicate,
    /// The document's last row went: delete it, with a tombstone at this position.
    DeleteDoc(Position),
    Fail(ErrorKind, String),
}

/// The reserved member's content.
#[derive(Default)]
struct Meta {
    rows: BTreeMap<String, Position>,
    deleted: BTreeMap<String, Position>,
}

impl Meta {
    fn parse(v: Option<&Json>) -> Result<Self, String> {
        let Some(v) = v else {
            return Ok(Self::default());
        };
        let obj = v.as_object().ok_or("not an object")?;
        let mut meta = Self::default();
        for (name, target) in [("rows", &mut meta.rows), ("deleted", &mut meta.deleted)] {
            match obj.get(name) {
                None => {}
                Some(Json::Object(m)) => {
                    for (k, p) in m {
                        let p = p.as_str().ok_or("a position is not a string")?;
                        target.insert(k.clone(), Position::from_hex(p).map_err(|e| e.to_string())?);
                    }
                }
                Some(_) => return Err(format!("{name} is not an object")),
            }
        }
        Ok(meta)
    }

    fn to_json(&self) -> Json {
        let m = |t: &BTreeMap<String, Position>| {
            Json::Object(
                t.iter()
                    .map(|(k, p)| (k.clone(), Json::String(p.to_hex())))
                    .collect(),
            )
        };
        let mut o = Map::new();
        o.insert("rows".into(), m(&self.rows));
        if !self.deleted.is_empty() {
            o.insert("deleted".into(), m(&self.deleted));
        }
        Json::Object(o)
    }

    fn last(&self, row: &str) -> Option<&Position> {
        match (self.rows.get(row), self.deleted.get(row)) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }
}

/// A column value as JSON; `Ok(None)` for [`Value::Unchanged`].
fn to_json(v: &Value) -> Result<Option<Json>, (ErrorKind, String)> {
    Ok(Some(match v {
        Value::Null => Json::Null,
        Value::Bool(b) => Json::Bool(*b),
        Value::Int(i) => Json::from(*i),
        Value::Float(f) => match serde_json::Number::from_f64(*f) {
            Some(n) => Json::Number(n),
            None => {
                return Err((
                    ErrorKind::NonFinite,
                    format!("{f} cannot be stored in JSON"),
                ))
            }
        },
        Value::Text(s) => Json::String(s.clone()),
        Value::Bytes(b) => Json::String(Position::from_bytes(b.clone()).to_hex()),
        Value::Json(j) => j.clone(),
        Value::Unchanged => return Ok(None),
    }))
}

/// A key value as id text.
fn id_text(v: &Value) -> Result<String, String> {
    match v {
        Value::Int(i) => Ok(i.to_string()),
        Value::Text(s) => Ok(s.clone()),
        Value::Bool(b) => Ok(b.to_string()),
        Value::Bytes(b) => Ok(Position::from_bytes(b.clone()).to_hex()),
        Value::Float(f) if f.is_finite() => Ok(f.to_string()),
        other => Err(format!("a key value of {other:?} makes no id")),
    }
}

/// `columns`' values of `rows` (the first row holding each) as an id.
fn make_id(columns: &[Arc<str>], rows: &[&Row]) -> Result<String, String> {
    let mut parts = Vec::with_capacity(columns.len());
    for c in columns {
        let v = rows
            .iter()
            .find_map(|r| r.get(c))
            .ok_or_else(|| format!("key column {c} missing"))?;
        let t = id_text(v)?;
        if columns.len() > 1 && t.contains('/') {
            return Err(format!(
                "key value {t:?} holds '/', the separator of a multi-column id"
            ));
        }
        parts.push(t);
    }
    let id = parts.join("/");
    crate::key::validate_part("id", &id).map_err(|e| e.to_string())?;
    Ok(id)
}

fn catch<T>(f: impl FnOnce() -> Result<T, MapError>) -> Result<T, (ErrorKind, String)> {
    match std::panic::catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err((ErrorKind::Mapping, e.0)),
        Err(_) => Err((ErrorKind::Mapping, "the mapping function panicked".into())),
    }
}

impl Runtime {
    fn lock_checkpoint(&self) -> Option<Position> {
        self.last_checkpoint
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// A change's row ops, or why it has none.
    fn expand(
        &self,
        mi: usize,
        item: &ChangeItem,
        idx: usize,
    ) -> Result<Vec<RowOp>, (ErrorKind, String)> {
        let m = &self.mappings[mi].m;
        if let Some(r) = &item.new {
            if r.get(&self.member).is_some() {
                return Err((
                    ErrorKind::Reserved,
                    format!("column {} is the reserved position member", self.member),
                ));
            }
        }
        let key_cols: Vec<Arc<str>> = match &m.id_columns {
            Some(c) => c.clone(),
            None => item.key.columns.iter().map(|(c, _)| c.clone()).collect(),
        };
        if key_cols.is_empty() {
            return Err((ErrorKind::InvalidId, "the change has no key columns".into()));
        }
        let mut sources: Vec<&Row> = vec![&item.key];
        sources.extend(item.new.iter());
        sources.extend(item.old.iter());
        let row_id = make_id(&key_cols, &sources).map_err(|e| (ErrorKind::InvalidId, e))?;
        let new_row = match item.op {
            Op::Delete => None,
            Op::Insert | Op::Update => Some(item.new.clone().unwrap_or_else(|| item.key.clone())),
        };
        let op = |doc_id: String, row: Option<Row>| RowOp {
            doc_id,
            row_id: row_id.clone(),
            row,
            position: item.position.clone(),
            item: idx,
            force: false,
        };
        match &m.shape {
            Shape::Columns { .. } | Shape::Build(_) => Ok(vec![op(row_id.clone(), new_row)]),
            Shape::Fold { doc_id, .. } => {
                let id_of = |r: &Row| -> Result<String, (ErrorKind, String)> {
                    let id = catch(|| doc_id(r))?;
                    crate::key::validate_part("id", &id)
                        .map_err(|e| (ErrorKind::InvalidId, e.to_string()))?;
                    Ok(id)
                };
                match new_row {
                    None => {
                        let from = item.old.as_ref().unwrap_or(&item.key);
                        Ok(vec![op(id_of(from)?, None)])
                    }
                    Some(new) => {
                        let to = id_of(&new)?;
                        let mut ops = Vec::new();
                        if let Some(old) = &item.old {
                            if let Ok(prev) = id_of(old) {
                                if prev != to {
                                    ops.push(op(prev, None));
                                }
                            }
                        }
                        ops.push(op(to, Some(new)));
                        Ok(ops)
                    }
                }
            }
        }
    }

    /// Applies a batch: row ops grouped by document, documents concurrently, each in order.
    async fn apply_batch(
        &self,
        token: &CancellationToken,
        items: Vec<ChangeItem>,
    ) -> CdcResult<()> {
        let c = &self.shared.counters;
        c.seen.fetch_add(items.len() as u64, Ordering::Relaxed);
        c.unacked.fetch_add(items.len() as u64, Ordering::Relaxed);
        // Per item: how many ops are outstanding and the worst outcome so far.
        let mut outcome: Vec<Option<Applied>> = vec![None; items.len()];
        let mut groups: Vec<(usize, Vec<RowOp>)> = Vec::new();
        let mut by_doc: HashMap<(usize, String), usize> = HashMap::new();
        for (idx, item) in items.iter().enumerate() {
            let Some(&mi) = self.tables.get(&item.table) else {
                bump(&c.ignored);
                outcome[idx] = Some(Applied::Ignored);
                continue;
            };
            match self.expand(mi, item, idx) {
                Ok(ops) => {
                    for op in ops {
                        let g = *by_doc.entry((mi, op.doc_id.clone())).or_insert_with(|| {
                            groups.push((mi, Vec::new()));
                            groups.len() - 1
                        });
                        groups[g].1.push(op);
                    }
                }
                Err((kind, detail)) => {
                    self.shared.report(kind, Some(item), detail);
                    outcome[idx] = Some(Applied::Failed(kind));
                }
            }
        }
        let results: Vec<CdcResult<Vec<(usize, Done)>>> = stream::iter(groups)
            .map(|(mi, ops)| async move {
                let mut done = Vec::with_capacity(ops.len());
                for op in &ops {
                    let d = self.apply_op(token, mi, op).await?;
                    done.push((op.item, d));
                }
                Ok(done)
            })
            .buffer_unordered(self.max_in_flight)
            .collect()
            .await;
        for r in results {
            for (idx, d) in r? {
                let a = match d {
                    Done::Applied => Applied::Applied,
                    Done::Duplicate => Applied::Duplicate,
                    Done::Missing => Applied::Missing,
                    Done::Failed(k) => {
                        // Reported where it happened.
                        Applied::Failed(k)
                    }
                };
                // An item split into two ops (a fold move) reports its most notable outcome.
                outcome[idx] = Some(match (outcome[idx], a) {
                    (Some(Applied::Failed(k)), _) | (_, Applied::Failed(k)) => Applied::Failed(k),
                    (Some(Applied::Applied), _) | (_, Applied::Applied) => Applied::Applied,
                    (_, other) => other,
                });
            }
        }
        for (idx, o) in outcome.into_iter().enumerate() {
            let o = o.unwrap_or(Applied::Missing);
            match o {
                Applied::Applied => bump(&c.applied),
                Applied::Duplicate => bump(&c.duplicates),
                Applied::Missing => bump(&c.missing),
                Applied::Failed(_) | Applied::Ignored => {}
            }
            if let Some(f) = &self.on_applied {
                f(&items[idx], o);
            }
        }
        Ok(())
    }

    /// Applies one row op, retrying retryable store errors until they clear or `token` is
    /// cancelled.
    async fn apply_op(&self, token: &CancellationToken, mi: usize, op: &RowOp) -> CdcResult<Done> {
        let mut attempt = 0;
        loop {
            match self.try_apply(mi, op).await {
                Ok(d) => return Ok(d),
                Err(e) => {
                    let retryable = e.is_retryable() || matches!(e, Error::Indeterminate { .. });
                    if let Some(kind) = skip_kind(&e) {
                        self.shared.report(
                            kind,
                            None,
                            format!("{} at {}: {e}", op.doc_id, op.position),
                        );
                        return Ok(Done::Failed(kind));
                    }
                    if !retryable {
                        return Err(CdcError::Sink(e));
                    }
                    attempt += 1;
                    self.shared
                        .report(ErrorKind::StoreRetried, None, e.to_string());
                    tokio::select! {
                        _ = token.cancelled() => return Ok(Done::Failed(ErrorKind::StoreRetried)),
                        _ = tokio::time::sleep(self.backoff.delay(attempt)) => {}
                    }
                }
            }
        }
    }

    async fn try_apply(&self, mi: usize, op: &RowOp) -> crate::Result<Done> {
        let rt = &self.mappings[mi];
        let manager = &rt.m.manager;
        let exists = manager.get(&op.doc_id).await?.is_some();
        if !exists {
            if let Some(t) = rt.index.tombstone(&op.doc_id).await? {
                if op.position <= t {
                    // A tombstone a crashed run left: collect it once a checkpoint passes it.
                    self.remember_tombstone(mi, &op.doc_id, &t);
                    return Ok(Done::Duplicate);
                }
            }
            if op.row.is_none() {
                return Ok(Done::Missing);
            }
            rt.index.mark_live(&op.doc_id).await?;
        }
        let prune_at = self.lock_checkpoint();
        let mut decision = None;
        let _outcome = manager
            .update(&op.doc_id, |doc| {
                let mut new = doc.clone();
                let d = self.decide(&rt.m, &mut new, op, prune_at.as_ref());
                if matches!(d, Decision::Write) {
                    *doc = new;
                }
                decision = Some(d);
            })
            .await?;
        match decision {
            Some(Decision::Write) => Ok(Done::Applied),
            Some(Decision::Duplicate) | None => Ok(Done::Duplicate),
            Some(Decision::Fail(kind, detail)) => {
                self.shared.report(
                    kind,
                    None,
                    format!("{} at {}: {detail}", op.doc_id, op.position),
                );
                Ok(Done::Failed(kind))
            }
            Some(Decision::DeleteDoc(at)) => {
                rt.index.set_tombstone(&op.doc_id, &at).await?;
                manager.delete(&op.doc_id).await?;
                bump(&self.shared.counters.deleted);
                self.remember_tombstone(mi, &op.doc_id, &at);
                Ok(Done::Applied)
            }
        }
    }

    fn remember_tombstone(&self, mi: usize, doc_id: &str, pos: &Position) {
        let mut pending = self.mappings[mi]
            .index
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let slot = pending
            .entry(doc_id.to_string())
            .or_insert_with(|| pos.clone());
        if *pos > *slot {
            *slot = pos.clone();
        }
    }

    /// Applies `op` to `doc` (a copy), unless it is a duplicate.
    fn decide(
        &self,
        m: &TableMapping,
        doc: &mut JsonDoc,
        op: &RowOp,
        prune_at: Option<&Position>,
    ) -> Decision {
        let mut meta = match Meta::parse(doc.get(&self.member)) {
            Ok(meta) => meta,
            Err(e) => {
                return Decision::Fail(ErrorKind::Malformed, format!("member {}: {e}", self.member))
            }
        };
        let last = meta.last(&op.row_id).cloned();
        if !op.force && last.as_ref().is_some_and(|l| op.position <= *l) {
            return Decision::Duplicate;
        }
        // What a delete records: never below a position already recorded (a forced sweep
        // delete may carry a lower one).
        let high = meta
            .rows
            .values()
            .chain(meta.deleted.values())
            .max()
            .cloned()
            .map_or(op.position.clone(), |h| h.max(op.position.clone()));
        let delete_at = last.map_or(op.position.clone(), |l| l.max(op.position.clone()));
        doc.remove(&self.member);
        let result: Result<(), (ErrorKind, String)> = match (&m.shape, &op.row) {
            (Shape::Columns { only }, Some(row)) => (|| {
                for (c, v) in &row.columns {
                    if only.as_ref().is_some_and(|o| !o.contains(c)) {
                        continue;
                    }
                    if let Some(j) = to_json(v)? {
                        doc.insert(c.to_string(), j);
                    }
                }
                Ok(())
            })(),
            (Shape::Build(f), Some(row)) => catch(|| f(doc, row)),
            (Shape::Fold { fold, .. }, row) => catch(|| fold(doc, &op.row_id, row.as_ref())),
            (_, None) => Ok(()),
        };
        if let Err((kind, detail)) = result {
            return Decision::Fail(kind, detail);
        }
        match &op.row {
            Some(_) => {
                meta.deleted.remove(&op.row_id);
                meta.rows.insert(op.row_id.clone(), op.position.clone());
            }
            None => {
                meta.rows.remove(&op.row_id);
                meta.deleted.insert(op.row_id.clone(), delete_at);
            }
        }
        if let Some(cp) = prune_at {
            meta.deleted.retain(|_, p| *p > *cp);
        }
        if meta.rows.is_empty() {
            return Decision::DeleteDoc(high);
        }
        doc.insert(self.member.clone(), meta.to_json());
        Decision::Write
    }

    /// Drops the tombstones at or below `cp` this run wrote (all mappings), and on the first
    /// call, those a previous run left.
    async fn collect_tombstones(&self, token: &CancellationToken, cp: &Position) -> CdcResult<()> {
        for rt in &self.mappings {
            let due: Vec<(String, Position)> = {
                let mut pending = rt.index.pending.lock().unwrap_or_else(|p| p.into_inner());
                let due: Vec<(String, Position)> = pending
                    .iter()
                    .filter(|(_, p)| *p <= cp)
                    .map(|(d, p)| (d.clone(), p.clone()))
                    .collect();
                for (d, _) in &due {
                    pending.remove(d);
                }
                due
            };
            let leftovers = if rt.index.scanned.swap(true, Ordering::Relaxed) {
                Vec::new()
            } else {
                let mut v = Vec::new();
                for (id, tomb) in self.retry_store(token, || rt.index.list()).await? {
                    if let Some(t) = tomb.filter(|t| t <= cp) {
                        v.push((id, t));
                    }
                }
                v
            };
            for (id, pos) in due.into_iter().chain(leftovers) {
                self.retry_store(token, || rt.index.clear_tombstone(&id, &pos))
                    .await?;
            }
        }
        Ok(())
    }

    /// `op` retried while the store fails retryably; a permanent error stops the connector.
    async fn retry_store<T, F, Fut>(&self, token: &CancellationToken, mut op: F) -> CdcResult<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = crate::Result<T>>,
    {
        let mut attempt = 0;
        loop {
            match op().await {
                Ok(v) => return Ok(v),
                Err(e) if e.is_retryable() || matches!(e, Error::Indeterminate { .. }) => {
                    attempt += 1;
                    self.shared
                        .report(ErrorKind::StoreRetried, None, e.to_string());
                    tokio::select! {
                        _ = token.cancelled() => return Err(CdcError::Closed),
                        _ = tokio::time::sleep(self.backoff.delay(attempt)) => {}
                    }
                }
                Err(e) => return Err(CdcError::Sink(e)),
            }
        }
    }

    /// Mark and sweep after a snapshot of mapping `mi`'s table: every row recorded below
    /// `mark` (all rows when `None`) is deleted at position `at`.
    async fn sweep(
        &self,
        token: &CancellationToken,
        mi: usize,
        mark: Option<&Position>,
        at: &Position,
    ) -> CdcResult<()> {
        let rt = &self.mappings[mi];
        let ids = self.retry_store(token, || rt.index.list()).await?;
        let mut ops = Vec::new();
        for (id, tomb) in ids {
            if tomb.is_some() {
                continue;
            }
            let doc = self.retry_store(token, || rt.m.manager.get(&id)).await;
            let doc = match doc {
                Ok(d) => d,
                Err(CdcError::Sink(e)) if skip_kind(&e).is_some() => {
                    self.shared
                        .report(ErrorKind::Malformed, None, format!("sweep {id}: {e}"));
                    continue;
                }
                Err(e) => return Err(e),
            };
            let Some(doc) = doc else {
                // Entered in the index but never created (a crash in between).
                self.retry_store(token, || rt.index.remove_live(&id))
                    .await?;
                continue;
            };
            let meta = match Meta::parse(doc.get(&self.member)) {
                Ok(m) => m,
                Err(e) => {
                    self.shared
                        .report(ErrorKind::Malformed, None, format!("sweep {id}: {e}"));
                    continue;
                }
            };
            for (row, pos) in &meta.rows {
                if mark.is_none_or(|m| pos < m) {
                    ops.push(RowOp {
                        doc_id: id.clone(),
                        row_id: row.clone(),
                        row: None,
                        position: at.clone(),
                        item: 0,
                        force: true,
                    });
                }
            }
        }
        let swept = ops.len() as u64;
        let results: Vec<CdcResult<Done>> = stream::iter(ops)
            .map(|op| async move { self.apply_op(token, mi, &op).await })
            .buffer_unordered(self.max_in_flight)
            .collect()
            .await;
        for r in results {
            r?;
        }
        self.shared
            .counters
            .swept
            .fetch_add(swept, Ordering::Relaxed);
        tracing::info!(table = %rt.m.table, swept, "cdc snapshot sweep done");
        Ok(())
    }
}

/// The kinds of store error that skip a change (counted) rather than stop or retry.
fn skip_kind(e: &Error) -> Option<ErrorKind> {
    match e {
        Error::InvalidKey { .. } => Some(ErrorKind::InvalidId),
        Error::NonFiniteNumber { .. } => Some(ErrorKind::NonFinite),
        Error::DocumentTooLarge { .. } => Some(ErrorKind::TooLarge),
        Error::Malformed { .. } | Error::NotAnObject { .. } | Error::Serde { .. } => {
            Some(ErrorKind::Malformed)
        }
        _ => None,
    }
}

/// A mapping's index: shard documents in its state section, document id → `null` (live) or
/// tombstone position (hex).
struct Index {
    state: DataManager<JsonDoc>,
    shards: u32,
    /// Tombstones this run wrote or met, not yet collected: at most one per document, so
    /// bounded by the deletes since the last checkpoint.
    pending: Mutex<HashMap<String, Position>>,
    /// Whether the shards were scanned for leftovers yet.
    scanned: std::sync::atomic::AtomicBool,
}

impl Index {
    fn shard_of(&self, doc_id: &str) -> String {
        let h = xxhash_rust::xxh3::xxh3_64(doc_id.as_bytes());
        format!("idx-{:04}", h % u64::from(self.shards))
    }

    async fn entry(&self, doc_id: &str) -> crate::Result<Option<Json>> {
        let shard = self.shard_of(doc_id);
        Ok(self
            .state
            .get(&shard)
            .await?
            .and_then(|d| d.get(doc_id).cloned()))
    }

    async fn tombstone(&self, doc_id: &str) -> crate::Result<Option<Position>> {
        match self.entry(doc_id).await? {
            Some(Json::String(h)) => {
                Position::from_hex(&h)
                    .map(Some)
                    .map_err(|e| Error::Malformed {
                        what: "cdc index entry",
                        reason: format!("{doc_id}: {e}"),
                    })
            }
            _ => Ok(None),
        }
    }

    async fn mark_live(&self, doc_id: &str) -> crate::Result<()> {
        if matches!(self.entry(doc_id).await?, Some(Json::Null)) {
            return Ok(());
        }
        self.state
            .update(&self.shard_of(doc_id), |d| {
                d.insert(doc_id.to_string(), Json::Null);
            })
            .await
            .map(|_| ())
    }

    async fn set_tombstone(&self, doc_id: &str, pos: &Position) -> crate::Result<()> {
        let hex = pos.to_hex();
        self.state
            .update(&self.shard_of(doc_id), |d| {
                d.insert(doc_id.to_string(), Json::String(hex.clone()));
            })
            .await
            .map(|_| ())
    }

    /// Removes `doc_id`'s tombstone if it is still `pos`.
    async fn clear_tombstone(&self, doc_id: &str, pos: &Position) -> crate::Result<()> {
        let hex = pos.to_hex();
        if self.entry(doc_id).await?.as_ref().and_then(Json::as_str) != Some(hex.as_str()) {
            return Ok(());
        }
        self.state
            .update(&self.shard_of(doc_id), |d| {
                if d.get(doc_id).and_then(Json::as_str) == Some(hex.as_str()) {
                    d.remove(doc_id);
                }
            })
            .await
            .map(|_| ())
    }

    /// Removes a live entry (a document that was never created).
    async fn remove_live(&self, doc_id: &str) -> crate::Result<()> {
        self.state
            .update(&self.shard_of(doc_id), |d| {
                if d.get(doc_id) == Some(&Json::Null) {
                    d.remove(doc_id);
                }
            })
            .await
            .map(|_| ())
    }

    /// Every entry: `(doc id, tombstone)`.
    async fn list(&self) -> crate::Result<Vec<(String, Option<Position>)>> {
        let mut out = Vec::new();
        for s in 0..self.shards {
            let shard = format!("idx-{s:04}");
            if let Some(doc) = self.state.get(&shard).await? {
                for (id, v) in doc.iter() {
                    let tomb = match v {
                        Json::String(h) => {
                            Some(Position::from_hex(h).map_err(|e| Error::Malformed {
                                what: "cdc index entry",
                                reason: format!("{id}: {e}"),
                            })?)
                        }
                        _ => None,
                    };
                    out.push((id.clone(), tomb));
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cdc::checkpoints::MemoryCheckpoints;
    use crate::cdc::memory::{row, MemoryDatabase, Txn};
    use crate::store::MemoryStore;

    fn t() -> TableName {
        TableName::new("public", "users")
    }

    fn fast() -> Backoff {
        Backoff {
            initial: Duration::from_millis(1),
            max: Duration::from_millis(5),
            max_retries: None,
        }
    }

    struct Rig {
        db: MemoryDatabase,
        store: Arc<MemoryStore>,
        ck: Arc<MemoryCheckpoints>,
    }

    impl Rig {
        fn new() -> Self {
            let db = MemoryDatabase::new();
            db.create_table(&t(), &["id"]).unwrap();
            Self {
                db,
                store: Arc::new(MemoryStore::new()),
                ck: Arc::new(MemoryCheckpoints::new()),
            }
        }

        fn docs(&self) -> DataManager<JsonDoc> {
            DataManager::<JsonDoc>::builder(self.store.clone(), "app", "users")
                .build()
                .unwrap()
        }

        /// Spawns a connector and waits for its first checkpoint (the initial snapshot's).
        async fn start(&self, docs: &DataManager<JsonDoc>) -> ConnectorHandle {
            self.start_with(docs, self.ck.clone(), |b| b).await
        }

        /// [`start`](Self::start) with other checkpoints and builder settings.
        async fn start_with(
            &self,
            docs: &DataManager<JsonDoc>,
            ck: Arc<dyn Checkpoints>,
            tune: impl FnOnce(ConnectorBuilder) -> ConnectorBuilder,
        ) -> ConnectorHandle {
            let b = Connector::builder(
                self.db.source("src").batch_size(2).build().unwrap(),
                ck,
                "users",
            )
            .table(TableMapping::columns(t(), docs.clone()))
            .backoff(fast())
            .index_shards(4);
            let h = tune(b).build().unwrap().spawn(CancellationToken::new());
            h.wait_for_checkpoint(&Position::from_bytes(Vec::new()))
                .await
                .unwrap();
            h
        }
    }

    fn user(id: i64, name: &str) -> Row {
        row([("id", Value::Int(id)), ("name", Value::Text(name.into()))])
    }

    #[tokio::test]
    async fn cdc_columns_insert_update_delete_and_unchanged() {
        let rig = Rig::new();
        let docs = rig.docs();
        let h = rig.start(&docs).await;
        rig.db
            .commit(
                Txn::new()
                    .insert(&t(), user(1, "ada"))
                    .insert(&t(), user(2, "bob")),
            )
            .unwrap();
        rig.db
            .commit(Txn::new().update(
                &t(),
                row([
                    ("id", Value::Int(1)),
                    ("name", Value::Unchanged),
                    ("age", Value::Int(36)),
                ]),
            ))
            .unwrap();
        let last = rig
            .db
            .commit(Txn::new().delete(&t(), row([("id", Value::Int(2))])))
            .unwrap();
        h.wait_for_checkpoint(&last.checkpoint).await.unwrap();
        let d1 = docs.get("1").await.unwrap().unwrap();
        assert_eq!(d1["name"], "ada", "Unchanged left the member as it was");
        assert_eq!(d1["age"], 36);
        assert_eq!(d1["id"], 1);
        assert!(d1[DEFAULT_POSITION_MEMBER]["rows"]["1"].is_string());
        assert!(docs.get("2").await.unwrap().is_none());
        let st = h.stats();
        assert_eq!((st.applied, st.duplicates), (4, 0), "{st:?}");
        assert_eq!(st.documents_deleted, 1);
        assert_eq!(st.last_checkpoint, Some(last.checkpoint.clone()));
        assert_eq!(rig.db.acked("src"), Some(last.checkpoint.clone()));
        h.shutdown();
        h.join().await.unwrap();
    }

    /// Checkpoints counting `store` calls.
    #[derive(Default)]
    struct Counting {
        inner: MemoryCheckpoints,
        stores: AtomicU64,
    }

    #[async_trait::async_trait]
    impl Checkpoints for Counting {
        async fn load(&self, name: &str) -> CdcResult<Option<Position>> {
            self.inner.load(name).await
        }
        async fn store(&self, name: &str, position: &Position) -> CdcResult<()> {
            self.stores.fetch_add(1, Ordering::Relaxed);
            self.inner.store(name, position).await
        }
    }

    /// 300 single-row transactions that are all ready when the connector reads: merged into
    /// rounds of at most `max_batch_items` changes, one checkpoint per round.
    async fn ready_transactions_with(max_batch_items: usize) -> u64 {
        let rig = Rig::new();
        let docs = rig.docs();
        let ck = Arc::new(Counting::default());
        let h = rig
            .start_with(&docs, ck.clone(), |b| b.max_batch_items(max_batch_items))
            .await;
        let before = ck.stores.load(Ordering::Relaxed);
        let mut last = None;
        for i in 0..300 {
            last = Some(
                rig.db
                    .commit(Txn::new().insert(&t(), user(i, "x")))
                    .unwrap(),
            );
        }
        let last = last.unwrap();
        h.wait_for_checkpoint(&last.checkpoint).await.unwrap();
        for i in [0, 149, 299] {
            assert_eq!(docs.get(&i.to_string()).await.unwrap().unwrap()["id"], i);
        }
        let st = h.stats();
        assert_eq!((st.applied, st.duplicates), (300, 0), "{st:?}");
        assert_eq!(rig.db.acked("src"), Some(last.checkpoint.clone()));
        h.shutdown();
        h.join().await.unwrap();
        ck.stores.load(Ordering::Relaxed) - before
    }

    #[tokio::test]
    async fn cdc_ready_batches_are_merged_up_to_the_bound() {
        let merged = ready_transactions_with(DEFAULT_MAX_BATCH_ITEMS).await;
        assert!(
            merged <= 3,
            "300 ready transactions took {merged} checkpoints"
        );
        let unmerged = ready_transactions_with(1).await;
        assert_eq!(unmerged, 300, "a bound of 1 applies each batch on its own");
    }

    /// Checkpoints whose `store` can be made to fail permanently (the connector stops before
    /// persisting: a crash between applying and checkpointing).
    struct Freezable {
        inner: MemoryCheckpoints,
        frozen: std::sync::atomic::AtomicBool,
    }

    #[async_trait::async_trait]
    impl Checkpoints for Freezable {
        async fn load(&self, name: &str) -> CdcResult<Option<Position>> {
            self.inner.load(name).await
        }
        async fn store(&self, name: &str, position: &Position) -> CdcResult<()> {
            if self.frozen.load(Ordering::Relaxed) {
                return Err(CdcError::Checkpoint {
                    name: name.into(),
                    reason: "frozen".into(),
                    retryable: false,
                });
            }
            self.inner.store(name, position).await
        }
    }

    #[tokio::test]
    async fn cdc_replay_after_a_crash_before_the_checkpoint_applies_nothing_twice() {
        let rig = Rig::new();
        let ck = Arc::new(Freezable {
            inner: MemoryCheckpoints::new(),
            frozen: false.into(),
        });
        let spawn = |docs: &DataManager<JsonDoc>| {
            Connector::builder(
                rig.db.source("src").batch_size(10).build().unwrap(),
                ck.clone(),
                "users",
            )
            .table(TableMapping::columns(t(), docs.clone()))
            .backoff(fast())
            .build()
            .unwrap()
            .spawn(CancellationToken::new())
        };
        let docs = rig.docs();
        let h = spawn(&docs);
        h.wait_for_checkpoint(&Position::from_bytes(Vec::new()))
            .await
            .unwrap();
        let snapshot_checkpoint = ck.load("users").await.unwrap().unwrap();
        ck.frozen.store(true, Ordering::Relaxed);
        // One transaction: its changes are applied, then persisting the checkpoint fails.
        rig.db
            .commit(
                Txn::new()
                    .insert(&t(), user(1, "ada"))
                    .insert(&t(), user(2, "bob"))
                    .update(&t(), user(1, "ada2"))
                    .delete(&t(), row([("id", Value::Int(2))])),
            )
            .unwrap();
        assert!(matches!(h.join().await, Err(CdcError::Checkpoint { .. })));
        assert_eq!(ck.load("users").await.unwrap(), Some(snapshot_checkpoint));
        let v1 = docs.get("1").await.unwrap().unwrap().version();
        assert!(docs.get("2").await.unwrap().is_none());

        // The restart replays the transaction: every change is a duplicate — the insert of the
        // deleted row is stopped by its tombstone, the delete finds it too.
        ck.frozen.store(false, Ordering::Relaxed);
        let docs2 = rig.docs();
        let h = spawn(&docs2);
        let done = rig.db.commit(Txn::new()).unwrap();
        h.wait_for_checkpoint(&done.checkpoint).await.unwrap();
        let st = h.stats();
        assert_eq!((st.applied, st.duplicates), (0, 4), "{st:?}");
        assert_eq!(docs2.get("1").await.unwrap().unwrap().version(), v1);
        assert_eq!(docs2.get("1").await.unwrap().unwrap()["name"], "ada2");
        assert!(docs2.get("2").await.unwrap().is_none());
        h.shutdown();
        h.join().await.unwrap();
    }

    #[tokio::test]
    async fn cdc_bad_rows_are_counted_reported_and_skipped() {
        let rig = Rig::new();
        let docs = rig.docs();
        let h = rig.start(&docs).await;
        let mut errors = h.errors();
        rig.db
            .commit(
                Txn::new()
                    .insert(
                        &t(),
                        row([("id", Value::Text("a:b".into())), ("x", Value::Int(1))]),
                    )
                    .insert(
                        &t(),
                        row([("id", Value::Int(5)), ("x", Value::Float(f64::NAN))]),
                    )
                    .insert(&t(), row([("id", Value::Int(6)), ("_cdc", Value::Int(1))]))
                    .insert(&t(), user(7, "ok")),
            )
            .unwrap();
        let last = rig
            .db
            .commit(Txn::new().insert(&t(), user(8, "ok")))
            .unwrap();
        h.wait_for_checkpoint(&last.checkpoint).await.unwrap();
        let st = h.stats();
        assert_eq!(st.errors.get(&ErrorKind::InvalidId), Some(&1), "{st:?}");
        assert_eq!(st.errors.get(&ErrorKind::NonFinite), Some(&1), "{st:?}");
        assert_eq!(st.errors.get(&ErrorKind::Reserved), Some(&1), "{st:?}");
        assert_eq!(st.applied, 2);
        assert!(docs.get("5").await.unwrap().is_none());
        assert!(docs.get("7").await.unwrap().is_some());
        let mut kinds = Vec::new();
        while let Ok(e) = errors.try_recv() {
            kinds.push(e.kind);
        }
        kinds.sort();
        assert_eq!(
            kinds,
            vec![
                ErrorKind::InvalidId,
                ErrorKind::NonFinite,
                ErrorKind::Reserved
            ]
        );
        h.shutdown();
        h.join().await.unwrap();
    }

    #[tokio::test]
    async fn cdc_resnapshot_sweeps_rows_that_vanished() {
        let db = MemoryDatabase::builder().max_log(1).build().unwrap();
        db.create_table(&t(), &["id"]).unwrap();
        let rig = Rig {
            db,
            store: Arc::new(MemoryStore::new()),
            ck: Arc::new(MemoryCheckpoints::new()),
        };
        let docs = rig.docs();
        let h = rig.start(&docs).await;
        let c = rig
            .db
            .commit(
                Txn::new()
                    .insert(&t(), user(1, "a"))
                    .insert(&t(), user(2, "b"))
                    .insert(&t(), user(3, "c")),
            )
            .unwrap();
        h.wait_for_checkpoint(&c.checkpoint).await.unwrap();
        h.shutdown();
        h.join().await.unwrap();
        // While the connector is down, rows change and the log forgets: the source resyncs.
        rig.db
            .commit(Txn::new().delete(&t(), row([("id", Value::Int(2))])))
            .unwrap();
        rig.db
            .commit(Txn::new().update(&t(), user(3, "c2")))
            .unwrap();
        let last = rig
            .db
            .commit(Txn::new().insert(&t(), user(4, "d")))
            .unwrap();
        let h = rig.start(&docs).await;
        // The resync's checkpoint is the snapshot's, after `last`.
        let mut rx = h.checkpoints();
        while rx
            .borrow_and_update()
            .as_ref()
            .is_none_or(|p| *p <= last.checkpoint)
        {
            rx.changed().await.unwrap();
        }
        assert!(docs.get("2").await.unwrap().is_none(), "swept");
        assert_eq!(docs.get("3").await.unwrap().unwrap()["name"], "c2");
        assert!(docs.get("4").await.unwrap().is_some());
        assert!(docs.get("1").await.unwrap().is_some());
        assert_eq!(h.stats().swept_rows, 1);
        h.shutdown();
        h.join().await.unwrap();
    }

    #[tokio::test]
    async fn cdc_a_fresh_snapshot_sweeps_documents_left_from_before() {
        let rig = Rig::new();
        let docs = rig.docs();
        let h = rig.start(&docs).await;
        let c = rig
            .db
            .commit(
                Txn::new()
                    .insert(&t(), user(1, "a"))
                    .insert(&t(), user(2, "b")),
            )
            .unwrap();
        h.wait_for_checkpoint(&c.checkpoint).await.unwrap();
        h.shutdown();
        h.join().await.unwrap();
        rig.db
            .commit(
                Txn::new()
                    .delete(&t(), row([("id", Value::Int(1))]))
                    .delete(&t(), row([("id", Value::Int(2))])),
            )
            .unwrap();
        // The checkpoints are lost: the connector starts from scratch, with an empty snapshot.
        let rig2 = Rig {
            db: rig.db.clone(),
            store: rig.store.clone(),
            ck: Arc::new(MemoryCheckpoints::new()),
        };
        let docs2 = rig2.docs();
        let h = rig2.start(&docs2).await;
        assert!(docs2.get("1").await.unwrap().is_none());
        assert!(docs2.get("2").await.unwrap().is_none());
        let st = h.stats();
        assert_eq!((st.swept_rows, st.documents_deleted), (2, 2), "{st:?}");
        h.shutdown();
        h.join().await.unwrap();
    }

    #[test]
    fn cdc_ids_from_keys() {
        let c = |cs: &[&str]| cs.iter().map(|c| Arc::<str>::from(*c)).collect::<Vec<_>>();
        let r = row([
            ("a", Value::Int(1)),
            ("b", Value::Text("x".into())),
            ("s", Value::Text("p/q".into())),
        ]);
        assert_eq!(make_id(&c(&["a"]), &[&r]).unwrap(), "1");
        assert_eq!(make_id(&c(&["a", "b"]), &[&r]).unwrap(), "1/x");
        assert_eq!(make_id(&c(&["s"]), &[&r]).unwrap(), "p/q");
        assert!(make_id(&c(&["a", "s"]), &[&r]).is_err());
        assert!(make_id(&c(&["zz"]), &[&r]).is_err());
        let bad = row([("a", Value::Null), ("b", Value::Text("has space".into()))]);
        assert!(make_id(&c(&["a"]), &[&bad]).is_err());
        assert!(make_id(&c(&["b"]), &[&bad]).is_err());
    }

    #[test]
    fn cdc_builder_validates() {
        let rig = Rig::new();
        let docs = rig.docs();
        let b = || Connector::builder(rig.db.source("s").build().unwrap(), rig.ck.clone(), "n");
        assert!(b().build().is_err(), "no mapping");
        let m = || TableMapping::columns(t(), docs.clone());
        assert!(b().table(m()).table(m()).build().is_err(), "table twice");
        assert!(b().table(m()).index_shards(0).build().is_err());
        assert!(b().table(m()).max_in_flight(0).build().is_err());
        assert!(
            Connector::builder(rig.db.source("s").build().unwrap(), rig.ck.clone(), "a/b")
                .table(m())
                .build()
                .is_err()
        );
        assert!(b().table(m()).build().is_ok());
    }
}
