//! Change data capture: a database's row changes, as resumable batches, feeding [`DataManager`]s.
//!
//! A [`ChangeSource`] (PostgreSQL logical replication, a MariaDB binlog, SQL Server Change
//! Tracking, or an in-memory source in tests) yields [`SourceEvent`]s. Each batch of
//! [`ChangeItem`]s may end with a [`ChangeBatch::checkpoint`]: the position to persist (through
//! [`Checkpoints`]) and to [`ChangeSource::ack`] once every item up to it has been applied. A
//! source only ever offers a checkpoint at a transaction boundary, so a restart resumes at the
//! start of a transaction and never in the middle of one.
//!
//! Delivery is at least once: after a crash, the items after the last persisted checkpoint come
//! again. Sinks make that idempotent (the connector records the position of the last change it
//! applied in each document and skips anything at or below it).
//!
//! | file | what |
//! |---|---|
//! | this file | the contract: [`ChangeSource`], [`Checkpoints`], [`Position`], [`ChangeItem`], … |
//! | [`checkpoints`] | [`MemoryCheckpoints`], [`FileCheckpoints`] |
//! | [`tracker`] | [`TableTracker`]: one table's changes to a hook and bounded subscribers |
//! | [`connector`] | [`Connector`]: changes applied to documents, idempotently |
//! | [`memory`] | [`MemoryDatabase`] and [`MemoryChangeSource`]: a scriptable in-memory source |
//!
//! `docs/cdc.md` describes the design: positions, checkpoints, the acknowledgement and
//! idempotence rules, snapshot mark-and-sweep, bounds.
//!
//! [`DataManager`]: crate::DataManager

pub mod checkpoints;
pub mod connector;
pub mod memory;
pub mod tracker;

pub use checkpoints::{FileCheckpoints, MemoryCheckpoints};
pub use connector::{
    Applied, Connector, ConnectorBuilder, ConnectorError, ConnectorHandle, ConnectorStats,
    ErrorKind, JsonDoc, MapError, TableMapping,
};
pub use memory::{MemoryChangeSource, MemoryDatabase, Txn};
pub use tracker::{Backoff, TableTracker, TrackerEvent, TrackerHandle, TrackerStats};

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;

/// A `Result` whose error defaults to [`CdcError`].
pub type CdcResult<T, E = CdcError> = std::result::Result<T, E>;

/// Where a change sits in its source's history: opaque bytes whose **lexicographic order is
/// the source's order** (sources encode their native positions big-endian, e.g. PostgreSQL's
/// commit LSN then the change's ordinal in its transaction).
///
/// Positions of different sources are not comparable. Sources parse their own positions back
/// and refuse bytes they did not write with [`CdcError::BadPosition`].
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position(Arc<[u8]>);

impl Position {
    /// A position from the bytes its source wrote.
    pub fn from_bytes(bytes: impl Into<Arc<[u8]>>) -> Self {
        Self(bytes.into())
    }

    /// The bytes to persist.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Lower-case hex of the bytes: what checkpoints store as text and what logs show.
    pub fn to_hex(&self) -> String {
        use fmt::Write;
        self.0
            .iter()
            .fold(String::with_capacity(self.0.len() * 2), |mut s, b| {
                let _ = write!(s, "{b:02x}");
                s
            })
    }

    /// Parses [`Position::to_hex`]'s output.
    ///
    /// # Errors
    /// [`CdcError::BadPosition`] for odd lengths or non-hex characters.
    pub fn from_hex(hex: &str) -> CdcResult<Self> {
        if hex.len() % 2 != 0 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(CdcError::BadPosition {
                reason: format!("{hex:?} is not an even-length hex string"),
            });
        }
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap_or_default())
            .collect();
        Ok(Self::from_bytes(bytes))
    }
}

impl fmt::Debug for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Position({})", self.to_hex())
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// A table's qualified name (`schema` is the database on MariaDB).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TableName {
    /// Schema (PostgreSQL, SQL Server) or database (MariaDB).
    pub schema: Arc<str>,
    /// Table name.
    pub name: Arc<str>,
}

impl TableName {
    /// `schema.name`.
    pub fn new(schema: impl Into<Arc<str>>, name: impl Into<Arc<str>>) -> Self {
        Self {
            schema: schema.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema, self.name)
    }
}

/// One column's value, typed as far as the source knows the column's type. Types a source does
/// not map arrive as [`Value::Text`] in the database's own text form (documented per source).
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// SQL `NULL`.
    Null,
    /// Boolean.
    Bool(bool),
    /// Any integer type that fits `i64`.
    Int(i64),
    /// Floating point; never NaN or infinite (those arrive as [`Value::Text`]).
    Float(f64),
    /// Text, and any type passed through in its text form (numeric, dates, …).
    Text(String),
    /// Binary data.
    Bytes(Vec<u8>),
    /// `json` / `jsonb` columns, parsed.
    Json(serde_json::Value),
    /// The source did not send this column because it did not change (PostgreSQL's unchanged
    /// TOAST value): the document's field is left as it is — never set to null.
    Unchanged,
}

/// Named column values, in the table's column order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Row {
    /// `(column, value)` pairs.
    pub columns: Vec<(Arc<str>, Value)>,
}

impl Row {
    /// The value of `column`, if the row has it.
    pub fn get(&self, column: &str) -> Option<&Value> {
        self.columns
            .iter()
            .find(|(c, _)| &**c == column)
            .map(|(_, v)| v)
    }
}

/// What happened to a row.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// A new row (also every row of a snapshot).
    Insert,
    /// A changed row.
    Update,
    /// A removed row.
    Delete,
}

/// One row change.
#[derive(Clone, Debug, PartialEq)]
pub struct ChangeItem {
    /// Where this change sits; strictly increasing within a source.
    pub position: Position,
    /// The table changed.
    pub table: TableName,
    /// Insert, update or delete.
    pub op: Op,
    /// The primary-key (replica identity) columns: what identifies the row.
    pub key: Row,
    /// The row after the change (`None` for a delete).
    pub new: Option<Row>,
    /// The row before the change, when the source knows it (PostgreSQL with `REPLICA IDENTITY
    /// FULL`, MariaDB with `binlog_row_image=FULL`).
    pub old: Option<Row>,
}

/// Changes in source order, at most a source's configured batch size (so a huge transaction
/// arrives as several batches and memory stays bounded).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ChangeBatch {
    /// The changes.
    pub items: Vec<ChangeItem>,
    /// Set when this batch ends a transaction: once every item so far is applied, persist this
    /// position and [`ChangeSource::ack`] it. `None` in the middle of a transaction.
    pub checkpoint: Option<Position>,
}

/// What a source yields.
#[derive(Clone, Debug, PartialEq)]
pub enum SourceEvent {
    /// Row changes.
    Changes(ChangeBatch),
    /// The source is about to (re)load `table` from scratch (first start, an added table, or a
    /// resync after the source lost its history): every current row follows as an
    /// [`Op::Insert`] until [`SourceEvent::SnapshotEnd`].
    SnapshotStart {
        /// The table.
        table: TableName,
        /// Why: `"initial"`, `"slot invalidated"`, `"change tracking version expired"`, …
        reason: Arc<str>,
    },
    /// The snapshot of `table` is complete: documents of that table whose rows did not appear
    /// in it are gone from the database and may be deleted.
    SnapshotEnd {
        /// The table.
        table: TableName,
    },
}

/// Everything that can go wrong capturing changes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CdcError {
    /// A server setting does not allow change capture (`wal_level` is not `logical`,
    /// `binlog_format` is not `ROW`, change tracking is off, …). Permanent until fixed.
    #[error("server setting {setting} is {actual:?}; change capture needs {needed}")]
    Setting {
        /// The setting's name.
        setting: String,
        /// Its current value.
        actual: String,
        /// What is needed.
        needed: String,
    },
    /// The connecting user lacks a right (`REPLICATION`, `REPLICATION SLAVE`, `SELECT`, table
    /// ownership for a publication, `VIEW CHANGE TRACKING`, …). Permanent until granted.
    #[error("missing right {right}: {detail}")]
    Permission {
        /// The right.
        right: String,
        /// The server's message.
        detail: String,
    },
    /// A table cannot be captured as configured (no primary key and no full replica identity,
    /// not found, dropped mid-stream, an unknown column in a mapping).
    #[error("table {table}: {reason}")]
    Table {
        /// The table.
        table: TableName,
        /// Why.
        reason: String,
    },
    /// A configuration value (identifier, column list, filter, batch size) was refused before
    /// anything was sent to the server.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Stored position bytes that this source did not write.
    #[error("bad position: {reason}")]
    BadPosition {
        /// Why it was refused.
        reason: String,
    },
    /// The source's history no longer reaches the stored position (slot lost, binlog purged,
    /// change-tracking version below the minimum valid one). Sources that can re-snapshot do
    /// so themselves and emit [`SourceEvent::SnapshotStart`]; this error means it could not.
    #[error("history lost: {0}")]
    HistoryLost(String),
    /// Bytes from the server that do not decode (a protocol message, a row event).
    #[error("malformed {what}: {reason}")]
    Malformed {
        /// What was being decoded.
        what: &'static str,
        /// Why it failed.
        reason: String,
    },
    /// The server cannot be reached or dropped the connection; retrying may help. Nothing
    /// unacknowledged is lost: it is read again after the reconnect.
    #[error("source unavailable: {0}")]
    Unavailable(String),
    /// Reading or writing a checkpoint failed.
    #[error("checkpoint {name:?}: {reason}")]
    Checkpoint {
        /// The checkpoint's name.
        name: String,
        /// Why.
        reason: String,
        /// Whether retrying may help.
        retryable: bool,
    },
    /// The sink (a [`DataManager`](crate::DataManager) update) failed.
    #[error("sink: {0}")]
    Sink(#[from] crate::Error),
    /// The source was closed.
    #[error("source closed")]
    Closed,
}

impl CdcError {
    /// Whether the same call may succeed later without anyone changing the configuration.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Unavailable(_) => true,
            Self::Checkpoint { retryable, .. } => *retryable,
            Self::Sink(e) => e.is_retryable(),
            _ => false,
        }
    }
}

/// A database's change stream.
///
/// Object-safe: the CLI holds sources as `Box<dyn ChangeSource>`.
#[async_trait]
pub trait ChangeSource: Send {
    /// A short name for logs and checkpoints (`"pg:electric_slot"`).
    fn name(&self) -> &str;

    /// Connects and starts streaming after `from` (a checkpoint this source wrote), or from the
    /// beginning — an initial snapshot of every configured table — when `from` is `None`.
    ///
    /// Callers (the [`connector::Connector`], the [`tracker::TableTracker`]) call `start` again
    /// on the same source after a retryable error, with the last persisted checkpoint: the
    /// stream restarts after it.
    ///
    /// # Errors
    /// [`CdcError::Setting`], [`CdcError::Permission`], [`CdcError::Table`] for what must be
    /// fixed by hand; [`CdcError::Unavailable`] when the server cannot be reached.
    async fn start(&mut self, from: Option<Position>) -> CdcResult<()>;

    /// The next event; waits until there is one. `Ok(None)` when the source was stopped.
    ///
    /// # Cancel safety
    /// Cancel safe: a dropped call loses no event.
    async fn next(&mut self) -> CdcResult<Option<SourceEvent>>;

    /// Everything up to and including `position` (a [`ChangeBatch::checkpoint`]) is durably
    /// applied: the source may release it (PostgreSQL confirms the LSN so the slot frees WAL).
    async fn ack(&mut self, position: &Position) -> CdcResult<()>;
}

/// Durable storage for source positions, keyed by checkpoint name.
#[async_trait]
pub trait Checkpoints: Send + Sync {
    /// The stored position, if any.
    async fn load(&self, name: &str) -> CdcResult<Option<Position>>;
    /// Persists `position`; once this returns `Ok`, a crash does not lose it.
    async fn store(&self, name: &str, position: &Position) -> CdcResult<()>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_order_by_bytes_and_round_trip_through_hex() {
        let a = Position::from_bytes(vec![0, 1, 0xff]);
        let b = Position::from_bytes(vec![0, 2]);
        assert!(a < b);
        assert_eq!(Position::from_hex(&a.to_hex()).unwrap(), a);
        assert_eq!(a.to_hex(), "0001ff");
        assert!(matches!(
            Position::from_hex("0g"),
            Err(CdcError::BadPosition { .. })
        ));
        assert!(matches!(
            Position::from_hex("abc"),
            Err(CdcError::BadPosition { .. })
        ));
    }

    #[test]
    fn only_transient_errors_are_retryable() {
        assert!(CdcError::Unavailable("reset".into()).is_retryable());
        assert!(!CdcError::Config("x".into()).is_retryable());
        assert!(!CdcError::HistoryLost("slot lost".into()).is_retryable());
    }

    #[test]
    fn cdc_public_futures_and_handles_are_send() {
        fn send<T: Send + 'static>(_: &T) {}
        fn send_sync<T: Send + Sync + 'static>() {}
        send_sync::<connector::ConnectorHandle>();
        send_sync::<tracker::TrackerHandle>();
        send_sync::<checkpoints::FileCheckpoints>();
        send_sync::<memory::MemoryDatabase>();
        send_sync::<connector::TableMapping>();
        let db = memory::MemoryDatabase::new();
        let store = std::sync::Arc::new(crate::MemoryStore::new());
        let docs = crate::DataManager::<connector::JsonDoc>::builder(store, "p", "s")
            .build()
            .unwrap();
        let c = connector::Connector::builder(
            db.source("s").build().unwrap(),
            std::sync::Arc::new(checkpoints::MemoryCheckpoints::new()),
            "s",
        )
        .table(connector::TableMapping::columns(
            TableName::new("a", "b"),
            docs,
        ))
        .build()
        .unwrap();
        let fut = c.run(tokio_util::sync::CancellationToken::new());
        send(&fut);
    }

    #[test]
    fn a_source_is_object_safe() {
        fn _takes(_: Box<dyn ChangeSource>, _: std::sync::Arc<dyn Checkpoints>) {}
    }
}
